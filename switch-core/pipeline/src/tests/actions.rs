//! The walk through the tables and every action: priorities, masks, misses, goto and
//! resubmit (and their loops), rewrites, outputs, `dec_ttl`, the bounds.

use super::*;

#[test]
fn priorities_and_masks() {
    let p = pipe(&[
        "priority=10,ip actions=output:1",
        "priority=20,ip,nw_dst=198.19.0.0/16 actions=output:2",
        "priority=30,ip,nw_dst=198.19.2.0/24 actions=output:3",
        "priority=5 actions=drop",
    ]);
    let mut k = tcp_key(10);
    assert_eq!(outs(&run(&p, &k)), vec![3]);
    k.set_nw_dst(Ipv4Addr::new(198, 19, 9, 9));
    assert_eq!(outs(&run(&p, &k)), vec![2]);
    k.set_nw_dst(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(outs(&run(&p, &k)), vec![1]);
    k.set_dl_type(0x86dd);
    let r = run(&p, &k);
    assert_eq!(r.drop_reason(), Some(DropReason::ExplicitDrop));
}

#[test]
fn table_miss_drops_and_is_counted() {
    let p = pipe(&["table=0,priority=1,ip actions=goto_table:5"]);
    let mut cache = FlowCache::new(64);
    let r = p.process(&tcp_key(1), 100, 1, &mut cache);
    assert_eq!(r.drop_reason(), Some(DropReason::TableMiss));
    let r = p.process(&FlowKey::ZERO, 100, 1, &mut cache);
    assert_eq!(r.drop_reason(), Some(DropReason::TableMiss));
    assert_eq!(p.drops().get(DropReason::TableMiss), 2);
    assert_eq!(p.table_stats(0).lookups(), 2);
    assert_eq!(p.table_stats(0).matches(), 1);
    assert_eq!(p.table_stats(0).misses(), 1);
    assert_eq!(p.table_stats(5).misses(), 1);
}

#[test]
fn goto_and_resubmit() {
    let p = pipe(&[
        "table=0,priority=1 actions=set_field:0x1->reg0,goto_table:10",
        "table=10,priority=1,reg0=1 actions=resubmit(,20),output:2",
        "table=20,priority=1,reg0=1,in_port=1 actions=output:3",
        "table=20,priority=1,reg0=1,in_port=2 actions=output:10",
        "table=10,priority=5,reg0=1,in_port=3 actions=resubmit(2,20),resubmit(,30),output:1",
    ]);
    // From port 1: table 0 → 10 → resubmit 20 (in_port=1 → output:3), then output:2.
    assert_eq!(outs(&run(&p, &tcp_key(1))), vec![3, 2]);
    // From port 3: resubmit as port 2 (output:10), miss in 30 is a no-op, in_port is
    // restored (output:1 is not the ingress port, so it is sent).
    let r = run(&p, &tcp_key(3));
    assert_eq!(outs(&r), vec![10, 1]);
    assert_eq!(r.state(0).in_port(), 2);
    assert_eq!(r.state(1).in_port(), 3);
}

#[test]
fn resubmit_loop_is_a_counted_drop_at_run_time() {
    let p = pipe(&[
        "table=0,priority=1 actions=resubmit(,1),output:1",
        "table=1,priority=1 actions=resubmit(,0)",
    ]);
    let mut cache = FlowCache::new(16);
    let r = p.process(&tcp_key(2), 60, 0, &mut cache);
    assert_eq!(r.drop_reason(), Some(DropReason::ResubmitLoop));
    assert!(r.actions().is_empty());
    assert_eq!(p.drops().get(DropReason::ResubmitLoop), 1);
}

#[test]
fn resubmit_loop_is_an_install_error_when_detectable() {
    let base = Pipeline::new(ports());
    let bad = add_bundle(&[
        "table=0,priority=1,ip actions=output:1",
        "table=3,priority=1,ip actions=output:1,resubmit(,3)",
    ]);
    let e = base.apply(&bad, 0).unwrap_err();
    assert_eq!(e.index, 1);
    assert_eq!(e.kind, InstallErrorKind::ResubmitLoop { table: 3 });
    assert!(
        e.to_string().starts_with("change 2: resubmit to table 3"),
        "{e}"
    );
    // Writing a field first, or resubmitting as another port, is not a loop.
    for ok in [
        "table=3,priority=1,ip actions=set_field:1->reg0,resubmit(,3)",
        "table=3,priority=1,in_port=1,ip actions=resubmit(2,3)",
        "table=3,priority=1,ip actions=resubmit(,4)",
    ] {
        base.apply(&add_bundle(&[ok]), 0)
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // A resubmit as the same port the flow matches is.
    let e = base
        .apply(&add_bundle(&["table=3,in_port=1 actions=resubmit(1,3)"]), 0)
        .unwrap_err();
    assert!(matches!(e.kind, InstallErrorKind::ResubmitLoop { .. }));
    // So is a modify that makes a flow loop.
    let p = pipe(&["table=4,priority=1,ip actions=output:1"]);
    let m = parse_flow_mod(FlowModCommand::Modify, "table=4 actions=resubmit(,4)").unwrap();
    assert!(p.apply(&Bundle::new(vec![m]), 0).is_err());
}

#[test]
fn set_field_move_and_mods() {
    let p = pipe(&[
        "priority=1,ip actions=set_field:0xab/0xf0->reg1,move:NXM_OF_IP_SRC[0..7]->NXM_NX_REG2[8..15],\
         mod_dl_src:02:00:00:00:00:99,mod_dl_dst:02:00:00:00:00:98,mod_nw_src:10.0.0.1,\
         mod_nw_dst:10.0.0.2,mod_nw_ttl:9,set_tunnel:0x1234,set_field:198.18.0.9->tun_dst,\
         load:0x5->NXM_NX_REG3[4..7],output:2",
    ]);
    let mut k = tcp_key(1);
    k.set_reg(1, 0x0f);
    let r = run(&p, &k);
    assert_eq!(outs(&r), vec![2]);
    let s = r.state(0);
    assert_eq!(s.reg(1), 0xaf);
    assert_eq!(s.reg(2), 0x0200); // low byte of 198.19.1.2
    assert_eq!(s.reg(3), 0x50);
    assert_eq!(s.dl_src(), [2, 0, 0, 0, 0, 0x99]);
    assert_eq!(s.dl_dst(), [2, 0, 0, 0, 0, 0x98]);
    assert_eq!(s.nw_src(), Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(s.nw_dst(), Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(s.nw_ttl(), 9);
    assert_eq!(s.tun_id(), 0x1234);
    assert_eq!(
        s.tun_dst(),
        "198.18.0.9".parse::<std::net::IpAddr>().unwrap()
    );
}

#[test]
fn output_in_port_normal_flood_drop() {
    let p = pipe(&[
        "priority=1,in_port=1 actions=output:1,output:2",
        "priority=1,in_port=2 actions=in_port",
        "priority=1,in_port=3 actions=normal,flood",
        "priority=1,in_port=10 actions=drop",
    ]);
    // output to the ingress port is skipped (OVS: use in_port).
    assert_eq!(outs(&run(&p, &tcp_key(1))), vec![2]);
    assert_eq!(outs(&run(&p, &tcp_key(2))), vec![2]);
    let r = run(&p, &tcp_key(3));
    assert_eq!(
        r.actions(),
        &[DpAction::Normal { state: 0 }, DpAction::Flood { state: 0 }]
    );
    assert_eq!(
        run(&p, &tcp_key(10)).drop_reason(),
        Some(DropReason::ExplicitDrop)
    );
}

#[test]
fn dec_ttl_decrements_and_expiry_drops() {
    let p = pipe(&["priority=1 actions=dec_ttl,output:2"]);
    let r = run(&p, &tcp_key(1));
    assert_eq!(r.state(0).nw_ttl(), 63);
    let mut k = tcp_key(1);
    k.set_nw_ttl(1);
    let mut cache = FlowCache::new(16);
    assert_eq!(
        p.process(&k, 60, 0, &mut cache).drop_reason(),
        Some(DropReason::TtlExpired)
    );
    assert_eq!(p.drops().get(DropReason::TtlExpired), 1);
    // Non-IP passes unchanged.
    let mut arp = FlowKey::ZERO;
    arp.set_dl_type(0x0806);
    arp.set_in_port(1);
    assert_eq!(outs(&run(&p, &arp)), vec![2]);
}

#[test]
fn too_many_outputs_and_states_drop() {
    let many: String = (0..17).map(|_| "output:2,").collect::<String>() + "output:3";
    let p = pipe(&[&format!("priority=1 actions={many}")]);
    assert_eq!(
        run(&p, &tcp_key(1)).drop_reason(),
        Some(DropReason::TooManyOutputs)
    );
    let states: String = (0..5)
        .map(|i| format!("set_field:{i}->reg0,output:2,"))
        .collect::<String>();
    let p = pipe(&[&format!(
        "priority=1 actions={}",
        states.trim_end_matches(',')
    )]);
    assert_eq!(
        run(&p, &tcp_key(1)).drop_reason(),
        Some(DropReason::TooManyOutputs)
    );
    // Four states fit, and equal consecutive states are shared.
    let p = pipe(&[
        "priority=1 actions=output:2,output:3,set_field:1->reg0,output:2,set_field:2->reg0,output:3",
    ]);
    let r = run(&p, &tcp_key(1));
    assert_eq!(outs(&r), vec![2, 3, 2, 3]);
    assert_eq!(
        r.actions().iter().map(DpAction::state).collect::<Vec<_>>(),
        vec![0, 0, 1, 2]
    );
}
