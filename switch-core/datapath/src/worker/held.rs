//! The pipeline version a worker walks, and where the versions it leaves behind go.
//!
//! A worker takes the published version at the start of every round of polling. Had it
//! only borrowed it for the round, the worker would hold the *last* reference to the old
//! version whenever a bundle was published during the round (the control thread lets go
//! of it at the swap), and the end of its round would free that version: every table the
//! bundle replaced, every flow and counter id of them. For a `replace-flows` or a
//! `del-flows` of a million flows that is hundreds of milliseconds on the worker, with
//! the pod's packets waiting behind it. So a worker keeps the version it walks in a
//! [`Held`] across rounds, and when a new one has been published it takes the new one
//! and hands the old one to the switch's reclaimer thread (`weft-reclaim`) through a
//! bounded channel, never dropping it itself: the reclaimer, or whoever else still holds
//! it, frees it. The channel's slots are allocated up front, so the hand-over does not
//! allocate; only if the reclaimer has fallen 64 versions behind does the worker drop
//! the version itself.
//!
//! The port set a worker leaves when ports change goes the same way: its last reference
//! closes the ports it no longer has, and closing a tunnel-GSO underlay port runs `tc`
//! and joins a thread, which a worker must not do.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use weft_pipeline::{Pipeline, SharedPipeline};

use crate::io::PortSet;

/// Versions in flight to the reclaimer before a worker frees one itself.
pub(crate) const RETIRED_SLOTS: usize = 64;

/// What a worker leaves to the reclaimer (held only to be dropped there).
#[allow(dead_code)]
pub(crate) enum Retired {
    /// A pipeline version.
    Pipeline(Arc<Pipeline>),
    /// A port set (its ports that are gone close when the reclaimer drops it).
    Ports(Arc<PortSet>),
}

/// The channel from the workers to the reclaimer.
pub(crate) fn retired_channel() -> (Sender<Retired>, Receiver<Retired>) {
    crossbeam_channel::bounded(RETIRED_SLOTS)
}

/// The reclaimer: frees the versions and port sets the workers left, until every
/// worker is gone.
pub(crate) fn reclaim_loop(retired: &Receiver<Retired>) {
    for old in retired.iter() {
        drop(old);
    }
}

/// The version one worker walks (see the module docs).
pub(crate) struct Held {
    pipe: Arc<Pipeline>,
    retired: Sender<Retired>,
}

impl Held {
    /// Holds the version published now.
    pub(crate) fn new(shared: &SharedPipeline, retired: Sender<Retired>) -> Held {
        Held {
            pipe: shared.load_full(),
            retired,
        }
    }

    /// The version for this round: the published one. If that is new, the one held so
    /// far goes to the reclaimer. The reference returned may be dropped at the end of
    /// the round: the `Held` keeps one, so that drop never frees a version.
    pub(crate) fn round(&mut self, shared: &SharedPipeline) -> Arc<Pipeline> {
        let current = shared.load_full();
        if !Arc::ptr_eq(&current, &self.pipe) {
            let old = std::mem::replace(&mut self.pipe, Arc::clone(&current));
            if let Err(full) = self.retired.try_send(Retired::Pipeline(old)) {
                // The reclaimer is 64 versions behind (or gone, at shutdown).
                drop(full.into_inner());
            }
        }
        current
    }

    /// Hands a port set the worker no longer uses to the reclaimer (dropped here only
    /// when the reclaimer is 64 behind or gone).
    pub(crate) fn retire_ports(&self, old: Arc<PortSet>) {
        if let Err(full) = self.retired.try_send(Retired::Ports(old)) {
            drop(full.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_flow::{Bundle, FlowMod, parse_flow};
    use weft_pipeline::PortMap;

    fn add(shared: &SharedPipeline, flow: &str) {
        let b = Bundle::new(vec![FlowMod::Add {
            flow: parse_flow(flow).unwrap(),
        }]);
        shared.apply(&b, 0).unwrap();
    }

    /// A bundle published while a worker is in a round: the end of that round and the
    /// worker's next round never free the old version; the reclaimer does.
    #[test]
    fn a_worker_never_frees_the_version_it_leaves() {
        let shared = SharedPipeline::new(Pipeline::new(PortMap::new()));
        add(
            &shared,
            "table=0,priority=1,ip,nw_dst=198.19.0.1 actions=drop",
        );
        let (tx, rx) = retired_channel();
        let mut held = Held::new(&shared, tx);

        let pipe = held.round(&shared);
        let old = Arc::downgrade(&pipe);
        // The control thread publishes a new version mid-round and lets go of the old.
        add(
            &shared,
            "table=0,priority=1,ip,nw_dst=198.19.0.2 actions=drop",
        );
        drop(pipe); // the round ends
        assert!(
            old.upgrade().is_some(),
            "the end of the worker's round freed the old version"
        );
        let pipe = held.round(&shared);
        drop(pipe);
        assert!(old.upgrade().is_some(), "the next round freed it");
        let Ok(Retired::Pipeline(retired)) = rx.try_recv() else {
            panic!("the old version did not go to the reclaimer");
        };
        assert!(Arc::ptr_eq(&retired, &old.upgrade().unwrap()));
        drop(retired);
        assert!(
            old.upgrade().is_none(),
            "the reclaimer's was the last reference"
        );
        // Nothing is handed over while the version stays the same.
        drop(held.round(&shared));
        assert!(rx.try_recv().is_err());
    }

    /// With the reclaimer full or gone, a worker frees the version itself, and goes on.
    #[test]
    fn a_full_or_closed_channel_falls_back_to_freeing_here() {
        let shared = SharedPipeline::new(Pipeline::new(PortMap::new()));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let mut held = Held::new(&shared, tx);
        for i in 0..3 {
            add(
                &shared,
                &format!("table=0,priority=1,ip,nw_dst=198.19.0.{i} actions=drop"),
            );
            drop(held.round(&shared));
        }
        assert_eq!(rx.len(), 1);
        drop(rx);
        add(&shared, "table=0,priority=2,ip actions=drop");
        let p = held.round(&shared);
        assert!(Arc::ptr_eq(&p, &shared.load_full()));
    }
}
