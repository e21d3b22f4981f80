//! Weft's datapath.

pub mod classifier;
pub mod datapath;
pub mod drop;
pub mod emc;
pub mod flow_key;
pub mod pipeline;
pub mod port;
pub mod service;
pub mod testing;

pub use datapath::{PortState, Switch, SwitchError, SwitchOptions};
