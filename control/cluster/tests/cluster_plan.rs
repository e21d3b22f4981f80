//! The flows `weft_cluster` generates, executed: plans are installed into a real
//! `Pipeline` (ports numbered 1.. in plan order) and hand-built frames are run through
//! it (`resolve` + `commit`, as a worker does, and `trace`), checking what comes out
//! of which port, byte for byte where it matters.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weft_cluster::{Cluster, NodePlan};
use weft_flow::port::PortSpec;
use weft_flow::{Bundle, FlowModCommand, parse_flow_mod};
use weft_pipeline::commit::commit;
use weft_pipeline::drop::DropReason;
use weft_pipeline::flow_key::{FlowKey, TunnelMeta};
use weft_pipeline::{DpAction, Pipeline, PortKind, PortMap, Resolved};

const L3: &str = r#"
[cluster]
encap = "vxlan"
vni = 100
mode = "l3"
pod_cidr = "198.19.0.0/16"
pod_cidr6 = "2001:2::/48"

[[node]]
name = "n1"
address = "198.18.0.1"
pod_subnet = "198.19.1.0/24"
pod_subnet6 = "2001:2:0:1::/64"

[[node]]
name = "n2"
address = "198.18.0.2"
pod_subnet = "198.19.2.0/24"
pod_subnet6 = "2001:2:0:2::/64"

[[pod]]
name = "a1"
node = "n1"
address = "198.19.1.2"
address6 = "2001:2:0:1::2"

[[pod]]
name = "a2"
node = "n1"
address = "198.19.1.3"
address6 = "2001:2:0:1::3"

[[pod]]
name = "a3"
node = "n2"
address = "198.19.2.2"
address6 = "2001:2:0:2::2"
"#;

const VNI: u64 = 100;
const N1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const N2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const A1: [u8; 4] = [198, 19, 1, 2];
const A2: [u8; 4] = [198, 19, 1, 3];
const A3: [u8; 4] = [198, 19, 2, 2];
const GW1: [u8; 4] = [198, 19, 1, 1];

fn mac(ip: [u8; 4]) -> [u8; 6] {
    [0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]
}

fn cluster(text: &str) -> Cluster {
    Cluster::from_toml(text).unwrap_or_else(|e| panic!("{e}"))
}

/// A pipeline with the plans' ports (1.. in order; a port that two plans share must
/// have the same spec and is added once) and each plan's flows as one bundle.
fn install(plans: &[&NodePlan]) -> Pipeline {
    let mut map = PortMap::new();
    let mut specs: HashMap<String, PortSpec> = HashMap::new();
    let mut next = 1;
    for plan in plans {
        for spec in &plan.ports {
            if let Some(seen) = specs.get(&spec.name) {
                assert_eq!(seen, spec, "a shared port has one spec");
                continue;
            }
            let kind = if spec.port_type().is_tunnel() {
                PortKind::Tunnel
            } else {
                PortKind::Tap
            };
            map.insert(next, &spec.name, kind).unwrap();
            specs.insert(spec.name.clone(), spec.clone());
            next += 1;
        }
    }
    let mut p = Pipeline::new(map);
    for plan in plans {
        let flows = plan
            .flows
            .iter()
            .cloned()
            .enumerate()
            .map(|(i, f)| (i + 1, f));
        p = p
            .apply(&Bundle::add_flows(flows.collect()), 0)
            .unwrap_or_else(|e| panic!("{e}"))
            .0;
    }
    p
}

fn port(p: &Pipeline, name: &str) -> u32 {
    p.ports()
        .number(name)
        .unwrap_or_else(|| panic!("no port {name}"))
}

/// What came out of one run: each explicit output with its port, the packet state
/// and the frame after commit; `normal` actions with their state.
struct Out {
    outputs: Vec<(u32, FlowKey, Vec<u8>)>,
    normal: Vec<FlowKey>,
    drop: Option<DropReason>,
}

fn run(p: &Pipeline, frame: &[u8], in_port: u32, tun: &TunnelMeta) -> Out {
    let key = FlowKey::extract(frame, in_port, tun).unwrap();
    let mut r = Resolved::default();
    p.resolve(&key, &mut r);
    let mut out = Out {
        outputs: Vec::new(),
        normal: Vec::new(),
        drop: r.drop_reason(),
    };
    for a in r.actions() {
        let state = *r.state_of(a);
        match *a {
            DpAction::Output { port, .. } => {
                let mut f = frame.to_vec();
                commit(&mut f, &key, &state).unwrap();
                out.outputs.push((port, state, f));
            }
            DpAction::Normal { .. } => out.normal.push(state),
            DpAction::Flood { .. } => panic!("no flow floods"),
        }
    }
    out
}

fn from_pod(p: &Pipeline, pod: &str, frame: &[u8]) -> Out {
    run(p, frame, port(p, pod), &TunnelMeta::NONE)
}

fn from_tunnel(p: &Pipeline, tun: &str, frame: &[u8], vni: u64, src: Ipv4Addr) -> Out {
    run(
        p,
        frame,
        port(p, tun),
        &TunnelMeta::new(vni, IpAddr::V4(src), IpAddr::V4(N1)),
    )
}

/// The single explicit output of a run.
fn one(o: &Out) -> &(u32, FlowKey, Vec<u8>) {
    assert_eq!(o.outputs.len(), 1, "drop: {:?}", o.drop);
    assert!(o.normal.is_empty());
    &o.outputs[0]
}

fn dropped(o: &Out) -> DropReason {
    assert!(o.outputs.is_empty() && o.normal.is_empty(), "not dropped");
    o.drop.unwrap()
}

// ------------------------------------------------------------------ frames

fn csum(data: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
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

fn arp(op: u16, dst: [u8; 6], sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = eth(dst, sha, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&tha);
    f.extend_from_slice(&tpa);
    f.extend_from_slice(&[0; 18]);
    f
}

fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    arp(1, [0xff; 6], sha, spa, [0; 6], tpa)
}

/// An Ethernet/IPv4/UDP frame with a valid header checksum and TTL 64.
fn udp4(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x0800);
    let payload = b"weft cluster";
    let udp_len = 8 + payload.len() as u16;
    let mut h = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    h[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend(h);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum
    f.extend_from_slice(payload);
    f
}

/// An Ethernet/IPv6/UDP frame with hop limit 64 (UDP checksum left zero: the pipeline
/// does not look at it).
fn udp6(dst_mac: [u8; 6], src_mac: [u8; 6], src: &str, dst: &str) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, 0x86dd);
    let payload = b"weft cluster six";
    let len = 8 + payload.len() as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// The expected reply of the flows' ARP responder to `asker` asking for `target`.
fn arp_reply(asker: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    arp(2, mac(asker), mac(GW1), target, mac(asker), asker)
}

// ------------------------------------------------------------------ l3

#[test]
fn l3_arp_responder_answers_for_the_gateway_and_proxies_for_pod_cidr() {
    let c = cluster(L3);
    let p = install(&[&c.plan("n1").unwrap()]);
    let a1 = port(&p, "a1");
    for target in [GW1, A2, A3, [198, 19, 7, 7]] {
        let o = from_pod(&p, "a1", &arp_request(mac(A1), A1, target));
        let (out, _, frame) = one(&o);
        assert_eq!(*out, a1, "the reply goes back to the asker");
        assert_eq!(*frame, arp_reply(A1, target), "reply for {target:?}");
    }
    // The walk: classifier, then the ARP responder, and out.
    let key = FlowKey::extract(&arp_request(mac(A1), A1, GW1), a1, &TunnelMeta::NONE).unwrap();
    let t = p.trace(&key, None, 0);
    assert_eq!(t.tables(), vec![(0, true), (10, true)]);
    // Gratuitous ARP (asking for its own address) and addresses outside pod_cidr get
    // no answer; nor does an ARP reply or a spoofed request.
    let own = from_pod(&p, "a1", &arp_request(mac(A1), A1, A1));
    assert_eq!(dropped(&own), DropReason::ExplicitDrop);
    let outside = from_pod(&p, "a1", &arp_request(mac(A1), A1, [10, 0, 0, 1]));
    assert_eq!(dropped(&outside), DropReason::ExplicitDrop);
    let reply = arp(2, mac(GW1), mac(A1), A1, mac(GW1), GW1);
    assert_eq!(
        dropped(&from_pod(&p, "a1", &reply)),
        DropReason::ExplicitDrop
    );
    let spoofed_ip = from_pod(&p, "a1", &arp_request(mac(A1), A2, GW1));
    assert_eq!(dropped(&spoofed_ip), DropReason::ExplicitDrop);
    let spoofed_sha = arp(1, [0xff; 6], mac(A1), A1, [0; 6], GW1);
    let mut spoofed_sha = spoofed_sha;
    spoofed_sha[22..28].copy_from_slice(&mac(A2));
    assert_eq!(
        dropped(&from_pod(&p, "a1", &spoofed_sha)),
        DropReason::ExplicitDrop
    );
}

#[test]
fn l3_local_pod_to_pod_is_routed_through_the_gateway() {
    let c = cluster(L3);
    let p = install(&[&c.plan("n1").unwrap()]);
    let frame = udp4(mac(GW1), mac(A1), A1, A2);
    let o = from_pod(&p, "a1", &frame);
    let (out, state, f) = one(&o);
    assert_eq!(*out, port(&p, "a2"));
    assert_eq!(state.tun_id(), VNI);
    // MACs: gateway → pod; TTL 63; the header checksum still verifies.
    let mut want = frame.clone();
    want[0..6].copy_from_slice(&mac(A2));
    want[6..12].copy_from_slice(&mac(GW1));
    want[14 + 8] = 63;
    want[24..26].copy_from_slice(&[0, 0]);
    let c = csum(&want[14..34]);
    want[24..26].copy_from_slice(&c.to_be_bytes());
    assert_eq!(*f, want);
    assert_eq!(csum(&f[14..34]), 0);
    // Proxy ARP gave a2's address the gateway MAC, but whatever MAC the pod uses, it
    // is routed by address.
    let o = from_pod(&p, "a1", &udp4(mac(A2), mac(A1), A1, A2));
    assert_eq!(one(&o).0, port(&p, "a2"));
    // IPv6 the same way, hop limit decremented.
    let o = from_pod(
        &p,
        "a2",
        &udp6(mac(GW1), mac(A2), "2001:2:0:1::3", "2001:2:0:1::2"),
    );
    let (out, state, f) = one(&o);
    assert_eq!(*out, port(&p, "a1"));
    assert_eq!((state.dl_dst(), state.dl_src()), (mac(A1), mac(GW1)));
    assert_eq!(f[14 + 7], 63);
    // The gateway itself has no host stack, and unknown pods of the subnet drop.
    for dst in [GW1, [198, 19, 1, 99]] {
        let o = from_pod(&p, "a1", &udp4(mac(GW1), mac(A1), A1, dst));
        assert_eq!(dropped(&o), DropReason::ExplicitDrop);
    }
}

#[test]
fn l3_remote_pods_go_to_the_tunnel_with_the_node_and_the_vni() {
    let c = cluster(L3);
    let p = install(&[&c.plan("n1").unwrap()]);
    let o = from_pod(&p, "a1", &udp4(mac(GW1), mac(A1), A1, A3));
    let (out, state, f) = one(&o);
    assert_eq!(*out, port(&p, "tun0"));
    assert_eq!(state.tun_dst(), IpAddr::V4(N2));
    assert_eq!(state.tun_id(), VNI);
    assert_eq!(state.nw_ttl(), 63);
    // Addressed to the peer's gateway, from ours.
    assert_eq!(&f[0..6], &mac([198, 19, 2, 1]));
    assert_eq!(&f[6..12], &mac(GW1));
    let o = from_pod(
        &p,
        "a1",
        &udp6(mac(GW1), mac(A1), "2001:2:0:1::2", "2001:2:0:2::2"),
    );
    let (out, state, _) = one(&o);
    assert_eq!(*out, port(&p, "tun0"));
    assert_eq!((state.tun_dst(), state.tun_id()), (IpAddr::V4(N2), VNI));
    // The receiving side (n2's plan) delivers it to a3.
    let p2 = install(&[&c.plan("n2").unwrap()]);
    let o = from_tunnel(
        &p2,
        "tun0",
        &udp4(mac([198, 19, 2, 1]), mac(GW1), A1, A3),
        VNI,
        N1,
    );
    let (out, state, f) = one(&o);
    assert_eq!(*out, port(&p2, "a3"));
    assert_eq!(
        (state.dl_src(), state.dl_dst()),
        (mac([198, 19, 2, 1]), mac(A3))
    );
    assert_eq!(csum(&f[14..34]), 0);
}

#[test]
fn l3_tunnel_ingress_checks_vni_and_source_and_never_relays() {
    let c = cluster(L3);
    let p = install(&[&c.plan("n1").unwrap()]);
    let to_a1 = udp4(mac(GW1), mac([198, 19, 2, 1]), A3, A1);
    let o = from_tunnel(&p, "tun0", &to_a1, VNI, N2);
    assert_eq!(one(&o).0, port(&p, "a1"));
    // Another VNI, or a node that is not in the cluster: dropped.
    let o = from_tunnel(&p, "tun0", &to_a1, 101, N2);
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
    let o = from_tunnel(&p, "tun0", &to_a1, VNI, Ipv4Addr::new(198, 18, 0, 9));
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
    // A tunnel packet for another node's pods is not sent back into the tunnel.
    let relay = udp4(mac(GW1), mac([198, 19, 2, 1]), A1, A3);
    let o = from_tunnel(&p, "tun0", &relay, VNI, N2);
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
    // ARP does not cross the tunnel in l3.
    let o = from_tunnel(&p, "tun0", &arp_request(mac(A3), A3, A1), VNI, N2);
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
}

#[test]
fn l3_spoof_guard_drops_foreign_sources() {
    let c = cluster(L3);
    let p = install(&[&c.plan("n1").unwrap()]);
    // Someone else's IP, someone else's MAC, link-local IPv6, another ethertype.
    let cases = [
        udp4(mac(GW1), mac(A1), A2, A3),
        udp4(mac(GW1), mac(A2), A1, A3),
        udp6(mac(GW1), mac(A1), "fe80::1", "2001:2:0:2::2"),
        udp6(mac(GW1), mac(A1), "2001:2:0:1::3", "2001:2:0:2::2"),
        eth(mac(GW1), mac(A1), 0x88cc),
    ];
    for f in &cases {
        let o = from_pod(&p, "a1", f);
        assert_eq!(dropped(&o), DropReason::ExplicitDrop, "{f:x?}");
    }
    // The per-pod drop flow is what matched (so spoofing is counted per pod).
    let key = FlowKey::extract(&cases[0], port(&p, "a1"), &TunnelMeta::NONE).unwrap();
    let t = p.trace(&key, None, 0);
    let text = t.to_string();
    assert!(
        text.contains("priority=100,in_port=1 actions=drop"),
        "{text}"
    );
}

#[test]
fn two_tenants_with_the_same_addresses_share_a_switch() {
    let a = cluster(L3);
    let b_text = L3
        .replace("vni = 100", "vni = 200")
        .replace("name = \"a", "name = \"b");
    let b = cluster(&b_text);
    let (pa, pb) = (a.plan("n1").unwrap(), b.plan("n1").unwrap());
    let p = install(&[&pa, &pb]);
    assert_eq!(p.ports().len(), 5, "a1 a2 tun0 b1 b2: the tunnel is shared");
    let frame = udp4(mac(GW1), mac(A1), A1, A2);
    let o = from_pod(&p, "a1", &frame);
    assert_eq!(one(&o).0, port(&p, "a2"));
    let o = from_pod(&p, "b1", &frame);
    assert_eq!(one(&o).0, port(&p, "b2"));
    let o = from_pod(&p, "b1", &udp4(mac(GW1), mac(A1), A1, A3));
    assert_eq!(one(&o).1.tun_id(), 200);
    // From the tunnel, the VNI picks the tenant.
    let to_a1 = udp4(mac(GW1), mac([198, 19, 2, 1]), A3, A1);
    assert_eq!(
        one(&from_tunnel(&p, "tun0", &to_a1, 100, N2)).0,
        port(&p, "a1")
    );
    assert_eq!(
        one(&from_tunnel(&p, "tun0", &to_a1, 200, N2)).0,
        port(&p, "b1")
    );
    // ARP answers stay per tenant too.
    let o = from_pod(&p, "b2", &arp_request(mac(A2), A2, GW1));
    assert_eq!(one(&o).0, port(&p, "b2"));
    // Removing tenant a by cookie leaves tenant b whole.
    let del = parse_flow_mod(FlowModCommand::Delete, "cookie=100/0xffffffffffffffff").unwrap();
    let (p, _) = p.apply(&Bundle::new(vec![del]), 0).unwrap();
    let o = from_pod(&p, "b1", &frame);
    assert_eq!(one(&o).0, port(&p, "b2"));
    assert!(from_pod(&p, "a1", &frame).outputs.is_empty());
    assert_eq!(
        one(&from_tunnel(&p, "tun0", &to_a1, 200, N2)).0,
        port(&p, "b1")
    );
}

#[test]
fn l3_over_ipip_sets_the_vni_at_ingress_and_routes_alike() {
    let c = cluster(&L3.replace("\"vxlan\"", "\"ipip\""));
    let p = install(&[&c.plan("n1").unwrap()]);
    let o = from_pod(&p, "a1", &udp4(mac(GW1), mac(A1), A1, A3));
    let (out, state, _) = one(&o);
    assert_eq!(*out, port(&p, "tun0"));
    assert_eq!(state.tun_dst(), IpAddr::V4(N2));
    // What the ipip port hands in: no VNI, zero MACs (it carries IP only).
    let from_ipip = udp4([0; 6], [0; 6], A3, A1);
    let o = from_tunnel(&p, "tun0", &from_ipip, 0, N2);
    let (out, state, f) = one(&o);
    assert_eq!(*out, port(&p, "a1"));
    assert_eq!((state.dl_src(), state.dl_dst()), (mac(GW1), mac(A1)));
    assert_eq!(f[14 + 8], 63);
    let o = from_tunnel(
        &p,
        "tun0",
        &udp6([0; 6], [0; 6], "2001:2:0:2::2", "2001:2:0:1::2"),
        0,
        N2,
    );
    assert_eq!(one(&o).0, port(&p, "a1"));
    // A stranger's IP-in-IP is dropped.
    let o = from_tunnel(&p, "tun0", &from_ipip, 0, Ipv4Addr::new(198, 18, 0, 9));
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
}

// ------------------------------------------------------------------ l2

#[test]
fn l2_pods_and_tunnels_go_to_normal_with_the_vni() {
    let c = cluster(&L3.replace("mode = \"l3\"", "mode = \"l2\""));
    let plan = c.plan("n1").unwrap();
    let p = install(&[&plan]);
    assert!(p.ports().number("tun-n2").is_some());
    let cases = [
        arp_request(mac(A1), A1, A3),
        udp4(mac(A3), mac(A1), A1, A3),
        udp4([0xff; 6], mac(A1), A1, [255, 255, 255, 255]),
        udp6(mac(A2), mac(A1), "2001:2:0:1::2", "2001:2:0:1::3"),
        udp6(
            [0x33, 0x33, 0, 0, 0, 1],
            mac(A1),
            "fe80::858:c6ff:fe13:102",
            "ff02::1",
        ),
        udp6([0x33, 0x33, 0xff, 0, 0, 2], mac(A1), "::", "ff02::1:ff00:2"),
    ];
    for f in &cases {
        let o = from_pod(&p, "a1", f);
        assert!(o.outputs.is_empty(), "{f:x?}");
        assert_eq!(o.normal.len(), 1, "{f:x?} drop {:?}", o.drop);
        assert_eq!(o.normal[0].tun_id(), VNI);
    }
    let o = from_tunnel(&p, "tun-n2", &udp4(mac(A1), mac(A3), A3, A1), VNI, N2);
    assert_eq!(o.normal.len(), 1);
    assert_eq!(o.normal[0].tun_id(), VNI);
    // Spoofing and another VNI are dropped.
    let o = from_pod(&p, "a1", &udp4(mac(A3), mac(A1), A2, A3));
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
    let o = from_pod(&p, "a1", &arp_request(mac(A1), A2, A3));
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
    let o = from_tunnel(&p, "tun-n2", &udp4(mac(A1), mac(A3), A3, A1), 101, N2);
    assert_eq!(dropped(&o), DropReason::ExplicitDrop);
}
