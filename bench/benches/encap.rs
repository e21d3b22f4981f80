//! Criterion micro-benchmarks of `encap`: encapsulation from a template into headroom and
//! decapsulation, for VXLAN, Geneve (one option) and IP-in-IP, with 64- and 1400-byte
//! inner frames. Outer headers are IPv4 (the IPv6 outer, which must checksum the whole
//! payload, is measured separately).
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use encap::{
    GeneveOption, IpipParams, IpipTemplate, OuterIp, TunnelHeader, UdpTunnel, UdpTunnelParams,
    UdpTunnelTemplate, decap_geneve, decap_ip_udp, decap_ipip, decap_vxlan,
};
use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};

const HEADROOM: usize = 128;
const SIZES: [usize; 2] = [64, 1400];
const KNOWN: &[(u16, u8)] = &[(0x0102, 0x80)];

/// A buffer with headroom and an inner frame of `len` bytes: an IPv4 packet with a valid
/// header (so IP-in-IP accepts it), behind an Ethernet header when `ethernet`.
fn buffer(len: usize, ethernet: bool) -> Vec<u8> {
    let mut b = vec![0u8; HEADROOM + len];
    let f = &mut b[HEADROOM..];
    let ip = if ethernet {
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        &mut f[14..]
    } else {
        f
    };
    let total = ip.len() as u16;
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 255;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 19, 1, 1]);
    ip[16..20].copy_from_slice(&[198, 19, 2, 2]);
    let c = encap::checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    b
}

fn outer4() -> OuterIp {
    OuterIp::V4 {
        src: Ipv4Addr::new(198, 18, 0, 1),
        dst: Ipv4Addr::new(198, 18, 0, 2),
    }
}

fn geneve_header() -> TunnelHeader {
    TunnelHeader::geneve(
        0x6558,
        &[GeneveOption {
            class: 0x0102,
            type_: 0x80,
            data: &[1, 2, 3, 4],
        }],
    )
    .unwrap()
}

fn bench_encapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("encapsulate");
    let vx = UdpTunnelTemplate::new(&TunnelHeader::vxlan(), outer4(), UdpTunnelParams::default());
    let ge = UdpTunnelTemplate::new(&geneve_header(), outer4(), UdpTunnelParams::default());
    let ip = IpipTemplate::new(
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(198, 18, 0, 2),
        IpipParams {
            ttl: 64,
            decrement_inner_ttl: false,
        },
    );
    let vx6 = UdpTunnelTemplate::new(
        &TunnelHeader::vxlan(),
        OuterIp::V6 {
            src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
        },
        UdpTunnelParams::default(),
    );
    for len in SIZES {
        g.throughput(Throughput::Elements(1));
        let mut b = buffer(len, true);
        g.bench_function(BenchmarkId::new("vxlan_v4", len), |bn| {
            bn.iter(|| {
                vx.encapsulate(
                    black_box(&mut b),
                    black_box(HEADROOM),
                    black_box(len),
                    black_box(5001),
                    black_box(40000),
                )
            })
        });
        let mut b = buffer(len, true);
        g.bench_function(BenchmarkId::new("geneve_v4_1opt", len), |bn| {
            bn.iter(|| {
                ge.encapsulate(
                    black_box(&mut b),
                    black_box(HEADROOM),
                    black_box(len),
                    black_box(5001),
                    black_box(40000),
                )
            })
        });
        let mut b = buffer(len, false);
        g.bench_function(BenchmarkId::new("ipip", len), |bn| {
            bn.iter(|| ip.encapsulate(black_box(&mut b), black_box(HEADROOM), black_box(len)))
        });
        let mut b = buffer(len, true);
        g.bench_function(BenchmarkId::new("vxlan_v6_udp_checksum", len), |bn| {
            bn.iter(|| {
                vx6.encapsulate(
                    black_box(&mut b),
                    black_box(HEADROOM),
                    black_box(len),
                    black_box(5001),
                    black_box(40000),
                )
            })
        });
        let b = buffer(len, true);
        g.bench_function(BenchmarkId::new("source_port_hash", len), |bn| {
            bn.iter(|| vx.source_port(black_box(&b[HEADROOM..])))
        });
    }
    g.finish();
}

fn bench_decapsulate(c: &mut Criterion) {
    let mut g = c.benchmark_group("decapsulate");
    let vx = UdpTunnelTemplate::new(&TunnelHeader::vxlan(), outer4(), UdpTunnelParams::default());
    let ge = UdpTunnelTemplate::new(&geneve_header(), outer4(), UdpTunnelParams::default());
    let ip = IpipTemplate::new(
        Ipv4Addr::new(198, 18, 0, 1),
        Ipv4Addr::new(198, 18, 0, 2),
        IpipParams::default(),
    );
    for len in SIZES {
        g.throughput(Throughput::Elements(1));
        let mut b = buffer(len, true);
        let r = vx.encapsulate(&mut b, HEADROOM, len, 5001, 40000).unwrap();
        let pkt = b[r].to_vec();
        // What a UDP socket delivers: the payload after outer IP (20) and UDP (8).
        g.bench_function(BenchmarkId::new("vxlan_udp_payload", len), |bn| {
            bn.iter(|| decap_vxlan(black_box(&pkt[28..])).map(|d| d.vni))
        });
        g.bench_function(BenchmarkId::new("vxlan_ip_udp", len), |bn| {
            bn.iter(|| decap_ip_udp(black_box(&pkt), UdpTunnel::VXLAN, KNOWN).map(|d| d.vni))
        });
        let mut b = buffer(len, true);
        let r = ge.encapsulate(&mut b, HEADROOM, len, 5001, 40000).unwrap();
        let pkt = b[r].to_vec();
        g.bench_function(BenchmarkId::new("geneve_1opt_udp_payload", len), |bn| {
            bn.iter(|| decap_geneve(black_box(&pkt[28..]), KNOWN).map(|d| d.vni))
        });
        g.bench_function(BenchmarkId::new("geneve_1opt_ip_udp", len), |bn| {
            bn.iter(|| decap_ip_udp(black_box(&pkt), UdpTunnel::GENEVE, KNOWN).map(|d| d.vni))
        });
        let mut b = buffer(len, false);
        let r = ip.encapsulate(&mut b, HEADROOM, len).unwrap();
        let pkt = b[r].to_vec();
        g.bench_function(BenchmarkId::new("ipip", len), |bn| {
            bn.iter(|| decap_ipip(black_box(&pkt)).map(|d| d.inner.len()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_encapsulate, bench_decapsulate);
criterion_main!(benches);
