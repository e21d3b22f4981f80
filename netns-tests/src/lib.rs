//! End-to-end tests of Weft in network namespaces.
//!
//! [`lab`] is the harness: nodes and pods as namespaces, an underlay, processes, all
//! removed when the test ends. [`node`] puts `weftd` nodes and pods on an underlay.
//! [`cluster`] builds a whole cluster from a cluster description and programs it over
//! the control sockets. [`containerd`] runs a containerd per node for CNI tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod containerd;
pub mod lab;
pub mod node;
