//! Underlay sockets of the tunnel ports.
//!
//! - VXLAN and Geneve: a UDP socket bound to `local:dst_port`, one per worker with
//!   SO_REUSEPORT so the kernel spreads the peers' flows over the workers (a flow always
//!   lands on the same socket, so it stays in order). The kernel adds the outer IP and
//!   UDP headers; Weft writes the tunnel header in front of the inner frame.
//! - IP-in-IP: raw IPv4 sockets for protocols 4 (IPv4 inner) and 41 (IPv6 inner), with
//!   IP_HDRINCL on send so that Weft writes the outer header itself (TTL, DF and TOS as
//!   RFC 2003 says). A raw socket receives a copy of every matching packet, so each
//!   protocol has exactly one receiving socket; every worker sends through it.
//!
//! All sockets are non-blocking, with large buffers, and never linger.
//!
//! Each worker's VXLAN/Geneve socket comes with a second, send-only socket bound to the
//! same local address and an ephemeral port: the workers' packets leave with different
//! UDP source ports, so the peer's SO_REUSEPORT group (and a NIC's RSS) spreads them
//! over its workers, while every packet of one flow (one TAP queue, one worker) keeps
//! its port and arrives in order. RFC 7348 asks for a source port from the inner flow's
//! hash and receivers ignore it. The receiving sockets turn UDP_GRO on, so a peer's
//! UDP GSO train arrives as one buffer with its segment size.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Socket buffer size asked for (the kernel caps it at `net.core.[rw]mem_max`, except
/// when weftd has CAP_NET_ADMIN, and doubles it for its bookkeeping). Memory is taken only
/// while datagrams wait: with 4 MiB a burst of 300,000 64-byte frames (`compare`)
/// overflowed a tunnel socket by 0-6.5% on the 2-core test machine while its worker was
/// off the CPU; with 32 MiB it arrived whole in 9 rounds of 9 (VXLAN, Geneve, IP-in-IP).
/// What this leaves open: a UDP socket's backlog still counts against the node-wide
/// `net.ipv4.udp_mem` (FORCE passes only the per-socket cap), so a weftd far behind
/// could press the node's other UDP sockets once its sockets hold gigabytes (64 MiB
/// each here); a raw socket's send buffer this large means a full qdisc, not the
/// buffer, drops an IP-in-IP packet, which the kernel does not report without
/// `IP_RECVERR` (the node's `OutDiscards` counts it). Neither happens over veth here.
const SOCKET_BUFFER: usize = 32 << 20;

/// IP protocol number of IP-in-IP (IPv4 in IPv4).
pub const IPPROTO_IPIP: i32 = 4;
/// IP protocol number of IPv6 in IPv4.
pub const IPPROTO_IPV6: i32 = 41;

fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// The UDP socket of a VXLAN or Geneve port (one per worker).
#[derive(Debug)]
pub struct UdpTunnelSocket {
    socket: Socket,
    local: SocketAddr,
    /// The send-only socket of this worker (ephemeral source port), if any.
    sender: Option<Socket>,
    /// Whether UDP_GRO is on.
    gro: bool,
    /// The socket's drop count (`SO_RXQ_OVFL`) already counted.
    overflow: Overflow,
}

/// The part of a socket's drop count (`SO_RXQ_OVFL`, reported with each datagram read,
/// only growing, modulo 2^32) already counted: shared by the workers reading the socket.
#[derive(Debug, Default)]
struct Overflow(AtomicU32);

impl Overflow {
    /// How many drops `total` adds to the ones already counted; a count older than one
    /// already seen (another worker got a later one first) adds nothing.
    #[inline]
    fn new_drops(&self, total: u32) -> u32 {
        let mut seen = self.0.load(Ordering::Relaxed);
        loop {
            let new = total.wrapping_sub(seen);
            if new == 0 || new > u32::MAX / 2 {
                return 0;
            }
            match self
                .0
                .compare_exchange_weak(seen, total, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return new,
                Err(now) => seen = now,
            }
        }
    }
}

impl UdpTunnelSocket {
    /// Binds `local` (address, or the unspecified address of `remote_is_v6`'s family,
    /// and `port`). `reuse_port` lets several workers bind the same address.
    pub fn bind(
        local: Option<IpAddr>,
        port: u16,
        remote_is_v6: bool,
        reuse_port: bool,
    ) -> io::Result<UdpTunnelSocket> {
        let ip = local.unwrap_or_else(|| unspecified(remote_is_v6));
        let addr = SocketAddr::new(ip, port);
        let what = || format!("udp tunnel socket {addr}");
        let socket = tunnel_udp_socket(&addr).map_err(|e| context(e, what()))?;
        if reuse_port {
            socket
                .set_reuse_port(true)
                .map_err(|e| context(e, what()))?;
        }
        set_buffers(&socket);
        // Report the socket's drop count with each datagram, so that datagrams the
        // kernel dropped for a full receive buffer are counted (`IoDrop::RxOverflow`).
        let _ = set_int(&socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
        socket
            .set_nonblocking(true)
            .map_err(|e| context(e, what()))?;
        socket.bind(&addr.into()).map_err(|e| context(e, what()))?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("udp socket without an address"))?;
        let gro = set_int(&socket, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        Ok(UdpTunnelSocket {
            socket,
            local,
            sender: None,
            gro,
            overflow: Overflow::default(),
        })
    }

    /// Like [`UdpTunnelSocket::bind`], with a send-only socket on an ephemeral port of the
    /// same local address (a worker's own UDP source port).
    pub fn bind_with_sender(
        local: Option<IpAddr>,
        port: u16,
        remote_is_v6: bool,
    ) -> io::Result<UdpTunnelSocket> {
        let mut s = UdpTunnelSocket::bind(local, port, remote_is_v6, true)?;
        // Same address (with an IPv6 scope id), any port.
        let mut addr = s.local;
        addr.set_port(0);
        let what = || format!("udp tunnel send socket {addr}");
        let sender = tunnel_udp_socket(&addr).map_err(|e| context(e, what()))?;
        if !set_size(&sender, libc::SO_SNDBUFFORCE) {
            let _ = sender.set_send_buffer_size(SOCKET_BUFFER);
        }
        // Nothing is sent to this port; a tiny receive buffer bounds what could queue.
        let _ = sender.set_recv_buffer_size(4096);
        sender
            .set_nonblocking(true)
            .map_err(|e| context(e, what()))?;
        sender.bind(&addr.into()).map_err(|e| context(e, what()))?;
        s.sender = Some(sender);
        Ok(s)
    }

    /// The descriptor to send on: the worker's own send socket if it has one.
    pub fn send_fd(&self) -> RawFd {
        self.sender
            .as_ref()
            .map_or(self.socket.as_raw_fd(), |s| s.as_raw_fd())
    }

    /// Whether UDP_GRO is on (received buffers may hold several datagrams).
    pub fn gro(&self) -> bool {
        self.gro
    }

    /// Takes the socket's drop count reported with a datagram (`SO_RXQ_OVFL`, which
    /// only grows, modulo 2^32) and returns how many drops are new since the last call.
    /// A count older than one already seen (another worker sharing the socket got a
    /// later one first) adds nothing.
    #[inline]
    pub fn overflowed(&self, total: u32) -> u32 {
        self.overflow.new_drops(total)
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The descriptor, to register with a poller.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Receives one datagram; `WouldBlock` when there is none.
    #[inline]
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (n, from) = self.socket.recv_from(as_uninit(buf))?;
        let from = from
            .as_socket()
            .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
        Ok((n, from))
    }

    /// Sends one datagram.
    #[inline]
    pub fn send_to(&self, datagram: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(datagram, &SockAddr::from(to))
    }
}

/// A raw IPv4 socket for one IP-in-IP protocol (4 or 41): receives whole IPv4 packets
/// (outer header included) and sends whole packets that carry their own outer header.
#[derive(Debug)]
pub struct RawIpSocket {
    socket: Socket,
    protocol: i32,
    /// The socket's drop count (`SO_RXQ_OVFL`) already counted.
    overflow: Overflow,
}

impl RawIpSocket {
    /// Opens a raw socket for `protocol`, bound to `local` if given (then only packets
    /// to that address are received).
    pub fn open(protocol: i32, local: Option<Ipv4Addr>) -> io::Result<RawIpSocket> {
        let what = || format!("raw socket for ip protocol {protocol}");
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(protocol)))
            .map_err(|e| context(e, what()))?;
        socket
            .set_header_included_v4(true)
            .map_err(|e| context(e, what()))?;
        set_buffers(&socket);
        // Packets the kernel drops for a full receive buffer are counted, as on the UDP
        // tunnel sockets (`IoDrop::RxOverflow`).
        let _ = set_int(&socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
        socket
            .set_nonblocking(true)
            .map_err(|e| context(e, what()))?;
        if let Some(ip) = local {
            socket
                .bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())
                .map_err(|e| context(e, what()))?;
        }
        Ok(RawIpSocket {
            socket,
            protocol,
            overflow: Overflow::default(),
        })
    }

    /// [`UdpTunnelSocket::overflowed`]: the drops the socket's count `total` adds.
    #[inline]
    pub fn overflowed(&self, total: u32) -> u32 {
        self.overflow.new_drops(total)
    }

    /// The protocol number.
    pub fn protocol(&self) -> i32 {
        self.protocol
    }

    /// The descriptor, to register with a poller.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Receives one packet (outer IPv4 header included); `WouldBlock` when none.
    #[inline]
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.recv(as_uninit(buf))
    }

    /// Sends one packet whose outer IPv4 header (destination `to`) is already written.
    #[inline]
    pub fn send_to(&self, packet: &[u8], to: Ipv4Addr) -> io::Result<usize> {
        self.socket
            .send_to(packet, &SockAddr::from(SocketAddr::new(IpAddr::V4(to), 0)))
    }
}

fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and initialised bytes are valid
    // `MaybeUninit`s; the socket only writes into the slice.
    unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

/// A UDP socket of `addr`'s family, IPv6-only for IPv6, without DF for IPv4: like the
/// kernel's VXLAN device by default. Weft never sends an inner frame larger than the
/// tunnel MTU, so DF only matters when the underlay's path MTU is smaller than configured.
fn tunnel_udp_socket(addr: &SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    } else {
        set_pmtudisc_dont(&socket)?;
    }
    Ok(socket)
}

/// Asks for [`SOCKET_BUFFER`] bytes of receive and send buffer, past
/// `net.core.[rw]mem_max` when weftd may (CAP_NET_ADMIN: the FORCE options): a burst of
/// small datagrams fills a default-sized buffer in a few hundred packets.
fn set_buffers(socket: &Socket) {
    if !set_size(socket, libc::SO_RCVBUFFORCE) {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    }
    if !set_size(socket, libc::SO_SNDBUFFORCE) {
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    }
}

fn set_size(socket: &Socket, name: libc::c_int) -> bool {
    set_int(socket, libc::SOL_SOCKET, name, SOCKET_BUFFER as libc::c_int).is_ok()
}

fn set_pmtudisc_dont(socket: &Socket) -> io::Result<()> {
    set_int(
        socket,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )
}

fn set_int(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_tunnel_sockets_share_a_port_and_carry_datagrams() {
        let a = UdpTunnelSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, false, true).unwrap();
        let port = a.local_addr().port();
        let b = UdpTunnelSocket::bind(Some("127.0.0.1".parse().unwrap()), port, false, true)
            .expect("SO_REUSEPORT lets a second worker bind the same port");
        let c = UdpTunnelSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, false, false).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            c.recv_from(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        c.send_to(b"hello", a.local_addr()).unwrap();
        let start = std::time::Instant::now();
        let got = loop {
            let r = a.recv_from(&mut buf).or_else(|_| b.recv_from(&mut buf));
            if let Ok(r) = r {
                break r;
            }
            assert!(start.elapsed().as_secs() < 2, "datagram never arrived");
        };
        assert_eq!(&buf[..got.0], b"hello");
        assert_eq!(got.1, c.local_addr());
    }

    #[test]
    fn bind_errors_name_the_address() {
        let a = UdpTunnelSocket::bind(Some("127.0.0.1".parse().unwrap()), 0, false, false).unwrap();
        let err = UdpTunnelSocket::bind(
            Some("127.0.0.1".parse().unwrap()),
            a.local_addr().port(),
            false,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
    }
}
