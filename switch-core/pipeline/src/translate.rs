//! Translation between the flow language (`weft_flow`) and the datapath's forms:
//! a [`Match`] becomes a classifier value/mask pair over [`FlowKey`], a list of
//! [`Action`]s becomes a compact list of [`Op`]s, and both can be turned back into the
//! control types (for dump-flows, trace and expiry reports) without keeping the
//! original `Flow` around.
//!
//! Control fields map onto key fields one to one, except where OVS shares storage:
//! `arp_op` is `nw_proto` (8 bits kept), `arp_spa`/`arp_tpa` are `nw_src`/`nw_dst`,
//! `icmp_type`/`icmp_code` are `tp_src`/`tp_dst`, and the IPv4 `tun_src`/`tun_dst` are
//! the IPv4-mapped form of the 128-bit key fields (the upper 96 bits are matched and
//! written as `::ffff:0:0/96`). A per-flow bitmap of which control fields were given
//! ([`Presence`]) is enough to rebuild the exact `Match` from the value/mask pair.

use std::net::{Ipv4Addr, Ipv6Addr};

use weft_flow::{
    Action, Field as CField, FieldRange, FieldValue, MacAddr, Masked, Match, PortRef, ValueKind,
};

use crate::flow_key::{Field as KField, FlowKey, FlowMask};

use super::error::InstallErrorKind;
use super::ports::PortMap;

/// Which control fields a flow's match names (bit `Field as usize`).
pub type Presence = u64;

/// The upper 96 bits of an IPv4-mapped IPv6 address (`::ffff:0:0/96`).
const V4_MAPPED: u128 = 0xffff_u128 << 32;
const V4_MAPPED_MASK: u128 = !0xffff_ffff_u128;

/// A u128 with the low `n` bits set.
#[inline]
pub(crate) const fn ones(n: u32) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// The key field a control field lives in.
#[inline]
pub(crate) const fn key_field(f: CField) -> KField {
    match f {
        CField::InPort => KField::InPort,
        CField::TunId => KField::TunId,
        CField::TunSrc | CField::TunIpv6Src => KField::TunSrc,
        CField::TunDst | CField::TunIpv6Dst => KField::TunDst,
        CField::Metadata => KField::Metadata,
        CField::Reg0 => KField::Reg0,
        CField::Reg1 => KField::Reg1,
        CField::Reg2 => KField::Reg2,
        CField::Reg3 => KField::Reg3,
        CField::Reg4 => KField::Reg4,
        CField::Reg5 => KField::Reg5,
        CField::Reg6 => KField::Reg6,
        CField::Reg7 => KField::Reg7,
        CField::DlSrc => KField::DlSrc,
        CField::DlDst => KField::DlDst,
        CField::DlType => KField::DlType,
        CField::ArpOp => KField::NwProto,
        CField::ArpSpa => KField::NwSrc,
        CField::ArpTpa => KField::NwDst,
        CField::ArpSha => KField::ArpSha,
        CField::ArpTha => KField::ArpTha,
        CField::NwSrc => KField::NwSrc,
        CField::NwDst => KField::NwDst,
        CField::Ipv6Src => KField::Ipv6Src,
        CField::Ipv6Dst => KField::Ipv6Dst,
        CField::NwProto => KField::NwProto,
        CField::NwTos => KField::NwTos,
        CField::NwTtl => KField::NwTtl,
        CField::TpSrc | CField::IcmpType => KField::TpSrc,
        CField::TpDst | CField::IcmpCode => KField::TpDst,
    }
}

/// True for the 32-bit IPv4 views of the 128-bit tunnel address fields.
#[inline]
const fn is_v4_tunnel(f: CField) -> bool {
    matches!(f, CField::TunSrc | CField::TunDst)
}

/// Reads a control field out of a key, in the control field's bit positions.
#[inline]
pub(crate) fn read_field(key: &FlowKey, f: CField) -> u128 {
    let v = key.get(key_field(f));
    if is_v4_tunnel(f) { v & ones(32) } else { v }
}

/// Writes the bits of `mask` of a control field (control bit positions). Writing an
/// IPv4 tunnel address also writes the IPv4-mapped prefix.
#[inline]
pub(crate) fn write_field(key: &mut FlowKey, f: CField, value: u128, mask: u128) {
    let kf = key_field(f);
    if is_v4_tunnel(f) {
        key.set_masked(kf, value, mask & ones(32));
        key.set_masked(kf, V4_MAPPED, V4_MAPPED_MASK);
    } else {
        key.set_masked(kf, value, mask);
    }
}

/// A control value (and mask) as key bits: (value, mask) in key-field positions.
fn to_key_bits(f: CField, v: Masked<FieldValue>) -> (u128, u128) {
    let (value, mask) = (v.value.to_u128(), v.mask.to_u128());
    if is_v4_tunnel(f) {
        (V4_MAPPED | value, V4_MAPPED_MASK | mask)
    } else {
        (value, mask)
    }
}

/// A value of a control field from its raw bits.
fn field_value(f: CField, bits: u128) -> FieldValue {
    match f.kind() {
        ValueKind::Mac => FieldValue::Mac(MacAddr::from_u64(bits as u64)),
        ValueKind::Ipv4 => FieldValue::Ipv4(Ipv4Addr::from(bits as u32)),
        ValueKind::Ipv6 => FieldValue::Ipv6(Ipv6Addr::from(bits)),
        ValueKind::Uint | ValueKind::Port => FieldValue::Uint(bits as u64),
    }
}

/// Translates a (validated) match into a classifier value and mask, resolving an
/// `in_port` name against `ports`. Also returns the presence bitmap.
pub fn compile_match(
    m: &Match,
    ports: &PortMap,
) -> Result<(FlowKey, FlowMask, Presence), InstallErrorKind> {
    let mut key = FlowKey::ZERO;
    let mut mask = FlowMask::CATCH_ALL;
    let mut present: Presence = 0;
    if let Some(p) = &m.in_port {
        key.set_in_port(ports.resolve(p)?);
        mask.set_exact(KField::InPort);
        present |= 1 << CField::InPort as u32;
    }
    for f in m.fields() {
        if f == CField::InPort {
            continue;
        }
        let Some(v) = m.get(f) else { continue };
        if f == CField::ArpOp && v.value.to_u128() > 0xff {
            return Err(InstallErrorKind::ArpOpTooLarge(v.value.to_u128() as u16));
        }
        let kf = key_field(f);
        if mask.get(kf) != 0 {
            return Err(InstallErrorKind::Conflict(f));
        }
        let (value, mbits) = to_key_bits(f, v);
        // Non-maskable narrow views (icmp_type in tp_src) match the whole key field:
        // the rest of it is zero in every packet that has the view's prerequisite.
        let mbits = if f.maskable() { mbits } else { kf.max_value() };
        key.set_masked(kf, value, mbits);
        mask.set(kf, mbits);
        present |= 1 << f as u32;
    }
    Ok((key, mask, present))
}

/// Rebuilds the control match of a rule from its value, mask and presence bitmap.
/// `in_port` comes back as a port number.
pub(crate) fn rebuild_match(key: &FlowKey, mask: &FlowMask, present: Presence) -> Match {
    let mut m = Match::default();
    for f in CField::ALL {
        if present & (1 << f as u32) == 0 {
            continue;
        }
        if f == CField::InPort {
            m.in_port = Some(PortRef::Number(key.in_port()));
            continue;
        }
        let width = u32::from(f.bits());
        let value = read_field(key, f) & ones(width);
        let mbits = if f.maskable() {
            let kf = key_field(f);
            let raw = mask.get(kf);
            if is_v4_tunnel(f) { raw & ones(32) } else { raw }
        } else {
            ones(width)
        };
        let v = Masked {
            value: field_value(f, value),
            mask: field_value(f, mbits),
        };
        // Cannot fail: the value has the field's kind and width.
        let _ = m.set(f, Some(v));
    }
    m
}

/// One compiled action. 24 bytes: flows keep their actions in this form only.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Op {
    /// Output to a port number (names resolved at install time).
    Output(u32),
    /// Output to the (current) ingress port.
    InPort,
    /// MAC-learning switch.
    Normal,
    /// Every port but the ingress one.
    Flood,
    /// Continue in a later table (always the last op).
    Goto(u8),
    /// Look up again, optionally as if from another port; `None` table = current.
    Resubmit {
        /// Pretended ingress port.
        port: Option<u32>,
        /// Table to look in.
        table: Option<u8>,
    },
    /// Write a whole field (control bit positions).
    Set {
        /// The field.
        field: CField,
        /// The value, as two words (high, low) to keep the op 8-byte aligned.
        value: [u64; 2],
    },
    /// Write the masked bits of a field (rare: boxed to keep `Op` small).
    SetMasked(Box<(CField, u128, u128)>),
    /// Copy `n_bits` bits.
    Move {
        /// Source field.
        src: CField,
        /// First source bit.
        src_ofs: u8,
        /// Destination field.
        dst: CField,
        /// First destination bit.
        dst_ofs: u8,
        /// Width (1..=128).
        n_bits: u8,
    },
    /// Decrement the TTL / hop limit; expiry stops the pipeline.
    DecTtl,
}

#[inline]
pub(crate) fn join(v: [u64; 2]) -> u128 {
    (u128::from(v[0]) << 64) | u128::from(v[1])
}

fn split(v: u128) -> [u64; 2] {
    [(v >> 64) as u64, v as u64]
}

/// Compiles validated actions, resolving port names against `ports`.
pub(crate) fn compile_actions(
    actions: &[Action],
    ports: &PortMap,
) -> Result<Vec<Op>, InstallErrorKind> {
    let mut ops = Vec::with_capacity(actions.len());
    for a in actions {
        let op = match a {
            Action::Output(p) => Op::Output(ports.resolve(p)?),
            Action::InPort => Op::InPort,
            Action::Normal => Op::Normal,
            Action::Flood => Op::Flood,
            Action::GotoTable(t) => Op::Goto(*t),
            Action::Resubmit { port, table } => Op::Resubmit {
                port: port.as_ref().map(|p| ports.resolve(p)).transpose()?,
                table: *table,
            },
            Action::Move { src, dst } => Op::Move {
                src: src.field,
                src_ofs: src.start as u8,
                dst: dst.field,
                dst_ofs: dst.start as u8,
                n_bits: src.bits() as u8,
            },
            Action::DecTtl => Op::DecTtl,
            other => {
                let Some((field, v)) = other.as_set_field() else {
                    continue;
                };
                let (value, mask) = (v.value.to_u128(), v.mask.to_u128());
                if mask == ones(u32::from(field.bits())) {
                    Op::Set {
                        field,
                        value: split(value),
                    }
                } else {
                    Op::SetMasked(Box::new((field, value, mask)))
                }
            }
        };
        ops.push(op);
    }
    Ok(ops)
}

/// The control action an op came from (in canonical form: `mod_dl_src:X` comes back as
/// `set_field:X->eth_src`, ports as numbers).
pub(crate) fn rebuild_action(op: &Op) -> Action {
    match op {
        Op::Output(p) => Action::Output(PortRef::Number(*p)),
        Op::InPort => Action::InPort,
        Op::Normal => Action::Normal,
        Op::Flood => Action::Flood,
        Op::Goto(t) => Action::GotoTable(*t),
        Op::Resubmit { port, table } => Action::Resubmit {
            port: port.map(PortRef::Number),
            table: *table,
        },
        Op::Set { field, value } => Action::SetField {
            field: *field,
            value: Masked {
                value: field_value(*field, join(*value)),
                mask: field_value(*field, ones(u32::from(field.bits()))),
            },
        },
        Op::SetMasked(b) => {
            let (field, value, mask) = **b;
            Action::SetField {
                field,
                value: Masked {
                    value: field_value(field, value),
                    mask: field_value(field, mask),
                },
            }
        }
        Op::Move {
            src,
            src_ofs,
            dst,
            dst_ofs,
            n_bits,
        } => {
            let n = u16::from(*n_bits);
            Action::Move {
                src: FieldRange {
                    field: *src,
                    start: u16::from(*src_ofs),
                    end: u16::from(*src_ofs) + n - 1,
                },
                dst: FieldRange {
                    field: *dst,
                    start: u16::from(*dst_ofs),
                    end: u16::from(*dst_ofs) + n - 1,
                },
            }
        }
        Op::DecTtl => Action::DecTtl,
    }
}

/// The control field an op writes, if any (for the install-time loop check).
pub(crate) fn writes_something(op: &Op) -> bool {
    matches!(
        op,
        Op::Set { .. } | Op::SetMasked(_) | Op::Move { .. } | Op::DecTtl
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_is_small() {
        assert!(
            std::mem::size_of::<Op>() <= 24,
            "{}",
            std::mem::size_of::<Op>()
        );
    }

    #[test]
    fn v4_tunnel_fields_write_the_mapped_form() {
        let mut k = FlowKey::ZERO;
        write_field(&mut k, CField::TunDst, 0xc612_0002, ones(32));
        assert_eq!(
            k.tun_dst(),
            "198.18.0.2".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(read_field(&k, CField::TunDst), 0xc612_0002);
        write_field(&mut k, CField::ArpOp, 2, 0xffff);
        assert_eq!(k.arp_op(), 2);
    }
}
