//! `weft-agent`: the per-node controller (flanneld's and antrea-agent's role).
//!
//! It keeps the node in the cluster's state in etcd (docs/cluster-state.md): takes a
//! subnet, registers the node on a lease it keeps alive, and watches the other nodes
//! and its own endpoints ([`etcd`]). The controller ([`agent`]) turns that state into
//! weftd's ports and flows with the cluster compiler (`weft-cluster`, through
//! [`model`]) and attaches pods for the CNI plugin over its socket ([`server`],
//! docs/agent-protocol.md), configuring interfaces by netlink ([`netlink`]).
//!
//! Above `weft-cluster`, `weft-proto` and `weft-agent-proto`; tokio and etcd stay here,
//! out of weftd and weftctl.
#![warn(missing_docs)]

pub mod agent;
pub mod config;
pub mod etcd;
pub mod metrics;
pub mod model;
pub mod netlink;
pub mod schema;
pub mod server;
