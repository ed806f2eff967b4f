//! The TOML configuration: any text parses into settings or a clear error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = toml::from_str::<tidegate::config::RunArgs>(s);
    let _ = s.parse::<tidegate::config::Size>();
    let _ = s.parse::<tidegate::config::Span>();
});
