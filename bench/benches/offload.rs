//! Criterion micro-benchmarks of `encap::offload`: cutting a 64 KB TCP/IPv4 super-frame
//! (timestamps on) into 1398-byte segments, the inner MSS behind a VXLAN header on a
//! 1500-byte underlay, and coalescing those 47 segments back into one super-frame.
//! Throughput is in payload-carrying frame bytes; divide the time by the segment count
//! (printed once) for the cost per segment. Each is measured twice: copying every
//! segment into its own buffer (`segment_*`, `coalesce_*`, the datapath before issue 17)
//! and leaving the payload in place (`*_headers_only`: headers into a small arena,
//! checksums over the payload where it is; `*_spans`: payloads referenced where they
//! were received), as the datapath now does with iovecs.
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use encap::offload::{Coalescer, SLOT_LEN, Segmenter, VirtioNetHdr, segment_into};
use std::hint::black_box;

const MSS: u16 = 1398;
const HEADROOM: usize = 64;

/// A TCP/IPv4 super-frame with the largest payload an IPv4 total length allows, its TCP
/// checksum field holding the pseudo-header sum (as a TAP hands it over).
fn super_frame() -> (VirtioNetHdr, Vec<u8>) {
    let payload = 65535 - 20 - 32;
    let mut f = vec![0u8; 14 + 20 + 32 + payload];
    f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = 14;
    f[ip] = 0x45;
    f[ip + 2..ip + 4].copy_from_slice(&65535u16.to_be_bytes());
    f[ip + 6] = 0x40;
    f[ip + 8] = 64;
    f[ip + 9] = 6;
    f[ip + 12..ip + 16].copy_from_slice(&[10, 0, 1, 1]);
    f[ip + 16..ip + 20].copy_from_slice(&[10, 0, 2, 2]);
    let c = encap::checksum::checksum(&f[ip..ip + 20]);
    f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    let t = 34;
    f[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&5201u16.to_be_bytes());
    f[t + 4..t + 8].copy_from_slice(&1u32.to_be_bytes());
    f[t + 12] = 8 << 4;
    f[t + 13] = 0x18;
    f[t + 14..t + 16].copy_from_slice(&502u16.to_be_bytes());
    f[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    for (i, b) in f[66..].iter_mut().enumerate() {
        *b = (i * 7) as u8;
    }
    let ph = encap::checksum::pseudo_header_v4(
        [10, 0, 1, 1].into(),
        [10, 0, 2, 2].into(),
        6,
        (f.len() - t) as u32,
    );
    let c = encap::checksum::fold(ph);
    f[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_TCPV4,
        hdr_len: 66,
        gso_size: MSS,
        csum_start: 34,
        csum_offset: 16,
    };
    (hdr, f)
}

fn bench_offload(c: &mut Criterion) {
    let (hdr, frame) = super_frame();
    let mut out = vec![0u8; 128 * 1024];
    let mut lens = [0usize; 64];
    let n = segment_into(&hdr, &frame, &mut out, &mut lens).unwrap();
    println!(
        "offload: {} payload bytes -> {n} segments of MSS {MSS}",
        frame.len() - 66
    );
    let wire: usize = lens[..n].iter().sum();
    let segments: Vec<Vec<u8>> = {
        let mut at = 0;
        lens[..n]
            .iter()
            .map(|&l| {
                at += l;
                out[at - l..at].to_vec()
            })
            .collect()
    };

    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(wire as u64));
    // Each segment written behind tunnel headroom in its own buffer, as the datapath will.
    let mut bufs = vec![vec![0u8; HEADROOM + 1500]; n];
    g.bench_function(format!("segment_64k_v4_mss{MSS}_{n}segs"), |b| {
        b.iter(|| {
            let mut s = Segmenter::new(black_box(&hdr), black_box(&frame)).unwrap();
            for buf in bufs.iter_mut() {
                black_box(s.write_next(&mut buf[HEADROOM..]).unwrap().unwrap());
            }
            s.remaining()
        })
    });
    // The same cut without copying the payload (the datapath since issue 17): each
    // segment's headers into a small per-batch arena, its payload named in place.
    let mut heads = vec![0u8; 64 * 128];
    g.bench_function(
        format!("segment_64k_v4_mss{MSS}_{n}segs_headers_only"),
        |b| {
            b.iter(|| {
                let mut s = Segmenter::new(black_box(&hdr), black_box(&frame)).unwrap();
                let mut at = 0;
                let mut bytes = 0;
                while let Some(r) = s.write_head(&mut heads[at + HEADROOM..]) {
                    let p = r.unwrap();
                    bytes += p.len();
                    at += p.head;
                }
                black_box(bytes)
            })
        },
    );
    let mut arena = vec![0u8; 8 * SLOT_LEN];
    g.bench_function(format!("coalesce_{n}segs_v4_mss{MSS}"), |b| {
        b.iter(|| {
            let mut co = Coalescer::<_, 8>::new(&mut arena);
            let mut emitted = 0usize;
            for s in &segments {
                co.push(black_box(s), |h, f| {
                    emitted += f.len() + usize::from(h.gso_size)
                });
            }
            co.flush(|h, f| emitted += f.len() + usize::from(h.gso_size));
            emitted
        })
    });
    // Coalescing that leaves the payloads where they were received (spans): the segments
    // laid out in one receive buffer, as a recvmmsg batch leaves them.
    let slot = 2048;
    let mut rx = vec![0u8; segments.len() * slot];
    for (i, s) in segments.iter().enumerate() {
        rx[i * slot..i * slot + s.len()].copy_from_slice(s);
    }
    let mut arena = vec![0u8; 8 * SLOT_LEN];
    g.bench_function(format!("coalesce_{n}segs_v4_mss{MSS}_spans"), |b| {
        b.iter(|| {
            let mut co = Coalescer::<_, 8>::new(&mut arena);
            let mut emitted = 0usize;
            for (i, s) in segments.iter().enumerate() {
                let at = i * slot;
                co.push_at(black_box(&rx[at..at + s.len()]), at, |h, f| {
                    emitted += f.len() + usize::from(h.gso_size)
                });
            }
            co.flush_with(|h, f| emitted += f.len() + usize::from(h.gso_size));
            emitted
        })
    });
    g.finish();
}

criterion_group!(benches, bench_offload);
criterion_main!(benches);
