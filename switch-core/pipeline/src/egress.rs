//! The egress decision: the pipeline's complete answer for one packet.
//!
//! The table walk ends in datapath actions ([`DpAction`]): output to a port, `normal`,
//! `flood`. This module finishes them, purely, into what the datapath executes without
//! deciding anything, one [`Emit`] per copy of the packet:
//!
//! - write to a TAP port, and how ([`TapWrite`]: coalesce, with its `virtio_net_hdr`,
//!   plain, or cut into segments first);
//! - push this port's tunnel header toward this peer with this VNI ([`Emit::Tunnel`]);
//! - too big for this tunnel's MTU ([`Emit::TooBig`]: dropped, and the sender answered);
//! - dropped, with the reason and the port it is counted on.
//!
//! Like Open vSwitch's translation, which hands the datapath `tnl_push(header)` and
//! `output` actions, it runs `normal` against the MAC table, expands `flood`, picks the
//! tunnel peer (one rule: the port's fixed `remote`, else the peer `normal` learned the
//! destination from, else the packet's `tun_dst`; an unset or unspecified address is no
//! peer), the VNI (the port's fixed `key`, else the packet's `tun_id`), checks the MTU
//! (one check: the first frame that goes on the wire, less its 14-byte Ethernet header,
//! against the tunnel's MTU) and decides whether an offloaded super-frame is cut into
//! segments (into a tunnel, or a TAP without offloads) or passed whole (a TAP with them).
//!
//! What it needs of the ports is an [`EgressPort`] per port number (built once per port
//! by the datapath, through [`EgressPorts`]); of the frame, a [`FrameInfo`] built once
//! per packet from the parse's [`HeaderOffsets`] and the offload header. No allocation:
//! the emits are handed to a callback in order.

use std::net::IpAddr;

use encap::offload::{Segmenter, VirtioNetHdr};

use crate::drop::DropReason;
use crate::exec::DpAction;
use crate::flow_key::{ETH_TYPE_IPV4, ETH_TYPE_IPV6, Field, FlowKey, HeaderOffsets, u128_to_ip};
use crate::normal::{Forward, MacLookup, normal};
use crate::ports::PortMap;

/// Length of an untagged Ethernet header: what a tunnel's MTU does not count.
pub const ETH_LEN: usize = 14;

/// How a tunnel port carries a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TunnelEncap {
    /// VXLAN or Geneve: the whole Ethernet frame behind a UDP tunnel header.
    Udp,
    /// IP-in-IP: the IP packet only (an untagged IPv4 or IPv6 frame), behind an outer
    /// IPv4 header.
    Ipip,
}

/// What the egress decision knows of a tunnel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TunnelEgress {
    /// How it carries frames.
    pub encap: TunnelEncap,
    /// The fixed peer (`remote=`), or `None` for `remote=flow`.
    pub remote: Option<IpAddr>,
    /// The fixed VNI (`key=`), or `None` for `key=flow`.
    pub key: Option<u32>,
    /// Largest inner IP packet (the frame less its Ethernet header).
    pub mtu: u16,
    /// The underlay is IPv6 (its socket's family); peers must be of the same family.
    pub ipv6: bool,
}

/// What the egress decision knows of an output port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EgressPort {
    /// A TAP device; `vnet_hdr`: its queues carry a `virtio_net_hdr` (offloads on).
    Tap {
        /// Frames are written with a `virtio_net_hdr`.
        vnet_hdr: bool,
    },
    /// A tunnel.
    Tunnel(TunnelEgress),
}

/// The opened ports, as the egress decision sees them.
pub trait EgressPorts {
    /// Port `port`, if it is open.
    fn egress(&self, port: u32) -> Option<EgressPort>;
}

/// What the frame's offload header asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offload {
    /// A plain frame (no `virtio_net_hdr`, or an all-zero one).
    Plain,
    /// A super-frame to segment, or a frame whose checksum is still to be completed:
    /// `first` is the length of the first frame it is cut into.
    Offloaded {
        /// Length of the first frame on the wire.
        first: usize,
    },
    /// The header asks for something that cannot be done with this frame.
    Bad,
}

/// What the egress decision needs of the frame, computed once per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameInfo {
    /// Length of the frame.
    pub len: usize,
    /// The frame is untagged IPv4 or IPv6 (what IP-in-IP can carry).
    pub untagged_ip: bool,
    /// The offload header.
    pub offload: Offload,
}

impl FrameInfo {
    /// The facts of `frame`, parsed into `key` with headers at `offs`, read with the
    /// offload header `hdr` (all zero for a frame without one).
    pub fn new(frame: &[u8], key: &FlowKey, offs: &HeaderOffsets, hdr: &VirtioNetHdr) -> FrameInfo {
        let dl = key.dl_type();
        let offload = if *hdr == VirtioNetHdr::default() {
            Offload::Plain
        } else {
            match Segmenter::new(hdr, frame) {
                Ok(s) => Offload::Offloaded {
                    first: s.next_len().unwrap_or(frame.len()),
                },
                Err(_) => Offload::Bad,
            }
        };
        FrameInfo {
            len: frame.len(),
            untagged_ip: offs.l3 as usize == ETH_LEN
                && (dl == ETH_TYPE_IPV4 || dl == ETH_TYPE_IPV6),
            offload,
        }
    }

    /// Length of the first frame that goes on the wire (the frame itself unless it is
    /// cut into segments).
    #[inline]
    pub fn first_len(&self) -> usize {
        match self.offload {
            Offload::Offloaded { first } => first,
            _ => self.len,
        }
    }

    /// Whether the first frame on the wire fits a tunnel of `mtu` (the one length check).
    #[inline]
    pub fn fits(&self, mtu: u16) -> bool {
        self.first_len().saturating_sub(ETH_LEN) <= usize::from(mtu)
    }
}

/// How a frame is written to a TAP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TapWrite {
    /// A plain frame to a TAP with offloads, when the datapath coalesces: handed to the
    /// port's coalescer (TCP segments of one flow become one super-frame).
    Coalesce,
    /// Written whole with its `virtio_net_hdr` (after what the port's coalescer holds,
    /// so that a flow stays in order).
    Whole,
    /// A plain frame to a TAP without offloads.
    Plain,
    /// An offloaded frame to a TAP without offloads: cut into segments (or its checksum
    /// completed) first.
    Segment,
}

/// Why one copy of a packet was dropped on its way to a port (counted on that port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EgressDrop {
    /// Output to a `remote=flow` tunnel without a peer (no learned peer, `tun_dst`
    /// unset or unspecified).
    NoTunnelDst,
    /// The peer is of the other address family than the tunnel's underlay.
    TunnelFamily,
    /// IP-in-IP carries only untagged IP frames.
    NotIp,
    /// The offload header cannot be honoured for this frame, which must be cut.
    BadOffload,
}

/// One copy of a packet: what the datapath does with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Write the frame to TAP port `port`.
    Tap {
        /// The port.
        port: u32,
        /// How.
        write: TapWrite,
    },
    /// Push `port`'s tunnel header (built once per port) and send to `dst`, each
    /// segment of an offloaded super-frame on its own.
    Tunnel {
        /// The port.
        port: u32,
        /// The peer.
        dst: IpAddr,
        /// The VNI (24 bits; unused by IP-in-IP).
        vni: u32,
    },
    /// Too big for `port`'s MTU: dropped and counted `too_big` there; the sender is
    /// answered with an ICMP "too big" carrying `mtu` when one is due.
    TooBig {
        /// The port.
        port: u32,
        /// The tunnel's MTU.
        mtu: u16,
    },
    /// Dropped on the way to `port`, counted there.
    Drop {
        /// The port.
        port: u32,
        /// Why.
        reason: EgressDrop,
    },
    /// Dropped before it had a port: counted on the ingress port (`no_such_port` also in
    /// the pipeline's drop counters, as the walk counts an output it skipped).
    Refused(DropReason),
}

/// The tunnel peer of a copy: the port's fixed remote, else the peer `normal` learned
/// (`learned`, 0 = none), else the packet's `tun_dst`. An unset or unspecified address
/// is no peer.
#[inline]
pub fn tunnel_dst(t: &TunnelEgress, state: &FlowKey, learned: u128) -> Option<IpAddr> {
    if let Some(ip) = t.remote {
        return Some(ip);
    }
    let v = if learned != 0 {
        learned
    } else {
        state.get(Field::TunDst)
    };
    let ip = u128_to_ip(v);
    (!ip.is_unspecified()).then_some(ip)
}

/// The VNI of a copy: the port's fixed key, else the packet's `tun_id` (24 bits).
#[inline]
pub fn tunnel_vni(t: &TunnelEgress, state: &FlowKey) -> u32 {
    t.key.unwrap_or((state.tun_id() & 0x00ff_ffff) as u32)
}

/// The emit of one copy of a packet (in state `state`, facts `frame`) to `port`, which
/// is `out` (`None`: not open). `learned` is the tunnel peer `normal` found (0: none);
/// `coalesce` says whether the datapath coalesces frames for TAPs with offloads.
pub fn emit_to(
    port: u32,
    out: Option<EgressPort>,
    state: &FlowKey,
    learned: u128,
    frame: &FrameInfo,
    coalesce: bool,
) -> Emit {
    let Some(out) = out else {
        return Emit::Refused(DropReason::NoSuchPort);
    };
    let drop = |reason| Emit::Drop { port, reason };
    match out {
        EgressPort::Tap { vnet_hdr } => {
            let write = match frame.offload {
                Offload::Plain if vnet_hdr && coalesce => TapWrite::Coalesce,
                _ if vnet_hdr => TapWrite::Whole,
                Offload::Plain => TapWrite::Plain,
                Offload::Bad => return drop(EgressDrop::BadOffload),
                Offload::Offloaded { .. } => TapWrite::Segment,
            };
            Emit::Tap { port, write }
        }
        EgressPort::Tunnel(t) => {
            if t.encap == TunnelEncap::Ipip && !frame.untagged_ip {
                return drop(EgressDrop::NotIp);
            }
            if frame.offload == Offload::Bad {
                return drop(EgressDrop::BadOffload);
            }
            if !frame.fits(t.mtu) {
                return Emit::TooBig { port, mtu: t.mtu };
            }
            let Some(dst) = tunnel_dst(&t, state, learned) else {
                return drop(EgressDrop::NoTunnelDst);
            };
            if dst.is_ipv6() != t.ipv6 {
                return drop(EgressDrop::TunnelFamily);
            }
            Emit::Tunnel {
                port,
                dst,
                vni: tunnel_vni(&t, state),
            }
        }
    }
}

/// Everything the egress decision reads besides the packet: the snapshot's port map (for
/// `normal` and `flood`), the MAC table, the opened ports, the time, and whether the
/// datapath coalesces for TAPs.
pub struct EgressCtx<'a, M: MacLookup + ?Sized, P: EgressPorts + ?Sized> {
    /// The pipeline snapshot's port map.
    pub map: &'a PortMap,
    /// The MAC table `normal` looks destinations up in (learning is the caller's).
    pub macs: &'a M,
    /// The opened ports.
    pub ports: &'a P,
    /// Now, on the MAC table's clock.
    pub now: crate::Millis,
    /// Plain frames to TAPs with offloads are coalesced.
    pub coalesce: bool,
}

/// The emits of one datapath action for the packet in state `state`, in order, handed
/// to `emit`: one for an output, one (or a flood, or a refusal) for `normal`, one per
/// open port of the flood set for `flood`.
pub fn plan<M: MacLookup + ?Sized, P: EgressPorts + ?Sized>(
    ctx: &EgressCtx<'_, M, P>,
    action: &DpAction,
    state: &FlowKey,
    frame: &FrameInfo,
    mut emit: impl FnMut(Emit),
) {
    let flood = |emit: &mut dyn FnMut(Emit)| {
        for p in ctx.map.flood_ports(state.in_port(), state.tun_id()) {
            // A port of the snapshot that is not open (any more) is no flood target.
            if let Some(out) = ctx.ports.egress(p.number) {
                emit(emit_to(p.number, Some(out), state, 0, frame, ctx.coalesce));
            }
        }
    };
    match *action {
        DpAction::Output { port, .. } => emit(emit_to(
            port,
            ctx.ports.egress(port),
            state,
            0,
            frame,
            ctx.coalesce,
        )),
        DpAction::Normal { .. } => match normal(ctx.macs, ctx.map, state, ctx.now) {
            Forward::Port { port, tun_dst } => emit(emit_to(
                port,
                ctx.ports.egress(port),
                state,
                tun_dst,
                frame,
                ctx.coalesce,
            )),
            Forward::Flood => flood(&mut emit),
            Forward::Drop(r) => emit(Emit::Refused(r)),
        },
        DpAction::Flood { .. } => flood(&mut emit),
    }
}

#[cfg(test)]
mod tests;
