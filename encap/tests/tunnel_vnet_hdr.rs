//! The 24-byte UDP-tunnel `virtio_net_hdr` (`encap::offload::TunnelVnetHdr`) against
//! frames and headers built byte by byte here, as the kernel (6.17+) lays them out: a
//! VXLAN super-frame over IPv4 has `gso_type` 0x21, `outer_th_offset` 34 and
//! `inner_nh_offset` 64 (what a TAP on this machine's 6.18 kernel gave back).

use encap::offload::{
    OffloadError, TunnelOffsets, TunnelVnetHdr, VIRTIO_NET_HDR_TNL_LEN, VirtioNetHdr,
};

/// A VXLAN super-frame: outer Ethernet, IPv4 (or IPv6) and UDP, VXLAN, inner Ethernet,
/// inner IPv4 (or IPv6) and TCP, then `payload` bytes. Returns the frame and where the
/// outer UDP, inner IP and inner TCP headers are.
fn vxlan_superframe(
    outer_v6: bool,
    inner_v6: bool,
    payload: usize,
) -> (Vec<u8>, usize, usize, usize) {
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
    let inner_ip = if inner_v6 { 40 } else { 20 };
    let inner_len = 14 + inner_ip + 20 + payload;
    let udp_len = 8 + 8 + inner_len;
    if outer_v6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        ip[6] = 17;
        ip[7] = 64;
        ip[8..10].copy_from_slice(&[0x20, 0x01]);
        ip[24..26].copy_from_slice(&[0x20, 0x01]);
        f.extend_from_slice(&ip);
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
        f.extend_from_slice(&ip);
    }
    let outer_th = f.len();
    // UDP 40000 -> 4789, checksum 0.
    f.extend_from_slice(&[0x9c, 0x40, 0x12, 0xb5]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    // VXLAN, VNI 100.
    f.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 100, 0]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a]);
    f.extend_from_slice(if inner_v6 {
        &[0x86, 0xdd]
    } else {
        &[0x08, 0x00]
    });
    let inner_nh = f.len();
    if inner_v6 {
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((20 + payload) as u16).to_be_bytes());
        ip[6] = 6;
        ip[7] = 64;
        f.extend_from_slice(&ip);
    } else {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[198, 19, 1, 2]);
        ip[16..20].copy_from_slice(&[198, 19, 2, 2]);
        f.extend_from_slice(&ip);
    }
    let l4 = f.len();
    let mut tcp = [0u8; 20];
    tcp[12] = 0x50;
    tcp[13] = 0x18;
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| i as u8));
    (f, outer_th, inner_nh, l4)
}

/// A 24-byte header written out field by field (little-endian), with `fill` in the
/// hash bytes 12–19 (which no parser may read).
#[allow(clippy::too_many_arguments)]
fn raw_hdr(
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
    outer_th: u16,
    inner_nh: u16,
    fill: u8,
) -> [u8; 24] {
    let mut b = [fill; 24];
    b[0] = flags;
    b[1] = gso_type;
    b[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    b[4..6].copy_from_slice(&gso_size.to_le_bytes());
    b[6..8].copy_from_slice(&csum_start.to_le_bytes());
    b[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    b[10..12].copy_from_slice(&0u16.to_le_bytes());
    b[20..22].copy_from_slice(&outer_th.to_le_bytes());
    b[22..24].copy_from_slice(&inner_nh.to_le_bytes());
    b
}

#[test]
fn a_vxlan_superframe_header_as_the_kernel_writes_it() {
    let (frame, outer_th, inner_nh, l4) = vxlan_superframe(false, false, 3000);
    assert_eq!((outer_th, inner_nh, l4), (34, 64, 84));
    let b = raw_hdr(0x01, 0x21, 138, 1000, 84, 16, 34, 64, 0xaa);
    let h = TunnelVnetHdr::parse(&b).unwrap();
    assert_eq!(
        h,
        TunnelVnetHdr {
            base: VirtioNetHdr {
                flags: VirtioNetHdr::F_NEEDS_CSUM,
                gso_type: VirtioNetHdr::GSO_TCPV4,
                hdr_len: 138,
                gso_size: 1000,
                csum_start: 84,
                csum_offset: 16,
            },
            tunnel: Some(TunnelOffsets {
                outer_v6: false,
                outer_csum: false,
                outer_th: 34,
                inner_nh: 64,
            }),
        }
    );
    assert_eq!(h.check_frame(&frame), Ok(()));
    // Emit gives the same bytes, with zeros where the hash and num_buffers were.
    let mut out = [0xffu8; 24];
    h.emit(&mut out).unwrap();
    let mut want = b;
    want[10..20].fill(0);
    assert_eq!(out, want);
    assert_eq!(TunnelVnetHdr::parse(&out), Ok(h));
    assert_eq!(h.buffer_len(), VIRTIO_NET_HDR_TNL_LEN);
    // The pod's TAP gets the inner frame (from its Ethernet header at 50) with its
    // checksum offsets moved and no hdr_len hint.
    let inner = h.inner(50).unwrap();
    assert_eq!(inner.csum_start, 34);
    assert_eq!(inner.csum_offset, 16);
    assert_eq!(inner.gso_type, VirtioNetHdr::GSO_TCPV4);
    assert_eq!(inner.hdr_len, 0);
    assert_eq!(
        h.inner(60),
        None,
        "inner Ethernet overlapping the inner IP header"
    );
}

#[test]
fn ipv6_outer_and_inner_and_the_outer_checksum_flag() {
    let (frame, outer_th, inner_nh, l4) = vxlan_superframe(true, true, 2000);
    assert_eq!((outer_th, inner_nh, l4), (54, 84, 124));
    // TCPV6 | UDP_TUNNEL_IPV6 | ECN, NEEDS_CSUM | UDP_TUNNEL_CSUM.
    let b = raw_hdr(0x09, 0xc4, 0, 1400, 124, 16, 54, 84, 0);
    let h = TunnelVnetHdr::parse(&b).unwrap();
    let t = h.tunnel.unwrap();
    assert!(t.outer_v6 && t.outer_csum);
    assert_eq!(h.base.flags, VirtioNetHdr::F_NEEDS_CSUM);
    assert_eq!(
        h.base.gso_type,
        VirtioNetHdr::GSO_TCPV6 | VirtioNetHdr::GSO_ECN
    );
    assert_eq!(h.check_frame(&frame), Ok(()));
    let mut out = [0u8; 24];
    h.emit(&mut out).unwrap();
    assert_eq!(out, b);
    // TCPv4 inside IPv6 outer: 0x41.
    let (frame, _, _, l4) = vxlan_superframe(true, false, 100);
    let h = TunnelVnetHdr::parse(&raw_hdr(1, 0x41, 0, 1000, l4 as u16, 16, 54, 84, 0)).unwrap();
    assert_eq!(h.check_frame(&frame), Ok(()));
}

#[test]
fn a_plain_header_ignores_bytes_10_to_23() {
    // A non-tunnel read with stale bytes behind the 10-byte header (the 6.18 stack leak):
    // they must not turn into offsets.
    let b = raw_hdr(0x01, 0x01, 54, 1448, 34, 16, 34, 64, 0x5a);
    let h = TunnelVnetHdr::parse(&b).unwrap();
    assert_eq!(h.tunnel, None);
    assert_eq!(h.base, VirtioNetHdr::parse(&b[..10]).unwrap());
    // A plain frame passes check_frame (there is nothing tunnel-specific to check).
    assert_eq!(h.check_frame(&[0u8; 60]), Ok(()));
    let mut out = [0xffu8; 24];
    h.emit(&mut out).unwrap();
    assert_eq!(&out[..10], &b[..10]);
    assert_eq!(&out[10..], &[0u8; 14], "emit leaves no stale bytes either");
    // An all-zero header: a plain frame without offloads.
    assert_eq!(
        TunnelVnetHdr::parse(&[0u8; 24]),
        Ok(TunnelVnetHdr::default())
    );
}

#[test]
fn headers_the_kernel_would_refuse_are_refused() {
    let ok = raw_hdr(0x01, 0x21, 0, 1000, 84, 16, 34, 64, 0);
    assert!(TunnelVnetHdr::parse(&ok).is_ok());
    let with = |f: &dyn Fn(&mut [u8; 24])| {
        let mut b = ok;
        f(&mut b);
        TunnelVnetHdr::parse(&b)
    };
    assert_eq!(
        TunnelVnetHdr::parse(&ok[..23]),
        Err(OffloadError::Truncated)
    );
    assert_eq!(
        TunnelVnetHdr::parse(&ok[..10]),
        Err(OffloadError::Truncated)
    );
    // Both tunnel bits.
    assert_eq!(with(&|b| b[1] = 0x61), Err(OffloadError::BadTunnelGso));
    // A tunnel bit with no inner type, with UFO, with an undefined one.
    assert_eq!(with(&|b| b[1] = 0x20), Err(OffloadError::BadTunnelGso));
    assert_eq!(with(&|b| b[1] = 0x23), Err(OffloadError::BadTunnelGso));
    assert_eq!(with(&|b| b[1] = 0x22), Err(OffloadError::BadTunnelGso));
    // No NEEDS_CSUM.
    assert_eq!(with(&|b| b[0] = 0x00), Err(OffloadError::BadTunnelGso));
    assert_eq!(with(&|b| b[0] = 0x08), Err(OffloadError::BadTunnelGso));
    // The tunnel checksum flag on a plain header.
    assert_eq!(
        with(&|b| {
            b[0] = 0x09;
            b[1] = 0x01
        }),
        Err(OffloadError::BadTunnelGso)
    );
    // gso_size 0.
    assert_eq!(with(&|b| b[4..6].fill(0)), Err(OffloadError::ZeroGsoSize));
    // Offsets out of order, or inside the outer headers.
    for (outer_th, inner_nh, csum_start) in [
        (0u16, 64u16, 84u16),
        (33, 64, 84),
        (34, 41, 84),
        (34, 64, 83),
        (34, 64, 0),
        (64, 34, 84),
        (0xffff, 0xffff, 0xffff),
    ] {
        let b = raw_hdr(0x01, 0x21, 0, 1000, csum_start, 16, outer_th, inner_nh, 0);
        assert_eq!(
            TunnelVnetHdr::parse(&b),
            Err(OffloadError::BadTunnelOffsets),
            "{outer_th} {inner_nh} {csum_start}"
        );
    }
    // IPv6 outer needs 40 bytes of IP header before the UDP header.
    let b = raw_hdr(0x01, 0x41, 0, 1000, 84, 16, 34, 64, 0);
    assert_eq!(
        TunnelVnetHdr::parse(&b),
        Err(OffloadError::BadTunnelOffsets)
    );
}

#[test]
fn hdr_len_is_never_trusted() {
    let (frame, ..) = vxlan_superframe(false, false, 3000);
    for hdr_len in [0u16, 1, 54, 84, 138, 0xffff] {
        let h = TunnelVnetHdr::parse(&raw_hdr(1, 0x21, hdr_len, 1000, 84, 16, 34, 64, 0)).unwrap();
        assert_eq!(h.check_frame(&frame), Ok(()), "hdr_len {hdr_len}");
        assert_eq!(h.inner(50).unwrap().hdr_len, 0);
    }
}

#[test]
fn offsets_that_do_not_point_at_the_headers_are_refused() {
    let (frame, ..) = vxlan_superframe(false, false, 3000);
    let check = |flags, gso_type, csum_start, csum_offset, outer_th, inner_nh, f: &[u8]| {
        TunnelVnetHdr::parse(&raw_hdr(
            flags,
            gso_type,
            0,
            1000,
            csum_start,
            csum_offset,
            outer_th,
            inner_nh,
            0,
        ))
        .and_then(|h| h.check_frame(f))
    };
    assert_eq!(check(1, 0x21, 84, 16, 34, 64, &frame), Ok(()));
    // outer_th not at the end of the outer IPv4 header.
    assert_eq!(
        check(1, 0x21, 84, 16, 36, 64, &frame),
        Err(OffloadError::BadTunnelOffsets)
    );
    // inner_nh two bytes early (inside the inner Ethernet header).
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 62, &frame),
        Err(OffloadError::BadTunnelOffsets)
    );
    // csum_start not at the end of the inner IPv4 header.
    assert_eq!(
        check(1, 0x21, 88, 16, 34, 64, &frame),
        Err(OffloadError::BadTunnelOffsets)
    );
    // The UDP checksum offset on a TCP super-frame.
    assert_eq!(
        check(1, 0x21, 84, 6, 34, 64, &frame),
        Err(OffloadError::BadChecksumOffsets)
    );
    // An IPv6 tunnel bit on an IPv4 outer header; TCPv6 on an IPv4 inner header.
    assert_eq!(
        check(1, 0x41, 84, 16, 54, 64, &frame),
        Err(OffloadError::GsoTypeMismatch)
    );
    assert_eq!(
        check(1, 0x24, 84, 16, 34, 64, &frame),
        Err(OffloadError::GsoTypeMismatch)
    );
    // USO on a TCP inner packet: the inner protocol is not UDP.
    assert_eq!(
        check(1, 0x25, 84, 6, 34, 64, &frame),
        Err(OffloadError::BadTunnelOffsets)
    );
    // Cut inside the inner TCP header, or before the inner IP header ends.
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 64, &frame[..100]),
        Err(OffloadError::Truncated)
    );
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 64, &frame[..70]),
        Err(OffloadError::BadTunnelOffsets)
    );
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 64, &frame[..10]),
        Err(OffloadError::Truncated)
    );
    // The outer packet is not UDP, or is a fragment.
    let mut tcp_outer = frame.clone();
    tcp_outer[14 + 9] = 6;
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 64, &tcp_outer),
        Err(OffloadError::BadTunnelOffsets)
    );
    let mut frag = frame.clone();
    frag[14 + 6] = 0x20;
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 64, &frag),
        Err(OffloadError::BadTunnelOffsets)
    );
    // A TCP data offset under 5 words.
    let mut doff = frame.clone();
    doff[84 + 12] = 0x40;
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 64, &doff),
        Err(OffloadError::BadTcpHeader)
    );
    // An outer EtherType that is not the tunnel bit's family.
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(
        check(1, 0x21, 84, 16, 34, 64, &arp),
        Err(OffloadError::GsoTypeMismatch)
    );
}
