//! Criterion micro-benchmarks: flow key extraction, the exact-match cache (hit) and the
//! classifier (EMC miss → one classifier lookup), for 10 … 1,000,000 flows over 1 and 8
//! masks; building a 100,000-flow classifier from scratch and cloning it (the two ways a
//! bundle's new table can be made); and memory per installed flow at 1,000,000 flows,
//! printed as `bytes/flow` (measured with a counting global allocator).
//!
//! Run: `cargo bench -p bench --bench classifier -- --warm-up-time 1 --measurement-time 3`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use switch_core::classifier::Classifier;
use switch_core::emc::Emc;
use switch_core::flow_key::{Field, FlowKey, FlowMask, TunnelMeta};

/// Counts live heap bytes, so a bench can report what a structure costs.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// splitmix64: deterministic pseudo-random values without a dependency.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Eight match shapes seen in Antrea/OVS pipelines.
fn shapes() -> Vec<FlowMask> {
    let c = FlowMask::CATCH_ALL;
    vec![
        // L2 forwarding: exact in_port + destination MAC.
        c.with_exact(Field::InPort).with_exact(Field::DlDst),
        // L3 routing: destination /24.
        c.with_exact(Field::DlType).with_prefix(Field::NwDst, 24),
        // Pod IP: destination /32.
        c.with_exact(Field::DlType).with_prefix(Field::NwDst, 32),
        // Service VIP:port.
        c.with_exact(Field::DlType)
            .with_exact(Field::NwProto)
            .with_exact(Field::NwDst)
            .with_exact(Field::TpDst),
        // Tunnel L2: VNI + destination MAC.
        c.with_exact(Field::TunId).with_exact(Field::DlDst),
        // Spoof guard: in_port + source IP.
        c.with_exact(Field::InPort)
            .with_exact(Field::DlType)
            .with_exact(Field::NwSrc),
        // Register-tagged pod IP (after a classification table).
        c.with_exact(Field::Reg0)
            .with_exact(Field::DlType)
            .with_exact(Field::NwDst),
        // Policy between /16s for one protocol.
        c.with_exact(Field::DlType)
            .with_prefix(Field::NwSrc, 16)
            .with_prefix(Field::NwDst, 16)
            .with_exact(Field::NwProto),
    ]
}

/// The full key of synthetic packet `i` (a TCP/IPv4 packet with pseudo-random fields).
fn packet(i: u64) -> FlowKey {
    let r = mix(i);
    let r2 = mix(r);
    let mut k = FlowKey::ZERO;
    k.set_in_port((r % 64) as u32 + 1);
    k.set_tun_id(r2 >> 40);
    k.set(Field::DlDst, (r2 & 0xffff_ffff_ffff) as u128);
    k.set(Field::DlSrc, (r >> 16) as u128);
    k.set_dl_type(0x0800);
    k.set(Field::NwSrc, (r >> 32) as u128);
    k.set(Field::NwDst, r as u32 as u128);
    k.set_nw_proto(6);
    k.set_nw_ttl(64);
    k.set_tp_src((r2 >> 16) as u16);
    k.set_tp_dst((r2 >> 48) as u16);
    k.set_reg(0, (r2 >> 8) as u32);
    k
}

type RuleSpec = (FlowKey, FlowMask, u16, u32);

/// `n` rules spread round-robin over the first `n_masks` shapes; rule `i` matches
/// `packet(i)`; priorities pseudo-random in 1..=1000 so early exit rarely helps (close
/// to the worst case: most lookups visit every subtable).
fn rules(n: usize, n_masks: usize) -> Vec<RuleSpec> {
    let shapes = shapes();
    (0..n as u64)
        .map(|i| {
            let m = shapes[i as usize % n_masks];
            let prio = (mix(i ^ 0xabc) % 1000) as u16 + 1;
            (packet(i).masked(&m), m, prio, i as u32)
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
            let before = LIVE.load(Ordering::Relaxed);
            let cls = build(&rs);
            let bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
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
                .map(|j| packet(mix(j ^ 0x5555) % n as u64))
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
