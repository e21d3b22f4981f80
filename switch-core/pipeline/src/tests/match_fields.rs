//! Translation of every match field, and control's fields through the key.

use super::*;

type Setter = fn(&mut FlowKey);

#[test]
fn every_match_field_hits_with_its_value_and_misses_without() {
    fn ip(k: &mut FlowKey) {
        k.set_dl_type(0x0800);
    }
    fn ip6(k: &mut FlowKey) {
        k.set_dl_type(0x86dd);
    }
    fn arp(k: &mut FlowKey) {
        k.set_dl_type(0x0806);
    }
    let cases: Vec<(&str, Setter, Setter)> = vec![
        ("in_port=3", |k| k.set_in_port(3), |k| k.set_in_port(4)),
        ("in_port=pod2", |k| k.set_in_port(2), |k| k.set_in_port(3)),
        (
            "tun_id=0x1388",
            |k| k.set_tun_id(5000),
            |k| k.set_tun_id(5001),
        ),
        (
            "tun_src=198.18.0.0/24",
            |k| k.set_tun_src("198.18.0.7".parse().unwrap()),
            |k| k.set_tun_src("198.18.1.7".parse().unwrap()),
        ),
        (
            "tun_dst=198.18.0.1",
            |k| k.set_tun_dst("198.18.0.1".parse().unwrap()),
            |k| k.set_tun_dst("fd00::1".parse().unwrap()),
        ),
        (
            "tun_ipv6_src=fd00::1",
            |k| k.set_tun_src("fd00::1".parse().unwrap()),
            |k| k.set_tun_src("fd00::2".parse().unwrap()),
        ),
        (
            "tun_ipv6_dst=fd00::/64",
            |k| k.set_tun_dst("fd00::9".parse().unwrap()),
            |k| k.set_tun_dst("fd01::9".parse().unwrap()),
        ),
        (
            "metadata=0x5/0xf",
            |k| k.set_metadata(0x35),
            |k| k.set_metadata(0x36),
        ),
        ("reg0=7", |k| k.set_reg(0, 7), |k| k.set_reg(0, 8)),
        ("reg1=7", |k| k.set_reg(1, 7), |k| k.set_reg(1, 8)),
        ("reg2=7", |k| k.set_reg(2, 7), |k| k.set_reg(2, 8)),
        ("reg3=7", |k| k.set_reg(3, 7), |k| k.set_reg(3, 8)),
        ("reg4=7", |k| k.set_reg(4, 7), |k| k.set_reg(4, 8)),
        ("reg5=7", |k| k.set_reg(5, 7), |k| k.set_reg(5, 8)),
        ("reg6=7", |k| k.set_reg(6, 7), |k| k.set_reg(6, 8)),
        (
            "reg7=0x10/0x10",
            |k| k.set_reg(7, 0x11),
            |k| k.set_reg(7, 0x01),
        ),
        (
            "dl_src=02:00:00:00:00:0a",
            |k| k.set_dl_src(MAC_A),
            |k| k.set_dl_src(MAC_B),
        ),
        (
            "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
            |k| k.set_dl_dst([0xff; 6]),
            |k| k.set_dl_dst(MAC_B),
        ),
        ("dl_type=0x0800", ip, ip6),
        (
            "arp,arp_op=2",
            |k| {
                arp(k);
                k.set_nw_proto(2)
            },
            |k| {
                arp(k);
                k.set_nw_proto(1)
            },
        ),
        (
            "arp,arp_spa=10.0.0.1",
            |k| {
                arp(k);
                k.set_nw_src(Ipv4Addr::new(10, 0, 0, 1))
            },
            |k| {
                arp(k);
                k.set_nw_src(Ipv4Addr::new(10, 0, 0, 2))
            },
        ),
        (
            "arp,arp_tpa=10.0.0.0/24",
            |k| {
                arp(k);
                k.set_nw_dst(Ipv4Addr::new(10, 0, 0, 9))
            },
            |k| {
                arp(k);
                k.set_nw_dst(Ipv4Addr::new(10, 0, 1, 9))
            },
        ),
        (
            "arp,arp_sha=02:00:00:00:00:0a",
            |k| {
                arp(k);
                k.set_arp_sha(MAC_A)
            },
            |k| {
                arp(k);
                k.set_arp_sha(MAC_B)
            },
        ),
        (
            "arp,arp_tha=02:00:00:00:00:0b",
            |k| {
                arp(k);
                k.set_arp_tha(MAC_B)
            },
            |k| ip(k),
        ),
        (
            "ip,nw_src=198.19.0.0/16",
            |k| {
                ip(k);
                k.set_nw_src(Ipv4Addr::new(198, 19, 4, 4))
            },
            |k| {
                ip(k);
                k.set_nw_src(Ipv4Addr::new(198, 18, 4, 4))
            },
        ),
        (
            "ip,nw_dst=198.19.1.1",
            |k| {
                ip(k);
                k.set_nw_dst(Ipv4Addr::new(198, 19, 1, 1))
            },
            |k| {
                arp(k);
                k.set_nw_dst(Ipv4Addr::new(198, 19, 1, 1))
            },
        ),
        (
            "ipv6,ipv6_src=fd00::/16",
            |k| {
                ip6(k);
                k.set_ipv6_src("fd00:1::1".parse().unwrap())
            },
            |k| {
                ip6(k);
                k.set_ipv6_src("fe80::1".parse().unwrap())
            },
        ),
        (
            "ipv6,ipv6_dst=fd00::2",
            |k| {
                ip6(k);
                k.set_ipv6_dst("fd00::2".parse().unwrap())
            },
            |k| {
                ip6(k);
                k.set_ipv6_dst("fd00::3".parse().unwrap())
            },
        ),
        (
            "ip,nw_proto=17",
            |k| {
                ip(k);
                k.set_nw_proto(17)
            },
            |k| {
                ip(k);
                k.set_nw_proto(6)
            },
        ),
        (
            "ip,nw_tos=184",
            |k| {
                ip(k);
                k.set_nw_tos(184)
            },
            |k| {
                ip(k);
                k.set_nw_tos(0)
            },
        ),
        (
            "ipv6,nw_ttl=1",
            |k| {
                ip6(k);
                k.set_nw_ttl(1)
            },
            |k| {
                ip6(k);
                k.set_nw_ttl(2)
            },
        ),
        (
            "tcp,tp_src=80",
            |k| {
                *k = tcp_key(5);
                k.set_tp_src(80)
            },
            |k| *k = tcp_key(5),
        ),
        (
            "udp,tp_dst=0x1000/0xf000",
            |k| {
                *k = tcp_key(5);
                k.set_nw_proto(17);
                k.set_tp_dst(0x1234)
            },
            |k| {
                *k = tcp_key(5);
                k.set_nw_proto(17);
                k.set_tp_dst(0x2234)
            },
        ),
        (
            "icmp,icmp_type=8",
            |k| {
                ip(k);
                k.set_nw_proto(1);
                k.set_tp_src(8)
            },
            |k| {
                ip(k);
                k.set_nw_proto(1);
                k.set_tp_src(0)
            },
        ),
        (
            "icmp,icmp_code=3",
            |k| {
                ip(k);
                k.set_nw_proto(1);
                k.set_tp_dst(3)
            },
            |k| {
                ip(k);
                k.set_nw_proto(1);
                k.set_tp_dst(4)
            },
        ),
    ];
    let mut covered = std::collections::BTreeSet::new();
    for (m, yes, no) in &cases {
        let f = parse_flow(&format!("priority=10,{m} actions=output:1")).unwrap();
        covered.extend(f.matches.fields());
        let p = pipe(&[&format!("priority=10,{m} actions=output:1")]);
        let mut k = FlowKey::ZERO;
        k.set_in_port(5);
        yes(&mut k);
        assert_eq!(outs(&run(&p, &k)), vec![1], "{m} should match {k:?}");
        let mut k = FlowKey::ZERO;
        k.set_in_port(5);
        no(&mut k);
        let r = run(&p, &k);
        assert_eq!(
            r.drop_reason(),
            Some(DropReason::TableMiss),
            "{m} should miss {k:?}"
        );
        // The dump gives the match back exactly.
        assert_eq!(
            p.flows()[0].matches.fields().collect::<Vec<_>>(),
            f.matches.fields().collect::<Vec<_>>(),
            "{m}"
        );
        if !matches!(f.matches.in_port, Some(weft_flow::PortRef::Name(_))) {
            assert_eq!(p.flows()[0].matches, f.matches, "{m}");
            // So a bundle of such adds is its own net change: the journal's flow as
            // sent has the identity (the match) a later delete's rebuilt flow has.
            let b = add_bundle(&[&format!("priority=10,{m} actions=output:1")]);
            let (_, _, net) = Pipeline::new(ports()).apply_net(&b, 0).unwrap();
            let sent: Vec<_> = net.added_flows().collect();
            assert_eq!(net.added_as_sent.len(), 1, "{m}");
            assert!(sent[0].same_identity(&p.flows()[0]), "{m}");
        }
    }
    for f in CField::ALL {
        assert!(covered.contains(&f), "no test case for {f}");
    }
}

#[test]
fn control_field_mapping_round_trips_through_key() {
    // Every writable control field can be set and read back through the key.
    let mut k = FlowKey::ZERO;
    for f in CField::ALL {
        if !f.writable() {
            continue;
        }
        let v = 0x5a & translate::ones(u32::from(f.bits()));
        translate::write_field(&mut k, f, v, u128::MAX);
        assert_eq!(translate::read_field(&k, f), v, "{f}");
    }
    let _ = Field::TunSrc;
}
