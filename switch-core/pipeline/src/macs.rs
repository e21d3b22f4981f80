//! The MAC table of the `normal` action, shared by every worker without locks.
//!
//! Same policy as [`crate::MacTable`] (set-associative, scoped per VNI, ageing,
//! least-recently-seen eviction when a set is full, counted), but every set is guarded by
//! a sequence counter instead of `&mut`:
//!
//! - Readers (forwarding lookups, `fdb-show`) read a set between two loads of its
//!   counter and retry if a writer was inside; they never wait for one.
//! - A writer (learning) enters a set by bumping its counter from even to odd with a
//!   compare-and-swap. If another worker is inside the same set at that moment, this one
//!   simply does not learn from this packet: learning is best-effort by nature and the
//!   next packet of the host tries again. Nobody ever blocks.
//! - A known host whose entry is fresh (seen on the same port within the last second)
//!   is not written at all, so steady traffic reads the table and never bounces its
//!   cache lines between cores.
//!
//! The forwarding decision itself is [`crate::normal::normal`], the same
//! function the single-owner table uses, through [`MacLookup`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::PortMap;
use crate::flow_key::{FlowKey, mac_to_u64, u64_to_mac};
use crate::normal::{Learned, MacEntry, MacLookup, WAYS};

/// Entries seen on the same port more recently than this are not rewritten.
const REFRESH_MS: u64 = 1000;
const USED: u64 = 1 << 63;

#[derive(Default)]
struct Slot {
    mac: AtomicU64,
    vni: AtomicU64,
    port: AtomicU32,
    last_seen: AtomicU64,
    remote_hi: AtomicU64,
    remote_lo: AtomicU64,
}

#[derive(Clone, Copy, Default)]
struct Entry {
    mac: u64,
    vni: u64,
    port: u32,
    last_seen: u64,
    remote: u128,
}

impl Slot {
    fn read(&self) -> Entry {
        Entry {
            mac: self.mac.load(Ordering::Relaxed),
            vni: self.vni.load(Ordering::Relaxed),
            port: self.port.load(Ordering::Relaxed),
            last_seen: self.last_seen.load(Ordering::Relaxed),
            remote: (u128::from(self.remote_hi.load(Ordering::Relaxed)) << 64)
                | u128::from(self.remote_lo.load(Ordering::Relaxed)),
        }
    }

    fn write(&self, e: &Entry) {
        self.mac.store(e.mac, Ordering::Relaxed);
        self.vni.store(e.vni, Ordering::Relaxed);
        self.port.store(e.port, Ordering::Relaxed);
        self.last_seen.store(e.last_seen, Ordering::Relaxed);
        self.remote_hi
            .store((e.remote >> 64) as u64, Ordering::Relaxed);
        self.remote_lo.store(e.remote as u64, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct Set {
    seq: AtomicU32,
    ways: [Slot; WAYS],
}

impl Set {
    /// A consistent copy of the set, or `None` if writers kept it busy.
    fn snapshot(&self) -> Option<[Entry; WAYS]> {
        for _ in 0..8 {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let out: [Entry; WAYS] = std::array::from_fn(|i| self.ways[i].read());
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return Some(out);
            }
        }
        None
    }
}

/// A bounded, ageing MAC table shared by all workers. See the module docs.
pub struct SharedMacTable {
    sets: Box<[Set]>,
    set_mask: usize,
    ageing_ms: u64,
    evictions: AtomicU64,
    moves: AtomicU64,
    contended: AtomicU64,
}

impl std::fmt::Debug for SharedMacTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMacTable")
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl SharedMacTable {
    /// A table of at least `capacity` entries whose entries age out after `ageing_ms`.
    pub fn new(capacity: usize, ageing_ms: u64) -> SharedMacTable {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        SharedMacTable {
            sets: (0..sets).map(|_| Set::default()).collect(),
            set_mask: sets - 1,
            ageing_ms,
            evictions: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            contended: AtomicU64::new(0),
        }
    }

    /// Entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Entries evicted because their set was full.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Hosts that moved to another port.
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::Relaxed)
    }

    /// Learning attempts skipped because another worker was writing the same set.
    pub fn contended(&self) -> u64 {
        self.contended.load(Ordering::Relaxed)
    }

    fn set(&self, vni: u64, mac: u64) -> &Set {
        let h = crate::flow_key::hash_words(&[vni, mac]);
        &self.sets[(h as usize) & self.set_mask]
    }

    fn live(&self, e: &Entry, now: u64) -> bool {
        e.mac & USED != 0 && now.saturating_sub(e.last_seen) < self.ageing_ms
    }

    /// Where `mac` in `vni` was last seen: `(port, tunnel peer)`.
    pub fn lookup(&self, vni: u64, mac: [u8; 6], now: u64) -> Option<(u32, u128)> {
        let m = mac_to_u64(mac) | USED;
        let ways = self.set(vni, m).snapshot()?;
        ways.iter()
            .find(|e| e.mac == m && e.vni == vni && self.live(e, now))
            .map(|e| (e.port, e.remote))
    }

    /// Learns that `mac` in `vni` is behind `port` (and tunnel peer `remote`).
    pub fn learn_mac(&self, vni: u64, mac: [u8; 6], port: u32, remote: u128, now: u64) -> Learned {
        if mac[0] & 1 != 0 {
            return Learned::Ignored;
        }
        let m = mac_to_u64(mac) | USED;
        let set = self.set(vni, m);
        if let Some(ways) = set.snapshot()
            && ways.iter().any(|e| {
                e.mac == m
                    && e.vni == vni
                    && e.port == port
                    && e.remote == remote
                    && now.saturating_sub(e.last_seen) < REFRESH_MS
            })
        {
            return Learned::Refreshed;
        }
        let s = set.seq.load(Ordering::Relaxed);
        if s & 1 == 1
            || set
                .seq
                .compare_exchange(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            self.contended.fetch_add(1, Ordering::Relaxed);
            return Learned::Ignored;
        }
        fence(Ordering::Release);
        let new = Entry {
            mac: m,
            vni,
            port,
            last_seen: now,
            remote,
        };
        let ways: [Entry; WAYS] = std::array::from_fn(|i| set.ways[i].read());
        let outcome = if let Some(i) = ways.iter().position(|e| e.mac == m && e.vni == vni) {
            let moved = ways[i].port != port;
            set.ways[i].write(&new);
            if moved {
                self.moves.fetch_add(1, Ordering::Relaxed);
                Learned::Moved
            } else {
                Learned::Refreshed
            }
        } else if let Some(i) = ways.iter().position(|e| !self.live(e, now)) {
            set.ways[i].write(&new);
            Learned::New
        } else {
            let i = (0..WAYS).min_by_key(|&i| ways[i].last_seen).unwrap_or(0);
            set.ways[i].write(&new);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            Learned::Evicted
        };
        set.seq.store(s.wrapping_add(2), Ordering::Release);
        outcome
    }

    /// Learns the source of a packet state (its ingress port must be in `ports`).
    pub fn learn(&self, ports: &PortMap, key: &FlowKey, now: u64) -> Learned {
        match crate::normal::source(ports, key) {
            Some(s) => self.learn_mac(s.vni, s.mac, s.port, s.remote, now),
            None => Learned::Ignored,
        }
    }

    /// Forgets every host behind `port` (the port was deleted).
    pub fn flush_port(&self, port: u32) {
        for set in self.sets.iter() {
            loop {
                let s = set.seq.load(Ordering::Relaxed);
                if s & 1 == 0
                    && set
                        .seq
                        .compare_exchange(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                {
                    fence(Ordering::Release);
                    for w in &set.ways {
                        if w.port.load(Ordering::Relaxed) == port {
                            w.mac.store(0, Ordering::Relaxed);
                        }
                    }
                    set.seq.store(s + 2, Ordering::Release);
                    break;
                }
                std::hint::spin_loop();
            }
        }
    }

    /// Every live entry (for `fdb-show`).
    pub fn entries(&self, now: u64) -> Vec<MacEntry> {
        let mut out = Vec::new();
        for set in self.sets.iter() {
            let Some(ways) = set.snapshot() else { continue };
            for e in ways.iter().filter(|e| self.live(e, now)) {
                out.push(MacEntry {
                    vni: e.vni,
                    mac: u64_to_mac(e.mac & !USED),
                    port: e.port,
                    age_ms: now.saturating_sub(e.last_seen),
                    remote: e.remote,
                });
            }
        }
        out
    }
}

impl MacLookup for SharedMacTable {
    fn lookup(&self, vni: u64, mac: [u8; 6], now: u64) -> Option<(u32, u128)> {
        SharedMacTable::lookup(self, vni, mac, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];

    #[test]
    fn learn_lookup_move_age() {
        let t = SharedMacTable::new(64, 300_000);
        assert_eq!(t.learn_mac(5, A, 1, 0, 0), Learned::New);
        assert_eq!(t.lookup(5, A, 10), Some((1, 0)));
        assert_eq!(t.lookup(6, A, 10), None, "scoped per vni");
        assert_eq!(t.learn_mac(5, A, 1, 0, 500), Learned::Refreshed);
        assert_eq!(t.learn_mac(5, A, 2, 0, 600), Learned::Moved);
        assert_eq!(t.lookup(5, A, 700), Some((2, 0)));
        assert_eq!(t.moves(), 1);
        assert_eq!(t.lookup(5, A, 600 + 300_000), None, "aged out");
        assert_eq!(t.learn_mac(5, [0xff; 6], 1, 0, 0), Learned::Ignored);
        assert_eq!(t.entries(700).len(), 1);
        t.flush_port(2);
        assert_eq!(t.lookup(5, A, 700), None);
    }

    #[test]
    fn bounded_with_lru_eviction() {
        let t = SharedMacTable::new(64, 300_000);
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            t.learn_mac(1, [2, 0, b[0], b[1], b[2], b[3]], 1, 0, u64::from(i));
        }
        assert!(t.entries(10_000).len() <= t.capacity());
        assert!(t.evictions() > 0);
        // The most recent host is always there (the stalest of its set went).
        assert_eq!(t.lookup(1, [2, 0, 0, 0, 0x27, 0x0f], 10_000), Some((1, 0)));
    }

    #[test]
    fn concurrent_learning_and_lookup_stay_consistent() {
        let t = Arc::new(SharedMacTable::new(1024, 300_000));
        let threads: Vec<_> = (0..4u32)
            .map(|w| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let mac = [2, w as u8, 0, 0, (i % 50) as u8, 1];
                        // Port encodes the MAC, so a torn read would show a mismatch.
                        let port = u32::from(mac[1]) * 100 + u32::from(mac[4]);
                        t.learn_mac(0, mac, port, 0, u64::from(i / 10));
                        if let Some((p, _)) = t.lookup(0, mac, u64::from(i / 10)) {
                            assert_eq!(p, port);
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        for e in t.entries(2000) {
            assert_eq!(e.port, u32::from(e.mac[1]) * 100 + u32::from(e.mac[4]));
        }
    }
}
