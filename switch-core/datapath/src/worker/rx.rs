//! The receiving side of a worker: reads a batch from a TAP queue, an IP-in-IP raw
//! socket or a VXLAN/Geneve socket, validates and strips the tunnel header, and hands
//! each inner frame to [`Worker::process`](super::Worker).

use std::io;
use std::net::{IpAddr, SocketAddr};

use encap::offload::{Segmenter, TunnelVnetHdr, VIRTIO_NET_HDR_TNL_LEN, VirtioNetHdr};
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
                    // What still references the last frame goes first (see egress).
                    self.out.release(ports, &self.rx);
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
                    self.out.release(ports, &self.rx);
                    match self.rxb.recv(sock.fd(), &mut self.rx, SLOT, HEADROOM) {
                        Ok(n) => {
                            self.out.cur = VirtioNetHdr::default();
                            for i in 0..n {
                                let m = self.rxb.msg(i);
                                if let Some(total) = m.overflow {
                                    count_overflow(port, sock.overflowed(total));
                                }
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
            self.out.release(ports, &self.rx);
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
                if let Some(total) = m.overflow {
                    count_overflow(port, sock.overflowed(total));
                }
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

    /// The worker's queue of a socket group's tunnel-GSO underlay TAP: each read is one
    /// outer Ethernet + IPv4 + UDP packet to the tunnel's port (what tc redirected from
    /// the underlay device) behind a 24-byte `virtio_net_hdr`. A tunnel super-frame
    /// (`gso_type` with a tunnel bit) is decapsulated whole and goes through the
    /// pipeline once, its inner frame carrying the inner offload header; any other
    /// packet is an ordinary datagram and takes the socket path's steps (and the
    /// coalescer). A header or outer packet that is wrong is dropped and counted.
    pub(super) fn drain_underlay(
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
        let Some(ul) = &u.sockets.underlay else {
            return false;
        };
        let local = IpAddr::V4(ul.local);
        let mut errors = 0;
        for _ in 0..BATCH {
            let mut hdr = [0u8; VIRTIO_NET_HDR_TNL_LEN];
            self.out.release(ports, &self.rx);
            let n = match ul.tap.recv(self.id, &mut hdr, &mut self.rx[HEADROOM..SLOT]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) if errors == 0 => {
                    errors += 1;
                    continue;
                }
                Err(_) => return false,
            };
            if n >= FRAME_MAX {
                port.counters.rx(n);
                port.counters.drop(PortDrop::Io(IoDrop::Truncated));
                continue;
            }
            let frame = &self.rx[HEADROOM..HEADROOM + n];
            let h = match TunnelVnetHdr::parse(&hdr).and_then(|h| h.check_frame(frame).map(|()| h))
            {
                Ok(h) => h,
                Err(_) => {
                    port.counters.rx(n);
                    port.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                    continue;
                }
            };
            let (src, udp_off, udp_len) = match outer_udp(frame, ul.dst_port, h.tunnel.is_some()) {
                Ok(o) => o,
                Err(r) => {
                    port.counters.rx(n);
                    port.counters.drop(PortDrop::Decap(r));
                    continue;
                }
            };
            let from = SocketAddr::new(IpAddr::V4(src), 0);
            let Some(rx_port) = ports.demux(ofport, from.ip()) else {
                port.counters.rx(n);
                port.counters.drop(PortDrop::Io(IoDrop::UnknownRemote));
                continue;
            };
            let off = HEADROOM + udp_off;
            let Some((start, len, tun)) = self.decap_udp(rx_port, off, udp_len, from, local) else {
                continue;
            };
            // The inner frame's own offload header: the tunnel super-frame's, or a
            // plain checksum offload, with offsets from the inner Ethernet header.
            let inner_at = start - HEADROOM;
            let inner = if h.tunnel.is_some() {
                h.inner(inner_at)
            } else if h.base.flags & VirtioNetHdr::F_NEEDS_CSUM != 0 {
                if h.base.gso_kind() != VirtioNetHdr::GSO_NONE {
                    // GSO without a tunnel bit on a tunnel packet: not one we can cut.
                    None
                } else if usize::from(h.base.csum_start) < inner_at {
                    // The partial checksum is the outer UDP one (the sender's kernel left
                    // it to the device), which goes with the outer headers: the inner
                    // frame is complete (a packet has one partial checksum).
                    Some(VirtioNetHdr::default())
                } else {
                    u16::try_from(usize::from(h.base.csum_start) - inner_at)
                        .ok()
                        .filter(|&c| usize::from(c) >= ETH_LEN)
                        .map(|c| VirtioNetHdr {
                            csum_start: c,
                            hdr_len: 0,
                            ..h.base
                        })
                }
            } else {
                Some(VirtioNetHdr::default())
            };
            let Some(inner) = inner else {
                rx_port.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                continue;
            };
            if inner.gso_kind() != VirtioNetHdr::GSO_NONE && inner.gso_size < MIN_GSO_SIZE {
                rx_port.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                continue;
            }
            if inner.gso_kind() != VirtioNetHdr::GSO_NONE {
                // The tunnel port counts the datagrams on the wire: a super-frame stands
                // for as many as the kernel would have cut it into (one is counted).
                let frame = &self.rx[start..start + len];
                match Segmenter::new(&inner, frame) {
                    Ok(s) => rx_port.counters.rx_n(s.remaining().saturating_sub(1), 0),
                    Err(_) => {
                        rx_port.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                        continue;
                    }
                }
            }
            self.out.cur = inner;
            self.process(ports, rx_port, start, len, &tun, pipe, now);
        }
        self.out.cur = VirtioNetHdr::default();
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

/// The outer headers of a packet from the underlay TAP: untagged Ethernet, IPv4 (valid
/// header checksum and lengths, not a fragment), UDP to `dst_port`. Returns the outer
/// source and where the UDP payload is and how long (to the IP length: link padding is
/// not payload). The UDP checksum is not verified: over IPv4 tunnels send 0, and a
/// super-frame's field holds a partial sum for the kernel to finish; the inner frame's
/// own checksums are what the coalescer verifies and the pod's kernel trusts.
fn outer_udp(
    frame: &[u8],
    dst_port: u16,
    superframe: bool,
) -> Result<(std::net::Ipv4Addr, usize, usize), encap::DropReason> {
    use encap::DropReason as R;
    if frame.len() < ETH_LEN || frame[12..14] != [0x08, 0x00] {
        return Err(R::BadIpVersion);
    }
    let ip = &frame[ETH_LEN..];
    let p = encap::ipv4::Packet::new_checked(ip)?;
    let r = encap::ipv4::Repr::parse(&p)?;
    if r.protocol != encap::IPPROTO_UDP {
        return Err(R::WrongIpProtocol);
    }
    let hl = p.header_len();
    let total = usize::from(p.total_len());
    let udp = encap::udp::Packet::new_checked(ip.get(hl..total).ok_or(R::BadIpLength)?)?;
    if udp.dst_port() != dst_port {
        return Err(R::WrongUdpPort);
    }
    let udp_len = usize::from(udp.len());
    // A super-frame's UDP length is the whole (it is rewritten per segment); a datagram's
    // must match its IP length.
    if udp_len < 8 || (!superframe && udp_len != total - hl) {
        return Err(R::BadUdpLength);
    }
    Ok((r.src_addr, ETH_LEN + hl + 8, total - hl - 8))
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

/// Counts `lost` datagrams a socket's full receive buffer dropped (what its
/// `overflowed` returned for the drop count read with a datagram) on `port`.
#[inline]
fn count_overflow(port: &PortIo, lost: u32) {
    if lost > 0 {
        port.counters
            .drop_n(PortDrop::Io(IoDrop::RxOverflow), lost as usize);
    }
}
