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
}

impl Agent {
    fn start(&mut self, lab: &mut Lab) {
        self.starts += 1;
        let mut cmd = self
            .node
            .command(&binary("weft-agent", "WEFT_AGENT").display().to_string());
        cmd.args(&self.args);
        cmd.env("RUST_LOG", "info");
        self.proc = Some(lab.spawn(&format!("agent.{}", self.starts), cmd).unwrap());
    }

    fn log(&self, lab: &Lab) -> String {
        (1..=self.starts)
            .map(|i| lab.log(&format!("agent.{i}")))
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
    start_etcd(&mut lab, &n1, ip);
    let weftd = Weftd::start(
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

    let dir = lab.dir().join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("agent.sock");
    let mut agent = Agent {
        node: n1.clone(),
        args: [
            "--node-name",
            "n1",
            "--public-ip",
            "198.18.0.1",
            "--etcd-endpoints",
            "http://198.18.0.1:2379",
            "--lease-ttl",
            "3",
            "--weftd-socket",
            &wsock.display().to_string(),
            "--socket",
            &socket.display().to_string(),
            "--cni-conf-dir",
            &dir.join("net.d").display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
        socket,
        proc: None,
        starts: 0,
    };
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
    assert_eq!(r.port, "p-c0ffee00-eth0");
    let again = agent.call::<ap::AttachReply>(&ap::Request::Attach(attach.clone()));
    assert!(
        matches!(&again, Err(ap::ClientError::Agent(e)) if e.kind == ap::ErrorKind::Exists),
        "{again:?}"
    );
    let link = pod.ip("addr show eth0").unwrap();
    assert!(link.contains(&format!("inet {pod_ip}/24")), "{link}");
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
        lab.log("agent.2").contains("changes=0"),
        "the resync changed nothing:\n{}",
        lab.log("agent.2")
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
