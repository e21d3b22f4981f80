//! The fuzz targets of `weft-pipeline`, as plain functions: `fuzz_targets/*.rs` call
//! them on what libFuzzer generates, and `switch-core/pipeline/tests/fuzz_corpus.rs`
//! (which includes this file with `#[path]`) calls them on every file of the corpus, so
//! `cargo test` replays what the fuzzer found. Each panics when a property fails.
//!
//! * [`flow_key`]: [`FlowKey::extract`] of arbitrary bytes, with an arbitrary ingress
//!   port and tunnel metadata.
//! * [`commit`]: an arbitrary frame, parsed, walked through a pipeline whose one flow
//!   carries an arbitrary sequence of rewrites ([`RewriteOp`]: `set_field`, masked
//!   `set_field`, `move`, `mod_dl_*`, `mod_nw_*`, `set_tunnel`, `dec_ttl`, `output`),
//!   and each output's state committed into a copy of the frame
//!   ([`weft_pipeline::commit::commit`]).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use weft_flow::{
    Action, Bundle, Field as CField, FieldRange, FieldValue, Flow, FlowMod, MacAddr, Masked, Match,
    PortRef, ValueKind, validate_actions,
};
use weft_pipeline::flow_key::{
    DL_TYPE_NONE, ETH_TYPE_ARP, ETH_TYPE_IPV4, ETH_TYPE_IPV6, ETH_TYPE_QINQ, ETH_TYPE_VLAN,
    FRAG_ANY, FRAG_LATER, Field, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    ParseDrop, TunnelMeta,
};
use weft_pipeline::{DpAction, Pipeline, PortKind, PortMap, Resolved};

/// Tunnel metadata as the fuzzer gives it.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct TunIn {
    /// VNI.
    pub id: u64,
    /// Outer addresses as IPv4 (mapped) rather than IPv6.
    pub v4: bool,
    /// Outer source (the last 4 bytes for IPv4).
    pub src: [u8; 16],
    /// Outer destination.
    pub dst: [u8; 16],
}

impl TunIn {
    fn meta(&self) -> TunnelMeta {
        let a = |b: &[u8; 16]| -> std::net::IpAddr {
            if self.v4 {
                Ipv4Addr::new(b[12], b[13], b[14], b[15]).into()
            } else {
                Ipv6Addr::from(*b).into()
            }
        };
        TunnelMeta::new(self.id, a(&self.src), a(&self.dst))
    }
}

/// Input of [`flow_key`]: the frame is the rest of the bytes.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct FlowKeyInput<'a> {
    /// Ingress port.
    pub in_port: u32,
    /// Tunnel metadata, for a frame from a tunnel port.
    pub tun: Option<TunIn>,
    /// The frame.
    pub frame: &'a [u8],
}

/// Fields that live in the frame (not metadata): what two parses of one frame share.
pub const FRAME_FIELDS: &[Field] = &[
    Field::DlSrc,
    Field::DlDst,
    Field::DlType,
    Field::VlanTci,
    Field::NwProto,
    Field::NwTos,
    Field::NwTtl,
    Field::NwFrag,
    Field::NwSrc,
    Field::NwDst,
    Field::Ipv6Src,
    Field::Ipv6Dst,
    Field::ArpSha,
    Field::ArpTha,
    Field::TpSrc,
    Field::TpDst,
];

/// The flow-key target. Returns the key when the frame parsed.
pub fn flow_key(data: &[u8]) -> Option<FlowKey> {
    let Ok(input) = FlowKeyInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return None;
    };
    check_flow_key(&input)
}

/// The properties of [`FlowKey::extract`] for one input.
pub fn check_flow_key(input: &FlowKeyInput) -> Option<FlowKey> {
    let frame = input.frame;
    let tun = input.tun.as_ref().map_or(TunnelMeta::NONE, TunIn::meta);
    let r = FlowKey::extract(frame, input.in_port, &tun);
    // Refused exactly when the Ethernet header (and its one VLAN tag) does not fit.
    let tagged = frame.len() >= 14
        && matches!(
            u16::from_be_bytes([frame[12], frame[13]]),
            ETH_TYPE_VLAN | ETH_TYPE_QINQ
        );
    let expect_err = if frame.len() < 14 {
        Some(ParseDrop::TooShort)
    } else if tagged && frame.len() < 18 {
        Some(ParseDrop::TruncatedVlan)
    } else {
        None
    };
    assert_eq!(
        r.err(),
        expect_err,
        "refusal of a {}-byte frame",
        frame.len()
    );
    let key = r.ok()?;

    // Deterministic, and extract_into overwrites everything a previous key held.
    let mut dirty = FlowKey::ZERO;
    for f in Field::ALL {
        dirty.set(*f, u128::MAX);
    }
    dirty
        .extract_into(frame, input.in_port, &tun)
        .expect("extract_into agrees with extract");
    assert_eq!(dirty, key, "extract_into over a used key");

    // Metadata comes from the caller only; registers and metadata start at zero.
    assert_eq!(key.in_port(), input.in_port);
    assert_eq!(key.get(Field::TunId), u128::from(tun.tun_id));
    assert_eq!(key.get(Field::TunSrc), tun.tun_src);
    assert_eq!(key.get(Field::TunDst), tun.tun_dst);
    assert_eq!(key.get(Field::Metadata), 0);
    for n in 0..8 {
        assert_eq!(key.reg(n), 0, "reg{n}");
    }
    // The frame fields do not depend on the metadata.
    let plain = FlowKey::extract(frame, 0, &TunnelMeta::NONE).expect("parsed once");
    for f in FRAME_FIELDS {
        assert_eq!(key.get(*f), plain.get(*f), "{f} depends on in_port/tunnel");
    }

    // The parsing policy of the module docs.
    let dl = key.dl_type();
    assert!(dl >= 0x0600 || dl == DL_TYPE_NONE, "dl_type {dl:#x}");
    let tci = key.get(Field::VlanTci);
    assert_eq!(tci != 0, tagged, "vlan_tci {tci:#x}");
    assert!(tci == 0 || tci & 0x1000 != 0);
    for f in Field::ALL {
        assert!(key.get(*f) <= f.max_value(), "{f} wider than the field");
    }
    let ip = dl == ETH_TYPE_IPV4 || dl == ETH_TYPE_IPV6;
    let frag = key.nw_frag();
    assert!(
        frag & !(FRAG_ANY | FRAG_LATER) == 0 && (frag & FRAG_LATER == 0 || frag & FRAG_ANY != 0)
    );
    if !ip {
        assert_eq!(frag, 0);
        assert_eq!((key.nw_tos(), key.nw_ttl()), (0, 0));
        assert_eq!((key.get(Field::Ipv6Src), key.get(Field::Ipv6Dst)), (0, 0));
    }
    if dl != ETH_TYPE_IPV4 && dl != ETH_TYPE_ARP {
        assert_eq!((key.get(Field::NwSrc), key.get(Field::NwDst)), (0, 0));
    }
    if dl != ETH_TYPE_ARP {
        assert_eq!((key.get(Field::ArpSha), key.get(Field::ArpTha)), (0, 0));
    }
    if !ip || frag & FRAG_LATER != 0 {
        assert_eq!(
            (key.tp_src(), key.tp_dst()),
            (0, 0),
            "ports without an L4 header"
        );
    }
    assert_eq!(key.nw_tos() & 3, 0, "nw_tos keeps the ECN bits");
    if ip && matches!(key.nw_proto(), IPPROTO_ICMP | IPPROTO_ICMPV6) {
        assert!(
            key.tp_src() <= 0xff && key.tp_dst() <= 0xff,
            "icmp type/code"
        );
    }
    // Ethernet padding after an IPv4 packet does not change its key.
    if dl == ETH_TYPE_IPV4 && frame_ipv4_complete(frame) {
        let mut padded = frame.to_vec();
        padded.extend_from_slice(&[0xa5; 7]);
        let k2 = FlowKey::extract(&padded, input.in_port, &tun).expect("longer frame parses");
        assert_eq!(k2, key, "padding changed the key");
    }
    Some(key)
}

/// The IPv4 header of `frame` (after one optional tag) is sound and its total length
/// fits the frame, so bytes after it are padding.
fn frame_ipv4_complete(frame: &[u8]) -> bool {
    let l3 = l3_offset(frame);
    let Some(h) = frame.get(l3..l3 + 20) else {
        return false;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([h[2], h[3]]));
    h[0] >> 4 == 4 && ihl >= 20 && tot >= ihl && l3 + tot <= frame.len()
}

fn l3_offset(frame: &[u8]) -> usize {
    match frame.get(12..14) {
        Some(&[a, b]) if matches!(u16::from_be_bytes([a, b]), ETH_TYPE_VLAN | ETH_TYPE_QINQ) => 18,
        _ => 14,
    }
}

// ------------------------------------------------------------------------------ commit

/// One rewrite of the fuzzed flow's action list. Field numbers index the writable
/// (for `Move`'s `src`: readable) fields of `weft_flow::Field::ALL`, modulo their count.
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub enum RewriteOp {
    /// `set_field:VALUE->FIELD` (value cut to the field's width).
    SetField {
        /// Field number.
        field: u8,
        /// Value, big-endian.
        value: [u8; 16],
    },
    /// `set_field:VALUE/MASK->FIELD`.
    SetMasked {
        /// Field number.
        field: u8,
        /// Value, big-endian.
        value: [u8; 16],
        /// Mask, big-endian.
        mask: [u8; 16],
    },
    /// `mod_dl_src`.
    ModDlSrc([u8; 6]),
    /// `mod_dl_dst`.
    ModDlDst([u8; 6]),
    /// `mod_nw_src`.
    ModNwSrc([u8; 4]),
    /// `mod_nw_dst`.
    ModNwDst([u8; 4]),
    /// `mod_nw_ttl`.
    ModNwTtl(u8),
    /// `set_tunnel`.
    SetTunnel(u64),
    /// `dec_ttl`.
    DecTtl,
    /// `move:SRC[..]->DST[..]`.
    Move {
        /// Source field number (readable fields).
        src: u8,
        /// Destination field number (writable fields).
        dst: u8,
        /// First source bit (modulo what fits).
        src_ofs: u8,
        /// First destination bit (modulo what fits).
        dst_ofs: u8,
        /// Width (1 + this modulo the narrower field).
        n_bits: u8,
    },
    /// `output` to a port other than the ingress one: one more state to commit.
    Output,
}

/// Input of [`commit`].
#[derive(Arbitrary, Debug, Clone, PartialEq, Eq)]
pub struct CommitInput<'a> {
    /// Ingress port: one of [`PORTS`] (modulo their count).
    pub in_port: u8,
    /// The frame came from a tunnel (VNI 5001, 198.18.0.1 -> 198.18.0.2).
    pub tunnel: bool,
    /// The rewrites (at most [`MAX_OPS`] are used).
    pub ops: Vec<RewriteOp>,
    /// The frame.
    pub frame: &'a [u8],
}

/// The switch's ports in the fuzzed pipeline.
pub const PORTS: [u32; 4] = [1, 2, 3, 10];

/// Rewrites used per input (the rest is ignored).
pub const MAX_OPS: usize = 24;

/// What one commit input did (for the replay test's checks on named seeds).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The frame parsed.
    pub parsed: bool,
    /// Rewrites that passed validation and went into the flow.
    pub actions: usize,
    /// Outputs whose commit succeeded.
    pub committed: usize,
    /// Outputs whose commit returned an error.
    pub failed: usize,
    /// Committed outputs whose frame bytes changed.
    pub changed: usize,
}

fn base_pipeline() -> &'static Pipeline {
    static BASE: OnceLock<Pipeline> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut ports = PortMap::new();
        for (i, p) in PORTS.iter().enumerate() {
            let kind = if *p >= 10 {
                PortKind::Tunnel
            } else {
                PortKind::Tap
            };
            ports
                .insert(*p, &format!("p{i}"), kind)
                .expect("fuzz port map");
        }
        Pipeline::new(ports)
    })
}

fn writable() -> Vec<CField> {
    CField::ALL
        .iter()
        .copied()
        .filter(|f| f.writable())
        .collect()
}

fn readable() -> Vec<CField> {
    CField::ALL
        .iter()
        .copied()
        .filter(|f| f.kind() != ValueKind::Port)
        .collect()
}

fn ones(n: u32) -> u128 {
    if n >= 128 { u128::MAX } else { (1 << n) - 1 }
}

/// A field value from raw bits, cut to the field's width.
fn value_of(f: CField, bits: u128) -> FieldValue {
    let bits = bits & ones(u32::from(f.bits()));
    match f.kind() {
        ValueKind::Mac => FieldValue::Mac(MacAddr::from_u64(bits as u64)),
        ValueKind::Ipv4 => FieldValue::Ipv4(Ipv4Addr::from(bits as u32)),
        ValueKind::Ipv6 => FieldValue::Ipv6(Ipv6Addr::from(bits)),
        ValueKind::Uint | ValueKind::Port => FieldValue::Uint(bits as u64),
    }
}

impl RewriteOp {
    /// The flow-language action, `None` for [`RewriteOp::Output`].
    fn action(&self, w: &[CField], r: &[CField]) -> Option<Action> {
        let pick = |list: &[CField], i: u8| list[usize::from(i) % list.len()];
        Some(match self {
            RewriteOp::SetField { field, value } => {
                let f = pick(w, *field);
                let v = value_of(f, u128::from_be_bytes(*value));
                Action::SetField {
                    field: f,
                    value: Masked {
                        value: v,
                        mask: value_of(f, u128::MAX),
                    },
                }
            }
            RewriteOp::SetMasked { field, value, mask } => {
                let f = pick(w, *field);
                let m = u128::from_be_bytes(*mask);
                Action::SetField {
                    field: f,
                    value: Masked {
                        value: value_of(f, u128::from_be_bytes(*value) & m),
                        mask: value_of(f, m),
                    },
                }
            }
            RewriteOp::ModDlSrc(m) => Action::ModDlSrc(MacAddr(*m)),
            RewriteOp::ModDlDst(m) => Action::ModDlDst(MacAddr(*m)),
            RewriteOp::ModNwSrc(a) => Action::ModNwSrc(Ipv4Addr::from(*a)),
            RewriteOp::ModNwDst(a) => Action::ModNwDst(Ipv4Addr::from(*a)),
            RewriteOp::ModNwTtl(t) => Action::ModNwTtl(*t),
            RewriteOp::SetTunnel(id) => Action::SetTunnel(*id),
            RewriteOp::DecTtl => Action::DecTtl,
            RewriteOp::Move {
                src,
                dst,
                src_ofs,
                dst_ofs,
                n_bits,
            } => {
                let (s, d) = (pick(r, *src), pick(w, *dst));
                let width = s.bits().min(d.bits());
                let n = 1 + u16::from(*n_bits) % width;
                let so = u16::from(*src_ofs) % (s.bits() - n + 1);
                let dof = u16::from(*dst_ofs) % (d.bits() - n + 1);
                Action::Move {
                    src: FieldRange {
                        field: s,
                        start: so,
                        end: so + n - 1,
                    },
                    dst: FieldRange {
                        field: d,
                        start: dof,
                        end: dof + n - 1,
                    },
                }
            }
            RewriteOp::Output => return None,
        })
    }
}

/// The commit target.
pub fn commit(data: &[u8]) -> CommitOutcome {
    match CommitInput::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => check_commit(&input),
        Err(_) => CommitOutcome::default(),
    }
}

/// The match that meets the prerequisites of every field `key` has: its `dl_type` and,
/// for IP, its `nw_proto`.
fn prereq_match(key: &FlowKey) -> Match {
    let mut m = Match::default();
    let dl = key.dl_type();
    m.set(CField::DlType, Some(Masked::exact(dl).to_value()))
        .expect("dl_type");
    if dl == ETH_TYPE_IPV4 || dl == ETH_TYPE_IPV6 {
        m.set(
            CField::NwProto,
            Some(Masked::exact(key.nw_proto()).to_value()),
        )
        .expect("nw_proto");
    }
    m
}

/// The properties of the rewrite commit for one input.
pub fn check_commit(input: &CommitInput) -> CommitOutcome {
    let mut out = CommitOutcome::default();
    let in_port = PORTS[usize::from(input.in_port) % PORTS.len()];
    let other = if in_port == 2 { 3 } else { 2 };
    let tun = if input.tunnel {
        TunnelMeta::new(
            5001,
            Ipv4Addr::new(198, 18, 0, 1).into(),
            Ipv4Addr::new(198, 18, 0, 2).into(),
        )
    } else {
        TunnelMeta::NONE
    };
    let frame = input.frame;
    let Ok(key) = FlowKey::extract(frame, in_port, &tun) else {
        return out;
    };
    out.parsed = true;

    // The flow: the frame's prerequisites, the rewrites that validate under them, and
    // an output after each `Output` op and at the end.
    let m = prereq_match(&key);
    let (w, r) = (writable(), readable());
    let mut actions = Vec::new();
    for op in input.ops.iter().take(MAX_OPS) {
        match op.action(&w, &r) {
            Some(a) => {
                if validate_actions(std::slice::from_ref(&a), &m, Some(0)).is_ok() {
                    actions.push(a);
                    out.actions += 1;
                }
            }
            None => actions.push(Action::Output(PortRef::Number(other))),
        }
    }
    actions.push(Action::Output(PortRef::Number(other)));
    let flow = Flow {
        priority: 1,
        matches: m,
        actions,
        ..Flow::default()
    };
    assert_eq!(flow.validate(), Ok(()), "{flow:?}");
    let p = match base_pipeline().apply(&Bundle::new(vec![FlowMod::Add { flow: flow.clone() }]), 0)
    {
        Ok((p, _)) => p,
        Err(e) => panic!("a flow that validates does not install: {e}: {flow:?}"),
    };
    let mut res = Resolved::default();
    p.resolve(&key, &mut res);

    let ip4_ok = ipv4_header_ok(frame);
    let l4_before = l4_checksum(frame, &key);
    for a in res.actions() {
        let DpAction::Output { port, .. } = *a else {
            panic!("only outputs were asked for: {a:?}");
        };
        assert_eq!(port, other);
        let state = res.state_of(a);
        let mut f = frame.to_vec();
        let r = weft_pipeline::commit::commit(&mut f, &key, state);
        let again = FlowKey::extract(&f, in_port, &tun).expect("a committed frame still parses");
        match r {
            Ok(()) => {
                out.committed += 1;
                for fl in FRAME_FIELDS {
                    let (mut got, mut want) = (again.get(*fl), state.get(*fl));
                    if *fl == Field::NwTos {
                        // Only the DSCP bits are in the frame (a `move` may write ECN
                        // bits into the key's nw_tos; they are not committed).
                        (got, want) = (got & 0xfc, want & 0xfc);
                    }
                    assert_eq!(
                        got, want,
                        "{fl} after commit: frame {frame:02x?} committed {f:02x?}, \
                         key {key:?} target {state:?}"
                    );
                }
                if f != frame {
                    out.changed += 1;
                }
            }
            Err(field) => {
                out.failed += 1;
                assert_ne!(
                    key.get(field),
                    state.get(field),
                    "commit names {field}, which did not change"
                );
            }
        }
        if *state == key {
            assert_eq!(r, Ok(()));
            assert_eq!(f, frame, "nothing to change, yet the frame changed");
        }
        if ip4_ok {
            assert!(ipv4_header_ok(&f), "IPv4 header checksum broken: {f:02x?}");
        }
        if let Some(before) = l4_before {
            let after = l4_checksum(&f, &again);
            match before {
                L4Sum::Valid => assert_eq!(
                    after,
                    Some(L4Sum::Valid),
                    "L4 checksum broken: {frame:02x?} -> {f:02x?}"
                ),
                L4Sum::None => assert_eq!(after, Some(L4Sum::None), "UDP checksum 0 not kept"),
                L4Sum::Invalid => {}
            }
        }
    }
    out
}

/// Ones' complement sum of `data`, folded (not complemented).
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

/// The IPv4 header (after one optional tag) is sound and its checksum verifies.
fn ipv4_header_ok(f: &[u8]) -> bool {
    let l3 = l3_offset(f);
    if f.get(l3 - 2..l3) != Some(&ETH_TYPE_IPV4.to_be_bytes()[..]) {
        return false;
    }
    let Some(&vihl) = f.get(l3) else {
        return false;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    vihl >> 4 == 4 && ihl >= 20 && f.len() >= l3 + ihl && sum16(&f[l3..l3 + ihl], 0) == 0xffff
}

/// The state of an L4 checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4Sum {
    Valid,
    Invalid,
    /// UDP over IPv4 without a checksum (0).
    None,
}

/// The L4 checksum of an unfragmented TCP, UDP, ICMP or ICMPv6 packet (IPv6 without
/// extension headers) that `key` says `f` holds; `None` when there is none to verify.
fn l4_checksum(f: &[u8], key: &FlowKey) -> Option<L4Sum> {
    let l3 = l3_offset(f);
    let dl = key.dl_type();
    if key.nw_frag() != 0 {
        return None;
    }
    let proto = key.nw_proto();
    let (l4, end, pseudo) = if dl == ETH_TYPE_IPV4 && frame_ipv4_complete(f) {
        let ihl = usize::from(f[l3] & 0x0f) * 4;
        let end = l3 + usize::from(u16::from_be_bytes([f[l3 + 2], f[l3 + 3]]));
        let len = (end - l3 - ihl) as u64;
        let ph = sum16(&f[l3 + 12..l3 + 20], 0) as u64 + u64::from(proto) + len;
        (l3 + ihl, end, ph)
    } else if dl == ETH_TYPE_IPV6 && f.len() >= l3 + 40 && f[l3 + 6] == proto {
        let plen = usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]));
        if l3 + 40 + plen > f.len() {
            return None;
        }
        let ph = sum16(&f[l3 + 8..l3 + 40], 0) as u64 + u64::from(proto) + plen as u64;
        (l3 + 40, l3 + 40 + plen, ph)
    } else {
        return None;
    };
    let v6 = dl == ETH_TYPE_IPV6;
    // The L4 header length flow_key needs before it reads ports / type and code.
    let hdr = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        IPPROTO_ICMP if !v6 => 8,
        IPPROTO_ICMPV6 if v6 => 4,
        _ => return None,
    };
    if l4 + hdr > end {
        return None;
    }
    if proto == IPPROTO_UDP && !v6 && f[l4 + 6] == 0 && f[l4 + 7] == 0 {
        return Some(L4Sum::None);
    }
    let acc = if proto == IPPROTO_ICMP { 0 } else { pseudo };
    Some(if sum16(&f[l4..end], acc) == 0xffff {
        L4Sum::Valid
    } else {
        L4Sum::Invalid
    })
}

// ------------------------------------------------------------------ seed encoding

/// Writes inputs in the byte form `Arbitrary` reads them from, to build seed corpora
/// from hand-made frames (the replay test checks that each seed decodes back to what
/// was encoded).
pub mod encode {
    use super::{CommitInput, FlowKeyInput, RewriteOp, TunIn};

    /// An enum discriminant: `derive(Arbitrary)` picks variant `(u32 * n) >> 32`.
    pub fn variant(out: &mut Vec<u8>, k: u32, n: u32) {
        let v = (u64::from(k) << 32).div_ceil(u64::from(n));
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }

    /// Encodes a [`FlowKeyInput`].
    pub fn flow_key(i: &FlowKeyInput) -> Vec<u8> {
        let mut o = i.in_port.to_le_bytes().to_vec();
        match &i.tun {
            None => o.push(0),
            Some(t) => {
                o.push(1);
                tun(&mut o, t);
            }
        }
        o.extend_from_slice(i.frame);
        o
    }

    fn tun(o: &mut Vec<u8>, t: &TunIn) {
        o.extend_from_slice(&t.id.to_le_bytes());
        o.push(u8::from(t.v4));
        o.extend_from_slice(&t.src);
        o.extend_from_slice(&t.dst);
    }

    /// Encodes a [`CommitInput`].
    pub fn commit(i: &CommitInput) -> Vec<u8> {
        let mut o = vec![i.in_port, u8::from(i.tunnel)];
        for op in &i.ops {
            o.push(1);
            rewrite(&mut o, op);
        }
        o.push(0);
        o.extend_from_slice(i.frame);
        o
    }

    fn rewrite(o: &mut Vec<u8>, op: &RewriteOp) {
        const N: u32 = 11;
        match op {
            RewriteOp::SetField { field, value } => {
                variant(o, 0, N);
                o.push(*field);
                o.extend_from_slice(value);
            }
            RewriteOp::SetMasked { field, value, mask } => {
                variant(o, 1, N);
                o.push(*field);
                o.extend_from_slice(value);
                o.extend_from_slice(mask);
            }
            RewriteOp::ModDlSrc(m) => {
                variant(o, 2, N);
                o.extend_from_slice(m);
            }
            RewriteOp::ModDlDst(m) => {
                variant(o, 3, N);
                o.extend_from_slice(m);
            }
            RewriteOp::ModNwSrc(a) => {
                variant(o, 4, N);
                o.extend_from_slice(a);
            }
            RewriteOp::ModNwDst(a) => {
                variant(o, 5, N);
                o.extend_from_slice(a);
            }
            RewriteOp::ModNwTtl(t) => {
                variant(o, 6, N);
                o.push(*t);
            }
            RewriteOp::SetTunnel(id) => {
                variant(o, 7, N);
                o.extend_from_slice(&id.to_le_bytes());
            }
            RewriteOp::DecTtl => variant(o, 8, N),
            RewriteOp::Move {
                src,
                dst,
                src_ofs,
                dst_ofs,
                n_bits,
            } => {
                variant(o, 9, N);
                o.extend_from_slice(&[*src, *dst, *src_ofs, *dst_ofs, *n_bits]);
            }
            RewriteOp::Output => variant(o, 10, N),
        }
    }
}
