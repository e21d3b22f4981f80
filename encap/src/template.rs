//! Per-tunnel header templates, stamped per packet into a buffer's headroom.
//!
//! A template is built once when a tunnel port is added (addresses, ports, TTL, Geneve
//! options never change per packet) and then copied in front of each inner frame, which
//! is already in place in the caller's buffer: only the lengths, the VNI, the IPv4 header
//! checksum (from a precomputed partial sum), the UDP source port and, over IPv6, the UDP
//! checksum are written per packet. The payload is never copied; nothing allocates.
//!
//! Two shapes, matching the two ways the datapath can send:
//! * [`TunnelHeader`]: only the VXLAN or Geneve header, for a UDP socket whose kernel adds
//!   the outer IP and UDP headers.
//! * [`UdpTunnelTemplate`]: outer IPv4/IPv6 + UDP + tunnel header, for a raw socket,
//!   AF_PACKET/AF_XDP, or a pcap.
use crate::decap::InnerProto;
use crate::flow_hash::{PortRange, flow_hash_ethernet, flow_hash_ip};
use crate::geneve::{self, GeneveOption, OptionWriter};
use crate::{BuildError, DropReason, checksum, ipv4, ipv6, udp, vxlan};
use core::net::{Ipv4Addr, Ipv6Addr};
use core::ops::Range;

/// Which UDP tunnel protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TunnelKind {
    /// VXLAN, RFC 7348.
    Vxlan,
    /// Geneve, RFC 8926.
    Geneve,
}

impl TunnelKind {
    /// The IANA default UDP destination port (4789 or 6081).
    pub const fn default_port(self) -> u16 {
        match self {
            TunnelKind::Vxlan => vxlan::PORT,
            TunnelKind::Geneve => geneve::PORT,
        }
    }
}

/// Offset of the VNI in both the VXLAN and the Geneve header.
const VNI_OFFSET: usize = 4;

#[inline(always)]
fn check_frame(
    buf_len: usize,
    inner_start: usize,
    inner_len: usize,
    hdr_len: usize,
    vni: u32,
) -> Result<(usize, usize), DropReason> {
    if vni > vxlan::VNI_MAX {
        return Err(DropReason::VniOutOfRange);
    }
    let start = inner_start
        .checked_sub(hdr_len)
        .ok_or(DropReason::NoHeadroom)?;
    let end = inner_start
        .checked_add(inner_len)
        .ok_or(DropReason::FrameOutOfBounds)?;
    if end > buf_len {
        return Err(DropReason::FrameOutOfBounds);
    }
    Ok((start, end))
}

#[inline(always)]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
fn put_vni(b: &mut [u8], at: usize, vni: u32) {
    let [_, x, y, z] = vni.to_be_bytes();
    b[at..at + 3].copy_from_slice(&[x, y, z]);
}

#[inline(always)]
fn copy_fixed<const N: usize>(dst: &mut [u8], src: &[u8; OUTER_MAX]) {
    dst[..N].copy_from_slice(&src[..N]);
}

/// A VXLAN header or a Geneve header with its options, built once per tunnel.
#[derive(Debug, Clone)]
pub struct TunnelHeader {
    kind: TunnelKind,
    inner: InnerProto,
    len: usize,
    bytes: [u8; geneve::HEADER_MAX],
}

impl TunnelHeader {
    /// The 8-byte VXLAN header (I flag set, VNI stamped per packet).
    pub fn vxlan() -> TunnelHeader {
        let mut bytes = [0u8; geneve::HEADER_MAX];
        vxlan::Repr { vni: 0 }.emit(&mut vxlan::Packet::new_unchecked(
            &mut bytes[..vxlan::HEADER_LEN],
        ));
        TunnelHeader {
            kind: TunnelKind::Vxlan,
            inner: InnerProto::Ethernet,
            len: vxlan::HEADER_LEN,
            bytes,
        }
    }

    /// A Geneve header carrying `protocol_type` (0x6558 Ethernet, 0x0800 IPv4, 0x86DD
    /// IPv6) and `options` in the given order. The C flag is set if any option is
    /// critical; O is clear.
    pub fn geneve(
        protocol_type: u16,
        options: &[GeneveOption<'_>],
    ) -> Result<TunnelHeader, BuildError> {
        let inner = InnerProto::from_ethertype(protocol_type)
            .ok_or(BuildError::UnsupportedProtocolType(protocol_type))?;
        let mut bytes = [0u8; geneve::HEADER_MAX];
        let mut w = OptionWriter::new(&mut bytes[geneve::HEADER_LEN..]);
        for o in options {
            w.push(o)?;
        }
        let opt_len = w.len();
        let critical = options.iter().any(GeneveOption::is_critical);
        let mut p = geneve::Packet::new_unchecked(&mut bytes[..geneve::HEADER_LEN + opt_len]);
        p.set_version0_options_len(opt_len);
        p.set_flags(false, critical);
        p.set_protocol_type(protocol_type);
        p.set_vni(0);
        Ok(TunnelHeader {
            kind: TunnelKind::Geneve,
            inner,
            len: geneve::HEADER_LEN + opt_len,
            bytes,
        })
    }

    /// VXLAN or Geneve.
    pub const fn kind(&self) -> TunnelKind {
        self.kind
    }

    /// What the inner frame is (always Ethernet for VXLAN).
    pub const fn inner_proto(&self) -> InnerProto {
        self.inner
    }

    /// Length of the header in bytes (the headroom [`TunnelHeader::encapsulate`] needs).
    #[allow(clippy::len_without_is_empty)]
    pub const fn len(&self) -> usize {
        self.len
    }

    /// The header bytes with VNI 0.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Writes the tunnel header (with `vni`) right in front of the inner frame at
    /// `buf[inner_start..inner_start + inner_len]`; returns the range to hand to a UDP
    /// socket (the kernel adds outer IP and UDP).
    #[inline]
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        inner_start: usize,
        inner_len: usize,
        vni: u32,
    ) -> Result<Range<usize>, DropReason> {
        let (start, end) = check_frame(buf.len(), inner_start, inner_len, self.len, vni)?;
        let hdr = &mut buf[start..inner_start];
        hdr.copy_from_slice(&self.bytes[..self.len]);
        put_vni(hdr, VNI_OFFSET, vni);
        Ok(start..end)
    }
}

/// The outer addresses of a UDP tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OuterIp {
    /// Outer IPv4.
    V4 {
        /// Local address.
        src: Ipv4Addr,
        /// Remote address.
        dst: Ipv4Addr,
    },
    /// Outer IPv6.
    V6 {
        /// Local address.
        src: Ipv6Addr,
        /// Remote address.
        dst: Ipv6Addr,
    },
}

/// Settings of the outer headers of a UDP tunnel; `Default` gives Linux-like values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UdpTunnelParams {
    /// UDP destination port; `None` for the protocol's IANA port (4789 / 6081).
    pub dst_port: Option<u16>,
    /// Outer TTL / hop limit (default 64).
    pub ttl: u8,
    /// Outer IPv4 TOS or IPv6 traffic class (default 0).
    pub tos: u8,
    /// IPv4 DF flag (default set, as OVS does; the underlay MTU must then fit).
    pub dont_frag: bool,
    /// IPv6 flow label (default 0).
    pub flow_label: u32,
    /// Range of UDP source ports (default Linux's 32768..=60999).
    pub src_ports: PortRange,
    /// Seed of the inner-flow hash (per node, like the kernel's random flow-hash key).
    pub hash_seed: u32,
    /// Over IPv6, compute the UDP checksum (default true: RFC 8200 requires it). `false`
    /// sends zero, which RFC 6935/6936 allow for tunnels if the peer accepts it (Linux:
    /// `udp6zerocsumrx`). Ignored over IPv4, where tunnels send zero (RFC 7348 §5).
    pub ipv6_udp_checksum: bool,
}

impl Default for UdpTunnelParams {
    fn default() -> Self {
        UdpTunnelParams {
            dst_port: None,
            ttl: 64,
            tos: 0,
            dont_frag: true,
            flow_label: 0,
            src_ports: PortRange::LINUX_DEFAULT,
            hash_seed: 0,
            ipv6_udp_checksum: true,
        }
    }
}

/// Largest outer header: IPv6 + UDP + Geneve with 252 bytes of options.
const OUTER_MAX: usize = ipv6::HEADER_LEN + udp::HEADER_LEN + geneve::HEADER_MAX;

/// Outer IP + UDP + VXLAN/Geneve headers of one tunnel, built once, stamped per packet.
#[derive(Debug, Clone)]
pub struct UdpTunnelTemplate {
    bytes: [u8; OUTER_MAX],
    len: usize,
    ip_len: usize,
    v6: bool,
    /// v4: partial sum of the IPv4 header with total length and checksum zero.
    /// v6: partial sum of the pseudo-header without the length.
    base_sum: u64,
    udp_checksum: bool,
    outer: OuterIp,
    dst_port: u16,
    inner: InnerProto,
    kind: TunnelKind,
    src_ports: PortRange,
    hash_seed: u32,
}

impl UdpTunnelTemplate {
    /// Builds the template for `header` between `outer.src` and `outer.dst`.
    pub fn new(
        header: &TunnelHeader,
        outer: OuterIp,
        params: UdpTunnelParams,
    ) -> UdpTunnelTemplate {
        let mut bytes = [0u8; OUTER_MAX];
        let dst_port = params.dst_port.unwrap_or(header.kind.default_port());
        let (ip_len, v6, base_sum) = match outer {
            OuterIp::V4 { src, dst } => {
                let mut ip = ipv4::Packet::new_unchecked(&mut bytes[..ipv4::HEADER_LEN]);
                ipv4::Repr {
                    src_addr: src,
                    dst_addr: dst,
                    protocol: crate::IPPROTO_UDP,
                    ttl: params.ttl,
                    tos: params.tos,
                    ident: 0,
                    dont_frag: params.dont_frag,
                    payload_len: 0,
                }
                .emit(&mut ip);
                ip.set_total_len(0);
                ip.set_checksum(0);
                (
                    ipv4::HEADER_LEN,
                    false,
                    checksum::sum(&bytes[..ipv4::HEADER_LEN]),
                )
            }
            OuterIp::V6 { src, dst } => {
                ipv6::Repr {
                    src_addr: src,
                    dst_addr: dst,
                    next_header: crate::IPPROTO_UDP,
                    hop_limit: params.ttl,
                    traffic_class: params.tos,
                    flow_label: params.flow_label,
                    payload_len: 0,
                }
                .emit(&mut ipv6::Packet::new_unchecked(
                    &mut bytes[..ipv6::HEADER_LEN],
                ));
                (
                    ipv6::HEADER_LEN,
                    true,
                    checksum::pseudo_header_v6(&src, &dst, crate::IPPROTO_UDP, 0),
                )
            }
        };
        udp::Repr {
            src_port: 0,
            dst_port,
            payload_len: 0,
        }
        .emit(&mut udp::Packet::new_unchecked(
            &mut bytes[ip_len..ip_len + udp::HEADER_LEN],
        ));
        let t = ip_len + udp::HEADER_LEN;
        bytes[t..t + header.len].copy_from_slice(header.as_bytes());
        UdpTunnelTemplate {
            bytes,
            len: t + header.len,
            ip_len,
            v6,
            base_sum,
            udp_checksum: v6 && params.ipv6_udp_checksum,
            outer,
            dst_port,
            inner: header.inner,
            kind: header.kind,
            src_ports: params.src_ports,
            hash_seed: params.hash_seed,
        }
    }

    /// Headroom needed in front of the inner frame (outer IP + UDP + tunnel header).
    pub const fn headroom(&self) -> usize {
        self.len
    }

    /// The outer addresses.
    pub const fn outer(&self) -> OuterIp {
        self.outer
    }

    /// The UDP destination port.
    pub const fn dst_port(&self) -> u16 {
        self.dst_port
    }

    /// VXLAN or Geneve.
    pub const fn kind(&self) -> TunnelKind {
        self.kind
    }

    /// What the inner frame is.
    pub const fn inner_proto(&self) -> InnerProto {
        self.inner
    }

    /// The template bytes (lengths, VNI, source port and checksums zero).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The UDP source port for an inner frame: its flow hash mapped into the port range.
    #[inline]
    pub fn source_port(&self, inner: &[u8]) -> u16 {
        let h = match self.inner {
            InnerProto::Ethernet => flow_hash_ethernet(inner, self.hash_seed),
            InnerProto::Ipv4 | InnerProto::Ipv6 => {
                flow_hash_ip(inner, self.hash_seed).unwrap_or(self.hash_seed)
            }
        };
        self.src_ports.port_for_hash(h)
    }

    /// Writes the outer headers in front of the inner frame at
    /// `buf[inner_start..inner_start + inner_len]` and returns the range of the whole
    /// packet to send (from the outer IP header to the end of the inner frame).
    ///
    /// `src_port` is usually [`UdpTunnelTemplate::source_port`] of the inner frame (or a
    /// value cached with the flow). Over IPv6 this computes the UDP checksum, which reads
    /// the whole payload.
    #[inline]
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        inner_start: usize,
        inner_len: usize,
        vni: u32,
        src_port: u16,
    ) -> Result<Range<usize>, DropReason> {
        let hl = self.len;
        let (start, end) = check_frame(buf.len(), inner_start, inner_len, hl, vni)?;
        let total = hl + inner_len;
        let udp_len = total - self.ip_len;
        if udp_len > usize::from(u16::MAX) || (!self.v6 && total > usize::from(u16::MAX)) {
            return Err(DropReason::FrameTooLarge);
        }
        let (hdr, payload) = buf[start..end].split_at_mut(hl);
        // Fixed-size copies for the common outer headers inline to a few moves instead
        // of a memcpy call.
        match hl {
            36 => copy_fixed::<36>(hdr, &self.bytes),
            44 => copy_fixed::<44>(hdr, &self.bytes),
            56 => copy_fixed::<56>(hdr, &self.bytes),
            64 => copy_fixed::<64>(hdr, &self.bytes),
            _ => hdr.copy_from_slice(&self.bytes[..hl]),
        }
        let u = self.ip_len;
        put16(hdr, u, src_port);
        put16(hdr, u + 4, udp_len as u16);
        put_vni(hdr, u + udp::HEADER_LEN + VNI_OFFSET, vni);
        if self.v6 {
            put16(hdr, 4, udp_len as u16);
            if self.udp_checksum {
                let s = self.base_sum
                    + udp_len as u64
                    + checksum::sum(&hdr[u..])
                    + checksum::sum(payload);
                let c = !checksum::fold(s);
                put16(hdr, u + 6, if c == 0 { 0xffff } else { c });
            }
        } else {
            put16(hdr, 2, total as u16);
            put16(hdr, 10, !checksum::fold(self.base_sum + total as u64));
        }
        Ok(start..end)
    }
}
