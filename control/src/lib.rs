//! Weft's flow language, control protocol and client library.
//!
//! [`flow`] is the language: the types that describe flows and changes to the flow
//! tables (they travel as JSON over the control socket), the field registry, and the
//! ovs-ofctl-style text syntax (parser and printer). `control` depends on nothing else
//! in Weft; `switch-core` executes what this crate describes.
#![warn(missing_docs)]

pub mod flow;
pub mod port;

pub use flow::{Action, Bundle, Field, Flow, FlowFilter, FlowMod, Masked, Match, PortRef};
