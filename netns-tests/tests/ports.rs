//! The port layer on real devices: TAP devices inside a pod's namespace.

use std::time::{Duration, Instant};

use netns_tests::lab::{Lab, privileged};
use weft_datapath::port::Tap;
use weft_flow::port::TapOptions;

const POD_MAC: &str = "02:00:00:00:01:02";
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];

fn arp_reply(to_mac: [u8; 6], to_ip: [u8; 4], from_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&from_ip);
    f.extend_from_slice(&to_mac);
    f.extend_from_slice(&to_ip);
    f
}

#[test]
fn tap_in_a_namespace_is_created_configured_persistent_and_removed() {
    if !privileged("tap_in_a_namespace_is_created_configured_persistent_and_removed") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let pod = lab.netns("pod").unwrap();
    let opts = TapOptions {
        netns: Some(pod.name().to_string()),
        ifname: None,
        mtu: Some(1400),
        mac: Some(POD_MAC.parse().unwrap()),
        tag: None,
        txqueuelen: None,
    };
    let tap = Tap::open("tap0", &opts, 2, true).unwrap();
    assert!(!tap.reattached());
    assert_eq!(tap.queue_count(), 2);
    assert!(tap.vnet_hdr(), "offloads on: queues carry a virtio_net_hdr");
    let features = pod.run(&["ethtool", "-k", "tap0"]).unwrap();
    assert!(
        features.contains("tcp-segmentation-offload: on"),
        "TSO offered to the pod: {features}"
    );
    let link = pod.ip("link show tap0").unwrap();
    assert!(link.contains("mtu 1400"), "{link}");
    assert!(link.contains(POD_MAC), "{link}");
    assert!(link.contains(",UP"), "device is up: {link}");
    pod.ip("addr add 198.19.1.2/24 dev tap0").unwrap();

    // Receive: the pod's ARP request for its gateway arrives on one of the queues.
    let mut ping = pod.command("ping");
    ping.args(["-c", "3", "-i", "0.2", "-W", "1", "198.19.1.1"]);
    let pinger = lab.spawn("ping", ping).unwrap();
    let mut buf = [0u8; 2048];
    let mut hdr = [0u8; 10];
    let start = Instant::now();
    let request = 'found: loop {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "no ARP request arrived"
        );
        for q in 0..tap.queue_count() {
            if let Ok(n) = tap.recv(q, &mut hdr, &mut buf) {
                assert_eq!(hdr[1], 0, "an ARP request is no GSO frame");
                let f = &buf[..n];
                if n >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == [198, 19, 1, 1] {
                    break 'found f.to_vec();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(
        &request[6..12],
        &opts.mac.unwrap().0,
        "sent by the pod's MAC"
    );
    let _ = lab.stop(pinger, Duration::from_secs(1));

    // Send: an ARP reply written to the TAP reaches the pod's neighbour table.
    let n = tap
        .send(
            0,
            &arp_reply(opts.mac.unwrap().0, [198, 19, 1, 2], [198, 19, 1, 1]),
        )
        .unwrap();
    assert_eq!(n, 42);
    let start = Instant::now();
    loop {
        let neigh = pod.ip("neigh show 198.19.1.1").unwrap();
        if neigh.contains("02:00:00:00:01:01") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(2), "{neigh}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Persistence: closing every queue leaves the device and the pod's address.
    drop(tap);
    let addr = pod.ip("addr show dev tap0").unwrap();
    assert!(addr.contains("198.19.1.2/24"), "{addr}");
    let tap = Tap::open("tap0", &opts, 1, false).unwrap();
    assert!(tap.reattached(), "second open re-attaches");
    assert!(!tap.vnet_hdr());
    let features = pod.run(&["ethtool", "-k", "tap0"]).unwrap();
    assert!(
        features.contains("tcp-segmentation-offload: off"),
        "offloads off clears the device-wide offload mask: {features}"
    );
    let addr = pod.ip("addr show dev tap0").unwrap();
    assert!(addr.contains("198.19.1.2/24"), "address kept: {addr}");

    // Removal: the device is gone once persistence is cleared and the queue closed.
    tap.remove().unwrap();
    assert!(pod.ip("link show tap0").is_err(), "device removed");
}

/// `txqueuelen` is applied to a TAP's queues (read back with `ip link`), and
/// `Tap::queue_full_drops` is what the pod's kernel dropped on the full queue (its
/// `tx_dropped`) since this open: nothing reads the queue here, so of 200 datagrams
/// the pod sends into a queue of 8, 192 are dropped. A re-attached device's earlier
/// drops are not the new port's.
#[test]
fn txqueuelen_is_applied_and_a_full_queue_is_counted() {
    use netns_tests::lab::Ns;
    if !privileged("txqueuelen_is_applied_and_a_full_queue_is_counted") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let pod = lab.netns("pod").unwrap();
    let opts = TapOptions {
        netns: Some(pod.name().to_string()),
        mac: Some(POD_MAC.parse().unwrap()),
        txqueuelen: Some(8),
        ..TapOptions::default()
    };
    let tap = Tap::open("tap0", &opts, 1, false).unwrap();
    let link = pod.ip("link show tap0").unwrap();
    assert!(link.contains("qlen 8"), "{link}");
    pod.ip("addr add 198.19.1.2/24 dev tap0").unwrap();
    pod.ip("neigh add 198.19.1.1 lladdr 02:00:00:00:01:01 dev tap0")
        .unwrap();
    let tx_dropped = |ns: &Ns| -> u64 {
        let j = ns.ip("-j -s link show tap0").unwrap();
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
    };
    // Whatever the pod sent as the device came up (IPv6 DAD, router solicitations)
    // may be queued or dropped already: count from here, with IPv6 off so that no such
    // frame is dropped between the two baseline reads (one was, once in CI-like runs).
    pod.run(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv6/conf/tap0/disable_ipv6",
    ])
    .unwrap();
    let before = (tap.queue_full_drops().unwrap(), tx_dropped(&pod));
    let tool = netns_tests::node::nettool_binary().display().to_string();
    pod.run(&[
        &tool,
        "udp-send",
        "--to",
        "198.19.1.1:9",
        "--hex",
        "00",
        "--count",
        "200",
    ])
    .unwrap();
    let kernel = tx_dropped(&pod) - before.1;
    let counted = tap.queue_full_drops().unwrap() - before.0;
    assert!(kernel >= 192, "{kernel} of 200 dropped by a queue of 8");
    assert_eq!(counted, kernel);
    // Re-attached (a restart of weftd): the count starts again from the device's.
    drop(tap);
    let tap = Tap::open(
        "tap0",
        &TapOptions {
            txqueuelen: Some(4096),
            ..opts.clone()
        },
        1,
        false,
    )
    .unwrap();
    assert!(tap.reattached());
    assert_eq!(tap.queue_full_drops(), Some(0));
    let link = pod.ip("link show tap0").unwrap();
    assert!(
        link.contains("qlen 4096"),
        "applied at re-attach too: {link}"
    );
    tap.remove().unwrap();

    // A length the kernel refuses (past what the port parser lets through): one line
    // naming it, and the device made for it is gone again.
    let e = Tap::open(
        "tap1",
        &TapOptions {
            txqueuelen: Some(600_000),
            ..opts
        },
        1,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tap 'tap1': txqueuelen=600000: the kernel refused"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    assert!(pod.ip("link show tap1").is_err(), "no device left behind");
}

#[test]
fn tap_errors_are_clear() {
    if !privileged("tap_errors_are_clear") {
        return;
    }
    let opts = TapOptions {
        netns: Some("weft-no-such-ns".into()),
        ..TapOptions::default()
    };
    let err = Tap::open("tap0", &opts, 1, true).unwrap_err().to_string();
    assert!(err.contains("weft-no-such-ns"), "{err}");

    // A name taken by a device that is not a TAP.
    let mut lab = Lab::new().unwrap();
    let pod = lab.netns("pod").unwrap();
    let other = lab.netns("other").unwrap();
    lab.veth(&pod, "eth0", &other, "eth0").unwrap();
    let opts = TapOptions {
        netns: Some(pod.name().to_string()),
        ..TapOptions::default()
    };
    let err = Tap::open("eth0", &opts, 1, true).unwrap_err().to_string();
    assert!(err.contains("tap 'eth0'"), "{err}");
}

/// The link line of `ifname` in `ns`: its MAC and MTU are what a wrongly attached
/// second owner would rewrite.
fn link(ns: &netns_tests::lab::Ns, ifname: &str) -> String {
    ns.ip(&format!("link show {ifname}")).unwrap()
}

#[test]
fn a_tap_device_of_another_port_or_anyone_else_is_refused_and_left_alone() {
    if !privileged("a_tap_device_of_another_port_or_anyone_else_is_refused_and_left_alone") {
        return;
    }
    use weft_datapath::{Switch, SwitchError, SwitchOptions};
    let mut lab = Lab::new().unwrap();
    let pod = lab.netns("pod").unwrap();
    let other = lab.netns("other").unwrap();
    let port = |line: String| {
        let mut it = line.split_whitespace();
        let name = it.next().unwrap().to_string();
        weft_flow::port::PortSpec::parse(&name, &it.collect::<Vec<_>>()).unwrap()
    };
    let sw = Switch::start(
        SwitchOptions {
            workers: 2,
            ..SwitchOptions::default()
        },
        None,
    )
    .unwrap();
    sw.add_port(port(format!(
        "c1 type=tap netns={} ifname=eth0 mac={POD_MAC} mtu=1400",
        pod.name()
    )))
    .unwrap();
    pod.ip("addr add 198.19.1.2/24 dev eth0").unwrap();
    let before = link(&pod, "eth0");
    assert!(
        before.contains(POD_MAC) && before.contains("mtu 1400"),
        "{before}"
    );

    // Another port over c1's device: refused with one line naming the owner.
    let e = sw
        .add_port(port(format!(
            "x1 type=tap netns={} ifname=eth0 mac=02:00:00:00:09:09 mtu=9000",
            pod.name()
        )))
        .unwrap_err();
    assert!(
        matches!(e, SwitchError::TapOwned { ref by, .. } if by == "c1"),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("belongs to port 'c1'"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(link(&pod, "eth0"), before, "MAC and MTU left alone");
    assert!(
        !sw.ports().iter().any(|p| p.spec.name == "x1"),
        "no port x1 was made"
    );
    assert!(matches!(
        sw.del_port("x1").unwrap_err(),
        SwitchError::NoSuchPort(_)
    ));

    // A TAP device that no port of this switch owns (another program's, or a leftover)
    // is not taken over by add-port either.
    let foreign = Tap::open(
        "tap9",
        &TapOptions {
            netns: Some(other.name().to_string()),
            mtu: Some(1300),
            ..TapOptions::default()
        },
        1,
        false,
    )
    .unwrap();
    let foreign_before = link(&other, "tap9");
    let e = sw
        .add_port(port(format!(
            "x2 type=tap netns={} ifname=tap9 mtu=9000",
            other.name()
        )))
        .unwrap_err()
        .to_string();
    assert!(e.contains("a device of that name exists"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    assert_eq!(link(&other, "tap9"), foreign_before, "left alone");
    foreign.remove().unwrap();

    // c1 is intact: still persistent (it outlives the switch) with its address.
    drop(sw);
    let addr = pod.ip("addr show dev eth0").unwrap();
    assert!(addr.contains("198.19.1.2/24"), "{addr}");
    let after = link(&pod, "eth0");
    assert!(
        after.contains(POD_MAC) && after.contains("mtu 1400"),
        "{after}"
    );
    // The device is the test's to remove now.
    Tap::open(
        "eth0",
        &TapOptions {
            netns: Some(pod.name().to_string()),
            ..TapOptions::default()
        },
        1,
        false,
    )
    .unwrap()
    .remove()
    .unwrap();
}

/// The tunnel-GSO port's next-hop cache (`weft_datapath::port::neigh`) on a real device:
/// a peer is resolved from the kernel's neighbour table once asked for, a peer behind a
/// gateway gets the gateway's MAC, and the cache follows a changed MAC and a deleted
/// neighbour (rtnetlink events) without being asked again.
#[test]
fn the_next_hop_cache_follows_neighbour_and_route_changes() {
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use weft_datapath::port::neigh::Neighbours;
    use weft_datapath::port::netns::in_netns;

    if !privileged("the_next_hop_cache_follows_neighbour_and_route_changes") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let a = lab.netns("nha").unwrap();
    let b = lab.netns("nhb").unwrap();
    lab.veth(&a, "ul0", &b, "ul0").unwrap();
    a.ip("addr add 198.18.0.1/24 dev ul0").unwrap();
    let mac1 = [0x02, 0, 0, 0, 0xaa, 0x01];
    let mac2 = [0x02, 0, 0, 0, 0xaa, 0x02];
    a.ip("neigh replace 198.18.0.2 lladdr 02:00:00:00:aa:01 dev ul0 nud permanent")
        .unwrap();
    a.ip("route add 198.18.5.0/24 via 198.18.0.2").unwrap();
    let own: Vec<u8> = a
        .run(&["cat", "/sys/class/net/ul0/address"])
        .unwrap()
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let idx: u32 = a
        .run(&["cat", "/sys/class/net/ul0/ifindex"])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let name = a.name().to_string();
    let (peer, far) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 5, 9));
    in_netns(Some(&name), || {
        let n = Arc::new(Neighbours::new(idx));
        assert_eq!(
            n.lookup(peer),
            None,
            "nothing is resolved before it is asked for"
        );
        assert_eq!(n.lookup(far), None);
        let refresher = n.spawn_refresher().unwrap();
        let wait = |who: Ipv4Addr, want: Option<[u8; 6]>, what: &str| {
            let start = Instant::now();
            loop {
                let got = n.lookup(who).map(|h| h.dst_mac);
                if got == want {
                    return n.lookup(who);
                }
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "{what}: {who} -> {got:02x?}, want {want:02x?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let h = wait(peer, Some(mac1), "resolved").unwrap();
        assert_eq!(h.src, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(h.src_mac.to_vec(), own);
        // Behind the gateway: the gateway's MAC, the same source.
        let h = wait(far, Some(mac1), "via the gateway").unwrap();
        assert_eq!(h.peer, far);
        // The neighbour changes its MAC: followed (an rtnetlink event, no new lookup miss).
        a.ip("neigh replace 198.18.0.2 lladdr 02:00:00:00:aa:02 dev ul0 nud permanent")
            .unwrap();
        wait(peer, Some(mac2), "changed MAC").unwrap();
        wait(far, Some(mac2), "changed MAC of the gateway").unwrap();
        // The route goes away: no next hop for the far peer (back to the socket).
        a.ip("route del 198.18.5.0/24").unwrap();
        wait(far, None, "route deleted");
        // The neighbour goes away: none either.
        a.ip("neigh del 198.18.0.2 dev ul0").unwrap();
        wait(peer, None, "neighbour deleted");
        n.stop();
        refresher.join().unwrap();
        Ok(())
    })
    .unwrap();
}

/// A tunnel-GSO tc filter left on the underlay device by a weftd that was killed (its
/// TAP gone, so the redirect drops the tunnel's packets) is removed when the tunnel
/// opens again with sockets only.
#[test]
fn a_stale_tunnel_gso_filter_is_removed() {
    use std::net::Ipv4Addr;
    use weft_datapath::port::netns::in_netns;
    use weft_datapath::port::underlay::remove_stale_filter;

    if !privileged("a_stale_tunnel_gso_filter_is_removed") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let a = lab.netns("sfa").unwrap();
    let b = lab.netns("sfb").unwrap();
    lab.veth(&a, "ul0", &b, "ul0").unwrap();
    a.ip("addr add 198.18.0.1/24 dev ul0").unwrap();
    a.ip("tuntap add dev wgso4789 mode tap").unwrap();
    a.run(&["tc", "qdisc", "add", "dev", "ul0", "clsact"])
        .unwrap();
    a.run(&[
        "tc", "filter", "add", "dev", "ul0", "ingress", "pref", "4789", "protocol", "ip", "u32",
        "match", "ip", "dport", "4789", "0xffff", "action", "mirred", "egress", "redirect", "dev",
        "wgso4789",
    ])
    .unwrap();
    a.ip("link del wgso4789").unwrap();
    let show = || {
        a.run(&["tc", "filter", "show", "dev", "ul0", "ingress"])
            .unwrap()
    };
    assert!(show().contains("mirred"), "{}", show());
    let name = a.name().to_string();
    // Another UDP port's filter is not this tunnel's: left alone.
    in_netns(Some(&name), || {
        remove_stale_filter(Ipv4Addr::new(198, 18, 0, 1), 6081);
        Ok(())
    })
    .unwrap();
    assert!(show().contains("mirred"), "{}", show());
    in_netns(Some(&name), || {
        remove_stale_filter(Ipv4Addr::new(198, 18, 0, 1), 4789);
        Ok(())
    })
    .unwrap();
    assert!(!show().contains("mirred"), "{}", show());
}
