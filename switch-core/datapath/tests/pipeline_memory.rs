//! Resource properties of the pipeline, measured with a counting global allocator: the
//! forwarding path (cache hit and miss) never allocates, and installed flows stay under
//! the memory budget (300 bytes per flow). One test, so no other test thread allocates
//! while it counts.

use weft_datapath::testing::CountingAlloc;
use weft_flow::{Bundle, FlowMod, parse_flow};
use weft_pipeline::flow_key::FlowKey;
use weft_pipeline::{FlowCache, Pipeline, PortKind, PortMap, SharedPipeline};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

fn key(i: usize) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set_in_port(9); // not an output port, so no output is skipped
    k.set_dl_type(0x0800);
    k.set_nw_dst(std::net::Ipv4Addr::new(
        10,
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ));
    k.set_nw_proto(17);
    k.set_nw_ttl(64);
    k
}

#[test]
fn forwarding_never_allocates_and_flows_stay_under_budget() {
    let n = 100_000;
    let mut ports = PortMap::new();
    for p in 1..=8 {
        ports.insert(p, &format!("pod{p}"), PortKind::Tap).unwrap();
    }
    let mut changes = vec![FlowMod::Add {
        flow: parse_flow("priority=1,ip actions=dec_ttl,goto_table:1").unwrap(),
    }];
    for i in 0..n - 1 {
        let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        let text = format!(
            "table=1,priority=10,ip,nw_dst=10.{a}.{b}.{c} actions=mod_dl_dst:0a:00:00:{a:02x}:{b:02x}:{c:02x},output:{}",
            i % 8 + 1
        );
        changes.push(FlowMod::Add {
            flow: parse_flow(&text).unwrap(),
        });
    }
    let bundle = Bundle::new(changes);
    let before = GLOBAL.live();
    let shared = SharedPipeline::new(Pipeline::new(ports));
    shared.apply(&bundle, 0).unwrap();
    let per_flow = (GLOBAL.live() - before) / n;
    println!("pipeline: {per_flow} bytes per flow at {n} flows");
    assert!(per_flow < 300, "{per_flow} bytes per flow");

    let p = shared.load_full();
    let mut cache = FlowCache::new(8192);
    let keys: Vec<FlowKey> = (0..4096).map(key).collect();
    let allocs = GLOBAL.allocs();
    let mut outputs = 0;
    for round in 0..3 {
        for k in &keys[..if round == 0 { 4096 } else { 512 }] {
            outputs += p.process(k, 100, 1, &mut cache).actions().len();
        }
    }
    assert_eq!(GLOBAL.allocs(), allocs, "the packet path allocated");
    assert_eq!(outputs, 4096 + 2 * 512);
    assert!(cache.hits() >= 900, "hits {}", cache.hits());
}
