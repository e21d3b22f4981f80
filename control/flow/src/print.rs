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
use super::value::{FieldValue, MacAddr, Masked};
use super::{Action, Bundle, DEFAULT_PRIORITY, FieldRange, Flow, FlowFilter, FlowMod, Match};

/// Formats a field value the way the parser reads it: decimal or hex integers (masks
/// always hex), MACs, IPv4/IPv6 with `/PREFIX` when the mask is a prefix, else `/MASK`.
pub fn format_value(field: Field, v: &Masked<FieldValue>) -> String {
    let mut s = String::new();
    let _ = write_value(&mut s, field, v);
    s
}

/// [`format_value`] into `w`, without allocating (the printer writes dumps, journals
/// and snapshots of a million flows through this).
pub fn write_value(w: &mut impl fmt::Write, field: Field, v: &Masked<FieldValue>) -> fmt::Result {
    let exact = v.mask == super::matching::all_ones(field);
    match (v.value, v.mask) {
        (FieldValue::Uint(n), FieldValue::Uint(m)) => {
            if exact {
                if field.info().hex {
                    write!(w, "{n:#x}")
                } else {
                    write!(w, "{n}")
                }
            } else {
                write!(w, "{n:#x}/{m:#x}")
            }
        }
        (FieldValue::Mac(a), FieldValue::Mac(m)) => {
            write_mac(w, &a.0)?;
            if !exact {
                w.write_char('/')?;
                write_mac(w, &m.0)?;
            }
            Ok(())
        }
        (FieldValue::Ipv4(a), FieldValue::Ipv4(m)) => {
            let bits = u32::from(m);
            write_ipv4(w, a)?;
            if exact {
                Ok(())
            } else if bits.leading_ones() + bits.trailing_zeros() == 32 {
                write!(w, "/{}", bits.leading_ones())
            } else {
                w.write_char('/')?;
                write_ipv4(w, Ipv4Addr::from(bits))
            }
        }
        (FieldValue::Ipv6(a), FieldValue::Ipv6(m)) => {
            let bits = u128::from(m);
            if exact {
                write!(w, "{a}")
            } else if bits.leading_ones() + bits.trailing_zeros() == 128 {
                write!(w, "{a}/{}", bits.leading_ones())
            } else {
                write!(w, "{a}/{}", Ipv6Addr::from(bits))
            }
        }
        // Mismatched kinds cannot come from the parser; print something readable.
        (a, b) => write!(w, "{a:?}/{b:?}"),
    }
}

/// `aa:bb:cc:dd:ee:ff`, as `MacAddr`'s `Display`.
fn write_mac(w: &mut impl fmt::Write, b: &[u8; 6]) -> fmt::Result {
    // Only ASCII is written.
    w.write_str(std::str::from_utf8(&MacAddr(*b).text()).unwrap_or_default())
}

/// Dotted decimal, as `Ipv4Addr`'s `Display`.
fn write_ipv4(w: &mut impl fmt::Write, a: Ipv4Addr) -> fmt::Result {
    let mut s = [0u8; 15];
    let mut n = 0;
    for (i, x) in a.octets().into_iter().enumerate() {
        if i > 0 {
            s[n] = b'.';
            n += 1;
        }
        if x >= 100 {
            s[n] = b'0' + x / 100;
            n += 1;
        }
        if x >= 10 {
            s[n] = b'0' + x / 10 % 10;
            n += 1;
        }
        s[n] = b'0' + x % 10;
        n += 1;
    }
    w.write_str(std::str::from_utf8(&s[..n]).unwrap_or_default())
}

/// Writes tokens separated by commas: [`Sep::next`] before each token.
struct Sep(bool);

impl Sep {
    fn next(&mut self, w: &mut impl fmt::Write) -> fmt::Result {
        if std::mem::replace(&mut self.0, true) {
            w.write_char(',')
        } else {
            Ok(())
        }
    }
}

/// Writes the match's tokens in canonical order, each after `sep`.
fn write_match(w: &mut impl fmt::Write, m: &Match, sep: &mut Sep) -> fmt::Result {
    let dl = m.dl_type.filter(|d| d.is_exact()).map(|d| d.value);
    let proto = m.nw_proto.filter(|p| p.is_exact()).map(|p| p.value);
    let mut skip_dl = false;
    let mut skip_proto = false;
    if let Some(dl) = dl {
        if let Some(s) = SHORTHANDS
            .iter()
            .find(|s| s.1 == dl && s.2.is_some() && s.2 == proto)
        {
            sep.next(w)?;
            w.write_str(s.0)?;
            skip_dl = true;
            skip_proto = true;
        } else if let Some(s) = SHORTHANDS.iter().find(|s| s.1 == dl && s.2.is_none()) {
            debug_assert!(matches!(
                dl,
                ETHERTYPE_IPV4 | ETHERTYPE_IPV6 | ETHERTYPE_ARP
            ));
            sep.next(w)?;
            w.write_str(s.0)?;
            skip_dl = true;
        }
    }
    if let Some(p) = &m.in_port {
        sep.next(w)?;
        write!(w, "in_port={p}")?;
    }
    for f in m.fields() {
        if f == Field::InPort
            || (f == Field::DlType && skip_dl)
            || (f == Field::NwProto && skip_proto)
        {
            continue;
        }
        if let Some(v) = m.get(f) {
            sep.next(w)?;
            w.write_str(f.name())?;
            w.write_char('=')?;
            write_value(w, f, &v)?;
        }
    }
    Ok(())
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_match(f, self, &mut Sep(false))
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
                f.write_str("set_field:")?;
                write_value(f, *field, value)?;
                f.write_str("->")?;
                f.write_str(field.name())
            }
            Action::Move { src, dst } => write!(f, "move:{src}->{dst}"),
            Action::ModDlSrc(m) => {
                f.write_str("mod_dl_src:")?;
                write_mac(f, &m.0)
            }
            Action::ModDlDst(m) => {
                f.write_str("mod_dl_dst:")?;
                write_mac(f, &m.0)
            }
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
            fmt::Display::fmt(a, f)?;
        }
        Ok(())
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = Sep(false);
        if self.cookie != 0 {
            sep.next(f)?;
            write!(f, "cookie={:#x}", self.cookie)?;
        }
        if self.table != 0 {
            sep.next(f)?;
            write!(f, "table={}", self.table)?;
        }
        if self.priority != DEFAULT_PRIORITY {
            sep.next(f)?;
            write!(f, "priority={}", self.priority)?;
        }
        if self.idle_timeout != 0 {
            sep.next(f)?;
            write!(f, "idle_timeout={}", self.idle_timeout)?;
        }
        if self.hard_timeout != 0 {
            sep.next(f)?;
            write!(f, "hard_timeout={}", self.hard_timeout)?;
        }
        write_match(f, &self.matches, &mut sep)?;
        if sep.0 {
            f.write_char(' ')?;
        }
        fmt::Display::fmt(&Actions(&self.actions), f)
    }
}

/// A flow printed without its cookie, table and timeouts (see [`Flow::rule`]).
pub struct Rule<'a>(&'a Flow);

impl Flow {
    /// The flow's text without the settings `ovs-ofctl dump-flows` shows in front of
    /// it (cookie, table, timeouts): `priority=...,MATCH actions=...`, as `Display` of
    /// the same flow with those settings zero.
    pub fn rule(&self) -> Rule<'_> {
        Rule(self)
    }
}

impl fmt::Display for Rule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = Sep(false);
        if self.0.priority != DEFAULT_PRIORITY {
            sep.next(f)?;
            write!(f, "priority={}", self.0.priority)?;
        }
        write_match(f, &self.0.matches, &mut sep)?;
        if sep.0 {
            f.write_char(' ')?;
        }
        fmt::Display::fmt(&Actions(&self.0.actions), f)
    }
}

/// Writes the filter's settings and match; returns whether it wrote anything.
fn write_filter(f: &mut fmt::Formatter<'_>, flt: &FlowFilter) -> Result<bool, fmt::Error> {
    let mut sep = Sep(false);
    if let Some(c) = flt.cookie {
        sep.next(f)?;
        if c.is_exact() {
            write!(f, "cookie={:#x}", c.value)?;
        } else {
            write!(f, "cookie={:#x}/{:#x}", c.value, c.mask)?;
        }
    }
    if let Some(t) = flt.table {
        sep.next(f)?;
        write!(f, "table={t}")?;
    }
    if let Some(p) = flt.priority {
        sep.next(f)?;
        write!(f, "priority={p}")?;
    }
    write_match(f, &flt.matches, &mut sep)?;
    Ok(sep.0)
}

impl fmt::Display for FlowFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_filter(f, self).map(|_| ())
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
                if write_filter(f, filter)? {
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
