//! VXLAN decapsulation of untrusted bytes: as a UDP payload and as a whole outer packet.
#![no_main]
use encap::{UdpTunnel, decap_ip_udp, decap_vxlan, vxlan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = decap_vxlan(data) {
        assert_eq!(&data[d.inner_offset..], d.inner);
        // Round trip: the parsed header re-emits to the same meaningful bits.
        let mut h = [0u8; 8];
        vxlan::Repr { vni: d.vni }.emit(&mut vxlan::Packet::new_unchecked(&mut h[..]));
        assert_eq!(h[4..7], data[4..7]);
    }
    let none: &[(u16, u8)] = &[];
    if let Ok(d) = decap_ip_udp(data, UdpTunnel::VXLAN, none) {
        assert_eq!(&data[d.inner_offset..d.inner_offset + d.inner.len()], d.inner);
    }
});
