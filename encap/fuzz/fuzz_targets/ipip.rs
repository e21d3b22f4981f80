//! IP-in-IP decapsulation of untrusted bytes (what a raw IPPROTO_IPIP socket delivers).
#![no_main]
use encap::decap_ipip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = decap_ipip(data) {
        assert_eq!(&data[d.inner_offset..d.inner_offset + d.inner.len()], d.inner);
        assert!(d.inner.len() >= 20);
    }
});
