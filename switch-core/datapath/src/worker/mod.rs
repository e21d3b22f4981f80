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
//! wake-up, and sent to each output. The worker keeps that snapshot across wake-ups and
//! hands the one it leaves to the reclaimer thread, so it never frees an old version
//! itself ([`held`]). No allocation, lock or log per packet: drops are
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
//!
//! A worker asks the scheduler for its shortest time slice as it starts
//! ([`crate::sched`]), so that one woken by a packet on a busy core runs at once.
//!
//! What happens to a frame is decided by the pipeline, purely: the table walk's actions,
//! finished by `weft_pipeline::egress::plan` into one `Emit` per copy (which port, how
//! to write to a TAP, which peer and VNI for a tunnel, too big, or dropped and why). The
//! worker keeps the syscalls: `rx` reads and decapsulates, `egress` commits the
//! rewrites and executes each `Emit` on the devices.

mod egress;
pub(crate) mod held;
mod rx;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use weft_pipeline::{FlowCache, Pipeline};

use encap::offload::{Coalescer, SLOT_LEN, VirtioNetHdr};

use super::batch::{DGRAM_MAX, RX_MSGS, RxBatch, TxQueue};
use super::io::{PortDev, PortSet};
use super::{Shared, SwitchOptions, WorkerStats};
use egress::{Out, flush_tx};

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
    /// The worker's queue of a socket group's tunnel-GSO underlay TAP.
    Underlay = 3,
}

fn token(ofport: u32, sub: Sub) -> Token {
    Token(((ofport as usize) << 2) | sub as usize)
}

fn untoken(t: Token) -> (u32, Sub) {
    let sub = match t.0 & 3 {
        1 => Sub::Ipip4,
        2 => Sub::Ipip6,
        3 => Sub::Underlay,
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
    /// The pipeline version walked, kept across rounds (see [`held`]).
    held: held::Held,
    stats: Arc<WorkerStats>,
    ports: Arc<PortSet>,
    registered: Vec<(RawFd, Token)>,
    pending: Vec<Token>,
    /// Receive slots: `RX_MSGS` of [`SLOT`] bytes (a TAP read uses the first).
    rx: Box<[u8]>,
    rxb: RxBatch,
    /// The sending side: buffers, transmit queue, coalescers, the frame's offload header.
    out: Out,
    pin_cpu: bool,
}

impl Worker {
    pub(crate) fn new(
        id: usize,
        shared: Arc<Shared>,
        poll: Poll,
        stats: Arc<WorkerStats>,
        options: &SwitchOptions,
        retired: crossbeam_channel::Sender<held::Retired>,
    ) -> Worker {
        let gro = if options.offloads {
            (0..GRO_TAPS)
                .map(|_| egress::Gro {
                    port: 0,
                    co: Coalescer::new(vec![0u8; GRO_FLOWS * SLOT_LEN].into_boxed_slice()),
                })
                .collect()
        } else {
            Vec::new()
        };
        Worker {
            id,
            held: held::Held::new(&shared.pipeline, retired),
            shared,
            poll,
            cache: FlowCache::for_lane(options.cache_entries, id),
            stats,
            ports: Arc::new(PortSet::default()),
            registered: Vec::new(),
            pending: Vec::with_capacity(1024),
            rx: vec![0u8; RX_MSGS * SLOT].into_boxed_slice(),
            rxb: RxBatch::default(),
            out: Out {
                id,
                tx: vec![0u8; BUF_LEN].into_boxed_slice(),
                aux: vec![0u8; BUF_LEN].into_boxed_slice(),
                cur: VirtioNetHdr::default(),
                txq: TxQueue::default(),
                gro,
            },
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
                PortDev::Udp(u) => {
                    fds[0] = (u.sockets[self.id % u.sockets.len()].fd(), Sub::Main);
                    if let Some(ul) = &u.sockets.underlay {
                        fds[1] = (ul.tap.queue_fd(self.id), Sub::Underlay);
                    }
                }
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
        // The old set goes to the reclaimer: its last reference closes the ports that
        // are gone (a tunnel-GSO port's close runs tc), which is no work for a worker.
        let old = std::mem::replace(&mut self.ports, current);
        self.held.retire_ports(old);
    }

    /// Runs until the switch stops.
    pub(crate) fn run(mut self) {
        if self.pin_cpu {
            self.pin();
        }
        // Served soon after a wake-up on a busy CPU (see `crate::sched`).
        if let Err(e) = crate::sched::set_slice(0, crate::sched::WORKER_SLICE_NS) {
            tracing::warn!(
                worker = self.id,
                "could not ask for a short time slice: {e}"
            );
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
            let pipe = self.held.round(&self.shared.pipeline);
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
            PortDev::Udp(_) if sub == Sub::Underlay => {
                self.drain_underlay(&ports, port, ofport, pipe, now)
            }
            PortDev::Udp(_) => self.drain_udp(&ports, port, ofport, pipe, now),
            _ => self.drain_frames(&ports, port, sub, pipe, now),
        };
        self.out.flush_gro(&ports, &self.rx);
        flush_tx(&mut self.out.txq, &ports, &[&self.rx, &self.out.tx]);
        more
    }
}

/// The worker's waker token (exported for the switch).
pub(crate) const WAKER_TOKEN: Token = WAKER;
