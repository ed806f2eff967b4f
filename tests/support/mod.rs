//! Test harness: real Mosquitto brokers and real tidegate processes on free loopback ports.
//! Every helper cleans up after itself on drop (processes killed, temp dirs removed).
#![allow(dead_code)]

pub mod broker;
pub mod certs;
pub mod db;
pub mod pg;
pub mod proxy;
pub mod report;
pub mod tidegate;

use std::time::{Duration, Instant};

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of a Prometheus metric's samples (all label sets) in a `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A config file in `dir` mapping `sensors/+/telemetry` to a `telemetry` table with a
/// `temperature_c` column.
pub fn telemetry_mapping(dir: &std::path::Path) -> std::path::PathBuf {
    let conf = dir.join("tidegate.toml");
    std::fs::write(
        &conf,
        "[[mapping]]\nfilter = \"sensors/+/telemetry\"\ntable = \"telemetry\"\n[mapping.columns]\ntemperature_c = \"$.temp\"\n",
    )
    .unwrap();
    conf
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
