//! TCP coalescing (userspace GRO) of an arbitrary sequence of frames and flushes: every
//! frame comes out once, unchanged or inside a super-frame that the segmenter accepts
//! and that segments back into the frames that went in (see
//! `encap_fuzz::check_coalesce`). The corpus is replayed by `encap/tests/fuzz_offload.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = encap_fuzz::coalesce(data);
});
