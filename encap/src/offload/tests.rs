//! Segmentation and coalescing against the kernel's rules, on hand-built frames.

use super::frame::parse_tcp_frame;
use super::*;

/// Ethernet (optionally 802.1Q) + IPv4 + TCP headers with `payload` zero bytes.
fn frame(vlan: bool, payload: usize) -> std::vec::Vec<u8> {
    let l3 = if vlan { 18 } else { 14 };
    let mut f = std::vec![0u8; l3 + 40 + payload];
    if vlan {
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    }
    f[l3 - 2..l3].copy_from_slice(&0x0800u16.to_be_bytes());
    f[l3] = 0x45;
    f[l3 + 2..l3 + 4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    f[l3 + 9] = IPPROTO_TCP;
    f[l3 + 32] = 5 << 4;
    f
}

#[test]
fn finds_headers_behind_a_vlan_tag() {
    let p = parse_tcp_frame(&frame(true, 7)).unwrap();
    assert_eq!((p.l3, p.l4, p.hl, p.end, p.v6), (18, 38, 58, 65, false));
    let p = parse_tcp_frame(&frame(false, 0)).unwrap();
    assert_eq!((p.l3, p.l4, p.hl, p.end), (14, 34, 54, 54));
}

#[test]
fn ethernet_padding_is_not_payload() {
    let mut f = frame(false, 2);
    f.extend_from_slice(&[0xee; 4]);
    assert_eq!(parse_tcp_frame(&f).unwrap().end, 14 + 42);
}

#[test]
fn view_getters_read_zero_when_short() {
    let h = Header::new_unchecked(&[1u8, 4, 9][..]);
    assert_eq!(
        (h.flags(), h.gso_type(), h.gso_size(), h.num_buffers()),
        (1, 4, 0, 0)
    );
    let mut b = [0u8; 12];
    let mut h = Header::new_checked(&mut b[..]).unwrap();
    h.set_num_buffers(3);
    assert_eq!(h.num_buffers(), 3);
    assert_eq!(b[10..12], [3, 0]);
}

#[test]
fn empty_payload_is_one_segment() {
    let f = frame(false, 0);
    let hdr = VirtioNetHdr {
        gso_type: VirtioNetHdr::GSO_TCPV4,
        gso_size: 100,
        ..VirtioNetHdr::default()
    };
    let s = Segmenter::new(&hdr, &f).unwrap();
    assert_eq!((s.remaining(), s.next_len()), (1, Some(54)));
}
