//! Weft's datapath.

pub mod classifier;
pub mod emc;
pub mod flow_key;
pub mod port;
