//! The one parse of a frame: its headers into a [`FlowKey`], and where they are
//! ([`HeaderOffsets`]). See the module docs of `flow_key` for the parsing policy.

use std::fmt;

use super::{
    DL_TYPE_NONE, ETH_TYPE_ARP, ETH_TYPE_IPV4, ETH_TYPE_IPV6, ETH_TYPE_QINQ, ETH_TYPE_VLAN,
    FRAG_ANY, FRAG_LATER, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    KEY_WORDS, TunnelMeta,
};

/// Why a frame was refused before it got a key. `Copy`, small, indexes drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParseDrop {
    /// The frame is shorter than an Ethernet header (14 bytes).
    TooShort = 0,
    /// The frame announces a VLAN tag but ends inside it.
    TruncatedVlan = 1,
}

impl ParseDrop {
    /// Number of variants (size of a counter array indexed by [`ParseDrop::index`]).
    pub const COUNT: usize = 2;

    /// Counter index of this reason.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ParseDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseDrop::TooShort => "frame shorter than an ethernet header",
            ParseDrop::TruncatedVlan => "frame ends inside its vlan tag",
        })
    }
}

impl FlowKey {
    /// Parses a frame into a new key. See the module docs for the parsing policy.
    #[inline]
    pub fn extract(frame: &[u8], in_port: u32, tun: &TunnelMeta) -> Result<FlowKey, ParseDrop> {
        let mut key = FlowKey::ZERO;
        key.extract_into(frame, in_port, tun)?;
        Ok(key)
    }

    /// Parses a frame into a new key and says where its headers are: the one parse of a
    /// frame, whose offsets everything after it (commit, the TAP queue choice, offloads,
    /// ICMP replies) reuses instead of parsing again.
    #[inline]
    pub fn extract_with_offsets(
        frame: &[u8],
        in_port: u32,
        tun: &TunnelMeta,
    ) -> Result<(FlowKey, HeaderOffsets), ParseDrop> {
        let mut key = FlowKey::ZERO;
        let offs = key.extract_offsets_into(frame, in_port, tun)?;
        Ok((key, offs))
    }

    /// Parses a frame into `self`, overwriting every field (registers and metadata are
    /// reset to 0, as for a frame entering table 0).
    #[inline]
    pub fn extract_into(
        &mut self,
        frame: &[u8],
        in_port: u32,
        tun: &TunnelMeta,
    ) -> Result<(), ParseDrop> {
        self.extract_offsets_into(frame, in_port, tun).map(|_| ())
    }

    /// [`FlowKey::extract_into`] that also returns where the headers are.
    pub fn extract_offsets_into(
        &mut self,
        frame: &[u8],
        in_port: u32,
        tun: &TunnelMeta,
    ) -> Result<HeaderOffsets, ParseDrop> {
        *self = FlowKey::ZERO;
        let w = &mut self.words;
        w[0] = tun.tun_id;
        w[2] = (tun.tun_src >> 64) as u64;
        w[3] = tun.tun_src as u64;
        w[4] = (tun.tun_dst >> 64) as u64;
        w[5] = tun.tun_dst as u64;

        let Some(eth) = frame.first_chunk::<14>() else {
            return Err(ParseDrop::TooShort);
        };
        let dst = mac48(&eth[0..6]);
        let src = mac48(&eth[6..12]);
        let mut dl_type = be16(eth[12], eth[13]);
        let mut tci = 0u16;
        let mut l3 = &frame[14..];
        let mut offs = HeaderOffsets {
            l3: 14,
            ..HeaderOffsets::default()
        };
        if dl_type == ETH_TYPE_VLAN || dl_type == ETH_TYPE_QINQ {
            let Some(tag) = l3.first_chunk::<4>() else {
                return Err(ParseDrop::TruncatedVlan);
            };
            tci = be16(tag[0], tag[1]) | 0x1000;
            dl_type = be16(tag[2], tag[3]);
            l3 = &l3[4..];
            offs.l3 = 18;
        }
        if dl_type < 0x0600 {
            dl_type = DL_TYPE_NONE;
        }
        w[6] = in_port as u64 | (dl_type as u64) << 32 | (tci as u64) << 48;
        w[11] = src;
        w[12] = dst;

        let ip = match dl_type {
            ETH_TYPE_IPV4 => parse_ipv4(w, l3),
            ETH_TYPE_IPV6 => parse_ipv6(w, l3),
            ETH_TYPE_ARP => {
                parse_arp(w, l3);
                None
            }
            _ => None,
        };
        if let Some(ip) = ip {
            // Offsets inside `l3`, which is at most a frame long: they fit.
            offs.end = offs.l3 + ip.end as u32;
            if let Some(l4) = ip.l4 {
                offs.l4 = offs.l3 + l4 as u32;
                offs.proto = ip.proto;
            }
        }
        Ok(offs)
    }
}

/// Where the headers of a frame are, as [`FlowKey::extract_with_offsets`] found them.
/// Offsets count from the start of the frame; the pipeline's rewrites never move them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HeaderOffsets {
    /// Start of the L3 header: 14, or 18 behind one VLAN tag.
    pub l3: u32,
    /// Start of the L4 header, when the frame is IP with a header the key parsed past
    /// (not a later fragment, no broken IPv6 extension chain); 0 otherwise. The L4 header
    /// itself may be truncated (then the key's `tp_src`/`tp_dst` are 0).
    pub l4: u32,
    /// End of the IP packet (its total or payload length; Ethernet padding after it is
    /// not part of it) when the L3 header is a valid IPv4 or IPv6 header; 0 otherwise.
    pub end: u32,
    /// The protocol of the header at [`HeaderOffsets::l4`] (IPv4 protocol, or the IPv6
    /// next header after the extension headers); 0 without one. It is the frame's, not
    /// the key's (a flow may set the key's `nw_proto`).
    pub proto: u8,
}

impl HeaderOffsets {
    /// The offsets of a frame parsed on its own (for callers that hold no key).
    pub fn of(frame: &[u8]) -> Option<HeaderOffsets> {
        let mut scratch = FlowKey::ZERO;
        scratch
            .extract_offsets_into(frame, 0, &TunnelMeta::NONE)
            .ok()
    }

    /// Whether the frame has a valid IPv4 or IPv6 header at [`HeaderOffsets::l3`].
    #[inline]
    pub fn has_ip(&self) -> bool {
        self.end != 0
    }

    /// Where the L4 header is, if the parse reached one.
    #[inline]
    pub fn l4(&self) -> Option<usize> {
        (self.l4 != 0).then_some(self.l4 as usize)
    }
}

/// Where an IP header's payload is, relative to the IP header.
#[derive(Clone, Copy)]
struct IpSpan {
    /// Start of the L4 header (None: a later fragment or a broken extension chain).
    l4: Option<usize>,
    /// End of the IP packet.
    end: usize,
    /// The protocol of the L4 header.
    proto: u8,
}

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

#[inline(always)]
fn mac48(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x[2..].copy_from_slice(&b[..6]);
    u64::from_be_bytes(x)
}

#[inline(always)]
fn be32(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[..4]);
    u32::from_be_bytes(x)
}

#[inline(always)]
fn be64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

/// ARP for Ethernet/IPv4 only (htype 1, ptype 0x0800, hlen 6, plen 4), as OVS.
#[inline]
fn parse_arp(w: &mut [u64; KEY_WORDS], p: &[u8]) {
    let Some(a) = p.first_chunk::<28>() else {
        return;
    };
    if be16(a[0], a[1]) != 1 || be16(a[2], a[3]) != ETH_TYPE_IPV4 || a[4] != 6 || a[5] != 4 {
        return;
    }
    let op = be16(a[6], a[7]);
    if op <= 0xff {
        w[11] |= (op as u64) << 48;
    }
    w[18] = mac48(&a[8..14]);
    w[19] = mac48(&a[18..24]);
    w[13] = be32(&a[14..18]) as u64 | (be32(&a[24..28]) as u64) << 32;
}

#[inline]
fn parse_ipv4(w: &mut [u64; KEY_WORDS], p: &[u8]) -> Option<IpSpan> {
    let h = p.first_chunk::<20>()?;
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let tot_len = be16(h[2], h[3]) as usize;
    if h[0] >> 4 != 4 || ihl < 20 || tot_len < ihl || tot_len > p.len() {
        return None;
    }
    let frag = be16(h[6], h[7]);
    let off = frag & 0x1fff;
    let mut nw_frag = 0u8;
    if frag & 0x2000 != 0 || off != 0 {
        nw_frag = FRAG_ANY;
        if off != 0 {
            nw_frag |= FRAG_LATER;
        }
    }
    let proto = h[9];
    w[11] |= (proto as u64) << 48 | ((h[1] & 0xfc) as u64) << 56;
    w[12] |= (h[8] as u64) << 48 | (nw_frag as u64) << 56;
    w[13] = be32(&h[12..16]) as u64 | (be32(&h[16..20]) as u64) << 32;
    if nw_frag & FRAG_LATER != 0 {
        return Some(IpSpan {
            l4: None,
            end: tot_len,
            proto,
        });
    }
    // Ethernet padding after tot_len is not L4 payload.
    parse_l4(w, proto, &p[ihl..tot_len], IPPROTO_ICMP);
    Some(IpSpan {
        l4: Some(ihl),
        end: tot_len,
        proto,
    })
}

#[inline]
fn parse_ipv6(w: &mut [u64; KEY_WORDS], p: &[u8]) -> Option<IpSpan> {
    let h = p.first_chunk::<40>()?;
    let payload_len = be16(h[4], h[5]) as usize;
    if h[0] >> 4 != 6 || 40 + payload_len > p.len() {
        return None;
    }
    let tclass = (h[0] << 4) | (h[1] >> 4);
    w[14] = be64(&h[8..16]);
    w[15] = be64(&h[16..24]);
    w[16] = be64(&h[24..32]);
    w[17] = be64(&h[32..40]);
    let mut nxt = h[6];
    let mut rest = &p[40..40 + payload_len];
    let mut nw_frag = 0u8;
    let mut l4_ok = true;
    // Skip the common extension headers; a bounded number so forged chains cost little.
    for _ in 0..8 {
        let hdr_len = match nxt {
            0 | 43 | 60 => match rest.first_chunk::<2>() {
                Some(e) => (e[1] as usize + 1) * 8,
                None => {
                    l4_ok = false;
                    break;
                }
            },
            51 => match rest.first_chunk::<2>() {
                Some(e) => (e[1] as usize + 2) * 4,
                None => {
                    l4_ok = false;
                    break;
                }
            },
            44 => match rest.first_chunk::<8>() {
                Some(e) => {
                    let off = be16(e[2], e[3]) >> 3;
                    let more = e[3] & 1 != 0;
                    if off != 0 || more {
                        nw_frag |= FRAG_ANY;
                    }
                    if off != 0 {
                        nw_frag |= FRAG_LATER;
                    }
                    8
                }
                None => {
                    l4_ok = false;
                    break;
                }
            },
            _ => break,
        };
        if hdr_len > rest.len() {
            l4_ok = false;
            break;
        }
        nxt = rest[0];
        rest = &rest[hdr_len..];
    }
    w[11] |= (nxt as u64) << 48 | ((tclass & 0xfc) as u64) << 56;
    w[12] |= (h[7] as u64) << 48 | (nw_frag as u64) << 56;
    let end = 40 + payload_len;
    if !(l4_ok && nw_frag & FRAG_LATER == 0) {
        return Some(IpSpan {
            l4: None,
            end,
            proto: nxt,
        });
    }
    parse_l4(w, nxt, rest, IPPROTO_ICMPV6);
    Some(IpSpan {
        l4: Some(end - rest.len()),
        end,
        proto: nxt,
    })
}

/// TCP (20-byte header), UDP (8), ICMP (8: type, code, checksum, rest) and ICMPv6 (4).
/// A truncated L4 header leaves `tp_src`/`tp_dst` at 0.
#[inline]
fn parse_l4(w: &mut [u64; KEY_WORDS], proto: u8, p: &[u8], icmp: u8) {
    let (src, dst) = match proto {
        IPPROTO_TCP => match p.first_chunk::<20>() {
            Some(t) => (be16(t[0], t[1]), be16(t[2], t[3])),
            None => return,
        },
        IPPROTO_UDP => match p.first_chunk::<8>() {
            Some(u) => (be16(u[0], u[1]), be16(u[2], u[3])),
            None => return,
        },
        _ if proto == icmp => {
            let need = if icmp == IPPROTO_ICMP { 8 } else { 4 };
            if p.len() < need {
                return;
            }
            (p[0] as u16, p[1] as u16)
        }
        _ => return,
    };
    w[18] |= (src as u64) << 48;
    w[19] |= (dst as u64) << 48;
}
