//! The sending side of a worker: one frame through the pipeline, its rewrites committed,
//! and each [`Emit`] of the pipeline's answer executed on the devices.
//!
//! Nothing here decides where a packet goes, to which peer, with which VNI, or whether
//! it fits: `weft_pipeline::egress::plan` did. What is left is the syscalls and the
//! buffers: writing to a TAP (through the port's coalescer, with or without the
//! `virtio_net_hdr`, or cut into segments), pushing the port's tunnel header (built once
//! per port) in front of each segment in the transmit queue, answering "too big", and
//! counting what the devices refused.
//!
//! The payload is not copied on its way out. A super-frame's segments are queued as
//! iovecs: each segment's tunnel header and inner headers are written into the transmit
//! queue's arena (`Segmenter::write_head`), and its payload is named where the frame was
//! read, in the worker's receive buffer or its copy buffer (`BUF_RX`, `BUF_TX`).
//! Coalesced frames for a TAP keep their segments' payloads where they were received
//! (`Coalescer::push_at`) and go out with one `writev`. Both buffers therefore stay as
//! they are until what names them has been sent: [`Out::release`] sends it (or has the
//! coalescer copy what it holds) before the worker reads into the receive buffer again,
//! and the copy buffer is released before it is overwritten.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use encap::offload::{
    Coalesced, Coalescer, MAX_SPANS, Segmenter, TunnelOffsets, TunnelVnetHdr,
    VIRTIO_NET_HDR_TNL_LEN, VirtioNetHdr,
};
use weft_pipeline::drop::DropReason;
use weft_pipeline::egress::{ETH_LEN, EgressCtx, Emit, FrameInfo, TapWrite, plan};
use weft_pipeline::flow_key::{Field, FlowKey, HeaderOffsets, TunnelMeta};
use weft_pipeline::icmp::too_big_reply;
use weft_pipeline::{DpAction, Pipeline};

use super::super::batch::{GSO_MAX_BYTES, GSO_MAX_SEGS, Part, TxMsg, TxOutcome, TxQueue};
use super::super::capture::Direction;
use super::super::io::{IoDrop, PortDev, PortDrop, PortIo, PortSet};
use super::{GRO_FLOWS, HEADROOM, Worker};
use crate::port::Underlay;
use crate::port::neigh::NextHop;
use crate::port::tap::VNET_HDR_LEN;

/// The coalescer of one TAP port.
pub(super) struct Gro {
    /// The TAP port (0: free).
    pub(super) port: u32,
    pub(super) co: Coalescer<Box<[u8]>, GRO_FLOWS>,
}

/// The transmit queue's name for the worker's receive buffer (`Worker::rx`).
pub(super) const BUF_RX: usize = 0;
/// The transmit queue's name for the copy buffer ([`Out::tx`]).
pub(super) const BUF_TX: usize = 1;

/// Where a frame being segmented lies: which buffer, and its offset there.
#[derive(Clone, Copy)]
struct FrameAt {
    buf: usize,
    start: usize,
}

/// A worker's sending side.
pub(super) struct Out {
    /// The worker's id: its TAP queue and its tunnel socket.
    pub(super) id: usize,
    /// A copy of the frame per output when there are several (headroom in front).
    pub(super) tx: Box<[u8]>,
    /// Segments and replies are built here.
    pub(super) aux: Box<[u8]>,
    /// The `virtio_net_hdr` of the frame being processed (all zero: a plain frame).
    pub(super) cur: VirtioNetHdr,
    /// Tunnel output, sent with one `sendmmsg` per batch.
    pub(super) txq: TxQueue,
    /// Coalescers for the TAP ports (empty with offloads off).
    pub(super) gro: Vec<Gro>,
}

/// One copy of a frame on its way out: where it is, where it came from, and the keys it
/// was parsed into and rewritten to.
struct Copy<'a> {
    in_port: &'a PortIo,
    /// In the receive buffer (else in [`Out::tx`]).
    in_rx: bool,
    start: usize,
    len: usize,
    orig: &'a FlowKey,
    state: &'a FlowKey,
    offs: &'a HeaderOffsets,
}

/// Fields whose rewrite invalidates the partial checksum of an offloaded frame.
const PSEUDO_HEADER: [Field; 6] = [
    Field::NwSrc,
    Field::NwDst,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::TpSrc,
    Field::TpDst,
];

impl Worker {
    /// Runs one frame (`rx[start..start + len]`) through the pipeline and out.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn process(
        &mut self,
        ports: &PortSet,
        in_port: &PortIo,
        start: usize,
        len: usize,
        tun: &TunnelMeta,
        pipe: &Pipeline,
        now: u64,
    ) {
        in_port.capture(&self.rx[start..start + len], Direction::Rx);
        let (key, offs) = match FlowKey::extract_with_offsets(
            &self.rx[start..start + len],
            in_port.ofport,
            tun,
        ) {
            Ok(k) => k,
            Err(e) => {
                let r = DropReason::from(e);
                pipe.count_drop(r);
                in_port.counters.drop(PortDrop::Pipeline(r));
                return;
            }
        };
        // The resolved list lives in the cache; take what we need out of it so that the
        // buffers can be borrowed mutably while sending.
        let res = pipe.process(&key, len as u64, now, &mut self.cache);
        if let Some(r) = res.drop_reason() {
            in_port.counters.drop(PortDrop::Pipeline(r));
            return;
        }
        let n = res.actions().len();
        let mut actions = [DpAction::Flood { state: 0 }; weft_pipeline::MAX_OUTPUTS];
        actions[..n].copy_from_slice(res.actions());
        let mut states = [FlowKey::ZERO; weft_pipeline::MAX_STATES];
        for (i, s) in states.iter_mut().enumerate() {
            if actions[..n].iter().any(|a| a.state() == i) {
                *s = *res.state(i);
            }
        }
        let info = FrameInfo::new(&self.rx[start..start + len], &key, &offs, &self.out.cur);
        let coalesce = !self.out.gro.is_empty();
        // One action: its emits (an output, `normal`'s port or flood) all read the frame
        // where it was received, rewritten in place once.
        let single = n == 1;
        for a in &actions[..n] {
            let state = &states[a.state()];
            // The frame as this output sees it, with the header rewrites committed.
            let (in_rx, fstart) = if single {
                (true, start)
            } else {
                // Segments of the previous copy may still be queued by reference.
                self.out.release_tx(ports, &self.rx);
                self.out.tx[HEADROOM..HEADROOM + len].copy_from_slice(&self.rx[start..start + len]);
                (false, HEADROOM)
            };
            {
                let buf: &mut [u8] = if in_rx {
                    &mut self.rx
                } else {
                    &mut self.out.tx
                };
                let frame = &mut buf[fstart..fstart + len];
                if weft_pipeline::commit::commit_at(frame, &offs, &key, state).is_err() {
                    in_port
                        .counters
                        .drop(PortDrop::Pipeline(DropReason::NoOutput));
                    continue;
                }
                // An offloaded frame's checksum field holds the pseudo-header sum, not a
                // full checksum: commit's incremental update is wrong for it, so after an
                // address or port rewrite it is computed again from the new addresses.
                if self.out.cur.flags & VirtioNetHdr::F_NEEDS_CSUM != 0
                    && PSEUDO_HEADER.iter().any(|&f| key.get(f) != state.get(f))
                {
                    encap::offload::refresh_partial_checksum(&self.out.cur, frame);
                }
            }
            if matches!(a, DpAction::Normal { .. }) {
                self.shared.macs.learn(pipe.ports(), state, now);
            }
            let ctx = EgressCtx {
                map: pipe.ports(),
                macs: &self.shared.macs,
                ports,
                now,
                coalesce,
            };
            let copy = Copy {
                in_port,
                in_rx,
                start: fstart,
                len,
                orig: &key,
                state,
                offs: &offs,
            };
            let (rx, out) = (&mut self.rx, &mut self.out);
            plan(&ctx, a, state, &info, |e| {
                out.execute(e, rx, ports, pipe, &copy)
            });
        }
    }
}

impl Out {
    /// Executes one emit of the pipeline's answer for the copy `c`.
    fn execute(&mut self, e: Emit, rx: &mut [u8], ports: &PortSet, pipe: &Pipeline, c: &Copy<'_>) {
        let port = match e {
            Emit::Refused(r) => {
                if r == DropReason::NoSuchPort {
                    pipe.count_drop(r);
                }
                c.in_port.counters.drop(PortDrop::Pipeline(r));
                return;
            }
            Emit::Tap { port, .. }
            | Emit::Tunnel { port, .. }
            | Emit::TooBig { port, .. }
            | Emit::Drop { port, .. } => port,
        };
        let Some(out) = ports.get(port) else {
            // The plan saw the same port set: not reached.
            return;
        };
        let frame: &[u8] = if c.in_rx {
            &rx[c.start..c.start + c.len]
        } else {
            &self.tx[c.start..c.start + c.len]
        };
        out.capture(frame, Direction::Tx);
        match e {
            Emit::Drop { reason, .. } => out.counters.drop(PortDrop::Io(reason.into())),
            Emit::TooBig { mtu, .. } => {
                out.counters.drop(PortDrop::Io(IoDrop::TooBig));
                self.too_big(rx, c, mtu);
            }
            Emit::Tap { write, .. } => {
                let PortDev::Tap(t) = &out.dev else { return };
                match write {
                    TapWrite::Coalesce => {
                        // Decapsulated (or plain) frame: coalesce TCP segments of one flow.
                        let rx: &[u8] = rx;
                        let g = match self.gro.iter().position(|g| g.port == port) {
                            Some(g) => g,
                            None => {
                                let g = self.gro.iter().position(|g| g.port == 0).unwrap_or(0);
                                if self.gro[g].port != 0 {
                                    // All in use: write out the first one's frames and take it.
                                    let old = ports.get(self.gro[g].port);
                                    self.gro[g]
                                        .co
                                        .flush_with(|h, f| tap_write_parts(old, h, f, rx));
                                }
                                self.gro[g].port = port;
                                g
                            }
                        };
                        // A frame in the receive buffer is held by reference (its payload
                        // stays there until the frame is written or the buffer released).
                        let at = c.in_rx.then_some(c.start);
                        self.gro[g]
                            .co
                            .push_with(frame, at, |h, f| tap_write_parts(Some(out), h, f, rx));
                    }
                    TapWrite::Whole => {
                        // Frames of this port held for coalescing go first, so that a flow
                        // mixing plain and offloaded frames stays in order.
                        if let Some(g) = self.gro.iter_mut().find(|g| g.port == port) {
                            let rx: &[u8] = rx;
                            g.co.flush_with(|h, f| tap_write_parts(Some(out), h, f, rx));
                            g.port = 0;
                        }
                        tap_write(Some(out), &self.cur, frame);
                    }
                    // No offloads on this TAP: `tap_write` leaves the (all-zero) header out.
                    TapWrite::Plain => tap_write(Some(out), &self.cur, frame),
                    TapWrite::Segment => {
                        let Ok(mut seg) = Segmenter::new(&self.cur, frame) else {
                            out.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                            return;
                        };
                        while let Some(Ok(n)) = seg.write_next(&mut self.aux) {
                            let f = &self.aux[..n];
                            match t.send(flow_queue(f, t.queue_count()), f) {
                                Ok(_) => out.counters.tx(n),
                                Err(e) => out.counters.drop(PortDrop::Io(IoDrop::tx(&e))),
                            }
                        }
                    }
                }
            }
            Emit::Tunnel { dst, vni, .. } => {
                let Ok(seg) = Segmenter::new(&self.cur, frame) else {
                    out.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                    return;
                };
                // The tunnel-GSO underlay port, when the peer's next hop is known: the
                // whole super-frame in one write, the kernel cuts it.
                if let PortDev::Udp(u) = &out.dev
                    && let Some(ul) = &u.sockets.underlay
                    && let IpAddr::V4(peer) = dst
                    && let Some(hop) = ul.neigh.lookup(peer)
                {
                    let segments = seg.remaining();
                    if c.in_rx {
                        // The headers go into the headroom in front of the frame, which in
                        // a GRO train is the previous datagram: send what references it.
                        self.release(ports, rx);
                    }
                    let buf: &mut [u8] = if c.in_rx { rx } else { &mut self.tx };
                    let ttl = out.tunnel.as_ref().map_or(64, |t| t.ttl);
                    let tx = UnderlayTx {
                        ul,
                        header: &u.header,
                        hop,
                        vni,
                        ttl,
                        segments,
                    };
                    if tx.send(
                        buf,
                        c.start,
                        c.len,
                        c.offs.l3 as usize,
                        &self.cur,
                        out,
                        self.id,
                    ) {
                        return;
                    }
                }
                let frame: &[u8] = if c.in_rx {
                    &rx[c.start..c.start + c.len]
                } else {
                    &self.tx[c.start..c.start + c.len]
                };
                let Ok(seg) = Segmenter::new(&self.cur, frame) else {
                    out.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                    return;
                };
                let at = FrameAt {
                    buf: if c.in_rx { BUF_RX } else { BUF_TX },
                    start: c.start,
                };
                let bufs: [&[u8]; 2] = [rx, &self.tx];
                let q = &mut self.txq;
                match &out.dev {
                    PortDev::Udp(_) => send_udp(q, self.id, ports, out, seg, dst, vni, at, &bufs),
                    PortDev::Ipip(_) => send_ipip(q, ports, out, seg, dst, at, &bufs),
                    PortDev::Tap(_) => {}
                }
            }
            Emit::Refused(_) => {}
        }
    }

    /// Writes out every coalesced frame held for the TAPs (their spans in `rx`).
    pub(super) fn flush_gro(&mut self, ports: &PortSet, rx: &[u8]) {
        for g in self.gro.iter_mut().filter(|g| g.port != 0) {
            let out = ports.get(g.port);
            g.co.flush_with(|h, f| tap_write_parts(out, h, f, rx));
            g.port = 0;
        }
    }

    /// Before the receive buffer `rx` is read into again: sends the queued segments
    /// whose payload is in it, and has the coalescers copy the payloads they hold by
    /// reference (so a super-frame keeps growing across reads; one that cannot be
    /// copied is written out).
    pub(super) fn release(&mut self, ports: &PortSet, rx: &[u8]) {
        for g in self.gro.iter_mut().filter(|g| g.port != 0) {
            if g.co.holds_spans() {
                let out = ports.get(g.port);
                g.co.materialize(rx, |h, f| tap_write_parts(out, h, f, rx));
            }
        }
        if self.txq.pins(BUF_RX) {
            flush_tx(&mut self.txq, ports, &[rx, &self.tx]);
        }
    }

    /// Before the copy buffer is overwritten: sends the queued segments whose payload
    /// is in it (the coalescers never hold it by reference).
    pub(super) fn release_tx(&mut self, ports: &PortSet, rx: &[u8]) {
        if self.txq.pins(BUF_TX) {
            flush_tx(&mut self.txq, ports, &[rx, &self.tx]);
        }
    }

    /// Answers the sender of a frame too big for a tunnel through its TAP.
    ///
    /// The reply is addressed from the frame as it arrived, not as the pipeline
    /// rewrote it (in l3 mode the flows set the next hop's MACs and decrement the TTL,
    /// and a service flow may rewrite the destination): the rewrites are undone in place,
    /// the reply is built, and they are done again (a flood sends the same buffer to
    /// further ports). So the reply goes to the sender's MAC from the MAC the sender
    /// addressed (its gateway in l3 mode), and quotes the header the sender's kernel
    /// knows, which it needs to find the socket and the route.
    fn too_big(&mut self, rx: &mut [u8], c: &Copy<'_>, mtu: u16) {
        let PortDev::Tap(tap) = &c.in_port.dev else {
            return;
        };
        let buf: &mut [u8] = if c.in_rx { rx } else { &mut self.tx };
        let frame = &mut buf[c.start..c.start + c.len];
        let restored = weft_pipeline::commit::commit_at(frame, c.offs, c.state, c.orig).is_ok();
        let reply = if restored {
            too_big_reply(frame, mtu, &mut self.aux)
        } else {
            None
        };
        // The rewrites succeeded before, so they do again.
        let _ = weft_pipeline::commit::commit_at(frame, c.offs, c.orig, c.state);
        if let Some(n) = reply {
            match tap.send(self.id, &self.aux[..n]) {
                Ok(_) => c.in_port.counters.tx(n),
                Err(e) => c.in_port.counters.drop(PortDrop::Io(IoDrop::tx(&e))),
            }
        }
    }
}

/// One super-frame toward a peer through the tunnel-GSO underlay port.
struct UnderlayTx<'a> {
    ul: &'a Underlay,
    header: &'a encap::TunnelHeader,
    hop: NextHop,
    vni: u32,
    ttl: u8,
    /// Datagrams the kernel will cut it into (the tunnel port's `tx` counts these).
    segments: usize,
}

/// Outer Ethernet + IPv4 + UDP in front of the tunnel header.
const UNDERLAY_OUTER: usize = ETH_LEN + 20 + 8;

impl UnderlayTx<'_> {
    /// Writes the outer Ethernet, IPv4, UDP and tunnel headers into the headroom in front
    /// of the frame at `buf[start..start + len]` (its IP header at `l3`, `cur` its offload
    /// header), and the whole with its 24-byte `virtio_net_hdr` to the underlay TAP in one
    /// `writev`: the payload is not copied. False when the frame cannot go this way (no
    /// headroom, an outer packet over 64 KB): the caller sends it through the socket.
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        buf: &mut [u8],
        start: usize,
        len: usize,
        l3: usize,
        cur: &VirtioNetHdr,
        out: &PortIo,
        id: usize,
    ) -> bool {
        let hl = self.header.len();
        let outer = UNDERLAY_OUTER + hl;
        let ip_total = outer - ETH_LEN + len;
        if start < outer || ip_total > usize::from(u16::MAX) || start + len > buf.len() {
            return false;
        }
        let sport = encap::PortRange::LINUX_DEFAULT.port_for_hash(
            encap::flow_hash::flow_hash_ethernet(&buf[start..start + len], 0),
        );
        // The offload header first, while the inner frame's offsets are at hand.
        let gso = cur.gso_kind() != VirtioNetHdr::GSO_NONE;
        let csum = cur.flags & VirtioNetHdr::F_NEEDS_CSUM != 0;
        let at = |o: u16| u16::try_from(outer + usize::from(o)).ok();
        let vh = if gso || csum {
            let l4 = usize::from(cur.csum_start);
            // The headers' length, computed (the pod's hdr_len is a hint, not trusted).
            let l4_len = match buf.get(start + l4 + 12) {
                Some(b) if cur.csum_offset == 16 => usize::from(b >> 4) * 4,
                Some(_) => 8,
                None => return false,
            };
            let (Some(csum_start), Some(hdr_len), Ok(inner_nh)) = (
                at(cur.csum_start),
                at((l4 + l4_len) as u16),
                u16::try_from(outer + l3),
            ) else {
                return false;
            };
            TunnelVnetHdr {
                base: VirtioNetHdr {
                    csum_start,
                    hdr_len,
                    ..*cur
                },
                tunnel: gso.then_some(TunnelOffsets {
                    outer_v6: false,
                    outer_csum: false,
                    outer_th: (ETH_LEN + 20) as u16,
                    inner_nh,
                }),
            }
        } else {
            TunnelVnetHdr::default()
        };
        let mut vnet = [0u8; VIRTIO_NET_HDR_TNL_LEN];
        if vh.emit(&mut vnet).is_err() {
            return false;
        }
        if let Err(r) = self.header.encapsulate(buf, start, len, self.vni) {
            out.counters
                .drop_n(PortDrop::Encap(r), self.segments.max(1));
            return true;
        }
        let o = start - outer;
        let h = &mut buf[o..o + UNDERLAY_OUTER];
        h[..6].copy_from_slice(&self.hop.dst_mac);
        h[6..12].copy_from_slice(&self.hop.src_mac);
        h[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = &mut h[ETH_LEN..ETH_LEN + 20];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&(ip_total as u16).to_be_bytes());
        ip[4..6].fill(0);
        // DF: the plan checked every segment against the tunnel's MTU.
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
        ip[8] = self.ttl;
        ip[9] = encap::IPPROTO_UDP;
        ip[10..12].fill(0);
        ip[12..16].copy_from_slice(&self.ul.local.octets());
        ip[16..20].copy_from_slice(&self.hop.peer.octets());
        let c = encap::checksum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp = &mut h[ETH_LEN + 20..];
        udp[..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&self.ul.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&((ip_total - 20) as u16).to_be_bytes());
        udp[6..8].fill(0);
        let bytes = outer + len;
        match self.ul.tap.send(id, &vnet, &buf[o..start + len]) {
            Ok(_) => out.counters.tx_n(self.segments.max(1), bytes),
            Err(e) => out
                .counters
                .drop_n(PortDrop::Io(IoDrop::tx(&e)), self.segments.max(1)),
        }
        true
    }
}

/// Queues the segments of a frame to a VXLAN/Geneve peer, behind the port's tunnel
/// header: one message per UDP GSO train (or per datagram without GSO). The segments of
/// a super-frame are iovecs: tunnel header and inner headers in the queue's arena, the
/// payload where the frame lies (`at`); a frame that is not cut is copied whole.
#[allow(clippy::too_many_arguments)]
fn send_udp(
    txq: &mut TxQueue,
    id: usize,
    ports: &PortSet,
    out: &PortIo,
    mut seg: Segmenter<'_>,
    dst: IpAddr,
    vni: u32,
    at: FrameAt,
    bufs: &[&[u8]; 2],
) {
    let PortDev::Udp(u) = &out.dev else { return };
    let sock = &u.sockets[id % u.sockets.len()];
    let to = SocketAddr::new(dst, u.dst_port);
    let fd = sock.send_fd();
    let hl = u.header.len();
    let Some(first) = seg.next_len() else { return };
    let dgram = hl + first;
    // Whether the segments have a payload to leave in place (a GSO frame).
    let split = seg.next_head_len().is_some_and(|h| h < first);
    while seg.next_len().is_some() {
        let per = if txq.gso() {
            (GSO_MAX_BYTES / dgram).clamp(1, GSO_MAX_SEGS)
        } else {
            1
        };
        let n = per.min(seg.remaining());
        let (bytes, parts) = match seg.next_head_len() {
            Some(h) if split => ((hl + h) * n, 2 * n),
            _ => (dgram * n, 1),
        };
        if !txq.has_room_parts(bytes, parts) {
            flush_tx(txq, ports, bufs);
        }
        let off = txq.used();
        let mut w = 0;
        let mut count = 0;
        let mut refused = None;
        if split {
            // Headers into the arena (tunnel header in front of each), then the parts.
            let mut pieces = [(0usize, 0usize, 0usize); GSO_MAX_SEGS];
            let free = txq.free();
            while count < per {
                let (Some(l), Some(h)) = (seg.next_len(), seg.next_head_len()) else {
                    break;
                };
                if hl + l > dgram || w + hl + h > free.len() {
                    break;
                }
                let Some(Ok(p)) = seg.write_head(&mut free[w + hl..]) else {
                    break;
                };
                if let Err(r) = u.header.encapsulate(free, w + hl, p.head, vni) {
                    refused = Some(r);
                    break;
                }
                pieces[count] = (hl + p.head, p.payload.start, p.payload.len());
                w += hl + p.head;
                count += 1;
                if hl + l < dgram {
                    break;
                }
            }
            let mut a = off;
            for &(head, from, len) in &pieces[..count] {
                txq.add_part(Part::arena(a, head));
                if len > 0 {
                    txq.add_part(Part::buf(at.buf, at.start + from, len));
                }
                a += head;
            }
        } else {
            let free = txq.free();
            while count < per {
                let Some(l) = seg.next_len() else { break };
                if hl + l > dgram || w + hl + l > free.len() {
                    break;
                }
                match seg.write_next(&mut free[w + hl..]) {
                    Some(Ok(_)) => {}
                    _ => break,
                }
                if let Err(r) = u.header.encapsulate(free, w + hl, l, vni) {
                    refused = Some(r);
                    break;
                }
                w += hl + l;
                count += 1;
                if hl + l < dgram {
                    break;
                }
            }
            if count > 0 {
                txq.add_part(Part::arena(off, w));
            }
        }
        if count == 0 {
            txq.discard_parts();
            let why = match refused {
                Some(r) => PortDrop::Encap(r),
                None => PortDrop::Io(IoDrop::BadOffload),
            };
            out.counters.drop_n(why, seg.remaining().max(1));
            return;
        }
        let msg = TxMsg {
            fd,
            to,
            off,
            len: 0,
            seg: dgram,
            count,
            ofport: out.ofport,
        };
        if !txq.push_parts(msg, off + w) {
            out.counters.drop_n(PortDrop::Io(IoDrop::TxError), count);
        }
    }
}

/// Queues the segments of a frame to an IP-in-IP peer: each segment's headers written
/// into the transmit queue with the Ethernet header where the outer IPv4 header goes,
/// which the port's template (built once) then writes over; the payload of a
/// super-frame's segment stays where the frame lies (`at`), a second iovec.
fn send_ipip(
    txq: &mut TxQueue,
    ports: &PortSet,
    out: &PortIo,
    mut seg: Segmenter<'_>,
    dst: IpAddr,
    at: FrameAt,
    bufs: &[&[u8]; 2],
) {
    let PortDev::Ipip(t) = &out.dev else { return };
    let IpAddr::V4(dst) = dst else {
        // The plan checked the family: not reached.
        out.counters.drop(PortDrop::Io(IoDrop::TunnelFamily));
        return;
    };
    const OUTER: usize = encap::ipip::HEADROOM;
    while let (Some(l), Some(h)) = (seg.next_len(), seg.next_head_len()) {
        if !txq.has_room_parts(OUTER + h, 2) {
            flush_tx(txq, ports, bufs);
        }
        let off = txq.used();
        let free = txq.free();
        let eth = OUTER - ETH_LEN;
        let Some(Ok(p)) = seg.write_head(&mut free[eth..]) else {
            out.counters
                .drop_n(PortDrop::Io(IoDrop::BadOffload), seg.remaining().max(1));
            return;
        };
        let inner_len = l.saturating_sub(ETH_LEN);
        match t.template.encapsulate_head(
            free,
            OUTER,
            p.head.saturating_sub(ETH_LEN),
            inner_len,
            dst,
        ) {
            Ok(r) => {
                txq.add_part(Part::arena(off + r.start, r.len()));
                if !p.payload.is_empty() {
                    txq.add_part(Part::buf(
                        at.buf,
                        at.start + p.payload.start,
                        p.payload.len(),
                    ));
                }
                let msg = TxMsg {
                    fd: t.v4.fd(),
                    to: SocketAddr::new(IpAddr::V4(dst), 0),
                    off: off + r.start,
                    len: 0,
                    seg: 0,
                    count: 1,
                    ofport: out.ofport,
                };
                if !txq.push_parts(msg, off + r.end) {
                    out.counters.drop(PortDrop::Io(IoDrop::TxError));
                }
            }
            Err(r) => {
                // This segment and the ones after it, counted as what they are: refused
                // by the encapsulation (not by a decapsulation).
                out.counters.drop_n(PortDrop::Encap(r), seg.remaining() + 1);
                return;
            }
        }
    }
}

/// The TAP queue to write a frame to: Weft's one symmetric flow hash (encap's, the one
/// that picks a tunnel's UDP source port), so that both directions of a flow always use
/// the same queue; frames that are not IP go to queue 0.
///
/// A multi-queue TAP steers what the pod sends to the queue that last wrote that flow
/// (the kernel's automq flow table). Writing each flow to a fixed queue therefore keeps
/// the flow on one worker in both directions; writing to the receiving worker's own
/// queue would move the pod's side of a flow to whichever worker got the peer's last
/// packet, and a flow that changes worker mid-stream is reordered.
#[inline]
fn flow_queue(frame: &[u8], queues: usize) -> usize {
    if queues <= 1 {
        return 0;
    }
    match encap::flow_hash::flow_hash_ethernet_ip(frame, 0) {
        Some(h) => ((u64::from(h) * queues as u64) >> 32) as usize,
        None => 0,
    }
}

/// Sends what the transmit queue holds and counts it on the ports; `bufs` are the
/// receive and copy buffers ([`BUF_RX`], [`BUF_TX`]) that queued payloads are in.
pub(super) fn flush_tx(txq: &mut TxQueue, ports: &PortSet, bufs: &[&[u8]]) {
    if txq.is_empty() {
        return;
    }
    txq.flush(bufs, |m, o| {
        let Some(p) = ports.get(m.ofport) else { return };
        match o {
            TxOutcome::Sent { count, bytes } => p.counters.tx_n(count, bytes),
            TxOutcome::Failed { count, full } => {
                let why = if full {
                    IoDrop::TxQueueFull
                } else {
                    IoDrop::TxError
                };
                p.counters.drop_n(PortDrop::Io(why), count)
            }
        }
    });
}

/// Writes a coalesced frame (its head, then its payloads at their spans in `rx`) with
/// its `virtio_net_hdr` to a TAP port's queue in one `writev` (a port deleted meanwhile:
/// dropped; a span outside `rx`, which the worker never makes: `tx_error`).
fn tap_write_parts(out: Option<&Arc<PortIo>>, hdr: &VirtioNetHdr, f: Coalesced<'_>, rx: &[u8]) {
    if f.spans.is_empty() {
        return tap_write(out, hdr, f.head);
    }
    let Some(out) = out else { return };
    let PortDev::Tap(t) = &out.dev else { return };
    let mut parts: [&[u8]; 1 + MAX_SPANS] = [&[]; 1 + MAX_SPANS];
    parts[0] = f.head;
    let mut n = 1;
    for s in f.spans.iter().take(MAX_SPANS) {
        let Some(b) = s.at.checked_add(s.len).and_then(|e| rx.get(s.at..e)) else {
            out.counters.drop(PortDrop::Io(IoDrop::TxError));
            return;
        };
        parts[n] = b;
        n += 1;
    }
    let mut h = [0u8; VNET_HDR_LEN];
    let _ = hdr.emit(&mut h);
    match t.send_parts(flow_queue(f.head, t.queue_count()), &h, &parts[..n]) {
        Ok(_) => out.counters.tx(f.len()),
        Err(e) => out.counters.drop(PortDrop::Io(IoDrop::tx(&e))),
    }
}

/// Writes a frame with its `virtio_net_hdr` to a TAP port's queue (a port deleted
/// meanwhile: dropped).
fn tap_write(out: Option<&Arc<PortIo>>, hdr: &VirtioNetHdr, frame: &[u8]) {
    let Some(out) = out else { return };
    let PortDev::Tap(t) = &out.dev else { return };
    let mut h = [0u8; VNET_HDR_LEN];
    let _ = hdr.emit(&mut h);
    match t.send_with(flow_queue(frame, t.queue_count()), &h, frame) {
        Ok(_) => out.counters.tx(frame.len()),
        Err(e) => out.counters.drop(PortDrop::Io(IoDrop::tx(&e))),
    }
}

#[cfg(test)]
mod tests {
    use super::flow_queue;

    fn tcp4(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, vlan: bool) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 40];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        ip[20..22].copy_from_slice(&sp.to_be_bytes());
        ip[22..24].copy_from_slice(&dp.to_be_bytes());
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn flow_queue_is_symmetric_spread_and_sees_through_a_vlan_tag() {
        let a = tcp4([198, 19, 1, 2], [198, 19, 2, 2], 40000, 80, false);
        let b = tcp4([198, 19, 2, 2], [198, 19, 1, 2], 80, 40000, false);
        for q in [2, 3, 4, 8] {
            assert_eq!(
                flow_queue(&a, q),
                flow_queue(&b, q),
                "both directions, {q} queues"
            );
            assert!(flow_queue(&a, q) < q);
        }
        // The same flow behind a tag hashes alike (the old hash read raw offsets).
        let tagged = tcp4([198, 19, 1, 2], [198, 19, 2, 2], 40000, 80, true);
        assert_eq!(flow_queue(&tagged, 4), flow_queue(&a, 4));
        // Flows spread over the queues.
        let mut seen = [false; 4];
        for sp in 0..64u16 {
            seen[flow_queue(
                &tcp4([198, 19, 1, 2], [198, 19, 2, 2], 1000 + sp, 80, false),
                4,
            )] = true;
        }
        assert!(seen.iter().all(|&s| s), "{seen:?}");
        // Not IP, or one queue: queue 0.
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(flow_queue(&arp, 4), 0);
        assert_eq!(flow_queue(&a, 1), 0);
    }
}
