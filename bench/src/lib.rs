//! Shared helpers for Weft's benchmarks.
