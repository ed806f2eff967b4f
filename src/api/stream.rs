//! `GET /api/v1/stream`: Server-Sent Events of messages as they are committed. A slow client
//! misses messages (it is told how many) rather than slowing ingest.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Query, State},
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use utoipa::IntoParams;

use super::{ApiError, AppState};
use crate::config::{filter_matches, validate_filter};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// MQTT topic filter (default `#`).
    topic: Option<String>,
}

/// Live tail: each committed message as a `message` event (JSON, `id` = message id).
#[utoipa::path(get, path = "/api/v1/stream", tag = "messages", params(StreamParams),
    responses((status = 200, description = "text/event-stream of `message` events", content_type = "text/event-stream"),
              (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn get_stream(
    State(s): State<AppState>,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = params.topic.unwrap_or_else(|| "#".into());
    validate_filter(&filter).map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    let rx = s.live.subscribe();
    let mut stop = s.stop.clone();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let stream = BroadcastStream::new(rx)
        .take_until(stopped)
        .filter_map(move |item| {
            let out = match item {
                Ok(m) if filter_matches(&filter, &m.topic) => Event::default()
                    .event("message")
                    .id(m.id.to_string())
                    .json_data(m.as_ref())
                    .ok(),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Event::default().event("lagged").data(n.to_string()))
                }
            };
            futures::future::ready(out.map(Ok))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
