//! The egress decision on hand-built frames: tunnel peer, VNI, MTU, segmentation, drops.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use encap::offload::VirtioNetHdr;

use super::*;
use crate::flow_key::{TunnelMeta, ip_to_u128};
use crate::icmp::too_big_reply;
use crate::normal::MacTable;
use crate::ports::PortKind;

const POD_A: [u8; 6] = [2, 0, 0, 0, 1, 2];
const POD_B: [u8; 6] = [2, 0, 0, 0, 2, 2];

/// An Ethernet frame of `len` bytes carrying IPv4 `proto` (DF as given), TCP ports when
/// `proto` is 6.
fn ipv4_frame(len: usize, df: bool, proto: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&POD_B);
    f[6..12].copy_from_slice(&POD_A);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[6] = if df { 0x40 } else { 0 };
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[198, 19, 1, 2]);
    ip[16..20].copy_from_slice(&[198, 19, 2, 2]);
    let c = encap::checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    if proto == 6 {
        ip[20..22].copy_from_slice(&40000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&80u16.to_be_bytes());
        ip[32] = 0x50; // data offset 5
        ip[33] = 0x10; // ACK
    }
    f
}

fn ipv6_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&POD_B);
    f[6..12].copy_from_slice(&POD_A);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    let ip = &mut f[14..];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&((len - 14 - 40) as u16).to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&"2001:2::1:2".parse::<Ipv6Addr>().unwrap().octets());
    ip[24..40].copy_from_slice(&"2001:2::2:2".parse::<Ipv6Addr>().unwrap().octets());
    f
}

fn arp_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&POD_A);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f
}

fn vlan(frame: &[u8]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    f.extend_from_slice(&frame[12..]);
    f
}

/// The key (on port 1, from `tun`) and facts of a frame with offload header `hdr`.
fn parse(frame: &[u8], tun: &TunnelMeta, hdr: &VirtioNetHdr) -> (FlowKey, FrameInfo) {
    let (key, offs) = FlowKey::extract_with_offsets(frame, 1, tun).unwrap();
    (key, FrameInfo::new(frame, &key, &offs, hdr))
}

fn plain(frame: &[u8]) -> (FlowKey, FrameInfo) {
    parse(frame, &TunnelMeta::NONE, &VirtioNetHdr::default())
}

/// A TSO super-frame: IPv4 TCP of `len` bytes, cut at `mss`.
fn tso(len: usize, mss: u16) -> (Vec<u8>, VirtioNetHdr) {
    let f = ipv4_frame(len, true, 6);
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_TCPV4,
        hdr_len: 54,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
    };
    (f, hdr)
}

const V4_PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const V4_LEARNED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const V4_FLOW: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 4);

fn udp(remote: Option<IpAddr>, key: Option<u32>, mtu: u16) -> EgressPort {
    EgressPort::Tunnel(TunnelEgress {
        encap: TunnelEncap::Udp,
        remote,
        key,
        mtu,
        ipv6: false,
    })
}

fn ipip(remote: Option<IpAddr>, mtu: u16) -> EgressPort {
    EgressPort::Tunnel(TunnelEgress {
        encap: TunnelEncap::Ipip,
        remote,
        key: None,
        mtu,
        ipv6: false,
    })
}

fn to(out: EgressPort, state: &FlowKey, learned: u128, frame: &FrameInfo) -> Emit {
    emit_to(7, Some(out), state, learned, frame, true)
}

#[test]
fn tunnel_peer_fixed_remote_then_learned_then_flow() {
    let f = ipv4_frame(100, true, 6);
    let (mut key, info) = plain(&f);
    key.set_tun_dst(IpAddr::V4(V4_FLOW));
    let learned = ip_to_u128(IpAddr::V4(V4_LEARNED));
    for port in [
        udp(Some(IpAddr::V4(V4_PEER)), Some(5), 1450),
        ipip(Some(IpAddr::V4(V4_PEER)), 1480),
    ] {
        // A fixed remote is the peer, whatever the flow or the MAC table say.
        let Emit::Tunnel { dst, .. } = to(port, &key, learned, &info) else {
            panic!("{port:?}");
        };
        assert_eq!(dst, IpAddr::V4(V4_PEER));
    }
    for port in [udp(None, None, 1450), ipip(None, 1480)] {
        // remote=flow: the peer normal learned the destination from, else tun_dst.
        assert!(matches!(to(port, &key, learned, &info),
            Emit::Tunnel { dst, .. } if dst == IpAddr::V4(V4_LEARNED)));
        assert!(matches!(to(port, &key, 0, &info),
            Emit::Tunnel { dst, .. } if dst == IpAddr::V4(V4_FLOW)));
    }
}

#[test]
fn no_peer_is_no_tunnel_dst_for_both_kinds_of_tunnel() {
    let f = ipv4_frame(100, true, 6);
    let (mut key, info) = plain(&f);
    // tun_dst never set (0), set to 0.0.0.0 (mapped) or to ::: no peer, for UDP tunnels
    // and IP-in-IP alike (IP-in-IP used to call an unset tun_dst `tunnel_family`, and a
    // UDP tunnel sent to 0.0.0.0).
    for unset in [0u128, ip_to_u128(IpAddr::V4(Ipv4Addr::UNSPECIFIED))] {
        key.set(Field::TunDst, unset);
        for port in [udp(None, None, 1450), ipip(None, 1480)] {
            assert_eq!(
                to(port, &key, 0, &info),
                Emit::Drop {
                    port: 7,
                    reason: EgressDrop::NoTunnelDst
                },
                "{port:?} tun_dst={unset:#x}"
            );
        }
    }
}

#[test]
fn peer_of_the_other_family_is_tunnel_family() {
    let f = ipv4_frame(100, true, 6);
    let (mut key, info) = plain(&f);
    key.set_tun_dst("2001:2::9".parse().unwrap());
    for port in [udp(None, None, 1450), ipip(None, 1480)] {
        assert_eq!(
            to(port, &key, 0, &info),
            Emit::Drop {
                port: 7,
                reason: EgressDrop::TunnelFamily
            }
        );
    }
    // An IPv6 underlay takes an IPv6 peer.
    let v6 = EgressPort::Tunnel(TunnelEgress {
        encap: TunnelEncap::Udp,
        remote: None,
        key: None,
        mtu: 1430,
        ipv6: true,
    });
    assert!(matches!(to(v6, &key, 0, &info), Emit::Tunnel { dst, .. } if dst.is_ipv6()));
    key.set_tun_dst(IpAddr::V4(V4_FLOW));
    assert_eq!(
        to(v6, &key, 0, &info),
        Emit::Drop {
            port: 7,
            reason: EgressDrop::TunnelFamily
        }
    );
}

#[test]
fn vni_is_the_fixed_key_else_the_flows_tun_id() {
    let f = ipv4_frame(100, true, 6);
    let tun = TunnelMeta::new(
        0x0100_1234,
        IpAddr::V4(V4_PEER),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    );
    let (key, info) = parse(&f, &tun, &VirtioNetHdr::default());
    let remote = Some(IpAddr::V4(V4_PEER));
    assert!(matches!(
        to(udp(remote, Some(5001), 1450), &key, 0, &info),
        Emit::Tunnel { vni: 5001, .. }
    ));
    // key=flow: the packet's tun_id, cut to the 24 bits a VNI has.
    assert!(matches!(
        to(udp(remote, None, 1450), &key, 0, &info),
        Emit::Tunnel { vni: 0x1234, .. }
    ));
}

#[test]
fn mtu_fits_or_too_big_for_ipv4_ipv6_and_non_ip() {
    let port = udp(Some(IpAddr::V4(V4_PEER)), Some(1), 1450);
    let too_big = Emit::TooBig { port: 7, mtu: 1450 };
    // The IP packet (frame less 14 bytes) may be as long as the MTU, not longer.
    for (frame, reply) in [
        (ipv4_frame(14 + 1450, true, 6), true),
        (ipv6_frame(14 + 1450), true),
        (arp_frame(14 + 1450), false),
    ] {
        let (key, info) = plain(&frame);
        assert!(matches!(to(port, &key, 0, &info), Emit::Tunnel { .. }));
        let mut big = frame.clone();
        big.push(0);
        // Keep the IP lengths consistent with the frame.
        if big[12..14] == [0x08, 0x00] {
            big = ipv4_frame(14 + 1451, true, 6);
        } else if big[12..14] == [0x86, 0xdd] {
            big = ipv6_frame(14 + 1451);
        }
        let (key, info) = plain(&big);
        assert_eq!(to(port, &key, 0, &info), too_big);
        // Whether the sender hears of it: IPv4 with DF and IPv6 do, ARP does not.
        let mut out = [0u8; 1600];
        assert_eq!(too_big_reply(&big, 1450, &mut out).is_some(), reply);
    }
    // IPv4 without DF is too big all the same; it just gets no reply.
    let nodf = ipv4_frame(14 + 1451, false, 17);
    let (key, info) = plain(&nodf);
    assert_eq!(to(port, &key, 0, &info), too_big);
    assert_eq!(too_big_reply(&nodf, 1450, &mut [0u8; 1600]), None);
    // IP-in-IP checks the same length against its own MTU.
    let f = ipv4_frame(14 + 1481, true, 6);
    let (key, info) = plain(&f);
    assert_eq!(
        to(ipip(Some(IpAddr::V4(V4_PEER)), 1480), &key, 0, &info),
        Emit::TooBig { port: 7, mtu: 1480 }
    );
}

#[test]
fn a_super_frame_is_cut_for_a_tunnel_and_passed_whole_to_a_tap() {
    let (f, hdr) = tso(14 + 20 + 20 + 10 * 1448, 1448);
    let (key, info) = parse(&f, &TunnelMeta::NONE, &hdr);
    assert_eq!(
        info.offload,
        Offload::Offloaded {
            first: 14 + 40 + 1448
        }
    );
    // Into a tunnel its segments go, and the first segment is what must fit.
    let remote = Some(IpAddr::V4(V4_PEER));
    assert!(matches!(
        to(udp(remote, Some(1), 1500), &key, 0, &info),
        Emit::Tunnel { .. }
    ));
    assert_eq!(
        to(udp(remote, Some(1), 1487), &key, 0, &info),
        Emit::TooBig { port: 7, mtu: 1487 }
    );
    // A TAP with offloads takes it whole, one without gets the segments.
    assert_eq!(
        to(EgressPort::Tap { vnet_hdr: true }, &key, 0, &info),
        Emit::Tap {
            port: 7,
            write: TapWrite::Whole
        }
    );
    assert_eq!(
        to(EgressPort::Tap { vnet_hdr: false }, &key, 0, &info),
        Emit::Tap {
            port: 7,
            write: TapWrite::Segment
        }
    );
    // A plain frame to a TAP with offloads is coalesced when the datapath coalesces.
    let p = ipv4_frame(100, true, 6);
    let (key, info) = plain(&p);
    let tap = EgressPort::Tap { vnet_hdr: true };
    assert_eq!(
        emit_to(3, Some(tap), &key, 0, &info, true),
        Emit::Tap {
            port: 3,
            write: TapWrite::Coalesce
        }
    );
    assert_eq!(
        emit_to(3, Some(tap), &key, 0, &info, false),
        Emit::Tap {
            port: 3,
            write: TapWrite::Whole
        }
    );
    assert_eq!(
        emit_to(
            3,
            Some(EgressPort::Tap { vnet_hdr: false }),
            &key,
            0,
            &info,
            true
        ),
        Emit::Tap {
            port: 3,
            write: TapWrite::Plain
        }
    );
}

#[test]
fn bad_offload_is_dropped_where_the_frame_must_be_cut() {
    // TSO asked for a UDP packet: it cannot be cut.
    let f = ipv4_frame(3000, true, 17);
    let (_, hdr) = tso(100, 1448);
    let (key, info) = parse(&f, &TunnelMeta::NONE, &hdr);
    assert_eq!(info.offload, Offload::Bad);
    let bad = Emit::Drop {
        port: 7,
        reason: EgressDrop::BadOffload,
    };
    let remote = Some(IpAddr::V4(V4_PEER));
    assert_eq!(to(udp(remote, Some(1), 1450), &key, 0, &info), bad);
    assert_eq!(to(EgressPort::Tap { vnet_hdr: false }, &key, 0, &info), bad);
    // A TAP with offloads gets it with its header, as the pod sent it.
    assert_eq!(
        to(EgressPort::Tap { vnet_hdr: true }, &key, 0, &info),
        Emit::Tap {
            port: 7,
            write: TapWrite::Whole
        }
    );
}

#[test]
fn ipip_carries_only_untagged_ip() {
    let port = ipip(Some(IpAddr::V4(V4_PEER)), 1480);
    let not_ip = Emit::Drop {
        port: 7,
        reason: EgressDrop::NotIp,
    };
    let (key, info) = plain(&arp_frame(60));
    assert_eq!(to(port, &key, 0, &info), not_ip);
    let (key, info) = plain(&vlan(&ipv4_frame(100, true, 6)));
    assert_eq!(
        key.dl_type(),
        ETH_TYPE_IPV4,
        "the key sees IPv4 behind the tag"
    );
    assert_eq!(to(port, &key, 0, &info), not_ip);
    // A UDP tunnel carries both.
    assert!(matches!(
        to(
            udp(Some(IpAddr::V4(V4_PEER)), Some(1), 1450),
            &key,
            0,
            &info
        ),
        Emit::Tunnel { .. }
    ));
    let (key, info) = plain(&ipv6_frame(200));
    assert!(matches!(to(port, &key, 0, &info), Emit::Tunnel { .. }));
}

/// Ports 1 and 2 are TAPs, 3 and 4 tunnels (4 with `remote=flow`); 5 is in the map but
/// not open.
struct Ports(HashMap<u32, EgressPort>);

impl EgressPorts for Ports {
    fn egress(&self, port: u32) -> Option<EgressPort> {
        self.0.get(&port).copied()
    }
}

fn world() -> (PortMap, Ports) {
    let map = PortMap::new()
        .with(1, "pod1", PortKind::Tap)
        .and_then(|m| m.with(2, "pod2", PortKind::Tap))
        .and_then(|m| m.with(3, "tun0", PortKind::Tunnel))
        .and_then(|m| m.with(4, "tunf", PortKind::Tunnel))
        .and_then(|m| m.with(5, "down", PortKind::Tap))
        .unwrap();
    let ports = Ports(HashMap::from([
        (1, EgressPort::Tap { vnet_hdr: false }),
        (2, EgressPort::Tap { vnet_hdr: false }),
        (3, udp(Some(IpAddr::V4(V4_PEER)), Some(10), 1450)),
        (4, udp(None, None, 1450)),
    ]));
    (map, ports)
}

fn collect(
    map: &PortMap,
    macs: &MacTable,
    ports: &Ports,
    action: DpAction,
    key: &FlowKey,
    info: &FrameInfo,
) -> Vec<Emit> {
    let ctx = EgressCtx {
        map,
        macs,
        ports,
        now: 10,
        coalesce: false,
    };
    let mut v = Vec::new();
    plan(&ctx, &action, key, info, |e| v.push(e));
    v
}

#[test]
fn plan_outputs_floods_and_normal() {
    let (map, ports) = world();
    let mut macs = MacTable::default();
    let f = ipv4_frame(100, true, 6);
    let (mut key, info) = plain(&f);
    key.set_tun_dst(IpAddr::V4(V4_FLOW));
    let state = 0;
    // An explicit output; to a port that is not open: no_such_port.
    assert_eq!(
        collect(
            &map,
            &macs,
            &ports,
            DpAction::Output { port: 2, state },
            &key,
            &info
        ),
        [Emit::Tap {
            port: 2,
            write: TapWrite::Plain
        }]
    );
    assert_eq!(
        collect(
            &map,
            &macs,
            &ports,
            DpAction::Output { port: 9, state },
            &key,
            &info
        ),
        [Emit::Refused(DropReason::NoSuchPort)]
    );
    // A flood: every open port but the ingress, in port order.
    let flood = [
        Emit::Tap {
            port: 2,
            write: TapWrite::Plain,
        },
        Emit::Tunnel {
            port: 3,
            dst: IpAddr::V4(V4_PEER),
            vni: 10,
        },
        Emit::Tunnel {
            port: 4,
            dst: IpAddr::V4(V4_FLOW),
            vni: 0,
        },
    ];
    assert_eq!(
        collect(&map, &macs, &ports, DpAction::Flood { state }, &key, &info),
        flood
    );
    // normal: unknown destination floods.
    assert_eq!(
        collect(&map, &macs, &ports, DpAction::Normal { state }, &key, &info),
        flood
    );
    // normal: a destination learned from tunnel port 4 goes there, to the peer it
    // came from rather than to the packet's tun_dst.
    macs.learn(0, POD_B, 4, ip_to_u128(IpAddr::V4(V4_LEARNED)), 5);
    assert_eq!(
        collect(&map, &macs, &ports, DpAction::Normal { state }, &key, &info),
        [Emit::Tunnel {
            port: 4,
            dst: IpAddr::V4(V4_LEARNED),
            vni: 0
        }]
    );
    // normal: a destination on the ingress port is refused.
    macs.learn(0, POD_B, 1, 0, 6);
    assert_eq!(
        collect(&map, &macs, &ports, DpAction::Normal { state }, &key, &info),
        [Emit::Refused(DropReason::NormalSamePort)]
    );
    // Split horizon: from a tunnel, to a destination behind a tunnel.
    let tun = TunnelMeta::new(
        0,
        IpAddr::V4(V4_PEER),
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
    );
    let (k, offs) = FlowKey::extract_with_offsets(&f, 3, &tun).unwrap();
    let info3 = FrameInfo::new(&f, &k, &offs, &VirtioNetHdr::default());
    macs.learn(0, POD_B, 4, ip_to_u128(IpAddr::V4(V4_LEARNED)), 7);
    assert_eq!(
        collect(&map, &macs, &ports, DpAction::Normal { state }, &k, &info3),
        [Emit::Refused(DropReason::SplitHorizon)]
    );
    // A flood from a tunnel reaches the TAPs only.
    assert_eq!(
        collect(&map, &macs, &ports, DpAction::Flood { state }, &k, &info3),
        [
            Emit::Tap {
                port: 1,
                write: TapWrite::Plain
            },
            Emit::Tap {
                port: 2,
                write: TapWrite::Plain
            }
        ]
    );
}
