//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept unfolded in a `u64` so that partial sums over separate pieces (a
//! pseudo-header, a template, a payload) can simply be added before one final [`fold`].
use core::net::{Ipv4Addr, Ipv6Addr};

/// Ones'-complement partial sum of `data` as big-endian 16-bit words (odd tail padded
/// with a zero byte), unfolded. Add partial sums of even-length pieces freely.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    // The ones'-complement sum does not depend on byte order (RFC 1071 2.(B)): sum the
    // data as little-endian 32-bit words in four independent lanes (which the compiler
    // turns into vector adds, no byte swaps), fold, and swap the 16-bit result once. A
    // 32-bit word is two 16-bit words modulo 0xffff (2^16 = 1).
    let mut lanes = [0u64; 4];
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        for (i, lane) in lanes.iter_mut().enumerate() {
            let at = i * 4;
            *lane += u64::from(u32::from_le_bytes([c[at], c[at + 1], c[at + 2], c[at + 3]]));
        }
    }
    let mut acc = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_le_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        // The odd tail byte is the high byte of a big-endian word: the low byte here.
        acc += u64::from(*b);
    }
    u64::from(fold(acc).swap_bytes())
}

/// Folds an unfolded sum into 16 bits (without complementing).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The Internet checksum of `data`: the complement of the folded sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// RFC 1624 incremental update: the new checksum after a 16-bit word changed from `old`
/// to `new` in data whose checksum was `check`.
#[inline]
pub fn update(check: u16, old: u16, new: u16) -> u16 {
    // HC' = ~(~HC + ~m + m')
    !fold(u64::from(!check) + u64::from(!old) + u64::from(new))
}

/// Unfolded sum of the IPv4 UDP/TCP pseudo-header (addresses, protocol, length).
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u32) -> u64 {
    sum(&src.octets()) + sum(&dst.octets()) + u64::from(protocol) + u64::from(len)
}

/// Unfolded sum of the IPv6 pseudo-header (RFC 8200 §8.1).
#[inline]
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u64 {
    sum(&src.octets()) + sum(&dst.octets()) + u64::from(next_header) + u64::from(len)
}

/// The UDP checksum for a segment sent over IPv6 (RFC 8200 §8.1, mandatory there).
///
/// `segment` is the whole UDP header plus payload, with its checksum field set to zero.
/// A computed zero is sent as `0xffff` (RFC 768), so the result is never 0. This reads
/// every payload byte; it is the cost of an IPv6 outer header (unless the datapath uses
/// checksum offload or the RFC 6935 zero-checksum exception).
#[inline]
pub fn udp_ipv6(src: &Ipv6Addr, dst: &Ipv6Addr, segment: &[u8]) -> u16 {
    let c =
        !fold(pseudo_header_v6(src, dst, crate::IPPROTO_UDP, segment.len() as u32) + sum(segment));
    if c == 0 { 0xffff } else { c }
}

/// The UDP checksum for a segment sent over IPv4 (optional there; tunnels send 0).
///
/// `segment` is the UDP header plus payload with its checksum field zero. Never 0.
#[inline]
pub fn udp_ipv4(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let c =
        !fold(pseudo_header_v4(src, dst, crate::IPPROTO_UDP, segment.len() as u32) + sum(segment));
    if c == 0 { 0xffff } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            s += u32::from(w);
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: words 0001 f203 f4f5 f6f7 sum to ddf2 (folded).
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn matches_naive_for_all_lengths() {
        let data: std::vec::Vec<u8> = (0..300u32).map(|i| (i * 37 + 11) as u8).collect();
        for n in 0..data.len() {
            assert_eq!(checksum(&data[..n]), naive(&data[..n]), "len {n}");
        }
        let ff = [0xffu8; 64];
        assert_eq!(checksum(&ff), naive(&ff));
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut d = [
            0x45, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0, 0, 198, 18, 0, 1, 198,
            18, 0, 2,
        ];
        let c = checksum(&d);
        d[8] = 0x3f; // ttl 64 -> 63
        let c2 = update(c, 0x4001, 0x3f01);
        assert_eq!(c2, checksum(&d));
    }
}
