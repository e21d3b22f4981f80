//! Committing header rewrites to a frame: the resolved action list says what a packet
//! should look like at an output (a [`FlowKey`]); [`commit`] writes the difference
//! between the key the frame came in with and that target into the frame's bytes.
//!
//! Fields: Ethernet source/destination; ARP opcode, sender/target hardware and protocol
//! addresses; IPv4 source, destination, DSCP and TTL, with the header checksum updated
//! incrementally (RFC 1624: `HC' = ~(~HC + ~m + m')`); IPv6 source, destination, DSCP
//! and hop limit; TCP/UDP ports and ICMP type/code, with the L4 checksum updated for
//! the changed words and, when addresses change, for the pseudo-header (a UDP checksum
//! of 0 — "none", IPv4 only — stays 0). Metadata fields (registers, tunnel fields,
//! `in_port`) are not in the frame and are ignored.
//!
//! The headers are where the parse found them ([`HeaderOffsets`]): the datapath passes
//! the offsets `FlowKey::extract_with_offsets` returned to [`commit_at`], so the frame is
//! not parsed again (no IPv6 extension chain walked twice); [`commit`] finds them itself.
//!
//! Never panics: a frame too short for a header the key says it has leaves that field
//! unwritten, and the first such field is returned as the error.

use crate::flow_key::{
    ETH_TYPE_ARP, ETH_TYPE_IPV4, ETH_TYPE_IPV6, ETH_TYPE_QINQ, ETH_TYPE_VLAN, Field, FlowKey,
    HeaderOffsets, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// Adds `new - old` for one 16-bit word to a checksum, as RFC 1624 eqn. 3.
#[inline]
pub fn csum_update16(csum: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!csum) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// [`csum_update16`] for a 32-bit value (two words).
#[inline]
pub fn csum_update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = csum_update16(csum, (old >> 16) as u16, (new >> 16) as u16);
    csum_update16(c, old as u16, new as u16)
}

/// [`csum_update16`] for a 128-bit value (eight words).
#[inline]
pub fn csum_update128(mut csum: u16, old: u128, new: u128) -> u16 {
    for i in (0..8).rev() {
        csum = csum_update16(csum, (old >> (i * 16)) as u16, (new >> (i * 16)) as u16);
    }
    csum
}

#[inline]
fn rd16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

#[inline]
fn wr(f: &mut [u8], at: usize, bytes: &[u8]) -> bool {
    match f.get_mut(at..at + bytes.len()) {
        Some(dst) => {
            dst.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

fn mac_bytes(v: u128) -> [u8; 6] {
    crate::flow_key::u64_to_mac(v as u64)
}

/// Writes every frame field where `target` differs from `orig` into `frame`. `orig`
/// must be the key the frame was parsed into. Returns the first field that could not
/// be written (the frame is too short or lacks the header), after writing all others.
pub fn commit(frame: &mut [u8], orig: &FlowKey, target: &FlowKey) -> Result<(), Field> {
    let offs = HeaderOffsets::of(frame).unwrap_or_else(|| HeaderOffsets {
        l3: if matches!(rd16(frame, 12), Some(ETH_TYPE_VLAN | ETH_TYPE_QINQ)) {
            18
        } else {
            14
        },
        ..HeaderOffsets::default()
    });
    commit_at(frame, &offs, orig, target)
}

/// [`commit`] for a frame whose headers are at `offs` (what the parse into `orig`
/// returned).
pub fn commit_at(
    frame: &mut [u8],
    offs: &HeaderOffsets,
    orig: &FlowKey,
    target: &FlowKey,
) -> Result<(), Field> {
    let mut first_err: Option<Field> = None;
    let mut fail = |f: Field| {
        first_err.get_or_insert(f);
    };
    let changed = |f: Field| orig.get(f) != target.get(f);

    for (f, at) in [(Field::DlDst, 0), (Field::DlSrc, 6)] {
        if changed(f) && !wr(frame, at, &mac_bytes(target.get(f))) {
            fail(f);
        }
    }
    let l3 = offs.l3 as usize;
    match orig.dl_type() {
        ETH_TYPE_ARP => commit_arp(frame, l3, orig, target, &mut fail),
        ETH_TYPE_IPV4 => commit_ipv4(frame, offs, orig, target, &mut fail),
        ETH_TYPE_IPV6 => commit_ipv6(frame, offs, orig, target, &mut fail),
        _ => {
            for f in [
                Field::NwSrc,
                Field::NwDst,
                Field::NwTtl,
                Field::TpSrc,
                Field::TpDst,
            ] {
                if changed(f) {
                    fail(f);
                }
            }
        }
    }
    match first_err {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

fn commit_arp(
    frame: &mut [u8],
    l3: usize,
    orig: &FlowKey,
    target: &FlowKey,
    fail: &mut impl FnMut(Field),
) {
    let valid = rd16(frame, l3) == Some(1)
        && rd16(frame, l3 + 2) == Some(ETH_TYPE_IPV4)
        && frame.get(l3 + 4..l3 + 6) == Some(&[6, 4][..])
        && frame.len() >= l3 + 28;
    let fields = [
        (Field::NwProto, 6usize, 2usize),
        (Field::ArpSha, 8, 6),
        (Field::NwSrc, 14, 4),
        (Field::ArpTha, 18, 6),
        (Field::NwDst, 24, 4),
    ];
    for (f, off, len) in fields {
        if orig.get(f) == target.get(f) {
            continue;
        }
        let v = target.get(f);
        let ok = valid
            && match len {
                2 => wr(frame, l3 + off, &(v as u16).to_be_bytes()),
                4 => wr(frame, l3 + off, &(v as u32).to_be_bytes()),
                _ => wr(frame, l3 + off, &mac_bytes(v)),
            };
        if !ok {
            fail(f);
        }
    }
}

/// An address change the L4 pseudo-header sees.
#[derive(Clone, Copy)]
enum AddrChange {
    V4(u32, u32),
    V6(u128, u128),
}

/// Where the L4 header is (`at..end` of the frame) and which protocol.
#[derive(Clone, Copy)]
struct L4 {
    at: usize,
    end: usize,
    proto: u8,
}

/// The L4 header the parse found (`None`: a later fragment, a broken IPv6 extension
/// chain, or no valid IP header).
fn l4_of(offs: &HeaderOffsets) -> Option<L4> {
    offs.l4().map(|at| L4 {
        at,
        end: offs.end as usize,
        proto: offs.proto,
    })
}

fn commit_ipv4(
    frame: &mut [u8],
    offs: &HeaderOffsets,
    orig: &FlowKey,
    target: &FlowKey,
    fail: &mut impl FnMut(Field),
) {
    let l3 = offs.l3 as usize;
    let changed = |f: Field| orig.get(f) != target.get(f);
    let hdr_ok = frame.len() >= l3 + 20 && frame[l3] >> 4 == 4 && frame[l3] & 0x0f >= 5;
    let ihl = if hdr_ok {
        usize::from(frame[l3] & 0x0f) * 4
    } else {
        0
    };
    let tot = rd16(frame, l3 + 2).map_or(0, usize::from);
    if !(hdr_ok && tot >= ihl && l3 + tot <= frame.len()) {
        for f in [
            Field::NwSrc,
            Field::NwDst,
            Field::NwTos,
            Field::NwTtl,
            Field::TpSrc,
            Field::TpDst,
        ] {
            if changed(f) {
                fail(f);
            }
        }
        return;
    }
    let mut csum = rd16(frame, l3 + 10).unwrap_or(0);
    if changed(Field::NwTos) {
        let (vihl, old) = (frame[l3], frame[l3 + 1]);
        let new = (target.nw_tos() & 0xfc) | (old & 3);
        csum = csum_update16(
            csum,
            u16::from_be_bytes([vihl, old]),
            u16::from_be_bytes([vihl, new]),
        );
        frame[l3 + 1] = new;
    }
    if changed(Field::NwTtl) {
        let (old, proto) = (frame[l3 + 8], frame[l3 + 9]);
        let new = target.nw_ttl();
        csum = csum_update16(
            csum,
            u16::from_be_bytes([old, proto]),
            u16::from_be_bytes([new, proto]),
        );
        frame[l3 + 8] = new;
    }
    let mut addrs = [None; 2];
    for (i, (f, off)) in [(Field::NwSrc, 12), (Field::NwDst, 16)]
        .into_iter()
        .enumerate()
    {
        if changed(f) {
            let at = l3 + off;
            let old = u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
            let new = target.get(f) as u32;
            csum = csum_update32(csum, old, new);
            frame[at..at + 4].copy_from_slice(&new.to_be_bytes());
            addrs[i] = Some(AddrChange::V4(old, new));
        }
    }
    frame[l3 + 10..l3 + 12].copy_from_slice(&csum.to_be_bytes());
    commit_l4(frame, l4_of(offs), false, orig, target, &addrs, fail);
}

fn commit_ipv6(
    frame: &mut [u8],
    offs: &HeaderOffsets,
    orig: &FlowKey,
    target: &FlowKey,
    fail: &mut impl FnMut(Field),
) {
    let l3 = offs.l3 as usize;
    let changed = |f: Field| orig.get(f) != target.get(f);
    let payload = rd16(frame, l3 + 4).map_or(0, usize::from);
    if !(frame.len() >= l3 + 40 && frame[l3] >> 4 == 6 && l3 + 40 + payload <= frame.len()) {
        for f in [
            Field::Ipv6Src,
            Field::Ipv6Dst,
            Field::NwTos,
            Field::NwTtl,
            Field::TpSrc,
            Field::TpDst,
        ] {
            if changed(f) {
                fail(f);
            }
        }
        return;
    }
    if changed(Field::NwTos) {
        // Traffic class straddles bytes 0 and 1: version(4) tc(8) flow label(20).
        let tc = (frame[l3] << 4) | (frame[l3 + 1] >> 4);
        let new = (target.nw_tos() & 0xfc) | (tc & 3);
        frame[l3] = (frame[l3] & 0xf0) | (new >> 4);
        frame[l3 + 1] = (frame[l3 + 1] & 0x0f) | (new << 4);
    }
    if changed(Field::NwTtl) {
        frame[l3 + 7] = target.nw_ttl();
    }
    let mut addrs = [None; 2];
    for (i, (f, off)) in [(Field::Ipv6Src, 8), (Field::Ipv6Dst, 24)]
        .into_iter()
        .enumerate()
    {
        if changed(f) {
            let at = l3 + off;
            let mut old = [0u8; 16];
            old.copy_from_slice(&frame[at..at + 16]);
            let new = target.get(f);
            frame[at..at + 16].copy_from_slice(&new.to_be_bytes());
            addrs[i] = Some(AddrChange::V6(u128::from_be_bytes(old), new));
        }
    }
    commit_l4(frame, l4_of(offs), true, orig, target, &addrs, fail);
}

/// Writes ports / ICMP type and code and fixes the L4 checksum for them and for the
/// address changes in `addrs` (pseudo-header).
fn commit_l4(
    frame: &mut [u8],
    l4: Option<L4>,
    v6: bool,
    orig: &FlowKey,
    target: &FlowKey,
    addrs: &[Option<AddrChange>; 2],
    fail: &mut impl FnMut(Field),
) {
    let changed = |f: Field| orig.get(f) != target.get(f);
    let ports_changed = changed(Field::TpSrc) || changed(Field::TpDst);
    let any_addr = addrs.iter().any(Option::is_some);
    let Some(L4 { at, end, proto }) = l4.map(|l| L4 {
        end: l.end.min(frame.len()),
        ..l
    }) else {
        for f in [Field::TpSrc, Field::TpDst] {
            if changed(f) {
                fail(f);
            }
        }
        return;
    };
    // (checksum offset, header length, pseudo-header covered, ports are 16 bits)
    let (csum_off, hdr_len, pseudo, wide) = match proto {
        IPPROTO_TCP => (16, 20, true, true),
        IPPROTO_UDP => (6, 8, true, true),
        // ICMP: 8 bytes, as flow_key reads it; a shorter header has no type/code in the
        // key, and writing the word would overwrite a type the flow never saw.
        IPPROTO_ICMP if !v6 => (2, 8, false, false),
        IPPROTO_ICMPV6 if v6 => (2, 4, true, false),
        _ => {
            for f in [Field::TpSrc, Field::TpDst] {
                if changed(f) {
                    fail(f);
                }
            }
            return;
        }
    };
    if at + hdr_len > end {
        for f in [Field::TpSrc, Field::TpDst] {
            if changed(f) {
                fail(f);
            }
        }
        return;
    }
    if !(ports_changed || (pseudo && any_addr)) {
        return;
    }
    let c_at = at + csum_off;
    let mut csum = u16::from_be_bytes([frame[c_at], frame[c_at + 1]]);
    // UDP over IPv4 may carry no checksum (0): it stays 0.
    let update = !(proto == IPPROTO_UDP && !v6 && csum == 0);
    if wide {
        for (f, off) in [(Field::TpSrc, 0), (Field::TpDst, 2)] {
            if changed(f) {
                let old = u16::from_be_bytes([frame[at + off], frame[at + off + 1]]);
                let new = target.get(f) as u16;
                csum = csum_update16(csum, old, new);
                frame[at + off..at + off + 2].copy_from_slice(&new.to_be_bytes());
            }
        }
    } else if ports_changed {
        // ICMP: type (tp_src) and code (tp_dst) share one 16-bit word.
        let old = u16::from_be_bytes([frame[at], frame[at + 1]]);
        let new = u16::from_be_bytes([
            target.get(Field::TpSrc) as u8,
            target.get(Field::TpDst) as u8,
        ]);
        csum = csum_update16(csum, old, new);
        frame[at] = target.get(Field::TpSrc) as u8;
        frame[at + 1] = target.get(Field::TpDst) as u8;
    }
    if pseudo {
        for a in addrs.iter().flatten() {
            csum = match *a {
                AddrChange::V4(o, n) => csum_update32(csum, o, n),
                AddrChange::V6(o, n) => csum_update128(csum, o, n),
            };
        }
    }
    if update {
        if proto == IPPROTO_UDP && csum == 0 {
            csum = 0xffff;
        }
        frame[c_at..c_at + 2].copy_from_slice(&csum.to_be_bytes());
    }
}
