//! `FlowKey::extract` of arbitrary frames, with an arbitrary ingress port and tunnel
//! metadata: never panics, refuses only what the parsing policy says, and keeps the
//! key's invariants (see `weft_pipeline_fuzz::check_flow_key`). The corpus is replayed
//! by `switch-core/pipeline/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = weft_pipeline_fuzz::flow_key(data);
});
