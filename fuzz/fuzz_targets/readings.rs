//! JSON flattening, event time, device and mappings: any bytes give readings, a reason, or nothing.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code, reason = "each target calls one of the shared checks")]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::readings(data));
