//! Segmentation (userspace TSO): a super-frame cut into the frames that go on the wire.

use super::frame::{
    TcpFrame, be16, be32, parse_l4_frame, parse_tcp_frame, pseudo, pseudo_proto, put16, put32,
    set_ip_len,
};
use super::{IPPROTO_TCP, IPPROTO_UDP, OffloadError, VirtioNetHdr, tcp_flags};
use crate::checksum;

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

/// Where the bytes of one segment are when it is written by [`Segmenter::write_head`]:
/// its first `head` bytes in the caller's header buffer, then `frame[payload]`, the
/// super-frame's own bytes, not copied. Together they are what
/// [`Segmenter::write_next`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentParts {
    /// Bytes written at the start of the header buffer (the segment's Ethernet, IP and
    /// TCP/UDP headers, or a whole frame that is not cut).
    pub head: usize,
    /// The segment's payload in the super-frame (empty for a frame that is not cut).
    pub payload: core::ops::Range<usize>,
}

impl SegmentParts {
    /// Length of the whole segment.
    pub fn len(&self) -> usize {
        self.head + self.payload.len()
    }

    /// Whether the segment is empty (never for a written segment).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Segmenter<'_> {
    /// Length of the next segment's headers as [`Segmenter::write_head`] writes them
    /// (the whole frame for one that is not cut), or `None` when all have been written.
    pub fn next_head_len(&self) -> Option<usize> {
        if self.done {
            return None;
        }
        Some(match self.mode {
            Mode::Tcp { p, .. } | Mode::Udp { p, .. } => p.hl,
            Mode::Single { .. } => self.frame.len(),
        })
    }

    /// Writes the headers of the next segment at the start of `head` and says where its
    /// payload is in the super-frame: the segment goes on the wire as `head[..parts.head]`
    /// followed by `frame[parts.payload]` (an iovec each), byte for byte what
    /// [`Segmenter::write_next`] would have written into one buffer. The TCP (or UDP)
    /// checksum is computed over the headers and the payload where it lies; only the
    /// headers are copied. A frame that is not cut (`GSO_NONE`) is copied into `head`
    /// whole, its checksum completed. `None` when all have been written; a too-small
    /// `head` is [`OffloadError::BufferTooSmall`] and does not advance.
    pub fn write_head(&mut self, head: &mut [u8]) -> Option<Result<SegmentParts, OffloadError>> {
        let hl = self.next_head_len()?;
        let Some(out) = head.get_mut(..hl) else {
            return Some(Err(OffloadError::BufferTooSmall));
        };
        let f = self.frame;
        match self.mode {
            Mode::Single { csum } => {
                out.copy_from_slice(f);
                if let Some((start, at)) = csum {
                    let c = checksum::checksum(out.get(start..).unwrap_or(&[]));
                    put16(out, at, mangle_zero(c));
                }
                self.done = true;
                Some(Ok(SegmentParts {
                    head: hl,
                    payload: f.len()..f.len(),
                }))
            }
            Mode::Tcp { p, mss } | Mode::Udp { p, mss } => {
                let udp = matches!(self.mode, Mode::Udp { .. });
                let chunk = (p.end - self.next).min(mss);
                let payload = self.next..self.next + chunk;
                let len = p.hl + chunk;
                out.copy_from_slice(&f[..p.hl]);
                let first = self.index == 0;
                let last = payload.end >= p.end;
                set_ip_len(out, &p, len - p.l3);
                if !p.v6 && !first {
                    let id = be16(f, p.l3 + 4).wrapping_add(self.index as u16);
                    put16(out, p.l3 + 4, id);
                    put16(out, p.l3 + 10, 0);
                    let c = checksum::checksum(&out[p.l3..p.l4]);
                    put16(out, p.l3 + 10, c);
                }
                // The L4 header has an even length, so the payload's sum adds on.
                let data = checksum::sum(&f[payload.clone()]);
                if udp {
                    put16(out, p.l4 + 4, (len - p.l4) as u16);
                    put16(out, p.l4 + 6, 0);
                    let s = pseudo_proto(f, &p, len - p.l4, IPPROTO_UDP)
                        + checksum::sum(&out[p.l4..])
                        + data;
                    put16(out, p.l4 + 6, mangle_zero(!checksum::fold(s)));
                } else {
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
                    let s = pseudo(f, &p, len - p.l4) + checksum::sum(&out[p.l4..]) + data;
                    put16(out, p.l4 + 16, !checksum::fold(s));
                }
                self.next += chunk;
                self.index += 1;
                self.done = last;
                Some(Ok(SegmentParts { head: hl, payload }))
            }
        }
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
