//! The per-worker exact-match cache: a hit equals a fresh walk, versions invalidate,
//! no allocation on a hit.

use super::*;

#[test]
fn cache_hit_equals_fresh_walk_and_versions_invalidate() {
    let shared = SharedPipeline::new(pipe(&[
        "priority=1,ip actions=set_field:5->reg0,goto_table:1",
        "table=1,priority=1,ip,reg0=5 actions=mod_nw_ttl:3,output:2,normal",
        "priority=9,udp actions=flood",
    ]));
    let mut cache = FlowCache::new(256);
    let mut keys = Vec::new();
    for i in 0..50u16 {
        let mut k = tcp_key(1);
        k.set_tp_src(i);
        if i % 3 == 0 {
            k.set_nw_proto(17);
        }
        keys.push(k);
    }
    let p = shared.load_full();
    for round in 0..3 {
        for k in &keys {
            let fresh = run(&p, k);
            let got = p.process(k, 60, 0, &mut cache).clone();
            assert_eq!(got.actions(), fresh.actions(), "round {round}");
            for a in got.actions() {
                assert_eq!(got.state_of(a), fresh.state_of(a));
            }
            assert_eq!(got.drop_reason(), fresh.drop_reason());
        }
    }
    assert_eq!(cache.misses(), 50);
    assert_eq!(cache.hits(), 100);
    // A new version: the old entries miss and the new flows take effect.
    shared
        .apply(&add_bundle(&["priority=20,ip actions=output:3"]), 0)
        .unwrap();
    let p = shared.load();
    assert_eq!(outs(p.process(&keys[1], 60, 0, &mut cache)), vec![3]);
    assert_eq!(cache.misses(), 51);
}

#[test]
fn cache_hit_does_not_allocate_and_slots_are_reused_safely() {
    let p = pipe(&["priority=1 actions=output:2"]);
    let mut cache = FlowCache::new(4);
    // More keys than slots: the round-robin slots are reused and old EMC entries stop
    // matching (generation), so every result is still right.
    for i in 0..40u16 {
        let mut k = tcp_key(1);
        k.set_tp_src(i % 9);
        assert_eq!(outs(p.process(&k, 60, 0, &mut cache)), vec![2]);
    }
    assert_eq!(p.dump(&FlowFilter::all(), 0).unwrap()[0].packets, 40);
}
