//! Ports at the edge of the datapath: TAP devices and the tunnels' underlay sockets.
//!
//! This is the only place where Weft touches devices and sockets; the pipeline and
//! `encap` never do. A port is described by a [`weft_flow::port::PortSpec`] (what an
//! operator wrote) and opened here into file descriptors that the workers poll.
//! `underlay` and `neigh` are the tunnel-GSO underlay port (a TAP joined to the
//! underlay device by tc, and the next hops toward the peers).

pub mod neigh;
pub mod netns;
pub mod socket;
pub mod steer;
pub mod tap;
pub mod tc;
pub mod underlay;

pub use socket::{RawIpSocket, UdpTunnelSocket};
pub use tap::{Attach, Tap};
pub use underlay::{Underlay, UnderlayTap};
