//! IP-in-IP (RFC 2003; IPv6-in-IPv4 with protocol 41 as RFC 4213): an outer IPv4 header
//! in front of an inner IP packet.
//!
//! Encapsulation follows RFC 2003 §3.1: TOS is copied from the inner header (the IPv6
//! traffic class for protocol 41); DF is copied from an inner IPv4 header (set for inner
//! IPv6, as Linux `sit` does with path MTU discovery on, its default); the outer TTL is
//! the tunnel's; the inner TTL/hop limit is decremented when the tunnel forwards (the
//! default) and a packet whose TTL would reach 0 is never encapsulated
//! ([`DropReason::TtlExpired`]). The outer identification is the inner IPv4 one (unique
//! per inner source/destination/protocol, which keeps the header stateless), 0 for
//! inner IPv6. The outer checksum comes from a partial sum precomputed per tunnel.
use crate::decap::{Decapsulated, InnerProto, OuterAddrs};
use crate::geneve::Options;
use crate::{DropReason, checksum, ipv4};
use core::net::Ipv4Addr;
use core::ops::Range;

/// Headroom an IP-in-IP encapsulation needs (one IPv4 header without options).
pub const HEADROOM: usize = ipv4::HEADER_LEN;

/// Settings of an IP-in-IP tunnel; `Default` gives TTL 64 and inner TTL decrement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpipParams {
    /// Outer TTL (default 64).
    pub ttl: u8,
    /// Decrement the inner TTL/hop limit, as a router forwarding into the tunnel does
    /// (RFC 2003 §3.1). Turn off if the pipeline already ran `dec_ttl`.
    pub decrement_inner_ttl: bool,
}

impl Default for IpipParams {
    fn default() -> Self {
        IpipParams {
            ttl: 64,
            decrement_inner_ttl: true,
        }
    }
}

/// The outer IPv4 header of one IP-in-IP tunnel, built once, stamped per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpipTemplate {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    params: IpipParams,
    /// Partial sum of the fixed words: version/IHL, TTL, addresses.
    base_sum: u64,
    fixed: [u8; ipv4::HEADER_LEN],
}

impl IpipTemplate {
    /// A tunnel from `src` to `dst`.
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, params: IpipParams) -> IpipTemplate {
        let mut fixed = [0u8; ipv4::HEADER_LEN];
        fixed[0] = 0x45;
        fixed[8] = params.ttl;
        fixed[12..16].copy_from_slice(&src.octets());
        fixed[16..20].copy_from_slice(&dst.octets());
        IpipTemplate {
            src,
            dst,
            params,
            base_sum: checksum::sum(&fixed),
            fixed,
        }
    }

    /// Local (outer source) address.
    pub const fn src(&self) -> Ipv4Addr {
        self.src
    }

    /// Remote (outer destination) address.
    pub const fn dst(&self) -> Ipv4Addr {
        self.dst
    }

    /// The tunnel's settings.
    pub const fn params(&self) -> IpipParams {
        self.params
    }

    /// Writes the outer IPv4 header in front of the inner IP packet at
    /// `buf[inner_start..inner_start + inner_len]` (possibly decrementing its TTL and
    /// updating its checksum) and returns the range of the packet to send.
    #[inline]
    pub fn encapsulate(
        &self,
        buf: &mut [u8],
        inner_start: usize,
        inner_len: usize,
    ) -> Result<Range<usize>, DropReason> {
        self.encapsulate_to(buf, inner_start, inner_len, self.dst)
    }

    /// [`IpipTemplate::encapsulate`] toward `dst` instead of the template's destination:
    /// one template per tunnel port serves a `remote=flow` port too, whose peer is
    /// chosen per packet (its address and its share of the checksum are written in).
    #[inline]
    pub fn encapsulate_to(
        &self,
        buf: &mut [u8],
        inner_start: usize,
        inner_len: usize,
        dst: Ipv4Addr,
    ) -> Result<Range<usize>, DropReason> {
        self.encapsulate_head(buf, inner_start, inner_len, inner_len, dst)
    }

    /// [`IpipTemplate::encapsulate_to`] for an inner packet of `inner_len` bytes of
    /// which only the first `head_len` (its headers, at least the IP header) are in
    /// `buf` at `inner_start`: the rest goes out from elsewhere (a second iovec), so the
    /// outer header's length counts it. Returns the range of `buf` to send first.
    #[inline]
    pub fn encapsulate_head(
        &self,
        buf: &mut [u8],
        inner_start: usize,
        head_len: usize,
        inner_len: usize,
        dst: Ipv4Addr,
    ) -> Result<Range<usize>, DropReason> {
        let start = inner_start
            .checked_sub(HEADROOM)
            .ok_or(DropReason::NoHeadroom)?;
        let end = inner_start
            .checked_add(head_len.min(inner_len))
            .ok_or(DropReason::FrameOutOfBounds)?;
        if end > buf.len() {
            return Err(DropReason::FrameOutOfBounds);
        }
        let total = HEADROOM + inner_len;
        if total > usize::from(u16::MAX) {
            return Err(DropReason::FrameTooLarge);
        }
        let (hdr, inner) = buf[start..end].split_at_mut(HEADROOM);
        let dec = self.params.decrement_inner_ttl;
        let (tos, flags, ident, proto) = match inner.first().map(|b| b >> 4) {
            Some(4) => {
                let Some(ih) = inner.get_mut(..ipv4::HEADER_LEN) else {
                    return Err(DropReason::Truncated);
                };
                let ttl = ih[8];
                if ttl == 0 || (dec && ttl == 1) {
                    return Err(DropReason::TtlExpired);
                }
                if dec {
                    let old = u16::from_be_bytes([ttl, ih[9]]);
                    let check = u16::from_be_bytes([ih[10], ih[11]]);
                    ih[8] = ttl - 1;
                    let c = checksum::update(check, old, old - 0x100);
                    ih[10..12].copy_from_slice(&c.to_be_bytes());
                }
                (ih[1], ih[6] & 0x40, [ih[4], ih[5]], crate::IPPROTO_IPIP)
            }
            Some(6) => {
                let Some(ih) = inner.get_mut(..crate::ipv6::HEADER_LEN) else {
                    return Err(DropReason::Truncated);
                };
                let hop = ih[7];
                if hop == 0 || (dec && hop == 1) {
                    return Err(DropReason::TtlExpired);
                }
                if dec {
                    ih[7] = hop - 1;
                }
                (
                    (ih[0] << 4) | (ih[1] >> 4),
                    0x40,
                    [0, 0],
                    crate::IPPROTO_IPV6,
                )
            }
            Some(_) => return Err(DropReason::UnsupportedInnerProtocol),
            None => return Err(DropReason::Truncated),
        };
        let hdr: &mut [u8; ipv4::HEADER_LEN] =
            hdr.try_into().map_err(|_| DropReason::NoHeadroom)?;
        *hdr = self.fixed;
        let [t0, t1] = (total as u16).to_be_bytes();
        hdr[1] = tos;
        hdr[2] = t0;
        hdr[3] = t1;
        hdr[4] = ident[0];
        hdr[5] = ident[1];
        hdr[6] = flags;
        hdr[9] = proto;
        let dst = dst.octets();
        hdr[16..20].copy_from_slice(&dst);
        // `base_sum` holds the template's destination words; swap in `dst`'s (adding
        // the ones' complement of a sum takes it away).
        let s = self.base_sum
            + (0xffff - checksum::sum(&self.dst.octets()))
            + checksum::sum(&dst)
            + u64::from(tos)
            + total as u64
            + u64::from(u16::from_be_bytes(ident))
            + (u64::from(flags) << 8)
            + u64::from(proto);
        let c = !checksum::fold(s);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        Ok(start..end)
    }
}

/// Decapsulates an IPv4 packet with protocol 4 or 41 (what a raw `IPPROTO_IPIP` socket
/// delivers, outer header included): validates the outer header (version, IHL, total
/// length, checksum, not a fragment, protocol) and checks that the inner IP version
/// matches the protocol. Bytes past the outer total length are ignored.
#[inline]
pub fn decap_ipip(packet: &[u8]) -> Result<Decapsulated<'_>, DropReason> {
    let p = ipv4::Packet::new_unchecked(packet);
    let r = ipv4::Repr::parse(&p)?;
    let (proto, min) = match r.protocol {
        crate::IPPROTO_IPIP => (InnerProto::Ipv4, ipv4::HEADER_LEN),
        crate::IPPROTO_IPV6 => (InnerProto::Ipv6, crate::ipv6::HEADER_LEN),
        _ => return Err(DropReason::WrongIpProtocol),
    };
    let hl = p.header_len();
    let inner = packet
        .get(hl..usize::from(p.total_len()))
        .ok_or(DropReason::BadIpLength)?;
    let want = if proto == InnerProto::Ipv4 { 4 } else { 6 };
    match inner.first() {
        Some(b) if b >> 4 != want => return Err(DropReason::InnerVersionMismatch),
        _ if inner.len() < min => return Err(DropReason::Truncated),
        _ => {}
    }
    Ok(Decapsulated {
        inner,
        inner_offset: hl,
        inner_proto: proto,
        vni: 0,
        outer: Some(OuterAddrs {
            src: r.src_addr.into(),
            dst: r.dst_addr.into(),
        }),
        udp_src_port: None,
        options: Options::EMPTY,
        oam: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encapsulate_to_another_peer_is_the_template_of_that_peer() {
        let src = Ipv4Addr::new(198, 18, 0, 1);
        let flow = IpipTemplate::new(src, Ipv4Addr::UNSPECIFIED, IpipParams::default());
        let mut inner = [0u8; 40];
        inner[0] = 0x45;
        inner[2..4].copy_from_slice(&40u16.to_be_bytes());
        inner[6] = 0x40;
        inner[8] = 64;
        inner[9] = 17;
        for dst in [
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(255, 255, 255, 255),
            Ipv4Addr::new(0, 0, 0, 1),
        ] {
            let fixed = IpipTemplate::new(src, dst, IpipParams::default());
            let mut a = [0u8; 60];
            a[20..].copy_from_slice(&inner);
            let mut b = a;
            let ra = fixed.encapsulate(&mut a, 20, 40).unwrap();
            let rb = flow.encapsulate_to(&mut b, 20, 40, dst).unwrap();
            assert_eq!(ra, rb);
            assert_eq!(a, b, "{dst}");
            assert_eq!(checksum::checksum(&b[..20]), 0, "outer checksum verifies");
        }
    }
}
