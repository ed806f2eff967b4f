//! `POST /api/v1/messages`: messages go through the same writer as MQTT deliveries and the
//! answer waits for the commit. A request's messages are committed together or not at all.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::{header, HeaderMap, StatusCode},
    Json,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::{
    ingest_body::{self, IncomingMessage},
    ApiError, AppState,
};
use crate::{
    pipeline::{Ack, Ingest},
    store::Outcome,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct IngestResult {
    /// Messages now stored as rows.
    pub stored: usize,
    /// Messages recognised as already stored (a retried delivery).
    pub duplicates: usize,
    /// Messages recorded in `rejected`.
    pub rejected: usize,
}

/// Store messages. Answers 201 only after they are committed.
#[utoipa::path(
    post,
    path = "/api/v1/messages",
    tag = "messages",
    request_body(
        content(
            (Vec<IncomingMessage> = "application/json"),
            (IncomingMessage = "application/x-ndjson")
        ),
        description = "One message object, an array of them, or NDJSON (one object per line)"
    ),
    responses(
        (status = 201, description = "committed", body = IngestResult),
        (status = 400, description = "not parseable", body = ApiError),
        (status = 401, description = "missing or wrong token", body = ApiError),
        (status = 413, description = "body or a payload too large", body = ApiError),
        (status = 415, description = "unsupported Content-Type", body = ApiError),
        (status = 422, description = "a message is invalid; `detail.index` says which", body = ApiError),
        (status = 503, description = "the store cannot write now; retry after `Retry-After`", body = ApiError)
    )
)]
pub async fn post_messages(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<IngestResult>), ApiError> {
    let (format, body) = read_body(&headers, body)?;
    let messages = parse_off_the_runtime(format, body, s.max_payload).await?;
    if let Some(reason) = s.fault.borrow().as_ref() {
        return Err(ApiError::unavailable(
            format!("the store cannot write right now ({reason}); nothing was stored"),
            5,
        ));
    }
    let n = messages.len();
    let (tx, rx) = oneshot::channel();
    s.ingest
        .send(Ingest::many(messages, Ack::Reply(tx)))
        .await
        .map_err(|_| ApiError::unavailable("tidegate is stopping; nothing was stored", 5))?;
    crate::telemetry::received("http", n);
    let outcomes = rx
        .await
        .map_err(|_| ApiError::unavailable("tidegate stopped before the commit; nothing was stored", 5))?;
    let mut r = IngestResult {
        stored: 0,
        duplicates: 0,
        rejected: 0,
    };
    for o in &outcomes {
        match o {
            Outcome::Stored { .. } | Outcome::Spooled => r.stored += 1,
            Outcome::Duplicate => r.duplicates += 1,
            Outcome::Rejected => r.rejected += 1,
        }
    }
    Ok((StatusCode::CREATED, Json(r)))
}

/// The body and its format (from `Content-Type`), or the error naming what is wrong.
pub(super) fn read_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(ingest_body::Format, Bytes), ApiError> {
    let body =
        body.map_err(|e| ApiError::new(e.status(), format!("cannot read the body: {}", e.body_text())))?;
    let format = ingest_body::format_of(headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()))
        .map_err(body_error)?;
    Ok((format, body))
}

/// Bodies larger than this are parsed on a blocking thread. Parsing takes about a microsecond a
/// line: a 7 MiB body of short lines held the runtime thread (one by default), and MQTT
/// deliveries, acknowledgements and the store's next batch behind it, for ~0.15 s.
const PARSE_INLINE_MAX: usize = 64 << 10;

async fn parse_off_the_runtime(
    format: ingest_body::Format,
    body: Bytes,
    max_payload: usize,
) -> Result<Vec<crate::message::Message>, ApiError> {
    off_the_runtime(body.len(), move || ingest_body::parse(format, &body, max_payload)).await
}

/// Runs `work` on this thread for a body of `len` bytes up to `PARSE_INLINE_MAX`, on a blocking
/// thread beyond.
pub(super) async fn off_the_runtime<T: Send + 'static>(
    len: usize,
    work: impl FnOnce() -> Result<T, ingest_body::BodyError> + Send + 'static,
) -> Result<T, ApiError> {
    if len <= PARSE_INLINE_MAX {
        return work().map_err(body_error);
    }
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the body could not be parsed (the parser stopped); nothing was stored",
            )
        })?
        .map_err(body_error)
}

pub(super) fn body_error(e: ingest_body::BodyError) -> ApiError {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let err = ApiError::new(status, e.message);
    match e.index {
        Some(i) => err.detail(json!({ "index": i })),
        None => err,
    }
}
