//! TCP/UDP segmentation (userspace TSO) of what a TAP read gives: a virtio net header
//! then the frame. Segments never exceed `hdr_len + gso_size`, have valid lengths and
//! checksums, conserve the payload, and coalesce back into the super-frame (see
//! `encap_fuzz::check_segment`). The corpus is replayed by `encap/tests/fuzz_offload.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = encap_fuzz::segment(data);
});
