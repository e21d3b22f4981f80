//! A worker's cache of resolved action lists, in front of the table walk.
//!
//! An [`Emc`] maps the full [`FlowKey`] (tagged with the pipeline version) to a slot of
//! a preallocated array of [`Resolved`] lists, plus the slot's generation. Slots are
//! reused round-robin; reusing one bumps its generation, so an EMC entry that still
//! points at a reused slot no longer matches and is a miss. Nothing is allocated after
//! construction: a hit is one EMC probe, one generation compare and the counter bumps.
//!
//! A cache belongs to one worker and counts in that worker's lane of the pipeline's
//! counters ([`counters`](crate::counters)): the datapath makes each worker's cache
//! with [`FlowCache::for_lane`] and its own worker number.

use crate::emc::{DEFAULT_ENTRIES, Emc};
use crate::flow_key::FlowKey;

use super::exec::{Count, NoRecord, Resolved, Walk};
use super::{Millis, Pipeline};

/// A per-worker cache of resolved action lists. Not shared between threads.
pub struct FlowCache {
    emc: Emc<u64>,
    slots: Box<[Resolved]>,
    gens: Box<[u32]>,
    next: usize,
    lane: usize,
    hits: u64,
    misses: u64,
}

impl std::fmt::Debug for FlowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowCache")
            .field("slots", &self.slots.len())
            .field("lane", &self.lane)
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .finish()
    }
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache::new(DEFAULT_ENTRIES)
    }
}

impl FlowCache {
    /// A cache of `entries` keys (rounded up to a power of two) counting in lane 0;
    /// allocates everything now (about 1 KB per entry).
    pub fn new(entries: usize) -> FlowCache {
        FlowCache::for_lane(entries, 0)
    }

    /// A cache of `entries` keys for the worker that owns counter lane `lane` (see
    /// [`Pipeline::with_lanes`]). Two caches used from different threads at once must
    /// have different lanes, or some of their counts are lost (never more than that: a
    /// lane at or past the pipeline's lanes wraps around).
    pub fn for_lane(entries: usize, lane: usize) -> FlowCache {
        let emc = Emc::new(entries);
        let n = emc.capacity();
        FlowCache {
            emc,
            slots: (0..n).map(|_| Resolved::default()).collect(),
            gens: vec![0; n].into_boxed_slice(),
            next: 0,
            lane,
            hits: 0,
            misses: 0,
        }
    }

    /// The counter lane this cache writes.
    pub fn lane(&self) -> usize {
        self.lane
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that walked the tables.
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Forgets every entry and releases the flow references the slots hold (e.g. when
    /// the worker goes idle, so old versions can be freed).
    pub fn clear(&mut self) {
        self.emc.clear();
        for (s, g) in self.slots.iter_mut().zip(self.gens.iter_mut()) {
            s.clear();
            *g = g.wrapping_add(1);
        }
    }

    /// See [`Pipeline::process`].
    #[inline]
    pub(crate) fn process(
        &mut self,
        p: &Pipeline,
        key: &FlowKey,
        bytes: u64,
        now: Millis,
    ) -> &Resolved {
        let hash = key.hash();
        let version = p.version();
        let lane = p.flow_cells.lane(self.lane);
        if let Some(v) = self.emc.lookup(key, hash, version) {
            let (slot, generation) = ((v >> 32) as usize, v as u32);
            if slot < self.slots.len() && self.gens[slot] == generation {
                self.hits += 1;
                let r = &self.slots[slot];
                r.account(p, lane, bytes, now);
                return r;
            }
        }
        self.misses += 1;
        let slot = self.next;
        self.next = (slot + 1) & (self.slots.len() - 1);
        let generation = self.gens[slot].wrapping_add(1);
        self.gens[slot] = generation;
        let r = &mut self.slots[slot];
        r.clear();
        Walk::run(p, key, r, &mut NoRecord, Count::Yes { lane, bytes, now });
        r.account(p, lane, bytes, now);
        if r.is_cacheable() {
            self.emc.insert(
                key,
                hash,
                version,
                ((slot as u64) << 32) | u64::from(generation),
            );
        }
        &self.slots[slot]
    }
}
