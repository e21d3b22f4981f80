//! Criterion benchmarks of the flow pipeline: parsing the text of 100,000 flows, building
//! and publishing them as one bundle (the `ovs-ofctl --bundle add-flows` equivalent;
//! target < 250 ms), a full 3-table pipeline pass on a cache miss and on a cache hit,
//! and memory per installed flow at 1,000,000 flows, printed as `bytes/flow` (target
//! < 300 with one counter lane; measured with a counting global allocator: requested
//! bytes, without the allocator's own overhead). Flow counters have one lane per worker
//! (16 bytes per flow each), so the figure is also printed for 2 and 8 lanes.
//!
//! The flows are Antrea-shaped: table 0 classifies by ingress port and source MAC,
//! table 1 is L3 forwarding with one flow per destination pod that rewrites the
//! destination MAC and sets a register (unique actions per flow, the expensive case),
//! table 2 outputs by register.
//!
//! `cache_hit_2_workers` is the hit with a second thread hitting the same flows meanwhile
//! (on a machine with at least two free cores it shows what sharing counters costs).
//!
//! Run: `cargo bench -p bench --bench pipeline -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use weft_datapath::testing::CountingAlloc;
use weft_flow::{Bundle, FlowMod, parse_flow};
use weft_pipeline::flow_key::FlowKey;
use weft_pipeline::{FlowCache, Pipeline, PortKind, PortMap, SharedPipeline};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

const N_PORTS: u32 = 64;

fn ports() -> PortMap {
    let mut m = PortMap::new();
    for p in 1..=N_PORTS {
        m.insert(p, &format!("pod{p}"), PortKind::Tap).unwrap();
    }
    m.insert(100, "tun0", PortKind::Tunnel).unwrap();
    m
}

/// The text of `n` flows: 1% classification, 1% output, the rest L3 forwarding.
fn flow_texts(n: usize) -> Vec<String> {
    let small = (n / 100).max(1);
    let mut v = Vec::with_capacity(n);
    for i in 0..small {
        let port = i as u32 % N_PORTS + 1;
        v.push(format!(
            "table=0,priority=200,in_port={port},dl_src=02:00:{:02x}:{:02x}:{:02x}:01 actions=set_field:0x1->reg0,goto_table:1",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    for i in 0..small {
        v.push(format!(
            "table=2,priority=100,reg1={i} actions=output:{}",
            i as u32 % N_PORTS + 1
        ));
    }
    for i in 0..n - 2 * small {
        let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        v.push(format!(
            "table=1,priority=200,ip,reg0=0x1,nw_dst=10.{a}.{b}.{c} actions=mod_dl_dst:0a:00:00:{a:02x}:{b:02x}:{c:02x},set_field:{}->reg1,goto_table:2",
            i % small
        ));
    }
    v
}

fn bundle_of(texts: &[String]) -> Bundle {
    Bundle::new(
        texts
            .iter()
            .map(|t| FlowMod::Add {
                flow: parse_flow(t).unwrap(),
            })
            .collect(),
    )
}

/// A packet that goes through all three tables (port `i`'s pod to pod `i`).
fn key(i: usize) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set_in_port(1);
    k.set_dl_src([2, 0, 0, 0, 0, 1]);
    k.set_dl_dst([2, 0, 0, 0, 0, 2]);
    k.set_dl_type(0x0800);
    k.set_nw_src(std::net::Ipv4Addr::new(10, 0, 0, 1));
    k.set_nw_dst(std::net::Ipv4Addr::new(
        10,
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8,
    ));
    k.set_nw_proto(6);
    k.set_nw_ttl(64);
    k.set_tp_src(40000 + (i % 1000) as u16);
    k.set_tp_dst(80);
    k
}

fn bench_bundle(c: &mut Criterion) {
    let texts = flow_texts(100_000);
    let mut g = c.benchmark_group("bundle_100k");
    g.sample_size(10);
    g.bench_function("parse_text", |b| b.iter(|| black_box(bundle_of(&texts))));
    let bundle = bundle_of(&texts);
    g.bench_function("build_and_publish", |b| {
        b.iter_batched(
            || SharedPipeline::new(Pipeline::new(ports())),
            |shared| {
                shared.apply(&bundle, 0).unwrap();
                shared
            },
            BatchSize::PerIteration,
        )
    });
    // One more flow into a pipeline of 100,000: only the touched table is cloned.
    let shared = SharedPipeline::new(Pipeline::new(ports()));
    shared.apply(&bundle, 0).unwrap();
    let one = bundle_of(&["table=2,priority=5,reg1=0x77777 actions=output:3".to_string()]);
    g.bench_function("add_one_to_100k", |b| {
        b.iter(|| shared.apply(&one, 0).unwrap())
    });
    g.finish();
}

fn bench_pass(c: &mut Criterion) {
    let texts = flow_texts(100_000);
    let shared = SharedPipeline::new(Pipeline::new(ports()));
    shared.apply(&bundle_of(&texts), 0).unwrap();
    let p = shared.load_full();
    let n_l3 = 100_000 - 2 * 1000;
    let keys: Vec<FlowKey> = (0..n_l3).map(key).collect();
    {
        let mut cache = FlowCache::new(16);
        let r = p.process(&keys[5], 100, 0, &mut cache);
        assert_eq!(
            r.actions().len(),
            1,
            "the bench packet must reach an output"
        );
    }
    let mut g = c.benchmark_group("pipeline_pass_3_tables");
    // Miss: a cache far smaller than the key set, cycled in order.
    let mut cache = FlowCache::new(1024);
    let mut i = 0usize;
    g.bench_function("cache_miss", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(p.process(&keys[i], 100, 0, &mut cache).actions().len())
        })
    });
    let mut cache = FlowCache::new(1024);
    g.bench_function("cache_hit", |b| {
        b.iter(|| black_box(p.process(&keys[7], 100, 0, &mut cache).actions().len()))
    });
    // The same hit while a second worker hits the same flows on its own lane: what
    // counters shared between workers would cost (the line would move between cores).
    let shared = SharedPipeline::new(Pipeline::with_lanes(ports(), 2));
    shared.apply(&bundle_of(&texts), 0).unwrap();
    let p2 = shared.load_full();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut cache = FlowCache::for_lane(1024, 1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..1000 {
                    black_box(p2.process(&keys[7], 100, 0, &mut cache).actions().len());
                }
            }
        });
        // Stops the other worker however this thread leaves the scope (a panic too).
        struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        let mut cache = FlowCache::for_lane(1024, 0);
        g.bench_function("cache_hit_2_workers", |b| {
            b.iter(|| black_box(p2.process(&keys[7], 100, 0, &mut cache).actions().len()))
        });
    });
    g.finish();
}

fn memory_per_flow() {
    let n = 1_000_000;
    let bundle = bundle_of(&flow_texts(n));
    for lanes in [1, 2, 8] {
        let before = GLOBAL.live();
        let t = Instant::now();
        let shared = SharedPipeline::new(Pipeline::with_lanes(ports(), lanes));
        shared.apply(&bundle, 0).unwrap();
        let took = t.elapsed();
        let used = GLOBAL.live() - before;
        assert_eq!(shared.load().len(), n);
        println!(
            "pipeline memory: {n} flows in 3 tables, {lanes} counter lane(s): {} bytes/flow ({} MB); bundle built in {:?}",
            used / n,
            used >> 20,
            took
        );
    }
    drop(bundle);
}

fn benches(c: &mut Criterion) {
    memory_per_flow();
    bench_bundle(c);
    bench_pass(c);
}

criterion_group! {
    name = pipeline;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(pipeline);
