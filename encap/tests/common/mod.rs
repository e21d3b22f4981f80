//! Builders of inner frames shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use encap::checksum;

/// Headroom the tests leave in front of inner frames (enough for any template).
pub const HEADROOM: usize = 320;

pub const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

/// An IPv4 header + UDP datagram (checksums filled) with `payload`.
pub fn ipv4_udp(
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    p[6] = 0x40;
    p[8] = ttl;
    p[9] = 17;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    let uc = checksum::udp_ipv4(src.into(), dst.into(), &p[20..]);
    p[26..28].copy_from_slice(&uc.to_be_bytes());
    p
}

/// An IPv4 ICMP echo request (checksums filled).
pub fn ipv4_icmp_echo(src: [u8; 4], dst: [u8; 4], ttl: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 8];
    let total = p.len();
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x4321u16.to_be_bytes());
    p[8] = ttl;
    p[9] = 1;
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let c = checksum::checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20] = 8; // echo request
    p[24..26].copy_from_slice(&id.to_be_bytes());
    p[26..28].copy_from_slice(&seq.to_be_bytes());
    p[28..].copy_from_slice(b"weft-pkt");
    let ic = checksum::checksum(&p[20..]);
    p[22..24].copy_from_slice(&ic.to_be_bytes());
    p
}

/// An IPv6 + UDP datagram (UDP checksum filled).
pub fn ipv6_udp(
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    hop: u8,
    payload: &[u8],
) -> Vec<u8> {
    let ulen = 8 + payload.len();
    let mut p = vec![0u8; 40 + ulen];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&(ulen as u16).to_be_bytes());
    p[6] = 17;
    p[7] = hop;
    p[8..24].copy_from_slice(&src);
    p[24..40].copy_from_slice(&dst);
    p[40..42].copy_from_slice(&sport.to_be_bytes());
    p[42..44].copy_from_slice(&dport.to_be_bytes());
    p[44..46].copy_from_slice(&(ulen as u16).to_be_bytes());
    p[48..].copy_from_slice(payload);
    let c = checksum::udp_ipv6(&src.into(), &dst.into(), &p[40..]);
    p[46..48].copy_from_slice(&c.to_be_bytes());
    p
}

/// An Ethernet frame (MAC_A -> MAC_B) around `l3` with `ethertype`.
pub fn ethernet(ethertype: u16, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + l3.len());
    f.extend_from_slice(&MAC_B);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// A buffer with `HEADROOM` bytes of headroom and `frame` after it; returns (buf, start).
pub fn with_headroom(frame: &[u8]) -> (Vec<u8>, usize) {
    let mut b = vec![0u8; HEADROOM + frame.len()];
    b[HEADROOM..].copy_from_slice(frame);
    (b, HEADROOM)
}

/// 2001:db8::<last>.
pub fn v6(last: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[14..16].copy_from_slice(&last.to_be_bytes());
    a
}

/// Straightforward RFC 1071 checksum, independent of `encap::checksum`.
pub fn naive_checksum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        s += u32::from(w);
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The fuzz corpus of `target` (`encap/fuzz/corpus/<target>/`).
pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Every file of `target`'s corpus, name and bytes, sorted by name.
pub fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus for {target}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}
