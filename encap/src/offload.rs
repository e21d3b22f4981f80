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
use crate::checksum;
use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};

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
        })
    }
}

/// Field offsets of the virtio net header (10-byte form, little-endian).
pub mod field {
    use core::ops::Range;
    /// Flags ([`super::VirtioNetHdr::F_NEEDS_CSUM`], [`super::VirtioNetHdr::F_DATA_VALID`]).
    pub const FLAGS: usize = 0;
    /// GSO type.
    pub const GSO_TYPE: usize = 1;
    /// Length of the headers (Ethernet + IP + TCP) to copy into each segment; a hint.
    pub const HDR_LEN: Range<usize> = 2..4;
    /// Maximum payload per segment.
    pub const GSO_SIZE: Range<usize> = 4..6;
    /// Offset from the start of the frame where checksumming starts.
    pub const CSUM_START: Range<usize> = 6..8;
    /// Offset from `csum_start` where the checksum is stored.
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    /// Number of merged receive buffers (12-byte form with `VIRTIO_NET_F_MRG_RXBUF`).
    pub const NUM_BUFFERS: Range<usize> = 10..12;
}

/// Length of the virtio net header without `num_buffers`.
pub const VIRTIO_NET_HDR_LEN: usize = 10;
/// Length of the virtio net header with `num_buffers` (`VIRTIO_NET_F_MRG_RXBUF`).
pub const VIRTIO_NET_HDR_MRG_LEN: usize = 12;

/// A read/write view of a virtio net header in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checks (getters still never panic; they read 0 when short).
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps a buffer that holds at least the 10-byte header.
    pub fn new_checked(buffer: T) -> Result<Header<T>, OffloadError> {
        if buffer.as_ref().len() < VIRTIO_NET_HDR_LEN {
            return Err(OffloadError::Truncated);
        }
        Ok(Header { buffer })
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, i: usize) -> u8 {
        self.buffer.as_ref().get(i).copied().unwrap_or(0)
    }
    fn word(&self, r: core::ops::Range<usize>) -> u16 {
        match self.buffer.as_ref().get(r) {
            Some(&[a, b]) => u16::from_le_bytes([a, b]),
            _ => 0,
        }
    }
    /// Flags.
    pub fn flags(&self) -> u8 {
        self.byte(field::FLAGS)
    }
    /// GSO type (with the ECN bit).
    pub fn gso_type(&self) -> u8 {
        self.byte(field::GSO_TYPE)
    }
    /// Header length hint.
    pub fn hdr_len(&self) -> u16 {
        self.word(field::HDR_LEN)
    }
    /// Maximum payload per segment.
    pub fn gso_size(&self) -> u16 {
        self.word(field::GSO_SIZE)
    }
    /// Where checksumming starts.
    pub fn csum_start(&self) -> u16 {
        self.word(field::CSUM_START)
    }
    /// Where the checksum goes, from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.word(field::CSUM_OFFSET)
    }
    /// Number of merged buffers (0 when the buffer holds only the 10-byte form).
    pub fn num_buffers(&self) -> u16 {
        self.word(field::NUM_BUFFERS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn set_word(&mut self, r: core::ops::Range<usize>, v: u16) {
        if let Some(b) = self.buffer.as_mut().get_mut(r) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// Sets the flags.
    pub fn set_flags(&mut self, v: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::FLAGS) {
            *b = v;
        }
    }
    /// Sets the GSO type.
    pub fn set_gso_type(&mut self, v: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::GSO_TYPE) {
            *b = v;
        }
    }
    /// Sets the header length hint.
    pub fn set_hdr_len(&mut self, v: u16) {
        self.set_word(field::HDR_LEN, v);
    }
    /// Sets the segment payload size.
    pub fn set_gso_size(&mut self, v: u16) {
        self.set_word(field::GSO_SIZE, v);
    }
    /// Sets where checksumming starts.
    pub fn set_csum_start(&mut self, v: u16) {
        self.set_word(field::CSUM_START, v);
    }
    /// Sets where the checksum goes.
    pub fn set_csum_offset(&mut self, v: u16) {
        self.set_word(field::CSUM_OFFSET, v);
    }
    /// Sets the number of merged buffers (ignored when the buffer is the 10-byte form).
    pub fn set_num_buffers(&mut self, v: u16) {
        self.set_word(field::NUM_BUFFERS, v);
    }
}

/// The fields of a virtio net header (`struct virtio_net_hdr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VirtioNetHdr {
    /// Flags: [`Self::F_NEEDS_CSUM`], [`Self::F_DATA_VALID`].
    pub flags: u8,
    /// GSO type: one of the `GSO_*` constants, possibly with [`Self::GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers to replicate into each segment (a hint; not trusted here).
    pub hdr_len: u16,
    /// Maximum payload per segment (the MSS).
    pub gso_size: u16,
    /// Offset from the start of the frame where checksumming starts.
    pub csum_start: u16,
    /// Offset from `csum_start` where the checksum is stored (16 for TCP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// The checksum from `csum_start` on is still to be computed; the checksum field
    /// holds the pseudo-header sum.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksum has been validated.
    pub const F_DATA_VALID: u8 = 2;
    /// Not a GSO frame.
    pub const GSO_NONE: u8 = 0;
    /// TCP over IPv4 (TSO).
    pub const GSO_TCPV4: u8 = 1;
    /// UDP fragmentation offload over IPv4 (obsolete).
    pub const GSO_UDP: u8 = 3;
    /// TCP over IPv6 (TSO).
    pub const GSO_TCPV6: u8 = 4;
    /// UDP segmentation (USO).
    pub const GSO_UDP_L4: u8 = 5;
    /// The frame has CWR set (may only be on the first segment).
    pub const GSO_ECN: u8 = 0x80;

    /// Reads the 10-byte header at the start of `buf` (the rest, e.g. `num_buffers`, is
    /// ignored). Checks that `gso_type` is defined and that GSO frames have a
    /// `gso_size`.
    pub fn parse(buf: &[u8]) -> Result<VirtioNetHdr, OffloadError> {
        let h = Header::new_checked(buf)?;
        let r = VirtioNetHdr {
            flags: h.flags(),
            gso_type: h.gso_type(),
            hdr_len: h.hdr_len(),
            gso_size: h.gso_size(),
            csum_start: h.csum_start(),
            csum_offset: h.csum_offset(),
        };
        match r.gso_kind() {
            Self::GSO_NONE => {}
            Self::GSO_TCPV4 | Self::GSO_TCPV6 | Self::GSO_UDP | Self::GSO_UDP_L4 => {
                if r.gso_size == 0 {
                    return Err(OffloadError::ZeroGsoSize);
                }
            }
            _ => return Err(OffloadError::BadGsoType),
        }
        Ok(r)
    }

    /// Length of the emitted header (10 bytes).
    pub const fn buffer_len(&self) -> usize {
        VIRTIO_NET_HDR_LEN
    }

    /// Writes the 10-byte header at the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), OffloadError> {
        let mut h = Header::new_checked(buf)?;
        h.set_flags(self.flags);
        h.set_gso_type(self.gso_type);
        h.set_hdr_len(self.hdr_len);
        h.set_gso_size(self.gso_size);
        h.set_csum_start(self.csum_start);
        h.set_csum_offset(self.csum_offset);
        Ok(())
    }

    /// The GSO type without the ECN bit.
    pub const fn gso_kind(&self) -> u8 {
        self.gso_type & !Self::GSO_ECN
    }
}

/// Where the headers of an Ethernet + IP + TCP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TcpFrame {
    /// Start of the IP header.
    l3: usize,
    /// Start of the TCP header.
    l4: usize,
    /// Start of the TCP payload (length of all the headers).
    hl: usize,
    /// End of the IP packet (Ethernet padding after it is ignored).
    end: usize,
    /// IPv6 (else IPv4).
    v6: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(d) = b.get_mut(at..at + 2) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(d) = b.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

fn parse_tcp_frame(f: &[u8]) -> Result<TcpFrame, OffloadError> {
    parse_l4_frame(f, IPPROTO_TCP)
}

/// Like [`parse_tcp_frame`] for a TCP (`proto` 6) or UDP (`proto` 17) frame; for UDP `hl`
/// is the end of the 8-byte UDP header.
fn parse_l4_frame(f: &[u8], proto: u8) -> Result<TcpFrame, OffloadError> {
    if f.len() < 14 {
        return Err(OffloadError::Truncated);
    }
    let (l3, ethertype) = match be16(f, 12) {
        0x8100 | 0x88a8 => {
            if f.len() < 18 {
                return Err(OffloadError::Truncated);
            }
            (18, be16(f, 16))
        }
        t => (14, t),
    };
    let (l4, end, v6) = match ethertype {
        crate::ETHERTYPE_IPV4 => {
            let vihl = *f.get(l3).ok_or(OffloadError::Truncated)?;
            if f.len() < l3 + 20 {
                return Err(OffloadError::Truncated);
            }
            let ihl = usize::from(vihl & 0x0f) * 4;
            let total = usize::from(be16(f, l3 + 2));
            if vihl >> 4 != 4 || ihl < 20 || total < ihl || l3 + total > f.len() {
                return Err(OffloadError::BadIpHeader);
            }
            if be16(f, l3 + 6) & 0x3fff != 0 {
                return Err(OffloadError::Fragment);
            }
            if f[l3 + 9] != proto {
                return Err(OffloadError::NotTcp);
            }
            (l3 + ihl, l3 + total, false)
        }
        crate::ETHERTYPE_IPV6 => {
            if f.len() < l3 + 40 {
                return Err(OffloadError::Truncated);
            }
            let plen = usize::from(be16(f, l3 + 4));
            if f[l3] >> 4 != 6 || plen == 0 || l3 + 40 + plen > f.len() {
                return Err(OffloadError::BadIpHeader);
            }
            match f[l3 + 6] {
                x if x == proto => {}
                0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 => {
                    return Err(OffloadError::Ipv6ExtensionHeader);
                }
                _ => return Err(OffloadError::NotTcp),
            }
            (l3 + 40, l3 + 40 + plen, true)
        }
        _ => return Err(OffloadError::NotIp),
    };
    if proto == IPPROTO_UDP {
        if l4 + 8 > end {
            return Err(OffloadError::BadTcpHeader);
        }
        return Ok(TcpFrame {
            l3,
            l4,
            hl: l4 + 8,
            end,
            v6,
        });
    }
    if l4 + 20 > end {
        return Err(OffloadError::BadTcpHeader);
    }
    let doff = usize::from(f[l4 + 12] >> 4) * 4;
    if doff < 20 || l4 + doff > end {
        return Err(OffloadError::BadTcpHeader);
    }
    Ok(TcpFrame {
        l3,
        l4,
        hl: l4 + doff,
        end,
        v6,
    })
}

/// Unfolded pseudo-header sum of a TCP segment of `tcp_len` bytes in the frame `f`.
fn pseudo(f: &[u8], p: &TcpFrame, tcp_len: usize) -> u64 {
    pseudo_proto(f, p, tcp_len, IPPROTO_TCP)
}

/// Unfolded pseudo-header sum of an L4 segment (`proto`) of `l4_len` bytes in `f`.
fn pseudo_proto(f: &[u8], p: &TcpFrame, tcp_len: usize, proto: u8) -> u64 {
    let len = tcp_len as u32;
    if p.v6 {
        let a = |at: usize| -> Ipv6Addr {
            let mut o = [0u8; 16];
            if let Some(s) = f.get(at..at + 16) {
                o.copy_from_slice(s);
            }
            Ipv6Addr::from(o)
        };
        checksum::pseudo_header_v6(&a(p.l3 + 8), &a(p.l3 + 24), proto, len)
    } else {
        let a = |at: usize| Ipv4Addr::from(be32(f, at));
        checksum::pseudo_header_v4(a(p.l3 + 12), a(p.l3 + 16), proto, len)
    }
}

/// Sets the IP length fields of the packet at `p.l3` for `ip_len` bytes of IP packet and
/// recomputes the IPv4 header checksum.
fn set_ip_len(f: &mut [u8], p: &TcpFrame, ip_len: usize) {
    if p.v6 {
        put16(f, p.l3 + 4, (ip_len - 40) as u16);
    } else {
        put16(f, p.l3 + 2, ip_len as u16);
        put16(f, p.l3 + 10, 0);
        let ihl = p.l4 - p.l3;
        if let Some(h) = f.get(p.l3..p.l3 + ihl) {
            let c = checksum::checksum(h);
            put16(f, p.l3 + 10, c);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One TCP segment per `mss` bytes of payload.
    Tcp { p: TcpFrame, mss: usize },
    /// One UDP datagram per `mss` bytes of payload (`GSO_UDP_L4`, USO).
    Udp { p: TcpFrame, mss: usize },
    /// One frame, copied, with the checksum completed when `csum` is set.
    Single { csum: Option<(usize, usize)> },
}

/// Cuts one frame read from a TAP device into the frames that go on the wire, one at a
/// time, into slices the caller chooses.
///
/// A GSO frame (`GSO_TCPV4` / `GSO_TCPV6`) yields `ceil(payload / gso_size)` TCP segments
/// (one when the payload is empty). A `GSO_NONE` frame yields itself, with its checksum
/// completed when `NEEDS_CSUM` is set (any L4 protocol: the Internet checksum of
/// everything from `csum_start` to the end of the frame, stored at `csum_start +
/// csum_offset`, as the kernel's `skb_checksum_help`).
#[derive(Debug, Clone)]
pub struct Segmenter<'a> {
    frame: &'a [u8],
    mode: Mode,
    /// Next payload byte to send, relative to the frame.
    next: usize,
    /// Segments written so far.
    index: usize,
    done: bool,
}

impl<'a> Segmenter<'a> {
    /// Validates `hdr` against `frame` (the Ethernet frame that followed the header).
    pub fn new(hdr: &VirtioNetHdr, frame: &'a [u8]) -> Result<Segmenter<'a>, OffloadError> {
        let mode = match hdr.gso_kind() {
            VirtioNetHdr::GSO_NONE => {
                let csum = if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM != 0 {
                    let start = usize::from(hdr.csum_start);
                    let at = start + usize::from(hdr.csum_offset);
                    if start > frame.len() || at + 2 > frame.len() {
                        return Err(OffloadError::BadChecksumOffsets);
                    }
                    Some((start, at))
                } else {
                    None
                };
                Mode::Single { csum }
            }
            VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_TCPV6 => {
                if hdr.gso_size == 0 {
                    return Err(OffloadError::ZeroGsoSize);
                }
                let p = parse_tcp_frame(frame)?;
                if p.v6 != (hdr.gso_kind() == VirtioNetHdr::GSO_TCPV6) {
                    return Err(OffloadError::GsoTypeMismatch);
                }
                if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM != 0
                    && (usize::from(hdr.csum_start) != p.l4 || hdr.csum_offset != 16)
                {
                    return Err(OffloadError::BadChecksumOffsets);
                }
                Mode::Tcp {
                    p,
                    mss: usize::from(hdr.gso_size),
                }
            }
            VirtioNetHdr::GSO_UDP_L4 => {
                if hdr.gso_size == 0 {
                    return Err(OffloadError::ZeroGsoSize);
                }
                let p = parse_l4_frame(frame, IPPROTO_UDP)?;
                if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM != 0
                    && (usize::from(hdr.csum_start) != p.l4 || hdr.csum_offset != 6)
                {
                    return Err(OffloadError::BadChecksumOffsets);
                }
                Mode::Udp {
                    p,
                    mss: usize::from(hdr.gso_size),
                }
            }
            VirtioNetHdr::GSO_UDP => return Err(OffloadError::UnsupportedGsoType),
            _ => return Err(OffloadError::BadGsoType),
        };
        let next = match mode {
            Mode::Tcp { p, .. } | Mode::Udp { p, .. } => p.hl,
            Mode::Single { .. } => 0,
        };
        Ok(Segmenter {
            frame,
            mode,
            next,
            index: 0,
            done: false,
        })
    }

    /// Number of frames still to be written.
    pub fn remaining(&self) -> usize {
        if self.done {
            return 0;
        }
        match self.mode {
            Mode::Tcp { p, mss } | Mode::Udp { p, mss } => (p.end - self.next).div_ceil(mss).max(1),
            Mode::Single { .. } => 1,
        }
    }

    /// Length of the next frame, or `None` when all have been written.
    pub fn next_len(&self) -> Option<usize> {
        if self.done {
            return None;
        }
        Some(match self.mode {
            Mode::Tcp { p, mss } | Mode::Udp { p, mss } => p.hl + (p.end - self.next).min(mss),
            Mode::Single { .. } => self.frame.len(),
        })
    }

    /// Writes the next frame at the start of `out` and returns its length; `None` when
    /// all have been written. A too-small `out` is [`OffloadError::BufferTooSmall`] and
    /// does not advance.
    pub fn write_next(&mut self, out: &mut [u8]) -> Option<Result<usize, OffloadError>> {
        let len = self.next_len()?;
        let Some(out) = out.get_mut(..len) else {
            return Some(Err(OffloadError::BufferTooSmall));
        };
        match self.mode {
            Mode::Single { csum } => {
                out.copy_from_slice(self.frame);
                if let Some((start, at)) = csum {
                    // The field holds the pseudo-header sum and is summed with the rest.
                    let c = checksum::checksum(out.get(start..).unwrap_or(&[]));
                    put16(out, at, mangle_zero(c));
                }
                self.done = true;
            }
            Mode::Tcp { p, mss } => {
                let f = self.frame;
                let chunk = (p.end - self.next).min(mss);
                out[..p.hl].copy_from_slice(&f[..p.hl]);
                out[p.hl..].copy_from_slice(&f[self.next..self.next + chunk]);
                let first = self.index == 0;
                let last = self.next + chunk >= p.end;
                set_ip_len(out, &p, len - p.l3);
                if !p.v6 && !first {
                    let id = be16(f, p.l3 + 4).wrapping_add(self.index as u16);
                    put16(out, p.l3 + 4, id);
                    put16(out, p.l3 + 10, 0);
                    let c = checksum::checksum(&out[p.l3..p.l4]);
                    put16(out, p.l3 + 10, c);
                }
                let seq = be32(f, p.l4 + 4).wrapping_add((self.next - p.hl) as u32);
                put32(out, p.l4 + 4, seq);
                let mut flags = f[p.l4 + 13];
                if !last {
                    flags &= !(tcp_flags::FIN | tcp_flags::PSH);
                }
                if !first {
                    flags &= !tcp_flags::CWR;
                }
                out[p.l4 + 13] = flags;
                put16(out, p.l4 + 16, 0);
                let s = pseudo(f, &p, len - p.l4) + checksum::sum(&out[p.l4..]);
                put16(out, p.l4 + 16, !checksum::fold(s));
                self.next += chunk;
                self.index += 1;
                self.done = last;
            }
            Mode::Udp { p, mss } => {
                // As the kernel's `__udp_gso_segment`: every datagram gets the headers,
                // its own UDP and IP lengths, the next IPv4 ID and a full checksum.
                let f = self.frame;
                let chunk = (p.end - self.next).min(mss);
                out[..p.hl].copy_from_slice(&f[..p.hl]);
                out[p.hl..].copy_from_slice(&f[self.next..self.next + chunk]);
                let last = self.next + chunk >= p.end;
                set_ip_len(out, &p, len - p.l3);
                if !p.v6 && self.index != 0 {
                    let id = be16(f, p.l3 + 4).wrapping_add(self.index as u16);
                    put16(out, p.l3 + 4, id);
                    put16(out, p.l3 + 10, 0);
                    let c = checksum::checksum(&out[p.l3..p.l4]);
                    put16(out, p.l3 + 10, c);
                }
                put16(out, p.l4 + 4, (len - p.l4) as u16);
                put16(out, p.l4 + 6, 0);
                let s = pseudo_proto(f, &p, len - p.l4, IPPROTO_UDP) + checksum::sum(&out[p.l4..]);
                let c = !checksum::fold(s);
                // A computed zero is sent as all ones (zero means "no checksum").
                put16(out, p.l4 + 6, if c == 0 { 0xffff } else { c });
                self.next += chunk;
                self.index += 1;
                self.done = last;
            }
        }
        Some(Ok(len))
    }
}

/// Segments `frame` (described by `hdr`) into `out`, one frame after another, storing
/// each frame's length in `lens`; returns the number of frames. Fails with
/// [`OffloadError::BufferTooSmall`] when `out` or `lens` runs out.
pub fn segment_into(
    hdr: &VirtioNetHdr,
    frame: &[u8],
    out: &mut [u8],
    lens: &mut [usize],
) -> Result<usize, OffloadError> {
    let mut s = Segmenter::new(hdr, frame)?;
    let mut at = 0;
    let mut n = 0;
    while s.next_len().is_some() {
        let slot = lens.get_mut(n).ok_or(OffloadError::BufferTooSmall)?;
        let rest = out.get_mut(at..).ok_or(OffloadError::BufferTooSmall)?;
        match s.write_next(rest) {
            Some(Ok(l)) => {
                *slot = l;
                at += l;
                n += 1;
            }
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    Ok(n)
}

/// Completes the checksum of a `GSO_NONE` frame with `NEEDS_CSUM` in place (a no-op for
/// other flags). GSO frames must go through a [`Segmenter`].
pub fn complete_checksum(hdr: &VirtioNetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.gso_kind() != VirtioNetHdr::GSO_NONE {
        return Err(OffloadError::UnsupportedGsoType);
    }
    if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if start > frame.len() || at + 2 > frame.len() {
        return Err(OffloadError::BadChecksumOffsets);
    }
    // As the kernel's `skb_checksum_help`: the field holds the pseudo-header sum and is
    // summed along with the rest.
    let c = checksum::checksum(&frame[start..]);
    put16(frame, at, mangle_zero(c));
    Ok(())
}

/// A completed checksum of 0 is stored as 0xffff (the kernel's CSUM_MANGLED_0): the same
/// value in ones' complement, and for UDP 0 would mean "no checksum", which IPv6 forbids
/// (a receiver drops the datagram).
#[inline]
fn mangle_zero(c: u16) -> u16 {
    if c == 0 { 0xffff } else { c }
}

/// Rewrites the partial checksum of a `NEEDS_CSUM` frame (the pseudo-header sum that the
/// field at `csum_start + csum_offset` holds) from the frame's current IP header, for
/// after a flow rewrote its addresses. Ports and payload need nothing: they are summed
/// when the checksum is completed. A no-op without `NEEDS_CSUM`, or for a frame that is
/// not TCP or UDP over IPv4/IPv6 without extension headers.
pub fn refresh_partial_checksum(hdr: &VirtioNetHdr, frame: &mut [u8]) {
    if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM == 0 {
        return;
    }
    for proto in [IPPROTO_TCP, IPPROTO_UDP] {
        let Ok(p) = parse_l4_frame(frame, proto) else {
            continue;
        };
        let start = usize::from(hdr.csum_start);
        let at = start + usize::from(hdr.csum_offset);
        if start != p.l4 || at + 2 > p.end {
            return;
        }
        let ph = checksum::fold(pseudo_proto(frame, &p, p.end - p.l4, proto));
        put16(frame, at, ph);
        return;
    }
}

/// The reserved ("evil", RFC 3514) bit of the IPv4 flags / fragment offset word.
const IPV4_RESERVED_FLAG: u16 = 0x8000;

/// Largest IP packet (IPv4 total length, or IPv6 header plus payload length) a
/// coalesced super-frame may reach.
pub const MAX_IP_LEN: usize = 65535;

/// Bytes a coalescer slot needs to hold any super-frame: Ethernet with one VLAN tag plus
/// [`MAX_IP_LEN`].
pub const SLOT_LEN: usize = 18 + MAX_IP_LEN;

/// One super-frame being built.
#[derive(Debug, Clone, Copy)]
struct Held {
    p: TcpFrame,
    /// Bytes of the frame in the slot.
    len: usize,
    /// Payload size of the first segment (the `gso_size`).
    mss: usize,
    /// Segments merged.
    count: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    /// Insertion order, to evict the oldest.
    age: u64,
}

/// What to do with a frame that has arrived, given the flow it belongs to.
enum Verdict {
    Merge,
    Flush,
}

/// Coalesces received TCP segments into super-frames for a TAP device opened with
/// `IFF_VNET_HDR` (userspace GRO), holding at most `N` flows at a time.
///
/// The caller lends an arena of `N` slots; slot *i* is `arena[i * L..(i + 1) * L]` with
/// `L = arena.len() / N` (give [`SLOT_LEN`] per slot to allow full 64 KB super-frames).
/// Frames go in one at a time through [`Coalescer::push`]; whatever is ready comes out
/// through the `emit` callback as a [`VirtioNetHdr`] plus an Ethernet frame (the caller
/// writes both with one `writev`). Frames of one flow come out in the order they went in;
/// a frame that cannot be coalesced (not TCP, IPv4 options, SYN/RST/URG, no payload, bad
/// checksum) comes out at once, unchanged, with an all-zero header, after any held frame
/// of its flow. Call [`Coalescer::flush`] at the end of each receive batch.
#[derive(Debug)]
pub struct Coalescer<B, const N: usize = 8> {
    arena: B,
    slot_len: usize,
    held: [Option<Held>; N],
    clock: u64,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const N: usize> Coalescer<B, N> {
    /// A coalescer over `arena` (borrowed, `&mut [u8]`, or owned, `Box<[u8]>`), split
    /// into `N` equal slots.
    pub fn new(arena: B) -> Coalescer<B, N> {
        let slot_len = arena.as_ref().len().checked_div(N).unwrap_or(0);
        Coalescer {
            arena,
            slot_len,
            held: [None; N],
            clock: 0,
        }
    }

    /// Number of flows currently held.
    pub fn held(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }

    /// Takes one received Ethernet frame; emits whatever it makes ready.
    pub fn push(&mut self, frame: &[u8], mut emit: impl FnMut(&VirtioNetHdr, &[u8])) {
        let Ok(p) = parse_tcp_frame(frame) else {
            emit(&VirtioNetHdr::default(), frame);
            return;
        };
        let f = &frame[..p.end];
        let plen = p.end - p.hl;
        let flags = f[p.l4 + 13];
        // Verified before anything else: a bad segment must not end up inside a
        // NEEDS_CSUM super-frame the pod will trust.
        let valid =
            checksum::fold(pseudo(f, &p, p.end - p.l4) + checksum::sum(&f[p.l4..])) == 0xffff;
        let slot = self.find_flow(f, &p);
        if let Some(i) = slot {
            if valid && matches!(self.verdict(i, f, &p), Verdict::Merge) {
                let mss = self.merge(i, f, &p);
                if plen < mss || flags & (tcp_flags::PSH | tcp_flags::FIN) != 0 {
                    self.emit_slot(i, &mut emit);
                }
                return;
            }
            self.emit_slot(i, &mut emit);
        }
        let startable = valid
            && plen > 0
            && (p.v6 || (p.l4 - p.l3 == 20 && be16(f, p.l3 + 6) & IPV4_RESERVED_FLAG == 0))
            && flags
                & (tcp_flags::SYN
                    | tcp_flags::RST
                    | tcp_flags::URG
                    | tcp_flags::PSH
                    | tcp_flags::FIN)
                == 0
            && f.len() <= self.slot_len;
        if !startable {
            emit(&VirtioNetHdr::default(), frame);
            return;
        }
        let i = match self.held.iter().position(|h| h.is_none()) {
            Some(i) => i,
            None => {
                let Some(oldest) = (0..N).min_by_key(|&i| self.held[i].map_or(0, |h| h.age)) else {
                    // N == 0: nothing can be held.
                    emit(&VirtioNetHdr::default(), frame);
                    return;
                };
                self.emit_slot(oldest, &mut emit);
                oldest
            }
        };
        let base = i * self.slot_len;
        self.arena.as_mut()[base..base + f.len()].copy_from_slice(f);
        self.clock += 1;
        self.held[i] = Some(Held {
            p,
            len: f.len(),
            mss: plen,
            count: 1,
            next_seq: be32(f, p.l4 + 4).wrapping_add(plen as u32),
            age: self.clock,
        });
    }

    /// Emits every held frame, oldest first.
    pub fn flush(&mut self, mut emit: impl FnMut(&VirtioNetHdr, &[u8])) {
        while let Some(i) = (0..N)
            .filter(|&i| self.held[i].is_some())
            .min_by_key(|&i| self.held[i].map_or(0, |h| h.age))
        {
            self.emit_slot(i, &mut emit);
        }
    }

    fn slot(&self, i: usize) -> &[u8] {
        let len = self.held[i].map_or(0, |h| h.len);
        let base = i * self.slot_len;
        &self.arena.as_ref()[base..base + len]
    }

    /// The held flow `f` belongs to: same Ethernet header, IP version, addresses, IPv6
    /// flow label and ports.
    fn find_flow(&self, f: &[u8], p: &TcpFrame) -> Option<usize> {
        (0..N).find(|&i| {
            let Some(h) = self.held[i] else {
                return false;
            };
            let s = self.slot(i);
            let q = h.p;
            if q.v6 != p.v6 || q.l3 != p.l3 || s[..q.l3] != f[..p.l3] {
                return false;
            }
            let addrs = if p.v6 {
                // Flow label (low 20 bits of the first word) and both addresses.
                be32(s, q.l3) & 0x000f_ffff == be32(f, p.l3) & 0x000f_ffff
                    && s[q.l3 + 8..q.l3 + 40] == f[p.l3 + 8..p.l3 + 40]
            } else {
                s[q.l3 + 12..q.l3 + 20] == f[p.l3 + 12..p.l3 + 20]
            };
            addrs && s[q.l4..q.l4 + 4] == f[p.l4..p.l4 + 4]
        })
    }

    /// Whether `f`, of the flow held in slot `i`, continues that super-frame.
    fn verdict(&self, i: usize, f: &[u8], p: &TcpFrame) -> Verdict {
        let Some(h) = self.held[i] else {
            return Verdict::Flush;
        };
        let s = self.slot(i);
        let q = h.p;
        let plen = p.end - p.hl;
        let ip_ok = if p.v6 {
            // Traffic class and hop limit.
            be32(s, q.l3) & 0x0ff0_0000 == be32(f, p.l3) & 0x0ff0_0000 && s[q.l3 + 7] == f[p.l3 + 7]
        } else {
            // As the kernel's inet_gro_receive, any fragment-word bit but DF (here: the
            // reserved bit; fragments never parse) ends the super-frame, so that no
            // segment's bit is lost in, or copied into, the merged header.
            p.l4 - p.l3 == 20
                && be16(f, p.l3 + 6) & IPV4_RESERVED_FLAG == 0
                && s[q.l3 + 1] == f[p.l3 + 1]
                && s[q.l3 + 8] == f[p.l3 + 8]
                && (be16(s, q.l3 + 6) ^ be16(f, p.l3 + 6)) & 0x4000 == 0
        };
        let mask = !u32::from(tcp_flags::CWR | tcp_flags::FIN | tcp_flags::PSH) << 16;
        let tcp_ok = f[p.l4 + 13] & tcp_flags::CWR == 0
            && (be32(s, q.l4 + 12) ^ be32(f, p.l4 + 12)) & (mask | 0xffff) == 0
            && be32(s, q.l4 + 8) == be32(f, p.l4 + 8)
            && s[q.l4 + 20..q.hl] == f[p.l4 + 20..p.hl]
            && be32(f, p.l4 + 4) == h.next_seq;
        let size_ok = plen > 0
            && plen <= h.mss
            && h.len - q.l3 + plen <= MAX_IP_LEN
            && h.len + plen <= self.slot_len;
        if ip_ok && tcp_ok && size_ok {
            Verdict::Merge
        } else {
            Verdict::Flush
        }
    }

    /// Appends the payload of `f` to slot `i`; returns the slot's segment size.
    fn merge(&mut self, i: usize, f: &[u8], p: &TcpFrame) -> usize {
        let Some(h) = self.held[i].as_mut() else {
            return 0;
        };
        let payload = &f[p.hl..];
        let at = i * self.slot_len + h.len;
        self.arena.as_mut()[at..at + payload.len()].copy_from_slice(payload);
        h.len += payload.len();
        h.count += 1;
        h.next_seq = h.next_seq.wrapping_add(payload.len() as u32);
        let fl = i * self.slot_len + h.p.l4 + 13;
        self.arena.as_mut()[fl] |= f[p.l4 + 13] & (tcp_flags::PSH | tcp_flags::FIN);
        h.mss
    }

    /// Emits the frame in slot `i` and frees the slot.
    fn emit_slot(&mut self, i: usize, emit: &mut impl FnMut(&VirtioNetHdr, &[u8])) {
        let Some(h) = self.held[i].take() else {
            return;
        };
        let base = i * self.slot_len;
        let s = &mut self.arena.as_mut()[base..base + h.len];
        if h.count == 1 {
            emit(&VirtioNetHdr::default(), s);
            return;
        }
        let p = h.p;
        set_ip_len(s, &p, h.len - p.l3);
        let ph = checksum::fold(pseudo(s, &p, h.len - p.l4));
        put16(s, p.l4 + 16, ph);
        let mut gso_type = if p.v6 {
            VirtioNetHdr::GSO_TCPV6
        } else {
            VirtioNetHdr::GSO_TCPV4
        };
        if s[p.l4 + 13] & tcp_flags::CWR != 0 {
            gso_type |= VirtioNetHdr::GSO_ECN;
        }
        let hdr = VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type,
            hdr_len: p.hl as u16,
            gso_size: h.mss as u16,
            csum_start: p.l4 as u16,
            csum_offset: 16,
        };
        emit(&hdr, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet (optionally 802.1Q) + IPv4 + TCP headers with `payload` zero bytes.
    fn frame(vlan: bool, payload: usize) -> std::vec::Vec<u8> {
        let l3 = if vlan { 18 } else { 14 };
        let mut f = std::vec![0u8; l3 + 40 + payload];
        if vlan {
            f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        }
        f[l3 - 2..l3].copy_from_slice(&0x0800u16.to_be_bytes());
        f[l3] = 0x45;
        f[l3 + 2..l3 + 4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[l3 + 9] = IPPROTO_TCP;
        f[l3 + 32] = 5 << 4;
        f
    }

    #[test]
    fn finds_headers_behind_a_vlan_tag() {
        let p = parse_tcp_frame(&frame(true, 7)).unwrap();
        assert_eq!((p.l3, p.l4, p.hl, p.end, p.v6), (18, 38, 58, 65, false));
        let p = parse_tcp_frame(&frame(false, 0)).unwrap();
        assert_eq!((p.l3, p.l4, p.hl, p.end), (14, 34, 54, 54));
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut f = frame(false, 2);
        f.extend_from_slice(&[0xee; 4]);
        assert_eq!(parse_tcp_frame(&f).unwrap().end, 14 + 42);
    }

    #[test]
    fn view_getters_read_zero_when_short() {
        let h = Header::new_unchecked(&[1u8, 4, 9][..]);
        assert_eq!(
            (h.flags(), h.gso_type(), h.gso_size(), h.num_buffers()),
            (1, 4, 0, 0)
        );
        let mut b = [0u8; 12];
        let mut h = Header::new_checked(&mut b[..]).unwrap();
        h.set_num_buffers(3);
        assert_eq!(h.num_buffers(), 3);
        assert_eq!(b[10..12], [3, 0]);
    }

    #[test]
    fn empty_payload_is_one_segment() {
        let f = frame(false, 0);
        let hdr = VirtioNetHdr {
            gso_type: VirtioNetHdr::GSO_TCPV4,
            gso_size: 100,
            ..VirtioNetHdr::default()
        };
        let s = Segmenter::new(&hdr, &f).unwrap();
        assert_eq!((s.remaining(), s.next_len()), (1, Some(54)));
    }
}
