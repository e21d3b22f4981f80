//! Byte-exact vectors for the templates and decapsulators, built by hand from the RFCs'
//! field layouts (RFC 791, 768, 8200, 7348, 8926, 2003).
mod common;

use common::*;
use encap::{
    DropReason, GeneveOption, InnerProto, IpipParams, IpipTemplate, OuterAddrs, OuterIp,
    TunnelHeader, UdpTunnel, UdpTunnelParams, UdpTunnelTemplate, decap_geneve, decap_ip_udp,
    decap_ipip, decap_vxlan,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const OUT_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OUT_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);

fn inner_eth() -> Vec<u8> {
    ethernet(
        0x0800,
        &ipv4_udp([198, 19, 1, 1], [198, 19, 2, 2], 1000, 2000, 64, &[0xab; 8]),
    )
}

#[test]
fn vxlan_ipv4_template_exact_bytes() {
    let inner = inner_eth();
    assert_eq!(inner.len(), 50);
    let t = UdpTunnelTemplate::new(
        &TunnelHeader::vxlan(),
        OuterIp::V4 {
            src: OUT_A,
            dst: OUT_B,
        },
        UdpTunnelParams::default(),
    );
    assert_eq!(t.headroom(), 36);
    let (mut buf, start) = with_headroom(&inner);
    let r = t
        .encapsulate(&mut buf, start, inner.len(), 100, 0xc000)
        .unwrap();
    assert_eq!(r, start - 36..buf.len());
    // total 86 = 0x56; UDP length 66 = 0x42; checksum computed by hand:
    // 4500+0056+0000+4000+4011+c612+0001+c612+0002 = 0x2518e -> 0x5190 -> ~ = 0xae6f.
    #[rustfmt::skip]
    let expected: [u8; 36] = [
        0x45, 0x00, 0x00, 0x56, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xae, 0x6f,
        198, 18, 0, 1, 198, 18, 0, 2,
        0xc0, 0x00, 0x12, 0xb5, 0x00, 0x42, 0x00, 0x00,
        0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x64, 0x00,
    ];
    assert_eq!(&buf[r.start..start], &expected);
    assert_eq!(&buf[start..], &inner[..], "payload untouched");
    assert_eq!(naive_checksum(&buf[r.start..r.start + 20]), 0);

    let d = decap_ip_udp(&buf[r.clone()], UdpTunnel::VXLAN, &[][..]).unwrap();
    assert_eq!(d.inner, &inner[..]);
    assert_eq!(d.inner_offset, 36);
    assert_eq!(d.vni, 100);
    assert_eq!(d.inner_proto, InnerProto::Ethernet);
    assert_eq!(
        d.outer,
        Some(OuterAddrs {
            src: IpAddr::V4(OUT_A),
            dst: IpAddr::V4(OUT_B)
        })
    );
    assert_eq!(d.udp_src_port, Some(0xc000));
}

#[test]
fn geneve_ipv6_template_exact_bytes_and_checksum() {
    let inner = inner_eth();
    let opt_data = [0x11, 0x22, 0x33, 0x44];
    let hdr = TunnelHeader::geneve(
        0x6558,
        &[GeneveOption {
            class: 0x0102,
            type_: 0x80,
            data: &opt_data,
        }],
    )
    .unwrap();
    assert_eq!(hdr.len(), 16);
    let (src, dst) = (Ipv6Addr::from(v6(1)), Ipv6Addr::from(v6(2)));
    let t = UdpTunnelTemplate::new(&hdr, OuterIp::V6 { src, dst }, UdpTunnelParams::default());
    assert_eq!(t.headroom(), 40 + 8 + 16);
    let (mut buf, start) = with_headroom(&inner);
    let r = t
        .encapsulate(&mut buf, start, inner.len(), 0x00abcd, 40000)
        .unwrap();
    let pkt = &buf[r.clone()];
    let udp_len = 8 + 16 + 50u16;
    let mut expected = vec![0x60, 0, 0, 0];
    expected.extend_from_slice(&udp_len.to_be_bytes());
    expected.extend_from_slice(&[17, 64]);
    expected.extend_from_slice(&v6(1));
    expected.extend_from_slice(&v6(2));
    expected.extend_from_slice(&40000u16.to_be_bytes());
    expected.extend_from_slice(&6081u16.to_be_bytes());
    expected.extend_from_slice(&udp_len.to_be_bytes());
    expected.extend_from_slice(&[0, 0]); // checksum, checked below
    // Geneve: ver 0, opt len 2 words; C set; Ethernet; VNI 0x00abcd; option.
    expected.extend_from_slice(&[0x02, 0x40, 0x65, 0x58, 0x00, 0xab, 0xcd, 0x00]);
    expected.extend_from_slice(&[0x01, 0x02, 0x80, 0x01, 0x11, 0x22, 0x33, 0x44]);
    assert_eq!(&pkt[..46], &expected[..46]);
    assert_eq!(&pkt[48..64], &expected[48..64]);
    // Independent UDP checksum: pseudo-header (src, dst, length, 17) + segment.
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&v6(1));
    pseudo.extend_from_slice(&v6(2));
    pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&pkt[40..]);
    assert_ne!(&pkt[46..48], &[0, 0]);
    assert_eq!(naive_checksum(&pseudo), 0, "udp checksum verifies");

    let d = decap_ip_udp(pkt, UdpTunnel::GENEVE, &[(0x0102, 0x80)][..]).unwrap();
    assert_eq!(d.inner, &inner[..]);
    assert_eq!(d.vni, 0xabcd);
    let opts: Vec<_> = d.options.iter().collect();
    assert_eq!(
        opts,
        [GeneveOption {
            class: 0x0102,
            type_: 0x80,
            data: &opt_data
        }]
    );
    assert_eq!(
        d.outer,
        Some(OuterAddrs {
            src: IpAddr::V6(src),
            dst: IpAddr::V6(dst)
        })
    );
    // A receiver that does not understand the critical option drops.
    assert_eq!(
        decap_ip_udp(pkt, UdpTunnel::GENEVE, &[][..]),
        Err(DropReason::UnknownCriticalOption)
    );
    // A corrupted payload byte fails the UDP checksum.
    let mut bad = pkt.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(
        decap_ip_udp(&bad, UdpTunnel::GENEVE, &[(0x0102, 0x80)][..]),
        Err(DropReason::BadUdpChecksum)
    );
}

#[test]
fn plain_tunnel_headers_for_udp_sockets() {
    let inner = inner_eth();
    let (mut buf, start) = with_headroom(&inner);
    let r = TunnelHeader::vxlan()
        .encapsulate(&mut buf, start, inner.len(), 0xfedcba)
        .unwrap();
    assert_eq!(&buf[r.start..start], &[0x08, 0, 0, 0, 0xfe, 0xdc, 0xba, 0]);
    let d = decap_vxlan(&buf[r]).unwrap();
    assert_eq!((d.vni, d.inner, d.outer), (0xfedcba, &inner[..], None));

    let opts = [
        GeneveOption {
            class: 0x0001,
            type_: 0x01,
            data: &[1, 2, 3, 4],
        },
        GeneveOption {
            class: 0x0002,
            type_: 0x82,
            data: &[5, 6, 7, 8, 9, 10, 11, 12],
        },
        GeneveOption {
            class: 0x0003,
            type_: 0x03,
            data: &[],
        },
    ];
    let h = TunnelHeader::geneve(0x0800, &opts).unwrap();
    let ip = ipv4_icmp_echo([198, 19, 1, 1], [198, 19, 2, 2], 64, 1, 1);
    let (mut buf, start) = with_headroom(&ip);
    let r = h.encapsulate(&mut buf, start, ip.len(), 7).unwrap();
    #[rustfmt::skip]
    let expected: [u8; 32] = [
        0x06, 0x40, 0x08, 0x00, 0, 0, 7, 0,
        0x00, 0x01, 0x01, 0x01, 1, 2, 3, 4,
        0x00, 0x02, 0x82, 0x02, 5, 6, 7, 8, 9, 10, 11, 12,
        0x00, 0x03, 0x03, 0x00,
    ];
    assert_eq!(&buf[r.start..start], &expected);
    let known = |c: u16, t: u8| c == 2 && t == 0x82;
    let d = decap_geneve(&buf[r.clone()], &known).unwrap();
    assert_eq!(d.inner_proto, InnerProto::Ipv4);
    assert_eq!(d.inner, &ip[..]);
    assert_eq!(d.options.iter().collect::<Vec<_>>(), opts);
    assert_eq!(
        decap_geneve(&buf[r], &[][..]),
        Err(DropReason::UnknownCriticalOption)
    );
}

#[test]
fn ipip_outer_header_exact_bytes_with_hand_computed_checksum() {
    // Inner ICMP echo 198.19.1.1 -> 198.19.2.2, TTL 64, ident 0x4321, no DF.
    let mut inner = ipv4_icmp_echo([198, 19, 1, 1], [198, 19, 2, 2], 64, 9, 1);
    inner[6] = 0x40; // set DF: it must be copied to the outer header
    inner[1] = 0xb8; // TOS (DSCP EF): copied too
    inner[10..12].fill(0);
    let c = naive_checksum(&inner[..20]);
    inner[10..12].copy_from_slice(&c.to_be_bytes());
    let t = IpipTemplate::new(OUT_A, OUT_B, IpipParams::default());
    let (mut buf, start) = with_headroom(&inner);
    let r = t.encapsulate(&mut buf, start, inner.len()).unwrap();
    assert_eq!(r, start - 20..buf.len());
    // total = 20 + 36 = 56 = 0x38. Checksum by hand:
    // 45b8 + 0038 + 4321 + 4000 + 4004 + c612 + 0001 + c612 + 0002
    //   = 0x2953c -> 0x953c + 0x2 = 0x953e -> ~ = 0x6ac1.
    #[rustfmt::skip]
    let expected: [u8; 20] = [
        0x45, 0xb8, 0x00, 0x38, 0x43, 0x21, 0x40, 0x00, 0x40, 0x04, 0x6a, 0xc1,
        198, 18, 0, 1, 198, 18, 0, 2,
    ];
    assert_eq!(&buf[r.start..start], &expected);
    // Inner TTL decremented (RFC 2003 §3.1, forwarding) and its checksum still valid.
    assert_eq!(buf[start + 8], 63);
    assert_eq!(naive_checksum(&buf[start..start + 20]), 0);
    let d = decap_ipip(&buf[r]).unwrap();
    assert_eq!(d.inner_proto, InnerProto::Ipv4);
    assert_eq!(d.inner, &buf[start..]);
    assert_eq!(
        d.outer,
        Some(OuterAddrs {
            src: IpAddr::V4(OUT_A),
            dst: IpAddr::V4(OUT_B)
        })
    );
}

#[test]
fn ipip_ttl_rules() {
    let t = IpipTemplate::new(OUT_A, OUT_B, IpipParams::default());
    for (ttl, ok) in [(0u8, false), (1, false), (2, true)] {
        let inner = ipv4_icmp_echo([198, 19, 1, 1], [198, 19, 2, 2], ttl, 1, 1);
        let (mut buf, start) = with_headroom(&inner);
        let r = t.encapsulate(&mut buf, start, inner.len());
        assert_eq!(r.is_ok(), ok, "ttl {ttl}");
        if !ok {
            assert_eq!(r, Err(DropReason::TtlExpired));
            assert_eq!(&buf[start..], &inner[..], "nothing written on drop");
        }
    }
    let no_dec = IpipTemplate::new(
        OUT_A,
        OUT_B,
        IpipParams {
            ttl: 64,
            decrement_inner_ttl: false,
        },
    );
    let inner = ipv4_icmp_echo([198, 19, 1, 1], [198, 19, 2, 2], 1, 1, 1);
    let (mut buf, start) = with_headroom(&inner);
    assert!(no_dec.encapsulate(&mut buf, start, inner.len()).is_ok());
    assert_eq!(buf[start + 8], 1);
    let inner = ipv4_icmp_echo([198, 19, 1, 1], [198, 19, 2, 2], 0, 1, 1);
    let (mut buf, start) = with_headroom(&inner);
    assert_eq!(
        no_dec.encapsulate(&mut buf, start, inner.len()),
        Err(DropReason::TtlExpired)
    );
    // IPv6 inner: hop limit 1 expires, protocol 41, traffic class copied, DF set.
    let mut inner6 = ipv6_udp(v6(10), v6(20), 1, 2, 1, b"x");
    let (mut buf, start) = with_headroom(&inner6);
    assert_eq!(
        t.encapsulate(&mut buf, start, inner6.len()),
        Err(DropReason::TtlExpired)
    );
    inner6[7] = 5;
    inner6[0] = 0x6a;
    inner6[1] = 0xc0; // traffic class 0xac
    let (mut buf, start) = with_headroom(&inner6);
    let r = t.encapsulate(&mut buf, start, inner6.len()).unwrap();
    let o = &buf[r.start..start];
    assert_eq!((o[1], o[6], o[9]), (0xac, 0x40, 41));
    assert_eq!(naive_checksum(o), 0);
    assert_eq!(buf[start + 7], 4);
    let d = decap_ipip(&buf[r]).unwrap();
    assert_eq!(d.inner_proto, InnerProto::Ipv6);
}

#[test]
fn decap_drop_reasons() {
    let inner = inner_eth();
    let t = UdpTunnelTemplate::new(
        &TunnelHeader::vxlan(),
        OuterIp::V4 {
            src: OUT_A,
            dst: OUT_B,
        },
        UdpTunnelParams::default(),
    );
    let (mut buf, start) = with_headroom(&inner);
    let r = t
        .encapsulate(&mut buf, start, inner.len(), 1, 50000)
        .unwrap();
    let good = buf[r].to_vec();
    let none: &[(u16, u8)] = &[];
    let dec = |p: &[u8]| decap_ip_udp(p, UdpTunnel::VXLAN, none).map(|d| d.vni);
    assert_eq!(dec(&good), Ok(1));
    assert_eq!(dec(&[]), Err(DropReason::Truncated));
    assert_eq!(dec(&good[..10]), Err(DropReason::Truncated));
    let m = |i: usize, v: u8| {
        let mut p = good.clone();
        p[i] = v;
        p
    };
    assert_eq!(dec(&m(0, 0x55)), Err(DropReason::BadIpVersion));
    assert_eq!(dec(&m(0, 0x44)), Err(DropReason::BadIpHeaderLength));
    assert_eq!(dec(&m(3, 0xff)), Err(DropReason::BadIpLength));
    assert_eq!(dec(&m(8, 1)), Err(DropReason::BadIpChecksum));
    // Fragment / protocol / port / flags, with the checksum fixed up.
    let fix = |mut p: Vec<u8>| {
        p[10..12].fill(0);
        let c = naive_checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p
    };
    assert_eq!(dec(&fix(m(6, 0x20))), Err(DropReason::Fragment));
    assert_eq!(dec(&fix(m(7, 0x01))), Err(DropReason::Fragment));
    assert_eq!(dec(&fix(m(9, 6))), Err(DropReason::WrongIpProtocol));
    assert_eq!(dec(&m(23, 0xb6)), Err(DropReason::WrongUdpPort));
    assert_eq!(dec(&m(25, 0x07)), Err(DropReason::BadUdpLength));
    assert_eq!(dec(&m(28, 0x00)), Err(DropReason::BadVxlanFlags));
    assert_eq!(dec(&m(27, 0x01)), Err(DropReason::BadUdpChecksum));
    // Ethernet padding after the IP packet is ignored.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(
        decap_ip_udp(&padded, UdpTunnel::VXLAN, none).unwrap().inner,
        &inner[..]
    );
    // An inner frame shorter than an Ethernet header.
    assert_eq!(
        decap_vxlan(&[0x08, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3]),
        Err(DropReason::Truncated)
    );
    // Geneve: unknown protocol type, bad version.
    let g = [
        0x00, 0x00, 0x12, 0x34, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(
        decap_geneve(&g, none),
        Err(DropReason::UnsupportedInnerProtocol)
    );
    let g = [0x80, 0x00, 0x65, 0x58, 0, 0, 1, 0];
    assert_eq!(decap_geneve(&g, none), Err(DropReason::BadGeneveVersion));
    let g = [0x01, 0x00, 0x65, 0x58, 0, 0, 1, 0, 0, 1];
    assert_eq!(
        decap_geneve(&g, none),
        Err(DropReason::GeneveOptionsOverrun)
    );
    // IP-in-IP: wrong protocol, version mismatch.
    let inner4 = ipv4_icmp_echo([198, 19, 1, 1], [198, 19, 2, 2], 64, 1, 1);
    let ti = IpipTemplate::new(OUT_A, OUT_B, IpipParams::default());
    let (mut buf, start) = with_headroom(&inner4);
    let r = ti.encapsulate(&mut buf, start, inner4.len()).unwrap();
    let good = buf[r].to_vec();
    assert!(decap_ipip(&good).is_ok());
    let mut p = good.clone();
    p[9] = 41;
    assert_eq!(decap_ipip(&fix(p)), Err(DropReason::InnerVersionMismatch));
    let mut p = good.clone();
    p[9] = 17;
    assert_eq!(decap_ipip(&fix(p)), Err(DropReason::WrongIpProtocol));
    assert_eq!(decap_ipip(&good[..30]), Err(DropReason::BadIpLength));
}

#[test]
fn encapsulate_drop_reasons() {
    let t = UdpTunnelTemplate::new(
        &TunnelHeader::vxlan(),
        OuterIp::V4 {
            src: OUT_A,
            dst: OUT_B,
        },
        UdpTunnelParams::default(),
    );
    let mut buf = vec![0u8; 100];
    assert_eq!(
        t.encapsulate(&mut buf, 35, 10, 1, 1),
        Err(DropReason::NoHeadroom)
    );
    assert_eq!(
        t.encapsulate(&mut buf, 36, 65, 1, 1),
        Err(DropReason::FrameOutOfBounds)
    );
    assert_eq!(
        t.encapsulate(&mut buf, 36, usize::MAX, 1, 1),
        Err(DropReason::FrameOutOfBounds)
    );
    assert_eq!(
        t.encapsulate(&mut buf, 36, 64, 0x0100_0000, 1),
        Err(DropReason::VniOutOfRange)
    );
    assert!(t.encapsulate(&mut buf, 36, 64, 0x00ff_ffff, 1).is_ok());
    let mut big = vec![0u8; 70000];
    assert_eq!(
        t.encapsulate(&mut big, 36, 65500, 1, 1),
        Err(DropReason::FrameTooLarge)
    );
    let ti = IpipTemplate::new(OUT_A, OUT_B, IpipParams::default());
    assert_eq!(ti.encapsulate(&mut buf, 20, 0), Err(DropReason::Truncated));
    buf[20] = 0x10;
    assert_eq!(
        ti.encapsulate(&mut buf, 20, 30),
        Err(DropReason::UnsupportedInnerProtocol)
    );
    buf[20] = 0x45;
    assert_eq!(ti.encapsulate(&mut buf, 20, 19), Err(DropReason::Truncated));
}

#[test]
fn source_port_follows_inner_flow() {
    let t = UdpTunnelTemplate::new(
        &TunnelHeader::vxlan(),
        OuterIp::V4 {
            src: OUT_A,
            dst: OUT_B,
        },
        UdpTunnelParams::default(),
    );
    let a = ethernet(
        0x0800,
        &ipv4_udp([198, 19, 1, 1], [198, 19, 2, 2], 1000, 53, 64, b""),
    );
    let b = ethernet(
        0x0800,
        &ipv4_udp(
            [198, 19, 2, 2],
            [198, 19, 1, 1],
            53,
            1000,
            64,
            b"other payload",
        ),
    );
    assert_eq!(
        t.source_port(&a),
        t.source_port(&b),
        "symmetric, payload-independent"
    );
    let mut seen = std::collections::HashSet::new();
    for sport in 0..200u16 {
        let f = ethernet(
            0x0800,
            &ipv4_udp([198, 19, 1, 1], [198, 19, 2, 2], 1000 + sport, 53, 64, b""),
        );
        let p = t.source_port(&f);
        assert!((32768..=60999).contains(&p));
        seen.insert(p);
    }
    assert!(
        seen.len() > 150,
        "flows spread over the range: {}",
        seen.len()
    );
}
