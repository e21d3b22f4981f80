//! The UDP source port of a tunnel packet, hashed from the inner flow.
//!
//! This follows Linux's `udp_flow_src_port()`: hash the inner flow (the 5-tuple of
//! IPv4/IPv6 TCP/UDP/SCTP, else addresses and protocol, else the Ethernet addresses and
//! EtherType), then `hash ^= hash << 16` and scale the hash into the port range with a
//! multiply-shift. Underlay routers ECMP-hash the outer 5-tuple, so one inner flow keeps
//! one path and different flows spread. Like the kernel's flow hash, the hash is
//! symmetric (both directions of a flow get the same port) and keyed by a per-node seed.
//!
//! One difference: Linux maps into `[min, max)`; [`PortRange`] is inclusive of `max`.

use crate::BuildError;

/// An inclusive range of UDP source ports for tunnel packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    min: u16,
    max: u16,
}

impl PortRange {
    /// Linux's default ephemeral range, `net.ipv4.ip_local_port_range` = 32768..=60999,
    /// which the kernel's VXLAN and Geneve devices use.
    pub const LINUX_DEFAULT: PortRange = PortRange {
        min: 32768,
        max: 60999,
    };

    /// A range `min..=max`; `min` must be non-zero and not above `max`.
    pub const fn new(min: u16, max: u16) -> Result<PortRange, BuildError> {
        if min == 0 || min > max {
            return Err(BuildError::BadPortRange { min, max });
        }
        Ok(PortRange { min, max })
    }

    /// Lowest port.
    pub const fn min(&self) -> u16 {
        self.min
    }

    /// Highest port.
    pub const fn max(&self) -> u16 {
        self.max
    }

    /// Maps a flow hash into the range (Linux's obfuscate-and-scale step).
    #[inline]
    pub const fn port_for_hash(&self, hash: u32) -> u16 {
        let h = hash ^ (hash << 16);
        let span = (self.max - self.min) as u64 + 1;
        self.min + ((h as u64 * span) >> 32) as u16
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::LINUX_DEFAULT
    }
}

const JHASH_INITVAL: u32 = 0xdead_beef;

#[inline(always)]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline(always)]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

/// Bob Jenkins' lookup3 over 32-bit words, as Linux's `jhash2()`.
pub fn jhash2(k: &[u32], seed: u32) -> u32 {
    let init = JHASH_INITVAL
        .wrapping_add((k.len() as u32) << 2)
        .wrapping_add(seed);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut k = k;
    while k.len() > 3 {
        a = a.wrapping_add(k[0]);
        b = b.wrapping_add(k[1]);
        c = c.wrapping_add(k[2]);
        mix(&mut a, &mut b, &mut c);
        k = &k[3..];
    }
    match *k {
        [x, y, z] => {
            a = a.wrapping_add(x);
            b = b.wrapping_add(y);
            c = c.wrapping_add(z);
        }
        [x, y] => {
            a = a.wrapping_add(x);
            b = b.wrapping_add(y);
        }
        [x] => a = a.wrapping_add(x),
        _ => return c,
    }
    final_mix(&mut a, &mut b, &mut c);
    c
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Some(u16::from_be_bytes([x, y])),
        _ => None,
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136) // TCP, UDP, SCTP, UDP-Lite
}

/// Hash of the flow of an IP packet (starting at the IP header), `None` if it is not a
/// parseable IPv4/IPv6 packet.
pub fn flow_hash_ip(packet: &[u8], seed: u32) -> Option<u32> {
    let mut words = [0u32; 10];
    let n;
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            if ihl < 20 || packet.len() < 20 {
                return None;
            }
            let proto = packet[9];
            let frag = be16(packet, 6)? & 0x3fff != 0;
            let (mut s, mut d) = (be32(packet, 12), be32(packet, 16));
            let (mut sp, mut dp) = match (
                has_ports(proto) && !frag,
                be16(packet, ihl),
                be16(packet, ihl + 2),
            ) {
                (true, Some(sp), Some(dp)) => (sp, dp),
                _ => (0, 0),
            };
            // Order the endpoints so both directions hash alike (as the kernel does).
            if d < s || (d == s && dp < sp) {
                core::mem::swap(&mut s, &mut d);
                core::mem::swap(&mut sp, &mut dp);
            }
            words[0] = s;
            words[1] = d;
            words[2] = (u32::from(sp) << 16) | u32::from(dp);
            words[3] = u32::from(proto);
            n = 4;
        }
        6 => {
            if packet.len() < 40 {
                return None;
            }
            let proto = packet[6];
            let src = &packet[8..24];
            let dst = &packet[24..40];
            let (mut sp, mut dp) = match (has_ports(proto), be16(packet, 40), be16(packet, 42)) {
                (true, Some(sp), Some(dp)) => (sp, dp),
                _ => (0, 0),
            };
            let (a, b) = if dst < src || (dst == src && dp < sp) {
                core::mem::swap(&mut sp, &mut dp);
                (dst, src)
            } else {
                (src, dst)
            };
            for i in 0..4 {
                words[i] = be32(a, i * 4);
                words[4 + i] = be32(b, i * 4);
            }
            words[8] = (u32::from(sp) << 16) | u32::from(dp);
            words[9] = u32::from(proto);
            n = 10;
        }
        _ => return None,
    }
    Some(jhash2(&words[..n], seed))
}

/// Hash of the flow of an Ethernet frame: of its IPv4/IPv6 flow (after up to two VLAN
/// tags), else of its MAC addresses keyed by the EtherType (Linux's fallback).
pub fn flow_hash_ethernet(frame: &[u8], seed: u32) -> u32 {
    let (off, ethertype) = ethertype_after_tags(frame);
    if let Some(h) = ip_flow_hash(frame, off, ethertype, seed) {
        return h;
    }
    let macs = [be32(frame, 0), be32(frame, 4), be32(frame, 8)];
    jhash2(&macs, seed ^ u32::from(ethertype))
}

/// Hash of the IPv4/IPv6 flow of an Ethernet frame (after up to two VLAN tags), `None`
/// when it carries no parseable IP packet. Symmetric: both directions of a flow hash
/// alike, which is what the datapath's choice of a TAP queue needs.
pub fn flow_hash_ethernet_ip(frame: &[u8], seed: u32) -> Option<u32> {
    let (off, ethertype) = ethertype_after_tags(frame);
    ip_flow_hash(frame, off, ethertype, seed)
}

/// The offset of the EtherType field after up to two VLAN tags, and its value.
fn ethertype_after_tags(frame: &[u8]) -> (usize, u16) {
    let mut off = 12;
    let mut ethertype = be16(frame, off).unwrap_or(0);
    for _ in 0..2 {
        if ethertype == crate::ETHERTYPE_VLAN || ethertype == crate::ETHERTYPE_QINQ {
            off += 4;
            ethertype = be16(frame, off).unwrap_or(0);
        }
    }
    (off, ethertype)
}

fn ip_flow_hash(frame: &[u8], off: usize, ethertype: u16, seed: u32) -> Option<u32> {
    if ethertype != crate::ETHERTYPE_IPV4 && ethertype != crate::ETHERTYPE_IPV6 {
        return None;
    }
    frame.get(off + 2..).and_then(|ip| flow_hash_ip(ip, seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jhash2_known_values() {
        // Reference: Linux jhash2() on the same input (lookup3 hashword()).
        // hashword(k, 0, 0) = 0xdeadbeef (no words: returns c = initval).
        assert_eq!(jhash2(&[], 0), 0xdeadbeef);
        // Distinct inputs give distinct hashes; the seed matters.
        assert_ne!(jhash2(&[1, 2, 3, 4], 0), jhash2(&[1, 2, 3, 5], 0));
        assert_ne!(jhash2(&[1, 2, 3, 4], 0), jhash2(&[1, 2, 3, 4], 1));
    }

    #[test]
    fn port_range_mapping() {
        let r = PortRange::LINUX_DEFAULT;
        assert_eq!(r.port_for_hash(0), 32768);
        for h in [1u32, 0xffff, 0x1234_5678, 0xffff_ffff, 0x8000_0000] {
            let p = r.port_for_hash(h);
            assert!((32768..=60999).contains(&p), "{p}");
        }
        let one = PortRange::new(5000, 5000).unwrap();
        assert_eq!(one.port_for_hash(0xdead_beef), 5000);
        assert_eq!(
            PortRange::new(0, 5),
            Err(BuildError::BadPortRange { min: 0, max: 5 })
        );
        assert_eq!(
            PortRange::new(6, 5),
            Err(BuildError::BadPortRange { min: 6, max: 5 })
        );
        // The top of the range is reachable.
        let full = PortRange::new(1, 65535).unwrap();
        // 0xffff ^ (0xffff << 16) = 0xffff_ffff, the largest scaled value.
        assert_eq!(full.port_for_hash(0xffff), 65535);
    }

    fn udp4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> [u8; 28] {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[22..24].copy_from_slice(&dp.to_be_bytes());
        p
    }

    #[test]
    fn ip_flow_hash_uses_ports_and_is_symmetric() {
        let a = udp4([198, 19, 1, 1], [198, 19, 2, 2], 1000, 53);
        let b = udp4([198, 19, 2, 2], [198, 19, 1, 1], 53, 1000);
        let c = udp4([198, 19, 1, 1], [198, 19, 2, 2], 1001, 53);
        assert_eq!(flow_hash_ip(&a, 7), flow_hash_ip(&b, 7));
        assert_ne!(flow_hash_ip(&a, 7), flow_hash_ip(&c, 7));
        assert_eq!(flow_hash_ip(&[0x60; 10], 0), None);
        assert_eq!(flow_hash_ip(&[], 0), None);
    }

    #[test]
    fn ethernet_hash_falls_back_to_macs() {
        let mut arp = [0u8; 42];
        arp[..6].copy_from_slice(&[0xff; 6]);
        arp[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let h1 = flow_hash_ethernet(&arp, 0);
        arp[11] = 2;
        assert_ne!(h1, flow_hash_ethernet(&arp, 0));
        // IPv4 inside Ethernet hashes like the bare IP packet.
        let ip = udp4([198, 19, 1, 1], [198, 19, 2, 2], 1000, 53);
        let mut f = [0u8; 42];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14..].copy_from_slice(&ip);
        assert_eq!(Some(flow_hash_ethernet(&f, 3)), flow_hash_ip(&ip, 3));
        assert_eq!(flow_hash_ethernet_ip(&f, 3), flow_hash_ip(&ip, 3));
        assert_eq!(flow_hash_ethernet_ip(&arp, 3), None);
        let _ = flow_hash_ethernet(&[], 0);
        assert_eq!(flow_hash_ethernet_ip(&[], 0), None);
    }
}
