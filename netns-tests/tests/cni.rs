//! Issue 16: weft-cni against the real weft-agent and weftd, driven alone (environment +
//! stdin, as a runtime does) and under containerd.
//!
//! Each node is a namespace on the underlay running weftd and weft-agent
//! ([`AgentNode`]); etcd has a member on each of the first three nodes
//! ([`EtcdCluster`]). The test writes the cluster's `config` key as an operator would,
//! waits for each agent to be ready and to write its conflist, checks that conflist
//! (weft-cni, then portmap) and adds an `ipam.dataDir` in the node's directory so that
//! host-local's reservations stay in the lab (and can be counted). Under containerd,
//! each node's ctr reads the agent's CNI config directory, and weft-cni is a small
//! wrapper that records how long each call took.
//!
//! What "nothing left" means here, per attachment: no weftd port (`weftctl show`), no
//! flow mentioning its address or MAC (`weftctl dump-flows`), no endpoint in etcd or in
//! the agent's `status`, no host-local reservation, no link with its MAC on the node or
//! in the root namespace.
//!
//! These tests need the `weft-agent` binary (branch `agent`); without it they skip with
//! a message (and fail under WEFT_REQUIRE_PRIVILEGED). They run one at a time (the
//! timings should not depend on how many run at once).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use netns_tests::agent::{AgentNode, AgentSpec, EtcdAccess};
use netns_tests::containerd::{self, Containerd};
use netns_tests::etcd::EtcdCluster;
use netns_tests::lab::{Lab, Ns, REQUIRE_PRIVILEGED, privileged};
use netns_tests::node::{Underlay, binary, nettool_binary, underlay_ip};
use serde_json::{Value, json};
use weft_agent_proto::StatusReply;

const PREFIX: &str = "/weft/v1/";
const READY: Duration = Duration::from_secs(30);
const CONFIG: &str =
    r#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"vxlan","vni":1,"port":4789}"#;

static SERIAL: Mutex<()> = Mutex::new(());

fn weftctl_binary() -> PathBuf {
    binary("weftctl", "WEFTCTL")
}

fn cni_binary() -> PathBuf {
    binary("weft-cni", "WEFT_CNI")
}

/// Whether the test may run: privileged, etcd installed, and the agent built. Holds the
/// lock that runs these tests one at a time.
fn begin(test: &str, with_containerd: bool) -> Option<MutexGuard<'static, ()>> {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !privileged(test) || !netns_tests::etcd::available(test) {
        return None;
    }
    if with_containerd && !containerd::available(test) {
        return None;
    }
    let found = match std::env::var_os(netns_tests::agent::AGENT_ENV) {
        Some(p) => Path::new(&p).is_file(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.join("weft-agent")))
            .is_some_and(|p| p.is_file()),
    };
    if !found {
        let why = "needs the weft-agent binary (branch agent; cargo build --workspace --bins)";
        if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
            panic!("{test}: {why}, and {REQUIRE_PRIVILEGED} is set: this test must run here");
        }
        eprintln!("skipping {test}: {why}");
        return None;
    }
    Some(guard)
}

/// One node: weftd and weft-agent, maybe a containerd.
struct Node {
    node: AgentNode,
    name: String,
    dir: PathBuf,
    ipam_dir: PathBuf,
    containerd: Option<Containerd>,
}

impl Node {
    fn ns(&self) -> &Ns {
        &self.node.ns
    }

    fn conf_dir(&self) -> PathBuf {
        self.node.agent.dir().join("cni")
    }
}

/// The cluster under test. `nodes` is declared first so that containerd (whose drop
/// runs the last DELs through the agent) goes before the lab stops the agents.
struct World {
    nodes: Vec<Node>,
    etcd: EtcdCluster,
    lab: Lab,
}

impl World {
    /// `n` nodes, each with weftd and weft-agent ready; with a containerd per node when
    /// `with_containerd` (its ctr reads the agent's CNI config directory).
    fn new(n: u8, with_containerd: bool) -> World {
        let mut lab = Lab::new().unwrap();
        let ul = Underlay::new(&mut lab, n).unwrap();
        let members: Vec<(Ns, Ipv4Addr)> = (1..=3u8.min(n))
            .map(|i| (ul.node(i).clone(), underlay_ip(i)))
            .collect();
        let etcd = EtcdCluster::start(&mut lab, &members, None).unwrap();
        etcd.wait_healthy(&mut lab, READY).unwrap();
        etcd.put(&mut lab, &format!("{PREFIX}config"), CONFIG)
            .unwrap();
        let mut nodes = Vec::new();
        for i in 1..=n {
            let ns = ul.node(i).clone();
            // A node forwards (as a Kubernetes node must: kubeadm checks it): pods reach
            // other nodes, and portmap's DNAT reaches the pods. The agent leaves it as is.
            ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]).unwrap();
            let name = format!("n{i}");
            let spec = AgentSpec::new(&name, underlay_ip(i), EtcdAccess::of(&etcd));
            let node = AgentNode::start(&mut lab, &ns, &spec).unwrap();
            let dir = lab.dir().join(format!("cni-{name}"));
            std::fs::create_dir_all(&dir).unwrap();
            let containerd = with_containerd.then(|| {
                let mut c = Containerd::start(&lab, &ns, &format!("containerd-{name}")).unwrap();
                c.set_cni_conf_dir(&node.agent.dir().join("cni"));
                c
            });
            nodes.push(Node {
                node,
                name,
                ipam_dir: dir.join("ipam"),
                dir,
                containerd,
            });
        }
        let mut w = World { nodes, etcd, lab };
        for k in 0..w.nodes.len() {
            w.wait_ready(k);
            w.adopt_conflist(k);
            if let Some(c) = &w.nodes[k].containerd {
                c.install_plugin("weft-cni", &w.timed_plugin(k)).unwrap();
            }
        }
        w
    }

    fn stop_agent(&mut self, k: usize) {
        let World { lab, nodes, .. } = self;
        nodes[k].node.agent.stop(lab);
    }

    /// Starts a stopped agent again and, once it is ready and has written its conflist
    /// anew, points host-local into the lab again.
    fn start_agent_again(&mut self, k: usize) {
        let _ = std::fs::remove_file(self.nodes[k].conf_dir().join("10-weft.conflist"));
        let World { lab, nodes, .. } = self;
        nodes[k].node.agent.start_again(lab).unwrap();
        self.wait_ready(k);
        self.adopt_conflist(k);
    }

    fn status(&self, k: usize) -> Option<StatusReply> {
        self.nodes[k].node.agent.status().ok()
    }

    fn wait_ready(&mut self, k: usize) -> StatusReply {
        let World { lab, nodes, .. } = self;
        let n = &nodes[k].node;
        n.agent
            .wait_ready(lab, READY)
            .unwrap_or_else(|e| panic!("{e}\n{}", n.weftd.log(lab)))
    }

    /// Checks the conflist the agent wrote and points host-local into the lab.
    fn adopt_conflist(&self, k: usize) {
        let node = &self.nodes[k];
        let path = node.conf_dir().join("10-weft.conflist");
        let start = Instant::now();
        while !path.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "agent {} is ready but wrote no {}",
                node.name,
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(c["name"], "weft", "{c}");
        assert_eq!(c["cniVersion"], "1.0.0", "{c}");
        assert_eq!(c["plugins"][0]["type"], "weft-cni", "{c}");
        assert_eq!(
            c["plugins"][0]["agentSocket"],
            node.node.agent.socket().display().to_string(),
            "{c}"
        );
        assert_eq!(c["plugins"][1]["type"], "portmap", "{c}");
        assert_eq!(c["plugins"][1]["capabilities"]["portMappings"], true, "{c}");
        c["plugins"][0]["ipam"] = json!({"dataDir": node.ipam_dir});
        std::fs::write(&path, c.to_string()).unwrap();
    }

    fn conflist(&self, k: usize) -> Value {
        let path = self.nodes[k].conf_dir().join("10-weft.conflist");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// A weft-cni that records how long each call took (`<node dir>/times`).
    fn timed_plugin(&self, k: usize) -> PathBuf {
        let node = &self.nodes[k];
        let p = node.dir.join("weft-cni-timed");
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\ns=$(date +%s%N)\n{}\nrc=$?\n\
                 echo \"$CNI_COMMAND $(( $(date +%s%N) - s ))\" >> {}\nexit $rc\n",
                cni_binary().display(),
                node.dir.join("times").display()
            ),
        )
        .unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
        p
    }

    fn times(&self, k: usize, command: &str) -> Vec<Duration> {
        let text = std::fs::read_to_string(self.nodes[k].dir.join("times")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (c, ns) = l.split_once(' ')?;
                let ns: u64 = ns.trim().parse().ok()?;
                (c == command).then(|| Duration::from_nanos(ns))
            })
            .collect()
    }

    fn weftctl(&self, k: usize, args: &[&str]) -> String {
        let out = Command::new(weftctl_binary())
            .arg("-s")
            .arg(self.nodes[k].node.weftd_socket())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weftctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn endpoint_keys(&mut self, k: usize) -> Vec<String> {
        let prefix = format!("{PREFIX}endpoints/{}/", self.nodes[k].name);
        let World { lab, etcd, .. } = self;
        etcd.get_prefix(lab, &prefix)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    }

    fn endpoint_value(&mut self, key: &str) -> Option<Value> {
        let World { lab, etcd, .. } = self;
        let v = etcd.get(lab, key).unwrap()?;
        Some(serde_json::from_str(&v).unwrap())
    }

    fn reservations(&self, k: usize) -> Vec<String> {
        std::fs::read_dir(self.nodes[k].ipam_dir.join("weft"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts node `k` holds nothing of an attachment with this port, MAC and address.
    fn assert_gone(&self, k: usize, port: &str, mac: &str, ip: &str) {
        let show = self.weftctl(k, &["show"]);
        assert!(!show.contains(port), "port {port} left: {show}");
        let flows = self.weftctl(k, &["dump-flows"]);
        for needle in [ip, mac] {
            assert!(
                !flows.contains(&format!("={needle},")) && !flows.contains(&format!("={needle} ")),
                "a flow for {needle} left: {flows}"
            );
        }
        assert!(
            !self.reservations(k).contains(&ip.to_string()),
            "{ip} still reserved"
        );
        let status = self.status(k).expect("agent status");
        assert!(
            !status.endpoints.iter().any(|e| e.mac == mac),
            "agent still lists {mac}: {:?}",
            status.endpoints
        );
        let links = self.nodes[k].ns().ip("-o link").unwrap();
        assert!(
            !links.contains(mac),
            "a link with {mac} on the node: {links}"
        );
        let root = Command::new("ip").args(["-o", "link"]).output().unwrap();
        assert!(
            !String::from_utf8_lossy(&root.stdout).contains(mac),
            "a link with {mac} in the root namespace"
        );
    }
}

/// What one plugin invocation printed; see [`invoke_in`].
struct Invocation {
    ok: bool,
    out: Value,
    stderr: String,
}

impl Invocation {
    fn code(&self) -> u64 {
        assert!(!self.ok, "expected an error, got {}", self.out);
        self.out["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code: {}", self.out))
    }
}

/// The conflist's plugin `i` as the runtime hands it over: with `cniVersion`, `name`,
/// `runtimeConfig` for its capabilities, and `prevResult`.
fn entry(list: &Value, i: usize, version: &str, runtime: &Value, prev: Option<&Value>) -> Value {
    let mut e = list["plugins"][i].clone();
    e["cniVersion"] = json!(version);
    e["name"] = list["name"].clone();
    if let Some(caps) = e["capabilities"].as_object() {
        let mut rc = serde_json::Map::new();
        for (k, on) in caps {
            if on == true && !runtime[k].is_null() {
                rc.insert(k.clone(), runtime[k].clone());
            }
        }
        e["runtimeConfig"] = Value::Object(rc);
    }
    if let Some(p) = prev {
        e["prevResult"] = p.clone();
    }
    e
}

/// A pod for the plugin-alone tests: a namespace and the variables a runtime sets.
struct Pod {
    ns: Ns,
    cid: String,
}

impl Pod {
    fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.ns.name())
    }

    fn vars(&self, command: &str, with_netns: bool) -> Vec<(String, String)> {
        let mut v = vec![
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".into(), self.cid.clone()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), containerd::DEBIAN_CNI_DIR.to_string()),
            (
                "CNI_ARGS".into(),
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME={}",
                    self.cid
                ),
            ),
        ];
        if with_netns {
            v.push(("CNI_NETNS".into(), self.netns_path()));
        }
        v
    }
}

fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// weft-cni alone (the conflist's first entry).
fn cni(w: &World, k: usize, pod: &Pod, command: &str, version: &str, extra: Value) -> Invocation {
    let list = w.conflist(k);
    let mut e = entry(&list, 0, version, &json!({}), None);
    if let (Value::Object(m), Value::Object(x)) = (&mut e, extra) {
        m.extend(x);
    }
    let vars = pod.vars(command, command != "DEL-NO-NETNS");
    let vars: Vec<(String, String)> = vars
        .into_iter()
        .map(|(a, b)| {
            if a == "CNI_COMMAND" && b == "DEL-NO-NETNS" {
                (a, "DEL".into())
            } else {
                (a, b)
            }
        })
        .collect();
    invoke_in(w.nodes[k].ns(), &cni_binary(), &pairs(&vars), &e)
}

fn pod_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().expect("an address");
    a.split('/').next().unwrap().to_string()
}

fn port_of(w: &World, k: usize, mac: &str) -> String {
    let s = w.status(k).expect("status");
    s.endpoints
        .iter()
        .find(|e| e.mac == mac)
        .unwrap_or_else(|| panic!("no endpoint with {mac}: {:?}", s.endpoints))
        .port
        .clone()
}

#[test]
fn plugin_alone_every_command_against_the_agent() {
    let Some(_serial) = begin("plugin_alone_every_command_against_the_agent", false) else {
        return;
    };
    let mut w = World::new(2, false);
    let s1 = w.wait_ready(0);
    let subnet = s1.subnet.expect("a subnet");
    let pod1 = Pod {
        ns: w.lab.netns("pod1").unwrap(),
        cid: "a1b2c3d4-pod1".into(),
    };
    let pod2 = Pod {
        ns: w.lab.netns("pod2").unwrap(),
        cid: "b2c3d4e5-pod2".into(),
    };

    // ADD on both nodes: results of the spec's form, addresses from each node's subnet.
    let r1 = cni(&w, 0, &pod1, "ADD", "1.0.0", json!({}));
    assert!(r1.ok, "{} {}", r1.out, r1.stderr);
    let r2 = cni(&w, 1, &pod2, "ADD", "1.0.0", json!({}));
    assert!(r2.ok, "{} {}", r2.out, r2.stderr);
    assert_eq!(r1.out["interfaces"][0]["name"], "eth0");
    assert_eq!(r1.out["interfaces"][0]["sandbox"], pod1.netns_path());
    assert_eq!(r1.out["ips"][0]["interface"], 0);
    let ip1 = pod_ip(&r1.out);
    let ip2 = pod_ip(&r2.out);
    assert!(
        subnet.contains(&ip1.parse::<std::net::IpAddr>().unwrap()),
        "{ip1} in {subnet}"
    );
    let mac1 = r1.out["interfaces"][0]["mac"].as_str().unwrap().to_string();
    assert!(pod1.ns.ip("-o addr show dev eth0").unwrap().contains(&ip1));
    assert_eq!(w.reservations(0), vec![ip1.clone()]);

    // Connectivity when ADD returns: pod to pod across nodes, node to pod, pod to node.
    assert!(pod1.ns.ping(&ip2, 1, 2), "pod1 -> pod2");
    assert!(pod2.ns.ping(&ip1, 1, 2), "pod2 -> pod1");
    assert!(w.nodes[1].ns().ping(&ip1, 1, 2), "node 2 -> pod1");
    assert!(
        pod1.ns.ping(&underlay_ip(2).to_string(), 1, 2),
        "pod1 -> node 2"
    );

    // The endpoint is in etcd with the pod's identity from CNI_ARGS.
    let keys = w.endpoint_keys(0);
    let key = format!("{PREFIX}endpoints/n1/{}:eth0", pod1.cid);
    assert_eq!(keys, vec![key.clone()]);
    let v = w.endpoint_value(&key).expect("the endpoint's value");
    assert_eq!(v["pod_namespace"], "web", "{v}");
    assert_eq!(v["pod_name"], pod1.cid, "{v}");
    let port1 = port_of(&w, 0, &mac1);
    assert!(w.weftctl(0, &["show"]).contains(&port1));

    // ADD of an existing attachment fails and changes nothing.
    let again = cni(&w, 0, &pod1, "ADD", "1.0.0", json!({}));
    assert!(!again.ok, "{}", again.out);
    assert_eq!(w.reservations(0), vec![ip1.clone()]);
    assert!(pod1.ns.ping(&ip2, 1, 2), "still connected");
    let keys_before = w.endpoint_keys(0);
    // Another attachment onto the same interface name: 100, and its address released.
    let other = Pod {
        ns: pod1.ns.clone(),
        cid: "c3d4e5f6-other".into(),
    };
    // (Its code, 100, is add_onto_an_existing_interface_is_code_100.)
    let clash = cni(&w, 0, &other, "ADD", "1.0.0", json!({}));
    assert!(!clash.ok, "{}", clash.out);
    assert_eq!(w.reservations(0), vec![ip1.clone()]);
    assert_eq!(
        w.endpoint_keys(0),
        keys_before,
        "a failed ADD left an endpoint"
    );

    // CHECK: whole, then with the address gone (101, naming it); the route case is
    // check_reports_a_missing_flow_route_and_interface.
    let prev = json!({"prevResult": r1.out});
    let c = cni(&w, 0, &pod1, "CHECK", "1.0.0", prev.clone());
    assert!(c.ok, "{} {}", c.out, c.stderr);
    pod1.ns.ip("addr flush dev eth0").unwrap();
    let c = cni(&w, 0, &pod1, "CHECK", "1.0.0", prev.clone());
    assert_eq!(c.code(), 101, "{}", c.out);
    assert!(c.out["msg"].as_str().unwrap().contains(&ip1), "{}", c.out);

    // STATUS (1.1.0): ready.
    let st = cni(&w, 0, &pod1, "STATUS", "1.1.0", json!({}));
    assert!(st.ok, "{} {}", st.out, st.stderr);

    // DEL: everything goes; again; and without CNI_NETNS once the namespace is gone.
    let d = cni(&w, 0, &pod1, "DEL", "1.0.0", prev.clone());
    assert!(d.ok, "{} {}", d.out, d.stderr);
    w.assert_gone(0, &port1, &mac1, &ip1);
    assert!(w.endpoint_keys(0).is_empty());
    let d = cni(&w, 0, &pod1, "DEL", "1.0.0", prev.clone());
    assert!(d.ok, "a repeated DEL: {} {}", d.out, d.stderr);
    let mac2 = r2.out["interfaces"][0]["mac"].as_str().unwrap().to_string();
    let port2 = port_of(&w, 1, &mac2);
    let ns2 = pod2.ns.clone();
    w.lab.delete_netns(&ns2).unwrap();
    let d = cni(
        &w,
        1,
        &pod2,
        "DEL-NO-NETNS",
        "1.0.0",
        json!({"prevResult": r2.out}),
    );
    assert!(d.ok, "DEL without the namespace: {} {}", d.out, d.stderr);
    w.assert_gone(1, &port2, &mac2, &ip2);

    // GC (1.1.0): of three attachments, the one not listed goes.
    let pods: Vec<Pod> = (0..3)
        .map(|i| Pod {
            ns: w.lab.netns(&format!("gc{i}")).unwrap(),
            cid: format!("f{i}a7b8c9-gc"),
        })
        .collect();
    let results: Vec<Value> = pods
        .iter()
        .map(|p| {
            let r = cni(&w, 0, p, "ADD", "1.1.0", json!({}));
            assert!(r.ok, "{} {}", r.out, r.stderr);
            r.out
        })
        .collect();
    let gc_port = port_of(&w, 0, results[2]["interfaces"][0]["mac"].as_str().unwrap());
    let keep: Vec<Value> = pods[..2]
        .iter()
        .map(|p| json!({"containerID": p.cid, "ifname": "eth0"}))
        .collect();
    let g = cni(
        &w,
        0,
        &pods[0],
        "GC",
        "1.1.0",
        json!({"cni.dev/attachments": keep}),
    );
    assert!(g.ok, "{} {}", g.out, g.stderr);
    let mac = results[2]["interfaces"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        port_of_opt(&w, 0, &mac).is_none(),
        "GC left the endpoint of {mac}"
    );
    w.assert_gone(0, &gc_port, &mac, &pod_ip(&results[2]));
    assert_eq!(w.reservations(0).len(), 2);
    assert!(
        pods[0].ns.ping(&s1.gateway.unwrap().to_string(), 1, 2),
        "kept pods keep working"
    );
}

/// A pod's first packet to another node's address (nothing sent from there before)
/// gets its answer. Node 2's reply leaves through its gateway port and needs the pod's
/// neighbour entry there, asked for with node 2's underlay address as the sender.
#[test]
fn pod_reaches_another_node_first() {
    let Some(_serial) = begin("pod_reaches_another_node_first", false) else {
        return;
    };
    let mut w = World::new(2, false);
    let pod = Pod {
        ns: w.lab.netns("pod1").unwrap(),
        cid: "a1b2c3d4-first".into(),
    };
    let r = cni(&w, 0, &pod, "ADD", "1.0.0", json!({}));
    assert!(r.ok, "{} {}", r.out, r.stderr);
    let ok = pod.ns.ping(&underlay_ip(2).to_string(), 5, 2);
    let neigh = w.nodes[1].ns().ip("neigh show").unwrap_or_default();
    assert!(
        ok,
        "pod -> node 2 as the first packet; node 2's neighbours: {neigh}"
    );
}

#[test]
fn add_onto_an_existing_interface_is_code_100() {
    let Some(_serial) = begin("add_onto_an_existing_interface_is_code_100", false) else {
        return;
    };
    let mut w = World::new(1, false);
    let ns = w.lab.netns("pod1").unwrap();
    let first = Pod {
        ns: ns.clone(),
        cid: "a1b2c3d4-first".into(),
    };
    let second = Pod {
        ns,
        cid: "b2c3d4e5-second".into(),
    };
    let r = cni(&w, 0, &first, "ADD", "1.0.0", json!({}));
    assert!(r.ok, "{} {}", r.out, r.stderr);
    let clash = cni(&w, 0, &second, "ADD", "1.0.0", json!({}));
    assert_eq!(clash.code(), 100, "eth0 exists in the pod: {}", clash.out);
    assert_eq!(w.reservations(0).len(), 1);
}

#[test]
fn check_reports_a_missing_flow_route_and_interface() {
    let Some(_serial) = begin("check_reports_a_missing_flow_route_and_interface", false) else {
        return;
    };
    let mut w = World::new(1, false);
    let pod = Pod {
        ns: w.lab.netns("pod1").unwrap(),
        cid: "a9b8c7d6-check".into(),
    };
    let r = cni(&w, 0, &pod, "ADD", "1.0.0", json!({}));
    assert!(r.ok, "{} {}", r.out, r.stderr);
    let prev = json!({"prevResult": r.out});
    let c = cni(&w, 0, &pod, "CHECK", "1.0.0", prev.clone());
    assert!(c.ok, "a whole attachment checks: {} {}", c.out, c.stderr);
    // A flow of the pod removed behind the agent's back: 101, naming the flow.
    // (The delivery to its MAC in the output table.)
    let at = r.out["ips"][0]["interface"].as_u64().unwrap() as usize;
    let mac = r.out["interfaces"][at]["mac"].as_str().unwrap().to_string();
    let delivery = format!("dl_dst={mac}");
    assert!(w.weftctl(0, &["dump-flows"]).contains(&delivery));
    w.weftctl(0, &["del-flows", &delivery]);
    assert!(!w.weftctl(0, &["dump-flows"]).contains(&delivery));
    let c = cni(&w, 0, &pod, "CHECK", "1.0.0", prev.clone());
    assert_eq!(c.code(), 101, "a missing flow: {}", c.out);
    let msg = c.out["msg"].as_str().unwrap();
    assert!(msg.contains("flow") && msg.contains(&delivery), "{}", c.out);
    pod.ns.ip("route del default").unwrap();
    let c = cni(&w, 0, &pod, "CHECK", "1.0.0", prev.clone());
    assert_eq!(c.code(), 101, "a missing default route: {}", c.out);
    assert!(
        c.out["msg"].as_str().unwrap().contains("route"),
        "{}",
        c.out
    );
    pod.ns.ip("link del eth0").unwrap();
    let c = cni(&w, 0, &pod, "CHECK", "1.0.0", prev);
    assert_eq!(c.code(), 101, "a missing interface: {}", c.out);
    assert!(c.out["msg"].as_str().unwrap().contains("eth0"), "{}", c.out);
}

fn port_of_opt(w: &World, k: usize, mac: &str) -> Option<String> {
    w.status(k)?
        .endpoints
        .iter()
        .find(|e| e.mac == mac)
        .map(|e| e.port.clone())
}

#[test]
fn agent_down_add_is_11_and_leaves_nothing_and_status_is_50() {
    let Some(_serial) = begin(
        "agent_down_add_is_11_and_leaves_nothing_and_status_is_50",
        false,
    ) else {
        return;
    };
    let mut w = World::new(1, false);
    let pod = Pod {
        ns: w.lab.netns("pod1").unwrap(),
        cid: "d4e5f6a7-down".into(),
    };
    w.stop_agent(0);
    let r = cni(&w, 0, &pod, "ADD", "1.0.0", json!({}));
    assert_eq!(r.code(), 11, "{}", r.out);
    let msg = r.out["msg"].as_str().unwrap();
    assert!(msg.contains("not reachable"), "a clear message: {msg}");
    assert!(w.reservations(0).is_empty(), "{:?}", w.reservations(0));
    assert!(
        pod.ns.ip("-o link").unwrap().lines().count() == 1,
        "only lo in the pod"
    );
    let st = cni(&w, 0, &pod, "STATUS", "1.1.0", json!({}));
    assert_eq!(st.code(), 50, "{}", st.out);
    // Back up: ADD works again.
    w.start_agent_again(0);
    let r = cni(&w, 0, &pod, "ADD", "1.0.0", json!({}));
    assert!(r.ok, "{} {}", r.out, r.stderr);
    assert_eq!(w.reservations(0).len(), 1);
    let d = cni(&w, 0, &pod, "DEL", "1.0.0", json!({"prevResult": r.out}));
    assert!(d.ok, "{} {}", d.out, d.stderr);
    assert!(w.reservations(0).is_empty());
}

/// Node `k`'s flows without their counters (`dump-flows -o json`, the `flow` of each).
fn flow_rules(w: &World, k: usize) -> Vec<String> {
    let out = w.weftctl(k, &["-o", "json", "dump-flows"]);
    let rules: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["flow"].to_string())
        .collect();
    assert!(!rules.is_empty(), "node {k} has flows");
    rules
}

/// An ADD that fails at the agent after it made the pod's interface (etcd is down, so
/// the endpoint cannot be recorded) takes all of it back: no port, flow, link or
/// address reservation is left, and the same ADD works once etcd is back.
#[test]
fn an_add_that_fails_at_the_agent_leaves_nothing() {
    let Some(_serial) = begin("an_add_that_fails_at_the_agent_leaves_nothing", false) else {
        return;
    };
    let mut w = World::new(1, false);
    let pod = Pod {
        ns: w.lab.netns("pod1").unwrap(),
        cid: "f6a7b8c9-undo".into(),
    };
    let ports = w.weftctl(0, &["dump-ports"]).lines().count();
    let flows = flow_rules(&w, 0);
    {
        let World { etcd, lab, .. } = &mut w;
        etcd.stop_all(lab);
    }
    let start = Instant::now();
    while w.status(0).is_some_and(|s| s.etcd.reachable) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent does not see etcd gone"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = cni(&w, 0, &pod, "ADD", "1.0.0", json!({}));
    eprintln!("ADD with etcd down: {}", r.out);
    assert!(!r.ok, "ADD with etcd down: {}", r.out);
    let msg = r.out["msg"].as_str().unwrap_or_default();
    assert!(msg.contains("etcd"), "the message names etcd: {}", r.out);
    assert!(w.reservations(0).is_empty(), "{:?}", w.reservations(0));
    assert_eq!(
        pod.ns.ip("-o link").unwrap().lines().count(),
        1,
        "only lo in the pod"
    );
    assert_eq!(w.weftctl(0, &["dump-ports"]).lines().count(), ports);
    assert_eq!(flow_rules(&w, 0), flows, "the flows are as they were");
    assert!(w.status(0).unwrap().endpoints.is_empty());
    {
        let World { etcd, lab, .. } = &mut w;
        etcd.start_all(lab).unwrap();
        etcd.wait_healthy(lab, READY).unwrap();
    }
    let start = Instant::now();
    let r = loop {
        let r = cni(&w, 0, &pod, "ADD", "1.0.0", json!({}));
        if r.ok || start.elapsed() > Duration::from_secs(30) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(r.ok, "ADD once etcd is back: {} {}", r.out, r.stderr);
    let d = cni(&w, 0, &pod, "DEL", "1.0.0", json!({"prevResult": r.out}));
    assert!(d.ok, "{} {}", d.out, d.stderr);
    assert!(w.reservations(0).is_empty());
}

#[test]
fn host_port_through_the_chained_portmap() {
    let Some(_serial) = begin("host_port_through_the_chained_portmap", false) else {
        return;
    };
    let mut w = World::new(2, false);
    let pod = Pod {
        ns: w.lab.netns("web").unwrap(),
        cid: "e5f6a7b8-web".into(),
    };
    let list = w.conflist(0);
    let runtime =
        json!({"portMappings": [{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]});
    let vars = pod.vars("ADD", true);
    let plugin_path = |i: usize| -> PathBuf {
        match list["plugins"][i]["type"].as_str().unwrap() {
            "weft-cni" => cni_binary(),
            other => Path::new(containerd::DEBIAN_CNI_DIR).join(other),
        }
    };
    // The chain as the runtime runs it: ADD in order, each with the previous result.
    let mut prev: Option<Value> = None;
    let n = list["plugins"].as_array().unwrap().len();
    for i in 0..n {
        let e = entry(&list, i, "1.0.0", &runtime, prev.as_ref());
        let inv = invoke_in(w.nodes[0].ns(), &plugin_path(i), &pairs(&vars), &e);
        assert!(inv.ok, "plugin {i}: {} {}", inv.out, inv.stderr);
        prev = Some(inv.out);
    }
    let result = prev.clone().unwrap();
    let ip = pod_ip(&result);
    // A listener in the pod on 8080, reached from node 2 at node 1's 30080.
    let tool = nettool_binary().display().to_string();
    let mut recv = pod.ns.command(&tool);
    recv.args([
        "tcp-recv",
        "--listen",
        "0.0.0.0:8080",
        "--bytes",
        "100000",
        "--seed",
        "7",
        "--timeout",
        "10",
    ]);
    let rid = w.lab.spawn("hostport-recv", recv).unwrap();
    let start = Instant::now();
    while !w.lab.log("hostport-recv").contains("listening") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            w.lab.log("hostport-recv")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let to = format!("{}:30080", underlay_ip(1));
    let sent = w.nodes[1]
        .ns()
        .run(&[
            &tool,
            "tcp-send",
            "--to",
            &to,
            "--bytes",
            "100000",
            "--seed",
            "7",
            "--timeout",
            "10",
        ])
        .unwrap_or_else(|e| panic!("hostPort 30080 -> {ip}:8080: {e}"));
    let start = Instant::now();
    while w.lab.is_running(rid) && start.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = w.lab.stop(rid, Duration::from_millis(500));
    assert!(
        status.is_some_and(|s| s.success()),
        "{sent} / {}",
        w.lab.log("hostport-recv")
    );
    // DEL in reverse order removes the mapping too.
    let vars = pod.vars("DEL", true);
    for i in (0..n).rev() {
        let e = entry(&list, i, "1.0.0", &runtime, Some(&result));
        let inv = invoke_in(w.nodes[0].ns(), &plugin_path(i), &pairs(&vars), &e);
        assert!(inv.ok, "DEL plugin {i}: {} {}", inv.out, inv.stderr);
    }
    let nat = w.nodes[0]
        .ns()
        .run(&["iptables", "-t", "nat", "-S"])
        .unwrap();
    assert!(!nat.contains("30080"), "portmap's rule left: {nat}");
}

/// One plugin invocation as a runtime does it, in the node's namespace (where runtimes
/// run plugins; portmap programs that namespace's iptables): the variables, the
/// plugin's config entry on stdin (see [`entry`]).
fn invoke_in(ns: &Ns, plugin: &Path, vars: &[(&str, &str)], conf: &Value) -> Invocation {
    let mut c = ns.command("env");
    c.arg("-i");
    c.arg(format!(
        "PATH={}",
        std::env::var("PATH").unwrap_or_default()
    ));
    for (k, v) in vars {
        c.arg(format!("{k}={v}"));
    }
    c.arg(plugin);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    Invocation {
        ok: o.status.success(),
        out: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn container_ip(c: &Containerd, id: &str) -> String {
    let out = c
        .exec(id, &["/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    let word = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address: {out}"));
    word.split('/').next().unwrap().to_string()
}

/// Whether a ping from the container gets a reply (three tries: the first may wait for
/// a neighbour entry on the way).
fn container_ping(c: &Containerd, id: &str, dst: &str) -> bool {
    c.exec(id, &["/bin/ping", "-c", "3", "-i", "0.2", "-W", "2", dst])
        .is_ok()
}

#[test]
fn containerd_containers_on_two_nodes_reach_each_other_and_leave_nothing() {
    let Some(_serial) = begin(
        "containerd_containers_on_two_nodes_reach_each_other_and_leave_nothing",
        true,
    ) else {
        return;
    };
    let mut w = World::new(2, true);
    let subnets: Vec<_> = (0..2).map(|k| w.wait_ready(k).subnet.unwrap()).collect();
    for k in 0..2 {
        let c = w.nodes[k].containerd.as_mut().unwrap();
        c.start_container(
            &format!("c{k}"),
            &["/bin/sleep", "120"],
            Duration::from_secs(30),
        )
        .unwrap();
    }
    let c0 = w.nodes[0].containerd.as_ref().unwrap();
    let c1 = w.nodes[1].containerd.as_ref().unwrap();
    let ip0 = container_ip(c0, "c0");
    let ip1 = container_ip(c1, "c1");
    assert!(
        subnets[0].contains(&ip0.parse::<std::net::IpAddr>().unwrap()),
        "{ip0}"
    );
    assert!(
        subnets[1].contains(&ip1.parse::<std::net::IpAddr>().unwrap()),
        "{ip1}"
    );
    assert!(container_ping(c0, "c0", &ip1), "c0 -> c1");
    assert!(container_ping(c1, "c1", &ip0), "c1 -> c0");
    // Node 2 first, then back (the other order, a pod's first packet to another node,
    // is pod_reaches_another_node_first).
    assert!(w.nodes[1].ns().ping(&ip0, 1, 2), "node 2 -> c0");
    assert!(
        container_ping(c0, "c0", &underlay_ip(2).to_string()),
        "c0 -> node 2"
    );
    let cid0 = c0.cni_container_id("c0");
    assert_eq!(
        w.endpoint_keys(0),
        vec![format!("{PREFIX}endpoints/n1/{cid0}:eth0")]
    );
    let ends: Vec<(String, String)> = (0..2)
        .map(|k| {
            let e = &w.status(k).unwrap().endpoints[0];
            (e.port.clone(), e.mac.clone())
        })
        .collect();
    for k in 0..2 {
        let c = w.nodes[k].containerd.as_mut().unwrap();
        c.stop_container(&format!("c{k}"), Duration::from_secs(30))
            .unwrap();
    }
    for (k, ip) in [(0, &ip0), (1, &ip1)] {
        w.assert_gone(k, &ends[k].0, &ends[k].1, ip);
        assert!(w.endpoint_keys(k).is_empty());
        assert!(
            w.nodes[k]
                .containerd
                .as_ref()
                .unwrap()
                .containers()
                .is_empty()
        );
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The containers keep ctr's ids (`<namespace>-<id>`, all sharing their first eight
/// characters), as a runtime gives them; the agent's port names must tell them apart.
#[test]
fn containerd_fifty_containers_ten_at_a_time_leak_nothing() {
    let Some(_serial) = begin(
        "containerd_fifty_containers_ten_at_a_time_leak_nothing",
        true,
    ) else {
        return;
    };
    let mut w = World::new(1, true);
    let node_taps_before = tap_count(w.nodes[0].ns());
    let mut seen = Vec::new();
    for round in 0..5 {
        let ids: Vec<String> = (0..10).map(|i| format!("r{round}c{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let c = w.nodes[0].containerd.as_mut().unwrap();
        c.start_containers(&refs, &["/bin/sleep", "120"], Duration::from_secs(60))
            .unwrap();
        let s = w.status(0).unwrap();
        assert_eq!(s.endpoints.len(), 10, "round {round}: {:?}", s.endpoints);
        assert_eq!(w.reservations(0).len(), 10);
        for e in &s.endpoints {
            seen.push((
                e.port.clone(),
                e.mac.clone(),
                e.addresses[0].addr().to_string(),
            ));
        }
        let c = w.nodes[0].containerd.as_mut().unwrap();
        c.stop_containers(&refs, Duration::from_secs(60)).unwrap();
        assert!(w.status(0).unwrap().endpoints.is_empty(), "round {round}");
    }
    for (port, mac, ip) in &seen {
        w.assert_gone(0, port, mac, ip);
    }
    assert!(w.reservations(0).is_empty(), "{:?}", w.reservations(0));
    assert!(w.endpoint_keys(0).is_empty());
    assert_eq!(
        tap_count(w.nodes[0].ns()),
        node_taps_before,
        "no pod TAP on the node"
    );
    let mut add = w.times(0, "ADD");
    let mut del = w.times(0, "DEL");
    assert_eq!(add.len(), 50);
    assert_eq!(del.len(), 50);
    eprintln!(
        "weft-cni under containerd, 50 containers 10 at a time: ADD p50 {:?} p99 {:?}, DEL p50 {:?} p99 {:?}",
        percentile(&mut add, 0.5),
        percentile(&mut add, 0.99),
        percentile(&mut del, 0.5),
        percentile(&mut del, 0.99)
    );
    let ms = |v: &[Duration]| -> Vec<u128> { v.iter().map(|d| d.as_millis()).collect() };
    eprintln!("ADD ms, in order: {:?}", ms(&w.times(0, "ADD")));
}

/// TAP devices in `ns`.
fn tap_count(ns: &Ns) -> usize {
    let out = ns.ip("-o -d link").unwrap();
    out.lines().filter(|l| l.contains("tun type tap")).count()
}
