//! Fault-suite results, one JSON file per scenario under target/reliability/, rendered into
//! docs/reliability.md by scripts/reliability-report — so the table is produced by the suite.

use std::path::PathBuf;

#[derive(serde::Serialize, Default)]
pub struct Row {
    pub scenario: String,
    pub parameters: String,
    pub sent: usize,
    pub lost: usize,
    pub duplicated: usize,
    /// Seconds from the end of the fault to the last message stored.
    pub recovery_s: f64,
    pub peak_rss_mib: f64,
    pub notes: String,
}

pub fn record(row: &Row) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("reliability");
    std::fs::create_dir_all(&dir).unwrap();
    let name: String = row
        .scenario
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(row).unwrap(),
    )
    .unwrap();
}

/// Peak resident memory of a process in MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()))
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}
