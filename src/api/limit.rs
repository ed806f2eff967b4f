//! Per-client request rate limit: each client address may make `per_second` requests a second
//! (bursts up to the same number); beyond that the API answers 429 with `Retry-After` at once
//! instead of queueing work. It only decides: it must never hold a request back or touch the
//! store, and a request it lets through is handled exactly as without it.

use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{
    clock::{Clock, DefaultClock},
    DefaultKeyedRateLimiter, Quota, RateLimiter,
};

use super::ApiError;

/// Client addresses remembered before idle ones are forgotten (bounds the limiter's memory).
const REMEMBERED: usize = 4096;

#[derive(Clone)]
pub struct Limiter(Arc<DefaultKeyedRateLimiter<IpAddr>>);

impl Limiter {
    pub fn per_second(n: NonZeroU32) -> Self {
        Limiter(Arc::new(RateLimiter::keyed(Quota::per_second(n))))
    }
}

pub async fn limit(State(limiter): State<Limiter>, req: Request, next: Next) -> Response {
    // Without the peer address (a router driven in-process) there is no client to limit.
    let Some(ip) = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
    else {
        return next.run(req).await;
    };
    let verdict = limiter.0.check_key(&ip);
    if limiter.0.len() > REMEMBERED {
        limiter.0.retain_recent();
    }
    match verdict {
        Ok(()) => next.run(req).await,
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            metrics::counter!(crate::telemetry::HTTP_RATE_LIMITED).increment(1);
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests from this address; slow down (see --api-rate-limit)",
            )
            .retry_after(wait.as_secs().max(1) as u32)
            .into_response()
        }
    }
}
