//! Replays every file of the fuzz corpus `control/proto/fuzz/corpus/request_parse/`
//! through the fuzz target's check, so what the fuzzer found stays fixed.

use std::path::Path;

#[test]
fn replay_request_parse_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/request_parse");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| weft_proto::check_request(&data));
        assert!(r.is_ok(), "corpus file {} fails the check", path.display());
        n += 1;
    }
    assert!(n >= 20, "expected at least 20 corpus files, found {n}");
}
