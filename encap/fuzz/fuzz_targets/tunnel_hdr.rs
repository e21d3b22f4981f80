//! The 24-byte UDP-tunnel virtio net header (`encap::offload::TunnelVnetHdr`) of what a
//! tunnel-GSO TAP read gives: header, then the frame (see `encap_fuzz::tunnel_hdr` for
//! the properties). The corpus is replayed by `encap/tests/fuzz_offload.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = encap_fuzz::tunnel_hdr(data);
});
