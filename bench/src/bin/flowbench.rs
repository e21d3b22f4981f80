//! `flowbench`: flow programming at Antrea scale, Weft (`weftctl`) beside Open vSwitch
//! 3.1 (`ovs-ofctl`, userspace bridge `datapath_type=netdev`), with the same flows, on
//! one machine (as root).
//!
//! ```text
//! cargo build --release -p bench -p weftd -p weftctl -p netns-tests --bins
//! sudo target/release/flowbench [--rounds 3] [--small 100000] [--large 1000000]
//!     [--seed 1] [--out target/weft-flowbench] [--timeout 900] [--quick] [--rt]
//! target/release/flowbench --write-flows DIR [--small N] [--large N] [--seed N]
//! ```
//!
//! Two switches in namespaces of one lab (removed at the end, also on failure or
//! Ctrl-C): a `weftd` (one worker) with eight TAP ports, ports 1 and 2 the interfaces of
//! two pods; and `ovsdb-server` + `ovs-vswitchd` (their database, sockets and logs in the
//! lab directory, see `bench::netns::OvsNode`) with bridge `br0` (`fail-mode=secure`, so
//! nothing forwards without flows), ports 1 and 2 veths to two pods and 3-8 internal
//! ports. The flows come from `bench::flowgen` (Antrea's tables 0, 10, 20, 30; the first
//! ones forward between the two pods). Every case runs `--rounds` times per side, and
//! the table has the medians and their ratio:
//!
//! - add-flows SMALL and LARGE: `ovs-ofctl --bundle add-flows br0 FILE` vs
//!   `weftctl add-flows FILE`, on an empty table;
//! - one add-flow on the SMALL table (from start to exit of the command);
//! - dump-flows SMALL and LARGE, output to /dev/null;
//! - replace-flows SMALL and LARGE with 1% of the flows' actions changed (each round
//!   swaps between the two files);
//! - restart with LARGE flows until a packet passes between the pods: weftd is killed
//!   (SIGKILL) and started again (it restores its flows from its state directory);
//!   `ovs-vswitchd` is killed and started again, and then, since it keeps no flows across
//!   a restart, the controller's `ovs-ofctl --bundle add-flows` adds them again.
//!
//! While Weft commits LARGE and dumps LARGE, a steady UDP stream between its pods (one
//! datagram per ms, `weft-loadgen stream` / `gaps`) records the largest gap between two
//! arrivals and the losses; before the commit the same stream runs as long alone, with
//! nothing asked of the switch (the machine's own floor), and each gap is told with the
//! hypervisor's steal time in it (`weft-loadgen gaps`). The flow counts are checked after every add and replace
//! (`dump-flows`, lines with `actions=`), and weftd's VmRSS is noted. `table.txt` and
//! `results.csv` go to the output directory. `--quick` (1 round, 2,000 and 20,000
//! flows) checks the whole harness in a minute. `--rt` runs weftd's worker threads and
//! the stream's sender and receiver `SCHED_FIFO` (priority 10), so that what other
//! processes on a loaded machine do to their scheduling drops out of the gaps: a gap
//! left with `--rt` is the switch's own. `--write-flows DIR` only writes the four flow
//! files (`flows-{small,large}-{orig,changed}.txt`) to DIR and exits, for timing one
//! case by hand (no root needed).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bench::flowgen::{self, POD_A, POD_B, Pod, Spec};
use bench::flowtable::{self, Gap, Row, Target};
use bench::netns::{OvsNode, find_binary, ovs_installed};
use netns_tests::lab::{Lab, LabError, Ns, ProcId};
use netns_tests::node::{Weftd, WeftdSpec, wait_for_ping_fast};

/// Ports on each switch (the flows name 1..=PORTS).
const PORTS: u32 = 8;
/// The UDP port of the gap stream.
const STREAM_PORT: u16 = 9100;

type Result<T> = std::result::Result<T, String>;

struct Opts {
    rounds: u32,
    small: usize,
    large: usize,
    seed: u64,
    out: PathBuf,
    timeout: Duration,
    quick: bool,
    rt: bool,
    write_flows: Option<PathBuf>,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: flowbench [--rounds N] [--small N] [--large N] [--seed N] [--out DIR] \
         [--timeout SECS] [--quick] [--rt] [--write-flows DIR]"
    );
    std::process::exit(2)
}

fn parse_args(exe_dir: &Path) -> Opts {
    let mut o = Opts {
        rounds: 3,
        small: 100_000,
        large: 1_000_000,
        seed: 1,
        out: exe_dir
            .parent()
            .map(|t| t.join("weft-flowbench"))
            .unwrap_or_else(|| PathBuf::from("weft-flowbench")),
        timeout: Duration::from_secs(900),
        quick: false,
        rt: false,
        write_flows: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        let mut num = |what: &str| -> u64 {
            val()
                .replace('_', "")
                .parse()
                .unwrap_or_else(|_| usage(&format!("bad {what}")))
        };
        match a.as_str() {
            "--rounds" => o.rounds = num("--rounds") as u32,
            "--small" => o.small = num("--small") as usize,
            "--large" => o.large = num("--large") as usize,
            "--seed" => o.seed = num("--seed"),
            "--timeout" => o.timeout = Duration::from_secs(num("--timeout")),
            "--out" => o.out = PathBuf::from(val()),
            "--rt" => o.rt = true,
            "--write-flows" => o.write_flows = Some(PathBuf::from(val())),
            "--quick" => {
                o.quick = true;
                o.rounds = 1;
                o.small = 2_000;
                o.large = 20_000;
            }
            "-h" | "--help" => usage("flowbench: flow programming, Weft vs ovs-ofctl"),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    o.rounds = o.rounds.clamp(1, 20);
    o.small = o.small.clamp(100, 1_900_000);
    o.large = o.large.clamp(100, 1_900_000);
    o
}

/// Runs `cmd` (stdout to `stdout`, stderr kept) with a time limit; the time from spawn
/// to exit. A non-zero exit, the time limit or Ctrl-C is an error with its stderr.
fn timed(mut cmd: Command, stdout: Stdio, limit: Duration, stop: &AtomicBool) -> Result<Duration> {
    let what = format!("{:?}", cmd.get_program());
    let errfile = tempfile_path("stderr");
    let err = std::fs::File::create(&errfile).map_err(|e| format!("{}: {e}", errfile.display()))?;
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(err);
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("starting {what}: {e}"))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(e) => return Err(format!("{what}: {e}")),
        }
        if start.elapsed() > limit || stop.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&errfile);
            return Err(if stop.load(Ordering::Relaxed) {
                "interrupted".into()
            } else {
                format!("{what} {:?}: no exit after {limit:?}", cmd.get_args())
            });
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let took = start.elapsed();
    let stderr = std::fs::read_to_string(&errfile).unwrap_or_default();
    let _ = std::fs::remove_file(&errfile);
    if status.success() {
        Ok(took)
    } else {
        Err(format!(
            "{what} {:?}: {status}: {}",
            cmd.get_args(),
            stderr.trim()
        ))
    }
}

fn tempfile_path(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "flowbench-{}-{what}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A switch under test: how to program it.
trait Switch {
    fn name(&self) -> &'static str;
    /// The command for `args` (`add-flows FILE`, ...), run outside any namespace.
    fn ctl(&self, args: &[&str]) -> Command;
    fn add_flows(&self, file: &Path) -> Command;
    fn replace_flows(&self, file: &Path) -> Command;
    fn add_flow(&self, flow: &str) -> Command;
    /// Deletes the generated pods' flows (cookie `generated`), the real pods' stay.
    fn del_flows(&self, generated: u64) -> Command;
    fn dump_flows(&self) -> Command;
    /// The pods' namespaces (sender, receiver).
    fn pods(&self) -> (&Ns, &Ns);
}

struct WeftSide {
    weftctl: PathBuf,
    sock: PathBuf,
    daemon: Weftd,
    pods: (Ns, Ns),
}

impl Switch for WeftSide {
    fn name(&self) -> &'static str {
        "weft"
    }
    fn ctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.weftctl);
        c.arg("-s").arg(&self.sock).args(args);
        c
    }
    fn add_flows(&self, file: &Path) -> Command {
        self.ctl(&["add-flows", &file.display().to_string()])
    }
    fn replace_flows(&self, file: &Path) -> Command {
        self.ctl(&["replace-flows", &file.display().to_string()])
    }
    fn add_flow(&self, flow: &str) -> Command {
        self.ctl(&["add-flow", flow])
    }
    fn del_flows(&self, generated: u64) -> Command {
        self.ctl(&[
            "del-flows",
            &format!("cookie={generated:#x}/0xffffffffffffffff"),
        ])
    }
    fn dump_flows(&self) -> Command {
        self.ctl(&["dump-flows"])
    }
    fn pods(&self) -> (&Ns, &Ns) {
        (&self.pods.0, &self.pods.1)
    }
}

struct OvsSide {
    node: OvsNode,
    pods: (Ns, Ns),
}

impl Switch for OvsSide {
    fn name(&self) -> &'static str {
        "ovs"
    }
    fn ctl(&self, args: &[&str]) -> Command {
        // Outside the namespace (as weftctl), with the environment that finds br0.mgmt.
        let mut c = Command::new("ovs-ofctl");
        for (k, v) in self.node.env() {
            c.env(k, v);
        }
        c.args(["-O", "OpenFlow14"]).args(args);
        c
    }
    fn add_flows(&self, file: &Path) -> Command {
        self.ctl(&["--bundle", "add-flows", "br0", &file.display().to_string()])
    }
    fn replace_flows(&self, file: &Path) -> Command {
        self.ctl(&[
            "--bundle",
            "replace-flows",
            "br0",
            &file.display().to_string(),
        ])
    }
    fn add_flow(&self, flow: &str) -> Command {
        self.ctl(&["add-flow", "br0", flow])
    }
    fn del_flows(&self, generated: u64) -> Command {
        self.ctl(&[
            "del-flows",
            "br0",
            &format!("cookie={generated:#x}/0xffffffffffffffff"),
        ])
    }
    fn dump_flows(&self) -> Command {
        self.ctl(&["dump-flows", "br0"])
    }
    fn pods(&self) -> (&Ns, &Ns) {
        (&self.pods.0, &self.pods.1)
    }
}

fn lab_err(e: LabError) -> String {
    e.to_string()
}

/// A pod namespace with `eth0` (already there) given its MAC (when `set_mac`), address
/// and a static neighbour entry for the other pod.
fn pod_addr(ns: &Ns, me: Pod, other: Pod, set_mac: bool) -> Result<()> {
    if set_mac {
        ns.ip(&format!("link set eth0 address {}", me.mac))
            .map_err(lab_err)?;
    }
    ns.ip(&format!("addr add {}/16 dev eth0", me.ip))
        .map_err(lab_err)?;
    ns.ip("link set eth0 up").map_err(lab_err)?;
    ns.ip(&format!(
        "neigh replace {} lladdr {} dev eth0 nud permanent",
        other.ip, other.mac
    ))
    .map_err(lab_err)?;
    Ok(())
}

fn weft_side(lab: &mut Lab, weftctl: &Path) -> Result<WeftSide> {
    let node = lab.netns("wn").map_err(lab_err)?;
    let a = lab.netns("wa").map_err(lab_err)?;
    let b = lab.netns("wb").map_err(lab_err)?;
    let mut ports = String::new();
    for p in 1..=PORTS {
        let extra = match p {
            1 => format!(
                "netns = \"{}\"\nifname = \"eth0\"\nmac = \"{}\"\n",
                a.name(),
                POD_A.mac
            ),
            2 => format!(
                "netns = \"{}\"\nifname = \"eth0\"\nmac = \"{}\"\n",
                b.name(),
                POD_B.mac
            ),
            _ => String::new(),
        };
        ports += &format!("[[port]]\nname = \"p{p}\"\ntype = \"tap\"\nofport = {p}\n{extra}\n");
    }
    let spec = WeftdSpec {
        workers: 1,
        ports,
        flows: String::new(),
    };
    let daemon = Weftd::start(lab, &node, "weftd", &spec).map_err(lab_err)?;
    daemon
        .wait_ready(lab, Duration::from_secs(20))
        .map_err(lab_err)?;
    pod_addr(&a, POD_A, POD_B, false)?;
    pod_addr(&b, POD_B, POD_A, false)?;
    Ok(WeftSide {
        weftctl: weftctl.to_path_buf(),
        sock: daemon.dir().join("weftd.sock"),
        daemon,
        pods: (a, b),
    })
}

fn ovs_side(lab: &mut Lab) -> Result<OvsSide> {
    let node = lab.netns("on").map_err(lab_err)?;
    let a = lab.netns("oa").map_err(lab_err)?;
    let b = lab.netns("ob").map_err(lab_err)?;
    let dir = lab.dir().join("ovs");
    let ovs = OvsNode::start(lab, &node, &dir, "ovs").map_err(lab_err)?;
    ovs.vsctl(&[
        "add-br",
        "br0",
        "--",
        "set",
        "Bridge",
        "br0",
        "datapath_type=netdev",
        "fail-mode=secure",
        "protocols=OpenFlow10,OpenFlow13,OpenFlow14,OpenFlow15",
    ])
    .map_err(lab_err)?;
    for (p, pod) in [(1u32, &a), (2, &b)] {
        let host = format!("p{p}");
        lab.veth(pod, "eth0", &node, &host).map_err(lab_err)?;
        for (ns, dev) in [(pod, "eth0"), (&node, host.as_str())] {
            // As in the throughput bed: OVS 3.1's userspace datapath and offloads.
            ns.run(&[
                "ethtool", "-K", dev, "tso", "off", "gso", "off", "tx", "off",
            ])
            .map_err(lab_err)?;
        }
        ovs.vsctl(&[
            "add-port",
            "br0",
            &host,
            "--",
            "set",
            "interface",
            &host,
            &format!("ofport_request={p}"),
        ])
        .map_err(lab_err)?;
    }
    for p in 3..=PORTS {
        let name = format!("p{p}");
        ovs.vsctl(&[
            "add-port",
            "br0",
            &name,
            "--",
            "set",
            "interface",
            &name,
            "type=internal",
            &format!("ofport_request={p}"),
        ])
        .map_err(lab_err)?;
    }
    node.ip("link set br0 up").map_err(lab_err)?;
    pod_addr(&a, POD_A, POD_B, true)?;
    pod_addr(&b, POD_B, POD_A, true)?;
    Ok(OvsSide {
        node: ovs,
        pods: (a, b),
    })
}

/// Flows in the switch's dump (lines with `actions=`).
fn count_flows(sw: &dyn Switch, limit: Duration) -> Result<usize> {
    let mut c = sw.dump_flows();
    let errfile = tempfile_path("count-stderr");
    let err = std::fs::File::create(&errfile).map_err(|e| format!("{}: {e}", errfile.display()))?;
    c.stdout(Stdio::piped()).stderr(err);
    let mut child = c.spawn().map_err(|e| format!("dump-flows: {e}"))?;
    let out = child.stdout.take().expect("piped");
    let start = Instant::now();
    let mut n = 0;
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if line.contains("actions=") {
            n += 1;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break;
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let stderr = std::fs::read_to_string(&errfile).unwrap_or_default();
    let _ = std::fs::remove_file(&errfile);
    if !status.success() {
        return Err(format!(
            "{} dump-flows (after {n} flows): {status}: {}",
            sw.name(),
            stderr.trim()
        ));
    }
    Ok(n)
}

/// Checks the flow count; a wrong count or a failed dump is counted as a failure of
/// `row` and noted (the benchmark goes on).
fn check_count(
    sw: &dyn Switch,
    want: usize,
    after: &str,
    limit: Duration,
    row: &mut Row,
    notes: &mut Vec<String>,
) {
    match expect_count(sw, want, after, limit) {
        Ok(()) => eprintln!("  {} after {after}: {want} flows, as expected", sw.name()),
        Err(e) => {
            eprintln!("  CHECK FAILED: {e}");
            row.failures += 1;
            notes.push(format!("check failed: {e}"));
        }
    }
}

fn expect_count(sw: &dyn Switch, want: usize, after: &str, limit: Duration) -> Result<()> {
    let got = count_flows(sw, limit)?;
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{} after {after}: {got} flows in the dump, {want} expected",
            sw.name()
        ))
    }
}

/// The pid of the `weftd` in `ns` (the only one there).
fn weftd_pid(ns: &Ns) -> Option<u32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "weftd")
        })
}

/// VmRSS of a process, MiB.
fn rss_mib(pid: Option<u32>) -> f64 {
    pid.and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// A steady stream between the Weft pods, recording gaps.
struct Stream {
    recv: ProcId,
    send: ProcId,
    labels: (String, String),
}

/// `tool` in `ns`, under `chrt -f 10` when `rt`.
fn rt_command(ns: &Ns, tool: &str, rt: bool) -> Command {
    if rt {
        let mut c = ns.command("chrt");
        c.args(["-f", "10", tool]);
        c
    } else {
        ns.command(tool)
    }
}

/// Makes weftd's worker threads SCHED_FIFO 10 (`--rt`).
fn rt_workers(ns: &Ns) -> Result<()> {
    let pid = weftd_pid(ns).ok_or("no weftd to make real-time")?;
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())? {
        let t = t.map_err(|e| e.to_string())?.file_name();
        let tid = t.to_string_lossy();
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if comm.starts_with("weft-worker") {
            let ok = Command::new("chrt")
                .args(["-f", "-p", "10", &tid])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("chrt -f -p 10 {tid} failed"));
            }
            n += 1;
        }
    }
    if n == 0 {
        return Err("no weft-worker thread found".into());
    }
    Ok(())
}

fn start_stream(
    lab: &mut Lab,
    side: &WeftSide,
    loadgen: &Path,
    run: u64,
    rt: bool,
) -> Result<Stream> {
    let (a, b) = side.pods();
    let to = format!("{}:{STREAM_PORT}", POD_B.ip);
    let tool = loadgen.display().to_string();
    let labels = (format!("gaps-{run}"), format!("stream-{run}"));
    let mut r = rt_command(b, &tool, rt);
    r.args(["gaps", "--listen", &to, "--run-id", &run.to_string()])
        .args(["--timeout", "1200"]);
    let recv = lab.spawn(&labels.0, r).map_err(lab_err)?;
    let start = Instant::now();
    while !lab.log(&labels.0).contains("listening") {
        if !lab.is_running(recv) || start.elapsed() > Duration::from_secs(10) {
            return Err(format!("weft-loadgen gaps: {}", lab.log(&labels.0)));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut s = rt_command(a, &tool, rt);
    s.args(["stream", "--to", &to, "--run-id", &run.to_string()])
        .args(["--interval-us", "1000", "--size", "80", "--timeout", "1200"]);
    let send = lab.spawn(&labels.1, s).map_err(lab_err)?;
    // Let it settle (and the first datagrams through).
    std::thread::sleep(Duration::from_millis(300));
    Ok(Stream { recv, send, labels })
}

fn json_of(log: &str, key: &str) -> Result<serde_json::Value> {
    let needle = format!("\"{key}\"");
    let line = log
        .lines()
        .rev()
        .find(|l| l.starts_with('{') && l.contains(&needle))
        .ok_or_else(|| format!("weft-loadgen printed no result: {log}"))?;
    serde_json::from_str(line).map_err(|e| format!("{line}: {e}"))
}

fn finish_stream(lab: &mut Lab, s: Stream, gap: &mut Gap) -> Result<()> {
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(s.send, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(100));
    lab.stop(s.recv, Duration::from_secs(2));
    let sent = json_of(&lab.log(&s.labels.1), "sent")?;
    let got = json_of(&lab.log(&s.labels.0), "received")?;
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    gap.runs += 1;
    gap.sent += n(&sent, "sent");
    gap.received += n(&got, "received");
    gap.over_10ms += n(&got, "gaps_over_10ms");
    gap.delays_over_10ms += n(&got, "delays_over_10ms");
    gap.max_delay_ms = gap.max_delay_ms.max(n(&got, "max_delay_us") as f64 / 1e3);
    let max_gap_ms = n(&got, "max_gap_us") as f64 / 1e3;
    if max_gap_ms > gap.max_gap_ms {
        gap.max_gap_ms = max_gap_ms;
        gap.steal_in_max_gap_ms = n(&got, "steal_in_max_gap_ms") as f64;
    }
    gap.max_gap_no_steal_ms = gap
        .max_gap_no_steal_ms
        .max(n(&got, "max_gap_no_steal_us") as f64 / 1e3);
    gap.over_10ms_no_steal += n(&got, "gaps_over_10ms_no_steal");
    gap.max_send_gap_ms = gap
        .max_send_gap_ms
        .max(n(&sent, "max_send_gap_us") as f64 / 1e3);
    if n(&got, "received") == 0 {
        return Err("the gap stream received nothing: the pods do not forward".into());
    }
    Ok(())
}

/// Runs `f` for one side; a failure is counted on the row and noted.
fn record(row: &mut Row, side: &str, r: Result<Duration>, notes: &mut Vec<String>) {
    match r {
        Ok(d) => {
            let v = if side == "weft" {
                &mut row.weft
            } else {
                &mut row.ovs
            };
            v.push(d.as_secs_f64());
            eprintln!(
                "  {:<44} {side:<5} {:>10.3} ms",
                row.what,
                d.as_secs_f64() * 1e3
            );
        }
        Err(e) => {
            row.failures += 1;
            let e = e.lines().next().unwrap_or("").to_string();
            eprintln!("  {:<44} {side:<5} FAILED: {e}", row.what);
            notes.push(format!("failed: {} ({side}): {e}", row.what));
        }
    }
}

fn k(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

struct Bench {
    o: Opts,
    lab: Lab,
    weft: WeftSide,
    ovs: Option<OvsSide>,
    loadgen: PathBuf,
    stop: Arc<AtomicBool>,
    notes: Vec<String>,
    rows: Vec<Row>,
    gaps: Vec<Gap>,
    run: u64,
}

impl Bench {
    fn check(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            Err("interrupted".into())
        } else {
            Ok(())
        }
    }

    fn sides(&self) -> Vec<&dyn Switch> {
        sides(&self.weft, &self.ovs)
    }

    fn t(&self, c: Command) -> Result<Duration> {
        timed(c, Stdio::null(), self.o.timeout, &self.stop)
    }

    /// add-flows of `file` (n flows) on a table emptied but for the real pods' flows, `rounds` times per side; the
    /// Weft runs with the gap stream when `gap` is given. Leaves the n flows installed.
    fn add_case(&mut self, n: usize, file: &Path, target: Target, gap: bool) -> Result<()> {
        let mut row = Row::new(
            &format!("add_{}", k(n)),
            &format!("add-flows {}", k(n)),
            target,
        );
        let mut g = Gap {
            during: format!("weftctl add-flows {} (commit)", k(n)),
            ..Gap::default()
        };
        for round in 0..self.o.rounds {
            for side in 0..self.sides().len() {
                self.check()?;
                let sw = self.sides()[side];
                let name = sw.name();
                self.t(sw.del_flows(flowgen::generated_cookie(self.o.seed)))?;
                let stream = if gap && name == "weft" {
                    self.run += 1;
                    Some(start_stream(
                        &mut self.lab,
                        &self.weft,
                        &self.loadgen,
                        self.run,
                        self.o.rt,
                    )?)
                } else {
                    None
                };
                let sw = self.sides()[side];
                let r = self.t(sw.add_flows(file));
                let ok = r.is_ok();
                record(&mut row, name, r, &mut self.notes);
                if let Some(s) = stream {
                    finish_stream(&mut self.lab, s, &mut g)?;
                }
                let sw = sides(&self.weft, &self.ovs)[side];
                if ok && round == 0 {
                    let what = format!("add-flows {}", k(n));
                    check_count(sw, n, &what, self.o.timeout, &mut row, &mut self.notes);
                }
            }
        }
        self.rows.push(row);
        if gap {
            self.gaps.push(g);
        }
        Ok(())
    }

    /// The gap stream alone for `secs` seconds a run, while nothing is asked of the
    /// switch: the machine's own floor for the gaps of the cases.
    fn idle_gaps(&mut self, secs: f64) -> Result<()> {
        let mut g = Gap {
            during: format!("nothing ({secs:.0} s, the stream alone)"),
            ..Gap::default()
        };
        for _ in 0..self.o.rounds {
            self.check()?;
            self.run += 1;
            let s = start_stream(
                &mut self.lab,
                &self.weft,
                &self.loadgen,
                self.run,
                self.o.rt,
            )?;
            std::thread::sleep(Duration::from_secs_f64(secs));
            finish_stream(&mut self.lab, s, &mut g)?;
        }
        self.gaps.push(g);
        Ok(())
    }

    /// dump-flows of the installed n flows to /dev/null.
    fn dump_case(&mut self, n: usize, target: Target, gap: bool) -> Result<()> {
        let mut row = Row::new(
            &format!("dump_{}", k(n)),
            &format!("dump-flows {} > /dev/null", k(n)),
            target,
        );
        let mut g = Gap {
            during: format!("weftctl dump-flows {}", k(n)),
            ..Gap::default()
        };
        for _ in 0..self.o.rounds {
            for side in 0..self.sides().len() {
                self.check()?;
                let name = self.sides()[side].name();
                let stream = if gap && name == "weft" {
                    self.run += 1;
                    Some(start_stream(
                        &mut self.lab,
                        &self.weft,
                        &self.loadgen,
                        self.run,
                        self.o.rt,
                    )?)
                } else {
                    None
                };
                let sw = self.sides()[side];
                let r = self.t(sw.dump_flows());
                record(&mut row, name, r, &mut self.notes);
                if let Some(s) = stream {
                    finish_stream(&mut self.lab, s, &mut g)?;
                }
            }
        }
        self.rows.push(row);
        if gap {
            self.gaps.push(g);
        }
        Ok(())
    }

    /// replace-flows, each round to the other of the two files (1% of the actions differ).
    fn replace_case(
        &mut self,
        n: usize,
        files: [&Path; 2],
        target: Target,
        gap: bool,
    ) -> Result<()> {
        let mut row = Row::new(
            &format!("replace_{}", k(n)),
            &format!("replace-flows {} (1% changed)", k(n)),
            target,
        );
        let mut g = Gap {
            during: format!("weftctl replace-flows {} (1% changed)", k(n)),
            ..Gap::default()
        };
        for round in 0..self.o.rounds {
            let file = files[(round as usize + 1) % 2];
            for side in 0..self.sides().len() {
                self.check()?;
                let name = self.sides()[side].name();
                let stream = if gap && name == "weft" {
                    self.run += 1;
                    Some(start_stream(
                        &mut self.lab,
                        &self.weft,
                        &self.loadgen,
                        self.run,
                        self.o.rt,
                    )?)
                } else {
                    None
                };
                let sw = self.sides()[side];
                let r = self.t(sw.replace_flows(file));
                let ok = r.is_ok();
                record(&mut row, name, r, &mut self.notes);
                if let Some(s) = stream {
                    finish_stream(&mut self.lab, s, &mut g)?;
                }
                let sw = sides(&self.weft, &self.ovs)[side];
                if ok && round == 0 {
                    check_count(
                        sw,
                        n,
                        "replace-flows",
                        self.o.timeout,
                        &mut row,
                        &mut self.notes,
                    );
                }
            }
        }
        self.rows.push(row);
        if gap {
            self.gaps.push(g);
        }
        Ok(())
    }

    /// One add-flow on the installed table (each round another flow, deleted after).
    fn one_flow_case(&mut self, n: usize) -> Result<()> {
        let mut row = Row::new(
            &format!("add_one_on_{}", k(n)),
            &format!("one add-flow on {} (command start to exit)", k(n)),
            Target::WeftMs(5.0),
        );
        for round in 0..self.o.rounds {
            let flow = format!(
                "table=20,priority=100,ip,reg0=0x1fe,nw_dst=198.19.254.{} actions=goto_table:30",
                round + 1
            );
            for side in 0..self.sides().len() {
                self.check()?;
                let sw = self.sides()[side];
                let name = sw.name();
                let r = self.t(sw.add_flow(&flow));
                record(&mut row, name, r, &mut self.notes);
                let sw = self.sides()[side];
                let mut del = sw.ctl(&[]);
                if sw.name() == "weft" {
                    del.args(["del-flows", "--strict", &flow_match(&flow)]);
                } else {
                    del.args(["--strict", "del-flows", "br0", &flow_match(&flow)]);
                }
                self.t(del)?;
            }
        }
        for side in 0..self.sides().len() {
            let sw = sides(&self.weft, &self.ovs)[side];
            let what = "one add-flow and its del-flows";
            check_count(sw, n, what, self.o.timeout, &mut row, &mut self.notes);
        }
        self.rows.push(row);
        Ok(())
    }

    /// Restart with the installed n flows (from `file`) until a packet passes.
    fn restart_case(&mut self, n: usize, file: &Path) -> Result<()> {
        let mut row = Row::new(
            &format!("restart_{}", k(n)),
            &format!("restart with {} until a packet passes*", k(n)),
            Target::Works,
        );
        let limit = self.o.timeout;
        for _ in 0..self.o.rounds {
            self.check()?;
            // Weft: SIGKILL, start, wait for a ping between the pods.
            let (a, _) = self.weft.pods();
            let a = a.clone();
            if wait_for_ping_fast(&a, POD_B.ip, Duration::from_secs(5)).is_none() {
                return Err("weft: the pods do not ping before the restart".into());
            }
            let start = Instant::now();
            self.weft.daemon.kill(&mut self.lab);
            let r = self
                .weft
                .daemon
                .start_again(&mut self.lab)
                .map_err(lab_err)
                .and_then(|_| {
                    wait_for_ping_fast(&a, POD_B.ip, limit)
                        .map(|_| start.elapsed())
                        .ok_or_else(|| format!("weftd: no ping within {limit:?} of the restart"))
                });
            let ok = r.is_ok();
            record(&mut row, "weft", r, &mut self.notes);
            if !ok {
                return Err(format!(
                    "weftd did not come back:\n{}",
                    self.weft.daemon.log(&self.lab)
                ));
            }
            self.weft
                .daemon
                .wait_ready(&mut self.lab, Duration::from_secs(60))
                .map_err(lab_err)?;
            if self.o.rt {
                rt_workers(self.weft.daemon.node())?;
            }
            self.notes.push(format!(
                "weftd VmRSS after a restart with {}: {:.0} MiB",
                k(n),
                rss_mib(weftd_pid(self.weft.daemon.node()))
            ));
            // OVS: SIGKILL vswitchd, start it, the controller adds the flows again.
            let Some(ovs) = &mut self.ovs else { continue };
            let (a, _) = (ovs.pods.0.clone(), ());
            if wait_for_ping_fast(&a, POD_B.ip, Duration::from_secs(5)).is_none() {
                return Err("ovs: the pods do not ping before the restart".into());
            }
            let start = Instant::now();
            ovs.node.kill_vswitchd(&mut self.lab);
            ovs.node.start_vswitchd(&mut self.lab).map_err(lab_err)?;
            let mut r = Err(String::new());
            // The controller retries until the bridge answers.
            while start.elapsed() < limit {
                self.check()?;
                let ovs = self.ovs.as_ref().expect("ovs");
                match timed(ovs.add_flows(file), Stdio::null(), limit, &self.stop) {
                    Ok(_) => {
                        r = wait_for_ping_fast(&a, POD_B.ip, limit)
                            .map(|_| start.elapsed())
                            .ok_or_else(|| "ovs: no ping after the flows were added".to_string());
                        break;
                    }
                    Err(e) => {
                        r = Err(e);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            record(&mut row, "ovs", r, &mut self.notes);
        }
        self.rows.push(row);
        Ok(())
    }
}

/// The switches under test, Weft first.
fn sides<'a>(weft: &'a WeftSide, ovs: &'a Option<OvsSide>) -> Vec<&'a dyn Switch> {
    let mut v: Vec<&dyn Switch> = vec![weft];
    if let Some(o) = ovs {
        v.push(o);
    }
    v
}

/// The match of a flow (everything before ` actions=`), for `del-flows --strict`.
fn flow_match(flow: &str) -> String {
    flow.split_once(" actions=")
        .map_or(flow, |(m, _)| m)
        .to_string()
}

fn run(b: &mut Bench, files: &Files) -> Result<()> {
    let (small, large) = (b.o.small, b.o.large);
    // The pods forward once the flows are in (checks the flows, on both).
    b.add_case(small, &files.small[0], Target::Ratio(0.5), false)?;
    for sw in b.sides() {
        let (a, _) = sw.pods();
        if wait_for_ping_fast(a, POD_B.ip, Duration::from_secs(10)).is_none() {
            return Err(format!(
                "{}: the pods do not ping with the flows in",
                sw.name()
            ));
        }
    }
    b.one_flow_case(small)?;
    b.dump_case(small, Target::Ratio(1.0), false)?;
    b.replace_case(
        small,
        [&files.small[0], &files.small[1]],
        Target::None,
        false,
    )?;
    b.check()?;
    let rss0 = rss_mib(weftd_pid(b.weft.daemon.node()));
    // As long as a commit of the large bundle takes (about 6 s for 1M on this machine).
    b.idle_gaps((large as f64 * 6e-6).clamp(1.0, 10.0))?;
    b.add_case(large, &files.large[0], Target::Works, true)?;
    let rss1 = rss_mib(weftd_pid(b.weft.daemon.node()));
    b.notes.push(format!(
        "weftd VmRSS: {rss0:.0} MiB with {} flows, {rss1:.0} MiB after add-flows {}",
        k(small),
        k(large)
    ));
    b.dump_case(large, Target::Works, true)?;
    b.replace_case(
        large,
        [&files.large[0], &files.large[1]],
        Target::Works,
        true,
    )?;
    let rss2 = rss_mib(weftd_pid(b.weft.daemon.node()));
    b.notes.push(format!(
        "weftd VmRSS after replace-flows {}: {rss2:.0} MiB",
        k(large)
    ));
    // The restart restores what was last committed: make it the first file again.
    let (_, file) = (0, files.large[(b.o.rounds as usize) % 2].clone());
    b.restart_case(large, &file)?;
    Ok(())
}

struct Files {
    small: [PathBuf; 2],
    large: [PathBuf; 2],
}

fn write_files(dir: &Path, o: &Opts) -> Result<Files> {
    let mut paths = Vec::new();
    for (n, tag) in [(o.small, "small"), (o.large, "large")] {
        let spec = Spec {
            n,
            seed: o.seed,
            ports: PORTS,
        };
        for changed in [false, true] {
            let p = dir.join(format!(
                "flows-{tag}-{}.txt",
                if changed { "changed" } else { "orig" }
            ));
            std::fs::write(&p, flowgen::generate(&spec, changed))
                .map_err(|e| format!("{}: {e}", p.display()))?;
            paths.push(p);
        }
    }
    Ok(Files {
        small: [paths[0].clone(), paths[1].clone()],
        large: [paths[2].clone(), paths[3].clone()],
    })
}

fn main() {
    let exe = std::env::current_exe().expect("own path");
    let exe_dir = exe.parent().expect("a directory").to_path_buf();
    let o = parse_args(&exe_dir);
    if let Some(dir) = &o.write_flows {
        match write_files(dir, &o) {
            Ok(f) => {
                for p in f.small.iter().chain(&f.large) {
                    println!("{}", p.display());
                }
                return;
            }
            Err(e) => {
                eprintln!("flowbench: writing the flows: {e}");
                std::process::exit(1)
            }
        }
    }
    if !netns_tests::lab::privileged("flowbench") {
        std::process::exit(1);
    }
    let find = |name: &str, env: &str| {
        find_binary(name, env).unwrap_or_else(|| {
            eprintln!(
                "flowbench: {name} is missing: cargo build --release -p bench -p weftd -p weftctl \
                 -p netns-tests --bins"
            );
            std::process::exit(1)
        })
    };
    let weftd = find("weftd", "WEFTD");
    let weftctl = find("weftctl", "WEFTCTL");
    let loadgen = find("weft-loadgen", "WEFT_LOADGEN");
    let nettool = find("weft-nettool", "WEFT_NETTOOL");
    // SAFETY: no other thread runs yet; the harness reads these when it starts weftd.
    unsafe {
        std::env::set_var("WEFTD", &weftd);
        std::env::set_var("WEFT_NETTOOL", &nettool);
    }
    let stop = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, stop.clone()).expect("signal handler");
    }
    let mut notes = Vec::new();
    let started = Instant::now();
    let mut lab = match Lab::new() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("flowbench: {e}");
            std::process::exit(1)
        }
    };
    let files = match write_files(lab.dir(), &o) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("flowbench: writing the flows: {e}");
            std::process::exit(1)
        }
    };
    let weft = match weft_side(&mut lab, &weftctl) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("flowbench: weftd: {e}");
            std::process::exit(1)
        }
    };
    let ovs = if ovs_installed() {
        match ovs_side(&mut lab) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("flowbench: Open vSwitch: {e}");
                std::process::exit(1)
            }
        }
    } else {
        notes.push("Open vSwitch is not installed (openvswitch-switch): Weft only".into());
        None
    };
    if o.rt
        && let Err(e) = rt_workers(weft.daemon.node())
    {
        eprintln!("flowbench: --rt: {e}");
        std::process::exit(1);
    }
    let mut b = Bench {
        o,
        lab,
        weft,
        ovs,
        loadgen,
        stop,
        notes,
        rows: Vec::new(),
        gaps: Vec::new(),
        run: std::process::id() as u64 * 1000,
    };
    let result = run(&mut b, &files);
    if let Err(e) = &result {
        eprintln!("flowbench: stopped: {e}");
        b.notes
            .push(format!("stopped early: {}", e.lines().next().unwrap_or("")));
    }
    let title = title(&b.o);
    let mut notes = vec![
        "* Weft: weftd SIGKILLed and started again; it restores its flows from its state \
         directory (snapshot + journal). OVS: ovs-vswitchd SIGKILLed and started again; it \
         keeps no OpenFlow flows across a restart, so its time includes the controller's \
         `ovs-ofctl --bundle add-flows` of all the flows again (retried until the bridge \
         answers). Both: until a ping between the two pods through the flows passes."
            .to_string(),
    ];
    notes.append(&mut b.notes);
    notes.push(format!(
        "total time {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    let t = flowtable::text(&title, &b.rows, &b.gaps, &notes);
    print!("{t}");
    let csv = flowtable::csv(&b.rows, &b.gaps);
    let out = b.o.out.clone();
    if let Err(e) = std::fs::create_dir_all(&out)
        .and_then(|_| std::fs::write(out.join("table.txt"), &t))
        .and_then(|_| std::fs::write(out.join("results.csv"), &csv))
    {
        eprintln!("flowbench: writing {}: {e}", out.display());
        std::process::exit(1);
    }
    eprintln!(
        "flowbench: wrote {}/{{table.txt,results.csv}}",
        out.display()
    );
    // The lab (namespaces, daemons, flow files) goes with `b`.
    drop(b);
    if result.is_err() {
        std::process::exit(1);
    }
}

fn title(o: &Opts) -> Vec<String> {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let ovs = Command::new("ovs-vswitchd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(String::from)
        })
        .unwrap_or_else(|| "OVS not installed".into());
    vec![
        format!(
            "Flow programming, Weft (weftctl -> weftd, 1 worker) vs {ovs} (ovs-ofctl -O OpenFlow14 \
             -> ovs-vswitchd, datapath_type=netdev): {date}, {cpus} cores"
        ),
        format!(
            "median of {} round(s); Antrea-shaped flows (bench::flowgen, seed {}: tables 0/10/20/30, \
             8 ports); OVS bundles are `ovs-ofctl --bundle`; Weft/OVS < 1 means Weft is faster{}",
            o.rounds,
            o.seed,
            match (o.quick, o.rt) {
                (false, false) => "",
                (true, false) => "; --quick",
                (false, true) => "; --rt (weftd's worker and the stream SCHED_FIFO 10)",
                (true, true) => "; --quick --rt",
            }
        ),
    ]
}
