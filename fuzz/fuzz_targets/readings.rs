//! JSON flattening, event time, device and mappings: any bytes give readings, a reason, or nothing.
#![no_main]
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::readings(data));
