//! The packet rewrite (`commit`): IPv4/IPv6, TCP/UDP/ICMP with their checksums, short
//! frames, `dec_ttl`.

use super::*;

fn commit_and_check(frame: &[u8], rewrite: impl Fn(&mut FlowKey), written: &[Field]) -> Vec<u8> {
    let orig = FlowKey::extract(frame, 1, &TunnelMeta::NONE).unwrap();
    let mut target = orig;
    rewrite(&mut target);
    let mut out = frame.to_vec();
    commit(&mut out, &orig, &target).unwrap();
    let got = FlowKey::extract(&out, 1, &TunnelMeta::NONE).unwrap();
    for f in written {
        assert_eq!(got.get(*f), target.get(*f), "{f}");
    }
    assert_eq!(got, target);
    assert!(checksums_ok(&out), "checksums of {out:x?}");
    out
}

#[test]
fn commit_rewrites_ipv4_tcp_udp_icmp_with_checksums() {
    let tcp = ipv4_frame(6, &tcp_hdr(40000, 80));
    assert!(checksums_ok(&tcp));
    commit_and_check(
        &tcp,
        |k| {
            k.set_dl_src([2, 0, 0, 0, 0, 0x77]);
            k.set_dl_dst([2, 0, 0, 0, 0, 0x78]);
            k.set_nw_src(Ipv4Addr::new(10, 1, 2, 3));
            k.set_nw_dst(Ipv4Addr::new(172, 16, 0, 1));
            k.set_nw_ttl(3);
            k.set_nw_tos(0x20);
            k.set_tp_src(1234);
            k.set_tp_dst(8080);
        },
        &[
            Field::DlSrc,
            Field::DlDst,
            Field::NwSrc,
            Field::NwDst,
            Field::NwTtl,
            Field::NwTos,
            Field::TpSrc,
            Field::TpDst,
        ],
    );
    let udp = ipv4_frame(17, &udp_hdr(53, 5353));
    commit_and_check(
        &udp,
        |k| {
            k.set_nw_dst(Ipv4Addr::new(1, 1, 1, 1));
            k.set_tp_dst(53);
        },
        &[Field::NwDst, Field::TpDst],
    );
    // UDP without checksum keeps 0.
    let mut nocsum = udp.clone();
    nocsum[14 + 20 + 6] = 0;
    nocsum[14 + 20 + 7] = 0;
    let out = commit_and_check(
        &nocsum,
        |k| k.set_nw_src(Ipv4Addr::new(9, 9, 9, 9)),
        &[Field::NwSrc],
    );
    assert_eq!(&out[14 + 26..14 + 28], &[0, 0]);
    let icmp = ipv4_frame(1, &[8, 0, 0, 0, 0, 1, 0, 1, 0xaa, 0xbb]);
    commit_and_check(
        &icmp,
        |k| {
            k.set_tp_src(0);
            k.set_nw_src(Ipv4Addr::new(10, 0, 0, 1));
        },
        &[Field::TpSrc, Field::NwSrc],
    );
}

#[test]
fn commit_rewrites_ipv6_with_pseudo_header() {
    let f = ipv6_frame(6, &tcp_hdr(1, 2));
    assert!(checksums_ok(&f));
    commit_and_check(
        &f,
        |k| {
            k.set_ipv6_src("2001:db8::1".parse().unwrap());
            k.set_ipv6_dst("2001:db8::2".parse().unwrap());
            k.set_nw_ttl(9);
            k.set_nw_tos(0x48);
            k.set_tp_dst(443);
        },
        &[
            Field::Ipv6Src,
            Field::Ipv6Dst,
            Field::NwTtl,
            Field::NwTos,
            Field::TpDst,
        ],
    );
    let u = ipv6_frame(17, &udp_hdr(5, 6));
    commit_and_check(
        &u,
        |k| k.set_ipv6_dst("fd00::99".parse().unwrap()),
        &[Field::Ipv6Dst],
    );
}

#[test]
fn commit_never_panics_on_short_frames() {
    let full = ipv4_frame(6, &tcp_hdr(40000, 80));
    let orig = FlowKey::extract(&full, 1, &TunnelMeta::NONE).unwrap();
    let mut target = orig;
    target.set_dl_src([2; 6]);
    target.set_nw_dst(Ipv4Addr::new(1, 2, 3, 4));
    target.set_tp_dst(1);
    target.set_nw_ttl(1);
    for n in 0..full.len() {
        let mut f = full[..n].to_vec();
        let r = commit(&mut f, &orig, &target);
        assert!(r.is_err(), "{n}");
    }
    let arp = arp_request(MAC_A, [1, 2, 3, 4], [5, 6, 7, 8]);
    let orig = FlowKey::extract(&arp, 1, &TunnelMeta::NONE).unwrap();
    let mut target = orig;
    target.set_arp_tha(MAC_B);
    for n in 0..arp.len() {
        let _ = commit(&mut arp[..n].to_vec(), &orig, &target);
    }
}

#[test]
fn dec_ttl_checksum_matches_full_recompute() {
    let p = pipe(&["priority=1 actions=dec_ttl,output:2"]);
    for ttl in [2u8, 64, 128, 255] {
        for tos in [0u8, 0xb8] {
            let mut frame = ipv4_frame(17, &udp_hdr(1, 2));
            frame[14 + 8] = ttl;
            frame[14 + 1] = tos;
            frame[24] = 0;
            frame[25] = 0;
            let c = csum(&frame[14..34]);
            frame[24..26].copy_from_slice(&c.to_be_bytes());
            let key = FlowKey::extract(&frame, 1, &TunnelMeta::NONE).unwrap();
            let r = run(&p, &key);
            let mut out = frame.clone();
            commit(&mut out, &key, r.state(0)).unwrap();
            assert_eq!(out[14 + 8], ttl - 1);
            let mut recomputed = out[14..34].to_vec();
            recomputed[10] = 0;
            recomputed[11] = 0;
            let full = csum(&recomputed);
            assert_eq!(u16::from_be_bytes([out[24], out[25]]), full, "ttl {ttl}");
        }
    }
    // RFC 1624 section 4: a header sum of 0xdd2f, a word 0x5555 becoming 0x3285,
    // gives 0x0000 by equation 3 (not -0 = 0xffff as equation 2 would).
    assert_eq!(csum_update16(0xdd2f, 0x5555, 0x3285), 0x0000);
}
