//! TAP devices: a pod's Ethernet interface, with `weftd` on the other end.
//!
//! `weftd` creates the device through `/dev/net/tun` (IFF_TAP, IFF_NO_PI,
//! IFF_MULTI_QUEUE: one queue per worker) inside the pod's namespace, configures its
//! MTU and MAC, brings it up and makes it persistent (TUNSETPERSIST). A persistent device
//! outlives `weftd`: the pod keeps its addresses and routes across a restart, and the
//! next `weftd` re-attaches to it by name. `del-port` clears persistence, so the device
//! disappears when its last queue closes.
//!
//! Device creation uses `tun-rs`; the queues are read and written directly, non-blocking,
//! by the workers.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use control::port::TapOptions;
use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use super::netns::in_netns;

/// An open TAP device: its queues, one per worker.
pub struct Tap {
    queues: Vec<SyncDevice>,
    ifname: String,
    netns: Option<String>,
    reattached: bool,
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

impl Tap {
    /// Creates (or re-attaches to) the TAP device `ifname` with `queues` queues, in the
    /// namespace `opts.netns` if given, applies `opts.mtu` and `opts.mac`, brings it up
    /// and makes it persistent.
    pub fn open(ifname: &str, opts: &TapOptions, queues: usize) -> io::Result<Tap> {
        let queues = queues.max(1);
        let netns = opts.netns.clone();
        let (queues, reattached) = in_netns(netns.as_deref(), || {
            let reattached = nix::net::if_::if_nametoindex(ifname).is_ok();
            let mut b = DeviceBuilder::new()
                .name(ifname)
                .layer(Layer::L2)
                .multi_queue(true)
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
            Ok((all, reattached))
        })?;
        Ok(Tap {
            queues,
            ifname: ifname.to_string(),
            netns,
            reattached,
        })
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

    /// Reads one frame from queue `i` into `buf`; `WouldBlock` when there is none.
    #[inline]
    pub fn recv(&self, i: usize, buf: &mut [u8]) -> io::Result<usize> {
        self.queue(i).recv(buf)
    }

    /// Writes one frame to queue `i`.
    #[inline]
    pub fn send(&self, i: usize, frame: &[u8]) -> io::Result<usize> {
        self.queue(i).send(frame)
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
