//! Decapsulation of untrusted packets: validate, strip, and report the tunnel metadata.
//!
//! Three entry points by what the socket delivers:
//! * [`decap_vxlan`] / [`decap_geneve`]: a UDP payload (a UDP socket bound to 4789/6081);
//! * [`decap_ip_udp`]: a whole outer IPv4/IPv6 + UDP packet (a raw socket, a pcap);
//! * [`crate::decap_ipip`]: an IPv4 packet with protocol 4 or 41 (a raw `IPPROTO_IPIP`
//!   socket, which includes the outer header).
//!
//! Each returns the inner frame as a sub-slice of the input (nothing is copied) or a
//! [`DropReason`]. None of them panics, whatever the bytes.
use crate::geneve::{self, KnownOptions, Options};
use crate::template::TunnelKind;
use crate::{DropReason, checksum, ipv4, ipv6, udp, vxlan};
use core::net::IpAddr;

/// What the inner frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InnerProto {
    /// An Ethernet frame (VXLAN; Geneve with protocol type 0x6558).
    Ethernet,
    /// An IPv4 packet (IP-in-IP protocol 4; Geneve with protocol type 0x0800).
    Ipv4,
    /// An IPv6 packet (IP-in-IP protocol 41; Geneve with protocol type 0x86DD).
    Ipv6,
}

impl InnerProto {
    /// From a Geneve protocol type (an EtherType); `None` if unsupported.
    pub const fn from_ethertype(t: u16) -> Option<InnerProto> {
        match t {
            crate::ETHERTYPE_TEB => Some(InnerProto::Ethernet),
            crate::ETHERTYPE_IPV4 => Some(InnerProto::Ipv4),
            crate::ETHERTYPE_IPV6 => Some(InnerProto::Ipv6),
            _ => None,
        }
    }

    /// The EtherType naming this protocol (0x6558 for Ethernet).
    pub const fn ethertype(self) -> u16 {
        match self {
            InnerProto::Ethernet => crate::ETHERTYPE_TEB,
            InnerProto::Ipv4 => crate::ETHERTYPE_IPV4,
            InnerProto::Ipv6 => crate::ETHERTYPE_IPV6,
        }
    }

    /// The smallest valid inner frame: an Ethernet, IPv4 or IPv6 header.
    const fn min_len(self) -> usize {
        match self {
            InnerProto::Ethernet => 14,
            InnerProto::Ipv4 => ipv4::HEADER_LEN,
            InnerProto::Ipv6 => ipv6::HEADER_LEN,
        }
    }
}

/// Outer source and destination addresses of a received tunnel packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OuterAddrs {
    /// Outer source (the `tun_src` of flows).
    pub src: IpAddr,
    /// Outer destination (the `tun_dst` of flows).
    pub dst: IpAddr,
}

/// A successfully decapsulated packet: the inner frame and its tunnel metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decapsulated<'a> {
    /// The inner frame (Ethernet or IP, see `inner_proto`), borrowed from the input.
    pub inner: &'a [u8],
    /// Offset of `inner` within the input slice.
    pub inner_offset: usize,
    /// What `inner` is.
    pub inner_proto: InnerProto,
    /// The VNI (`tun_id`); 0 for IP-in-IP, which has no key.
    pub vni: u32,
    /// Outer addresses, when the input included the outer IP header.
    pub outer: Option<OuterAddrs>,
    /// Outer UDP source port, when the input included the outer UDP header.
    pub udp_src_port: Option<u16>,
    /// Geneve options (empty for VXLAN and IP-in-IP).
    pub options: Options<'a>,
    /// Geneve O flag: an OAM packet, for the control plane rather than forwarding.
    pub oam: bool,
}

/// Which UDP tunnel an outer packet must be, and on which destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpTunnel {
    /// VXLAN or Geneve.
    pub kind: TunnelKind,
    /// Expected UDP destination port.
    pub dst_port: u16,
}

impl UdpTunnel {
    /// VXLAN on port 4789.
    pub const VXLAN: UdpTunnel = UdpTunnel {
        kind: TunnelKind::Vxlan,
        dst_port: vxlan::PORT,
    };
    /// Geneve on port 6081.
    pub const GENEVE: UdpTunnel = UdpTunnel {
        kind: TunnelKind::Geneve,
        dst_port: geneve::PORT,
    };
}

#[inline]
fn inner_at(payload: &[u8], offset: usize, proto: InnerProto) -> Result<&[u8], DropReason> {
    match payload.get(offset..) {
        Some(inner) if inner.len() >= proto.min_len() => Ok(inner),
        _ => Err(DropReason::Truncated),
    }
}

/// Decapsulates a VXLAN UDP payload (what a UDP socket on port 4789 delivers).
#[inline]
pub fn decap_vxlan(udp_payload: &[u8]) -> Result<Decapsulated<'_>, DropReason> {
    let repr = vxlan::Repr::parse(&vxlan::Packet::new_unchecked(udp_payload))?;
    let inner = inner_at(udp_payload, vxlan::HEADER_LEN, InnerProto::Ethernet)?;
    Ok(Decapsulated {
        inner,
        inner_offset: vxlan::HEADER_LEN,
        inner_proto: InnerProto::Ethernet,
        vni: repr.vni,
        outer: None,
        udp_src_port: None,
        options: Options::EMPTY,
        oam: false,
    })
}

/// Decapsulates a Geneve UDP payload (what a UDP socket on port 6081 delivers).
///
/// `known` says which options the receiver understands; any critical option it does not
/// understand drops the packet (RFC 8926 §3.5), whether or not the C flag is set.
#[inline]
pub fn decap_geneve<'a, K: KnownOptions + ?Sized>(
    udp_payload: &'a [u8],
    known: &K,
) -> Result<Decapsulated<'a>, DropReason> {
    let packet = geneve::Packet::new_unchecked(udp_payload);
    let repr = geneve::Repr::parse_checking(&packet, known)?;
    let inner_proto = InnerProto::from_ethertype(repr.protocol_type)
        .ok_or(DropReason::UnsupportedInnerProtocol)?;
    let offset = repr.buffer_len();
    let inner = inner_at(udp_payload, offset, inner_proto)?;
    Ok(Decapsulated {
        inner,
        inner_offset: offset,
        inner_proto,
        vni: repr.vni,
        outer: None,
        udp_src_port: None,
        options: repr.options,
        oam: repr.oam,
    })
}

/// Decapsulates a whole outer IPv4 or IPv6 packet carrying UDP to `tunnel` (what a raw
/// socket or a pcap with link type "raw IP" sees).
///
/// The outer IPv4 header is validated (version, IHL, total length, checksum, no
/// fragment); the IPv6 header's next header must be UDP (extension headers are not
/// walked). A non-zero UDP checksum is verified; a zero one is accepted over IPv4 (RFC
/// 7348) and over IPv6 (the RFC 6935 tunnel exception). Bytes past the IP length (link
/// padding) are ignored.
pub fn decap_ip_udp<'a, K: KnownOptions + ?Sized>(
    packet: &'a [u8],
    tunnel: UdpTunnel,
    known: &K,
) -> Result<Decapsulated<'a>, DropReason> {
    let first = *packet.first().ok_or(DropReason::Truncated)?;
    let (segment, ip_hl, outer) = match first >> 4 {
        4 => {
            let p = ipv4::Packet::new_unchecked(packet);
            let r = ipv4::Repr::parse(&p)?;
            if r.protocol != crate::IPPROTO_UDP {
                return Err(DropReason::WrongIpProtocol);
            }
            let hl = p.header_len();
            // In bounds: parse checked hl <= total length <= packet length.
            let payload = packet
                .get(hl..usize::from(p.total_len()))
                .ok_or(DropReason::BadIpLength)?;
            (
                payload,
                hl,
                OuterAddrs {
                    src: r.src_addr.into(),
                    dst: r.dst_addr.into(),
                },
            )
        }
        6 => {
            let p = ipv6::Packet::new_unchecked(packet);
            let r = ipv6::Repr::parse(&p)?;
            if r.next_header != crate::IPPROTO_UDP {
                return Err(DropReason::WrongIpProtocol);
            }
            let end = ipv6::HEADER_LEN + usize::from(r.payload_len);
            let payload = packet
                .get(ipv6::HEADER_LEN..end)
                .ok_or(DropReason::BadIpLength)?;
            (
                payload,
                ipv6::HEADER_LEN,
                OuterAddrs {
                    src: r.src_addr.into(),
                    dst: r.dst_addr.into(),
                },
            )
        }
        _ => return Err(DropReason::BadIpVersion),
    };
    let u = udp::Packet::new_checked(segment)?;
    if u.dst_port() != tunnel.dst_port {
        return Err(DropReason::WrongUdpPort);
    }
    let udp_len = usize::from(u.len());
    if u.checksum() != 0 {
        // Only now: tunnels over IPv4 send 0, and the pseudo-header is not free.
        let pseudo = match (outer.src, outer.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                checksum::pseudo_header_v4(s, d, crate::IPPROTO_UDP, 0)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                checksum::pseudo_header_v6(&s, &d, crate::IPPROTO_UDP, 0)
            }
            _ => 0,
        };
        let s = pseudo + udp_len as u64 + checksum::sum(segment.get(..udp_len).unwrap_or_default());
        if checksum::fold(s) != 0xffff {
            return Err(DropReason::BadUdpChecksum);
        }
    }
    let payload = segment
        .get(udp::HEADER_LEN..udp_len)
        .ok_or(DropReason::BadUdpLength)?;
    let mut d = match tunnel.kind {
        TunnelKind::Vxlan => decap_vxlan(payload)?,
        TunnelKind::Geneve => decap_geneve(payload, known)?,
    };
    d.inner_offset += ip_hl + udp::HEADER_LEN;
    d.outer = Some(outer);
    d.udp_src_port = Some(u.src_port());
    Ok(d)
}
