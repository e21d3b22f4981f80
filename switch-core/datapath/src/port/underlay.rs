//! The tunnel-GSO underlay port: Weft's own TAP on the node, joined to the underlay
//! device by tc, that carries whole UDP-tunnel super-frames (Linux 6.17+).
//!
//! With `TUN_F_UDP_TUNNEL_GSO` a TAP takes and gives VXLAN/Geneve packets of up to 64 KB
//! whose inner TCP payload the kernel still has to cut, each behind a 24-byte
//! `virtio_net_hdr` (`encap::offload::TunnelVnetHdr`). Weft then writes one
//! encapsulated super-frame per pod super-frame (outer Ethernet, IP, UDP and tunnel
//! header in the read buffer's headroom, one `writev`, the payload not copied in
//! userspace), and reads the peers' super-frames whole, instead of cutting and
//! coalescing 45 segments in software.
//!
//! The TAP (`wgso<port>`, not persistent: it goes when weftd closes it) is joined to the
//! underlay device by two tc filters (`u32` and `mirred`; `flower` and `matchall` are
//! not in every kernel), set up over rtnetlink ([`super::tc`]):
//!
//! - on the underlay device's ingress, IPv4 UDP to the tunnel's local address and UDP
//!   port is redirected to the TAP (so it is read by Weft, never by a socket);
//! - on the TAP's ingress, everything Weft writes is redirected to the underlay
//!   device's egress.
//!
//! Nothing else of the node's traffic on the underlay device is touched. Since Weft writes
//! the outer Ethernet header itself, the next hop and its MAC come from the kernel's
//! routes and neighbours ([`super::neigh`]). The feature is probed once ([`probe`]); a
//! kernel without it keeps today's sockets, which also carry every packet whose next hop
//! is not resolved yet (their sending makes the kernel resolve it).

use super::tc;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use encap::offload::VIRTIO_NET_HDR_TNL_LEN;

/// TUNSETOFFLOAD flags.
pub const TUN_F_CSUM: u32 = 0x01;
/// TSO over IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TSO over IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// USO over IPv4.
pub const TUN_F_USO4: u32 = 0x20;
/// USO over IPv6.
pub const TUN_F_USO6: u32 = 0x40;
/// UDP-tunnel GSO (6.17+; only with a plain GSO flag in the same call).
pub const TUN_F_UDP_TUNNEL_GSO: u32 = 0x080;
/// UDP-tunnel GSO with the outer UDP checksum.
pub const TUN_F_UDP_TUNNEL_GSO_CSUM: u32 = 0x100;
/// What the underlay TAP asks for.
pub const OFFLOADS: u32 = TUN_F_CSUM
    | TUN_F_TSO4
    | TUN_F_TSO6
    | TUN_F_USO4
    | TUN_F_USO6
    | TUN_F_UDP_TUNNEL_GSO
    | TUN_F_UDP_TUNNEL_GSO_CSUM;
/// A bit no kernel defines (yet): a kernel that accepts it checks nothing, and the probe
/// would prove nothing.
const UNKNOWN_OFFLOAD: u32 = 0x200;

nix::ioctl_write_ptr_bad!(tunsetiff, 0x4004_54ca, libc::ifreq);
nix::ioctl_write_int_bad!(tunsetoffload, 0x4004_54d0);
nix::ioctl_write_ptr!(tunsetvnethdrsz, b'T', 216, libc::c_int);

/// Creates a TAP queue (`name` empty: the kernel picks one) with a 24-byte vnet header.
fn tap_queue(name: &str, multi_queue: bool) -> io::Result<(OwnedFd, String)> {
    let path = c"/dev/net/tun";
    // SAFETY: a valid NUL-terminated path; the returned descriptor is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tap name '{name}' is longer than 15 bytes"),
        ));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *s as libc::c_char;
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    if multi_queue {
        flags |= libc::IFF_MULTI_QUEUE;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: an open tun descriptor and an initialised ifreq that outlives the call.
    unsafe { tunsetiff(fd.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    let size = VIRTIO_NET_HDR_TNL_LEN as libc::c_int;
    // SAFETY: an attached tun descriptor and a c_int that outlives the call.
    unsafe { tunsetvnethdrsz(fd.as_raw_fd(), &size) }
        .map_err(|e| io::Error::other(format!("TUNSETVNETHDRSZ 24: {e}")))?;
    let got: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((fd, String::from_utf8_lossy(&got).into_owned()))
}

fn set_offload(fd: RawFd, flags: u32) -> io::Result<()> {
    // SAFETY: an attached tun descriptor; TUNSETOFFLOAD takes its argument by value.
    unsafe { tunsetoffload(fd, flags as libc::c_int) }
        .map(drop)
        .map_err(io::Error::from)
}

/// Whether this kernel's TAP carries UDP-tunnel super-frames: a throw-away TAP (never
/// up, gone when the probe returns) must refuse an unknown offload bit (so the kernel
/// checks the flags at all) and accept [`OFFLOADS`]. `Err` says why not, for the log.
pub fn probe() -> Result<(), String> {
    let (fd, _) = tap_queue("", false).map_err(|e| format!("cannot open a tap: {e}"))?;
    if set_offload(fd.as_raw_fd(), TUN_F_CSUM | TUN_F_TSO4 | UNKNOWN_OFFLOAD).is_ok() {
        return Err(
            "the kernel accepts unknown TAP offload flags, so the probe proves nothing".into(),
        );
    }
    set_offload(fd.as_raw_fd(), OFFLOADS).map_err(|e| {
        format!("TUNSETOFFLOAD with TUN_F_UDP_TUNNEL_GSO: {e} (needs Linux 6.17 or later)")
    })
}

/// The interface that holds `addr` (in the calling thread's namespace); loopback is
/// refused (such tunnels keep their sockets).
pub fn device_of(addr: Ipv4Addr) -> io::Result<String> {
    for ifa in nix::ifaddrs::getifaddrs().map_err(io::Error::from)? {
        if ifa
            .address
            .and_then(|a| a.as_sockaddr_in().map(|s| s.ip()))
            .is_some_and(|ip| ip == addr)
        {
            if ifa
                .flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
            {
                // Nothing to segment on loopback, and its traffic is the node's own.
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{addr} is on the loopback device {}", ifa.interface_name),
                ));
            }
            return Ok(ifa.interface_name);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no interface has the address {addr}"),
    ))
}

/// Removes the tc filter an earlier weftd's underlay port for `local:dst_port` may have
/// left on its device (a weftd that was killed cannot remove it, and its redirect to a
/// TAP that is gone would drop the tunnel's packets before the sockets see them).
/// Called when the tunnel opens with sockets only; nothing happens when there is none.
pub fn remove_stale_filter(local: Ipv4Addr, dst_port: u16) {
    let Ok(device) = device_of(local) else { return };
    let Ok(ifindex) = nix::net::if_::if_nametoindex(device.as_str()) else {
        return;
    };
    let pref = dst_port.max(1);
    if tc::has_redirect(ifindex, pref).unwrap_or(false)
        && tc::del_ingress_filter(ifindex, pref).is_ok()
    {
        tracing::info!(device = %device, udp_port = dst_port, "removed a stale tunnel-GSO tc filter");
    }
}

/// The queue length of the underlay TAP. The redirect from the underlay device has no
/// backpressure: a burst the workers cannot read at once waits in this queue or is
/// dropped (the kernel's default of 1000 lost 6-10% of a 300,000-frame 64-byte burst in
/// `compare`). A full queue of 64-byte frames holds about 60 MB of kernel memory.
pub const UNDERLAY_TXQUEUELEN: u32 = 65536;

/// An open underlay TAP, one queue per worker, joined to its device by tc.
#[derive(Debug)]
pub struct UnderlayTap {
    queues: Vec<OwnedFd>,
    ifname: String,
    /// The underlay device (holds the tunnel's local address).
    device: String,
    ifindex: u32,
    pref: u16,
    /// What the redirect could not queue toward Weft (the TAP's `tx_dropped`, in weftd's
    /// namespace, where the TAP is).
    drops: super::neigh::KernelDrops,
}

impl UnderlayTap {
    /// Creates the TAP `ifname` with `queues` queues and joins it to the device that
    /// holds `local`: UDP to `local:dst_port` arriving there is read from the TAP, and
    /// what is written to the TAP leaves through the device. The filters are removed on
    /// drop (the TAP itself goes with its last queue).
    pub fn open(
        ifname: &str,
        local: Ipv4Addr,
        dst_port: u16,
        queues: usize,
    ) -> io::Result<UnderlayTap> {
        let what = |e: io::Error| io::Error::new(e.kind(), format!("underlay tap '{ifname}': {e}"));
        let device = device_of(local).map_err(what)?;
        let ifindex = nix::net::if_::if_nametoindex(device.as_str()).map_err(|e| what(e.into()))?;
        let mut all = Vec::with_capacity(queues.max(1));
        for _ in 0..queues.max(1) {
            let (fd, _) = tap_queue(ifname, true).map_err(what)?;
            set_nonblocking(fd.as_raw_fd()).map_err(what)?;
            all.push(fd);
        }
        super::steer::attach_if_enabled(all[0].as_raw_fd(), all.len()).map_err(what)?;
        set_offload(all[0].as_raw_fd(), OFFLOADS).map_err(|e| {
            what(io::Error::other(format!(
                "TUNSETOFFLOAD with UDP tunnel GSO: {e}"
            )))
        })?;
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{device}/mtu"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "1500".into());
        // The filter's preference is the UDP port, so one tunnel per UDP port and device
        // owns one filter, and a stale one of an earlier weftd is replaced.
        let pref = dst_port.max(1);
        let tap_index = nix::net::if_::if_nametoindex(ifname).map_err(|e| what(e.into()))?;
        let drops = super::neigh::KernelDrops::open(ifname).map_err(what)?;
        let tap = UnderlayTap {
            queues: all,
            ifname: ifname.to_string(),
            device: device.clone(),
            ifindex,
            pref,
            drops,
        };
        // The TAP is a pipe to the underlay device, not an interface of the node: no
        // IPv6 autoconfiguration, router solicitations or MLD reports of its own.
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"),
            "1",
        );
        let nl = |what_: &str, e: io::Error| {
            what(io::Error::new(
                e.kind(),
                format!("{what_} (rtnetlink): {e}"),
            ))
        };
        let mtu: u32 = mtu.parse().unwrap_or(1500);
        tc::link_up_noarp(tap_index, mtu, UNDERLAY_TXQUEUELEN).map_err(|e| {
            nl(
                &format!(
                    "setting {ifname} up, arp off, mtu {mtu}, txqueuelen {UNDERLAY_TXQUEUELEN}"
                ),
                e,
            )
        })?;
        tc::add_clsact(ifindex).map_err(|e| nl(&format!("a clsact qdisc on {device}"), e))?;
        // A filter an earlier weftd left at this preference is replaced.
        let _ = tc::del_ingress_filter(ifindex, pref);
        tc::add_clsact(tap_index).map_err(|e| nl(&format!("a clsact qdisc on {ifname}"), e))?;
        // Everything written to the TAP leaves through the device...
        tc::add_filter(&tc::u32_redirect(tap_index, 1, tc::ETH_P_ALL, &[], ifindex))
            .map_err(|e| nl(&format!("the filter {ifname} -> {device}"), e))?;
        // ...and the tunnel's UDP to its own address comes to the TAP.
        let matches = [
            tc::U32Match::ip_dst(local),
            tc::U32Match::ip_protocol(17),
            tc::U32Match::udp_dport(dst_port),
        ];
        tc::add_filter(&tc::u32_redirect(
            ifindex,
            pref,
            tc::ETH_P_IP,
            &matches,
            tap_index,
        ))
        .map_err(|e| nl(&format!("the filter {device} -> {ifname}"), e))?;
        tracing::info!(
            tap = ifname,
            device = %device,
            udp_port = dst_port,
            "tunnel-GSO underlay port joined to its device by tc"
        );
        Ok(tap)
    }

    /// Tunnel packets the kernel dropped on their way into the TAP since it opened,
    /// because its queue toward Weft was full (the TAP's `tx_dropped`); `None` when the
    /// kernel cannot be asked. One rtnetlink request: not for the packet path.
    pub fn queue_full_drops(&self) -> Option<u64> {
        self.drops.since_open()
    }

    /// The TAP's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The underlay device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The underlay device's index (routes toward peers must leave through it).
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The raw descriptor of queue `i`, to register with a poller.
    pub fn queue_fd(&self, i: usize) -> RawFd {
        self.queues[i % self.queues.len()].as_raw_fd()
    }

    /// Reads one frame from queue `i`: its 24-byte header into `hdr`, the frame into
    /// `buf`; returns the frame's length, `WouldBlock` when there is none.
    #[inline]
    pub fn recv(
        &self,
        i: usize,
        hdr: &mut [u8; VIRTIO_NET_HDR_TNL_LEN],
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        // SAFETY: both iovecs describe writable memory borrowed for the call.
        let n = unsafe { libc::readv(self.queue_fd(i), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        (n as usize)
            .checked_sub(VIRTIO_NET_HDR_TNL_LEN)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short tap read"))
    }

    /// Writes one frame with its 24-byte header to queue `i` (one `writev`).
    #[inline]
    pub fn send(
        &self,
        i: usize,
        hdr: &[u8; VIRTIO_NET_HDR_TNL_LEN],
        frame: &[u8],
    ) -> io::Result<usize> {
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs describe memory borrowed for the call; writev only reads.
        let n = unsafe { libc::writev(self.queue_fd(i), iov.as_ptr(), 2) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize).saturating_sub(VIRTIO_NET_HDR_TNL_LEN))
    }
}

impl Drop for UnderlayTap {
    fn drop(&mut self) {
        // The TAP's own filter goes with the device; the underlay's must be removed.
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        match tc::del_ingress_filter(self.ifindex, self.pref) {
            Ok(_) => tracing::info!(
                tap = %self.ifname,
                device = %self.device,
                "underlay tap's tc filter removed (on thread {thread})"
            ),
            Err(e) => tracing::warn!(
                device = %self.device,
                "removing the underlay tap's tc filter (pref {}) by rtnetlink: {e}",
                self.pref
            ),
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an open descriptor with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The tunnel-GSO underlay of one socket group: its TAP and the next-hop cache (with
/// its refresher thread, stopped and joined on drop).
#[derive(Debug)]
pub struct Underlay {
    /// The TAP joined to the underlay device.
    pub tap: UnderlayTap,
    /// Next hops toward the peers, read by the workers.
    pub neigh: std::sync::Arc<super::neigh::Neighbours>,
    /// The tunnel's local address (the outer source).
    pub local: Ipv4Addr,
    /// The tunnel's UDP port.
    pub dst_port: u16,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl Underlay {
    /// Opens the TAP `ifname` for the tunnel on `local:dst_port` with `queues` queues,
    /// and starts following the next hops through its device.
    pub fn open(
        ifname: &str,
        local: Ipv4Addr,
        dst_port: u16,
        queues: usize,
    ) -> io::Result<Underlay> {
        let tap = UnderlayTap::open(ifname, local, dst_port, queues)?;
        let neigh = std::sync::Arc::new(super::neigh::Neighbours::new(tap.ifindex()));
        let refresher = Some(neigh.spawn_refresher()?);
        Ok(Underlay {
            tap,
            neigh,
            local,
            dst_port,
            refresher,
        })
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        self.neigh.stop();
        if let Some(h) = self.refresher.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unknown_addresses_have_no_underlay_device() {
        let e = device_of(Ipv4Addr::LOCALHOST).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported, "{e}");
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = device_of(Ipv4Addr::new(198, 18, 0, 254)).unwrap_err();
        assert!(e.to_string().contains("198.18.0.254"), "{e}");
    }
}
