//! Where the headers of an Ethernet + IP + TCP (or UDP) frame are, and the few
//! byte-level helpers segmentation and coalescing share.

use core::net::{Ipv4Addr, Ipv6Addr};

use super::{IPPROTO_TCP, IPPROTO_UDP, OffloadError};
use crate::checksum;

/// Where the headers of an Ethernet + IP + TCP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TcpFrame {
    /// Start of the IP header.
    pub(super) l3: usize,
    /// Start of the TCP header.
    pub(super) l4: usize,
    /// Start of the TCP payload (length of all the headers).
    pub(super) hl: usize,
    /// End of the IP packet (Ethernet padding after it is ignored).
    pub(super) end: usize,
    /// IPv6 (else IPv4).
    pub(super) v6: bool,
}

pub(super) fn be16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at + 2) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

pub(super) fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

pub(super) fn put16(b: &mut [u8], at: usize, v: u16) {
    if let Some(d) = b.get_mut(at..at + 2) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(d) = b.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_be_bytes());
    }
}

pub(super) fn parse_tcp_frame(f: &[u8]) -> Result<TcpFrame, OffloadError> {
    parse_l4_frame(f, IPPROTO_TCP)
}

/// Like [`parse_tcp_frame`] for a TCP (`proto` 6) or UDP (`proto` 17) frame; for UDP `hl`
/// is the end of the 8-byte UDP header.
pub(super) fn parse_l4_frame(f: &[u8], proto: u8) -> Result<TcpFrame, OffloadError> {
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
pub(super) fn pseudo(f: &[u8], p: &TcpFrame, tcp_len: usize) -> u64 {
    pseudo_proto(f, p, tcp_len, IPPROTO_TCP)
}

/// Unfolded pseudo-header sum of an L4 segment (`proto`) of `l4_len` bytes in `f`.
pub(super) fn pseudo_proto(f: &[u8], p: &TcpFrame, tcp_len: usize, proto: u8) -> u64 {
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
pub(super) fn set_ip_len(f: &mut [u8], p: &TcpFrame, ip_len: usize) {
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
