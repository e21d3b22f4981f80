//! Ports: what `add-port` says and what `weftd` keeps in its state.
//!
//! A [`PortSpec`] is a port's name, its type and its options, exactly as an operator
//! writes them (`weftctl add-port pod1 type=tap netns=pod1 mtu=1450`, or a `[[port]]`
//! table in `weftd`'s config). It travels as JSON over the control socket and in the
//! state file; `weft-datapath` turns it into a TAP device or a tunnel socket.
//!
//! Parsing checks everything that can be checked without touching the system (names,
//! numbers, addresses, which options a type takes), so a typo is refused with a message
//! that names the option before anything is created.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{MacAddr, excerpt};

/// Longest port name (a Linux interface name is at most 15 bytes).
pub const MAX_PORT_NAME: usize = 15;

/// Words that mean something else where a port is named in a flow.
const RESERVED_NAMES: &[&str] = &[
    "in_port",
    "local",
    "normal",
    "flood",
    "all",
    "controller",
    "drop",
    "any",
    "none",
    "table",
];

/// Longest TAP queue `txqueuelen=` may ask for: the kernel keeps each queue in one
/// array of pointers of at most 4 MiB (`KMALLOC_MAX_SIZE`), and refuses a longer one.
pub const MAX_TXQUEUELEN: u32 = 524_288;

/// Default UDP destination port of VXLAN (RFC 7348).
pub const VXLAN_PORT: u16 = 4789;
/// Default UDP destination port of Geneve (RFC 8926).
pub const GENEVE_PORT: u16 = 6081;

/// The type of a port, as `type=` spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortType {
    /// A TAP device: a pod's (or VM's) Ethernet interface.
    Tap,
    /// A VXLAN tunnel (UDP).
    Vxlan,
    /// A Geneve tunnel (UDP, TLV options).
    Geneve,
    /// An IP-in-IP tunnel (IP protocol 4, and 41 for IPv6 inner packets).
    Ipip,
}

impl PortType {
    /// The `type=` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PortType::Tap => "tap",
            PortType::Vxlan => "vxlan",
            PortType::Geneve => "geneve",
            PortType::Ipip => "ipip",
        }
    }

    /// True for the three tunnel types.
    pub fn is_tunnel(self) -> bool {
        !matches!(self, PortType::Tap)
    }
}

impl fmt::Display for PortType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PortType {
    type Err = PortError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tap" => Ok(PortType::Tap),
            "vxlan" => Ok(PortType::Vxlan),
            "geneve" => Ok(PortType::Geneve),
            "ipip" => Ok(PortType::Ipip),
            other => Err(PortError::BadValue {
                option: "type".into(),
                value: other.into(),
                expected: "tap, vxlan, geneve or ipip",
            }),
        }
    }
}

/// Where a tunnel sends: one fixed peer, or the `tun_dst` that flows set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Remote {
    /// `remote=flow`: the flows set `tun_dst` per packet (the default).
    #[default]
    Flow,
    /// `remote=IP`: every packet goes to this peer.
    Fixed(IpAddr),
}

/// Which VNI a tunnel sends with: a fixed one, or the `tun_id` that flows set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Key {
    /// `key=flow`: the flows set `tun_id` per packet (the default).
    #[default]
    Flow,
    /// `key=N`: every packet carries VNI N (24 bits).
    Fixed(u32),
}

/// Options of a TAP port.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TapOptions {
    /// `netns=NAME`: create the device inside `/var/run/netns/NAME`; `netns=/PATH`
    /// (absolute): inside the namespace of that file (`/proc/PID/ns/net`,
    /// `/var/run/netns/cni-…`), as container runtimes pass it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// `ifname=NAME`: the device's name (default: the port's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    /// `mtu=N`: the device's MTU (default: the kernel's, 1500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// `mac=MAC`: the device's MAC address (default: random, chosen by the kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// `tag=VNI`: the network (VNI, `tun_id`) the port belongs to, like an OVS access
    /// port's VLAN tag: `normal` and `flood` send it only frames of that VNI. Default:
    /// every frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u32>,
    /// `txqueuelen=N`: the length of each of the device's queues toward Weft, in frames
    /// (1 to [`MAX_TXQUEUELEN`]; default: the length the device has, the kernel's 1000
    /// for a new one). A TAP has no backpressure: what the pod sends while its queue is
    /// full is dropped by the kernel (counted as `tap_queue_full`), so a pod that sends
    /// bursts faster than a worker reads needs a longer queue. The cost is kernel
    /// memory: 8 bytes per entry per queue at once, and about 0.9 KB per frame held
    /// while the queue is full of small frames (about 230 MB at 262144).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txqueuelen: Option<u32>,
}

/// Options of a tunnel port (VXLAN, Geneve, IP-in-IP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelOptions {
    /// `local=IP`: the underlay address to bind and send from (default: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<IpAddr>,
    /// `remote=IP|flow`.
    #[serde(default)]
    pub remote: Remote,
    /// `key=N|flow`.
    #[serde(default)]
    pub key: Key,
    /// `dst_port=N`: UDP port (VXLAN and Geneve only; defaults 4789 and 6081).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    /// `allowed_remotes=CIDR,...`: accept tunnel packets only from these sources
    /// (default: from anyone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_remotes: Vec<IpNet>,
    /// `mtu=N`: the largest inner IP packet the tunnel carries (default: the
    /// underlay's MTU less the encapsulation overhead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// `ttl=N`: outer TTL (default 64; IP-in-IP copies nothing from the inner TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u8>,
}

impl Default for TunnelOptions {
    fn default() -> Self {
        TunnelOptions {
            local: None,
            remote: Remote::Flow,
            key: Key::Flow,
            dst_port: None,
            allowed_remotes: Vec::new(),
            mtu: None,
            ttl: None,
        }
    }
}

/// A port's type with its options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PortKind {
    /// A TAP device.
    Tap(TapOptions),
    /// A VXLAN tunnel.
    Vxlan(TunnelOptions),
    /// A Geneve tunnel.
    Geneve(TunnelOptions),
    /// An IP-in-IP tunnel.
    Ipip(TunnelOptions),
}

impl PortKind {
    /// The port's type.
    pub fn port_type(&self) -> PortType {
        match self {
            PortKind::Tap(_) => PortType::Tap,
            PortKind::Vxlan(_) => PortType::Vxlan,
            PortKind::Geneve(_) => PortType::Geneve,
            PortKind::Ipip(_) => PortType::Ipip,
        }
    }

    /// The tunnel options, for a tunnel port.
    pub fn tunnel(&self) -> Option<&TunnelOptions> {
        match self {
            PortKind::Tap(_) => None,
            PortKind::Vxlan(t) | PortKind::Geneve(t) | PortKind::Ipip(t) => Some(t),
        }
    }
}

/// A port: its name, the number flows may use instead, and what it is.
///
/// Unknown JSON fields are refused by the options structs (serde cannot combine
/// `deny_unknown_fields` with the flattened kind here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    /// Unique name; flows may say `output:NAME`.
    pub name: String,
    /// `ofport=N`: the number to give the port (default: the lowest free number ≥ 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofport: Option<u32>,
    /// Type and options.
    #[serde(flatten)]
    pub kind: PortKind,
}

/// Why a port description was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The name is empty, too long, numeric, reserved or has odd characters.
    #[error("invalid port name '{}': {why}", excerpt(.name))]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No `type=` was given.
    #[error("port '{}' needs type=tap|vxlan|geneve|ipip", excerpt(.0))]
    NoType(String),
    /// An argument was not `key=value`.
    #[error("expected option=value, got '{}'", excerpt(.0))]
    NotKeyValue(String),
    /// An option that this type of port does not take.
    #[error("{port_type} ports take no option '{}' (they take: {allowed})", excerpt(.option))]
    UnknownOption {
        /// The port's type.
        port_type: PortType,
        /// The option given.
        option: String,
        /// The options this type takes.
        allowed: &'static str,
    },
    /// The same option twice.
    #[error("option '{}' given twice", excerpt(.0))]
    Duplicate(String),
    /// An option's value did not parse.
    #[error("bad value '{}' for {}: expected {expected}", excerpt(.value), excerpt(.option))]
    BadValue {
        /// The option.
        option: String,
        /// The value given.
        value: String,
        /// What it should look like.
        expected: &'static str,
    },
}

/// Checks a port (or interface) name.
pub fn validate_name(name: &str) -> Result<(), PortError> {
    let bad = |why| {
        Err(PortError::BadName {
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_PORT_NAME {
        return bad("longer than 15 characters");
    }
    if name.bytes().all(|b| b.is_ascii_digit()) || name.starts_with("0x") {
        return bad("a number (flows could not tell it from a port number)");
    }
    if RESERVED_NAMES.contains(&name) {
        return bad("a reserved word of the flow language");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

fn bad_value(option: &str, value: &str, expected: &'static str) -> PortError {
    PortError::BadValue {
        option: option.into(),
        value: value.into(),
        expected,
    }
}

fn parse_num<T: FromStr>(
    option: &str,
    value: &str,
    expected: &'static str,
) -> Result<T, PortError> {
    value
        .parse()
        .map_err(|_| bad_value(option, value, expected))
}

/// What `netns=` takes.
const NETNS_EXPECTED: &str = "the name of a namespace in /var/run/netns, or an absolute path \
     to a namespace file (/proc/PID/ns/net) without '.' or '..' parts";

/// Longest `netns=` value (a path).
pub const MAX_NETNS_LEN: usize = 255;

/// A `netns=` value: a name (no '/', not '.' or '..') or an absolute path with no
/// empty, '.' or '..' component; printable ASCII without spaces, at most
/// [`MAX_NETNS_LEN`] bytes.
fn valid_netns(v: &str) -> bool {
    if v.is_empty() || v.len() > MAX_NETNS_LEN || !v.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    match v.strip_prefix('/') {
        Some(rest) => rest
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".."),
        None => !v.contains('/') && v != "." && v != "..",
    }
}

const TAP_OPTIONS: &str = "ofport, netns, ifname, mtu, mac, tag, txqueuelen";
const UDP_TUNNEL_OPTIONS: &str = "ofport, local, remote, key, dst_port, allowed_remotes, mtu, ttl";
const IPIP_OPTIONS: &str = "ofport, local, remote, allowed_remotes, mtu, ttl";

impl PortSpec {
    /// Parses `NAME` and `option=value` words, as `weftctl add-port` takes them:
    /// `PortSpec::parse("pod1", &["type=tap", "netns=pod1"])`.
    pub fn parse(name: &str, args: &[&str]) -> Result<PortSpec, PortError> {
        validate_name(name)?;
        let mut pairs = Vec::with_capacity(args.len());
        for a in args {
            let (k, v) = a
                .split_once('=')
                .ok_or_else(|| PortError::NotKeyValue(a.to_string()))?;
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(PortError::Duplicate(k.to_string()));
            }
            pairs.push((k, v));
        }
        let port_type: PortType = pairs
            .iter()
            .find(|(k, _)| *k == "type")
            .ok_or_else(|| PortError::NoType(name.to_string()))?
            .1
            .parse()?;
        let mut ofport = None;
        let mut tap = TapOptions::default();
        let mut tun = TunnelOptions::default();
        let allowed = match port_type {
            PortType::Tap => TAP_OPTIONS,
            PortType::Vxlan | PortType::Geneve => UDP_TUNNEL_OPTIONS,
            PortType::Ipip => IPIP_OPTIONS,
        };
        for (k, v) in pairs {
            let unknown = || PortError::UnknownOption {
                port_type,
                option: k.to_string(),
                allowed,
            };
            match (k, port_type) {
                ("type", _) => {}
                ("ofport", _) => {
                    let n: u32 = parse_num(k, v, "a port number from 1 to 65279")?;
                    if n == 0 || n > 0xfeff {
                        return Err(bad_value(k, v, "a port number from 1 to 65279"));
                    }
                    ofport = Some(n);
                }
                ("netns", PortType::Tap) => {
                    if !valid_netns(v) {
                        return Err(bad_value(k, v, NETNS_EXPECTED));
                    }
                    tap.netns = Some(v.to_string());
                }
                ("ifname", PortType::Tap) => {
                    validate_name(v)?;
                    tap.ifname = Some(v.to_string());
                }
                ("mtu", PortType::Tap) => {
                    let mtu: u16 = parse_num(k, v, "an MTU from 68 to 65535")?;
                    if mtu < 68 {
                        return Err(bad_value(k, v, "an MTU from 68 to 65535"));
                    }
                    tap.mtu = Some(mtu);
                }
                ("mac", PortType::Tap) => {
                    let mac: MacAddr =
                        parse_num(k, v, "a unicast MAC address like 02:00:00:00:00:01")?;
                    if mac.0[0] & 1 != 0 || mac == MacAddr::ZERO {
                        return Err(bad_value(
                            k,
                            v,
                            "a unicast MAC address like 02:00:00:00:00:01",
                        ));
                    }
                    tap.mac = Some(mac);
                }
                ("tag", PortType::Tap) => {
                    let vni = crate::parse::parse_u64(v)
                        .filter(|n| *n < 1 << 24)
                        .ok_or_else(|| bad_value(k, v, "a 24-bit VNI"))?;
                    tap.tag = Some(vni as u32);
                }
                ("txqueuelen", PortType::Tap) => {
                    const EXPECTED: &str = "a queue length from 1 to 524288 frames";
                    let n: u32 = parse_num(k, v, EXPECTED)?;
                    if n == 0 || n > MAX_TXQUEUELEN {
                        return Err(bad_value(k, v, EXPECTED));
                    }
                    tap.txqueuelen = Some(n);
                }
                ("local", t) if t.is_tunnel() => {
                    tun.local = Some(parse_num(k, v, "an IP address")?);
                }
                ("remote", t) if t.is_tunnel() => {
                    tun.remote = if v == "flow" {
                        Remote::Flow
                    } else {
                        Remote::Fixed(parse_num(k, v, "an IP address or 'flow'")?)
                    };
                }
                ("key", PortType::Vxlan | PortType::Geneve) => {
                    tun.key = if v == "flow" {
                        Key::Flow
                    } else {
                        let vni = crate::parse::parse_u64(v)
                            .filter(|n| *n < 1 << 24)
                            .ok_or_else(|| bad_value(k, v, "a 24-bit VNI or 'flow'"))?;
                        Key::Fixed(vni as u32)
                    };
                }
                ("dst_port", PortType::Vxlan | PortType::Geneve) => {
                    let p: u16 = parse_num(k, v, "a UDP port from 1 to 65535")?;
                    if p == 0 {
                        return Err(bad_value(k, v, "a UDP port from 1 to 65535"));
                    }
                    tun.dst_port = Some(p);
                }
                ("allowed_remotes", t) if t.is_tunnel() => {
                    for part in v.split(',') {
                        let net = match part.parse::<IpNet>() {
                            Ok(n) => n,
                            Err(_) => IpNet::from(
                                part.parse::<IpAddr>()
                                    .map_err(|_| bad_value(k, part, "CIDRs like 198.18.0.0/24"))?,
                            ),
                        };
                        tun.allowed_remotes.push(net.trunc());
                    }
                }
                ("mtu", t) if t.is_tunnel() => {
                    let mtu: u16 = parse_num(k, v, "an MTU from 576 to 65535")?;
                    if mtu < 576 {
                        return Err(bad_value(k, v, "an MTU from 576 to 65535"));
                    }
                    tun.mtu = Some(mtu);
                }
                ("ttl", t) if t.is_tunnel() => {
                    let ttl: u8 = parse_num(k, v, "a TTL from 1 to 255")?;
                    if ttl == 0 {
                        return Err(bad_value(k, v, "a TTL from 1 to 255"));
                    }
                    tun.ttl = Some(ttl);
                }
                _ => return Err(unknown()),
            }
        }
        if let (Some(IpAddr::V4(_)), Remote::Fixed(IpAddr::V6(_)))
        | (Some(IpAddr::V6(_)), Remote::Fixed(IpAddr::V4(_))) = (tun.local, tun.remote)
        {
            return Err(bad_value(
                "remote",
                &remote_text(tun.remote),
                "an address of the same family as local",
            ));
        }
        let kind = match port_type {
            PortType::Tap => PortKind::Tap(tap),
            PortType::Vxlan => PortKind::Vxlan(tun),
            PortType::Geneve => PortKind::Geneve(tun),
            PortType::Ipip => PortKind::Ipip(tun),
        };
        Ok(PortSpec {
            name: name.to_string(),
            ofport,
            kind,
        })
    }

    /// Checks a spec that arrived as JSON, as [`PortSpec::parse`] checks text.
    pub fn validate(&self) -> Result<(), PortError> {
        let words = self.to_string();
        let mut it = words.split_whitespace();
        let name = it.next().unwrap_or_default();
        let args: Vec<&str> = it.collect();
        let reparsed = PortSpec::parse(name, &args)?;
        if reparsed != *self {
            return Err(bad_value("port", &words, "a canonical port description"));
        }
        Ok(())
    }

    /// The port's type.
    pub fn port_type(&self) -> PortType {
        self.kind.port_type()
    }

    /// The UDP destination port of a VXLAN or Geneve tunnel (with its default).
    pub fn udp_port(&self) -> Option<u16> {
        match &self.kind {
            PortKind::Vxlan(t) => Some(t.dst_port.unwrap_or(VXLAN_PORT)),
            PortKind::Geneve(t) => Some(t.dst_port.unwrap_or(GENEVE_PORT)),
            _ => None,
        }
    }

    /// True when `wanted` (a port as a config file declares it) describes this port (as
    /// it runs, or as the file declared it before): the same name, type and options, and
    /// the same number unless `wanted` gives none (then the port keeps the one it has).
    /// A reload changes a port exactly when this is false: `weftd` reports what it
    /// changes and the datapath changes it with this one test.
    pub fn same_port(&self, wanted: &PortSpec) -> bool {
        self.name == wanted.name
            && self.kind == wanted.kind
            && (wanted.ofport.is_none() || wanted.ofport == self.ofport)
    }
}

/// The port drop reasons (their counter labels) that happen on transmit, the frame on
/// its way out of the port; every other reason a port counts happens on receive.
///
/// The one list of them: `weft-datapath` counts these reasons (its `IoDrop`, whose
/// tests check that each is one of its labels) and the control protocol sums them into
/// a port's `tx_dropped` (`weft_proto::PortCounters`).
pub const TX_DROP_REASONS: [&str; 6] = [
    "too_big",
    "no_tunnel_dst",
    "tunnel_family",
    "tx_error",
    "not_ip",
    "tx_queue_full",
];

/// True for a port drop reason of [`TX_DROP_REASONS`].
pub fn is_tx_drop(reason: &str) -> bool {
    TX_DROP_REASONS.contains(&reason)
}

fn remote_text(r: Remote) -> String {
    match r {
        Remote::Flow => "flow".into(),
        Remote::Fixed(ip) => ip.to_string(),
    }
}

/// Prints the canonical `NAME type=T option=value ...` form that [`PortSpec::parse`]
/// reads back.
impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} type={}", self.name, self.port_type())?;
        if let Some(n) = self.ofport {
            write!(f, " ofport={n}")?;
        }
        match &self.kind {
            PortKind::Tap(t) => {
                if let Some(v) = &t.netns {
                    write!(f, " netns={v}")?;
                }
                if let Some(v) = &t.ifname {
                    write!(f, " ifname={v}")?;
                }
                if let Some(v) = t.mtu {
                    write!(f, " mtu={v}")?;
                }
                if let Some(v) = t.mac {
                    write!(f, " mac={v}")?;
                }
                if let Some(v) = t.tag {
                    write!(f, " tag={v}")?;
                }
                if let Some(v) = t.txqueuelen {
                    write!(f, " txqueuelen={v}")?;
                }
            }
            PortKind::Vxlan(t) | PortKind::Geneve(t) | PortKind::Ipip(t) => {
                if let Some(v) = t.local {
                    write!(f, " local={v}")?;
                }
                write!(f, " remote={}", remote_text(t.remote))?;
                if self.port_type() != PortType::Ipip {
                    match t.key {
                        Key::Flow => write!(f, " key=flow")?,
                        Key::Fixed(k) => write!(f, " key={k}")?,
                    }
                }
                if let Some(v) = t.dst_port {
                    write!(f, " dst_port={v}")?;
                }
                if !t.allowed_remotes.is_empty() {
                    let list: Vec<String> =
                        t.allowed_remotes.iter().map(|n| n.to_string()).collect();
                    write!(f, " allowed_remotes={}", list.join(","))?;
                }
                if let Some(v) = t.mtu {
                    write!(f, " mtu={v}")?;
                }
                if let Some(v) = t.ttl {
                    write!(f, " ttl={v}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<PortSpec, PortError> {
        let mut it = line.split_whitespace();
        let name = it.next().unwrap();
        let args: Vec<&str> = it.collect();
        PortSpec::parse(name, &args)
    }

    #[test]
    fn same_port_keeps_the_running_number_when_the_wanted_one_gives_none() {
        let running = parse("pod1 type=tap mtu=1450 ofport=3").unwrap();
        assert!(running.same_port(&parse("pod1 type=tap mtu=1450").unwrap()));
        assert!(running.same_port(&parse("pod1 type=tap mtu=1450 ofport=3").unwrap()));
        assert!(!running.same_port(&parse("pod1 type=tap mtu=1450 ofport=4").unwrap()));
        assert!(!running.same_port(&parse("pod1 type=tap mtu=1400").unwrap()));
        assert!(!running.same_port(&parse("pod2 type=tap mtu=1450").unwrap()));
        assert!(!parse("pod1 type=tap mtu=1450").unwrap().same_port(&running));
    }

    #[test]
    fn tx_drop_reasons() {
        assert!(is_tx_drop("too_big") && is_tx_drop("tx_error"));
        assert!(!is_tx_drop("vlan_tagged") && !is_tx_drop("table_miss"));
    }

    #[test]
    fn tap_with_every_option() {
        let p = parse(
            "pod1 type=tap netns=p1 ifname=eth0 mtu=1450 mac=02:00:00:00:01:02 ofport=7 tag=100",
        )
        .unwrap();
        assert_eq!(p.name, "pod1");
        assert_eq!(p.ofport, Some(7));
        let PortKind::Tap(t) = &p.kind else { panic!() };
        assert_eq!(t.netns.as_deref(), Some("p1"));
        assert_eq!(t.ifname.as_deref(), Some("eth0"));
        assert_eq!(t.mtu, Some(1450));
        assert_eq!(t.mac, Some("02:00:00:00:01:02".parse().unwrap()));
        assert_eq!(t.tag, Some(100));
        assert_eq!(
            p.to_string(),
            "pod1 type=tap ofport=7 netns=p1 ifname=eth0 mtu=1450 mac=02:00:00:00:01:02 tag=100"
        );
        assert_eq!(parse(&p.to_string()).unwrap(), p);
        p.validate().unwrap();
    }

    #[test]
    fn tunnels_with_defaults_and_options() {
        let v = parse("vx0 type=vxlan local=198.18.0.1").unwrap();
        assert_eq!(v.udp_port(), Some(4789));
        let t = v.kind.tunnel().unwrap();
        assert_eq!(t.remote, Remote::Flow);
        assert_eq!(t.key, Key::Flow);
        let g = parse(
            "gnv0 type=geneve local=198.18.0.1 remote=198.18.0.2 key=0x10 dst_port=6082 \
             allowed_remotes=198.18.0.0/24,198.18.1.5 mtu=1400 ttl=32",
        )
        .unwrap();
        assert_eq!(g.udp_port(), Some(6082));
        let t = g.kind.tunnel().unwrap();
        assert_eq!(t.key, Key::Fixed(16));
        assert_eq!(t.remote, Remote::Fixed("198.18.0.2".parse().unwrap()));
        assert_eq!(t.allowed_remotes.len(), 2);
        assert_eq!(t.allowed_remotes[1].to_string(), "198.18.1.5/32");
        assert_eq!(parse(&g.to_string()).unwrap(), g);
        let json = serde_json::to_string(&g).unwrap();
        assert!(json.contains("\"type\":\"geneve\""), "{json}");
        assert_eq!(serde_json::from_str::<PortSpec>(&json).unwrap(), g);
        let typo = json.replace("\"mtu\"", "\"mtux\"");
        assert!(serde_json::from_str::<PortSpec>(&typo).is_err(), "{typo}");
        let i = parse("ip0 type=ipip local=198.18.0.1").unwrap();
        assert_eq!(i.udp_port(), None);
        assert_eq!(parse(&i.to_string()).unwrap(), i);
    }

    #[test]
    fn errors_name_the_option() {
        let e = |l: &str| parse(l).unwrap_err().to_string();
        assert_eq!(
            e("p type=tap netsn=x"),
            "tap ports take no option 'netsn' (they take: ofport, netns, ifname, mtu, mac, tag, txqueuelen)"
        );
        assert!(e("p type=tup").contains("expected tap, vxlan, geneve or ipip"));
        assert!(e("p netns=x").contains("needs type="));
        assert!(e("p type=tap mtu=9x").contains("bad value '9x' for mtu"));
        assert!(e("p type=tap mac=01:00:00:00:00:01").contains("unicast"));
        assert!(e("v type=vxlan key=16777216").contains("24-bit VNI"));
        assert!(e("v type=vxlan remote=nowhere").contains("bad value 'nowhere' for remote"));
        assert!(e("v type=ipip key=5").contains("ipip ports take no option 'key'"));
        assert!(e("v type=vxlan local=198.18.0.1 remote=2001:db8::1").contains("same family"));
        assert!(e("v type=vxlan allowed_remotes=198.18.0.0/33").contains("CIDRs"));
        assert!(e("p type=tap mtu=1 mtu=2").contains("given twice"));
        assert!(e("p type=tap junk").contains("expected option=value"));
        assert!(e("123 type=tap").contains("a number"));
        assert!(e("normal type=tap").contains("reserved"));
        assert!(e("averyveryverylongname type=tap").contains("longer than 15"));
        assert!(e("p type=tap netns=../etc").contains("namespace"));
        assert!(e("p type=tap netns=a/b").contains("absolute path"));
        assert!(e("p type=tap netns=/proc/1/../1/ns/net").contains("'..'"));
        assert!(e("p type=tap netns=/proc//1/ns/net").contains("namespace"));
        assert!(e("p type=tap netns=/proc/1/ns/net/").contains("namespace"));
        assert!(e("p type=tap netns=/").contains("namespace"));
        assert!(e(&format!("p type=tap netns=/{}", "a".repeat(255))).contains("namespace"));
    }

    #[test]
    fn txqueuelen_is_a_tap_option_from_1_to_the_kernels_limit() {
        for n in [1u32, 1000, 262_144, MAX_TXQUEUELEN] {
            let p = parse(&format!("pod1 type=tap netns=p1 txqueuelen={n}")).unwrap();
            let PortKind::Tap(t) = &p.kind else {
                panic!("tap")
            };
            assert_eq!(t.txqueuelen, Some(n));
            assert_eq!(
                p.to_string(),
                format!("pod1 type=tap netns=p1 txqueuelen={n}")
            );
            assert_eq!(parse(&p.to_string()).unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert!(json.contains(&format!("\"txqueuelen\":{n}")), "{json}");
            assert_eq!(serde_json::from_str::<PortSpec>(&json).unwrap(), p);
            p.validate().unwrap();
        }
        // Absent: nothing in the text or the JSON (older state files read the same).
        let p = parse("pod1 type=tap").unwrap();
        assert!(!serde_json::to_string(&p).unwrap().contains("txqueuelen"));
        // A changed length is a changed port (a reload re-creates it).
        let a = parse("pod1 type=tap txqueuelen=1000").unwrap();
        assert!(!a.same_port(&parse("pod1 type=tap txqueuelen=2000").unwrap()));
        assert!(!a.same_port(&p));
        let e = |l: &str| parse(l).unwrap_err().to_string();
        let want = "expected a queue length from 1 to 524288 frames";
        assert_eq!(
            e("p type=tap txqueuelen=0"),
            format!("bad value '0' for txqueuelen: {want}")
        );
        assert!(e("p type=tap txqueuelen=524289").contains(want));
        assert!(e("p type=tap txqueuelen=-1").contains(want));
        assert!(e("p type=tap txqueuelen=1k").contains(want));
        assert!(e("p type=tap txqueuelen=99999999999999999999").contains(want));
        assert!(
            e("v type=vxlan txqueuelen=1000").contains("vxlan ports take no option 'txqueuelen'")
        );
        // JSON that bypasses the parser is held to the same range.
        let mut j = parse("pod1 type=tap").unwrap();
        if let PortKind::Tap(t) = &mut j.kind {
            t.txqueuelen = Some(MAX_TXQUEUELEN + 1);
        }
        assert!(j.validate().is_err());
    }

    #[test]
    fn netns_may_be_a_path() {
        for v in [
            "/proc/4242/ns/net",
            "/var/run/netns/cni-1234-abcd",
            "/run/netns/pod1",
        ] {
            let p = parse(&format!("pod1 type=tap netns={v}")).unwrap();
            let PortKind::Tap(t) = &p.kind else {
                panic!("tap")
            };
            assert_eq!(t.netns.as_deref(), Some(v));
            assert_eq!(p.to_string(), format!("pod1 type=tap netns={v}"));
            p.validate().unwrap();
        }
    }

    #[test]
    fn json_that_bypasses_the_parser_is_validated() {
        let mut p = parse("vx0 type=vxlan key=5").unwrap();
        p.validate().unwrap();
        if let PortKind::Vxlan(t) = &mut p.kind {
            t.key = Key::Fixed(1 << 24);
        }
        assert!(p.validate().is_err());
        p = parse("pod1 type=tap").unwrap();
        p.name = "bad name".into();
        assert!(p.validate().is_err());
    }
}
