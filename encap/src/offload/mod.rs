//! TCP segmentation and coalescing (userspace TSO and GRO) for TAP devices opened with
//! `IFF_VNET_HDR`.
//!
//! With TAP offloads on, the kernel hands Weft 64 KB TCP "super-frames", each preceded by
//! a [`VirtioNetHdr`] that says how to cut it (`gso_type`, `gso_size`) and where the TCP
//! checksum is still to be completed (`NEEDS_CSUM`, `csum_start`, `csum_offset`). The
//! tunnel carries ordinary MSS-sized segments, so the transmit side cuts the super-frame
//! with a [`Segmenter`]; the receive side glues the decapsulated segments of one flow
//! back together with a [`Coalescer`] before writing them to the pod's TAP, so that the
//! pod's TCP stack sees one packet per 64 KB instead of 45.
//!
//! Both sides are pure: no allocation, no I/O, caller-owned buffers, and no panic on any
//! input. A frame this module cannot handle is an [`OffloadError`] (segmentation) or is
//! passed through unchanged (coalescing).
//!
//! * **Segmentation** follows the kernel's `tcp_gso_segment` / `inet_gso_segment`: every
//!   segment gets the Ethernet, IP and TCP headers of the super-frame (IPv4 options and
//!   TCP options copied as they are), its own IPv4 total length / IPv6 payload length,
//!   an IPv4 ID incremented per segment and a fresh IPv4 header checksum, a sequence
//!   number advanced by the payload before it, FIN and PSH only on the last segment, CWR
//!   only on the first, and a full TCP checksum computed from scratch (the field's
//!   pseudo-header sum is not trusted). The [`Segmenter`] writes one segment at a time
//!   into a slice the caller chooses, so the datapath can place each one straight behind
//!   the headroom of its tunnel header.
//! * **Coalescing** follows the kernel's `tcp_gro_receive` / `inet_gro_receive` /
//!   `ipv6_gro_receive`: segments merge when they have the same Ethernet header,
//!   addresses, ports (and IPv6 flow label), the next sequence number, the same ACK
//!   number, data offset, window and flags (except that CWR is only allowed on the first
//!   segment and PSH/FIN on the last), byte-identical TCP options, the same TTL/hop limit,
//!   TOS/traffic class and DF bit (and no IPv4 reserved flag bit), a payload no larger than the first segment's (a shorter
//!   one ends the super-frame) and an IP length of at most 65535. The IPv4 ID is not
//!   checked. IPv4 packets with options are not coalesced (as in the kernel).
//!
//! ## Which checksum the coalesced super-frame carries
//!
//! A coalesced super-frame is emitted with `NEEDS_CSUM` (`csum_start` = TCP header,
//! `csum_offset` = 16) and the TCP checksum field holding the folded, uncomplemented
//! pseudo-header sum over the whole TCP length, exactly what the kernel's own TSO
//! super-frames carry. `DATA_VALID` with a full checksum was rejected: the kernel treats
//! a GSO packet that is not `CHECKSUM_PARTIAL` as a bad offload if it ever has to segment
//! it again (a pod that forwards, a bridge behind the TAP), and `NEEDS_CSUM` needs no pass
//! over the payload at emit time. Because `NEEDS_CSUM` makes the pod's stack trust the
//! payload, every segment's TCP checksum is verified before it is merged (as the kernel's
//! GRO does; a VXLAN over IPv4 outer UDP checksum is usually zero, so nothing else would
//! catch a corrupted inner segment); a segment that fails is passed through unchanged so
//! that the pod's stack drops and counts it.
//!
//! The virtio header is read and written in little-endian byte order (virtio 1.0, and the
//! legacy native order on x86 and arm64; a TAP on a big-endian host needs `TUNSETVNETLE`).
//!
//! The module is in five parts: the virtio header ([`VirtioNetHdr`], `virtio.rs`) and its
//! 24-byte UDP-tunnel form ([`TunnelVnetHdr`], `tunnel.rs`), the
//! headers of a TCP/UDP frame both sides read (`frame.rs`), segmentation
//! ([`Segmenter`], `segment.rs`) and coalescing ([`Coalescer`], `coalesce.rs`).
use core::fmt;

/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// TCP flag bits (the 13th byte of the TCP header).
pub mod tcp_flags {
    /// No more data from sender.
    pub const FIN: u8 = 0x01;
    /// Synchronise sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
    /// Urgent pointer field significant.
    pub const URG: u8 = 0x20;
    /// ECN echo.
    pub const ECE: u8 = 0x40;
    /// Congestion window reduced.
    pub const CWR: u8 = 0x80;
}

/// Why a frame could not be segmented (or a virtio header not parsed). A small `Copy`
/// enum meant to index drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OffloadError {
    /// The buffer is shorter than a header it must hold.
    Truncated,
    /// The virtio header's `gso_type` is not one defined by virtio.
    BadGsoType,
    /// A defined `gso_type` that Weft does not segment (UFO, `GSO_UDP`: IP fragmentation).
    UnsupportedGsoType,
    /// A GSO frame with `gso_size` 0.
    ZeroGsoSize,
    /// `gso_type` says TCPv4 but the frame is IPv6, or the reverse.
    GsoTypeMismatch,
    /// The EtherType is neither IPv4 nor IPv6 (after at most one 802.1Q tag).
    NotIp,
    /// A malformed IP header (version, header length, total or payload length).
    BadIpHeader,
    /// An IPv4 fragment, which cannot be segmented.
    Fragment,
    /// The transport protocol is not TCP (or not UDP for `GSO_UDP_L4`).
    NotTcp,
    /// An IPv6 header followed by an extension header (not walked).
    Ipv6ExtensionHeader,
    /// A malformed TCP header (data offset) or UDP header.
    BadTcpHeader,
    /// `csum_start` / `csum_offset` do not point at the TCP checksum, or lie beyond the
    /// frame.
    BadChecksumOffsets,
    /// The caller's output buffer is too small for the next segment.
    BufferTooSmall,
    /// A 24-byte header whose tunnel bits are wrong: both set, a tunnel without an
    /// inner TSO/USO type or without `NEEDS_CSUM`, or the tunnel checksum flag alone.
    BadTunnelGso,
    /// A tunnel super-frame whose outer UDP / inner IP offsets are out of order or do
    /// not point at those headers.
    BadTunnelOffsets,
}

impl fmt::Display for OffloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OffloadError::Truncated => "truncated header",
            OffloadError::BadGsoType => "unknown virtio gso type",
            OffloadError::UnsupportedGsoType => "unsupported virtio gso type",
            OffloadError::ZeroGsoSize => "gso frame with gso_size 0",
            OffloadError::GsoTypeMismatch => "gso type does not match the ip version",
            OffloadError::NotIp => "ethertype is not ipv4 or ipv6",
            OffloadError::BadIpHeader => "malformed ip header",
            OffloadError::Fragment => "ipv4 fragment",
            OffloadError::NotTcp => "not tcp",
            OffloadError::Ipv6ExtensionHeader => "ipv6 extension header",
            OffloadError::BadTcpHeader => "malformed tcp header",
            OffloadError::BadChecksumOffsets => "checksum offsets outside the frame",
            OffloadError::BufferTooSmall => "output buffer too small",
            OffloadError::BadTunnelGso => "bad udp tunnel gso type or flags",
            OffloadError::BadTunnelOffsets => "udp tunnel header offsets do not fit the frame",
        })
    }
}

mod coalesce;
mod frame;
mod segment;
mod tunnel;
mod virtio;

pub use coalesce::{Coalesced, Coalescer, MAX_IP_LEN, MAX_SPANS, SLOT_LEN, Span};
pub use segment::{
    SegmentParts, Segmenter, complete_checksum, refresh_partial_checksum, segment_into,
};
pub use tunnel::{
    F_UDP_TUNNEL_CSUM, GSO_UDP_TUNNEL_IPV4, GSO_UDP_TUNNEL_IPV6, GSO_UDP_TUNNEL_MASK,
    TunnelOffsets, TunnelVnetHdr, VIRTIO_NET_HDR_TNL_LEN, tunnel_field,
};
pub use virtio::{Header, VIRTIO_NET_HDR_LEN, VIRTIO_NET_HDR_MRG_LEN, VirtioNetHdr, field};

#[cfg(test)]
mod tests;
