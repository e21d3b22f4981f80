//! Userspace TSO/GRO (`encap::offload`): hand-built TCP/IPv4 and TCP/IPv6 super-frames,
//! segmented and coalesced back, with every checksum recomputed here from scratch.
use encap::offload::{
    Coalescer, OffloadError, SLOT_LEN, Segmenter, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
    complete_checksum, refresh_partial_checksum, segment_into, tcp_flags,
};
use proptest::prelude::*;

const MAC: [u8; 12] = [2, 0, 0, 0, 0, 0xb, 2, 0, 0, 0, 0, 0xa];
const TS_OPT: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];

/// RFC 1071, the slow way: 16-bit words added with end-around carry.
fn naive_sum(chunks: &[&[u8]]) -> u16 {
    let mut bytes = Vec::new();
    for c in chunks {
        bytes.extend_from_slice(c);
    }
    let mut s: u32 = 0;
    for w in bytes.chunks(2) {
        let v = if w.len() == 2 {
            u16::from_be_bytes([w[0], w[1]])
        } else {
            u16::from(w[0]) << 8
        };
        s += u32::from(v);
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Shape of a test packet.
#[derive(Debug, Clone)]
struct Spec {
    v6: bool,
    ip_opts: Vec<u8>,
    tcp_opts: Vec<u8>,
    flags: u8,
    ttl: u8,
    tos: u8,
    seq: u32,
    ack: u32,
    window: u16,
    id: u16,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            v6: false,
            ip_opts: Vec::new(),
            tcp_opts: TS_OPT.to_vec(),
            flags: tcp_flags::ACK | tcp_flags::PSH,
            ttl: 64,
            tos: 0,
            seq: 0xffff_f000,
            ack: 0x1111_2222,
            window: 502,
            id: 0xfffe,
        }
    }
}

/// Offsets of the IP and TCP headers in frames built by [`build`].
fn l3l4(s: &Spec) -> (usize, usize) {
    let l4 = if s.v6 {
        14 + 40
    } else {
        14 + 20 + s.ip_opts.len()
    };
    (14, l4)
}

/// The TCP pseudo-header as bytes.
fn pseudo_bytes(f: &[u8], s: &Spec, tcp_len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    if s.v6 {
        v.extend_from_slice(&f[14 + 8..14 + 40]);
        v.extend_from_slice(&(tcp_len as u32).to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 6]);
    } else {
        v.extend_from_slice(&f[14 + 12..14 + 20]);
        v.extend_from_slice(&[0, 6]);
        v.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    }
    v
}

/// An Ethernet + IP + TCP frame with `payload`. With `full_csum` the TCP checksum is
/// complete, else it holds the pseudo-header sum (as with NEEDS_CSUM).
fn build(s: &Spec, payload: &[u8], full_csum: bool) -> Vec<u8> {
    let (l3, l4) = l3l4(s);
    let tcp_len = 20 + s.tcp_opts.len() + payload.len();
    let mut f = vec![0u8; l4 + tcp_len];
    f[..12].copy_from_slice(&MAC);
    if s.v6 {
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let w = (6u32 << 28) | (u32::from(s.tos) << 20) | 0x12345;
        f[l3..l3 + 4].copy_from_slice(&w.to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        f[l3 + 6] = 6;
        f[l3 + 7] = s.ttl;
        f[l3 + 8..l3 + 24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        f[l3 + 24..l3 + 40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2]);
    } else {
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ihl = 20 + s.ip_opts.len();
        f[l3] = 0x40 | (ihl / 4) as u8;
        f[l3 + 1] = s.tos;
        f[l3 + 2..l3 + 4].copy_from_slice(&((ihl + tcp_len) as u16).to_be_bytes());
        f[l3 + 4..l3 + 6].copy_from_slice(&s.id.to_be_bytes());
        f[l3 + 6] = 0x40;
        f[l3 + 8] = s.ttl;
        f[l3 + 9] = 6;
        f[l3 + 12..l3 + 16].copy_from_slice(&[10, 0, 1, 1]);
        f[l3 + 16..l3 + 20].copy_from_slice(&[10, 0, 2, 2]);
        f[l3 + 20..l4].copy_from_slice(&s.ip_opts);
        let c = !naive_sum(&[&f[l3..l4]]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
    }
    f[l4..l4 + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[l4 + 2..l4 + 4].copy_from_slice(&5201u16.to_be_bytes());
    f[l4 + 4..l4 + 8].copy_from_slice(&s.seq.to_be_bytes());
    f[l4 + 8..l4 + 12].copy_from_slice(&s.ack.to_be_bytes());
    f[l4 + 12] = (((20 + s.tcp_opts.len()) / 4) as u8) << 4;
    f[l4 + 13] = s.flags;
    f[l4 + 14..l4 + 16].copy_from_slice(&s.window.to_be_bytes());
    f[l4 + 20..l4 + 20 + s.tcp_opts.len()].copy_from_slice(&s.tcp_opts);
    f[l4 + 20 + s.tcp_opts.len()..].copy_from_slice(payload);
    let ph = pseudo_bytes(&f, s, tcp_len);
    let c = if full_csum {
        !naive_sum(&[&ph, &f[l4..]])
    } else {
        naive_sum(&[&ph])
    };
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    f
}

fn gso_hdr(s: &Spec, mss: u16) -> VirtioNetHdr {
    let (_, l4) = l3l4(s);
    let mut gso_type = if s.v6 {
        VirtioNetHdr::GSO_TCPV6
    } else {
        VirtioNetHdr::GSO_TCPV4
    };
    if s.flags & tcp_flags::CWR != 0 {
        gso_type |= VirtioNetHdr::GSO_ECN;
    }
    VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type,
        hdr_len: (l4 + 20 + s.tcp_opts.len()) as u16,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: 16,
    }
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Segments into a Vec of frames.
fn segment(hdr: &VirtioNetHdr, frame: &[u8]) -> Result<Vec<Vec<u8>>, OffloadError> {
    let per = usize::from(hdr.hdr_len) + 64;
    let n = frame.len() / usize::from(hdr.gso_size.max(1)) + 2;
    let mut out = vec![0u8; frame.len() + n * per];
    let mut lens = vec![0usize; n];
    let n = segment_into(hdr, frame, &mut out, &mut lens)?;
    let mut at = 0;
    Ok(lens[..n]
        .iter()
        .map(|&l| {
            let v = out[at..at + l].to_vec();
            at += l;
            v
        })
        .collect())
}

/// Checks every segment independently of the crate and returns the concatenated payload.
fn check_segments(s: &Spec, orig: &[u8], segs: &[Vec<u8>], mss: usize) -> Vec<u8> {
    let (l3, l4) = l3l4(s);
    let hl = l4 + 20 + s.tcp_opts.len();
    let mut data = Vec::new();
    for (i, g) in segs.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == segs.len();
        assert_eq!(g[..l3], orig[..l3], "ethernet header");
        let plen = g.len() - hl;
        if !last {
            assert_eq!(plen, mss, "segment {i} payload");
        } else {
            assert!(plen <= mss);
        }
        if s.v6 {
            assert_eq!(
                u16::from_be_bytes([g[l3 + 4], g[l3 + 5]]) as usize,
                g.len() - l3 - 40
            );
            assert_eq!(g[l3..l3 + 4], orig[l3..l3 + 4]);
            assert_eq!(g[l3 + 6..l4], orig[l3 + 6..l4]);
        } else {
            assert_eq!(
                u16::from_be_bytes([g[l3 + 2], g[l3 + 3]]) as usize,
                g.len() - l3
            );
            assert_eq!(
                u16::from_be_bytes([g[l3 + 4], g[l3 + 5]]),
                s.id.wrapping_add(i as u16),
                "ip id"
            );
            assert_eq!(naive_sum(&[&g[l3..l4]]), 0xffff, "ipv4 header checksum");
            assert_eq!(g[l3 + 20..l4], s.ip_opts[..], "ip options");
        }
        let seq = u32::from_be_bytes(g[l4 + 4..l4 + 8].try_into().unwrap());
        assert_eq!(seq, s.seq.wrapping_add(data.len() as u32), "seq");
        let mut want = s.flags;
        if !last {
            want &= !(tcp_flags::FIN | tcp_flags::PSH);
        }
        if !first {
            want &= !tcp_flags::CWR;
        }
        assert_eq!(g[l4 + 13], want, "flags of segment {i}");
        assert_eq!(g[l4 + 20..hl], s.tcp_opts[..], "tcp options");
        let ph = pseudo_bytes(g, s, g.len() - l4);
        assert_eq!(naive_sum(&[&ph, &g[l4..]]), 0xffff, "tcp checksum of {i}");
        data.extend_from_slice(&g[hl..]);
    }
    data
}

/// Coalesces `frames` with an 8-flow coalescer and returns (header, frame) per emit.
fn coalesce(frames: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    coalesce_n::<8>(frames)
}

fn coalesce_n<const N: usize>(frames: &[Vec<u8>]) -> Vec<(VirtioNetHdr, Vec<u8>)> {
    let mut arena = vec![0u8; N * SLOT_LEN];
    let mut c = Coalescer::<_, N>::new(&mut arena);
    let mut out = Vec::new();
    for f in frames {
        c.push(f, |h, b| out.push((*h, b.to_vec())));
    }
    c.flush(|h, b| out.push((*h, b.to_vec())));
    out
}

#[test]
fn virtio_header_round_trip_and_layout() {
    let h = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_ECN,
        hdr_len: 66,
        gso_size: 1398,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut b = [0u8; 12];
    h.emit(&mut b).unwrap();
    assert_eq!(b[..10], [1, 0x81, 66, 0, 0x76, 0x05, 34, 0, 16, 0]);
    assert_eq!(VirtioNetHdr::parse(&b).unwrap(), h);
    assert_eq!(h.buffer_len(), VIRTIO_NET_HDR_LEN);
    let v = encap::offload::Header::new_checked(&b[..]).unwrap();
    assert_eq!(v.num_buffers(), 0);
    assert_eq!(VirtioNetHdr::parse(&b[..9]), Err(OffloadError::Truncated));
    assert_eq!(h.emit(&mut [0u8; 9]), Err(OffloadError::Truncated));
    b[1] = 2;
    assert_eq!(VirtioNetHdr::parse(&b), Err(OffloadError::BadGsoType));
    b[1] = 1;
    b[4] = 0;
    b[5] = 0;
    assert_eq!(VirtioNetHdr::parse(&b), Err(OffloadError::ZeroGsoSize));
}

#[test]
fn segments_ipv4_super_frame_with_timestamps() {
    let s = Spec::default();
    let pl = payload(62_900);
    let f = build(&s, &pl, false);
    let segs = segment(&gso_hdr(&s, 1398), &f).unwrap();
    assert_eq!(segs.len(), 62_900usize.div_ceil(1398));
    assert_eq!(check_segments(&s, &f, &segs, 1398), pl);
}

#[test]
fn segments_ipv6_super_frame() {
    for opts in [Vec::new(), TS_OPT.to_vec()] {
        let s = Spec {
            v6: true,
            tcp_opts: opts,
            flags: tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN,
            ..Spec::default()
        };
        let pl = payload(20_001);
        let f = build(&s, &pl, false);
        let segs = segment(&gso_hdr(&s, 1378), &f).unwrap();
        assert_eq!(segs.len(), 15);
        assert_eq!(check_segments(&s, &f, &segs, 1378), pl);
    }
}

#[test]
fn ipv4_options_are_copied_into_every_segment() {
    let s = Spec {
        ip_opts: vec![1, 1, 1, 0, 0x94, 4, 0, 0],
        ..Spec::default()
    };
    let pl = payload(5000);
    let f = build(&s, &pl, false);
    let segs = segment(&gso_hdr(&s, 1000), &f).unwrap();
    assert_eq!(segs.len(), 5);
    assert_eq!(check_segments(&s, &f, &segs, 1000), pl);
}

#[test]
fn odd_sizes() {
    let mss = 1398usize;
    // The largest super-frame: IPv4 total length 65535.
    let max = 65535 - 20 - 20 - TS_OPT.len();
    for (n, want) in [
        (0, 1),
        (1, 1),
        (mss - 1, 1),
        (mss, 1),
        (mss + 1, 2),
        (2 * mss, 2),
        (max, max.div_ceil(mss)),
    ] {
        for v6 in [false, true] {
            let s = Spec {
                v6,
                ..Spec::default()
            };
            if v6 && n == max {
                continue;
            }
            let pl = payload(n);
            let f = build(&s, &pl, false);
            let segs = segment(&gso_hdr(&s, mss as u16), &f).unwrap();
            assert_eq!(segs.len(), want, "payload {n}");
            assert_eq!(check_segments(&s, &f, &segs, mss), pl);
        }
    }
    // MSS 1: one segment per byte.
    let s = Spec::default();
    let f = build(&s, &payload(300), false);
    let segs = segment(&gso_hdr(&s, 1), &f).unwrap();
    assert_eq!(segs.len(), 300);
    check_segments(&s, &f, &segs, 1);
}

#[test]
fn fin_psh_last_cwr_first() {
    let all = tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN | tcp_flags::CWR | tcp_flags::ECE;
    let s = Spec {
        flags: all,
        ..Spec::default()
    };
    let f = build(&s, &payload(3000), false);
    let segs = segment(&gso_hdr(&s, 1000), &f).unwrap();
    let l4 = l3l4(&s).1;
    let flags: Vec<u8> = segs.iter().map(|g| g[l4 + 13]).collect();
    assert_eq!(
        flags,
        [
            tcp_flags::ACK | tcp_flags::CWR | tcp_flags::ECE,
            tcp_flags::ACK | tcp_flags::ECE,
            tcp_flags::ACK | tcp_flags::ECE | tcp_flags::PSH | tcp_flags::FIN,
        ]
    );
}

#[test]
fn segmenter_writes_into_caller_slices_and_reports_lengths() {
    let s = Spec::default();
    let f = build(&s, &payload(2500), false);
    let mut seg = Segmenter::new(&gso_hdr(&s, 1000), &f).unwrap();
    assert_eq!(seg.remaining(), 3);
    let hl = l3l4(&s).1 + 32;
    assert_eq!(seg.next_len(), Some(hl + 1000));
    let mut small = [0u8; 100];
    assert_eq!(
        seg.write_next(&mut small),
        Some(Err(OffloadError::BufferTooSmall))
    );
    let mut buf = [0u8; 128 + 1600];
    // Write behind 128 bytes of headroom, as the datapath will.
    assert_eq!(seg.write_next(&mut buf[128..]), Some(Ok(hl + 1000)));
    assert_eq!(seg.write_next(&mut buf[128..]), Some(Ok(hl + 1000)));
    assert_eq!(seg.remaining(), 1);
    assert_eq!(seg.write_next(&mut buf[128..]), Some(Ok(hl + 500)));
    assert_eq!(seg.remaining(), 0);
    assert_eq!(seg.next_len(), None);
    assert_eq!(seg.write_next(&mut buf[128..]), None);
}

#[test]
fn gso_none_with_needs_csum_only_completes_the_checksum() {
    let s = Spec::default();
    let f = build(&s, &payload(777), false);
    let full = build(&s, &payload(777), true);
    let l4 = l3l4(&s).1;
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        csum_start: l4 as u16,
        csum_offset: 16,
        ..VirtioNetHdr::default()
    };
    let segs = segment(&hdr, &f).unwrap();
    assert_eq!(segs, std::slice::from_ref(&full));
    let mut inplace = f.clone();
    complete_checksum(&hdr, &mut inplace).unwrap();
    assert_eq!(inplace, full);
    // Without NEEDS_CSUM the frame passes unchanged, whatever it holds.
    let junk = vec![0xabu8; 61];
    assert_eq!(segment(&VirtioNetHdr::default(), &junk).unwrap(), [junk]);
    let bad = VirtioNetHdr {
        csum_start: f.len() as u16 - 1,
        ..hdr
    };
    assert_eq!(segment(&bad, &f), Err(OffloadError::BadChecksumOffsets));
}

#[test]
fn segmentation_errors() {
    let s = Spec::default();
    let f = build(&s, &payload(3000), false);
    let h = gso_hdr(&s, 1000);
    let e = |hdr: &VirtioNetHdr, f: &[u8]| segment(hdr, f).unwrap_err();
    assert_eq!(
        e(&VirtioNetHdr { gso_size: 0, ..h }, &f),
        OffloadError::ZeroGsoSize
    );
    assert_eq!(
        e(
            &VirtioNetHdr {
                gso_type: VirtioNetHdr::GSO_TCPV6,
                ..h
            },
            &f
        ),
        OffloadError::GsoTypeMismatch
    );
    assert_eq!(
        e(
            &VirtioNetHdr {
                gso_type: VirtioNetHdr::GSO_UDP,
                ..h
            },
            &f
        ),
        OffloadError::UnsupportedGsoType
    );
    // A USO header on a TCP frame.
    assert_eq!(
        e(
            &VirtioNetHdr {
                gso_type: VirtioNetHdr::GSO_UDP_L4,
                ..h
            },
            &f
        ),
        OffloadError::NotTcp
    );
    assert_eq!(
        e(&VirtioNetHdr { gso_type: 9, ..h }, &f),
        OffloadError::BadGsoType
    );
    assert_eq!(
        e(
            &VirtioNetHdr {
                csum_offset: 6,
                ..h
            },
            &f
        ),
        OffloadError::BadChecksumOffsets
    );
    // The frame is shorter than its IP total length.
    assert_eq!(e(&h, &f[..f.len() - 1]), OffloadError::BadIpHeader);
    assert_eq!(e(&h, &f[..20]), OffloadError::Truncated);
    let mut udp = f.clone();
    udp[14 + 9] = 17;
    assert_eq!(e(&h, &udp), OffloadError::NotTcp);
    let mut frag = f.clone();
    frag[14 + 6] = 0x20;
    assert_eq!(e(&h, &frag), OffloadError::Fragment);
    let mut arp = f.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(e(&h, &arp), OffloadError::NotIp);
    let mut doff = f.clone();
    doff[34 + 12] = 0x40;
    assert_eq!(e(&h, &doff), OffloadError::BadTcpHeader);
    let s6 = Spec {
        v6: true,
        ..Spec::default()
    };
    let mut f6 = build(&s6, &payload(3000), false);
    f6[14 + 6] = 0; // hop-by-hop options
    assert_eq!(
        e(&gso_hdr(&s6, 1000), &f6),
        OffloadError::Ipv6ExtensionHeader
    );
    let mut out = vec![0u8; 2000];
    let mut lens = [0usize; 8];
    assert_eq!(
        segment_into(&h, &f, &mut out, &mut lens),
        Err(OffloadError::BufferTooSmall)
    );
    let mut out = vec![0u8; 10_000];
    assert_eq!(
        segment_into(&h, &f, &mut out, &mut lens[..2]),
        Err(OffloadError::BufferTooSmall)
    );
    assert_eq!(OffloadError::NotTcp.to_string(), "not tcp");
}

/// Segments then coalesces, expecting the original super-frame back byte for byte.
fn round_trip(s: &Spec, n: usize, mss: u16) {
    let pl = payload(n);
    let f = build(s, &pl, false);
    let h = gso_hdr(s, mss);
    let segs = segment(&h, &f).unwrap();
    let out = coalesce(&segs);
    if segs.len() == 1 {
        assert_eq!(out, [(VirtioNetHdr::default(), segs[0].clone())]);
        return;
    }
    assert_eq!(out.len(), 1, "one super-frame");
    assert_eq!(out[0].0, h);
    assert_eq!(out[0].1, f);
}

#[test]
fn coalesce_round_trips() {
    for v6 in [false, true] {
        for opts in [Vec::new(), TS_OPT.to_vec()] {
            for flags in [
                tcp_flags::ACK,
                tcp_flags::ACK | tcp_flags::PSH,
                tcp_flags::ACK | tcp_flags::FIN | tcp_flags::CWR,
            ] {
                let s = Spec {
                    v6,
                    tcp_opts: opts.clone(),
                    flags,
                    ..Spec::default()
                };
                for n in [1, 1397, 1398, 1399, 2796, 2797, 30_000] {
                    round_trip(&s, n, 1398);
                }
            }
        }
    }
    // 64 KB: 45 segments of 1398 (the last shorter).
    let s = Spec::default();
    let max = 65535 - 20 - 20 - TS_OPT.len();
    round_trip(&s, max, 1398);
    round_trip(&s, 3000, 1);
}

#[test]
fn coalesce_refuses_gaps_option_flag_and_ttl_changes() {
    let s = Spec {
        flags: tcp_flags::ACK,
        ..Spec::default()
    };
    let pl = payload(5 * 1000);
    let segs = segment(&gso_hdr(&s, 1000), &build(&s, &pl, false)).unwrap();
    let l4 = l3l4(&s).1;
    let refix = |g: &mut Vec<u8>| {
        g[24..26].copy_from_slice(&[0, 0]);
        let c = !naive_sum(&[&g[14..34]]);
        g[24..26].copy_from_slice(&c.to_be_bytes());
        g[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let ph = pseudo_bytes(g, &s, g.len() - l4);
        let c = !naive_sum(&[&ph, &g[l4..]]);
        g[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    };
    let sizes = |o: &[(VirtioNetHdr, Vec<u8>)]| -> Vec<usize> {
        o.iter().map(|(_, f)| f.len() - (l4 + 32)).collect()
    };
    // A gap: segment 2 missing.
    let gap = [
        segs[0].clone(),
        segs[1].clone(),
        segs[3].clone(),
        segs[4].clone(),
    ];
    assert_eq!(sizes(&coalesce(&gap)), [2000, 2000]);
    // A new timestamp from segment 2 on.
    let mut v = segs.clone();
    for g in &mut v[2..] {
        g[l4 + 20 + 7] ^= 1;
        refix(g);
    }
    assert_eq!(sizes(&coalesce(&v)), [2000, 3000]);
    // A different option on segment 2 alone isolates it.
    let mut v = segs.clone();
    v[2][l4 + 20 + 9] ^= 1;
    refix(&mut v[2]);
    assert_eq!(sizes(&coalesce(&v)), [2000, 1000, 2000]);
    // Different flags (ECE) on segment 3.
    let mut v = segs.clone();
    v[3][l4 + 13] |= tcp_flags::ECE;
    refix(&mut v[3]);
    assert_eq!(sizes(&coalesce(&v)), [3000, 1000, 1000]);
    // CWR on segment 3 starts a new super-frame (it may be on the first only).
    let mut v = segs.clone();
    v[3][l4 + 13] |= tcp_flags::CWR;
    refix(&mut v[3]);
    let o = coalesce(&v);
    assert_eq!(sizes(&o), [3000, 2000]);
    assert_eq!(
        o[1].0.gso_type,
        VirtioNetHdr::GSO_TCPV4 | VirtioNetHdr::GSO_ECN
    );
    // PSH in the middle ends the super-frame there.
    let mut v = segs.clone();
    v[1][l4 + 13] |= tcp_flags::PSH;
    refix(&mut v[1]);
    let o = coalesce(&v);
    assert_eq!(sizes(&o), [2000, 3000]);
    assert_eq!(o[0].1[l4 + 13], tcp_flags::ACK | tcp_flags::PSH);
    // Different TTL, TOS, window, ack.
    for (at, what) in [
        (14 + 8, "ttl"),
        (14 + 1, "tos"),
        (l4 + 15, "window"),
        (l4 + 11, "ack"),
    ] {
        let mut v = segs.clone();
        v[2][at] ^= 4;
        refix(&mut v[2]);
        assert_eq!(sizes(&coalesce(&v)), [2000, 1000, 2000], "{what}");
    }
    // A larger segment after a full one, and a short one in the middle.
    let big = segment(&gso_hdr(&s, 2000), &build(&s, &payload(4000), false)).unwrap();
    let mut v = vec![segs[0].clone()];
    let mut b = big[0].clone();
    b[l4 + 4..l4 + 8].copy_from_slice(&s.seq.wrapping_add(1000).to_be_bytes());
    refix(&mut b);
    v.push(b);
    assert_eq!(sizes(&coalesce(&v)), [1000, 2000]);
    // A corrupted segment is passed through, not merged.
    let mut v = segs.clone();
    v[2][l4 + 40] ^= 0xff;
    let o = coalesce(&v);
    assert_eq!(sizes(&o), [2000, 1000, 2000]);
    assert_eq!(o[1].1, v[2]);
}

#[test]
fn coalescer_passes_other_frames_through_in_flow_order() {
    let s = Spec {
        flags: tcp_flags::ACK,
        ..Spec::default()
    };
    let segs = segment(&gso_hdr(&s, 1000), &build(&s, &payload(3000), false)).unwrap();
    let mut syn = build(
        &Spec {
            flags: tcp_flags::SYN,
            ..s.clone()
        },
        &[],
        true,
    );
    syn[0] = 0xff; // another flow (different Ethernet header)
    let arp = vec![0u8; 60];
    let v = vec![
        segs[0].clone(),
        arp.clone(),
        segs[1].clone(),
        syn.clone(),
        segs[2].clone(),
    ];
    let o = coalesce(&v);
    let frames: Vec<&Vec<u8>> = o.iter().map(|(_, f)| f).collect();
    assert_eq!(frames[0], &arp);
    assert_eq!(frames[1], &syn);
    assert_eq!(frames[2].len(), 66 + 3000);
    // A pure ACK of the held flow flushes it first.
    let ack = build(&s, &[], true);
    let v = vec![segs[0].clone(), segs[1].clone(), ack.clone()];
    let o = coalesce(&v);
    assert_eq!(o.len(), 2);
    assert_eq!(o[0].1.len(), 66 + 2000);
    assert_eq!(o[1], (VirtioNetHdr::default(), ack));
}

#[test]
fn coalescer_interleaves_flows_and_evicts_the_oldest() {
    let flows: Vec<Vec<Vec<u8>>> = (0..3u8)
        .map(|k| {
            let s = Spec {
                flags: tcp_flags::ACK,
                ..Spec::default()
            };
            let mut f = build(&s, &payload(2000), false);
            f[0] = k; // distinct Ethernet destination
            segment(&gso_hdr(&s, 1000), &f).unwrap()
        })
        .collect();
    let mut v = Vec::new();
    for i in 0..2 {
        for f in &flows {
            v.push(f[i].clone());
        }
    }
    // Eight slots: each flow comes out whole, in first-seen order, at flush.
    let o = coalesce(&v);
    assert_eq!(o.len(), 3);
    for (k, (h, f)) in o.iter().enumerate() {
        assert_eq!(f[0], k as u8);
        assert_eq!(h.gso_size, 1000);
        assert_eq!(f.len(), 66 + 2000);
    }
    // Two slots: the third flow evicts the first each time.
    let o = coalesce_n::<2>(&v);
    assert_eq!(o.len(), 6);
    assert!(
        o.iter()
            .all(|(h, f)| h.gso_type == 0 && f.len() == 66 + 1000)
    );
    let mut arena = vec![0u8; 100];
    let mut c = Coalescer::<_, 0>::new(&mut arena);
    let mut n = 0;
    c.push(&v[0], |_, _| n += 1);
    c.flush(|_, _| n += 1);
    assert_eq!(n, 1);
}

fn spec_strategy() -> impl Strategy<Value = Spec> {
    (
        any::<bool>(),
        prop_oneof![
            Just(Vec::new()),
            Just(TS_OPT.to_vec()),
            Just(vec![1, 1, 4, 2]),
            Just(vec![
                2, 4, 5, 0x78, 1, 1, 1, 0, 1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8
            ]),
        ],
        prop_oneof![
            Just(tcp_flags::ACK),
            Just(tcp_flags::ACK | tcp_flags::PSH),
            Just(tcp_flags::ACK | tcp_flags::FIN | tcp_flags::PSH),
            Just(tcp_flags::ACK | tcp_flags::CWR | tcp_flags::ECE),
        ],
        any::<u32>(),
        any::<u16>(),
    )
        .prop_map(|(v6, tcp_opts, flags, seq, id)| Spec {
            v6,
            tcp_opts,
            flags,
            seq,
            id,
            ..Spec::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn segment_then_coalesce_is_identity(
        s in spec_strategy(),
        n in 0usize..=65_000,
        mss in prop_oneof![1u16..=64, 500u16..=9000],
    ) {
        let max = 65535 - 60 - s.tcp_opts.len();
        let n = n.min(max);
        // Keep MSS 1 cases small enough to run fast.
        let n = if mss < 64 { n % 3000 } else { n };
        let pl = payload(n);
        let f = build(&s, &pl, false);
        let segs = segment(&gso_hdr(&s, mss), &f).unwrap();
        prop_assert_eq!(check_segments(&s, &f, &segs, usize::from(mss)), pl);
        round_trip(&s, n, mss);
    }

    #[test]
    fn segmenter_never_panics(hdr in proptest::collection::vec(any::<u8>(), 10),
                              mut frame in proptest::collection::vec(any::<u8>(), 0..2000),
                              eth in 0u8..3) {
        // Steer some inputs towards plausible headers so the deep paths run.
        if frame.len() > 14 {
            match eth {
                0 => frame[12..14].copy_from_slice(&[0x08, 0]),
                1 => frame[12..14].copy_from_slice(&[0x86, 0xdd]),
                _ => {}
            }
        }
        if let Ok(h) = VirtioNetHdr::parse(&hdr) {
            let mut out = vec![0u8; 4096];
            if let Ok(mut s) = Segmenter::new(&h, &frame) {
                let mut k = 0;
                while let Some(r) = s.write_next(&mut out) {
                    k += 1;
                    if r.is_err() || k > 5000 { break; }
                }
            }
            let mut f2 = frame.clone();
            let _ = complete_checksum(&h, &mut f2);
        }
    }

    #[test]
    fn coalescer_never_panics(frames in proptest::collection::vec(
        (proptest::collection::vec(any::<u8>(), 0..400), 0u8..3, 0usize..200), 0..24)) {
        let s = Spec { flags: tcp_flags::ACK, ..Spec::default() };
        let base = build(&s, &payload(300), true);
        let mut arena = vec![0u8; 3 * 2048];
        let mut c = Coalescer::<_, 3>::new(&mut arena);
        for (bytes, kind, at) in frames {
            // Random bytes, or a valid segment with random bytes written into it.
            let f = match kind {
                0 => bytes,
                _ => {
                    let mut f = base.clone();
                    for (i, b) in bytes.iter().take(8).enumerate() {
                        let j = (at + i * 13) % f.len();
                        f[j] = *b;
                    }
                    f
                }
            };
            c.push(&f, |h, b| { assert!(b.len() <= 2048 || h.gso_size == 0); });
        }
        c.flush(|_, _| {});
    }
}

/// A UDP super-frame (USO, `GSO_UDP_L4`) as a pod's kernel hands it over: the UDP length
/// and checksum fields hold the whole datagram's values (the checksum only its
/// pseudo-header part).
fn build_udp(v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = MAC.to_vec();
    let udp_len = 8 + payload.len();
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[17, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
        f.extend_from_slice(&[
            0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 19, 1, 2, 198, 19, 2, 2,
        ]);
        let c = !naive_sum(&[&f[14..34]]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }
    f.extend_from_slice(&[0x9c, 0x40, 0x13, 0x88]);
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// USO: a UDP super-frame becomes datagrams of `gso_size` payload, each with its own
/// lengths, IPv4 ID and full checksum, the payload in order.
#[test]
fn segments_udp_super_frames() {
    for v6 in [false, true] {
        for n in [1usize, 1399, 1400, 1401, 4000, 65000] {
            let data = payload(n);
            let f = build_udp(v6, &data);
            let l4 = if v6 { 54 } else { 34 };
            let hdr = VirtioNetHdr {
                flags: VirtioNetHdr::F_NEEDS_CSUM,
                gso_type: VirtioNetHdr::GSO_UDP_L4,
                hdr_len: (l4 + 8) as u16,
                gso_size: 1400,
                csum_start: l4 as u16,
                csum_offset: 6,
            };
            let segs = segment(&hdr, &f).unwrap();
            assert_eq!(segs.len(), n.div_ceil(1400), "v6 {v6} n {n}");
            let mut got = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let udp_len = s.len() - l4;
                assert!(udp_len - 8 <= 1400);
                assert_eq!(&s[..12], &MAC[..]);
                assert_eq!(u16::from_be_bytes([s[l4 + 4], s[l4 + 5]]) as usize, udp_len);
                let mut pseudo = Vec::new();
                if v6 {
                    assert_eq!(u16::from_be_bytes([s[18], s[19]]) as usize, udp_len);
                    pseudo.extend_from_slice(&s[22..54]);
                    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
                    pseudo.extend_from_slice(&[0, 0, 0, 17]);
                } else {
                    assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, 20 + udp_len);
                    assert_eq!(
                        u16::from_be_bytes([s[18], s[19]]),
                        0x1234u16.wrapping_add(i as u16),
                        "IPv4 ID advances per datagram"
                    );
                    assert_eq!(naive_sum(&[&s[14..34]]), 0xffff, "IPv4 header checksum");
                    pseudo.extend_from_slice(&s[26..34]);
                    pseudo.extend_from_slice(&[0, 17]);
                    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
                }
                assert_ne!(u16::from_be_bytes([s[l4 + 6], s[l4 + 7]]), 0);
                assert_eq!(naive_sum(&[&pseudo, &s[l4..]]), 0xffff, "UDP checksum");
                got.extend_from_slice(&s[l4 + 8..]);
            }
            assert_eq!(got, data, "v6 {v6} n {n}");
        }
    }
}

/// A flow that rewrites the addresses of a `NEEDS_CSUM` frame must leave the field holding
/// the new pseudo-header sum: completing it then gives a valid checksum (UDP and TCP),
/// and a port rewrite needs nothing.
#[test]
fn partial_checksum_follows_an_address_rewrite() {
    for udp in [false, true] {
        let mut f = if udp {
            build_udp(false, &payload(300))
        } else {
            build(&Spec::default(), &payload(300), false)
        };
        let hdr = VirtioNetHdr {
            flags: VirtioNetHdr::F_NEEDS_CSUM,
            gso_type: 0,
            hdr_len: 0,
            gso_size: 0,
            csum_start: 34,
            csum_offset: if udp { 6 } else { 16 },
        };
        refresh_partial_checksum(&hdr, &mut f);
        // NAT: new source address and port (IPv4 header checksum fixed as commit does).
        f[26..30].copy_from_slice(&[198, 19, 9, 9]);
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !naive_sum(&[&f[14..34]]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[34..36].copy_from_slice(&[0x77, 0x77]);
        refresh_partial_checksum(&hdr, &mut f);
        complete_checksum(&hdr, &mut f).unwrap();
        let l4_len = f.len() - 34;
        let mut pseudo = f[26..34].to_vec();
        pseudo.extend_from_slice(&[0, if udp { 17 } else { 6 }]);
        pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
        assert_eq!(naive_sum(&[&pseudo, &f[34..]]), 0xffff, "udp {udp}");
    }
}

/// A UDP/IPv6 datagram whose checksum comes out as 0 gets 0xffff (0 means "no checksum",
/// which IPv6 forbids: the receiver would drop it), by both completion paths.
#[test]
fn a_completed_udp_checksum_of_zero_is_sent_as_ffff() {
    let mut f = build_udp(true, &payload(62));
    let hdr = VirtioNetHdr {
        flags: VirtioNetHdr::F_NEEDS_CSUM,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 54,
        csum_offset: 6,
    };
    refresh_partial_checksum(&hdr, &mut f);
    // Choose the last two payload bytes so that everything sums to 0xffff.
    let n = f.len();
    f[n - 2..].copy_from_slice(&[0, 0]);
    let s = naive_sum(&[&f[54..]]);
    let v = 0xffff - s;
    f[n - 2..].copy_from_slice(&v.to_be_bytes());
    assert_eq!(
        naive_sum(&[&f[54..]]),
        0xffff,
        "the crafted datagram sums to 0xffff"
    );
    let g = f.clone();
    complete_checksum(&hdr, &mut f).unwrap();
    assert_eq!(&f[60..62], &[0xff, 0xff]);
    let segs = segment(&hdr, &g).unwrap();
    assert_eq!(&segs[0][60..62], &[0xff, 0xff], "the segmenter's copy too");
    // And it verifies.
    let mut pseudo = f[22..54].to_vec();
    pseudo.extend_from_slice(&((n - 54) as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    assert_eq!(naive_sum(&[&pseudo, &f[54..]]), 0xffff);
}
