//! `weftctl`'s library: what the `weftctl` binary (`src/main.rs`) prints and compiles.
//!
//! [`proto_text`] prints the control protocol's replies (`weft-proto`) the way
//! `ovs-ofctl` and `ovs-appctl` print the same things. [`cluster`] turns a description
//! of a tenant's nodes and pods into the ports and flows of one node (`weftctl
//! compile`); the end-to-end tests and the demo build their clusters with it too.
//!
//! Above `weft-flow` and `weft-proto`; nothing of the data path. `clap` (the command
//! line) is a dependency here and in `weftd` only; `toml` comes with `weft-cluster`.
#![warn(missing_docs)]

/// The cluster compiler, now its own crate (`weft-cluster`, shared with `weft-agent`).
pub use weft_cluster as cluster;
pub mod proto_text;
