//! `GET /api/v1/messages` and `GET /api/v1/topics`. Every parameter is parsed and checked here
//! and reaches SQL only as a bound value; unknown parameters are refused by name.

use std::collections::HashMap;

use axum::{
    extract::{Query, RawQuery, State},
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState};
use crate::{
    config::validate_filter,
    store::{MessageQuery, Order, StoredMessage, TopicStats},
};

pub const MAX_LIMIT: usize = 10_000;

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

fn time_param(name: &str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "`{name}` is not an RFC 3339 time such as 2026-11-25T10:00:00Z ({e})"
            ))
            .detail(json!({"parameter": name}))
        })
}

/// Stored messages, newest first by default, with cursor pagination.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", params(MessageParams),
    responses((status = 200, body = MessagePage), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn get_messages(
    State(s): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    RawQuery(raw): RawQuery,
) -> Result<Json<MessagePage>, ApiError> {
    const KNOWN: [&str; 6] = ["topic", "since", "until", "limit", "after_id", "order"];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown parameter `{unknown}`; known: {}",
            KNOWN.join(", ")
        )));
    }
    let topic = params.get("topic").cloned();
    if let Some(t) = &topic {
        validate_filter(t).map_err(|e| ApiError::bad_request(format!("topic: {e}")))?;
    }
    let since = params.get("since").map(|v| time_param("since", v)).transpose()?;
    let until = params.get("until").map(|v| time_param("until", v)).transpose()?;
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    let after_id = params
        .get("after_id")
        .map(|v| v.parse::<i64>())
        .transpose()
        .map_err(|_| ApiError::bad_request("after_id must be a whole number (a message id)"))?;
    let order = match params.get("order").map(String::as_str) {
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
