//! Ports at the edge of the datapath: TAP devices and the tunnels' underlay sockets.
//!
//! This is the only place where Weft touches devices and sockets; the pipeline and
//! `encap` never do. A port is described by a [`weft_flow::port::PortSpec`] (what an
//! operator wrote) and opened here into file descriptors that the workers poll.

pub mod netns;
pub mod socket;
pub mod tap;

pub use socket::{RawIpSocket, UdpTunnelSocket};
pub use tap::{Attach, Tap};
