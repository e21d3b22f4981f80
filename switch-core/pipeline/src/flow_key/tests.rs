//! The key's layout, accessors, masks and hashes, and the parse of hand-built frames.

use super::*;
use proptest::prelude::*;

const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

fn eth(dst: [u8; 6], src: [u8; 6], ty: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ty.to_be_bytes());
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, l4: &[u8]) -> Vec<u8> {
    let tot = 20 + l4.len();
    let mut h = vec![
        0x45,
        0xb9, // DSCP 46 (0xb8) + ECN 1
        (tot >> 8) as u8,
        tot as u8,
        0x12,
        0x34,
        (frag >> 8) as u8,
        frag as u8,
        64,
        proto,
        0,
        0,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

fn ipv6(nxt: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x6b, 0x80, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.push(nxt);
    h.push(255);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    h
}

fn tcp(src: u16, dst: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.to_be_bytes());
    t[2..4].copy_from_slice(&dst.to_be_bytes());
    t[12] = 0x50;
    t
}

fn udp(src: u16, dst: u16) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.to_be_bytes());
    u[2..4].copy_from_slice(&dst.to_be_bytes());
    u[4..6].copy_from_slice(&8u16.to_be_bytes());
    u
}

fn arp_request() -> Vec<u8> {
    let mut f = eth([0xff; 6], MAC_A, ETH_TYPE_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&[198, 19, 1, 2]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[198, 19, 1, 3]);
    f.extend_from_slice(&[0; 18]); // padding to 60 bytes
    f
}

fn tcp4_frame() -> Vec<u8> {
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    f.extend(ipv4(
        IPPROTO_TCP,
        [198, 19, 1, 2],
        [198, 19, 2, 3],
        0x4000,
        &tcp(40000, 80),
    ));
    f
}

#[test]
fn layout_is_consistent() {
    assert_eq!(std::mem::size_of::<FlowKey>(), KEY_WORDS * 8);
    assert_eq!(std::mem::align_of::<FlowKey>(), 8);
    // No two fields overlap and each fits its word(s).
    let mut used = [0u64; KEY_WORDS];
    for &f in Field::ALL {
        let mut m = FlowMask::CATCH_ALL;
        m.set_exact(f);
        assert_eq!(m.get(f), f.max_value(), "{f}");
        for (u, &mw) in used.iter_mut().zip(&m.words) {
            assert_eq!(*u & mw, 0, "{f} overlaps");
            *u |= mw;
        }
        assert_eq!(Field::from_name(f.name()), Some(f));
    }
    assert_eq!(Field::from_name("arp_op"), Some(Field::NwProto));
    assert_eq!(Field::from_name("icmp_code"), Some(Field::TpDst));
    assert_eq!(Field::from_name("nope"), None);
}

#[test]
fn field_get_set_round_trip() {
    let mut k = FlowKey::ZERO;
    for (n, &f) in Field::ALL.iter().enumerate() {
        let v =
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128.rotate_left(n as u32 * 7) & f.max_value();
        k.set(f, v);
        assert_eq!(k.get(f), v, "{f}");
    }
    // Setting one field leaves the others alone.
    let before = k;
    k.set(Field::NwTtl, 7);
    for &f in Field::ALL {
        if f != Field::NwTtl {
            assert_eq!(k.get(f), before.get(f), "{f}");
        }
    }
    // Values wider than the field are truncated.
    k.set(Field::DlType, 0x1_0806);
    assert_eq!(k.dl_type(), 0x0806);
    // Masked set and bit slices.
    k.set(Field::Reg3, 0xaaaa_aaaa);
    k.set_masked(Field::Reg3, 0x0000_5555, 0x0000_ffff);
    assert_eq!(k.reg(3), 0xaaaa_5555);
    assert_eq!(k.get_bits(Field::Reg3, 16, 8), 0xaa);
    k.set_bits(Field::Reg3, 8, 4, 0xf);
    assert_eq!(k.reg(3), 0xaaaa_5f55);
    k.set_bits(Field::Reg3, 30, 4, 0xf); // out of range: ignored
    assert_eq!(k.reg(3), 0xaaaa_5f55);
    k.set_ipv6_src("2001:db8::1".parse().unwrap());
    assert_eq!(k.ipv6_src(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
    k.set_tun_src("198.18.0.1".parse().unwrap());
    assert_eq!(k.tun_src(), "198.18.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(k.get(Field::TunSrc) >> 32, 0xffff);
}

#[test]
fn prefix_masks() {
    let m = FlowMask::CATCH_ALL.with_prefix(Field::NwDst, 24);
    assert_eq!(m.get(Field::NwDst), 0xffff_ff00);
    let m = FlowMask::CATCH_ALL.with_prefix(Field::Ipv6Dst, 64);
    assert_eq!(m.get(Field::Ipv6Dst), (u64::MAX as u128) << 64);
    assert!(
        FlowMask::CATCH_ALL
            .with_prefix(Field::NwDst, 0)
            .is_catch_all()
    );
}

#[test]
fn hashes_agree() {
    let k = FlowKey::extract(&tcp4_frame(), 3, &TunnelMeta::NONE).unwrap();
    let m = FlowMask::CATCH_ALL
        .with_exact(Field::InPort)
        .with_prefix(Field::NwDst, 24);
    assert_eq!(k.hash_masked(&m), k.masked(&m).hash());
    let mut k2 = k;
    k2.set_tp_src(1);
    assert_ne!(k.hash(), k2.hash());
    assert_eq!(k.hash_masked(&m), k2.hash_masked(&m));
    assert!(k2.matches(&k, &m));
    assert!(!k2.matches(&k, &FlowMask::EXACT));
}

#[test]
fn extract_arp_request() {
    let k = FlowKey::extract(&arp_request(), 5, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.in_port(), 5);
    assert_eq!(k.dl_type(), ETH_TYPE_ARP);
    assert_eq!(k.dl_dst(), [0xff; 6]);
    assert_eq!(k.dl_src(), MAC_A);
    assert_eq!(k.arp_op(), 1);
    assert_eq!(k.get(Field::ARP_SPA), 0xc613_0102);
    assert_eq!(k.nw_dst(), Ipv4Addr::new(198, 19, 1, 3));
    assert_eq!(k.arp_sha(), MAC_A);
    assert_eq!(k.arp_tha(), [0; 6]);
    assert_eq!(k.tp_src(), 0);
}

#[test]
fn extract_ipv4_tcp() {
    let tun = TunnelMeta::new(
        5001,
        "198.18.0.2".parse().unwrap(),
        "198.18.0.1".parse().unwrap(),
    );
    let k = FlowKey::extract(&tcp4_frame(), 7, &tun).unwrap();
    assert_eq!(k.in_port(), 7);
    assert_eq!(k.tun_id(), 5001);
    assert_eq!(k.tun_src(), "198.18.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(k.tun_dst(), "198.18.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(k.dl_src(), MAC_A);
    assert_eq!(k.dl_dst(), MAC_B);
    assert_eq!(k.dl_type(), ETH_TYPE_IPV4);
    assert_eq!(k.vlan_tci(), 0);
    assert_eq!(k.nw_src(), Ipv4Addr::new(198, 19, 1, 2));
    assert_eq!(k.nw_dst(), Ipv4Addr::new(198, 19, 2, 3));
    assert_eq!(k.nw_proto(), IPPROTO_TCP);
    assert_eq!(k.nw_tos(), 0xb8);
    assert_eq!(k.nw_ttl(), 64);
    assert_eq!(k.nw_frag(), 0); // DF only
    assert_eq!((k.tp_src(), k.tp_dst()), (40000, 80));
    assert_eq!(k.metadata(), 0);
}

#[test]
fn extract_ipv4_udp_icmp_and_options() {
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    f.extend(ipv4(
        IPPROTO_UDP,
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        0,
        &udp(53, 5353),
    ));
    let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(
        (k.nw_proto(), k.tp_src(), k.tp_dst()),
        (IPPROTO_UDP, 53, 5353)
    );

    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    f.extend(ipv4(
        IPPROTO_ICMP,
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        0,
        &[8, 0, 0, 0, 0, 1, 0, 1],
    ));
    let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!((k.icmp_type(), k.icmp_code()), (8, 0));
    assert_eq!(k.nw_proto(), IPPROTO_ICMP);

    // IHL 6 (4 bytes of options) before UDP.
    let mut ip = ipv4(IPPROTO_UDP, [1, 2, 3, 4], [5, 6, 7, 8], 0, &[]);
    ip[0] = 0x46;
    ip.extend_from_slice(&[1, 1, 1, 0]);
    ip.extend(udp(1000, 2000));
    let tot = ip.len() as u16;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    f.extend(ip);
    f.extend_from_slice(&[0xee; 10]); // Ethernet padding
    let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!((k.tp_src(), k.tp_dst()), (1000, 2000));
}

#[test]
fn extract_ipv4_fragments() {
    // First fragment (MF set, offset 0): L4 present.
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    f.extend(ipv4(
        IPPROTO_UDP,
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        0x2000,
        &udp(1, 2),
    ));
    let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.nw_frag(), FRAG_ANY);
    assert_eq!((k.tp_src(), k.tp_dst()), (1, 2));
    // Later fragment: no L4 even though the bytes look like UDP.
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    f.extend(ipv4(
        IPPROTO_UDP,
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        185,
        &udp(1, 2),
    ));
    let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.nw_frag(), FRAG_ANY | FRAG_LATER);
    assert_eq!((k.tp_src(), k.tp_dst()), (0, 0));
    assert_eq!(k.nw_proto(), IPPROTO_UDP);
}

#[test]
fn extract_ipv6_tcp_icmpv6_and_ext_headers() {
    let s: Ipv6Addr = "fd00::1".parse().unwrap();
    let d: Ipv6Addr = "fd00::2".parse().unwrap();
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV6);
    f.extend(ipv6(IPPROTO_TCP, s, d, &tcp(1234, 443)));
    let k = FlowKey::extract(&f, 2, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.dl_type(), ETH_TYPE_IPV6);
    assert_eq!((k.ipv6_src(), k.ipv6_dst()), (s, d));
    assert_eq!(k.nw_proto(), IPPROTO_TCP);
    assert_eq!(k.nw_ttl(), 255);
    assert_eq!(k.nw_tos(), 0xb8);
    assert_eq!((k.tp_src(), k.tp_dst()), (1234, 443));
    assert_eq!(k.nw_src(), Ipv4Addr::UNSPECIFIED);

    // Neighbour solicitation (ICMPv6 135) behind a hop-by-hop header.
    let mut payload = vec![IPPROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0];
    payload.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV6);
    f.extend(ipv6(0, s, d, &payload));
    let k = FlowKey::extract(&f, 2, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.nw_proto(), IPPROTO_ICMPV6);
    assert_eq!((k.icmp_type(), k.icmp_code()), (135, 0));

    // Later fragment via fragment header: no L4.
    let mut payload = vec![IPPROTO_UDP, 0, 0x00, 0x08, 0, 0, 0, 1];
    payload.extend(udp(9, 9));
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV6);
    f.extend(ipv6(44, s, d, &payload));
    let k = FlowKey::extract(&f, 2, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.nw_frag(), FRAG_ANY | FRAG_LATER);
    assert_eq!(k.nw_proto(), IPPROTO_UDP);
    assert_eq!(k.tp_src(), 0);
}

#[test]
fn extract_vlan_and_8023() {
    let plain = tcp4_frame();
    let mut f = plain[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x20, 0x64]); // PCP 1, VID 100
    f.extend_from_slice(&plain[12..]);
    let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.vlan_tci(), 0x3064);
    assert_eq!(k.dl_type(), ETH_TYPE_IPV4);
    assert_eq!((k.tp_src(), k.tp_dst()), (40000, 80));

    assert_eq!(
        FlowKey::extract(&f[..16], 1, &TunnelMeta::NONE),
        Err(ParseDrop::TruncatedVlan)
    );
    assert_eq!(
        FlowKey::extract(&f[..13], 1, &TunnelMeta::NONE),
        Err(ParseDrop::TooShort)
    );
    let mut llc = eth(MAC_B, MAC_A, 46);
    llc.extend_from_slice(&[0x42; 46]);
    let k = FlowKey::extract(&llc, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.dl_type(), DL_TYPE_NONE);
}

#[test]
fn extract_truncated_layers() {
    let full = tcp4_frame();
    let eth_only = FlowKey::extract(&full[..14], 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(eth_only.dl_type(), ETH_TYPE_IPV4);
    assert_eq!(eth_only.nw_proto(), 0);
    // Cut inside the TCP header: IPv4 tot_len now exceeds the frame, so L3 is invalid.
    let k = FlowKey::extract(&full[..14 + 20 + 10], 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.nw_src(), Ipv4Addr::UNSPECIFIED);
    // A consistent IPv4 header whose payload is a short TCP header: L3 but no L4.
    let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    f.extend(ipv4(
        IPPROTO_TCP,
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        0,
        &[0, 80, 0, 81],
    ));
    let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!(k.nw_proto(), IPPROTO_TCP);
    assert_eq!(k.nw_src(), Ipv4Addr::new(1, 2, 3, 4));
    assert_eq!((k.tp_src(), k.tp_dst()), (0, 0));
    // Every prefix of every sample frame parses or drops without panicking.
    for frame in [full, arp_request()] {
        for n in 0..=frame.len() {
            let _ = FlowKey::extract(&frame[..n], 1, &TunnelMeta::NONE);
        }
    }
}

#[test]
fn extract_into_resets_previous_fields() {
    let mut k = FlowKey::extract(&tcp4_frame(), 1, &TunnelMeta::NONE).unwrap();
    k.set_reg(0, 9);
    k.extract_into(&arp_request(), 2, &TunnelMeta::NONE)
        .unwrap();
    assert_eq!(
        k,
        FlowKey::extract(&arp_request(), 2, &TunnelMeta::NONE).unwrap()
    );
    assert_eq!(k.reg(0), 0);
}

#[test]
fn offsets_of_the_headers_the_parse_found() {
    let o = |f: &[u8]| {
        FlowKey::extract_with_offsets(f, 1, &TunnelMeta::NONE)
            .unwrap()
            .1
    };
    let f = tcp4_frame();
    let at = |l3, l4, end, proto| HeaderOffsets { l3, l4, end, proto };
    assert_eq!(o(&f), at(14, 34, f.len() as u32, IPPROTO_TCP));
    // Behind a VLAN tag everything moves by 4.
    let mut tagged = f[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    tagged.extend_from_slice(&f[12..]);
    assert_eq!(o(&tagged), at(18, 38, tagged.len() as u32, IPPROTO_TCP));
    // IPv4 options; Ethernet padding is not part of the IP packet.
    let mut ip = ipv4(IPPROTO_UDP, [1, 2, 3, 4], [5, 6, 7, 8], 0, &[1, 1, 1, 0]);
    ip[0] = 0x46;
    ip.extend(udp(1, 2));
    let tot = ip.len() as u16;
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    let mut g = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    g.extend(ip);
    let end = g.len() as u32;
    g.extend_from_slice(&[0; 6]);
    assert_eq!(o(&g), at(14, 38, end, IPPROTO_UDP));
    // IPv6 behind a hop-by-hop header: L4 after it, with its protocol.
    let s: Ipv6Addr = "fd00::1".parse().unwrap();
    let mut payload = vec![IPPROTO_UDP, 0, 1, 4, 0, 0, 0, 0];
    payload.extend(udp(9, 9));
    let mut v6 = eth(MAC_B, MAC_A, ETH_TYPE_IPV6);
    v6.extend(ipv6(0, s, s, &payload));
    assert_eq!(o(&v6), at(14, 62, v6.len() as u32, IPPROTO_UDP));
    // A later fragment has no L4 header; ARP and a bad IPv4 header no IP.
    let mut frag = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
    frag.extend(ipv4(
        IPPROTO_UDP,
        [1, 2, 3, 4],
        [5, 6, 7, 8],
        185,
        &udp(1, 2),
    ));
    assert_eq!(o(&frag), at(14, 0, frag.len() as u32, 0));
    assert_eq!(o(&arp_request()), at(14, 0, 0, 0));
    assert_eq!(o(&f[..14 + 20 + 10]), at(14, 0, 0, 0));
    assert_eq!(HeaderOffsets::of(&f), Some(o(&f)));
    assert_eq!(HeaderOffsets::of(&f[..13]), None);
}

proptest! {
    #[test]
    fn extract_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = FlowKey::extract(&bytes, 1, &TunnelMeta::NONE);
    }

    #[test]
    fn extract_never_panics_on_plausible_headers(
        ty in prop::sample::select(vec![ETH_TYPE_IPV4, ETH_TYPE_IPV6, ETH_TYPE_ARP, ETH_TYPE_VLAN, 0x0042]),
        first in prop::sample::select(vec![0x45u8, 0x4f, 0x60, 0x08, 0x00]),
        proto in prop::sample::select(vec![0u8, 1, 6, 17, 43, 44, 51, 58, 60]),
        tail in proptest::collection::vec(any::<u8>(), 0..120),
    ) {
        let mut f = eth(MAC_B, MAC_A, ty);
        f.push(first);
        f.extend_from_slice(&tail);
        if f.len() > 23 { f[23] = proto; } // IPv4 protocol
        if f.len() > 20 { f[20] = proto; } // IPv6 next header
        let r = FlowKey::extract(&f, 1, &TunnelMeta::NONE);
        if let Ok(k) = r {
            prop_assert_eq!(k.dl_src(), MAC_A);
        }
    }
}
