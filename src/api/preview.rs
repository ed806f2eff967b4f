//! `POST /api/v1/preview`: a dry run of `POST /api/v1/messages`. It answers what each message —
//! or an MQTT delivery with the same topic and payload — would store with this instance's
//! readings and mappings: the table, the readings, device and event time, the mapped rows. It
//! must never reach the pipeline or the store.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, State},
    http::HeaderMap,
    Json,
};

use super::{ingest, ingest_body, ApiError, AppState};
use crate::readings::preview::{preview, Preview};

/// What storing these messages would write, without storing anything.
#[utoipa::path(
    post,
    path = "/api/v1/preview",
    tag = "readings",
    request_body(
        content(
            (Vec<ingest_body::IncomingMessage> = "application/json"),
            (ingest_body::IncomingMessage = "application/x-ndjson")
        ),
        description = "The same body as `POST /api/v1/messages`"
    ),
    responses(
        (status = 200, description = "one preview per message, in order; nothing stored", body = Vec<Preview>),
        (status = 400, description = "not parseable", body = ApiError),
        (status = 401, description = "missing or wrong token", body = ApiError),
        (status = 413, description = "body or a payload too large", body = ApiError),
        (status = 415, description = "unsupported Content-Type", body = ApiError),
        (status = 422, description = "a message is invalid; `detail.index` says which", body = ApiError)
    )
)]
pub async fn post_preview(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<Preview>>, ApiError> {
    let (format, body) = ingest::read_body(&headers, body)?;
    let readings = s.readings.get();
    let max_payload = s.max_payload;
    let previews = ingest::off_the_runtime(body.len(), move || {
        let messages = ingest_body::parse(format, &body, max_payload)?;
        Ok(messages.iter().map(|m| preview(&readings, m)).collect())
    })
    .await?;
    Ok(Json(previews))
}
