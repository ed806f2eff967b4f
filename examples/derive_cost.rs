//! Readings micro-benchmark: derives readings from the bench payload (`seq`, `sent_us` and a
//! text `pad`: three readings a message) a million times, with no broker or store, so a change to
//! `readings::derive` can be timed on its own. Prints nanoseconds a message, five times.
//!
//! `cargo run --release --example derive_cost`

use std::time::Instant;

fn main() {
    let cfg = tidegate::readings::ReadingsConfig::default();
    let now = chrono::Utc::now();
    let payloads: Vec<String> = (0..1000u64)
        .map(|seq| {
            format!(
                "{{\"seq\":{seq},\"sent_us\":{},\"pad\":\"{}\"}}",
                1_764_963_000_000_000u64 + seq,
                "x".repeat(60)
            )
        })
        .collect();
    for round in 1..=5 {
        let started = Instant::now();
        let mut readings = 0;
        for _ in 0..1000 {
            for p in &payloads {
                if let Some(d) = tidegate::readings::derive(&cfg, "bench/0", p.as_bytes(), now) {
                    readings += d.readings.len();
                }
            }
        }
        let ns = started.elapsed().as_nanos() as f64 / 1e6;
        println!("round {round}: {ns:.0} ns a message ({readings} readings)");
    }
}
