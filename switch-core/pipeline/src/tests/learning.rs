//! `normal` and `flood`: MAC learning per VNI, split horizon, the bounded MAC table,
//! the expansion into sends.

use super::*;

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
