//! `GET /api/v1/stream`: Server-Sent Events of messages as they are committed. A slow client
//! misses messages (it is told how many) rather than slowing ingest. Events already waiting
//! go out as one body frame, so a busy stream costs one write per burst, not one per message.

use std::{convert::Infallible, fmt::Write as _, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use serde::Deserialize;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream, IntervalStream};
use utoipa::IntoParams;

use super::{ApiError, AppState};
use crate::{
    config::{filter_matches, validate_filter},
    store::StoredMessage,
};

/// Most events written in one frame.
const BURST: usize = 512;
/// A comment line this often keeps proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// MQTT topic filter (default `#`).
    topic: Option<String>,
}

/// Appends one `message` event. JSON from serde_json has no raw newline, so `data` is one line.
fn push_message(out: &mut String, m: &StoredMessage) {
    let _ = write!(out, "event: message\nid: {}\ndata: ", m.id);
    // Serialising a plain struct into a String cannot fail; an empty object keeps the event valid.
    match serde_json::to_string(m) {
        Ok(json) => out.push_str(&json),
        Err(_) => out.push_str("{}"),
    }
    out.push_str("\n\n");
}

/// Live tail: each committed message as a `message` event (JSON, `id` = message id).
#[utoipa::path(get, path = "/api/v1/stream", tag = "messages", params(StreamParams),
    responses((status = 200, description = "text/event-stream of `message` events", content_type = "text/event-stream"),
              (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn get_stream(
    State(s): State<AppState>,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = params.topic.unwrap_or_else(|| "#".into());
    validate_filter(&filter).map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    let rx = s.live.subscribe();
    let mut stop = s.stop.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let events = BroadcastStream::new(rx)
        .ready_chunks(BURST)
        .filter_map(move |items| {
            let mut out = String::new();
            for item in items {
                match item {
                    Ok(m) if filter_matches(&filter, &m.topic) => push_message(&mut out, &m),
                    Ok(_) => {}
                    Err(BroadcastStreamRecvError::Lagged(n)) => {
                        let _ = write!(out, "event: lagged\ndata: {n}\n\n");
                    }
                }
            }
            futures::future::ready((!out.is_empty()).then(|| Bytes::from(out)))
        });
    let mut ticks = tokio::time::interval(KEEP_ALIVE);
    ticks.reset(); // the first tick would fire at once
    let keep_alive = IntervalStream::new(ticks).map(|_| Bytes::from_static(b":\n\n"));
    let body = futures::stream::select(events, keep_alive)
        .take_until(stopped)
        .map(Ok::<_, Infallible>);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
