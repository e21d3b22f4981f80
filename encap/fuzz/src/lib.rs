//! The offload fuzz targets (`encap::offload`), as plain functions:
//! `fuzz_targets/{segment,tunnel_hdr,coalesce}.rs` call them on what libFuzzer generates and
//! `encap/tests/fuzz_offload.rs` (which includes this file with `#[path]`) calls them on
//! every corpus file, so `cargo test` replays what the fuzzer found. Each panics when a
//! property fails. Checksums and headers are checked with this file's own code, not
//! with the module's.
//!
//! * [`segment`]: the bytes a TAP read gives (a 10-byte virtio net header, then the
//!   frame) through [`Segmenter`]: every segment within `hdr_len + gso_size`, valid
//!   lengths and checksums, the payload conserved, `segment_into` agreeing, and
//!   segment-then-coalesce giving the super-frame back when the coalescer can take it.
//! * [`tunnel_hdr`]: the 24-byte UDP-tunnel header (`TunnelVnetHdr`) and the frame behind
//!   it: see the function.
//! * [`coalesce`]: an arbitrary sequence of [`CoalesceOp`]s (raw frames, frames with
//!   their checksums fixed, well-formed next segments of a few flows, flushes) through a
//!   [`Coalescer`]: every frame comes out exactly once, unchanged or inside a
//!   super-frame the segmenter accepts, whose completed checksum is valid and which
//!   segments back into the frames that went in.

use arbitrary::{Arbitrary, Unstructured};
use encap::offload::{
    Coalescer, Header, OffloadError, SLOT_LEN, Segmenter, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
    segment_into, tcp_flags,
};

/// Ones' complement sum of `data` added to `acc`, folded (not complemented).
pub fn sum16(data: &[u8], mut acc: u64) -> u16 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u64::from(*b) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn be32(f: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]])
}

/// Where the headers of an Ethernet (+ one tag) + IPv4/IPv6 (no extension headers) +
/// TCP/UDP frame are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// IP header.
    pub l3: usize,
    /// TCP/UDP header.
    pub l4: usize,
    /// Payload.
    pub hl: usize,
    /// End of the IP packet.
    pub end: usize,
    /// IPv6.
    pub v6: bool,
}

impl Parts {
    /// Unfolded pseudo-header sum for `proto` over the L4 bytes `l4..end`.
    pub fn pseudo(&self, f: &[u8], proto: u8) -> u64 {
        let addrs = if self.v6 {
            &f[self.l3 + 8..self.l3 + 40]
        } else {
            &f[self.l3 + 12..self.l3 + 20]
        };
        u64::from(sum16(addrs, 0)) + u64::from(proto) + (self.end - self.l4) as u64
    }

    /// The L4 checksum verifies.
    pub fn l4_valid(&self, f: &[u8], proto: u8) -> bool {
        sum16(&f[self.l4..self.end], self.pseudo(f, proto)) == 0xffff
    }
}

/// Parses `f` as a TCP (`proto` 6) or UDP (17) frame, as the kernel would accept it.
pub fn parse(f: &[u8], proto: u8) -> Option<Parts> {
    if f.len() < 14 {
        return None;
    }
    let (l3, et) = match be16(f, 12) {
        0x8100 | 0x88a8 if f.len() >= 18 => (18, be16(f, 16)),
        0x8100 | 0x88a8 => return None,
        t => (14, t),
    };
    let (l4, end, v6) = match et {
        0x0800 => {
            let h = f.get(l3..l3 + 20)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let tot = usize::from(be16(h, 2));
            if h[0] >> 4 != 4 || ihl < 20 || tot < ihl || l3 + tot > f.len() {
                return None;
            }
            if be16(h, 6) & 0x3fff != 0 || h[9] != proto {
                return None;
            }
            (l3 + ihl, l3 + tot, false)
        }
        0x86dd => {
            let h = f.get(l3..l3 + 40)?;
            let plen = usize::from(be16(h, 4));
            if h[0] >> 4 != 6 || plen == 0 || l3 + 40 + plen > f.len() || h[6] != proto {
                return None;
            }
            (l3 + 40, l3 + 40 + plen, true)
        }
        _ => return None,
    };
    let hl = if proto == 17 {
        l4 + 8
    } else {
        if l4 + 20 > end {
            return None;
        }
        l4 + usize::from(f[l4 + 12] >> 4) * 4
    };
    if hl > end || (proto == 6 && hl < l4 + 20) {
        return None;
    }
    Some(Parts {
        l3,
        l4,
        hl,
        end,
        v6,
    })
}

/// Checks the IP lengths and the IPv4 header checksum of a frame that ends with its IP
/// packet.
fn check_ip(f: &[u8], p: &Parts, what: &str) {
    assert_eq!(p.end, f.len(), "{what}: frame longer than its IP packet");
    if p.v6 {
        assert_eq!(
            usize::from(be16(f, p.l3 + 4)),
            f.len() - p.l3 - 40,
            "{what}: plen"
        );
    } else {
        assert_eq!(
            usize::from(be16(f, p.l3 + 2)),
            f.len() - p.l3,
            "{what}: total length"
        );
        assert_eq!(
            sum16(&f[p.l3..p.l4], 0),
            0xffff,
            "{what}: IPv4 header checksum"
        );
    }
}

// ------------------------------------------------------------------------- segment

/// What one segment input did (for the replay test's checks on named seeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOutcome {
    /// The virtio header did not parse.
    NoHeader,
    /// The segmenter refused the frame.
    Refused(OffloadError),
    /// This many frames came out.
    Segments {
        /// Frames written.
        n: usize,
        /// Segment-then-coalesce gave the super-frame back (checked when possible).
        round_trip: bool,
    },
}

/// The segmenter target: `data` is what a TAP read gives (virtio net header + frame).
pub fn segment(data: &[u8]) -> SegmentOutcome {
    if data.len() < VIRTIO_NET_HDR_LEN {
        assert_eq!(VirtioNetHdr::parse(data), Err(OffloadError::Truncated));
        return SegmentOutcome::NoHeader;
    }
    let frame = &data[VIRTIO_NET_HDR_LEN..];
    match VirtioNetHdr::parse(data) {
        Ok(hdr) => {
            let mut again = [0u8; VIRTIO_NET_HDR_LEN];
            hdr.emit(&mut again).expect("10 bytes");
            assert_eq!(again, data[..VIRTIO_NET_HDR_LEN], "header does not re-emit");
            check_segment(&hdr, frame)
        }
        Err(e) => {
            // A header the parser refuses is refused by the segmenter too.
            let h = Header::new_unchecked(data);
            let raw = VirtioNetHdr {
                flags: h.flags(),
                gso_type: h.gso_type(),
                hdr_len: h.hdr_len(),
                gso_size: h.gso_size(),
                csum_start: h.csum_start(),
                csum_offset: h.csum_offset(),
            };
            let r = check_segment(&raw, frame);
            assert!(
                matches!(r, SegmentOutcome::Refused(_)),
                "{e}: segmented anyway: {r:?}"
            );
            SegmentOutcome::Refused(e)
        }
    }
}

/// The properties of the segmenter for one header and frame.
pub fn check_segment(hdr: &VirtioNetHdr, frame: &[u8]) -> SegmentOutcome {
    let mut s = match Segmenter::new(hdr, frame) {
        Ok(s) => s,
        Err(e) => {
            let mut out = vec![0u8; 256];
            let mut lens = [0usize; 4];
            assert_eq!(segment_into(hdr, frame, &mut out, &mut lens), Err(e));
            return SegmentOutcome::Refused(e);
        }
    };
    let promised = s.remaining();
    assert!(promised >= 1);
    let mut segs: Vec<Vec<u8>> = Vec::new();
    while let Some(len) = s.next_len() {
        assert!(segs.len() < promised, "more segments than remaining() said");
        // One byte short is refused and does not advance.
        if len > 0 {
            let mut short = vec![0u8; len - 1];
            assert_eq!(
                s.write_next(&mut short),
                Some(Err(OffloadError::BufferTooSmall))
            );
            assert_eq!(s.next_len(), Some(len));
        }
        let mut buf = vec![0u8; len + 3];
        assert_eq!(s.write_next(&mut buf), Some(Ok(len)));
        buf.truncate(len);
        segs.push(buf);
        assert_eq!(s.remaining(), promised - segs.len());
    }
    assert_eq!(s.write_next(&mut [0u8; 64]), None);
    assert_eq!(segs.len(), promised);

    // segment_into writes the same frames.
    let total: usize = segs.iter().map(Vec::len).sum();
    let mut flat = vec![0u8; total];
    let mut lens = vec![0usize; segs.len()];
    assert_eq!(
        segment_into(hdr, frame, &mut flat, &mut lens),
        Ok(segs.len())
    );
    assert_eq!(
        flat,
        segs.concat(),
        "segment_into differs from the Segmenter"
    );
    if total > 0 {
        let r = segment_into(hdr, frame, &mut flat[..total - 1], &mut lens);
        assert_eq!(r, Err(OffloadError::BufferTooSmall));
    }

    let gso = hdr.gso_kind();
    let round_trip = match gso {
        VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_TCPV6 => check_tcp_segments(hdr, frame, &segs),
        VirtioNetHdr::GSO_UDP_L4 => {
            check_udp_segments(hdr, frame, &segs);
            false
        }
        _ => {
            // GSO_NONE: the frame itself, with only the checksum field completed.
            assert_eq!(segs.len(), 1);
            let out = &segs[0];
            assert_eq!(out.len(), frame.len());
            if hdr.flags & VirtioNetHdr::F_NEEDS_CSUM != 0 {
                let start = usize::from(hdr.csum_start);
                let at = start + usize::from(hdr.csum_offset);
                for (i, (a, b)) in out.iter().zip(frame).enumerate() {
                    assert!(a == b || i == at || i == at + 1, "byte {i} changed");
                }
                // As the kernel's skb_checksum_help: the field (holding the pseudo-header
                // sum) is summed along with the rest, and a result of 0 is sent as ffff.
                let c = match !sum16(&frame[start..], 0) {
                    0 => 0xffff,
                    c => c,
                };
                assert_eq!(be16(out, at), c, "completed checksum");
                if hdr.csum_offset.is_multiple_of(2) {
                    let partial = u64::from(be16(frame, at));
                    assert_eq!(sum16(&out[start..], partial), 0xffff, "checksum verifies");
                }
            } else {
                assert_eq!(out, frame);
            }
            false
        }
    };
    SegmentOutcome::Segments {
        n: segs.len(),
        round_trip,
    }
}

fn check_tcp_segments(hdr: &VirtioNetHdr, frame: &[u8], segs: &[Vec<u8>]) -> bool {
    let p = parse(frame, 6).expect("the segmenter accepted a frame that is not TCP");
    let mss = usize::from(hdr.gso_size);
    let mut payload = Vec::new();
    let seq0 = be32(frame, p.l4 + 4);
    let n = segs.len();
    for (i, s) in segs.iter().enumerate() {
        let what = format!("segment {i}/{n}");
        let q = parse(s, 6).unwrap_or_else(|| panic!("{what} is not a TCP frame"));
        assert_eq!(
            (q.l3, q.l4, q.hl),
            (p.l3, p.l4, p.hl),
            "{what}: header layout"
        );
        assert!(s.len() - q.hl <= mss, "{what}: payload over gso_size {mss}");
        assert!(
            i + 1 == n || s.len() - q.hl == mss,
            "{what}: short segment not last"
        );
        check_ip(s, &q, &what);
        assert!(q.l4_valid(s, 6), "{what}: TCP checksum");
        assert_eq!(s[..p.l3], frame[..p.l3], "{what}: Ethernet header");
        assert_eq!(
            be32(s, q.l4 + 4),
            seq0.wrapping_add(payload.len() as u32),
            "{what}: sequence number"
        );
        let (fl, ofl) = (s[q.l4 + 13], frame[p.l4 + 13]);
        let mut want = ofl;
        if i + 1 != n {
            want &= !(tcp_flags::FIN | tcp_flags::PSH);
        }
        if i != 0 {
            want &= !tcp_flags::CWR;
        }
        assert_eq!(fl, want, "{what}: flags");
        assert_eq!(
            s[q.l4 + 20..q.hl],
            frame[p.l4 + 20..p.hl],
            "{what}: TCP options"
        );
        payload.extend_from_slice(&s[q.hl..]);
    }
    assert_eq!(payload, frame[p.hl..p.end], "payload not conserved");

    // Segment then coalesce: the coalescer gives the super-frame back when it could
    // have built it (the conditions the coalescer documents).
    let flags = frame[p.l4 + 13];
    let coalescable = p.end > p.hl
        && (p.v6 || p.l4 - p.l3 == 20)
        && flags & (tcp_flags::SYN | tcp_flags::RST | tcp_flags::URG) == 0
        && p.end - p.l3 <= encap::offload::MAX_IP_LEN;
    if !coalescable {
        return false;
    }
    let mut outs: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
    with_arena(2 * SLOT_LEN, |arena| {
        let mut c: Coalescer<&mut [u8], 2> = Coalescer::new(arena);
        for s in segs {
            c.push(s, |h, f| outs.push((*h, f.to_vec())));
        }
        c.flush(|h, f| outs.push((*h, f.to_vec())));
        assert_eq!(c.held(), 0);
    });
    if n == 1 {
        // One segment comes out as it went in (a full checksum, no GSO).
        assert_eq!(outs.len(), 1, "one segment became {} frames", outs.len());
        assert_eq!(outs[0].0, VirtioNetHdr::default());
        assert_eq!(outs[0].1, segs[0]);
        return true;
    }
    assert_eq!(
        outs.len(),
        1,
        "{n} segments coalesced into {} frames",
        outs.len()
    );
    let (h, f) = &outs[0];
    let want_type = if p.v6 {
        VirtioNetHdr::GSO_TCPV6
    } else {
        VirtioNetHdr::GSO_TCPV4
    } | if flags & tcp_flags::CWR != 0 {
        VirtioNetHdr::GSO_ECN
    } else {
        0
    };
    assert_eq!(
        *h,
        VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type: want_type,
            hdr_len: p.hl as u16,
            gso_size: mss as u16,
            csum_start: p.l4 as u16,
            csum_offset: 16,
        }
    );
    let q = parse(f, 6).expect("coalesced frame is TCP");
    check_ip(f, &q, "coalesced");
    check_partial_checksum(f, &q);
    // The super-frame again, but for the checksums (IPv4 header, TCP).
    let mut a = f.clone();
    let mut b = frame[..p.end].to_vec();
    for x in [&mut a, &mut b] {
        if !p.v6 {
            x[p.l3 + 10..p.l3 + 12].fill(0);
        }
        x[p.l4 + 16..p.l4 + 18].fill(0);
    }
    assert_eq!(a, b, "segment-then-coalesce is not the identity");
    true
}

/// The TCP checksum field of a `NEEDS_CSUM` frame holds the pseudo-header sum: completed
/// over the segment (as the kernel's `skb_checksum_help`), the checksum verifies.
fn check_partial_checksum(f: &[u8], q: &Parts) {
    let mut done = f.to_vec();
    let c = !sum16(&done[q.l4..q.end], 0);
    done[q.l4 + 16..q.l4 + 18].copy_from_slice(&c.to_be_bytes());
    assert!(
        q.l4_valid(&done, 6),
        "partial checksum of a coalesced frame"
    );
}

fn check_udp_segments(hdr: &VirtioNetHdr, frame: &[u8], segs: &[Vec<u8>]) {
    let p = parse(frame, 17).expect("the segmenter accepted a frame that is not UDP");
    let mss = usize::from(hdr.gso_size);
    let mut payload = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        let what = format!("datagram {i}");
        let q = parse(s, 17).unwrap_or_else(|| panic!("{what} is not a UDP frame"));
        assert!(s.len() - q.hl <= mss, "{what}: payload over gso_size {mss}");
        check_ip(s, &q, &what);
        assert_eq!(
            usize::from(be16(s, q.l4 + 4)),
            s.len() - q.l4,
            "{what}: UDP length"
        );
        assert_ne!(be16(s, q.l4 + 6), 0, "{what}: UDP checksum 0");
        assert!(q.l4_valid(s, 17), "{what}: UDP checksum");
        payload.extend_from_slice(&s[q.hl..]);
    }
    assert_eq!(payload, frame[p.hl..p.end], "payload not conserved");
    // The coalescer passes UDP through untouched.
    with_arena(SLOT_LEN, |arena| {
        let mut c: Coalescer<&mut [u8], 1> = Coalescer::new(arena);
        for s in segs {
            let mut n = 0;
            c.push(s, |h, f| {
                assert_eq!((*h, f), (VirtioNetHdr::default(), &s[..]));
                n += 1;
            });
            assert_eq!(n, 1);
        }
    });
}

/// Runs `f` on a reused arena of `len` bytes (its contents are arbitrary: a coalescer
/// must not depend on them).
fn with_arena<R>(len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    thread_local! {
        static ARENA: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    ARENA.with(|a| {
        let mut a = a.borrow_mut();
        if a.len() < len {
            a.resize(len, 0x5a);
        }
        f(&mut a[..len])
    })
}

// ------------------------------------------------------------------------ coalesce

/// One step of the coalescer target.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum CoalesceOp {
    /// Push these bytes as they are.
    Raw(Vec<u8>),
    /// Push these bytes with the IPv4 header checksum and the TCP checksum made valid
    /// (when they parse as TCP).
    Fixed(Vec<u8>),
    /// Push the next segment of one of [`FLOWS`] flows.
    Next {
        /// Which flow (modulo [`FLOWS`]).
        flow: u8,
        /// Payload bytes (modulo 1500).
        len: u16,
        /// TCP flags added to ACK.
        flags: u8,
        /// What to do differently (bits: skip ahead in sequence, other TTL, other
        /// window, bad checksum, other ack, other IPv4 ID, other TOS).
        tweak: u8,
    },
    /// The end of a receive batch.
    Flush,
}

/// Input of [`coalesce`].
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct CoalesceInput {
    /// Slot length in 256-byte units; 0 gives [`SLOT_LEN`].
    pub slot: u8,
    /// The steps (at most [`MAX_STEPS`] are used).
    pub ops: Vec<CoalesceOp>,
}

/// Flows [`CoalesceOp::Next`] builds segments of.
pub const FLOWS: u8 = 5;

/// Steps used per input.
pub const MAX_STEPS: usize = 64;

/// Slots of the coalescer under test (few, so that eviction happens).
pub const SLOTS: usize = 3;

/// What one coalesce input did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceOutcome {
    /// Frames pushed.
    pub pushed: usize,
    /// Frames emitted.
    pub emitted: usize,
    /// Super-frames (more than one segment) among them.
    pub merged: usize,
}

/// Sets the IPv4 header checksum and the TCP checksum of a frame that parses as TCP.
pub fn fix_checksums(f: &mut [u8]) {
    let Some(p) = parse(f, 6) else {
        return;
    };
    if !p.v6 {
        f[p.l3 + 10..p.l3 + 12].fill(0);
        let c = !sum16(&f[p.l3..p.l4], 0);
        f[p.l3 + 10..p.l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    f[p.l4 + 16..p.l4 + 18].fill(0);
    let c = !sum16(&f[p.l4..p.end], p.pseudo(f, 6));
    f[p.l4 + 16..p.l4 + 18].copy_from_slice(&c.to_be_bytes());
}

/// A TCP segment of flow `flow` (0: IPv4, 1: IPv6, 2: IPv4 behind a VLAN tag, 3: IPv4
/// with a timestamp option, 4: IPv6 with another flow label) with valid checksums.
pub fn flow_segment(flow: u8, seq: u32, payload: usize, flags: u8, tweak: u8) -> Vec<u8> {
    let v6 = flow % 2 == 1;
    let mut f = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a];
    if flow == 2 {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
    }
    let opts: &[u8] = if flow == 3 {
        &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]
    } else {
        &[]
    };
    let tcp_len = 20 + opts.len() + payload;
    let l3 = f.len() + 2;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, flow]);
        f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        f.push(6);
        f.push(if tweak & 2 != 0 { 63 } else { 64 });
        for last in [1u8, 2] {
            f.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]);
        }
        if tweak & 0x40 != 0 {
            f[l3] |= 0x02;
        }
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        let id = if tweak & 0x20 != 0 { 0x5555 } else { 0x1234 };
        f.extend_from_slice(&u16::to_be_bytes(id));
        f.extend_from_slice(&[0x40, 0, if tweak & 2 != 0 { 63 } else { 64 }, 6, 0, 0]);
        f.extend_from_slice(&[198, 19, 1, flow, 198, 19, 2, 2]);
        if tweak & 0x40 != 0 {
            f[l3 + 1] = 0x10;
        }
    }
    let l4 = f.len();
    f.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
    f.extend_from_slice(&seq.to_be_bytes());
    let ack: u32 = if tweak & 0x10 != 0 { 0x0100 } else { 0x0001 };
    f.extend_from_slice(&ack.to_be_bytes());
    f.push((((20 + opts.len()) / 4) << 4) as u8);
    f.push(tcp_flags::ACK | flags);
    let win: u16 = if tweak & 4 != 0 { 1000 } else { 502 };
    f.extend_from_slice(&win.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(opts);
    f.extend((0..payload).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8));
    fix_checksums(&mut f);
    if tweak & 8 != 0 {
        f[l4 + 17] ^= 0x01;
    }
    f
}

/// A frame as the multiset comparison sees it: cut to its IP packet when it is TCP,
/// with the fields the coalescer does not keep per segment (IPv4 ID and header
/// checksum, TCP checksum and urgent pointer) zeroed.
fn normalized(f: &[u8]) -> Vec<u8> {
    let Some(p) = parse(f, 6) else {
        return f.to_vec();
    };
    let mut v = f[..p.end].to_vec();
    if !p.v6 {
        v[p.l3 + 4..p.l3 + 6].fill(0);
        v[p.l3 + 10..p.l3 + 12].fill(0);
    }
    v[p.l4 + 16..p.l4 + 20].fill(0);
    v
}

/// The coalescer target.
pub fn coalesce(data: &[u8]) -> CoalesceOutcome {
    match CoalesceInput::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => check_coalesce(&input),
        Err(_) => CoalesceOutcome::default(),
    }
}

/// The properties of the coalescer for one sequence of steps.
pub fn check_coalesce(input: &CoalesceInput) -> CoalesceOutcome {
    let slot_len = if input.slot == 0 {
        SLOT_LEN
    } else {
        usize::from(input.slot) * 256
    };
    with_arena(SLOTS * slot_len, |arena| {
        run_coalesce(input, slot_len, arena)
    })
}

fn run_coalesce(input: &CoalesceInput, slot_len: usize, arena: &mut [u8]) -> CoalesceOutcome {
    let mut c: Coalescer<&mut [u8], SLOTS> = Coalescer::new(arena);
    let mut seqs = [0x1000_0000u32; FLOWS as usize];
    let mut pushed: Vec<Vec<u8>> = Vec::new();
    let mut outs: Vec<(VirtioNetHdr, Vec<u8>)> = Vec::new();
    let mut out = CoalesceOutcome::default();
    for op in input.ops.iter().take(MAX_STEPS) {
        let frame = match op {
            CoalesceOp::Raw(b) => b.clone(),
            CoalesceOp::Fixed(b) => {
                let mut b = b.clone();
                fix_checksums(&mut b);
                b
            }
            CoalesceOp::Next {
                flow,
                len,
                flags,
                tweak,
            } => {
                let flow = flow % FLOWS;
                let i = usize::from(flow);
                if tweak & 1 != 0 {
                    seqs[i] = seqs[i].wrapping_add(1000);
                }
                let n = usize::from(*len % 1500);
                let f = flow_segment(flow, seqs[i], n, *flags, *tweak);
                seqs[i] = seqs[i].wrapping_add(n as u32);
                f
            }
            CoalesceOp::Flush => {
                c.flush(|h, f| outs.push((*h, f.to_vec())));
                assert_eq!(c.held(), 0);
                continue;
            }
        };
        c.push(&frame, |h, f| outs.push((*h, f.to_vec())));
        assert!(c.held() <= SLOTS);
        pushed.push(frame);
    }
    c.flush(|h, f| outs.push((*h, f.to_vec())));
    assert_eq!(c.held(), 0, "frames held after a flush");
    out.pushed = pushed.len();
    out.emitted = outs.len();
    assert!(outs.len() <= pushed.len(), "more frames out than in");

    // Every frame comes out exactly once: as it went in (trimmed to its IP packet when
    // held) or as a segment of a super-frame the segmenter accepts.
    let mut got: Vec<Vec<u8>> = Vec::new();
    for (h, f) in &outs {
        if *h == VirtioNetHdr::default() {
            got.push(normalized(f));
            continue;
        }
        out.merged += 1;
        assert!(f.len() <= slot_len, "super-frame larger than its slot");
        let q = parse(f, 6).expect("a super-frame is TCP");
        check_ip(f, &q, "super-frame");
        assert!(q.end - q.l3 <= encap::offload::MAX_IP_LEN);
        check_partial_checksum(f, &q);
        let mut s = Segmenter::new(h, f)
            .unwrap_or_else(|e| panic!("the segmenter refuses a coalesced frame: {e}"));
        assert!(s.remaining() >= 2, "a super-frame of one segment");
        while let Some(len) = s.next_len() {
            let mut buf = vec![0u8; len];
            assert_eq!(s.write_next(&mut buf), Some(Ok(len)));
            let p = parse(&buf, 6).expect("re-segmented TCP");
            assert!(p.l4_valid(&buf, 6), "re-segmented checksum");
            got.push(normalized(&buf));
        }
    }
    let mut want: Vec<Vec<u8>> = pushed.iter().map(|f| normalized(f)).collect();
    got.sort();
    want.sort();
    assert!(
        got == want,
        "frames out (re-segmented) differ from frames in: {} vs {}",
        got.len(),
        want.len()
    );
    out
}

/// Writes inputs in the byte form `Arbitrary` reads them from, to build seed corpora
/// (the replay test checks that each seed decodes back to what was encoded).
pub mod encode {
    use super::{CoalesceInput, CoalesceOp};

    /// An enum discriminant: `derive(Arbitrary)` picks variant `(u32 * n) >> 32`.
    pub fn variant(out: &mut Vec<u8>, k: u32, n: u32) {
        let v = (u64::from(k) << 32).div_ceil(u64::from(n));
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }

    fn bytes(o: &mut Vec<u8>, b: &[u8]) {
        for x in b {
            o.extend_from_slice(&[1, *x]);
        }
        o.push(0);
    }

    /// Encodes a [`CoalesceInput`].
    pub fn coalesce(i: &CoalesceInput) -> Vec<u8> {
        let mut o = vec![i.slot];
        for op in &i.ops {
            o.push(1);
            match op {
                CoalesceOp::Raw(b) => {
                    variant(&mut o, 0, 4);
                    bytes(&mut o, b);
                }
                CoalesceOp::Fixed(b) => {
                    variant(&mut o, 1, 4);
                    bytes(&mut o, b);
                }
                CoalesceOp::Next {
                    flow,
                    len,
                    flags,
                    tweak,
                } => {
                    variant(&mut o, 2, 4);
                    o.push(*flow);
                    o.extend_from_slice(&len.to_le_bytes());
                    o.extend_from_slice(&[*flags, *tweak]);
                }
                CoalesceOp::Flush => variant(&mut o, 3, 4),
            }
        }
        o.push(0);
        o
    }
}

/// What the [`tunnel_hdr`] target made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelOutcome {
    /// Shorter than the 24-byte header.
    NoHeader,
    /// The header was refused.
    Refused(OffloadError),
    /// A header without a tunnel bit.
    Plain,
    /// A tunnel super-frame header; `Ok` when the frame behind it fits it.
    Tunnel(Result<(), OffloadError>),
}

/// The 24-byte tunnel header target: `data` is what a TAP with `TUNSETVNETHDRSZ` 24
/// gives (header, then the frame). Properties: parse never panics; a parsed header
/// re-emits and parses to itself; a plain header is the 10-byte parse and does not
/// depend on bytes 10–23 (the kernel may leave stale bytes there); no result depends on
/// `hdr_len`; a tunnel header's offsets are in order, and a frame that passes
/// `check_frame` really has its outer UDP header, inner IP header and inner
/// transport checksum where the offsets say, inside the frame.
pub fn tunnel_hdr(data: &[u8]) -> TunnelOutcome {
    use encap::offload::{GSO_UDP_TUNNEL_MASK, TunnelVnetHdr, VIRTIO_NET_HDR_TNL_LEN};
    const N: usize = VIRTIO_NET_HDR_TNL_LEN;
    let parsed = TunnelVnetHdr::parse(data);
    if data.len() < N {
        assert_eq!(parsed, Err(OffloadError::Truncated));
        return TunnelOutcome::NoHeader;
    }
    let frame = &data[N..];
    // hdr_len changes nothing but itself.
    let mut other = [0u8; N];
    other.copy_from_slice(&data[..N]);
    other[2] ^= 0xff;
    other[3] ^= 0x5a;
    let parsed_other = TunnelVnetHdr::parse(&other);
    match (&parsed, &parsed_other) {
        (Ok(a), Ok(b)) => {
            let mut b = *b;
            b.base.hdr_len = a.base.hdr_len;
            assert_eq!(*a, b, "hdr_len changed the header");
            assert_eq!(a.check_frame(frame), b.check_frame(frame));
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("hdr_len decided whether the header parses"),
    }
    let h = match parsed {
        Ok(h) => h,
        Err(e) => {
            if data[1] & GSO_UDP_TUNNEL_MASK == 0 && data[0] & 8 == 0 {
                assert!(VirtioNetHdr::parse(&data[..VIRTIO_NET_HDR_LEN]).is_err());
            }
            return TunnelOutcome::Refused(e);
        }
    };
    let mut again = [0u8; N];
    h.emit(&mut again).expect("24 bytes");
    assert_eq!(
        TunnelVnetHdr::parse(&again),
        Ok(h),
        "header does not re-emit"
    );
    let Some(t) = h.tunnel else {
        assert_eq!(
            Ok(h.base),
            VirtioNetHdr::parse(&data[..VIRTIO_NET_HDR_LEN]),
            "plain header is not the 10-byte one"
        );
        let mut stale = other;
        stale[2..4].copy_from_slice(&data[2..4]);
        for b in &mut stale[VIRTIO_NET_HDR_LEN..] {
            *b = !*b;
        }
        assert_eq!(TunnelVnetHdr::parse(&stale), Ok(h), "bytes 10-23 were read");
        assert_eq!(&again[VIRTIO_NET_HDR_LEN..], &[0u8; N - VIRTIO_NET_HDR_LEN]);
        return TunnelOutcome::Plain;
    };
    assert_eq!((data[1] & GSO_UDP_TUNNEL_MASK).count_ones(), 1);
    assert_ne!(h.base.flags & VirtioNetHdr::F_NEEDS_CSUM, 0);
    let (oth, inh, cs) = (
        usize::from(t.outer_th),
        usize::from(t.inner_nh),
        usize::from(h.base.csum_start),
    );
    assert!(oth >= 34 && oth + 8 <= inh && inh + 20 <= cs, "{t:?} {h:?}");
    let r = h.check_frame(frame);
    if r.is_ok() {
        let ethertype = be16(frame, 12);
        if t.outer_v6 {
            assert_eq!(ethertype, 0x86dd);
            assert_eq!(frame[14] >> 4, 6);
            assert_eq!(oth, 54);
            assert_eq!(frame[14 + 6], 17);
        } else {
            assert_eq!(ethertype, 0x0800);
            assert_eq!(frame[14] >> 4, 4);
            assert_eq!(oth, 14 + usize::from(frame[14] & 15) * 4);
            assert_eq!(frame[14 + 9], 17);
        }
        let inner_v6 = frame[inh] >> 4 == 6;
        let ihl = if inner_v6 {
            40
        } else {
            usize::from(frame[inh] & 15) * 4
        };
        assert_eq!(inh + ihl, cs);
        let proto = frame[if inner_v6 { inh + 6 } else { inh + 9 }];
        assert!(proto == 6 || proto == 17);
        assert!(cs + usize::from(h.base.csum_offset) + 2 <= frame.len());
        let inner = h.inner(inh - 14).expect("inner header");
        assert_eq!(usize::from(inner.csum_start), cs - (inh - 14));
        assert_eq!(inner.hdr_len, 0);
        // The inner header is one the plain parser takes.
        let mut plain = [0u8; VIRTIO_NET_HDR_LEN];
        inner.emit(&mut plain).expect("10 bytes");
        assert_eq!(VirtioNetHdr::parse(&plain), Ok(inner));
    }
    TunnelOutcome::Tunnel(r)
}
