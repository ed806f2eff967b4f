//! The HTTP ingest body parser: any bytes give messages or a 4xx error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate::api::ingest_body::{parse, Format};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Ndjson] {
        match parse(format, data, 1 << 16) {
            Ok(messages) => assert!(!messages.is_empty()),
            Err(e) => assert!((400..500).contains(&e.status)),
        }
    }
});
