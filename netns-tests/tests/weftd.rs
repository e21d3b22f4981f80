//! `weftd` end to end: two nodes on a lab underlay, a pod on each, real traffic.
//!
//! Every test builds its own lab (namespaces with a per-run prefix, removed on drop,
//! also on failure) and starts the real `weftd` binary in each node namespace through
//! it. Traffic stays inside the lab: underlay `198.18.0.0/24`, pods `198.19.0.0/16`
//! (and IPv6 link-local addresses on the pods' own overlay segment).
//!
//! The tests take a shared lock so that their timings (restart, transfers) do not
//! depend on how many others run at the same time.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use netns_tests::lab::{Lab, Ns, privileged};
use netns_tests::node::{
    Underlay, Weftd, WeftdSpec, arp_responder_flow, ping_output, tap_port, tcp_transfer,
    tunnel_port, underlay_ip, wait_for_link, wait_for_ping_fast,
};

/// Verified TCP transfers move this much.
const TEN_MB: u64 = 10 * 1024 * 1024;
const READY: Duration = Duration::from_secs(10);
const TRANSFER: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());

/// How every test here starts: the shared lock, or `None` when `test` cannot run here
/// (it needs root; skipped with a message, a failure with `WEFT_REQUIRE_PRIVILEGED=1`).
fn begin(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    privileged(test).then_some(guard)
}

fn pod_mac(i: u8) -> String {
    format!("02:00:00:00:0{i}:02")
}

fn gw_mac(i: u8) -> String {
    format!("02:00:00:00:0{i}:01")
}

/// Two nodes, a pod on each, `weftd` on each: what every test starts from.
struct Pair {
    lab: Lab,
    ul: Underlay,
    pods: Vec<Ns>,
    weftd: Vec<Weftd>,
}

impl Pair {
    /// Builds the underlay and the pods, and starts `weftd` on node *i* with what
    /// `spec(i, pod_i)` gives; waits until both are up and the TAP devices exist.
    fn start(spec: impl Fn(u8, &Ns) -> WeftdSpec) -> Pair {
        let mut lab = Lab::new().unwrap();
        let ul = Underlay::new(&mut lab, 2).unwrap();
        let mut pods = Vec::new();
        let mut weftd = Vec::new();
        for i in 1..=2u8 {
            let pod = lab.netns(&format!("pod{i}")).unwrap();
            let s = spec(i, &pod);
            let node = ul.node(i).clone();
            weftd.push(Weftd::start(&mut lab, &node, &format!("weftd{i}"), &s).unwrap());
            pods.push(pod);
        }
        for (d, pod) in weftd.iter().zip(&pods) {
            d.wait_ready(&mut lab, READY).unwrap();
            wait_for_link(pod, "eth0", READY).unwrap();
        }
        Pair {
            lab,
            ul,
            pods,
            weftd,
        }
    }

    fn pod(&self, i: u8) -> &Ns {
        &self.pods[usize::from(i) - 1]
    }

    /// Waits (at most 5 s) until pod `from` gets a ping reply from `to`; fails with
    /// both daemons' logs.
    fn wait_ping(&self, from: u8, to: &str) {
        assert!(
            self.pod(from)
                .wait_for_ping(to, Duration::from_secs(5))
                .is_some(),
            "pod{from} cannot ping {to}\n{}",
            self.logs()
        );
    }

    /// Both daemons' logs, for failure messages.
    fn logs(&self) -> String {
        self.weftd.iter().map(|d| d.log(&self.lab)).collect()
    }

    fn transfer(&mut self, from: u8, to: u8, to_ip: &str, port: u16) {
        let (a, b) = (self.pod(from).clone(), self.pod(to).clone());
        match tcp_transfer(&mut self.lab, &a, &b, to_ip, port, TEN_MB, TRANSFER) {
            Ok(t) => {
                assert_eq!(t.bytes, TEN_MB, "{t:?}");
                eprintln!("pod{from} -> pod{to}: {}", t.receiver.trim());
            }
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }
}

/// A flat overlay segment (`198.19.0.0/24`) over a UDP tunnel of `kind`: node *i*'s pod
/// is `198.19.0.<i>`; everything from the pod goes to the other node with VNI 100, and
/// everything with VNI 100 goes to the pod.
fn l2_spec(kind: &str, pod_mtu: u16, extra: &str) -> impl Fn(u8, &Ns) -> WeftdSpec {
    move |i, pod| {
        let other = 3 - i;
        WeftdSpec {
            workers: 2,
            ports: tap_port("pod", pod, "eth0", &pod_mac(i), pod_mtu)
                + &tunnel_port("tun0", kind, underlay_ip(i), extra),
            flows: format!(
                "in_port=pod actions=set_field:{}->tun_dst,set_tunnel:100,output:tun0\n\
                 in_port=tun0,tun_id=100 actions=output:pod\n",
                underlay_ip(other)
            ),
        }
    }
}

fn l2_pair(kind: &str, pod_mtu: u16, extra: &str) -> Pair {
    let p = Pair::start(l2_spec(kind, pod_mtu, extra));
    for i in 1..=2u8 {
        p.pod(i)
            .ip(&format!("addr add 198.19.0.{i}/24 dev eth0"))
            .unwrap();
    }
    p
}

fn ping_and_transfer(kind: &str) {
    let Some(_s) = begin(kind) else { return };
    let mut p = l2_pair(kind, 1450, "");
    p.wait_ping(1, "198.19.0.2");
    assert!(
        p.pod(2).ping("198.19.0.1", 3, 1),
        "3 of 3 back\n{}",
        p.logs()
    );
    p.transfer(1, 2, "198.19.0.2", 5001);
    p.transfer(2, 1, "198.19.0.1", 5002);
    // The traffic really went through the tunnel port.
    for d in &p.weftd {
        let m = d.metrics().unwrap();
        let rx = m.port("weft_port_rx_packets_total", "tun0");
        assert!(rx > 5_000, "{rx} packets received on tun0 for 10 MB");
        let drops = m.get("weft_port_drops_total", &[("port", "tun0")]);
        assert_eq!(drops.unwrap_or(0), 0, "no drops at the tunnel\n{}", m.body);
    }
}

#[test]
fn vxlan_ping_and_verified_tcp_transfer() {
    ping_and_transfer("vxlan");
}

#[test]
fn geneve_ping_and_verified_tcp_transfer() {
    ping_and_transfer("geneve");
}

/// Whether the test matrix turned offloads off (`WEFT_TEST_OFFLOADS=off`).
fn offloads_on() -> bool {
    std::env::var("WEFT_TEST_OFFLOADS").map_or(true, |v| v != "off")
}

/// Userspace TSO on the sending node and coalescing on the receiving one must hand the
/// pods byte-identical TCP streams whatever the size: 1 byte, one byte less and one more
/// than the MSS, 64 KB, 1 MB; with TCP options (timestamps, the Linux default) and
/// without them (another MSS). Each stream is checked byte by byte on arrival. With
/// offloads on, the counters also show that the super-frame path was taken: the sender's
/// TAP handed over frames far larger than the MTU, and the receiver wrote fewer frames to
/// its pod than arrived from the tunnel.
#[test]
fn odd_sized_tcp_streams_are_byte_identical_through_segmentation_and_coalescing() {
    let Some(_s) =
        begin("odd_sized_tcp_streams_are_byte_identical_through_segmentation_and_coalescing")
    else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    // MTU 1450 less IPv4 and TCP headers: 1410; with timestamps (12 bytes): 1398.
    odd_sized_streams(&mut p, ["198.19.0.1", "198.19.0.2"], 1410, "tun0");
}

/// The same over Geneve (l2) and IP-in-IP (routed, raw sockets: one iovec message per
/// segment and no GRO on receive), the two other socket paths.
#[test]
fn odd_sized_tcp_streams_are_byte_identical_over_geneve_and_ipip() {
    let Some(_s) = begin("odd_sized_tcp_streams_are_byte_identical_over_geneve_and_ipip") else {
        return;
    };
    let mut p = l2_pair("geneve", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    odd_sized_streams(&mut p, ["198.19.0.1", "198.19.0.2"], 1410, "tun0");
    drop(p);
    let mut p = ipip_pair();
    p.wait_ping(1, "198.19.2.2");
    // MTU 1480 (the underlay's 1500 less the outer IPv4 header) less 40: 1440.
    odd_sized_streams(&mut p, ["198.19.1.2", "198.19.2.2"], 1440, "ipip0");
}

/// Streams of odd sizes both ways between the pods at `ips`, with timestamps on (MSS
/// `mss` - 12) and off (`mss`), each checked byte by byte on arrival; then no drops at
/// `tunnel` and, with offloads on, the super-frame and coalescing paths taken.
fn odd_sized_streams(p: &mut Pair, ips: [&str; 2], mss: u64, tunnel: &str) {
    // The pod's MTU plus its Ethernet header: the largest frame without TSO.
    let largest_possible_without_tso = mss + 40 + 14;
    let mut port = 6000;
    for (timestamps, mss) in [(true, mss - 12), (false, mss)] {
        for i in 1..=2u8 {
            p.pod(i)
                .run(&[
                    "sysctl",
                    "-qw",
                    &format!("net.ipv4.tcp_timestamps={}", u8::from(timestamps)),
                ])
                .unwrap();
        }
        for size in [1, mss - 1, mss + 1, 65536, 1 << 20] {
            for (from, to) in [(1u8, 2u8), (2, 1)] {
                port += 1;
                let (a, b) = (p.pod(from).clone(), p.pod(to).clone());
                let to_ip = ips[usize::from(to) - 1];
                match tcp_transfer(&mut p.lab, &a, &b, to_ip, port, size, TRANSFER) {
                    Ok(t) => assert_eq!(t.bytes, size, "{t:?}"),
                    Err(e) => panic!(
                        "{size} bytes pod{from} -> pod{to} over {tunnel}, timestamps {timestamps}: {e}
{}",
                        p.logs()
                    ),
                }
            }
        }
    }
    let m1 = p.weftd[0].metrics().unwrap();
    let m2 = p.weftd[1].metrics().unwrap();
    for m in [&m1, &m2] {
        let drops = m.get("weft_port_drops_total", &[("port", tunnel)]);
        assert_eq!(
            drops.unwrap_or(0),
            0,
            "no drops at the tunnel
{}",
            m.body
        );
    }
    if offloads_on() {
        let (pkts, bytes) = (
            m1.port("weft_port_rx_packets_total", "pod"),
            m1.port("weft_port_rx_bytes_total", "pod"),
        );
        assert!(
            bytes / pkts.max(1) > largest_possible_without_tso,
            "TAP reads of node1 averaged {} bytes ({bytes} / {pkts}): no super-frames",
            bytes / pkts.max(1)
        );
        let tun_rx = m2.port("weft_port_rx_packets_total", tunnel);
        let pod_tx = m2.port("weft_port_tx_packets_total", "pod");
        assert!(
            pod_tx * 2 < tun_rx,
            "node2 wrote {pod_tx} frames to its pod for {tun_rx} from {tunnel}: no coalescing"
        );
        eprintln!(
            "{tunnel}: node1 TAP reads averaged {} bytes; node2: {tun_rx} tunnel datagrams became {pod_tx} pod frames",
            bytes / pkts.max(1)
        );
    }
}

/// Routed pods over IP-in-IP: node *i*'s pod is `198.19.<i>.2/24` behind gateway
/// `198.19.<i>.1`, whose ARP the flows answer; packets from the tunnel (which carries
/// IP, so they arrive with zero MACs) get their MACs set by the flows.
fn ipip_pair() -> Pair {
    let p = Pair::start(|i, pod| {
        let other = 3 - i;
        let gw = format!("198.19.{i}.1");
        WeftdSpec {
            workers: 2,
            ports: tap_port("pod", pod, "eth0", &pod_mac(i), 1480)
                + &tunnel_port("ipip0", "ipip", underlay_ip(i), ""),
            flows: [
                arp_responder_flow(0, 200, "pod", &gw, &gw_mac(i)),
                format!(
                    "table=0,priority=100,in_port=pod,ip,nw_dst=198.19.{other}.0/24 \
                     actions=set_field:{}->tun_dst,output:ipip0",
                    underlay_ip(other)
                ),
                format!(
                    "table=0,priority=100,in_port=ipip0,ip,nw_dst=198.19.{i}.2 \
                     actions=mod_dl_src:{},mod_dl_dst:{},output:pod",
                    gw_mac(i),
                    pod_mac(i)
                ),
            ]
            .join("\n"),
        }
    });
    for i in 1..=2u8 {
        let pod = p.pod(i);
        pod.ip(&format!("addr add 198.19.{i}.2/24 dev eth0"))
            .unwrap();
        pod.ip(&format!("route add 198.19.0.0/16 via 198.19.{i}.1"))
            .unwrap();
    }
    p
}

#[test]
fn ipip_routed_pods_ping_and_verified_tcp_transfer() {
    let Some(_s) = begin("ipip_routed_pods_ping_and_verified_tcp_transfer") else {
        return;
    };
    let mut p = ipip_pair();
    p.wait_ping(1, "198.19.2.2");
    assert!(
        p.pod(2).ping("198.19.1.2", 3, 1),
        "3 of 3 back\n{}",
        p.logs()
    );
    // The gateway's MAC came from the flows' ARP responder.
    let neigh = p.pod(1).ip("neigh show 198.19.1.1").unwrap();
    assert!(neigh.contains(&gw_mac(1)), "{neigh}");
    p.transfer(1, 2, "198.19.2.2", 5001);
    p.transfer(2, 1, "198.19.1.2", 5002);
    for d in &p.weftd {
        let m = d.metrics().unwrap();
        assert!(m.port("weft_port_rx_packets_total", "ipip0") > 5_000);
        let drops = m.get("weft_port_drops_total", &[("port", "ipip0")]);
        assert_eq!(drops.unwrap_or(0), 0, "no drops at the tunnel\n{}", m.body);
    }
}

#[test]
fn restart_keeps_the_pod_and_traffic_resumes_within_a_second() {
    let Some(_s) = begin("restart_keeps_the_pod_and_traffic_resumes_within_a_second") else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    let pod2 = p.pod(2).clone();
    pod2.ip("route add 198.19.9.0/24 via 198.19.0.1").unwrap();
    p.wait_ping(1, "198.19.0.2");
    // Addresses and MTU, without the operational state (no carrier while weftd is down).
    let addr = |ns: &Ns| {
        let out = ns.ip("-4 -o addr show dev eth0").unwrap();
        let mtu = ns.ip("link show dev eth0").unwrap();
        let mtu = mtu
            .split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .map(str::to_string);
        (out, mtu)
    };
    let addr_before = addr(&pod2);
    let routes_before = pod2.ip("route show").unwrap();

    let mut d = p.weftd.remove(1);
    let status = d.stop(&mut p.lab);
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop: {status:?}\n{}",
        d.log(&p.lab)
    );
    // The TAP device outlives the daemon (persistent), with the pod's configuration.
    let addr_down = pod2.ip("-4 addr show dev eth0").unwrap();
    assert!(addr_down.contains("198.19.0.2/24"), "{addr_down}");

    let t0 = Instant::now();
    d.start_again(&mut p.lab).unwrap();
    let first = wait_for_ping_fast(p.pod(1), "198.19.0.2", Duration::from_secs(5));
    let took = t0.elapsed();
    let log = d.log(&p.lab);
    eprintln!("restart to first successful ping: {took:?} ({first:?})");
    assert!(first.is_some(), "no ping after the restart\n{log}");
    assert!(
        took < Duration::from_secs(1),
        "traffic took {took:?} to resume after the restart\n{log}"
    );
    assert!(log.contains("restored state"), "{log}");
    let addr_after = addr(&pod2);
    let routes_after = pod2.ip("route show").unwrap();
    assert_eq!(addr_before, addr_after, "the pod keeps its address");
    assert_eq!(routes_before, routes_after, "the pod keeps its routes");
    assert!(routes_after.contains("198.19.9.0/24 via 198.19.0.1"));
    d.wait_ready(&mut p.lab, READY).unwrap();
    assert!(p.pod(2).ping("198.19.0.1", 3, 1), "{log}");
    p.weftd.insert(1, d);
}

/// A first start (no saved state) while the peer's pod is already sending: the frames
/// that reach the node as its tunnel port opens wait in the socket until the
/// configuration's flows are in place; not one misses table 0. (weftd used to open the
/// ports, start forwarding and only then install the flows file, so the early frames
/// of a peer, such as a pod's IPv6 neighbour discovery, were dropped as table misses.)
#[test]
fn a_first_start_under_traffic_installs_the_flows_before_it_forwards() {
    let Some(_s) = begin("a_first_start_under_traffic_installs_the_flows_before_it_forwards")
    else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    let mut d = p.weftd.remove(1);
    assert!(
        d.stop(&mut p.lab).is_some(),
        "clean stop\n{}",
        d.log(&p.lab)
    );
    // Forget the saved state: the next start is a first start from the config file.
    let state = d.dir().join("state");
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    // A steady UDP stream from pod 1 to pod 2 (bounded: at most 4M datagrams).
    let script = format!(
        "for i in $(seq 40); do {} udp-send --to 198.19.0.2:9 --hex 00 --count 100000 >/dev/null || exit 1; done",
        netns_tests::node::nettool_binary().display()
    );
    let mut cmd = p.pod(1).command("sh");
    cmd.args(["-c", &script]);
    let sender = p.lab.spawn("udp-stream", cmd).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    d.start_again(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let still_sending = p.lab.is_running(sender);
    p.lab.stop(sender, Duration::from_secs(1));
    assert!(
        still_sending,
        "the stream ended before the check: {}",
        p.lab.log("udp-stream")
    );
    let m = d.metrics().unwrap();
    let rx = m.port("weft_port_rx_packets_total", "tun0");
    assert!(
        rx > 1_000,
        "{rx} frames received on tun0 while the stream ran"
    );
    assert_eq!(
        m.get("weft_drops_total", &[("reason", "table_miss")]),
        Some(0),
        "no table miss at a first start under traffic\n{}\n{}",
        m.body,
        d.log(&p.lab)
    );
    p.weftd.insert(1, d);
}

/// Waits until the pod's IPv6 link-local address has finished duplicate address
/// detection, and returns it.
fn link_local(pod: &Ns) -> String {
    let start = Instant::now();
    loop {
        let out = pod.ip("-6 addr show dev eth0 scope link").unwrap();
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .map(|a| a.split('/').next().unwrap_or(a).to_string());
        if let Some(a) = addr
            && !out.contains("tentative")
        {
            return a;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{out}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn path_mtu_too_big_from_weftd_and_tcp_still_works() {
    let Some(_s) = begin("path_mtu_too_big_from_weftd_and_tcp_still_works") else {
        return;
    };
    // The pods think they have 1500 bytes; the tunnel carries 1450 (1500 less 50).
    let mut p = l2_pair("vxlan", 1500, "");
    p.wait_ping(1, "198.19.0.2");
    // TCP first, before either pod has learnt the path MTU (a pod that has would
    // advertise the smaller MSS in its SYN): pod2's full-size segments get the ICMP,
    // its kernel lowers the path MTU, the transfer completes.
    let before = p.weftd[1].metrics().unwrap().port_drops("tun0", "too_big");
    p.transfer(2, 1, "198.19.0.1", 5001);
    let after = p.weftd[1].metrics().unwrap().port_drops("tun0", "too_big");
    assert!(
        after > before,
        "pod2's TCP hit the MTU ({before} -> {after})"
    );

    let (ok, out) = ping_output(
        p.pod(1),
        &[
            "-n",
            "-M",
            "do",
            "-s",
            "1472",
            "-c",
            "2",
            "-W",
            "1",
            "198.19.0.2",
        ],
    );
    assert!(!ok, "a 1500-byte packet cannot cross: {out}");
    assert!(
        out.contains("Frag needed") || out.contains("message too long"),
        "{out}"
    );
    assert!(
        out.contains("1450"),
        "the ICMP carries the tunnel's MTU: {out}"
    );
    let m = p.weftd[0].metrics().unwrap();
    assert!(
        m.port_drops("tun0", "too_big") >= 1,
        "too_big counted\n{}",
        m.body
    );
    // Exactly the tunnel's MTU fits.
    let (ok, out) = ping_output(
        p.pod(1),
        &[
            "-n",
            "-M",
            "do",
            "-s",
            "1422",
            "-c",
            "1",
            "-W",
            "1",
            "198.19.0.2",
        ],
    );
    assert!(ok, "1450 bytes cross: {out}");
    p.transfer(1, 2, "198.19.0.2", 5002);

    // IPv6 (link-local addresses on the overlay segment): ICMPv6 packet too big.
    let ll2 = link_local(p.pod(2));
    link_local(p.pod(1));
    let dst = format!("{ll2}%eth0");
    let (ok, out) = ping_output(p.pod(1), &["-6", "-n", "-c", "1", "-W", "2", &dst]);
    assert!(ok, "ipv6 ping: {out}\n{}", p.logs());
    let v6_before = p.weftd[0].metrics().unwrap().port_drops("tun0", "too_big");
    let (ok, out) = ping_output(
        p.pod(1),
        &[
            "-6", "-n", "-M", "do", "-s", "1452", "-c", "2", "-W", "1", &dst,
        ],
    );
    assert!(!ok, "a 1500-byte IPv6 packet cannot cross: {out}");
    assert!(
        out.contains("Packet too big") || out.contains("message too long"),
        "{out}"
    );
    assert!(out.contains("1450"), "{out}");
    let v6_after = p.weftd[0].metrics().unwrap().port_drops("tun0", "too_big");
    assert!(v6_after > v6_before);
    let (ok, out) = ping_output(
        p.pod(1),
        &[
            "-6", "-n", "-M", "do", "-s", "1402", "-c", "1", "-W", "1", &dst,
        ],
    );
    assert!(ok, "1450 bytes of IPv6 cross: {out}");
}

/// Sends `frame` `count` times out of `eth0` in `ns` through an AF_PACKET socket.
fn send_raw(ns: &Ns, frame: &[u8], count: u32) {
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0', 0))\n\
         f = bytes.fromhex('{}')\n\
         for i in range({count}):\n\
         \x20   s.send(f)\n",
        hex(frame)
    );
    let o = ns
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A pod's TAP port is an untagged access port: VLAN-tagged frames (802.1Q and
/// 802.1ad) from a pod are dropped and counted (`vlan_tagged`), as OVS drops them on an
/// access port, even where the flows would forward them (these forward everything).
/// They used to reach the other pod still tagged. Untagged traffic is not affected.
#[test]
fn vlan_tagged_frames_from_a_pod_are_dropped_and_counted() {
    let Some(_s) = begin("vlan_tagged_frames_from_a_pod_are_dropped_and_counted") else {
        return;
    };
    let p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    let mac = |s: String| -> Vec<u8> {
        s.split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    let delivered = || {
        p.weftd[1]
            .metrics()
            .unwrap()
            .port("weft_port_tx_packets_total", "pod")
    };
    const N: u32 = 50;
    for tpid in [[0x81, 0x00], [0x88, 0xa8]] {
        // To pod2, from pod1, tag VLAN 5, then a local-experimental EtherType.
        let mut f = mac(pod_mac(2));
        f.extend(mac(pod_mac(1)));
        f.extend([tpid[0], tpid[1], 0x00, 0x05, 0x88, 0xb5]);
        f.extend([0xab; 46]);
        let before = delivered();
        let drops = p.weftd[0]
            .metrics()
            .unwrap()
            .port_drops("pod", "vlan_tagged");
        send_raw(p.pod(1), &f, N);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = p.weftd[0]
                .metrics()
                .unwrap()
                .port_drops("pod", "vlan_tagged");
            if now >= drops + u64::from(N) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tpid:x?}: {} of {N} tagged frames counted as vlan_tagged (pod2 was sent {})\n{}",
                now - drops,
                delivered() - before,
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let passed = delivered() - before;
        assert!(
            passed < u64::from(N),
            "{tpid:x?}: the tagged frames reached pod2 ({passed} frames sent to it)"
        );
    }
    // Untagged traffic still crosses.
    assert!(p.pod(2).ping("198.19.0.1", 2, 1), "{}", p.logs());
}

/// The kernel's `tx_dropped` of `dev` in `ns` (`ip -s link`): what a pod's TAP dropped.
fn tx_dropped(ns: &Ns, dev: &str) -> u64 {
    let j = ns.ip(&format!("-j -s link show {dev}")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    v[0]["stats64"]["tx"]["dropped"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx dropped in {j}"))
}

/// Sends SIGCONT to a stopped process when dropped, also when the test fails.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// A TAP has no backpressure: what a pod sends while its queue toward weftd is full is
/// dropped by the pod's kernel. `txqueuelen=` sets that queue's length (read back with
/// `ip link`), and weftd counts those drops as its own, `tap_queue_full` on the pod's
/// port (the kernel's tx_dropped of the device, read over rtnetlink), in the metrics and
/// in `dump-ports`' rx_dropped. A length past the kernel's limit is refused by add-port
/// with one line and makes no port. Here weftd is stopped (SIGSTOP) while the pod sends
/// 1000 datagrams into a 64-frame queue, so at least 936 are dropped.
#[test]
fn a_full_tap_queue_is_counted_as_tap_queue_full_and_txqueuelen_is_applied() {
    let Some(_s) = begin("a_full_tap_queue_is_counted_as_tap_queue_full_and_txqueuelen_is_applied")
    else {
        return;
    };
    let base = l2_spec("vxlan", 1450, "");
    let mut p = Pair::start(move |i, pod| {
        let mut s = base(i, pod);
        // The pod's [[port]] table comes first: its last line is the tap's.
        s.ports = s
            .ports
            .replacen("mtu = 1450\n", "mtu = 1450\ntxqueuelen = 64\n", 1);
        s
    });
    for i in 1..=2u8 {
        p.pod(i)
            .ip(&format!("addr add 198.19.0.{i}/24 dev eth0"))
            .unwrap();
    }
    p.wait_ping(1, "198.19.0.2");
    let link = p.pod(1).ip("link show eth0").unwrap();
    assert!(link.contains("qlen 64"), "txqueuelen applied: {link}");

    let d = &p.weftd[0];
    let dropped = |m: &netns_tests::node::Metrics| m.port_drops("pod", "tap_queue_full");
    let kernel_before = tx_dropped(p.pod(1), "eth0");
    let counted_before = dropped(&d.metrics().unwrap());
    const N: u64 = 1000;
    {
        let pid = d.pid(&p.lab).expect("weftd runs");
        let stopped = std::process::Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        let _resume = Resume(pid);
        send_udp(p.pod(1), "198.19.0.2:9", &[0x55; 18], N as u32);
    }
    let kernel = tx_dropped(p.pod(1), "eth0") - kernel_before;
    assert!(
        kernel >= N - 64,
        "the pod's kernel dropped {kernel} of {N} sent into a queue of 64"
    );
    let m = d.metrics().unwrap();
    let counted = dropped(&m) - counted_before;
    assert_eq!(
        counted, kernel,
        "tap_queue_full counts what the pod's TAP dropped\n{}",
        m.body
    );
    let ports = weftctl_ok(d, &p.lab, &["-o", "json", "dump-ports"]);
    let v: serde_json::Value = serde_json::from_str(&ports).unwrap();
    let pod = v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["name"] == "pod")
        .unwrap_or_else(|| panic!("no port pod in {ports}"));
    assert!(
        pod["rx_dropped"].as_u64().unwrap_or(0) >= counted + counted_before,
        "dump-ports counts them as receive drops: {pod}"
    );
    // Traffic resumes.
    assert!(p.pod(1).ping("198.19.0.2", 2, 1), "{}", p.logs());

    // Past the kernel's limit: refused with one line naming it, and nothing is made.
    let extra = p.lab.netns("extra").unwrap();
    let netns = format!("netns={}", extra.name());
    let o = weftctl(
        d,
        &[
            "add-port",
            "x1",
            "type=tap",
            &netns,
            "ifname=eth0",
            "txqueuelen=600000",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("bad value '600000' for txqueuelen: expected a queue length from 1 to 524288"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(extra.ip("link show eth0").is_err(), "no device was made");
}

/// An Ethernet frame for the inner part of crafted tunnel packets.
fn inner_frame() -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 2, 2, 0x02, 0, 0, 0, 1, 2, 0x08, 0x00];
    f.extend_from_slice(&[0x45; 46]);
    f
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Sends `count` copies of `data` from `ns` to `to` (UDP).
fn send_udp(ns: &Ns, to: &str, data: &[u8], count: u32) {
    let tool = netns_tests::node::nettool_binary().display().to_string();
    ns.run(&[
        &tool,
        "udp-send",
        "--to",
        to,
        "--hex",
        &hex(data),
        "--count",
        &count.to_string(),
    ])
    .unwrap();
}

#[test]
fn malformed_and_forged_tunnel_packets_are_dropped_and_counted() {
    let Some(_s) = begin("malformed_and_forged_tunnel_packets_are_dropped_and_counted") else {
        return;
    };
    // Each node takes tunnel packets only from the other; a Geneve port sits beside the
    // VXLAN one that carries the traffic.
    let mut p = Pair::start(|i, pod| {
        let other = 3 - i;
        let allowed = format!("allowed_remotes = [\"{}/32\"]", underlay_ip(other));
        let mut s = l2_spec("vxlan", 1450, &allowed)(i, pod);
        s.ports += &tunnel_port("gnv0", "geneve", underlay_ip(i), &allowed);
        s
    });
    for i in 1..=2u8 {
        p.pod(i)
            .ip(&format!("addr add 198.19.0.{i}/24 dev eth0"))
            .unwrap();
    }
    let stranger = p.ul.host(&mut p.lab, "x", 9).unwrap();
    p.wait_ping(1, "198.19.0.2");

    const N: u32 = 20;
    let vx = format!("{}:4789", underlay_ip(2));
    let gnv = format!("{}:6081", underlay_ip(2));
    let frame = inner_frame();
    let mut bad_flags = vec![0x00, 0, 0, 0, 0, 0, 100, 0];
    bad_flags.extend_from_slice(&frame);
    let mut good_vxlan = vec![0x08, 0, 0, 0, 0, 0, 100, 0];
    good_vxlan.extend_from_slice(&frame);
    let mut bad_version = vec![0x40, 0, 0x65, 0x58, 0, 0, 100, 0];
    bad_version.extend_from_slice(&frame);
    // Two words of options (C flag set): class 0x0102, type 0x80 (critical), 4 bytes.
    let mut critical = vec![0x02, 0x40, 0x65, 0x58, 0, 0, 100, 0];
    critical.extend_from_slice(&[0x01, 0x02, 0x80, 0x01, 0xde, 0xad, 0xbe, 0xef]);
    critical.extend_from_slice(&frame);
    let mut random = vec![0u8; 200];
    let mut x: u32 = 0x1234_5678;
    for b in random.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }

    // Traffic flows while the junk arrives: a ping series and a verified transfer.
    let pinger = {
        let pod = p.pod(1).clone();
        std::thread::spawn(move || {
            ping_output(
                &pod,
                &[
                    "-n",
                    "-q",
                    "-c",
                    "40",
                    "-i",
                    "0.05",
                    "-W",
                    "1",
                    "198.19.0.2",
                ],
            )
        })
    };
    let junk = {
        let node1 = p.ul.node(1).clone();
        let stranger = stranger.clone();
        let (vx, gnv) = (vx.clone(), gnv.clone());
        let packets = [
            (node1.clone(), vx.clone(), vec![0x08, 0, 0]),
            (node1.clone(), vx.clone(), bad_flags),
            (node1.clone(), gnv.clone(), bad_version),
            (node1.clone(), gnv.clone(), critical),
            (stranger.clone(), vx.clone(), good_vxlan),
            (stranger, gnv.clone(), random.clone()),
            (node1.clone(), vx.clone(), random.clone()),
            (node1, gnv, random),
        ];
        std::thread::spawn(move || {
            for round in 0..4 {
                for (from, to, data) in &packets {
                    send_udp(from, to, data, N / 4);
                }
                std::thread::sleep(Duration::from_millis(100 + round));
            }
        })
    };
    p.transfer(1, 2, "198.19.0.2", 5001);
    junk.join().unwrap();
    let (ok, out) = pinger.join().unwrap();
    assert!(
        ok && out.contains(" 0% packet loss"),
        "ping during junk: {out}"
    );

    let mut d2 = p.weftd.remove(1);
    assert!(
        d2.is_running(&mut p.lab),
        "weftd survived\n{}",
        d2.log(&p.lab)
    );
    let m = d2.metrics().unwrap();
    for (port, reason) in [
        ("tun0", "decap_truncated"),
        ("tun0", "decap_bad_vxlan_flags"),
        ("tun0", "remote_not_allowed"),
        ("gnv0", "decap_bad_geneve_version"),
        ("gnv0", "decap_unknown_critical_option"),
        ("gnv0", "remote_not_allowed"),
    ] {
        let n = m.port_drops(port, reason);
        assert!(n >= u64::from(N), "{port} {reason}: {n} < {N}\n{}", m.body);
    }
    // The random bytes were dropped too, for whatever reason they looked like.
    assert_eq!(
        m.port_drops("tun0", "remote_not_allowed"),
        u64::from(N),
        "only the stranger's packets are refused by source"
    );
    let vx_drops = m
        .get("weft_port_drops_total", &[("port", "tun0")])
        .unwrap_or(0);
    assert!(vx_drops >= 4 * u64::from(N), "{}", m.body);
    // And the daemon still forwards, and stops cleanly.
    assert!(p.pod(2).ping("198.19.0.1", 2, 1));
    let status = d2.stop(&mut p.lab);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn metrics_are_prometheus_text_and_counters_move() {
    let Some(_s) = begin("metrics_are_prometheus_text_and_counters_move") else {
        return;
    };
    let p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    let before: Vec<_> = p.weftd.iter().map(|d| d.metrics().unwrap()).collect();
    assert!(p.pod(1).ping("198.19.0.2", 5, 1));
    let after: Vec<_> = p.weftd.iter().map(|d| d.metrics().unwrap()).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.status, 200);
        assert!(
            a.content_type
                .starts_with("application/openmetrics-text; version=1.0.0"),
            "{}",
            a.content_type
        );
        for family in [
            // OpenMetrics names a counter family without `_total`, its samples with.
            "# TYPE weft_port_rx_packets counter",
            "# TYPE weft_port_drops counter",
            "# TYPE weft_table_lookups counter",
            "# TYPE weft_table_flows gauge",
            "\n# EOF\n",
        ] {
            assert!(a.body.contains(family), "{family}\n{}", a.body);
        }
        assert!(
            a.get(
                "weft_port_rx_packets_total",
                &[("port", "pod"), ("type", "tap")]
            )
            .is_some(),
            "{}",
            a.body
        );
        for port in ["pod", "tun0"] {
            for c in ["weft_port_rx_packets_total", "weft_port_tx_packets_total"] {
                assert!(
                    a.port(c, port) >= b.port(c, port) + 5,
                    "{c} {port}: {} -> {}",
                    b.port(c, port),
                    a.port(c, port)
                );
            }
            assert!(
                a.port("weft_port_rx_bytes_total", port) > b.port("weft_port_rx_bytes_total", port)
            );
        }
        let lookups = |m: &netns_tests::node::Metrics| {
            m.get("weft_table_lookups_total", &[("table", "0")])
                .unwrap_or(0)
        };
        assert!(
            lookups(a) >= lookups(b) + 10,
            "{} -> {}",
            lookups(b),
            lookups(a)
        );
        assert_eq!(
            a.get("weft_table_flows", &[("table", "0")]),
            Some(2),
            "{}",
            a.body
        );
    }
    // Anything but /metrics is not found.
    let out = p.ul.node(1).run(&[
        &netns_tests::node::nettool_binary().display().to_string(),
        "http-get",
        "--to",
        netns_tests::node::METRICS_ADDR,
        "--path",
        "/nope",
    ]);
    let out = out.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 404") || out.starts_with("HTTP/1.0 404"),
        "{out}"
    );
}

/// iperf3, one TCP stream for 5 s, pod to pod over VXLAN. Run by hand:
/// `cargo test -p netns-tests --test weftd -- --ignored --nocapture iperf3`.
#[test]
#[ignore = "a measurement, not a check"]
fn iperf3_over_vxlan() {
    let Some(_s) = begin("iperf3_over_vxlan") else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    let mut server = p.pod(2).command("iperf3");
    server.args(["-s", "-1", "-B", "198.19.0.2"]);
    p.lab.spawn("iperf3-server", server).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = p
        .pod(1)
        .run(&["iperf3", "-c", "198.19.0.2", "-t", "5", "-f", "g"])
        .unwrap();
    eprintln!("{out}");
}

/// While the peer's `weftd` is down, its kernel answers IP-in-IP packets with ICMP
/// "protocol unreachable" (or, with the kernel's ipip module loaded, "port
/// unreachable"), which the sender's raw socket reports as an error on its next
/// send or receive. That stale error must not cost a packet once the peer is back.
#[test]
fn ipip_peer_restart_costs_no_packet_after_it_is_back() {
    let Some(_s) = begin("ipip_peer_restart_costs_no_packet_after_it_is_back") else {
        return;
    };
    let mut p = ipip_pair();
    p.wait_ping(1, "198.19.2.2");
    let mut d2 = p.weftd.remove(1);
    assert!(d2.stop(&mut p.lab).is_some_and(|s| s.success()));
    // Packets into a node without weftd: its kernel sends ICMP errors back to node 1.
    assert!(!p.pod(1).ping("198.19.2.2", 3, 1));
    d2.start_again(&mut p.lab).unwrap();
    d2.wait_ready(&mut p.lab, READY).unwrap();
    let (ok, out) = ping_output(
        p.pod(1),
        &["-n", "-c", "10", "-i", "0.05", "-W", "1", "198.19.2.2"],
    );
    let m = p.weftd[0].metrics().unwrap();
    assert!(ok && out.contains(" 0% packet loss"), "{out}\n{}", m.body);
    assert_eq!(m.port_drops("ipip0", "tx_error"), 0, "{}", m.body);
    p.weftd.insert(1, d2);
}

/// Runs `weftctl` against a `weftd`'s control socket.
fn weftctl(d: &Weftd, args: &[&str]) -> std::process::Output {
    std::process::Command::new(netns_tests::node::binary("weftctl", "WEFTCTL"))
        .arg("-s")
        .arg(d.dir().join("weftd.sock"))
        .args(args)
        .output()
        .expect("run weftctl")
}

/// `weftctl` that must succeed; its stdout.
fn weftctl_ok(d: &Weftd, lab: &netns_tests::lab::Lab, args: &[&str]) -> String {
    let o = weftctl(d, args);
    assert!(
        o.status.success(),
        "weftctl {args:?}: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log(lab)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `weft_port_up` of a port (`None`: no such series).
fn port_up(d: &Weftd, port: &str) -> Option<u64> {
    d.metrics().ok()?.get("weft_port_up", &[("port", port)])
}

/// Stops `weftd`, which must exit 0.
fn stop_cleanly(d: &mut Weftd, lab: &mut netns_tests::lab::Lab) {
    let status = d.stop(lab);
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop: {status:?}\n{}",
        d.log(lab)
    );
}

/// A pod whose namespace is deleted while `weftd` is down must not keep the node
/// down: `weftd` starts, forwards for the other pods, shows the port as down (show,
/// dump-ports, their JSON, the metrics, the log), brings it up once the namespace is
/// back, and `del-port` removes a port that is down.
#[test]
fn a_pod_namespace_gone_at_restart_leaves_its_port_down_and_the_node_forwarding() {
    let Some(_s) =
        begin("a_pod_namespace_gone_at_restart_leaves_its_port_down_and_the_node_forwarding")
    else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    // Two more pods on node 2: one comes back, one is deleted with del-port.
    let back = p.lab.netns("back").unwrap();
    let gone = p.lab.netns("gone").unwrap();
    for (name, ns) in [("c2", &back), ("c3", &gone)] {
        let netns = format!("netns={}", ns.name());
        weftctl_ok(
            &p.weftd[1],
            &p.lab,
            &["add-port", name, "type=tap", &netns, "ifname=eth0"],
        );
        wait_for_link(ns, "eth0", READY).unwrap();
    }
    let mut d = p.weftd.remove(1);
    stop_cleanly(&mut d, &mut p.lab);
    p.lab.delete_netns(&back).unwrap();
    p.lab.delete_netns(&gone).unwrap();

    d.start_again(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY)
        .expect("weftd starts although a pod's namespace is gone");
    assert!(
        p.pod(1)
            .wait_for_ping("198.19.0.2", Duration::from_secs(5))
            .is_some(),
        "the other pod forwards\n{}",
        d.log(&p.lab)
    );
    let log = d.log(&p.lab);
    assert!(
        log.contains("port 'c2' is down: network namespace"),
        "{log}"
    );
    let show = weftctl_ok(&d, &p.lab, &["show"]);
    let c2 = show
        .lines()
        .find(|l| l.contains("(c2):"))
        .unwrap_or_else(|| panic!("{show}"));
    assert!(
        c2.contains(" DOWN: ") && c2.contains("No such file or directory"),
        "{show}"
    );
    assert!(
        show.lines()
            .any(|l| l.contains("(pod):") && !l.contains("DOWN")),
        "{show}"
    );
    let json = weftctl_ok(&d, &p.lab, &["-o", "json", "show"]);
    assert!(json.contains("\"state\": \"down\""), "{json}");
    assert!(json.contains("\"state\": \"up\""), "{json}");
    let ports = weftctl_ok(&d, &p.lab, &["dump-ports"]);
    assert!(
        ports
            .lines()
            .any(|l| l.contains("(c3): DOWN: network namespace")),
        "{ports}"
    );
    let json = weftctl_ok(&d, &p.lab, &["-o", "json", "dump-ports"]);
    assert!(json.contains("\"state\": \"down\""), "{json}");
    assert_eq!(port_up(&d, "c2"), Some(0));
    assert_eq!(port_up(&d, "pod"), Some(1));

    // The namespace comes back: the port is retried and comes up.
    let back = p.lab.netns("back").unwrap();
    let t0 = Instant::now();
    while port_up(&d, "c2") != Some(1) {
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "c2 did not come up again\n{}",
            d.log(&p.lab)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for_link(&back, "eth0", READY).unwrap();
    let show = weftctl_ok(&d, &p.lab, &["show"]);
    assert!(
        show.lines()
            .any(|l| l.contains("(c2):") && !l.contains("DOWN")),
        "{show}"
    );
    // A port that is down can be deleted; it is gone from the saved state too.
    weftctl_ok(&d, &p.lab, &["del-port", "c3"]);
    assert!(!weftctl_ok(&d, &p.lab, &["show"]).contains("(c3)"));
    assert_eq!(port_up(&d, "c3"), None);
    d.restart(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY).unwrap();
    let show = weftctl_ok(&d, &p.lab, &["show"]);
    assert!(!show.contains("(c3)") && !show.contains("DOWN"), "{show}");
    p.weftd.insert(1, d);
}

/// Runs `ip ARGS` in the network namespace of file `ns` (e.g. `/proc/PID/ns/net`).
fn ip_in(ns: &str, args: &str) -> netns_tests::lab::Result<String> {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net={ns}")).arg("ip");
    c.args(args.split_whitespace());
    let out = c.output()?;
    if !out.status.success() {
        return Err(netns_tests::lab::LabError(format!(
            "nsenter --net={ns} ip {args}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A TAP port's `netns=` may be the path of a namespace file, as container runtimes
/// pass them: a namespace held only by a process (`unshare -n sleep`) is attached by
/// `/proc/PID/ns/net`, forwards, is shown with its path, and when the process is gone
/// at a restart the port is down with the reason, as for a name.
#[test]
fn a_pod_namespace_given_by_path_is_attached_and_down_when_gone_at_restart() {
    let Some(_s) = begin("a_pod_namespace_given_by_path_is_attached_and_down_when_gone_at_restart")
    else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    let mut holder = std::process::Command::new("unshare");
    holder.args(["-n", "sleep", "120"]);
    let holder = p.lab.spawn("holder", holder).unwrap();
    let pid = p.lab.pid(holder).unwrap();
    let path = format!("/proc/{pid}/ns/net");
    // unshare has entered its own namespace once it has become sleep.
    let t0 = Instant::now();
    while std::fs::read_link(&path).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no namespace for {pid}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let c2_mac = "02:00:00:00:02:03";
    let netns = format!("netns={path}");
    let d = &p.weftd[1];
    weftctl_ok(
        d,
        &p.lab,
        &[
            "add-port",
            "c2",
            "type=tap",
            &netns,
            "ifname=eth0",
            &format!("mac={c2_mac}"),
        ],
    );
    // c2 and node 2's pod talk locally, ahead of the tunnel flows.
    for f in [
        "priority=40000,in_port=c2 actions=output:pod".to_string(),
        format!("priority=40000,in_port=pod,dl_dst={c2_mac} actions=output:c2"),
        "priority=40000,in_port=pod,arp,arp_tpa=198.19.0.3 actions=output:c2".to_string(),
    ] {
        weftctl_ok(d, &p.lab, &["add-flow", &f]);
    }
    let link = ip_in(&path, "link show eth0").unwrap();
    assert!(
        link.contains(c2_mac),
        "the TAP is in the process's namespace: {link}"
    );
    assert!(
        p.ul.node(2).ip("link show eth0").is_err(),
        "and not in the node's"
    );
    ip_in(&path, "link set lo up").unwrap();
    ip_in(&path, "addr add 198.19.0.3/24 dev eth0").unwrap();
    let t0 = Instant::now();
    while !p.pod(2).ping("198.19.0.3", 1, 1) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "pod2 cannot ping c2 in {path}\n{}",
            d.log(&p.lab)
        );
    }
    let show = weftctl_ok(d, &p.lab, &["show"]);
    assert!(
        show.lines()
            .any(|l| l.contains("(c2):") && l.contains(&netns) && !l.contains("DOWN")),
        "{show}"
    );

    // The process and with it its namespace are gone while weftd is down.
    let mut d = p.weftd.remove(1);
    stop_cleanly(&mut d, &mut p.lab);
    p.lab.kill(holder);
    d.start_again(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY)
        .expect("weftd starts although a pod's namespace file is gone");
    assert!(
        p.pod(1)
            .wait_for_ping("198.19.0.2", Duration::from_secs(5))
            .is_some(),
        "the other pod forwards\n{}",
        d.log(&p.lab)
    );
    let show = weftctl_ok(&d, &p.lab, &["show"]);
    let c2 = show
        .lines()
        .find(|l| l.contains("(c2):"))
        .unwrap_or_else(|| panic!("{show}"));
    assert!(
        c2.contains(&netns)
            && c2.contains(&format!(" DOWN: network namespace {path}: "))
            && c2.contains("No such file or directory"),
        "{show}"
    );
    assert_eq!(port_up(&d, "c2"), Some(0));
    weftctl_ok(&d, &p.lab, &["del-port", "c2"]);
    p.weftd.insert(1, d);
}

/// A tmpfs mounted over a directory for a test; unmounted on drop (also on failure).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("weft-test")
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// With a full state directory `weftd` still starts and forwards (its state is read,
/// not written), and a change it cannot save is refused, not applied, and logged.
#[test]
fn a_full_state_directory_refuses_changes_and_the_node_still_starts() {
    let Some(_s) = begin("a_full_state_directory_refuses_changes_and_the_node_still_starts") else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    p.wait_ping(1, "198.19.0.2");
    let mut d = p.weftd.remove(1);
    stop_cleanly(&mut d, &mut p.lab);
    let dir = d.dir().join("state");
    // The snapshot and the journal, whichever there are.
    let saved: Vec<(std::ffi::OsString, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
        .collect();
    assert!(!saved.is_empty(), "state saved in {}", dir.display());
    let _full = Tmpfs::mount(&dir, "64k");
    for (name, bytes) in &saved {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    {
        use std::io::Write;
        let mut fill = std::fs::File::create(dir.join("fill")).unwrap();
        let chunk = [0u8; 4096];
        let mut filled = false;
        for _ in 0..64 {
            if fill.write_all(&chunk).is_err() {
                filled = true;
                break;
            }
        }
        assert!(filled, "the 64k tmpfs did not fill up");
    }
    assert!(
        std::fs::write(dir.join("probe"), b"x").is_err(),
        "the state directory is full"
    );

    d.start_again(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY)
        .expect("weftd starts with a full state directory");
    assert!(
        p.pod(1)
            .wait_for_ping("198.19.0.2", Duration::from_secs(5))
            .is_some(),
        "{}",
        d.log(&p.lab)
    );
    // More than a page of journal, so that it cannot fit in the slack of the
    // journal's last page (which a full file system still lets a write fill).
    let file = d.dir().join("big-change.flows");
    let flows: String = (0..100)
        .map(|i| {
            format!(
                "table=0,priority=300,in_port=pod,udp,tp_dst={} actions=drop\n",
                1000 + i
            )
        })
        .collect();
    std::fs::write(&file, flows).unwrap();
    let o = weftctl(&d, &["add-flows", &file.display().to_string()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "refused");
    assert!(
        err.contains("No space left on device") && err.contains("the change was not applied"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let flows = weftctl_ok(&d, &p.lab, &["dump-flows"]);
    assert!(!flows.contains("priority=300"), "not applied:\n{flows}");
    let log = d.log(&p.lab);
    assert!(
        log.contains("flow change refused: cannot save state to"),
        "logged\n{log}"
    );
    // A restart (still full) finds what was reported: no such flow.
    d.restart(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY).unwrap();
    let flows = weftctl_ok(&d, &p.lab, &["dump-flows"]);
    assert!(!flows.contains("priority=300"), "{flows}");
    assert_eq!(
        flows.lines().count(),
        2,
        "the node's own flows are there:\n{flows}"
    );
    stop_cleanly(&mut d, &mut p.lab);
    p.weftd.insert(1, d);
}

/// The flows of `dump-flows` without their counters, sorted.
fn flow_table(d: &Weftd, lab: &netns_tests::lab::Lab) -> Vec<String> {
    let mut v: Vec<String> = weftctl_ok(d, lab, &["dump-flows"])
        .lines()
        .filter(|l| l.contains("actions="))
        .map(|l| match l.find("idle_age=") {
            Some(at) => l[at..].split_once(", ").map_or(l, |(_, f)| f).to_string(),
            None => l.to_string(),
        })
        .collect();
    v.sort();
    v
}

/// The guarantee of the journal: a change answered `ok` is in the page cache before
/// the answer, so it survives `kill -9` of weftd right after; and a torn last journal
/// entry (a crash in the middle of a write) is ignored and logged at start.
#[test]
fn a_change_answered_ok_survives_kill_9_and_a_torn_journal_tail_is_ignored() {
    let Some(_s) = begin("a_change_answered_ok_survives_kill_9_and_a_torn_journal_tail_is_ignored")
    else {
        return;
    };
    let mut p = l2_pair("vxlan", 1450, "");
    let mut d = p.weftd.remove(1);
    for prio in [301, 302, 303] {
        weftctl_ok(
            &d,
            &p.lab,
            &[
                "add-flow",
                &format!("table=0,priority={prio},in_port=pod,udp,tp_dst={prio} actions=drop"),
            ],
        );
    }
    weftctl_ok(
        &d,
        &p.lab,
        &[
            "del-flows",
            "--strict",
            "table=0,priority=302,in_port=pod,udp,tp_dst=302",
        ],
    );
    let want = flow_table(&d, &p.lab);
    assert!(want.iter().any(|f| f.contains("priority=303")), "{want:?}");
    assert!(!want.iter().any(|f| f.contains("priority=302")), "{want:?}");
    // Right after the last ok: no clean stop, no fsync.
    weftctl_ok(
        &d,
        &p.lab,
        &[
            "add-flow",
            "table=0,priority=304,in_port=pod,udp,tp_dst=304 actions=drop",
        ],
    );
    assert!(d.kill(&mut p.lab).is_some(), "killed");
    let mut want = want;
    want.push("priority=304,udp,in_port=1,tp_dst=304 actions=drop".to_string());
    want.sort();
    d.start_again(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY).unwrap();
    let got = flow_table(&d, &p.lab);
    assert_eq!(got.len(), want.len(), "{got:#?}\n{}", d.log(&p.lab));
    assert!(got.iter().any(|f| f.contains("priority=304")), "{got:#?}");
    assert!(
        p.pod(1)
            .wait_for_ping("198.19.0.2", Duration::from_secs(5))
            .is_some(),
        "forwards after the crash\n{}",
        d.log(&p.lab)
    );
    // A torn last entry: killed again, half an entry at the journal's end.
    assert!(d.kill(&mut p.lab).is_some());
    let journal = d.dir().join("state").join("journal");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        f.write_all(b"#999 200 00000000deadbeef\n+ table=0,priority=305,ud")
            .unwrap();
    }
    d.start_again(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY).unwrap();
    assert_eq!(flow_table(&d, &p.lab), got, "{}", d.log(&p.lab));
    let log = d.log(&p.lab);
    assert!(log.contains("a torn last entry"), "logged\n{log}");
    // And the journal goes on after it (the torn tail was cut off).
    weftctl_ok(
        &d,
        &p.lab,
        &[
            "add-flow",
            "table=0,priority=306,in_port=pod,udp,tp_dst=306 actions=drop",
        ],
    );
    d.restart(&mut p.lab).unwrap();
    d.wait_ready(&mut p.lab, READY).unwrap();
    let last = flow_table(&d, &p.lab);
    assert_eq!(last.len(), got.len() + 1, "{last:#?}\n{}", d.log(&p.lab));
    stop_cleanly(&mut d, &mut p.lab);
    p.weftd.insert(1, d);
}
