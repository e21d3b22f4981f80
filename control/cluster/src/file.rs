//! Reading a cluster description: the TOML file (through serde, with spans, so every
//! error names its line), validated item by item into a [`Cluster`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use toml::Spanned;

use weft_flow::port::validate_name;
use weft_flow::{line_at, one_line};

use super::*;

/// An I/O error's message without the trailing "(os error N)".
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

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
        let n = self.parse(v, what, key, "an IPv4 prefix like 198.19.0.0/16")?;
        self.no_host_bits(v, what, key, n, Ipv4Net::trunc)
    }

    fn net6(&self, v: &Spanned<String>, what: &str, key: &str) -> Result<Ipv6Net, ClusterError> {
        let n = self.parse(v, what, key, "an IPv6 prefix like 2001:2::/48")?;
        self.no_host_bits(v, what, key, n, Ipv6Net::trunc)
    }

    /// `n`, refused when it has host bits set (`trunc` clears them).
    fn no_host_bits<N: PartialEq + fmt::Display>(
        &self,
        v: &Spanned<String>,
        what: &str,
        key: &str,
        n: N,
        trunc: fn(&N) -> N,
    ) -> Result<N, ClusterError> {
        let t = trunc(&n);
        if t != n {
            return Err(self.at(
                v.span(),
                format!("{what}{key} {n} has host bits set (did you mean {t}?)"),
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
            message: io_text(&e),
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
            cookie: u64::from(vni),
            gateway_port: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{L3, with};

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
}
