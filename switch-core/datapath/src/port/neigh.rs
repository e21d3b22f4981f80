//! Next hops of the tunnel-GSO underlay port: for each peer, the MAC to send to and the
//! source address and MAC, from the kernel's routes and neighbours over rtnetlink, in a
//! cache that follows their changes (the job of OVS's tunnel routing and neighbour
//! cache).
//!
//! The packet path only reads: [`Neighbours::lookup`] loads the published table
//! (`arc-swap`, no lock) and, for a peer it does not hold, marks the peer wanted in a
//! fixed array of atomics (no allocation). A refresher thread, off the packet path,
//! resolves every wanted peer (RTM_GETROUTE for the route: output device, gateway,
//! preferred source; RTM_GETNEIGH for the gateway's MAC) and publishes a new table, again
//! whenever the kernel announces a change of a neighbour, route or link (it listens on
//! those rtnetlink groups), and at least every second. A peer whose route leaves through
//! another device, or whose neighbour is not resolved yet, has no next hop: its packets
//! take the tunnel's socket, and the kernel's sending of them resolves the neighbour,
//! which the refresher then sees.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// Where a packet to a peer goes on the underlay device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The peer (the outer destination).
    pub peer: Ipv4Addr,
    /// The next hop's MAC (the peer's, or its gateway's).
    pub dst_mac: [u8; 6],
    /// The underlay device's MAC.
    pub src_mac: [u8; 6],
    /// The outer source address (the route's preferred source).
    pub src: Ipv4Addr,
}

/// Peers the cache may follow at once (a node's tunnel peers; more are not sent
/// through the underlay port but through the socket).
pub const MAX_PEERS: usize = 256;

/// The next-hop cache of one underlay device.
#[derive(Debug)]
pub struct Neighbours {
    table: ArcSwap<Vec<NextHop>>,
    wanted: [AtomicU32; MAX_PEERS],
    ifindex: u32,
    stop: AtomicBool,
}

impl Neighbours {
    /// An empty cache of peers reached through the device `ifindex`.
    pub fn new(ifindex: u32) -> Neighbours {
        Neighbours {
            table: ArcSwap::from_pointee(Vec::new()),
            wanted: std::array::from_fn(|_| AtomicU32::new(0)),
            ifindex,
            stop: AtomicBool::new(false),
        }
    }

    /// The next hop toward `peer`, if known; else the peer is marked wanted (no lock, no
    /// allocation) and the caller sends another way.
    #[inline]
    pub fn lookup(&self, peer: Ipv4Addr) -> Option<NextHop> {
        let t = self.table.load();
        if let Some(h) = t.iter().find(|h| h.peer == peer) {
            return Some(*h);
        }
        self.want(peer);
        None
    }

    fn want(&self, peer: Ipv4Addr) {
        let v = u32::from(peer);
        if v == 0 {
            return;
        }
        for w in &self.wanted {
            match w.load(Ordering::Relaxed) {
                x if x == v => return,
                0 => {
                    if w.compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                    if w.load(Ordering::Relaxed) == v {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// The peers asked for.
    fn wanted(&self) -> Vec<Ipv4Addr> {
        self.wanted
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .filter(|&v| v != 0)
            .map(Ipv4Addr::from)
            .collect()
    }

    /// Resolves every wanted peer now and publishes the table; returns it.
    pub fn refresh(&self) -> Arc<Vec<NextHop>> {
        let mut t = Vec::new();
        if let Ok(nl) = Netlink::open(0) {
            for peer in self.wanted() {
                if let Ok(Some(h)) = resolve(&nl, peer, self.ifindex) {
                    t.push(h);
                }
            }
        }
        let old = self.table.load_full();
        if *old != t {
            let new = Arc::new(t);
            self.table.store(Arc::clone(&new));
            return new;
        }
        old
    }

    /// Starts the refresher thread (stops when [`Neighbours::stop`] is called).
    pub fn spawn_refresher(self: &Arc<Self>) -> io::Result<std::thread::JoinHandle<()>> {
        const RTMGRP_LINK: u32 = 0x1;
        const RTMGRP_NEIGH: u32 = 0x4;
        const RTMGRP_IPV4_ROUTE: u32 = 0x40;
        let events = Netlink::open(RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE)?;
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("weft-neigh".into())
            .spawn(move || {
                let mut last = Instant::now() - Duration::from_secs(2);
                let mut buf = vec![0u8; 64 * 1024];
                let mut had = 0;
                while !me.stop.load(Ordering::Relaxed) {
                    let changed = events.wait(&mut buf, Duration::from_millis(100));
                    let wanted = me.wanted().len();
                    if changed || wanted != had || last.elapsed() >= Duration::from_secs(1) {
                        me.refresh();
                        had = wanted;
                        last = Instant::now();
                    }
                }
            })
    }

    /// Asks the refresher to end (within 100 ms).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const NETLINK_ROUTE: i32 = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
/// REACHABLE, STALE, DELAY, PROBE, PERMANENT: a MAC the kernel would send to.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80;

/// A rtnetlink socket (requests, or `groups` of events), in the namespace of the thread
/// that opened it.
#[derive(Debug)]
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

impl Netlink {
    pub(crate) fn open(groups: u32) -> io::Result<Netlink> {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        // SAFETY: a valid socket and a sockaddr_nl of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink {
            fd,
            seq: std::cell::Cell::new(1),
        })
    }

    /// Waits up to `timeout` for event messages; true when any came (all are drained).
    fn wait(&self, buf: &mut [u8], timeout: Duration) -> bool {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) };
        if n <= 0 {
            return false;
        }
        let mut any = false;
        loop {
            // SAFETY: a writable buffer of the given length.
            let r = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r <= 0 {
                return any;
            }
            any = true;
        }
    }

    /// Sends a request (`body` after the netlink header) and collects the messages of
    /// type `want` of the answer (a dump's until DONE).
    pub(crate) fn request(
        &self,
        ty: u16,
        flags: u16,
        body: &[u8],
        want: u16,
    ) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let len = 16 + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: a valid socket and a buffer of the given length (to the kernel: the
        // socket is unconnected and sends to pid 0 by default).
        let r = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let dump = flags & NLM_F_DUMP != 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "rtnetlink answer"));
            }
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 500) } <= 0 {
                continue;
            }
            // SAFETY: a writable buffer of the given length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + 16 <= n {
                let mlen = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
                let mty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let mseq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap());
                if mlen < 16 || at + mlen > n {
                    break;
                }
                if mseq == seq {
                    match mty {
                        NLMSG_DONE => return Ok(out),
                        NLMSG_ERROR => {
                            let code = i32::from_ne_bytes(
                                buf[at + 16..at + 20].try_into().unwrap_or([0; 4]),
                            );
                            if code == 0 {
                                return Ok(out);
                            }
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        t if t == want => {
                            out.push(buf[at + 16..at + mlen].to_vec());
                            if !dump {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                at += (mlen + 3) & !3;
            }
        }
    }
}

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const IFLA_STATS64: u16 = 23;

/// The kernel's `tx_dropped` count of the device `ifindex` (`struct rtnl_link_stats64`
/// in RTM_GETLINK's IFLA_STATS64, what `ip -s link` prints), in the namespace `nl` was
/// opened in.
pub(crate) fn link_tx_dropped(nl: &Netlink, ifindex: u32) -> io::Result<u64> {
    // struct ifinfomsg: family, pad, type, index, flags, change.
    let mut body = [0u8; 16];
    body[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    let msgs = nl.request(RTM_GETLINK, 0, &body, RTM_NEWLINK)?;
    msgs.iter()
        .flat_map(|m| attrs(m, 16))
        .find(|(ty, _)| *ty == IFLA_STATS64)
        // rx/tx packets, bytes, errors, then rx_dropped and tx_dropped: the 8th u64.
        .and_then(|(_, v)| v.get(56..64))
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
        .ok_or_else(|| io::Error::other(format!("no IFLA_STATS64 for ifindex {ifindex}")))
}

/// The kernel's count of the frames a TAP could not queue toward `weftd` (its
/// `tx_dropped`): an rtnetlink socket opened in the device's namespace, the device's
/// index there, and the count when the port opened (a re-attached device's earlier
/// drops are not this port's).
#[derive(Debug)]
pub(crate) struct KernelDrops {
    nl: std::sync::Mutex<Netlink>,
    ifindex: u32,
    base: u64,
}

impl KernelDrops {
    /// Opens the rtnetlink socket and reads the starting count of `ifname` (in the
    /// device's namespace: the caller has entered it).
    pub(crate) fn open(ifname: &str) -> io::Result<KernelDrops> {
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(io::Error::from)?;
        let nl = Netlink::open(0)?;
        let base = link_tx_dropped(&nl, ifindex)?;
        Ok(KernelDrops {
            nl: std::sync::Mutex::new(nl),
            ifindex,
            base,
        })
    }

    /// The drops since the port opened; `None` when the kernel cannot be asked. One
    /// rtnetlink request: not for the packet path.
    pub(crate) fn since_open(&self) -> Option<u64> {
        let nl = self.nl.lock().unwrap_or_else(|e| e.into_inner());
        let now = link_tx_dropped(&nl, self.ifindex).ok()?;
        Some(now.saturating_sub(self.base))
    }
}

/// The attributes after a fixed header of `fixed` bytes, as (type, value).
fn attrs(msg: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut at = fixed;
    std::iter::from_fn(move || {
        if at + 4 > msg.len() {
            return None;
        }
        let len = u16::from_ne_bytes([msg[at], msg[at + 1]]) as usize;
        let ty = u16::from_ne_bytes([msg[at + 2], msg[at + 3]]) & 0x3fff;
        if len < 4 || at + len > msg.len() {
            return None;
        }
        let v = &msg[at + 4..at + len];
        at += (len + 3) & !3;
        Some((ty, v))
    })
}

fn ipv4(v: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from)
}

/// The next hop toward `peer` if its route leaves through `ifindex` and the neighbour
/// is resolved.
fn resolve(nl: &Netlink, peer: Ipv4Addr, ifindex: u32) -> io::Result<Option<NextHop>> {
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags (u32).
    let mut body = vec![libc::AF_INET as u8, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&RTA_DST.to_ne_bytes());
    body.extend_from_slice(&peer.octets());
    let routes = nl.request(RTM_GETROUTE, 0, &body, RTM_NEWROUTE)?;
    let Some(r) = routes.first() else {
        return Ok(None);
    };
    let (mut oif, mut gw, mut src) = (0u32, None, None);
    for (ty, v) in attrs(r, 12) {
        match ty {
            RTA_OIF => oif = <[u8; 4]>::try_from(v).map(u32::from_ne_bytes).unwrap_or(0),
            RTA_GATEWAY => gw = ipv4(v),
            RTA_PREFSRC => src = ipv4(v),
            _ => {}
        }
    }
    if oif != ifindex {
        return Ok(None);
    }
    let Some(src) = src else { return Ok(None) };
    let hop = gw.unwrap_or(peer);
    // ndmsg: family, pad, pad16, ifindex (i32), state (u16), flags, type.
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    body.extend_from_slice(&[0, 0, 0, 0]);
    let neighs = nl.request(RTM_GETNEIGH, NLM_F_DUMP, &body, RTM_NEWNEIGH)?;
    for n in neighs {
        if n.len() < 12 {
            continue;
        }
        let idx = i32::from_ne_bytes(n[4..8].try_into().unwrap()) as u32;
        let state = u16::from_ne_bytes([n[8], n[9]]);
        if idx != ifindex || state & NUD_USABLE == 0 {
            continue;
        }
        let (mut dst, mut mac) = (None, None);
        for (ty, v) in attrs(&n, 12) {
            match ty {
                NDA_DST => dst = ipv4(v),
                NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
                _ => {}
            }
        }
        if dst == Some(hop)
            && let Some(dst_mac) = mac
        {
            let src_mac = device_mac(ifindex)?;
            return Ok(Some(NextHop {
                peer,
                dst_mac,
                src_mac,
                src,
            }));
        }
    }
    Ok(None)
}

/// The MAC of the device `ifindex` (SIOCGIFHWADDR, in the calling thread's namespace).
fn device_mac(ifindex: u32) -> io::Result<[u8; 6]> {
    let name = nix::net::if_::if_indextoname(ifindex).map_err(io::Error::from)?;
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a valid socket and an initialised ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFHWADDR filled the `ifru_hwaddr` member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_marks_a_peer_wanted_once_and_refresh_finds_no_route_on_loopback() {
        let n = Neighbours::new(u32::MAX);
        let p = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(n.lookup(p), None);
        assert_eq!(n.lookup(p), None);
        assert_eq!(n.wanted(), vec![p]);
        // No route through a device with that index: no next hop (not an error).
        assert!(n.refresh().is_empty());
        assert_eq!(n.lookup(Ipv4Addr::UNSPECIFIED), None);
        assert_eq!(n.wanted(), vec![p], "0.0.0.0 is never wanted");
    }

    #[test]
    fn the_wanted_set_is_bounded() {
        let n = Neighbours::new(u32::MAX);
        for i in 0..(MAX_PEERS as u32 + 10) {
            n.lookup(Ipv4Addr::from(0xc612_0000 + i + 1));
        }
        assert_eq!(n.wanted().len(), MAX_PEERS);
    }
}
