//! `weft-cni`: the CNI plugin of Weft (CNI spec 1.0.0 and 1.1.0).
//!
//! A thin client of the node's `weft-agent` (docs/agent-protocol.md): the agent makes
//! the interface in the container's namespace, gives it its address, MTU and routes,
//! installs its flows and records its endpoint; the plugin reads the runtime's
//! environment ([`env`]) and config ([`config`]), gets an address from the IPAM plugin
//! ([`delegate`], host-local by default, handed the node's subnet and gateway), asks the
//! agent, and prints the result ([`types`]) or an error with the spec's code
//! ([`error`]). [`plugin`] holds the commands.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod delegate;
pub mod env;
pub mod error;
pub mod plugin;
pub mod types;
