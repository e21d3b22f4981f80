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

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use weft_flow::port::{GENEVE_PORT, PortSpec, VXLAN_PORT, validate_name};
use weft_flow::{Flow, MacAddr, line_at, one_line, parse_flow};

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
}

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

// ------------------------------------------------------------------ the file

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: Spanned<RawCluster>,
    #[serde(default)]
    node: Vec<Spanned<RawNode>>,
    #[serde(default)]
    pod: Vec<Spanned<RawPod>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    encap: Spanned<String>,
    vni: Spanned<i64>,
    dst_port: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    mtu: Option<Spanned<i64>>,
    pod_cidr: Spanned<String>,
    pod_cidr6: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    address: Spanned<String>,
    pod_subnet: Spanned<String>,
    pod_subnet6: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPod {
    name: Spanned<String>,
    node: Spanned<String>,
    namespace: Option<Spanned<String>>,
    address: Spanned<String>,
    address6: Option<Spanned<String>>,
}

/// The text being read, for errors.
struct Src<'a> {
    text: &'a str,
    file: Option<&'a Path>,
}

impl Src<'_> {
    fn line(&self, offset: usize) -> usize {
        line_at(self.text.as_bytes(), offset)
    }

    fn at(&self, span: Range<usize>, message: String) -> ClusterError {
        ClusterError::At {
            file: self.file.map(Path::to_path_buf),
            line: self.line(span.start),
            message,
        }
    }

    fn parse<T: std::str::FromStr>(
        &self,
        v: &Spanned<String>,
        what: &str,
        key: &str,
        expected: &str,
    ) -> Result<T, ClusterError> {
        v.get_ref().parse().map_err(|_| {
            self.at(
                v.span(),
                format!(
                    "{what}bad value '{}' for {key}: expected {expected}",
                    v.get_ref()
                ),
            )
        })
    }

    fn net4(&self, v: &Spanned<String>, what: &str, key: &str) -> Result<Ipv4Net, ClusterError> {
        let n: Ipv4Net = self.parse(v, what, key, "an IPv4 prefix like 198.19.0.0/16")?;
        if n.trunc() != n {
            return Err(self.at(
                v.span(),
                format!(
                    "{what}{key} {n} has host bits set (did you mean {}?)",
                    n.trunc()
                ),
            ));
        }
        Ok(n)
    }

    fn net6(&self, v: &Spanned<String>, what: &str, key: &str) -> Result<Ipv6Net, ClusterError> {
        let n: Ipv6Net = self.parse(v, what, key, "an IPv6 prefix like 2001:2::/48")?;
        if n.trunc() != n {
            return Err(self.at(
                v.span(),
                format!(
                    "{what}{key} {n} has host bits set (did you mean {}?)",
                    n.trunc()
                ),
            ));
        }
        Ok(n)
    }
}

impl Cluster {
    /// Reads and validates a description (see `docs/cluster.md`). Errors name the line.
    pub fn from_toml(text: &str) -> Result<Cluster, ClusterError> {
        Cluster::parse(text, None)
    }

    /// Reads a description from a file; errors name the file and the line.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Cluster, ClusterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::Read {
            path: path.to_path_buf(),
            message: weft_proto::client::io_text(&e),
        })?;
        Cluster::parse(&text, Some(path))
    }

    fn parse(text: &str, file: Option<&Path>) -> Result<Cluster, ClusterError> {
        let src = Src { text, file };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| src.line(s.start));
            ClusterError::At {
                file: file.map(Path::to_path_buf),
                line,
                message: one_line(e.message()),
            }
        })?;
        let c = raw.cluster.get_ref();
        let what = "cluster: ";
        let encap = match c.encap.get_ref().as_str() {
            "vxlan" => Encap::Vxlan,
            "geneve" => Encap::Geneve,
            "ipip" => Encap::Ipip,
            other => {
                return Err(src.at(
                    c.encap.span(),
                    format!("{what}bad value '{other}' for encap: expected vxlan, geneve or ipip"),
                ));
            }
        };
        let mode = match c.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("l3", _)) => Mode::L3,
            Some(("l2", span)) => {
                if encap == Encap::Ipip {
                    return Err(src.at(
                        span,
                        format!("{what}mode l2 needs vxlan or geneve: IP-in-IP carries IP packets, not Ethernet frames"),
                    ));
                }
                Mode::L2
            }
            Some((other, span)) => {
                return Err(src.at(
                    span,
                    format!("{what}bad value '{other}' for mode: expected l3 or l2"),
                ));
            }
        };
        let vni = *c.vni.get_ref();
        if !(1..=i64::from(MAX_VNI)).contains(&vni) {
            return Err(src.at(
                c.vni.span(),
                format!("{what}vni {vni} is out of range: expected 1 to {MAX_VNI} (24 bits; 0 is what untunnelled packets carry)"),
            ));
        }
        let vni = vni as u32;
        let dst_port = match &c.dst_port {
            None => None,
            Some(p) => {
                if encap == Encap::Ipip {
                    return Err(src.at(
                        p.span(),
                        format!("{what}dst_port does not apply to ipip (IP protocol 4, no UDP)"),
                    ));
                }
                let n = u16::try_from(*p.get_ref())
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| {
                        src.at(
                            p.span(),
                            format!(
                                "{what}bad value '{}' for dst_port: expected a UDP port from 1 to 65535",
                                p.get_ref()
                            ),
                        )
                    })?;
                // The default spelled out is the default: plans of tenants that write it
                // and of tenants that do not give identical tunnel ports.
                (Some(n) != encap.default_port()).then_some(n)
            }
        };
        let pod_cidr = src.net4(&c.pod_cidr, what, "pod_cidr")?;
        let pod_cidr6 = c
            .pod_cidr6
            .as_ref()
            .map(|v| src.net6(v, what, "pod_cidr6"))
            .transpose()?;
        let mtu = match &c.mtu {
            None => 1500 - encap.overhead(),
            Some(m) => {
                let min = if pod_cidr6.is_some() { 1280 } else { 68 };
                u16::try_from(*m.get_ref())
                    .ok()
                    .filter(|n| *n >= min && *n <= 65535 - encap.overhead())
                    .ok_or_else(|| {
                        src.at(
                            m.span(),
                            format!(
                                "{what}bad value '{}' for mtu: expected {min} to {}{}",
                                m.get_ref(),
                                65535 - encap.overhead(),
                                if min == 1280 {
                                    " (IPv6 needs at least 1280)"
                                } else {
                                    ""
                                }
                            ),
                        )
                    })?
            }
        };

        let mut nodes: Vec<Node> = Vec::with_capacity(raw.node.len());
        let mut node_lines: HashMap<String, usize> = HashMap::new();
        let mut underlay: HashMap<Ipv4Addr, String> = HashMap::new();
        for n in &raw.node {
            let r = n.get_ref();
            let name = r.name.get_ref().clone();
            let what = format!("node '{name}': ");
            let port_name = match mode {
                Mode::L3 => name.clone(),
                Mode::L2 => format!("tun-{name}"),
            };
            if let Err(e) = validate_name(&port_name) {
                let hint = if mode == Mode::L2 {
                    " (in l2 mode each peer's tunnel port is tun-<node>, so a node name has at most 11 characters)"
                } else {
                    ""
                };
                return Err(src.at(r.name.span(), format!("{what}{e}{hint}")));
            }
            if let Some(first) = node_lines.get(&name) {
                return Err(src.at(
                    r.name.span(),
                    format!("{what}declared twice (first at line {first})"),
                ));
            }
            node_lines.insert(name.clone(), src.line(r.name.span().start));
            let address: Ipv4Addr =
                src.parse(&r.address, &what, "address", "an IPv4 underlay address")?;
            if address.is_unspecified() || address.is_multicast() || address.is_broadcast() {
                return Err(src.at(
                    r.address.span(),
                    format!("{what}address {address} is not a unicast address"),
                ));
            }
            if let Some(other) = underlay.get(&address) {
                return Err(src.at(
                    r.address.span(),
                    format!("{what}address {address} is already node '{other}''s"),
                ));
            }
            underlay.insert(address, name.clone());
            let pod_subnet = src.net4(&r.pod_subnet, &what, "pod_subnet")?;
            if !pod_cidr.contains(&pod_subnet) {
                return Err(src.at(
                    r.pod_subnet.span(),
                    format!("{what}pod_subnet {pod_subnet} is outside pod_cidr {pod_cidr}"),
                ));
            }
            if pod_subnet.prefix_len() > 30 {
                return Err(src.at(
                    r.pod_subnet.span(),
                    format!("{what}pod_subnet {pod_subnet} is too small: a gateway and a pod need at least a /30"),
                ));
            }
            let pod_subnet6 = match &r.pod_subnet6 {
                None => None,
                Some(v) => {
                    let s = src.net6(v, &what, "pod_subnet6")?;
                    let Some(c6) = pod_cidr6 else {
                        return Err(src.at(
                            v.span(),
                            format!("{what}pod_subnet6 needs pod_cidr6 in [cluster]"),
                        ));
                    };
                    if !c6.contains(&s) {
                        return Err(src.at(
                            v.span(),
                            format!("{what}pod_subnet6 {s} is outside pod_cidr6 {c6}"),
                        ));
                    }
                    if s.prefix_len() > 126 {
                        return Err(src.at(
                            v.span(),
                            format!("{what}pod_subnet6 {s} is too small: a gateway and a pod need at least a /126"),
                        ));
                    }
                    Some(s)
                }
            };
            for other in &nodes {
                if other.pod_subnet.contains(&pod_subnet) || pod_subnet.contains(&other.pod_subnet)
                {
                    return Err(src.at(
                        r.pod_subnet.span(),
                        format!(
                            "{what}pod_subnet {pod_subnet} overlaps node '{}''s {}",
                            other.name, other.pod_subnet
                        ),
                    ));
                }
                if let (Some(a), Some(b), Some(v)) =
                    (pod_subnet6, other.pod_subnet6, &r.pod_subnet6)
                    && (a.contains(&b) || b.contains(&a))
                {
                    return Err(src.at(
                        v.span(),
                        format!("{what}pod_subnet6 {a} overlaps node '{}''s {b}", other.name),
                    ));
                }
            }
            nodes.push(Node {
                name,
                address,
                pod_subnet,
                pod_subnet6,
            });
        }

        let mut pods: Vec<Pod> = Vec::with_capacity(raw.pod.len());
        let mut pod_lines: HashMap<String, usize> = HashMap::new();
        let mut namespaces: HashMap<String, String> = HashMap::new();
        let mut addresses: HashMap<IpAddr, String> = HashMap::new();
        for p in &raw.pod {
            let r = p.get_ref();
            let name = r.name.get_ref().clone();
            let what = format!("pod '{name}': ");
            if let Err(e) = validate_name(&name) {
                return Err(src.at(
                    r.name.span(),
                    format!("{what}{e} (the pod's name is its TAP port's name)"),
                ));
            }
            if let Some(first) = pod_lines.get(&name) {
                return Err(src.at(
                    r.name.span(),
                    format!("{what}declared twice (first at line {first})"),
                ));
            }
            if name == L3_TUNNEL || (name.starts_with("tun-") && mode == Mode::L2) {
                return Err(src.at(
                    r.name.span(),
                    format!("{what}the name is reserved for tunnel ports"),
                ));
            }
            pod_lines.insert(name.clone(), src.line(r.name.span().start));
            let node_name = r.node.get_ref();
            let Some(node) = nodes.iter().find(|n| &n.name == node_name) else {
                let known: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                return Err(src.at(
                    r.node.span(),
                    format!(
                        "{what}unknown node '{node_name}' (nodes: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            };
            let (namespace, ns_span) = match &r.namespace {
                Some(ns) => (ns.get_ref().clone(), ns.span()),
                None => (name.clone(), r.name.span()),
            };
            if namespace.is_empty()
                || namespace.contains('/')
                || namespace == "."
                || namespace == ".."
                || namespace.contains(char::is_whitespace)
            {
                return Err(src.at(
                    ns_span,
                    format!("{what}bad value '{namespace}' for namespace: expected the name of a namespace in /var/run/netns"),
                ));
            }
            if let Some(other) = namespaces.get(&namespace) {
                return Err(src.at(
                    ns_span,
                    format!("{what}namespace '{namespace}' already holds pod '{other}' (each pod's interface is {POD_IFNAME})"),
                ));
            }
            namespaces.insert(namespace.clone(), name.clone());
            let address: Ipv4Addr = src.parse(&r.address, &what, "address", "an IPv4 address")?;
            let subnet = node.pod_subnet;
            if !subnet.contains(&address) {
                return Err(src.at(
                    r.address.span(),
                    format!(
                        "{what}address {address} is outside node '{}''s pod_subnet {subnet}",
                        node.name
                    ),
                ));
            }
            if address == node.gateway() {
                return Err(src.at(
                    r.address.span(),
                    format!(
                        "{what}address {address} is node '{}''s gateway (the first address of {subnet})",
                        node.name
                    ),
                ));
            }
            if address == subnet.network() || address == subnet.broadcast() {
                return Err(src.at(
                    r.address.span(),
                    format!(
                        "{what}address {address} is the network or broadcast address of {subnet}"
                    ),
                ));
            }
            if let Some(other) = addresses.get(&IpAddr::V4(address)) {
                return Err(src.at(
                    r.address.span(),
                    format!("{what}address {address} is already pod '{other}''s"),
                ));
            }
            addresses.insert(IpAddr::V4(address), name.clone());
            let address6 = match &r.address6 {
                None => None,
                Some(v) => {
                    let a: Ipv6Addr = src.parse(v, &what, "address6", "an IPv6 address")?;
                    let Some(s6) = node.pod_subnet6 else {
                        return Err(src.at(
                            v.span(),
                            format!("{what}address6 needs a pod_subnet6 on node '{}'", node.name),
                        ));
                    };
                    if !s6.contains(&a) {
                        return Err(src.at(
                            v.span(),
                            format!(
                                "{what}address6 {a} is outside node '{}''s pod_subnet6 {s6}",
                                node.name
                            ),
                        ));
                    }
                    if Some(a) == node.gateway6() {
                        return Err(src.at(
                            v.span(),
                            format!(
                                "{what}address6 {a} is node '{}''s gateway (::1 of {s6})",
                                node.name
                            ),
                        ));
                    }
                    if a == s6.network() {
                        return Err(src.at(
                            v.span(),
                            format!(
                                "{what}address6 {a} is the subnet-router anycast address of {s6}"
                            ),
                        ));
                    }
                    if let Some(other) = addresses.get(&IpAddr::V6(a)) {
                        return Err(src.at(
                            v.span(),
                            format!("{what}address6 {a} is already pod '{other}''s"),
                        ));
                    }
                    addresses.insert(IpAddr::V6(a), name.clone());
                    Some(a)
                }
            };
            pods.push(Pod {
                name,
                node: node.name.clone(),
                namespace,
                address,
                address6,
            });
        }
        Ok(Cluster {
            encap,
            vni,
            dst_port,
            mode,
            mtu,
            pod_cidr,
            pod_cidr6,
            nodes,
            pods,
        })
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

    /// The ports, flows and pod configuration of node `node`. See the module docs and
    /// `docs/cluster.md` for the pipeline.
    pub fn plan(&self, node: &str) -> Result<NodePlan, ClusterError> {
        let me = self.node(node).ok_or_else(|| ClusterError::UnknownNode {
            name: node.to_string(),
            known: self
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let local: Vec<&Pod> = self.pods.iter().filter(|p| p.node == me.name).collect();
        let peers: Vec<&Node> = self.nodes.iter().filter(|n| n.name != me.name).collect();
        let mut ports = Vec::new();
        for p in &local {
            let mtu = self.mtu.to_string();
            let mac = p.mac().to_string();
            // The tag scopes `normal`'s flooding to the tenant's own pods (l2), like an
            // OVS access port's VLAN tag; l3 never floods, the tag costs nothing there.
            ports.push(port(
                &p.name,
                &[
                    "type=tap",
                    &format!("netns={}", p.namespace),
                    &format!("ifname={POD_IFNAME}"),
                    &format!("mtu={mtu}"),
                    &format!("mac={mac}"),
                    &format!("tag={}", self.vni),
                ],
            )?);
        }
        let mut tunnel = |name: &str, remote: String| -> Result<(), ClusterError> {
            let mut args = vec![
                format!("type={}", self.encap),
                format!("local={}", me.address),
                format!("remote={remote}"),
            ];
            if self.encap != Encap::Ipip {
                args.push("key=flow".into());
            }
            if let Some(p) = self.dst_port {
                args.push(format!("dst_port={p}"));
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ports.push(port(name, &args)?);
            Ok(())
        };
        match self.mode {
            Mode::L3 if !peers.is_empty() => tunnel(L3_TUNNEL, "flow".into())?,
            Mode::L3 => {}
            Mode::L2 => {
                for n in &peers {
                    tunnel(&format!("tun-{}", n.name), n.address.to_string())?;
                }
            }
        }
        let mut f = Flows {
            vni: self.vni,
            text: Vec::new(),
        };
        match self.mode {
            Mode::L3 => self.l3_flows(&mut f, me, &local, &peers),
            Mode::L2 => self.l2_flows(&mut f, &local, &peers),
        }
        let flows = f
            .text
            .iter()
            .map(|t| parse_flow(t).map_err(|e| ClusterError::Internal(format!("{t}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let pods = local.iter().map(|p| self.pod_plan(me, p)).collect();
        Ok(NodePlan { ports, flows, pods })
    }

    fn pod_plan(&self, node: &Node, p: &Pod) -> PodPlan {
        let (ipv4, ipv6, routes, static_neighbors) = match self.mode {
            Mode::L3 => {
                let gw = node.gateway();
                let mut routes = vec![(IpNet::V4(self.pod_cidr), Some(IpAddr::V4(gw)))];
                let mut neigh = Vec::new();
                let mut v6 = None;
                if let (Some(a), Some(gw6), Some(c6)) =
                    (p.address6, node.gateway6(), self.pod_cidr6)
                {
                    // A /128 behind an on-link gateway whose neighbour entry is static:
                    // every IPv6 packet goes to the gateway, and no ND is ever needed.
                    v6 = Some(host6(a));
                    routes.push((IpNet::V6(host6(gw6)), None));
                    routes.push((IpNet::V6(c6), Some(IpAddr::V6(gw6))));
                    neigh.push((IpAddr::V6(gw6), node.gateway_mac()));
                }
                (
                    Ipv4Net::new(p.address, node.pod_subnet.prefix_len()).expect("prefix ≤ 32"),
                    v6,
                    routes,
                    neigh,
                )
            }
            Mode::L2 => (
                Ipv4Net::new(p.address, self.pod_cidr.prefix_len()).expect("prefix ≤ 32"),
                p.address6
                    .zip(self.pod_cidr6)
                    .map(|(a, c)| Ipv6Net::new(a, c.prefix_len()).expect("prefix ≤ 128")),
                Vec::new(),
                Vec::new(),
            ),
        };
        PodPlan {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            ifname: POD_IFNAME.into(),
            mac: p.mac(),
            mtu: self.mtu,
            ipv4,
            ipv6,
            routes,
            static_neighbors,
        }
    }

    /// The spoof guard of one pod in table 0: its own MAC and addresses continue to
    /// `arp_table` (ARP) or `ip_table` (IP) with the VNI set; anything else drops.
    fn spoof_guard(&self, f: &mut Flows, p: &Pod, arp_table: u8, mark: &str) {
        let (name, mac, ip, vni) = (&p.name, p.mac(), p.address, f.vni);
        let t0 = TABLE_CLASSIFIER;
        let ip_table = TABLE_FORWARD;
        f.add(
            t0,
            200,
            &format!("in_port={name},arp,dl_src={mac},arp_spa={ip},arp_sha={mac}"),
            &format!("set_field:{vni:#x}->tun_id,goto_table:{arp_table}"),
        );
        f.add(
            t0,
            200,
            &format!("in_port={name},ip,dl_src={mac},nw_src={ip}"),
            &format!("set_field:{vni:#x}->tun_id,{mark}goto_table:{ip_table}"),
        );
        if let Some(ip6) = p.address6 {
            let mut sources = vec![ip6.to_string()];
            if self.mode == Mode::L2 {
                // Neighbour discovery over the flat segment: link-local sources, and the
                // unspecified source of duplicate address detection.
                sources.push("fe80::/10".into());
                sources.push("::".into());
            }
            for s in sources {
                f.add(
                    t0,
                    200,
                    &format!("in_port={name},ipv6,dl_src={mac},ipv6_src={s}"),
                    &format!("set_field:{vni:#x}->tun_id,{mark}goto_table:{ip_table}"),
                );
            }
        }
        f.add(t0, 100, &format!("in_port={name}"), "drop");
    }

    fn l3_flows(&self, f: &mut Flows, me: &Node, local: &[&Pod], peers: &[&Node]) {
        let vni = f.vni;
        let tid = format!("tun_id={vni:#x}");
        let gw = me.gateway();
        let gw_mac = me.gateway_mac();
        let from_pod = format!("set_field:{FROM_POD:#x}/0xf->reg0,");
        // Table 0: pods, then tunnel packets of this tenant from known nodes.
        for p in local {
            self.spoof_guard(f, p, TABLE_ARP, &from_pod);
        }
        for n in peers {
            let from = n.address;
            match self.encap {
                // IP-in-IP has no VNI: the tunnel port and the outer source say which
                // tenant it is, so one node pair carries one IP-in-IP tenant.
                Encap::Ipip => f.add(
                    TABLE_CLASSIFIER,
                    100,
                    &format!("in_port={L3_TUNNEL},tun_src={from}"),
                    &format!(
                        "set_field:{vni:#x}->tun_id,set_field:{FROM_TUNNEL:#x}/0xf->reg0,goto_table:{TABLE_FORWARD}"
                    ),
                ),
                // By VNI, not by port: the datapath hands a datagram to the port whose
                // fixed remote= matches its source (another tenant's l2 tun-<peer>)
                // before the remote=flow port, so the same packet may arrive on either.
                Encap::Vxlan | Encap::Geneve => f.add(
                    TABLE_CLASSIFIER,
                    100,
                    &format!("{tid},tun_src={from}"),
                    &format!(
                        "set_field:{FROM_TUNNEL:#x}/0xf->reg0,goto_table:{TABLE_FORWARD}"
                    ),
                ),
            }
        }
        f.add(TABLE_CLASSIFIER, 0, "", "drop");

        // Table 10: the ARP responder.
        let reply_head = format!(
            "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:{gw_mac}->eth_src,\
             load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
             set_field:{gw_mac}->arp_sha"
        );
        for p in local {
            // A pod asking for its own address (gratuitous ARP) gets no answer.
            f.add(
                TABLE_ARP,
                210,
                &format!("arp,{tid},arp_op=1,arp_spa={0},arp_tpa={0}", p.address),
                "drop",
            );
        }
        f.add(
            TABLE_ARP,
            200,
            &format!("arp,{tid},arp_op=1,arp_tpa={gw}"),
            &format!(
                "{reply_head},move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],set_field:{gw}->arp_spa,in_port"
            ),
        );
        f.add(
            TABLE_ARP,
            100,
            &format!("arp,{tid},arp_op=1,arp_tpa={}", self.pod_cidr),
            &format!(
                "{reply_head},move:NXM_OF_ARP_TPA[]->NXM_NX_REG1[],\
                 move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],move:NXM_NX_REG1[]->NXM_OF_ARP_SPA[],in_port"
            ),
        );
        f.add(TABLE_ARP, 0, &tid, "drop");

        // Table 20: L3 forwarding.
        let out = TABLE_OUTPUT;
        for p in local {
            let deliver = format!(
                "set_field:{gw_mac}->eth_src,set_field:{}->eth_dst,dec_ttl,goto_table:{out}",
                p.mac()
            );
            f.add(
                TABLE_FORWARD,
                200,
                &format!("ip,{tid},nw_dst={}", p.address),
                &deliver,
            );
            if let Some(a) = p.address6 {
                f.add(
                    TABLE_FORWARD,
                    200,
                    &format!("ipv6,{tid},ipv6_dst={a}"),
                    &deliver,
                );
            }
        }
        let pod_only = format!("reg0={FROM_POD:#x}/0xf");
        for n in peers {
            let to = format!(
                "set_field:{gw_mac}->eth_src,set_field:{}->eth_dst,set_field:{}->tun_dst,dec_ttl,goto_table:{out}",
                n.gateway_mac(),
                n.address
            );
            f.add(
                TABLE_FORWARD,
                100,
                &format!("ip,{pod_only},{tid},nw_dst={}", n.pod_subnet),
                &to,
            );
            if let (Some(s6), Some(_)) = (n.pod_subnet6, me.pod_subnet6) {
                f.add(
                    TABLE_FORWARD,
                    100,
                    &format!("ipv6,{pod_only},{tid},ipv6_dst={s6}"),
                    &to,
                );
            }
        }
        f.add(TABLE_FORWARD, 0, &tid, "drop");

        // Table 30: output by destination MAC.
        for p in local {
            f.add(
                TABLE_OUTPUT,
                200,
                &format!("{tid},dl_dst={}", p.mac()),
                &format!("output:{}", p.name),
            );
        }
        for n in peers {
            f.add(
                TABLE_OUTPUT,
                200,
                &format!("{tid},dl_dst={}", n.gateway_mac()),
                &format!("output:{L3_TUNNEL}"),
            );
        }
        f.add(TABLE_OUTPUT, 0, &tid, "drop");
    }

    fn l2_flows(&self, f: &mut Flows, local: &[&Pod], peers: &[&Node]) {
        let tid = format!("tun_id={:#x}", f.vni);
        for p in local {
            self.spoof_guard(f, p, TABLE_FORWARD, "");
        }
        for n in peers {
            f.add(
                TABLE_CLASSIFIER,
                100,
                &format!("in_port=tun-{},{tid}", n.name),
                &format!("goto_table:{TABLE_FORWARD}"),
            );
        }
        f.add(TABLE_CLASSIFIER, 0, "", "drop");
        // Every packet that reaches table 20 carries the tenant's VNI, so this is the
        // tenant's whole table: no miss flow is needed behind it.
        f.add(TABLE_FORWARD, 100, &tid, "normal");
    }
}

fn host6(a: Ipv6Addr) -> Ipv6Net {
    Ipv6Net::new(a, 128).expect("128 is a valid prefix")
}

fn port(name: &str, args: &[&str]) -> Result<PortSpec, ClusterError> {
    PortSpec::parse(name, args).map_err(|e| ClusterError::Internal(format!("port {name}: {e}")))
}

/// Flows being generated, as text (parsed at the end, so what is installed is exactly
/// what the text form says).
struct Flows {
    vni: u32,
    text: Vec<String>,
}

impl Flows {
    fn add(&mut self, table: u8, priority: u16, matches: &str, actions: &str) {
        let sep = if matches.is_empty() { "" } else { "," };
        self.text.push(format!(
            "cookie={:#x},table={table},priority={priority}{sep}{matches} actions={actions}",
            self.vni
        ));
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

    fn with(encap: &str, mode: &str) -> String {
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

    fn err(text: &str) -> (usize, String) {
        let e = Cluster::from_toml(text).unwrap_err();
        let s = e.to_string();
        assert!(!s.contains('\n'), "one line: {s}");
        (e.line().unwrap_or_else(|| panic!("no line: {s}")), s)
    }

    /// Replaces `from` by `to` and expects an error at the line of `to` that contains
    /// every piece of `says`.
    fn refused(from: &str, to: &str, says: &[&str]) {
        assert!(L3.contains(from), "{from}");
        let text = L3.replacen(from, to, 1);
        let want = L3[..L3.find(from).unwrap()].matches('\n').count() + 1;
        let (line, msg) = err(&text);
        assert_eq!(line, want, "{msg}");
        for s in says {
            assert!(msg.contains(s), "'{msg}' should say '{s}'");
        }
    }

    #[test]
    fn every_error_names_its_item_and_line() {
        refused(
            "mode = \"l3\"",
            "colour = \"blue\"",
            &["unknown field 'colour'"],
        );
        refused(
            "address6 = \"2001:2:0:1::2\"",
            "adress6 = \"2001:2:0:1::2\"",
            &["unknown field 'adress6'"],
        );
        refused(
            "address = \"198.19.1.3\"",
            "address = \"198.19.2.3\"",
            &["pod 'a2'", "outside node 'n1''s pod_subnet 198.19.1.0/24"],
        );
        refused(
            "address = \"198.19.1.3\"",
            "address = \"198.19.1.2\"",
            &["pod 'a2'", "already pod 'a1''s"],
        );
        refused(
            "name = \"a2\"",
            "name = \"a1\"",
            &["pod 'a1'", "declared twice (first at line"],
        );
        refused(
            "name = \"n2\"",
            "name = \"n1\"",
            &["node 'n1'", "declared twice"],
        );
        refused(
            "address = \"198.18.0.2\"",
            "address = \"198.18.0.1\"",
            &["node 'n2'", "already node 'n1''s"],
        );
        refused(
            "node = \"n2\"",
            "node = \"n9\"",
            &["pod 'a3'", "unknown node 'n9' (nodes: n1, n2)"],
        );
        refused(
            "address = \"198.19.1.3\"",
            "address = \"198.19.1.1\"",
            &["pod 'a2'", "gateway"],
        );
        refused(
            "address6 = \"2001:2:0:1::2\"",
            "address6 = \"2001:2:0:1::1\"",
            &["pod 'a1'", "gateway (::1 of 2001:2:0:1::/64)"],
        );
        let (line, msg) = err(&with("ipip", "l2"));
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("mode l2 needs vxlan or geneve"), "{msg}");
        refused(
            "vni = 100",
            "vni = 16777216",
            &["vni 16777216 is out of range"],
        );
        refused("vni = 100", "vni = 0", &["vni 0 is out of range"]);
        refused(
            "name = \"a2\"",
            "name = \"a-very-long-name\"",
            &["pod 'a-very-long-name'", "longer than 15"],
        );
        refused(
            "pod_subnet = \"198.19.2.0/24\"",
            "pod_subnet = \"198.19.1.0/25\"",
            &["node 'n2'", "overlaps node 'n1''s"],
        );
        refused(
            "pod_subnet = \"198.19.2.0/24\"",
            "pod_subnet = \"10.0.2.0/24\"",
            &["outside pod_cidr 198.19.0.0/16"],
        );
        refused(
            "pod_cidr = \"198.19.0.0/16\"",
            "pod_cidr = \"198.19.0.1/16\"",
            &["host bits set (did you mean 198.19.0.0/16?)"],
        );
        refused(
            "encap = \"vxlan\"",
            "encap = \"gre\"",
            &["expected vxlan, geneve or ipip"],
        );
        refused("mode = \"l3\"", "mtu = 1000", &["IPv6 needs at least 1280"]);
        refused("vni = 100", "vni = \"100\"", &["invalid type"]);
        refused(
            "namespace = \"ns-a2\"",
            "namespace = \"a1\"",
            &["namespace 'a1' already holds pod 'a1'"],
        );
        // l2: tunnel ports are tun-<node>, so node names are shorter.
        let l2 = with("vxlan", "l2").replace("\"n2\"", "\"node-number-2\"");
        let (_, msg) = err(&l2);
        assert!(msg.contains("at most 11 characters"), "{msg}");
        // A file error names the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, L3.replace("vni = 100", "vni = -1")).unwrap();
        let e = Cluster::from_file(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{} line 4: ", path.display())),
            "{e}"
        );
        let e = Cluster::from_file(dir.path().join("nope.toml")).unwrap_err();
        assert!(matches!(e, ClusterError::Read { .. }), "{e}");
        let e = Cluster::from_toml(L3).unwrap().plan("n7").unwrap_err();
        assert_eq!(e.to_string(), "no node 'n7' in the cluster (nodes: n1, n2)");
    }

    #[test]
    fn printed_flows_parse_back_to_the_same_flows() {
        for (encap, mode) in [
            ("vxlan", "l3"),
            ("geneve", "l3"),
            ("ipip", "l3"),
            ("vxlan", "l2"),
            ("geneve", "l2"),
        ] {
            let c = Cluster::from_toml(&with(encap, mode)).unwrap();
            for n in c.nodes() {
                let plan = c.plan(&n.name).unwrap();
                let file = weft_flow::parse_flows_file(&plan.flows_text()).unwrap();
                let back: Vec<Flow> = file.into_iter().map(|(_, f)| f).collect();
                assert_eq!(back, plan.flows, "{encap} {mode}");
                // The full text output is a valid flows file too (ports are comments? no:
                // add-port lines are not flows), so check the flows part only; and every
                // flow is the tenant's.
                assert!(plan.flows.iter().all(|f| f.cookie == 100));
                for p in &plan.ports {
                    assert_eq!(p.validate(), Ok(()));
                }
                let json = serde_json::to_string(&plan).unwrap();
                assert!(json.contains("\"flows\""));
            }
        }
    }

    #[test]
    fn ports_and_pod_plans() {
        let c = Cluster::from_toml(L3).unwrap();
        let p = c.plan("n1").unwrap();
        let ports: Vec<String> = p.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            ports,
            [
                "a1 type=tap netns=a1 ifname=eth0 mtu=1450 mac=0a:58:c6:13:01:02 tag=100",
                "a2 type=tap netns=ns-a2 ifname=eth0 mtu=1450 mac=0a:58:c6:13:01:03 tag=100",
                "tun0 type=vxlan local=198.18.0.1 remote=flow key=flow",
            ]
        );
        let a1 = &p.pods[0];
        assert_eq!(a1.ipv4.to_string(), "198.19.1.2/24");
        assert_eq!(a1.ipv6.unwrap().to_string(), "2001:2:0:1::2/128");
        assert_eq!(
            a1.routes,
            vec![
                (
                    "198.19.0.0/16".parse().unwrap(),
                    Some("198.19.1.1".parse().unwrap())
                ),
                ("2001:2:0:1::1/128".parse().unwrap(), None),
                (
                    "2001:2::/48".parse().unwrap(),
                    Some("2001:2:0:1::1".parse().unwrap())
                ),
            ]
        );
        assert_eq!(
            a1.static_neighbors,
            vec![(
                "2001:2:0:1::1".parse().unwrap(),
                "0a:58:c6:13:01:01".parse().unwrap()
            )]
        );
        assert!(
            a1.ip_commands().contains(
                &"-6 neigh replace 2001:2:0:1::1 lladdr 0a:58:c6:13:01:01 dev eth0 nud permanent"
                    .to_string()
            )
        );
        assert_eq!(p.pods[1].ipv6, None);
        assert_eq!(p.pods[1].routes.len(), 1);
        // l2: flat, on-link, one tunnel per peer with a fixed remote.
        let c = Cluster::from_toml(
            &with("geneve", "l2").replace("mode = \"l2\"", "mode = \"l2\"\ndst_port = 6081"),
        )
        .unwrap();
        let p = c.plan("n1").unwrap();
        assert_eq!(
            p.ports[2].to_string(),
            "tun-n2 type=geneve local=198.18.0.1 remote=198.18.0.2 key=flow"
        );
        assert_eq!(p.pods[0].ipv4.to_string(), "198.19.1.2/16");
        assert_eq!(p.pods[0].ipv6.unwrap().to_string(), "2001:2:0:1::2/48");
        assert!(p.pods[0].routes.is_empty() && p.pods[0].static_neighbors.is_empty());
        // ipip: no key, no UDP port; a non-default port is kept.
        let c = Cluster::from_toml(&with("ipip", "l3")).unwrap();
        assert_eq!(
            c.plan("n2").unwrap().ports[1].to_string(),
            "tun0 type=ipip local=198.18.0.2 remote=flow"
        );
        let c = Cluster::from_toml(&L3.replace("mode = \"l3\"", "dst_port = 4790")).unwrap();
        assert!(
            c.plan("n1").unwrap().ports[2]
                .to_string()
                .ends_with("dst_port=4790")
        );
    }

    #[test]
    fn every_flow_a_tenant_could_share_is_scoped_by_vni_or_its_own_ports() {
        let c = Cluster::from_toml(L3).unwrap();
        let plan = c.plan("n1").unwrap();
        let own: Vec<&str> = plan
            .ports
            .iter()
            .filter(|p| p.name != L3_TUNNEL)
            .map(|p| p.name.as_str())
            .collect();
        for f in &plan.flows {
            let by_port = matches!(&f.matches.in_port, Some(weft_flow::PortRef::Name(n)) if own.contains(&n.as_str()));
            let by_vni = f.matches.tun_id.is_some();
            let shared_miss = f.table == 0 && f.matches.is_catchall();
            assert!(by_port || by_vni || shared_miss, "{f}");
        }
    }
}
