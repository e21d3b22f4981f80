//! Issue 6 end to end: clusters built from cluster descriptions (`weftctl::cluster`),
//! every node a bare `weftd` programmed over its control socket from its plan, pods
//! configured from theirs, and real traffic.
//!
//! - Every encapsulation in every mode it supports (VXLAN l3/l2, Geneve l3/l2,
//!   IP-in-IP l3), three nodes with two pods each: ARP (and ND), ICMP between every
//!   pair of pods, a verified 50 MB TCP transfer on the same node and across nodes,
//!   verified UDP both ways, and IPv6 pod addresses over the IPv4 underlay (ping6 and
//!   a verified 50 MB transfer).
//! - Two tenants on different VNIs with the same pod addresses in the same `weftd`s
//!   never see each other's frames (tcpdump in the other tenant's pods), and each
//!   reaches its own pods.
//! - Interop with the Linux kernel's VXLAN device (a node set up the way flannel and
//!   Weave's fast datapath do it) in both directions.
//! - A MAC flood (30,000 random source MACs) from a pod, and through a tunnel from the
//!   kernel node: the MAC table stays within its capacity and other traffic flows.
//! - Path MTU discovery with the cluster's own flows, l3 and l2: a pod whose MTU is
//!   larger than the overlay's gets weftd's "fragmentation needed" / "packet too big"
//!   (IPv4 and IPv6) and its TCP recovers.
//! - Nothing is left behind: each test ends by checking that none of its namespaces
//!   and none of its processes remain, also after a panic.
//!
//! Tests take a shared lock: they move a lot of data, and their timing should not
//! depend on how many run at once.

use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use netns_tests::cluster::{ClusterLab, PodRun, leftovers, neighbour_mac};
use netns_tests::lab::{Ns, privileged};
use netns_tests::node::{nettool_binary, ping_output, tcp_transfer};
use weftctl::cluster::{Cluster, Encap};

const MB50: u64 = 50 * 1024 * 1024;
const TRANSFER: Duration = Duration::from_secs(60);
/// The MAC table's capacity in `weftd` (weft-pipeline's default).
const MAC_CAPACITY: usize = 8192;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A description: `nodes` nodes `n1..` at `198.18.0.i` with pod subnets
/// `198.19.i.0/24` (and `2001:2:0:i::/64`), `pods` pods per node named
/// `<tenant><node><k>` at `198.19.i.(10+k)` (and `2001:2:0:i::(10+k)`).
fn describe(
    encap: &str,
    mode: &str,
    vni: u32,
    tenant: &str,
    nodes: u8,
    pods: u8,
    v6: bool,
) -> String {
    let mtu = if encap == "ipip" { 1480 } else { 1450 };
    let mut s = format!(
        "[cluster]\nencap = \"{encap}\"\nvni = {vni}\nmode = \"{mode}\"\nmtu = {mtu}\n\
         pod_cidr = \"198.19.0.0/16\"\n"
    );
    if v6 {
        s += "pod_cidr6 = \"2001:2::/48\"\n";
    }
    for i in 1..=nodes {
        s += &format!(
            "\n[[node]]\nname = \"n{i}\"\naddress = \"198.18.0.{i}\"\npod_subnet = \"198.19.{i}.0/24\"\n"
        );
        if v6 {
            s += &format!("pod_subnet6 = \"2001:2:0:{i}::/64\"\n");
        }
    }
    for i in 1..=nodes {
        for k in 1..=pods {
            let name = format!("{tenant}{i}{k}");
            s += &format!(
                "\n[[pod]]\nname = \"{name}\"\nnode = \"n{i}\"\nnamespace = \"{name}\"\naddress = \"198.19.{i}.{}\"\n",
                10 + k
            );
            if v6 {
                s += &format!("address6 = \"2001:2:0:{i}::{}\"\n", 10 + k);
            }
        }
    }
    s
}

fn parse(text: &str) -> Cluster {
    Cluster::from_toml(text).unwrap_or_else(|e| panic!("description: {e}\n{text}"))
}

/// Builds the lab for `clusters` (the first gives the nodes), makes `kernel` a kernel
/// VXLAN node, starts `weftd` everywhere else and installs every description.
fn build(clusters: &[&Cluster], kernel: Option<&str>) -> ClusterLab {
    build_with(clusters, kernel, &[])
}

/// [`build`], every `weftd` started with `flags` as well.
fn build_with(clusters: &[&Cluster], kernel: Option<&str>, flags: &[&str]) -> ClusterLab {
    let mut cl = ClusterLab::new(clusters[0]).unwrap();
    cl.weftd_flags = flags.iter().map(|f| f.to_string()).collect();
    if let Some(k) = kernel {
        cl.install_kernel_node(clusters[0], k).unwrap();
    }
    cl.start_all().unwrap();
    for c in clusters {
        if let Err(e) = cl.install(c) {
            panic!("install: {e}\n{}", cl.logs());
        }
    }
    // Under the matrix's tunnel_gso=on, a VXLAN/Geneve cluster must really be on the
    // tunnel-GSO port, not quietly on the sockets it falls back to.
    // (The test's own flags come after the matrix's, so the last one wins.)
    let last = |name: &str, matrix: &str| {
        flags
            .iter()
            .rev()
            .find_map(|f| f.strip_prefix(name).map(str::to_string))
            .or_else(|| std::env::var(matrix).ok().map(|v| format!("={v}")))
    };
    let gso_on = last("--tunnel-gso", "WEFT_TEST_TUNNEL_GSO").is_some_and(|g| g == "=on");
    let offloads_off = last("--offloads", "WEFT_TEST_OFFLOADS").is_some_and(|o| o == "=off");
    let udp_tunnel = clusters
        .iter()
        .any(|c| matches!(c.encap(), Encap::Vxlan | Encap::Geneve));
    if gso_on && !offloads_off && udp_tunnel && weft_datapath::port::underlay::probe().is_ok() {
        for (node, log) in cl.node_logs() {
            assert_log_says_tunnel_gso(&node, &log);
        }
    }
    cl
}

/// The start of a test of the tunnel-GSO underlay port: the serial lock, or `None` (the
/// test skips, saying why) without root or on a kernel without tunnel GSO in TAPs.
/// Under `WEFT_REQUIRE_PRIVILEGED` (CI) a kernel without it fails the test instead.
fn begin_gso(test: &str) -> Option<MutexGuard<'static, ()>> {
    let s = serial();
    if !privileged(test) || !kernel_has_tunnel_gso(test, "skipped") {
        return None;
    }
    Some(s)
}

/// Whether this kernel has tunnel GSO in TAPs; when not, says `skipped` and why, and
/// fails the test under `WEFT_REQUIRE_PRIVILEGED` (CI).
fn kernel_has_tunnel_gso(test: &str, skipped: &str) -> bool {
    let Err(why) = weft_datapath::port::underlay::probe() else {
        return true;
    };
    assert!(
        std::env::var_os("WEFT_REQUIRE_PRIVILEGED").is_none(),
        "{test}: this kernel has no tunnel-GSO TAP ({why})"
    );
    eprintln!("{skipped}: this kernel has no tunnel-GSO TAP ({why})");
    false
}

/// Drops the lab and checks that nothing of it remains.
fn finish(cl: ClusterLab) {
    let left = cl.teardown();
    assert!(left.is_empty(), "left behind: {left:#?}");
}

/// Pings every `(from, to_ip)` at once (3 echo requests each); the pairs that did not
/// get at least 2 replies, with ping's summary.
fn ping_all(cl: &ClusterLab, pairs: &[(String, String)]) -> Vec<String> {
    let children: Vec<(String, String, Child)> = pairs
        .iter()
        .map(|(from, to)| {
            let mut c = cl.pod(from).ns.command("ping");
            c.args(["-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", to]);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            (from.clone(), to.clone(), c.spawn().expect("ping"))
        })
        .collect();
    let mut bad = Vec::new();
    for (from, to, child) in children {
        let o = child.wait_with_output().expect("ping output");
        let text = String::from_utf8_lossy(&o.stdout);
        let received = text
            .split(", ")
            .find_map(|p| p.strip_suffix(" received"))
            .and_then(|n| n.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if received < 2 {
            bad.push(format!(
                "{from} -> {to}: {} {}",
                text.lines().last().unwrap_or(""),
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    bad
}

/// Every ordered pair of pods of tenant `tenant` (by name prefix), to the address
/// `addr` picks.
fn all_pairs(
    cl: &ClusterLab,
    tenant: &str,
    addr: impl Fn(&PodRun) -> Option<String>,
) -> Vec<(String, String)> {
    let pods: Vec<(&String, &PodRun)> = cl
        .pods()
        .iter()
        .filter(|(n, _)| n.starts_with(tenant))
        .collect();
    let mut v = Vec::new();
    for (a, _) in &pods {
        for (b, pb) in &pods {
            if a != b
                && let Some(ip) = addr(pb)
            {
                v.push(((*a).clone(), ip));
            }
        }
    }
    v
}

fn transfer(cl: &mut ClusterLab, from: &str, to: &str, to_ip: &str, port: u16, bytes: u64) {
    let (a, b) = (cl.pod(from).ns.clone(), cl.pod(to).ns.clone());
    match tcp_transfer(&mut cl.lab, &a, &b, to_ip, port, bytes, TRANSFER) {
        Ok(t) => {
            assert_eq!(t.bytes, bytes, "{t:?}");
            eprintln!("{from} -> {to} ({to_ip}): {}", t.receiver.trim());
        }
        Err(e) => panic!("{from} -> {to} ({to_ip}): {e}\n{}", cl.logs()),
    }
}

/// `udp-echo` in `to`, `udp-ping` from `from`: `count` datagrams, each checked.
fn udp(cl: &mut ClusterLab, from: &str, to: &str, to_ip: &str, port: u16, count: u32) {
    let tool = nettool_binary().display().to_string();
    let listen = if to_ip.contains(':') {
        format!("[{to_ip}]:{port}")
    } else {
        format!("{to_ip}:{port}")
    };
    let label = format!("udp-echo-{to}-{port}");
    let mut echo = cl.pod(to).ns.command(&tool);
    echo.args([
        "udp-echo",
        "--listen",
        &listen,
        "--count",
        &count.to_string(),
    ]);
    echo.args(["--timeout", "30"]);
    let id = cl.lab.spawn(&label, echo).unwrap();
    let start = Instant::now();
    while !cl.lab.log(&label).contains("listening") {
        assert!(
            cl.lab.is_running(id) && start.elapsed() < Duration::from_secs(5),
            "udp-echo did not start: {}",
            cl.lab.log(&label)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = cl
        .pod(from)
        .ns
        .run(&[
            &tool,
            "udp-ping",
            "--to",
            &listen,
            "--count",
            &count.to_string(),
            "--size",
            "1400",
            "--timeout",
            "30",
        ])
        .unwrap_or_else(|e| panic!("udp {from} -> {to}: {e}\n{}", cl.logs()));
    let status = cl.lab.stop(id, Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "udp-echo in {to}: {status:?} {}",
        cl.lab.log(&label)
    );
    eprintln!("{from} -> {to}: {}", out.trim());
}

fn ip4(cl: &ClusterLab, pod: &str) -> String {
    cl.pod(pod).ip()
}

fn ip6(cl: &ClusterLab, pod: &str) -> String {
    cl.pod(pod).ip6().expect("an IPv6 address")
}

/// The gateway MAC of node `i` (`0a:58:` + `198.19.i.1`).
fn gw_mac(i: u8) -> String {
    format!("0a:58:c6:13:{i:02x}:01")
}

/// The full check of one encapsulation in one mode. See the module docs.
fn overlay(encap: &str, mode: &str, v6: bool) {
    let _s = serial();
    let test = format!("overlay_{encap}_{mode}");
    if !privileged(&test) {
        return;
    }
    let started = Instant::now();
    let c = parse(&describe(encap, mode, 100, "a", 3, 2, v6));
    let mut cl = build(&[&c], None);

    // ICMP between every pair of pods (same node and across nodes, both ways); the
    // first packets also resolve ARP.
    let bad = ping_all(&cl, &all_pairs(&cl, "a", |p| Some(p.ip())));
    assert!(
        bad.is_empty(),
        "{test}: pings failed: {bad:#?}\n{}",
        cl.logs()
    );

    // ARP: in l3 the gateway answers for every other pod (the ARP responder flows);
    // in l2 each pod answers for itself across the segment.
    let a11 = cl.pod("a11").ns.clone();
    let same = neighbour_mac(&a11, &ip4(&cl, "a12"));
    match mode {
        "l3" => {
            assert_eq!(same, Some(gw_mac(1)), "a11's ARP entry for a12");
            assert_eq!(
                neighbour_mac(&a11, "198.19.1.1"),
                Some(gw_mac(1)),
                "a11's ARP entry for its gateway"
            );
        }
        _ => {
            assert_eq!(same, Some(cl.pod("a12").plan.mac.to_string()));
            assert_eq!(
                neighbour_mac(&a11, &ip4(&cl, "a21")),
                Some(cl.pod("a21").plan.mac.to_string()),
                "a11's ARP entry for a21 (across nodes)"
            );
        }
    }

    if v6 {
        let bad = ping_all(&cl, &all_pairs(&cl, "a", |p| p.ip6()));
        assert!(
            bad.is_empty(),
            "{test}: ping6 failed: {bad:#?}\n{}",
            cl.logs()
        );
        match mode {
            // l3: no ND on the wire, a permanent entry for the gateway.
            "l3" => {
                let n = a11.ip("-6 neigh show 2001:2:0:1::1").unwrap();
                assert!(n.contains("PERMANENT"), "{n}");
                assert!(n.contains(&gw_mac(1)), "{n}");
            }
            // l2: neighbour discovery across the segment.
            _ => assert_eq!(
                neighbour_mac(&a11, &ip6(&cl, "a31")),
                Some(cl.pod("a31").plan.mac.to_string()),
                "a11's ND entry for a31"
            ),
        }
    }

    if encap == "ipip" {
        // IP-in-IP decrements the inner TTL as a router does: a ping sent with TTL 2
        // (1 after the l3 flows' dec_ttl) is refused by the encapsulation on n1, and
        // counted as that, not as a decapsulation drop.
        let drops = |reason: &str| {
            cl.metrics("n1")
                .unwrap()
                .get("weft_port_drops_total", &[("reason", reason)])
                .unwrap_or(0)
        };
        let before = drops("encap_ttl_expired");
        let to = ip4(&cl, "a21");
        let (ok, out) = ping_output(&a11, &["-n", "-t", "2", "-c", "2", "-W", "1", &to]);
        assert!(!ok, "{test}: a TTL 2 ping crossed IP-in-IP: {out}");
        assert_eq!(
            drops("encap_ttl_expired") - before,
            2,
            "{test}: both TTL 2 pings counted as encap_ttl_expired\n{}",
            cl.metrics("n1").unwrap().body
        );
        assert_eq!(
            drops("decap_ttl_expired"),
            0,
            "{test}: nothing was decapsulated"
        );
    }

    // UDP both ways, on the same node and across nodes.
    let (a12, a21) = (ip4(&cl, "a12"), ip4(&cl, "a21"));
    let a11ip = ip4(&cl, "a11");
    udp(&mut cl, "a11", "a12", &a12, 7001, 200);
    udp(&mut cl, "a12", "a11", &a11ip, 7002, 200);
    udp(&mut cl, "a11", "a21", &a21, 7003, 200);
    udp(&mut cl, "a21", "a11", &a11ip, 7004, 200);
    if v6 {
        let (b, a) = (ip6(&cl, "a32"), ip6(&cl, "a22"));
        udp(&mut cl, "a22", "a32", &b, 7005, 200);
        udp(&mut cl, "a32", "a22", &a, 7006, 200);
    }

    // 50 MB verified, on the same node and across nodes (and over IPv6).
    transfer(&mut cl, "a11", "a12", &a12, 5001, MB50);
    let a31 = ip4(&cl, "a31");
    transfer(&mut cl, "a22", "a31", &a31, 5002, MB50);
    if v6 {
        let b = ip6(&cl, "a12");
        transfer(&mut cl, "a32", "a12", &b, 5003, MB50);
    }

    // The nodes stayed up and the tunnels carried it.
    for n in ["n1", "n2", "n3"] {
        assert!(cl.weftd_running(n), "weftd on {n} died\n{}", cl.logs());
    }
    // n3 received the 50 MB from n2 through its tunnel port(s).
    let m = cl.metrics("n3").unwrap();
    let tunnel_rx = m
        .get("weft_port_rx_packets_total", &[("type", encap)])
        .unwrap_or(0);
    assert!(
        tunnel_rx > 30_000,
        "n3 tunnels received {tunnel_rx}\n{}",
        m.body
    );
    eprintln!("{test}: {:.1} s", started.elapsed().as_secs_f64());
    finish(cl);
}

#[test]
fn vxlan_l3_three_nodes_two_pods_each() {
    overlay("vxlan", "l3", true);
}

#[test]
fn vxlan_l2_three_nodes_two_pods_each() {
    overlay("vxlan", "l2", true);
}

#[test]
fn geneve_l3_three_nodes_two_pods_each() {
    overlay("geneve", "l3", true);
}

#[test]
fn geneve_l2_three_nodes_two_pods_each() {
    overlay("geneve", "l2", true);
}

#[test]
fn ipip_l3_three_nodes_two_pods_each() {
    overlay("ipip", "l3", true);
}

/// tcpdump on `eth0` in each of `pods`, capturing ARP and IPv4; returns when all listen.
fn capture(
    cl: &mut ClusterLab,
    pods: &[String],
    tag: &str,
) -> Vec<(String, netns_tests::lab::ProcId)> {
    let mut v = Vec::new();
    for p in pods {
        let label = format!("tcpdump-{tag}-{p}");
        let mut c = cl.pod(p).ns.command("tcpdump");
        // Frames coming in only (the pod's own ARP refreshes and late segments of its own
        // finished transfers are not the other tenant's), each printed at once (without
        // immediate mode libpcap hands frames over up to a second late, after the capture
        // may have been stopped).
        c.args([
            "-i",
            "eth0",
            "-nn",
            "-l",
            "-e",
            "--immediate-mode",
            "-Q",
            "in",
            "arp or ip",
        ]);
        let id = cl.lab.spawn(&label, c).unwrap();
        v.push((label, id));
    }
    for (label, id) in &v {
        let start = Instant::now();
        while !cl.lab.log(label).contains("listening on") {
            assert!(
                cl.lab.is_running(*id) && start.elapsed() < Duration::from_secs(10),
                "tcpdump did not start: {}",
                cl.lab.log(label)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    v
}

/// Stops the captures; the frames each one saw (tcpdump's packet lines).
fn captured(cl: &mut ClusterLab, caps: Vec<(String, netns_tests::lab::ProcId)>) -> Vec<String> {
    // Let anything in flight arrive.
    std::thread::sleep(Duration::from_millis(300));
    let mut seen = Vec::new();
    for (label, id) in caps {
        cl.lab.stop(id, Duration::from_secs(2));
        for l in cl.lab.log(&label).lines() {
            // tcpdump's closing counts ("1 packet captured", "0 packets received by
            // filter", ...), singular or plural.
            let count = |what: &str| {
                l.contains(&format!(" packet {what}")) || l.contains(&format!(" packets {what}"))
            };
            let meta = l.starts_with("tcpdump:")
                || l.starts_with("listening on")
                || count("captured")
                || count("received by filter")
                || count("dropped by kernel")
                || l.trim().is_empty();
            if !meta {
                seen.push(format!("{label}: {l}"));
            }
        }
    }
    seen
}

/// Traffic of one tenant: every pair pings, UDP and 10 MB TCP across nodes.
fn tenant_traffic(cl: &mut ClusterLab, t: &str, port: u16) {
    let bad = ping_all(cl, &all_pairs(cl, t, |p| Some(p.ip())));
    assert!(bad.is_empty(), "tenant {t}: {bad:#?}\n{}", cl.logs());
    let (from, to) = (format!("{t}11"), format!("{t}32"));
    let ip = ip4(cl, &to);
    udp(cl, &from, &to, &ip, port, 100);
    transfer(cl, &from, &to, &ip, port + 1, 10 << 20);
}

fn isolation(encap: &str, mode: &str) {
    let _s = serial();
    let test = format!("isolation_{encap}_{mode}");
    if !privileged(&test) {
        return;
    }
    let a = parse(&describe(encap, mode, 100, "a", 3, 2, false));
    let b = parse(&describe(encap, mode, 200, "b", 3, 2, false));
    let mut cl = build(&[&a, &b], None);
    for (p, q) in [("a11", "b11"), ("a32", "b32")] {
        assert_eq!(cl.pod(p).ip(), cl.pod(q).ip(), "same addresses");
        assert_eq!(cl.pod(p).node, cl.pod(q).node, "on the same node");
    }
    let names = |t: &str| -> Vec<String> {
        cl.pods()
            .keys()
            .filter(|n| n.starts_with(t))
            .cloned()
            .collect()
    };
    let (pods_a, pods_b) = (names("a"), names("b"));
    // Tenant A talks (from scratch: its first ARP requests are broadcasts) while B's
    // pods listen; then the other way round.
    for (talker, listeners, port) in [("a", &pods_b, 6000), ("b", &pods_a, 6100)] {
        let caps = capture(&mut cl, listeners, talker);
        tenant_traffic(&mut cl, talker, port);
        let seen = captured(&mut cl, caps);
        assert!(
            seen.is_empty(),
            "{test}: tenant {talker}'s traffic reached the other tenant:\n{}",
            seen.join("\n")
        );
    }
    // Both tenants' flows are installed side by side, told apart by cookie = VNI.
    let mut c = cl.client("n1").unwrap();
    let flows = c.dump_flows(Default::default()).unwrap().flows;
    let by_cookie = |v: u64| flows.iter().filter(|f| f.flow.cookie == v).count();
    assert!(by_cookie(100) > 5 && by_cookie(200) > 5, "{flows:?}");
    finish(cl);
}

#[test]
fn two_tenants_same_addresses_vxlan_l3_isolated() {
    isolation("vxlan", "l3");
}

#[test]
fn two_tenants_same_addresses_geneve_l3_isolated() {
    isolation("geneve", "l3");
}

/// l2: `normal` floods (the first ARP requests are broadcasts) reach only the ports
/// tagged with the tenant's VNI (`tag=`) and the tunnels, whose frames carry the VNI.
#[test]
fn two_tenants_same_addresses_vxlan_l2_isolated() {
    isolation("vxlan", "l2");
}

#[test]
fn two_tenants_same_addresses_geneve_l2_isolated() {
    isolation("geneve", "l2");
}

/// A Linux kernel VXLAN node (n1) and a Weft node (n2) on one l2 segment.
#[test]
fn kernel_vxlan_node_interoperates_with_weft_node() {
    let _s = serial();
    if !privileged("kernel_vxlan_node_interoperates_with_weft_node") {
        return;
    }
    kernel_interop(&[]);
}

/// The same with the Weft node's VXLAN over the tunnel-GSO underlay port: the kernel
/// node's packets (super-frames and plain datagrams, some with the outer UDP checksum
/// left partial) are read from the TAP, and Weft's written to it reach the kernel's
/// VXLAN device.
#[test]
fn kernel_vxlan_node_interoperates_over_the_tunnel_gso_port() {
    let Some(_s) = begin_gso("kernel_vxlan_node_interoperates_over_the_tunnel_gso_port") else {
        return;
    };
    // The port needs offloads (its frames are super-frames): on, whatever the matrix says.
    kernel_interop(&["--tunnel-gso=on", "--offloads=on"]);
}

/// Packets and bytes of the node's tunnel-GSO TAP: (read by Weft, written by Weft).
fn gso_tap_counters(ns: &Ns) -> ((u64, u64), (u64, u64)) {
    let read = |what: &str| -> u64 {
        ns.run(&["cat", &format!("/sys/class/net/wgso4789/statistics/{what}")])
            .unwrap_or_else(|e| panic!("tunnel-GSO tap counters in {}: {e}", ns.name()))
            .trim()
            .parse()
            .unwrap()
    };
    // The TAP's "tx" is what the kernel hands to Weft; its "rx" is what Weft writes.
    (
        (read("tx_packets"), read("tx_bytes")),
        (read("rx_packets"), read("rx_bytes")),
    )
}

/// Checks that `node`'s weftd uses the tunnel-GSO port (its own log, not another node's).
fn assert_tunnel_gso_in_use(cl: &ClusterLab, node: &str) {
    let logs = cl.node_logs();
    let Some((_, log)) = logs.iter().find(|(n, _)| n == node) else {
        panic!("{node} runs no weftd\n{}", cl.logs());
    };
    assert_log_says_tunnel_gso(node, log);
}

/// Checks that a weftd's `log` says it joined the tunnel-GSO port.
fn assert_log_says_tunnel_gso(node: &str, log: &str) {
    assert!(
        log.contains("underlay: tunnel-GSO TAP")
            && log.contains("tunnel-GSO underlay port joined to its device by tc"),
        "{node}: the tunnel-GSO port is not in use\n{log}"
    );
}

/// The redirect from the underlay device into the tunnel-GSO TAP has no backpressure:
/// tunnel packets that arrive while the TAP's queue toward weftd is full are dropped by
/// the kernel (the TAP's `tx_dropped`), and weftd counts them as its own,
/// `underlay_queue_full` on the tunnel port, in the metrics and in `dump-ports`'
/// rx_dropped. Here n2's weftd is stopped (SIGSTOP) while a pod on n1 sends 1000
/// datagrams to a pod on n2 through a TAP queue cut to 16 frames: nearly all are
/// dropped there, and the count is the kernel's to the frame.
#[test]
fn a_full_underlay_tap_queue_is_counted_as_underlay_queue_full() {
    let Some(_s) = begin_gso("a_full_underlay_tap_queue_is_counted_as_underlay_queue_full") else {
        return;
    };
    let c = parse(&describe("vxlan", "l3", 100, "q", 2, 1, false));
    let cl = build_with(&[&c], None, &["--tunnel-gso=on", "--offloads=on"]);
    assert_tunnel_gso_in_use(&cl, "n2");
    let (from, to) = (cl.pod("q11").ns.clone(), cl.pod("q21").ip());
    assert!(from.ping(&to, 2, 2), "{}", cl.logs());
    let n2 = cl.node("n2").ns.clone();
    let tunnel = cl
        .client("n2")
        .unwrap()
        .show()
        .unwrap()
        .ports
        .into_iter()
        .find(|p| p.port_type == "vxlan")
        .expect("a vxlan port")
        .name;
    let kernel_dropped = || {
        let j = n2.ip("-j -s link show wgso4789").unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v[0]["stats64"]["tx"]["dropped"]
            .as_u64()
            .unwrap_or_else(|| panic!("no tx dropped in {j}"))
    };
    let counted = || {
        cl.metrics("n2")
            .unwrap()
            .port_drops(&tunnel, "underlay_queue_full")
    };
    let (kernel_before, counted_before) = (kernel_dropped(), counted());
    n2.ip("link set wgso4789 txqueuelen 16").unwrap();
    const N: u64 = 1000;
    {
        let pid = cl.weftd_pid("n2").expect("weftd runs on n2");
        let kill = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(kill("-STOP"));
        struct Resume<F: Fn(&str) -> bool>(F);
        impl<F: Fn(&str) -> bool> Drop for Resume<F> {
            fn drop(&mut self) {
                (self.0)("-CONT");
            }
        }
        let _resume = Resume(kill);
        let tool = nettool_binary().display().to_string();
        let to = format!("{to}:9");
        from.run(&[
            &tool, "udp-send", "--to", &to, "--hex", "55aa55aa", "--count", "1000",
        ])
        .unwrap();
        // Until n1 has sent them all (its weftd forwards while n2's is stopped).
        std::thread::sleep(Duration::from_millis(300));
    }
    let kernel = kernel_dropped() - kernel_before;
    // Nearly all: n1's own path may lose a few of the burst before the underlay (21 in
    // one run with one worker), which n2's TAP then never sees.
    assert!(
        kernel >= N / 2,
        "n2's underlay TAP dropped {kernel} of {N} sent into a queue of 16"
    );
    assert_eq!(
        counted() - counted_before,
        kernel,
        "underlay_queue_full counts what the underlay TAP dropped\n{}",
        cl.metrics("n2").unwrap().body
    );
    let sock = cl.node("n2").socket.clone().expect("n2's control socket");
    let out = Command::new(netns_tests::node::binary("weftctl", "WEFTCTL"))
        .arg("-s")
        .arg(&sock)
        .args(["-o", "json", "dump-ports"])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&ports).unwrap_or_else(|e| panic!("dump-ports: {e}: {ports}"));
    let port = v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["name"] == tunnel.as_str())
        .unwrap_or_else(|| panic!("no port {tunnel} in {ports}"));
    assert!(
        port["rx_dropped"].as_u64().unwrap_or(0) >= kernel,
        "dump-ports counts them as receive drops: {port}"
    );
    // Traffic resumes once the queue is long again.
    n2.ip("link set wgso4789 txqueuelen 65536").unwrap();
    assert!(from.ping(&to, 2, 2), "{}", cl.logs());
    finish(cl);
}

/// `--pin-cpus=on` pins the workers and steers every multi-queue TAP's frames (the pods'
/// and the tunnel-GSO underlay's) by CPU, short ones to the queue of the sending CPU and
/// long ones to the next (`port::steer`; the unit test there shows the steering itself):
/// pings and TCP streams still cross both underlays whole.
#[test]
fn pinned_workers_with_cpu_steering_carry_ping_and_tcp_on_both_underlays() {
    let _s = serial();
    if !privileged("pinned_workers_with_cpu_steering_carry_ping_and_tcp_on_both_underlays") {
        return;
    }
    let gso_modes: &[&str] = if weft_datapath::port::underlay::probe().is_ok() {
        &["off", "on"]
    } else {
        eprintln!("this kernel has no tunnel-GSO TAP: the sockets underlay only");
        &["off"]
    };
    for gso in gso_modes {
        let c = parse(&describe("vxlan", "l3", 100, "s", 2, 1, false));
        let gso_flag = format!("--tunnel-gso={gso}");
        let mut cl = build_with(
            &[&c],
            None,
            &[&gso_flag, "--offloads=on", "--workers=2", "--pin-cpus=on"],
        );
        let logs = cl.logs();
        assert!(logs.contains("worker pinned"), "{logs}");
        assert!(
            logs.contains("TAP frames steered by CPU: short ones to the queue of the CPU"),
            "no CPU steering (tunnel_gso={gso}):\n{logs}"
        );
        let (to, to_ip) = ("s21", cl.pod("s21").ip());
        assert!(cl.pod("s11").ns.ping(&to_ip, 3, 2), "{}", cl.logs());
        transfer(&mut cl, "s11", to, &to_ip, 5201, 8 << 20);
        let back = cl.pod("s11").ip();
        transfer(&mut cl, "s21", "s11", &back, 5202, 8 << 20);
        finish(cl);
    }
}

/// The tunnel-GSO port's packets skip the node's netfilter (tc takes them on the
/// device's ingress, before `PREROUTING`, and sends them from its egress, after
/// `POSTROUTING`), as docs/DESIGN.md says: an iptables rule on n2 that drops UDP 4789 in
/// `INPUT` cuts the pods off over the tunnel sockets, and counts their packets, but not
/// over the tunnel-GSO port, where it sees none.
#[test]
fn a_firewall_rule_on_the_tunnel_port_binds_the_sockets_not_the_tunnel_gso_port() {
    let test = "a_firewall_rule_on_the_tunnel_port_binds_the_sockets_not_the_tunnel_gso_port";
    let _s = serial();
    if !privileged(test) {
        return;
    }
    if Command::new("iptables").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("WEFT_REQUIRE_PRIVILEGED").is_none(),
            "{test}: no iptables (scripts/test installs it)"
        );
        eprintln!("skipped: no iptables");
        return;
    }
    let mut modes = vec!["off"];
    if kernel_has_tunnel_gso(test, "tunnel-GSO half skipped") {
        modes.push("on");
    }
    for gso in modes {
        let c = parse(&describe("vxlan", "l3", 100, "f", 2, 1, false));
        let gso_flag = format!("--tunnel-gso={gso}");
        let cl = build_with(&[&c], None, &[&gso_flag, "--offloads=on"]);
        if gso == "on" {
            assert_tunnel_gso_in_use(&cl, "n2");
        }
        let (from, to) = (cl.pod("f11").ns.clone(), cl.pod("f21").ip());
        assert!(
            from.ping(&to, 3, 2),
            "tunnel_gso={gso}: before the rule\n{}",
            cl.logs()
        );
        let n2 = cl.node("n2").ns.clone();
        n2.run(&[
            "iptables", "-I", "INPUT", "-p", "udp", "--dport", "4789", "-j", "DROP",
        ])
        .unwrap_or_else(|e| panic!("iptables in n2: {e}"));
        let through = from.ping(&to, 3, 1);
        let rules = n2
            .run(&["iptables", "-L", "INPUT", "-v", "-n", "-x"])
            .unwrap();
        let dropped: u64 = rules
            .lines()
            .find(|l| l.contains("DROP") && l.contains("dpt:4789"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no DROP rule for 4789 in n2:\n{rules}"));
        if gso == "on" {
            assert!(through, "the rule stopped the tunnel-GSO port\n{rules}");
            assert_eq!(
                dropped, 0,
                "netfilter saw the tunnel-GSO port's packets\n{rules}"
            );
        } else {
            assert!(
                !through,
                "the rule did not stop the tunnel sockets\n{rules}"
            );
            assert!(dropped >= 3, "the rule counted {dropped} packets\n{rules}");
        }
        finish(cl);
    }
}

fn kernel_interop(flags: &[&str]) {
    let c = parse(&describe("vxlan", "l2", 100, "k", 2, 2, true));
    let mut cl = build_with(&[&c], Some("n1"), flags);
    let n1 = cl.node("n1").ns.clone();
    let vx = n1.ip("-d link show vxlan100").unwrap();
    assert!(
        vx.contains("vxlan id 100") && vx.contains("dstport 4789"),
        "{vx}"
    );
    // kernel pods: k11, k12 (n1); Weft pods: k21, k22 (n2).
    let pairs: Vec<(String, String)> = [
        ("k11", "k21"),
        ("k12", "k22"),
        ("k21", "k11"),
        ("k22", "k12"),
    ]
    .iter()
    .flat_map(|(a, b)| [(a.to_string(), ip4(&cl, b)), (a.to_string(), ip6(&cl, b))])
    .collect();
    let bad = ping_all(&cl, &pairs);
    assert!(
        bad.is_empty(),
        "kernel <-> weft pings: {bad:#?}\n{}\n{}",
        cl.logs(),
        cl.metrics("n2").map(|m| m.body).unwrap_or_default()
    );
    // Weft learned the kernel pods' MACs behind the kernel node.
    let mut ctl = cl.client("n2").unwrap();
    let fdb = ctl.fdb().unwrap().entries;
    let k11 = cl.pod("k11").plan.mac;
    let e = fdb
        .iter()
        .find(|e| e.mac == k11)
        .unwrap_or_else(|| panic!("k11's MAC not learned: {fdb:?}"));
    assert_eq!(e.vni, 100);
    assert_eq!(e.remote, Some("198.18.0.1".parse().unwrap()), "{e:?}");
    // The kernel learned nothing (nolearning) but delivers by flooding to n2.
    let (k21, k11ip) = (ip4(&cl, "k21"), ip4(&cl, "k11"));
    transfer(&mut cl, "k11", "k21", &k21, 5101, MB50);
    transfer(&mut cl, "k21", "k11", &k11ip, 5102, MB50);
    let k22v6 = ip6(&cl, "k22");
    transfer(&mut cl, "k12", "k22", &k22v6, 5103, 10 << 20);
    let (k22, k12) = (ip4(&cl, "k22"), ip4(&cl, "k12"));
    udp(&mut cl, "k12", "k22", &k22, 7101, 200);
    udp(&mut cl, "k22", "k12", &k12, 7102, 200);
    assert!(cl.weftd_running("n2"), "{}", cl.logs());
    if !flags.is_empty() {
        assert_tunnel_gso_in_use(&cl, "n2");
        // Both 50 MB streams crossed the TAP, Weft's written as super-frames. (The
        // kernel node's arrive MTU-sized on this 6.18 kernel: its VXLAN device's GSO
        // packets are segmented before the TAP takes them, so they take the plain path
        // and the coalescer.)
        let ((rp, rb), (wp, wb)) = gso_tap_counters(&cl.node("n2").ns);
        eprintln!("n2 tap read {rp} packets / {rb} bytes, written {wp} / {wb}");
        assert!(
            rb > MB50 && wb > MB50,
            "tap read {rp}/{rb}, written {wp}/{wb}"
        );
        assert!(wb / wp > 8000, "not super-frames: tap written {wp} / {wb}");
    }
    finish(cl);
}

/// TCP streams of odd sizes, both ways, between Weft nodes whose VXLAN runs over the
/// tunnel-GSO underlay port arrive byte for byte (each checksummed by both ends), and
/// they crossed the TAPs as super-frames (bytes per packet far above the MTU), counted
/// on the tunnel ports as the datagrams the kernel cut them into.
#[test]
fn tunnel_gso_port_carries_odd_sized_streams_byte_identical() {
    let Some(_s) = begin_gso("tunnel_gso_port_carries_odd_sized_streams_byte_identical") else {
        return;
    };
    let c = parse(&describe("vxlan", "l3", 100, "a", 2, 1, true));
    let mut cl = build_with(&[&c], None, &["--tunnel-gso=on", "--offloads=on"]);
    assert_tunnel_gso_in_use(&cl, "n1");
    let (a11, a21) = (ip4(&cl, "a11"), ip4(&cl, "a21"));
    let a21v6 = ip6(&cl, "a21");
    let sizes: [u64; 6] = [1, 1447, 65_537, 3_000_001, 20_971_529, 7_340_033];
    // Bytes toward n2 and toward n1.
    let (mut to2, mut to1) = (0, 0);
    for (i, &n) in sizes.iter().enumerate() {
        let port = 5301 + i as u16;
        match i % 3 {
            0 => transfer(&mut cl, "a11", "a21", &a21, port, n),
            1 => transfer(&mut cl, "a21", "a11", &a11, port, n),
            _ => transfer(&mut cl, "a11", "a21", &a21v6, port, n),
        }
        if i % 3 == 1 { to1 += n } else { to2 += n }
    }
    let ((r2p, r2b), (w2p, w2b)) = gso_tap_counters(&cl.node("n2").ns);
    let ((r1p, r1b), (w1p, w1b)) = gso_tap_counters(&cl.node("n1").ns);
    eprintln!(
        "n1 tap wrote {w1p} packets / {w1b} bytes, read {r1p} / {r1b}; \
         n2 tap wrote {w2p} / {w2b}, read {r2p} / {r2b}"
    );
    // Every stream crossed the TAPs (both ends' writes and reads), as super-frames: the
    // bytes per packet are the average of the data's super-frames and the ACKs'
    // plain frames, far above a 1500-byte datagram either way.
    for (what, bytes, want) in [
        ("n1 wrote", w1b, to2),
        ("n2 read", r2b, to2),
        ("n2 wrote", w2b, to1),
        ("n1 read", r1b, to1),
    ] {
        assert!(bytes > want, "{what} {bytes} bytes, {want} sent that way");
    }
    let per = |b: u64, p: u64| b / p.max(1);
    assert!(
        per(w1b, w1p) > 3000
            && per(r2b, r2p) > 3000
            && per(w2b, w2p) > 3000
            && per(r1b, r1p) > 3000,
        "not super-frames"
    );
    let rb = r2b;
    // The tunnel ports count datagrams on the wire, not super-frames.
    let m = cl.metrics("n2").unwrap();
    let tunnel_rx = m
        .get("weft_port_rx_packets_total", &[("type", "vxlan")])
        .unwrap_or(0);
    assert!(
        tunnel_rx > rb / 1500,
        "n2 tunnel rx {tunnel_rx}\n{}",
        m.body
    );
    for n in ["n1", "n2"] {
        assert!(cl.weftd_running(n), "weftd on {n} died\n{}", cl.logs());
    }
    finish(cl);
}

/// A python3 script that sends `count` Ethernet frames out of `eth0` with random
/// (unicast, locally administered) source and destination MACs, EtherType 0x88b5.
fn mac_flood(ns: &Ns, count: u32) -> Child {
    let script = format!(
        "import os, socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0', 0))\n\
         body = b'\\x88\\xb5' + bytes(46)\n\
         sent = 0\n\
         for i in range({count}):\n\
         \x20   r = bytearray(os.urandom(12))\n\
         \x20   r[0] = (r[0] & 0xfc) | 0x02\n\
         \x20   r[6] = (r[6] & 0xfc) | 0x02\n\
         \x20   try:\n\
         \x20       s.send(bytes(r) + body)\n\
         \x20       sent += 1\n\
         \x20   except BlockingIOError:\n\
         \x20       pass\n\
         print('sent', sent)\n"
    );
    let mut c = ns.command("python3");
    c.args(["-c", &script]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().expect("python3")
}

/// Pings `to` from `ns` every 20 ms for `secs` seconds; (sent, received).
/// Pings `to` every 20 ms, `secs * 50` times. A count, not a deadline: ping stopped by a
/// deadline counts the request still in flight at that moment as lost.
fn steady_ping(ns: &Ns, to: &str, secs: u32) -> Child {
    let mut c = ns.command("ping");
    c.args([
        "-n",
        "-q",
        "-i",
        "0.02",
        "-c",
        &(secs * 50).to_string(),
        "-w",
        &(secs * 3).to_string(),
        "-W",
        "1",
        to,
    ]);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c.spawn().expect("ping")
}

fn ping_loss(child: Child) -> (u32, u32, String) {
    let o = child.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let num = |suffix: &str| {
        text.split(", ")
            .flat_map(|p| p.split('\n'))
            .find_map(|p| p.strip_suffix(suffix))
            .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u32>().ok())
            .unwrap_or(0)
    };
    (num(" packets transmitted"), num(" received"), text)
}

fn fdb_len(cl: &ClusterLab, node: &str) -> usize {
    cl.client(node).unwrap().fdb().unwrap().entries.len()
}

/// A pod of a Weft node floods random source MACs: the spoof guard of its plan drops
/// them before `normal` learns anything (counted by the pod's drop flow), and the
/// other pods' traffic goes on without loss.
#[test]
fn mac_flood_from_a_pod_is_stopped_by_the_spoof_guard() {
    let _s = serial();
    if !privileged("mac_flood_from_a_pod_is_stopped_by_the_spoof_guard") {
        return;
    }
    let c = parse(&describe("vxlan", "l2", 100, "m", 2, 2, false));
    let mut cl = build(&[&c], None);
    let to = ip4(&cl, "m21");
    assert!(
        cl.pod("m12")
            .ns
            .wait_for_ping(&to, Duration::from_secs(5))
            .is_some()
    );
    let ping = steady_ping(&cl.pod("m12").ns, &to, 4);
    let flood = mac_flood(&cl.pod("m11").ns, 30_000);
    let o = flood.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("flood: {}", String::from_utf8_lossy(&o.stdout).trim());
    let (sent, received, text) = ping_loss(ping);
    assert!(
        sent > 50 && received == sent,
        "ping during the flood: {text}"
    );
    let learned = fdb_len(&cl, "n1");
    assert!(learned < 16, "the flood was learned: {learned} entries");
    let mut ctl = cl.client("n1").unwrap();
    let drops = ctl
        .dump_flows(weft_flow::parse_filter("in_port=m11").unwrap())
        .unwrap()
        .flows;
    let dropped: u64 = drops
        .iter()
        .filter(|f| f.flow.priority == 100)
        .map(|f| f.packets)
        .sum();
    // The rest of the 30,000 never reached weftd: the TAP's queue in the kernel
    // overflowed (counted as the pod's tx drops).
    let link = cl.pod("m11").ns.ip("-s link show eth0").unwrap();
    eprintln!("spoof guard dropped {dropped} frames; the pod's eth0:\n{link}");
    assert!(dropped >= 20_000, "spoof-guard drops {dropped}: {drops:?}");
    // The metrics say which flow dropped them: the spoof guard (table 0, priority 100,
    // the tenant's cookie), not just `explicit_drop`.
    let m = cl.metrics("n1").unwrap();
    let guard = m
        .get(
            "weft_flow_drops_total",
            &[("table", "0"), ("priority", "100"), ("cookie", "0x64")],
        )
        .unwrap_or(0);
    assert!(
        guard >= dropped,
        "spoof guard in the metrics: {guard}\n{}",
        m.body
    );
    transfer(&mut cl, "m12", "m21", &to, 5201, 10 << 20);
    finish(cl);
}

/// A pod of the kernel VXLAN node floods random source MACs; the kernel floods them
/// over VXLAN to the Weft node, whose `normal` learns them from the tunnel: the MAC
/// table stays within its capacity (evicting), and ping between the Weft pod and a
/// kernel pod, and a verified transfer, keep working. (`weftd` does not export its
/// eviction count yet; that the table is full after more distinct sources than it
/// holds is what shows it evicted.)
#[test]
fn mac_flood_through_a_tunnel_keeps_the_mac_table_bounded() {
    let _s = serial();
    if !privileged("mac_flood_through_a_tunnel_keeps_the_mac_table_bounded") {
        return;
    }
    let c = parse(&describe("vxlan", "l2", 100, "f", 2, 2, false));
    let mut cl = build(&[&c], Some("n1"));
    let to = ip4(&cl, "f21");
    assert!(
        cl.pod("f12")
            .ns
            .wait_for_ping(&to, Duration::from_secs(5))
            .is_some()
    );
    assert!(
        cl.pod("f22")
            .ns
            .wait_for_ping(&ip4(&cl, "f21"), Duration::from_secs(5))
            .is_some()
    );
    let across = steady_ping(&cl.pod("f12").ns, &to, 5);
    let local = steady_ping(&cl.pod("f22").ns, &ip4(&cl, "f21"), 5);
    let flood = mac_flood(&cl.pod("f11").ns, 40_000);
    let o = flood.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    eprintln!("flood: {}", String::from_utf8_lossy(&o.stdout).trim());
    let learned = fdb_len(&cl, "n2");
    eprintln!("n2 MAC table after the flood: {learned} entries (capacity {MAC_CAPACITY})");
    assert!(
        learned <= MAC_CAPACITY,
        "{learned} > capacity {MAC_CAPACITY}"
    );
    // More distinct sources arrived than fit: the table filled up, so it evicted.
    assert!(learned > MAC_CAPACITY / 2, "flood not learned? {learned}");
    let fdb = cl.client("n2").unwrap().fdb().unwrap();
    assert_eq!(fdb.capacity as usize, MAC_CAPACITY);
    assert!(
        fdb.evictions >= 1000,
        "a full set evicts its stalest entry, counted: {} evictions",
        fdb.evictions
    );
    for (what, p) in [("across", across), ("local", local)] {
        let (sent, received, text) = ping_loss(p);
        assert!(
            sent > 50 && received == sent,
            "{what} ping during the flood: {text}"
        );
    }
    let m = cl.metrics("n2").unwrap();
    eprintln!(
        "n2 tun-n1 rx {} packets; f21/f22 tx {} / {}",
        m.port("weft_port_rx_packets_total", "tun-n1"),
        m.port("weft_port_tx_packets_total", "f21"),
        m.port("weft_port_tx_packets_total", "f22")
    );
    let f21 = ip4(&cl, "f21");
    transfer(&mut cl, "f12", "f21", &f21, 5301, 10 << 20);
    assert!(cl.weftd_running("n2"), "{}", cl.logs());
    finish(cl);
}

/// Pings `to` from `ns` with DF set and `size` bytes of payload: ping's output.
fn ping_df(ns: &Ns, to: &str, size: u32) -> (bool, String) {
    let size = size.to_string();
    let mut args = vec!["-n", "-M", "do", "-s", &size, "-c", "2", "-W", "1", to];
    if to.contains(':') {
        args.insert(0, "-6");
    }
    ping_output(ns, &args)
}

/// Path MTU with the flows `weftctl compile` makes for `mode`: pods a11 and a21 raise
/// their MTU to 1500 over the 1450 overlay. weftd must answer a too-big packet so that
/// the sender gets it: in l3 mode the flows have rewritten the frame's MACs (and TTL)
/// by the time the tunnel refuses it, and a reply built from that frame went to the
/// gateway's MAC, from the pod's own, and never reached the pod.
fn path_mtu(mode: &str) {
    let _s = serial();
    let test = format!("path_mtu_{mode}");
    if !privileged(&test) {
        return;
    }
    let c = parse(&describe("vxlan", mode, 100, "p", 2, 1, true));
    let mut cl = build(&[&c], None);
    for pod in ["p11", "p21"] {
        cl.pod(pod).ns.ip("link set eth0 mtu 1500").unwrap();
    }
    let p11 = cl.pod("p11").ns.clone();
    let (to4, to6) = (ip4(&cl, "p21"), ip6(&cl, "p21"));
    for to in [&to4, &to6] {
        assert!(
            p11.wait_for_ping(to, Duration::from_secs(5)).is_some(),
            "{test}: p11 cannot ping {to}\n{}",
            cl.logs()
        );
    }
    let too_big = |cl: &ClusterLab, node: &str| {
        cl.metrics(node)
            .unwrap()
            .get("weft_port_drops_total", &[("reason", "too_big")])
            .unwrap_or(0)
    };
    // TCP first, before either pod has learnt the path MTU (a pod that has advertises
    // the smaller MSS): p21's full-size segments are refused, its kernel lowers the
    // path MTU, and the transfer completes.
    let before = too_big(&cl, "n2");
    let to = ip4(&cl, "p11");
    transfer(&mut cl, "p21", "p11", &to, 5401, 10 << 20);
    assert!(too_big(&cl, "n2") > before, "{test}: p21's TCP hit the MTU");
    for (to, fits) in [(&to4, 1422), (&to6, 1402)] {
        let before = too_big(&cl, "n1");
        // 1500 bytes of IP: refused at the tunnel; the ICMP error reaches the pod, whose
        // kernel says so for the first request and refuses the second itself.
        let (ok, out) = ping_df(&p11, to, fits + 50);
        assert!(!ok, "{test}: 1500 bytes cannot cross: {out}");
        assert!(
            out.contains("1450"),
            "{test}: the pod got no too-big reply with the tunnel's MTU (ping {to}): {out}\n{}",
            cl.logs()
        );
        assert!(too_big(&cl, "n1") > before, "{test}: too_big counted");
        // The pod's kernel now knows the path MTU: it refuses to send 1500 bytes itself.
        let route = p11.ip(&format!("route get {to}")).unwrap();
        assert!(route.contains("mtu 1450"), "{test}: {route}");
        let (ok, out) = ping_df(&p11, to, fits);
        assert!(ok, "{test}: exactly 1450 bytes cross: {out}");
    }
    finish(cl);
}

#[test]
fn path_mtu_l3_too_big_reaches_the_pod() {
    path_mtu("l3");
}

#[test]
fn path_mtu_l2_too_big_reaches_the_pod() {
    path_mtu("l2");
}

/// A failing test leaves nothing behind either: the lab's drop stops the `weftd`s and
/// deletes the namespaces while the panic unwinds.
#[test]
fn a_failing_cluster_test_leaves_nothing_behind() {
    let _s = serial();
    if !privileged("a_failing_cluster_test_leaves_nothing_behind") {
        return;
    }
    let where_ = Mutex::new((String::new(), String::new()));
    let r = std::panic::catch_unwind(|| {
        let c = parse(&describe("geneve", "l3", 300, "z", 2, 1, false));
        let cl = build(&[&c], None);
        *where_.lock().unwrap() = (cl.prefix(), cl.dir().display().to_string());
        assert!(leftovers(&cl.prefix(), &cl.dir().display().to_string()).len() >= 4);
        panic!("a failing test");
    });
    assert!(r.is_err());
    let (prefix, dir) = where_.into_inner().unwrap();
    assert!(!prefix.is_empty());
    let left = leftovers(&prefix, &dir);
    assert!(left.is_empty(), "left behind after a panic: {left:#?}");
    let weftds = Command::new("pgrep").args(["-f", &dir]).output().unwrap();
    assert!(
        weftds.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&weftds.stdout)
    );
}

/// `weftctl show`, its `-o json` and the `show` call say per VXLAN port which underlay
/// carries it: sockets with the reason when the tunnel-GSO port is off, the tunnel-GSO
/// TAP when it is on (on a kernel that has it).
#[test]
fn weftctl_show_says_which_underlay_each_tunnel_port_uses() {
    let _s = serial();
    if !privileged("weftctl_show_says_which_underlay_each_tunnel_port_uses") {
        return;
    }
    let mut cases: Vec<(&[&str], String)> = vec![(
        &["--tunnel-gso=off"],
        "sockets (tunnel_gso off)".to_string(),
    )];
    match weft_datapath::port::underlay::probe() {
        // The port needs offloads: on, whatever the matrix says.
        Ok(()) => cases.push((
            &["--tunnel-gso=on", "--offloads=on"],
            "tunnel-GSO TAP wgso4789".to_string(),
        )),
        Err(why) => eprintln!("tunnel-GSO half skipped: this kernel has no tunnel-GSO TAP ({why})"),
    }
    let weftctl = netns_tests::node::binary("weftctl", "WEFTCTL");
    for (flags, want) in cases {
        let flag = flags[0];
        let c = parse(&describe("vxlan", "l3", 100, "u", 2, 1, false));
        let cl = build_with(&[&c], None, flags);
        let show = cl.client("n1").unwrap().show().unwrap();
        let tunnels: Vec<_> = show
            .ports
            .iter()
            .filter(|p| p.port_type == "vxlan")
            .collect();
        assert!(!tunnels.is_empty(), "{flag}: no vxlan port: {show:?}");
        for p in &tunnels {
            assert_eq!(p.underlay.as_deref(), Some(want.as_str()), "{flag}: {p:?}");
        }
        for p in show.ports.iter().filter(|p| p.port_type == "tap") {
            assert_eq!(p.underlay, None, "{flag}: {p:?}");
        }
        let sock = cl.node("n1").socket.clone().unwrap();
        let run = |args: &[&str]| {
            let o = Command::new(&weftctl)
                .arg("-s")
                .arg(&sock)
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "weftctl {args:?}: {o:?}");
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        let text = run(&["show"]);
        let line = text
            .lines()
            .find(|l| l.contains("type=vxlan"))
            .unwrap_or_else(|| panic!("{flag}: no vxlan line:\n{text}"));
        assert!(
            line.ends_with(&format!(" (underlay: {want})")),
            "{flag}: {line}"
        );
        let json: serde_json::Value = serde_json::from_str(&run(&["-o", "json", "show"])).unwrap();
        let vx = json["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["type"] == "vxlan")
            .unwrap_or_else(|| panic!("{flag}: no vxlan port in {json}"));
        assert_eq!(vx["underlay"], want.as_str(), "{flag}: {vx}");
        finish(cl);
    }
}

/// Removing a tunnel port that has the tunnel-GSO underlay port removes the underlay
/// device's tc filter, and not on a worker thread (the workers hand the port set they
/// leave to the reclaimer, whose drop closes the port).
#[test]
fn a_deleted_tunnel_gso_port_is_closed_off_the_workers() {
    let Some(_s) = begin_gso("a_deleted_tunnel_gso_port_is_closed_off_the_workers") else {
        return;
    };
    let c = parse(&describe("vxlan", "l3", 100, "d", 2, 1, false));
    // The port needs offloads: on, whatever the matrix says.
    let mut cl = build_with(
        &[&c],
        None,
        &["--tunnel-gso=on", "--offloads=on", "--workers=2"],
    );
    assert_tunnel_gso_in_use(&cl, "n1");
    let ns = cl.node("n1").ns.clone();
    let filters = || {
        ns.run(&[
            "sh",
            "-c",
            "for d in $(ls /sys/class/net); do tc filter show dev $d ingress; done",
        ])
        .unwrap()
    };
    // weftd sets the filters up over rtnetlink; tc, an independent decoder, reads
    // back what `tc filter add ... u32 match ip dst LOCAL/32 match ip protocol 17 0xff
    // match ip dport 4789 0xffff action mirred egress redirect dev wgso4789` and the
    // TAP's catch-all redirect back to the device would have made.
    let shown = filters();
    for want in [
        "match c6120001/ffffffff at 16",
        "match 00110000/00ff0000 at 8",
        "match 000012b5/0000ffff at 20",
        "mirred (Egress Redirect to device wgso4789) stolen",
        "match 00000000/00000000 at 0",
        "filter protocol ip pref 4789 u32",
        "filter protocol all pref 1 u32",
    ] {
        assert!(shown.contains(want), "no '{want}' in:\n{shown}");
    }
    // The underlay TAP's queue is long enough for a burst (no backpressure there).
    let link = ns.run(&["ip", "link", "show", "wgso4789"]).unwrap();
    let qlen = format!(
        "qlen {}",
        weft_datapath::port::underlay::UNDERLAY_TXQUEUELEN
    );
    assert!(link.contains(&qlen), "no '{qlen}' in:\n{link}");
    let mut ctl = cl.client("n1").unwrap();
    let tunnel = ctl
        .show()
        .unwrap()
        .ports
        .into_iter()
        .find(|p| p.port_type == "vxlan")
        .expect("a vxlan port");
    ctl.del_port(&tunnel.name).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let logs = cl.logs();
        if let Some(l) = logs
            .lines()
            .find(|l| l.contains("underlay tap's tc filter removed"))
        {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "filter not removed\n{logs}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // The reclaimer or the control thread (whichever lets go last), never a worker.
    assert!(
        line.contains("(on thread weft-") && !line.contains("(on thread weft-worker"),
        "closed on the wrong thread: {line}"
    );
    assert!(!filters().contains("mirred"), "{}", filters());
    assert!(cl.weftd_running("n1"), "{}", cl.logs());
    finish(cl);
}
