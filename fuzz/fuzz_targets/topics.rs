//! Topic names, filters, matching and broker URLs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tidegate::config::{filter_matches, validate_filter, validate_topic_name, BrokerUrl};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (a, b) = s.split_once('\n').unwrap_or((s, s));
    let _ = validate_filter(a);
    let _ = validate_topic_name(b);
    if validate_filter(a).is_ok() && validate_topic_name(b).is_ok() {
        let _ = filter_matches(a, b);
    }
    let _ = BrokerUrl::parse(s);
});
