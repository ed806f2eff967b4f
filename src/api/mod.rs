//! The HTTP API beside the pipeline: ingest (through the same writer and the same
//! ack-after-commit rule as MQTT), queries, a live stream, health, metrics and the OpenAPI
//! document generated from these handlers. It must never write to the store directly.

mod auth;
mod error;
mod health;
mod ingest;
pub mod ingest_body;
mod latest;
mod limit;
mod page;
mod params;
mod preview;
mod query;
mod readings;
mod reload;
mod stream;
mod subscriptions;
pub mod tls;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::MatchedPath, http::Request, middleware, response::IntoResponse, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use auth::SecurityAddon;
pub use error::ApiError;

use crate::{pipeline, pipeline::writer::Live, secret::Secret, source::SourceStatus, store::Store};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub ingest: pipeline::Sender,
    pub fault: watch::Receiver<Option<String>>,
    pub mqtt: Option<watch::Receiver<SourceStatus>>,
    /// The bearer tokens accepted now (none: no token asked); a reload may replace them.
    pub tokens: crate::config::current::Current<Vec<Secret>>,
    pub live: Live,
    pub metrics: Option<PrometheusHandle>,
    pub max_payload: usize,
    /// How readings and mapped rows are derived (the writer's own), for previews.
    pub readings: crate::config::current::Current<crate::readings::ReadingsConfig>,
    /// Reads the config file again (`POST /api/v1/reload`).
    pub reload: Arc<crate::reload::Reloader>,
    /// Fires when the process stops; ends live streams so the server can finish.
    pub stop: watch::Receiver<bool>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tidegate API",
        description = "Ingest, query and follow MQTT messages stored by tidegate. Every route except /healthz needs `Authorization: Bearer <token>` when a token is configured."
    ),
    components(schemas(ApiError)),
    modifiers(&SecurityAddon),
    security(("bearer" = []))
)]
struct ApiDoc;

/// Which routes a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Every route: `run` and `serve`.
    All,
    /// Liveness, readiness and metrics only: a `subscribe`, which stores and answers nothing
    /// itself.
    Health,
}

/// The router with the `routes` asked for, auth, limits and request metrics.
pub fn router(
    state: AppState,
    max_body: usize,
    rate_limit: Option<std::num::NonZeroU32>,
    routes: Routes,
) -> Router {
    let health = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics));
    let (api, spec) = match routes {
        Routes::Health => health,
        Routes::All => health
            .routes(routes!(ingest::post_messages, query::get_messages))
            .routes(routes!(query::get_topics))
            .routes(routes!(readings::get_readings))
            .routes(routes!(latest::get_latest))
            .routes(routes!(preview::post_preview))
            .routes(routes!(reload::post_reload))
            .routes(routes!(
                subscriptions::get_subscriptions,
                subscriptions::put_subscriptions
            ))
            .routes(routes!(stream::get_stream))
            .routes(routes!(page::index)),
    }
    .split_for_parts();
    let spec = Arc::new(spec);
    let api = api
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move { axum::Json(spec.as_ref().clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such route; see /api/v1/openapi.json").into_response() })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method; see /api/v1/openapi.json",
            )
            .into_response()
        })
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    // Outside auth: a client hammering with wrong tokens is slowed down too.
    let api = match rate_limit {
        Some(n) => api.layer(middleware::from_fn_with_state(
            limit::Limiter::per_second(n),
            limit::limit,
        )),
        None => api,
    };
    api.layer(middleware::from_fn(count_requests))
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .with_state(state)
}

async fn count_requests(req: Request<axum::body::Body>, next: middleware::Next) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    metrics::counter!(crate::telemetry::HTTP_REQUESTS, "route" => route, "status" => resp.status().as_u16().to_string())
        .increment(1);
    resp
}

/// Binds `addr` and serves until `stop` fires, over HTTPS when `tls` is given. Returns the bound
/// address through `bound`.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    tls: Option<tls::ServerTls>,
    stop: watch::Receiver<bool>,
    bound: tokio::sync::oneshot::Sender<SocketAddr>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("API listening on {scheme}://{local}");
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            "the API is reachable from other machines over plain HTTP: its token and data cross the \
             network readable; give --api-tls-cert and --api-tls-key, or put a TLS proxy in front"
        );
    }
    let _ = bound.send(local);
    match tls {
        Some(tls) => {
            // Through `tap_io`, as below: axum gives a handler the client's address for the
            // listeners it knows, and for any listener so wrapped.
            let listener = axum::serve::ListenerExt::tap_io(tls.listener(listener), |tls| {
                let _ = tls.get_ref().0.set_nodelay(true);
            });
            serve_on(listener, router, stop).await
        }
        None => {
            // No Nagle: live-stream events are small writes that must leave at once, not wait for
            // the client's delayed ACK (that alone added ~3 ms median and ~40 ms worst case per
            // event).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            serve_on(listener, router, stop).await
        }
    }
}

async fn serve_on<L>(listener: L, router: Router, mut stop: watch::Receiver<bool>) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    SocketAddr: for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
        // Live streams never end by themselves; give requests a moment, then go.
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
    .await
}
