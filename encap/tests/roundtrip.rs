//! Property tests: Repr round trips, decapsulation of arbitrary bytes never panics,
//! template output equals the Repr-built model, and encapsulate→decapsulate is identity.
mod common;

use common::*;
use encap::geneve::{self, GeneveOption, Options};
use encap::{
    IpipParams, IpipTemplate, OuterIp, TunnelHeader, UdpTunnel, UdpTunnelParams, UdpTunnelTemplate,
    decap_geneve, decap_ip_udp, decap_ipip, decap_vxlan, ipv4, ipv6, udp, vxlan,
};
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// (class, type, data) of one option; data 0..=5 words.
fn option_strategy() -> impl Strategy<Value = (u16, u8, Vec<u8>)> {
    (
        any::<u16>(),
        any::<u8>(),
        (0usize..=5).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4)),
    )
}

fn options_strategy() -> impl Strategy<Value = Vec<(u16, u8, Vec<u8>)>> {
    proptest::collection::vec(option_strategy(), 0..=8)
}

fn as_options(v: &[(u16, u8, Vec<u8>)]) -> Vec<GeneveOption<'_>> {
    v.iter()
        .map(|(c, t, d)| GeneveOption {
            class: *c,
            type_: *t,
            data: d,
        })
        .collect()
}

fn outer_strategy() -> impl Strategy<Value = OuterIp> {
    prop_oneof![
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| OuterIp::V4 {
            src: Ipv4Addr::new(198, 18, 0, a),
            dst: Ipv4Addr::new(198, 18, 0, b)
        }),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| OuterIp::V6 {
            src: v6(a).into(),
            dst: v6(b).into()
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn vxlan_repr_round_trip(vni in 0u32..=vxlan::VNI_MAX) {
        let r = vxlan::Repr { vni };
        let mut b = [0u8; 8];
        r.emit(&mut vxlan::Packet::new_unchecked(&mut b[..]));
        prop_assert_eq!(vxlan::Repr::parse(&vxlan::Packet::new_unchecked(&b[..])), Ok(r));
    }

    #[test]
    fn geneve_repr_round_trip(oam: bool, critical: bool, proto: u16, vni in 0u32..=vxlan::VNI_MAX,
                              opts in options_strategy()) {
        let list = as_options(&opts);
        let mut obuf = [0u8; geneve::OPTIONS_MAX];
        let n = geneve::emit_options(&list, &mut obuf).unwrap();
        let options = Options::new_checked(&obuf[..n]).unwrap();
        let r = geneve::Repr { oam, critical, protocol_type: proto, vni, options };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut geneve::Packet::new_unchecked(&mut b[..]));
        let parsed = geneve::Repr::parse(&geneve::Packet::new_unchecked(&b[..])).unwrap();
        prop_assert_eq!(parsed, r);
        prop_assert_eq!(parsed.options.iter().collect::<Vec<_>>(), list);
    }

    #[test]
    fn ipv4_repr_round_trip(src: [u8; 4], dst: [u8; 4], protocol: u8, ttl: u8, tos: u8, ident: u16,
                            dont_frag: bool, payload_len in 0u16..2000) {
        let r = ipv4::Repr { src_addr: src.into(), dst_addr: dst.into(), protocol, ttl, tos, ident, dont_frag, payload_len };
        let mut b = vec![0u8; 20 + usize::from(payload_len)];
        r.emit(&mut ipv4::Packet::new_unchecked(&mut b[..]));
        prop_assert_eq!(naive_checksum(&b[..20]), 0);
        prop_assert_eq!(ipv4::Repr::parse(&ipv4::Packet::new_unchecked(&b[..])), Ok(r));
    }

    #[test]
    fn ipv6_and_udp_repr_round_trip(src: [u8; 16], dst: [u8; 16], nh: u8, hop: u8, tc: u8, fl in 0u32..0x100000,
                                    sp: u16, dp: u16, payload_len in 0u16..2000) {
        let r = ipv6::Repr { src_addr: src.into(), dst_addr: dst.into(), next_header: nh, hop_limit: hop,
                             traffic_class: tc, flow_label: fl, payload_len: payload_len + 8 };
        let mut b = vec![0u8; 48 + usize::from(payload_len)];
        r.emit(&mut ipv6::Packet::new_unchecked(&mut b[..]));
        prop_assert_eq!(ipv6::Repr::parse(&ipv6::Packet::new_unchecked(&b[..])), Ok(r));
        let u = udp::Repr { src_port: sp, dst_port: dp, payload_len };
        u.emit(&mut udp::Packet::new_unchecked(&mut b[40..]));
        prop_assert_eq!(udp::Repr::parse(&udp::Packet::new_unchecked(&b[40..])), Ok(u));
    }

    #[test]
    fn decap_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let none: &[(u16, u8)] = &[];
        let _ = decap_vxlan(&bytes);
        let _ = decap_geneve(&bytes, none);
        let _ = decap_geneve(&bytes, &|_c: u16, _t: u8| true);
        let _ = decap_ip_udp(&bytes, UdpTunnel::VXLAN, none);
        let _ = decap_ip_udp(&bytes, UdpTunnel::GENEVE, none);
        let _ = decap_ipip(&bytes);
        let _ = geneve::OptionIter::new(&bytes).count();
        let p4 = ipv4::Packet::new_unchecked(&bytes[..]);
        let _ = (p4.payload(), p4.verify_checksum(), p4.src_addr(), p4.frag_offset());
        let p6 = ipv6::Packet::new_unchecked(&bytes[..]);
        let _ = (p6.payload(), p6.dst_addr(), p6.flow_label());
        let g = geneve::Packet::new_unchecked(&bytes[..]);
        let _ = (g.options(), g.payload(), g.vni());
        let _ = udp::Packet::new_unchecked(&bytes[..]).payload();
        let _ = encap::flow_hash::flow_hash_ethernet(&bytes, 1);
        let _ = encap::flow_hash::flow_hash_ip(&bytes, 1);
    }

    /// Mutating a valid tunnel packet must give either a decode or a drop, never a panic,
    /// and a decoded inner frame always lies within the input.
    #[test]
    fn decap_of_mutated_packets_never_panics(opts in options_strategy(), idx: proptest::sample::Index,
                                             val: u8, cut: proptest::sample::Index, v6o: bool) {
        let list = as_options(&opts);
        let Ok(h) = TunnelHeader::geneve(0x6558, &list) else { return Ok(()); };
        let outer = if v6o { OuterIp::V6 { src: v6(1).into(), dst: v6(2).into() } }
                    else { OuterIp::V4 { src: Ipv4Addr::new(198, 18, 0, 1), dst: Ipv4Addr::new(198, 18, 0, 2) } };
        let t = UdpTunnelTemplate::new(&h, outer, UdpTunnelParams::default());
        let inner = ethernet(0x0800, &ipv4_udp([198, 19, 0, 1], [198, 19, 0, 2], 1, 2, 64, b"abcd"));
        let (mut buf, start) = with_headroom(&inner);
        let r = t.encapsulate(&mut buf, start, inner.len(), 42, 40000).unwrap();
        let mut pkt = buf[r].to_vec();
        let i = idx.index(pkt.len());
        pkt[i] = val;
        let n = cut.index(pkt.len() + 1);
        let all = |_c: u16, _t: u8| true;
        for p in [&pkt[..], &pkt[..n]] {
            if let Ok(d) = decap_ip_udp(p, UdpTunnel::GENEVE, &all) {
                prop_assert_eq!(&p[d.inner_offset..d.inner_offset + d.inner.len()], d.inner);
            }
            let _ = decap_ipip(p);
        }
    }

    #[test]
    fn template_matches_repr_model(vni in 0u32..=vxlan::VNI_MAX, sport: u16, outer in outer_strategy(),
                                   opts in options_strategy(), geneve_kind: bool, ttl: u8, tos: u8, df: bool,
                                   inner in proptest::collection::vec(any::<u8>(), 14..1500)) {
        let list = as_options(&opts);
        let h = if geneve_kind { TunnelHeader::geneve(0x6558, &list).unwrap() } else { TunnelHeader::vxlan() };
        let params = UdpTunnelParams { ttl, tos, dont_frag: df, ..UdpTunnelParams::default() };
        let t = UdpTunnelTemplate::new(&h, outer, params);
        let (mut buf, start) = with_headroom(&inner);
        let r = t.encapsulate(&mut buf, start, inner.len(), vni, sport).unwrap();
        let pkt = &buf[r.clone()];
        prop_assert_eq!(&pkt[t.headroom()..], &inner[..]);

        // Model: the same headers emitted field by field through the Reprs.
        let mut model = vec![0u8; pkt.len()];
        model[t.headroom()..].copy_from_slice(&inner);
        let ip_len = match outer { OuterIp::V4 { .. } => 20, OuterIp::V6 { .. } => 40 };
        let udp_payload = (pkt.len() - ip_len - 8) as u16;
        match outer {
            OuterIp::V4 { src, dst } => ipv4::Repr { src_addr: src, dst_addr: dst, protocol: 17, ttl, tos, ident: 0,
                                                     dont_frag: df, payload_len: udp_payload + 8 }
                .emit(&mut ipv4::Packet::new_unchecked(&mut model[..])),
            OuterIp::V6 { src, dst } => ipv6::Repr { src_addr: src, dst_addr: dst, next_header: 17, hop_limit: ttl,
                                                     traffic_class: tos, flow_label: 0, payload_len: udp_payload + 8 }
                .emit(&mut ipv6::Packet::new_unchecked(&mut model[..])),
        }
        let dport = if geneve_kind { 6081 } else { 4789 };
        udp::Repr { src_port: sport, dst_port: dport, payload_len: udp_payload }
            .emit(&mut udp::Packet::new_unchecked(&mut model[ip_len..]));
        let th = ip_len + 8;
        if geneve_kind {
            let mut obuf = [0u8; geneve::OPTIONS_MAX];
            let n = geneve::emit_options(&list, &mut obuf).unwrap();
            let options = Options::new_checked(&obuf[..n]).unwrap();
            geneve::Repr { oam: false, critical: options.has_critical(), protocol_type: 0x6558, vni, options }
                .emit(&mut geneve::Packet::new_unchecked(&mut model[th..]));
        } else {
            vxlan::Repr { vni }.emit(&mut vxlan::Packet::new_unchecked(&mut model[th..]));
        }
        if let OuterIp::V6 { src, dst } = outer {
            let c = encap::checksum::udp_ipv6(&src, &dst, &model[40..]);
            model[46..48].copy_from_slice(&c.to_be_bytes());
        }
        prop_assert_eq!(pkt, &model[..]);
    }

    #[test]
    fn encapsulate_then_decapsulate(vni in 0u32..=vxlan::VNI_MAX, outer in outer_strategy(), opts in options_strategy(),
                                    proto in prop_oneof![Just(0x6558u16), Just(0x0800), Just(0x86dd)],
                                    geneve_kind: bool, payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let list = as_options(&opts);
        let (h, tunnel) = if geneve_kind {
            (TunnelHeader::geneve(proto, &list).unwrap(), UdpTunnel::GENEVE)
        } else {
            (TunnelHeader::vxlan(), UdpTunnel::VXLAN)
        };
        let inner = match h.inner_proto() {
            encap::InnerProto::Ethernet => ethernet(0x0800, &ipv4_udp([198, 19, 0, 1], [198, 19, 0, 2], 5, 6, 64, &payload)),
            encap::InnerProto::Ipv4 => ipv4_udp([198, 19, 0, 1], [198, 19, 0, 2], 5, 6, 64, &payload),
            encap::InnerProto::Ipv6 => ipv6_udp(v6(7), v6(8), 5, 6, 64, &payload),
        };
        let t = UdpTunnelTemplate::new(&h, outer, UdpTunnelParams::default());
        let sport = t.source_port(&inner);
        let (mut buf, start) = with_headroom(&inner);
        let r = t.encapsulate(&mut buf, start, inner.len(), vni, sport).unwrap();
        let all = |_c: u16, _t: u8| true;
        let d = decap_ip_udp(&buf[r.clone()], tunnel, &all).unwrap();
        prop_assert_eq!(d.inner, &inner[..]);
        prop_assert_eq!(d.inner_offset, t.headroom());
        prop_assert_eq!(d.vni, vni);
        prop_assert_eq!(d.inner_proto, h.inner_proto());
        prop_assert_eq!(d.udp_src_port, Some(sport));
        let (s, ds): (IpAddr, IpAddr) = match outer {
            OuterIp::V4 { src, dst } => (src.into(), dst.into()),
            OuterIp::V6 { src, dst } => (src.into(), dst.into()),
        };
        prop_assert_eq!(d.outer.map(|o| (o.src, o.dst)), Some((s, ds)));
        if geneve_kind {
            prop_assert_eq!(d.options.iter().collect::<Vec<_>>(), list.clone());
        } else {
            prop_assert!(d.options.is_empty());
        }

        // The plain variant (kernel UDP socket adds the outer headers).
        let (mut buf, start) = with_headroom(&inner);
        let r = h.encapsulate(&mut buf, start, inner.len(), vni).unwrap();
        let d = if geneve_kind { decap_geneve(&buf[r], &all).unwrap() } else { decap_vxlan(&buf[r]).unwrap() };
        prop_assert_eq!((d.inner, d.vni, d.outer), (&inner[..], vni, None));
    }

    #[test]
    fn ipip_encapsulate_then_decapsulate(a: u8, b: u8, ttl in 2u8..=255, v6_inner: bool,
                                          payload in proptest::collection::vec(any::<u8>(), 0..1400)) {
        let t = IpipTemplate::new(Ipv4Addr::new(198, 18, 0, a), Ipv4Addr::new(198, 18, 0, b), IpipParams::default());
        let inner = if v6_inner { ipv6_udp(v6(1), v6(2), 7, 8, ttl, &payload) }
                    else { ipv4_udp([198, 19, 0, 1], [198, 19, 0, 2], 7, 8, ttl, &payload) };
        let (mut buf, start) = with_headroom(&inner);
        let r = t.encapsulate(&mut buf, start, inner.len()).unwrap();
        prop_assert_eq!(naive_checksum(&buf[r.start..start]), 0);
        let d = decap_ipip(&buf[r]).unwrap();
        let mut expected = inner.clone();
        if v6_inner {
            expected[7] = ttl - 1;
        } else {
            expected[8] = ttl - 1;
            prop_assert_eq!(naive_checksum(&d.inner[..20]), 0);
            expected[10..12].copy_from_slice(&d.inner[10..12]);
        }
        prop_assert_eq!(d.inner, &expected[..]);
        prop_assert_eq!(d.outer.map(|o| o.src), Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, a))));
        let _ = Ipv6Addr::LOCALHOST;
    }
}
