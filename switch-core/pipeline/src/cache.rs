//! A worker's cache of resolved action lists, in front of the table walk.
//!
//! An [`Emc`] maps the full [`FlowKey`] (tagged with the pipeline version) to a slot of
//! a preallocated array of [`Resolved`] lists, plus the slot's generation. Slots are
//! reused round-robin; reusing one bumps its generation, so an EMC entry that still
//! points at a reused slot no longer matches and is a miss. Nothing is allocated after
//! construction: a hit is one EMC probe, one generation compare and the counter bumps.

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
    hits: u64,
    misses: u64,
}

impl std::fmt::Debug for FlowCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowCache")
            .field("slots", &self.slots.len())
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
    /// A cache of `entries` keys (rounded up to a power of two); allocates everything
    /// now (about 1 KB per entry).
    pub fn new(entries: usize) -> FlowCache {
        let emc = Emc::new(entries);
        let n = emc.capacity();
        FlowCache {
            emc,
            slots: (0..n).map(|_| Resolved::default()).collect(),
            gens: vec![0; n].into_boxed_slice(),
            next: 0,
            hits: 0,
            misses: 0,
        }
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
        if let Some(v) = self.emc.lookup(key, hash, version) {
            let (slot, generation) = ((v >> 32) as usize, v as u32);
            if slot < self.slots.len() && self.gens[slot] == generation {
                self.hits += 1;
                let r = &self.slots[slot];
                r.account(p, bytes, now);
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
        Walk::run(p, key, r, &mut NoRecord, Count::Yes { bytes, now });
        r.account(p, bytes, now);
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
