//! `compare`: Weft beside the Linux kernel's VXLAN and Open vSwitch's userspace
//! datapath, on the same two-node namespace topology, in one run (as root).
//!
//! ```text
//! cargo build --release --bins && sudo target/release/compare [--rounds 3] [--duration 5]
//!     [--only weft-vxlan,weft-vxlan-gso,weft-vxlan-gso-pinned,weft-geneve,weft-geneve-gso,weft-ipip,kernel,ovs,veth] [--udp-frames 300000]
//!     [--out target/weft-compare] [--no-install] [--weftd PATH] [--txqueuelen N]
//! ```
//!
//! `--txqueuelen` is the queue length of Weft's pod TAP ports (`bench::netns::
//! POD_TXQUEUELEN` by default; 0: the kernel's 1000). A TAP has no backpressure, so
//! the UDP burst beyond it is dropped by the sending pod's kernel (`tap_queue_full`).
//!
//! `WEFT_BENCH_WEFTD_FLAGS` in the environment adds flags to every Weft node's `weftd`
//! (say `--pin-cpus=on`, measured in docs/DESIGN.md's latency section); the table says
//! which.
//!
//! `--weftd` measures another build of `weftd` (say, an older commit's, for a before and
//! after table) instead of the one next to this binary.
//!
//! Each round builds every selected datapath in turn (see `bench::netns`), measures
//! TCP with one stream and with four (`iperf3 -t DURATION -J`), UDP 64-byte frames per
//! second that arrived (`weft-loadgen`) and ping round trips (200 at 10 ms: their median,
//! 99th percentile and mean), and tears it down. The medians over the rounds, and their
//! ratio to the kernel's VXLAN, go to `table.txt`, `results.csv`, `chart.svg` (throughput)
//! and `latency.svg` (ping median and p99) in the output directory. Weft has a row per
//! underlay mode (`-gso`: the tunnel-GSO underlay TAP; otherwise the tunnel's sockets),
//! and each round checks in `weftd`'s metrics that the mode is the one in use;
//! `weft-vxlan-gso-pinned` is the GSO TAP with `--pin-cpus=on` (the latency setting).
//! Open vSwitch is installed with apt-get when it is missing (unless `--no-install`), or
//! skipped.
//! Ctrl-C stops after the current step and removes everything.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bench::netns::{Bed, Datapath, PINGS, median, ovs_installed, percentile};
use plotters::prelude::*;

/// The measures, in table order: (key, heading, unit).
const MEASURES: [(&str, &str, &str); 6] = [
    ("tcp1", "TCP 1 stream", "Gbit/s"),
    ("tcp4", "TCP 4 streams", "Gbit/s"),
    ("udp64", "UDP 64 B", "Mframes/s"),
    ("rtt_median", "ping median", "ms"),
    ("rtt_p99", "ping p99", "ms"),
    ("rtt_avg", "ping avg", "ms"),
];

struct Opts {
    rounds: u32,
    duration: u32,
    only: Vec<Datapath>,
    udp_frames: u64,
    out: PathBuf,
    install: bool,
    weftd: Option<PathBuf>,
    txqueuelen: u32,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: compare [--rounds N] [--duration SECS] [--only LIST] [--udp-frames N] \
         [--out DIR] [--no-install] [--weftd PATH] [--txqueuelen N]\n  LIST: comma-separated of {}",
        Datapath::ALL.map(|d| d.name()).join(",")
    );
    std::process::exit(2)
}

fn parse_args(exe_dir: &std::path::Path) -> Opts {
    let mut o = Opts {
        rounds: 3,
        duration: 5,
        only: Datapath::ALL.to_vec(),
        udp_frames: 300_000,
        out: exe_dir
            .parent()
            .map(|t| t.join("weft-compare"))
            .unwrap_or_else(|| PathBuf::from("weft-compare")),
        install: true,
        weftd: None,
        txqueuelen: bench::netns::POD_TXQUEUELEN,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--rounds" => o.rounds = val().parse().unwrap_or_else(|_| usage("bad --rounds")),
            "--duration" => o.duration = val().parse().unwrap_or_else(|_| usage("bad --duration")),
            "--udp-frames" => {
                o.udp_frames = val().parse().unwrap_or_else(|_| usage("bad --udp-frames"))
            }
            "--out" => o.out = PathBuf::from(val()),
            "--only" => {
                o.only = val()
                    .split(',')
                    .map(|n| {
                        Datapath::from_name(n.trim())
                            .unwrap_or_else(|| usage(&format!("unknown datapath {n}")))
                    })
                    .collect()
            }
            "--no-install" => o.install = false,
            "--weftd" => o.weftd = Some(PathBuf::from(val())),
            "--txqueuelen" => {
                o.txqueuelen = val()
                    .parse()
                    .ok()
                    .filter(|n| *n <= weft_flow::port::MAX_TXQUEUELEN)
                    .unwrap_or_else(|| usage("bad --txqueuelen: 0 to 524288"))
            }
            "-h" | "--help" => usage("compare: Weft vs kernel VXLAN vs OVS userspace"),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    o.rounds = o.rounds.clamp(1, 50);
    o.duration = o.duration.clamp(1, 60);
    o
}

/// Installs Open vSwitch when it is missing and we may; whether it is there.
fn ensure_ovs(install: bool) -> bool {
    if ovs_installed() {
        return true;
    }
    if !install || !std::path::Path::new("/usr/bin/apt-get").exists() {
        return false;
    }
    eprintln!("compare: Open vSwitch is missing: apt-get install -y openvswitch-switch");
    let ok = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "openvswitch-switch",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    ok && ovs_installed()
}

type Results = BTreeMap<(Datapath, &'static str), Vec<f64>>;

fn measure(
    dp: Datapath,
    o: &Opts,
    loadgen: &std::path::Path,
    run_id: u64,
    stop: &AtomicBool,
    res: &mut Results,
) -> Result<Option<String>, String> {
    let t = Instant::now();
    let txq = (o.txqueuelen > 0).then_some(o.txqueuelen);
    let mut bed = Bed::with_txqueuelen(dp, loadgen, txq).map_err(|e| format!("building: {e}"))?;
    // A `-gso` row on a kernel without tunnel GSO runs over sockets: say so.
    let underlay = bed.underlay();
    let note = match (dp.underlay_wanted(), underlay) {
        (Some(want), Some(got)) if want != got => {
            Some(format!("{}: underlay is {got}, not {want}", dp.name()))
        }
        (Some(want), None) => Some(format!(
            "{}: underlay not known (metrics unreadable), meant {want}",
            dp.name()
        )),
        _ => None,
    };
    let mut put = |k: &'static str, v: f64| res.entry((dp, k)).or_default().push(v);
    let check = || {
        if stop.load(Ordering::Relaxed) {
            Err("interrupted".to_string())
        } else {
            Ok(())
        }
    };
    check()?;
    let tcp1 = bed
        .iperf(1, o.duration)
        .map_err(|e| format!("iperf3: {e}"))?;
    put("tcp1", tcp1 / 1e9);
    check()?;
    let tcp4 = bed
        .iperf(4, o.duration)
        .map_err(|e| format!("iperf3 -P 4: {e}"))?;
    put("tcp4", tcp4 / 1e9);
    check()?;
    let udp = bed
        .udp(64, o.udp_frames, run_id)
        .map_err(|e| format!("udp: {e}"))?;
    put("udp64", udp.rate() / 1e6);
    put("udp64_loss", udp.loss() * 100.0);
    if udp.loss() > 0.01 {
        // Say where: the kernel's drop counters and, for Weft, its port drop reasons.
        eprintln!(
            "  {}: {}; where counted:\n{}",
            dp.name(),
            udp.summary(),
            bed.loss_report()
        );
    }
    check()?;
    let rtt = bed.ping(PINGS).map_err(|e| format!("ping: {e}"))?;
    put("rtt_median", median(&rtt));
    put("rtt_p99", percentile(&rtt, 99.0));
    put("rtt_avg", rtt.iter().sum::<f64>() / rtt.len() as f64);
    eprintln!(
        "  {:<12} TCP {:.2} Gbit/s, TCP x4 {:.2} Gbit/s, UDP 64 B {:.0} frames/s \
         (loss {:.1}%), ping median {:.3} ms, p99 {:.3} ms  [{:.0} s]",
        dp.name(),
        tcp1 / 1e9,
        tcp4 / 1e9,
        udp.rate(),
        udp.loss() * 100.0,
        median(&rtt),
        percentile(&rtt, 99.0),
        t.elapsed().as_secs_f64()
    );
    let left = bed.cl.teardown();
    if !left.is_empty() {
        return Err(format!("left behind: {left:?}"));
    }
    Ok(note)
}

fn main() {
    let exe = std::env::current_exe().expect("own path");
    let exe_dir = exe.parent().expect("a directory").to_path_buf();
    let o = parse_args(&exe_dir);
    if !netns_tests::lab::privileged("compare") {
        std::process::exit(1);
    }
    let weftd = o.weftd.clone().unwrap_or_else(|| exe_dir.join("weftd"));
    let loadgen = exe_dir.join("weft-loadgen");
    let weft_wanted = o.only.iter().any(|d| d.name().starts_with("weft"));
    if weft_wanted && !weftd.is_file() {
        eprintln!(
            "compare: {} is missing: run `cargo build --release --bins` first",
            weftd.display()
        );
        std::process::exit(1);
    }
    if !loadgen.is_file() {
        eprintln!(
            "compare: {} is missing: run `cargo build --release --bins`",
            loadgen.display()
        );
        std::process::exit(1);
    }
    // SAFETY: no other thread runs yet; the harness reads WEFTD when it starts weftd.
    unsafe { std::env::set_var("WEFTD", &weftd) };
    let mut notes = Vec::new();
    if o.weftd.is_some() {
        notes.push(format!("weftd measured: {}", weftd.display()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone()).expect("signal handler");
    }
    let mut only = o.only.clone();
    if only.contains(&Datapath::Ovs) && !ensure_ovs(o.install) {
        let n = "Open vSwitch (openvswitch-switch) is not installed: OVS skipped".to_string();
        eprintln!("compare: {n}");
        notes.push(n);
        only.retain(|d| *d != Datapath::Ovs);
    }
    let ovs_version = if only.contains(&Datapath::Ovs) {
        Command::new("ovs-vswitchd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(String::from)
            })
            .unwrap_or_default()
    } else {
        String::new()
    };
    let mut res = Results::new();
    let started = Instant::now();
    let mut run_id = std::process::id() as u64 * 1000;
    'rounds: for round in 1..=o.rounds {
        eprintln!("round {round}/{}", o.rounds);
        for &dp in &only {
            if stop.load(Ordering::Relaxed) {
                break 'rounds;
            }
            run_id += 1;
            match measure(dp, &o, &loadgen, run_id, &stop, &mut res) {
                Ok(None) => {}
                Ok(Some(n)) => {
                    eprintln!("  {n}");
                    notes.push(format!("round {round}: {n}"));
                }
                Err(e) => {
                    eprintln!("  {:<12} FAILED: {e}", dp.name());
                    notes.push(format!("round {round}: {}: {}", dp.name(), first_line(&e)));
                }
            }
        }
    }
    if stop.load(Ordering::Relaxed) {
        eprintln!("compare: interrupted; everything was removed");
        notes.push("interrupted: partial results".to_string());
    }
    let med = |dp: Datapath, k: &str| {
        res.iter()
            .find(|((d, kk), _)| *d == dp && *kk == k)
            .map_or(f64::NAN, |(_, v)| median(v))
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    // The table.
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Weft vs kernel VXLAN vs OVS userspace: {date}, {cpus} cores ({cpu_model}), Linux {kernel}"
    );
    let _ = writeln!(
        t,
        "median of {} round(s); iperf3 -t {}; UDP: {} x 64-byte frames with weft-loadgen \
         (sendmmsg x64), frames that arrived; ping -c {PINGS} -i 0.01 (median, 99th percentile, \
         mean of each round's pings); (xN.NN) = ratio to kernel VXLAN",
        o.rounds, o.duration, o.udp_frames
    );
    let _ = writeln!(
        t,
        "pods 198.19.1.11 -> 198.19.2.11 (MTU 1450) on nodes n1/n2 (198.18.0.1/.2, veths on a \
         bridge); 1 process per node, 2 cores shared by everything"
    );
    let _ = writeln!(t);
    let _ = write!(t, "{:<26}", "datapath");
    for (_, h, u) in MEASURES {
        let _ = write!(t, "{:>24}", format!("{h} ({u})"));
    }
    let _ = writeln!(t, "{:>12}", "UDP loss");
    for &dp in &only {
        let _ = write!(t, "{:<26}", dp.describe());
        for (k, _, _) in MEASURES {
            let v = med(dp, k);
            let base = med(Datapath::Kernel, k);
            let cell = if v.is_nan() {
                "-".to_string()
            } else if base.is_nan() || base == 0.0 {
                fmt_val(k, v)
            } else {
                format!("{} (x{:.2})", fmt_val(k, v), v / base)
            };
            let _ = write!(t, "{cell:>24}");
        }
        let _ = writeln!(t, "{:>11.1}%", med(dp, "udp64_loss"));
    }
    let _ = writeln!(t);
    if only.contains(&Datapath::Ovs) {
        let _ = writeln!(
            t,
            "* {ovs_version}, datapath_type=netdev; TSO, GSO and tx checksumming turned off on \
             the pod veths (ethtool -K IF tso off gso off tx off): OVS 3.1's userspace VXLAN \
             stalls TCP otherwise."
        );
    }
    let _ = writeln!(
        t,
        "Weft: weftd (release build), l3 (Antrea-style routing), TAP pod ports ({}); the \
         underlay: \"sockets\" = the tunnel's UDP sockets (--tunnel-gso=off), \"GSO TAP\" = \
         the tunnel-GSO underlay TAP (--tunnel-gso=on; checked each round in weftd's \
         weft_underlay_tunnel_gso metric); \"pinned\" = also --pin-cpus=on (worker i on \
         CPU i, short TAP frames to the sending CPU's worker, long ones to the next: the \
         latency setting); kernel: vxlan device on a bridge per node (flannel's VXLAN \
         backend); veth: the two pods on one veth pair (no overlay, the ceiling).",
        if o.txqueuelen > 0 {
            format!("txqueuelen={}", o.txqueuelen)
        } else {
            "the kernel's txqueuelen, 1000".to_string()
        }
    );
    if let Some(f) = std::env::var_os("WEFT_BENCH_WEFTD_FLAGS").filter(|f| !f.is_empty()) {
        let _ = writeln!(
            t,
            "Every weftd also ran with: {} (WEFT_BENCH_WEFTD_FLAGS)",
            f.to_string_lossy()
        );
    }
    for n in &notes {
        let _ = writeln!(t, "note: {n}");
    }
    let _ = writeln!(t, "total time {:.0} s", started.elapsed().as_secs_f64());
    print!("{t}");

    // CSV: one row per datapath and measure, every round, the median and the ratio.
    let mut csv = String::from("datapath,measure,unit,median,ratio_to_kernel,rounds\n");
    for &dp in &only {
        for (k, _, u) in MEASURES.iter().copied().chain([("udp64_loss", "", "%")]) {
            let v = res.get(&(dp, k)).cloned().unwrap_or_default();
            let m = median(&v);
            let base = med(Datapath::Kernel, k);
            let ratio = if base.is_finite() && base > 0.0 {
                format!("{:.3}", m / base)
            } else {
                String::new()
            };
            let _ = writeln!(
                csv,
                "{},{k},{u},{m:.4},{ratio},{}",
                dp.name(),
                v.iter()
                    .map(|x| format!("{x:.4}"))
                    .collect::<Vec<_>>()
                    .join(";")
            );
        }
    }
    if let Err(e) = std::fs::create_dir_all(&o.out)
        .and_then(|_| std::fs::write(o.out.join("table.txt"), &t))
        .and_then(|_| std::fs::write(o.out.join("results.csv"), &csv))
    {
        eprintln!("compare: writing {}: {e}", o.out.display());
        std::process::exit(1);
    }
    let chart = o.out.join("chart.svg");
    if let Err(e) = draw(&chart, &only, &med) {
        eprintln!("compare: chart: {e}");
    }
    if let Err(e) = draw_latency(&o.out.join("latency.svg"), &only, &med) {
        eprintln!("compare: latency chart: {e}");
    }
    eprintln!(
        "compare: wrote {}/{{table.txt,results.csv,chart.svg,latency.svg}}",
        o.out.display()
    );
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn fmt_val(k: &str, v: f64) -> String {
    match k {
        "udp64" => format!("{v:.3}"),
        "rtt_median" | "rtt_p99" | "rtt_avg" => format!("{v:.3}"),
        _ => format!("{v:.2}"),
    }
}

/// Bar charts: TCP Gbit/s (1 and 4 streams) and UDP 64-byte Mframes/s per datapath.
fn draw(
    path: &std::path::Path,
    dps: &[Datapath],
    med: &dyn Fn(Datapath, &str) -> f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(650);
    let n = dps.len().max(1);
    let label = |x: &f64| datapath_at(dps, *x);
    let val = |d: Datapath, k: &str| finite_or_zero(med(d, k));
    // TCP.
    paired_bars(
        &left,
        "TCP throughput (iperf3), Gbit/s",
        "Gbit/s",
        50,
        dps,
        &val,
        [("tcp1", "1 stream"), ("tcp4", "4 streams")],
        [RGBColor(70, 130, 180), RGBColor(230, 140, 50)],
        (1, 0.05),
        &label,
    )?;
    // UDP.
    let top = dps.iter().map(|&d| val(d, "udp64")).fold(0.01, f64::max) * 1.15;
    let mut c = ChartBuilder::on(&right)
        .caption("UDP 64 B frames arrived, Mframes/s", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&label)
        .y_desc("Mframes/s")
        .draw()?;
    c.draw_series(dps.iter().enumerate().map(|(i, &d)| {
        Rectangle::new(
            [(i as f64 + 0.2, 0.0), (i as f64 + 0.8, val(d, "udp64"))],
            RGBColor(90, 160, 90).filled(),
        )
    }))?;
    c.draw_series(dps.iter().enumerate().map(|(i, &d)| {
        Text::new(
            format!("{:.3}", val(d, "udp64")),
            (i as f64 + 0.3, val(d, "udp64") + top * 0.02),
            ("sans-serif", 12),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// Ping round trips per datapath: the median and the 99th percentile (medians over the
/// rounds), in ms, side by side.
fn draw_latency(
    path: &std::path::Path,
    dps: &[Datapath],
    med: &dyn Fn(Datapath, &str) -> f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let label = |x: &f64| datapath_at(dps, *x);
    let val = |d: Datapath, k: &str| finite_or_zero(med(d, k));
    paired_bars(
        &root,
        &format!("ping round trip (ping -c {PINGS} -i 0.01), ms"),
        "ms",
        60,
        dps,
        &val,
        [("rtt_median", "median"), ("rtt_p99", "p99")],
        [RGBColor(120, 90, 170), RGBColor(200, 80, 80)],
        (3, 0.02),
        &label,
    )?;
    root.present()?;
    Ok(())
}

/// The datapath whose bars stand around `x` (at the middle of its slot), for an axis
/// label; empty elsewhere.
fn datapath_at(dps: &[Datapath], x: f64) -> String {
    let i = x.floor() as usize;
    if (x - x.floor() - 0.5).abs() < 1e-6 && i < dps.len() {
        dps[i].name().to_string()
    } else {
        String::new()
    }
}

/// A median as a bar's height: 0 for a measure that has none.
fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// Two bars per datapath (the measures `keys`, in `colors`, with a legend), each with its
/// value written above it with `digits` decimals at `text_dx` into the bar.
#[allow(clippy::too_many_arguments)]
fn paired_bars(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    y_label_size: u32,
    dps: &[Datapath],
    val: &dyn Fn(Datapath, &str) -> f64,
    keys: [(&str, &str); 2],
    colors: [RGBColor; 2],
    (digits, text_dx): (usize, f64),
    label: &dyn Fn(&f64) -> String,
) -> Result<(), Box<dyn std::error::Error>> {
    let n = dps.len().max(1);
    let top = dps
        .iter()
        .flat_map(|&d| keys.map(|(k, _)| val(d, k)))
        .fold(0.01, f64::max)
        * 1.15;
    let mut c = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(y_label_size)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)?;
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(label)
        .y_desc(y_desc)
        .draw()?;
    for (j, (k, name)) in keys.iter().enumerate() {
        let col = colors[j];
        c.draw_series(dps.iter().enumerate().map(|(i, &d)| {
            let x0 = i as f64 + 0.1 + 0.4 * j as f64;
            Rectangle::new([(x0, 0.0), (x0 + 0.4, val(d, k))], col.filled())
        }))?
        .label(*name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], col.filled()));
        c.draw_series(dps.iter().enumerate().map(|(i, &d)| {
            let x0 = i as f64 + 0.1 + 0.4 * j as f64;
            Text::new(
                format!("{:.*}", digits, val(d, k)),
                (x0 + text_dx, val(d, k) + top * 0.02),
                ("sans-serif", 12),
            )
        }))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
