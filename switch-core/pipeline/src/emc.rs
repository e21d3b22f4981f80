//! The per-worker exact-match cache (EMC) in front of the classifiers.
//!
//! Each worker owns one [`Emc`]: a fixed array of entries, allocated once, that maps a
//! full [`FlowKey`] to a small `Copy` value (the pipeline stores a handle to the resolved
//! action list of the whole table walk). A hit skips every classifier lookup of the walk.
//!
//! - **Exact**: an entry matches only a key equal in every bit (a word compare of the 20
//!   words), so it can never be wrong about which flows a packet matches: it is only a
//!   memo of a previous walk.
//! - **Versioned**: every entry carries the pipeline version it was computed against. A
//!   bundle publishes a new version; from then on old entries miss (and are overwritten
//!   as traffic refills them), so a cached decision never outlives the flows it came
//!   from. Nothing has to be flushed across threads.
//! - **2-way set associative**: a key may live in one of two slots picked by different
//!   bits of its hash (as OVS's EMC does with hash segments). Insert prefers the slot that
//!   already holds the key, then an empty or stale one, then evicts one chosen by a hash
//!   bit. Two hot flows whose first slots collide can both stay cached.
//! - **No allocation after construction**, no locks: the cache is per worker.
//!
//! The caller computes the key's hash once ([`FlowKey::hash`]) and passes it to both
//! [`Emc::lookup`] and [`Emc::insert`] on a miss.

use crate::flow_key::FlowKey;

/// Number of entries a worker's cache has by default (as OVS's EMC).
pub const DEFAULT_ENTRIES: usize = 8192;

#[derive(Clone, Copy)]
struct Entry<V: Copy> {
    key: FlowKey,
    /// `version + 1` of the pipeline the value was computed against; 0 = empty.
    tag: u64,
    /// Low 32 bits of the key's hash: a cheap filter before the full compare.
    hash: u32,
    value: V,
}

/// A fixed-size, versioned exact-match cache from [`FlowKey`] to a small `Copy` value.
pub struct Emc<V: Copy> {
    entries: Box<[Entry<V>]>,
    mask: usize,
}

impl<V: Copy + Default> Emc<V> {
    /// A cache of `entries` slots, rounded up to a power of two (at least 2). The only
    /// allocation the cache ever makes.
    pub fn new(entries: usize) -> Self {
        let n = entries.max(2).next_power_of_two();
        let empty = Entry {
            key: FlowKey::ZERO,
            tag: 0,
            hash: 0,
            value: V::default(),
        };
        Emc {
            entries: vec![empty; n].into_boxed_slice(),
            mask: n - 1,
        }
    }
}

impl<V: Copy + Default> Default for Emc<V> {
    fn default() -> Self {
        Emc::new(DEFAULT_ENTRIES)
    }
}

impl<V: Copy> Emc<V> {
    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// The two candidate slots of a hash (always different).
    #[inline(always)]
    fn slots(&self, hash: u64) -> (usize, usize) {
        let a = hash as usize & self.mask;
        let mut b = (hash >> 32) as usize & self.mask;
        if b == a {
            b = a ^ 1;
        }
        (a, b)
    }

    #[inline(always)]
    fn is(&self, i: usize, key: &FlowKey, hash: u64, tag: u64) -> bool {
        let e = &self.entries[i];
        e.tag == tag && e.hash == hash as u32 && e.key == *key
    }

    /// The value cached for `key` at pipeline `version`, if any. `hash` must be
    /// `key.hash()`. A version of `u64::MAX` never hits.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, hash: u64, version: u64) -> Option<V> {
        let tag = version.wrapping_add(1);
        if tag == 0 {
            return None;
        }
        let (a, b) = self.slots(hash);
        if self.is(a, key, hash, tag) {
            return Some(self.entries[a].value);
        }
        if self.is(b, key, hash, tag) {
            return Some(self.entries[b].value);
        }
        None
    }

    /// [`Emc::lookup`] that computes the hash itself.
    #[inline]
    pub fn get(&self, key: &FlowKey, version: u64) -> Option<V> {
        self.lookup(key, key.hash(), version)
    }

    /// Caches `value` for `key` at pipeline `version`, overwriting the key's old entry, an
    /// empty or stale slot, or else one of its two slots. `hash` must be `key.hash()`.
    #[inline]
    pub fn insert(&mut self, key: &FlowKey, hash: u64, version: u64, value: V) {
        let tag = version.wrapping_add(1);
        let (a, b) = self.slots(hash);
        let same_key = |e: &Entry<V>| e.tag != 0 && e.hash == hash as u32 && e.key == *key;
        let i = if same_key(&self.entries[a]) {
            a
        } else if same_key(&self.entries[b]) {
            b
        } else if self.entries[a].tag != tag {
            a
        } else if self.entries[b].tag != tag {
            b
        } else if hash >> 63 == 0 {
            a
        } else {
            b
        };
        self.entries[i] = Entry {
            key: *key,
            tag,
            hash: hash as u32,
            value,
        };
    }

    /// Empties the cache (no reallocation).
    pub fn clear(&mut self) {
        for e in self.entries.iter_mut() {
            e.tag = 0;
        }
    }

    /// Number of entries valid at `version` (for statistics; walks the whole array).
    pub fn count_valid(&self, version: u64) -> usize {
        let tag = version.wrapping_add(1);
        self.entries
            .iter()
            .filter(|e| tag != 0 && e.tag == tag)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow_key::Field;

    fn key(n: u32) -> FlowKey {
        let mut k = FlowKey::ZERO;
        k.set_in_port(1);
        k.set(Field::NwDst, n as u128);
        k.set_tp_dst(80);
        k
    }

    #[test]
    fn hit_after_insert() {
        let mut emc: Emc<u32> = Emc::new(64);
        let k = key(1);
        assert_eq!(emc.get(&k, 7), None);
        emc.insert(&k, k.hash(), 7, 42);
        assert_eq!(emc.get(&k, 7), Some(42));
        // Re-insert overwrites.
        emc.insert(&k, k.hash(), 7, 43);
        assert_eq!(emc.get(&k, 7), Some(43));
        assert_eq!(emc.count_valid(7), 1);
    }

    #[test]
    fn miss_on_version_change() {
        let mut emc: Emc<u32> = Emc::new(64);
        let k = key(1);
        emc.insert(&k, k.hash(), 7, 42);
        assert_eq!(emc.get(&k, 8), None);
        assert_eq!(emc.get(&k, 6), None);
        emc.insert(&k, k.hash(), 8, 50);
        assert_eq!(emc.get(&k, 8), Some(50));
        assert_eq!(emc.get(&k, 7), None);
        // The reserved version never hits.
        emc.insert(&k, k.hash(), u64::MAX, 1);
        assert_eq!(emc.get(&k, u64::MAX), None);
    }

    #[test]
    fn miss_on_different_key() {
        let mut emc: Emc<u32> = Emc::new(64);
        let k = key(1);
        emc.insert(&k, k.hash(), 1, 42);
        let mut other = k;
        other.set_tp_src(1); // one field differs
        assert_eq!(emc.get(&other, 1), None);
        // Same hash passed in, different key: the full compare still rejects it.
        assert_eq!(emc.lookup(&other, k.hash(), 1), None);
        assert_eq!(emc.get(&FlowKey::ZERO, 1), None);
    }

    #[test]
    fn two_ways_keep_colliding_keys() {
        let mut emc: Emc<u32> = Emc::new(2);
        assert_eq!(emc.capacity(), 2);
        // With two slots every key has both slots as candidates: two keys fit.
        let (k1, k2, k3) = (key(1), key(2), key(3));
        emc.insert(&k1, k1.hash(), 0, 1);
        emc.insert(&k2, k2.hash(), 0, 2);
        assert_eq!(emc.get(&k1, 0), Some(1));
        assert_eq!(emc.get(&k2, 0), Some(2));
        // A third evicts exactly one of them.
        emc.insert(&k3, k3.hash(), 0, 3);
        assert_eq!(emc.get(&k3, 0), Some(3));
        let left = [emc.get(&k1, 0), emc.get(&k2, 0)];
        assert_eq!(left.iter().filter(|x| x.is_some()).count(), 1);
        // Stale entries are replaced before fresh ones.
        emc.insert(&k1, k1.hash(), 1, 10);
        emc.insert(&k2, k2.hash(), 1, 20);
        assert_eq!((emc.get(&k1, 1), emc.get(&k2, 1)), (Some(10), Some(20)));
    }

    #[test]
    fn capacity_and_clear() {
        let mut emc: Emc<u64> = Emc::new(5000);
        assert_eq!(emc.capacity(), 8192);
        assert_eq!(Emc::<u64>::default().capacity(), DEFAULT_ENTRIES);
        for n in 0..1000 {
            let k = key(n);
            emc.insert(&k, k.hash(), 3, n as u64);
        }
        let hits = (0..1000)
            .filter(|&n| emc.get(&key(n), 3) == Some(n as u64))
            .count();
        assert!(
            hits > 950,
            "2-way cache of 8192 should keep almost all of 1000 keys: {hits}"
        );
        emc.clear();
        assert_eq!(emc.count_valid(3), 0);
        assert_eq!(emc.get(&key(0), 3), None);
    }
}
