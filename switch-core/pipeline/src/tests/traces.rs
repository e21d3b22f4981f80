//! `trace`: the tables, flows and actions a packet meets, without counting.

use super::*;

#[test]
fn trace_shows_tables_flows_actions_and_result_without_counting() {
    let p = pipe(&[
        "priority=1,ip actions=set_field:5->reg0,resubmit(,2),goto_table:1",
        "table=1,priority=7,reg0=5 actions=dec_ttl,normal",
    ]);
    let mut macs = MacTable::default();
    let mut src = tcp_key(2);
    src.set_dl_src(MAC_B);
    learn(&mut macs, p.ports(), &src, 0);
    let t = p.trace(&tcp_key(1), Some(&macs), 0);
    assert_eq!(t.tables(), vec![(0, true), (2, false), (1, true)]);
    assert!(matches!(
        &t.steps[0],
        TraceStep::Table { depth: 0, table: 0, flow: Some(f) } if f.priority == 1
    ));
    assert!(t.steps.contains(&TraceStep::Table {
        depth: 1,
        table: 2,
        flow: None
    }));
    assert!(t.steps.contains(&TraceStep::Note {
        depth: 1,
        reason: DropReason::TableMiss
    }));
    assert!(t.steps.contains(&TraceStep::Action {
        depth: 0,
        action: weft_flow::Action::DecTtl
    }));
    assert_eq!(t.actions.len(), 1);
    assert_eq!(t.actions[0].1.nw_ttl(), 63);
    assert_eq!(
        t.actions[0].2,
        Some(Forward::Port {
            port: 2,
            tun_dst: 0
        })
    );
    let text = t.to_string();
    assert!(
        text.contains("0. priority=1,ip actions=set_field:0x5->reg0,resubmit(,2),goto_table:1"),
        "{text}"
    );
    assert!(text.contains("    2. no match"), "{text}");
    assert!(
        text.contains("1. table=1,priority=7,reg0=0x5 actions=dec_ttl,normal"),
        "{text}"
    );
    assert!(
        text.contains("final: normal (state 0: learned port 2)"),
        "{text}"
    );
    // No counters were touched, and a miss trace ends in a drop.
    assert_eq!(p.table_stats(0).lookups(), 0);
    assert_eq!(p.dump(&FlowFilter::all(), 0).unwrap()[0].packets, 0);
    let t = p.trace(&FlowKey::ZERO, None, 0);
    assert_eq!(t.drop, Some(DropReason::TableMiss));
    assert!(t.to_string().ends_with("final: drop (table_miss)\n"));
}
