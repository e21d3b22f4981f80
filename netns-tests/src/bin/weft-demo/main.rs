//! `weft-demo`: Weft in network namespaces. Run as root (`sudo scripts/demo`).
//!
//! ```text
//! weft-demo                      # the cluster (cluster.rs)
//! weft-demo --quick [--encap vxlan|geneve|ipip] [--mode l3|l2] [--keep]
//! weft-demo --teardown PREFIX
//! ```
//!
//! By default, a three-node cluster run as a real one is: a 3-member etcd, weftd and
//! weft-agent per node, containers started by containerd through weft-cni (see
//! `cluster.rs`). With `--quick`, the two-node demo: weftd's programmed from an
//! embedded cluster description over the control sockets, with ping and an iperf3
//! figure between pods on different nodes.
//!
//! In the quick demo every step is printed with the command it amounts to (`weftctl -s SOCK add-port
//! ...`, `ip -n NS ...`). Without `--keep` everything is removed at the end, also on
//! an error or Ctrl-C. With `--keep` a small keeper process holds the lab (namespaces,
//! `weftd`s) after `weft-demo` returns, and `weft-demo --teardown PREFIX` ends it.
//! `weftd` and `weftctl` are looked up next to this binary.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns_tests::cluster::{ClusterLab, leftovers};
use netns_tests::lab::Ns;
use netns_tests::node::binary;
use weftctl::cluster::Cluster;

mod cluster;

const USAGE: &str =
    "usage: weft-demo                (3 nodes: etcd, weft-agent, containerd + weft-cni)
       weft-demo --quick [--encap vxlan|geneve|ipip] [--mode l3|l2] [--keep]
       weft-demo --teardown PREFIX";

const READY_MARK: &str = "@@weft-demo-ready@@";

/// The embedded description; `{encap}`, `{mode}` and `{mtu}` are filled in.
const DESCRIPTION: &str = r#"# Two nodes, two pods each. Node i's pods are in 198.19.i.0/24 (l3: behind the
# gateway 198.19.i.1, answered by flows) or on one flat segment (l2).
[cluster]
encap = "{encap}"
vni = 100
mode = "{mode}"
mtu = {mtu}
pod_cidr = "198.19.0.0/16"

[[node]]
name = "node1"
address = "198.18.0.1"
pod_subnet = "198.19.1.0/24"

[[node]]
name = "node2"
address = "198.18.0.2"
pod_subnet = "198.19.2.0/24"

[[pod]]
name = "pod-a"
node = "node1"
namespace = "pod-a"
address = "198.19.1.10"

[[pod]]
name = "pod-b"
node = "node1"
namespace = "pod-b"
address = "198.19.1.11"

[[pod]]
name = "pod-c"
node = "node2"
namespace = "pod-c"
address = "198.19.2.10"

[[pod]]
name = "pod-d"
node = "node2"
namespace = "pod-d"
address = "198.19.2.11"
"#;

struct Args {
    quick: bool,
    encap: String,
    mode: String,
    keep: bool,
    keeper: bool,
    worker: bool,
    teardown: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        quick: false,
        encap: "vxlan".into(),
        mode: "l3".into(),
        keep: false,
        keeper: false,
        worker: false,
        teardown: None,
    };
    let mut it = std::env::args().skip(1);
    let mut quick_only = None;
    while let Some(arg) = it.next() {
        if ["--encap", "--mode", "--keep", "--keeper"].contains(&arg.as_str()) {
            quick_only.get_or_insert(arg.clone());
        }
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--encap" => a.encap = value("--encap")?,
            "--mode" => a.mode = value("--mode")?,
            "--quick" => a.quick = true,
            "--keep" => a.keep = true,
            "--keeper" => a.keeper = true,
            "--worker" => a.worker = true,
            "--teardown" => a.teardown = Some(value("--teardown")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    if let Some(opt) = quick_only.filter(|_| !a.quick) {
        return Err(format!(
            "{opt} is an option of the quick two-node demo: add --quick"
        ));
    }
    if !["vxlan", "geneve", "ipip"].contains(&a.encap.as_str()) {
        return Err(format!(
            "--encap {}: expected vxlan, geneve or ipip",
            a.encap
        ));
    }
    if !["l2", "l3"].contains(&a.mode.as_str()) {
        return Err(format!("--mode {}: expected l2 or l3", a.mode));
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("weft-demo: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !netns_tests::lab::privileged("weft-demo") {
        eprintln!("weft-demo: run it as root (sudo scripts/demo)");
        return ExitCode::from(2);
    }
    if let Some(prefix) = &args.teardown {
        return teardown(prefix);
    }
    if args.keep && !args.keeper {
        return spawn_keeper();
    }
    if !args.keep && !args.worker {
        return supervise();
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("weft-demo: signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    if !args.quick {
        return match cluster::run(&stop) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("weft-demo: {e}");
                println!("(everything the demo made has been removed)");
                ExitCode::FAILURE
            }
        };
    }
    match run(&args, &stop) {
        Ok(cl) => {
            if args.keeper {
                keep(cl, &args, &stop);
            } else {
                step("Tearing down (namespaces, devices, weftd processes)");
                let prefix = cl.prefix();
                let left = cl.teardown();
                if left.is_empty() {
                    println!("  nothing of {prefix}* is left.");
                } else {
                    println!("  left behind: {left:?}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-demo: {e}");
            println!("(everything the demo made has been removed)");
            ExitCode::FAILURE
        }
    }
}

fn step(title: &str) {
    println!("\n==> {title}");
}

fn check(stop: &AtomicBool) -> Result<(), String> {
    if stop.load(Ordering::Relaxed) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Runs `program args` in `ns`, printing the command and its output.
fn show(ns: &Ns, program: &str, args: &[&str]) -> Result<String, String> {
    println!(
        "  $ ip netns exec {} {program} {}",
        ns.name(),
        args.join(" ")
    );
    let out = ns
        .command(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in text.lines() {
        println!("    {l}");
    }
    if !out.status.success() {
        return Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

fn weftctl_binary() -> PathBuf {
    binary("weftctl", "WEFTCTL")
}

/// Runs the real `weftctl` against a node and prints what it says.
fn weftctl(cl: &ClusterLab, node: &str, args: &[&str]) -> Result<(), String> {
    println!("  $ {} {}", cl.weftctl_prefix(node), args.join(" "));
    let sock = cl.node(node).socket.clone().unwrap_or_default();
    let out = Command::new(weftctl_binary())
        .arg("-s")
        .arg(&sock)
        .args(args)
        .output()
        .map_err(|e| format!("weftctl: {e}"))?;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {l}");
    }
    if !out.status.success() {
        return Err(format!(
            "weftctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn run(args: &Args, stop: &AtomicBool) -> Result<ClusterLab, String> {
    let e = |x: netns_tests::lab::LabError| x.to_string();
    let mtu = if args.encap == "ipip" { 1480 } else { 1450 };
    let text = DESCRIPTION
        .replace("{encap}", &args.encap)
        .replace("{mode}", &args.mode)
        .replace("{mtu}", &mtu.to_string());
    step(&format!(
        "Cluster description ({} {}, embedded in weft-demo)",
        args.encap, args.mode
    ));
    for l in text.lines() {
        println!("  | {l}");
    }
    let cluster = Cluster::from_toml(&text).map_err(|e| format!("description: {e}"))?;
    println!(
        "  weftd: {}\n  weftctl: {}",
        binary("weftd", "WEFTD").display(),
        weftctl_binary().display()
    );

    step("Underlay: a bridge and one namespace per node (198.18.0.0/24)");
    let mut cl = ClusterLab::new(&cluster).map_err(e)?;
    let prefix = cl.prefix();
    println!(
        "  namespaces are named {prefix}*: {prefix}ul (the bridge), {prefix}node1, {prefix}node2"
    );
    println!("  node1 198.18.0.1/24 and node2 198.18.0.2/24 on their ul0, bridged in {prefix}ul");
    cl.echo(true);
    check(stop)?;

    step(
        "Starting one weftd per node (no configuration: ports and flows come over the control socket)",
    );
    cl.start_all().map_err(e)?;
    check(stop)?;

    for node in ["node1", "node2"] {
        step(&format!(
            "Programming {node} from its plan (Cluster::plan(\"{node}\")): ports, flows as one bundle, then the pods"
        ));
        let plan = cluster.plan(node).map_err(|e| e.to_string())?;
        cl.install_plan(node, &plan, cluster.vni()).map_err(e)?;
        check(stop)?;
    }
    cl.echo(false);

    step("What node1 looks like now");
    weftctl(&cl, "node1", &["show"])?;
    check(stop)?;

    let a = cl.pod("pod-a").ns.clone();
    let c_ip = cl.pod("pod-c").ip();
    let b_ip = cl.pod("pod-b").ip();
    step("Ping across nodes (pod-a on node1 -> pod-c on node2) and on one node (pod-a -> pod-b)");
    show(&a, "ping", &["-c", "3", "-i", "0.2", &c_ip])?;
    show(&a, "ping", &["-c", "2", "-i", "0.2", &b_ip])?;
    check(stop)?;

    step("Throughput across nodes: iperf3 from pod-a (node1) to pod-c (node2), 3 s");
    let c = cl.pod("pod-c").ns.clone();
    println!(
        "  $ ip netns exec {} iperf3 -s -1 -B {c_ip} --forceflush &",
        c.name()
    );
    let mut server = c.command("iperf3");
    // --forceflush: its "listening" line is not held in a buffer.
    server.args(["-s", "-1", "-B", &c_ip, "--forceflush"]);
    let id = cl.lab.spawn("iperf3-server", server).map_err(e)?;
    let start = Instant::now();
    while !cl.lab.log("iperf3-server").contains("listening") {
        if !cl.lab.is_running(id) || start.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "iperf3 server did not start: {}",
                cl.lab.log("iperf3-server")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = show(&a, "iperf3", &["-c", &c_ip, "-t", "3", "-f", "m"])?;
    cl.lab.stop(id, Duration::from_secs(2));
    if let Some(l) = out.lines().find(|l| l.contains("receiver")) {
        let rate: Vec<&str> = l.split_whitespace().collect();
        if let Some(i) = rate.iter().position(|w| *w == "Mbits/sec") {
            println!(
                "  => {} Mbit/s pod to pod across nodes over {} ({} mode), userspace on both ends",
                rate[i - 1],
                args.encap,
                args.mode
            );
        }
    }
    check(stop)?;

    step("Counters on node1 after that");
    weftctl(&cl, "node1", &["dump-ports"])?;
    Ok(cl)
}

/// Runs this program again as the worker that does the demo, in its own process group,
/// and waits for it. A Ctrl-C at the terminal goes to the terminal's process group: only
/// to this process, not to the worker's etcd, containerd, weftd, ... (which would die
/// before the worker could stop them in order, e.g. containers before containerd). It
/// is passed on to the worker as one SIGTERM, and the worker removes everything.
fn supervise() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            eprintln!("weft-demo: signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args().skip(1)).arg("--worker");
    cmd.stdin(Stdio::null());
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-demo: starting the demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut forwarded = false;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return ExitCode::SUCCESS,
            Ok(Some(_)) => return ExitCode::FAILURE,
            Ok(None) => {}
            Err(e) => {
                eprintln!("weft-demo: waiting for the demo: {e}");
                return ExitCode::FAILURE;
            }
        }
        if stop.load(Ordering::Relaxed) && !forwarded {
            forwarded = true;
            println!(
                "
weft-demo: interrupted; removing everything it made (this takes a few seconds)"
            );
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts this program again as the keeper of a `--keep` demo, in its own process
/// group, relays its output until it is ready, and returns.
fn spawn_keeper() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("weft-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args().skip(1)).arg("--keeper");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-demo: starting the keeper: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        if line == READY_MARK {
            return ExitCode::SUCCESS;
        }
        println!("{line}");
    }
    match child.wait() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

/// The keeper: prints what to try, tells the parent it is ready, and holds the lab
/// until SIGTERM (from `--teardown`), SIGINT or SIGHUP.
fn keep(cl: ClusterLab, args: &Args, stop: &AtomicBool) {
    let prefix = cl.prefix();
    let pidfile = cl.dir().join("keeper.pid");
    let _ = std::fs::write(&pidfile, std::process::id().to_string());
    let ctl1 = cl.weftctl_prefix("node1");
    let ctl2 = cl.weftctl_prefix("node2");
    let (a, c) = (cl.pod("pod-a"), cl.pod("pod-c"));
    let me = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "weft-demo".into());
    let weftctl = weftctl_binary().display().to_string();
    step("Kept running. Things to try (as root):");
    println!("  alias weftctl={weftctl}");
    println!("  {ctl1} show");
    println!("  {ctl1} dump-flows");
    println!("  {ctl1} dump-ports");
    println!("  {ctl2} fdb-show");
    // What pod-a would send: to the gateway's MAC (l3) or pod-c's (l2).
    let dl_dst = if args.mode == "l2" {
        c.plan.mac.to_string()
    } else {
        weftctl::cluster::mac_of(std::net::Ipv4Addr::new(198, 19, 1, 1)).to_string()
    };
    println!(
        "  {ctl1} trace 'in_port=pod-a,tcp,dl_src={},dl_dst={dl_dst},nw_src={},nw_dst={},tp_dst=80'",
        a.plan.mac,
        a.ip(),
        c.ip()
    );
    println!("  {ctl1} capture pod-a -c 10 -w - | tcpdump -n -r -");
    println!("  ip netns exec {} ping {}", a.ns.name(), c.ip());
    println!(
        "  ip netns exec {} iperf3 -s -1 & ip netns exec {} iperf3 -c {} -t 5",
        c.ns.name(),
        a.ns.name(),
        c.ip()
    );
    println!("  ip netns exec {}node2 tcpdump -ni ul0", prefix);
    println!(
        "  logs: {}/weftd-node1.log, {}/weftd-node2.log",
        cl.dir().display(),
        cl.dir().display()
    );
    println!("\nTear it all down with:\n  sudo {me} --teardown {prefix}");
    println!("(or: kill {}, the keeper process)", std::process::id());
    println!("{READY_MARK}");
    // Nothing may be printed from here on: the parent has gone and stdout with it.
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(cl);
}

/// Ends a kept demo: SIGTERM to its keeper, which removes everything; if the keeper is
/// gone, removes what is left of `prefix` directly.
fn teardown(prefix: &str) -> ExitCode {
    if !prefix.starts_with("weft-") || prefix.contains('/') || prefix.len() < 6 {
        eprintln!("weft-demo: '{prefix}' is not a demo prefix (weft-PID-N-)");
        return ExitCode::from(2);
    }
    let prefix = format!("{}-", prefix.trim_end_matches('-'));
    let dir = std::env::temp_dir().join(prefix.trim_end_matches('-'));
    let pid = std::fs::read_to_string(dir.join("keeper.pid")).ok();
    if let Some(pid) = pid.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        println!("stopping the keeper {pid}");
        let _ = Command::new("kill").args(["-TERM", pid]).status();
        let start = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists()
            && start.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let dir_s = dir.display().to_string();
    for left in leftovers(&prefix, &dir_s) {
        println!("removing {left}");
        if let Some(ns) = left.strip_prefix("namespace ") {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        } else if let Some(rest) = left.strip_prefix("process ") {
            let pid = rest.split(':').next().unwrap_or("");
            let _ = Command::new("kill").args(["-TERM", pid]).status();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let left = leftovers(&prefix, &dir_s);
    if left.is_empty() {
        println!("nothing of {prefix}* is left");
        ExitCode::SUCCESS
    } else {
        println!("still there: {left:?}");
        ExitCode::FAILURE
    }
}
