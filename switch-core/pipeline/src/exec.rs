//! The table walk: one pass of a packet's key through the pipeline, producing a
//! [`Resolved`] action list. Forwarding and trace run this same code; trace passes a
//! recorder, forwarding passes [`NoRecord`], whose methods are empty and inline away.

use std::sync::Arc;

use crate::drop::DropReason;
use crate::flow_key::{ETH_TYPE_IPV4, ETH_TYPE_IPV6, FlowKey};

use super::counters::FlowCounter;
use super::translate::{Op, join, ones, read_field, write_field};
use super::{FlowSlot, Pipeline};

/// Maximum number of datapath actions (outputs, `normal`, `flood`) one resolved list
/// holds. A walk that produces more drops the packet as `too_many_outputs`.
pub const MAX_OUTPUTS: usize = 16;
/// Maximum number of distinct packet states (keys at an output) one resolved list
/// holds. A walk that needs more drops the packet as `too_many_outputs`.
pub const MAX_STATES: usize = 4;
/// Table visits a resolved list records (for counters on cache hits). A walk with more
/// visits is still correct, but is not cached: its counters are bumped during the walk.
pub const MAX_VISITS: usize = 16;
/// Maximum `resubmit` nesting, as in Open vSwitch.
pub const MAX_DEPTH: u32 = 64;
/// Maximum table lookups of one walk (bounds the fan-out of resubmit trees), as OVS's
/// `MAX_RESUBMITS`.
pub const MAX_LOOKUPS: u32 = 4096;

/// One datapath action of a resolved list. `state` indexes [`Resolved::state`]: the
/// packet's key at that point (header rewrites are the difference between it and the
/// key the packet came in with; see [`commit`](super::commit::commit)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DpAction {
    /// Send to this port (which existed in the snapshot's port map).
    Output {
        /// Port number.
        port: u32,
        /// Index of the packet state.
        state: u8,
    },
    /// Run the MAC-learning switch for this packet state (per packet: see
    /// [`normal`](super::normal)).
    Normal {
        /// Index of the packet state.
        state: u8,
    },
    /// Flood this packet state to every port but its ingress (split horizon).
    Flood {
        /// Index of the packet state.
        state: u8,
    },
}

impl DpAction {
    /// The index of the packet state this action sends.
    #[inline]
    pub fn state(&self) -> usize {
        match *self {
            DpAction::Output { state, .. }
            | DpAction::Normal { state }
            | DpAction::Flood { state } => usize::from(state),
        }
    }
}

/// One table visited by a walk: the table and the matched flow's counter (none = miss).
#[derive(Clone, Debug, Default)]
pub(crate) struct Visit {
    pub(crate) table: u8,
    pub(crate) flow: Option<Arc<FlowCounter>>,
}

/// The outcome of a pipeline walk for one key: everything the datapath needs, and it
/// depends on the key (and the snapshot) only, so a worker caches it per key.
///
/// Fixed size, no heap: a worker keeps a preallocated array of them (see
/// [`FlowCache`](super::cache::FlowCache)).
#[derive(Clone, Debug)]
pub struct Resolved {
    actions: [DpAction; MAX_OUTPUTS],
    n_actions: u8,
    states: [FlowKey; MAX_STATES],
    n_states: u8,
    /// Outputs skipped because the port does not exist.
    missing_ports: u8,
    drop: Option<DropReason>,
    pub(crate) visits: [Visit; MAX_VISITS],
    pub(crate) n_visits: u8,
    pub(crate) cacheable: bool,
}

impl Default for Resolved {
    fn default() -> Self {
        Resolved {
            actions: [DpAction::Flood { state: 0 }; MAX_OUTPUTS],
            n_actions: 0,
            states: [FlowKey::ZERO; MAX_STATES],
            n_states: 0,
            missing_ports: 0,
            drop: None,
            visits: std::array::from_fn(|_| Visit::default()),
            n_visits: 0,
            cacheable: true,
        }
    }
}

impl Resolved {
    /// The datapath actions, in order.
    #[inline]
    pub fn actions(&self) -> &[DpAction] {
        &self.actions[..usize::from(self.n_actions)]
    }

    /// Packet state `i` (the key at an output).
    #[inline]
    pub fn state(&self, i: usize) -> &FlowKey {
        &self.states[i]
    }

    /// The packet state of an action.
    #[inline]
    pub fn state_of(&self, a: &DpAction) -> &FlowKey {
        &self.states[a.state()]
    }

    /// Why the packet is dropped, when [`Resolved::actions`] is empty.
    #[inline]
    pub fn drop_reason(&self) -> Option<DropReason> {
        if self.n_actions == 0 {
            Some(self.drop.unwrap_or(DropReason::NoOutput))
        } else {
            None
        }
    }

    /// Outputs that were skipped because their port does not exist (each counted as
    /// `no_such_port`).
    #[inline]
    pub fn missing_ports(&self) -> u8 {
        self.missing_ports
    }

    /// Whether this result was (or can be) cached per key.
    #[inline]
    pub fn is_cacheable(&self) -> bool {
        self.cacheable
    }

    /// Empties the list for reuse (drops the flow references it holds).
    pub(crate) fn clear(&mut self) {
        self.n_actions = 0;
        self.n_states = 0;
        self.missing_ports = 0;
        self.drop = None;
        for v in &mut self.visits[..usize::from(self.n_visits)] {
            v.flow = None;
        }
        self.n_visits = 0;
        self.cacheable = true;
    }

    /// Appends an action for the current key; false when the list is full.
    fn push(&mut self, key: &FlowKey, make: impl FnOnce(u8) -> DpAction) -> bool {
        if usize::from(self.n_actions) == MAX_OUTPUTS {
            return false;
        }
        let n = usize::from(self.n_states);
        let state = if n > 0 && self.states[n - 1] == *key {
            n - 1
        } else if n == MAX_STATES {
            return false;
        } else {
            self.states[n] = *key;
            self.n_states += 1;
            n
        };
        self.actions[usize::from(self.n_actions)] = make(state as u8);
        self.n_actions += 1;
        true
    }

    /// Counts this result against the snapshot's counters in `lane`: flows, tables,
    /// drops.
    #[inline]
    pub(crate) fn account(&self, p: &Pipeline, lane: usize, bytes: u64, now: u64) {
        for v in &self.visits[..usize::from(self.n_visits)] {
            p.bump_visit(lane, v.table, v.flow.as_deref(), bytes, now);
        }
        if let Some(r) = self.drop_reason() {
            p.drops.bump(r);
        } else {
            for _ in 0..self.missing_ports {
                p.drops.bump(DropReason::NoSuchPort);
            }
        }
    }
}

/// What a walk reports as it goes; forwarding uses [`NoRecord`], trace a recorder that
/// writes [`TraceStep`](super::trace::TraceStep)s.
pub(crate) trait Recorder {
    /// A table was looked up; `hit` is the matched flow, if any.
    fn table(&mut self, _p: &Pipeline, _table: u8, _depth: u32, _hit: Option<HitRef<'_>>) {}
    /// An action is about to run with the key as it is now.
    fn action(&mut self, _depth: u32, _op: &Op, _key: &FlowKey) {}
    /// Processing stopped (or an output was skipped) for this reason.
    fn note(&mut self, _depth: u32, _reason: DropReason) {}
}

/// A matched rule, as the recorder sees it.
#[derive(Clone, Copy)]
pub(crate) struct HitRef<'a> {
    pub(crate) rule: crate::classifier::RuleRef<'a, FlowSlot>,
}

/// The recorder of the forwarding path: records nothing, costs nothing.
pub(crate) struct NoRecord;

impl Recorder for NoRecord {}

/// Counting mode of a walk: forwarding bumps counters of visits that do not fit the
/// resolved list directly (in the worker's lane, bytes, now); trace never counts.
#[derive(Clone, Copy)]
pub(crate) enum Count {
    No,
    Yes { lane: usize, bytes: u64, now: u64 },
}

/// One walk in progress.
pub(crate) struct Walk<'a, R: Recorder> {
    p: &'a Pipeline,
    key: FlowKey,
    out: &'a mut Resolved,
    rec: &'a mut R,
    count: Count,
    lookups: u32,
    /// A reason that ends the whole walk.
    stop: Option<DropReason>,
}

impl<'a, R: Recorder> Walk<'a, R> {
    /// Runs `key` through `p` from table 0 into `out` (which must be clear).
    pub(crate) fn run(
        p: &'a Pipeline,
        key: &FlowKey,
        out: &'a mut Resolved,
        rec: &'a mut R,
        count: Count,
    ) {
        let mut w = Walk {
            p,
            key: *key,
            out,
            rec,
            count,
            lookups: 0,
            stop: None,
        };
        w.table(0, 0);
        if let Some(r) = w.stop {
            w.out.drop = Some(r);
            if matches!(r, DropReason::ResubmitLoop | DropReason::TooManyOutputs) {
                // The whole translation failed (as OVS): nothing is sent.
                w.out.n_actions = 0;
                w.out.n_states = 0;
            }
        }
    }

    fn record_visit(&mut self, table: u8, flow: Option<&Arc<FlowCounter>>) {
        let n = usize::from(self.out.n_visits);
        if n < MAX_VISITS {
            self.out.visits[n] = Visit {
                table,
                flow: flow.cloned(),
            };
            self.out.n_visits += 1;
        } else {
            self.out.cacheable = false;
            if let Count::Yes { lane, bytes, now } = self.count {
                self.p
                    .bump_visit(lane, table, flow.map(|a| &**a), bytes, now);
            }
        }
    }

    fn halt(&mut self, depth: u32, reason: DropReason) {
        self.rec.note(depth, reason);
        self.stop = Some(reason);
    }

    fn output(&mut self, depth: u32, make: impl FnOnce(u8) -> DpAction) {
        if !self.out.push(&self.key, make) {
            self.halt(depth, DropReason::TooManyOutputs);
        }
    }

    /// Looks `table` up and runs the matched flow's actions, following `goto_table` in
    /// place and `resubmit` by recursion.
    fn table(&mut self, mut table: u8, depth: u32) {
        'tables: loop {
            if self.lookups >= MAX_LOOKUPS {
                self.halt(depth, DropReason::ResubmitLoop);
                return;
            }
            self.lookups += 1;
            let p = self.p;
            let Some(t) = p.tables.get(usize::from(table)) else {
                return;
            };
            let Some(rule) = t.cls.lookup(&self.key) else {
                self.record_visit(table, None);
                self.rec.table(p, table, depth, None);
                self.rec.note(depth, DropReason::TableMiss);
                self.out.drop = Some(DropReason::TableMiss);
                return;
            };
            let slot = rule.payload();
            self.record_visit(table, Some(&slot.stats));
            self.rec.table(p, table, depth, Some(HitRef { rule }));
            if slot.ops.is_empty() {
                self.rec.note(depth, DropReason::ExplicitDrop);
                self.out.drop = Some(DropReason::ExplicitDrop);
                return;
            }
            for op in slot.ops.iter() {
                self.rec.action(depth, op, &self.key);
                match op {
                    Op::Output(port) => {
                        let port = *port;
                        if port == self.key.in_port() {
                            // As OVS: output to the ingress port must say `in_port`.
                            continue;
                        }
                        if p.ports.get(port).is_none() {
                            self.out.missing_ports = self.out.missing_ports.saturating_add(1);
                            self.out.drop = Some(DropReason::NoSuchPort);
                            self.rec.note(depth, DropReason::NoSuchPort);
                            continue;
                        }
                        self.output(depth, |state| DpAction::Output { port, state });
                    }
                    Op::InPort => {
                        let port = self.key.in_port();
                        self.output(depth, |state| DpAction::Output { port, state });
                    }
                    Op::Normal => self.output(depth, |state| DpAction::Normal { state }),
                    Op::Flood => self.output(depth, |state| DpAction::Flood { state }),
                    Op::Goto(next) => {
                        table = *next;
                        continue 'tables;
                    }
                    Op::Resubmit { port, table: t } => {
                        if depth + 1 >= MAX_DEPTH {
                            self.halt(depth, DropReason::ResubmitLoop);
                            return;
                        }
                        let saved = self.key.in_port();
                        if let Some(pt) = port {
                            self.key.set_in_port(*pt);
                        }
                        self.table(t.unwrap_or(table), depth + 1);
                        if port.is_some() {
                            self.key.set_in_port(saved);
                        }
                    }
                    Op::Set { field, value } => {
                        write_field(&mut self.key, *field, join(*value), u128::MAX);
                    }
                    Op::SetMasked(b) => {
                        let (field, value, mask) = **b;
                        write_field(&mut self.key, field, value, mask);
                    }
                    Op::Move {
                        src,
                        src_ofs,
                        dst,
                        dst_ofs,
                        n_bits,
                    } => {
                        let n = u32::from(*n_bits);
                        let v = (read_field(&self.key, *src) >> src_ofs) & ones(n);
                        write_field(&mut self.key, *dst, v << dst_ofs, ones(n) << dst_ofs);
                    }
                    Op::DecTtl => {
                        let dl = self.key.dl_type();
                        if dl == ETH_TYPE_IPV4 || dl == ETH_TYPE_IPV6 {
                            let ttl = self.key.nw_ttl();
                            if ttl <= 1 {
                                self.halt(depth, DropReason::TtlExpired);
                            } else {
                                self.key.set_nw_ttl(ttl - 1);
                            }
                        }
                    }
                }
                if self.stop.is_some() {
                    return;
                }
            }
            return;
        }
    }
}

impl Pipeline {
    /// Bumps one table visit in `lane` (one writer per lane): table lookups/matches,
    /// the flow's packets/bytes, its last-used time.
    #[inline]
    pub(crate) fn bump_visit(
        &self,
        lane: usize,
        table: u8,
        flow: Option<&FlowCounter>,
        bytes: u64,
        now: u64,
    ) {
        self.table_stats.bump(lane, table, flow.is_some());
        if let Some(f) = flow {
            self.flow_cells.bump(lane, f.id(), bytes);
            f.touch(now);
        }
    }
}
