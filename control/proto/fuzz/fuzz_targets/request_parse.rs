//! Fuzz the control protocol's request reader: any bytes either give a clean error
//! or a request that serialises back to a line that reads back the same. The same
//! check replays the corpus in `control/proto/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    weft_proto::check_request(data);
});
