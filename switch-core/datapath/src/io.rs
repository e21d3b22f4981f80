//! Opened ports: the file descriptors behind each port, and its counters.
//!
//! [`PortIo`] is what a port is at run time: a TAP device with one queue per worker,
//! a VXLAN/Geneve tunnel with one UDP socket per worker, or an IP-in-IP tunnel with its
//! two raw sockets. The set of opened ports is published as an immutable [`PortSet`]
//! (like the pipeline), so workers read it without locks and pick up a new one between
//! batches; a port's descriptors close when the last worker lets go of its `Arc`.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use encap::TunnelHeader;
use ipnet::IpNet;
use weft_flow::port::{Key, PortKind as SpecKind, PortSpec, Remote};

use crate::port::socket::{IPPROTO_IPIP, IPPROTO_IPV6};
use crate::port::{Attach, RawIpSocket, Tap, UdpTunnelSocket, Underlay};
use weft_pipeline::drop::DropReason;
use weft_pipeline::egress::{EgressDrop, EgressPort, EgressPorts, TunnelEgress, TunnelEncap};
use weft_pipeline::{PortKind, PortMap};

/// Why the datapath dropped a packet at a port (beyond the pipeline's reasons and
/// `encap`'s decapsulation reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum IoDrop {
    /// Larger than the tunnel's MTU (the sender got an ICMP "too big" if it was due).
    TooBig = 0,
    /// Output to a `remote=flow` tunnel without a `tun_dst`.
    NoTunnelDst,
    /// `tun_dst` of the other address family than the tunnel's socket.
    TunnelFamily,
    /// A tunnel packet from a source outside `allowed_remotes`.
    RemoteNotAllowed,
    /// The device or socket refused the packet (link down, no route, ...) for another
    /// reason than a full queue.
    TxError,
    /// A Geneve OAM packet (for a control plane Weft does not have).
    GeneveOam,
    /// The inner frame is of a kind the port cannot carry (IP-in-IP carries only IP).
    NotIp,
    /// A tunnel packet from a source no tunnel port on that socket expects.
    UnknownRemote,
    /// A frame from a TAP whose `virtio_net_hdr` asks for an offload that cannot be done
    /// (a malformed super-frame, UFO, offsets outside the frame, a `gso_size` under 48).
    BadOffload,
    /// A frame or datagram larger than the read buffer (cut short by the kernel).
    Truncated,
    /// A VLAN-tagged frame (802.1Q or 802.1ad) from a TAP port: a pod's port is an
    /// untagged access port, as an OVS port without `trunks` is (see DESIGN.md).
    VlanTagged,
    /// A TAP queue or socket buffer was full (EAGAIN/ENOBUFS on the write or send).
    TxQueueFull,
    /// The kernel dropped datagrams because a tunnel socket's receive buffer was full
    /// (counted from `SO_RXQ_OVFL` on the next datagrams read).
    RxOverflow,
    /// Frames a pod sent while its TAP queue toward Weft was full: the kernel drops them
    /// before Weft sees them (a TAP has no backpressure). Read from the kernel's
    /// `tx_dropped` count of the device since the port opened, when counters are read.
    TapQueueFull,
    /// Tunnel packets the kernel redirected from the underlay device into the
    /// tunnel-GSO underlay TAP while its queue toward Weft was full (the redirect has no
    /// backpressure either). Read like `TapQueueFull`, from the TAP's `tx_dropped`, and
    /// counted on the lowest-numbered port of the tunnels that share the TAP.
    UnderlayQueueFull,
}

impl From<EgressDrop> for IoDrop {
    fn from(d: EgressDrop) -> IoDrop {
        match d {
            EgressDrop::NoTunnelDst => IoDrop::NoTunnelDst,
            EgressDrop::TunnelFamily => IoDrop::TunnelFamily,
            EgressDrop::NotIp => IoDrop::NotIp,
            EgressDrop::BadOffload => IoDrop::BadOffload,
        }
    }
}

impl IoDrop {
    /// The reason for a failed write or send: [`IoDrop::TxQueueFull`] for a full queue
    /// or buffer (EAGAIN, ENOBUFS), [`IoDrop::TxError`] for anything else.
    #[inline]
    pub fn tx(e: &io::Error) -> IoDrop {
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => IoDrop::TxQueueFull,
            _ => IoDrop::TxError,
        }
    }

    /// Every reason, in counter order.
    pub const ALL: [IoDrop; 15] = [
        IoDrop::TooBig,
        IoDrop::NoTunnelDst,
        IoDrop::TunnelFamily,
        IoDrop::RemoteNotAllowed,
        IoDrop::TxError,
        IoDrop::GeneveOam,
        IoDrop::NotIp,
        IoDrop::UnknownRemote,
        IoDrop::BadOffload,
        IoDrop::Truncated,
        IoDrop::VlanTagged,
        IoDrop::TxQueueFull,
        IoDrop::RxOverflow,
        IoDrop::TapQueueFull,
        IoDrop::UnderlayQueueFull,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            IoDrop::TooBig => "too_big",
            IoDrop::NoTunnelDst => "no_tunnel_dst",
            IoDrop::TunnelFamily => "tunnel_family",
            IoDrop::RemoteNotAllowed => "remote_not_allowed",
            IoDrop::TxError => "tx_error",
            IoDrop::GeneveOam => "geneve_oam",
            IoDrop::NotIp => "not_ip",
            IoDrop::UnknownRemote => "unknown_remote",
            IoDrop::BadOffload => "bad_offload",
            IoDrop::Truncated => "truncated",
            IoDrop::VlanTagged => "vlan_tagged",
            IoDrop::TxQueueFull => "tx_queue_full",
            IoDrop::RxOverflow => "rx_overflow",
            IoDrop::TapQueueFull => "tap_queue_full",
            IoDrop::UnderlayQueueFull => "underlay_queue_full",
        }
    }
}

const PIPE_DROPS: usize = DropReason::COUNT;
const DECAP_DROPS: usize = encap::DropReason::COUNT;
const IO_DROPS: usize = IoDrop::ALL.len();
const ENCAP_DROPS: usize = encap::DropReason::COUNT;
/// Number of per-port drop counters.
pub const PORT_DROPS: usize = PIPE_DROPS + DECAP_DROPS + IO_DROPS + ENCAP_DROPS;

/// One drop counter slot of a port: a pipeline reason (for packets received on the
/// port), a decapsulation reason, a port reason, or an encapsulation reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortDrop {
    /// The pipeline dropped a packet that came in on this port.
    Pipeline(DropReason),
    /// `encap` refused a tunnel packet received on this port.
    Decap(encap::DropReason),
    /// The port itself dropped it.
    Io(IoDrop),
    /// `encap` refused to encapsulate a packet sent to this port (e.g. IP-in-IP and an
    /// inner TTL that would reach 0).
    Encap(encap::DropReason),
}

impl PortDrop {
    #[inline]
    fn index(self) -> usize {
        match self {
            PortDrop::Pipeline(r) => r.index(),
            PortDrop::Decap(r) => PIPE_DROPS + r as usize,
            PortDrop::Io(r) => PIPE_DROPS + DECAP_DROPS + r as usize,
            PortDrop::Encap(r) => PIPE_DROPS + DECAP_DROPS + IO_DROPS + r as usize,
        }
    }

    fn from_index(i: usize) -> PortDrop {
        if i < PIPE_DROPS {
            PortDrop::Pipeline(DropReason::ALL[i])
        } else if i < PIPE_DROPS + DECAP_DROPS {
            PortDrop::Decap(encap::DropReason::ALL[i - PIPE_DROPS])
        } else if i < PIPE_DROPS + DECAP_DROPS + IO_DROPS {
            PortDrop::Io(IoDrop::ALL[i - PIPE_DROPS - DECAP_DROPS])
        } else {
            PortDrop::Encap(encap::DropReason::ALL[i - PIPE_DROPS - DECAP_DROPS - IO_DROPS])
        }
    }

    /// The Prometheus label value (decapsulation reasons carry a `decap_` prefix,
    /// encapsulation reasons an `encap_` one).
    pub fn label(self) -> String {
        match self {
            PortDrop::Pipeline(r) => r.as_str().to_string(),
            PortDrop::Decap(r) => format!("decap_{}", r.as_str()),
            PortDrop::Io(r) => r.as_str().to_string(),
            PortDrop::Encap(r) => format!("encap_{}", r.as_str()),
        }
    }
}

/// A port's counters: relaxed atomics, bumped by every worker.
#[derive(Debug)]
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; PORT_DROPS],
}

impl Default for PortCounters {
    fn default() -> Self {
        PortCounters {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl PortCounters {
    /// Counts a received packet.
    #[inline]
    pub fn rx(&self, bytes: usize) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `packets` received packets of `bytes` bytes in all.
    #[inline]
    pub fn rx_n(&self, packets: usize, bytes: usize) {
        self.rx_packets.fetch_add(packets as u64, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a sent packet.
    #[inline]
    pub fn tx(&self, bytes: usize) {
        self.tx_packets.fetch_add(1, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts a drop.
    #[inline]
    pub fn drop(&self, why: PortDrop) {
        self.drops[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `packets` sent packets of `bytes` bytes in all.
    #[inline]
    pub fn tx_n(&self, packets: usize, bytes: usize) {
        self.tx_packets.fetch_add(packets as u64, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts `n` drops.
    #[inline]
    pub fn drop_n(&self, why: PortDrop, n: usize) {
        self.drops[why.index()].fetch_add(n as u64, Ordering::Relaxed);
    }

    /// `(rx_packets, rx_bytes, tx_packets, tx_bytes)`.
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        (
            self.rx_packets.load(Ordering::Relaxed),
            self.rx_bytes.load(Ordering::Relaxed),
            self.tx_packets.load(Ordering::Relaxed),
            self.tx_bytes.load(Ordering::Relaxed),
        )
    }

    /// Every non-zero drop counter.
    pub fn drops(&self) -> Vec<(PortDrop, u64)> {
        self.drops
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Ordering::Relaxed);
                (n > 0).then(|| (PortDrop::from_index(i), n))
            })
            .collect()
    }

    /// Raises the count of `why` to `total` (a count the kernel keeps, read now): never
    /// lowers it, so two readers that race leave the larger.
    pub fn raise(&self, why: PortDrop, total: u64) {
        self.drops[why.index()].fetch_max(total, Ordering::Relaxed);
    }

    /// The count of one drop reason.
    pub fn drop_count(&self, why: PortDrop) -> u64 {
        self.drops[why.index()].load(Ordering::Relaxed)
    }
}

/// The sockets of VXLAN/Geneve ports of one type, local address and UDP port: one per
/// worker (indexed by worker through `Deref`), and the tunnel-GSO underlay port when it
/// is in use.
#[derive(Debug)]
pub struct UdpSockets {
    /// One socket per worker.
    pub per_worker: Vec<UdpTunnelSocket>,
    /// The underlay TAP that carries whole tunnel super-frames (`underlay = auto` on a
    /// kernel that has it, and an IPv4 `local=`), else `None`: sockets only.
    pub underlay: Option<Underlay>,
    /// Why `underlay` is `None` (`tunnel_gso off`, the open error, ...); empty when it
    /// is in use. `weftctl show` reports it per port.
    pub sockets_why: String,
}

impl UdpSockets {
    /// Which underlay the ports on these sockets use: `tunnel-GSO TAP wgso4789`, or
    /// `sockets (why)`.
    pub fn underlay_desc(&self) -> String {
        match &self.underlay {
            Some(u) => format!("tunnel-GSO TAP {}", u.tap.ifname()),
            None => format!("sockets ({})", self.sockets_why),
        }
    }
}

impl std::ops::Deref for UdpSockets {
    type Target = [UdpTunnelSocket];
    fn deref(&self) -> &[UdpTunnelSocket] {
        &self.per_worker
    }
}

/// VXLAN or Geneve: one UDP socket per worker.
#[derive(Debug)]
pub struct UdpTunnel {
    /// Sockets, indexed by worker; shared by every tunnel port of the same type on the
    /// same local address and UDP port (told apart by their `remote=`).
    pub sockets: Arc<UdpSockets>,
    /// The tunnel header (VXLAN, or Geneve with Ethernet payload and no options).
    pub header: TunnelHeader,
    /// Destination UDP port.
    pub dst_port: u16,
}

/// IP-in-IP: one raw socket per inner protocol, read by worker 0, sent on by all.
#[derive(Debug)]
pub struct IpipTunnel {
    /// Protocol 4 (IPv4 in IPv4).
    pub v4: RawIpSocket,
    /// Protocol 41 (IPv6 in IPv4).
    pub v6: RawIpSocket,
    /// Outer source address.
    pub local: Ipv4Addr,
    /// The outer header, built once when the port opens (toward its fixed remote, or
    /// stamped with the packet's peer for `remote=flow`).
    pub template: encap::IpipTemplate,
}

/// What a port is, with its open descriptors (one per port: size does not matter).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum PortDev {
    /// A TAP device.
    Tap(Tap),
    /// A VXLAN or Geneve tunnel.
    Udp(UdpTunnel),
    /// An IP-in-IP tunnel.
    Ipip(IpipTunnel),
}

/// Settings of a tunnel port that the packet path needs.
#[derive(Clone, Debug)]
pub struct TunnelConf {
    /// Fixed peer, if any.
    pub remote: Option<IpAddr>,
    /// Fixed VNI, if any.
    pub key: Option<u32>,
    /// Accepted sources (empty: all).
    pub allowed: Vec<IpNet>,
    /// Largest inner IP packet (the frame less its Ethernet header).
    pub mtu: u16,
    /// Outer TTL.
    pub ttl: u8,
}

impl TunnelConf {
    /// Whether a packet from `src` is accepted.
    #[inline]
    pub fn allows(&self, src: IpAddr) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|n| n.contains(&src))
    }
}

/// One opened port.
#[derive(Debug)]
pub struct PortIo {
    /// OpenFlow-style port number.
    pub ofport: u32,
    /// What the operator asked for (with `ofport` filled in).
    pub spec: PortSpec,
    /// Devices and sockets.
    pub dev: PortDev,
    /// Tunnel settings (tunnels only).
    pub tunnel: Option<TunnelConf>,
    /// What the egress decision knows of the port (fixed when it opens).
    pub egress: EgressPort,
    /// Counters.
    pub counters: PortCounters,
    /// A running `weftctl capture`, if any.
    pub capture: arc_swap::ArcSwapOption<super::capture::Capture>,
}

impl PortIo {
    /// Copies a frame into the running capture, if any (a relaxed load otherwise).
    #[inline]
    pub fn capture(&self, frame: &[u8], direction: super::capture::Direction) {
        if let Some(c) = self.capture.load().as_ref() {
            c.record(frame, direction);
        }
    }

    /// Brings the counts the kernel keeps for the port into its counters (a TAP's
    /// `tap_queue_full`, a tunnel-GSO underlay TAP's `underlay_queue_full`); for a
    /// reader of the counters (`dump-ports`, the metrics), never the packet path: one
    /// rtnetlink request per TAP. `all` is every port: the tunnels that share one
    /// underlay TAP count its drops once, on the lowest-numbered of them.
    pub fn sync_kernel_counts(&self, all: &PortSet) {
        match &self.dev {
            PortDev::Tap(t) => {
                if let Some(n) = t.queue_full_drops() {
                    self.counters.raise(PortDrop::Io(IoDrop::TapQueueFull), n);
                }
            }
            PortDev::Udp(u) => {
                let Some(under) = &u.sockets.underlay else {
                    return;
                };
                if all.leads_socket_group(self.ofport)
                    && let Some(n) = under.tap.queue_full_drops()
                {
                    self.counters
                        .raise(PortDrop::Io(IoDrop::UnderlayQueueFull), n);
                }
            }
            PortDev::Ipip(_) => {}
        }
    }
}

/// Outer overhead of each encapsulation over an IPv4 underlay, from the inner IP packet:
/// inner Ethernet 14 + VXLAN/Geneve 8 + UDP 8 + IPv4 20 (IPv6 adds 20 more); IP-in-IP
/// carries the IP packet itself under a 20-byte header.
fn overhead(spec: &PortSpec, v6_underlay: bool) -> u16 {
    let ip = if v6_underlay { 40 } else { 20 };
    match spec.kind {
        SpecKind::Ipip(_) => 20,
        _ => 14 + 8 + 8 + ip,
    }
}

/// The MTU of the interface that holds `addr` (in the calling thread's namespace).
fn underlay_mtu(addr: Option<IpAddr>) -> u16 {
    const DEFAULT: u16 = 1500;
    let Some(addr) = addr else { return DEFAULT };
    let Ok(ifaddrs) = nix::ifaddrs::getifaddrs() else {
        return DEFAULT;
    };
    for ifa in ifaddrs {
        let Some(a) = ifa.address else { continue };
        let matches = a
            .as_sockaddr_in()
            .map(|s| IpAddr::V4(s.ip()) == addr)
            .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip()) == addr))
            .unwrap_or(false);
        if matches {
            let path = format!("/sys/class/net/{}/mtu", ifa.interface_name);
            if let Some(m) = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return m;
            }
            return mtu_by_ioctl(&ifa.interface_name).unwrap_or(DEFAULT);
        }
    }
    DEFAULT
}

/// SIOCGIFMTU, which asks the calling thread's namespace (sysfs may show another one).
fn mtu_by_ioctl(ifname: &str) -> Option<u16> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: a valid socket and a properly initialised `ifreq` that outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc != 0 {
        return None;
    }
    // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member of the union.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u16::try_from(mtu).ok()
}

impl PortIo {
    /// Opens a port for `workers` workers: creates (or, as `attach` allows, re-attaches)
    /// the TAP device, or binds the tunnel's sockets. `spec.ofport` must be set.
    ///
    /// A VXLAN/Geneve port uses `shared` sockets when given (another tunnel port of the
    /// same type, local address and UDP port has them), else binds its own.
    pub fn open(
        spec: &PortSpec,
        workers: usize,
        shared: Option<Arc<UdpSockets>>,
        offloads: bool,
        attach: Attach,
    ) -> io::Result<PortIo> {
        PortIo::open_with(
            spec,
            workers,
            shared,
            offloads,
            attach,
            Err("tunnel_gso off"),
        )
    }

    /// [`PortIo::open`], where `tunnel_gso` `Ok` asks a new VXLAN/Geneve socket group with
    /// an IPv4 `local=` to open the tunnel-GSO underlay port too (the caller probed the
    /// kernel; a port that cannot be joined to its device logs why and keeps its
    /// sockets); `Err(why)` says why the switch does not use it.
    pub fn open_with(
        spec: &PortSpec,
        workers: usize,
        shared: Option<Arc<UdpSockets>>,
        offloads: bool,
        attach: Attach,
        tunnel_gso: Result<(), &str>,
    ) -> io::Result<PortIo> {
        let ofport = spec
            .ofport
            .ok_or_else(|| io::Error::other("port without a number"))?;
        let (dev, tunnel) = match &spec.kind {
            SpecKind::Tap(t) => {
                let ifname = t.ifname.as_deref().unwrap_or(&spec.name);
                (
                    PortDev::Tap(Tap::open_with(ifname, t, workers, offloads, attach)?),
                    None,
                )
            }
            SpecKind::Vxlan(t) | SpecKind::Geneve(t) => {
                let remote_v6 = matches!(t.remote, Remote::Fixed(IpAddr::V6(_)));
                let dst_port = spec.udp_port().unwrap_or(0);
                let sockets = match shared {
                    Some(s) => s,
                    None => {
                        let mut v = Vec::with_capacity(workers);
                        for _ in 0..workers.max(1) {
                            v.push(UdpTunnelSocket::bind_with_sender(
                                t.local, dst_port, remote_v6,
                            )?);
                        }
                        let mut sockets_why = String::new();
                        let underlay = match (t.local, tunnel_gso) {
                            (Some(IpAddr::V4(local)), Ok(())) if offloads => {
                                let name = format!("wgso{}", v[0].local_addr().port());
                                match Underlay::open(
                                    &name,
                                    local,
                                    v[0].local_addr().port(),
                                    workers,
                                ) {
                                    Ok(u) => Some(u),
                                    Err(e) => {
                                        tracing::warn!(
                                            port = %spec.name,
                                            "tunnel-GSO underlay port not used, sockets only: {e}"
                                        );
                                        sockets_why = format!("no tunnel-GSO port: {e}");
                                        None
                                    }
                                }
                            }
                            (local, gso) => {
                                sockets_why = match gso {
                                    Err(why) => why.to_string(),
                                    Ok(()) if !offloads => "tunnel_gso needs offloads on".into(),
                                    Ok(()) => "tunnel-GSO needs an IPv4 local=".into(),
                                };
                                if let Some(IpAddr::V4(local)) = local {
                                    crate::port::underlay::remove_stale_filter(
                                        local,
                                        v[0].local_addr().port(),
                                    );
                                }
                                None
                            }
                        };
                        Arc::new(UdpSockets {
                            per_worker: v,
                            underlay,
                            sockets_why,
                        })
                    }
                };
                let header = if matches!(spec.kind, SpecKind::Vxlan(_)) {
                    TunnelHeader::vxlan()
                } else {
                    TunnelHeader::geneve(0x6558, &[])
                        .map_err(|e| io::Error::other(format!("geneve header: {e}")))?
                };
                let v6 = sockets[0].local_addr().is_ipv6();
                (
                    PortDev::Udp(UdpTunnel {
                        sockets,
                        header,
                        dst_port,
                    }),
                    Some(tunnel_conf(spec, t, v6)),
                )
            }
            SpecKind::Ipip(t) => {
                let local = match t.local {
                    Some(IpAddr::V4(a)) => a,
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "ipip port '{}' needs local=IPV4 (the outer source address)",
                                spec.name
                            ),
                        ));
                    }
                };
                let v4 = RawIpSocket::open(IPPROTO_IPIP, Some(local))?;
                let v6 = RawIpSocket::open(IPPROTO_IPV6, Some(local))?;
                let conf = tunnel_conf(spec, t, false);
                let remote = match conf.remote {
                    Some(IpAddr::V4(a)) => a,
                    // remote=flow (a fixed remote has local's family: parse checks it).
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                let template = encap::IpipTemplate::new(
                    local,
                    remote,
                    encap::IpipParams {
                        ttl: conf.ttl,
                        decrement_inner_ttl: true,
                    },
                );
                (
                    PortDev::Ipip(IpipTunnel {
                        v4,
                        v6,
                        local,
                        template,
                    }),
                    Some(conf),
                )
            }
        };
        let egress = egress_of(&dev, tunnel.as_ref())
            .ok_or_else(|| io::Error::other("tunnel port without its settings"))?;
        Ok(PortIo {
            ofport,
            spec: spec.clone(),
            dev,
            tunnel,
            egress,
            counters: PortCounters::default(),
            capture: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// The pipeline's view of the port kind.
    pub fn kind(&self) -> PortKind {
        match self.dev {
            PortDev::Tap(_) => PortKind::Tap,
            _ => PortKind::Tunnel,
        }
    }
}

/// The egress decision's view of a port (`None`: a tunnel without its settings).
fn egress_of(dev: &PortDev, conf: Option<&TunnelConf>) -> Option<EgressPort> {
    let tunnel = |encap, ipv6| {
        conf.map(|c| {
            EgressPort::Tunnel(TunnelEgress {
                encap,
                remote: c.remote,
                key: c.key,
                mtu: c.mtu,
                ipv6,
            })
        })
    };
    match dev {
        PortDev::Tap(t) => Some(EgressPort::Tap {
            vnet_hdr: t.vnet_hdr(),
        }),
        PortDev::Udp(u) => tunnel(
            TunnelEncap::Udp,
            u.sockets.first().is_some_and(|s| s.local_addr().is_ipv6()),
        ),
        PortDev::Ipip(_) => tunnel(TunnelEncap::Ipip, false),
    }
}

fn tunnel_conf(spec: &PortSpec, t: &weft_flow::port::TunnelOptions, v6: bool) -> TunnelConf {
    let mtu = t
        .mtu
        .unwrap_or_else(|| underlay_mtu(t.local).saturating_sub(overhead(spec, v6)));
    TunnelConf {
        remote: match t.remote {
            Remote::Fixed(ip) => Some(ip),
            Remote::Flow => None,
        },
        key: match t.key {
            Key::Fixed(k) => Some(k),
            Key::Flow => None,
        },
        allowed: t.allowed_remotes.clone(),
        mtu,
        ttl: t.ttl.unwrap_or(64),
    }
}

impl EgressPorts for PortSet {
    #[inline]
    fn egress(&self, port: u32) -> Option<EgressPort> {
        self.get(port).map(|p| p.egress)
    }
}

/// An immutable set of opened ports, indexed by number, published to the workers.
#[derive(Debug, Default)]
pub struct PortSet {
    /// Changes with every add or delete.
    pub version: u64,
    ports: Vec<Arc<PortIo>>,
    /// Index by ofport (dense: port numbers are small).
    by_number: Vec<Option<usize>>,
    /// For each UDP tunnel port: the ports sharing its sockets, as (remote, index into
    /// `ports`), fixed remotes first and the `remote=flow` port (if any) last.
    groups: Vec<Vec<(Option<IpAddr>, usize)>>,
    group_of: Vec<Option<usize>>,
}

impl PortSet {
    /// A set holding `ports`.
    pub fn new(version: u64, mut ports: Vec<Arc<PortIo>>) -> PortSet {
        ports.sort_by_key(|p| p.ofport);
        let max = ports.iter().map(|p| p.ofport as usize).max().unwrap_or(0);
        let mut by_number = vec![None; max + 1];
        for (i, p) in ports.iter().enumerate() {
            by_number[p.ofport as usize] = Some(i);
        }
        let mut groups: Vec<Vec<(Option<IpAddr>, usize)>> = Vec::new();
        let mut group_of = vec![None; ports.len()];
        for (i, p) in ports.iter().enumerate() {
            let PortDev::Udp(u) = &p.dev else { continue };
            let g = (0..i).find_map(|j| match &ports[j].dev {
                PortDev::Udp(o) if Arc::ptr_eq(&o.sockets, &u.sockets) => group_of[j],
                _ => None,
            });
            let g = g.unwrap_or_else(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            group_of[i] = Some(g);
            groups[g].push((p.tunnel.as_ref().and_then(|t| t.remote), i));
        }
        for g in &mut groups {
            g.sort_by_key(|(remote, _)| remote.is_none());
        }
        PortSet {
            version,
            ports,
            by_number,
            groups,
            group_of,
        }
    }

    /// The tunnel port that a datagram from `src`, received on the socket of port
    /// `ofport`, belongs to: the one whose `remote=` is `src`, else the `remote=flow`
    /// one; `None` when no port on that socket expects it. Non-UDP ports map to
    /// themselves.
    #[inline]
    pub fn demux(&self, ofport: u32, src: IpAddr) -> Option<&Arc<PortIo>> {
        let i = (*self.by_number.get(ofport as usize)?)?;
        let Some(g) = self.group_of[i] else {
            return self.ports.get(i);
        };
        self.groups[g]
            .iter()
            .find(|(remote, _)| remote.is_none_or(|r| r == src))
            .map(|(_, j)| &self.ports[*j])
    }

    /// Whether `ofport` is the lowest-numbered of the tunnel ports that share its
    /// sockets (true for a port that shares none). Not for the packet path.
    pub fn leads_socket_group(&self, ofport: u32) -> bool {
        let Some(&Some(i)) = self.by_number.get(ofport as usize) else {
            return false;
        };
        // `ports` is sorted by number, so the lowest index is the lowest number.
        self.group_of[i].is_none_or(|g| self.groups[g].iter().all(|&(_, j)| j >= i))
    }

    /// The sockets a new UDP tunnel port must share, if a port of the same type, local
    /// address and UDP port exists: `Ok(Some(..))`; `Err(name)` when that port already
    /// takes the same `remote=` (or is a tunnel of the other type on that UDP port).
    pub fn udp_sharing(&self, spec: &PortSpec) -> Result<Option<Arc<UdpSockets>>, String> {
        let Some(udp) = spec.udp_port() else {
            return Ok(None);
        };
        let t = spec.kind.tunnel();
        let local = t.and_then(|t| t.local);
        let remote = t.map(|t| t.remote);
        let mut found = None;
        for p in &self.ports {
            let (PortDev::Udp(u), Some(other)) = (&p.dev, p.spec.kind.tunnel()) else {
                continue;
            };
            let same_socket = p.spec.udp_port() == Some(udp)
                && (local == other.local || local.is_none() || other.local.is_none());
            if !same_socket {
                continue;
            }
            if p.spec.port_type() != spec.port_type()
                || local != other.local
                || remote == Some(other.remote)
            {
                return Err(p.spec.name.clone());
            }
            found = Some(Arc::clone(&u.sockets));
        }
        Ok(found)
    }

    /// The port with this number.
    #[inline]
    pub fn get(&self, ofport: u32) -> Option<&Arc<PortIo>> {
        let i = (*self.by_number.get(ofport as usize)?)?;
        self.ports.get(i)
    }

    /// Every port, by number.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<PortIo>> + '_ {
        self.ports.iter()
    }

    /// The pipeline's port map for this set.
    pub fn port_map(&self) -> PortMap {
        let mut m = PortMap::new();
        for p in &self.ports {
            // Names and numbers are unique in a set; the switch checked them.
            let _ = m.insert(p.ofport, &p.spec.name, p.kind());
            if let SpecKind::Tap(t) = &p.spec.kind {
                m.set_tag(p.ofport, t.tag);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_slot_has_its_own_index_and_label() {
        let mut all: Vec<PortDrop> = Vec::new();
        all.extend(DropReason::ALL.iter().map(|&r| PortDrop::Pipeline(r)));
        all.extend(encap::DropReason::ALL.iter().map(|&r| PortDrop::Decap(r)));
        all.extend(IoDrop::ALL.iter().map(|&r| PortDrop::Io(r)));
        all.extend(encap::DropReason::ALL.iter().map(|&r| PortDrop::Encap(r)));
        assert_eq!(all.len(), PORT_DROPS);
        let mut labels = std::collections::HashSet::new();
        for (i, d) in all.iter().enumerate() {
            assert_eq!(d.index(), i, "{d:?}");
            assert_eq!(PortDrop::from_index(i), *d);
            assert!(labels.insert(d.label()), "{} twice", d.label());
        }
        // An encapsulation refusal is not counted as a decapsulation one.
        let ttl = encap::DropReason::TtlExpired;
        assert_eq!(PortDrop::Encap(ttl).label(), "encap_ttl_expired");
        assert_eq!(PortDrop::Decap(ttl).label(), "decap_ttl_expired");
        let c = PortCounters::default();
        c.drop(PortDrop::Encap(ttl));
        assert_eq!(c.drop_count(PortDrop::Encap(ttl)), 1);
        assert_eq!(c.drop_count(PortDrop::Decap(ttl)), 0);
    }

    /// A full queue or buffer is told apart from other refusals, and is a transmit drop.
    #[test]
    fn a_full_queue_is_its_own_transmit_drop() {
        for errno in [libc::EAGAIN, libc::ENOBUFS] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(IoDrop::tx(&e), IoDrop::TxQueueFull, "{e}");
        }
        for errno in [libc::ENETDOWN, libc::EIO, libc::EINVAL] {
            let e = io::Error::from_raw_os_error(errno);
            assert_eq!(IoDrop::tx(&e), IoDrop::TxError, "{e}");
        }
        assert!(weft_flow::port::is_tx_drop(IoDrop::TxQueueFull.as_str()));
        assert!(!weft_flow::port::is_tx_drop(IoDrop::RxOverflow.as_str()));
        // What the pod could not hand over is lost on the way in (rx_dropped).
        assert!(!weft_flow::port::is_tx_drop(IoDrop::TapQueueFull.as_str()));
        assert!(!weft_flow::port::is_tx_drop(
            IoDrop::UnderlayQueueFull.as_str()
        ));
    }

    /// A count read from the kernel only ever goes up, whatever order readers store in.
    #[test]
    fn a_kernel_count_is_raised_never_lowered() {
        let c = PortCounters::default();
        let why = PortDrop::Io(IoDrop::TapQueueFull);
        c.raise(why, 7);
        assert_eq!(c.drop_count(why), 7);
        c.raise(why, 3);
        assert_eq!(c.drop_count(why), 7);
        c.raise(why, 9);
        assert_eq!(c.drop_count(why), 9);
        assert_eq!(c.drops(), vec![(why, 9)]);
        assert_eq!(why.label(), "tap_queue_full");
    }

    /// `weft_flow::port::TX_DROP_REASONS` is the one list of transmit drops (the
    /// control protocol's `tx_dropped` sums them): each is a label this datapath counts,
    /// so renaming a reason here cannot silently move it to `rx_dropped`.
    #[test]
    fn every_tx_drop_reason_is_a_port_drop_label() {
        let labels: Vec<String> = (0..PORT_DROPS)
            .map(|i| PortDrop::from_index(i).label())
            .collect();
        for reason in weft_flow::port::TX_DROP_REASONS {
            assert!(
                labels.iter().any(|l| l == reason),
                "{reason} is not a port drop label: {labels:?}"
            );
        }
    }
}
