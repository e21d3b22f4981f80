//! A worker: one thread, one `mio` poll, its own cache and buffers.
//!
//! Each worker polls its own queue of every TAP device and its own UDP socket of every
//! VXLAN/Geneve port (IP-in-IP's raw sockets are read by worker 0 only, since every raw
//! socket receives a copy of every packet). When a descriptor is readable the worker
//! drains up to [`BATCH`] packets from it before it looks at the next one, so one busy
//! port cannot starve the others; a descriptor with more waiting is revisited at once.
//!
//! A packet is read into the worker's receive buffer, parsed into a `FlowKey`, resolved
//! through the worker's flow cache against the pipeline snapshot loaded for this
//! wake-up, and sent to each output. No allocation, lock or log per packet: drops are
//! counted by reason on the port they came in on or were going to.
//!
//! The fast path (offloads on, see DESIGN.md "Offloads"):
//!
//! - TAP queues carry a `virtio_net_hdr`: a pod's TCP stack hands over 64 KB
//!   super-frames, which go through the pipeline once and are cut into MTU-sized
//!   segments (`encap::offload::Segmenter`) only on the way into a tunnel, each written
//!   behind its tunnel header straight into the transmit queue.
//! - Tunnel output is queued ([`TxQueue`]) and sent with one `sendmmsg` per batch; the
//!   segments of one super-frame to one peer go as a single UDP GSO train (UDP_SEGMENT).
//! - Tunnel input is read with `recvmmsg`, up to [`RX_MSGS`] buffers at a time, each of
//!   which may be a UDP GRO train that is split by its segment size.
//! - Decapsulated TCP segments bound for a TAP are coalesced per flow into super-frames
//!   (`encap::offload::Coalescer`) and written with a GSO `virtio_net_hdr`, so the pod's
//!   stack takes one packet per 64 KB; whatever is held is flushed at the end of each
//!   batch.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use weft_pipeline::drop::DropReason;
use weft_pipeline::flow_key::{Field, FlowKey, TunnelMeta, u128_to_ip};
use weft_pipeline::{DpAction, FlowCache, Forward, Pipeline};

use encap::offload::{Coalescer, SLOT_LEN, Segmenter, VirtioNetHdr};

use super::batch::{
    DGRAM_MAX, GSO_MAX_BYTES, GSO_MAX_SEGS, RX_MSGS, RxBatch, TxMsg, TxOutcome, TxQueue,
};
use super::capture::Direction;
use super::io::{IoDrop, PortDev, PortDrop, PortIo, PortSet};
use super::{Shared, SwitchOptions, WorkerStats};
use crate::port::tap::VNET_HDR_LEN;
use weft_pipeline::icmp::too_big_reply;

/// Packets drained from one descriptor per turn.
pub const BATCH: usize = 64;
/// Bytes kept free in front of every received frame (decapsulation of IP-in-IP puts an
/// Ethernet header there).
pub const HEADROOM: usize = 128;
/// Largest frame or datagram read: a 64 KB TSO super-frame with its Ethernet header.
pub const FRAME_MAX: usize = DGRAM_MAX;
/// One receive slot: headroom and a frame or datagram.
const SLOT: usize = HEADROOM + FRAME_MAX;
const BUF_LEN: usize = SLOT;
const ETH_LEN: usize = 14;
/// Smallest `gso_size` honoured on a super-frame from a TAP: Linux's TCP never sends a
/// smaller segment (TCP_MIN_SND_MSS), and its UDP GSO allows at most 128 segments; a
/// smaller one would turn one read into thousands of datagrams.
const MIN_GSO_SIZE: u16 = 48;
/// TAP ports whose inbound segments are coalesced at the same time (per worker).
const GRO_TAPS: usize = 4;
/// Flows held per TAP port.
const GRO_FLOWS: usize = 4;
const WAKER: Token = Token(usize::MAX);

/// What a registered descriptor is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// The worker's TAP queue, or its UDP socket.
    Main = 0,
    /// IP-in-IP protocol 4.
    Ipip4 = 1,
    /// IP-in-IP protocol 41.
    Ipip6 = 2,
}

fn token(ofport: u32, sub: Sub) -> Token {
    Token(((ofport as usize) << 2) | sub as usize)
}

fn untoken(t: Token) -> (u32, Sub) {
    let sub = match t.0 & 3 {
        1 => Sub::Ipip4,
        2 => Sub::Ipip6,
        _ => Sub::Main,
    };
    ((t.0 >> 2) as u32, sub)
}

/// The coalescer of one TAP port.
struct Gro {
    /// The TAP port (0: free).
    port: u32,
    co: Coalescer<Box<[u8]>, GRO_FLOWS>,
}

/// One worker's state.
pub(crate) struct Worker {
    id: usize,
    shared: Arc<Shared>,
    poll: Poll,
    cache: FlowCache,
    stats: Arc<WorkerStats>,
    ports: Arc<PortSet>,
    registered: Vec<(RawFd, Token)>,
    pending: Vec<Token>,
    /// Receive slots: `RX_MSGS` of [`SLOT`] bytes (a TAP read uses the first).
    rx: Box<[u8]>,
    tx: Box<[u8]>,
    aux: Box<[u8]>,
    /// The `virtio_net_hdr` of the frame being processed (all zero: a plain frame).
    cur: VirtioNetHdr,
    rxb: RxBatch,
    txq: TxQueue,
    /// Coalescers for the TAP ports (empty with offloads off).
    gro: Vec<Gro>,
    pin_cpu: bool,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        shared: Arc<Shared>,
        poll: Poll,
        stats: Arc<WorkerStats>,
        options: &SwitchOptions,
    ) -> Worker {
        let gro = if options.offloads {
            (0..GRO_TAPS)
                .map(|_| Gro {
                    port: 0,
                    co: Coalescer::new(vec![0u8; GRO_FLOWS * SLOT_LEN].into_boxed_slice()),
                })
                .collect()
        } else {
            Vec::new()
        };
        Worker {
            id,
            shared,
            poll,
            cache: FlowCache::for_lane(options.cache_entries, id),
            stats,
            ports: Arc::new(PortSet::default()),
            registered: Vec::new(),
            pending: Vec::with_capacity(1024),
            rx: vec![0u8; RX_MSGS * SLOT].into_boxed_slice(),
            tx: vec![0u8; BUF_LEN].into_boxed_slice(),
            aux: vec![0u8; BUF_LEN].into_boxed_slice(),
            cur: VirtioNetHdr::default(),
            rxb: RxBatch::default(),
            txq: TxQueue::default(),
            gro,
            pin_cpu: options.pin_cpus,
        }
    }

    /// Pins this thread to the `id`-th CPU this process may run on.
    fn pin(&self) {
        // SAFETY: cpu_set_t is plain old data; the calls get valid pointers and sizes.
        unsafe {
            let mut allowed: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0
            {
                return;
            }
            let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &allowed))
                .collect();
            if cpus.is_empty() {
                return;
            }
            let cpu = cpus[self.id % cpus.len()];
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) == 0 {
                tracing::info!(worker = self.id, cpu, "worker pinned");
            }
        }
    }

    /// Registers the descriptors of the current port set (after a change).
    fn sync_ports(&mut self) {
        let current = self.shared.ports.load_full();
        if current.version == self.ports.version && !self.registered.is_empty() {
            return;
        }
        for (fd, _) in self.registered.drain(..) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        }
        self.pending.clear();
        for p in current.iter() {
            let mut fds: [(RawFd, Sub); 2] = [(-1, Sub::Main); 2];
            match &p.dev {
                PortDev::Tap(t) => fds[0] = (t.queue_fd(self.id), Sub::Main),
                PortDev::Udp(u) => fds[0] = (u.sockets[self.id % u.sockets.len()].fd(), Sub::Main),
                PortDev::Ipip(t) if self.id == 0 => {
                    fds[0] = (t.v4.fd(), Sub::Ipip4);
                    fds[1] = (t.v6.fd(), Sub::Ipip6);
                }
                PortDev::Ipip(_) => {}
            }
            for (fd, sub) in fds {
                // A socket shared by several tunnel ports is polled once, under the
                // first port's token; `PortSet::demux` finds the right port per packet.
                if fd < 0 || self.registered.iter().any(|(f, _)| *f == fd) {
                    continue;
                }
                let tok = token(p.ofport, sub);
                if self
                    .poll
                    .registry()
                    .register(&mut SourceFd(&fd), tok, Interest::READABLE)
                    .is_ok()
                {
                    self.registered.push((fd, tok));
                }
            }
        }
        if self.pending.capacity() < self.registered.len() {
            self.pending.reserve(self.registered.len());
        }
        self.ports = current;
    }

    /// Runs until the switch stops.
    pub(crate) fn run(mut self) {
        if self.pin_cpu {
            self.pin();
        }
        let mut events = Events::with_capacity(256);
        let mut again: Vec<Token> = Vec::with_capacity(1024);
        self.sync_ports();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let timeout = if self.pending.is_empty() {
                Duration::from_millis(250)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(worker = self.id, "poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            self.sync_ports();
            let pipe = self.shared.pipeline.load_full();
            let now = self.shared.now();
            again.clear();
            for ev in events.iter() {
                if ev.token() != WAKER {
                    again.push(ev.token());
                }
            }
            again.append(&mut self.pending);
            for &tok in again.iter() {
                if self.drain(tok, &pipe, now) && !self.pending.contains(&tok) {
                    self.pending.push(tok);
                }
            }
            self.stats
                .cache_hits
                .store(self.cache.hits(), Ordering::Relaxed);
            self.stats
                .cache_misses
                .store(self.cache.misses(), Ordering::Relaxed);
        }
    }

    /// Reads up to a batch from one descriptor; true when more may be waiting. What the
    /// batch queued for the tunnels is sent, and what it held for coalescing is written
    /// to the TAPs, before it returns.
    fn drain(&mut self, tok: Token, pipe: &Pipeline, now: u64) -> bool {
        let (ofport, sub) = untoken(tok);
        // One reference count for the whole batch; packets borrow from it.
        let ports = Arc::clone(&self.ports);
        let Some(port) = ports.get(ofport) else {
            return false;
        };
        let more = match &port.dev {
            PortDev::Udp(_) => self.drain_udp(&ports, port, ofport, pipe, now),
            _ => self.drain_frames(&ports, port, sub, pipe, now),
        };
        self.flush_gro(&ports);
        flush_tx(&mut self.txq, &ports);
        more
    }

    /// TAP queues and IP-in-IP sockets: one frame per read.
    fn drain_frames(
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
                                    self.cur = h;
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
                            self.cur = VirtioNetHdr::default();
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
    fn drain_udp(
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
            self.cur = VirtioNetHdr::default();
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

    /// Runs one frame (`rx[start..start + len]`) through the pipeline and out.
    #[allow(clippy::too_many_arguments)]
    fn process(
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
        let key = match FlowKey::extract(&self.rx[start..start + len], in_port.ofport, tun) {
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
        let single = n == 1 && matches!(actions[0], DpAction::Output { .. });
        for a in &actions[..n] {
            let state = &states[a.state()];
            // The frame as this output sees it, with the header rewrites committed.
            let (buf_is_rx, fstart) = if single {
                (true, start)
            } else {
                self.tx[HEADROOM..HEADROOM + len].copy_from_slice(&self.rx[start..start + len]);
                (false, HEADROOM)
            };
            {
                let buf: &mut [u8] = if buf_is_rx {
                    &mut self.rx
                } else {
                    &mut self.tx
                };
                if weft_pipeline::commit::commit(&mut buf[fstart..fstart + len], &key, state)
                    .is_err()
                {
                    in_port
                        .counters
                        .drop(PortDrop::Pipeline(DropReason::NoOutput));
                    continue;
                }
                // An offloaded frame's checksum field holds the pseudo-header sum, not a
                // full checksum: commit's incremental update is wrong for it, so after an
                // address or port rewrite it is computed again from the new addresses.
                if self.cur.flags & VirtioNetHdr::F_NEEDS_CSUM != 0
                    && [
                        Field::NwSrc,
                        Field::NwDst,
                        Field::Ipv6Src,
                        Field::Ipv6Dst,
                        Field::TpSrc,
                        Field::TpDst,
                    ]
                    .iter()
                    .any(|&f| key.get(f) != state.get(f))
                {
                    encap::offload::refresh_partial_checksum(
                        &self.cur,
                        &mut buf[fstart..fstart + len],
                    );
                }
            }
            match *a {
                DpAction::Output { port, .. } => self.emit(
                    ports, port, buf_is_rx, fstart, len, &key, state, None, in_port, pipe,
                ),
                DpAction::Normal { .. } => {
                    self.shared.macs.learn(pipe.ports(), state, now);
                    match weft_pipeline::normal::normal(&self.shared.macs, pipe.ports(), state, now)
                    {
                        Forward::Port { port, tun_dst } => {
                            let t = (tun_dst != 0).then_some(tun_dst);
                            self.emit(
                                ports, port, buf_is_rx, fstart, len, &key, state, t, in_port, pipe,
                            )
                        }
                        Forward::Flood => {
                            self.flood(ports, buf_is_rx, fstart, len, &key, state, in_port, pipe)
                        }
                        Forward::Drop(r) => in_port.counters.drop(PortDrop::Pipeline(r)),
                    }
                }
                DpAction::Flood { .. } => {
                    self.flood(ports, buf_is_rx, fstart, len, &key, state, in_port, pipe)
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn flood(
        &mut self,
        ports: &PortSet,
        buf_is_rx: bool,
        start: usize,
        len: usize,
        orig: &FlowKey,
        state: &FlowKey,
        in_port: &PortIo,
        pipe: &Pipeline,
    ) {
        for p in pipe.ports().flood_ports(state.in_port(), state.tun_id()) {
            if ports.get(p.number).is_some() {
                self.emit(
                    ports, p.number, buf_is_rx, start, len, orig, state, None, in_port, pipe,
                );
            }
        }
    }

    /// Sends the frame at `buf[start..start + len]` (`rx` or `tx`) out of `port`. The
    /// frame was parsed into `orig` and has been rewritten to `state`.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        ports: &PortSet,
        port: u32,
        buf_is_rx: bool,
        start: usize,
        len: usize,
        orig: &FlowKey,
        state: &FlowKey,
        tun_dst: Option<u128>,
        in_port: &PortIo,
        pipe: &Pipeline,
    ) {
        let Some(out) = ports.get(port) else {
            pipe.count_drop(DropReason::NoSuchPort);
            in_port
                .counters
                .drop(PortDrop::Pipeline(DropReason::NoSuchPort));
            return;
        };
        let id = self.id;
        let frame: &[u8] = if buf_is_rx {
            &self.rx[start..start + len]
        } else {
            &self.tx[start..start + len]
        };
        out.capture(frame, Direction::Tx);
        match &out.dev {
            PortDev::Tap(t) => {
                let plain = self.cur == VirtioNetHdr::default();
                if plain && t.vnet_hdr() && !self.gro.is_empty() {
                    // Decapsulated (or plain) frame: coalesce TCP segments of one flow.
                    let g = match self.gro.iter().position(|g| g.port == port) {
                        Some(g) => g,
                        None => {
                            let g = self.gro.iter().position(|g| g.port == 0).unwrap_or(0);
                            if self.gro[g].port != 0 {
                                // All in use: write out the first one's frames and take it.
                                let old = ports.get(self.gro[g].port);
                                self.gro[g].co.flush(|h, f| tap_write(old, h, f));
                            }
                            self.gro[g].port = port;
                            g
                        }
                    };
                    self.gro[g]
                        .co
                        .push(frame, |h, f| tap_write(Some(out), h, f));
                } else if t.vnet_hdr() {
                    // Frames of this port held for coalescing go first, so that a flow
                    // mixing plain and offloaded frames stays in order.
                    if let Some(g) = self.gro.iter_mut().find(|g| g.port == port) {
                        g.co.flush(|h, f| tap_write(Some(out), h, f));
                        g.port = 0;
                    }
                    tap_write(Some(out), &self.cur, frame);
                } else if plain {
                    // No offloads on this TAP: `tap_write` leaves the (all-zero) header out.
                    tap_write(Some(out), &self.cur, frame);
                } else {
                    // An offloaded frame for a TAP without offloads: segment it here.
                    let Ok(mut seg) = Segmenter::new(&self.cur, frame) else {
                        out.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                        return;
                    };
                    while let Some(Ok(n)) = seg.write_next(&mut self.aux) {
                        match t.send(flow_queue(&self.aux[..n], t.queue_count()), &self.aux[..n]) {
                            Ok(_) => out.counters.tx(n),
                            Err(_) => out.counters.drop(PortDrop::Io(IoDrop::TxError)),
                        }
                    }
                }
            }
            PortDev::Udp(u) => {
                let Some(conf) = out.tunnel.as_ref() else {
                    return;
                };
                let Ok(mut seg) = Segmenter::new(&self.cur, frame) else {
                    out.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                    return;
                };
                let first = seg.next_len().unwrap_or(len);
                if first.saturating_sub(ETH_LEN) > usize::from(conf.mtu) {
                    let from = (in_port, orig, state);
                    self.too_big(buf_is_rx, start, len, conf.mtu, from, out);
                    return;
                }
                let dst = match conf.remote {
                    Some(ip) => ip,
                    None => match tun_dst.or_else(|| {
                        let v = state.get(weft_pipeline::flow_key::Field::TunDst);
                        (v != 0).then_some(v)
                    }) {
                        Some(v) => u128_to_ip(v),
                        None => {
                            out.counters.drop(PortDrop::Io(IoDrop::NoTunnelDst));
                            return;
                        }
                    },
                };
                let vni = conf.key.unwrap_or((state.tun_id() & 0x00ff_ffff) as u32);
                let sock = &u.sockets[id % u.sockets.len()];
                if sock.local_addr().is_ipv6() != dst.is_ipv6() {
                    out.counters.drop(PortDrop::Io(IoDrop::TunnelFamily));
                    return;
                }
                let to = SocketAddr::new(dst, u.dst_port);
                let fd = sock.send_fd();
                let hl = u.header.len();
                let dgram = hl + first;
                // One message per GSO train (or per datagram without GSO).
                while seg.next_len().is_some() {
                    let per = if self.txq.gso() {
                        (GSO_MAX_BYTES / dgram).clamp(1, GSO_MAX_SEGS)
                    } else {
                        1
                    };
                    let want = dgram * per.min(seg.remaining());
                    if !self.txq.has_room(want) {
                        flush_tx(&mut self.txq, ports);
                    }
                    let off = self.txq.used();
                    let free = self.txq.free();
                    let (mut at, mut count) = (0, 0);
                    while count < per {
                        let Some(l) = seg.next_len() else { break };
                        if hl + l > dgram || at + hl + l > free.len() {
                            break;
                        }
                        match seg.write_next(&mut free[at + hl..]) {
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                        if u.header.encapsulate(free, at + hl, l, vni).is_err() {
                            break;
                        }
                        at += hl + l;
                        count += 1;
                        if hl + l < dgram {
                            break;
                        }
                    }
                    if count == 0 {
                        out.counters
                            .drop_n(PortDrop::Io(IoDrop::BadOffload), seg.remaining().max(1));
                        return;
                    }
                    let queued = self.txq.push(TxMsg {
                        fd,
                        to,
                        off,
                        len: at,
                        seg: dgram,
                        count,
                        ofport: port,
                    });
                    if !queued {
                        out.counters.drop_n(PortDrop::Io(IoDrop::TxError), count);
                    }
                }
            }
            PortDev::Ipip(t) => {
                let Some(conf) = out.tunnel.as_ref() else {
                    return;
                };
                let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
                if ethertype != 0x0800 && ethertype != 0x86dd {
                    out.counters.drop(PortDrop::Io(IoDrop::NotIp));
                    return;
                }
                let Ok(mut seg) = Segmenter::new(&self.cur, frame) else {
                    out.counters.drop(PortDrop::Io(IoDrop::BadOffload));
                    return;
                };
                let first = seg.next_len().unwrap_or(len);
                if first.saturating_sub(ETH_LEN) > usize::from(conf.mtu) {
                    let from = (in_port, orig, state);
                    self.too_big(buf_is_rx, start, len, conf.mtu, from, out);
                    return;
                }
                let dst = match conf.remote {
                    Some(IpAddr::V4(a)) => a,
                    _ => match u128_to_ip(
                        tun_dst
                            .unwrap_or_else(|| state.get(weft_pipeline::flow_key::Field::TunDst)),
                    ) {
                        IpAddr::V4(a) if !a.is_unspecified() => a,
                        IpAddr::V4(_) => {
                            out.counters.drop(PortDrop::Io(IoDrop::NoTunnelDst));
                            return;
                        }
                        IpAddr::V6(_) => {
                            out.counters.drop(PortDrop::Io(IoDrop::TunnelFamily));
                            return;
                        }
                    },
                };
                let tmpl = encap::IpipTemplate::new(
                    t.local,
                    dst,
                    encap::IpipParams {
                        ttl: conf.ttl,
                        decrement_inner_ttl: true,
                    },
                );
                // Each segment is written into the transmit queue with its Ethernet
                // header where the outer IPv4 header goes, which then overwrites it.
                const OUTER: usize = 20;
                while let Some(l) = seg.next_len() {
                    if !self.txq.has_room(OUTER + l) {
                        flush_tx(&mut self.txq, ports);
                    }
                    let off = self.txq.used();
                    let free = self.txq.free();
                    let eth = OUTER - ETH_LEN;
                    if !matches!(seg.write_next(&mut free[eth..]), Some(Ok(_))) {
                        out.counters
                            .drop_n(PortDrop::Io(IoDrop::BadOffload), seg.remaining().max(1));
                        return;
                    }
                    match tmpl.encapsulate(free, OUTER, l - ETH_LEN) {
                        Ok(r) => {
                            let queued = self.txq.push(TxMsg {
                                fd: t.v4.fd(),
                                to: SocketAddr::new(IpAddr::V4(dst), 0),
                                off: off + r.start,
                                len: r.len(),
                                seg: 0,
                                count: 1,
                                ofport: port,
                            });
                            if !queued {
                                out.counters.drop(PortDrop::Io(IoDrop::TxError));
                            }
                        }
                        Err(r) => {
                            // This segment and the ones after it.
                            out.counters.drop_n(PortDrop::Decap(r), seg.remaining() + 1);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Writes out every coalesced frame held for the TAPs.
    fn flush_gro(&mut self, ports: &PortSet) {
        for g in self.gro.iter_mut().filter(|g| g.port != 0) {
            let out = ports.get(g.port);
            g.co.flush(|h, f| tap_write(out, h, f));
            g.port = 0;
        }
    }

    /// Drops a frame too big for `out` and answers the sender through its TAP.
    ///
    /// `from` is the ingress port, the key the frame was parsed into and the state it
    /// was rewritten to. The reply is addressed from the frame as it arrived, not as the
    /// pipeline rewrote it (in l3 mode the flows set the next hop's MACs and decrement
    /// the TTL, and a service flow may rewrite the destination): the rewrites are undone
    /// in place, the reply is built, and they are done again (a flood sends the same
    /// buffer to further ports). So the reply goes to the sender's MAC from the MAC the
    /// sender addressed (its gateway in l3 mode), and quotes the header the sender's
    /// kernel knows, which it needs to find the socket and the route.
    fn too_big(
        &mut self,
        buf_is_rx: bool,
        start: usize,
        len: usize,
        mtu: u16,
        from: (&PortIo, &FlowKey, &FlowKey),
        out: &PortIo,
    ) {
        let (in_port, orig, state) = from;
        out.counters.drop(PortDrop::Io(IoDrop::TooBig));
        let PortDev::Tap(tap) = &in_port.dev else {
            return;
        };
        let buf: &mut [u8] = if buf_is_rx {
            &mut self.rx
        } else {
            &mut self.tx
        };
        let frame = &mut buf[start..start + len];
        let restored = weft_pipeline::commit::commit(frame, state, orig).is_ok();
        let reply = if restored {
            too_big_reply(frame, mtu, &mut self.aux)
        } else {
            None
        };
        // The rewrites succeeded before, so they do again.
        let _ = weft_pipeline::commit::commit(frame, orig, state);
        if let Some(n) = reply {
            match tap.send(self.id, &self.aux[..n]) {
                Ok(_) => in_port.counters.tx(n),
                Err(_) => in_port.counters.drop(PortDrop::Io(IoDrop::TxError)),
            }
        }
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

/// The TAP queue to write a frame to: a symmetric hash of its addresses and ports, so
/// that both directions of a flow always use the same queue.
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
    let g = |r: std::ops::Range<usize>| frame.get(r).unwrap_or(&[]);
    let (a, b, proto, l4) = match (frame.get(12), frame.get(13)) {
        (Some(0x08), Some(0x00)) => {
            let ihl = usize::from(frame.get(14).copied().unwrap_or(0x45) & 0x0f) * 4;
            (
                g(26..30),
                g(30..34),
                frame.get(23).copied().unwrap_or(0),
                14 + ihl,
            )
        }
        (Some(0x86), Some(0xdd)) => (
            g(22..38),
            g(38..54),
            frame.get(20).copied().unwrap_or(0),
            54,
        ),
        _ => return 0,
    };
    let fold = |s: &[u8]| {
        s.chunks(4).fold(0u32, |h, c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            h ^ u32::from_be_bytes(w)
        })
    };
    let mut h = fold(a) ^ fold(b);
    if proto == 6 || proto == 17 {
        let ports = g(l4..l4 + 4);
        if ports.len() == 4 {
            h ^= u32::from(u16::from_be_bytes([ports[0], ports[1]]))
                ^ u32::from(u16::from_be_bytes([ports[2], ports[3]]));
        }
    }
    h ^= u32::from(proto);
    // Mix, so that neighbouring addresses spread.
    h = h.wrapping_mul(0x9e37_79b9);
    ((u64::from(h) * queues as u64) >> 32) as usize
}

/// Sends what the transmit queue holds and counts it on the ports.
fn flush_tx(txq: &mut TxQueue, ports: &PortSet) {
    if txq.is_empty() {
        return;
    }
    txq.flush(|m, o| {
        let Some(p) = ports.get(m.ofport) else { return };
        match o {
            TxOutcome::Sent { count, bytes } => p.counters.tx_n(count, bytes),
            TxOutcome::Failed { count } => p.counters.drop_n(PortDrop::Io(IoDrop::TxError), count),
        }
    });
}

/// Writes a frame with its `virtio_net_hdr` to a TAP port's queue `id` (a port deleted
/// meanwhile: dropped).
fn tap_write(out: Option<&Arc<PortIo>>, hdr: &VirtioNetHdr, frame: &[u8]) {
    let Some(out) = out else { return };
    let PortDev::Tap(t) = &out.dev else { return };
    let mut h = [0u8; VNET_HDR_LEN];
    let _ = hdr.emit(&mut h);
    match t.send_with(flow_queue(frame, t.queue_count()), &h, frame) {
        Ok(_) => out.counters.tx(frame.len()),
        Err(_) => out.counters.drop(PortDrop::Io(IoDrop::TxError)),
    }
}

/// The worker's waker token (exported for the switch).
pub(crate) const WAKER_TOKEN: Token = WAKER;
