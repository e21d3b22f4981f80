//! Batched socket I/O of a worker: `recvmmsg` with UDP GRO on the receive side, a
//! transmit queue flushed with `sendmmsg` (with UDP GSO) on the send side.
//!
//! Both keep their message headers, address and control buffers preallocated in the
//! worker; the pointers inside them are filled in right before each call (they point into
//! buffers borrowed for that call only), so nothing is allocated per packet.
//!
//! A queued message is a list of [`Part`]s, one iovec each: a range of the queue's own
//! arena (headers, or a small datagram copied whole) or a range of one of the caller's
//! buffers, named by index and handed to [`TxQueue::flush`] (the payload of a segment,
//! left where the frame was read). The queue never holds a pointer between calls: what it
//! sends is what those buffers hold at the flush, so the caller flushes before it reads
//! into a buffer that a queued message names ([`TxQueue::pins`]).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams (or GRO trains) taken per `recvmmsg`.
pub const RX_MSGS: usize = 8;
/// Largest datagram or frame read: a UDP payload (65,507), a raw IPv4 packet (65,535), or
/// a TAP super-frame (65,535 bytes of IP behind an Ethernet header and a VLAN tag the
/// kernel may insert, `encap::offload::SLOT_LEN`), with room to spare so that a read that
/// fills the buffer is known to be truncated.
pub const DGRAM_MAX: usize = 65600;

/// Control buffer of one message: room for two cmsgs with an int (UDP_GRO or
/// UDP_SEGMENT, and SO_RXQ_OVFL), as u64 words for alignment.
type Ctrl = [u64; 8];

fn empty_msghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
    unsafe { std::mem::zeroed() }
}

fn empty_storage() -> libc::sockaddr_storage {
    // SAFETY: as above.
    unsafe { std::mem::zeroed() }
}

/// What one received message was.
#[derive(Clone, Copy, Debug)]
pub struct RxMsg {
    /// Bytes received.
    pub len: usize,
    /// The sender.
    pub from: Option<SocketAddr>,
    /// The GRO segment size (every datagram in the buffer has this size but the last,
    /// which may be shorter); `len` when the buffer holds one datagram.
    pub seg: usize,
    /// The message did not fit its buffer (MSG_TRUNC): to be dropped.
    pub truncated: bool,
    /// The socket's drop count when this datagram was queued (`SO_RXQ_OVFL`; present
    /// once the socket has dropped any).
    pub overflow: Option<u32>,
}

/// Preallocated `recvmmsg` state.
pub struct RxBatch {
    hdrs: Box<[libc::mmsghdr; RX_MSGS]>,
    iovs: Box<[libc::iovec; RX_MSGS]>,
    names: Box<[libc::sockaddr_storage; RX_MSGS]>,
    ctrl: Box<[Ctrl; RX_MSGS]>,
    msgs: [RxMsg; RX_MSGS],
}

// SAFETY: the raw pointers inside the message headers are only written and used during a
// `recv` call, where they point into buffers that call borrows; between calls they are
// dangling values that nothing dereferences.
unsafe impl Send for RxBatch {}

impl Default for RxBatch {
    fn default() -> Self {
        RxBatch {
            hdrs: Box::new(std::array::from_fn(|_| empty_msghdr())),
            iovs: Box::new(std::array::from_fn(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })),
            names: Box::new(std::array::from_fn(|_| empty_storage())),
            ctrl: Box::new([[0; 8]; RX_MSGS]),
            msgs: [RxMsg {
                len: 0,
                from: None,
                seg: 0,
                truncated: false,
                overflow: None,
            }; RX_MSGS],
        }
    }
}

impl RxBatch {
    /// Receives up to `slots.len() / slot_len` (at most [`RX_MSGS`]) messages from `fd`;
    /// message `i` lands at `buf[i * slot_len + offset..(i + 1) * slot_len]`. Returns how
    /// many arrived; `WouldBlock` when none.
    pub fn recv(
        &mut self,
        fd: RawFd,
        buf: &mut [u8],
        slot_len: usize,
        offset: usize,
    ) -> io::Result<usize> {
        let n = (buf.len() / slot_len).min(RX_MSGS);
        if n == 0 || offset >= slot_len {
            return Err(io::Error::other("receive buffer too small"));
        }
        // One pointer for the whole buffer (taking a fresh `&mut` slice per message would
        // invalidate the earlier pointers under Stacked Borrows).
        let base = buf.as_mut_ptr();
        for i in 0..n {
            self.iovs[i] = libc::iovec {
                // SAFETY: `i * slot_len + offset < n * slot_len <= buf.len()`.
                iov_base: unsafe { base.add(i * slot_len + offset) }.cast(),
                iov_len: slot_len - offset,
            };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = std::mem::size_of::<Ctrl>() as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live, writable buffers of the stated lengths
        // (slices of `buf` and of `self`), all borrowed for the duration of the call.
        let got = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        for i in 0..got {
            let h = &self.hdrs[i];
            let len = h.msg_len as usize;
            let mut seg = len;
            let mut overflow = None;
            // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed cmsgs into
            // the control buffer the header points at.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                        let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                        if v > 0 {
                            seg = (v as usize).min(len.max(1));
                        }
                    } else if (*c).cmsg_level == libc::SOL_SOCKET
                        && (*c).cmsg_type == libc::SO_RXQ_OVFL
                    {
                        overflow = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32));
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
            self.msgs[i] = RxMsg {
                len,
                from: from_storage(&self.names[i]),
                seg: seg.max(1),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                overflow,
            };
        }
        Ok(got)
    }

    /// Message `i` of the last [`RxBatch::recv`].
    #[inline]
    pub fn msg(&self, i: usize) -> RxMsg {
        self.msgs[i]
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it can hold.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(a: SocketAddr, s: &mut libc::sockaddr_storage) -> libc::socklen_t {
    *s = empty_storage();
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let d = unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            d.sin_family = libc::AF_INET as libc::sa_family_t;
            d.sin_port = v4.port().to_be();
            d.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let d =
                unsafe { &mut *(s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            d.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            d.sin6_port = v6.port().to_be();
            d.sin6_addr.s6_addr = v6.ip().octets();
            d.sin6_flowinfo = v6.flowinfo();
            d.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// Bytes of the transmit queue's arena.
pub const TXQ_BYTES: usize = 512 * 1024;
/// Messages the transmit queue holds.
pub const TXQ_MSGS: usize = 64;
/// Parts (iovecs) of all the messages the transmit queue holds.
pub const TXQ_PARTS: usize = 1024;
/// Most parts of one message (the kernel's UIO_MAXIOV is 1024): a UDP GSO train of
/// [`GSO_MAX_SEGS`] segments, each a header and a payload.
pub const MSG_PARTS: usize = 2 * GSO_MAX_SEGS;
/// The buffer index of [`Part`] that means the queue's own arena.
const ARENA: u8 = u8::MAX;
/// How many caller buffers a part may name.
pub const TX_BUFS: usize = 8;

/// One piece of a queued message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// [`ARENA`], or the index of the caller's buffer in [`TxQueue::flush`].
    buf: u8,
    off: u32,
    len: u32,
}

impl Part {
    /// `len` bytes at `off` of the queue's arena.
    pub fn arena(off: usize, len: usize) -> Part {
        Part {
            buf: ARENA,
            off: off as u32,
            len: len as u32,
        }
    }

    /// `len` bytes at `off` of the caller's buffer `buf` (below [`TX_BUFS`]).
    pub fn buf(buf: usize, off: usize, len: usize) -> Part {
        Part {
            buf: buf.min(TX_BUFS - 1) as u8,
            off: off as u32,
            len: len as u32,
        }
    }

    /// Bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the part has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
/// Most bytes of one UDP GSO send (the UDP length must fit 16 bits over IPv4 and IPv6).
pub const GSO_MAX_BYTES: usize = 65000;
/// Most datagrams of one UDP GSO send (the kernel's UDP_MAX_SEGMENTS is 64 or 128).
pub const GSO_MAX_SEGS: usize = 64;

/// One queued message.
#[derive(Clone, Copy, Debug)]
pub struct TxMsg {
    /// Socket to send on.
    pub fd: RawFd,
    /// Where.
    pub to: SocketAddr,
    /// Bytes in the arena ([`TxQueue::push`]; unused by [`TxQueue::push_parts`]).
    pub off: usize,
    /// Length (all datagrams of a GSO train).
    pub len: usize,
    /// Datagram size of a GSO train (0: one datagram).
    pub seg: usize,
    /// Datagrams in it.
    pub count: usize,
    /// The port it leaves through (for its counters).
    pub ofport: u32,
}

/// The outcome of one queued message, for the counters.
pub enum TxOutcome {
    /// Sent: `count` datagrams of `bytes` bytes in all.
    Sent {
        /// Datagrams.
        count: usize,
        /// Bytes.
        bytes: usize,
    },
    /// Refused by the socket: `count` datagrams.
    Failed {
        /// Datagrams.
        count: usize,
        /// The socket buffer was full (EAGAIN/ENOBUFS), rather than another error.
        full: bool,
    },
}

/// A queued message and where its parts are.
#[derive(Clone, Copy, Debug)]
struct Queued {
    m: TxMsg,
    first: usize,
    parts: usize,
}

/// Outgoing datagrams of a worker, gathered over a batch and sent with `sendmmsg`.
pub struct TxQueue {
    arena: Box<[u8]>,
    used: usize,
    msgs: Vec<Queued>,
    /// The parts of the queued messages, then those of the one being built.
    parts: Box<[Part; TXQ_PARTS]>,
    /// Parts of the queued messages.
    nparts: usize,
    /// Parts of the message being built (after `nparts`).
    pending: usize,
    /// Caller buffers named by a queued part (bit per index).
    pinned: u32,
    hdrs: Box<[libc::mmsghdr; TXQ_MSGS]>,
    iovs: Box<[libc::iovec; TXQ_PARTS]>,
    names: Box<[libc::sockaddr_storage; TXQ_MSGS]>,
    ctrl: Box<[Ctrl; TXQ_MSGS]>,
    /// UDP GSO refused once (an underlay without checksum offload): send one by one.
    gso_off: bool,
}

// SAFETY: as for `RxBatch`: the pointers in the headers are only used inside `flush`.
unsafe impl Send for TxQueue {}

impl Default for TxQueue {
    fn default() -> Self {
        TxQueue {
            arena: vec![0u8; TXQ_BYTES].into_boxed_slice(),
            used: 0,
            msgs: Vec::with_capacity(TXQ_MSGS),
            parts: Box::new([Part::arena(0, 0); TXQ_PARTS]),
            nparts: 0,
            pending: 0,
            pinned: 0,
            hdrs: Box::new(std::array::from_fn(|_| empty_msghdr())),
            iovs: Box::new(std::array::from_fn(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })),
            names: Box::new(std::array::from_fn(|_| empty_storage())),
            ctrl: Box::new([[0; 8]; TXQ_MSGS]),
            gso_off: false,
        }
    }
}

impl TxQueue {
    /// Whether `bytes` more bytes and one more message fit.
    #[inline]
    pub fn has_room(&self, bytes: usize) -> bool {
        self.has_room_parts(bytes, 1)
    }

    /// Whether `bytes` more bytes of arena and one more message of `parts` parts fit.
    #[inline]
    pub fn has_room_parts(&self, bytes: usize, parts: usize) -> bool {
        self.used + bytes <= self.arena.len()
            && self.msgs.len() < TXQ_MSGS
            && self.nparts + self.pending + parts <= TXQ_PARTS
    }

    /// Whether a queued message names the caller's buffer `buf`: it must not be written
    /// before the next flush.
    #[inline]
    pub fn pins(&self, buf: usize) -> bool {
        self.pinned & (1 << buf.min(TX_BUFS - 1)) != 0
    }

    /// Adds a part to the message being built; false (and nothing added) when the
    /// queue's parts, or the message's [`MSG_PARTS`], are used up.
    #[inline]
    pub fn add_part(&mut self, p: Part) -> bool {
        if self.pending >= MSG_PARTS || self.nparts + self.pending >= TXQ_PARTS {
            return false;
        }
        self.parts[self.nparts + self.pending] = p;
        self.pending += 1;
        true
    }

    /// Forgets the parts of the message being built.
    #[inline]
    pub fn discard_parts(&mut self) {
        self.pending = 0;
    }

    /// Queues the message built from the parts added since the last push; `arena_end`
    /// is where the arena bytes it wrote end (the free part starts there). `msg.len` is
    /// set to the parts' length and `msg.off` is unused. Refused (`false`, the parts
    /// forgotten) when it has no parts, a part of the arena lies outside the free part,
    /// or the message limits are reached.
    pub fn push_parts(&mut self, mut msg: TxMsg, arena_end: usize) -> bool {
        let parts = &self.parts[self.nparts..self.nparts + self.pending];
        let in_arena = |p: &Part| {
            p.buf != ARENA || (p.off as usize >= self.used && (p.off + p.len) as usize <= arena_end)
        };
        let fits = !parts.is_empty()
            && arena_end >= self.used
            && arena_end <= self.arena.len()
            && parts.iter().all(in_arena)
            && msg.seg <= usize::from(u16::MAX)
            && self.msgs.len() < TXQ_MSGS;
        if !fits {
            self.pending = 0;
            return false;
        }
        msg.len = parts.iter().map(|p| p.len()).sum();
        for p in parts.iter().filter(|p| p.buf != ARENA) {
            self.pinned |= 1 << p.buf;
        }
        self.msgs.push(Queued {
            m: msg,
            first: self.nparts,
            parts: self.pending,
        });
        self.nparts += self.pending;
        self.pending = 0;
        self.used = arena_end;
        true
    }

    /// Whether UDP GSO may be used.
    #[inline]
    pub fn gso(&self) -> bool {
        !self.gso_off
    }

    /// The free part of the arena, which starts at arena offset [`TxQueue::used`].
    #[inline]
    pub fn free(&mut self) -> &mut [u8] {
        &mut self.arena[self.used..]
    }

    /// Arena offset of the free part.
    #[inline]
    pub fn used(&self) -> usize {
        self.used
    }

    /// Queues `msg`, whose bytes were written at `msg.off..msg.off + msg.len` (inside
    /// the free part); the free part starts after them. A message outside the free part,
    /// with a datagram size over 65,535, or beyond [`TXQ_MSGS`] is refused (`false`).
    #[inline]
    pub fn push(&mut self, msg: TxMsg) -> bool {
        let fits = msg.off >= self.used
            && msg
                .off
                .checked_add(msg.len)
                .is_some_and(|end| end <= self.arena.len())
            && msg.seg <= usize::from(u16::MAX)
            && msg.len <= u32::MAX as usize
            && self.msgs.len() < TXQ_MSGS
            && self.nparts < TXQ_PARTS;
        if fits {
            self.pending = 0;
            self.parts[self.nparts] = Part::arena(msg.off, msg.len);
            self.msgs.push(Queued {
                m: msg,
                first: self.nparts,
                parts: 1,
            });
            self.nparts += 1;
            self.used = msg.off + msg.len;
        }
        fits
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Sends everything queued, in order, and reports each message's outcome. `bufs`
    /// are the caller's buffers that parts name by index (as they were pushed); a part
    /// outside its buffer fails its message (`tx_error`), it is never read.
    pub fn flush(&mut self, bufs: &[&[u8]], mut outcome: impl FnMut(&TxMsg, TxOutcome)) {
        self.set_iovecs(bufs);
        self.send_all(&mut outcome);
        self.msgs.clear();
        self.used = 0;
        self.nparts = 0;
        self.pending = 0;
        self.pinned = 0;
    }

    /// Points every queued part's iovec at its bytes, checked against its buffer; a
    /// part outside it gets the length `usize::MAX` (never sent: its message fails).
    fn set_iovecs(&mut self, bufs: &[&[u8]]) {
        let arena = self.arena.as_ptr();
        for k in 0..self.nparts {
            let p = self.parts[k];
            let (off, len) = (p.off as usize, p.len as usize);
            let base = if p.buf == ARENA {
                // SAFETY: `push`/`push_parts` checked that arena parts lie in the arena.
                (off + len <= self.arena.len()).then(|| unsafe { arena.add(off) })
            } else {
                bufs.get(usize::from(p.buf))
                    .and_then(|b| b.get(off..off.checked_add(len)?))
                    .map(|s| s.as_ptr())
            };
            self.iovs[k] = libc::iovec {
                iov_base: base.map_or(std::ptr::null_mut(), |b| b as *mut libc::c_void),
                iov_len: if base.is_some() { len } else { usize::MAX },
            };
        }
    }

    /// Sends the queued messages whose iovecs `set_iovecs` pointed at their bytes.
    fn send_all(&mut self, outcome: &mut impl FnMut(&TxMsg, TxOutcome)) {
        let bad = |iovs: &[libc::iovec], q: &Queued| {
            iovs[q.first..q.first + q.parts]
                .iter()
                .any(|v| v.iov_len == usize::MAX)
        };
        let mut i = 0;
        while i < self.msgs.len() {
            if bad(&self.iovs[..], &self.msgs[i]) {
                let m = self.msgs[i].m;
                outcome(
                    &m,
                    TxOutcome::Failed {
                        count: m.count,
                        full: false,
                    },
                );
                i += 1;
                continue;
            }
            // A run of messages on one socket goes in one sendmmsg.
            let fd = self.msgs[i].m.fd;
            let mut j = i;
            while j < self.msgs.len()
                && self.msgs[j].m.fd == fd
                && !bad(&self.iovs[..], &self.msgs[j])
            {
                let q = self.msgs[j];
                let m = q.m;
                let k = j - i;
                let namelen = to_storage(m.to, &mut self.names[k]);
                let h = &mut self.hdrs[k];
                h.msg_hdr.msg_name = (&mut self.names[k] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = namelen;
                h.msg_hdr.msg_iov = &mut self.iovs[q.first];
                h.msg_hdr.msg_iovlen = q.parts as _;
                h.msg_hdr.msg_flags = 0;
                h.msg_len = 0;
                if m.seg > 0 && m.count > 1 {
                    let c = self.ctrl[k].as_mut_ptr().cast::<u8>();
                    // SAFETY: the control buffer (64 bytes, u64-aligned) holds one cmsg
                    // with a u16 payload; CMSG_* compute offsets inside it.
                    unsafe {
                        let space = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32);
                        h.msg_hdr.msg_control = c.cast();
                        h.msg_hdr.msg_controllen = space as _;
                        let cm = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                        (*cm).cmsg_level = libc::SOL_UDP;
                        (*cm).cmsg_type = libc::UDP_SEGMENT;
                        (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), m.seg as u16);
                    }
                } else {
                    h.msg_hdr.msg_control = std::ptr::null_mut();
                    h.msg_hdr.msg_controllen = 0;
                }
                j += 1;
            }
            let mut k = i;
            while k < j {
                // SAFETY: headers k-i.. describe live arena slices, slices of `bufs`
                // (borrowed for this call) and names, set above; sendmmsg only reads them.
                let sent = unsafe {
                    libc::sendmmsg(
                        fd,
                        self.hdrs[k - i..].as_mut_ptr(),
                        (j - k) as u32,
                        libc::MSG_DONTWAIT,
                    )
                };
                if sent > 0 {
                    for q in &self.msgs[k..k + sent as usize] {
                        outcome(
                            &q.m,
                            TxOutcome::Sent {
                                count: q.m.count,
                                bytes: q.m.len,
                            },
                        );
                    }
                    k += sent as usize;
                    continue;
                }
                // The message at k failed.
                let err = io::Error::last_os_error();
                let q = self.msgs[k];
                let m = q.m;
                let train = m.seg > 0 && m.count > 1;
                match err.raw_os_error() {
                    // EIO: the egress device cannot checksum a GSO train (the kernel's
                    // udp_send_skb); from now on this worker sends datagram by datagram.
                    Some(libc::EIO) if train => {
                        if !self.gso_off {
                            self.gso_off = true;
                            tracing::warn!(
                                "the underlay refused UDP GSO ({err}); sending datagram by datagram"
                            );
                        }
                        self.send_each(&q, outcome);
                    }
                    // EINVAL on a train (e.g. a segment over a smaller path MTU): this
                    // train datagram by datagram, GSO stays on.
                    Some(libc::EINVAL) if train => self.send_each(&q, outcome),
                    // The socket buffer is full: the rest of this run would fail too.
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                        for q in &self.msgs[k..j] {
                            outcome(
                                &q.m,
                                TxOutcome::Failed {
                                    count: q.m.count,
                                    full: true,
                                },
                            );
                        }
                        k = j;
                        continue;
                    }
                    _ => outcome(
                        &m,
                        TxOutcome::Failed {
                            count: m.count,
                            full: false,
                        },
                    ),
                }
                k += 1;
            }
            i = j;
        }
    }

    /// Sends the datagrams of a GSO train one by one: its iovecs (set up by `flush`) cut
    /// at every `seg` bytes, one `sendmsg` per datagram.
    fn send_each(&mut self, q: &Queued, outcome: &mut impl FnMut(&TxMsg, TxOutcome)) {
        let m = &q.m;
        let mut storage = empty_storage();
        let namelen = to_storage(m.to, &mut storage);
        let (mut ok, mut ok_bytes, mut failed, mut full) = (0, 0, 0, 0);
        let iovs = &self.iovs[q.first..q.first + q.parts];
        // Where the next datagram starts: iovec index and offset inside it.
        let (mut v, mut in_v) = (0usize, 0usize);
        let mut one = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MSG_PARTS];
        while v < iovs.len() {
            let (mut n, mut got) = (0usize, 0usize);
            while got < m.seg && v < iovs.len() && n < one.len() {
                let take = (iovs[v].iov_len - in_v).min(m.seg - got);
                one[n] = libc::iovec {
                    // SAFETY: `in_v + take <= iov_len` of a live iovec set up by `flush`.
                    iov_base: unsafe { iovs[v].iov_base.cast::<u8>().add(in_v) }.cast(),
                    iov_len: take,
                };
                n += 1;
                got += take;
                in_v += take;
                if in_v == iovs[v].iov_len {
                    v += 1;
                    in_v = 0;
                }
            }
            if got == 0 {
                break;
            }
            // SAFETY: an all-zero msghdr is valid; every pointer set below is live for
            // the call (the iovecs above, the address storage).
            let rc = unsafe {
                let mut h: libc::msghdr = std::mem::zeroed();
                h.msg_name = (&mut storage as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = namelen;
                h.msg_iov = one.as_mut_ptr();
                h.msg_iovlen = n as _;
                libc::sendmsg(m.fd, &h, libc::MSG_DONTWAIT)
            };
            if rc < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) => full += 1,
                    _ => failed += 1,
                }
            } else {
                ok += 1;
                ok_bytes += got;
            }
        }
        if ok > 0 {
            outcome(
                m,
                TxOutcome::Sent {
                    count: ok,
                    bytes: ok_bytes,
                },
            );
        }
        if failed > 0 {
            outcome(
                m,
                TxOutcome::Failed {
                    count: failed,
                    full: false,
                },
            );
        }
        if full > 0 {
            outcome(
                m,
                TxOutcome::Failed {
                    count: full,
                    full: true,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::UdpTunnelSocket;
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    /// Gives `fd` the smallest receive buffer the kernel allows (about 2 KiB): a few
    /// datagrams fit, the rest of a burst is dropped.
    fn smallest_receive_buffer(fd: RawFd) {
        let small: libc::c_int = 1;
        // SAFETY: a valid descriptor and a c_int of the stated size.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
    }

    /// Reads `fd` empty, then calls `send_one` and reads it empty again: (datagrams
    /// read, drops counted by `overflowed`, the last drop count reported). A datagram
    /// carries the drop count of when it was queued: the ones queued before the buffer
    /// filled carry none, the one sent after it was read the total. `check` sees each
    /// datagram's length.
    fn drain_counting_drops(
        fd: RawFd,
        send_one: impl Fn(),
        overflowed: impl Fn(u32) -> u32,
        check: impl Fn(usize),
    ) -> (u32, u32, Option<u32>) {
        let mut b = RxBatch::default();
        let slot = 128 + DGRAM_MAX;
        let mut buf = vec![0u8; RX_MSGS * slot];
        let (mut received, mut dropped, mut last) = (0u32, 0u32, None);
        for round in 0..2 {
            if round == 1 {
                send_one();
            }
            let start = Instant::now();
            loop {
                assert!(start.elapsed() < Duration::from_secs(2));
                let n = match b.recv(fd, &mut buf, slot, 128) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                };
                for i in 0..n {
                    let m = b.msg(i);
                    check(m.len);
                    received += 1;
                    if let Some(total) = m.overflow {
                        dropped += overflowed(total);
                        last = Some(total);
                    }
                }
            }
        }
        (received, dropped, last)
    }

    /// Datagrams the kernel drops for a full receive buffer are reported with the next
    /// datagram read (`SO_RXQ_OVFL`), and the socket turns the running total into new
    /// drops exactly once.
    #[test]
    fn receive_overflow_is_reported_and_counted_once() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let rx = UdpTunnelSocket::bind(Some(lo), 0, false, true).unwrap();
        smallest_receive_buffer(rx.fd());
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = 200;
        let send_one = || {
            tx.send_to(&[0x55; 64], rx.local_addr()).unwrap();
        };
        for _ in 0..sent {
            send_one();
        }
        let (received, dropped, last) =
            drain_counting_drops(rx.fd(), send_one, |t| rx.overflowed(t), |_| {});
        let total = last.expect("the kernel reported the socket's drops");
        assert!(dropped > 0 && received < sent, "{received} received");
        assert_eq!(
            received + dropped,
            sent + 1,
            "every datagram read or counted"
        );
        assert_eq!(dropped, total);
        // The same total again (another datagram queued behind it), or an older one
        // (another worker), adds nothing.
        assert_eq!(rx.overflowed(total), 0);
        assert_eq!(rx.overflowed(total - 1), 0);
        assert_eq!(rx.overflowed(total + 3), 3);
    }

    /// IP-in-IP's raw sockets report their drops the same way: packets a full receive
    /// buffer dropped are counted once each (root: raw sockets, on loopback).
    #[test]
    fn raw_socket_overflow_is_reported_and_counted_once() {
        use crate::port::RawIpSocket;
        use std::net::Ipv4Addr;
        let required = std::env::var_os("WEFT_REQUIRE_PRIVILEGED").is_some();
        let lo = Ipv4Addr::LOCALHOST;
        let rx = match RawIpSocket::open(libc::IPPROTO_IPIP, Some(lo)) {
            Ok(s) => s,
            Err(e) if !required && e.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("skipped: a raw socket needs CAP_NET_RAW ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let tx = RawIpSocket::open(libc::IPPROTO_IPIP, None).unwrap();
        smallest_receive_buffer(rx.fd());
        // An outer IPv4 header (protocol 4; the kernel fills in the length and checksum)
        // in front of an inner IPv4 header and 44 bytes.
        let mut pkt = [0u8; 84];
        pkt[0] = 0x45;
        pkt[8] = 64;
        pkt[9] = 4;
        pkt[12..16].copy_from_slice(&lo.octets());
        pkt[16..20].copy_from_slice(&lo.octets());
        pkt[20] = 0x45;
        pkt[22..24].copy_from_slice(&64u16.to_be_bytes());
        pkt[28] = 64;
        pkt[29] = 17;
        pkt[32..36].copy_from_slice(&[198, 19, 1, 11]);
        pkt[36..40].copy_from_slice(&[198, 19, 2, 11]);
        let sent = 200;
        let send_one = || {
            tx.send_to(&pkt, lo).unwrap();
        };
        for _ in 0..sent {
            send_one();
        }
        let whole =
            |len: usize| assert_eq!(len, pkt.len(), "the whole packet, outer header included");
        let (received, dropped, last) =
            drain_counting_drops(rx.fd(), send_one, |t| rx.overflowed(t), whole);
        let total = last.expect("the kernel reported the raw socket's drops");
        assert!(dropped > 0 && received < sent, "{received} received");
        assert_eq!(received + dropped, sent + 1, "every packet read or counted");
        assert_eq!(dropped, total);
        assert_eq!(rx.overflowed(total), 0);
    }

    /// A GSO train of 5 datagrams (the last shorter) sent by the queue arrives as 5
    /// datagrams or as GRO trains that split back into the same 5, in order, on
    /// loopback.
    #[test]
    fn gso_train_and_single_datagrams_arrive_in_order() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let rx = UdpTunnelSocket::bind(Some(lo), 0, false, true).unwrap();
        let tx = UdpTunnelSocket::bind_with_sender(Some(lo), 0, false).unwrap();
        let to = rx.local_addr();
        let mut q = TxQueue::default();
        // Train: 4 x 1000 + 1 x 300 bytes, each datagram filled with its index.
        let off = q.used();
        let sizes = [1000usize, 1000, 1000, 1000, 300];
        let mut at = 0;
        for (i, s) in sizes.iter().enumerate() {
            q.free()[at..at + s].fill(i as u8 + 1);
            at += s;
        }
        assert!(q.push(TxMsg {
            fd: tx.send_fd(),
            to,
            off,
            len: at,
            seg: 1000,
            count: sizes.len(),
            ofport: 7,
        }));
        // Then one plain datagram.
        let off = q.used();
        q.free()[..10].fill(0xee);
        assert!(q.push(TxMsg {
            fd: tx.send_fd(),
            to,
            off,
            len: 10,
            seg: 0,
            count: 1,
            ofport: 7,
        }));
        let mut sent = Vec::new();
        q.flush(&[], |m, o| {
            if let TxOutcome::Sent { count, bytes } = o {
                sent.push((m.ofport, count, bytes));
            }
        });
        assert_eq!(sent, vec![(7, 5, 4300), (7, 1, 10)]);
        assert!(q.is_empty());

        let mut b = RxBatch::default();
        let slot = 128 + DGRAM_MAX;
        let mut buf = vec![0u8; RX_MSGS * slot];
        let mut got: Vec<Vec<u8>> = Vec::new();
        let start = Instant::now();
        while got.len() < 6 {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "got {}",
                got.len()
            );
            let n = match b.recv(rx.fd(), &mut buf, slot, 128) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            for i in 0..n {
                let m = b.msg(i);
                assert_eq!(m.from.unwrap().ip(), lo);
                assert_ne!(m.from.unwrap().port(), to.port(), "ephemeral source port");
                let data = &buf[i * slot + 128..i * slot + 128 + m.len];
                for d in data.chunks(m.seg) {
                    got.push(d.to_vec());
                }
            }
        }
        let lens: Vec<usize> = got.iter().map(|d| d.len()).collect();
        assert_eq!(lens, vec![1000, 1000, 1000, 1000, 300, 10]);
        for (i, d) in got.iter().enumerate().take(5) {
            assert!(d.iter().all(|&x| x == i as u8 + 1), "datagram {i}");
        }
        assert!(got[5].iter().all(|&x| x == 0xee));
    }

    /// Reads datagrams from `rx` until `want` arrived (GRO trains split), within 2 s.
    fn read_datagrams(rx: &UdpTunnelSocket, want: usize) -> Vec<Vec<u8>> {
        let mut b = RxBatch::default();
        let slot = 128 + DGRAM_MAX;
        let mut buf = vec![0u8; RX_MSGS * slot];
        let mut got: Vec<Vec<u8>> = Vec::new();
        let start = Instant::now();
        while got.len() < want {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "got {}",
                got.len()
            );
            let n = match b.recv(rx.fd(), &mut buf, slot, 128) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            for i in 0..n {
                let m = b.msg(i);
                let data = &buf[i * slot + 128..i * slot + 128 + m.len];
                for d in data.chunks(m.seg) {
                    got.push(d.to_vec());
                }
            }
        }
        got
    }

    /// A train whose datagrams are each a header in the arena and a payload in one of
    /// the caller's buffers (as the segmenter queues them) arrives as those datagrams,
    /// and so does the same train sent datagram by datagram (the EIO/EINVAL fallback);
    /// a message with a part outside its buffer fails alone, and the caller's buffers
    /// are pinned until the flush.
    #[test]
    fn trains_of_parts_arrive_as_the_datagrams_they_describe() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let rx = UdpTunnelSocket::bind(Some(lo), 0, false, true).unwrap();
        let tx = UdpTunnelSocket::bind_with_sender(Some(lo), 0, false).unwrap();
        let to = rx.local_addr();
        let payload_a: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let payload_b: Vec<u8> = (0..700u32).map(|i| (i * 3 + 1) as u8).collect();
        let mut want = Vec::new();
        for each in [false, true] {
            let mut q = TxQueue::default();
            // Three datagrams: a 20-byte header in the arena + 1000 bytes of buffer 0,
            // twice, then a header + 700 bytes of buffer 1 (shorter, the last).
            let off = q.used();
            let mut at = off;
            for (k, (buf, from, len)) in [(0usize, 0usize, 1000usize), (0, 1000, 1000), (1, 0, 700)]
                .into_iter()
                .enumerate()
            {
                q.free()[at - off..at - off + 20].fill(0xd0 + k as u8);
                assert!(q.add_part(Part::arena(at, 20)));
                assert!(q.add_part(Part::buf(buf, from, len)));
                at += 20;
            }
            let msg = TxMsg {
                fd: tx.send_fd(),
                to,
                off: 0,
                len: 0,
                seg: 1020,
                count: 3,
                ofport: 9,
            };
            assert!(q.push_parts(msg, at));
            assert!(q.pins(0) && q.pins(1) && !q.pins(2));
            // A message naming bytes past its buffer.
            assert!(q.add_part(Part::buf(1, 600, 200)));
            assert!(q.push_parts(
                TxMsg {
                    seg: 0,
                    count: 1,
                    ..msg
                },
                at
            ));
            if each {
                // The datagram-by-datagram path (taken on EIO/EINVAL) over the same
                // iovecs, cut at every `seg` bytes.
                q.set_iovecs(&[&payload_a, &payload_b]);
                let train = q.msgs[0];
                let mut sent = Vec::new();
                q.send_each(&train, &mut |_, o| sent.push(o));
                assert!(matches!(
                    sent[..],
                    [TxOutcome::Sent {
                        count: 3,
                        bytes: 2760
                    }]
                ));
                assert_eq!(read_datagrams(&rx, 3), want);
            } else {
                let mut outcomes = Vec::new();
                q.flush(&[&payload_a, &payload_b], |m, o| {
                    outcomes.push((m.ofport, o))
                });
                assert!(matches!(
                    outcomes[..],
                    [
                        (
                            9,
                            TxOutcome::Sent {
                                count: 3,
                                bytes: 2760
                            }
                        ),
                        (
                            9,
                            TxOutcome::Failed {
                                count: 1,
                                full: false
                            }
                        )
                    ]
                ));
                assert!(!q.pins(0) && !q.pins(1) && q.is_empty());
                want = read_datagrams(&rx, 3);
                let mut d0 = vec![0xd0u8; 20];
                d0.extend_from_slice(&payload_a[..1000]);
                let mut d1 = vec![0xd1u8; 20];
                d1.extend_from_slice(&payload_a[1000..2000]);
                let mut d2 = vec![0xd2u8; 20];
                d2.extend_from_slice(&payload_b);
                assert_eq!(want, vec![d0, d1, d2]);
            }
        }
    }

    #[test]
    fn push_refuses_what_lies_outside_the_arena() {
        let mut q = TxQueue::default();
        let m = |off: usize, len: usize, seg: usize| TxMsg {
            fd: -1,
            to: "198.18.0.1:4789".parse().unwrap(),
            off,
            len,
            seg,
            count: 1,
            ofport: 1,
        };
        assert!(!q.push(m(0, TXQ_BYTES + 1, 0)), "past the arena");
        assert!(!q.push(m(usize::MAX, 2, 0)), "overflowing end");
        assert!(!q.push(m(0, 10, 70_000)), "datagram size over 16 bits");
        assert!(q.push(m(0, 10, 0)));
        assert!(!q.push(m(5, 10, 0)), "overlapping what is queued");
        for i in 1..TXQ_MSGS {
            assert!(q.push(m(10 * i, 10, 0)));
        }
        assert!(!q.push(m(10 * TXQ_MSGS, 10, 0)), "more than TXQ_MSGS");
        assert_eq!(q.used(), 10 * TXQ_MSGS);
    }

    #[test]
    fn addresses_round_trip_through_sockaddr_storage() {
        for a in ["198.18.0.1:4789", "[2001:db8::1]:6081"] {
            let a: SocketAddr = a.parse().unwrap();
            let mut s = empty_storage();
            to_storage(a, &mut s);
            assert_eq!(from_storage(&s), Some(a));
        }
    }
}
