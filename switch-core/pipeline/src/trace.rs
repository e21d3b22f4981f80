//! `weftctl trace`: the forwarding walk run with a recorder (like `ofproto/trace`).
//!
//! [`Pipeline::trace`] calls the same `exec::Walk` as forwarding, with a recorder that
//! writes a [`TraceStep`] per table visited, action run and stop; it bumps no counter
//! and learns no MAC. `normal` is shown as the decision the MAC table would give now.

use std::fmt;

use weft_flow::{Action, Flow};

use crate::drop::DropReason;
use crate::flow_key::FlowKey;

use super::bundle::rule_flow;
use super::exec::{Count, DpAction, HitRef, Recorder, Resolved, Walk};
use super::normal::{Forward, MacTable, normal};
use super::translate::{Op, rebuild_action};
use super::{Millis, Pipeline};

/// One step of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceStep {
    /// A table lookup: the flow that matched, or `None` for a miss.
    Table {
        /// Resubmit nesting depth (0 = the main walk).
        depth: u32,
        /// The table.
        table: u8,
        /// The matched flow (ports as numbers).
        flow: Option<Box<Flow>>,
    },
    /// An action of the matched flow, about to run.
    Action {
        /// Resubmit nesting depth.
        depth: u32,
        /// The action.
        action: Action,
    },
    /// Processing stopped or an output was skipped, and why.
    Note {
        /// Resubmit nesting depth.
        depth: u32,
        /// The reason.
        reason: DropReason,
    },
}

/// A trace: the steps and the final datapath actions (same as forwarding would get).
#[derive(Clone, Debug)]
pub struct Trace {
    /// The key traced.
    pub key: FlowKey,
    /// Each table visited, action run and stop, in order.
    pub steps: Vec<TraceStep>,
    /// The final datapath actions: each action with the packet state it sends, and,
    /// for `normal`, what the MAC table decides now.
    pub actions: Vec<(DpAction, FlowKey, Option<Forward>)>,
    /// Why the packet is dropped, when `actions` is empty.
    pub drop: Option<DropReason>,
}

struct TraceRecorder {
    steps: Vec<TraceStep>,
}

impl Recorder for TraceRecorder {
    fn table(&mut self, _p: &Pipeline, table: u8, depth: u32, hit: Option<HitRef<'_>>) {
        self.steps.push(TraceStep::Table {
            depth,
            table,
            flow: hit.map(|h| Box::new(rule_flow(table, h.rule, true))),
        });
    }

    fn action(&mut self, depth: u32, op: &Op, _key: &FlowKey) {
        self.steps.push(TraceStep::Action {
            depth,
            action: rebuild_action(op),
        });
    }

    fn note(&mut self, depth: u32, reason: DropReason) {
        self.steps.push(TraceStep::Note { depth, reason });
    }
}

impl Pipeline {
    /// Traces `key` through the pipeline (no counters, no learning). With `macs`,
    /// `normal` outputs show the MAC table's decision at `now`.
    pub fn trace(&self, key: &FlowKey, macs: Option<&MacTable>, now: Millis) -> Trace {
        let mut rec = TraceRecorder { steps: Vec::new() };
        let mut out = Box::<Resolved>::default();
        Walk::run(self, key, &mut out, &mut rec, Count::No);
        let actions = out
            .actions()
            .iter()
            .map(|a| {
                let state = *out.state_of(a);
                let fwd = match a {
                    DpAction::Normal { .. } => macs.map(|m| normal(m, &self.ports, &state, now)),
                    _ => None,
                };
                (*a, state, fwd)
            })
            .collect();
        Trace {
            key: *key,
            steps: rec.steps,
            actions,
            drop: out.drop_reason(),
        }
    }
}

impl Trace {
    /// The tables visited, in order, with whether each matched.
    pub fn tables(&self) -> Vec<(u8, bool)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                TraceStep::Table { table, flow, .. } => Some((*table, flow.is_some())),
                _ => None,
            })
            .collect()
    }
}

impl fmt::Display for Trace {
    /// The `ofproto/trace` layout: the key, then per table the matched flow and its
    /// actions (indented by resubmit depth), then the final datapath actions.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "flow: {:?}", self.key)?;
        for s in &self.steps {
            match s {
                TraceStep::Table { depth, table, flow } => {
                    let pad = "    ".repeat(*depth as usize);
                    writeln!(f)?;
                    match flow {
                        Some(fl) => writeln!(f, "{pad}{table}. {fl}")?,
                        None => writeln!(f, "{pad}{table}. no match")?,
                    }
                }
                TraceStep::Action { depth, action } => {
                    writeln!(f, "{}    {action}", "    ".repeat(*depth as usize))?
                }
                TraceStep::Note { depth, reason } => {
                    writeln!(f, "{}    -> {reason}", "    ".repeat(*depth as usize))?
                }
            }
        }
        writeln!(f)?;
        write!(f, "final: ")?;
        if let Some(r) = self.drop {
            return writeln!(f, "drop ({})", r.as_str());
        }
        for (i, (a, _, fwd)) in self.actions.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            match a {
                DpAction::Output { port, state } => write!(f, "output:{port} (state {state})")?,
                DpAction::Flood { state } => write!(f, "flood (state {state})")?,
                DpAction::Normal { state } => {
                    write!(f, "normal (state {state}")?;
                    match fwd {
                        Some(Forward::Port { port, .. }) => write!(f, ": learned port {port})")?,
                        Some(Forward::Flood) => write!(f, ": flood)")?,
                        Some(Forward::Drop(r)) => write!(f, ": drop, {r})")?,
                        None => write!(f, ")")?,
                    }
                }
            }
        }
        writeln!(f)
    }
}
