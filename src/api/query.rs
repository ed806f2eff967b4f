//! `GET /api/v1/messages` and `GET /api/v1/topics`. Every parameter is parsed and checked here
//! and reaches SQL only as a bound value; unknown parameters are refused by name.

use axum::{
    extract::{Query, RawQuery, State},
    Json,
};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::{params, ApiError, AppState};
use crate::{
    config::validate_filter,
    store::{MessageQuery, Order, StoredMessage, TopicStats},
};

/// Query parameters of `GET /api/v1/messages`.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; they are parsed by hand for precise errors
pub struct MessageParams {
    /// MQTT topic filter; `+` and `#` wildcards allowed.
    topic: Option<String>,
    /// RFC 3339 lower bound (inclusive) on `received_at`.
    since: Option<String>,
    /// RFC 3339 upper bound (exclusive) on `received_at`.
    until: Option<String>,
    /// 1 to 10000, default 100.
    limit: Option<usize>,
    /// Cursor from the previous page's `next`.
    after_id: Option<i64>,
    /// `newest` (default) or `oldest` first.
    order: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<StoredMessage>,
    /// The URL of the next page, or null at the end.
    pub next: Option<String>,
}

/// Stored messages, newest first by default, with cursor pagination.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", params(MessageParams),
    responses((status = 200, body = MessagePage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn get_messages(
    State(s): State<AppState>,
    Query(p): Query<params::Params>,
    RawQuery(raw): RawQuery,
) -> Result<Json<MessagePage>, ApiError> {
    params::only_known(&p, &["topic", "since", "until", "limit", "after_id", "order"])?;
    let topic = p.get("topic").cloned();
    if let Some(t) = &topic {
        validate_filter(t).map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    }
    let since = params::time(&p, "since")?;
    let until = params::time(&p, "until")?;
    let limit = params::limit(&p, 100)?;
    let after_id = p
        .get("after_id")
        .map(|v| v.parse::<i64>())
        .transpose()
        .map_err(|_| ApiError::bad_request("after_id must be a whole number (a message id)"))?;
    let order = match p.get("order").map(String::as_str) {
        None | Some("newest") | Some("desc") => Order::NewestFirst,
        Some("oldest") | Some("asc") => Order::OldestFirst,
        Some(_) => return Err(ApiError::bad_request("order must be `newest` or `oldest`")),
    };
    let messages = s
        .store
        .messages(MessageQuery {
            topic,
            since,
            until,
            after_id,
            limit,
            order,
        })
        .await?;
    let next = (messages.len() == limit).then(|| {
        let last = messages.last().map(|m| m.id).unwrap_or_default();
        let rest: Vec<&str> = raw
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|kv| !kv.is_empty() && !kv.starts_with("after_id="))
            .collect();
        let mut q = rest.join("&");
        if !q.is_empty() {
            q.push('&');
        }
        format!("/api/v1/messages?{q}after_id={last}")
    });
    Ok(Json(MessagePage { messages, next }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<TopicStats>,
}

/// Every topic with its message count, first and last seen, and messages in the last minute.
#[utoipa::path(get, path = "/api/v1/topics", tag = "messages",
    responses((status = 200, body = TopicList), (status = 401, body = ApiError)))]
pub async fn get_topics(State(s): State<AppState>) -> Result<Json<TopicList>, ApiError> {
    Ok(Json(TopicList {
        topics: s.store.topics().await?,
    }))
}
