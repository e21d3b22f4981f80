//! Tests of the pipeline: translation of every match field, every action, the walk's
//! bounds, publication and bundles, counters, timeouts, the cache, normal, trace, the
//! packet rewrite and Antrea's ARP responder written as flows.

mod actions;
mod arp_responder;
mod flow_cache;
mod learning;
mod match_fields;
mod rewrite;
mod tables;
mod traces;

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
