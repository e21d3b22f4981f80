//! The copy-free forms of segmentation and coalescing against the copying ones, which
//! serve as the model: `Segmenter::write_head` (headers in a small buffer, payload left
//! in the super-frame) must put on the wire exactly the bytes `Segmenter::write_next`
//! writes, and `Coalescer::push_at` (payloads left in the receive buffer, as spans) must
//! emit exactly the frames `Coalescer::push` emits, also when the held frames are copied
//! out with `materialize` half-way.
use encap::offload::{
    Coalesced, Coalescer, MAX_SPANS, SLOT_LEN, Segmenter, VirtioNetHdr, tcp_flags,
};
use proptest::prelude::*;

const MAC: [u8; 12] = [2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa];

/// An Ethernet + IP + TCP (or UDP) super-frame as a TAP hands it over: `payload` bytes,
/// the L4 checksum field holding the pseudo-header sum.
fn super_frame(v6: bool, udp: bool, opts: usize, payload: usize, seed: u8) -> Vec<u8> {
    let l3 = 14;
    let l4 = if v6 { l3 + 40 } else { l3 + 20 };
    let l4_hl = if udp { 8 } else { 20 + opts };
    let l4_len = l4_hl + payload;
    let mut f = vec![0u8; l4 + l4_len];
    f[..12].copy_from_slice(&MAC);
    let proto = if udp { 17 } else { 6 };
    if v6 {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        f[l3] = 0x60;
        f[l3 + 4..l3 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        f[l3 + 6] = proto;
        f[l3 + 7] = 64;
        f[l3 + 8..l3 + 24].copy_from_slice(&[0x20, 1, 0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f[l3 + 24..l3 + 40].copy_from_slice(&[0x20, 1, 0, 2, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[l3] = 0x45;
        f[l3 + 2..l3 + 4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&[0xff, u16::from(seed) as u8]);
        f[l3 + 6] = 0x40;
        f[l3 + 8] = 64;
        f[l3 + 9] = proto;
        f[l3 + 12..l3 + 16].copy_from_slice(&[198, 19, 1, 2]);
        f[l3 + 16..l3 + 20].copy_from_slice(&[198, 19, 2, 2]);
        let c = encap::checksum::checksum(&f[l3..l4]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    f[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    if udp {
        f[l4 + 4..l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        f[l4 + 4..l4 + 8].copy_from_slice(&(0xffff_f000u32 + u32::from(seed)).to_be_bytes());
        f[l4 + 8..l4 + 12].copy_from_slice(&7u32.to_be_bytes());
        f[l4 + 12] = ((l4_hl / 4) as u8) << 4;
        f[l4 + 13] = tcp_flags::ACK | tcp_flags::PSH;
        f[l4 + 14..l4 + 16].copy_from_slice(&502u16.to_be_bytes());
        for (i, b) in f[l4 + 20..l4 + l4_hl].iter_mut().enumerate() {
            *b = if i + 4 <= opts { 1 } else { 0 };
        }
    }
    for (i, b) in f[l4 + l4_hl..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8;
    }
    let ph = if v6 {
        encap::checksum::sum(&f[l3 + 8..l3 + 40]) + u64::from(proto) + l4_len as u64
    } else {
        encap::checksum::sum(&f[l3 + 12..l3 + 20]) + u64::from(proto) + l4_len as u64
    };
    let at = if udp { l4 + 6 } else { l4 + 16 };
    f[at..at + 2].copy_from_slice(&encap::checksum::fold(ph).to_be_bytes());
    f
}

fn hdr(v6: bool, udp: bool, mss: u16) -> VirtioNetHdr {
    let l4 = if v6 { 54 } else { 34 };
    VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: match (udp, v6) {
            (true, _) => VirtioNetHdr::GSO_UDP_L4,
            (false, true) => VirtioNetHdr::GSO_TCPV6,
            (false, false) => VirtioNetHdr::GSO_TCPV4,
        },
        hdr_len: 0,
        gso_size: mss,
        csum_start: l4,
        csum_offset: if udp { 6 } else { 16 },
    }
}

/// The segments both ways: copied whole by `write_next`, and as head + payload range by
/// `write_head` (the head buffer just big enough, to show it only needs the headers).
fn both_ways(h: &VirtioNetHdr, f: &[u8]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut copied = Vec::new();
    let mut s = Segmenter::new(h, f).unwrap();
    let mut buf = vec![0u8; 70_000];
    while let Some(r) = s.write_next(&mut buf) {
        let n = r.unwrap();
        copied.push(buf[..n].to_vec());
    }
    let mut split = Vec::new();
    let mut s = Segmenter::new(h, f).unwrap();
    while let Some(hl) = s.next_head_len() {
        let mut head = vec![0u8; hl];
        // One byte short is refused and does not advance.
        if hl > 0 {
            let mut short = vec![0u8; hl - 1];
            assert!(matches!(s.write_head(&mut short), Some(Err(_))));
        }
        let parts = s.write_head(&mut head).unwrap().unwrap();
        assert_eq!(parts.head, hl);
        let mut seg = head[..parts.head].to_vec();
        seg.extend_from_slice(&f[parts.payload.clone()]);
        assert_eq!(seg.len(), parts.len());
        split.push(seg);
    }
    (copied, split)
}

#[test]
fn write_head_puts_the_same_bytes_on_the_wire_as_write_next() {
    for v6 in [false, true] {
        for udp in [false, true] {
            for n in [0usize, 1, 1397, 1398, 1399, 4000, 65_000] {
                let f = super_frame(v6, udp, 12, n, 3);
                let (copied, split) = both_ways(&hdr(v6, udp, 1398), &f);
                assert!(!copied.is_empty());
                assert_eq!(copied, split, "v6 {v6} udp {udp} n {n}");
            }
        }
    }
    // A frame that is not cut (GSO_NONE, checksum to complete) is copied whole.
    let f = super_frame(false, false, 0, 300, 1);
    let h = VirtioNetHdr {
        gso_type: VirtioNetHdr::GSO_NONE,
        gso_size: 0,
        ..hdr(false, false, 0)
    };
    let (copied, split) = both_ways(&h, &f);
    assert_eq!(copied.len(), 1);
    assert_eq!(copied, split);
}

/// Cuts a super-frame into segments with full checksums (the model segmenter), as a peer
/// would send them.
fn segments(v6: bool, opts: usize, n: usize, mss: u16, seed: u8) -> Vec<Vec<u8>> {
    let f = super_frame(v6, false, opts, n, seed);
    both_ways(&hdr(v6, false, mss), &f).0
}

type Emitted = Vec<(VirtioNetHdr, Vec<u8>)>;

/// A frame as the caller of a span coalescer writes it: head, then its bytes at the spans.
fn resolve(c: Coalesced<'_>, src: &[u8]) -> Vec<u8> {
    let mut v = c.head.to_vec();
    for s in c.spans {
        v.extend_from_slice(&src[s.at..s.at + s.len]);
    }
    v
}

/// Runs `frames` through a copying coalescer and through a span one (the frames laid
/// out in a receive buffer of `batch` slots that is "read into again" after every
/// `batch` frames: held frames are materialised, then the buffer is overwritten).
fn coalesce_both(frames: &[Vec<u8>], batch: usize) -> (Emitted, Emitted) {
    let mut copy_arena = vec![0u8; 4 * SLOT_LEN];
    let mut copying = Coalescer::<_, 4>::new(&mut copy_arena[..]);
    let mut a = Vec::new();
    for f in frames {
        copying.push(f, |h, b| a.push((*h, b.to_vec())));
    }
    copying.flush(|h, b| a.push((*h, b.to_vec())));

    const SLOT: usize = 2048;
    let mut rx = vec![0u8; batch * SLOT];
    let mut span_arena = vec![0u8; 4 * SLOT_LEN];
    let mut spans = Coalescer::<_, 4>::new(&mut span_arena[..]);
    let mut b = Vec::new();
    for chunk in frames.chunks(batch) {
        spans.materialize(&rx, |h, c| b.push((*h, resolve(c, &rx))));
        assert!(!spans.holds_spans());
        // The next batch overwrites the buffer; a held frame must not see it.
        rx.fill(0xa5);
        for (i, f) in chunk.iter().enumerate() {
            rx[i * SLOT..i * SLOT + f.len()].copy_from_slice(f);
        }
        for (i, f) in chunk.iter().enumerate() {
            let at = i * SLOT;
            let rx_ref = &rx;
            spans.push_at(&rx_ref[at..at + f.len()], at, |h, c| {
                b.push((*h, resolve(c, rx_ref)))
            });
        }
    }
    spans.flush_with(|h, c| b.push((*h, resolve(c, &rx))));
    (a, b)
}

#[test]
fn span_coalescing_emits_what_copying_emits() {
    let segs = segments(false, 12, 65_000, 1398, 0);
    assert_eq!(segs.len(), 47);
    for batch in [1, 3, 8, 64] {
        let (a, b) = coalesce_both(&segs, batch);
        assert_eq!(a.len(), 1, "one super-frame");
        assert_eq!(a, b, "batch {batch}");
    }
    // More segments than a span coalescer references before it emits.
    let small = segments(true, 0, 200 * 100, 100, 1);
    assert!(small.len() > MAX_SPANS);
    let (a, b) = coalesce_both(&small, 256);
    assert_eq!(a.len(), 1, "the copying coalescer keeps it whole");
    assert_eq!(b.len(), small.len().div_ceil(MAX_SPANS));
    let joined = |e: &Emitted| -> Vec<u8> {
        e.iter()
            .flat_map(|(_, f)| f[14 + 40 + 20..].to_vec())
            .collect()
    };
    assert_eq!(joined(&a), joined(&b), "the same payload in order");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn split_segmentation_matches_copying(
        v6 in any::<bool>(),
        udp in any::<bool>(),
        opts in prop_oneof![Just(0usize), Just(4), Just(12), Just(40)],
        n in 0usize..=65_000,
        mss in prop_oneof![48u16..=600, 600u16..=9000],
        seed in any::<u8>(),
    ) {
        let l4_hl = if udp { 8 } else { 20 + opts };
        let n = n.min(65_535 - 40 - l4_hl);
        let f = super_frame(v6, udp, opts, n, seed);
        let (copied, split) = both_ways(&hdr(v6, udp, mss), &f);
        prop_assert_eq!(copied, split);
    }

    /// Two interleaved flows of odd sizes and MSS, some segments corrupted or dropped,
    /// through both coalescers with receive batches of random size.
    #[test]
    fn span_coalescing_matches_copying(
        n1 in 0usize..40_000,
        n2 in 0usize..40_000,
        mss in 48u16..=1460,
        v6 in any::<bool>(),
        batch in 1usize..=16,
        noise in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 0..6),
    ) {
        let a = segments(v6, 12, n1, mss, 1);
        let mut b = segments(v6, 0, n2, mss, 2);
        // The second flow from another port.
        let l4 = if v6 { 54 } else { 34 };
        for s in b.iter_mut() {
            s[l4..l4 + 2].copy_from_slice(&40001u16.to_be_bytes());
            let c = u16::from_be_bytes([s[l4 + 16], s[l4 + 17]]);
            let c = encap::checksum::update(c, 40000, 40001);
            s[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        }
        let mut frames = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            if i < a.len() && (j >= b.len() || (i + j) % 3 != 0) {
                frames.push(a[i].clone());
                i += 1;
            } else {
                frames.push(b[j].clone());
                j += 1;
            }
        }
        for (at, val, what) in noise {
            if frames.is_empty() {
                break;
            }
            let k = usize::from(at) % frames.len();
            match what {
                0 => { frames.remove(k); }
                1 => {
                    let f = &mut frames[k];
                    let x = usize::from(val) % f.len();
                    f[x] ^= 0x5a;
                }
                2 => { let m = frames.len(); frames.swap(k, (k + 1) % m) }
                _ => { let f = frames[k].clone(); frames.insert(k, f); }
            }
        }
        let (a, b) = coalesce_both(&frames, batch);
        prop_assert_eq!(a, b);
    }
}
