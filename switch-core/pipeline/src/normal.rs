//! The `normal` action: a MAC-learning L2 switch, scoped per VNI (`tun_id`), with
//! ageing, a bounded table and split horizon for tunnels.
//!
//! [`MacTable`] is set-associative: a (VNI, MAC) pair hashes to one set of
//! [`WAYS`] entries. Learning refreshes the pair's entry (or moves it to the new port),
//! else takes an empty or aged-out way, else evicts the way *least recently seen* in
//! that set (counted in [`MacTable::evictions`]). So the table never grows, a full set
//! forgets the stalest host first, and a flood of new source MACs can only push out
//! entries of its own set. Entries older than the ageing time (300 s by default) are
//! ignored by lookups and reused by learning.
//!
//! The table is a plain value (`&mut self` to learn): the datapath decides whether a
//! worker owns one or shares one behind its own synchronisation. Learning is a
//! per-packet side effect, which is why resolved action lists keep `normal` symbolic.
//!
//! A frame received on a tunnel port is learned with its outer source (`tun_src`), so
//! that a reply through a `remote=flow` tunnel can be sent to the right node.

use crate::drop::DropReason;
use crate::flow_key::FlowKey;

use super::Millis;
use super::ports::{PortKind, PortMap};

/// Ways per set.
pub const WAYS: usize = 8;
/// Default ageing time: 300 s, as OVS and Linux bridges.
pub const DEFAULT_AGEING_MS: Millis = 300_000;
/// Default capacity (entries).
pub const DEFAULT_CAPACITY: usize = 8192;

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    /// MAC (48 bits) | 1 << 63 when used.
    mac: u64,
    vni: u64,
    port: u32,
    last_seen: Millis,
    /// Outer source of a frame learned from a tunnel (IPv4 mapped); 0 otherwise.
    remote: u128,
}

const USED: u64 = 1 << 63;

/// One learned address, as `fdb-show` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacEntry {
    /// VNI (`tun_id`) scope.
    pub vni: u64,
    /// The MAC address.
    pub mac: [u8; 6],
    /// The port it was seen on.
    pub port: u32,
    /// Milliseconds since it was last seen.
    pub age_ms: Millis,
    /// The tunnel peer it came from (IPv4 mapped), 0 for local ports.
    pub remote: u128,
}

/// What learning a source address did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new entry in a free (or aged-out) way.
    New,
    /// The entry existed on the same port; refreshed.
    Refreshed,
    /// The entry existed on another port; moved.
    Moved,
    /// The set was full: the least recently seen entry was evicted for it.
    Evicted,
    /// Not learned: a multicast or broadcast source.
    Ignored,
}

/// A bounded, ageing MAC table scoped per VNI. See the module docs.
#[derive(Clone, Debug)]
pub struct MacTable {
    entries: Box<[Entry]>,
    set_mask: usize,
    ageing_ms: Millis,
    evictions: u64,
    moves: u64,
}

impl Default for MacTable {
    fn default() -> Self {
        MacTable::new(DEFAULT_CAPACITY, DEFAULT_AGEING_MS)
    }
}

fn mac_u64(mac: [u8; 6]) -> u64 {
    crate::flow_key::mac_to_u64(mac)
}

impl MacTable {
    /// A table of at least `capacity` entries (rounded up to a power-of-two number of
    /// sets of [`WAYS`]) whose entries age out after `ageing_ms`.
    pub fn new(capacity: usize, ageing_ms: Millis) -> MacTable {
        let sets = capacity.div_ceil(WAYS).max(1).next_power_of_two();
        MacTable {
            entries: vec![Entry::default(); sets * WAYS].into_boxed_slice(),
            set_mask: sets - 1,
            ageing_ms,
            evictions: 0,
            moves: 0,
        }
    }

    /// Number of entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Entries evicted because their set was full.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Addresses that moved to another port.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    fn set(&self, vni: u64, mac: u64) -> std::ops::Range<usize> {
        let h = crate::flow_key::hash_words(&[vni, mac]);
        let s = (h as usize) & self.set_mask;
        s * WAYS..(s + 1) * WAYS
    }

    fn live(&self, e: &Entry, now: Millis) -> bool {
        e.mac & USED != 0 && now.saturating_sub(e.last_seen) < self.ageing_ms
    }

    /// Learns that `mac` in `vni` is behind `port` (seen at `now`; `remote` is the
    /// tunnel peer for a tunnel port, else 0).
    pub fn learn(
        &mut self,
        vni: u64,
        mac: [u8; 6],
        port: u32,
        remote: u128,
        now: Millis,
    ) -> Learned {
        if mac[0] & 1 != 0 {
            return Learned::Ignored;
        }
        let m = mac_u64(mac) | USED;
        let range = self.set(vni, m);
        let set = &mut self.entries[range];
        let new = Entry {
            mac: m,
            vni,
            port,
            last_seen: now,
            remote,
        };
        if let Some(e) = set.iter_mut().find(|e| e.mac == m && e.vni == vni) {
            let moved = e.port != port;
            *e = new;
            if moved {
                self.moves += 1;
                return Learned::Moved;
            }
            return Learned::Refreshed;
        }
        let ageing = self.ageing_ms;
        if let Some(e) = set
            .iter_mut()
            .find(|e| e.mac & USED == 0 || now.saturating_sub(e.last_seen) >= ageing)
        {
            *e = new;
            return Learned::New;
        }
        // Full set: evict the least recently seen entry.
        let victim = set
            .iter_mut()
            .min_by_key(|e| e.last_seen)
            .expect("a set has WAYS > 0 entries");
        *victim = new;
        self.evictions += 1;
        Learned::Evicted
    }

    /// The port (and tunnel peer) `mac` in `vni` was learned on, if it has not aged out.
    pub fn lookup(&self, vni: u64, mac: [u8; 6], now: Millis) -> Option<(u32, u128)> {
        let m = mac_u64(mac) | USED;
        self.entries[self.set(vni, m)]
            .iter()
            .find(|e| e.mac == m && e.vni == vni && self.live(e, now))
            .map(|e| (e.port, e.remote))
    }

    /// Forgets every entry on `port` (the port was deleted).
    pub fn flush_port(&mut self, port: u32) {
        for e in self.entries.iter_mut().filter(|e| e.port == port) {
            *e = Entry::default();
        }
    }

    /// The live entries (for `fdb-show`).
    pub fn entries(&self, now: Millis) -> impl Iterator<Item = MacEntry> + '_ {
        self.entries
            .iter()
            .filter(move |e| self.live(e, now))
            .map(move |e| MacEntry {
                vni: e.vni,
                mac: crate::flow_key::u64_to_mac(e.mac & !USED),
                port: e.port,
                age_ms: now.saturating_sub(e.last_seen),
                remote: e.remote,
            })
    }

    /// Number of live entries.
    pub fn len(&self, now: Millis) -> usize {
        self.entries(now).count()
    }
}

/// Where `normal` sends one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forward {
    /// To one learned port; `tun_dst` is the tunnel peer to use when the port is a
    /// tunnel and the address was learned from one (0 = keep the key's `tun_dst`).
    Port {
        /// The port.
        port: u32,
        /// Tunnel peer (IPv4 mapped), or 0.
        tun_dst: u128,
    },
    /// To every port of [`PortMap::flood_ports`] for the key's ingress port.
    Flood,
    /// Nowhere (counted by the caller).
    Drop(DropReason),
}

/// Learns the source of a packet state (unless the ingress port is unknown).
pub fn learn(macs: &mut MacTable, ports: &PortMap, key: &FlowKey, now: Millis) -> Learned {
    match source(ports, key) {
        Some(s) => macs.learn(s.vni, s.mac, s.port, s.remote, now),
        None => Learned::Ignored,
    }
}

/// What learning records of a packet state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    /// The VNI (`tun_id`) scope.
    pub vni: u64,
    /// The source MAC.
    pub mac: [u8; 6],
    /// The ingress port.
    pub port: u32,
    /// The tunnel peer (`tun_src`, IPv4 mapped) for a tunnel port, else 0.
    pub remote: u128,
}

/// The source a packet state teaches a MAC table; `None` when its ingress port is not
/// in `ports`. Shared by every MAC table implementation.
pub fn source(ports: &PortMap, key: &FlowKey) -> Option<Source> {
    let port = key.in_port();
    let remote = match ports.kind(port)? {
        PortKind::Tunnel => key.get(crate::flow_key::Field::TunSrc),
        PortKind::Tap => 0,
    };
    Some(Source {
        vni: key.tun_id(),
        mac: key.dl_src(),
        port,
        remote,
    })
}

/// Where a MAC table says a host is: what [`normal`] needs of a table, so that the
/// single-owner [`MacTable`] and the datapath's lock-free shared table make their
/// forwarding decisions with one function.
pub trait MacLookup {
    /// Where `mac` in `vni` was last seen (live entries only): `(port, tunnel peer)`.
    fn lookup(&self, vni: u64, mac: [u8; 6], now: Millis) -> Option<(u32, u128)>;
}

impl MacLookup for MacTable {
    fn lookup(&self, vni: u64, mac: [u8; 6], now: Millis) -> Option<(u32, u128)> {
        MacTable::lookup(self, vni, mac, now)
    }
}

/// The forwarding decision of `normal` for a packet state, without learning (the
/// datapath calls [`learn`] first; trace does not): a known unicast destination goes to
/// its port, unless that is the ingress port or both are tunnels (split horizon);
/// unknown, broadcast and multicast destinations flood.
pub fn normal<M: MacLookup + ?Sized>(
    macs: &M,
    ports: &PortMap,
    key: &FlowKey,
    now: Millis,
) -> Forward {
    let dst = key.dl_dst();
    if dst[0] & 1 != 0 {
        return Forward::Flood;
    }
    let Some((port, remote)) = macs.lookup(key.tun_id(), dst, now) else {
        return Forward::Flood;
    };
    let in_port = key.in_port();
    if port == in_port {
        return Forward::Drop(DropReason::NormalSamePort);
    }
    let out_kind = ports.kind(port);
    if out_kind.is_none() {
        return Forward::Flood;
    }
    if out_kind == Some(PortKind::Tunnel) && ports.kind(in_port) == Some(PortKind::Tunnel) {
        return Forward::Drop(DropReason::SplitHorizon);
    }
    Forward::Port {
        port,
        tun_dst: if out_kind == Some(PortKind::Tunnel) {
            remote
        } else {
            0
        },
    }
}

/// One copy of a packet to send: the port, the packet state to commit
/// ([`commit`](super::commit::commit)) and, when `normal` chose a tunnel peer it
/// learned, the tunnel destination to use instead of the state's `tun_dst` (0 = none).
#[derive(Clone, Copy, Debug)]
pub struct Send<'a> {
    /// Egress port.
    pub port: u32,
    /// The packet as it must leave (headers and tunnel metadata).
    pub state: &'a FlowKey,
    /// Learned tunnel peer (IPv4 mapped), or 0.
    pub tun_dst: u128,
}

/// Expands a resolved action list into sends: explicit outputs as they are, `flood` to
/// [`PortMap::flood_ports`], `normal` through the MAC table (learning the source once
/// per packet when `learn_src`; trace-like callers pass false). Drops decided here
/// (`normal` to the ingress port, split horizon) are counted in `drops`. No allocation.
pub fn for_each_send<'r>(
    r: &'r super::Resolved,
    ports: &PortMap,
    macs: &mut MacTable,
    now: Millis,
    learn_src: bool,
    drops: &crate::drop::DropCounters,
    mut send: impl FnMut(Send<'r>),
) {
    let mut learned = !learn_src;
    for a in r.actions() {
        let state = r.state_of(a);
        match *a {
            super::DpAction::Output { port, .. } => send(Send {
                port,
                state,
                tun_dst: 0,
            }),
            super::DpAction::Flood { .. } => {
                for p in ports.flood_ports(state.in_port(), state.tun_id()) {
                    send(Send {
                        port: p.number,
                        state,
                        tun_dst: 0,
                    });
                }
            }
            super::DpAction::Normal { .. } => {
                if !learned {
                    learn(macs, ports, state, now);
                    learned = true;
                }
                match normal(macs, ports, state, now) {
                    Forward::Port { port, tun_dst } => send(Send {
                        port,
                        state,
                        tun_dst,
                    }),
                    Forward::Flood => {
                        for p in ports.flood_ports(state.in_port(), state.tun_id()) {
                            send(Send {
                                port: p.number,
                                state,
                                tun_dst: 0,
                            });
                        }
                    }
                    Forward::Drop(reason) => drops.bump(reason),
                }
            }
        }
    }
}
