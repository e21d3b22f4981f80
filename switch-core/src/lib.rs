//! Weft's datapath.
