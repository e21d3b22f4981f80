//! Resource properties of the classifier and the exact-match cache, measured with a
//! counting global allocator: lookups never allocate, and a large table stays under the
//! memory budget per flow (300 bytes).

use weft_datapath::testing::{CountingAlloc, antrea_masks, mix, synthetic_packet};
use weft_pipeline::classifier::Classifier;
use weft_pipeline::emc::Emc;
use weft_pipeline::flow_key::FlowKey;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

fn build(n: u64) -> Classifier<u32> {
    let shapes = antrea_masks();
    (0..n)
        .map(|i| {
            let m = shapes[i as usize % shapes.len()];
            (
                synthetic_packet(i),
                m,
                (mix(i ^ 0xabc) % 1000) as u16 + 1,
                i as u32,
            )
        })
        .collect()
}

#[test]
fn memory_per_flow_and_no_allocation_on_lookup() {
    let n = 1_000_000;
    let before = GLOBAL.live();
    let cls = build(n);
    let bytes = GLOBAL.live() - before;
    let per_flow = bytes as f64 / cls.len() as f64;
    println!(
        "{} flows, {} subtables: {per_flow:.1} bytes/flow",
        cls.len(),
        cls.n_subtables()
    );
    assert!(cls.len() as u64 > n * 99 / 100);
    assert!(per_flow < 300.0, "{per_flow} bytes/flow");

    let mut emc: Emc<u32> = Emc::default();
    let pkts: Vec<FlowKey> = (0..1000).map(|i| synthetic_packet(i * 997)).collect();
    let allocs = GLOBAL.allocs();
    for p in &pkts {
        let h = p.hash();
        let v = *cls
            .lookup(p)
            .expect("every packet matches its own rule")
            .payload();
        emc.insert(p, h, 1, v);
        assert_eq!(emc.lookup(p, h, 1), Some(v));
    }
    assert_eq!(GLOBAL.allocs(), allocs, "lookups and EMC use allocated");
}
