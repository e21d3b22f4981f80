//! weft-agent on one node with a one-member etcd (issue 15's core): the agent waits for
//! the network config, takes a subnet, programs weftd (gateway and tunnel ports, the
//! gateway's address and route, its flows), attaches a pod that the node and the pod
//! reach each other through, follows a peer joining and leaving, survives its own
//! `kill -9` without touching unchanged flows, refuses a bad config while the network
//! keeps working, and detaches (twice). The 3-member etcd cluster and the multi-node
//! tests are netns-tests' agent harness.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use netns_tests::lab::{Lab, Ns, ProcId, REQUIRE_PRIVILEGED, privileged};
use netns_tests::node::{Underlay, Weftd, WeftdSpec, binary};
use weft_agent_proto as ap;
use weft_flow::FlowFilter;
use weft_proto::client::Client;

const CONFIG: &str = r#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"vxlan","vni":1}"#;

/// etcd's binary, or a skip (a failure under WEFT_REQUIRE_PRIVILEGED).
fn etcd_present(test: &str) -> bool {
    let ok = Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
            panic!("{test}: needs etcd (Debian's etcd-server), and {REQUIRE_PRIVILEGED} is set");
        }
        eprintln!("skipping {test}: needs etcd (Debian's etcd-server; scripts/test installs it)");
    }
    ok
}

fn start_etcd(lab: &mut Lab, node: &Ns, ip: Ipv4Addr) -> ProcId {
    let data = lab.dir().join("etcd");
    let mut cmd = node.command("etcd");
    cmd.args([
        "--name",
        "m1",
        "--data-dir",
        &data.display().to_string(),
        "--listen-client-urls",
        &format!("http://{ip}:2379"),
        "--advertise-client-urls",
        &format!("http://{ip}:2379"),
        "--listen-peer-urls",
        &format!("http://{ip}:2380"),
        "--initial-advertise-peer-urls",
        &format!("http://{ip}:2380"),
        "--initial-cluster",
        &format!("m1=http://{ip}:2380"),
    ]);
    lab.spawn("etcd", cmd).unwrap()
}

fn etcdctl(node: &Ns, ip: Ipv4Addr, args: &[&str]) -> String {
    let ep = format!("http://{ip}:2379");
    let mut all = vec!["etcdctl", "--endpoints", &ep];
    all.extend_from_slice(args);
    node.run(&all).unwrap()
}

struct Agent {
    node: Ns,
    args: Vec<String>,
    socket: PathBuf,
    proc: Option<ProcId>,
    starts: u32,
    label: String,
}

impl Agent {
    /// An agent for node `i` (underlay 198.18.0.<i>) of weftd `weftd`, against etcd on
    /// node 1; not started.
    fn new(lab: &Lab, node: &Ns, i: u8, wsock: &std::path::Path) -> Agent {
        let dir = lab.dir().join(format!("agent{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let args = [
            "--node-name".to_string(),
            format!("n{i}"),
            "--public-ip".into(),
            format!("198.18.0.{i}"),
            "--etcd-endpoints".into(),
            "http://198.18.0.1:2379".into(),
            "--lease-ttl".into(),
            "3".into(),
            "--weftd-socket".into(),
            wsock.display().to_string(),
            "--socket".into(),
            socket.display().to_string(),
            "--cni-conf-dir".into(),
            dir.join("net.d").display().to_string(),
        ]
        .to_vec();
        Agent {
            node: node.clone(),
            args,
            socket,
            proc: None,
            starts: 0,
            label: format!("agent{i}"),
        }
    }

    fn start(&mut self, lab: &mut Lab) {
        self.starts += 1;
        let mut cmd = self
            .node
            .command(&binary("weft-agent", "WEFT_AGENT").display().to_string());
        cmd.args(&self.args);
        cmd.env("RUST_LOG", "info");
        self.proc = Some(
            lab.spawn(&format!("{}.{}", self.label, self.starts), cmd)
                .unwrap(),
        );
    }

    fn log(&self, lab: &Lab) -> String {
        (1..=self.starts)
            .map(|i| lab.log(&format!("{}.{i}", self.label)))
            .collect()
    }

    fn status(&self) -> Option<ap::StatusReply> {
        ap::Client::connect(&self.socket, Duration::from_secs(2))
            .and_then(|mut c| c.call(&ap::Request::Status))
            .ok()
    }

    fn call<T: serde::de::DeserializeOwned>(&self, r: &ap::Request) -> Result<T, ap::ClientError> {
        ap::Client::connect(&self.socket, Duration::from_secs(10))?.call(r)
    }

    /// Waits until `f` holds for the status.
    fn wait(&self, lab: &Lab, what: &str, f: impl Fn(&ap::StatusReply) -> bool) -> ap::StatusReply {
        let start = Instant::now();
        loop {
            if let Some(s) = self.status()
                && f(&s)
            {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "agent: {what} not seen in 15 s; status {:?}\n{}",
                self.status(),
                self.log(lab)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn flows_text(sock: &std::path::Path) -> String {
    let mut c = Client::connect(sock).unwrap();
    c.dump_flows(FlowFilter::all())
        .unwrap()
        .flows
        .iter()
        .map(|f| format!("n_packets={} {}\n", f.packets, f.flow))
        .collect()
}

fn wait_flows(sock: &std::path::Path, what: &str, f: impl Fn(&str) -> bool) {
    let start = Instant::now();
    loop {
        let t = flows_text(sock);
        if f(&t) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{what} within 2 s:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agent_programs_weftd_attaches_a_pod_and_follows_etcd() {
    const T: &str = "agent_programs_weftd_attaches_a_pod_and_follows_etcd";
    if !privileged(T) || !etcd_present(T) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let ul = Underlay::new(&mut lab, 1).unwrap();
    let n1 = ul.node(1).clone();
    let ip = Ipv4Addr::new(198, 18, 0, 1);
    let etcd = start_etcd(&mut lab, &n1, ip);
    let mut weftd = Weftd::start(
        &mut lab,
        &n1,
        "weftd",
        &WeftdSpec {
            workers: 1,
            ports: String::new(),
            flows: String::new(),
        },
    )
    .unwrap();
    weftd.wait_ready(&mut lab, Duration::from_secs(10)).unwrap();
    let wsock = weftd.dir().join("weftd.sock");
    // An operator's flow with another cookie: the agent must leave it alone.
    Client::connect(&wsock)
        .unwrap()
        .bundle(weft_flow::Bundle::new(vec![
            weft_flow::parse_flow_mod(
                weft_flow::FlowModCommand::Add,
                "cookie=0x77,table=200,priority=5,ip actions=drop",
            )
            .unwrap(),
        ]))
        .unwrap();

    let mut agent = Agent::new(&lab, &n1, 1, &wsock);
    agent
        .args
        .extend(["--metrics".to_string(), "127.0.0.1:9102".to_string()]);
    let dir = lab.dir().join("agent1");
    agent.start(&mut lab);

    // No config yet: a clear status line, not ready.
    let s = agent.wait(&lab, "waiting for config", |s| {
        s.reason
            .as_deref()
            .is_some_and(|r| r.contains("waiting for the network config at /weft/v1/config"))
    });
    assert!(!s.ready);
    etcdctl(&n1, ip, &["put", "/weft/v1/config", CONFIG]);
    let s = agent.wait(&lab, "ready", |s| s.ready);
    let subnet = s.subnet.unwrap();
    let gw = s.gateway.unwrap();
    assert_eq!(s.mtu, Some(1450), "1500 of the underlay less VXLAN's 50");
    assert!(s.etcd.reachable);
    let ipnet::IpNet::V4(subnet4) = subnet else {
        panic!("{subnet}")
    };
    assert!(
        "198.19.0.0/16"
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(&subnet4)
    );
    let holder = etcdctl(
        &n1,
        ip,
        &[
            "get",
            &format!(
                "/weft/v1/subnets/{}-{}",
                subnet4.network(),
                subnet4.prefix_len()
            ),
            "--print-value-only",
        ],
    );
    assert!(holder.contains("\"node\":\"n1\""), "{holder}");
    assert!(
        dir.join("net.d/10-weft.conflist").is_file(),
        "the CNI configuration is written when ready"
    );

    let scrape = netns_tests::agent::scrape_metrics(&n1).unwrap();
    let m = netns_tests::node::Metrics::parse(&scrape).unwrap();
    assert_eq!(m.status, 200, "{scrape}");
    for (name, want) in [
        ("weft_agent_etcd_up", 1),
        ("weft_agent_ready", 1),
        ("weft_agent_peers", 0),
    ] {
        assert_eq!(m.get(name, &[]), Some(want), "{name}: {scrape}");
    }
    assert!(
        m.get("weft_agent_syncs_total", &[]).is_some_and(|v| v >= 1),
        "{scrape}"
    );

    // weftd: the gateway and tunnel ports; the host's gateway address and route.
    let ports: Vec<String> = Client::connect(&wsock)
        .unwrap()
        .ports()
        .unwrap()
        .ports
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(
        ports.contains(&"gw0".into()) && ports.contains(&"tun0".into()),
        "{ports:?}"
    );
    let addr = n1.ip("addr show weft-gw").unwrap();
    assert!(addr.contains(&format!("inet {gw}/24")), "{addr}");
    let routes = n1.ip("route").unwrap();
    assert!(routes.contains("198.19.0.0/16 dev weft-gw"), "{routes}");

    // Attach a pod; pod and node reach each other through the gateway.
    let pod = lab.netns("pod").unwrap();
    let std::net::IpAddr::V4(gw4) = gw else {
        panic!("{gw}")
    };
    let pod_ip = Ipv4Addr::from(u32::from(gw4) + 4);
    let attach = ap::Attach {
        attachment: ap::Attachment {
            container_id: "c0ffee00aa".into(),
            ifname: "eth0".into(),
        },
        netns: format!("/var/run/netns/{}", pod.name()),
        addresses: vec![format!("{pod_ip}/24").parse().unwrap()],
        gateway: Some(gw),
        pod_namespace: Some("default".into()),
        pod_name: Some("web".into()),
    };
    let r: ap::AttachReply = agent
        .call(&ap::Request::Attach(attach.clone()))
        .unwrap_or_else(|e| panic!("attach: {e}\n{}", agent.log(&lab)));
    assert_eq!(r.mtu, 1450);
    // `p-` and 12 hex digits of a hash of the container id and ifname.
    assert!(
        r.port.len() == 14
            && r.port.starts_with("p-")
            && r.port[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{}",
        r.port
    );
    let again = agent.call::<ap::AttachReply>(&ap::Request::Attach(attach.clone()));
    assert!(
        matches!(&again, Err(ap::ClientError::Agent(e)) if e.kind == ap::ErrorKind::Exists),
        "{again:?}"
    );
    let link = pod.ip("addr show eth0").unwrap();
    assert!(link.contains(&format!("inet {pod_ip}/24")), "{link}");
    // The agent's default queue toward weftd (`pod_txqueuelen`,
    // weft_agent::config::DEFAULT_POD_TXQUEUELEN), not the kernel's 1000.
    assert!(link.contains("qlen 10000"), "no 'qlen 10000' in {link}");
    assert!(
        pod.ip("route")
            .unwrap()
            .contains(&format!("default via {gw}"))
    );
    assert!(
        pod.wait_for_ping(&gw.to_string(), Duration::from_secs(5))
            .is_some(),
        "pod → node's gateway\n{}",
        flows_text(&wsock)
    );
    assert!(n1.ping(&pod_ip.to_string(), 2, 1), "node → pod");
    let _: ap::Empty = agent.call(&ap::Request::Check(attach.clone())).unwrap();
    let key = "/weft/v1/endpoints/n1/c0ffee00aa:eth0";
    let rec = etcdctl(&n1, ip, &["get", key, "--print-value-only"]);
    assert!(
        rec.contains(&pod_ip.to_string()) && rec.contains("\"pod_name\":\"web\""),
        "{rec}"
    );

    // `weft-agent status`, as text and as JSON.
    let status = |json: bool| {
        let mut c = n1.command(&binary("weft-agent", "WEFT_AGENT").display().to_string());
        c.args(["status", "--socket", &agent.socket.display().to_string()]);
        if json {
            c.args(["-o", "json"]);
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = status(false);
    for want in [
        "node:      n1".to_string(),
        "ready:     yes".to_string(),
        format!("subnet:    {subnet}"),
        "etcd:      reachable".to_string(),
        format!("c0ffee00aa:eth0 port {} {pod_ip}/24", r.port),
    ] {
        assert!(text.contains(&want), "{want} in:\n{text}");
    }
    let json: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(json["subnet"], subnet.to_string());
    assert_eq!(json["endpoints"][0]["pod_name"], "web");

    // A peer joins: its subnet goes to the tunnel with its address; it leaves: gone.
    let peer = r#"{"public_ip":"198.18.0.9","subnet":"198.19.250.0/24","gateway_mac":"0a:58:c6:13:fa:01","encap":"vxlan"}"#;
    etcdctl(&n1, ip, &["put", "/weft/v1/nodes/n9", peer]);
    wait_flows(&wsock, "the joining peer's route", |t| {
        t.contains("nw_dst=198.19.250.0/24") && t.contains("set_field:198.18.0.9->tun_dst")
    });
    etcdctl(&n1, ip, &["del", "/weft/v1/nodes/n9"]);
    wait_flows(&wsock, "the leaving peer's flows gone", |t| {
        !t.contains("198.19.250.0") && !t.contains("198.18.0.9")
    });

    // kill -9 and start again: the same subnet (the lease still lives), no flow
    // changed, counters kept; the operator's flow untouched.
    let before = flows_text(&wsock);
    let delivered = |t: &str| -> u64 {
        t.lines()
            .find(|l| l.contains(&format!("nw_dst={pod_ip} ")))
            .and_then(|l| l.strip_prefix("n_packets="))
            .and_then(|l| l.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no delivery flow for {pod_ip}:\n{t}"))
    };
    let n_before = delivered(&before);
    assert!(
        n_before > 0,
        "the pings matched the delivery flow:\n{before}"
    );
    lab.kill(agent.proc.take().unwrap());
    agent.start(&mut lab);
    let s = agent.wait(&lab, "ready again", |s| s.ready);
    assert_eq!(
        s.subnet,
        Some(subnet),
        "a restart within the lease keeps the subnet"
    );
    assert_eq!(s.endpoints.len(), 1);
    assert!(
        lab.log("agent1.2").contains("changes=0"),
        "the resync changed nothing:\n{}",
        lab.log("agent1.2")
    );
    let after = flows_text(&wsock);
    assert!(delivered(&after) >= n_before, "counters kept:\n{after}");
    assert!(
        after.contains("cookie=0x77"),
        "the operator's flow stays:\n{after}"
    );

    // A bad config is refused with a clear line; the network keeps working.
    etcdctl(
        &n1,
        ip,
        &["put", "/weft/v1/config", &CONFIG.replace("vxlan", "gre")],
    );
    let s = agent.wait(&lab, "the bad config refused", |s| {
        s.reason
            .as_deref()
            .is_some_and(|r| r.contains("unknown encap 'gre'"))
    });
    assert!(s.ready, "still running with the previous config: {s:?}");
    assert!(
        agent
            .log(&lab)
            .contains("refused: config: unknown encap 'gre'")
    );
    assert!(
        n1.ping(&pod_ip.to_string(), 1, 1),
        "node → pod, after the bad config"
    );
    etcdctl(&n1, ip, &["put", "/weft/v1/config", CONFIG]);
    agent.wait(&lab, "the good config back, no reason left", |s| {
        s.ready && s.reason.is_none()
    });

    // weftd restarted: the agent notices the lost connection and syncs again.
    let syncs = agent.log(&lab).matches("synced weftd").count();
    weftd.restart(&mut lab).unwrap();
    weftd.wait_ready(&mut lab, Duration::from_secs(10)).unwrap();
    let start = Instant::now();
    while agent.log(&lab).matches("synced weftd").count() == syncs {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no resync after weftd's restart:\n{}",
            agent.log(&lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.log(&lab).contains("lost weftd's control connection"));
    agent.wait(&lab, "ready after weftd's restart", |s| s.ready);
    assert!(
        n1.wait_for_ping(&pod_ip.to_string(), Duration::from_secs(5))
            .is_some(),
        "node → pod after weftd's restart"
    );

    // etcd unreachable for longer than the lease: forwarding goes on, the status says
    // so; when it is back the agent registers again (same subnet) and records its
    // endpoint again on the new lease.
    const SIGSTOP: i32 = 19;
    const SIGCONT: i32 = 18;
    lab.signal(etcd, SIGSTOP).unwrap();
    let s = agent.wait(&lab, "etcd unreachable", |s| !s.etcd.reachable);
    assert!(s.etcd.error.is_some(), "{s:?}");
    assert!(
        n1.ping(&pod_ip.to_string(), 2, 1),
        "node → pod while etcd is away"
    );
    std::thread::sleep(Duration::from_secs(3));
    lab.signal(etcd, SIGCONT).unwrap();
    let s = agent.wait(&lab, "etcd back", |s| {
        s.etcd.reachable && s.ready && s.reason.is_none()
    });
    assert_eq!(s.subnet, Some(subnet));
    let start = Instant::now();
    while etcdctl(&n1, ip, &["get", key, "--print-value-only"])
        .trim()
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the endpoint was not recorded again:\n{}",
            agent.log(&lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        n1.ping(&pod_ip.to_string(), 1, 1),
        "node → pod after the outage"
    );

    // Detach: port, device, flows and record gone; a second detach succeeds too.
    let detach = ap::Request::Detach(ap::Detach {
        attachment: attach.attachment.clone(),
        netns: None,
    });
    let _: ap::Empty = agent.call(&detach).unwrap();
    assert!(
        pod.ip("link show eth0").is_err(),
        "the pod's interface is gone"
    );
    assert_eq!(
        etcdctl(&n1, ip, &["get", key, "--print-value-only"]).trim(),
        ""
    );
    assert!(!flows_text(&wsock).contains(&pod_ip.to_string()));
    let _: ap::Empty = agent.call(&detach).unwrap();
    let missing = agent.call::<ap::Empty>(&ap::Request::Check(attach));
    assert!(
        matches!(&missing, Err(ap::ClientError::Agent(e)) if e.kind == ap::ErrorKind::Missing),
        "{missing:?}"
    );
}

fn start_weftd(lab: &mut Lab, node: &Ns, label: &str) -> Weftd {
    let w = Weftd::start(
        lab,
        node,
        label,
        &WeftdSpec {
            workers: 1,
            ports: String::new(),
            flows: String::new(),
        },
    )
    .unwrap();
    w.wait_ready(lab, Duration::from_secs(10)).unwrap();
    w
}

/// A network namespace held only by a process (as a container runtime's), known by
/// its `/proc/PID/ns/net`; the process is killed when this is dropped.
struct HeldNetns(std::process::Child);

impl HeldNetns {
    fn new() -> HeldNetns {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "120"])
            .spawn()
            .unwrap();
        let h = HeldNetns(child);
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let start = Instant::now();
        while std::fs::read_link(h.path()).ok().is_none_or(|l| l == ours) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "unshare did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        h
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }

    fn ping(&self, dst: &str) -> bool {
        Command::new("nsenter")
            .args([
                &format!("--net={}", self.path()),
                "ping",
                "-c",
                "2",
                "-W",
                "1",
                dst,
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for HeldNetns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn attach_pod(lab: &mut Lab, agent: &Agent, short: &str, s: &ap::StatusReply) -> (Ns, Ipv4Addr) {
    let pod = lab.netns(short).unwrap();
    let ip = attach_at(
        lab,
        agent,
        short,
        &format!("/var/run/netns/{}", pod.name()),
        s,
    );
    (pod, ip)
}

fn attach_at(lab: &Lab, agent: &Agent, short: &str, netns: &str, s: &ap::StatusReply) -> Ipv4Addr {
    let Some(std::net::IpAddr::V4(gw)) = s.gateway else {
        panic!("{s:?}")
    };
    let ip = Ipv4Addr::from(u32::from(gw) + 1 + s.endpoints.len() as u32);
    let a = ap::Attach {
        attachment: ap::Attachment {
            container_id: format!("{short}-0123456789"),
            ifname: "eth0".into(),
        },
        netns: netns.to_string(),
        addresses: vec![format!("{ip}/24").parse().unwrap()],
        gateway: None,
        pod_namespace: None,
        pod_name: None,
    };
    agent
        .call::<ap::AttachReply>(&ap::Request::Attach(a))
        .unwrap_or_else(|e| panic!("attach {short}: {e}\n{}", agent.log(lab)));
    ip
}

#[test]
fn two_agents_take_distinct_subnets_and_connect_their_pods_and_nodes() {
    const T: &str = "two_agents_take_distinct_subnets_and_connect_their_pods_and_nodes";
    if !privileged(T) || !etcd_present(T) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let ul = Underlay::new(&mut lab, 2).unwrap();
    let (n1, n2) = (ul.node(1).clone(), ul.node(2).clone());
    let ip = Ipv4Addr::new(198, 18, 0, 1);
    start_etcd(&mut lab, &n1, ip);
    let w1 = start_weftd(&mut lab, &n1, "weftd1");
    let w2 = start_weftd(&mut lab, &n2, "weftd2");
    let s1 = w1.dir().join("weftd.sock");
    let s2 = w2.dir().join("weftd.sock");
    let mut a1 = Agent::new(&lab, &n1, 1, &s1);
    let mut a2 = Agent::new(&lab, &n2, 2, &s2);
    a2.start(&mut lab);
    a1.start(&mut lab);
    // etcd may still be starting: the agents retry until it answers.
    let start = Instant::now();
    while !n1
        .command("etcdctl")
        .args([
            "--endpoints",
            "http://198.18.0.1:2379",
            "put",
            "/weft/v1/config",
            CONFIG,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "etcd did not start:\n{}",
            lab.log("etcd")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st1 = a1.wait(&lab, "n1 ready with its peer", |s| {
        s.ready && s.peers.len() == 1
    });
    let st2 = a2.wait(&lab, "n2 ready with its peer", |s| {
        s.ready && s.peers.len() == 1
    });
    assert_ne!(st1.subnet, st2.subnet, "distinct subnets");
    assert_eq!(st1.peers[0].node, "n2");
    assert_eq!(st1.peers[0].subnet, st2.subnet.unwrap());

    let (p1, ip1) = attach_pod(&mut lab, &a1, "pa", &st1);
    let (p2, ip2) = attach_pod(&mut lab, &a2, "pb", &st2);
    assert!(
        p1.wait_for_ping(&ip2.to_string(), Duration::from_secs(5))
            .is_some(),
        "pod on n1 → pod on n2\n{}",
        flows_text(&s1)
    );
    assert!(p2.ping(&ip1.to_string(), 2, 1), "pod on n2 → pod on n1");
    assert!(n1.ping(&ip2.to_string(), 2, 1), "node n1 → pod on n2");
    assert!(
        p2.ping(&st1.gateway.unwrap().to_string(), 2, 1),
        "pod on n2 → node n1's gateway address"
    );
    // A pod whose namespace is a container's /proc/PID/ns/net, as runtimes pass it.
    let held = HeldNetns::new();
    let st2 = a2.status().unwrap();
    let ip3 = attach_at(&lab, &a2, "pc", &held.path(), &st2);
    assert!(
        held.ping(&ip1.to_string()),
        "the /proc/PID/ns/net pod on n2 → pod on n1"
    );
    assert!(
        p1.ping(&ip3.to_string(), 2, 1),
        "pod on n1 → the /proc/PID/ns/net pod"
    );

    // n2's agent killed: its lease (3 s) expires and n2 leaves n1's flows.
    lab.kill(a2.proc.take().unwrap());
    let sub2 = st2.subnet.unwrap().to_string();
    let start = Instant::now();
    while flows_text(&s1).contains(&sub2) {
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "n2's subnet still in n1's flows after its lease:\n{}",
            flows_text(&s1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a1.wait(&lab, "n1 without its peer", |s| s.peers.is_empty());
}

#[test]
fn ten_agents_started_at_once_take_ten_distinct_subnets() {
    const T: &str = "ten_agents_started_at_once_take_ten_distinct_subnets";
    if !privileged(T) || !etcd_present(T) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let ul = Underlay::new(&mut lab, 1).unwrap();
    let n1 = ul.node(1).clone();
    let ip = Ipv4Addr::new(198, 18, 0, 1);
    start_etcd(&mut lab, &n1, ip);
    let start = Instant::now();
    while !n1
        .command("etcdctl")
        .args([
            "--endpoints",
            "http://198.18.0.1:2379",
            "put",
            "/weft/v1/config",
            CONFIG,
        ])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "etcd did not start:\n{}",
            lab.log("etcd")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Subnets are taken in etcd whether or not a weftd answers: these agents have none
    // (their status says so), and all share one node namespace.
    let mut agents: Vec<Agent> = (11..21)
        .map(|i| Agent::new(&lab, &n1, i, &lab.dir().join("no-weftd.sock")))
        .collect();
    for a in &mut agents {
        a.start(&mut lab);
    }
    let mut subnets = std::collections::BTreeSet::new();
    for a in &agents {
        let s = a.wait(&lab, "a subnet", |s| s.subnet.is_some());
        assert!(!s.ready, "no weftd: not ready ({:?})", s.reason);
        assert!(
            s.reason.as_deref().is_some_and(|r| r.contains("weftd")),
            "{s:?}"
        );
        subnets.insert(s.subnet.unwrap());
    }
    assert_eq!(subnets.len(), 10, "{subnets:?}");
    let keys = etcdctl(
        &n1,
        ip,
        &["get", "--prefix", "/weft/v1/subnets/", "--keys-only"],
    );
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 10, "{keys}");
}

#[test]
fn etcd_over_tls_works_and_a_wrong_ca_is_refused() {
    const T: &str = "etcd_over_tls_works_and_a_wrong_ca_is_refused";
    if !privileged(T) || !etcd_present(T) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let ul = Underlay::new(&mut lab, 1).unwrap();
    let n1 = ul.node(1).clone();
    let d = lab.dir().join("pki");
    std::fs::create_dir_all(&d).unwrap();
    let ssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&d)
            .output()
            .expect("openssl (scripts/test installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    for (key, cert, cn) in [
        ("ca.key", "ca.pem", "weft-test-ca"),
        ("bad.key", "bad.pem", "other-ca"),
    ] {
        ssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            &format!("/CN={cn}"),
        ]);
    }
    ssl(&[
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "etcd.key", "-out", "etcd.csr", "-subj",
        "/CN=etcd",
    ]);
    std::fs::write(
        d.join("ext.cnf"),
        "subjectAltName=IP:198.18.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "etcd.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "etcd.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let p = |f: &str| d.join(f).display().to_string();
    let mut cmd = n1.command("etcd");
    cmd.args([
        "--name",
        "m1",
        "--data-dir",
        &lab.dir().join("etcd").display().to_string(),
        "--listen-client-urls",
        "https://198.18.0.1:2379",
        "--advertise-client-urls",
        "https://198.18.0.1:2379",
        "--listen-peer-urls",
        "http://198.18.0.1:2380",
        "--initial-advertise-peer-urls",
        "http://198.18.0.1:2380",
        "--initial-cluster",
        "m1=http://198.18.0.1:2380",
        "--cert-file",
        &p("etcd.pem"),
        "--key-file",
        &p("etcd.key"),
        "--trusted-ca-file",
        &p("ca.pem"),
        "--client-cert-auth",
    ]);
    lab.spawn("etcd", cmd).unwrap();
    let tls = |a: &mut Agent, ca: &str| {
        let ep = a.args.iter().position(|x| x == "--etcd-endpoints").unwrap();
        a.args[ep + 1] = "https://198.18.0.1:2379".into();
        a.args.extend(
            [
                "--etcd-ca",
                &p(ca),
                "--etcd-cert",
                &p("etcd.pem"),
                "--etcd-key",
                &p("etcd.key"),
            ]
            .map(String::from),
        );
    };
    let none = lab.dir().join("no-weftd.sock");
    let mut good = Agent::new(&lab, &n1, 1, &none);
    tls(&mut good, "ca.pem");
    good.start(&mut lab);
    let mut bad = Agent::new(&lab, &n1, 2, &none);
    tls(&mut bad, "bad.pem");
    bad.start(&mut lab);
    // The right CA: etcd answers (no config there yet).
    let s = good.wait(&lab, "etcd over TLS", |s| s.etcd.reachable);
    assert!(
        s.reason
            .as_deref()
            .is_some_and(|r| r.contains("waiting for the network config")),
        "{s:?}"
    );
    // The wrong CA: refused, and the status says why.
    let s = bad.wait(&lab, "the wrong CA refused", |s| {
        s.etcd
            .error
            .as_deref()
            .is_some_and(|e| e.contains("UnknownIssuer") || e.contains("certificate"))
    });
    assert!(!s.etcd.reachable && !s.ready, "{s:?}");
    assert!(!s.etcd.error.unwrap().contains('\n'));
}
