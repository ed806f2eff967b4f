//! The HTTP ingest body parser: any bytes give messages or a 4xx error, never a panic.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code, reason = "each target calls one of the shared checks")]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ingest_body(data));
