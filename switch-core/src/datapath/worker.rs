//! A worker: one thread, one `mio` poll, its own cache and buffers.
//!
//! Each worker polls its own queue of every TAP device and its own UDP socket of every
//! VXLAN/Geneve port (IP-in-IP's raw sockets are read by worker 0 only, since every raw
//! socket receives a copy of every packet). When a descriptor is readable the worker
//! drains up to [`BATCH`] packets from it before it looks at the next one, so one busy
//! port cannot starve the others; a descriptor with more waiting is revisited at once.
//!
//! A packet is read into the worker's receive buffer behind [`HEADROOM`] bytes (room for
//! the tunnel header that may be written in front of it without a copy), parsed into a
//! `FlowKey`, resolved through the worker's flow cache against the pipeline snapshot
//! loaded for this wake-up, and sent to each output. No allocation, lock or log per
//! packet: drops are counted by reason on the port they came in on or were going to.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::drop::DropReason;
use crate::flow_key::{FlowKey, TunnelMeta, u128_to_ip};
use crate::pipeline::{DpAction, FlowCache, Forward, Pipeline};

use super::capture::Direction;
use super::icmp::too_big_reply;
use super::io::{IoDrop, PortDev, PortDrop, PortIo, PortSet};
use super::{Shared, WorkerStats};

/// Packets drained from one descriptor per turn.
pub const BATCH: usize = 64;
/// Bytes kept free in front of every received frame for outer headers.
pub const HEADROOM: usize = 128;
/// Largest frame or datagram read (jumbo frames fit).
pub const FRAME_MAX: usize = 16 * 1024;
const BUF_LEN: usize = HEADROOM + FRAME_MAX;
const ETH_LEN: usize = 14;
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
    rx: Box<[u8]>,
    tx: Box<[u8]>,
    aux: Box<[u8]>,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        shared: Arc<Shared>,
        poll: Poll,
        stats: Arc<WorkerStats>,
        cache_entries: usize,
    ) -> Worker {
        Worker {
            id,
            shared,
            poll,
            cache: FlowCache::new(cache_entries),
            stats,
            ports: Arc::new(PortSet::default()),
            registered: Vec::new(),
            pending: Vec::with_capacity(1024),
            rx: vec![0u8; BUF_LEN].into_boxed_slice(),
            tx: vec![0u8; BUF_LEN].into_boxed_slice(),
            aux: vec![0u8; BUF_LEN].into_boxed_slice(),
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

    /// Reads up to a batch from one descriptor; true when more may be waiting.
    fn drain(&mut self, tok: Token, pipe: &Pipeline, now: u64) -> bool {
        let (ofport, sub) = untoken(tok);
        // One reference count for the whole batch; packets borrow from it.
        let ports = Arc::clone(&self.ports);
        let Some(port) = ports.get(ofport) else {
            return false;
        };
        let mut errors = 0;
        for _ in 0..BATCH {
            // The port a packet belongs to: the polled one, except that tunnel ports of
            // one type, local address and UDP port share a socket and are told apart by
            // the packet's outer source (each has its own `remote=`, or `remote=flow`).
            let mut rx_port: &PortIo = port;
            let got = match (&port.dev, sub) {
                (PortDev::Tap(t), _) => t
                    .recv(self.id, &mut self.rx[HEADROOM..])
                    .map(|n| (HEADROOM, n, TunnelMeta::NONE)),
                (PortDev::Udp(u), _) => {
                    let sock = &u.sockets[self.id % u.sockets.len()];
                    match sock.recv_from(&mut self.rx[HEADROOM..]) {
                        Ok((n, from)) => {
                            let local = sock.local_addr().ip();
                            match ports.demux(ofport, from.ip()) {
                                Some(p) => rx_port = p,
                                None => {
                                    port.counters.rx(n);
                                    port.counters.drop(PortDrop::Io(IoDrop::UnknownRemote));
                                    continue;
                                }
                            }
                            match self.decap_udp(rx_port, n, from, local) {
                                Some(x) => Ok(x),
                                None => continue,
                            }
                        }
                        Err(e) => Err(e),
                    }
                }
                (PortDev::Ipip(t), sub) => {
                    let sock = if sub == Sub::Ipip6 { &t.v6 } else { &t.v4 };
                    match sock.recv(&mut self.rx[HEADROOM..]) {
                        Ok(n) => match self.decap_ipip(port, n) {
                            Some(x) => Ok(x),
                            None => continue,
                        },
                        Err(e) => Err(e),
                    }
                }
            };
            match got {
                Ok((start, len, tun)) => {
                    if matches!(port.dev, PortDev::Tap(_)) {
                        port.counters.rx(len);
                    }
                    self.process(&ports, rx_port, start, len, &tun, pipe, now);
                }
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

    /// Validates and strips a VXLAN/Geneve header; returns the inner frame's place.
    fn decap_udp(
        &mut self,
        port: &PortIo,
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
        let payload = &self.rx[HEADROOM..HEADROOM + n];
        let d = if matches!(port.spec.kind, control::port::PortKind::Vxlan(_)) {
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
                Some((HEADROOM + d.inner_offset, d.inner.len(), tun))
            }
            Err(r) => {
                port.counters.drop(PortDrop::Decap(r));
                None
            }
        }
    }

    /// Validates and strips an outer IPv4 header and puts an Ethernet header (zero
    /// addresses, for the flows to set) in front of the inner IP packet.
    fn decap_ipip(&mut self, port: &PortIo, n: usize) -> Option<(usize, usize, TunnelMeta)> {
        port.counters.rx(n);
        let conf = port.tunnel.as_ref()?;
        let d = match encap::decap_ipip(&self.rx[HEADROOM..HEADROOM + n]) {
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
        let start = HEADROOM + off - ETH_LEN;
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
        let mut actions = [DpAction::Flood { state: 0 }; crate::pipeline::MAX_OUTPUTS];
        actions[..n].copy_from_slice(res.actions());
        let mut states = [FlowKey::ZERO; crate::pipeline::MAX_STATES];
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
                if crate::pipeline::commit::commit(&mut buf[fstart..fstart + len], &key, state)
                    .is_err()
                {
                    in_port
                        .counters
                        .drop(PortDrop::Pipeline(DropReason::NoOutput));
                    continue;
                }
            }
            match *a {
                DpAction::Output { port, .. } => self.emit(
                    ports, port, buf_is_rx, fstart, len, state, None, in_port, pipe,
                ),
                DpAction::Normal { .. } => {
                    self.shared.macs.learn(pipe.ports(), state, now);
                    match crate::pipeline::normal::normal(
                        &self.shared.macs,
                        pipe.ports(),
                        state,
                        now,
                    ) {
                        Forward::Port { port, tun_dst } => {
                            let t = (tun_dst != 0).then_some(tun_dst);
                            self.emit(ports, port, buf_is_rx, fstart, len, state, t, in_port, pipe)
                        }
                        Forward::Flood => {
                            self.flood(ports, buf_is_rx, fstart, len, state, in_port, pipe)
                        }
                        Forward::Drop(r) => in_port.counters.drop(PortDrop::Pipeline(r)),
                    }
                }
                DpAction::Flood { .. } => {
                    self.flood(ports, buf_is_rx, fstart, len, state, in_port, pipe)
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
        state: &FlowKey,
        in_port: &PortIo,
        pipe: &Pipeline,
    ) {
        for p in pipe.ports().flood_ports(state.in_port(), state.tun_id()) {
            if ports.get(p.number).is_some() {
                self.emit(
                    ports, p.number, buf_is_rx, start, len, state, None, in_port, pipe,
                );
            }
        }
    }

    /// Sends the frame at `buf[start..start + len]` (`rx` or `tx`) out of `port`.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        ports: &PortSet,
        port: u32,
        buf_is_rx: bool,
        start: usize,
        len: usize,
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
        let buf: &mut [u8] = if buf_is_rx {
            &mut self.rx
        } else {
            &mut self.tx
        };
        out.capture(&buf[start..start + len], Direction::Tx);
        match &out.dev {
            PortDev::Tap(t) => match t.send(id, &buf[start..start + len]) {
                Ok(_) => out.counters.tx(len),
                Err(_) => out.counters.drop(PortDrop::Io(IoDrop::TxError)),
            },
            PortDev::Udp(u) => {
                let Some(conf) = out.tunnel.as_ref() else {
                    return;
                };
                if len.saturating_sub(ETH_LEN) > usize::from(conf.mtu) {
                    let frame_copy_len = len.min(self.aux.len());
                    self.too_big(buf_is_rx, start, frame_copy_len, conf.mtu, in_port, out);
                    return;
                }
                let dst = match conf.remote {
                    Some(ip) => ip,
                    None => match tun_dst.or_else(|| {
                        let v = state.get(crate::flow_key::Field::TunDst);
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
                match u.header.encapsulate(buf, start, len, vni) {
                    Ok(r) => {
                        match sock.send_to(&buf[r.clone()], SocketAddr::new(dst, u.dst_port)) {
                            Ok(_) => out.counters.tx(r.len()),
                            Err(_) => out.counters.drop(PortDrop::Io(IoDrop::TxError)),
                        }
                    }
                    Err(r) => out.counters.drop(PortDrop::Decap(r)),
                }
            }
            PortDev::Ipip(t) => {
                let Some(conf) = out.tunnel.as_ref() else {
                    return;
                };
                let ethertype = u16::from_be_bytes([buf[start + 12], buf[start + 13]]);
                if ethertype != 0x0800 && ethertype != 0x86dd {
                    out.counters.drop(PortDrop::Io(IoDrop::NotIp));
                    return;
                }
                let ip_len = len - ETH_LEN;
                if ip_len > usize::from(conf.mtu) {
                    self.too_big(buf_is_rx, start, len, conf.mtu, in_port, out);
                    return;
                }
                let dst = match conf.remote {
                    Some(IpAddr::V4(a)) => a,
                    _ => match u128_to_ip(
                        tun_dst.unwrap_or_else(|| state.get(crate::flow_key::Field::TunDst)),
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
                // The outer header overwrites the Ethernet header's bytes; build the packet
                // in the spare buffer so that other outputs of this frame keep theirs.
                const OUTER: usize = 20;
                let (src_buf, aux) = if buf_is_rx {
                    (&self.rx, &mut self.aux)
                } else {
                    (&self.tx, &mut self.aux)
                };
                aux[HEADROOM..HEADROOM + ip_len]
                    .copy_from_slice(&src_buf[start + ETH_LEN..start + len]);
                let tmpl = encap::IpipTemplate::new(
                    t.local,
                    dst,
                    encap::IpipParams {
                        ttl: conf.ttl,
                        decrement_inner_ttl: true,
                    },
                );
                let _ = OUTER;
                match tmpl.encapsulate(aux, HEADROOM, ip_len) {
                    Ok(r) => match t.v4.send_to(&aux[r.clone()], dst) {
                        Ok(_) => out.counters.tx(r.len()),
                        Err(_) => out.counters.drop(PortDrop::Io(IoDrop::TxError)),
                    },
                    Err(r) => out.counters.drop(PortDrop::Decap(r)),
                }
            }
        }
    }

    /// Drops a frame too big for `out` and answers the sender through its TAP.
    fn too_big(
        &mut self,
        buf_is_rx: bool,
        start: usize,
        len: usize,
        mtu: u16,
        in_port: &PortIo,
        out: &PortIo,
    ) {
        out.counters.drop(PortDrop::Io(IoDrop::TooBig));
        let PortDev::Tap(tap) = &in_port.dev else {
            return;
        };
        let frame = if buf_is_rx {
            &self.rx[start..start + len]
        } else {
            &self.tx[start..start + len]
        };
        if let Some(n) = too_big_reply(frame, mtu, &mut self.aux) {
            match tap.send(self.id, &self.aux[..n]) {
                Ok(_) => in_port.counters.tx(n),
                Err(_) => in_port.counters.drop(PortDrop::Io(IoDrop::TxError)),
            }
        }
    }
}

/// The worker's waker token (exported for the switch).
pub(crate) const WAKER_TOKEN: Token = WAKER;
