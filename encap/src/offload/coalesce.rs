//! Coalescing (userspace GRO): received TCP segments of one flow glued into a
//! super-frame for a TAP.

use super::frame::{TcpFrame, be16, be32, parse_tcp_frame, pseudo, put16, set_ip_len};
use super::{VirtioNetHdr, tcp_flags};
use crate::checksum;

/// coalesced super-frame may reach.
pub const MAX_IP_LEN: usize = 65535;

/// The reserved ("evil", RFC 3514) bit of the IPv4 flags / fragment offset word.
const IPV4_RESERVED_FLAG: u16 = 0x8000;

/// Bytes a coalescer slot needs to hold any super-frame: Ethernet with one VLAN tag plus
/// [`MAX_IP_LEN`].
pub const SLOT_LEN: usize = 18 + MAX_IP_LEN;

/// Most segments of one super-frame whose payloads stay in the caller's buffers
/// ([`Coalescer::push_at`]): a longer train is emitted in parts.
pub const MAX_SPANS: usize = 64;

/// Where a payload is in the caller's receive buffers: `len` bytes at position `at` (as
/// the caller numbered them in [`Coalescer::push_at`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    /// Position of the first byte.
    pub at: usize,
    /// Bytes.
    pub len: usize,
}

/// A frame as a coalescer emits it: `head` (the headers, and any payload the coalescer
/// holds itself), then the caller's bytes at each of `spans`, in order. A frame that
/// went in through [`Coalescer::push`] only has no spans.
#[derive(Debug, Clone, Copy)]
pub struct Coalesced<'a> {
    /// The frame's first bytes.
    pub head: &'a [u8],
    /// The rest, in the caller's buffers.
    pub spans: &'a [Span],
}

impl Coalesced<'_> {
    /// Length of the whole frame.
    pub fn len(&self) -> usize {
        self.head.len() + self.spans.iter().map(|s| s.len).sum::<usize>()
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One super-frame being built.
#[derive(Debug, Clone, Copy)]
struct Held {
    p: TcpFrame,
    /// Bytes of the whole frame (in the slot and in the spans).
    len: usize,
    /// Bytes of the frame in the slot: the headers and the payload copied there; the
    /// rest is in the spans.
    head: usize,
    /// Spans in use.
    spans: usize,
    /// Payload size of the first segment (the `gso_size`).
    mss: usize,
    /// Segments merged.
    count: usize,
    /// Sequence number the next segment must carry.
    next_seq: u32,
    /// Insertion order, to evict the oldest.
    age: u64,
}

/// What to do with a frame that has arrived, given the flow it belongs to.
enum Verdict {
    Merge,
    Flush,
}

/// Coalesces received TCP segments into super-frames for a TAP device opened with
/// `IFF_VNET_HDR` (userspace GRO), holding at most `N` flows at a time.
///
/// The caller lends an arena of `N` slots; slot *i* is `arena[i * L..(i + 1) * L]` with
/// `L = arena.len() / N` (give [`SLOT_LEN`] per slot to allow full 64 KB super-frames).
/// Frames go in one at a time through [`Coalescer::push`]; whatever is ready comes out
/// through the `emit` callback as a [`VirtioNetHdr`] plus an Ethernet frame (the caller
/// writes both with one `writev`). Frames of one flow come out in the order they went in;
/// a frame that cannot be coalesced (not TCP, IPv4 options, SYN/RST/URG, no payload, bad
/// checksum) comes out at once, unchanged, with an all-zero header, after any held frame
/// of its flow. Call [`Coalescer::flush`] at the end of each receive batch.
///
/// Without copying the payload: [`Coalescer::push_at`] takes a frame that lies at a
/// position the caller names in its own receive buffers, copies only the first
/// segment's headers into the slot and remembers where each payload is ([`Span`]);
/// [`Coalescer::flush_with`] emits [`Coalesced`] frames, which the caller writes with
/// one `writev` of the header, `head` and its own bytes at the spans. Those buffers must
/// stay as they are until the frames are emitted, or until [`Coalescer::materialize`]
/// has copied what the held frames still reference (before the buffers are read into
/// again).
#[derive(Debug)]
pub struct Coalescer<B, const N: usize = 8> {
    arena: B,
    slot_len: usize,
    held: [Option<Held>; N],
    spans: [[Span; MAX_SPANS]; N],
    clock: u64,
}

impl<B: AsRef<[u8]> + AsMut<[u8]>, const N: usize> Coalescer<B, N> {
    /// A coalescer over `arena` (borrowed, `&mut [u8]`, or owned, `Box<[u8]>`), split
    /// into `N` equal slots.
    pub fn new(arena: B) -> Coalescer<B, N> {
        let slot_len = arena.as_ref().len().checked_div(N).unwrap_or(0);
        Coalescer {
            arena,
            slot_len,
            held: [None; N],
            spans: [[Span::default(); MAX_SPANS]; N],
            clock: 0,
        }
    }

    /// Number of flows currently held.
    pub fn held(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }

    /// Whether a held frame references the caller's buffers (see [`Coalescer::push_at`]).
    pub fn holds_spans(&self) -> bool {
        self.held.iter().flatten().any(|h| h.spans > 0)
    }

    /// Takes one received Ethernet frame, copying it; emits whatever it makes ready.
    /// For a coalescer used only through `push` and [`Coalescer::flush`] (a frame held
    /// from [`Coalescer::push_at`] would come out without its spans: use
    /// [`Coalescer::push_with`] then).
    pub fn push(&mut self, frame: &[u8], mut emit: impl FnMut(&VirtioNetHdr, &[u8])) {
        self.push_with(frame, None, |h, c| emit(h, c.head));
    }

    /// Takes one received Ethernet frame that lies at position `at` of the caller's
    /// receive buffers, without copying its payload: the frame's headers are copied
    /// when it starts a super-frame, and its payload is remembered as a [`Span`].
    /// Emits whatever it makes ready.
    pub fn push_at(
        &mut self,
        frame: &[u8],
        at: usize,
        emit: impl FnMut(&VirtioNetHdr, Coalesced<'_>),
    ) {
        self.push_with(frame, Some(at), emit);
    }

    /// [`Coalescer::push`] (`at` = `None`) or [`Coalescer::push_at`].
    pub fn push_with(
        &mut self,
        frame: &[u8],
        at: Option<usize>,
        mut emit: impl FnMut(&VirtioNetHdr, Coalesced<'_>),
    ) {
        let whole = |f| Coalesced {
            head: f,
            spans: &[],
        };
        let Ok(p) = parse_tcp_frame(frame) else {
            emit(&VirtioNetHdr::default(), whole(frame));
            return;
        };
        let f = &frame[..p.end];
        let plen = p.end - p.hl;
        let flags = f[p.l4 + 13];
        // Verified before anything else: a bad segment must not end up inside a
        // NEEDS_CSUM super-frame the pod will trust.
        let valid =
            checksum::fold(pseudo(f, &p, p.end - p.l4) + checksum::sum(&f[p.l4..])) == 0xffff;
        let slot = self.find_flow(f, &p);
        if let Some(i) = slot {
            if valid && matches!(self.verdict(i, f, &p, at.is_some()), Verdict::Merge) {
                let mss = self.merge(i, f, &p, at);
                if plen < mss || flags & (tcp_flags::PSH | tcp_flags::FIN) != 0 {
                    self.emit_slot(i, &mut emit);
                }
                return;
            }
            self.emit_slot(i, &mut emit);
        }
        let startable = valid
            && plen > 0
            && (p.v6 || (p.l4 - p.l3 == 20 && be16(f, p.l3 + 6) & IPV4_RESERVED_FLAG == 0))
            && flags
                & (tcp_flags::SYN
                    | tcp_flags::RST
                    | tcp_flags::URG
                    | tcp_flags::PSH
                    | tcp_flags::FIN)
                == 0
            && (if at.is_some() { p.hl } else { f.len() }) <= self.slot_len;
        if !startable {
            emit(&VirtioNetHdr::default(), whole(frame));
            return;
        }
        let i = match self.held.iter().position(|h| h.is_none()) {
            Some(i) => i,
            None => {
                let Some(oldest) = (0..N).min_by_key(|&i| self.held[i].map_or(0, |h| h.age)) else {
                    // N == 0: nothing can be held.
                    emit(&VirtioNetHdr::default(), whole(frame));
                    return;
                };
                self.emit_slot(oldest, &mut emit);
                oldest
            }
        };
        let base = i * self.slot_len;
        let (head, spans) = match at {
            Some(at) => {
                self.spans[i][0] = Span {
                    at: at + p.hl,
                    len: plen,
                };
                (p.hl, 1)
            }
            None => (f.len(), 0),
        };
        self.arena.as_mut()[base..base + head].copy_from_slice(&f[..head]);
        self.clock += 1;
        self.held[i] = Some(Held {
            p,
            len: f.len(),
            head,
            spans,
            mss: plen,
            count: 1,
            next_seq: be32(f, p.l4 + 4).wrapping_add(plen as u32),
            age: self.clock,
        });
    }

    /// Emits every held frame, oldest first (see [`Coalescer::push`]).
    pub fn flush(&mut self, mut emit: impl FnMut(&VirtioNetHdr, &[u8])) {
        self.flush_with(|h, c| emit(h, c.head));
    }

    /// Emits every held frame, oldest first, with the spans it references.
    pub fn flush_with(&mut self, mut emit: impl FnMut(&VirtioNetHdr, Coalesced<'_>)) {
        while let Some(i) = (0..N)
            .filter(|&i| self.held[i].is_some())
            .min_by_key(|&i| self.held[i].map_or(0, |h| h.age))
        {
            self.emit_slot(i, &mut emit);
        }
    }

    /// Copies the payloads that held frames reference (at their spans in `src`, the
    /// caller's receive buffers) into the coalescer's own slots, so that `src` may be
    /// read into again and the frames can still grow. A frame whose bytes do not fit its
    /// slot, or whose spans lie outside `src`, is emitted instead.
    pub fn materialize(&mut self, src: &[u8], mut emit: impl FnMut(&VirtioNetHdr, Coalesced<'_>)) {
        for i in 0..N {
            let Some(h) = self.held[i] else { continue };
            if h.spans == 0 {
                continue;
            }
            let spans = &self.spans[i][..h.spans];
            let fits = h.len <= self.slot_len
                && spans
                    .iter()
                    .all(|s| s.at.checked_add(s.len).is_some_and(|e| e <= src.len()));
            if !fits {
                self.emit_slot(i, &mut emit);
                continue;
            }
            let base = i * self.slot_len;
            let mut at = base + h.head;
            let arena = self.arena.as_mut();
            for s in spans {
                arena[at..at + s.len].copy_from_slice(&src[s.at..s.at + s.len]);
                at += s.len;
            }
            self.held[i] = Some(Held {
                head: h.len,
                spans: 0,
                ..h
            });
        }
    }

    fn slot(&self, i: usize) -> &[u8] {
        let len = self.held[i].map_or(0, |h| h.head);
        let base = i * self.slot_len;
        &self.arena.as_ref()[base..base + len]
    }

    /// The held flow `f` belongs to: same Ethernet header, IP version, addresses, IPv6
    /// flow label and ports.
    fn find_flow(&self, f: &[u8], p: &TcpFrame) -> Option<usize> {
        (0..N).find(|&i| {
            let Some(h) = self.held[i] else {
                return false;
            };
            let s = self.slot(i);
            let q = h.p;
            if q.v6 != p.v6 || q.l3 != p.l3 || s[..q.l3] != f[..p.l3] {
                return false;
            }
            let addrs = if p.v6 {
                // Flow label (low 20 bits of the first word) and both addresses.
                be32(s, q.l3) & 0x000f_ffff == be32(f, p.l3) & 0x000f_ffff
                    && s[q.l3 + 8..q.l3 + 40] == f[p.l3 + 8..p.l3 + 40]
            } else {
                s[q.l3 + 12..q.l3 + 20] == f[p.l3 + 12..p.l3 + 20]
            };
            addrs && s[q.l4..q.l4 + 4] == f[p.l4..p.l4 + 4]
        })
    }

    /// Whether `f`, of the flow held in slot `i`, continues that super-frame.
    fn verdict(&self, i: usize, f: &[u8], p: &TcpFrame, by_ref: bool) -> Verdict {
        let Some(h) = self.held[i] else {
            return Verdict::Flush;
        };
        let s = self.slot(i);
        let q = h.p;
        let plen = p.end - p.hl;
        let ip_ok = if p.v6 {
            // Traffic class and hop limit.
            be32(s, q.l3) & 0x0ff0_0000 == be32(f, p.l3) & 0x0ff0_0000 && s[q.l3 + 7] == f[p.l3 + 7]
        } else {
            // As the kernel's inet_gro_receive, any fragment-word bit but DF (here: the
            // reserved bit; fragments never parse) ends the super-frame, so that no
            // segment's bit is lost in, or copied into, the merged header.
            p.l4 - p.l3 == 20
                && be16(f, p.l3 + 6) & IPV4_RESERVED_FLAG == 0
                && s[q.l3 + 1] == f[p.l3 + 1]
                && s[q.l3 + 8] == f[p.l3 + 8]
                && (be16(s, q.l3 + 6) ^ be16(f, p.l3 + 6)) & 0x4000 == 0
        };
        let mask = !u32::from(tcp_flags::CWR | tcp_flags::FIN | tcp_flags::PSH) << 16;
        let tcp_ok = f[p.l4 + 13] & tcp_flags::CWR == 0
            && (be32(s, q.l4 + 12) ^ be32(f, p.l4 + 12)) & (mask | 0xffff) == 0
            && be32(s, q.l4 + 8) == be32(f, p.l4 + 8)
            && s[q.l4 + 20..q.hl] == f[p.l4 + 20..p.hl]
            && be32(f, p.l4 + 4) == h.next_seq;
        // A frame grows in the slot or in spans, not both: a copied payload after
        // referenced ones would come out in the wrong place.
        let room = if by_ref {
            h.spans < MAX_SPANS
        } else {
            h.spans == 0 && h.head + plen <= self.slot_len
        };
        let size_ok = plen > 0 && plen <= h.mss && h.len - q.l3 + plen <= MAX_IP_LEN && room;
        if ip_ok && tcp_ok && size_ok {
            Verdict::Merge
        } else {
            Verdict::Flush
        }
    }

    /// Appends the payload of `f` to slot `i` (copied, or as a span of the frame at
    /// `src`); returns the slot's segment size.
    fn merge(&mut self, i: usize, f: &[u8], p: &TcpFrame, src: Option<usize>) -> usize {
        let Some(h) = self.held[i].as_mut() else {
            return 0;
        };
        let payload = &f[p.hl..];
        match src {
            Some(src) => {
                self.spans[i][h.spans] = Span {
                    at: src + p.hl,
                    len: payload.len(),
                };
                h.spans += 1;
            }
            None => {
                let at = i * self.slot_len + h.head;
                self.arena.as_mut()[at..at + payload.len()].copy_from_slice(payload);
                h.head += payload.len();
            }
        }
        h.len += payload.len();
        h.count += 1;
        h.next_seq = h.next_seq.wrapping_add(payload.len() as u32);
        let fl = i * self.slot_len + h.p.l4 + 13;
        self.arena.as_mut()[fl] |= f[p.l4 + 13] & (tcp_flags::PSH | tcp_flags::FIN);
        h.mss
    }

    /// Emits the frame in slot `i` and frees the slot.
    fn emit_slot(&mut self, i: usize, emit: &mut impl FnMut(&VirtioNetHdr, Coalesced<'_>)) {
        let Some(h) = self.held[i].take() else {
            return;
        };
        let base = i * self.slot_len;
        let s = &mut self.arena.as_mut()[base..base + h.head];
        let spans = &self.spans[i][..h.spans];
        if h.count == 1 {
            emit(&VirtioNetHdr::default(), Coalesced { head: s, spans });
            return;
        }
        let p = h.p;
        set_ip_len(s, &p, h.len - p.l3);
        let ph = checksum::fold(pseudo(s, &p, h.len - p.l4));
        put16(s, p.l4 + 16, ph);
        let mut gso_type = if p.v6 {
            VirtioNetHdr::GSO_TCPV6
        } else {
            VirtioNetHdr::GSO_TCPV4
        };
        if s[p.l4 + 13] & tcp_flags::CWR != 0 {
            gso_type |= VirtioNetHdr::GSO_ECN;
        }
        let hdr = VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type,
            hdr_len: p.hl as u16,
            gso_size: h.mss as u16,
            csum_start: p.l4 as u16,
            csum_offset: 16,
        };
        emit(&hdr, Coalesced { head: s, spans });
    }
}
