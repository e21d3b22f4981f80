//! Weft's flow language, control protocol and client library.
//!
//! [`flow`] is the language: the types that describe flows and changes to the flow
//! tables (they travel as JSON over the control socket), the field registry, and the
//! ovs-ofctl-style text syntax (parser and printer). `control` depends on nothing else
//! in Weft; `switch-core` executes what this crate describes.
//!
//! [`proto`] is the control protocol spoken over `weftd`'s Unix socket (one JSON object
//! per line), [`client`] its client side, and [`proto_text`] the `ovs-ofctl`-style
//! printing of its replies that the `weftctl` binary uses.
//!
//! [`cluster`] turns a description of a tenant's nodes and pods into the ports and
//! flows of one node (`weftctl compile`).
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod flow;
pub mod pcap;
pub mod port;
pub mod proto;
pub mod proto_text;

pub use flow::{Action, Bundle, Field, Flow, FlowFilter, FlowMod, Masked, Match, PortRef};
