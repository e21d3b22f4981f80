//! Replays every file of the fuzz corpora `switch-core/pipeline/fuzz/corpus/{flow_key,
//! commit}/` through the fuzz targets' own functions (`fuzz/src/lib.rs`, included
//! here), so what the fuzzer found stays fixed. Seeds named `valid-*` must parse (and,
//! for `commit`, rewrite the frame without a failed commit), `drop-*` must be refused.
//!
//! `cargo test -p weft-pipeline --test fuzz_corpus -- --ignored` rewrites the seeds.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::{Path, PathBuf};

use targets::{CommitInput, FlowKeyInput, RewriteOp, TunIn, encode};
use weft_flow::Field as CField;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus for {target}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Runs `f` on every corpus file of `target`, naming the file that panics.
fn replay<T>(target: &str, min: usize, f: impl Fn(&[u8]) -> T, check: impl Fn(&str, T)) {
    let all = files(target);
    assert!(all.len() >= min, "{target}: {} corpus files", all.len());
    for (name, data) in &all {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(data)));
        match r {
            Ok(v) => check(name, v),
            Err(_) => panic!("{target}/{name} fails the fuzz target's checks"),
        }
    }
}

#[test]
fn flow_key_corpus() {
    replay("flow_key", 20, targets::flow_key, |name, key| {
        if name.starts_with("valid-") {
            assert!(key.is_some(), "flow_key/{name} did not parse");
        } else if name.starts_with("drop-") {
            assert!(key.is_none(), "flow_key/{name} parsed");
        }
    });
}

#[test]
fn commit_corpus() {
    replay("commit", 20, targets::commit, |name, o| {
        if name.starts_with("valid-") {
            assert!(
                o.parsed && o.actions > 0 && o.committed > 0 && o.changed > 0 && o.failed == 0,
                "commit/{name}: {o:?}"
            );
        } else if name.starts_with("fail-") {
            assert!(o.failed > 0, "commit/{name}: {o:?}");
        }
    });
}

// ------------------------------------------------------------------ seed frames

const MAC_A: [u8; 6] = [0x02, 0x42, 0xc6, 0x13, 0x01, 0x05];
const MAC_B: [u8; 6] = [0x02, 0x42, 0xc6, 0x13, 0x02, 0x07];
const IP_A: [u8; 4] = [198, 19, 1, 5];
const IP_B: [u8; 4] = [198, 19, 2, 7];

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x00, 0x02]);
    a[15] = last;
    a
}

fn csum(data: &[u8], acc: u64) -> u16 {
    !targets::sum16(data, acc)
}

fn eth(ethertype: u16, vlan: Option<(u16, u16)>, l3: &[u8]) -> Vec<u8> {
    let mut f = MAC_B.to_vec();
    f.extend_from_slice(&MAC_A);
    if let Some((tpid, tci)) = vlan {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

fn tcp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&src.to_be_bytes());
    t[2..4].copy_from_slice(&dst.to_be_bytes());
    t[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    t[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x18;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    t.extend_from_slice(payload);
    t
}

fn udp(src: u16, dst: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&src.to_be_bytes());
    u[2..4].copy_from_slice(&dst.to_be_bytes());
    u[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(payload);
    u
}

fn icmp_echo(ty: u8) -> Vec<u8> {
    vec![ty, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g']
}

/// Offset of the checksum in an L4 header, `None` for a protocol without one here.
fn l4_csum_at(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        1 | 58 => Some(2),
        _ => None,
    }
}

/// IPv4 header (+ `opts`) and `l4`, with valid header and L4 checksums.
fn ipv4(proto: u8, frag: u16, opts: &[u8], l4: &[u8]) -> Vec<u8> {
    let ihl = 20 + opts.len();
    let mut p = vec![0u8; ihl];
    p[0] = 0x40 | (ihl / 4) as u8;
    p[1] = 0xb8;
    p[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    p[6..8].copy_from_slice(&frag.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&IP_A);
    p[16..20].copy_from_slice(&IP_B);
    p[20..].copy_from_slice(opts);
    let c = csum(&p, 0);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = l4.to_vec();
    if let Some(at) = l4_csum_at(proto).filter(|at| l4.len() >= at + 2 && frag == 0) {
        let ph = if proto == 1 {
            0
        } else {
            u64::from(targets::sum16(&p[12..20], 0)) + u64::from(proto) + l4.len() as u64
        };
        let c = csum(&l4, ph);
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&l4);
    p
}

/// IPv6 header, `ext` (extension headers, the first one's type in `first`) and `l4`.
fn ipv6(first: u8, proto: u8, ext: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    p[0] = 0x6b;
    p[1] = 0x80;
    p[2] = 0x12;
    p[3] = 0x34;
    p[4..6].copy_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
    p[6] = first;
    p[7] = 64;
    p[8..24].copy_from_slice(&v6(5));
    p[24..40].copy_from_slice(&v6(7));
    let mut l4 = l4.to_vec();
    if let Some(at) = l4_csum_at(proto).filter(|at| l4.len() >= at + 2) {
        let ph = u64::from(targets::sum16(&p[8..40], 0)) + u64::from(proto) + l4.len() as u64;
        let c = csum(&l4, ph);
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(ext);
    p.extend_from_slice(&l4);
    p
}

fn arp(op: u16) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4];
    a.extend_from_slice(&op.to_be_bytes());
    a.extend_from_slice(&MAC_A);
    a.extend_from_slice(&IP_A);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&IP_B);
    a
}

/// The hand-made frames: (name, frame, parses with an L3/L4 a rewrite can change).
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let data = b"weft fuzz seed payload";
    let mut udp0 = ipv4(17, 0, &[], &udp(30001, 53, data));
    udp0[20 + 6..20 + 8].fill(0);
    // Hop-by-hop (8 bytes, PadN) then a fragment header (offset 0, more fragments).
    let hbh = [44, 0, 1, 4, 0, 0, 0, 0];
    let frag_first = [6, 0, 0, 1, 0, 0, 0, 9];
    let mut ext = hbh.to_vec();
    ext.extend_from_slice(&frag_first);
    let mut bad_ihl = ipv4(6, 0, &[], &tcp(1, 2, data));
    bad_ihl[0] = 0x44;
    let mut long_tot = ipv4(17, 0, &[], &udp(1, 2, data));
    long_tot[2..4].copy_from_slice(&9000u16.to_be_bytes());
    let mut long_plen = ipv6(17, 17, &[], &udp(1, 2, data));
    long_plen[4..6].copy_from_slice(&9000u16.to_be_bytes());
    let mut padded = eth(0x0800, None, &ipv4(6, 0, &[], &tcp(40000, 80, b"")));
    padded.extend_from_slice(&[0; 6]);
    vec![
        (
            "ipv4-tcp",
            eth(0x0800, None, &ipv4(6, 0, &[], &tcp(40000, 80, data))),
        ),
        ("ipv4-tcp-padded", padded),
        (
            "ipv4-udp",
            eth(0x0800, None, &ipv4(17, 0, &[], &udp(30001, 53, data))),
        ),
        ("ipv4-udp-nocsum", eth(0x0800, None, &udp0)),
        (
            "ipv4-icmp",
            eth(0x0800, None, &ipv4(1, 0, &[], &icmp_echo(8))),
        ),
        (
            "ipv4-options-tcp",
            eth(
                0x0800,
                None,
                &ipv4(6, 0, &[0x94, 4, 0, 0], &tcp(5, 6, data)),
            ),
        ),
        (
            "ipv4-frag-first",
            eth(0x0800, None, &ipv4(17, 0x2000, &[], &udp(7, 8, data))),
        ),
        (
            "ipv4-frag-later",
            eth(0x0800, None, &ipv4(17, 0x0003, &[], data)),
        ),
        (
            "vlan-ipv4-tcp",
            eth(
                0x0800,
                Some((0x8100, 0x2064)),
                &ipv4(6, 0, &[], &tcp(1, 443, data)),
            ),
        ),
        (
            "qinq-ipv4-udp",
            eth(
                0x0800,
                Some((0x88a8, 0x0005)),
                &ipv4(17, 0, &[], &udp(1, 4789, data)),
            ),
        ),
        (
            "ipv6-tcp",
            eth(0x86dd, None, &ipv6(6, 6, &[], &tcp(40000, 80, data))),
        ),
        (
            "ipv6-udp",
            eth(0x86dd, None, &ipv6(17, 17, &[], &udp(5353, 53, data))),
        ),
        (
            "ipv6-icmp6",
            eth(0x86dd, None, &ipv6(58, 58, &[], &icmp_echo(128))),
        ),
        (
            "ipv6-hbh-frag-udp",
            eth(0x86dd, None, &ipv6(0, 17, &ext, &udp(9, 10, data))),
        ),
        ("arp-request", eth(0x0806, None, &arp(1))),
        ("arp-reply", eth(0x0806, Some((0x8100, 0x0007)), &arp(2))),
        ("llc-802.3", {
            let mut f = eth(0x0026, None, &[0x42, 0x42, 0x03]);
            f.extend_from_slice(&[0; 35]);
            f
        }),
        ("malformed-ipv4-bad-ihl", eth(0x0800, None, &bad_ihl)),
        ("malformed-ipv4-long-total", eth(0x0800, None, &long_tot)),
        ("malformed-ipv6-long-payload", eth(0x86dd, None, &long_plen)),
        (
            "malformed-tcp-truncated",
            eth(0x0800, None, &ipv4(6, 0, &[], &tcp(1, 2, b"")[..12])),
        ),
        (
            "malformed-icmp-short",
            eth(0x0800, None, &ipv4(1, 0, &[], &[8, 0, 0, 0, 0, 1])),
        ),
        (
            "malformed-ipv6-ext-overrun",
            eth(0x86dd, None, &ipv6(60, 17, &[17, 9, 0, 0, 0, 0, 0, 0], &[])),
        ),
        ("malformed-arp-ipv6", {
            let mut a = arp(1);
            a[2..4].copy_from_slice(&0x86ddu16.to_be_bytes());
            eth(0x0806, None, &a)
        }),
    ]
}

fn tunnels() -> [Option<TunIn>; 3] {
    let mut dst = [0u8; 16];
    dst[12..].copy_from_slice(&[198, 18, 0, 2]);
    let mut src = dst;
    src[15] = 1;
    [
        None,
        Some(TunIn {
            id: 5001,
            v4: true,
            src,
            dst,
        }),
        Some(TunIn {
            id: 0xffff_ffff_ffff,
            v4: false,
            src: v6(1),
            dst: v6(2),
        }),
    ]
}

/// Position of `f` in the writable (or, for `Move`'s source, readable) field list.
fn w(f: CField) -> u8 {
    let all: Vec<CField> = CField::ALL
        .iter()
        .copied()
        .filter(|f| f.writable())
        .collect();
    all.iter().position(|x| *x == f).unwrap() as u8
}

fn rd(f: CField) -> u8 {
    let all: Vec<CField> = CField::ALL
        .iter()
        .copied()
        .filter(|f| f.kind() != weft_flow::ValueKind::Port)
        .collect();
    all.iter().position(|x| *x == f).unwrap() as u8
}

fn set(f: CField, v: u128) -> RewriteOp {
    RewriteOp::SetField {
        field: w(f),
        value: v.to_be_bytes(),
    }
}

/// The rewrites each seed frame gets.
fn rewrites(name: &str) -> Vec<RewriteOp> {
    let mac = RewriteOp::ModDlSrc([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x01]);
    let mut v = vec![mac, RewriteOp::ModDlDst([0x02, 0, 0, 0, 0, 0x99])];
    if name.contains("arp") {
        v.extend([
            set(CField::ArpOp, 2),
            RewriteOp::Move {
                src: rd(CField::ArpSha),
                dst: w(CField::ArpTha),
                src_ofs: 0,
                dst_ofs: 0,
                n_bits: 47,
            },
            set(CField::ArpSpa, u128::from(u32::from_be_bytes(IP_B))),
            RewriteOp::Output,
            set(CField::ArpSha, 0xaabb_ccdd_ee01),
        ]);
        return v;
    }
    if name.contains("ipv4") {
        v.extend([
            RewriteOp::ModNwSrc([198, 19, 9, 9]),
            RewriteOp::SetMasked {
                field: w(CField::NwDst),
                value: 0xc613_0000_u128.to_be_bytes(),
                mask: 0xffff_0000_u128.to_be_bytes(),
            },
            set(CField::NwTos, 0x28),
        ]);
    }
    if name.contains("ipv6") {
        v.extend([
            set(CField::Ipv6Src, u128::from_be_bytes(v6(0x55))),
            set(CField::Ipv6Dst, u128::from_be_bytes(v6(0x77))),
            set(CField::NwTos, 0x48),
        ]);
    }
    v.extend([RewriteOp::DecTtl, RewriteOp::Output]);
    if name.contains("tcp") || name.contains("udp") {
        v.extend([
            set(CField::TpDst, 8080),
            set(CField::Reg3, 0x0000_1f90),
            RewriteOp::Move {
                src: rd(CField::Reg3),
                dst: w(CField::TpSrc),
                src_ofs: 0,
                dst_ofs: 0,
                n_bits: 15,
            },
        ]);
    }
    if name.contains("icmp") {
        v.extend([set(CField::IcmpType, 0), set(CField::IcmpCode, 3)]);
    }
    v.extend([RewriteOp::ModNwTtl(9), RewriteOp::SetTunnel(77)]);
    v
}

/// Every seed: (target, file name, bytes), each checked to decode to what was encoded.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, frame) in frames() {
        for (i, tun) in tunnels().into_iter().enumerate() {
            let input = FlowKeyInput {
                in_port: [1, 10, 0xfffffffe][i],
                tun,
                frame: &frame,
            };
            let bytes = encode::flow_key(&input);
            let back: FlowKeyInput =
                arbitrary::Arbitrary::arbitrary_take_rest(arbitrary::Unstructured::new(&bytes))
                    .unwrap();
            assert_eq!(back, input, "flow_key seed {name} does not decode");
            let prefix = if name.starts_with("malformed") {
                ""
            } else {
                "valid-"
            };
            out.push(("flow_key", format!("{prefix}{name}-{i}"), bytes));
        }
        let input = CommitInput {
            in_port: 0,
            tunnel: name.contains("udp"),
            ops: rewrites(name),
            frame: &frame,
        };
        let bytes = encode::commit(&input);
        let back: CommitInput =
            arbitrary::Arbitrary::arbitrary_take_rest(arbitrary::Unstructured::new(&bytes))
                .unwrap();
        assert_eq!(back, input, "commit seed {name} does not decode");
        // Fragments and malformed packets cannot take every rewrite.
        let prefix = if name.starts_with("malformed") || name.contains("frag") {
            ""
        } else {
            "valid-"
        };
        out.push(("commit", format!("{prefix}{name}"), bytes));
    }
    let short = FlowKeyInput {
        in_port: 1,
        tun: None,
        frame: &MAC_A,
    };
    out.push((
        "flow_key",
        "drop-too_short".into(),
        encode::flow_key(&short),
    ));
    let tag = eth(0x0800, Some((0x8100, 1)), &[]);
    let vlan = FlowKeyInput {
        in_port: 1,
        tun: None,
        frame: &tag[..16],
    };
    out.push((
        "flow_key",
        "drop-truncated_vlan".into(),
        encode::flow_key(&vlan),
    ));
    // A TCP rewrite of a later fragment (no L4 header there) must fail, not write.
    let later = eth(0x0800, None, &ipv4(6, 0x0010, &[], b"0123456789abcdefghij"));
    let input = CommitInput {
        in_port: 1,
        tunnel: false,
        ops: vec![set(CField::TpDst, 1)],
        frame: &later,
    };
    out.push((
        "commit",
        "fail-tcp-later-fragment".into(),
        encode::commit(&input),
    ));
    out
}

#[test]
fn seeds_decode_to_what_they_encode_and_pass() {
    let s = seeds();
    assert!(s.len() > 40);
    for (target, name, bytes) in &s {
        let r = std::panic::catch_unwind(|| match *target {
            "flow_key" => format!("{:?}", targets::flow_key(bytes).is_some()),
            _ => format!("{:?}", targets::commit(bytes)),
        });
        assert!(r.is_ok(), "seed {target}/{name} fails the target's checks");
    }
}

#[test]
#[ignore = "writes the seed corpus; run explicitly"]
fn regenerate_seeds() {
    for (target, name, bytes) in seeds() {
        std::fs::create_dir_all(corpus_dir(target)).unwrap();
        std::fs::write(corpus_dir(target).join(name), bytes).unwrap();
    }
}

/// Found by the `commit` target: an ICMP header shorter than the 8 bytes flow_key reads
/// has type and code 0 in the key, and rewriting the code used to write the whole
/// type/code word, turning the echo request (type 8) into type 0 while reporting
/// success. Now the rewrite fails (the datapath drops the packet) and nothing is written.
#[test]
fn icmp_rewrite_of_a_truncated_header_fails_and_writes_nothing() {
    use weft_pipeline::flow_key::{Field, FlowKey, TunnelMeta};
    let frame = eth(0x0800, None, &ipv4(1, 0, &[], &[8, 0, 0, 0, 0, 1]));
    let key = FlowKey::extract(&frame, 1, &TunnelMeta::NONE).unwrap();
    assert_eq!((key.nw_proto(), key.tp_src(), key.tp_dst()), (1, 0, 0));
    let mut target = key;
    target.set(Field::TpDst, 3);
    let mut out = frame.clone();
    let r = weft_pipeline::commit::commit(&mut out, &key, &target);
    assert_eq!(r, Err(Field::TpDst));
    assert_eq!(out, frame, "a failed ICMP rewrite changed the frame");
}
