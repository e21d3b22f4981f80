//! Cluster descriptions: a tenant's nodes and pods in a TOML file, and the ports and
//! flows that put that tenant on one node (`weftctl compile CLUSTER.toml --node N`).
//!
//! # What it is
//!
//! A [`Cluster`] is one tenant network: an encapsulation (VXLAN, Geneve or IP-in-IP),
//! a VNI, a forwarding [`Mode`], the pod address ranges, the nodes (underlay address
//! and pod subnet) and the pods (node, namespace, addresses). [`Cluster::from_toml`]
//! reads and validates it (every error is one line naming the item and its line in
//! the file); [`Cluster::plan`] turns it into what one node needs: the ports to add,
//! the flows to install, and what a CNI plugin would configure inside each pod
//! ([`PodPlan`]). Nothing here does I/O besides reading the file; `weftctl`, the
//! end-to-end tests and the demo apply the plan. The file format and the generated
//! pipeline are documented in `docs/cluster.md`.
//!
//! # The pipeline it generates (tables as in Antrea)
//!
//! - **0, classification and spoof guard**: a pod may send only from its own MAC and
//!   addresses (`in_port=POD,dl_src=MAC,ip,nw_src=IP`, the same for ARP and IPv6);
//!   such a packet gets the tenant's VNI in `tun_id` and, in l3 mode, the mark "from a
//!   local pod" in `reg0[0..3]` (2; "from a tunnel" is 1, as Antrea's `PacketSource`).
//!   Anything else from a pod is dropped by a per-pod flow (so spoofing attempts are
//!   counted per pod). Tunnel packets of the tenant enter by VNI and outer source.
//! - **10, ARP responder** (l3): ARP requests for the gateway, and proxy-style for any
//!   other address of `pod_cidr` but the asker's own, are answered with the gateway's
//!   MAC by rewriting the request into a reply (Antrea's flow; for an arbitrary target
//!   the requested address goes through `reg1` to become the reply's sender).
//! - **20, forwarding**: l3 routes by destination address (a local pod: MACs rewritten
//!   to gateway → pod and `dec_ttl`; another node's pod subnet: `tun_dst` = that node,
//!   only for packets from local pods, so a node never relays tunnel to tunnel); l2
//!   hands the frame to `normal` (MAC learning per VNI, split horizon).
//! - **30, output** (l3): by destination MAC to the pod's port, or to the tunnel for a
//!   peer node's gateway MAC.
//!
//! Every table used ends in an explicit `priority=0 ... actions=drop`, so drops show up
//! in that flow's counters. Every flow's cookie is the VNI (`del-flows cookie=VNI/-1`
//! removes the tenant) and every flow that another tenant could also install matches
//! `tun_id=VNI` or a port of this tenant, so two tenants, even with the same pod
//! addresses, can share a `weftd`. Tunnel ports are named independently of the VNI
//! (`tun0` in l3, `tun-<peer>` in l2) with identical specs in every tenant's plan.

//!
//! # Where it is
//!
//! This module holds the description's types, the plan's types and the errors;
//! `file` reads a description ([`Cluster::from_toml`], [`Cluster::from_file`]) and
//! `plan` generates one node's ports and flows ([`Cluster::plan`]).

mod file;
mod plan;

use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use weft_flow::port::{GENEVE_PORT, PortSpec, VXLAN_PORT};
use weft_flow::{Flow, MacAddr};

/// Table 0: classification and spoof guard.
pub const TABLE_CLASSIFIER: u8 = 0;
/// Table 10: the ARP responder (l3).
pub const TABLE_ARP: u8 = 10;
/// Table 20: L3 forwarding (l3) or the L2 switch (l2).
pub const TABLE_FORWARD: u8 = 20;
/// Table 30: output by destination MAC (l3).
pub const TABLE_OUTPUT: u8 = 30;
/// The name of the pod's interface inside its namespace.
pub const POD_IFNAME: &str = "eth0";
/// The name of the node-to-node tunnel port in l3 mode.
pub const L3_TUNNEL: &str = "tun0";
/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// `reg0[0..3]` value of a packet from a tunnel.
const FROM_TUNNEL: u32 = 1;
/// `reg0[0..3]` value of a packet from a local pod.
const FROM_POD: u32 = 2;
/// `reg0[0..4]` value of a packet from the node through its gateway port: a local
/// source like a pod (`reg0[0..3]` = [`FROM_POD`]) with bit 4 set, so that it goes to
/// local pods and through the tunnel but is never sent back to the node.
const FROM_GATEWAY: u32 = 0x10 | FROM_POD;

/// The encapsulation between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encap {
    /// VXLAN (RFC 7348), UDP 4789 by default.
    Vxlan,
    /// Geneve (RFC 8926), UDP 6081 by default.
    Geneve,
    /// IP-in-IP (RFC 2003): carries IP only, and no VNI.
    Ipip,
}

impl Encap {
    /// The `type=` of the tunnel port.
    pub fn as_str(self) -> &'static str {
        match self {
            Encap::Vxlan => "vxlan",
            Encap::Geneve => "geneve",
            Encap::Ipip => "ipip",
        }
    }

    /// Bytes the encapsulation adds in front of an inner IP packet on the underlay
    /// (outer IPv4 + UDP + tunnel header + inner Ethernet, or just the outer IPv4).
    pub fn overhead(self) -> u16 {
        match self {
            Encap::Vxlan | Encap::Geneve => 50,
            Encap::Ipip => 20,
        }
    }

    /// The default UDP destination port (none for IP-in-IP).
    pub fn default_port(self) -> Option<u16> {
        match self {
            Encap::Vxlan => Some(VXLAN_PORT),
            Encap::Geneve => Some(GENEVE_PORT),
            Encap::Ipip => None,
        }
    }
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How pods are connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Routed (flannel, Antrea, Calico style): each node's pods sit behind the node's
    /// gateway address; flows answer ARP and route by IP.
    L3,
    /// One flat Ethernet segment per VNI (Weave style), switched by `normal`.
    L2,
}

impl Mode {
    /// `l3` or `l2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L3 => "l3",
            Mode::L2 => "l2",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// Underlay address (tunnel endpoint).
    pub address: Ipv4Addr,
    /// The node's IPv4 pod subnet; its first address is the gateway.
    pub pod_subnet: Ipv4Net,
    /// The node's IPv6 pod subnet, if any; its `::1` is the gateway.
    pub pod_subnet6: Option<Ipv6Net>,
}

impl Node {
    /// The gateway address: the first address of the pod subnet (`.1`).
    pub fn gateway(&self) -> Ipv4Addr {
        first_v4(self.pod_subnet)
    }

    /// The IPv6 gateway address (`::1` of the subnet).
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.pod_subnet6.map(first_v6)
    }

    /// The gateway's MAC: `0a:58:` + the gateway's IPv4 bytes.
    pub fn gateway_mac(&self) -> MacAddr {
        mac_of(self.gateway())
    }
}

/// A pod of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Pod {
    /// Unique name; also the name of its TAP port.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its network namespace (`/var/run/netns/NAME`), where the TAP is created.
    pub namespace: String,
    /// IPv4 address.
    pub address: Ipv4Addr,
    /// IPv6 address, if any.
    pub address6: Option<Ipv6Addr>,
}

impl Pod {
    /// The pod's MAC: `0a:58:` + its IPv4 bytes (Kubernetes' convention).
    pub fn mac(&self) -> MacAddr {
        mac_of(self.address)
    }
}

/// `0a:58:` followed by the four bytes of `ip`.
pub fn mac_of(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

fn first_v4(n: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))
}

fn first_v6(n: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(n.network()).wrapping_add(1))
}

/// A validated cluster description. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cluster {
    encap: Encap,
    vni: u32,
    dst_port: Option<u16>,
    mode: Mode,
    mtu: u16,
    pod_cidr: Ipv4Net,
    pod_cidr6: Option<Ipv6Net>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    /// The cookie of every generated flow (the VNI for a description file).
    cookie: u64,
    /// The node's gateway port and its device's name (l3;
    /// [`Cluster::with_gateway_port`]), if any. With it, the tunnel port is there even
    /// while the node has no peers (they come and go; the port stays).
    gateway_port: Option<(String, String)>,
}

/// A cluster given as values rather than a file: what `weft-agent` reads from etcd.
/// Always l3 (routed) and IPv4, the shape of flannel's and Antrea's overlays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The encapsulation.
    pub encap: Encap,
    /// The VNI (ignored by IP-in-IP, still the tenant's tag in the flows).
    pub vni: u32,
    /// The UDP port of the tunnels; `None`: the encapsulation's default.
    pub dst_port: Option<u16>,
    /// The pods' MTU.
    pub mtu: u16,
    /// The IPv4 range of all pods.
    pub pod_cidr: Ipv4Net,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The pods.
    pub pods: Vec<Pod>,
}

/// The MAC the gateway port's ARP requests are answered with (host → pod): the node
/// routes through weftd's virtual router and never sees its own MAC answered back.
pub const ROUTER_MAC: MacAddr = MacAddr([0x0a, 0x58, 0, 0, 0, 1]);

/// What one node needs: ports, flows, and the configuration inside each local pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodePlan {
    /// The ports to add (`weftctl add-port`): each local pod's TAP, then the tunnels.
    pub ports: Vec<PortSpec>,
    /// The flows to install (`weftctl add-flows`), cookie = VNI.
    pub flows: Vec<Flow>,
    /// Each local pod's interface configuration.
    pub pods: Vec<PodPlan>,
}

/// Everything a CNI plugin would configure inside one pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodPlan {
    /// The pod (and its TAP port's) name.
    pub name: String,
    /// Its network namespace.
    pub namespace: String,
    /// The interface name inside the namespace ([`POD_IFNAME`]).
    pub ifname: String,
    /// The interface's MAC (set by `weftd` through the port's `mac=`).
    pub mac: MacAddr,
    /// The interface's MTU (set by `weftd` through the port's `mtu=`).
    pub mtu: u16,
    /// IPv4 address and prefix: the node's subnet (l3) or `pod_cidr`'s (l2).
    pub ipv4: Ipv4Net,
    /// IPv6 address and prefix: `/128` behind the gateway (l3) or `pod_cidr6`'s (l2).
    pub ipv6: Option<Ipv6Net>,
    /// Routes, in order: destination and gateway (`None`: on-link, `dev` only).
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
    /// Permanent neighbour entries (the IPv6 gateway in l3: nothing answers ND).
    pub static_neighbors: Vec<(IpAddr, MacAddr)>,
}

impl PodPlan {
    /// The configuration as `ip` command arguments, to run inside the namespace
    /// (`ip -n NS ARGS...`), in order. IPv6 addresses are added `nodad`: no neighbour
    /// answers duplicate address detection in l3, and in l2 it only delays the address.
    pub fn ip_commands(&self) -> Vec<String> {
        let dev = &self.ifname;
        let mut v = vec![
            format!("link set {dev} up"),
            format!("addr add {} dev {dev}", self.ipv4),
        ];
        if let Some(a) = self.ipv6 {
            v.push(format!("-6 addr add {a} dev {dev} nodad"));
        }
        for (ip, mac) in &self.static_neighbors {
            let fam = if ip.is_ipv6() { "-6 " } else { "" };
            v.push(format!(
                "{fam}neigh replace {ip} lladdr {mac} dev {dev} nud permanent"
            ));
        }
        for (dst, via) in &self.routes {
            let fam = if dst.addr().is_ipv6() { "-6 " } else { "" };
            match via {
                Some(gw) => v.push(format!("{fam}route add {dst} via {gw} dev {dev}")),
                None => v.push(format!("{fam}route add {dst} dev {dev}")),
            }
        }
        v
    }
}

impl NodePlan {
    /// The flows, one per line in canonical ovs-ofctl syntax: a flows file for
    /// `weftctl add-flows`.
    pub fn flows_text(&self) -> String {
        let mut s = String::new();
        for f in &self.flows {
            let _ = writeln!(s, "{f}");
        }
        s
    }

    /// The ports as `add-port NAME type=... ...` lines (the `weftctl` command words).
    pub fn ports_text(&self) -> String {
        let mut s = String::new();
        for p in &self.ports {
            let _ = writeln!(s, "add-port {p}");
        }
        s
    }

    /// Everything as text: the `add-port` lines, each pod's `ip` commands as comments,
    /// then the flows.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# ports: weftctl add-port ...\n");
        s.push_str(&self.ports_text());
        for p in &self.pods {
            let _ = writeln!(s, "# pod {}: ip -n {} ...", p.name, p.namespace);
            for c in p.ip_commands() {
                let _ = writeln!(s, "#   ip -n {} {c}", p.namespace);
            }
        }
        s.push_str("# flows: weftctl add-flows -\n");
        s.push_str(&self.flows_text());
        s
    }
}

/// Why a cluster description was refused, or a plan could not be made. One line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Something wrong at a line of the description.
    #[error("{}line {line}: {message}", file_prefix(.file))]
    At {
        /// The file, when read with [`Cluster::from_file`].
        file: Option<PathBuf>,
        /// 1-based line.
        line: usize,
        /// What is wrong, naming the item.
        message: String,
    },
    /// The file could not be read.
    #[error("{}: {message}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// [`Cluster::plan`] for a node the description does not have.
    #[error("no node '{name}' in the cluster (nodes: {known})")]
    UnknownNode {
        /// The name asked for.
        name: String,
        /// The nodes there are, comma-separated.
        known: String,
    },
    /// A [`ClusterSpec`] that does not hold together (one line naming the item).
    #[error("{0}")]
    Invalid(String),
    /// A generated flow did not parse (a bug of this module).
    #[error("internal error: generated flow does not parse: {0}")]
    Internal(String),
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    match file {
        Some(f) => format!("{} ", f.display()),
        None => String::new(),
    }
}

impl ClusterError {
    /// The line of the description the error is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ClusterError::At { line, .. } => Some(*line),
            _ => None,
        }
    }
}

impl Cluster {
    /// A cluster from values (see [`ClusterSpec`]), checked as a description file is:
    /// the VNI fits, every node's subnet lies in the pod CIDR and no two overlap,
    /// names are unique and valid port names, every pod is on a known node, inside
    /// its subnet, and not its gateway.
    pub fn new(spec: ClusterSpec) -> Result<Cluster, ClusterError> {
        let bad = |m: String| Err(ClusterError::Invalid(m));
        if spec.vni > MAX_VNI {
            return bad(format!("vni {} is larger than {MAX_VNI}", spec.vni));
        }
        if spec.mtu < 68 {
            return bad(format!("mtu {} is smaller than 68", spec.mtu));
        }
        let mut nodes: Vec<&Node> = Vec::with_capacity(spec.nodes.len());
        for n in &spec.nodes {
            if !spec.pod_cidr.contains(&n.pod_subnet) {
                return bad(format!(
                    "node '{}': subnet {} is outside the pod CIDR {}",
                    n.name, n.pod_subnet, spec.pod_cidr
                ));
            }
            if let Some(o) = nodes.iter().find(|o| o.name == n.name) {
                return bad(format!("node '{}' appears twice", o.name));
            }
            if let Some(o) = nodes.iter().find(|o| {
                o.pod_subnet.contains(&n.pod_subnet) || n.pod_subnet.contains(&o.pod_subnet)
            }) {
                return bad(format!(
                    "node '{}': subnet {} overlaps node '{}''s {}",
                    n.name, n.pod_subnet, o.name, o.pod_subnet
                ));
            }
            nodes.push(n);
        }
        let mut seen = std::collections::HashSet::new();
        for p in &spec.pods {
            weft_flow::port::validate_name(&p.name)
                .map_err(|e| ClusterError::Invalid(format!("pod '{}': {e}", p.name)))?;
            if !seen.insert(p.name.as_str()) {
                return bad(format!("pod '{}' appears twice", p.name));
            }
            let Some(n) = nodes.iter().find(|n| n.name == p.node) else {
                return bad(format!("pod '{}': no node '{}'", p.name, p.node));
            };
            if !n.pod_subnet.contains(&p.address) || p.address == n.gateway() {
                return bad(format!(
                    "pod '{}': address {} is not a pod address of node '{}''s subnet {}",
                    p.name, p.address, n.name, n.pod_subnet
                ));
            }
        }
        Ok(Cluster {
            encap: spec.encap,
            vni: spec.vni,
            dst_port: spec.dst_port,
            mode: Mode::L3,
            mtu: spec.mtu,
            pod_cidr: spec.pod_cidr,
            pod_cidr6: None,
            nodes: spec.nodes,
            pods: spec.pods,
            cookie: u64::from(spec.vni),
            gateway_port: None,
        })
    }

    /// Every generated flow gets this cookie instead of the VNI (`weft-agent` uses its
    /// own, so that it replaces only its flows).
    pub fn with_cookie(mut self, cookie: u64) -> Cluster {
        self.cookie = cookie;
        self
    }

    /// In l3 mode, the plan includes the node's gateway port: a TAP named `port` in the
    /// node's own namespace (device `ifname`) with the gateway MAC, through which the
    /// node reaches its own pods and every remote pod, and pods reach the node and
    /// whatever the node routes (see the module docs).
    pub fn with_gateway_port(mut self, port: &str, ifname: &str) -> Cluster {
        self.gateway_port = Some((port.to_string(), ifname.to_string()));
        self
    }

    /// The cookie of the generated flows.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }

    /// The encapsulation.
    pub fn encap(&self) -> Encap {
        self.encap
    }

    /// The VNI (also the cookie of every flow of the tenant).
    pub fn vni(&self) -> u32 {
        self.vni
    }

    /// The UDP destination port of the tunnels (VXLAN and Geneve; default included).
    pub fn dst_port(&self) -> Option<u16> {
        self.dst_port.or(self.encap.default_port())
    }

    /// The forwarding mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The pods' MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The IPv4 range of all pods.
    pub fn pod_cidr(&self) -> Ipv4Net {
        self.pod_cidr
    }

    /// The IPv6 range of all pods, if any.
    pub fn pod_cidr6(&self) -> Option<Ipv6Net> {
        self.pod_cidr6
    }

    /// The nodes (name, underlay address, pod subnets), in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The pods, in file order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The node with this name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The pod with this name.
    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of docs/cluster.md, l3 over VXLAN, IPv4 and IPv6.
    pub(crate) const L3: &str = r#"
[cluster]
encap = "vxlan"
vni = 100
mode = "l3"
pod_cidr = "198.19.0.0/16"
pod_cidr6 = "2001:2::/48"

[[node]]
name = "n1"
address = "198.18.0.1"
pod_subnet = "198.19.1.0/24"
pod_subnet6 = "2001:2:0:1::/64"

[[node]]
name = "n2"
address = "198.18.0.2"
pod_subnet = "198.19.2.0/24"
pod_subnet6 = "2001:2:0:2::/64"

[[pod]]
name = "a1"
node = "n1"
address = "198.19.1.2"
address6 = "2001:2:0:1::2"

[[pod]]
name = "a2"
node = "n1"
namespace = "ns-a2"
address = "198.19.1.3"

[[pod]]
name = "a3"
node = "n2"
address = "198.19.2.2"
address6 = "2001:2:0:2::2"
"#;

    /// [`L3`] with another encapsulation and mode.
    pub(crate) fn with(encap: &str, mode: &str) -> String {
        L3.replace("encap = \"vxlan\"", &format!("encap = \"{encap}\""))
            .replace("mode = \"l3\"", &format!("mode = \"{mode}\""))
    }

    #[test]
    fn parses_with_defaults_and_accessors() {
        let c = Cluster::from_toml(L3).unwrap();
        assert_eq!(c.encap(), Encap::Vxlan);
        assert_eq!(c.mode(), Mode::L3);
        assert_eq!(c.vni(), 100);
        assert_eq!(c.mtu(), 1450);
        assert_eq!(c.dst_port(), Some(4789));
        assert_eq!(c.nodes().len(), 2);
        assert_eq!(c.nodes()[1].address, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(c.pods().len(), 3);
        assert_eq!(c.pod("a1").unwrap().namespace, "a1");
        assert_eq!(c.pod("a2").unwrap().namespace, "ns-a2");
        assert_eq!(c.pod("a1").unwrap().mac().to_string(), "0a:58:c6:13:01:02");
        assert_eq!(c.nodes()[0].gateway_mac().to_string(), "0a:58:c6:13:01:01");
        let ipip = Cluster::from_toml(&with("ipip", "l3")).unwrap();
        assert_eq!(ipip.mtu(), 1480);
        assert_eq!(ipip.dst_port(), None);
        let g = Cluster::from_toml(&with("geneve", "l2")).unwrap();
        assert_eq!((g.mtu(), g.dst_port()), (1450, Some(6081)));
    }
}
