//! Metric names (Prometheus, prefixed `tidegate_`) and the few helpers that record them, plus the
//! standard `process_*` figures read from the OS when scraped. The invariant the tests check:
//! received = committed + duplicates + rejected + in flight.

pub const RECEIVED: &str = "tidegate_messages_received_total";
pub const COMMITTED: &str = "tidegate_messages_committed_total";
pub const DUPLICATES: &str = "tidegate_duplicates_suppressed_total";
pub const REJECTED: &str = "tidegate_messages_rejected_total";
pub const ACKED: &str = "tidegate_messages_acked_total";
pub const BATCHES: &str = "tidegate_batches_total";
pub const BATCH_SIZE: &str = "tidegate_batch_size";
pub const COMMIT_SECONDS: &str = "tidegate_commit_seconds";
/// How long each fsync of SQLite's write-ahead log took (`--sqlite-sync full`): the disk's share
/// of a commit, apart from the CPU's.
pub const SQLITE_FSYNC_SECONDS: &str = "tidegate_sqlite_fsync_seconds";
pub const IN_FLIGHT: &str = "tidegate_in_flight_messages";
pub const STORE_WRITABLE: &str = "tidegate_store_writable";
pub const MQTT_CONNECTED: &str = "tidegate_mqtt_connected";
pub const MQTT_RECONNECTS: &str = "tidegate_mqtt_reconnects_total";
pub const MQTT_SESSIONS_LOST: &str = "tidegate_mqtt_sessions_lost_total";
pub const MQTT_STALE: &str = "tidegate_mqtt_stale_total";
pub const CONFIG_RELOADS: &str = "tidegate_config_reloads_total";
pub const HTTP_REQUESTS: &str = "tidegate_http_requests_total";
pub const HTTP_RATE_LIMITED: &str = "tidegate_http_rate_limited_total";

struct Hot {
    mqtt: metrics::Counter,
    http: metrics::Counter,
    in_flight: metrics::Gauge,
}

/// Handles registered once: the per-message path is then an atomic add, not a registry lookup.
fn hot() -> &'static Hot {
    static HOT: std::sync::OnceLock<Hot> = std::sync::OnceLock::new();
    HOT.get_or_init(|| Hot {
        mqtt: metrics::counter!(RECEIVED, "source" => "mqtt"),
        http: metrics::counter!(RECEIVED, "source" => "http"),
        in_flight: metrics::gauge!(IN_FLIGHT),
    })
}

/// Counts messages entering the pipeline (`source` is `mqtt` or `http`).
pub fn received(source: &'static str, n: usize) {
    let h = hot();
    match source {
        "http" => h.http.increment(n as u64),
        _ => h.mqtt.increment(n as u64),
    }
    h.in_flight.increment(n as f64);
}

/// Installs the Prometheus recorder for this process and its upkeep task (needs a runtime);
/// returns the handle that renders it.
pub fn install() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(BATCH_SIZE.into()),
            &[1.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 20000.0],
        )
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full(COMMIT_SECONDS.into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ],
        )
        .ok()?
        .set_buckets_for_metric(
            Matcher::Full(SQLITE_FSYNC_SECONDS.into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
            ],
        )
        .ok()?
        .install_recorder()
        .ok()?;
    for name in [RECEIVED, COMMITTED, DUPLICATES, REJECTED, ACKED, BATCHES] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!(IN_FLIGHT).set(0.0);
    let _ = hot();
    // Histogram samples pile up until upkeep folds them in; /metrics does it when scraped, but
    // nobody may scrape, and memory must not grow with the message count (the soak found it).
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Some(handle)
}

/// This process's CPU time (user + system, every thread, ended ones included) in seconds, to
/// the nanosecond: the kernel's ticks in `/proc` are 10 ms, coarser than a short run's CPU.
#[cfg(unix)]
pub fn process_cpu_seconds() -> Option<f64> {
    use rustix::time::{clock_gettime, ClockId};
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Some(t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9)
}

#[cfg(not(unix))]
pub fn process_cpu_seconds() -> Option<f64> {
    None
}

/// This process's resident memory in bytes (`VmRSS`). Linux only (`/proc`); `None` elsewhere.
pub fn process_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The standard Prometheus process metrics, as text to append to `/metrics`. The metrics crate
/// has no float counter, and these are read at scrape time anyway, so they are written here.
pub fn render_process() -> String {
    let mut out = String::new();
    if let Some(cpu) = process_cpu_seconds() {
        out.push_str(&format!(
            "# HELP process_cpu_seconds_total User and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n"
        ));
    }
    if let Some(rss) = process_resident_bytes() {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_follow_the_cpu_this_process_burns_and_its_memory() {
        use rustix::time::{clock_gettime, ClockId};
        let thread = || {
            let t = clock_gettime(ClockId::ThreadCPUTime);
            t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
        };
        let before = process_cpu_seconds().expect("a unix CPU clock");
        // Burn 200 ms of this thread's CPU, however busy the machine is (capped at 20 s of wall).
        let (t0, started) = (thread(), std::time::Instant::now());
        let mut x = 0u64;
        while thread() - t0 < 0.2 && started.elapsed() < std::time::Duration::from_secs(20) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let burned = thread() - t0;
        let after = process_cpu_seconds().expect("a unix CPU clock");
        assert!(
            burned >= 0.2,
            "the loop stopped at 20 s of wall time: {burned} s of CPU"
        );
        assert!(
            after - before >= burned,
            "{burned} s of this thread's CPU shows as {} s of the process's",
            after - before
        );
        let rss = process_resident_bytes().expect("Linux /proc");
        assert!(rss > 1 << 20 && rss < 1 << 34, "resident {rss} bytes");
        let text = render_process();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert!(value("process_cpu_seconds_total").unwrap() >= after);
        assert!(value("process_resident_memory_bytes").unwrap() > 0.0);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
    }
}
