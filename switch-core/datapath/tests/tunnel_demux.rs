//! Tunnel ports of one type and UDP port share a socket and are told apart by the
//! outer source of each packet, as in Open vSwitch (no privileges needed: loopback).

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use weft_datapath::{Switch, SwitchError, SwitchOptions};
use weft_flow::port::PortSpec;

fn spec(line: &str) -> PortSpec {
    let mut it = line.split_whitespace();
    let name = it.next().unwrap();
    PortSpec::parse(name, &it.collect::<Vec<_>>()).unwrap()
}

/// A VXLAN datagram (VNI 7) around a minimal Ethernet frame.
fn vxlan_frame() -> Vec<u8> {
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 7, 0];
    d.extend_from_slice(&[0xff; 6]);
    d.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
    d.extend_from_slice(&[0x88, 0xb5]);
    d.extend_from_slice(&[0u8; 46]);
    d
}

fn rx_of(sw: &Switch, name: &str) -> (u64, Vec<(String, u64)>) {
    let p = sw
        .ports()
        .into_iter()
        .find(|p| p.spec.name == name)
        .unwrap();
    (p.rx_packets, p.drops)
}

#[test]
fn datagrams_go_to_the_port_of_their_remote() {
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let sw = Switch::start(
        SwitchOptions {
            workers: 2,
            ..SwitchOptions::default()
        },
        None,
    )
    .unwrap();
    let base = format!("type=vxlan local=127.0.0.1 dst_port={port}");
    sw.add_port(spec(&format!("ta {base} remote=127.0.0.2")))
        .unwrap();
    sw.add_port(spec(&format!("tb {base} remote=127.0.0.3")))
        .unwrap();
    // Same remote twice, or another type on the same UDP port, is refused.
    let e = sw
        .add_port(spec(&format!("tc {base} remote=127.0.0.3")))
        .unwrap_err();
    assert!(
        matches!(e, SwitchError::UdpPortTaken(_, ref by) if by == "tb"),
        "{e}"
    );
    let e = sw
        .add_port(spec(&format!(
            "g0 type=geneve local=127.0.0.1 dst_port={port} remote=127.0.0.9"
        )))
        .unwrap_err();
    assert!(e.to_string().contains("taken by tunnel"), "{e}");
    let frame = vxlan_frame();
    let send = |from: &str, n: usize| {
        let s = UdpSocket::bind(format!("{from}:0")).unwrap();
        for _ in 0..n {
            s.send_to(&frame, ("127.0.0.1", port)).unwrap();
        }
    };
    send("127.0.0.2", 3);
    send("127.0.0.3", 5);
    send("127.0.0.4", 2);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (a, _) = rx_of(&sw, "ta");
        let (b, _) = rx_of(&sw, "tb");
        let (_, drops) = rx_of(&sw, "ta");
        let unknown = drops
            .iter()
            .find(|(r, _)| r == "unknown_remote")
            .map_or(0, |(_, n)| *n);
        if (a, b, unknown) == (5, 5, 2) || Instant::now() > deadline {
            // ta: 3 of its own + 2 from a stranger (counted on the socket's first
            // port and dropped as unknown_remote).
            assert_eq!((a, b, unknown), (5, 5, 2), "rx ta, rx tb, unknown_remote");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A remote=flow port on the same socket takes everyone else.
    sw.add_port(spec(&format!("tany {base} remote=flow")))
        .unwrap();
    send("127.0.0.4", 4);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx_of(&sw, "tany").0 < 4 {
        assert!(
            Instant::now() < deadline,
            "remote=flow port got {:?}",
            rx_of(&sw, "tany")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rx_of(&sw, "tb").0, 5, "tb got nothing of the stranger's");
    // Deleting one sharer keeps the socket for the others.
    sw.del_port("ta").unwrap();
    send("127.0.0.3", 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx_of(&sw, "tb").0 < 6 {
        assert!(Instant::now() < deadline, "tb after ta was deleted");
        std::thread::sleep(Duration::from_millis(20));
    }
    sw.stop();
}
