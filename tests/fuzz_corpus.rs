//! Replays the committed fuzz corpus (fuzz/corpus, grown by `scripts/fuzz`) through the same
//! checks as the fuzz targets, so every input the fuzzer kept — crashes it found included — stays
//! a regression test on stable Rust, in every test run.

#[path = "../fuzz/checks.rs"]
mod checks;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        n += 1;
    }
    assert!(n > 100, "{target}: only {n} corpus entries");
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn ingest_body_corpus() {
    replay("ingest_body", checks::ingest_body);
}

#[test]
fn readings_corpus() {
    replay("readings", checks::readings);
}

#[test]
fn topics_corpus() {
    replay("topics", checks::topics);
}
