//! The cluster's state in etcd (docs/cluster-state.md): the keys under the prefix and
//! their JSON values, checked as they are read. Pure: no I/O.
//!
//! Schema version 1 (`/weft/v1/`): `config`, `nodes/<name>`, `subnets/<cidr with - for
//! />`, `endpoints/<node>/<container_id>:<ifname>`. The names `namespaces/`, `pods/`,
//! `networkpolicies/` and `services/` are reserved for Kubernetes-shaped objects.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use weft_cluster::Encap;

/// The largest VNI (24 bits).
pub const MAX_VNI: u32 = weft_cluster::MAX_VNI;

/// `config`: the network, as an operator writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetConfig {
    /// The range of all pods (`198.19.0.0/16`).
    pub pod_cidr: String,
    /// The prefix length of each node's subnet (`24`).
    pub subnet_len: u8,
    /// `vxlan`, `geneve` or `ipip`.
    pub encap: String,
    /// The VNI (VXLAN, Geneve); default 1.
    #[serde(default)]
    pub vni: Option<u32>,
    /// The tunnels' UDP port; default the encapsulation's.
    #[serde(default)]
    pub port: Option<u16>,
    /// The pods' MTU; default the underlay device's MTU less the encapsulation's overhead.
    #[serde(default)]
    pub mtu: Option<u16>,
}

/// `config`, checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetConfig {
    /// The range of all pods.
    pub pod_cidr: Ipv4Net,
    /// Each node's subnet prefix length.
    pub subnet_len: u8,
    /// The encapsulation.
    pub encap: Encap,
    /// The VNI.
    pub vni: u32,
    /// The UDP port (`None` for IP-in-IP, or the default).
    pub port: Option<u16>,
    /// The MTU, when given.
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// Reads and checks a `config` value; the error is one line saying what is wrong.
    pub fn parse(value: &[u8]) -> Result<NetConfig, String> {
        let raw: RawNetConfig =
            serde_json::from_slice(value).map_err(|e| format!("config is not valid: {e}"))?;
        let encap = match raw.encap.as_str() {
            "vxlan" => Encap::Vxlan,
            "geneve" => Encap::Geneve,
            "ipip" => Encap::Ipip,
            other => {
                return Err(format!(
                    "config: unknown encap '{other}' (expected vxlan, geneve or ipip)"
                ));
            }
        };
        let pod_cidr: Ipv4Net = raw.pod_cidr.parse().map_err(|_| {
            format!(
                "config: pod_cidr '{}' is not an IPv4 CIDR (like 198.19.0.0/16)",
                raw.pod_cidr
            )
        })?;
        if pod_cidr.network() != pod_cidr.addr() {
            return Err(format!(
                "config: pod_cidr {pod_cidr} has host bits set (its network is {})",
                pod_cidr.trunc()
            ));
        }
        if raw.subnet_len <= pod_cidr.prefix_len() || raw.subnet_len > 30 {
            return Err(format!(
                "config: subnet_len {} does not fit pod_cidr {pod_cidr} (it must be longer than /{} and at most /30)",
                raw.subnet_len,
                pod_cidr.prefix_len()
            ));
        }
        let vni = raw.vni.unwrap_or(1);
        if vni > MAX_VNI {
            return Err(format!("config: vni {vni} is larger than {MAX_VNI}"));
        }
        if let Some(m) = raw.mtu
            && !(576..=65535).contains(&m)
        {
            return Err(format!("config: mtu {m} is out of range (576 to 65535)"));
        }
        Ok(NetConfig {
            pod_cidr,
            subnet_len: raw.subnet_len,
            encap,
            vni,
            port: raw.port,
            mtu: raw.mtu,
        })
    }

    /// Every subnet a node can hold, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        self.pod_cidr
            .subnets(self.subnet_len)
            .expect("subnet_len was checked to be longer")
    }

    /// How many subnets there are.
    pub fn subnet_count(&self) -> u64 {
        1u64 << (self.subnet_len - self.pod_cidr.prefix_len())
    }

    /// The `n`th subnet (modulo their count).
    pub fn nth_subnet(&self, n: u64) -> Ipv4Net {
        let n = n % self.subnet_count();
        let base = u32::from(self.pod_cidr.network());
        let step = 1u64 << (32 - self.subnet_len);
        let addr = Ipv4Addr::from(base.wrapping_add((n * step) as u32));
        Ipv4Net::new(addr, self.subnet_len).expect("checked prefix")
    }
}

/// `nodes/<name>`: a node as it registers itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its underlay (tunnel endpoint) address.
    pub public_ip: Ipv4Addr,
    /// Its pod subnet.
    pub subnet: Ipv4Net,
    /// Its gateway port's MAC.
    pub gateway_mac: String,
    /// The encapsulation it runs.
    pub encap: Encap,
}

/// `subnets/<cidr>`: who holds a subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    /// The node's name.
    pub node: String,
    /// Its underlay address.
    pub public_ip: Ipv4Addr,
}

/// `endpoints/<node>/<container_id>:<ifname>`: a pod interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    /// Its addresses with their prefix.
    pub ips: Vec<IpNet>,
    /// Its MAC.
    pub mac: String,
    /// The weftd port.
    pub port: String,
    /// The pod's network namespace as the runtime gave it.
    pub netns: String,
    /// The pod's Kubernetes namespace, when the runtime gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// The pod's name, when the runtime gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl EndpointRecord {
    /// Its IPv4 address, if any.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ips.iter().find_map(|n| match n.addr() {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
    }
}

/// The keys of schema version 1 under a prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `config`.
    Config,
    /// `nodes/<name>`.
    Node(String),
    /// `subnets/<cidr>`.
    Subnet(String),
    /// `endpoints/<node>/<id>`.
    Endpoint(String, String),
    /// Anything else (reserved or unknown).
    Other,
}

impl Keys {
    /// The keys under `prefix` (a `/` is added when missing).
    pub fn new(prefix: &str) -> Keys {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Keys { prefix }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `config`.
    pub fn config(&self) -> String {
        format!("{}config", self.prefix)
    }

    /// `nodes/` (a prefix).
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }

    /// `nodes/<name>`.
    pub fn node(&self, name: &str) -> String {
        format!("{}nodes/{name}", self.prefix)
    }

    /// `subnets/` (a prefix).
    pub fn subnets(&self) -> String {
        format!("{}subnets/", self.prefix)
    }

    /// `subnets/198.19.3.0-24`.
    pub fn subnet(&self, s: Ipv4Net) -> String {
        format!("{}subnets/{}-{}", self.prefix, s.network(), s.prefix_len())
    }

    /// `endpoints/<node>/` (a prefix).
    pub fn endpoints(&self, node: &str) -> String {
        format!("{}endpoints/{node}/", self.prefix)
    }

    /// `endpoints/<node>/<container_id>:<ifname>`.
    pub fn endpoint(&self, node: &str, container_id: &str, ifname: &str) -> String {
        format!("{}endpoints/{node}/{container_id}:{ifname}", self.prefix)
    }

    /// What `key` names.
    pub fn classify(&self, key: &[u8]) -> Key {
        let Ok(key) = std::str::from_utf8(key) else {
            return Key::Other;
        };
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return Key::Other;
        };
        if rest == "config" {
            return Key::Config;
        }
        if let Some(n) = rest.strip_prefix("nodes/") {
            return Key::Node(n.to_string());
        }
        if let Some(s) = rest.strip_prefix("subnets/") {
            return Key::Subnet(s.to_string());
        }
        if let Some(e) = rest.strip_prefix("endpoints/")
            && let Some((node, id)) = e.split_once('/')
        {
            return Key::Endpoint(node.to_string(), id.to_string());
        }
        Key::Other
    }
}

/// A node name that fits keys and logs: 1 to 63 of `[a-z0-9.-]`, as Kubernetes' names.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("node name '{name}' must have 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "node name '{name}' may hold only lower-case letters, digits, '-' and '.'"
        ));
    }
    Ok(())
}

/// Where a node starts looking for a free subnet: a hash of its name, so that agents
/// started at once try different subnets first (fewer lost transactions).
pub fn start_index(node: &str) -> u64 {
    // FNV-1a: stable across runs and versions.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<NetConfig, String> {
        NetConfig::parse(json.as_bytes())
    }

    #[test]
    fn config_parses_and_bad_values_are_refused_with_one_line() {
        let c = cfg(r#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"vxlan"}"#).unwrap();
        assert_eq!(c.vni, 1);
        assert_eq!(c.subnet_count(), 256);
        assert_eq!(c.nth_subnet(3).to_string(), "198.19.3.0/24");
        assert_eq!(c.nth_subnet(256 + 2).to_string(), "198.19.2.0/24");
        assert_eq!(c.subnets().count(), 256);
        for (json, want) in [
            (
                r#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"gre"}"#,
                "unknown encap 'gre'",
            ),
            (
                r#"{"pod_cidr":"198.19.0/16","subnet_len":24,"encap":"vxlan"}"#,
                "is not an IPv4 CIDR",
            ),
            (
                r#"{"pod_cidr":"198.19.0.0/16","subnet_len":12,"encap":"vxlan"}"#,
                "subnet_len 12 does not fit",
            ),
            (
                r#"{"pod_cidr":"198.19.0.0/16","subnet_len":31,"encap":"vxlan"}"#,
                "subnet_len 31 does not fit",
            ),
            (
                r#"{"pod_cidr":"198.19.1.0/16","subnet_len":24,"encap":"vxlan"}"#,
                "host bits",
            ),
            (
                r#"{"pod_cidr":"198.19.0.0/16","subnet_len":24,"encap":"vxlan","vni":16777216}"#,
                "vni 16777216",
            ),
            (r#"{"pod_cidr":"198.19.0.0/16"}"#, "config is not valid"),
        ] {
            let e = cfg(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn keys_round_trip_through_classify() {
        let k = Keys::new("/weft/v1");
        assert_eq!(k.config(), "/weft/v1/config");
        let s: Ipv4Net = "198.19.3.0/24".parse().unwrap();
        assert_eq!(k.subnet(s), "/weft/v1/subnets/198.19.3.0-24");
        assert_eq!(k.classify(k.config().as_bytes()), Key::Config);
        assert_eq!(k.classify(k.node("n1").as_bytes()), Key::Node("n1".into()));
        assert_eq!(
            k.classify(k.endpoint("n1", "c1", "eth0").as_bytes()),
            Key::Endpoint("n1".into(), "c1:eth0".into())
        );
        assert_eq!(k.classify(b"/weft/v1/pods/x"), Key::Other);
        assert_eq!(k.classify(b"/other/config"), Key::Other);
    }

    #[test]
    fn node_names_are_checked() {
        assert!(check_node_name("node-1.example").is_ok());
        assert!(check_node_name("").is_err());
        assert!(check_node_name("a/b").is_err());
        assert!(check_node_name("Upper").is_err());
        assert_ne!(start_index("n1"), start_index("n2"));
    }
}
