//! Weft's datapath.

pub mod flow_key;
