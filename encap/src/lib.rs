//! Wire formats of Weft's overlays: VXLAN (RFC 7348), Geneve (RFC 8926) and IP-in-IP
//! (RFC 2003), plus the outer IPv4/IPv6/UDP headers that carry them.
//!
//! This crate is pure: no sockets, no clock, no allocation and no `unsafe`. It is the
//! bottom of the workspace and depends on nothing of Weft: `weft-datapath` (which owns
//! buffers, sockets and TAP devices) pushes and strips tunnel headers, segments,
//! coalesces and hashes flows with it; `weft-pipeline` computes checksums with it; the
//! EtherTypes and IP protocol numbers that `weft-flow` and `weft-pipeline` name are
//! defined here once ([`ETHERTYPE_IPV4`], [`IPPROTO_TCP`], ...).
//!
//! Three layers, from the bottom up:
//!
//! * **Views** ([`vxlan::Packet`], [`geneve::Packet`], [`ipv4::Packet`], [`ipv6::Packet`],
//!   [`udp::Packet`]): borrowed, smoltcp-style wrappers over a byte buffer, with field
//!   offsets in a `mod field`, getters on `AsRef<[u8]>` and setters on `AsMut<[u8]>`.
//!   `new_checked` checks only what safe access needs; getters never panic.
//! * **Reprs** (`vxlan::Repr`, `geneve::Repr`, ...): validated, owned field values with
//!   symmetric `parse` / `emit` / `buffer_len`.
//! * **Templates** ([`TunnelHeader`], [`UdpTunnelTemplate`], [`IpipTemplate`]): the outer
//!   headers of one tunnel, built once at port creation, then stamped per packet (lengths,
//!   VNI, IPv4 checksum, UDP source port) into the headroom in front of an inner frame that
//!   is already in the caller's buffer. The payload is never copied.
//!
//! The receive side is a set of decapsulators ([`decap_vxlan`], [`decap_geneve`],
//! [`decap_ip_udp`], [`decap_ipip`]) that take untrusted bytes and return either a
//! [`Decapsulated`] (the inner frame and the tunnel metadata) or a [`DropReason`], a small
//! `Copy` enum that indexes drop counters.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![no_std]

#[cfg(test)]
extern crate std;

pub mod checksum;
mod decap;
mod drop_reason;
pub mod flow_hash;
pub mod geneve;
pub mod ipip;
pub mod ipv4;
pub mod ipv6;
pub mod offload;
mod template;
pub mod udp;
pub mod vxlan;

pub use decap::{
    Decapsulated, InnerProto, OuterAddrs, UdpTunnel, decap_geneve, decap_ip_udp, decap_vxlan,
};
pub use drop_reason::{BuildError, DropReason};
pub use flow_hash::PortRange;
pub use geneve::{GeneveOption, KnownOptions};
pub use ipip::{IpipParams, IpipTemplate, decap_ipip};
pub use template::{OuterIp, TunnelHeader, TunnelKind, UdpTunnelParams, UdpTunnelTemplate};

// IP protocol numbers and EtherTypes are defined here once for the whole workspace:
// `weft-flow` spells `nw_proto` and `dl_type` with them, `weft-pipeline` parses frames
// with them.
/// IP protocol number of ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IP protocol number of IPv4-in-IP (RFC 2003).
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IP (RFC 2473 / RFC 4213).
pub const IPPROTO_IPV6: u8 = 41;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86DD;
/// EtherType (TPID) of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// EtherType (TPID) of an 802.1ad service VLAN tag (QinQ).
pub const ETHERTYPE_QINQ: u16 = 0x88A8;
/// EtherType of Transparent Ethernet Bridging (an Ethernet frame as payload).
pub const ETHERTYPE_TEB: u16 = 0x6558;
