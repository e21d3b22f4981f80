//! Flow and table counters, one lane per worker, summed when read (as Open vSwitch's
//! per-thread statistics).
//!
//! A pipeline is built for a number of *lanes* (the datapath makes one per worker, and
//! each worker's [`FlowCache`](crate::FlowCache) writes only its own lane). A lane has
//! a single writer, so a bump is a relaxed load and store, not a locked
//! read-modify-write, and no two workers ever write the same cache line: every lane's
//! cells start on a cache line of their own.
//!
//! - **Flows.** Each installed flow has a small id (its [`FlowCounter`], shared by every
//!   version the flow lives in). Packets and bytes live in dense per-lane arrays
//!   indexed by that id, 16 bytes per flow per lane, in chunks of [`CHUNK_IDS`] ids
//!   that the control thread allocates when ids run out. The chunk list is published
//!   with each pipeline version; chunks never move, so counts written through an older
//!   version are not lost. An id is given back when the last version holding its flow
//!   is dropped (no worker can still count against it: a worker counts only through a
//!   version it holds, and a cached result only for the version it was made in), and
//!   zeroed when reused. Giving it back takes the arena's lock; that happens where the
//!   last reference to an old version goes (the datapath hands the versions its
//!   workers leave to a reclaimer thread, so that is not a worker), once per flow of
//!   that version, as freeing the version's memory already is.
//!   Last-used time is one word per flow, stored only when it moves forward (at most
//!   once per millisecond per flow), so it costs no cache-line traffic per packet.
//! - **Tables.** Lookups and matches per table per lane, one block of 254 × 16 bytes
//!   per lane, shared by every version.
//!
//! Readers (dump-flows, stats, the metrics, timeouts) add the lanes up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Millis, N_TABLES};

/// Flow ids per chunk of counters.
pub const CHUNK_IDS: usize = 4096;
/// Most lanes a pipeline can have (the datapath's most workers).
pub const MAX_LANES: usize = 256;

/// Packets and bytes, one lane's share.
#[derive(Debug, Default)]
pub(crate) struct Cell {
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// Four cells, one cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Line([Cell; 4]);

const LINES_PER_LANE: usize = CHUNK_IDS / 4;

/// The cells of [`CHUNK_IDS`] flows in every lane: lane after lane, each starting on a
/// cache line.
pub(crate) type Chunk = Arc<[Line]>;

/// Adds `n` in a lane that has one writer: a plain load and store.
#[inline(always)]
fn add(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// The id space and the chunks of one pipeline's history (every version shares it).
#[derive(Debug)]
pub(crate) struct Arena {
    lanes: usize,
    inner: Mutex<ArenaInner>,
}

#[derive(Debug)]
struct ArenaInner {
    chunks: Vec<Chunk>,
    /// The chunk list as versions publish it (rebuilt when a chunk is added).
    published: Arc<[Chunk]>,
    next: u32,
    free: Vec<u32>,
}

impl Arena {
    pub(crate) fn new(lanes: usize) -> Arc<Arena> {
        Arc::new(Arena {
            lanes: lanes.clamp(1, MAX_LANES),
            inner: Mutex::new(ArenaInner {
                chunks: Vec::new(),
                published: Arc::from(Vec::new()),
                next: 0,
                free: Vec::new(),
            }),
        })
    }

    pub(crate) fn lanes(&self) -> usize {
        self.lanes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ArenaInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The chunk list to publish with a new version: it covers every id handed out.
    pub(crate) fn chunks(&self) -> Arc<[Chunk]> {
        self.lock().published.clone()
    }

    /// A fresh counter (all lanes zero) for a flow installed at `now`.
    pub(crate) fn counter(self: &Arc<Arena>, now: Millis) -> Arc<FlowCounter> {
        let mut g = self.lock();
        let id = match g.free.pop() {
            Some(id) => {
                // Its last writer let go before it was freed: zero it for the new flow.
                let (ci, li, k) = place(id);
                for lane in 0..self.lanes {
                    let c = &g.chunks[ci][lane * LINES_PER_LANE + li].0[k];
                    c.packets.store(0, Ordering::Relaxed);
                    c.bytes.store(0, Ordering::Relaxed);
                }
                id
            }
            None => {
                let id = g.next;
                g.next += 1;
                if place(id).0 == g.chunks.len() {
                    let chunk: Chunk = (0..self.lanes * LINES_PER_LANE)
                        .map(|_| Line::default())
                        .collect();
                    g.chunks.push(chunk);
                    g.published = g.chunks.as_slice().into();
                }
                id
            }
        };
        Arc::new(FlowCounter {
            id,
            created: now,
            last_used: AtomicU64::new(now),
            arena: Arc::clone(self),
        })
    }

    /// Ids in use (handed out and not given back).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        let g = self.lock();
        g.next as usize - g.free.len()
    }
}

/// Chunk, line within a lane, and cell of an id.
#[inline(always)]
fn place(id: u32) -> (usize, usize, usize) {
    let id = id as usize;
    (id / CHUNK_IDS, (id % CHUNK_IDS) / 4, id % 4)
}

/// One flow's counter identity: its id in the lanes, install time, last-used time.
/// Shared (`Arc`) by every version the flow lives in; the id is given back when the
/// last one is dropped.
#[derive(Debug)]
pub struct FlowCounter {
    id: u32,
    created: Millis,
    last_used: AtomicU64,
    arena: Arc<Arena>,
}

impl Drop for FlowCounter {
    fn drop(&mut self) {
        self.arena.lock().free.push(self.id);
    }
}

impl FlowCounter {
    #[inline(always)]
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// When the flow last matched a packet (its install time if never).
    pub fn last_used(&self) -> Millis {
        self.last_used.load(Ordering::Relaxed)
    }

    /// When the flow was installed.
    pub fn created(&self) -> Millis {
        self.created
    }

    /// Notes a match at `now` (stored only when time moved forward).
    #[inline(always)]
    pub(crate) fn touch(&self, now: Millis) {
        if self.last_used.load(Ordering::Relaxed) < now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }
}

/// A flow's counters summed over the lanes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// Packets that matched the flow.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
}

/// The per-lane flow cells of one version (the chunks it publishes).
#[derive(Clone, Debug)]
pub(crate) struct FlowCells {
    chunks: Arc<[Chunk]>,
    lanes: usize,
}

impl FlowCells {
    pub(crate) fn new(arena: &Arena) -> FlowCells {
        FlowCells {
            chunks: arena.chunks(),
            lanes: arena.lanes(),
        }
    }

    /// The lane a cache made for `lane` writes: itself, wrapped around past the last.
    #[inline(always)]
    pub(crate) fn lane(&self, lane: usize) -> usize {
        if lane < self.lanes {
            lane
        } else {
            lane % self.lanes
        }
    }

    /// Counts a packet of `bytes` bytes against flow `id` in `lane` (which must have
    /// one writer). An id outside the published chunks (not possible for a flow of this
    /// version) counts nothing rather than panic.
    #[inline(always)]
    pub(crate) fn bump(&self, lane: usize, id: u32, bytes: u64) {
        let (ci, li, k) = place(id);
        if let Some(chunk) = self.chunks.get(ci)
            && let Some(line) = chunk.get(lane * LINES_PER_LANE + li)
        {
            let c = &line.0[k];
            add(&c.packets, 1);
            add(&c.bytes, bytes);
        }
    }

    /// Flow `c`'s counts, every lane added up.
    pub(crate) fn sum(&self, c: &FlowCounter) -> FlowCounts {
        let (ci, li, k) = place(c.id);
        let mut out = FlowCounts::default();
        if let Some(chunk) = self.chunks.get(ci) {
            for lane in 0..self.lanes {
                let cell = &chunk[lane * LINES_PER_LANE + li].0[k];
                out.packets = out
                    .packets
                    .wrapping_add(cell.packets.load(Ordering::Relaxed));
                out.bytes = out.bytes.wrapping_add(cell.bytes.load(Ordering::Relaxed));
            }
        }
        out
    }
}

/// One table's counters in one lane.
#[derive(Debug, Default)]
struct TableCell {
    lookups: AtomicU64,
    matches: AtomicU64,
}

/// Every table's counters in one lane (starting on a cache line of its own).
#[derive(Debug)]
#[repr(align(64))]
struct TableLane([TableCell; N_TABLES]);

/// Table counters, one block per lane, shared by every version.
#[derive(Debug)]
pub(crate) struct TableCells {
    lanes: Box<[TableLane]>,
}

impl TableCells {
    pub(crate) fn new(lanes: usize) -> TableCells {
        TableCells {
            lanes: (0..lanes.clamp(1, MAX_LANES))
                .map(|_| TableLane(std::array::from_fn(|_| TableCell::default())))
                .collect(),
        }
    }

    /// Counts a lookup in `table` by `lane` (one writer per lane), and a match if
    /// `matched`.
    #[inline(always)]
    pub(crate) fn bump(&self, lane: usize, table: u8, matched: bool) {
        if let Some(l) = self.lanes.get(lane) {
            let c = &l.0[usize::from(table)];
            add(&c.lookups, 1);
            if matched {
                add(&c.matches, 1);
            }
        }
    }

    /// Table `t`'s counters, every lane added up.
    pub(crate) fn sum(&self, t: u8) -> TableStats {
        let mut s = TableStats::default();
        for l in self.lanes.iter() {
            let c = &l.0[usize::from(t)];
            s.lookups = s.lookups.wrapping_add(c.lookups.load(Ordering::Relaxed));
            s.matches = s.matches.wrapping_add(c.matches.load(Ordering::Relaxed));
        }
        s
    }
}

/// Counters of one table (every lane added up when read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    lookups: u64,
    matches: u64,
}

impl TableStats {
    /// Lookups in the table.
    pub fn lookups(&self) -> u64 {
        self.lookups
    }

    /// Lookups that matched a flow.
    pub fn matches(&self) -> u64 {
        self.matches
    }

    /// Lookups that matched nothing.
    pub fn misses(&self) -> u64 {
        self.lookups.saturating_sub(self.matches)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use weft_flow::{Bundle, FlowFilter, FlowMod, parse_flow};

    use crate::flow_key::FlowKey;
    use crate::{FlowCache, Pipeline, PortKind, PortMap, SharedPipeline};

    fn ports() -> PortMap {
        PortMap::new()
            .with(1, "pod1", PortKind::Tap)
            .and_then(|m| m.with(2, "pod2", PortKind::Tap))
            .unwrap()
    }

    fn adds(flows: &[&str]) -> Bundle {
        Bundle::new(
            flows
                .iter()
                .map(|t| FlowMod::Add {
                    flow: parse_flow(t).unwrap(),
                })
                .collect(),
        )
    }

    fn key(dst: u8) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set_in_port(1);
        k.set_dl_type(0x0800);
        k.set_nw_src(Ipv4Addr::new(198, 19, 1, 2));
        k.set_nw_dst(Ipv4Addr::new(198, 19, 2, dst));
        k.set_nw_proto(6);
        k
    }

    /// (packets, bytes) of every flow, in dump order.
    fn counts(p: &Pipeline) -> Vec<(u64, u64)> {
        p.dump(&FlowFilter::all(), 0)
            .unwrap()
            .iter()
            .map(|d| (d.packets, d.bytes))
            .collect()
    }

    #[test]
    fn workers_count_in_their_own_lanes_and_reads_add_them_up() {
        let shared = SharedPipeline::new(Pipeline::with_lanes(ports(), 2));
        shared
            .apply(
                &adds(&[
                    "table=0,ip actions=goto_table:1",
                    "table=1,ip actions=output:2",
                ]),
                0,
            )
            .unwrap();
        std::thread::scope(|s| {
            for lane in 0..2 {
                let shared = &shared;
                s.spawn(move || {
                    let mut cache = FlowCache::for_lane(64, lane);
                    for i in 0..10_000u64 {
                        let p = shared.load();
                        p.process(&key((i % 3) as u8 + 1), 100 + lane as u64, 5, &mut cache);
                    }
                });
            }
        });
        let p = shared.load_full();
        assert_eq!(counts(&p), vec![(20_000, 2_010_000), (20_000, 2_010_000)]);
        assert_eq!(p.table_stats(0).lookups(), 20_000);
        assert_eq!(p.table_stats(1).matches(), 20_000);
        assert_eq!(p.table_stats(1).misses(), 0);
        // The lanes of one flow, and of one table, are on different cache lines.
        let cells = &p.flow_cells;
        let line_of = |lane: usize| {
            let (ci, li, k) = super::place(0);
            &cells.chunks[ci][lane * super::LINES_PER_LANE + li].0[k] as *const _ as usize / 64
        };
        assert_ne!(line_of(0), line_of(1));
        let t = |lane: usize| &p.table_stats.lanes[lane].0[253] as *const _ as usize / 64;
        let t0 = |lane: usize| &p.table_stats.lanes[lane].0[0] as *const _ as usize / 64;
        assert!(t(0) < t0(1), "table lanes overlap a cache line");
    }

    #[test]
    fn a_lane_past_the_last_wraps_around() {
        let p = Pipeline::with_lanes(ports(), 2)
            .apply(&adds(&["ip actions=output:2"]), 0)
            .unwrap()
            .0;
        let mut cache = FlowCache::for_lane(16, 7);
        p.process(&key(1), 60, 0, &mut cache);
        assert_eq!(counts(&p), vec![(1, 60)]);
        assert_eq!(Pipeline::with_lanes(ports(), 0).lanes(), 1);
        assert_eq!(
            Pipeline::with_lanes(ports(), 100_000).lanes(),
            super::MAX_LANES
        );
    }

    #[test]
    fn an_id_is_reused_only_when_no_version_holds_its_flow_and_starts_at_zero() {
        let shared = SharedPipeline::new(Pipeline::with_lanes(ports(), 2));
        shared
            .apply(&adds(&["ip,nw_dst=198.19.2.1 actions=output:2"]), 0)
            .unwrap();
        let mut cache = FlowCache::for_lane(16, 1);
        let old = shared.load_full();
        old.process(&key(1), 10, 1, &mut cache);
        // Replace the flow by another (different actions: new counters).
        shared
            .apply(&adds(&["ip,nw_dst=198.19.2.1 actions=output:1"]), 2)
            .unwrap();
        let new = shared.load_full();
        assert_ne!(
            old.tables[0]
                .cls
                .iter()
                .next()
                .unwrap()
                .payload()
                .stats
                .id(),
            new.tables[0]
                .cls
                .iter()
                .next()
                .unwrap()
                .payload()
                .stats
                .id(),
            "the old version still holds the old flow"
        );
        // A worker still on the old version counts against the old flow only.
        old.process(&key(1), 10, 3, &mut cache);
        assert_eq!(counts(&old), vec![(2, 20)]);
        assert_eq!(counts(&new), vec![(0, 0)]);
        assert_eq!(new.arena.live(), 2);
        // Once nothing holds the old version, its id goes back and is reused, zeroed.
        drop(old);
        cache.clear();
        assert_eq!(new.arena.live(), 1);
        shared
            .apply(&adds(&["ip,nw_dst=198.19.2.2 actions=output:2"]), 4)
            .unwrap();
        let p = shared.load_full();
        assert_eq!(p.arena.live(), 2);
        assert_eq!(counts(&p), vec![(0, 0), (0, 0)]);
        assert_eq!(p.arena.lock().next, 2, "the freed id was reused");
    }

    #[test]
    fn churn_does_not_grow_the_counters() {
        let shared = SharedPipeline::new(Pipeline::with_lanes(ports(), 4));
        let flows: Vec<String> = (1..=50)
            .map(|i| format!("ip,nw_dst=198.19.3.{i} actions=output:2"))
            .collect();
        let texts: Vec<&str> = flows.iter().map(String::as_str).collect();
        for _ in 0..200 {
            shared.apply(&adds(&texts), 0).unwrap();
            shared
                .apply(
                    &Bundle::new(vec![FlowMod::Delete {
                        filter: FlowFilter::all(),
                    }]),
                    0,
                )
                .unwrap();
        }
        let p = shared.load_full();
        assert_eq!(p.arena.live(), 0);
        let g = p.arena.lock();
        assert!(g.next <= 100, "{} ids handed out for 50 flows", g.next);
        assert_eq!(g.chunks.len(), 1);
    }

    #[test]
    fn idle_timeout_sees_matches_in_any_lane() {
        let shared = SharedPipeline::new(Pipeline::with_lanes(ports(), 3));
        shared
            .apply(&adds(&["idle_timeout=1,ip actions=output:2"]), 0)
            .unwrap();
        let mut cache = FlowCache::for_lane(16, 2);
        shared.load().process(&key(1), 10, 900, &mut cache);
        assert!(
            shared.expire(1500).is_empty(),
            "used at 900 ms: idle for 600 ms only"
        );
        let gone = shared.expire(1900);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].flow.packets, gone[0].flow.bytes), (1, 10));
    }
}
