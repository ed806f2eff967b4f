//! `GET` and `PUT /api/v1/subscriptions/{client_id}`: the record of the topic filters an MQTT
//! client id last subscribed to, kept in this tidegate's store for `tidegate subscribe`
//! processes, which have no database of their own. Such a process reads its record at start, to
//! unsubscribe the filters it no longer asks for from a session the broker kept, and rewrites it
//! whenever its filters change. It owns the record's validation; it must never talk to a broker.

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::StatusCode,
    Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApiError, AppState};

/// MQTT's own limits: a filter or client id is a UTF-8 string of at most 65,535 bytes, and a
/// filter is never empty.
const MAX_TEXT: usize = 65_535;
/// More filters than any one session needs; it bounds what a client can make the store keep.
const MAX_FILTERS: usize = 1_000;

/// A client id's record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SubscriptionRecord {
    pub client_id: String,
    /// The topic filters last recorded for this client id; `null` when none was.
    pub filters: Option<Vec<String>>,
}

/// What a `PUT` records.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    pub filters: Vec<String>,
}

/// The topic filters this client id last recorded.
#[utoipa::path(
    get,
    path = "/api/v1/subscriptions/{client_id}",
    tag = "operations",
    params(("client_id" = String, Path, description = "the MQTT client id")),
    responses(
        (status = 200, description = "the record; `filters` is null when none was recorded", body = SubscriptionRecord),
        (status = 401, description = "missing or wrong token", body = ApiError),
        (status = 503, description = "the store cannot answer right now", body = ApiError)
    )
)]
pub async fn get_subscriptions(
    State(s): State<AppState>,
    Path(client_id): Path<String>,
) -> Result<Json<SubscriptionRecord>, ApiError> {
    let filters = s.store.subscriptions(&client_id).await?;
    Ok(Json(SubscriptionRecord { client_id, filters }))
}

/// Records the topic filters this client id subscribes to, replacing its last record.
#[utoipa::path(
    put,
    path = "/api/v1/subscriptions/{client_id}",
    tag = "operations",
    params(("client_id" = String, Path, description = "the MQTT client id")),
    request_body(content = NewRecord, content_type = "application/json"),
    responses(
        (status = 204, description = "recorded"),
        (status = 400, description = "not a JSON object with `filters`", body = ApiError),
        (status = 401, description = "missing or wrong token", body = ApiError),
        (status = 422, description = "a filter or the client id is not one MQTT allows; `detail.index` says which filter", body = ApiError),
        (status = 503, description = "the store cannot write right now", body = ApiError)
    )
)]
pub async fn put_subscriptions(
    State(s): State<AppState>,
    Path(client_id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let body = body.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
    let record: NewRecord = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON object {{\"filters\": [\"topic/filter\", …]}}: {e}"
        ))
    })?;
    validate(&client_id, &record.filters)?;
    s.store.record_subscriptions(&client_id, &record.filters).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn validate(client_id: &str, filters: &[String]) -> Result<(), ApiError> {
    if client_id.len() > MAX_TEXT {
        return Err(ApiError::unprocessable(format!(
            "the client id is {} bytes; MQTT allows at most {MAX_TEXT}",
            client_id.len()
        )));
    }
    if filters.len() > MAX_FILTERS {
        return Err(ApiError::unprocessable(format!(
            "{} filters; at most {MAX_FILTERS} are recorded",
            filters.len()
        )));
    }
    for (i, f) in filters.iter().enumerate() {
        let why = if f.is_empty() {
            Some("an empty topic filter".to_string())
        } else if f.len() > MAX_TEXT {
            Some(format!(
                "a topic filter of {} bytes; MQTT allows at most {MAX_TEXT}",
                f.len()
            ))
        } else if f.contains('\0') {
            Some("a topic filter with a NUL character, which MQTT does not allow".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            return Err(ApiError::unprocessable(why).detail(serde_json::json!({ "index": i })));
        }
    }
    Ok(())
}
