//! A whole cluster in a lab, from a cluster description (`weftctl::cluster`).
//!
//! [`ClusterLab::new`] builds the underlay with one namespace per node of the
//! description (node `198.18.0.i` is host `i` on the lab bridge);
//! [`ClusterLab::start_weftd`] starts a bare `weftd` in a node (flags only:
//! `--control`, `--state-dir`, `--metrics`, through the [`Lab`] so it is stopped
//! whatever happens); [`ClusterLab::install`] programs every running node from its
//! [`NodePlan`] over the control socket with `weft-proto`'s client library — the ports
//! one by one, then every flow as one bundle — and then configures each local pod
//! from its [`PodPlan`] with `ip -n` (address, MTU, routes, static neighbours), the
//! way a CNI plugin would. Installing a second description (another tenant, another
//! VNI) into the same daemons works: a tunnel port both plans share is added once.
//!
//! [`ClusterLab::install_kernel_node`] makes a node without Weft instead: the Linux
//! kernel's own VXLAN device on a bridge with the pods' veths, as flannel and Weave's
//! fast datapath set it up, so that a Weft node can be checked against an independent
//! implementation.
//!
//! Pod namespaces are the lab's (`<prefix><namespace>`); the `netns=` of each TAP port
//! is rewritten to that name before it is sent. With [`ClusterLab::echo`] every step
//! is printed as the command it is equivalent to (`weftctl -s SOCK add-port ...`,
//! `ip -n NS ...`), which is what `weft-demo` shows.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weft_flow::port::{PortKind, PortSpec};
use weft_flow::{Bundle, FlowMod};
use weft_proto::client::Client;
use weftctl::cluster::{Cluster, Encap, Mode, NodePlan, PodPlan};

use crate::lab::{Lab, LabError, Ns, ProcId, Result};
use crate::node::{METRICS_ADDR, Metrics, Underlay, nettool_binary, weftd_binary};

/// How long a `weftd` may take to answer on its control socket, or a TAP to appear.
pub const READY: Duration = Duration::from_secs(10);

/// A node of the lab.
#[derive(Debug)]
pub struct NodeRun {
    /// Its name in the description.
    pub name: String,
    /// Its underlay address.
    pub address: Ipv4Addr,
    /// Its namespace.
    pub ns: Ns,
    /// The `weftd` control socket, once started.
    pub socket: Option<PathBuf>,
    /// The log label of its `weftd` (see [`Lab::log`]).
    pub label: String,
    proc: Option<ProcId>,
    kernel: bool,
}

/// A pod of the lab, configured from its plan.
#[derive(Clone, Debug)]
pub struct PodRun {
    /// The node it is on.
    pub node: String,
    /// Its namespace.
    pub ns: Ns,
    /// What it was configured with.
    pub plan: PodPlan,
    /// The VNI of the description it came from.
    pub vni: u32,
}

impl PodRun {
    /// Its IPv4 address as text.
    pub fn ip(&self) -> String {
        self.plan.ipv4.addr().to_string()
    }

    /// Its IPv6 address as text, if it has one.
    pub fn ip6(&self) -> Option<String> {
        self.plan.ipv6.map(|a| a.addr().to_string())
    }
}

/// A cluster in a lab: underlay, nodes, `weftd`s, pods. Everything goes when it drops.
pub struct ClusterLab {
    /// The lab that owns every namespace and process.
    pub lab: Lab,
    /// The underlay (the bridge and the node namespaces).
    pub underlay: Underlay,
    nodes: Vec<NodeRun>,
    pods: BTreeMap<String, PodRun>,
    echo: bool,
    /// Flags given to every `weftd` this lab starts after the matrix's
    /// ([`crate::node::matrix_flags`]), e.g. `--tunnel-gso=on` (later flags win).
    pub weftd_flags: Vec<String>,
    /// `txqueuelen=` for the pods' TAP ports that [`ClusterLab::install`] adds (`None`:
    /// the plan's ports as they are, the kernel's 1000).
    pub pod_txqueuelen: Option<u32>,
}

fn lab_err(what: impl std::fmt::Display) -> LabError {
    LabError(what.to_string())
}

impl ClusterLab {
    /// The lab, the underlay and one namespace per node of `cluster` (addresses must
    /// be in `198.18.0.0/24`; node `198.18.0.i` is host `i`). No `weftd` runs yet.
    pub fn new(cluster: &Cluster) -> Result<ClusterLab> {
        let mut lab = Lab::new()?;
        let switch = lab.netns("ul")?;
        switch.ip("link add br0 type bridge")?;
        switch.ip("link set br0 up")?;
        let mut underlay = Underlay {
            switch,
            nodes: Vec::new(),
        };
        let mut nodes = Vec::new();
        for n in cluster.nodes() {
            let o = n.address.octets();
            if o[..3] != [198, 18, 0] || o[3] == 0 || o[3] == 255 {
                return Err(lab_err(format!(
                    "node {}: address {} is not a host of 198.18.0.0/24",
                    n.name, n.address
                )));
            }
            let ns = underlay.host(&mut lab, &n.name, o[3])?;
            underlay.nodes.push(ns.clone());
            nodes.push(NodeRun {
                name: n.name.clone(),
                address: n.address,
                ns,
                socket: None,
                label: format!("weftd-{}", n.name),
                proc: None,
                kernel: false,
            });
        }
        Ok(ClusterLab {
            lab,
            underlay,
            nodes,
            pods: BTreeMap::new(),
            echo: false,
            weftd_flags: Vec::new(),
            pod_txqueuelen: None,
        })
    }

    /// Prints every step as the command it amounts to (for `weft-demo`).
    pub fn echo(&mut self, on: bool) {
        self.echo = on;
    }

    fn say(&self, line: &str) {
        if self.echo {
            println!("  $ {line}");
        }
    }

    /// The namespace prefix of this lab (`weft-<pid>-<n>-`).
    pub fn prefix(&self) -> String {
        let ul = self.underlay.switch.name();
        ul.strip_suffix("ul").unwrap_or(ul).to_string()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[NodeRun] {
        &self.nodes
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> &NodeRun {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_index(&self, name: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .ok_or_else(|| lab_err(format!("no node {name} in the lab")))
    }

    /// The pods configured so far, by name.
    pub fn pods(&self) -> &BTreeMap<String, PodRun> {
        &self.pods
    }

    /// The pod called `name`.
    pub fn pod(&self, name: &str) -> &PodRun {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The matrix's flags with the lab's own ([`ClusterLab::weftd_flags`]) in place of
    /// any of the same name (weftd takes each flag once).
    fn flags(&self) -> Vec<String> {
        let name = |f: &str| f.split('=').next().unwrap_or(f).to_string();
        let own: Vec<String> = self.weftd_flags.iter().map(|f| name(f)).collect();
        let mut v: Vec<String> = crate::node::matrix_flags()
            .into_iter()
            .filter(|f| !own.contains(&name(f)))
            .collect();
        v.extend(self.weftd_flags.iter().cloned());
        v
    }

    /// Starts `weftd` in node `name` with flags only, and waits until its control
    /// socket answers.
    pub fn start_weftd(&mut self, name: &str) -> Result<()> {
        let i = self.node_index(name)?;
        let dir = self.lab.dir().join(&self.nodes[i].label);
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("weftd.sock");
        let state = dir.join("state");
        let ns = self.nodes[i].ns.clone();
        let bin = weftd_binary();
        self.say(&format!(
            "ip netns exec {} {} --control {} --state-dir {} --metrics {METRICS_ADDR} &",
            ns.name(),
            bin.display(),
            sock.display(),
            state.display()
        ));
        let mut cmd = ns.command(&bin.display().to_string());
        cmd.arg("--control")
            .arg(&sock)
            .arg("--state-dir")
            .arg(&state)
            .arg("--metrics")
            .arg(METRICS_ADDR)
            .args(self.flags());
        cmd.env("RUST_LOG", crate::node::rust_log());
        let label = self.nodes[i].label.clone();
        let proc = self.lab.spawn(&label, cmd)?;
        self.nodes[i].proc = Some(proc);
        self.nodes[i].socket = Some(sock.clone());
        let start = Instant::now();
        loop {
            if Client::connect_with_timeout(&sock, Duration::from_secs(5)).is_ok() {
                return Ok(());
            }
            if !self.lab.is_running(proc) {
                return Err(lab_err(format!(
                    "weftd on {name} exited during start-up:\n{}",
                    self.lab.log(&label)
                )));
            }
            if start.elapsed() > READY {
                return Err(lab_err(format!(
                    "weftd on {name} not answering on {} after {READY:?}:\n{}",
                    sock.display(),
                    self.lab.log(&label)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `weftd` on every node that has none and is not a kernel node.
    pub fn start_all(&mut self) -> Result<()> {
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.proc.is_none() && !n.kernel)
            .map(|n| n.name.clone())
            .collect();
        for n in names {
            self.start_weftd(&n)?;
        }
        Ok(())
    }

    /// Whether node `name`'s `weftd` is still running.
    pub fn weftd_running(&mut self, name: &str) -> bool {
        let Ok(i) = self.node_index(name) else {
            return false;
        };
        self.nodes[i].proc.is_some_and(|p| self.lab.is_running(p))
    }

    /// The process id of node `name`'s `weftd`, while it runs.
    pub fn weftd_pid(&self, name: &str) -> Option<u32> {
        let i = self.node_index(name).ok()?;
        self.lab.pid(self.nodes[i].proc?)
    }

    /// A control connection to node `name`'s `weftd`.
    pub fn client(&self, name: &str) -> Result<Client> {
        let sock = self
            .node(name)
            .socket
            .clone()
            .ok_or_else(|| lab_err(format!("no weftd on {name}")))?;
        Client::connect(&sock).map_err(|e| lab_err(format!("node {name}: {e}")))
    }

    /// The `weftctl -s SOCK` prefix for node `name` (for printing).
    pub fn weftctl_prefix(&self, name: &str) -> String {
        let sock = self
            .node(name)
            .socket
            .as_ref()
            .map(|s| s.display().to_string())
            .unwrap_or_default();
        format!("weftctl -s {sock}")
    }

    /// Scrapes node `name`'s metrics from inside its namespace.
    pub fn metrics(&self, name: &str) -> Result<Metrics> {
        let out = self.node(name).ns.run(&[
            &nettool_binary().display().to_string(),
            "http-get",
            "--to",
            METRICS_ADDR,
            "--path",
            "/metrics",
            "--timeout",
            "3",
        ])?;
        Metrics::parse(&out)
    }

    /// Each running `weftd`'s log, by node name.
    pub fn node_logs(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| {
                let name = n.label.strip_prefix("weftd-").unwrap_or(&n.label);
                (name.to_string(), self.lab.log(&n.label))
            })
            .collect()
    }

    /// Every `weftd`'s log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .filter(|n| n.proc.is_some())
            .map(|n| format!("--- {} ---\n{}", n.label, self.lab.log(&n.label)))
            .collect()
    }

    /// The namespace of a pod of the description, made on first use.
    fn pod_ns(&mut self, namespace: &str) -> Result<Ns> {
        if let Some(p) = self.pods.values().find(|p| {
            p.ns.name()
                .strip_prefix(&self.prefix())
                .is_some_and(|s| s == namespace)
        }) {
            return Ok(p.ns.clone());
        }
        let ns = self.lab.netns(namespace)?;
        self.say(&format!("ip netns add {}", ns.name()));
        Ok(ns)
    }

    /// Programs every node of `cluster` that runs a `weftd` from its plan (ports, then
    /// the flows as one bundle) and configures its pods. Kernel nodes are skipped (see
    /// [`ClusterLab::install_kernel_node`]).
    pub fn install(&mut self, cluster: &Cluster) -> Result<()> {
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.socket.is_some() && !n.kernel)
            .map(|n| n.name.clone())
            .collect();
        for n in names {
            let plan = cluster
                .plan(&n)
                .map_err(|e| lab_err(format!("plan of {n}: {e}")))?;
            self.install_plan(&n, &plan, cluster.vni())?;
        }
        Ok(())
    }

    /// Programs node `name` with `plan` (a node of a tenant with VNI `vni`).
    pub fn install_plan(&mut self, name: &str, plan: &NodePlan, vni: u32) -> Result<()> {
        let mut pod_ns = BTreeMap::new();
        for p in &plan.pods {
            let ns = self.pod_ns(&p.namespace)?;
            pod_ns.insert(p.namespace.clone(), ns);
        }
        let ctl = self.weftctl_prefix(name);
        let mut c = self.client(name)?;
        let existing = c
            .ports()
            .map_err(|e| lab_err(format!("node {name}: ports: {e}")))?
            .ports;
        for spec in &plan.ports {
            let mut spec: PortSpec = spec.clone();
            if let PortKind::Tap(t) = &mut spec.kind
                && let Some(n) = &t.netns
            {
                let ns = pod_ns
                    .get(n)
                    .ok_or_else(|| lab_err(format!("port {}: no pod in netns {n}", spec.name)))?;
                t.netns = Some(ns.name().to_string());
                if self.pod_txqueuelen.is_some() {
                    t.txqueuelen = self.pod_txqueuelen;
                }
            }
            if let Some(have) = existing.iter().find(|p| p.name == spec.name) {
                let mut same = have.spec.clone();
                same.ofport = spec.ofport;
                if same == spec {
                    self.say(&format!(
                        "# {name}: port {} is already there (shared with another tenant)",
                        spec.name
                    ));
                    continue;
                }
                return Err(lab_err(format!(
                    "node {name}: port {} exists as '{}', the plan wants '{spec}'",
                    spec.name, have.spec
                )));
            }
            self.say(&format!("{ctl} add-port {spec}"));
            c.add_port(spec.clone())
                .map_err(|e| lab_err(format!("node {name}: add-port {spec}: {e}")))?;
        }
        if self.echo {
            println!(
                "  $ {ctl} add-flows - <<EOF   # {} flows, one bundle",
                plan.flows.len()
            );
            for f in &plan.flows {
                println!("    {f}");
            }
            println!("    EOF");
        }
        let bundle = Bundle::new(
            plan.flows
                .iter()
                .map(|f| FlowMod::Add { flow: f.clone() })
                .collect(),
        );
        c.bundle(bundle).map_err(|e| {
            lab_err(format!(
                "node {name}: bundle of {} flows: {e}",
                plan.flows.len()
            ))
        })?;
        for p in &plan.pods {
            let ns = pod_ns[&p.namespace].clone();
            wait_link(&ns, &p.ifname, READY)?;
            self.configure_pod(&ns, p)?;
            self.pods.insert(
                p.name.clone(),
                PodRun {
                    node: name.to_string(),
                    ns,
                    plan: p.clone(),
                    vni,
                },
            );
        }
        Ok(())
    }

    /// Configures a pod's interface from its plan, as a CNI plugin would.
    fn configure_pod(&self, ns: &Ns, p: &PodPlan) -> Result<()> {
        let dev = &p.ifname;
        // weftd already set the MTU and MAC of a TAP (mtu=, mac=); this is the same
        // for a veth and harmless for a TAP.
        let mut cmds = vec![
            format!("link set {dev} address {}", p.mac),
            format!("link set {dev} mtu {}", p.mtu),
        ];
        cmds.extend(p.ip_commands());
        for c in cmds {
            self.say(&format!("ip -n {} {c}", ns.name()));
            ns.ip(&c)?;
        }
        Ok(())
    }

    /// Makes node `name` a Linux kernel VXLAN node of `cluster` (l2, VXLAN): a
    /// `vxlan<VNI>` device (`nolearning`, flooding to every peer node with an all-zero
    /// FDB entry, as Weave's fast datapath and flannel's l2 mode do) on a bridge, and
    /// each of its pods on a veth on that bridge, configured from its plan. For a node
    /// that talks to a Weft node: the VXLAN device computes inner checksums itself
    /// (see [`ClusterLab::install_kernel_node_with`]).
    pub fn install_kernel_node(&mut self, cluster: &Cluster, name: &str) -> Result<()> {
        self.install_kernel_node_with(cluster, name, false)
    }

    /// [`ClusterLab::install_kernel_node`], choosing whether the VXLAN device keeps its
    /// transmit checksum offload. Between two kernel nodes over veths it may (the inner
    /// checksum stays "partial" end to end and no stack ever checks it), and it must
    /// for a fair kernel baseline: that is how the reference figures were measured. A
    /// peer that reads the packets in userspace (Weft) needs it off, as flannel turns
    /// it off on flannel.1, or it gets inner TCP/UDP checksums that were never filled in.
    pub fn install_kernel_node_with(
        &mut self,
        cluster: &Cluster,
        name: &str,
        tx_checksum_offload: bool,
    ) -> Result<()> {
        if cluster.encap() != Encap::Vxlan || cluster.mode() != Mode::L2 {
            return Err(lab_err(format!(
                "a kernel node needs vxlan l2, not {} {}",
                cluster.encap(),
                cluster.mode()
            )));
        }
        let i = self.node_index(name)?;
        self.nodes[i].kernel = true;
        let ns = self.nodes[i].ns.clone();
        let vni = cluster.vni();
        let dev = format!("vxlan{vni}");
        let port = cluster.dst_port().unwrap_or(weft_flow::port::VXLAN_PORT);
        let me = self.nodes[i].address;
        let mut cmds = vec![
            format!(
                "link add {dev} type vxlan id {vni} dstport {port} local {me} dev ul0 nolearning"
            ),
            "link add br0 type bridge".to_string(),
            "link set br0 up".to_string(),
            format!("link set {dev} master br0 up"),
        ];
        let peers: Vec<Ipv4Addr> = cluster
            .nodes()
            .iter()
            .filter(|n| n.name != name)
            .map(|n| n.address)
            .collect();
        for c in cmds.drain(..) {
            self.say(&format!("ip -n {} {c}", ns.name()));
            ns.ip(&c)?;
        }
        // As flannel does for flannel.1: with checksum offload the kernel leaves the
        // inner TCP/UDP checksum to a NIC, and a veth underlay has none, so the peer
        // would get frames with unfinished checksums (ping works, TCP does not).
        if !tx_checksum_offload {
            let off = ["ethtool", "-K", &dev, "tx", "off"];
            self.say(&format!("ip netns exec {} {}", ns.name(), off.join(" ")));
            ns.run(&off)?;
        }
        for peer in peers {
            let args = [
                "fdb",
                "append",
                "00:00:00:00:00:00",
                "dev",
                &dev,
                "dst",
                &peer.to_string(),
            ];
            self.say(&format!("bridge -n {} {}", ns.name(), args.join(" ")));
            bridge(&ns, &args)?;
        }
        let pods: Vec<(PodPlan, u8)> = cluster
            .pods()
            .iter()
            .filter(|p| p.node == name)
            .zip(1u8..)
            .map(|(p, k)| {
                let mtu = cluster.mtu();
                let ipv4 = ipnet::Ipv4Net::new(p.address, cluster.pod_cidr().prefix_len())
                    .expect("prefix");
                let ipv6 = p
                    .address6
                    .zip(cluster.pod_cidr6())
                    .map(|(a, c)| ipnet::Ipv6Net::new(a, c.prefix_len()).expect("prefix"));
                (
                    PodPlan {
                        name: p.name.clone(),
                        namespace: p.namespace.clone(),
                        ifname: weftctl::cluster::POD_IFNAME.to_string(),
                        mac: p.mac(),
                        mtu,
                        ipv4,
                        ipv6,
                        routes: Vec::new(),
                        static_neighbors: Vec::new(),
                    },
                    k,
                )
            })
            .collect();
        for (p, k) in pods {
            let pns = self.pod_ns(&p.namespace)?;
            let host_if = format!("veth{k}");
            self.say(&format!(
                "ip -n {} link add {} type veth peer name {host_if} netns {}",
                pns.name(),
                p.ifname,
                ns.name()
            ));
            self.lab.veth(&pns, &p.ifname, &ns, &host_if)?;
            let c = format!("link set {host_if} master br0 up");
            self.say(&format!("ip -n {} {c}", ns.name()));
            ns.ip(&c)?;
            self.configure_pod(&pns, &p)?;
            self.pods.insert(
                p.name.clone(),
                PodRun {
                    node: name.to_string(),
                    ns: pns,
                    plan: p,
                    vni,
                },
            );
        }
        Ok(())
    }

    /// The lab's scratch directory (sockets, logs).
    pub fn dir(&self) -> &Path {
        self.lab.dir()
    }

    /// Drops everything and returns what was left behind: namespaces with this lab's
    /// prefix, and processes that still mention the lab's directory (its `weftd`s).
    /// Empty when the clean-up worked.
    pub fn teardown(self) -> Vec<String> {
        let prefix = self.prefix();
        let dir = self.lab.dir().display().to_string();
        drop(self);
        leftovers(&prefix, &dir)
    }
}

/// Namespaces named `prefix*` and processes whose command line contains `dir`.
pub fn leftovers(prefix: &str, dir: &str) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(o) = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
    {
        for l in String::from_utf8_lossy(&o.stdout).lines() {
            let name = l.split_whitespace().next().unwrap_or("");
            if name.starts_with(prefix) {
                left.push(format!("namespace {name}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(dir) {
                left.push(format!("process {pid}: {}", cmd.trim()));
            }
        }
    }
    left
}

fn bridge(ns: &Ns, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("bridge")
        .args(["-n", ns.name()])
        .args(args)
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(lab_err(format!(
            "in {}: bridge {} failed: {}",
            ns.name(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn wait_link(ns: &Ns, ifname: &str, timeout: Duration) -> Result<()> {
    crate::node::wait_for_link(ns, ifname, timeout).map(drop)
}

/// The neighbour entry of `ip` in `ns` (`ip neigh show IP`): its MAC, if any.
pub fn neighbour_mac(ns: &Ns, ip: &str) -> Option<String> {
    let fam = if ip.contains(':') { "-6 " } else { "" };
    let out = ns.ip(&format!("{fam}neigh show {ip}")).ok()?;
    let words: Vec<&str> = out.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "lladdr")
        .and_then(|i| words.get(i + 1))
        .map(|s| s.to_string())
}

/// Whether `ip` is an IPv6 address.
pub fn is_v6(ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|a| a.is_ipv6())
}
