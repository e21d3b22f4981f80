//! Throughput in network namespaces (needs root): pod `p1` sends UDP to pod `p2` across
//! two nodes, with `weft-loadgen` (`sendmmsg` in batches of 64, `recvmmsg`, every
//! datagram carries a run id and a sequence number and is verified on arrival), in
//! 64-, 512- and 1400-byte Ethernet frames, over:
//!
//! - Weft with VXLAN, Geneve and IP-in-IP (l3; `weftd` from `target/release`, else
//!   `target/debug`, or `$WEFTD`);
//! - the kernel's own VXLAN on a bridge on both nodes (the reference topology), and a
//!   plain veth between the pods: the same generator over these shows it is not the
//!   bottleneck.
//!
//! Each iteration sends a fixed number of frames; the time criterion gets is the
//! receiver's (first to last arrival) scaled by sent/arrived, so criterion's
//! `elements/s` and `bytes/s` are those of frames that ARRIVED. Every run prints its
//! loss; a summary table of the median rates ends the run.
//!
//! Without root it prints why and skips (the micro-benchmarks run regardless).
//!
//! Run: `cargo build --release --bins && cargo bench -p bench --bench netns_throughput`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bench::netns::{Bed, Datapath, find_binary, median};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

const SIZES: [usize; 3] = [64, 512, 1400];
/// Frames per iteration.
const FRAMES: u64 = 50_000;

static RUN: AtomicU64 = AtomicU64::new(1);

/// Arrival rate (frames/s) and loss of every run, by (datapath, frame size).
type Rates = BTreeMap<(Datapath, usize), Vec<(f64, f64)>>;
static RATES: Mutex<Rates> = Mutex::new(BTreeMap::new());

fn throughput(c: &mut Criterion) {
    if !netns_tests::lab::privileged("netns_throughput") {
        eprintln!("netns_throughput: skipped (needs root); the micro-benchmarks still run");
        return;
    }
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_weft-loadgen"));
    let Some(weftd) = find_binary("weftd", "WEFTD") else {
        panic!("netns_throughput: weftd not found: run `cargo build --release --bins` first");
    };
    eprintln!("netns_throughput: weftd {}", weftd.display());
    // SAFETY: set before any thread of ours starts (the harness reads it when it
    // starts weftd).
    unsafe { std::env::set_var("WEFTD", &weftd) };
    let datapaths = [
        Datapath::WeftVxlan,
        Datapath::WeftGeneve,
        Datapath::WeftIpip,
        Datapath::Kernel,
        Datapath::Veth,
    ];
    for dp in datapaths {
        let mut bed = match Bed::new(dp, &loadgen) {
            Ok(b) => b,
            Err(e) => panic!("netns_throughput: building {}: {e}", dp.name()),
        };
        let mut g = c.benchmark_group(format!("netns/{}", dp.name()));
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(8));
        for size in SIZES {
            g.throughput(Throughput::ElementsAndBytes {
                elements: FRAMES,
                bytes: FRAMES * size as u64,
            });
            g.bench_function(format!("{size}B"), |b| {
                b.iter_custom(|iters| {
                    let count = FRAMES * iters;
                    let run_id = RUN.fetch_add(1, Ordering::Relaxed);
                    let r = bed
                        .udp(size, count, run_id)
                        .unwrap_or_else(|e| panic!("{} {size} B: {e}", dp.name()));
                    eprintln!("  {}: {}", dp.name(), r.summary());
                    assert_eq!(r.corrupt, 0, "{}: corrupt datagrams", dp.name());
                    RATES
                        .lock()
                        .unwrap()
                        .entry((dp, size))
                        .or_default()
                        .push((r.rate(), r.loss()));
                    r.scaled()
                })
            });
        }
        g.finish();
        let left = bed.cl.teardown();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
    let rates = RATES.lock().unwrap();
    eprintln!("\nnetns_throughput: median arrival rate (frames/s, loss) per datapath");
    eprint!("{:<14}", "datapath");
    for s in SIZES {
        eprint!("{:>26}", format!("{s} B"));
    }
    eprintln!();
    for dp in datapaths {
        eprint!("{:<14}", dp.name());
        for s in SIZES {
            let v = rates.get(&(dp, s)).cloned().unwrap_or_default();
            let r = median(&v.iter().map(|x| x.0).collect::<Vec<_>>());
            let l = median(&v.iter().map(|x| x.1).collect::<Vec<_>>());
            eprint!("{:>26}", format!("{:.0} f/s ({:.1}% loss)", r, l * 100.0));
        }
        eprintln!();
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
