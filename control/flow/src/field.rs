//! The field registry: one table that names every field a flow can match, write
//! (`set_field`, `load`) or copy (`move`), with its width, whether it takes a mask and
//! what it requires of the rest of the match.
//!
//! The parser, the printer and the datapath all read this table, so a field's spelling,
//! width and prerequisite are said exactly once. [`Field::ALL`] lists the fields in the
//! order the printer writes matches (close to `ovs-ofctl dump-flows`).

use std::fmt;

use serde::{Deserialize, Serialize};

use encap::{
    ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
    IPPROTO_UDP,
};

use super::Match;

/// A field of a packet or of its metadata that flows match, write or copy.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    /// Ingress port (match only; value is a [`PortRef`](super::PortRef)).
    InPort,
    /// Tunnel ID: VXLAN/Geneve VNI of a received packet, or the one to send with.
    TunId,
    /// Outer IPv4 source of a received tunnel packet.
    TunSrc,
    /// Outer IPv4 destination of a tunnel packet (set it to pick the remote node).
    TunDst,
    /// Outer IPv6 source of a received tunnel packet.
    TunIpv6Src,
    /// Outer IPv6 destination of a tunnel packet.
    TunIpv6Dst,
    /// 64-bit metadata register carried between tables.
    Metadata,
    /// 32-bit register 0.
    Reg0,
    /// 32-bit register 1.
    Reg1,
    /// 32-bit register 2.
    Reg2,
    /// 32-bit register 3.
    Reg3,
    /// 32-bit register 4.
    Reg4,
    /// 32-bit register 5.
    Reg5,
    /// 32-bit register 6.
    Reg6,
    /// 32-bit register 7.
    Reg7,
    /// Ethernet source.
    DlSrc,
    /// Ethernet destination.
    DlDst,
    /// Ethertype.
    DlType,
    /// ARP opcode (1 request, 2 reply).
    ArpOp,
    /// ARP sender protocol (IPv4) address.
    ArpSpa,
    /// ARP target protocol (IPv4) address.
    ArpTpa,
    /// ARP sender hardware address.
    ArpSha,
    /// ARP target hardware address.
    ArpTha,
    /// IPv4 source.
    NwSrc,
    /// IPv4 destination.
    NwDst,
    /// IPv6 source.
    Ipv6Src,
    /// IPv6 destination.
    Ipv6Dst,
    /// IP protocol (IPv4) or next header (IPv6).
    NwProto,
    /// IP DSCP in the high six bits of the TOS / traffic-class byte (low two bits zero).
    NwTos,
    /// IPv4 TTL or IPv6 hop limit.
    NwTtl,
    /// TCP or UDP source port.
    TpSrc,
    /// TCP or UDP destination port.
    TpDst,
    /// ICMP or ICMPv6 type.
    IcmpType,
    /// ICMP or ICMPv6 code.
    IcmpCode,
}

/// What a field needs the rest of the match to say before it may be matched, written
/// or copied (OVS's prerequisites).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prereq {
    /// Always allowed.
    None,
    /// `arp` (dl_type=0x0806).
    Arp,
    /// `ip` (dl_type=0x0800).
    Ipv4,
    /// `ipv6` (dl_type=0x86dd).
    Ipv6,
    /// `ip` or `ipv6`.
    Ip,
    /// `tcp` or `udp` over `ip` or `ipv6`.
    TcpUdp,
    /// `icmp` (ip, nw_proto=1) or `icmp6` (ipv6, nw_proto=58).
    Icmp,
}

impl Prereq {
    /// True when `m` satisfies this prerequisite.
    pub fn is_met(self, m: &Match) -> bool {
        let dl = m.dl_type.map(|x| x.value);
        let proto = m.nw_proto.map(|x| x.value);
        let ip = matches!(dl, Some(ETHERTYPE_IPV4 | ETHERTYPE_IPV6));
        match self {
            Prereq::None => true,
            Prereq::Arp => dl == Some(ETHERTYPE_ARP),
            Prereq::Ipv4 => dl == Some(ETHERTYPE_IPV4),
            Prereq::Ipv6 => dl == Some(ETHERTYPE_IPV6),
            Prereq::Ip => ip,
            Prereq::TcpUdp => ip && matches!(proto, Some(IPPROTO_TCP | IPPROTO_UDP)),
            Prereq::Icmp => {
                (dl == Some(ETHERTYPE_IPV4) && proto == Some(IPPROTO_ICMP))
                    || (dl == Some(ETHERTYPE_IPV6) && proto == Some(IPPROTO_ICMPV6))
            }
        }
    }

    /// What is required, in words, e.g. `tcp or udp`.
    pub fn describe(self) -> &'static str {
        match self {
            Prereq::None => "nothing",
            Prereq::Arp => "arp",
            Prereq::Ipv4 => "ip",
            Prereq::Ipv6 => "ipv6",
            Prereq::Ip => "ip or ipv6",
            Prereq::TcpUdp => "tcp or udp",
            Prereq::Icmp => "icmp or icmp6",
        }
    }

    /// How to fix a flow that lacks it, e.g. `add 'tcp,' or 'udp,' before it`.
    pub fn hint(self) -> &'static str {
        match self {
            Prereq::None => "",
            Prereq::Arp => "add 'arp,' before it",
            Prereq::Ipv4 => "add 'ip,' before it",
            Prereq::Ipv6 => "add 'ipv6,' before it",
            Prereq::Ip => "add 'ip,' or 'ipv6,' before it",
            Prereq::TcpUdp => "add 'tcp,' or 'udp,' before it",
            Prereq::Icmp => "add 'icmp,' or 'icmp6,' before it",
        }
    }
}

/// The type of a field's value, which [`FieldValue`](super::FieldValue) variant it takes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// A port reference (in_port only).
    Port,
    /// An unsigned integer of [`FieldInfo::bits`] bits.
    Uint,
    /// A MAC address.
    Mac,
    /// An IPv4 address.
    Ipv4,
    /// An IPv6 address.
    Ipv6,
}

/// One row of the field registry.
#[derive(Debug)]
pub struct FieldInfo {
    /// The field.
    pub field: Field,
    /// Canonical name (OVS spelling), used by the printer.
    pub name: &'static str,
    /// Other accepted names (OXM-style `eth_src`, `ip_src`, ...).
    pub aliases: &'static [&'static str],
    /// NXM/OXM name used in `move` and `load` (`NXM_OF_ETH_SRC`); the printer writes
    /// this one when present.
    pub nxm: Option<&'static str>,
    /// Further NXM names that mean this field (e.g. `NXM_OF_UDP_SRC` for tp_src).
    pub nxm_aliases: &'static [&'static str],
    /// Width in bits.
    pub bits: u16,
    /// Whether a match may carry a mask (`/mask` or CIDR).
    pub maskable: bool,
    /// Whether `set_field`, `load` and the destination of `move` may write it.
    pub writable: bool,
    /// What the match must say before the field may be used.
    pub prereq: Prereq,
    /// The type of its values.
    pub kind: ValueKind,
    /// Whether the printer writes integer values in hex (registers, ids, ethertype).
    pub hex: bool,
}

macro_rules! row {
    ($f:ident, $name:expr, $aliases:expr, $nxm:expr, $nxma:expr, $bits:expr, $mask:expr,
     $wr:expr, $pre:ident, $kind:ident, $hex:expr) => {
        FieldInfo {
            field: Field::$f,
            name: $name,
            aliases: $aliases,
            nxm: $nxm,
            nxm_aliases: $nxma,
            bits: $bits,
            maskable: $mask,
            writable: $wr,
            prereq: Prereq::$pre,
            kind: ValueKind::$kind,
            hex: $hex,
        }
    };
}

/// The registry, indexed by `Field as usize`.
static FIELDS: [FieldInfo; 34] = [
    row!(
        InPort,
        "in_port",
        &[],
        Some("NXM_OF_IN_PORT"),
        &["OXM_OF_IN_PORT"],
        32,
        false,
        false,
        None,
        Port,
        false
    ),
    row!(
        TunId,
        "tun_id",
        &["tunnel_id"],
        Some("NXM_NX_TUN_ID"),
        &["OXM_OF_TUNNEL_ID"],
        64,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        TunSrc,
        "tun_src",
        &[],
        Some("NXM_NX_TUN_IPV4_SRC"),
        &[],
        32,
        true,
        true,
        None,
        Ipv4,
        false
    ),
    row!(
        TunDst,
        "tun_dst",
        &[],
        Some("NXM_NX_TUN_IPV4_DST"),
        &[],
        32,
        true,
        true,
        None,
        Ipv4,
        false
    ),
    row!(
        TunIpv6Src,
        "tun_ipv6_src",
        &[],
        Some("NXM_NX_TUN_IPV6_SRC"),
        &[],
        128,
        true,
        true,
        None,
        Ipv6,
        false
    ),
    row!(
        TunIpv6Dst,
        "tun_ipv6_dst",
        &[],
        Some("NXM_NX_TUN_IPV6_DST"),
        &[],
        128,
        true,
        true,
        None,
        Ipv6,
        false
    ),
    row!(
        Metadata,
        "metadata",
        &[],
        Some("OXM_OF_METADATA"),
        &[],
        64,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg0,
        "reg0",
        &[],
        Some("NXM_NX_REG0"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg1,
        "reg1",
        &[],
        Some("NXM_NX_REG1"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg2,
        "reg2",
        &[],
        Some("NXM_NX_REG2"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg3,
        "reg3",
        &[],
        Some("NXM_NX_REG3"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg4,
        "reg4",
        &[],
        Some("NXM_NX_REG4"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg5,
        "reg5",
        &[],
        Some("NXM_NX_REG5"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg6,
        "reg6",
        &[],
        Some("NXM_NX_REG6"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        Reg7,
        "reg7",
        &[],
        Some("NXM_NX_REG7"),
        &[],
        32,
        true,
        true,
        None,
        Uint,
        true
    ),
    row!(
        DlSrc,
        "dl_src",
        &["eth_src"],
        Some("NXM_OF_ETH_SRC"),
        &["OXM_OF_ETH_SRC"],
        48,
        true,
        true,
        None,
        Mac,
        false
    ),
    row!(
        DlDst,
        "dl_dst",
        &["eth_dst"],
        Some("NXM_OF_ETH_DST"),
        &["OXM_OF_ETH_DST"],
        48,
        true,
        true,
        None,
        Mac,
        false
    ),
    row!(
        DlType,
        "dl_type",
        &["eth_type"],
        Some("NXM_OF_ETH_TYPE"),
        &["OXM_OF_ETH_TYPE"],
        16,
        false,
        false,
        None,
        Uint,
        true
    ),
    row!(
        ArpOp,
        "arp_op",
        &[],
        Some("NXM_OF_ARP_OP"),
        &["OXM_OF_ARP_OP"],
        16,
        false,
        true,
        Arp,
        Uint,
        false
    ),
    row!(
        ArpSpa,
        "arp_spa",
        &[],
        Some("NXM_OF_ARP_SPA"),
        &["OXM_OF_ARP_SPA"],
        32,
        true,
        true,
        Arp,
        Ipv4,
        false
    ),
    row!(
        ArpTpa,
        "arp_tpa",
        &[],
        Some("NXM_OF_ARP_TPA"),
        &["OXM_OF_ARP_TPA"],
        32,
        true,
        true,
        Arp,
        Ipv4,
        false
    ),
    row!(
        ArpSha,
        "arp_sha",
        &[],
        Some("NXM_NX_ARP_SHA"),
        &["OXM_OF_ARP_SHA"],
        48,
        true,
        true,
        Arp,
        Mac,
        false
    ),
    row!(
        ArpTha,
        "arp_tha",
        &[],
        Some("NXM_NX_ARP_THA"),
        &["OXM_OF_ARP_THA"],
        48,
        true,
        true,
        Arp,
        Mac,
        false
    ),
    row!(
        NwSrc,
        "nw_src",
        &["ip_src", "ipv4_src"],
        Some("NXM_OF_IP_SRC"),
        &["OXM_OF_IPV4_SRC"],
        32,
        true,
        true,
        Ipv4,
        Ipv4,
        false
    ),
    row!(
        NwDst,
        "nw_dst",
        &["ip_dst", "ipv4_dst"],
        Some("NXM_OF_IP_DST"),
        &["OXM_OF_IPV4_DST"],
        32,
        true,
        true,
        Ipv4,
        Ipv4,
        false
    ),
    row!(
        Ipv6Src,
        "ipv6_src",
        &[],
        Some("NXM_NX_IPV6_SRC"),
        &["OXM_OF_IPV6_SRC"],
        128,
        true,
        true,
        Ipv6,
        Ipv6,
        false
    ),
    row!(
        Ipv6Dst,
        "ipv6_dst",
        &[],
        Some("NXM_NX_IPV6_DST"),
        &["OXM_OF_IPV6_DST"],
        128,
        true,
        true,
        Ipv6,
        Ipv6,
        false
    ),
    row!(
        NwProto,
        "nw_proto",
        &["ip_proto"],
        Some("NXM_OF_IP_PROTO"),
        &["OXM_OF_IP_PROTO"],
        8,
        false,
        false,
        Ip,
        Uint,
        false
    ),
    row!(
        NwTos,
        "nw_tos",
        &[],
        Some("NXM_OF_IP_TOS"),
        &[],
        8,
        false,
        true,
        Ip,
        Uint,
        false
    ),
    row!(
        NwTtl,
        "nw_ttl",
        &[],
        Some("NXM_NX_IP_TTL"),
        &[],
        8,
        false,
        true,
        Ip,
        Uint,
        false
    ),
    row!(
        TpSrc,
        "tp_src",
        &["tcp_src", "udp_src"],
        None,
        &[
            "NXM_OF_TCP_SRC",
            "NXM_OF_UDP_SRC",
            "OXM_OF_TCP_SRC",
            "OXM_OF_UDP_SRC"
        ],
        16,
        true,
        true,
        TcpUdp,
        Uint,
        false
    ),
    row!(
        TpDst,
        "tp_dst",
        &["tcp_dst", "udp_dst"],
        None,
        &[
            "NXM_OF_TCP_DST",
            "NXM_OF_UDP_DST",
            "OXM_OF_TCP_DST",
            "OXM_OF_UDP_DST"
        ],
        16,
        true,
        true,
        TcpUdp,
        Uint,
        false
    ),
    row!(
        IcmpType,
        "icmp_type",
        &["icmpv6_type", "icmpv4_type"],
        Some("NXM_OF_ICMP_TYPE"),
        &[
            "NXM_NX_ICMPV6_TYPE",
            "OXM_OF_ICMPV4_TYPE",
            "OXM_OF_ICMPV6_TYPE"
        ],
        8,
        false,
        true,
        Icmp,
        Uint,
        false
    ),
    row!(
        IcmpCode,
        "icmp_code",
        &["icmpv6_code", "icmpv4_code"],
        Some("NXM_OF_ICMP_CODE"),
        &[
            "NXM_NX_ICMPV6_CODE",
            "OXM_OF_ICMPV4_CODE",
            "OXM_OF_ICMPV6_CODE"
        ],
        8,
        false,
        true,
        Icmp,
        Uint,
        false
    ),
];

impl Field {
    /// Every field, in registry (and printing) order.
    pub const ALL: [Field; 34] = [
        Field::InPort,
        Field::TunId,
        Field::TunSrc,
        Field::TunDst,
        Field::TunIpv6Src,
        Field::TunIpv6Dst,
        Field::Metadata,
        Field::Reg0,
        Field::Reg1,
        Field::Reg2,
        Field::Reg3,
        Field::Reg4,
        Field::Reg5,
        Field::Reg6,
        Field::Reg7,
        Field::DlSrc,
        Field::DlDst,
        Field::DlType,
        Field::ArpOp,
        Field::ArpSpa,
        Field::ArpTpa,
        Field::ArpSha,
        Field::ArpTha,
        Field::NwSrc,
        Field::NwDst,
        Field::Ipv6Src,
        Field::Ipv6Dst,
        Field::NwProto,
        Field::NwTos,
        Field::NwTtl,
        Field::TpSrc,
        Field::TpDst,
        Field::IcmpType,
        Field::IcmpCode,
    ];

    /// The register `reg{n}` for n in 0..8.
    pub fn reg(n: u8) -> Option<Field> {
        [
            Field::Reg0,
            Field::Reg1,
            Field::Reg2,
            Field::Reg3,
            Field::Reg4,
            Field::Reg5,
            Field::Reg6,
            Field::Reg7,
        ]
        .get(usize::from(n))
        .copied()
    }

    /// This field's registry row.
    pub fn info(self) -> &'static FieldInfo {
        &FIELDS[self as usize]
    }

    /// Canonical name (OVS spelling).
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// Width in bits.
    pub fn bits(self) -> u16 {
        self.info().bits
    }

    /// Whether matches on it may carry a mask.
    pub fn maskable(self) -> bool {
        self.info().maskable
    }

    /// Whether actions may write it.
    pub fn writable(self) -> bool {
        self.info().writable
    }

    /// Its prerequisite.
    pub fn prereq(self) -> Prereq {
        self.info().prereq
    }

    /// The type of its values.
    pub fn kind(self) -> ValueKind {
        self.info().kind
    }

    /// The name `move` and `load` print: the NXM name if it has one, else the plain name.
    pub fn nxm_or_name(self) -> &'static str {
        self.info().nxm.unwrap_or(self.info().name)
    }

    /// The field with this plain name or alias (`nw_src`, `eth_src`), case-sensitive
    /// like OVS.
    pub fn from_name(name: &str) -> Option<Field> {
        FIELDS
            .iter()
            .find(|i| i.name == name || i.aliases.contains(&name))
            .map(|i| i.field)
    }

    /// The field with this plain name, alias or NXM/OXM name.
    pub fn from_any_name(name: &str) -> Option<Field> {
        Field::from_name(name).or_else(|| {
            FIELDS
                .iter()
                .find(|i| i.nxm == Some(name) || i.nxm_aliases.contains(&name))
                .map(|i| i.field)
        })
    }

    /// Every name (plain, aliases, NXM) the parser accepts, for did-you-mean suggestions.
    pub fn all_names() -> impl Iterator<Item = &'static str> {
        FIELDS.iter().flat_map(|i| {
            std::iter::once(i.name)
                .chain(i.aliases.iter().copied())
                .chain(i.nxm)
                .chain(i.nxm_aliases.iter().copied())
        })
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_indexed_by_discriminant() {
        for (i, f) in Field::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i);
            assert_eq!(f.info().field, *f);
        }
    }

    #[test]
    fn names_resolve_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for n in Field::all_names() {
            assert!(seen.insert(n), "name {n} appears twice");
            assert!(Field::from_any_name(n).is_some());
        }
        assert_eq!(Field::from_name("eth_src"), Some(Field::DlSrc));
        assert_eq!(Field::from_any_name("NXM_NX_ARP_SHA"), Some(Field::ArpSha));
        assert_eq!(Field::from_any_name("NXM_OF_UDP_DST"), Some(Field::TpDst));
        assert_eq!(Field::reg(7), Some(Field::Reg7));
        assert_eq!(Field::reg(8), None);
    }

    #[test]
    fn widths() {
        assert_eq!(Field::DlSrc.bits(), 48);
        assert_eq!(Field::ArpSpa.bits(), 32);
        assert_eq!(Field::TunId.bits(), 64);
        assert_eq!(Field::Ipv6Dst.bits(), 128);
        assert_eq!(Field::Reg3.bits(), 32);
        assert_eq!(Field::ArpOp.bits(), 16);
    }
}
