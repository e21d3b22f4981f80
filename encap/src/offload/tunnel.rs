//! The 24-byte `virtio_net_hdr` of a TAP that carries UDP-tunnel super-frames (Linux
//! 6.17+, `TUN_F_UDP_TUNNEL_GSO` and `TUNSETVNETHDRSZ` 24).
//!
//! Such a TAP hands over (and takes) a whole encapsulated 64 KB super-frame at once:
//! outer Ethernet, outer IP, outer UDP, the tunnel header, then the inner frame whose
//! TCP (or UDP) payload the kernel is still to cut. The header is the 12-byte form
//! (flags, `gso_type`, `hdr_len`, `gso_size`, `csum_start`, `csum_offset`,
//! `num_buffers`), the hash fields (bytes 12–19, unused here) and two offsets from the
//! start of the frame: `outer_th_offset` (the outer UDP header) and `inner_nh_offset`
//! (the inner IP header). `csum_start` then names the *inner* transport header.
//!
//! What the kernel has got wrong here, and how this parser keeps clear of it:
//!
//! * Reading a non-tunnel packet with a 24-byte header could leak kernel stack bytes
//!   into bytes 10–23 (fixed in 6.18 stable): the offsets are read only when a tunnel
//!   bit is set in `gso_type`, and `num_buffers` and the hash are never read.
//! * The meaning of `hdr_len` has changed between kernels: it is kept only to be
//!   written back, never used to find a header.
//! * The rest is checked against the frame itself ([`TunnelVnetHdr::check_frame`]):
//!   exactly one tunnel bit that matches the outer IP version, an inner TSO/USO type
//!   that matches the inner IP version (UFO refused), `NEEDS_CSUM`, and offsets in order
//!   and inside the frame, each pointing where the headers really are.

use super::{IPPROTO_TCP, IPPROTO_UDP, OffloadError, VIRTIO_NET_HDR_LEN, VirtioNetHdr};

/// Length of the tunnel form of the header (`TUNSETVNETHDRSZ` 24).
pub const VIRTIO_NET_HDR_TNL_LEN: usize = 24;

/// Field offsets of the tunnel part of the 24-byte header (little-endian).
pub mod tunnel_field {
    use core::ops::Range;
    /// Offset of the outer transport (UDP) header from the start of the frame.
    pub const OUTER_TH_OFFSET: Range<usize> = 20..22;
    /// Offset of the inner network (IP) header from the start of the frame.
    pub const INNER_NH_OFFSET: Range<usize> = 22..24;
}

/// `gso_type` bit: the super-frame is UDP-tunnelled over IPv4.
pub const GSO_UDP_TUNNEL_IPV4: u8 = 0x20;
/// `gso_type` bit: the super-frame is UDP-tunnelled over IPv6.
pub const GSO_UDP_TUNNEL_IPV6: u8 = 0x40;
/// Both tunnel bits.
pub const GSO_UDP_TUNNEL_MASK: u8 = GSO_UDP_TUNNEL_IPV4 | GSO_UDP_TUNNEL_IPV6;
/// Flag: the outer UDP checksum is to be filled in as well (`TUN_F_UDP_TUNNEL_GSO_CSUM`).
pub const F_UDP_TUNNEL_CSUM: u8 = 8;

/// Where the outer headers of a tunnel super-frame end and the inner one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TunnelOffsets {
    /// The outer IP header is IPv6 (`GSO_UDP_TUNNEL_IPV6`), else IPv4.
    pub outer_v6: bool,
    /// The outer UDP checksum is to be computed ([`F_UDP_TUNNEL_CSUM`]).
    pub outer_csum: bool,
    /// Offset of the outer UDP header.
    pub outer_th: u16,
    /// Offset of the inner IP header.
    pub inner_nh: u16,
}

/// The 24-byte header: the plain fields (with `gso_type` stripped of the tunnel bits)
/// and, for a tunnel super-frame, its offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TunnelVnetHdr {
    /// Flags, the inner GSO type (ECN bit kept, tunnel bits removed), `gso_size`, and the
    /// checksum offsets (of the inner transport header for a tunnel super-frame).
    /// `flags` keeps [`F_UDP_TUNNEL_CSUM`] out (it is `tunnel.outer_csum`).
    pub base: VirtioNetHdr,
    /// Present when a tunnel bit is set.
    pub tunnel: Option<TunnelOffsets>,
}

fn le16(buf: &[u8], r: core::ops::Range<usize>) -> u16 {
    match buf.get(r) {
        Some(&[a, b]) => u16::from_le_bytes([a, b]),
        _ => 0,
    }
}

impl TunnelVnetHdr {
    /// Reads the 24-byte header at the start of `buf`.
    ///
    /// Without a tunnel bit it is the plain header ([`VirtioNetHdr::parse`] of the first
    /// 10 bytes; bytes 10–23 are not read). With one: exactly one tunnel bit, an inner
    /// `TCPV4`, `TCPV6` or `UDP_L4` type, `NEEDS_CSUM`, a `gso_size`, and
    /// `outer_th + 8 <= inner_nh < csum_start`. Whether the offsets fit the frame is
    /// [`TunnelVnetHdr::check_frame`]'s job.
    pub fn parse(buf: &[u8]) -> Result<TunnelVnetHdr, OffloadError> {
        if buf.len() < VIRTIO_NET_HDR_TNL_LEN {
            return Err(OffloadError::Truncated);
        }
        let gso_type = buf[1];
        let tnl = gso_type & GSO_UDP_TUNNEL_MASK;
        if tnl == 0 {
            if buf[0] & F_UDP_TUNNEL_CSUM != 0 {
                // The tunnel checksum flag without a tunnel.
                return Err(OffloadError::BadTunnelGso);
            }
            let base = VirtioNetHdr::parse(&buf[..VIRTIO_NET_HDR_LEN])?;
            return Ok(TunnelVnetHdr { base, tunnel: None });
        }
        if tnl == GSO_UDP_TUNNEL_MASK {
            return Err(OffloadError::BadTunnelGso);
        }
        let inner = gso_type & !(GSO_UDP_TUNNEL_MASK | VirtioNetHdr::GSO_ECN);
        if !matches!(
            inner,
            VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_TCPV6 | VirtioNetHdr::GSO_UDP_L4
        ) {
            return Err(OffloadError::BadTunnelGso);
        }
        let flags = buf[0];
        if flags & VirtioNetHdr::F_NEEDS_CSUM == 0 {
            return Err(OffloadError::BadTunnelGso);
        }
        let base = VirtioNetHdr {
            flags: flags & !F_UDP_TUNNEL_CSUM,
            gso_type: gso_type & !GSO_UDP_TUNNEL_MASK,
            hdr_len: le16(buf, 2..4),
            gso_size: le16(buf, 4..6),
            csum_start: le16(buf, 6..8),
            csum_offset: le16(buf, 8..10),
        };
        if base.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let t = TunnelOffsets {
            outer_v6: tnl == GSO_UDP_TUNNEL_IPV6,
            outer_csum: flags & F_UDP_TUNNEL_CSUM != 0,
            outer_th: le16(buf, tunnel_field::OUTER_TH_OFFSET),
            inner_nh: le16(buf, tunnel_field::INNER_NH_OFFSET),
        };
        // Outer Ethernet + the smallest IP header before the outer UDP header, the UDP
        // header before the inner IP header, and that before the inner transport header.
        let min_outer = 14 + if t.outer_v6 { 40 } else { 20 };
        if (t.outer_th as usize) < min_outer
            || t.outer_th as usize + 8 > t.inner_nh as usize
            || t.inner_nh as usize + 20 > base.csum_start as usize
        {
            return Err(OffloadError::BadTunnelOffsets);
        }
        Ok(TunnelVnetHdr {
            base,
            tunnel: Some(t),
        })
    }

    /// Checks a tunnel super-frame against its header: the outer IP header (of the
    /// version the tunnel bit says, protocol UDP, no IPv6 extension header, not a
    /// fragment) ends exactly at `outer_th`; the inner IP header at `inner_nh` is of the
    /// version the inner GSO type says and ends exactly at `csum_start`; the inner
    /// transport header is TCP (UDP for `UDP_L4`) with its checksum at `csum_offset`,
    /// and lies inside the frame. A header without a tunnel passes.
    pub fn check_frame(&self, frame: &[u8]) -> Result<(), OffloadError> {
        let Some(t) = self.tunnel else { return Ok(()) };
        let bad = OffloadError::BadTunnelOffsets;
        if frame.len() < 14 {
            return Err(OffloadError::Truncated);
        }
        let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
        let outer_th = t.outer_th as usize;
        let inner_nh = t.inner_nh as usize;
        let l4 = self.base.csum_start as usize;
        let (l3_end, proto) = ip_header(frame, 14).ok_or(bad)?;
        let outer_is_v6 = frame[14] >> 4 == 6;
        let want = if t.outer_v6 { 0x86dd } else { 0x0800 };
        if ethertype != want || outer_is_v6 != t.outer_v6 {
            return Err(OffloadError::GsoTypeMismatch);
        }
        if proto != IPPROTO_UDP || l3_end != outer_th || outer_th + 8 > inner_nh {
            return Err(bad);
        }
        let (inner_end, inner_proto) = ip_header(frame, inner_nh).ok_or(bad)?;
        let inner_v6 = frame[inner_nh] >> 4 == 6;
        let kind = self.base.gso_kind();
        let (want_proto, csum_offset) = match kind {
            VirtioNetHdr::GSO_TCPV4 if !inner_v6 => (IPPROTO_TCP, 16),
            VirtioNetHdr::GSO_TCPV6 if inner_v6 => (IPPROTO_TCP, 16),
            VirtioNetHdr::GSO_UDP_L4 => (IPPROTO_UDP, 6),
            _ => return Err(OffloadError::GsoTypeMismatch),
        };
        if inner_end != l4 || inner_proto != want_proto {
            return Err(bad);
        }
        if self.base.csum_offset != csum_offset {
            return Err(OffloadError::BadChecksumOffsets);
        }
        let l4_len = if want_proto == IPPROTO_TCP {
            let doff = usize::from(*frame.get(l4 + 12).ok_or(OffloadError::Truncated)? >> 4) * 4;
            if doff < 20 {
                return Err(OffloadError::BadTcpHeader);
            }
            doff
        } else {
            8
        };
        if l4 + l4_len > frame.len() {
            return Err(OffloadError::Truncated);
        }
        Ok(())
    }

    /// Length of the emitted header (24 bytes).
    pub const fn buffer_len(&self) -> usize {
        VIRTIO_NET_HDR_TNL_LEN
    }

    /// Writes the 24-byte header at the start of `buf`: the tunnel bit and offsets when
    /// `tunnel` is set, zeros in bytes 10–23 otherwise.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), OffloadError> {
        let Some(b) = buf.get_mut(..VIRTIO_NET_HDR_TNL_LEN) else {
            return Err(OffloadError::Truncated);
        };
        b.fill(0);
        self.base.emit(b)?;
        if let Some(t) = self.tunnel {
            let bit = if t.outer_v6 {
                GSO_UDP_TUNNEL_IPV6
            } else {
                GSO_UDP_TUNNEL_IPV4
            };
            b[1] |= bit;
            if t.outer_csum {
                b[0] |= F_UDP_TUNNEL_CSUM;
            }
            b[tunnel_field::OUTER_TH_OFFSET].copy_from_slice(&t.outer_th.to_le_bytes());
            b[tunnel_field::INNER_NH_OFFSET].copy_from_slice(&t.inner_nh.to_le_bytes());
        }
        Ok(())
    }

    /// The inner frame's own header: its offsets taken relative to `inner_eth` (where the
    /// inner Ethernet header starts), as a TAP toward a pod wants it. `None` for a header
    /// without a tunnel, or an `inner_eth` past the inner IP header.
    pub fn inner(&self, inner_eth: usize) -> Option<VirtioNetHdr> {
        let t = self.tunnel?;
        let nh = usize::from(t.inner_nh);
        if inner_eth + 14 > nh {
            return None;
        }
        let mut h = self.base;
        h.csum_start = u16::try_from(usize::from(h.csum_start) - inner_eth).ok()?;
        // A hint only, and recomputed rather than carried over (see the module doc).
        h.hdr_len = 0;
        Some(h)
    }
}

/// The end of the IP header at `at` and its protocol (IPv4: header length from IHL, not
/// a fragment; IPv6: the fixed header, next header as is).
fn ip_header(frame: &[u8], at: usize) -> Option<(usize, u8)> {
    let first = *frame.get(at)?;
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 || frame.len() < at + ihl {
                return None;
            }
            let frag = u16::from_be_bytes([frame[at + 6], frame[at + 7]]);
            if frag & 0x3fff != 0 {
                return None;
            }
            Some((at + ihl, frame[at + 9]))
        }
        6 => {
            if frame.len() < at + 40 {
                return None;
            }
            Some((at + 40, frame[at + 6]))
        }
        _ => None,
    }
}
