//! Publication and bundles (atomic, naming the bad change), modify/delete, replace,
//! port maps; per-flow and per-table counters, timeouts; dumps.

use super::*;

#[test]
fn bundle_is_atomic_and_names_the_bad_change() {
    let shared = SharedPipeline::new(pipe(&["priority=1 actions=output:1"]));
    let before = shared.load_full();
    let mut bad = add_bundle(&[
        "priority=5,ip actions=output:2",
        "priority=6,ip actions=output:nosuchport",
        "priority=7,ip actions=output:3",
    ]);
    bad.lines = vec![3, 4, 7];
    let e = shared.apply(&bad, 5).unwrap_err();
    assert_eq!((e.index, e.line), (1, Some(4)));
    assert_eq!(e.to_string(), "flow line 4: unknown port 'nosuchport'");
    let after = shared.load_full();
    assert!(Arc::ptr_eq(&before, &after));
    assert_eq!(after.flows(), before.flows());
    // A control-level error (a goto backwards) is also named.
    let m = FlowMod::Add {
        flow: parse_flow("table=3,priority=1 actions=output:1").unwrap(),
    };
    let mut f = parse_flow("table=1 actions=output:1").unwrap();
    f.actions = vec![weft_flow::Action::GotoTable(0)];
    let e = shared
        .apply(&Bundle::new(vec![m, FlowMod::Add { flow: f }]), 0)
        .unwrap_err();
    assert_eq!(e.index, 1);
    assert!(e.to_string().starts_with("change 2: goto_table:0"), "{e}");
    assert_eq!(shared.load().version(), before.version());
    // A good bundle publishes one version with all its changes.
    let out = shared
        .apply(
            &add_bundle(&["priority=5,ip actions=output:2", "table=1 actions=drop"]),
            5,
        )
        .unwrap();
    assert!(out.version > before.version());
    assert_eq!(out.version, shared.load().version());
    assert_eq!(out.added, 2);
    assert_eq!(shared.load().len(), 3);
    // Untouched tables are shared with the previous version.
    let now = shared.load_full();
    assert!(Arc::ptr_eq(&now.tables[7], &before.tables[7]));
    assert!(!Arc::ptr_eq(&now.tables[0], &before.tables[0]));
}

#[test]
fn modify_delete_strict_and_not() {
    let p = pipe(&[
        "cookie=0x1,priority=10,ip,nw_dst=10.0.0.1 actions=output:1",
        "cookie=0x2,priority=10,ip,nw_dst=10.0.0.2 actions=output:1",
        "cookie=0x2,priority=20,ip actions=output:2",
        "table=1,priority=1 actions=drop",
    ]);
    let b = |cmd, t: &str| Bundle::new(vec![parse_flow_mod(cmd, t).unwrap()]);
    let (p2, o) = p
        .apply(
            &b(
                FlowModCommand::Modify,
                "ip,nw_dst=10.0.0.0/8 actions=output:3",
            ),
            1,
        )
        .unwrap();
    assert_eq!(o.modified, 2);
    let mut k = tcp_key(5);
    k.set_nw_dst(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(outs(&run(&p2, &k)), vec![2]); // priority 20 still wins
    let (p3, o) = p2
        .apply(&b(FlowModCommand::DeleteStrict, "priority=20,ip"), 1)
        .unwrap();
    assert_eq!(o.deleted, 1);
    assert_eq!(outs(&run(&p3, &k)), vec![3]);
    let (p4, o) = p3
        .apply(&b(FlowModCommand::Delete, "cookie=0x2/0xff"), 1)
        .unwrap();
    assert_eq!(o.deleted, 1);
    assert_eq!(p4.len(), 2);
    let (p5, o) = p4
        .apply(
            &b(
                FlowModCommand::ModifyStrict,
                "priority=10,ip,nw_dst=10.0.0.1 actions=output:2",
            ),
            1,
        )
        .unwrap();
    assert_eq!(o.modified, 1);
    assert_eq!(outs(&run(&p5, &k)), vec![2]);
    let (p6, o) = p5.apply(&b(FlowModCommand::Delete, ""), 1).unwrap();
    assert_eq!((o.deleted, p6.len()), (2, 0));
}

#[test]
fn replace_keeps_counters_only_for_unchanged_actions_and_modify_keeps_them() {
    let shared = SharedPipeline::new(pipe(&["priority=1,ip actions=output:2"]));
    let mut cache = FlowCache::new(64);
    for _ in 0..3 {
        shared.load().process(&tcp_key(1), 100, 10, &mut cache);
    }
    let count = |s: &SharedPipeline| s.load().dump(&FlowFilter::all(), 20).unwrap()[0].packets;
    assert_eq!(count(&shared), 3);
    // Same identity, same actions, new cookie: counters stay.
    shared
        .apply(
            &add_bundle(&["cookie=0x9,priority=1,ip actions=output:2"]),
            20,
        )
        .unwrap();
    assert_eq!(count(&shared), 3);
    assert_eq!(shared.load().flows()[0].cookie, 9);
    // modify: counters stay.
    let m = parse_flow_mod(FlowModCommand::Modify, "ip actions=output:3").unwrap();
    shared.apply(&Bundle::new(vec![m]), 20).unwrap();
    assert_eq!(count(&shared), 3);
    // Counting continues after the new version (cache invalidated, same stats).
    shared.load().process(&tcp_key(1), 100, 30, &mut cache);
    assert_eq!(count(&shared), 4);
    // Same identity, different actions: counters restart.
    shared
        .apply(&add_bundle(&["priority=1,ip actions=output:2"]), 40)
        .unwrap();
    assert_eq!(count(&shared), 0);
    assert_eq!(
        shared.load().dump(&FlowFilter::all(), 40).unwrap()[0].duration_ms,
        0
    );
}

#[test]
fn port_map_publication_and_missing_ports() {
    let shared = SharedPipeline::new(pipe(&["priority=1 actions=output:pod2,output:3"]));
    let mut cache = FlowCache::new(64);
    assert_eq!(
        outs(shared.load().process(&tcp_key(1), 60, 0, &mut cache)),
        vec![2, 3]
    );
    let mut pm = shared.load().ports().clone();
    pm.remove(3);
    let v = shared.set_ports(pm);
    assert_eq!(shared.load().version(), v);
    let p = shared.load();
    let r = p.process(&tcp_key(1), 60, 0, &mut cache);
    assert_eq!(outs(r), vec![2]);
    assert_eq!(r.missing_ports(), 1);
    assert_eq!(p.drops().get(DropReason::NoSuchPort), 1);
    // Unknown names are refused at install time, naming the port.
    let e = p
        .apply(&add_bundle(&["actions=output:pod9"]), 0)
        .unwrap_err();
    assert_eq!(e.kind, InstallErrorKind::UnknownPort("pod9".into()));
    let e = p
        .apply(&add_bundle(&["in_port=pod9 actions=drop"]), 0)
        .unwrap_err();
    assert_eq!(e.to_string(), "change 1: unknown port 'pod9'");
}

#[test]
fn counters_per_flow_and_table() {
    let p = pipe(&[
        "priority=1,ip actions=goto_table:1",
        "table=1,priority=1 actions=output:2",
    ]);
    let mut cache = FlowCache::new(64);
    p.process(&tcp_key(1), 100, 1000, &mut cache);
    p.process(&tcp_key(1), 50, 2500, &mut cache);
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    let d = p.dump(&FlowFilter::all(), 4000).unwrap();
    assert_eq!(d.len(), 2);
    for f in &d {
        assert_eq!((f.packets, f.bytes), (2, 150));
        assert_eq!(f.duration_ms, 4000);
        assert_eq!(f.idle_age_ms, 1500);
    }
    assert_eq!(p.table_stats(1).matches(), 2);
    let line = d[0].to_string();
    assert!(
        line.starts_with("duration=4.000s, n_packets=2, n_bytes=150, idle_age=1, "),
        "{line}"
    );
    assert!(
        line.ends_with("priority=1,ip actions=goto_table:1"),
        "{line}"
    );
}

#[test]
fn idle_and_hard_timeouts() {
    let shared = SharedPipeline::new(Pipeline::new(ports()));
    shared
        .apply(
            &add_bundle(&[
                "priority=1,idle_timeout=10,ip actions=output:2",
                "priority=2,hard_timeout=30,arp actions=output:2",
                "priority=3,udp actions=output:2",
            ]),
            0,
        )
        .unwrap();
    let mut cache = FlowCache::new(64);
    assert!(shared.expire(9_000).is_empty());
    shared.load().process(&tcp_key(1), 60, 9_000, &mut cache);
    // Idle counts from the last packet.
    assert!(shared.expire(15_000).is_empty());
    let gone = shared.expire(19_000);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].reason, ExpireReason::Idle);
    assert_eq!(gone[0].flow.flow.idle_timeout, 10);
    assert_eq!(gone[0].flow.packets, 1);
    let gone = shared.expire(30_000);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].reason, ExpireReason::Hard);
    assert_eq!(shared.load().len(), 1);
    assert_eq!(shared.load().tables[0].n_timeouts, 0);
}

#[test]
fn dump_filters_and_prints_with_controls_printer() {
    let p = pipe(&[
        "cookie=0x10,priority=5,in_port=pod1,ip actions=output:pod2",
        "cookie=0x20,priority=6,ip,nw_dst=10.0.0.0/8 actions=mod_dl_dst:02:00:00:00:00:01,output:3",
        "table=2,priority=1 actions=drop",
    ]);
    let all = p.dump(&FlowFilter::all(), 0).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].flow.priority, 6); // by table, then descending priority
    let d = p.dump(&parse_filter("in_port=pod1").unwrap(), 0).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].flow.to_string(),
        "cookie=0x10,priority=5,ip,in_port=1 actions=output:2"
    );
    let d = p
        .dump(&parse_filter("cookie=0x20/0xf0,ip").unwrap(), 0)
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].flow.to_string(),
        "cookie=0x20,priority=6,ip,nw_dst=10.0.0.0/8 actions=set_field:02:00:00:00:00:01->dl_dst,output:3"
    );
    // What is printed parses back to the same flow.
    assert_eq!(parse_flow(&d[0].flow.to_string()).unwrap(), d[0].flow);
    assert_eq!(
        p.dump(&parse_filter("table=2").unwrap(), 0).unwrap().len(),
        1
    );
    assert!(p.dump(&parse_filter("in_port=nope").unwrap(), 0).is_err());
}

/// The net change of a bundle, replayed on the old version's flows the way a journal
/// replays it (clear tables, delete identities, add flows), gives the new version's
/// flows exactly; and a bundle that changes nothing has an empty net change.
#[test]
fn net_change_replays_to_the_new_version() {
    use std::collections::BTreeSet;
    fn replay(old: &Pipeline, net: &NetChange<'_>) -> BTreeSet<String> {
        let mut flows: Vec<weft_flow::Flow> = old.flows();
        flows.retain(|f| !net.cleared.contains(&f.table));
        flows.retain(|f| !net.deleted.iter().any(|d| d.same_identity(f)));
        // In order: a later flow of the same identity replaces an earlier one.
        for a in net.added_flows() {
            flows.retain(|f| !a.same_identity(f));
            flows.push(a.clone());
        }
        // As installed again (flows lent from the bundle keep their spelling, e.g.
        // `mod_dl_src` where the version rebuilds `set_field`).
        let lines: Vec<String> = flows.iter().map(|f| f.to_string()).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        pipe(&lines).flows().iter().map(|f| f.to_string()).collect()
    }
    let old = pipe(&[
        "table=0,priority=10,in_port=pod1 actions=output:pod2",
        "table=0,priority=10,in_port=pod2 actions=output:pod1",
        "table=0,priority=0 actions=drop",
        "table=1,cookie=0x5,priority=7,ip,nw_dst=198.19.0.1 actions=output:pod3",
        "table=1,cookie=0x6,priority=7,ip,nw_dst=198.19.0.2 actions=output:pod3",
        "table=2,priority=1 actions=normal",
    ]);
    let mods = |lines: &[&str]| {
        Bundle::new(
            lines
                .iter()
                .map(|l| {
                    let (cmd, rest) = l.split_once(' ').unwrap_or((l, ""));
                    let cmd = match cmd {
                        "add" => FlowModCommand::Add,
                        "mod" => FlowModCommand::Modify,
                        "del" => FlowModCommand::Delete,
                        "del-strict" => FlowModCommand::DeleteStrict,
                        other => panic!("{other}"),
                    };
                    parse_flow_mod(cmd, rest).unwrap_or_else(|e| panic!("{l}: {e}"))
                })
                .collect(),
        )
    };
    let cases: &[&[&str]] = &[
        &["add table=0,priority=20,tcp actions=drop"],
        &["add table=0,priority=10,in_port=pod1 actions=output:pod3"],
        &["del table=1,cookie=0x5/0xffffffffffffffff"],
        &["del-strict table=0,priority=10,in_port=pod2"],
        &["mod table=1 actions=output:pod1"],
        &["del table=2", "add table=2,priority=3 actions=flood"],
        &["add table=3,priority=1 actions=drop", "del table=3"],
        &["del", "add table=0,priority=1 actions=normal"],
        // Adds only, ports by number: the bundle is its own net change.
        &[
            "add table=1,cookie=0x5,priority=7,ip,nw_dst=198.19.0.1 actions=mod_dl_src:02:00:00:00:00:01,output:3",
            "add table=5,priority=1,ip actions=drop",
            "add table=5,priority=1,ip actions=output:1",
            "add table=0,priority=10,in_port=2 actions=set_field:0x1->reg0,goto_table:1",
        ],
    ];
    for lines in cases {
        let bundle = mods(lines);
        let (next, _, net) = old.apply_net(&bundle, 5).unwrap();
        let want: BTreeSet<String> = next.flows().iter().map(|f| f.to_string()).collect();
        assert_eq!(replay(&old, &net), want, "{lines:?}: {net:?}");
        assert!(
            net.added_len() + net.deleted.len() <= 2 * lines.len().max(2),
            "proportional to the change: {lines:?}: {net:?}"
        );
        // Lent from the bundle exactly when it is adds only without port names.
        let as_sent = lines
            .iter()
            .all(|l| l.starts_with("add ") && !l.contains("pod"));
        assert_eq!(
            net.added_as_sent.len(),
            if as_sent { lines.len() } else { 0 },
            "{lines:?}"
        );
        if as_sent {
            assert!(net.added.is_empty() && net.deleted.is_empty() && net.cleared.is_empty());
        }
    }
    // Deleting what is not there, or adding a flow and deleting it again: no change.
    for lines in [
        &["del table=9"][..],
        &["del-strict table=0,priority=99,tcp"],
        &[
            "add table=4,priority=1 actions=drop",
            "del-strict table=4,priority=1",
        ],
    ] {
        let bundle = mods(lines);
        let (_, _, net) = old.apply_net(&bundle, 5).unwrap();
        assert!(net.is_empty(), "{lines:?}: {net:?}");
    }
}

#[test]
fn a_bundle_over_a_flow_limit_is_refused_whole() {
    let limits = crate::FlowLimits {
        max_flows: 4,
        max_flows_per_table: 3,
    };
    let p = Pipeline::new(ports()).with_limits(limits);
    let four: Vec<String> = (1..=4)
        .map(|i| format!("priority={i},ip actions=drop"))
        .collect();
    let four: Vec<&str> = four.iter().map(String::as_str).collect();
    let e = p.apply(&add_bundle(&four), 0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "table 0 would have 4 flows; the limit is 3 (max_flows_per_table in weftd.toml)"
    );
    let (p, _) = p.apply(&add_bundle(&four[..3]), 0).unwrap();
    // Replacing a flow (same identity) does not count twice.
    let (p, o) = p.apply(&add_bundle(&four[..1]), 0).unwrap();
    assert_eq!(o.replaced, 1);
    let e = p
        .apply(
            &add_bundle(&[
                "table=1,priority=1,ip actions=drop",
                "table=1,priority=2,ip actions=drop",
            ]),
            0,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the switch would have 5 flows; the limit is 4 (max_flows in weftd.toml)"
    );
    assert_eq!(p.len(), 3);
    assert_eq!(p.limits(), limits);
    // The limits hold in every later version.
    let (p, _) = p
        .apply(&add_bundle(&["table=1,priority=1,ip actions=drop"]), 0)
        .unwrap();
    assert_eq!(p.limits(), limits);
}

/// The ops of every flow in `p`'s table `t`, by priority.
fn ops_by_priority(p: &Pipeline, t: usize) -> Vec<(u16, Arc<[Op]>)> {
    let mut v: Vec<(u16, Arc<[Op]>)> = p.tables[t]
        .cls
        .iter()
        .map(|r| (r.priority(), r.payload().ops.clone()))
        .collect();
    v.sort_by_key(|(prio, _)| *prio);
    v
}

#[test]
fn flows_with_the_same_actions_share_one_list_and_a_modify_changes_only_its_own() {
    let p = pipe(&[
        "priority=1,ip,nw_dst=198.19.0.1 actions=goto_table:20",
        "priority=2,ip,nw_dst=198.19.0.2 actions=goto_table:20",
        "priority=3,ip,nw_dst=198.19.0.3 actions=output:1",
        "priority=4,ip,nw_dst=198.19.0.4 actions=goto_table:20",
    ]);
    let ops = ops_by_priority(&p, 0);
    assert!(Arc::ptr_eq(&ops[0].1, &ops[1].1), "same actions, one list");
    assert!(Arc::ptr_eq(&ops[0].1, &ops[3].1));
    assert!(!Arc::ptr_eq(&ops[0].1, &ops[2].1));
    assert_eq!(&*ops[2].1, &[Op::Output(1)]);
    // Modify one of the sharers: it alone changes.
    let m = Bundle::new(vec![
        parse_flow_mod(
            FlowModCommand::ModifyStrict,
            "priority=2,ip,nw_dst=198.19.0.2 actions=output:2",
        )
        .unwrap(),
    ]);
    let (q, out) = p.apply(&m, 1).unwrap();
    assert_eq!(out.modified, 1);
    let after = ops_by_priority(&q, 0);
    assert_eq!(&*after[1].1, &[Op::Output(2)]);
    for i in [0, 3] {
        assert_eq!(&*after[i].1, &[Op::Goto(20)], "flow {i} keeps its actions");
    }
    // The old version is untouched.
    assert_eq!(&*ops_by_priority(&p, 0)[1].1, &[Op::Goto(20)]);
    let k = |d: u8| {
        let mut k = tcp_key(10);
        k.set_nw_dst(Ipv4Addr::new(198, 19, 0, d));
        k
    };
    assert_eq!(outs(&run(&q, &k(2))), vec![2]);
    assert_eq!(outs(&run(&q, &k(3))), vec![1]);
}

#[test]
fn a_bundle_of_more_distinct_action_lists_than_are_shared_installs_them_all() {
    let texts: Vec<String> = (0..5000u32)
        .map(|i| {
            format!(
                "priority={},ip,nw_dst=198.19.{}.{} actions=set_field:{i}->reg1,goto_table:20",
                i + 1,
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let p = pipe(&refs);
    let ops = ops_by_priority(&p, 0);
    assert_eq!(ops.len(), 5000);
    for (prio, o) in &ops {
        let i = u64::from(*prio - 1);
        assert_eq!(o.len(), 2, "{o:?}");
        assert!(
            format!("{:?}", o[0]).contains(&i.to_string()),
            "{prio}: {o:?}"
        );
    }
}
