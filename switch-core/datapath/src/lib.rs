//! `weft-datapath`: the pipeline put behind real ports, run by worker threads.
//!
//! It executes the answers of `weft-pipeline` (which decides, purely) on real devices:
//! TAP and tunnel ports ([`port`], [`io`]), workers, batches, segmentation and
//! coalescing, captures. Every `unsafe` of Weft's data path is here. It reads port
//! descriptions and flows from `weft-flow` and knows nothing of the host service:
//! `weftd` sits on top, gives the switch its [`StateStore`] and reads its
//! [`StatsSnapshot`](stats::StatsSnapshot).
//!
//! [`Switch`] owns everything a node forwards with: the published pipeline snapshot
//! (flows), the published [`PortSet`](io::PortSet) (opened TAP devices and tunnel
//! sockets), the shared MAC table of `normal`, and the workers. Changes (ports, flow
//! bundles, expiry) are made by one control-side writer at a time; each builds a new
//! immutable snapshot and publishes it with one pointer swap, so workers never wait.
//! Workers load the current snapshots once per wake-up (see [`worker`]).
//!
//! After every change the switch hands its state (ports and flows) to its
//! [`StateStore`] (in `weftd`: written atomically to the state directory), and at
//! start it restores that state — ports re-attached, flows installed — before the
//! first worker reads a packet.

pub mod batch;
pub mod capture;
pub mod io;
pub mod mem;
pub mod port;
pub mod sched;
pub mod state;
pub mod stats;
mod switch;
pub mod testing;
pub(crate) mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use arc_swap::ArcSwap;

use weft_pipeline::SharedPipeline;

pub use state::{ChangeText, FlowWalk, Record, SavedState, StateStore};
pub use switch::{PORT_RETRY, PortState, PortStatus, Switch, SwitchError, SwitchOptions};

/// What the workers share: snapshots, the MAC table, the stop flag, the clock.
pub(crate) struct Shared {
    pub(crate) pipeline: SharedPipeline,
    pub(crate) ports: ArcSwap<io::PortSet>,
    pub(crate) macs: weft_pipeline::macs::SharedMacTable,
    pub(crate) stop: AtomicBool,
    start: Instant,
}

impl Shared {
    /// Milliseconds since the switch started (the pipeline's and MAC table's clock).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Counters a worker publishes after each wake-up.
#[derive(Debug, Default)]
pub(crate) struct WorkerStats {
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
}
