//! Property tests: arbitrary valid flows print to text that parses back to the same
//! flow, the printed text is a fixed point, and JSON round-trips too.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use weft_flow::{
    Action, Field, FieldRange, FieldValue, Flow, FlowFilter, MacAddr, Masked, Match, PortRef,
    ValueKind, parse_filter, parse_flow,
};

/// The value of `field`'s kind whose low bits are `v` (truncated to the width).
fn value_of(field: Field, v: u128) -> FieldValue {
    let bits = u32::from(field.bits());
    let v = if bits >= 128 {
        v
    } else {
        v & ((1u128 << bits) - 1)
    };
    match field.kind() {
        ValueKind::Mac => FieldValue::Mac(MacAddr::from_u64(v as u64)),
        ValueKind::Ipv4 => FieldValue::Ipv4(Ipv4Addr::from(v as u32)),
        ValueKind::Ipv6 => FieldValue::Ipv6(Ipv6Addr::from(v)),
        ValueKind::Uint | ValueKind::Port => FieldValue::Uint(v as u64),
    }
}

fn ones(field: Field) -> u128 {
    let bits = u32::from(field.bits());
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// A mask for `field`: exact, a prefix, or arbitrary bits, by `kind`.
fn mask_of(field: Field, kind: u8, m: u128) -> u128 {
    let bits = u32::from(field.bits());
    match kind % 3 {
        0 => ones(field),
        1 => {
            let len = (m % u128::from(bits + 1)) as u32;
            ones(field) & !(ones(field).checked_shr(len).unwrap_or(0))
        }
        _ => m & ones(field),
    }
}

fn masked(field: Field, v: u128, m: u128) -> Masked<FieldValue> {
    let mask = value_of(field, m);
    Masked {
        value: value_of(field, v).and(mask).unwrap(),
        mask,
    }
}

const SHORTHANDS: [(Option<u16>, Option<u8>); 11] = [
    (None, None),
    (Some(0x0800), None),
    (Some(0x86dd), None),
    (Some(0x0806), None),
    (Some(0x0800), Some(1)),
    (Some(0x86dd), Some(58)),
    (Some(0x0800), Some(6)),
    (Some(0x0800), Some(17)),
    (Some(0x86dd), Some(6)),
    (Some(0x86dd), Some(17)),
    (Some(0x88cc), None),
];

type Pick = (u8, u8, u128, u128);

#[allow(clippy::too_many_arguments)]
fn build(
    head: (u64, u8, u16, u16, u16),
    shorthand: usize,
    extra_proto: Option<u8>,
    port: Option<PortRef>,
    fields: Vec<Pick>,
    actions: Vec<Pick>,
    goto: Option<u8>,
) -> Flow {
    let (cookie, table, priority, idle_timeout, hard_timeout) = head;
    let mut m = Match {
        in_port: port,
        ..Match::default()
    };
    let (dl, proto) = SHORTHANDS[shorthand];
    m.dl_type = dl.map(Masked::exact);
    m.nw_proto = proto.map(Masked::exact);
    if proto.is_none() && matches!(dl, Some(0x0800 | 0x86dd)) {
        m.nw_proto = extra_proto.map(Masked::exact);
    }
    let candidates: Vec<Field> = Field::ALL
        .into_iter()
        .filter(|f| !matches!(f, Field::InPort | Field::DlType | Field::NwProto))
        .collect();
    for (sel, mk, v, mm) in fields {
        let f = candidates[usize::from(sel) % candidates.len()];
        if !f.prereq().is_met(&m) {
            continue;
        }
        let mut mv = masked(
            f,
            v,
            if f.maskable() {
                mask_of(f, mk, mm)
            } else {
                ones(f)
            },
        );
        if f == Field::NwTos {
            mv.value = mv.value.and(FieldValue::Uint(0xfc)).unwrap();
        }
        if mv.mask.is_zero() {
            continue;
        }
        m.set(f, Some(mv)).unwrap();
    }
    let writable: Vec<Field> = Field::ALL
        .into_iter()
        .filter(|f| f.writable() && f.prereq().is_met(&m))
        .collect();
    let readable: Vec<Field> = Field::ALL
        .into_iter()
        .filter(|f| f.kind() != ValueKind::Port && f.prereq().is_met(&m))
        .collect();
    let mut acts = Vec::new();
    for (kind, sel, v, w) in actions {
        let port = if v % 2 == 0 {
            PortRef::Number((v >> 1) as u32)
        } else {
            PortRef::Name(format!("p{}", (v >> 1) % 1000))
        };
        let a = match kind % 13 {
            0 => Action::Output(port),
            1 => Action::InPort,
            2 => Action::Normal,
            3 => Action::Flood,
            4 => match sel % 3 {
                0 => Action::Resubmit {
                    port: Some(port),
                    table: None,
                },
                1 => Action::Resubmit {
                    port: None,
                    table: Some((w % 254) as u8),
                },
                _ => Action::Resubmit {
                    port: Some(port),
                    table: Some((w % 254) as u8),
                },
            },
            5 => {
                let f = writable[usize::from(sel) % writable.len()];
                let mask = if w % 2 == 0 {
                    ones(f)
                } else {
                    (w >> 1) & ones(f)
                };
                if mask == 0 {
                    continue;
                }
                // An action sets no tun_id bit above the 24 the tunnels carry.
                let v = if f == Field::TunId { v & 0xff_ffff } else { v };
                Action::SetField {
                    field: f,
                    value: masked(f, v, mask),
                }
            }
            6 => {
                let src = readable[usize::from(sel) % readable.len()];
                let dst = writable[(w % writable.len() as u128) as usize];
                let width = 1 + (v % u128::from(src.bits().min(dst.bits()))) as u16;
                let s0 = ((v >> 8) % u128::from(src.bits() - width + 1)) as u16;
                let d0 = ((v >> 16) % u128::from(dst.bits() - width + 1)) as u16;
                Action::Move {
                    src: FieldRange {
                        field: src,
                        start: s0,
                        end: s0 + width - 1,
                    },
                    dst: FieldRange {
                        field: dst,
                        start: d0,
                        end: d0 + width - 1,
                    },
                }
            }
            7 => Action::ModDlSrc(MacAddr::from_u64(v as u64)),
            8 => Action::ModDlDst(MacAddr::from_u64(v as u64)),
            9 if m.is_ipv4() => Action::ModNwSrc(Ipv4Addr::from(v as u32)),
            10 if m.is_ipv4() => Action::ModNwDst(Ipv4Addr::from(v as u32)),
            11 if m.is_ipv4() || m.is_ipv6() => Action::ModNwTtl(v as u8),
            11 => Action::SetTunnel((v & 0xff_ffff) as u64),
            _ => Action::DecTtl,
        };
        acts.push(a);
    }
    if let Some(g) = goto
        && table < 253
    {
        acts.push(Action::GotoTable(table + 1 + g % (253 - table)));
    }
    Flow {
        cookie,
        table,
        priority,
        idle_timeout,
        hard_timeout,
        matches: m,
        actions: acts,
    }
}

fn arb_port() -> impl Strategy<Value = Option<PortRef>> {
    prop_oneof![
        Just(None),
        any::<u32>().prop_map(|n| Some(PortRef::Number(n))),
        "[a-zA-Z_][a-zA-Z0-9_.-]{0,12}".prop_map(|s| Some(PortRef::Name(s))),
    ]
}

fn arb_flow() -> impl Strategy<Value = Flow> {
    (
        (
            any::<u64>(),
            0u8..=253,
            any::<u16>(),
            any::<u16>(),
            any::<u16>(),
        ),
        0usize..SHORTHANDS.len(),
        proptest::option::of(any::<u8>()),
        arb_port(),
        proptest::collection::vec(any::<Pick>(), 0..10),
        proptest::collection::vec(any::<Pick>(), 0..8),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(h, s, p, port, f, a, g)| build(h, s, p, port, f, a, g))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn print_parse_round_trip(f in arb_flow()) {
        prop_assert_eq!(f.validate(), Ok(()), "generator made an invalid flow: {:?}", f);
        let text = f.to_string();
        let back = parse_flow(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&back, &f, "text: {}", text);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn json_round_trip(f in arb_flow()) {
        let j = serde_json::to_string(&f).unwrap();
        let back: Flow = serde_json::from_str(&j).unwrap();
        prop_assert_eq!(back, f);
    }

    #[test]
    fn filter_round_trip(f in arb_flow(), cookie in any::<(u64, u64)>(), prio in proptest::option::of(any::<u16>())) {
        let filter = FlowFilter {
            table: Some(f.table),
            cookie: Some(Masked::new(cookie.0, cookie.1)),
            priority: prio,
            matches: f.matches.clone(),
        };
        let text = filter.to_string();
        let back = parse_filter(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        prop_assert_eq!(&back, &filter, "text: {}", text);
        // A filter made from a flow's own match selects it, strictly too.
        let mut f = f;
        f.cookie = cookie.0;
        f.priority = prio.unwrap_or(32768);
        prop_assert!(back.selects(&f, false));
        prop_assert!(back.selects(&f, true));
    }

    #[test]
    fn parser_never_panics(s in "\\PC{0,80}") {
        weft_flow::parse::check_round_trip(&s);
    }

    #[test]
    fn mutated_flows_never_panic(f in arb_flow(), cut in any::<(usize, usize)>(), junk in "[=,:/ ()\\[\\].>-]{0,3}") {
        // Damage a valid flow's text in one place: the parser must still either reject
        // it or accept something that round-trips.
        let text = f.to_string();
        let mut chars: Vec<char> = text.chars().collect();
        let at = cut.0 % (chars.len() + 1);
        let len = (cut.1 % 4).min(chars.len() - at);
        chars.splice(at..at + len, junk.chars());
        let s: String = chars.into_iter().collect();
        weft_flow::parse::check_round_trip(&s);
    }
}
