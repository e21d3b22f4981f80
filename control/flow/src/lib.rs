//! `weft-flow`, Weft's flow language: a subset of `ovs-ofctl`'s flow syntax, same
//! spelling, and the descriptions of ports ([`port::PortSpec`]).
//!
//! Of Weft it depends only on `encap`, for the EtherTypes and IP protocol numbers that
//! `dl_type` and `nw_proto` name (defined there once). `weft-pipeline` executes the flows it
//! describes, `weft-proto` carries them (as JSON) over the control socket, and `weftd`
//! and `weftctl` read them from files and command lines. No I/O: text and values only.
//!
//! A [`Flow`] is a table number, a priority, a cookie, timeouts, a [`Match`] and a list
//! of [`Action`]s. A [`FlowMod`] is one change to the flow tables (add, modify, delete,
//! strict or not, like OpenFlow's flow_mod commands) and a [`Bundle`] is a list of
//! changes that the switch validates as a whole and publishes as one new pipeline
//! version. These types travel as JSON over the control socket; [`parse`] and the
//! `Display` impls in [`print`](mod@print) are the text form that `weftctl` reads and writes.
//!
//! Every field a flow can name is described once in the [field registry](field):
//! its spelling, NXM name, width, whether it takes a mask and what it requires of the
//! rest of the match. The parser, the printer and the datapath all read that table.
//!
//! Invariants: a `Flow` that came out of the parser, or that passed [`Flow::validate`],
//! has a table in 0..=253, a canonical [`Match`] (see there) whose prerequisites are met,
//! and actions whose fields' prerequisites are met by the match, with `goto_table` last.

#![warn(missing_docs)]

pub mod action;
pub mod error;
pub mod field;
pub mod matching;
pub mod parse;
pub mod port;
pub mod print;
pub mod value;

pub use action::{Action, FieldRange};
pub use error::{
    BundleError, EXCERPT_CHARS, FlowError, ParseError, ParseErrorKind, excerpt, line_at, one_line,
};
pub use field::{Field, FieldInfo, Prereq, ValueKind};
pub use matching::Match;

pub use parse::{
    FlowModCommand, parse_actions, parse_bundle_file, parse_filter, parse_flow, parse_flow_mod,
    parse_flows_file,
};
pub use value::{FieldType, FieldValue, MacAddr, Masked, PortRef};

use serde::{Deserialize, Serialize};

/// The highest table number.
pub const MAX_TABLE: u8 = 253;
/// The largest tunnel ID an action may set: VXLAN and Geneve carry a 24-bit VNI.
pub const MAX_TUN_ID: u64 = 0x00ff_ffff;
/// The priority of a flow that does not give one (as in OVS).
pub const DEFAULT_PRIORITY: u16 = 32768;

/// A flow: a rule in one table of the pipeline.
///
/// The OVS identity of a flow is (table, priority, match): adding a flow with the same
/// identity as an installed one replaces it (see [`Flow::same_identity`]).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Flow {
    /// Opaque 64-bit tag chosen by the controller; selects flows for delete and dump.
    pub cookie: u64,
    /// Table 0..=253; processing starts in table 0.
    pub table: u8,
    /// Higher wins among matching flows of a table; default 32768.
    pub priority: u16,
    /// Seconds without a matching packet after which the flow is removed; 0 = never.
    pub idle_timeout: u16,
    /// Seconds after installation after which the flow is removed; 0 = never.
    pub hard_timeout: u16,
    /// What the flow matches.
    #[serde(rename = "match")]
    pub matches: Match,
    /// What it does; empty = drop.
    pub actions: Vec<Action>,
}

impl Default for Flow {
    fn default() -> Self {
        Flow {
            cookie: 0,
            table: 0,
            priority: DEFAULT_PRIORITY,
            idle_timeout: 0,
            hard_timeout: 0,
            matches: Match::default(),
            actions: Vec::new(),
        }
    }
}

impl Flow {
    /// True when `self` and `other` have the same table, priority and match, i.e. are
    /// the same flow for OVS (an add of one replaces the other).
    pub fn same_identity(&self, other: &Flow) -> bool {
        self.table == other.table
            && self.priority == other.priority
            && self.matches == other.matches
    }

    /// Checks every invariant the parser guarantees (see the module docs). The control
    /// server calls this on flows that arrived as JSON.
    pub fn validate(&self) -> Result<(), FlowError> {
        if self.table > MAX_TABLE {
            return Err(FlowError::TableOutOfRange(self.table));
        }
        self.matches.validate()?;
        validate_actions(&self.actions, &self.matches, Some(self.table))
    }
}

/// Checks a list of actions against the match it runs under: prerequisites of the
/// fields it touches, writability, `move` widths and ranges, `set_field` value kinds,
/// port names, and `goto_table` last and forward (when the table is known).
pub fn validate_actions(actions: &[Action], m: &Match, table: Option<u8>) -> Result<(), FlowError> {
    check_actions(actions, Some(m), table)
}

/// [`validate_actions`], without the prerequisite checks when `m` is `None`.
pub(crate) fn check_actions(
    actions: &[Action],
    m: Option<&Match>,
    table: Option<u8>,
) -> Result<(), FlowError> {
    for (i, a) in actions.iter().enumerate() {
        if let Some(m) = m {
            for f in a.fields() {
                if !f.prereq().is_met(m) {
                    return Err(FlowError::MissingPrereq(f));
                }
            }
        }
        match a {
            Action::Output(p) | Action::Resubmit { port: Some(p), .. } => check_port(p)?,
            _ => {}
        }
        // A tunnel ID the tunnels cannot carry (set_tunnel, set_field, load, JSON).
        if let Some((Field::TunId, v)) = a.as_set_field() {
            let bits = v.value.to_u128() & v.mask.to_u128();
            if bits > u128::from(MAX_TUN_ID) {
                return Err(FlowError::TunnelIdTooWide(bits as u64));
            }
        }
        match a {
            Action::GotoTable(t) => {
                if i + 1 != actions.len() {
                    return Err(FlowError::GotoNotLast);
                }
                if *t > MAX_TABLE {
                    return Err(FlowError::TableOutOfRange(*t));
                }
                if let Some(from) = table
                    && *t <= from
                {
                    return Err(FlowError::GotoBackwards { from, to: *t });
                }
            }
            Action::Resubmit { port, table: t } => {
                if port.is_none() && t.is_none() {
                    return Err(FlowError::EmptyResubmit);
                }
                if let Some(t) = t
                    && *t > MAX_TABLE
                {
                    return Err(FlowError::TableOutOfRange(*t));
                }
            }
            Action::SetField { field, value } => {
                if !field.writable() {
                    return Err(FlowError::NotWritable(*field));
                }
                let mut probe = Match::default();
                probe.set(*field, Some(*value))?;
                if probe.get(*field) != Some(*value) {
                    return Err(FlowError::ValueOutsideMask(*field));
                }
            }
            Action::Move { src, dst } => {
                if src.field.kind() == ValueKind::Port {
                    return Err(FlowError::NotReadable(src.field));
                }
                if !dst.field.writable() {
                    return Err(FlowError::NotWritable(dst.field));
                }
                for r in [src, dst] {
                    if !r.is_valid() {
                        return Err(FlowError::BadRange {
                            field: r.field,
                            start: r.start,
                            end: r.end,
                            bits: r.field.bits(),
                        });
                    }
                }
                if src.bits() != dst.bits() {
                    return Err(FlowError::WidthMismatch {
                        src: src.field,
                        src_bits: src.bits(),
                        dst: dst.field,
                        dst_bits: dst.bits(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_port(p: &PortRef) -> Result<(), FlowError> {
    match p {
        PortRef::Name(n) if !PortRef::is_valid_name(n) => Err(FlowError::BadPortName(n.clone())),
        _ => Ok(()),
    }
}

/// Which flows a modify or delete applies to: the `del-flows` / `dump-flows` match form.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowFilter {
    /// Only flows in this table; `None` = every table.
    pub table: Option<u8>,
    /// Only flows whose cookie matches under the mask (`cookie=C/MASK`; `cookie=C` is an
    /// exact match); `None` = any cookie.
    pub cookie: Option<Masked<u64>>,
    /// For strict commands: the exact priority (`None` = the default 32768). Ignored by
    /// non-strict commands.
    pub priority: Option<u16>,
    /// The match: non-strict commands select every flow this match
    /// [covers](Match::covers); strict ones only a flow with exactly this match.
    #[serde(rename = "match")]
    pub matches: Match,
}

impl FlowFilter {
    /// A filter that selects every flow.
    pub fn all() -> FlowFilter {
        FlowFilter::default()
    }

    /// True when this filter selects `flow` (`strict` as for modify-strict and
    /// delete-strict).
    pub fn selects(&self, flow: &Flow, strict: bool) -> bool {
        if let Some(t) = self.table
            && t != flow.table
        {
            return false;
        }
        if let Some(c) = self.cookie
            && !c.matches(flow.cookie)
        {
            return false;
        }
        if strict {
            flow.priority == self.priority.unwrap_or(DEFAULT_PRIORITY)
                && flow.matches == self.matches
        } else {
            self.matches.covers(&flow.matches)
        }
    }

    /// Checks the table range and the match (see [`Match::validate`]).
    pub fn validate(&self) -> Result<(), FlowError> {
        if let Some(t) = self.table
            && t > MAX_TABLE
        {
            return Err(FlowError::TableOutOfRange(t));
        }
        self.matches.validate()
    }
}

/// One change to the flow tables, like an OpenFlow flow_mod.
///
/// Apply semantics (what the switch does; all of a [`Bundle`] at once):
/// - `Add`: install the flow; an installed flow with the [same
///   identity](Flow::same_identity) is replaced (its counters restart).
/// - `Modify`: for every installed flow the filter [selects](FlowFilter::selects)
///   (non-strict), replace its actions; cookie, timeouts and counters stay. Selecting no
///   flow is not an error and adds nothing.
/// - `ModifyStrict`: the same for the one flow with exactly the filter's table, priority
///   and match.
/// - `Delete`: remove every flow the filter selects (non-strict); the empty filter
///   removes all flows.
/// - `DeleteStrict`: remove the one flow with exactly the filter's table, priority and
///   match.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum FlowMod {
    /// Add (or replace) a flow.
    Add {
        /// The flow.
        flow: Flow,
    },
    /// Replace the actions of every flow the filter covers.
    Modify {
        /// Which flows.
        filter: FlowFilter,
        /// Their new actions.
        actions: Vec<Action>,
    },
    /// Replace the actions of the flow with exactly this match and priority.
    ModifyStrict {
        /// Which flow.
        filter: FlowFilter,
        /// Its new actions.
        actions: Vec<Action>,
    },
    /// Remove every flow the filter covers.
    Delete {
        /// Which flows.
        filter: FlowFilter,
    },
    /// Remove the flow with exactly this match and priority.
    DeleteStrict {
        /// Which flow.
        filter: FlowFilter,
    },
}

impl FlowMod {
    /// Checks the change's invariants (see [`Flow::validate`]; for modify, the new
    /// actions against the filter's match and table).
    pub fn validate(&self) -> Result<(), FlowError> {
        match self {
            FlowMod::Add { flow } => flow.validate(),
            FlowMod::Modify { filter, actions } | FlowMod::ModifyStrict { filter, actions } => {
                filter.validate()?;
                validate_actions(actions, &filter.matches, filter.table)
            }
            FlowMod::Delete { filter } | FlowMod::DeleteStrict { filter } => filter.validate(),
        }
    }

    /// True for the strict variants.
    pub fn is_strict(&self) -> bool {
        matches!(
            self,
            FlowMod::ModifyStrict { .. } | FlowMod::DeleteStrict { .. }
        )
    }

    /// For modify and delete, true when the change applies to the installed `flow`.
    /// Always false for `Add` (use [`Flow::same_identity`]).
    pub fn selects(&self, flow: &Flow) -> bool {
        match self {
            FlowMod::Add { .. } => false,
            FlowMod::Modify { filter, .. } | FlowMod::Delete { filter } => {
                filter.selects(flow, false)
            }
            FlowMod::ModifyStrict { filter, .. } | FlowMod::DeleteStrict { filter } => {
                filter.selects(flow, true)
            }
        }
    }
}

/// A list of changes applied as one: validated as a whole, then published as one new
/// pipeline version; on any error nothing changes and the error names the change.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// The changes, applied in order.
    pub changes: Vec<FlowMod>,
    /// Source line of each change (same length as `changes`) when the bundle came from
    /// a flows file; empty otherwise. Errors name `flow line N` or `change N`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<usize>,
}

impl Bundle {
    /// A bundle of changes without line numbers.
    pub fn new(changes: Vec<FlowMod>) -> Bundle {
        Bundle {
            changes,
            lines: Vec::new(),
        }
    }

    /// A bundle that adds every flow of a flows file, with their line numbers.
    pub fn add_flows(flows: Vec<(usize, Flow)>) -> Bundle {
        let (lines, changes) = flows
            .into_iter()
            .map(|(l, flow)| (l, FlowMod::Add { flow }))
            .unzip();
        Bundle { changes, lines }
    }

    /// Source line of change `index`, if known.
    pub fn line_of(&self, index: usize) -> Option<usize> {
        self.lines.get(index).copied()
    }

    /// Validates every change; the first invalid one is named in the error.
    pub fn validate(&self) -> Result<(), BundleError> {
        for (index, c) in self.changes.iter().enumerate() {
            c.validate().map_err(|error| BundleError {
                index,
                line: self.line_of(index),
                error,
            })?;
        }
        Ok(())
    }
}
