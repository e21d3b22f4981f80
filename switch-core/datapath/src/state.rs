//! What the switch persists, and the hook it persists it through.
//!
//! The switch hands each change it makes to its [`StateStore`] as [`Record`]s (what
//! changed, not the whole state: a bundle's net effect, a port added or deleted), and
//! now and then a snapshot of the whole state, walked from an immutable pipeline
//! version off the control lock. It is given a [`SavedState`] (every port with its
//! number, every flow) back at start ([`Switch::start`](crate::Switch::start)). Where
//! and how it is stored is the store's business: `weftd` keeps a journal and a
//! snapshot in its state directory (`weftd::state`); a switch without a store saves
//! nothing.

use std::io;

use serde::{Deserialize, Serialize};
use weft_flow::Flow;
use weft_flow::port::PortSpec;
use weft_pipeline::NetChange;

/// The format version this code writes and reads.
pub const FORMAT: u32 = 1;

/// Everything `weftd` restores at start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// Always [`FORMAT`] when written by this code.
    pub format: u32,
    /// Every port, with `ofport` filled in: numbers are stable across restarts.
    pub ports: Vec<PortSpec>,
    /// Every flow of every table.
    pub flows: Vec<Flow>,
}

impl Default for SavedState {
    fn default() -> Self {
        SavedState {
            format: FORMAT,
            ports: Vec::new(),
            flows: Vec::new(),
        }
    }
}

/// One change to the saved state, as a journal records it: a change from the control
/// socket is a list of these (a bundle's net effect, a port added or deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A flow added, replaced or modified, as installed (ports as numbers).
    AddFlow(Flow),
    /// A flow removed; its identity (table, priority, match) counts, not its actions.
    DelFlow(Flow),
    /// Every flow of a table removed.
    ClearTable(u8),
    /// A port added, with its number.
    AddPort(PortSpec),
    /// A port deleted, by name.
    DelPort(String),
}

/// Hands every flow of the state to `each` until it returns false (a snapshot is
/// written as it is walked, without a copy of the table).
pub type FlowWalk<'a> = &'a mut dyn FnMut(&mut dyn FnMut(Flow) -> bool);

/// The flow text change `i` of a bundle was parsed from (one line), when the bundle
/// came as text and the line is known.
pub type ChangeText<'a> = &'a dyn Fn(usize) -> Option<&'a str>;

/// Where the switch saves its state: a journal of changes and, now and then, a
/// snapshot of the whole state.
///
/// [`append`](Self::append) is called under the switch's control lock, before the
/// change it records is published; an error refuses the change (for the control
/// socket's changes). The switch's state thread calls [`sync`](Self::sync) (at most
/// every 100 ms, when something was appended) and, when
/// [`snapshot_due`](Self::snapshot_due), [`begin_snapshot`](Self::begin_snapshot)
/// under the control lock then [`write_snapshot`](Self::write_snapshot) without it.
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Appends one change to the journal, so that it survives the process being
    /// killed once this returns (it need not be on disk yet: see `sync`).
    fn append(&self, records: &[Record]) -> io::Result<()>;
    /// Appends a bundle's net change as one entry, like [`append`](Self::append) of
    /// its records (tables cleared, flows deleted, flows added), without building
    /// them: a store that can write the flows as they are overrides this.
    fn append_net(&self, net: &NetChange<'_>) -> io::Result<()> {
        let mut v = Vec::with_capacity(net.cleared.len() + net.deleted.len() + net.added_len());
        v.extend(net.cleared.iter().map(|t| Record::ClearTable(*t)));
        v.extend(net.deleted.iter().cloned().map(Record::DelFlow));
        v.extend(net.added_flows().cloned().map(Record::AddFlow));
        self.append(&v)
    }
    /// [`append_net`](Self::append_net), where `text(i)` is the flow text change `i`
    /// of the bundle was parsed from, when known: a store that journals flow text may
    /// write a flow lent from the bundle ([`NetChange::added_as_sent`]) as that line
    /// rather than print the flow again (it reads back as the same flow).
    fn append_net_text(&self, net: &NetChange<'_>, text: ChangeText<'_>) -> io::Result<()> {
        let _ = text;
        self.append_net(net)
    }
    /// Makes what was appended durable (fsync); cheap when nothing was.
    fn sync(&self) -> io::Result<()>;
    /// Whether the journal has grown enough that a snapshot should replace it.
    fn snapshot_due(&self) -> bool;
    /// Starts a snapshot of the state as it is after the last append (the caller
    /// holds the lock that orders appends, and takes the state to write under it).
    /// Returns the snapshot's sequence number, for `write_snapshot`.
    fn begin_snapshot(&self) -> io::Result<u64>;
    /// Writes the snapshot begun as `seq` (the state: `ports` and the flows `flows`
    /// walks) and drops the journal it makes redundant.
    fn write_snapshot(&self, seq: u64, ports: &[PortSpec], flows: FlowWalk<'_>) -> io::Result<()>;
}
