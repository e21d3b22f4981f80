//! `weft-pipeline`: the flow pipeline, pure and deterministic. Up to 254 tables of
//! flows, walked from table 0, that turn a packet's [`FlowKey`] into datapath actions.
//!
//! Its parts: the flow key ([`flow_key`]: a frame parsed into fixed words), the
//! tuple-space [`classifier`], the exact-match cache ([`emc`]), drop reasons
//! ([`drop`]), the tables, actions and bundles (this module), `normal` and its MAC
//! tables ([`normal`], [`macs`]), the egress decision that completes the answer for each
//! copy of a packet ([`egress`]), trace, and the ICMP "too big" replies ([`icmp`]).
//! It takes flows from `weft-flow` and frames' headers from `encap`; `weft-datapath`
//! runs it on real devices. No libc, sockets, threads or clock: time is passed in
//! ([`Millis`]), and there is no `unsafe` (`forbid(unsafe_code)`).
//!
//! # What it is
//!
//! A [`Pipeline`] is an immutable snapshot: 254 tables (each a
//! [`Classifier`](crate::classifier::Classifier) of compiled flows), the port map the
//! flows were resolved against, and a version number. Processing starts in table 0; the
//! highest-priority matching flow's actions run in order; `goto_table` continues in a
//! later table, `resubmit` looks up another (or the same) table and comes back. A miss
//! ends the walk (a miss in table 0, or in a `goto_table` target, with nothing output
//! drops the packet as `table_miss`; a miss in a resubmitted table is a no-op, as in
//! OVS). The walk is bounded: `resubmit` nesting deeper than [`MAX_DEPTH`] (64, as OVS)
//! or more than [`MAX_LOOKUPS`] lookups drops the packet as `resubmit_loop`; a flow
//! that resubmits into its own table without writing anything first is refused at
//! install time, since it would match itself again forever.
//!
//! # Versions and bundles (how a bundle becomes visible at once)
//!
//! The switch holds the current snapshot in an [`ArcSwap`] ([`SharedPipeline`]).
//! Each worker takes it once per round of polling with [`SharedPipeline::load_full`]
//! — no lock, one reference-count increment per round, not per packet (a round
//! drains every ready queue, batch after batch, and an `arc-swap` guard from
//! [`SharedPipeline::load`] is meant to be short-lived) — and walks that snapshot for
//! the whole round, so a packet sees either the old flows or the new ones, never a mix. A [`Bundle`] is applied by the control
//! thread (one writer at a time; readers never wait for it): every change is validated
//! (`weft-flow`'s checks, then port names, install-time loops), and the changes are
//! applied in order to a *copy* of the tables. Tables are `Arc`-shared between
//! versions and only the tables a bundle touches are cloned (`Arc::make_mut`), so a
//! bundle that adds one flow to one table costs a clone of that table, not of the
//! pipeline. On any error the copy is dropped and the error names the change (index,
//! and line when the bundle came from a file); the published snapshot was never
//! touched. On success the copy becomes the next version with one pointer swap.
//!
//! A new port map (a port added or removed) is published the same way, sharing every
//! table. Flows keep the port numbers they were resolved to; output to a number that
//! is no longer in the map is skipped and counted as `no_such_port`.
//!
//! # Flows and counters
//!
//! A flow is kept compiled: its match as the classifier's value/mask (plus a bitmap of
//! which control fields it named, enough to rebuild the `weft_flow::Flow` for dumps and
//! traces), its actions as a shared list of 24-byte [`Op`](translate::Op)s, and its
//! counter identity in an `Arc<`[`FlowCounter`]`>` (an id, created and last-used
//! times). Packets and bytes are counted per worker, in that worker's lane of dense
//! arrays indexed by the id, and summed when read ([`counters`]); the identity is
//! shared by every version the flow lives in, so a packet counted against an old
//! snapshot is not lost. Adding a flow with the identity of an installed one replaces
//! it and keeps its counters only when its actions are unchanged (as `ovs-ofctl
//! replace-flows`); `modify` replaces the actions and keeps the counters. Per-table
//! counters (lookups, matches; misses = lookups − matches; one block per lane) and drop
//! counters per [`DropReason`] live outside the versions and are shared by all.
//!
//! # The resolved-action cache
//!
//! The walk's result depends on the key and the snapshot only, so each worker caches it
//! per key in a [`FlowCache`]: an [`Emc`](crate::emc::Emc) probe, tagged with the
//! snapshot version (a new version invalidates every entry at once, with nothing to
//! flush across threads), pointing into the worker's preallocated array of
//! [`Resolved`] lists. A resolved list is fixed-size: up to [`MAX_OUTPUTS`] datapath
//! actions, each naming the packet state (the full [`FlowKey`] at that output, at most
//! [`MAX_STATES`] distinct ones; the datapath writes the difference between it and the
//! ingress key into the frame with [`commit::commit`]), the drop reason when nothing is
//! output, and the flows and tables whose counters a hit must bump (up to
//! [`MAX_VISITS`]; a longer walk is not cached). `normal` and `flood` stay symbolic
//! ([`DpAction::Normal`], [`DpAction::Flood`]) because they depend on the MAC table and
//! MAC learning is a per-packet side effect; [`egress::plan`] evaluates them (with
//! [`normal`](normal::normal) against the datapath's MAC table) when it turns each
//! action into the complete answer the datapath executes. A hit costs one EMC probe and
//! the counter bumps, and never allocates. A walk that would need more outputs or
//! states than fit drops the packet as `too_many_outputs` (no truncation: a partial
//! action list would be a silent misforwarding).
//!
//! # Trace
//!
//! [`Pipeline::trace`] runs the very same walk (`exec::Walk`) with a recorder that
//! notes each table visited, the flow matched (or the miss), each action with the key
//! it saw, and the final datapath actions. Forwarding passes a recorder whose methods
//! are empty and inline away. Trace never bumps counters and never learns MACs (like
//! `ofproto/trace`).
//!
//! # Timeouts and dumps
//!
//! [`Pipeline::expire`] takes `now` (milliseconds on any monotonic clock the caller
//! chooses; the pipeline has no clock) and returns the next version without the flows
//! whose idle or hard timeout passed, with a report of what it removed. Only tables
//! that hold flows with timeouts are scanned. [`Pipeline::dump`] lists flows with their
//! counters, selected by a `weft_flow::FlowFilter`, as `weft_flow::Flow`s that print with
//! control's printer.

#![forbid(unsafe_code)]

pub mod cache;
pub mod classifier;
pub mod commit;
pub mod counters;
pub mod drop;
pub mod egress;
pub mod emc;
pub mod error;
pub mod exec;
pub mod flow_key;
pub mod icmp;
pub mod macs;
pub mod normal;
pub mod ports;
pub mod trace;
pub mod translate;

mod bundle;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use weft_flow::{Bundle, Flow};

use crate::classifier::Classifier;
use crate::counters::{Arena, FlowCells, TableCells};
use crate::drop::{DropCounters, DropReason};
use crate::flow_key::FlowKey;

pub use bundle::{BundleOutcome, ExpireReason, ExpiredFlow, FlowDump, NetChange};
pub use cache::FlowCache;
pub use counters::{FlowCounter, FlowCounts, MAX_LANES, TableStats};
pub use error::{InstallError, InstallErrorKind, Limit};
pub use exec::{DpAction, MAX_DEPTH, MAX_LOOKUPS, MAX_OUTPUTS, MAX_STATES, MAX_VISITS, Resolved};
pub use normal::{Forward, Learned, MacEntry, MacTable, Send, for_each_send};
pub use ports::{PortInfo, PortKind, PortMap, PortMapError};

pub use trace::{Trace, TraceStep};

use exec::{Count, NoRecord, Walk};
use translate::{Op, Presence};

/// Number of tables (0..=253).
pub const N_TABLES: usize = weft_flow::MAX_TABLE as usize + 1;

/// Milliseconds on the caller's monotonic clock (the pipeline never reads a clock).
pub type Millis = u64;

/// A version number never used before in this process: cache entries are tagged with
/// it, so two snapshots built from the same base (say, by two `Pipeline::apply` calls)
/// can never be confused by a worker's cache.
pub(crate) fn next_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A compiled flow: the classifier's payload. Its match is the classifier's
/// value/mask/priority; everything else is here.
#[derive(Clone, Debug)]
pub(crate) struct FlowSlot {
    pub(crate) stats: Arc<FlowCounter>,
    pub(crate) ops: Arc<[Op]>,
    pub(crate) cookie: u64,
    pub(crate) idle_timeout: u16,
    pub(crate) hard_timeout: u16,
    pub(crate) present: Presence,
}

/// Packets dropped by the `drop` flows of one table, priority and cookie (see
/// [`Pipeline::drop_flow_counts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowDropCount {
    /// The table.
    pub table: u8,
    /// The flows' priority.
    pub priority: u16,
    /// The flows' cookie.
    pub cookie: u64,
    /// Packets they dropped.
    pub packets: u64,
}

/// One table of a snapshot.
#[derive(Clone, Debug, Default)]
pub(crate) struct Table {
    pub(crate) cls: Classifier<FlowSlot>,
    /// Flows with an idle or hard timeout (tables without any are not scanned).
    pub(crate) n_timeouts: usize,
}

/// How many flows the tables may hold. A bundle that would leave more is refused
/// whole (nothing changes) with an error that names the limit and its setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    /// Flows in all tables together (`max_flows`).
    pub max_flows: usize,
    /// Flows in any one table (`max_flows_per_table`).
    pub max_flows_per_table: usize,
}

impl FlowLimits {
    /// The default of `max_flows`: room for an Antrea-scale node's million flows twice.
    pub const DEFAULT_MAX_FLOWS: usize = 2_000_000;
    /// The default of `max_flows_per_table`.
    pub const DEFAULT_MAX_FLOWS_PER_TABLE: usize = 1_000_000;
}

impl Default for FlowLimits {
    fn default() -> Self {
        FlowLimits {
            max_flows: FlowLimits::DEFAULT_MAX_FLOWS,
            max_flows_per_table: FlowLimits::DEFAULT_MAX_FLOWS_PER_TABLE,
        }
    }
}

/// An immutable snapshot of the flow tables and the port map. See the module docs.
#[derive(Clone, Debug)]
pub struct Pipeline {
    version: u64,
    pub(crate) tables: Vec<Arc<Table>>,
    pub(crate) ports: Arc<PortMap>,
    pub(crate) arena: Arc<Arena>,
    pub(crate) flow_cells: FlowCells,
    pub(crate) table_stats: Arc<TableCells>,
    pub(crate) drops: Arc<DropCounters>,
    pub(crate) limits: FlowLimits,
}

impl Pipeline {
    /// An empty pipeline (every packet misses table 0) over `ports`, with one counter
    /// lane (one worker; see [`Pipeline::with_lanes`]).
    pub fn new(ports: PortMap) -> Pipeline {
        Pipeline::with_lanes(ports, 1)
    }

    /// An empty pipeline over `ports` whose flow and table counters have `lanes` lanes
    /// (clamped to 1..=[`MAX_LANES`]): one per worker, each written only by the
    /// [`FlowCache`] made for it ([`FlowCache::for_lane`]), summed when read. Every
    /// lane costs 16 bytes per installed flow.
    pub fn with_lanes(ports: PortMap, lanes: usize) -> Pipeline {
        let empty = Arc::new(Table::default());
        let arena = Arena::new(lanes);
        Pipeline {
            version: next_version(),
            tables: vec![empty; N_TABLES],
            ports: Arc::new(ports),
            flow_cells: FlowCells::new(&arena),
            table_stats: Arc::new(TableCells::new(arena.lanes())),
            arena,
            drops: Arc::new(DropCounters::default()),
            limits: FlowLimits::default(),
        }
    }

    /// The same snapshot with other flow limits (they hold from the next bundle on;
    /// flows already installed stay).
    pub fn with_limits(mut self, limits: FlowLimits) -> Pipeline {
        self.limits = limits;
        self
    }

    /// The flow limits bundles are checked against.
    pub fn limits(&self) -> FlowLimits {
        self.limits
    }

    /// Counter lanes (see [`Pipeline::with_lanes`]).
    pub fn lanes(&self) -> usize {
        self.arena.lanes()
    }

    /// This snapshot's version: unique in the process, and increasing along the
    /// history of a [`SharedPipeline`].
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The port map flows were resolved against.
    pub fn ports(&self) -> &PortMap {
        &self.ports
    }

    /// Counters of table `t` (every lane added up).
    pub fn table_stats(&self, t: u8) -> TableStats {
        self.table_stats.sum(t)
    }

    /// Packets and bytes of flow counter `c` (every lane added up).
    pub(crate) fn flow_counts(&self, c: &FlowCounter) -> FlowCounts {
        self.flow_cells.sum(c)
    }

    /// Drop counters (shared by all versions).
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// The packets dropped by `drop` flows (empty action lists), summed per table,
    /// priority and cookie, in that order: which flow dropped what, for the metrics
    /// (`weft_flow_drops_total`). Read from the per-flow counters the packet path
    /// already keeps, so it costs the datapath nothing; a flow replaced with other
    /// actions or deleted takes its count with it, as its `n_packets` does.
    pub fn drop_flow_counts(&self) -> Vec<FlowDropCount> {
        let mut sums: std::collections::BTreeMap<(u8, u16, u64), u64> = Default::default();
        for (t, table) in self.tables.iter().enumerate() {
            for r in table.cls.iter() {
                let slot = r.payload();
                if slot.ops.is_empty() {
                    *sums
                        .entry((t as u8, r.priority(), slot.cookie))
                        .or_default() += self.flow_counts(&slot.stats).packets;
                }
            }
        }
        sums.into_iter()
            .map(|((table, priority, cookie), packets)| FlowDropCount {
                table,
                priority,
                cookie,
                packets,
            })
            .collect()
    }

    /// Number of flows in table `t`.
    pub fn table_len(&self, t: u8) -> usize {
        self.tables.get(usize::from(t)).map_or(0, |x| x.cls.len())
    }

    /// Number of flows in all tables.
    pub fn len(&self) -> usize {
        self.tables.iter().map(|t| t.cls.len()).sum()
    }

    /// Whether no table has a flow.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next version with a different port map (every table shared).
    pub fn with_ports(&self, ports: PortMap) -> Pipeline {
        Pipeline {
            version: next_version(),
            ports: Arc::new(ports),
            ..self.clone()
        }
    }

    /// Walks `key` through the pipeline into `out` without touching any counter (the
    /// uncached slow path; [`Pipeline::process`] is what workers call).
    pub fn resolve(&self, key: &FlowKey, out: &mut Resolved) {
        out.clear();
        Walk::run(self, key, out, &mut NoRecord, Count::No);
    }

    /// The forwarding path: the resolved actions for `key` (a packet of `bytes` bytes
    /// seen at `now`), from the worker's cache or from a walk that is then cached, with
    /// flow, table and drop counters bumped. Never allocates.
    ///
    /// The caller then, for each [`DpAction`]: writes the state's header changes into
    /// the frame ([`commit::commit_at`]), and executes what [`egress::plan`] makes of
    /// the action (which runs [`normal::normal`] / [`PortMap::flood_ports`] for `normal`
    /// and `flood`).
    #[inline]
    pub fn process<'c>(
        &self,
        key: &FlowKey,
        bytes: u64,
        now: Millis,
        cache: &'c mut FlowCache,
    ) -> &'c Resolved {
        cache.process(self, key, bytes, now)
    }

    /// A drop before the pipeline (the frame did not parse), counted.
    pub fn count_drop(&self, reason: DropReason) {
        self.drops.bump(reason);
    }

    /// Applies a bundle to a copy of this snapshot: the next version, or an error naming
    /// the first bad change (this snapshot is never modified). `now` stamps new flows.
    pub fn apply(
        &self,
        bundle: &Bundle,
        now: Millis,
    ) -> Result<(Pipeline, BundleOutcome), InstallError> {
        bundle::apply(self, bundle, now).map(|(p, o, _)| (p, o))
    }

    /// [`apply`](Self::apply), also returning the bundle's [`NetChange`] (what a
    /// journal records to replay it).
    pub fn apply_net<'b>(
        &self,
        bundle: &'b Bundle,
        now: Millis,
    ) -> Result<(Pipeline, BundleOutcome, NetChange<'b>), InstallError> {
        bundle::apply(self, bundle, now)
    }

    /// Every installed flow as a `weft_flow::Flow` (ports as numbers), in table order.
    pub fn flows(&self) -> Vec<Flow> {
        self.dump(&weft_flow::FlowFilter::all(), 0)
            .map(|v| v.into_iter().map(|d| d.flow).collect())
            .unwrap_or_default()
    }
}

/// The switch's current pipeline, published with [`ArcSwap`]: readers never block and
/// never see half a bundle; writers (the control thread) are serialised.
#[derive(Debug)]
pub struct SharedPipeline {
    current: ArcSwap<Pipeline>,
    writer: Mutex<()>,
}

impl SharedPipeline {
    /// Publishes `p` as the first version.
    pub fn new(p: Pipeline) -> SharedPipeline {
        SharedPipeline {
            current: ArcSwap::from_pointee(p),
            writer: Mutex::new(()),
        }
    }

    /// The current snapshot, for a worker's batch (cheap, wait-free).
    #[inline]
    pub fn load(&self) -> Guard<Arc<Pipeline>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (for the control side).
    pub fn load_full(&self) -> Arc<Pipeline> {
        self.current.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Validates and applies a bundle, publishing it as one new version; on error
    /// nothing changes and the error names the change.
    pub fn apply(&self, bundle: &Bundle, now: Millis) -> Result<BundleOutcome, InstallError> {
        let _w = self.lock();
        let (next, outcome) = self.current.load().apply(bundle, now)?;
        self.current.store(Arc::new(next));
        Ok(outcome)
    }

    /// Validates and applies a bundle like [`SharedPipeline::apply`], but publishes the
    /// new version only if `accept` (given it and the bundle's net change, e.g. to
    /// journal it) succeeds; otherwise nothing changes and `accept`'s error is returned.
    pub fn apply_then<'b, E: From<InstallError>>(
        &self,
        bundle: &'b Bundle,
        now: Millis,
        accept: impl FnOnce(&Pipeline, NetChange<'b>) -> Result<(), E>,
    ) -> Result<BundleOutcome, E> {
        let _w = self.lock();
        let (next, outcome, net) = self.current.load().apply_net(bundle, now)?;
        accept(&next, net)?;
        self.current.store(Arc::new(next));
        Ok(outcome)
    }

    /// Publishes a new port map (a new version sharing every table). Returns the version.
    pub fn set_ports(&self, ports: PortMap) -> u64 {
        let _w = self.lock();
        let next = self.current.load().with_ports(ports);
        let v = next.version();
        self.current.store(Arc::new(next));
        v
    }

    /// Removes flows whose idle or hard timeout passed at `now`, publishing a new
    /// version if any did; returns what was removed.
    pub fn expire(&self, now: Millis) -> Vec<ExpiredFlow> {
        let _w = self.lock();
        match self.current.load().expire(now) {
            Some((next, gone)) => {
                self.current.store(Arc::new(next));
                gone
            }
            None => Vec::new(),
        }
    }
}
