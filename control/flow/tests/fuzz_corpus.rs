//! Replays every file of the fuzz corpus `control/flow/fuzz/corpus/flow_parse/` through
//! the fuzz target's check, so what the fuzzer found stays fixed (the protocol's corpus
//! is replayed by `control/proto/tests/fuzz_corpus.rs`).

use std::path::Path;

#[test]
fn replay_flow_parse_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/flow_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        if let Ok(text) = std::str::from_utf8(&data) {
            let r = std::panic::catch_unwind(|| weft_flow::parse::check_round_trip(text));
            assert!(
                r.is_ok(),
                "corpus file {} fails the round trip",
                path.display()
            );
        }
        n += 1;
    }
    assert!(n >= 20, "expected at least 20 corpus files, found {n}");
}
