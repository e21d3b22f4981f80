//! The printer of the ovs-ofctl flow text syntax: `Display` for [`Flow`],
//! [`FlowFilter`], [`Match`], [`Action`] and [`FieldRange`].
//!
//! The output is canonical: settings in the order `cookie, table, priority,
//! idle_timeout, hard_timeout` (defaults omitted), then the shorthand (`tcp`, `arp`,
//! ...) standing for `dl_type`/`nw_proto`, then the other fields in registry order,
//! then ` actions=` (`drop` for none). Parsing the output gives back the same value,
//! and printing that gives the same text.

use std::fmt::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr};

use encap::{ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6};

use super::field::Field;
use super::parse::SHORTHANDS;
use super::value::{FieldValue, Masked};
use super::{Action, Bundle, DEFAULT_PRIORITY, FieldRange, Flow, FlowFilter, FlowMod, Match};

/// Formats a field value the way the parser reads it: decimal or hex integers (masks
/// always hex), MACs, IPv4/IPv6 with `/PREFIX` when the mask is a prefix, else `/MASK`.
pub fn format_value(field: Field, v: &Masked<FieldValue>) -> String {
    let exact = v.mask == super::matching::all_ones(field);
    match (v.value, v.mask) {
        (FieldValue::Uint(n), FieldValue::Uint(m)) => {
            if exact {
                if field.info().hex {
                    format!("{n:#x}")
                } else {
                    n.to_string()
                }
            } else {
                format!("{n:#x}/{m:#x}")
            }
        }
        (FieldValue::Mac(a), FieldValue::Mac(m)) => {
            if exact {
                a.to_string()
            } else {
                format!("{a}/{m}")
            }
        }
        (FieldValue::Ipv4(a), FieldValue::Ipv4(m)) => {
            let bits = u32::from(m);
            if exact {
                a.to_string()
            } else if bits.leading_ones() + bits.trailing_zeros() == 32 {
                format!("{a}/{}", bits.leading_ones())
            } else {
                format!("{a}/{}", Ipv4Addr::from(bits))
            }
        }
        (FieldValue::Ipv6(a), FieldValue::Ipv6(m)) => {
            let bits = u128::from(m);
            if exact {
                a.to_string()
            } else if bits.leading_ones() + bits.trailing_zeros() == 128 {
                format!("{a}/{}", bits.leading_ones())
            } else {
                format!("{a}/{}", Ipv6Addr::from(bits))
            }
        }
        // Mismatched kinds cannot come from the parser; print something readable.
        (a, b) => format!("{a:?}/{b:?}"),
    }
}

/// The match's tokens in canonical order (without separators).
fn match_tokens(m: &Match) -> Vec<String> {
    let mut out = Vec::new();
    let dl = m.dl_type.filter(|d| d.is_exact()).map(|d| d.value);
    let proto = m.nw_proto.filter(|p| p.is_exact()).map(|p| p.value);
    let mut skip_dl = false;
    let mut skip_proto = false;
    if let Some(dl) = dl {
        if let Some(s) = SHORTHANDS
            .iter()
            .find(|s| s.1 == dl && s.2.is_some() && s.2 == proto)
        {
            out.push(s.0.to_string());
            skip_dl = true;
            skip_proto = true;
        } else if let Some(s) = SHORTHANDS.iter().find(|s| s.1 == dl && s.2.is_none()) {
            debug_assert!(matches!(
                dl,
                ETHERTYPE_IPV4 | ETHERTYPE_IPV6 | ETHERTYPE_ARP
            ));
            out.push(s.0.to_string());
            skip_dl = true;
        }
    }
    if let Some(p) = &m.in_port {
        out.push(format!("in_port={p}"));
    }
    for f in m.fields() {
        if f == Field::InPort
            || (f == Field::DlType && skip_dl)
            || (f == Field::NwProto && skip_proto)
        {
            continue;
        }
        if let Some(v) = m.get(f) {
            out.push(format!("{}={}", f.name(), format_value(f, &v)));
        }
    }
    out
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&match_tokens(self).join(","))
    }
}

impl fmt::Display for FieldRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.field.nxm_or_name();
        if self.is_whole() {
            write!(f, "{name}[]")
        } else if self.start == self.end {
            write!(f, "{name}[{}]", self.start)
        } else {
            write!(f, "{name}[{}..{}]", self.start, self.end)
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output(p) => write!(f, "output:{p}"),
            Action::InPort => f.write_str("in_port"),
            Action::Normal => f.write_str("normal"),
            Action::Flood => f.write_str("flood"),
            Action::GotoTable(t) => write!(f, "goto_table:{t}"),
            Action::Resubmit { port, table } => match (port, table) {
                (Some(p), None) => write!(f, "resubmit:{p}"),
                (p, t) => {
                    f.write_str("resubmit(")?;
                    if let Some(p) = p {
                        write!(f, "{p}")?;
                    }
                    f.write_char(',')?;
                    if let Some(t) = t {
                        write!(f, "{t}")?;
                    }
                    f.write_char(')')
                }
            },
            Action::SetField { field, value } => {
                write!(
                    f,
                    "set_field:{}->{}",
                    format_value(*field, value),
                    field.name()
                )
            }
            Action::Move { src, dst } => write!(f, "move:{src}->{dst}"),
            Action::ModDlSrc(m) => write!(f, "mod_dl_src:{m}"),
            Action::ModDlDst(m) => write!(f, "mod_dl_dst:{m}"),
            Action::ModNwSrc(a) => write!(f, "mod_nw_src:{a}"),
            Action::ModNwDst(a) => write!(f, "mod_nw_dst:{a}"),
            Action::ModNwTtl(t) => write!(f, "mod_nw_ttl:{t}"),
            Action::SetTunnel(id) if *id <= u64::from(u32::MAX) => write!(f, "set_tunnel:{id:#x}"),
            Action::SetTunnel(id) => write!(f, "set_tunnel64:{id:#x}"),
            Action::DecTtl => f.write_str("dec_ttl"),
        }
    }
}

/// Writes `actions=...` (`drop` for the empty list).
struct Actions<'a>(&'a [Action]);

impl fmt::Display for Actions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("actions=")?;
        if self.0.is_empty() {
            return f.write_str("drop");
        }
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

fn write_head(f: &mut fmt::Formatter<'_>, parts: &[String]) -> fmt::Result {
    f.write_str(&parts.join(","))
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.cookie != 0 {
            parts.push(format!("cookie={:#x}", self.cookie));
        }
        if self.table != 0 {
            parts.push(format!("table={}", self.table));
        }
        if self.priority != DEFAULT_PRIORITY {
            parts.push(format!("priority={}", self.priority));
        }
        if self.idle_timeout != 0 {
            parts.push(format!("idle_timeout={}", self.idle_timeout));
        }
        if self.hard_timeout != 0 {
            parts.push(format!("hard_timeout={}", self.hard_timeout));
        }
        parts.extend(match_tokens(&self.matches));
        write_head(f, &parts)?;
        if !parts.is_empty() {
            f.write_char(' ')?;
        }
        write!(f, "{}", Actions(&self.actions))
    }
}

fn filter_parts(flt: &FlowFilter) -> Vec<String> {
    let mut parts = Vec::new();
    if let Some(c) = flt.cookie {
        if c.is_exact() {
            parts.push(format!("cookie={:#x}", c.value));
        } else {
            parts.push(format!("cookie={:#x}/{:#x}", c.value, c.mask));
        }
    }
    if let Some(t) = flt.table {
        parts.push(format!("table={t}"));
    }
    if let Some(p) = flt.priority {
        parts.push(format!("priority={p}"));
    }
    parts.extend(match_tokens(&flt.matches));
    parts
}

impl fmt::Display for FlowFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_head(f, &filter_parts(self))
    }
}

impl fmt::Display for FlowMod {
    /// The text form of the change as its `weftctl` command takes it (without the
    /// command name): a flow for add, a filter plus ` actions=` for modify, a filter for
    /// delete.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowMod::Add { flow } => write!(f, "{flow}"),
            FlowMod::Modify { filter, actions } | FlowMod::ModifyStrict { filter, actions } => {
                let parts = filter_parts(filter);
                write_head(f, &parts)?;
                if !parts.is_empty() {
                    f.write_char(' ')?;
                }
                write!(f, "{}", Actions(actions))
            }
            FlowMod::Delete { filter } | FlowMod::DeleteStrict { filter } => {
                write!(f, "{filter}")
            }
        }
    }
}

impl fmt::Display for Bundle {
    /// One change per line, each prefixed with its command (`add`, `modify`,
    /// `modify_strict`, `delete`, `delete_strict`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            let cmd = match c {
                FlowMod::Add { .. } => "add",
                FlowMod::Modify { .. } => "modify",
                FlowMod::ModifyStrict { .. } => "modify_strict",
                FlowMod::Delete { .. } => "delete",
                FlowMod::DeleteStrict { .. } => "delete_strict",
            };
            writeln!(f, "{cmd} {c}")?;
        }
        Ok(())
    }
}
