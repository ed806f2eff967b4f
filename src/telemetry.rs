//! Metric names (Prometheus, prefixed `tidegate_`) and the few helpers that record them. The
//! invariant the tests check: received = committed + duplicates + rejected + in flight.

pub const RECEIVED: &str = "tidegate_messages_received_total";
pub const COMMITTED: &str = "tidegate_messages_committed_total";
pub const DUPLICATES: &str = "tidegate_duplicates_suppressed_total";
pub const REJECTED: &str = "tidegate_messages_rejected_total";
pub const ACKED: &str = "tidegate_messages_acked_total";
pub const BATCHES: &str = "tidegate_batches_total";
pub const BATCH_SIZE: &str = "tidegate_batch_size";
pub const COMMIT_SECONDS: &str = "tidegate_commit_seconds";
pub const IN_FLIGHT: &str = "tidegate_in_flight_messages";
pub const STORE_WRITABLE: &str = "tidegate_store_writable";
pub const MQTT_CONNECTED: &str = "tidegate_mqtt_connected";
pub const MQTT_RECONNECTS: &str = "tidegate_mqtt_reconnects_total";
pub const MQTT_SESSIONS_LOST: &str = "tidegate_mqtt_sessions_lost_total";
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
