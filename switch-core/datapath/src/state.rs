//! What the switch persists, and the hook it persists it through.
//!
//! The switch hands a [`SavedState`] (every port with its number, every flow) to its
//! [`StateStore`] after each change it makes, and is given one back at start
//! ([`Switch::start`](crate::Switch::start)). Where and how it is stored is the
//! store's business: `weftd` writes `<state_dir>/state.json` atomically
//! (`weftd::state`); a switch without a store saves nothing.

use std::io;

use serde::{Deserialize, Serialize};
use weft_flow::Flow;
use weft_flow::port::PortSpec;

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

/// Where the switch saves its state. Called under the switch's control lock, so one
/// save at a time; an error is the switch's [`SwitchError::Save`](crate::SwitchError::Save)
/// (the change itself was made).
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Persists `state`, replacing what was saved before.
    fn save(&self, state: &SavedState) -> io::Result<()>;
}
