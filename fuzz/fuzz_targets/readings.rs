//! JSON flattening, event time, device and mappings: any bytes give readings, a reason, or nothing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let cfg = tidegate::readings::ReadingsConfig::default();
    if let Some(d) = tidegate::readings::derive(&cfg, "sensors/s1/telemetry", data, chrono::Utc::now()) {
        assert!(d.readings.len() <= cfg.max_fields);
    }
});
