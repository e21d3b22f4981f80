//! Tests of the pipeline: translation of every match field, every action, the walk's
//! bounds, publication and bundles, counters, timeouts, the cache, normal, trace, the
//! packet rewrite and Antrea's ARP responder written as flows.

use std::net::{Ipv4Addr, Ipv6Addr};

use weft_flow::{
    Bundle, Field as CField, FlowFilter, FlowMod, FlowModCommand, parse_filter, parse_flow,
    parse_flow_mod,
};

use super::commit::{commit, csum_update16};
use super::normal::{Learned, learn};
use super::*;
use crate::flow_key::{Field, TunnelMeta};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

fn ports() -> PortMap {
    PortMap::new()
        .with(1, "pod1", PortKind::Tap)
        .and_then(|m| m.with(2, "pod2", PortKind::Tap))
        .and_then(|m| m.with(3, "pod3", PortKind::Tap))
        .and_then(|m| m.with(10, "tun0", PortKind::Tunnel))
        .and_then(|m| m.with(11, "tun1", PortKind::Tunnel))
        .unwrap()
}

fn add_bundle(flows: &[&str]) -> Bundle {
    Bundle::new(
        flows
            .iter()
            .map(|t| FlowMod::Add {
                flow: parse_flow(t).unwrap_or_else(|e| panic!("{t}: {e}")),
            })
            .collect(),
    )
}

fn pipe(flows: &[&str]) -> Pipeline {
    Pipeline::new(ports())
        .apply(&add_bundle(flows), 0)
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

fn run(p: &Pipeline, key: &FlowKey) -> Resolved {
    let mut r = Resolved::default();
    p.resolve(key, &mut r);
    r
}

/// The ports the resolved list outputs to (explicit outputs only).
fn outs(r: &Resolved) -> Vec<u32> {
    r.actions()
        .iter()
        .filter_map(|a| match a {
            DpAction::Output { port, .. } => Some(*port),
            _ => None,
        })
        .collect()
}

fn tcp_key(in_port: u32) -> FlowKey {
    let mut k = FlowKey::ZERO;
    k.set_in_port(in_port);
    k.set_dl_src(MAC_A);
    k.set_dl_dst(MAC_B);
    k.set_dl_type(0x0800);
    k.set_nw_src(Ipv4Addr::new(198, 19, 1, 2));
    k.set_nw_dst(Ipv4Addr::new(198, 19, 2, 3));
    k.set_nw_proto(6);
    k.set_nw_ttl(64);
    k.set_tp_src(40000);
    k.set_tp_dst(80);
    k
}

// ---------------------------------------------------------------- frames

fn csum(data: &[u8]) -> u16 {
    let mut s = 0u32;
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

fn eth(dst: [u8; 6], src: [u8; 6], ty: u16) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&ty.to_be_bytes());
    f
}

fn l4_sum(pseudo: &[u8], l4: &[u8]) -> u16 {
    let mut b = pseudo.to_vec();
    b.extend_from_slice(l4);
    csum(&b)
}

fn ipv4_frame(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(MAC_B, MAC_A, 0x0800);
    let tot = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0xb9];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&[
        0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 198, 19, 1, 2, 198, 19, 2, 3,
    ]);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = l4.to_vec();
    let mut pseudo = h[12..20].to_vec();
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let off = match proto {
        6 => Some(16),
        17 => Some(6),
        1 => Some(2),
        _ => None,
    };
    if let Some(o) = off {
        let c = if proto == 1 {
            csum(&l4)
        } else {
            l4_sum(&pseudo, &l4)
        };
        l4[o..o + 2].copy_from_slice(&c.to_be_bytes());
    }
    f.extend(h);
    f.extend(l4);
    f
}

fn tcp_hdr(src: u16, dst: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.to_be_bytes());
    t[2..4].copy_from_slice(&dst.to_be_bytes());
    t[12] = 0x50;
    t.extend_from_slice(b"hello, weft!");
    t
}

fn udp_hdr(src: u16, dst: u16) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.to_be_bytes());
    u[2..4].copy_from_slice(&dst.to_be_bytes());
    u.extend_from_slice(b"payload!!");
    let n = u.len() as u16;
    u[4..6].copy_from_slice(&n.to_be_bytes());
    u
}

fn ipv6_frame(proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(MAC_B, MAC_A, 0x86dd);
    let src: Ipv6Addr = "fd00::1".parse().unwrap();
    let dst: Ipv6Addr = "fd00::2".parse().unwrap();
    let mut h = vec![0x6b, 0x80, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.push(proto);
    h.push(64);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let mut l4 = l4.to_vec();
    let off = if proto == 6 { 16 } else { 6 };
    let c = l4_sum(&v6_pseudo(&h, proto, l4.len()), &l4);
    l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    f.extend(h);
    f.extend(l4);
    f
}

fn v6_pseudo(h: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = h[8..40].to_vec();
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    p
}

/// True when every checksum of an Ethernet/IPv4|IPv6/TCP|UDP|ICMP frame verifies.
fn checksums_ok(f: &[u8]) -> bool {
    let ty = u16::from_be_bytes([f[12], f[13]]);
    if ty == 0x0800 {
        let ihl = usize::from(f[14] & 0xf) * 4;
        let h = &f[14..14 + ihl];
        if csum(h) != 0 {
            return false;
        }
        let proto = h[9];
        let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let l4 = &f[14 + ihl..14 + tot];
        let mut pseudo = h[12..20].to_vec();
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        match proto {
            6 => l4_sum(&pseudo, l4) == 0,
            17 => u16::from_be_bytes([l4[6], l4[7]]) == 0 || l4_sum(&pseudo, l4) == 0,
            1 => csum(l4) == 0,
            _ => true,
        }
    } else if ty == 0x86dd {
        let h = &f[14..54];
        let l4 = &f[54..];
        l4_sum(&v6_pseudo(h, h[6], l4.len()), l4) == 0
    } else {
        true
    }
}

fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = eth([0xff; 6], sha, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.extend_from_slice(&[0; 18]);
    f
}

// ---------------------------------------------------------------- match fields

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
        if f.matches.in_port.is_none() {
            assert_eq!(p.flows()[0].matches, f.matches, "{m}");
        }
    }
    for f in CField::ALL {
        assert!(covered.contains(&f), "no test case for {f}");
    }
}

// ---------------------------------------------------------------- walk and actions

#[test]
fn priorities_and_masks() {
    let p = pipe(&[
        "priority=10,ip actions=output:1",
        "priority=20,ip,nw_dst=198.19.0.0/16 actions=output:2",
        "priority=30,ip,nw_dst=198.19.2.0/24 actions=output:3",
        "priority=5 actions=drop",
    ]);
    let mut k = tcp_key(10);
    assert_eq!(outs(&run(&p, &k)), vec![3]);
    k.set_nw_dst(Ipv4Addr::new(198, 19, 9, 9));
    assert_eq!(outs(&run(&p, &k)), vec![2]);
    k.set_nw_dst(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(outs(&run(&p, &k)), vec![1]);
    k.set_dl_type(0x86dd);
    let r = run(&p, &k);
    assert_eq!(r.drop_reason(), Some(DropReason::ExplicitDrop));
}

#[test]
fn table_miss_drops_and_is_counted() {
    let p = pipe(&["table=0,priority=1,ip actions=goto_table:5"]);
    let mut cache = FlowCache::new(64);
    let r = p.process(&tcp_key(1), 100, 1, &mut cache);
    assert_eq!(r.drop_reason(), Some(DropReason::TableMiss));
    let r = p.process(&FlowKey::ZERO, 100, 1, &mut cache);
    assert_eq!(r.drop_reason(), Some(DropReason::TableMiss));
    assert_eq!(p.drops().get(DropReason::TableMiss), 2);
    assert_eq!(p.table_stats(0).lookups(), 2);
    assert_eq!(p.table_stats(0).matches(), 1);
    assert_eq!(p.table_stats(0).misses(), 1);
    assert_eq!(p.table_stats(5).misses(), 1);
}

#[test]
fn goto_and_resubmit() {
    let p = pipe(&[
        "table=0,priority=1 actions=set_field:0x1->reg0,goto_table:10",
        "table=10,priority=1,reg0=1 actions=resubmit(,20),output:2",
        "table=20,priority=1,reg0=1,in_port=1 actions=output:3",
        "table=20,priority=1,reg0=1,in_port=2 actions=output:10",
        "table=10,priority=5,reg0=1,in_port=3 actions=resubmit(2,20),resubmit(,30),output:1",
    ]);
    // From port 1: table 0 → 10 → resubmit 20 (in_port=1 → output:3), then output:2.
    assert_eq!(outs(&run(&p, &tcp_key(1))), vec![3, 2]);
    // From port 3: resubmit as port 2 (output:10), miss in 30 is a no-op, in_port is
    // restored (output:1 is not the ingress port, so it is sent).
    let r = run(&p, &tcp_key(3));
    assert_eq!(outs(&r), vec![10, 1]);
    assert_eq!(r.state(0).in_port(), 2);
    assert_eq!(r.state(1).in_port(), 3);
}

#[test]
fn resubmit_loop_is_a_counted_drop_at_run_time() {
    let p = pipe(&[
        "table=0,priority=1 actions=resubmit(,1),output:1",
        "table=1,priority=1 actions=resubmit(,0)",
    ]);
    let mut cache = FlowCache::new(16);
    let r = p.process(&tcp_key(2), 60, 0, &mut cache);
    assert_eq!(r.drop_reason(), Some(DropReason::ResubmitLoop));
    assert!(r.actions().is_empty());
    assert_eq!(p.drops().get(DropReason::ResubmitLoop), 1);
}

#[test]
fn resubmit_loop_is_an_install_error_when_detectable() {
    let base = Pipeline::new(ports());
    let bad = add_bundle(&[
        "table=0,priority=1,ip actions=output:1",
        "table=3,priority=1,ip actions=output:1,resubmit(,3)",
    ]);
    let e = base.apply(&bad, 0).unwrap_err();
    assert_eq!(e.index, 1);
    assert_eq!(e.kind, InstallErrorKind::ResubmitLoop { table: 3 });
    assert!(
        e.to_string().starts_with("change 2: resubmit to table 3"),
        "{e}"
    );
    // Writing a field first, or resubmitting as another port, is not a loop.
    for ok in [
        "table=3,priority=1,ip actions=set_field:1->reg0,resubmit(,3)",
        "table=3,priority=1,in_port=1,ip actions=resubmit(2,3)",
        "table=3,priority=1,ip actions=resubmit(,4)",
    ] {
        base.apply(&add_bundle(&[ok]), 0)
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    // A resubmit as the same port the flow matches is.
    let e = base
        .apply(&add_bundle(&["table=3,in_port=1 actions=resubmit(1,3)"]), 0)
        .unwrap_err();
    assert!(matches!(e.kind, InstallErrorKind::ResubmitLoop { .. }));
    // So is a modify that makes a flow loop.
    let p = pipe(&["table=4,priority=1,ip actions=output:1"]);
    let m = parse_flow_mod(FlowModCommand::Modify, "table=4 actions=resubmit(,4)").unwrap();
    assert!(p.apply(&Bundle::new(vec![m]), 0).is_err());
}

#[test]
fn set_field_move_and_mods() {
    let p = pipe(&[
        "priority=1,ip actions=set_field:0xab/0xf0->reg1,move:NXM_OF_IP_SRC[0..7]->NXM_NX_REG2[8..15],\
         mod_dl_src:02:00:00:00:00:99,mod_dl_dst:02:00:00:00:00:98,mod_nw_src:10.0.0.1,\
         mod_nw_dst:10.0.0.2,mod_nw_ttl:9,set_tunnel:0x1234,set_field:198.18.0.9->tun_dst,\
         load:0x5->NXM_NX_REG3[4..7],output:2",
    ]);
    let mut k = tcp_key(1);
    k.set_reg(1, 0x0f);
    let r = run(&p, &k);
    assert_eq!(outs(&r), vec![2]);
    let s = r.state(0);
    assert_eq!(s.reg(1), 0xaf);
    assert_eq!(s.reg(2), 0x0200); // low byte of 198.19.1.2
    assert_eq!(s.reg(3), 0x50);
    assert_eq!(s.dl_src(), [2, 0, 0, 0, 0, 0x99]);
    assert_eq!(s.dl_dst(), [2, 0, 0, 0, 0, 0x98]);
    assert_eq!(s.nw_src(), Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(s.nw_dst(), Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(s.nw_ttl(), 9);
    assert_eq!(s.tun_id(), 0x1234);
    assert_eq!(
        s.tun_dst(),
        "198.18.0.9".parse::<std::net::IpAddr>().unwrap()
    );
}

#[test]
fn output_in_port_normal_flood_drop() {
    let p = pipe(&[
        "priority=1,in_port=1 actions=output:1,output:2",
        "priority=1,in_port=2 actions=in_port",
        "priority=1,in_port=3 actions=normal,flood",
        "priority=1,in_port=10 actions=drop",
    ]);
    // output to the ingress port is skipped (OVS: use in_port).
    assert_eq!(outs(&run(&p, &tcp_key(1))), vec![2]);
    assert_eq!(outs(&run(&p, &tcp_key(2))), vec![2]);
    let r = run(&p, &tcp_key(3));
    assert_eq!(
        r.actions(),
        &[DpAction::Normal { state: 0 }, DpAction::Flood { state: 0 }]
    );
    assert_eq!(
        run(&p, &tcp_key(10)).drop_reason(),
        Some(DropReason::ExplicitDrop)
    );
}

#[test]
fn dec_ttl_decrements_and_expiry_drops() {
    let p = pipe(&["priority=1 actions=dec_ttl,output:2"]);
    let r = run(&p, &tcp_key(1));
    assert_eq!(r.state(0).nw_ttl(), 63);
    let mut k = tcp_key(1);
    k.set_nw_ttl(1);
    let mut cache = FlowCache::new(16);
    assert_eq!(
        p.process(&k, 60, 0, &mut cache).drop_reason(),
        Some(DropReason::TtlExpired)
    );
    assert_eq!(p.drops().get(DropReason::TtlExpired), 1);
    // Non-IP passes unchanged.
    let mut arp = FlowKey::ZERO;
    arp.set_dl_type(0x0806);
    arp.set_in_port(1);
    assert_eq!(outs(&run(&p, &arp)), vec![2]);
}

#[test]
fn too_many_outputs_and_states_drop() {
    let many: String = (0..17).map(|_| "output:2,").collect::<String>() + "output:3";
    let p = pipe(&[&format!("priority=1 actions={many}")]);
    assert_eq!(
        run(&p, &tcp_key(1)).drop_reason(),
        Some(DropReason::TooManyOutputs)
    );
    let states: String = (0..5)
        .map(|i| format!("set_field:{i}->reg0,output:2,"))
        .collect::<String>();
    let p = pipe(&[&format!(
        "priority=1 actions={}",
        states.trim_end_matches(',')
    )]);
    assert_eq!(
        run(&p, &tcp_key(1)).drop_reason(),
        Some(DropReason::TooManyOutputs)
    );
    // Four states fit, and equal consecutive states are shared.
    let p = pipe(&[
        "priority=1 actions=output:2,output:3,set_field:1->reg0,output:2,set_field:2->reg0,output:3",
    ]);
    let r = run(&p, &tcp_key(1));
    assert_eq!(outs(&r), vec![2, 3, 2, 3]);
    assert_eq!(
        r.actions().iter().map(DpAction::state).collect::<Vec<_>>(),
        vec![0, 0, 1, 2]
    );
}

// ---------------------------------------------------------------- publication

#[test]
fn bundle_is_atomic_and_names_the_bad_change() {
    let shared = SharedPipeline::new(pipe(&["priority=1 actions=output:1"]));
    let before = shared.load_full();
    let mut bad = add_bundle(&[
        "priority=5,ip actions=output:2",
        "priority=6,ip actions=output:nosuchport",
        "priority=7,ip actions=output:3",
    ]);
    bad.lines = vec![3, 4, 7];
    let e = shared.apply(&bad, 5).unwrap_err();
    assert_eq!((e.index, e.line), (1, Some(4)));
    assert_eq!(e.to_string(), "flow line 4: unknown port 'nosuchport'");
    let after = shared.load_full();
    assert!(Arc::ptr_eq(&before, &after));
    assert_eq!(after.flows(), before.flows());
    // A control-level error (a goto backwards) is also named.
    let m = FlowMod::Add {
        flow: parse_flow("table=3,priority=1 actions=output:1").unwrap(),
    };
    let mut f = parse_flow("table=1 actions=output:1").unwrap();
    f.actions = vec![weft_flow::Action::GotoTable(0)];
    let e = shared
        .apply(&Bundle::new(vec![m, FlowMod::Add { flow: f }]), 0)
        .unwrap_err();
    assert_eq!(e.index, 1);
    assert!(e.to_string().starts_with("change 2: goto_table:0"), "{e}");
    assert_eq!(shared.load().version(), before.version());
    // A good bundle publishes one version with all its changes.
    let out = shared
        .apply(
            &add_bundle(&["priority=5,ip actions=output:2", "table=1 actions=drop"]),
            5,
        )
        .unwrap();
    assert!(out.version > before.version());
    assert_eq!(out.version, shared.load().version());
    assert_eq!(out.added, 2);
    assert_eq!(shared.load().len(), 3);
    // Untouched tables are shared with the previous version.
    let now = shared.load_full();
    assert!(Arc::ptr_eq(&now.tables[7], &before.tables[7]));
    assert!(!Arc::ptr_eq(&now.tables[0], &before.tables[0]));
}

#[test]
fn modify_delete_strict_and_not() {
    let p = pipe(&[
        "cookie=0x1,priority=10,ip,nw_dst=10.0.0.1 actions=output:1",
        "cookie=0x2,priority=10,ip,nw_dst=10.0.0.2 actions=output:1",
        "cookie=0x2,priority=20,ip actions=output:2",
        "table=1,priority=1 actions=drop",
    ]);
    let b = |cmd, t: &str| Bundle::new(vec![parse_flow_mod(cmd, t).unwrap()]);
    let (p2, o) = p
        .apply(
            &b(
                FlowModCommand::Modify,
                "ip,nw_dst=10.0.0.0/8 actions=output:3",
            ),
            1,
        )
        .unwrap();
    assert_eq!(o.modified, 2);
    let mut k = tcp_key(5);
    k.set_nw_dst(Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(outs(&run(&p2, &k)), vec![2]); // priority 20 still wins
    let (p3, o) = p2
        .apply(&b(FlowModCommand::DeleteStrict, "priority=20,ip"), 1)
        .unwrap();
    assert_eq!(o.deleted, 1);
    assert_eq!(outs(&run(&p3, &k)), vec![3]);
    let (p4, o) = p3
        .apply(&b(FlowModCommand::Delete, "cookie=0x2/0xff"), 1)
        .unwrap();
    assert_eq!(o.deleted, 1);
    assert_eq!(p4.len(), 2);
    let (p5, o) = p4
        .apply(
            &b(
                FlowModCommand::ModifyStrict,
                "priority=10,ip,nw_dst=10.0.0.1 actions=output:2",
            ),
            1,
        )
        .unwrap();
    assert_eq!(o.modified, 1);
    assert_eq!(outs(&run(&p5, &k)), vec![2]);
    let (p6, o) = p5.apply(&b(FlowModCommand::Delete, ""), 1).unwrap();
    assert_eq!((o.deleted, p6.len()), (2, 0));
}

#[test]
fn replace_keeps_counters_only_for_unchanged_actions_and_modify_keeps_them() {
    let shared = SharedPipeline::new(pipe(&["priority=1,ip actions=output:2"]));
    let mut cache = FlowCache::new(64);
    for _ in 0..3 {
        shared.load().process(&tcp_key(1), 100, 10, &mut cache);
    }
    let count = |s: &SharedPipeline| s.load().dump(&FlowFilter::all(), 20).unwrap()[0].packets;
    assert_eq!(count(&shared), 3);
    // Same identity, same actions, new cookie: counters stay.
    shared
        .apply(
            &add_bundle(&["cookie=0x9,priority=1,ip actions=output:2"]),
            20,
        )
        .unwrap();
    assert_eq!(count(&shared), 3);
    assert_eq!(shared.load().flows()[0].cookie, 9);
    // modify: counters stay.
    let m = parse_flow_mod(FlowModCommand::Modify, "ip actions=output:3").unwrap();
    shared.apply(&Bundle::new(vec![m]), 20).unwrap();
    assert_eq!(count(&shared), 3);
    // Counting continues after the new version (cache invalidated, same stats).
    shared.load().process(&tcp_key(1), 100, 30, &mut cache);
    assert_eq!(count(&shared), 4);
    // Same identity, different actions: counters restart.
    shared
        .apply(&add_bundle(&["priority=1,ip actions=output:2"]), 40)
        .unwrap();
    assert_eq!(count(&shared), 0);
    assert_eq!(
        shared.load().dump(&FlowFilter::all(), 40).unwrap()[0].duration_ms,
        0
    );
}

#[test]
fn port_map_publication_and_missing_ports() {
    let shared = SharedPipeline::new(pipe(&["priority=1 actions=output:pod2,output:3"]));
    let mut cache = FlowCache::new(64);
    assert_eq!(
        outs(shared.load().process(&tcp_key(1), 60, 0, &mut cache)),
        vec![2, 3]
    );
    let mut pm = shared.load().ports().clone();
    pm.remove(3);
    let v = shared.set_ports(pm);
    assert_eq!(shared.load().version(), v);
    let p = shared.load();
    let r = p.process(&tcp_key(1), 60, 0, &mut cache);
    assert_eq!(outs(r), vec![2]);
    assert_eq!(r.missing_ports(), 1);
    assert_eq!(p.drops().get(DropReason::NoSuchPort), 1);
    // Unknown names are refused at install time, naming the port.
    let e = p
        .apply(&add_bundle(&["actions=output:pod9"]), 0)
        .unwrap_err();
    assert_eq!(e.kind, InstallErrorKind::UnknownPort("pod9".into()));
    let e = p
        .apply(&add_bundle(&["in_port=pod9 actions=drop"]), 0)
        .unwrap_err();
    assert_eq!(e.to_string(), "change 1: unknown port 'pod9'");
}

// ---------------------------------------------------------------- counters, timeouts

#[test]
fn counters_per_flow_and_table() {
    let p = pipe(&[
        "priority=1,ip actions=goto_table:1",
        "table=1,priority=1 actions=output:2",
    ]);
    let mut cache = FlowCache::new(64);
    p.process(&tcp_key(1), 100, 1000, &mut cache);
    p.process(&tcp_key(1), 50, 2500, &mut cache);
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    let d = p.dump(&FlowFilter::all(), 4000).unwrap();
    assert_eq!(d.len(), 2);
    for f in &d {
        assert_eq!((f.packets, f.bytes), (2, 150));
        assert_eq!(f.duration_ms, 4000);
        assert_eq!(f.idle_age_ms, 1500);
    }
    assert_eq!(p.table_stats(1).matches(), 2);
    let line = d[0].to_string();
    assert!(
        line.starts_with("duration=4.000s, n_packets=2, n_bytes=150, idle_age=1, "),
        "{line}"
    );
    assert!(
        line.ends_with("priority=1,ip actions=goto_table:1"),
        "{line}"
    );
}

#[test]
fn idle_and_hard_timeouts() {
    let shared = SharedPipeline::new(Pipeline::new(ports()));
    shared
        .apply(
            &add_bundle(&[
                "priority=1,idle_timeout=10,ip actions=output:2",
                "priority=2,hard_timeout=30,arp actions=output:2",
                "priority=3,udp actions=output:2",
            ]),
            0,
        )
        .unwrap();
    let mut cache = FlowCache::new(64);
    assert!(shared.expire(9_000).is_empty());
    shared.load().process(&tcp_key(1), 60, 9_000, &mut cache);
    // Idle counts from the last packet.
    assert!(shared.expire(15_000).is_empty());
    let gone = shared.expire(19_000);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].reason, ExpireReason::Idle);
    assert_eq!(gone[0].flow.flow.idle_timeout, 10);
    assert_eq!(gone[0].flow.packets, 1);
    let gone = shared.expire(30_000);
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].reason, ExpireReason::Hard);
    assert_eq!(shared.load().len(), 1);
    assert_eq!(shared.load().tables[0].n_timeouts, 0);
}

// ---------------------------------------------------------------- cache

#[test]
fn cache_hit_equals_fresh_walk_and_versions_invalidate() {
    let shared = SharedPipeline::new(pipe(&[
        "priority=1,ip actions=set_field:5->reg0,goto_table:1",
        "table=1,priority=1,ip,reg0=5 actions=mod_nw_ttl:3,output:2,normal",
        "priority=9,udp actions=flood",
    ]));
    let mut cache = FlowCache::new(256);
    let mut keys = Vec::new();
    for i in 0..50u16 {
        let mut k = tcp_key(1);
        k.set_tp_src(i);
        if i % 3 == 0 {
            k.set_nw_proto(17);
        }
        keys.push(k);
    }
    let p = shared.load_full();
    for round in 0..3 {
        for k in &keys {
            let fresh = run(&p, k);
            let got = p.process(k, 60, 0, &mut cache).clone();
            assert_eq!(got.actions(), fresh.actions(), "round {round}");
            for a in got.actions() {
                assert_eq!(got.state_of(a), fresh.state_of(a));
            }
            assert_eq!(got.drop_reason(), fresh.drop_reason());
        }
    }
    assert_eq!(cache.misses(), 50);
    assert_eq!(cache.hits(), 100);
    // A new version: the old entries miss and the new flows take effect.
    shared
        .apply(&add_bundle(&["priority=20,ip actions=output:3"]), 0)
        .unwrap();
    let p = shared.load();
    assert_eq!(outs(p.process(&keys[1], 60, 0, &mut cache)), vec![3]);
    assert_eq!(cache.misses(), 51);
}

#[test]
fn cache_hit_does_not_allocate_and_slots_are_reused_safely() {
    let p = pipe(&["priority=1 actions=output:2"]);
    let mut cache = FlowCache::new(4);
    // More keys than slots: the round-robin slots are reused and old EMC entries stop
    // matching (generation), so every result is still right.
    for i in 0..40u16 {
        let mut k = tcp_key(1);
        k.set_tp_src(i % 9);
        assert_eq!(outs(p.process(&k, 60, 0, &mut cache)), vec![2]);
    }
    assert_eq!(p.dump(&FlowFilter::all(), 0).unwrap()[0].packets, 40);
}

// ---------------------------------------------------------------- normal

#[test]
fn normal_learns_per_vni_floods_unknown_and_ages() {
    let pm = ports();
    let mut macs = MacTable::new(64, 300_000);
    let mut k = tcp_key(1);
    k.set_tun_id(7);
    // Unknown destination floods; the source is learned.
    assert_eq!(learn(&mut macs, &pm, &k, 0), Learned::New);
    assert_eq!(normal::normal(&macs, &pm, &k, 0), Forward::Flood);
    // The reply from port 2 goes to port 1.
    let mut reply = k;
    reply.set_in_port(2);
    reply.set_dl_src(MAC_B);
    reply.set_dl_dst(MAC_A);
    assert_eq!(learn(&mut macs, &pm, &reply, 1), Learned::New);
    assert_eq!(
        normal::normal(&macs, &pm, &reply, 1),
        Forward::Port {
            port: 1,
            tun_dst: 0
        }
    );
    assert_eq!(
        normal::normal(&macs, &pm, &k, 1),
        Forward::Port {
            port: 2,
            tun_dst: 0
        }
    );
    // Another VNI does not see these entries.
    let mut other = reply;
    other.set_tun_id(8);
    assert_eq!(normal::normal(&macs, &pm, &other, 1), Forward::Flood);
    // Broadcast floods; a multicast source is not learned.
    let mut bc = k;
    bc.set_dl_dst([0xff; 6]);
    assert_eq!(normal::normal(&macs, &pm, &bc, 1), Forward::Flood);
    let mut mc = k;
    mc.set_dl_src([0x01, 0, 0x5e, 0, 0, 1]);
    assert_eq!(learn(&mut macs, &pm, &mc, 1), Learned::Ignored);
    // Destination on the ingress port: dropped.
    let mut same = k;
    same.set_dl_dst(MAC_A);
    assert_eq!(
        normal::normal(&macs, &pm, &same, 1),
        Forward::Drop(DropReason::NormalSamePort)
    );
    // Moves are followed.
    let mut moved = reply;
    moved.set_in_port(3);
    assert_eq!(learn(&mut macs, &pm, &moved, 2), Learned::Moved);
    assert_eq!(
        normal::normal(&macs, &pm, &k, 2),
        Forward::Port {
            port: 3,
            tun_dst: 0
        }
    );
    // Ageing: 300 s after last seen, the entry is gone and we flood again.
    assert_eq!(
        normal::normal(&macs, &pm, &k, 2 + 299_999),
        Forward::Port {
            port: 3,
            tun_dst: 0
        }
    );
    assert_eq!(normal::normal(&macs, &pm, &k, 2 + 300_000), Forward::Flood);
    assert_eq!(macs.len(2 + 300_000), 0);
}

#[test]
fn split_horizon_for_tunnels() {
    let pm = ports();
    let mut macs = MacTable::default();
    // A MAC learned from tunnel 10 (with its peer).
    let mut from_tun = tcp_key(10);
    from_tun.set_tun_id(5);
    from_tun.set_tun_src("198.18.0.2".parse().unwrap());
    learn(&mut macs, &pm, &from_tun, 0);
    // A local pod replies: goes to the tunnel, with the learned peer as tun_dst.
    let mut local = tcp_key(1);
    local.set_tun_id(5);
    local.set_dl_src(MAC_B);
    local.set_dl_dst(MAC_A);
    match normal::normal(&macs, &pm, &local, 0) {
        Forward::Port { port: 10, tun_dst } => {
            assert_eq!(
                tun_dst,
                crate::flow_key::ip_to_u128("198.18.0.2".parse().unwrap())
            )
        }
        other => panic!("{other:?}"),
    }
    // The same destination seen from another tunnel: split horizon.
    let mut from_tun1 = local;
    from_tun1.set_in_port(11);
    assert_eq!(
        normal::normal(&macs, &pm, &from_tun1, 0),
        Forward::Drop(DropReason::SplitHorizon)
    );
    // Flooding from a tunnel reaches only taps; from a tap, everything else.
    let f: Vec<u32> = pm.flood_ports(10, 0).map(|p| p.number).collect();
    assert_eq!(f, vec![1, 2, 3]);
    let f: Vec<u32> = pm.flood_ports(2, 0).map(|p| p.number).collect();
    assert_eq!(f, vec![1, 3, 10, 11]);
    // A tap tagged with a VNI gets only that VNI's floods (an OVS access port).
    let mut tagged = pm.clone();
    tagged.set_tag(1, Some(5));
    let f: Vec<u32> = tagged.flood_ports(10, 5).map(|p| p.number).collect();
    assert_eq!(f, vec![1, 2, 3]);
    let f: Vec<u32> = tagged.flood_ports(10, 6).map(|p| p.number).collect();
    assert_eq!(f, vec![2, 3], "another VNI's flood skips the tagged tap");
    let f: Vec<u32> = tagged.flood_ports(2, 6).map(|p| p.number).collect();
    assert_eq!(f, vec![3, 10, 11], "tunnels carry every VNI");
}

#[test]
fn mac_table_is_bounded_and_evicts_least_recently_seen() {
    let mut macs = MacTable::new(8, 300_000); // one set of 8 ways
    assert_eq!(macs.capacity(), 8);
    for i in 0..8u8 {
        assert_eq!(
            macs.learn(1, [2, 0, 0, 0, 0, i], 1, 0, u64::from(i)),
            Learned::New
        );
    }
    // Refresh entry 0 so entry 1 is now the least recently seen.
    assert_eq!(
        macs.learn(1, [2, 0, 0, 0, 0, 0], 1, 0, 100),
        Learned::Refreshed
    );
    assert_eq!(
        macs.learn(1, [2, 0, 0, 0, 0, 99], 2, 0, 101),
        Learned::Evicted
    );
    assert_eq!(macs.evictions(), 1);
    assert_eq!(macs.len(101), 8);
    assert_eq!(macs.lookup(1, [2, 0, 0, 0, 0, 1], 101), None);
    assert_eq!(macs.lookup(1, [2, 0, 0, 0, 0, 0], 101), Some((1, 0)));
    assert_eq!(macs.lookup(1, [2, 0, 0, 0, 0, 99], 101), Some((2, 0)));
    // Aged-out ways are reused before anything is evicted.
    assert_eq!(
        macs.learn(1, [2, 0, 0, 0, 0, 50], 3, 0, 300_050),
        Learned::New
    );
    assert_eq!(macs.evictions(), 1);
}

// ---------------------------------------------------------------- trace

#[test]
fn trace_shows_tables_flows_actions_and_result_without_counting() {
    let p = pipe(&[
        "priority=1,ip actions=set_field:5->reg0,resubmit(,2),goto_table:1",
        "table=1,priority=7,reg0=5 actions=dec_ttl,normal",
    ]);
    let mut macs = MacTable::default();
    let mut src = tcp_key(2);
    src.set_dl_src(MAC_B);
    learn(&mut macs, p.ports(), &src, 0);
    let t = p.trace(&tcp_key(1), Some(&macs), 0);
    assert_eq!(t.tables(), vec![(0, true), (2, false), (1, true)]);
    assert!(matches!(
        &t.steps[0],
        TraceStep::Table { depth: 0, table: 0, flow: Some(f) } if f.priority == 1
    ));
    assert!(t.steps.contains(&TraceStep::Table {
        depth: 1,
        table: 2,
        flow: None
    }));
    assert!(t.steps.contains(&TraceStep::Note {
        depth: 1,
        reason: DropReason::TableMiss
    }));
    assert!(t.steps.contains(&TraceStep::Action {
        depth: 0,
        action: weft_flow::Action::DecTtl
    }));
    assert_eq!(t.actions.len(), 1);
    assert_eq!(t.actions[0].1.nw_ttl(), 63);
    assert_eq!(
        t.actions[0].2,
        Some(Forward::Port {
            port: 2,
            tun_dst: 0
        })
    );
    let text = t.to_string();
    assert!(
        text.contains("0. priority=1,ip actions=set_field:0x5->reg0,resubmit(,2),goto_table:1"),
        "{text}"
    );
    assert!(text.contains("    2. no match"), "{text}");
    assert!(
        text.contains("1. table=1,priority=7,reg0=0x5 actions=dec_ttl,normal"),
        "{text}"
    );
    assert!(
        text.contains("final: normal (state 0: learned port 2)"),
        "{text}"
    );
    // No counters were touched, and a miss trace ends in a drop.
    assert_eq!(p.table_stats(0).lookups(), 0);
    assert_eq!(p.dump(&FlowFilter::all(), 0).unwrap()[0].packets, 0);
    let t = p.trace(&FlowKey::ZERO, None, 0);
    assert_eq!(t.drop, Some(DropReason::TableMiss));
    assert!(t.to_string().ends_with("final: drop (table_miss)\n"));
}

// ---------------------------------------------------------------- dump

#[test]
fn dump_filters_and_prints_with_controls_printer() {
    let p = pipe(&[
        "cookie=0x10,priority=5,in_port=pod1,ip actions=output:pod2",
        "cookie=0x20,priority=6,ip,nw_dst=10.0.0.0/8 actions=mod_dl_dst:02:00:00:00:00:01,output:3",
        "table=2,priority=1 actions=drop",
    ]);
    let all = p.dump(&FlowFilter::all(), 0).unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].flow.priority, 6); // by table, then descending priority
    let d = p.dump(&parse_filter("in_port=pod1").unwrap(), 0).unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].flow.to_string(),
        "cookie=0x10,priority=5,ip,in_port=1 actions=output:2"
    );
    let d = p
        .dump(&parse_filter("cookie=0x20/0xf0,ip").unwrap(), 0)
        .unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].flow.to_string(),
        "cookie=0x20,priority=6,ip,nw_dst=10.0.0.0/8 actions=set_field:02:00:00:00:00:01->dl_dst,output:3"
    );
    // What is printed parses back to the same flow.
    assert_eq!(parse_flow(&d[0].flow.to_string()).unwrap(), d[0].flow);
    assert_eq!(
        p.dump(&parse_filter("table=2").unwrap(), 0).unwrap().len(),
        1
    );
    assert!(p.dump(&parse_filter("in_port=nope").unwrap(), 0).is_err());
}

// ---------------------------------------------------------------- commit

fn commit_and_check(frame: &[u8], rewrite: impl Fn(&mut FlowKey), written: &[Field]) -> Vec<u8> {
    let orig = FlowKey::extract(frame, 1, &TunnelMeta::NONE).unwrap();
    let mut target = orig;
    rewrite(&mut target);
    let mut out = frame.to_vec();
    commit(&mut out, &orig, &target).unwrap();
    let got = FlowKey::extract(&out, 1, &TunnelMeta::NONE).unwrap();
    for f in written {
        assert_eq!(got.get(*f), target.get(*f), "{f}");
    }
    assert_eq!(got, target);
    assert!(checksums_ok(&out), "checksums of {out:x?}");
    out
}

#[test]
fn commit_rewrites_ipv4_tcp_udp_icmp_with_checksums() {
    let tcp = ipv4_frame(6, &tcp_hdr(40000, 80));
    assert!(checksums_ok(&tcp));
    commit_and_check(
        &tcp,
        |k| {
            k.set_dl_src([2, 0, 0, 0, 0, 0x77]);
            k.set_dl_dst([2, 0, 0, 0, 0, 0x78]);
            k.set_nw_src(Ipv4Addr::new(10, 1, 2, 3));
            k.set_nw_dst(Ipv4Addr::new(172, 16, 0, 1));
            k.set_nw_ttl(3);
            k.set_nw_tos(0x20);
            k.set_tp_src(1234);
            k.set_tp_dst(8080);
        },
        &[
            Field::DlSrc,
            Field::DlDst,
            Field::NwSrc,
            Field::NwDst,
            Field::NwTtl,
            Field::NwTos,
            Field::TpSrc,
            Field::TpDst,
        ],
    );
    let udp = ipv4_frame(17, &udp_hdr(53, 5353));
    commit_and_check(
        &udp,
        |k| {
            k.set_nw_dst(Ipv4Addr::new(1, 1, 1, 1));
            k.set_tp_dst(53);
        },
        &[Field::NwDst, Field::TpDst],
    );
    // UDP without checksum keeps 0.
    let mut nocsum = udp.clone();
    nocsum[14 + 20 + 6] = 0;
    nocsum[14 + 20 + 7] = 0;
    let out = commit_and_check(
        &nocsum,
        |k| k.set_nw_src(Ipv4Addr::new(9, 9, 9, 9)),
        &[Field::NwSrc],
    );
    assert_eq!(&out[14 + 26..14 + 28], &[0, 0]);
    let icmp = ipv4_frame(1, &[8, 0, 0, 0, 0, 1, 0, 1, 0xaa, 0xbb]);
    commit_and_check(
        &icmp,
        |k| {
            k.set_tp_src(0);
            k.set_nw_src(Ipv4Addr::new(10, 0, 0, 1));
        },
        &[Field::TpSrc, Field::NwSrc],
    );
}

#[test]
fn commit_rewrites_ipv6_with_pseudo_header() {
    let f = ipv6_frame(6, &tcp_hdr(1, 2));
    assert!(checksums_ok(&f));
    commit_and_check(
        &f,
        |k| {
            k.set_ipv6_src("2001:db8::1".parse().unwrap());
            k.set_ipv6_dst("2001:db8::2".parse().unwrap());
            k.set_nw_ttl(9);
            k.set_nw_tos(0x48);
            k.set_tp_dst(443);
        },
        &[
            Field::Ipv6Src,
            Field::Ipv6Dst,
            Field::NwTtl,
            Field::NwTos,
            Field::TpDst,
        ],
    );
    let u = ipv6_frame(17, &udp_hdr(5, 6));
    commit_and_check(
        &u,
        |k| k.set_ipv6_dst("fd00::99".parse().unwrap()),
        &[Field::Ipv6Dst],
    );
}

#[test]
fn commit_never_panics_on_short_frames() {
    let full = ipv4_frame(6, &tcp_hdr(40000, 80));
    let orig = FlowKey::extract(&full, 1, &TunnelMeta::NONE).unwrap();
    let mut target = orig;
    target.set_dl_src([2; 6]);
    target.set_nw_dst(Ipv4Addr::new(1, 2, 3, 4));
    target.set_tp_dst(1);
    target.set_nw_ttl(1);
    for n in 0..full.len() {
        let mut f = full[..n].to_vec();
        let r = commit(&mut f, &orig, &target);
        assert!(r.is_err(), "{n}");
    }
    let arp = arp_request(MAC_A, [1, 2, 3, 4], [5, 6, 7, 8]);
    let orig = FlowKey::extract(&arp, 1, &TunnelMeta::NONE).unwrap();
    let mut target = orig;
    target.set_arp_tha(MAC_B);
    for n in 0..arp.len() {
        let _ = commit(&mut arp[..n].to_vec(), &orig, &target);
    }
}

#[test]
fn dec_ttl_checksum_matches_full_recompute() {
    let p = pipe(&["priority=1 actions=dec_ttl,output:2"]);
    for ttl in [2u8, 64, 128, 255] {
        for tos in [0u8, 0xb8] {
            let mut frame = ipv4_frame(17, &udp_hdr(1, 2));
            frame[14 + 8] = ttl;
            frame[14 + 1] = tos;
            frame[24] = 0;
            frame[25] = 0;
            let c = csum(&frame[14..34]);
            frame[24..26].copy_from_slice(&c.to_be_bytes());
            let key = FlowKey::extract(&frame, 1, &TunnelMeta::NONE).unwrap();
            let r = run(&p, &key);
            let mut out = frame.clone();
            commit(&mut out, &key, r.state(0)).unwrap();
            assert_eq!(out[14 + 8], ttl - 1);
            let mut recomputed = out[14..34].to_vec();
            recomputed[10] = 0;
            recomputed[11] = 0;
            let full = csum(&recomputed);
            assert_eq!(u16::from_be_bytes([out[24], out[25]]), full, "ttl {ttl}");
        }
    }
    // RFC 1624 section 4: a header sum of 0xdd2f, a word 0x5555 becoming 0x3285,
    // gives 0x0000 by equation 3 (not -0 = 0xffff as equation 2 would).
    assert_eq!(csum_update16(0xdd2f, 0x5555, 0x3285), 0x0000);
}

// ---------------------------------------------------------------- ARP responder

#[test]
fn antrea_arp_responder_with_flows_alone() {
    let text = "table=0,priority=200,arp,arp_op=1,arp_tpa=198.19.1.1 \
        actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:aa:bb:cc:dd:ee:01->eth_src,\
        load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
        set_field:aa:bb:cc:dd:ee:01->arp_sha,move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],\
        set_field:198.19.1.1->arp_spa,in_port";
    let flow = parse_flow(text).unwrap();
    let p = Pipeline::new(ports())
        .apply(&Bundle::new(vec![FlowMod::Add { flow }]), 0)
        .unwrap()
        .0;
    let asker = [0x02, 0x42, 0xc6, 0x13, 0x01, 0x05];
    let request = arp_request(asker, [198, 19, 1, 5], [198, 19, 1, 1]);
    let key = FlowKey::extract(&request, 2, &TunnelMeta::NONE).unwrap();
    let mut cache = FlowCache::new(16);
    let r = p.process(&key, request.len() as u64, 0, &mut cache);
    assert_eq!(r.actions().len(), 1);
    let DpAction::Output { port, .. } = r.actions()[0] else {
        panic!("{:?}", r.actions())
    };
    assert_eq!(port, 2, "the reply goes back out of in_port");
    let mut frame = request.clone();
    commit(&mut frame, &key, r.state_of(&r.actions()[0])).unwrap();

    let ours = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01];
    let mut expect = eth(asker, ours, 0x0806);
    expect.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    expect.extend_from_slice(&ours);
    expect.extend_from_slice(&[198, 19, 1, 1]);
    expect.extend_from_slice(&asker);
    expect.extend_from_slice(&[198, 19, 1, 5]);
    expect.extend_from_slice(&[0; 18]);
    assert_eq!(frame, expect);
    // Another address is not answered.
    let other = arp_request(asker, [198, 19, 1, 5], [198, 19, 1, 2]);
    let key = FlowKey::extract(&other, 2, &TunnelMeta::NONE).unwrap();
    assert_eq!(
        p.process(&key, 60, 0, &mut cache).drop_reason(),
        Some(DropReason::TableMiss)
    );
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

#[test]
fn for_each_send_expands_normal_and_flood_with_learning() {
    use super::normal::for_each_send;
    let p = pipe(&[
        "priority=1,in_port=1 actions=normal",
        "priority=1,in_port=2 actions=normal",
        "priority=1,in_port=10 actions=flood",
    ]);
    let mut macs = MacTable::default();
    let mut cache = FlowCache::new(16);
    let sends = |r: &Resolved, macs: &mut MacTable| {
        let mut v = Vec::new();
        for_each_send(r, p.ports(), macs, 0, true, p.drops(), |s| v.push(s.port));
        v
    };
    // Unknown destination: flood (no tunnel exclusion from a tap).
    let r = p.process(&tcp_key(1), 60, 0, &mut cache).clone();
    assert_eq!(sends(&r, &mut macs), vec![2, 3, 10, 11]);
    // The reply is unicast to the learned port, and teaches the table its source.
    let mut reply = tcp_key(2);
    reply.set_dl_src(MAC_B);
    reply.set_dl_dst(MAC_A);
    let r = p.process(&reply, 60, 0, &mut cache).clone();
    assert_eq!(sends(&r, &mut macs), vec![1]);
    let r = p.process(&tcp_key(1), 60, 0, &mut cache).clone();
    assert_eq!(sends(&r, &mut macs), vec![2]);
    // Flood from a tunnel: taps only.
    let r = p.process(&tcp_key(10), 60, 0, &mut cache).clone();
    assert_eq!(sends(&r, &mut macs), vec![1, 2, 3]);
}
