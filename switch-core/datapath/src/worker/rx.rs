//! The receiving side of a worker: reads a batch from a TAP queue, an IP-in-IP raw
//! socket or a VXLAN/Geneve socket, validates and strips the tunnel header, and hands
//! each inner frame to [`Worker::process`](super::Worker).

use std::io;
use std::net::{IpAddr, SocketAddr};

use encap::offload::VirtioNetHdr;
use weft_pipeline::Pipeline;
use weft_pipeline::flow_key::TunnelMeta;

use super::super::batch::RX_MSGS;
use super::super::io::{IoDrop, PortDev, PortDrop, PortIo, PortSet};
use super::{BATCH, FRAME_MAX, HEADROOM, MIN_GSO_SIZE, SLOT, Sub, Worker};
use crate::port::tap::VNET_HDR_LEN;
use weft_pipeline::egress::ETH_LEN;

impl Worker {
    /// TAP queues and IP-in-IP sockets: one frame per read.
    pub(super) fn drain_frames(
        &mut self,
        ports: &PortSet,
        port: &PortIo,
        sub: Sub,
        pipe: &Pipeline,
        now: u64,
    ) -> bool {
        let mut errors = 0;
        for _ in 0..BATCH {
            let got = match (&port.dev, sub) {
                (PortDev::Tap(t), _) => {
                    let mut hdr = [0u8; VNET_HDR_LEN];
                    match t.recv(self.id, &mut hdr, &mut self.rx[HEADROOM..SLOT]) {
                        Ok(n) => {
                            port.counters.rx(n);
                            if n >= FRAME_MAX {
                                // The kernel cuts a frame to the buffer without saying so.
                                port.counters.drop(PortDrop::Io(IoDrop::Truncated));
                                continue;
                            }
                            if is_vlan_tagged(&self.rx[HEADROOM..HEADROOM + n]) {
                                // A pod's port is an untagged access port: a tag from
                                // the pod would reach the other side still tagged.
                                port.counters.drop(PortDrop::Io(IoDrop::VlanTagged));
                                continue;
                            }
                            match VirtioNetHdr::parse(&hdr) {
                                Ok(h)
                                    if h.gso_kind() != VirtioNetHdr::GSO_NONE
                                        && h.gso_size < MIN_GSO_SIZE =>
                                {
                                    port.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                                    continue;
                                }
                                Ok(h) => {
                                    self.out.cur = h;
                                    Ok((HEADROOM, n, TunnelMeta::NONE))
                                }
                                Err(_) => {
                                    port.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                                    continue;
                                }
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                (PortDev::Ipip(t), sub) => {
                    // A batch of packets per recvmmsg, each decapsulated in its slot.
                    let sock = if sub == Sub::Ipip6 { &t.v6 } else { &t.v4 };
                    match self.rxb.recv(sock.fd(), &mut self.rx, SLOT, HEADROOM) {
                        Ok(n) => {
                            self.out.cur = VirtioNetHdr::default();
                            for i in 0..n {
                                let m = self.rxb.msg(i);
                                if m.truncated {
                                    port.counters.rx(m.len);
                                    port.counters.drop(PortDrop::Io(IoDrop::Truncated));
                                    continue;
                                }
                                let len = m.len;
                                if let Some((start, len, tun)) =
                                    self.decap_ipip(port, i * SLOT + HEADROOM, len)
                                {
                                    self.process(ports, port, start, len, &tun, pipe, now);
                                }
                            }
                            if n < RX_MSGS {
                                return false;
                            }
                            continue;
                        }
                        Err(e) => Err(e),
                    }
                }
                (PortDev::Udp(_), _) => return false,
            };
            match got {
                Ok((start, len, tun)) => self.process(ports, port, start, len, &tun, pipe, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A socket reports an ICMP error that came back for an earlier packet
                // (e.g. a raw IP-in-IP socket after a peer's "protocol unreachable")
                // once, on the next receive, even when packets are queued behind it.
                // Polling is edge-triggered: giving up now would leave those packets
                // until the next one arrives. Read on; a second error ends the turn.
                Err(_) if errors == 0 => errors += 1,
                Err(_) => return false,
            }
        }
        true
    }

    /// A VXLAN/Geneve socket: `recvmmsg` of up to [`RX_MSGS`] buffers, each a datagram
    /// or a GRO train of datagrams of one size (the last may be shorter).
    pub(super) fn drain_udp(
        &mut self,
        ports: &PortSet,
        port: &PortIo,
        ofport: u32,
        pipe: &Pipeline,
        now: u64,
    ) -> bool {
        let PortDev::Udp(u) = &port.dev else {
            return false;
        };
        let sock = &u.sockets[self.id % u.sockets.len()];
        let local = sock.local_addr().ip();
        let mut errors = 0;
        let mut datagrams = 0;
        while datagrams < BATCH {
            let n = match self.rxb.recv(sock.fd(), &mut self.rx, SLOT, HEADROOM) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // See `drain_frames`: one reported ICMP error does not end the turn.
                Err(_) if errors == 0 => {
                    errors += 1;
                    continue;
                }
                Err(_) => return false,
            };
            self.out.cur = VirtioNetHdr::default();
            for i in 0..n {
                let m = self.rxb.msg(i);
                let datagrams_in = m.len.div_ceil(m.seg).max(1);
                if m.truncated {
                    port.counters.rx(m.len);
                    port.counters.drop(PortDrop::Io(IoDrop::Truncated));
                    continue;
                }
                // The port a packet belongs to: tunnel ports of one type, local address
                // and UDP port share a socket and are told apart by the outer source
                // (each has its own `remote=`, or `remote=flow`).
                let Some(rx_port) = m.from.and_then(|from| ports.demux(ofport, from.ip())) else {
                    port.counters.rx(m.len);
                    port.counters
                        .drop_n(PortDrop::Io(IoDrop::UnknownRemote), datagrams_in);
                    continue;
                };
                let Some(from) = m.from else { continue };
                let base = i * SLOT + HEADROOM;
                let mut at = 0;
                while at < m.len {
                    let len = m.seg.min(m.len - at);
                    datagrams += 1;
                    if let Some((start, len, tun)) =
                        self.decap_udp(rx_port, base + at, len, from, local)
                    {
                        self.process(ports, rx_port, start, len, &tun, pipe, now);
                    }
                    at += len;
                }
            }
            if n < RX_MSGS {
                return false;
            }
        }
        true
    }

    /// Validates and strips a VXLAN/Geneve header of the datagram at `rx[off..off + n]`;
    /// returns the inner frame's place.
    fn decap_udp(
        &mut self,
        port: &PortIo,
        off: usize,
        n: usize,
        from: SocketAddr,
        local: IpAddr,
    ) -> Option<(usize, usize, TunnelMeta)> {
        port.counters.rx(n);
        let conf = port.tunnel.as_ref()?;
        if !conf.allows(from.ip()) {
            port.counters.drop(PortDrop::Io(IoDrop::RemoteNotAllowed));
            return None;
        }
        let payload = &self.rx[off..off + n];
        let d = if matches!(port.spec.kind, weft_flow::port::PortKind::Vxlan(_)) {
            encap::decap_vxlan(payload)
        } else {
            // Weft understands no Geneve option yet, so a critical one is refused.
            encap::decap_geneve(payload, &[][..])
        };
        match d {
            Ok(d) if d.oam => {
                port.counters.drop(PortDrop::Io(IoDrop::GeneveOam));
                None
            }
            Ok(d) if d.inner_proto != encap::InnerProto::Ethernet => {
                port.counters
                    .drop(PortDrop::Decap(encap::DropReason::UnsupportedInnerProtocol));
                None
            }
            Ok(d) => {
                let tun = TunnelMeta::new(u64::from(d.vni), from.ip(), local);
                Some((off + d.inner_offset, d.inner.len(), tun))
            }
            Err(r) => {
                port.counters.drop(PortDrop::Decap(r));
                None
            }
        }
    }

    /// Validates and strips an outer IPv4 header and puts an Ethernet header (zero
    /// addresses, for the flows to set) in front of the inner IP packet.
    fn decap_ipip(
        &mut self,
        port: &PortIo,
        base: usize,
        n: usize,
    ) -> Option<(usize, usize, TunnelMeta)> {
        port.counters.rx(n);
        let conf = port.tunnel.as_ref()?;
        let d = match encap::decap_ipip(&self.rx[base..base + n]) {
            Ok(d) => d,
            Err(r) => {
                port.counters.drop(PortDrop::Decap(r));
                return None;
            }
        };
        let outer = d.outer?;
        if !conf.allows(outer.src) {
            port.counters.drop(PortDrop::Io(IoDrop::RemoteNotAllowed));
            return None;
        }
        let ethertype = d.inner_proto.ethertype();
        let (off, len) = (d.inner_offset, d.inner.len());
        let start = base + off - ETH_LEN;
        let eth = &mut self.rx[start..start + ETH_LEN];
        eth[..12].fill(0);
        eth[12..].copy_from_slice(&ethertype.to_be_bytes());
        Some((
            start,
            len + ETH_LEN,
            TunnelMeta::new(0, outer.src, outer.dst),
        ))
    }
}

/// Whether an Ethernet frame carries a VLAN tag (802.1Q or 802.1ad TPID).
#[inline]
fn is_vlan_tagged(frame: &[u8]) -> bool {
    use weft_pipeline::flow_key::{ETH_TYPE_QINQ, ETH_TYPE_VLAN};
    matches!(
        frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]])),
        Some(ETH_TYPE_VLAN | ETH_TYPE_QINQ)
    )
}
