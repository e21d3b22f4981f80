//! Weft's datapath.

pub mod classifier;
pub mod flow_key;
