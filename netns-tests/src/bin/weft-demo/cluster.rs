//! The default demo: a three-node cluster run the way a real one is. A 3-member etcd
//! (one member per node), `weftd` and `weft-agent` on each node, and one container per
//! node started by that node's containerd (`ctr run --cni`), which calls `weft-cni`,
//! which asks the agent. Then node-to-pod and pod-to-pod pings across nodes, an iperf3
//! figure, `weftctl trace` of a pod's packet to another node, node 3 leaving (its pod
//! becomes unreachable) and the teardown.
//!
//! It is built from the test harness (`netns_tests::{lab, node, etcd, agent,
//! containerd}`), as the end-to-end tests are; every command it runs is printed as a
//! user would type it. The containers run busybox (no iperf3 in it): iperf3 runs in the
//! pods' network namespaces, entered with `nsenter -t <task pid> -n`.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netns_tests::agent::{AgentNode, AgentSpec, EtcdAccess, agent_binary};
use netns_tests::cluster::leftovers;
use netns_tests::containerd::{self, Containerd};
use netns_tests::etcd::EtcdCluster;
use netns_tests::lab::{Lab, LabError, Ns};
use netns_tests::node::{Underlay, binary, underlay_ip};

const PREFIX: &str = "/weft/v1/";
const CONFIG: &str =
    r#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"vxlan","vni":1,"port":4789}"#;
const READY: Duration = Duration::from_secs(30);
const NODES: u8 = 3;

/// One node: weftd + weft-agent, its containerd, its pod.
struct DemoNode {
    /// containerd goes first when dropped: its containers' DELs go through the agent.
    ctd: Containerd,
    node: AgentNode,
    pod: String,
    pod_ip: String,
    pod_pid: u32,
}

/// Everything the demo made. Fields drop in order: the nodes (containers, containerd),
/// then etcd, then the lab (every process it started, the namespaces, its directory).
struct World {
    nodes: Vec<DemoNode>,
    #[allow(dead_code)]
    etcd: EtcdCluster,
    lab: Lab,
}

fn e(x: LabError) -> String {
    x.0
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

/// Runs `cmd`, printed as `shown`, and prints its output; its stdout, or an error.
fn show_cmd(shown: &str, mut cmd: Command) -> Result<String, String> {
    println!("  $ {shown}");
    let out = cmd.output().map_err(|x| format!("{shown}: {x}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in text.lines() {
        println!("    {l}");
    }
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        for l in err.lines() {
            println!("    {l}");
        }
        return Err(format!("`{shown}` failed ({})", out.status));
    }
    Ok(text)
}

fn in_ns(ns: &Ns, program: &str, args: &[&str]) -> Result<String, String> {
    let mut c = ns.command(program);
    c.args(args);
    show_cmd(
        &format!("ip netns exec {} {program} {}", ns.name(), args.join(" ")),
        c,
    )
}

fn weftctl_binary() -> PathBuf {
    binary("weftctl", "WEFTCTL")
}

impl World {
    fn ctr_shown(&self, k: usize, args: &str) -> String {
        let c = &self.nodes[k].ctd;
        format!(
            "ip netns exec {} ctr -a {} -n {} {args}",
            c.node().name(),
            c.dir().join("containerd.sock").display(),
            c.namespace()
        )
    }

    /// `ctr tasks exec` in node k's pod, printed.
    fn pod_exec(&self, k: usize, cmd: &[&str]) -> Result<String, String> {
        let n = &self.nodes[k];
        println!(
            "  $ {}",
            self.ctr_shown(
                k,
                &format!("tasks exec --exec-id demo {} {}", n.pod, cmd.join(" "))
            )
        );
        match n.ctd.exec(&n.pod, cmd) {
            Ok(out) => {
                for l in out.lines() {
                    println!("    {l}");
                }
                Ok(out)
            }
            Err(x) => {
                for l in x.0.lines() {
                    println!("    {l}");
                }
                Err(x.0)
            }
        }
    }

    fn agent_status(&self, k: usize) -> Result<String, String> {
        let n = &self.nodes[k].node;
        let sock = n.agent.socket().display().to_string();
        let mut c = n.ns.command(&agent_binary().display().to_string());
        c.args(["status", "--socket", &sock]);
        show_cmd(
            &format!(
                "ip netns exec {} weft-agent status --socket {sock}",
                n.ns.name()
            ),
            c,
        )
    }

    fn weftctl(&self, k: usize, args: &[&str]) -> Result<String, String> {
        let sock = self.nodes[k].node.weftd_socket().display().to_string();
        let mut c = Command::new(weftctl_binary());
        c.arg("-s").arg(&sock).args(args);
        let quoted: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(',') || a.contains('=') {
                    format!("'{a}'")
                } else {
                    a.to_string()
                }
            })
            .collect();
        show_cmd(&format!("weftctl -s {sock} {}", quoted.join(" ")), c)
    }

    /// Prints node k's flows that mention `subnet` (`weftctl dump-flows | grep`); how many.
    fn flows_to(&self, k: usize, subnet: &str) -> Result<usize, String> {
        let sock = self.nodes[k].node.weftd_socket().display().to_string();
        println!("  $ weftctl -s {sock} dump-flows | grep nw_dst={subnet}");
        let flows = self.nodes[k].node.dump_flows().map_err(e)?;
        let lines: Vec<&str> = flows
            .lines()
            .filter(|l| l.contains(&format!("nw_dst={subnet}")))
            .collect();
        for l in &lines {
            println!("    {}", l.trim());
        }
        if lines.is_empty() {
            println!("    (none)");
        }
        Ok(lines.len())
    }

    fn nsenter(&self, k: usize, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.nodes[k].pod_pid.to_string(), "-n", program]);
        c.args(args);
        c
    }
}

/// The pid of container `id`'s task (`ctr tasks ls`).
fn task_pid(ctd: &Containerd, id: &str) -> Result<u32, String> {
    let out = ctd
        .ctr(&["tasks", "ls"])
        .output()
        .map_err(|x| format!("ctr tasks ls: {x}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 3 && w[0] == id).then(|| w[1].parse().ok())?
        })
        .ok_or_else(|| format!("no task {id} in `ctr tasks ls`"))
}

/// The IPv4 address on the container's eth0.
fn pod_ip(ctd: &Containerd, id: &str) -> Result<String, String> {
    let out = ctd
        .exec(id, &["/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .map_err(e)?;
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|w| w.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| format!("{id} has no IPv4 address on eth0: {out}"))
}

/// Checks that everything needed is installed (etcd, containerd, runc, busybox-static,
/// the CNI plugins, iperf3, nsenter) and the workspace binaries are built.
fn preflight() -> Result<(), String> {
    if !netns_tests::etcd::available("weft-demo") || !containerd::available("weft-demo") {
        return Err("missing packages (see above); scripts/demo installs them".into());
    }
    for b in ["iperf3", "nsenter"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Err(format!("needs {b} (scripts/demo installs it)"));
        }
    }
    for (name, env) in [
        ("weftd", "WEFTD"),
        ("weftctl", "WEFTCTL"),
        ("weft-agent", "WEFT_AGENT"),
        ("weft-cni", "WEFT_CNI"),
    ] {
        // As `binary` finds them (which panics when it does not).
        let found = match std::env::var_os(env) {
            Some(p) => std::path::Path::new(&p).is_file(),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| Some(e.parent()?.join(name)))
                .is_some_and(|p| p.is_file()),
        };
        if !found {
            return Err(format!(
                "{name} is not built next to weft-demo (scripts/demo builds it)"
            ));
        }
    }
    Ok(())
}

pub fn run(stop: &AtomicBool) -> Result<(), String> {
    preflight()?;
    let started = Instant::now();
    let mut lab = Lab::new().map_err(e)?;
    let prefix = format!(
        "{}-",
        lab.dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let dir = lab.dir().display().to_string();

    step(&format!(
        "Underlay: a bridge and {NODES} node namespaces, nodes at 198.18.0.1-{NODES}/24"
    ));
    println!("  $ ip netns add {prefix}ul; ip -n {prefix}ul link add br0 type bridge");
    for i in 1..=NODES {
        println!(
            "  $ ip netns add {prefix}n{i}; ip link add ul0 netns {prefix}n{i} type veth peer p{i} netns {prefix}ul; \
             ip -n {prefix}ul link set p{i} master br0; ip -n {prefix}n{i} addr add {}/24 dev ul0",
            underlay_ip(i)
        );
    }
    let ul = Underlay::new(&mut lab, NODES).map_err(e)?;
    check(stop)?;

    step("etcd: one member per node, 3 in all");
    let members: Vec<(Ns, Ipv4Addr)> = (1..=NODES)
        .map(|i| (ul.node(i).clone(), underlay_ip(i)))
        .collect();
    let cluster = (1..=NODES)
        .map(|i| format!("m{i}=http://{}:2380", underlay_ip(i)))
        .collect::<Vec<_>>()
        .join(",");
    for i in 1..=NODES {
        let ip = underlay_ip(i);
        println!(
            "  $ ip netns exec {prefix}n{i} etcd --name m{i} --data-dir {dir}/etcd/m{i} \
             --listen-client-urls http://{ip}:2379 --advertise-client-urls http://{ip}:2379 \
             --listen-peer-urls http://{ip}:2380 --initial-advertise-peer-urls http://{ip}:2380 \
             --initial-cluster {cluster} --initial-cluster-state new &"
        );
    }
    let etcd = EtcdCluster::start(&mut lab, &members, None).map_err(e)?;
    let mut world = World {
        nodes: Vec::new(),
        etcd,
        lab,
    };
    let took = world.etcd.wait_healthy(&mut world.lab, READY).map_err(e)?;
    let endpoints = world.etcd.endpoints().join(",");
    println!(
        "  (all 3 members healthy after {:.1} s)",
        took.as_secs_f64()
    );
    println!(
        "  $ ip netns exec {prefix}n1 etcdctl --endpoints {endpoints} put {PREFIX}config '{CONFIG}'"
    );
    world
        .etcd
        .put(&mut world.lab, &format!("{PREFIX}config"), CONFIG)
        .map_err(e)?;
    check(stop)?;

    step("Each node: weftd (empty), weft-agent, containerd with weft-cni as its CNI plugin");
    for i in 1..=NODES {
        let ns = ul.node(i).clone();
        let name = format!("n{i}");
        in_ns(&ns, "sysctl", &["-w", "net.ipv4.ip_forward=1"])?;
        let spec = AgentSpec::new(&name, underlay_ip(i), EtcdAccess::of(&world.etcd));
        let node = AgentNode::start(&mut world.lab, &ns, &spec).map_err(e)?;
        let weftd_conf = node.weftd.dir().join("weftd.toml");
        println!("  $ cat {}", weftd_conf.display());
        for l in std::fs::read_to_string(&weftd_conf)
            .unwrap_or_default()
            .lines()
        {
            println!("    {l}");
        }
        println!(
            "  $ ip netns exec {} weftd --config {} &",
            ns.name(),
            weftd_conf.display()
        );
        println!("  $ cat {}", node.agent.config().display());
        for l in std::fs::read_to_string(node.agent.config())
            .unwrap_or_default()
            .lines()
        {
            println!("    {l}");
        }
        println!(
            "  $ ip netns exec {} weft-agent --config {} &",
            ns.name(),
            node.agent.config().display()
        );
        let mut ctd =
            Containerd::start(&world.lab, &ns, &format!("containerd-{name}")).map_err(e)?;
        println!(
            "  $ nsenter --net=/var/run/netns/{} containerd --config {} &",
            ns.name(),
            ctd.dir().join("config.toml").display()
        );
        // ctr reads the conflist the agent writes, and finds weft-cni in /opt/cni/bin.
        ctd.set_cni_conf_dir(&node.agent.dir().join("cni"));
        let cni = binary("weft-cni", "WEFT_CNI");
        ctd.install_plugin("weft-cni", &cni).map_err(e)?;
        println!(
            "  $ ln -s {} {}/weft-cni   # mounted over /opt/cni/bin for this node's ctr; {} over /etc/cni/net.d",
            cni.display(),
            ctd.cni_bin_dir().display(),
            ctd.cni_conf_dir().display()
        );
        world.nodes.push(DemoNode {
            ctd,
            node,
            pod: format!("pod{i}"),
            pod_ip: String::new(),
            pod_pid: 0,
        });
        check(stop)?;
    }
    for k in 0..world.nodes.len() {
        let World { lab, nodes, .. } = &mut world;
        nodes[k].node.agent.wait_ready(lab, READY).map_err(e)?;
        let conflist = nodes[k].node.agent.dir().join("cni/10-weft.conflist");
        let start = Instant::now();
        while !conflist.exists() {
            check(stop)?;
            if start.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "agent n{} is ready but wrote no {}",
                    k + 1,
                    conflist.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    world.agent_status(0)?;
    println!(
        "  $ cat {}",
        world.nodes[0]
            .node
            .agent
            .dir()
            .join("cni/10-weft.conflist")
            .display()
    );
    let conf =
        std::fs::read_to_string(world.nodes[0].node.agent.dir().join("cni/10-weft.conflist"))
            .unwrap_or_default();
    for l in conf.lines() {
        println!("    {l}");
    }
    check(stop)?;

    step("A container per node: ctr run --cni (containerd -> weft-cni -> weft-agent -> weftd)");
    for k in 0..world.nodes.len() {
        let pod = world.nodes[k].pod.clone();
        let rootfs = world.nodes[k].ctd.rootfs().display().to_string();
        println!(
            "  $ {} &",
            world.ctr_shown(
                k,
                &format!("run --rm --cni --rootfs {rootfs} {pod} /bin/sleep 3600")
            )
        );
        let n = &mut world.nodes[k];
        n.ctd
            .start_container(&pod, &["/bin/sleep", "3600"], Duration::from_secs(30))
            .map_err(e)?;
        n.pod_ip = pod_ip(&n.ctd, &pod)?;
        n.pod_pid = task_pid(&n.ctd, &pod)?;
        check(stop)?;
    }
    for k in 0..world.nodes.len() {
        world.pod_exec(k, &["/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
    }
    println!("  $ {}", world.ctr_shown(0, "tasks ls"));
    let tasks = world.nodes[0]
        .ctd
        .ctr(&["tasks", "ls"])
        .output()
        .map_err(|x| x.to_string())?;
    for l in String::from_utf8_lossy(&tasks.stdout).lines() {
        println!("    {l}");
    }
    world.agent_status(0)?;
    check(stop)?;

    let ips: Vec<String> = world.nodes.iter().map(|n| n.pod_ip.clone()).collect();
    step("Node to pod across nodes: n1 -> pod2 (on n2), n1 -> pod3 (on n3)");
    let n1 = world.nodes[0].node.ns.clone();
    for ip in &ips[1..] {
        in_ns(&n1, "ping", &["-c", "2", "-i", "0.2", "-W", "2", ip])?;
    }
    check(stop)?;

    step("Pod to pod across nodes: pod1 -> pod2, pod1 -> pod3, pod3 -> pod2");
    world.pod_exec(
        0,
        &["/bin/ping", "-c", "3", "-i", "0.2", "-W", "2", &ips[1]],
    )?;
    world.pod_exec(
        0,
        &["/bin/ping", "-c", "3", "-i", "0.2", "-W", "2", &ips[2]],
    )?;
    world.pod_exec(
        2,
        &["/bin/ping", "-c", "3", "-i", "0.2", "-W", "2", &ips[1]],
    )?;
    check(stop)?;

    step("Throughput pod1 (n1) -> pod2 (n2), 3 s (iperf3 in the pods' network namespaces)");
    let pid2 = world.nodes[1].pod_pid;
    println!(
        "  $ nsenter -t {pid2} -n iperf3 -s -1 -B {} --forceflush &   # pid {pid2}: pod2's task (ctr tasks ls)",
        ips[1]
    );
    let server = world.nsenter(1, "iperf3", &["-s", "-1", "-B", &ips[1], "--forceflush"]);
    let id = world.lab.spawn("iperf3-server", server).map_err(e)?;
    let start = Instant::now();
    while !world.lab.log("iperf3-server").contains("listening") {
        if !world.lab.is_running(id) || start.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "iperf3 server did not start: {}",
                world.lab.log("iperf3-server")
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid1 = world.nodes[0].pod_pid;
    let client = world.nsenter(0, "iperf3", &["-c", &ips[1], "-t", "3", "-f", "m"]);
    let out = show_cmd(
        &format!("nsenter -t {pid1} -n iperf3 -c {} -t 3 -f m", ips[1]),
        client,
    );
    world.lab.stop(id, Duration::from_secs(2));
    let out = out?;
    if let Some(l) = out.lines().find(|l| l.contains("receiver")) {
        let w: Vec<&str> = l.split_whitespace().collect();
        if let Some(i) = w.iter().position(|x| *x == "Mbits/sec") {
            println!(
                "  => {} Mbit/s pod to pod across nodes over VXLAN, through weftd on both ends",
                w[i - 1]
            );
        }
    }
    check(stop)?;

    step("How n1's weftd handles a packet of pod1 to pod3 (on n3): weftctl trace");
    let st = world.nodes[0].node.agent.status().map_err(e)?;
    let ep = st
        .endpoints
        .first()
        .ok_or("n1's agent lists no endpoint for pod1")?;
    let gw = match st.gateway {
        Some(std::net::IpAddr::V4(g)) => g,
        other => return Err(format!("n1's gateway: {other:?}")),
    };
    let packet = format!(
        "in_port={},tcp,dl_src={},dl_dst={},nw_src={},nw_dst={},tp_dst=80",
        ep.port,
        ep.mac,
        weftctl::cluster::mac_of(gw),
        ips[0],
        ips[2]
    );
    world.weftctl(0, &["trace", &packet])?;
    check(stop)?;

    step("Node n3 leaves: its agent stops (and withdraws it from etcd)");
    let subnet3 = world.nodes[2]
        .node
        .agent
        .status()
        .map_err(e)?
        .subnet
        .ok_or("n3 has no subnet")?
        .to_string();
    world.flows_to(0, &subnet3)?;
    let pid = world.nodes[2]
        .node
        .agent
        .pid(&world.lab)
        .ok_or("n3's agent is not running")?;
    println!("  $ kill -TERM {pid}   # weft-agent on n3");
    let status = {
        let World { lab, nodes, .. } = &mut world;
        nodes[2].node.agent.stop(lab)
    };
    match status {
        Some(s) => println!("    (it exited: {s})"),
        None => println!("    (it had to be killed)"),
    }
    let start = Instant::now();
    loop {
        let peers = world.nodes[0]
            .node
            .agent
            .status()
            .map(|s| s.peers)
            .map_err(e)?;
        if !peers.iter().any(|p| p.node == "n3") {
            break;
        }
        check(stop)?;
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("n1 still has n3 as a peer after 10 s: {peers:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "  (n1 dropped n3 after {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    world.agent_status(0)?;
    if world.flows_to(0, &subnet3)? != 0 {
        return Err(format!("n1 still has flows to {subnet3} after n3 left"));
    }
    println!(
        "  pod3 ({}) is now unreachable from pod1 and from n1:",
        ips[2]
    );
    if world
        .pod_exec(
            0,
            &["/bin/ping", "-c", "2", "-i", "0.2", "-W", "1", &ips[2]],
        )
        .is_ok()
    {
        return Err("pod3 still answers after n3 left".into());
    }
    if in_ns(&n1, "ping", &["-c", "2", "-i", "0.2", "-W", "1", &ips[2]]).is_ok() {
        return Err("pod3 still answers n1 after n3 left".into());
    }
    println!("  and pod2 on n2 still is reachable:");
    world.pod_exec(
        0,
        &["/bin/ping", "-c", "2", "-i", "0.2", "-W", "2", &ips[1]],
    )?;
    check(stop)?;

    step("Teardown: containers (CNI DEL), containerd, agents, weftd, etcd, namespaces");
    for k in 0..world.nodes.len() {
        let pod = world.nodes[k].pod.clone();
        println!(
            "  $ {}",
            world.ctr_shown(k, &format!("tasks kill -s SIGKILL {pod}"))
        );
        if let Err(x) = world.nodes[k]
            .ctd
            .stop_container(&pod, Duration::from_secs(15))
        {
            println!("    {}", x.0);
        }
    }
    for k in 0..world.nodes.len() {
        let n = &world.nodes[k].node;
        if world.nodes[k].node.agent.is_running(&mut world.lab) {
            println!(
                "  $ kill -TERM {}   # weft-agent on n{}",
                n.agent.pid(&world.lab).unwrap_or(0),
                k + 1
            );
        }
        println!(
            "  $ kill -TERM {}   # weftd on n{}",
            n.weftd.pid(&world.lab).unwrap_or(0),
            k + 1
        );
    }
    println!(
        "  $ kill -TERM <containerd and etcd on each node>; ip netns del {prefix}*; rm -r {dir}"
    );
    drop(world);
    let left = leftovers(&prefix, &dir);
    let mounts = containerd::mounts_under(std::path::Path::new(&dir));
    let cgroups = containerd::cgroups_of(prefix.trim_end_matches('-'));
    if !left.is_empty() || !mounts.is_empty() || !cgroups.is_empty() {
        return Err(format!("left behind: {left:?} {mounts:?} {cgroups:?}"));
    }
    println!(
        "  nothing of {prefix}* is left (no namespace, process, mount, cgroup or file). The demo took {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
