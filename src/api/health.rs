//! Liveness, readiness and the Prometheus endpoint.

use axum::{extract::State, http::StatusCode, response::IntoResponse, Json};
use serde_json::json;

use super::AppState;

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, description = "alive")))]
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the store is writable and, where MQTT is configured, the broker session is up
/// (and, with `--stale-after`, delivering).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready"), (status = 503, description = "not ready; `reasons` says why")))]
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let mut reasons = Vec::new();
    if let Some(f) = s.fault.borrow().as_ref() {
        reasons.push(format!("store not writable: {f}"));
    }
    if let Some(m) = &s.mqtt {
        let st = m.borrow();
        if !st.connected {
            reasons.push(format!(
                "MQTT session down: {}",
                st.last_error.as_deref().unwrap_or("connecting")
            ));
        }
        if let Some(why) = &st.stale {
            reasons.push(format!("MQTT session stale: {why}"));
        }
    }
    if reasons.is_empty() {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reasons": reasons})),
        )
    }
}

/// Prometheus text format: tidegate's own metrics (named `tidegate_…`) and the standard
/// `process_cpu_seconds_total` and `process_resident_memory_bytes`.
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let body = s.metrics.as_ref().map(|h| {
        h.run_upkeep();
        h.render() + &crate::telemetry::render_process()
    });
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body.unwrap_or_default(),
    )
}
