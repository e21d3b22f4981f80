//! The rewrite commit: an arbitrary frame, a flow with an arbitrary sequence of
//! rewrites (`set_field`, `move`, `mod_*`, `dec_ttl`, outputs), and every output's
//! state committed into the frame. The committed frame parses to that state and keeps
//! valid IPv4 and L4 checksums valid (see `weft_pipeline_fuzz::check_commit`). The
//! corpus is replayed by `switch-core/pipeline/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = weft_pipeline_fuzz::commit(data);
});
