//! Criterion micro-benchmarks: flow key extraction, the exact-match cache (hit) and the
//! classifier (EMC miss → one classifier lookup), for 10 … 1,000,000 flows over 1 and 8
//! masks; building a 100,000-flow classifier from scratch and cloning it (the two ways a
//! bundle's new table can be made); and memory per installed flow at 1,000,000 flows,
//! printed as `bytes/flow` (measured with a counting global allocator).
//!
//! Run: `cargo bench -p bench --bench classifier -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use weft_datapath::testing::{CountingAlloc, antrea_masks, mix, synthetic_packet};
use weft_pipeline::classifier::Classifier;
use weft_pipeline::emc::Emc;
use weft_pipeline::flow_key::{FlowKey, FlowMask, TunnelMeta};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

type RuleSpec = (FlowKey, FlowMask, u16, u32);

/// `n` rules spread round-robin over the first `n_masks` shapes; rule `i` matches
/// `synthetic_packet(i)`; priorities pseudo-random in 1..=1000 so early exit rarely helps (close
/// to the worst case: most lookups visit every subtable).
fn rules(n: usize, n_masks: usize) -> Vec<RuleSpec> {
    let shapes = antrea_masks();
    (0..n as u64)
        .map(|i| {
            let m = shapes[i as usize % n_masks];
            let prio = (mix(i ^ 0xabc) % 1000) as u16 + 1;
            (synthetic_packet(i).masked(&m), m, prio, i as u32)
        })
        .collect()
}

fn build(rules: &[RuleSpec]) -> Classifier<u32> {
    rules.iter().copied().collect()
}

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("classifier");
    g.sample_size(20);
    for &n in &[10usize, 1_000, 100_000, 1_000_000] {
        if n >= 1_000_000 {
            g.sample_size(10);
        }
        for &m in &[1usize, 8] {
            let rs = rules(n, m);
            let before = GLOBAL.live();
            let cls = build(&rs);
            let bytes = GLOBAL.live().saturating_sub(before);
            println!(
                "memory: {n} rules requested, {} installed over {} masks: {} bytes, {:.1} bytes/flow",
                cls.len(),
                cls.n_subtables(),
                bytes,
                bytes as f64 / cls.len() as f64
            );
            drop(rs);
            // 1024 hot packets, each matching one of the rules.
            let pkts: Vec<FlowKey> = (0..1024u64)
                .map(|j| synthetic_packet(mix(j ^ 0x5555) % n as u64))
                .collect();
            for p in &pkts {
                assert!(
                    cls.lookup(p).is_some(),
                    "every benchmark packet hits a rule"
                );
            }
            let id = format!("{n}flows_{m}masks");
            g.bench_function(BenchmarkId::new("miss_classifier_lookup", &id), |b| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    black_box(cls.lookup(black_box(&pkts[i])).map(|r| *r.payload()))
                })
            });
            let mut emc: Emc<u32> = Emc::default();
            for p in &pkts {
                emc.insert(p, p.hash(), 1, *cls.lookup(p).unwrap().payload());
            }
            // A 2-way cache may have evicted a few of the 1024: measure the hits only.
            let cached: Vec<FlowKey> = pkts
                .iter()
                .filter(|p| emc.get(p, 1).is_some())
                .copied()
                .collect();
            assert!(
                cached.len() > 1000,
                "{} of 1024 hot keys cached",
                cached.len()
            );
            g.bench_function(BenchmarkId::new("hit_emc", &id), |b| {
                let mut i = 0usize;
                b.iter(|| {
                    i += 1;
                    if i == cached.len() {
                        i = 0;
                    }
                    let p = black_box(&cached[i]);
                    black_box(emc.lookup(p, p.hash(), 1))
                })
            });
            // The worker's real sequence on a miss: EMC probe, classifier, EMC fill.
            g.bench_function(BenchmarkId::new("miss_emc_then_classifier", &id), |b| {
                let mut emc: Emc<u32> = Emc::default();
                let mut i = 0usize;
                let mut version = 0u64;
                b.iter(|| {
                    i = (i + 1) & 1023;
                    if i == 0 {
                        // A new version each pass over the 1024 keys: every probe misses.
                        version += 1;
                    }
                    let p = black_box(&pkts[i]);
                    let h = p.hash();
                    let v = match emc.lookup(p, h, version) {
                        Some(v) => v,
                        None => {
                            let v = cls.lookup(p).map_or(u32::MAX, |r| *r.payload());
                            emc.insert(p, h, version, v);
                            v
                        }
                    };
                    black_box(v)
                })
            });
        }
    }
    g.finish();
}

fn building(c: &mut Criterion) {
    let mut g = c.benchmark_group("classifier_build");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for &m in &[1usize, 8] {
        let rs = rules(100_000, m);
        g.bench_function(format!("from_scratch_100000flows_{m}masks"), |b| {
            b.iter(|| black_box(build(&rs)))
        });
        let cls = build(&rs);
        g.bench_function(format!("clone_100000flows_{m}masks"), |b| {
            b.iter_batched(|| (), |()| black_box(cls.clone()), BatchSize::PerIteration)
        });
    }
    g.finish();
}

fn extraction(c: &mut Criterion) {
    // Ethernet + IPv4 + TCP, 54 bytes of headers.
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 19, 1, 2, 198, 19, 2, 3,
    ]);
    f.extend_from_slice(&[0x9c, 0x40, 0, 80, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x10, 0, 0]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    let tun = TunnelMeta::NONE;
    c.bench_function("flow_key/extract_ipv4_tcp", |b| {
        let mut k = FlowKey::ZERO;
        b.iter(|| {
            k.extract_into(black_box(&f), 1, &tun).unwrap();
            black_box(&k);
        })
    });
    let k = FlowKey::extract(&f, 1, &tun).unwrap();
    c.bench_function("flow_key/hash", |b| {
        b.iter(|| black_box(black_box(&k).hash()))
    });
}

criterion_group!(benches, extraction, lookups, building);
criterion_main!(benches);
