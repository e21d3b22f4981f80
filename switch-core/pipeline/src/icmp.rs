//! "Too big" replies, so that path-MTU discovery works across the overlay.
//!
//! When a pod sends a frame larger than the tunnel can carry, the datapath drops it and
//! answers the pod through its own TAP with ICMP "fragmentation needed" (IPv4 with DF,
//! RFC 792/1191) or ICMPv6 "packet too big" (RFC 4443), carrying the tunnel's MTU. The
//! pod's kernel then lowers its path MTU for that destination and TCP re-segments, as it
//! would behind a router with a smaller link. An IPv4 packet without DF is dropped
//! without a reply (a router would fragment it; the overlay does not fragment).
//!
//! The reply is built into a caller's buffer (no allocation) from the frame as the pod
//! sent it, before the pipeline's rewrites (the worker undoes them first, see
//! `Worker::too_big`). Its source is the original destination (the pod's kernel accepts
//! the message from any source; this one is in the pod's own world and needs no extra
//! address), its Ethernet addresses are the original ones swapped (to the pod's MAC,
//! from the MAC the pod addressed: the peer in l2 mode, its gateway in l3 mode), and it
//! quotes as much of the original packet as RFC 1812 and RFC 4443 allow (576 and 1280
//! bytes of reply).

use encap::checksum;

const ETH_LEN: usize = 14;
/// Largest IPv4 ICMP error (RFC 1812 4.3.2.3).
const IPV4_ERROR_MAX: usize = 576;
/// Largest ICMPv6 error (RFC 4443 2.4 (c)).
const IPV6_ERROR_MAX: usize = 1280;

/// Builds the "too big" reply to `frame` (an Ethernet frame whose IP packet exceeds
/// `mtu`) into `out`; returns the reply's length, or `None` when no reply is due
/// (not IP, IPv4 without DF, malformed, an ICMP error itself, or `out` too small).
pub fn too_big_reply(frame: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(ETH_LEN..)?;
    let n = match ethertype {
        0x0800 => frag_needed_v4(ip, mtu, out.get_mut(ETH_LEN..)?)?,
        0x86dd => packet_too_big_v6(ip, mtu, out.get_mut(ETH_LEN..)?)?,
        _ => return None,
    };
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    out[12..14].copy_from_slice(&frame[12..14]);
    Some(ETH_LEN + n)
}

fn frag_needed_v4(ip: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let df = ip[6] & 0x40 != 0;
    let first_fragment = u16::from_be_bytes([ip[6] & 0x1f, ip[7]]) == 0;
    if !df || ihl < 20 || ip.len() < ihl || !first_fragment {
        return None;
    }
    // Never answer an ICMP error with an ICMP error (RFC 1812 4.3.2.7).
    if ip[9] == 1
        && ip
            .get(ihl)
            .is_some_and(|t| matches!(t, 3 | 4 | 5 | 11 | 12))
    {
        return None;
    }
    let quote = ip.len().min(IPV4_ERROR_MAX - 28);
    let len = 28 + quote;
    let out = out.get_mut(..len)?;
    out[0] = 0x45;
    out[1] = 0xc0; // internetwork control, like the kernel's ICMP errors
    out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    out[4..8].copy_from_slice(&[0, 0, 0x40, 0]);
    out[8] = 64;
    out[9] = 1;
    out[10..12].fill(0);
    out[12..16].copy_from_slice(&ip[16..20]);
    out[16..20].copy_from_slice(&ip[12..16]);
    let c = checksum::checksum(&out[..20]);
    out[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut out[20..];
    icmp[0] = 3; // destination unreachable
    icmp[1] = 4; // fragmentation needed and DF set
    icmp[2..4].fill(0);
    icmp[4..6].fill(0);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..].copy_from_slice(&ip[..quote]);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

fn packet_too_big_v6(ip: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    // ICMPv6 errors are not answered (RFC 4443 2.4 (e)); a direct check of the first
    // next header covers what the pod's own stack sends.
    if ip[6] == 58 && ip.get(40).is_some_and(|t| *t < 128) {
        return None;
    }
    let quote = ip.len().min(IPV6_ERROR_MAX - 48);
    let len = 48 + quote;
    let out = out.get_mut(..len)?;
    out[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    out[4..6].copy_from_slice(&((8 + quote) as u16).to_be_bytes());
    out[6] = 58;
    out[7] = 64;
    out[8..24].copy_from_slice(&ip[24..40]);
    out[24..40].copy_from_slice(&ip[8..24]);
    let (hdr, icmp) = out.split_at_mut(40);
    icmp[0] = 2; // packet too big
    icmp[1] = 0;
    icmp[2..4].fill(0);
    icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    icmp[8..].copy_from_slice(&ip[..quote]);
    let src: [u8; 16] = hdr[8..24].try_into().ok()?;
    let dst: [u8; 16] = hdr[24..40].try_into().ok()?;
    let pseudo = checksum::pseudo_header_v6(&src.into(), &dst.into(), 58, icmp.len() as u32);
    let c = checksum::fold(pseudo + checksum::sum(icmp));
    icmp[2..4].copy_from_slice(&(!c).to_be_bytes());
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: [u8; 6] = [2, 0, 0, 0, 1, 2];
    const GW: [u8; 6] = [2, 0, 0, 0, 1, 1];

    fn v4_frame(len: usize, df: bool, proto: u8) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&GW);
        f.extend_from_slice(&POD);
        f.extend_from_slice(&[0x08, 0x00]);
        let ip_len = len - 14;
        let mut ip = vec![0u8; ip_len];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[6] = if df { 0x40 } else { 0 };
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[198, 19, 1, 2]);
        ip[16..20].copy_from_slice(&[198, 19, 2, 2]);
        let c = checksum::checksum(&ip[..20]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f
    }

    #[test]
    fn ipv4_with_df_gets_fragmentation_needed() {
        let frame = v4_frame(1514, true, 6);
        let mut out = [0u8; 1600];
        let n = too_big_reply(&frame, 1450, &mut out).unwrap();
        assert_eq!(n, 14 + 576);
        let r = &out[..n];
        assert_eq!(&r[0..6], &POD, "back to the sender");
        assert_eq!(&r[6..12], &GW);
        let ip = &r[14..];
        assert_eq!(
            checksum::checksum(&ip[..20]),
            0,
            "ip header checksum verifies"
        );
        assert_eq!(&ip[12..16], &[198, 19, 2, 2]);
        assert_eq!(&ip[16..20], &[198, 19, 1, 2]);
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, n - 14);
        let icmp = &ip[20..];
        assert_eq!((icmp[0], icmp[1]), (3, 4));
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 1450);
        assert_eq!(checksum::checksum(icmp), 0, "icmp checksum verifies");
        assert_eq!(&icmp[8..28], &frame[14..34], "quotes the original header");
    }

    #[test]
    fn no_reply_without_df_or_for_icmp_errors_or_non_ip() {
        let mut out = [0u8; 1600];
        assert_eq!(
            too_big_reply(&v4_frame(1514, false, 6), 1450, &mut out),
            None
        );
        let mut err = v4_frame(1514, true, 1);
        err[34] = 3;
        assert_eq!(too_big_reply(&err, 1450, &mut out), None);
        let mut echo = v4_frame(1514, true, 1);
        echo[34] = 8;
        assert!(
            too_big_reply(&echo, 1450, &mut out).is_some(),
            "echo requests get one"
        );
        let mut arp = v4_frame(100, true, 6);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(too_big_reply(&arp, 1450, &mut out), None);
        assert_eq!(
            too_big_reply(&[0u8; 5], 1450, &mut out),
            None,
            "short frame"
        );
        assert_eq!(
            too_big_reply(&v4_frame(1514, true, 6), 1450, &mut [0u8; 100]),
            None
        );
    }

    #[test]
    fn ipv6_gets_packet_too_big() {
        let mut f = Vec::new();
        f.extend_from_slice(&GW);
        f.extend_from_slice(&POD);
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut ip = vec![0u8; 1500];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&1460u16.to_be_bytes());
        ip[6] = 17;
        ip[7] = 64;
        let src: std::net::Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let dst: std::net::Ipv6Addr = "2001:db8:2::2".parse().unwrap();
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&dst.octets());
        f.extend_from_slice(&ip);
        let mut out = [0u8; 1600];
        let n = too_big_reply(&f, 1430, &mut out).unwrap();
        assert_eq!(n, 14 + 1280);
        let ip6 = &out[14..n];
        assert_eq!(&ip6[8..24], &dst.octets());
        assert_eq!(&ip6[24..40], &src.octets());
        assert_eq!(u16::from_be_bytes([ip6[4], ip6[5]]) as usize, n - 14 - 40);
        let icmp = &ip6[40..];
        assert_eq!(icmp[0], 2);
        assert_eq!(u32::from_be_bytes(icmp[4..8].try_into().unwrap()), 1430);
        let pseudo = checksum::pseudo_header_v6(&dst, &src, 58, icmp.len() as u32);
        assert_eq!(
            checksum::fold(pseudo + checksum::sum(icmp)),
            0xffff,
            "checksum verifies"
        );
    }
}
