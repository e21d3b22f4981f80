//! End-to-end tests of Weft in network namespaces.
//!
//! [`lab`] is the harness: nodes and pods as namespaces, an underlay, processes, all
//! removed when the test ends. [`node`] puts `weftd` nodes and pods on an underlay.
//! [`cluster`] builds a whole cluster from a cluster description and programs it over
//! the control sockets. [`etcd`] runs a real etcd cluster on the nodes, [`agent`]
//! `weft-agent` beside `weftd`, [`containerd`] a containerd per node for CNI tests.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod cluster;
pub mod containerd;
pub mod etcd;
pub mod lab;
pub mod node;
