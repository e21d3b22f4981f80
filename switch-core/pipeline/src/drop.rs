//! Why the datapath dropped a packet: a small `Copy` enum that indexes counter arrays.
//!
//! On the packet path a drop is never logged and never an error value with context: it
//! is one of these reasons, counted in a [`DropCounters`] array (atomics, `Relaxed`) and
//! exported as a Prometheus label ([`DropReason::as_str`]). The pipeline produces the
//! first ones; the datapath adds its own (and wraps encap's) as it grows.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::flow_key::ParseDrop;

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident = $n:literal, $label:literal, $msg:literal; )*) => {
        /// Why a packet (or one copy of it) was dropped.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[$doc])* $variant = $n, )*
        }

        impl DropReason {
            /// Every reason, in counter-index order.
            pub const ALL: &'static [DropReason] = &[ $( DropReason::$variant, )* ];

            /// The snake_case name, used as the Prometheus label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( DropReason::$variant => $label, )*
                }
            }

            fn message(self) -> &'static str {
                match self {
                    $( DropReason::$variant => $msg, )*
                }
            }
        }
    };
}

drop_reasons! {
    /// No flow matched in a table reached by `goto_table` (or table 0).
    TableMiss = 0, "table_miss", "no flow matched (table miss)";
    /// `dec_ttl` on a packet whose TTL / hop limit was 0 or 1.
    TtlExpired = 1, "ttl_expired", "ttl expired";
    /// `resubmit` nesting deeper than 64, or more than the total lookup budget.
    ResubmitLoop = 2, "resubmit_loop", "resubmit recursion too deep";
    /// More outputs (or distinct packet states) than the resolved action list holds.
    TooManyOutputs = 3, "too_many_outputs", "too many outputs";
    /// Output to a port number that is not in the port map.
    NoSuchPort = 4, "no_such_port", "output to a port that does not exist";
    /// A flow with the `drop` action (an empty action list) matched.
    ExplicitDrop = 5, "explicit_drop", "dropped by a drop action";
    /// The pipeline finished without any output action.
    NoOutput = 6, "no_output", "no output action";
    /// The frame is shorter than an Ethernet header.
    ParseTooShort = 7, "parse_too_short", "frame shorter than an ethernet header";
    /// The frame ends inside its VLAN tag.
    ParseTruncatedVlan = 8, "parse_truncated_vlan", "frame ends inside its vlan tag";
    /// `normal`: the destination was learned on the ingress port.
    NormalSamePort = 9, "normal_same_port", "destination is on the ingress port";
    /// `normal`: tunnel-to-tunnel forwarding refused (split horizon).
    SplitHorizon = 10, "split_horizon", "no forwarding from a tunnel to a tunnel";
}

impl DropReason {
    /// Number of reasons (size of a counter array indexed by [`DropReason::index`]).
    pub const COUNT: usize = DropReason::ALL.len();

    /// Counter index of this reason.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl From<ParseDrop> for DropReason {
    fn from(p: ParseDrop) -> Self {
        match p {
            ParseDrop::TooShort => DropReason::ParseTooShort,
            ParseDrop::TruncatedVlan => DropReason::ParseTruncatedVlan,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// One counter per [`DropReason`], shared between workers (atomics, `Relaxed`).
#[derive(Debug)]
pub struct DropCounters {
    counts: [AtomicU64; DropReason::COUNT],
}

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl DropCounters {
    /// Counts one drop.
    #[inline]
    pub fn bump(&self, reason: DropReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The current count of a reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// Every reason with its count, in index order.
    pub fn snapshot(&self) -> [(DropReason, u64); DropReason::COUNT] {
        std::array::from_fn(|i| (DropReason::ALL[i], self.counts[i].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_names_and_counters() {
        let mut seen = std::collections::HashSet::new();
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert!(seen.insert(r.as_str()));
            assert!(
                r.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            let msg = r.to_string();
            assert_eq!(msg, msg.to_lowercase());
        }
        let c = DropCounters::default();
        c.bump(DropReason::TableMiss);
        c.bump(DropReason::TableMiss);
        c.bump(DropReason::from(ParseDrop::TooShort));
        assert_eq!(c.get(DropReason::TableMiss), 2);
        assert_eq!(c.get(DropReason::ParseTooShort), 1);
        assert_eq!(c.snapshot()[0], (DropReason::TableMiss, 2));
    }
}
