//! `weft-agent` end to end (issue 15), several nodes: nodes that find each other through a real
//! 3-member etcd cluster.
//!
//! Each test builds its own lab: an underlay of node namespaces (198.18.0.N), an etcd
//! member on each of the first three, and on each node `weftd` (started empty) with
//! `weft-agent` beside it; pods are further namespaces attached through the agent's
//! socket, as the CNI plugin does it (an address of the node's subnet, the agent
//! creates the TAP, sets the address and the default route, installs the flows).
//! Traffic stays in the lab: underlay 198.18.0.0/24, pods 198.19.0.0/16.
//!
//! The tests take a shared lock: their timings (2 s to reach a new node, 0 loss while
//! etcd or the agent is down) should not depend on how many run at once. Leases are
//! short (3 s) so that a dead node goes quickly.

use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use netns_tests::agent::{AgentNode, AgentSpec, EtcdAccess};
use netns_tests::etcd::{Certs, EtcdCluster, available};
use netns_tests::lab::{Lab, Ns, ProcId, privileged};
use netns_tests::node::{Underlay, nettool_binary, tcp_transfer, underlay_ip};
use weft_agent_proto::{Attach, Attachment, StatusReply};

const PREFIX: &str = "/weft/v1/";
const READY: Duration = Duration::from_secs(20);
const CONFIG: &str =
    r#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"vxlan","vni":1,"port":4789}"#;

static SERIAL: Mutex<()> = Mutex::new(());

fn begin(test: &str) -> Option<MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    (privileged(test) && available(test)).then_some(guard)
}

/// A pod: its namespace and its address.
struct Pod {
    ns: Ns,
    /// What the agent was given as `netns` (a name, or a /proc path).
    netns: String,
    ip: Ipv4Addr,
    node: usize,
    container_id: String,
}

/// The lab, the underlay, etcd, the nodes and their pods.
struct World {
    lab: Lab,
    ul: Underlay,
    etcd: EtcdCluster,
    nodes: Vec<Option<AgentNode>>,
    pods: Vec<Pod>,
}

impl World {
    /// `hosts` underlay hosts (etcd on the first three), `config` written; no agents.
    fn new(hosts: u8, config: &str, tls: bool) -> World {
        let mut lab = Lab::new().unwrap();
        let ul = Underlay::new(&mut lab, hosts).unwrap();
        let members: Vec<(Ns, Ipv4Addr)> = (1..=3u8.min(hosts))
            .map(|i| (ul.node(i).clone(), underlay_ip(i)))
            .collect();
        let certs = tls.then(|| {
            let ips: Vec<Ipv4Addr> = members.iter().map(|m| m.1).collect();
            Certs::make(&lab.dir().join("certs"), &ips).unwrap()
        });
        let etcd = EtcdCluster::start(&mut lab, &members, certs).unwrap();
        etcd.wait_healthy(&mut lab, READY).unwrap();
        etcd.put(&mut lab, &format!("{PREFIX}config"), config)
            .unwrap();
        World {
            lab,
            ul,
            etcd,
            nodes: Vec::new(),
            pods: Vec::new(),
        }
    }

    fn spec(&self, i: u8) -> AgentSpec {
        AgentSpec::new(
            &format!("node{i}"),
            underlay_ip(i),
            EtcdAccess::of(&self.etcd),
        )
    }

    /// Starts weftd and the agent on host `i` (1-based); node index `i - 1`.
    fn start_node(&mut self, i: u8, spec: &AgentSpec) {
        let ns = self.ul.node(i).clone();
        let n = AgentNode::start(&mut self.lab, &ns, spec).unwrap();
        let k = usize::from(i) - 1;
        if self.nodes.len() <= k {
            self.nodes.resize_with(k + 1, || None);
        }
        self.nodes[k] = Some(n);
    }

    fn node(&self, k: usize) -> &AgentNode {
        self.nodes[k].as_ref().expect("a running node")
    }

    /// Waits until node `k`'s agent status satisfies `pred`; fails with the logs.
    fn wait_status(
        &mut self,
        k: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&StatusReply) -> bool,
    ) -> StatusReply {
        let World { lab, nodes, .. } = self;
        let n = nodes[k].as_ref().expect("a running node");
        n.agent
            .wait_status(lab, timeout, what, pred)
            .unwrap_or_else(|e| panic!("{e}\n{}", n.weftd.log(lab)))
    }

    fn wait_ready(&mut self, k: usize) -> StatusReply {
        let n = self.nodes[k].as_ref().unwrap();
        match n.agent.wait_ready(&mut self.lab, READY) {
            Ok(s) => s,
            Err(e) => panic!(
                "{e}\n{}\n{}",
                n.weftd.log(&self.lab),
                self.etcd.logs(&self.lab)
            ),
        }
    }

    /// One of node `k`'s agent metrics (a metric without labels), scraped from its
    /// loopback.
    fn agent_metric(&self, k: usize, name: &str) -> Option<u64> {
        let scrape = netns_tests::agent::scrape_metrics(&self.node(k).ns).unwrap();
        let m = netns_tests::node::Metrics::parse(&scrape).unwrap();
        assert_eq!(m.status, 200, "{scrape}");
        m.get(name, &[])
    }

    fn subnet(&self, k: usize) -> Ipv4Net {
        match self.node(k).agent.status().unwrap().subnet {
            Some(IpNet::V4(s)) => s,
            other => panic!("node {k} has no IPv4 subnet: {other:?}"),
        }
    }

    /// A pod on node `k` (host `.10 + n` of its subnet); `by_path`: its namespace is
    /// given to the agent as `/proc/PID/ns/net` of a process that holds it.
    fn add_pod(&mut self, k: usize, by_path: bool) -> usize {
        let n = self.pods.len();
        let ns = self.lab.netns(&format!("pod{n}")).unwrap();
        let netns = if by_path {
            let mut c = ns.command("sleep");
            c.arg("600");
            let holder: ProcId = self.lab.spawn(&format!("holder{n}"), c).unwrap();
            let path = format!("/proc/{}/ns/net", self.lab.pid(holder).unwrap());
            // `ip netns exec` enters the namespace after it started: until then the
            // path is the test's own namespace.
            use std::os::unix::fs::MetadataExt;
            let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
            let want = id(&format!("/var/run/netns/{}", ns.name()));
            let start = Instant::now();
            while id(&path) != want {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "{path} never entered"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            path
        } else {
            ns.name().to_string()
        };
        let subnet = self.subnet(k);
        let ip = Ipv4Addr::from(u32::from(subnet.network()) + 10 + n as u32);
        let container_id = format!("c{n:04}0123456789");
        let a = Attach {
            attachment: Attachment {
                container_id: container_id.clone(),
                ifname: "eth0".into(),
            },
            netns: netns.clone(),
            addresses: vec![IpNet::V4(Ipv4Net::new(ip, subnet.prefix_len()).unwrap())],
            gateway: None,
            pod_namespace: Some("default".into()),
            pod_name: Some(format!("pod{n}")),
        };
        if let Err(e) = self.node(k).agent.attach(a) {
            panic!("{e}\n{}", self.node(k).logs(&self.lab));
        }
        self.pods.push(Pod {
            ns,
            netns,
            ip,
            node: k,
            container_id,
        });
        n
    }

    fn logs(&self) -> String {
        let mut s: String = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.logs(&self.lab))
            .collect();
        s.push_str(&self.etcd.logs(&self.lab));
        s
    }

    /// Pod `a` pings pod (or address) `to` until a reply comes (at most `timeout`).
    fn reach(&self, from: &Ns, to: Ipv4Addr, timeout: Duration) -> Option<Duration> {
        netns_tests::node::wait_for_ping_fast(from, &to.to_string(), timeout)
    }

    fn flows(&self, k: usize) -> String {
        self.node(k)
            .dump_flows()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }
}

/// A ping that runs in the background: `count` requests every `interval`.
struct SteadyPing {
    id: ProcId,
    label: String,
}

impl SteadyPing {
    fn start(lab: &mut Lab, from: &Ns, to: Ipv4Addr, interval: f64, count: u32) -> SteadyPing {
        let label = format!("steady-{}-{to}", from.name());
        let mut c = from.command("ping");
        c.args(["-n", "-q", "-i", &format!("{interval}"), "-W", "1"]);
        c.args(["-c", &count.to_string(), &to.to_string()]);
        let id = lab.spawn(&label, c).unwrap();
        SteadyPing { id, label }
    }

    /// Waits for it to end (at most `timeout`); (transmitted, received).
    fn finish(self, lab: &mut Lab, timeout: Duration) -> (u32, u32) {
        let start = Instant::now();
        while lab.is_running(self.id) && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(50));
        }
        lab.stop(self.id, Duration::from_secs(1));
        let out = lab.log(&self.label);
        let line = out
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .unwrap_or_else(|| panic!("no ping summary: {out}"));
        let num = |w: &str| {
            line.split(", ")
                .find(|p| p.contains(w))
                .and_then(|p| p.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{line}"))
        };
        (num("transmitted"), num("received"))
    }
}

/// `udp-echo` in `to`, `udp-ping` from `from`: `count` datagrams, each checked.
fn udp_exchange(lab: &mut Lab, from: &Ns, to: &Ns, to_ip: Ipv4Addr, port: u16, count: u32) {
    let tool = nettool_binary().display().to_string();
    let listen = format!("{to_ip}:{port}");
    let label = format!("udp-echo-{}-{port}", to.name());
    let mut echo = to.command(&tool);
    echo.args([
        "udp-echo",
        "--listen",
        &listen,
        "--count",
        &count.to_string(),
    ]);
    echo.args(["--timeout", "20"]);
    let id = lab.spawn(&label, echo).unwrap();
    let start = Instant::now();
    while !lab.log(&label).contains("listening") {
        assert!(
            lab.is_running(id) && start.elapsed() < Duration::from_secs(5),
            "udp-echo did not start: {}",
            lab.log(&label)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = from
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
            "20",
        ])
        .unwrap_or_else(|e| panic!("udp {} -> {listen}: {e}", from.name()));
    let status = lab.stop(id, Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "udp-echo: {status:?} {}",
        lab.log(&label)
    );
    eprintln!("udp {} -> {listen}: {}", from.name(), out.trim());
}

/// The order the nodes start in: a permutation of `0..n` from the clock.
fn random_order(n: usize) -> Vec<usize> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    v
}

/// Whether node `k`'s flows send `subnet` anywhere (the peer's subnet is matched).
fn has_subnet(flows: &str, subnet: Ipv4Net) -> bool {
    flows.contains(&format!("nw_dst={subnet}"))
}

/// Waits until `pred(flows of node k)` holds (at most `timeout`).
fn wait_flows(w: &World, k: usize, timeout: Duration, what: &str, pred: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let f = w.flows(k);
        if pred(&f) {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "node{}: {what} not within {timeout:?}; flows:\n{f}\n{}",
            k + 1,
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Three nodes started in a random order get distinct subnets of the pod CIDR; their
/// pods reach each other (all pairs ping, a verified TCP transfer and UDP exchange per
/// pair of nodes) and each node reaches every pod (its gateway port). A fourth node
/// joins while a steady ping runs between two others: every node reaches its pod within
/// 2 s, and the steady ping loses nothing. The fourth leaves cleanly and is gone from
/// every other node's flows; the third is killed (`kill -9` of agent and weftd) and is
/// gone once its lease expires.
#[test]
fn nodes_find_each_other_join_leave_and_die() {
    let Some(_s) = begin("nodes_find_each_other_join_leave_and_die") else {
        return;
    };
    let mut w = World::new(4, CONFIG, false);
    let order = random_order(3);
    eprintln!("start order: {order:?}");
    for &k in &order {
        let spec = w.spec(k as u8 + 1);
        w.start_node(k as u8 + 1, &spec);
    }
    let mut subnets = Vec::new();
    for k in 0..3 {
        let s = w.wait_ready(k);
        eprintln!("node{}: {:?} {:?}", k + 1, s.subnet, s.gateway);
        subnets.push(w.subnet(k));
    }
    let cidr: Ipv4Net = "198.19.0.0/16".parse().unwrap();
    for (k, s) in subnets.iter().enumerate() {
        assert!(
            cidr.contains(s) && s.prefix_len() == 24,
            "node{}: {s}",
            k + 1
        );
        for t in &subnets[k + 1..] {
            assert_ne!(s, t, "two nodes share a subnet: {subnets:?}");
        }
    }
    // The subnets in etcd say the same.
    let held = w
        .etcd
        .get_prefix(&mut w.lab, &format!("{PREFIX}subnets/"))
        .unwrap();
    assert_eq!(held.len(), 3, "{held:?}");
    // Every node knows the other two as peers.
    for k in 0..3 {
        w.wait_status(k, READY, "2 peers", |s| s.peers.len() == 2);
    }
    // A pod per node; the second is given by /proc/PID/ns/net.
    for k in 0..3 {
        w.add_pod(k, k == 1);
    }
    // Each is recorded: in its node's status and in etcd, with the namespace given.
    for n in 0..3 {
        let (k, cid, netns) = (
            w.pods[n].node,
            w.pods[n].container_id.clone(),
            w.pods[n].netns.clone(),
        );
        let s = w.node(k).agent.status().unwrap();
        assert!(
            s.endpoints.iter().any(|e| e.attachment.container_id == cid),
            "node{}: {s:?}",
            k + 1
        );
        let key = format!("{PREFIX}endpoints/node{}/{cid}:eth0", k + 1);
        let v = w.etcd.get(&mut w.lab, &key).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(v.as_deref().unwrap_or_else(|| panic!("no {key}"))).unwrap();
        assert_eq!(v["netns"], netns.as_str(), "{v}");
    }
    for a in 0..3 {
        for b in 0..3 {
            if a == b {
                continue;
            }
            let (from, to) = (w.pods[a].ns.clone(), w.pods[b].ip);
            assert!(
                w.reach(&from, to, Duration::from_secs(5)).is_some(),
                "pod{a} (node{}) cannot reach pod{b} {to}\n{}",
                w.pods[a].node + 1,
                w.logs()
            );
        }
    }
    for (a, b) in [(0usize, 1usize), (1, 2), (2, 0)] {
        let (from, to, ip) = (w.pods[a].ns.clone(), w.pods[b].ns.clone(), w.pods[b].ip);
        let t = tcp_transfer(
            &mut w.lab,
            &from,
            &to,
            &ip.to_string(),
            5001,
            2 << 20,
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("tcp pod{a} -> pod{b}: {e}"));
        assert_eq!(t.bytes, 2 << 20);
        udp_exchange(&mut w.lab, &from, &to, ip, 5002, 50);
    }
    for k in 0..3 {
        for p in 0..3 {
            let (node, ip) = (w.node(k).ns.clone(), w.pods[p].ip);
            assert!(
                w.reach(&node, ip, Duration::from_secs(5)).is_some(),
                "node{} cannot reach pod{p} {ip}\n{}",
                k + 1,
                w.logs()
            );
        }
    }

    // A fourth node joins while pod0 pings pod1 and pod2 pings pod0 steadily (every
    // old node's traffic: node1 -> node2 -> node1, node3 -> node1 -> node3).
    let (p0, p1) = (w.pods[0].ns.clone(), w.pods[1].ip);
    let (p2, ip0) = (w.pods[2].ns.clone(), w.pods[0].ip);
    let steady = [
        SteadyPing::start(&mut w.lab, &p0, p1, 0.05, 160),
        SteadyPing::start(&mut w.lab, &p2, ip0, 0.05, 160),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let spec = w.spec(4);
    w.start_node(4, &spec);
    w.wait_ready(3);
    let p3 = w.add_pod(3, false);
    let ip3 = w.pods[p3].ip;
    let joined = Instant::now();
    for k in 0..3 {
        let node = w.node(k).ns.clone();
        let left = Duration::from_secs(2).saturating_sub(joined.elapsed());
        let took = w.reach(&node, ip3, left);
        assert!(
            took.is_some(),
            "node{} did not reach the new node's pod {ip3} within 2 s\n{}",
            k + 1,
            w.logs()
        );
    }
    for p in &steady {
        assert!(
            w.lab.is_running(p.id),
            "the steady pings (8 s) ended before the join was done: make them longer"
        );
    }
    for p in steady {
        let (tx, rx) = p.finish(&mut w.lab, Duration::from_secs(12));
        assert_eq!(
            tx,
            rx,
            "a steady ping lost packets while a node joined\n{}",
            w.logs()
        );
    }
    let subnet4 = w.subnet(3);

    // It leaves cleanly (agent stopped): gone from every other node's flows.
    let status = {
        let World { lab, nodes, .. } = &mut w;
        nodes[3].as_mut().unwrap().agent.stop(lab)
    };
    assert!(
        status.is_some_and(|s| s.success()),
        "clean stop: {status:?}"
    );
    // A clean stop revokes the lease: node4's node and subnet keys are gone within 1 s
    // of its exit (well inside the lease's 3 s TTL), and so is it from the flows.
    let stopped = Instant::now();
    let key = format!("{PREFIX}nodes/node4");
    let subnet_key = format!("{PREFIX}subnets/{}", subnet4.to_string().replace('/', "-"));
    loop {
        let node = w.etcd.get(&mut w.lab, &key).unwrap();
        let sub = w.etcd.get(&mut w.lab, &subnet_key).unwrap();
        if node.is_none() && sub.is_none() {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "node4's keys outlived its clean stop by 1 s (the lease was not revoked): {node:?} {sub:?}\n{}",
            w.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for k in 0..3 {
        wait_flows(&w, k, Duration::from_secs(2), "node4 gone", |f| {
            !has_subnet(f, subnet4)
        });
    }
    // The third is killed (agent and weftd): gone once its lease (3 s) expires.
    let subnet3 = subnets[2];
    {
        let World { lab, nodes, .. } = &mut w;
        let n = nodes[2].as_mut().unwrap();
        n.agent.kill(lab);
        n.weftd.kill(lab);
    }
    for k in 0..2 {
        wait_flows(&w, k, Duration::from_secs(10), "node3 gone", |f| {
            !has_subnet(f, subnet3)
        });
    }
    // The others still talk.
    let (p0, p1) = (w.pods[0].ns.clone(), w.pods[1].ip);
    assert!(
        w.reach(&p0, p1, Duration::from_secs(2)).is_some(),
        "{}",
        w.logs()
    );
}

/// Ten agents started at the same moment against one etcd get ten distinct subnets
/// (the subnet is taken with a create-if-absent transaction).
#[test]
fn ten_agents_at_once_get_ten_distinct_subnets() {
    let Some(_s) = begin("ten_agents_at_once_get_ten_distinct_subnets") else {
        return;
    };
    let mut w = World::new(10, CONFIG, false);
    // weftd first on every node, then the agents back to back.
    let mut weftds = Vec::new();
    for i in 1..=10u8 {
        let ns = w.ul.node(i).clone();
        let d = netns_tests::node::Weftd::start(
            &mut w.lab,
            &ns,
            &format!("weftd-node{i}"),
            &netns_tests::node::WeftdSpec {
                workers: 1,
                ports: String::new(),
                flows: String::new(),
            },
        )
        .unwrap();
        weftds.push(d);
    }
    for d in &weftds {
        d.wait_ready(&mut w.lab, READY).unwrap();
    }
    let mut agents = Vec::new();
    for (k, d) in weftds.iter().enumerate() {
        let spec = w.spec(k as u8 + 1);
        let ns = w.ul.node(k as u8 + 1).clone();
        let a = netns_tests::agent::Agent::start(
            &mut w.lab,
            &ns,
            &format!("agent-node{}", k + 1),
            &d.dir().join("weftd.sock"),
            &spec,
        )
        .unwrap();
        agents.push(a);
    }
    let mut subnets = Vec::new();
    for a in &agents {
        let s = a
            .wait_status(&mut w.lab, Duration::from_secs(30), "a subnet", |s| {
                s.subnet.is_some()
            })
            .unwrap();
        subnets.push(s.subnet.unwrap());
    }
    let mut distinct = subnets.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 10, "{subnets:?}");
    let held = w
        .etcd
        .get_prefix(&mut w.lab, &format!("{PREFIX}subnets/"))
        .unwrap();
    assert_eq!(held.len(), 10, "{held:?}");
    let mut owners: Vec<String> = held
        .iter()
        .map(|(_, v)| {
            let v: serde_json::Value = serde_json::from_str(v).unwrap();
            v["node"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    owners.sort();
    owners.dedup();
    assert_eq!(owners.len(), 10, "{held:?}");
}

/// Two nodes with a pod each, a steady ping between the pods.
fn two_nodes(tls: bool) -> World {
    let mut w = World::new(3, CONFIG, tls);
    for i in 1..=2u8 {
        let spec = w.spec(i);
        w.start_node(i, &spec);
    }
    for k in 0..2 {
        w.wait_ready(k);
        w.wait_status(k, READY, "1 peer", |s| s.peers.len() == 1);
        w.add_pod(k, false);
    }
    let (p0, p1) = (w.pods[0].ns.clone(), w.pods[1].ip);
    assert!(
        w.reach(&p0, p1, Duration::from_secs(5)).is_some(),
        "{}",
        w.logs()
    );
    w
}

/// A simulated node's record: `nodes/<name>` and `subnets/<cidr>` on a lease of `ttl`.
fn simulate_node(w: &mut World, name: &str, ip: Ipv4Addr, subnet: Ipv4Net, ttl: u64) {
    let lease = w.etcd.lease_grant(&mut w.lab, ttl).unwrap();
    let node = format!(
        r#"{{"public_ip":"{ip}","subnet":"{subnet}","gateway_mac":"0a:58:c6:13:fe:01","encap":"vxlan"}}"#
    );
    let key = format!(
        "{PREFIX}subnets/{}-{}",
        subnet.network(),
        subnet.prefix_len()
    );
    w.etcd
        .put_with_lease(
            &mut w.lab,
            &key,
            &format!(r#"{{"node":"{name}","public_ip":"{ip}"}}"#),
            &lease,
        )
        .unwrap();
    w.etcd
        .put_with_lease(&mut w.lab, &format!("{PREFIX}nodes/{name}"), &node, &lease)
        .unwrap();
}

/// A watch that etcd cancels because the agent fell behind a compaction is resumed with
/// a fresh list. The agent is stopped (SIGSTOP, well inside its lease) while etcd is
/// written more than the watch stream can hold (the HTTP/2 windows and etcd's
/// per-watch buffer), so etcd holds the watch back as a slow one; then the history is
/// compacted past it. When the agent runs again etcd cancels its watch with the
/// compacted revision; the agent ends the session, lists again, and programs a node
/// written after the watch fell behind, which no watch event carried.
#[test]
fn a_watch_behind_a_compaction_is_resumed_with_a_fresh_list() {
    let Some(_s) = begin("a_watch_behind_a_compaction_is_resumed_with_a_fresh_list") else {
        return;
    };
    let mut w = World::new(1, CONFIG, false);
    let mut spec = w.spec(1);
    spec.lease_ttl = 120;
    w.start_node(1, &spec);
    w.wait_ready(0);
    const SIGSTOP: i32 = 19;
    const SIGCONT: i32 = 18;
    w.node(0).agent.signal(&w.lab, SIGSTOP).unwrap();
    let stopped = Instant::now();
    // 260 revisions of 100 KB under nodes/ (not node records: the agent ignores
    // them), then a real node, then the compaction.
    let filler = format!("{PREFIX}nodes/filler");
    let big = "x".repeat(100_000);
    for _ in 0..260 {
        w.etcd.etcdctl(&mut w.lab, &["put", &filler, &big]).unwrap();
    }
    w.etcd.del(&mut w.lab, &filler, false).unwrap();
    let late: Ipv4Net = "198.19.251.0/24".parse().unwrap();
    simulate_node(&mut w, "late", Ipv4Addr::new(198, 18, 0, 201), late, 120);
    let rev = w.etcd.compact(&mut w.lab).unwrap();
    eprintln!(
        "wrote and compacted to revision {rev} in {:?} with the agent stopped",
        stopped.elapsed()
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(100),
        "the writes took most of the lease"
    );
    w.node(0).agent.signal(&w.lab, SIGCONT).unwrap();
    wait_flows(
        &w,
        0,
        Duration::from_secs(30),
        "the node written after the watch fell behind",
        |f| has_subnet(f, late),
    );
    let log = w.node(0).agent.log(&w.lab);
    assert!(
        log.contains("the watch was compacted"),
        "the session ended on the compaction:\n{log}"
    );
    let s = w.wait_status(0, READY, "ready after the resync", |s| {
        s.ready && s.etcd.reachable && s.peers.iter().any(|p| p.node == "late")
    });
    assert_eq!(s.peers.len(), 1, "{s:?}");
}

/// etcd: all members stopped for 30 s while a steady ping runs between pods on different
/// nodes: no packet is lost, the agents report etcd unreachable, and when etcd is back
/// they resync (a node that appears then is programmed). Then one member killed changes
/// nothing: no loss, a new node is still programmed, the agents call etcd reachable.
#[test]
fn etcd_outages_lose_no_packet_and_the_agents_resync() {
    let Some(_s) = begin("etcd_outages_lose_no_packet_and_the_agents_resync") else {
        return;
    };
    let mut w = two_nodes(false);
    let (p0, p1) = (w.pods[0].ns.clone(), w.pods[1].ip);
    // All stopped for 30 s during a steady ping.
    let steady = SteadyPing::start(&mut w.lab, &p0, p1, 0.1, 360);
    std::thread::sleep(Duration::from_secs(1));
    w.etcd.stop_all(&mut w.lab);
    let down = Instant::now();
    for k in 0..2 {
        let s = w.wait_status(k, Duration::from_secs(20), "etcd unreachable", |s| {
            !s.etcd.reachable
        });
        eprintln!("node{} while etcd is down: {:?}", k + 1, s.etcd);
        assert!(s.etcd.error.is_some(), "{s:?}");
        // The metrics say so too.
        assert_eq!(w.agent_metric(k, "weft_agent_etcd_up"), Some(0));
    }
    let flows_down = w.flows(0);
    std::thread::sleep(Duration::from_secs(30).saturating_sub(down.elapsed()));
    assert!(
        has_subnet(&flows_down, w.subnet(1)),
        "nothing is removed because of an outage: {flows_down}"
    );
    w.etcd.start_all(&mut w.lab).unwrap();
    w.etcd.wait_healthy(&mut w.lab, READY).unwrap();
    let (tx, rx) = steady.finish(&mut w.lab, Duration::from_secs(40));
    assert_eq!(tx, rx, "etcd down for 30 s: loss\n{}", w.logs());
    for k in 0..2 {
        w.wait_status(k, READY, "etcd reachable again", |s| {
            s.etcd.reachable && s.ready
        });
        assert_eq!(w.agent_metric(k, "weft_agent_etcd_up"), Some(1));
    }
    // Resynced: a node that appears now is programmed on both.
    let sim: Ipv4Net = "198.19.250.0/24".parse().unwrap();
    simulate_node(&mut w, "sim1", Ipv4Addr::new(198, 18, 0, 200), sim, 30);
    for k in 0..2 {
        wait_flows(
            &w,
            k,
            Duration::from_secs(5),
            "the new node after the outage",
            |f| has_subnet(f, sim),
        );
    }

    // One member killed.
    w.etcd.kill(&mut w.lab, 2);
    let steady = SteadyPing::start(&mut w.lab, &p0, p1, 0.1, 20);
    let (tx, rx) = steady.finish(&mut w.lab, Duration::from_secs(10));
    assert_eq!(tx, rx, "one member down: loss");
    // The others still serve: a node that appears now is programmed on both.
    let sim0: Ipv4Net = "198.19.249.0/24".parse().unwrap();
    simulate_node(&mut w, "sim0", Ipv4Addr::new(198, 18, 0, 199), sim0, 30);
    for k in 0..2 {
        wait_flows(
            &w,
            k,
            Duration::from_secs(5),
            "a new node with a member down",
            |f| has_subnet(f, sim0),
        );
    }
    // And the agents do not call a cluster with a quorum unreachable.
    for k in 0..2 {
        let s = w.node(k).agent.status().unwrap();
        assert!(s.ready && s.etcd.reachable, "node{}: {s:?}", k + 1);
    }
    w.etcd.start_member(&mut w.lab, 2).unwrap();
    w.etcd.wait_healthy(&mut w.lab, READY).unwrap();
}

/// The dump line of the flow to `subnet` and its n_packets and age.
fn flow_to(flows: &str, subnet: Ipv4Net) -> (u64, f64) {
    let line = flows
        .lines()
        .find(|l| l.contains(&format!("nw_dst={subnet}")))
        .unwrap_or_else(|| panic!("no flow to {subnet} in\n{flows}"));
    let field = |name: &str| {
        line.split(", ")
            .find_map(|f| f.strip_prefix(name))
            .map(|v| v.trim_end_matches('s').to_string())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (
        field("n_packets=").parse().unwrap(),
        field("duration=").parse().unwrap(),
    )
}

/// The agent killed with `kill -9` and restarted during a steady ping: no loss, and the
/// unchanged flows keep their counters (its first sync is a replace of its cookie). weftd
/// restarted: the agent notices and resyncs (a node that appeared while weftd was down
/// is programmed).
#[test]
fn agent_and_weftd_restarts_lose_nothing_and_resync() {
    let Some(_s) = begin("agent_and_weftd_restarts_lose_nothing_and_resync") else {
        return;
    };
    let mut w = two_nodes(false);
    let (p0, p1) = (w.pods[0].ns.clone(), w.pods[1].ip);
    let peer = w.subnet(1);
    let steady = SteadyPing::start(&mut w.lab, &p0, p1, 0.1, 60);
    std::thread::sleep(Duration::from_secs(1));
    let before = flow_to(&w.flows(0), peer);
    {
        let World { lab, nodes, .. } = &mut w;
        let n = nodes[0].as_mut().unwrap();
        n.agent.kill(lab);
        std::thread::sleep(Duration::from_millis(500));
        n.agent.start_again(lab).unwrap();
    }
    let s = w.wait_ready(0);
    assert_eq!(s.peers.len(), 1, "{s:?}");
    let (tx, rx) = steady.finish(&mut w.lab, Duration::from_secs(15));
    assert_eq!(tx, rx, "agent kill -9 + restart: loss\n{}", w.logs());
    let after = flow_to(&w.flows(0), peer);
    assert!(
        after.0 >= before.0 && after.1 >= before.1,
        "the flow to the peer was replaced: before {before:?}, after {after:?}"
    );
    assert_eq!(
        w.node(0).agent.status().unwrap().subnet,
        Some(IpNet::V4(w.subnet(0))),
        "the same subnet"
    );

    // weftd restarted while a node appears: the agent notices and resyncs.
    let sim: Ipv4Net = "198.19.251.0/24".parse().unwrap();
    {
        let World { lab, nodes, .. } = &mut w;
        let n = nodes[0].as_mut().unwrap();
        let st = n.weftd.stop(lab);
        assert!(st.is_some_and(|s| s.success()), "{st:?}");
    }
    simulate_node(&mut w, "sim2", Ipv4Addr::new(198, 18, 0, 201), sim, 30);
    std::thread::sleep(Duration::from_secs(1));
    {
        let World { lab, nodes, .. } = &mut w;
        let n = nodes[0].as_mut().unwrap();
        n.weftd.start_again(lab).unwrap();
        n.weftd.wait_ready(lab, READY).unwrap();
    }
    wait_flows(
        &w,
        0,
        Duration::from_secs(10),
        "the node that appeared while weftd was down",
        |f| has_subnet(f, sim),
    );
    let (p0, p1) = (w.pods[0].ns.clone(), w.pods[1].ip);
    assert!(
        w.reach(&p0, p1, Duration::from_secs(3)).is_some(),
        "{}",
        w.logs()
    );
}

/// A bad `config` value (unknown encapsulation, a CIDR that does not parse, a subnet
/// length that does not fit) is refused with a clear status and log line naming it; the
/// running network keeps working and its flows stay.
#[test]
fn a_bad_config_is_refused_and_the_network_keeps_working() {
    let Some(_s) = begin("a_bad_config_is_refused_and_the_network_keeps_working") else {
        return;
    };
    let mut w = two_nodes(false);
    let peer = w.subnet(1);
    for (bad, needle) in [
        (CONFIG.replace("\"vxlan\"", "\"vxlam\""), "vxlam"),
        (
            CONFIG.replace("198.19.0.0/16", "198.19.0.0/99"),
            "198.19.0.0/99",
        ),
        (
            CONFIG.replace("\"subnet_len\":24", "\"subnet_len\":8"),
            "subnet_len",
        ),
    ] {
        w.etcd
            .put(&mut w.lab, &format!("{PREFIX}config"), &bad)
            .unwrap();
        let s = w.wait_status(0, Duration::from_secs(10), "the bad config reported", |s| {
            format!("{s:?}").contains(needle)
        });
        eprintln!("bad config {needle}: {:?}", s.reason);
        let log = w.node(0).agent.log(&w.lab);
        assert!(
            log.lines()
                .any(|l| l.contains(needle) && l.contains("config")),
            "no log line names the bad value {needle}:\n{log}"
        );
        let p1 = w.pods[1].ip;
        assert!(w.pods[0].ns.ping(&p1.to_string(), 3, 1), "{}", w.logs());
        assert!(
            has_subnet(&w.flows(0), peer),
            "flows kept with a bad config"
        );
    }
    // A good config again: the status is clean.
    w.etcd
        .put(&mut w.lab, &format!("{PREFIX}config"), CONFIG)
        .unwrap();
    w.wait_status(0, Duration::from_secs(10), "a clean status", |s| {
        s.ready && !format!("{s:?}").contains("subnet_len 8")
    });
}

/// etcd over TLS (certificates made by the test): two nodes work; an agent that trusts
/// another CA is refused with a clear error and never ready.
#[test]
fn etcd_over_tls_works_and_a_wrong_ca_is_refused() {
    let Some(_s) = begin("etcd_over_tls_works_and_a_wrong_ca_is_refused") else {
        return;
    };
    let mut w = two_nodes(true);
    for e in EtcdAccess::of(&w.etcd).endpoints {
        assert!(e.starts_with("https://"), "{e}");
    }
    let certs = w.etcd.certs().unwrap().clone();
    let mut spec = w.spec(3);
    spec.etcd.ca = Some(certs.wrong_ca.clone());
    spec.etcd.cert = Some(certs.wrong_client_cert.clone());
    spec.etcd.key = Some(certs.wrong_client_key.clone());
    w.start_node(3, &spec);
    let s = w.wait_status(2, Duration::from_secs(15), "the TLS error", |s| {
        !s.etcd.reachable && s.etcd.error.is_some()
    });
    let e = s.etcd.error.clone().unwrap();
    eprintln!("wrong CA: {e}");
    assert!(
        e.to_lowercase().contains("certificate") || e.to_lowercase().contains("tls"),
        "the error says why: {e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert!(!s.ready, "{s:?}");
    let log = w.node(2).agent.log(&w.lab);
    assert!(
        log.to_lowercase().contains("certificate"),
        "the log says why:\n{log}"
    );
    // The nodes on the right CA do not see it.
    let nodes = w
        .etcd
        .get_prefix(&mut w.lab, &format!("{PREFIX}nodes/"))
        .unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
}
