//! TAP devices: a pod's Ethernet interface, with `weftd` on the other end.
//!
//! `weftd` creates the device through `/dev/net/tun` (IFF_TAP, IFF_NO_PI,
//! IFF_MULTI_QUEUE: one queue per worker) inside the pod's namespace, configures its
//! MTU and MAC, brings it up and makes it persistent (TUNSETPERSIST). A persistent device
//! outlives `weftd`: the pod keeps its addresses and routes across a restart, and the
//! next `weftd` re-attaches to it by name. `del-port` clears persistence, so the device
//! disappears when its last queue closes.
//!
//! Re-attaching is only for `weftd`'s own ports ([`Attach::CreateOrReattach`]: the
//! saved state at a restart, the config file at start). A port added at run time
//! ([`Attach::Create`]) must create its device: attaching a second queue owner to a
//! device that already exists (another port's pod interface) would spread that pod's
//! flows over both owners, rewrite its MAC and MTU, and let `del-port` clear its
//! persistence.
//!
//! Device creation uses `tun-rs`; the queues are read and written directly, non-blocking,
//! by the workers.
//!
//! With offloads on (the default) the device is opened with IFF_VNET_HDR and
//! TUNSETOFFLOAD (checksum, TSO4, TSO6, and USO4/USO6 when the kernel has them, 6.2+):
//! the pod's kernel then hands over TCP (and UDP GSO) super-frames of up to 64 KB with
//! their checksums left to complete, each behind a 10-byte `virtio_net_hdr`, and accepts
//! such super-frames back. Every read and write of such a queue carries that header.
//! With offloads off the offload mask is cleared (it is device-wide state that outlives
//! a previous `weftd`), so the queues carry plain frames.
//!
//! A TAP has no backpressure: the pod's kernel puts each frame it sends into the queue
//! toward `weftd` (a ring of `txqueuelen` entries per queue) and drops it when the ring
//! is full, counting it in the device's `tx_dropped`. `txqueuelen=` sets the ring's
//! length (SIOCSIFTXQLEN, after the queues are attached, so the kernel resizes each
//! ring or refuses); the drops are read back over rtnetlink from the pod's namespace
//! ([`Tap::queue_full_drops`]) and become the port's `tap_queue_full`.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};
use weft_flow::port::TapOptions;

use super::neigh::KernelDrops;
use super::netns::{NetnsId, in_netns, netns_id};

/// Whether opening a TAP device may attach to one that exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// The device must not exist: it is created (a port added at run time).
    Create,
    /// Re-attach to the device if it exists, else create it (`weftd`'s own ports at
    /// start: the saved state, the config file).
    CreateOrReattach,
}

/// An open TAP device: its queues, one per worker.
pub struct Tap {
    queues: Vec<SyncDevice>,
    vnet: bool,
    uso: bool,
    ifname: String,
    netns: Option<String>,
    netns_id: NetnsId,
    reattached: bool,
    drops: KernelDrops,
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("ifname", &self.ifname)
            .field("netns", &self.netns)
            .field("queues", &self.queues.len())
            .finish()
    }
}

nix::ioctl_write_int!(tunsetpersist, b'T', 203);
nix::ioctl_write_ptr!(tunsetvnethdrsz, b'T', 216, libc::c_int);

/// Length of the `virtio_net_hdr` in front of every frame of a queue with offloads on
/// (encap's, where the header's format is: one constant for both).
pub use encap::offload::VIRTIO_NET_HDR_LEN as VNET_HDR_LEN;
/// Most parts of a frame written by [`Tap::send_parts`]: the first segment's headers and
/// the payloads of the most segments a coalesced frame references.
pub const MAX_PARTS: usize = 1 + encap::offload::MAX_SPANS;

impl Tap {
    /// Creates (or re-attaches to) the TAP device `ifname` with `queues` queues, in the
    /// namespace `opts.netns` if given, applies `opts.mtu` and `opts.mac`, brings it up
    /// and makes it persistent. Same as [`Tap::open_with`] with
    /// [`Attach::CreateOrReattach`].
    pub fn open(ifname: &str, opts: &TapOptions, queues: usize, offloads: bool) -> io::Result<Tap> {
        Tap::open_with(ifname, opts, queues, offloads, Attach::CreateOrReattach)
    }

    /// [`Tap::open`], where `attach` says whether an existing device of that name may be
    /// re-attached; with [`Attach::Create`] one is an `AlreadyExists` error and the
    /// device is left as it is.
    pub fn open_with(
        ifname: &str,
        opts: &TapOptions,
        queues: usize,
        offloads: bool,
        attach: Attach,
    ) -> io::Result<Tap> {
        let queues = queues.max(1);
        let netns = opts.netns.clone();
        let ns_id = netns_id(netns.as_deref())?;
        let (queues, reattached, drops) = in_netns(netns.as_deref(), || {
            let reattached = nix::net::if_::if_nametoindex(ifname).is_ok();
            if reattached && attach == Attach::Create {
                let place = match &netns {
                    Some(n) => format!("network namespace '{n}'"),
                    None => "weftd's network namespace".to_string(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "tap '{ifname}': a device of that name exists in {place}; \
                         add-port creates a new TAP device and re-attaches only to weftd's \
                         own ports at restart (choose another ifname=, or delete the device)"
                    ),
                ));
            }
            let mut b = DeviceBuilder::new()
                .name(ifname)
                .layer(Layer::L2)
                .multi_queue(true)
                .offload(offloads)
                .enable(true);
            if let Some(mtu) = opts.mtu {
                b = b.mtu(mtu);
            }
            if let Some(mac) = opts.mac {
                b = b.mac_addr(mac.0);
            }
            let first = b.build_sync().map_err(|e| {
                let what = if reattached {
                    "attaching to the existing device"
                } else {
                    "creating the device"
                };
                io::Error::new(
                    e.kind(),
                    format!("tap '{ifname}': {what}: {e} (is it a TAP device made by weftd?)"),
                )
            })?;
            first
                .persist()
                .map_err(|e| io::Error::new(e.kind(), format!("tap '{ifname}': persist: {e}")))?;
            let mut all = Vec::with_capacity(queues);
            for _ in 1..queues {
                all.push(first.try_clone().map_err(|e| {
                    io::Error::new(e.kind(), format!("tap '{ifname}': opening a queue: {e}"))
                })?);
            }
            all.insert(0, first);
            for q in &all {
                q.set_nonblocking(true)?;
            }
            let ready = opts
                .txqueuelen
                .map_or(Ok(()), |n| set_txqueuelen(ifname, n))
                .and_then(|()| KernelDrops::open(ifname));
            match ready {
                Ok(drops) => Ok((all, reattached, drops)),
                Err(e) => {
                    // A device made here goes again (it is deleted as its queues close);
                    // one re-attached to is left as it was.
                    if !reattached {
                        // SAFETY: an open TUN queue; TUNSETPERSIST takes its argument
                        // by value.
                        let _ = unsafe { tunsetpersist(all[0].as_raw_fd(), 0) };
                    }
                    Err(io::Error::new(e.kind(), format!("tap '{ifname}': {e}")))
                }
            }
        })?;
        super::steer::attach_if_enabled(queues[0].as_raw_fd(), queues.len())
            .map_err(|e| io::Error::other(format!("tap '{ifname}': {e}")))?;
        let vnet = queues[0].tcp_gso();
        let uso = queues[0].udp_gso();
        if vnet {
            // The header size is device-wide state that another user may have changed
            // (12 with num_buffers); every read and write here assumes 10.
            let size = VNET_HDR_LEN as libc::c_int;
            // SAFETY: an open TUN queue and a pointer to a c_int that outlives the call.
            unsafe { tunsetvnethdrsz(queues[0].as_raw_fd(), &size) }
                .map_err(|e| io::Error::other(format!("tap '{ifname}': TUNSETVNETHDRSZ: {e}")))?;
        }
        if offloads && !uso {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                tracing::info!(
                    "this kernel has no TAP UDP segmentation offload (USO, Linux 6.2+): \
                     pods' UDP GSO is segmented by their own kernel"
                );
            });
        }
        Ok(Tap {
            queues,
            vnet,
            uso,
            ifname: ifname.to_string(),
            netns,
            netns_id: ns_id,
            reattached,
            drops,
        })
    }

    /// Frames the pod sent that the kernel dropped since the port opened, nearly all
    /// because the queue toward `weftd` was full (the device's `tx_dropped`); `None`
    /// when the kernel cannot be asked. One rtnetlink request: not for the packet path.
    pub fn queue_full_drops(&self) -> Option<u64> {
        self.drops.since_open()
    }

    /// The identity of the namespace the device lives in.
    pub fn netns_id(&self) -> NetnsId {
        self.netns_id
    }

    /// The device's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The namespace the device lives in (`None`: weftd's own).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// True when the device existed already (a restart of weftd) and was re-attached.
    pub fn reattached(&self) -> bool {
        self.reattached
    }

    /// Number of queues.
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// Queue `i` (modulo the number of queues).
    pub fn queue(&self, i: usize) -> &SyncDevice {
        &self.queues[i % self.queues.len()]
    }

    /// The raw descriptor of queue `i`, to register with a poller.
    pub fn queue_fd(&self, i: usize) -> RawFd {
        self.queue(i).as_raw_fd()
    }

    /// Whether the queues carry a `virtio_net_hdr` (offloads on).
    pub fn vnet_hdr(&self) -> bool {
        self.vnet
    }

    /// Whether UDP segmentation offload (USO) is on as well.
    pub fn uso(&self) -> bool {
        self.uso
    }

    /// Reads one frame from queue `i` into `buf`, its `virtio_net_hdr` (offloads on)
    /// into `hdr`, which is zeroed otherwise; `WouldBlock` when there is none. Returns
    /// the frame's length.
    #[inline]
    pub fn recv(
        &self,
        i: usize,
        hdr: &mut [u8; VNET_HDR_LEN],
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if !self.vnet {
            *hdr = [0; VNET_HDR_LEN];
            return self.queue(i).recv(buf);
        }
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: VNET_HDR_LEN,
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
        let n = n as usize;
        if n < VNET_HDR_LEN {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short tap read"));
        }
        Ok(n - VNET_HDR_LEN)
    }

    /// Writes one frame to queue `i` (behind an all-zero `virtio_net_hdr` when offloads
    /// are on: no offload asked for).
    #[inline]
    pub fn send(&self, i: usize, frame: &[u8]) -> io::Result<usize> {
        if self.vnet {
            self.send_with(i, &[0; VNET_HDR_LEN], frame)
        } else {
            self.queue(i).send(frame)
        }
    }

    /// Writes one frame made of `parts` (in order) to queue `i` with one `writev`,
    /// behind `hdr` when the device has the `virtio_net_hdr` (at most [`MAX_PARTS`]
    /// parts; more is `EINVAL`). Returns the frame bytes written.
    pub fn send_parts(
        &self,
        i: usize,
        hdr: &[u8; VNET_HDR_LEN],
        parts: &[&[u8]],
    ) -> io::Result<usize> {
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PARTS + 1];
        let skip = usize::from(!self.vnet);
        if parts.len() > MAX_PARTS {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        iov[0] = libc::iovec {
            iov_base: hdr.as_ptr() as *mut libc::c_void,
            iov_len: VNET_HDR_LEN,
        };
        for (v, p) in iov[1..].iter_mut().zip(parts) {
            *v = libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            };
        }
        let n = parts.len() + 1 - skip;
        // SAFETY: the iovecs describe memory borrowed for the call; writev only reads.
        let rc = unsafe { libc::writev(self.queue_fd(i), iov[skip..].as_ptr(), n as i32) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let hl = if self.vnet { VNET_HDR_LEN } else { 0 };
        Ok((rc as usize).saturating_sub(hl))
    }

    /// Writes one frame with its `virtio_net_hdr` to queue `i` (offloads on; the header
    /// is left out when they are off, and the frame must then need no offload).
    #[inline]
    pub fn send_with(&self, i: usize, hdr: &[u8; VNET_HDR_LEN], frame: &[u8]) -> io::Result<usize> {
        if !self.vnet {
            return self.queue(i).send(frame);
        }
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: VNET_HDR_LEN,
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
        Ok((n as usize).saturating_sub(VNET_HDR_LEN))
    }

    /// Clears persistence: the kernel deletes the device when its last queue closes
    /// (when every holder of this `Tap` has dropped it).
    pub fn unpersist(&self) -> io::Result<()> {
        // SAFETY: the descriptor is an open TUN queue owned by `self.queues[0]`, and
        // TUNSETPERSIST takes its argument by value.
        unsafe { tunsetpersist(self.queues[0].as_raw_fd(), 0) }
            .map(drop)
            .map_err(|e| io::Error::other(format!("tap '{}': unpersist: {e}", self.ifname)))
    }

    /// Clears persistence and closes every queue: the kernel then deletes the device.
    pub fn remove(self) -> io::Result<()> {
        self.unpersist()
    }
}

/// Sets the length of the device's queues (SIOCSIFTXQLEN, in the calling thread's
/// namespace). With queues attached the kernel resizes each one's ring, and refuses
/// (EPERM) a length it cannot allocate.
fn set_txqueuelen(ifname: &str, len: u32) -> io::Result<()> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: `ifreq` is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req
        .ifr_name
        .iter_mut()
        .zip(ifname.as_bytes().iter().take(15))
    {
        *d = *s as libc::c_char;
    }
    // `ifr_qlen` in C: the union's int (libc names it only as `ifru_ifindex`).
    req.ifr_ifru.ifru_ifindex = i32::try_from(len).unwrap_or(i32::MAX);
    // SAFETY: a valid socket and an initialised ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFTXQLEN as _, &req) } != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("txqueuelen={len}: the kernel refused the queue length: {e}"),
        ));
    }
    Ok(())
}
