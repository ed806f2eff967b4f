//! The TOML configuration: any text parses into settings or a clear error.
#![no_main]
#[path = "../checks.rs"]
#[allow(dead_code, reason = "each target calls one of the shared checks")]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config(data));
