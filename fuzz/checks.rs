//! What each fuzz target checks, shared by the fuzz targets (`fuzz/fuzz_targets/`) and by
//! `tests/fuzz_corpus.rs`, which replays the committed corpus on every test run.

use tidegate::api::ingest_body::{parse, Format};
use tidegate::config::{filter_matches, validate_filter, validate_topic_name, BrokerUrl};

/// The TOML configuration: any text parses into settings or a clear error.
pub fn config(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = toml::from_str::<tidegate::config::RunArgs>(s);
    let _ = s.parse::<tidegate::config::Size>();
    let _ = s.parse::<tidegate::config::Span>();
}

/// The HTTP ingest body parser: any bytes give messages or a 4xx error, never a panic.
pub fn ingest_body(data: &[u8]) {
    for format in [Format::Json, Format::Ndjson] {
        match parse(format, data, 1 << 16) {
            Ok(messages) => assert!(!messages.is_empty()),
            Err(e) => assert!((400..500).contains(&e.status)),
        }
    }
}

/// JSON flattening, event time, device: any bytes give readings, a reason, or nothing.
pub fn readings(data: &[u8]) {
    let cfg = tidegate::readings::ReadingsConfig::default();
    if let Some(d) = tidegate::readings::derive(&cfg, "sensors/s1/telemetry", data, chrono::Utc::now()) {
        assert!(d.readings.len() <= cfg.max_fields);
    }
}

/// Topic names, filters, matching and broker URLs.
pub fn topics(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (a, b) = s.split_once('\n').unwrap_or((s, s));
    let _ = validate_filter(a);
    let _ = validate_topic_name(b);
    if validate_filter(a).is_ok() && validate_topic_name(b).is_ok() {
        let _ = filter_matches(a, b);
    }
    let _ = BrokerUrl::parse(s);
}
