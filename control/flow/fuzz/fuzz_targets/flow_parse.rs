//! Fuzz the flow-text parser: any UTF-8 input either fails to parse or parses to a flow
//! (or filter) whose printed form parses back to the same value. The same check replays
//! the corpus in `control/flow/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        weft_flow::parse::check_round_trip(text);
    }
});
