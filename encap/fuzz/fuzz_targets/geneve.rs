//! Geneve decapsulation of untrusted bytes: as a UDP payload and as a whole outer packet,
//! with and without understanding the critical options.
#![no_main]
use encap::geneve::{self, Options};
use encap::{UdpTunnel, decap_geneve, decap_ip_udp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let known: &[(u16, u8)] = &[(0x0102, 0x80)];
    let all = |_c: u16, _t: u8| true;
    if let Ok(d) = decap_geneve(data, &all) {
        assert_eq!(&data[d.inner_offset..], d.inner);
        // Round trip: re-emit the header from its Repr and compare.
        let p = geneve::Packet::new_unchecked(data);
        let r = geneve::Repr::parse(&p).unwrap();
        let mut out = [0u8; geneve::HEADER_MAX];
        r.emit(&mut geneve::Packet::new_unchecked(&mut out[..r.buffer_len()]));
        let again = geneve::Repr::parse(&geneve::Packet::new_unchecked(&out[..r.buffer_len()])).unwrap();
        assert_eq!(again, r);
        let n = d.options.iter().count();
        assert_eq!(Options::new_checked(d.options.as_bytes()).map(|o| o.iter().count()), Ok(n));
    }
    let _ = decap_geneve(data, known);
    if let Ok(d) = decap_ip_udp(data, UdpTunnel::GENEVE, known) {
        assert_eq!(&data[d.inner_offset..d.inner_offset + d.inner.len()], d.inner);
    }
    for o in geneve::OptionIter::new(data) {
        let _ = o;
    }
});
