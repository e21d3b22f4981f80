//! Building the next version: applying a bundle, expiring flows, and reading flows back
//! (dump-flows). See the module docs of [`pipeline`](super) for the publication model.

use std::fmt;
use std::sync::Arc;

use weft_flow::{Action, Bundle, DEFAULT_PRIORITY, Flow, FlowFilter, FlowMod, PortRef};

use crate::classifier::RuleRef;
use crate::flow_key::{FlowKey, FlowMask};

use super::counters::Arena;
use super::error::{InstallError, InstallErrorKind, Limit};
use super::ports::PortMap;
use super::translate::{
    Op, compile_actions, compile_match, rebuild_action, rebuild_match, writes_something,
};
use super::{FlowLimits, FlowSlot, Millis, Pipeline, Table};

/// What a bundle did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BundleOutcome {
    /// The version it was published as.
    pub version: u64,
    /// Flows added (new identities).
    pub added: usize,
    /// Flows replaced by an add with the same identity.
    pub replaced: usize,
    /// Flows whose actions a modify replaced.
    pub modified: usize,
    /// Flows deleted.
    pub deleted: usize,
}

/// What a bundle changed, as the state a journal needs to replay it: the tables it
/// emptied, then the flows it added or changed (as they are now) and the flows it
/// removed (identity only: table, priority, match). Proportional to the change, not
/// to the tables. Counters are not part of it.
///
/// A bundle of adds only, none naming a port by name (the common `add-flows` of a
/// controller), is its own net change: its flows are then not rebuilt from the new
/// version but lent from the bundle as they were sent ([`added_as_sent`]), which
/// saves a rebuild and a copy of every flow on the commit's path.
///
/// [`added_as_sent`]: NetChange::added_as_sent
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetChange<'b> {
    /// Tables emptied by a catch-all delete (before `added` and `deleted`).
    pub cleared: Vec<u8>,
    /// Flows added, replaced or modified, as installed (ports as numbers), each
    /// identity once.
    pub added: Vec<Flow>,
    /// The changes of a bundle of adds only (no port named by name), which are its net
    /// change as they are: in order, a later flow of the same identity replacing an
    /// earlier one, as a replay of them does. Empty otherwise.
    pub added_as_sent: &'b [FlowMod],
    /// Flows removed that were in the old version (no actions).
    pub deleted: Vec<Flow>,
}

impl NetChange<'_> {
    /// Whether the bundle left every table as it was.
    pub fn is_empty(&self) -> bool {
        self.cleared.is_empty()
            && self.added.is_empty()
            && self.added_as_sent.is_empty()
            && self.deleted.is_empty()
    }

    /// The flows added or changed, in the order a replay applies them (`added`, then
    /// those of `added_as_sent`).
    pub fn added_flows(&self) -> impl Iterator<Item = &Flow> {
        self.added
            .iter()
            .chain(self.added_as_sent.iter().filter_map(|c| match c {
                FlowMod::Add { flow } => Some(flow),
                _ => None,
            }))
    }

    /// How many flows [`added_flows`](Self::added_flows) gives.
    pub fn added_len(&self) -> usize {
        self.added.len() + self.added_as_sent.len()
    }
}

/// Whether a bundle is its own net change (see [`NetChange`]): adds only, and no port
/// named by name (the journal keeps ports as numbers, so a name is resolved by
/// rebuilding the flow from the new version).
fn adds_as_sent(bundle: &Bundle) -> bool {
    let by_name = |p: &PortRef| matches!(p, PortRef::Name(_));
    bundle.changes.iter().all(|c| match c {
        FlowMod::Add { flow } => {
            !flow.matches.in_port.as_ref().is_some_and(by_name)
                && !flow.actions.iter().any(|a| match a {
                    Action::Output(p) | Action::Resubmit { port: Some(p), .. } => by_name(p),
                    _ => false,
                })
        }
        _ => false,
    })
}

/// What a bundle's changes touched, for its [`NetChange`]: the identities changed and
/// the tables emptied.
#[derive(Default)]
struct Tracked {
    /// Whether to note the identities (not for a bundle that is its own net change).
    track: bool,
    touched: Vec<Touched>,
    cleared: Vec<u8>,
    /// The bundle's action lists, shared.
    interner: Interner,
}

/// The action lists of one bundle's flows, each distinct list once: flows with the same
/// actions (Antrea's tables are mostly `goto_table`, `drop` and a few register loads)
/// share one `Arc<[Op]>` instead of an allocation each (48-112 bytes a flow). At most
/// [`Interner::MAX`] distinct lists are kept (the first ones seen), so a bundle of
/// unique actions costs a bounded set; a list not kept is allocated as before.
#[derive(Default)]
struct Interner {
    lists: std::collections::HashSet<Arc<[Op]>>,
}

impl Interner {
    const MAX: usize = 4096;

    fn intern(&mut self, ops: Vec<Op>) -> Arc<[Op]> {
        if let Some(a) = self.lists.get(ops.as_slice()) {
            return a.clone();
        }
        let a: Arc<[Op]> = ops.into();
        if self.lists.len() < Self::MAX {
            self.lists.insert(a.clone());
        }
        a
    }
}

/// A flow identity a change touched: table, value, mask, priority.
type Touched = (u8, FlowKey, FlowMask, u16);

/// One flow as dump-flows shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowDump {
    /// The flow (match and actions rebuilt from the compiled form; ports as numbers,
    /// `mod_*` actions as the equivalent `set_field`).
    pub flow: Flow,
    /// Packets that matched it.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Milliseconds since it was installed.
    pub duration_ms: u64,
    /// Milliseconds since it last matched a packet (since installed, if never).
    pub idle_age_ms: u64,
}

impl fmt::Display for FlowDump {
    /// The `ovs-ofctl dump-flows` line: counters, then the flow in canonical text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "duration={}.{:03}s, n_packets={}, n_bytes={}, idle_age={}, {}",
            self.duration_ms / 1000,
            self.duration_ms % 1000,
            self.packets,
            self.bytes,
            self.idle_age_ms / 1000,
            self.flow
        )
    }
}

/// Why a flow expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpireReason {
    /// No packet matched it for `idle_timeout` seconds.
    Idle,
    /// `hard_timeout` seconds passed since it was installed.
    Hard,
}

/// A flow removed by [`Pipeline::expire`], with its final counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredFlow {
    /// The flow and its final counters.
    pub flow: FlowDump,
    /// Which timeout removed it.
    pub reason: ExpireReason,
}

/// Rebuilds a `weft_flow::Flow` from a rule.
pub(crate) fn rule_flow(table: u8, r: RuleRef<'_, FlowSlot>, with_actions: bool) -> Flow {
    let s = r.payload();
    Flow {
        cookie: s.cookie,
        table,
        priority: r.priority(),
        idle_timeout: s.idle_timeout,
        hard_timeout: s.hard_timeout,
        matches: rebuild_match(&r.value(), r.mask(), s.present),
        actions: if with_actions {
            s.ops.iter().map(rebuild_action).collect()
        } else {
            Vec::new()
        },
    }
}

/// Rebuilds a `weft_flow::Flow` from a slot found by identity.
fn slot_flow(table: u8, key: &FlowKey, mask: &FlowMask, priority: u16, s: &FlowSlot) -> Flow {
    Flow {
        cookie: s.cookie,
        table,
        priority,
        idle_timeout: s.idle_timeout,
        hard_timeout: s.hard_timeout,
        matches: rebuild_match(key, mask, s.present),
        actions: s.ops.iter().map(rebuild_action).collect(),
    }
}

/// The net effect of a bundle that turned `old` into `next`, from the identities it
/// touched and the tables it emptied.
fn net_change(
    old: &Pipeline,
    next: &Pipeline,
    touched: &[Touched],
    cleared: Vec<u8>,
) -> NetChange<'static> {
    // Identities as the classifier keys them (value, mask, priority), so that no
    // `Match` is built or hashed twice.
    let mut seen: std::collections::HashSet<&Touched> =
        std::collections::HashSet::with_capacity(touched.len());
    let mut out = NetChange {
        cleared,
        ..NetChange::default()
    };
    for id @ (t, key, mask, prio) in touched {
        let ti = usize::from(*t);
        if let Some(s) = next.tables[ti].cls.get(key, mask, *prio) {
            if seen.insert(id) {
                out.added.push(slot_flow(*t, key, mask, *prio, s));
            }
        } else if let Some(s) = old.tables[ti].cls.get(key, mask, *prio) {
            if out.cleared.contains(t) {
                // The table's clear removes it already.
                continue;
            }
            if seen.insert(id) {
                // Identity only: the actions are not rebuilt.
                out.deleted.push(Flow {
                    cookie: s.cookie,
                    table: *t,
                    priority: *prio,
                    idle_timeout: s.idle_timeout,
                    hard_timeout: s.hard_timeout,
                    matches: rebuild_match(key, mask, s.present),
                    actions: Vec::new(),
                });
            }
        }
    }
    out
}

fn dump_of(p: &Pipeline, table: u8, r: RuleRef<'_, FlowSlot>, now: Millis) -> FlowDump {
    let st = &r.payload().stats;
    let counts = p.flow_counts(st);
    FlowDump {
        flow: rule_flow(table, r, true),
        packets: counts.packets,
        bytes: counts.bytes,
        duration_ms: now.saturating_sub(st.created()),
        idle_age_ms: now.saturating_sub(st.last_used()),
    }
}

/// [`dump_of`] into `d`, reusing its actions' vector.
fn dump_into(p: &Pipeline, table: u8, r: RuleRef<'_, FlowSlot>, now: Millis, d: &mut FlowDump) {
    let s = r.payload();
    let counts = p.flow_counts(&s.stats);
    let f = &mut d.flow;
    f.cookie = s.cookie;
    f.table = table;
    f.priority = r.priority();
    f.idle_timeout = s.idle_timeout;
    f.hard_timeout = s.hard_timeout;
    f.matches = rebuild_match(&r.value(), r.mask(), s.present);
    f.actions.clear();
    f.actions.extend(s.ops.iter().map(rebuild_action));
    d.packets = counts.packets;
    d.bytes = counts.bytes;
    d.duration_ms = now.saturating_sub(s.stats.created());
    d.idle_age_ms = now.saturating_sub(s.stats.last_used());
}

/// Install-time loop check: a resubmit into the flow's own table before anything was
/// written (and without a different ingress port) looks the same key up again and finds
/// this same flow, forever.
fn check_loop(table: u8, in_port: Option<u32>, ops: &[Op]) -> Result<(), InstallErrorKind> {
    for op in ops {
        match op {
            Op::Resubmit { port, table: t } => {
                let same_key = port.is_none() || (in_port.is_some() && *port == in_port);
                if t.unwrap_or(table) == table && same_key {
                    return Err(InstallErrorKind::ResubmitLoop { table });
                }
                // What the resubmitted flows do is not known here.
                return Ok(());
            }
            op if writes_something(op) => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}

/// A filter's `in_port` as a number (rebuilt matches carry numbers).
fn resolve_filter(filter: &FlowFilter, ports: &PortMap) -> Result<FlowFilter, InstallErrorKind> {
    let mut f = filter.clone();
    if let Some(p) = &f.matches.in_port {
        f.matches.in_port = Some(PortRef::Number(ports.resolve(p)?));
    }
    Ok(f)
}

/// The tables a filter looks at.
fn tables_of(filter: &FlowFilter) -> std::ops::RangeInclusive<u8> {
    match filter.table {
        Some(t) => t..=t,
        None => 0..=weft_flow::MAX_TABLE,
    }
}

/// The rules of `table` a change selects: (value, mask, priority, in_port).
fn select(
    table: &Table,
    t: u8,
    filter: &FlowFilter,
    strict: bool,
    ports: &PortMap,
) -> Result<Vec<(FlowKey, FlowMask, u16)>, InstallErrorKind> {
    if strict {
        let (key, mask, _) = compile_match(&filter.matches, ports)?;
        let prio = filter.priority.unwrap_or(DEFAULT_PRIORITY);
        return Ok(match table.cls.get(&key, &mask, prio) {
            Some(s) if filter.cookie.is_none_or(|c| c.matches(s.cookie)) => {
                vec![(key, mask, prio)]
            }
            _ => Vec::new(),
        });
    }
    let catch_all = filter.matches.is_catchall() && filter.cookie.is_none();
    Ok(table
        .cls
        .iter()
        .filter(|r| catch_all || filter.selects(&rule_flow(t, *r, false), false))
        .map(|r| (r.value(), *r.mask(), r.priority()))
        .collect())
}

fn has_timeouts(s: &FlowSlot) -> bool {
    s.idle_timeout != 0 || s.hard_timeout != 0
}

fn apply_one(
    arena: &Arc<Arena>,
    tables: &mut [Arc<Table>],
    ports: &PortMap,
    change: &FlowMod,
    now: Millis,
    out: &mut BundleOutcome,
    track: &mut Tracked,
) -> Result<(), InstallErrorKind> {
    let Tracked {
        track,
        touched,
        cleared,
        interner,
    } = track;
    match change {
        FlowMod::Add { flow } => {
            let (key, mask, present) = compile_match(&flow.matches, ports)?;
            let ops = interner.intern(compile_actions(&flow.actions, ports)?);
            let in_port = flow.matches.in_port.is_some().then(|| key.in_port());
            check_loop(flow.table, in_port, &ops)?;
            let t = Arc::make_mut(&mut tables[usize::from(flow.table)]);
            let new_timeouts = flow.idle_timeout != 0 || flow.hard_timeout != 0;
            if let Some(old) = t.cls.get_mut(&key, &mask, flow.priority) {
                // Same identity: replace; counters survive only unchanged actions.
                if old.ops != ops {
                    old.stats = arena.counter(now);
                }
                let delta = isize::from(new_timeouts) - isize::from(has_timeouts(old));
                old.ops = ops;
                old.cookie = flow.cookie;
                old.idle_timeout = flow.idle_timeout;
                old.hard_timeout = flow.hard_timeout;
                old.present = present;
                t.n_timeouts = t.n_timeouts.saturating_add_signed(delta);
                out.replaced += 1;
            } else {
                let slot = FlowSlot {
                    stats: arena.counter(now),
                    ops,
                    cookie: flow.cookie,
                    idle_timeout: flow.idle_timeout,
                    hard_timeout: flow.hard_timeout,
                    present,
                };
                t.cls.insert(&key, &mask, flow.priority, slot);
                t.n_timeouts += usize::from(new_timeouts);
                out.added += 1;
            }
            if *track {
                touched.push((flow.table, key, mask, flow.priority));
            }
        }
        FlowMod::Modify { filter, actions } | FlowMod::ModifyStrict { filter, actions } => {
            let strict = change.is_strict();
            let filter = resolve_filter(filter, ports)?;
            let ops = interner.intern(compile_actions(actions, ports)?);
            for t in tables_of(&filter) {
                let sel = select(&tables[usize::from(t)], t, &filter, strict, ports)?;
                if sel.is_empty() {
                    continue;
                }
                for (k, m, _) in &sel {
                    let in_port = (m.get(crate::flow_key::Field::InPort) != 0).then(|| k.in_port());
                    check_loop(t, in_port, &ops)?;
                }
                let table = Arc::make_mut(&mut tables[usize::from(t)]);
                for (k, m, p) in &sel {
                    if let Some(s) = table.cls.get_mut(k, m, *p) {
                        s.ops = ops.clone();
                        out.modified += 1;
                        touched.push((t, *k, *m, *p));
                    }
                }
            }
        }
        FlowMod::Delete { filter } | FlowMod::DeleteStrict { filter } => {
            let strict = change.is_strict();
            let filter = resolve_filter(filter, ports)?;
            let everything = !strict && filter.matches.is_catchall() && filter.cookie.is_none();
            for t in tables_of(&filter) {
                let ti = usize::from(t);
                if tables[ti].cls.is_empty() {
                    continue;
                }
                if everything {
                    out.deleted += tables[ti].cls.len();
                    tables[ti] = Arc::new(Table::default());
                    if !cleared.contains(&t) {
                        cleared.push(t);
                    }
                    continue;
                }
                let sel = select(&tables[ti], t, &filter, strict, ports)?;
                if sel.is_empty() {
                    continue;
                }
                let table = Arc::make_mut(&mut tables[ti]);
                for (k, m, p) in &sel {
                    if let Some(s) = table.cls.remove(k, m, *p) {
                        table.n_timeouts -= usize::from(has_timeouts(&s));
                        out.deleted += 1;
                        touched.push((t, *k, *m, *p));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Refuses tables that hold more flows than `limits` allow (after a bundle of
/// `changes` changes; the error names the last change, for want of a better one).
fn check_limits(
    tables: &[Arc<Table>],
    limits: FlowLimits,
    changes: usize,
) -> Result<(), InstallError> {
    let refuse = |kind| InstallError {
        index: changes.saturating_sub(1),
        line: None,
        kind,
    };
    let mut total = 0usize;
    for (t, table) in tables.iter().enumerate() {
        let n = table.cls.len();
        if n > limits.max_flows_per_table {
            return Err(refuse(InstallErrorKind::TooManyFlows {
                what: format!("table {t}"),
                flows: n,
                limit: Limit::MaxFlowsPerTable(limits.max_flows_per_table),
            }));
        }
        total += n;
    }
    if total > limits.max_flows {
        return Err(refuse(InstallErrorKind::TooManyFlows {
            what: "the switch".into(),
            flows: total,
            limit: Limit::MaxFlows(limits.max_flows),
        }));
    }
    Ok(())
}

pub(crate) fn apply<'b>(
    p: &Pipeline,
    bundle: &'b Bundle,
    now: Millis,
) -> Result<(Pipeline, BundleOutcome, NetChange<'b>), InstallError> {
    bundle.validate().map_err(|e| InstallError {
        index: e.index,
        line: e.line,
        kind: InstallErrorKind::Invalid(e.error),
    })?;
    let mut tables = p.tables.clone();
    let version = super::next_version();
    let mut out = BundleOutcome {
        version,
        ..BundleOutcome::default()
    };
    let as_sent = adds_as_sent(bundle);
    let mut track = Tracked {
        track: !as_sent,
        ..Tracked::default()
    };
    for (index, change) in bundle.changes.iter().enumerate() {
        apply_one(
            &p.arena,
            &mut tables,
            &p.ports,
            change,
            now,
            &mut out,
            &mut track,
        )
        .map_err(|kind| InstallError {
            index,
            line: bundle.line_of(index),
            kind,
        })?;
    }
    check_limits(&tables, p.limits, bundle.changes.len())?;
    // The cells of every id handed out so far (those of the new flows included).
    let next = Pipeline {
        version,
        tables,
        flow_cells: super::counters::FlowCells::new(&p.arena),
        ..p.clone_shallow()
    };
    let net = if as_sent {
        NetChange {
            added_as_sent: &bundle.changes,
            ..NetChange::default()
        }
    } else {
        net_change(p, &next, &track.touched, track.cleared)
    };
    Ok((next, out, net))
}

impl Pipeline {
    /// A copy sharing everything (tables included); callers override fields.
    fn clone_shallow(&self) -> Pipeline {
        Pipeline {
            version: self.version(),
            tables: self.tables.clone(),
            ports: self.ports.clone(),
            arena: self.arena.clone(),
            flow_cells: self.flow_cells.clone(),
            table_stats: self.table_stats.clone(),
            drops: self.drops.clone(),
            limits: self.limits,
        }
    }

    /// The next version without the flows whose idle or hard timeout has passed at
    /// `now`, and what was removed; `None` when nothing expired.
    pub fn expire(&self, now: Millis) -> Option<(Pipeline, Vec<ExpiredFlow>)> {
        let mut doomed: Vec<(usize, FlowKey, FlowMask, u16, ExpiredFlow)> = Vec::new();
        for (ti, t) in self.tables.iter().enumerate() {
            if t.n_timeouts == 0 {
                continue;
            }
            for r in t.cls.iter() {
                let s = r.payload();
                let hard = s.hard_timeout != 0
                    && now.saturating_sub(s.stats.created()) >= u64::from(s.hard_timeout) * 1000;
                let idle = s.idle_timeout != 0
                    && now.saturating_sub(s.stats.last_used()) >= u64::from(s.idle_timeout) * 1000;
                if hard || idle {
                    let reason = if hard {
                        ExpireReason::Hard
                    } else {
                        ExpireReason::Idle
                    };
                    let flow = dump_of(self, ti as u8, r, now);
                    doomed.push((
                        ti,
                        r.value(),
                        *r.mask(),
                        r.priority(),
                        ExpiredFlow { flow, reason },
                    ));
                }
            }
        }
        if doomed.is_empty() {
            return None;
        }
        let mut next = self.clone_shallow();
        next.version = super::next_version();
        let mut gone = Vec::with_capacity(doomed.len());
        for (ti, k, m, p, e) in doomed {
            let t = Arc::make_mut(&mut next.tables[ti]);
            if let Some(s) = t.cls.remove(&k, &m, p) {
                t.n_timeouts -= usize::from(has_timeouts(&s));
                gone.push(e);
            }
        }
        Some((next, gone))
    }

    /// The flows `filter` selects (non-strict, as `dump-flows`), with counters at
    /// `now`, by table and descending priority. Fails only on an unknown port name in
    /// the filter.
    pub fn dump(
        &self,
        filter: &FlowFilter,
        now: Millis,
    ) -> Result<Vec<FlowDump>, InstallErrorKind> {
        let mut out = Vec::new();
        self.dump_each(filter, now, |d| {
            out.push(d);
            true
        })?;
        Ok(out)
    }

    /// [`dump`](Self::dump) one flow at a time, in the same order: `each` gets every
    /// flow as it is rebuilt and returns false to stop early. Memory stays small
    /// whatever the number of flows (a reference per selected flow of one table, and
    /// one rebuilt flow), so a large dump can be written out as it is made. Returns
    /// false when `each` stopped it.
    pub fn dump_each(
        &self,
        filter: &FlowFilter,
        now: Millis,
        mut each: impl FnMut(FlowDump) -> bool,
    ) -> Result<bool, InstallErrorKind> {
        self.dump_each_ref(filter, now, |d| each(d.clone()))
    }

    /// [`dump_each`](Self::dump_each) lending each flow instead of giving it: one
    /// [`FlowDump`] is rebuilt in place for every flow (its actions' vector reused), so
    /// a dump written out as it is made allocates nothing per flow.
    pub fn dump_each_ref(
        &self,
        filter: &FlowFilter,
        now: Millis,
        mut each: impl FnMut(&FlowDump) -> bool,
    ) -> Result<bool, InstallErrorKind> {
        let mut d = FlowDump {
            flow: Flow::default(),
            packets: 0,
            bytes: 0,
            duration_ms: 0,
            idle_age_ms: 0,
        };
        let filter = resolve_filter(filter, &self.ports)?;
        let everything = filter.cookie.is_none() && filter.matches == Default::default();
        let mut rules: Vec<RuleRef<'_, FlowSlot>> = Vec::new();
        for t in tables_of(&filter) {
            let table = &self.tables[usize::from(t)];
            rules.clear();
            rules.extend(
                table
                    .cls
                    .iter()
                    .filter(|r| everything || filter.selects(&rule_flow(t, *r, false), false)),
            );
            // Stable, as the order of equal priorities was before.
            rules.sort_by_key(|r| std::cmp::Reverse(r.priority()));
            for r in &rules {
                dump_into(self, t, *r, now, &mut d);
                if !each(&d) {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}
