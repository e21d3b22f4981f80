//! Replays every fuzz corpus file (encap/fuzz/corpus/<target>/) through the same
//! decapsulators the fuzz targets call: none may panic, and the seeds named `valid-*`
//! (generated from the test vectors) must decode.
//!
//! `cargo test -p encap --test fuzz_corpus -- --ignored` regenerates the seeds.
mod common;

use common::*;
use encap::{
    DropReason, GeneveOption, IpipParams, IpipTemplate, OuterIp, TunnelHeader, UdpTunnel,
    UdpTunnelParams, UdpTunnelTemplate, decap_geneve, decap_ip_udp, decap_ipip, decap_vxlan,
};
use std::net::Ipv4Addr;

const KNOWN: &[(u16, u8)] = &[(0x0102, 0x80)];

/// The results of the payload decapsulator and of the whole-packet one (VNI or reason).
type Outcome = (Result<u32, DropReason>, Result<u32, DropReason>);

/// What each fuzz target does with one input.
fn vxlan_target(data: &[u8]) -> Outcome {
    (
        decap_vxlan(data).map(|d| d.vni),
        decap_ip_udp(data, UdpTunnel::VXLAN, &[][..]).map(|d| d.vni),
    )
}
fn geneve_target(data: &[u8]) -> Outcome {
    (
        decap_geneve(data, KNOWN).map(|d| d.vni),
        decap_ip_udp(data, UdpTunnel::GENEVE, KNOWN).map(|d| d.vni),
    )
}
fn ipip_target(data: &[u8]) -> Outcome {
    let r = decap_ipip(data).map(|d| d.vni);
    (r, r)
}

fn replay(target: &str, f: fn(&[u8]) -> Outcome) {
    let all = files(target);
    assert!(!all.is_empty(), "empty corpus for {target}");
    let mut valid = 0;
    for (name, data) in &all {
        let (payload, ip) = f(data);
        if name.starts_with("valid-payload-") {
            assert!(payload.is_ok(), "{target}/{name}: {payload:?}");
            valid += 1;
        } else if name.starts_with("valid-ip-") {
            assert!(ip.is_ok(), "{target}/{name}: {ip:?}");
            valid += 1;
        } else if let Some(reason) = name.strip_prefix("drop-") {
            // drop-<reason as_str>: the payload or the IP decapsulator names that reason.
            let r = reason.split('.').next().unwrap();
            let got = [payload.err(), ip.err()];
            assert!(
                got.iter().flatten().any(|e| e.as_str() == r),
                "{target}/{name}: {got:?}"
            );
        }
    }
    assert!(valid > 0, "{target}: no valid seeds");
}

#[test]
fn vxlan_corpus() {
    replay("vxlan", vxlan_target);
}

#[test]
fn geneve_corpus() {
    replay("geneve", geneve_target);
}

#[test]
fn ipip_corpus() {
    replay("ipip", ipip_target);
}

fn udp_packet(h: &TunnelHeader, outer: OuterIp, inner: &[u8], vni: u32) -> Vec<u8> {
    let t = UdpTunnelTemplate::new(h, outer, UdpTunnelParams::default());
    let (mut buf, s) = with_headroom(inner);
    let r = t
        .encapsulate(&mut buf, s, inner.len(), vni, t.source_port(inner))
        .unwrap();
    buf[r].to_vec()
}

fn payload_only(h: &TunnelHeader, inner: &[u8], vni: u32) -> Vec<u8> {
    let (mut buf, s) = with_headroom(inner);
    let r = h.encapsulate(&mut buf, s, inner.len(), vni).unwrap();
    buf[r].to_vec()
}

#[test]
#[ignore = "writes the seed corpus; run explicitly"]
fn regenerate_seeds() {
    let out4 = OuterIp::V4 {
        src: Ipv4Addr::new(198, 18, 0, 1),
        dst: Ipv4Addr::new(198, 18, 0, 2),
    };
    let out6 = OuterIp::V6 {
        src: v6(1).into(),
        dst: v6(2).into(),
    };
    let eth = ethernet(
        0x0800,
        &ipv4_udp([198, 19, 1, 1], [198, 19, 2, 2], 30001, 30002, 64, b"seed"),
    );
    let write = |t: &str, name: &str, data: &[u8]| {
        std::fs::create_dir_all(corpus_dir(t)).unwrap();
        std::fs::write(corpus_dir(t).join(name), data).unwrap();
    };
    let vx = TunnelHeader::vxlan();
    write(
        "vxlan",
        "valid-payload-1",
        &payload_only(&vx, &eth, 0x123456),
    );
    write("vxlan", "valid-ip-v4", &udp_packet(&vx, out4, &eth, 100));
    write("vxlan", "valid-ip-v6", &udp_packet(&vx, out6, &eth, 200));
    let mut noflag = payload_only(&vx, &eth, 1);
    noflag[0] = 0;
    write("vxlan", "drop-bad_vxlan_flags", &noflag);
    write("vxlan", "drop-truncated", &[0x08, 0, 0]);

    let opts = [
        GeneveOption {
            class: 0x0102,
            type_: 0x80,
            data: &[1, 2, 3, 4],
        },
        GeneveOption {
            class: 0x0001,
            type_: 0x01,
            data: &[5, 6, 7, 8, 9, 10, 11, 12],
        },
        GeneveOption {
            class: 0xff01,
            type_: 0x7f,
            data: &[],
        },
    ];
    let g = TunnelHeader::geneve(0x6558, &opts).unwrap();
    write(
        "geneve",
        "valid-payload-3opts",
        &payload_only(&g, &eth, 0xabcdef),
    );
    write(
        "geneve",
        "valid-ip-v4-3opts",
        &udp_packet(&g, out4, &eth, 7),
    );
    write(
        "geneve",
        "valid-ip-v6-3opts",
        &udp_packet(&g, out6, &eth, 8),
    );
    let ip4 = ipv4_icmp_echo([198, 19, 1, 1], [198, 19, 2, 2], 64, 1, 1);
    let g4 = TunnelHeader::geneve(0x0800, &[]).unwrap();
    write("geneve", "valid-payload-l3", &payload_only(&g4, &ip4, 9));
    let crit = TunnelHeader::geneve(
        0x6558,
        &[GeneveOption {
            class: 0x0999,
            type_: 0x81,
            data: &[],
        }],
    )
    .unwrap();
    write(
        "geneve",
        "drop-unknown_critical_option",
        &payload_only(&crit, &eth, 1),
    );
    let mut v1 = payload_only(&g, &eth, 1);
    v1[0] |= 0x40;
    write("geneve", "drop-bad_geneve_version", &v1);
    let mut over = payload_only(&g, &eth, 1);
    over[0] = 0x3f;
    over.truncate(40);
    write("geneve", "drop-geneve_options_overrun", &over);

    let t = IpipTemplate::new(
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(198, 18, 0, 2),
        IpipParams::default(),
    );
    let (mut buf, s) = with_headroom(&ip4);
    let r = t.encapsulate(&mut buf, s, ip4.len()).unwrap();
    let p4 = buf[r].to_vec();
    write("ipip", "valid-ip-4in4", &p4);
    let ip6 = ipv6_udp(v6(3), v6(4), 30003, 30004, 64, b"seed");
    let (mut buf, s) = with_headroom(&ip6);
    let r = t.encapsulate(&mut buf, s, ip6.len()).unwrap();
    write("ipip", "valid-ip-6in4", &buf[r]);
    let mut bad = p4.clone();
    bad[10] ^= 0xff;
    write("ipip", "drop-bad_ip_checksum", &bad);
    let mut frag = p4.clone();
    frag[6] |= 0x20;
    frag[10..12].fill(0);
    let c = naive_checksum(&frag[..20]);
    frag[10..12].copy_from_slice(&c.to_be_bytes());
    write("ipip", "drop-fragment", &frag);
}
