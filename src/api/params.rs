//! Query-string parameters of the read routes, checked the same way everywhere: a route names
//! the parameters it knows and refuses any other by name; times are RFC 3339; a page size is a
//! whole number within the route's bounds. Every error names the parameter.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::ApiError;

/// The query string, as axum's `Query` extracts it.
pub type Params = HashMap<String, String>;

/// Refuses the first parameter not in `known`, naming it and the ones the route takes.
pub fn only_known(p: &Params, known: &[&str]) -> Result<(), ApiError> {
    match p.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(format!(
            "unknown parameter `{k}`; known: {}",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// The time parameter `name`, if given.
pub fn time(p: &Params, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    p.get(name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "`{name}` is not an RFC 3339 time such as 2026-11-25T10:00:00Z ({e})"
                    ))
                    .detail(json!({"parameter": name}))
                })
        })
        .transpose()
}

/// `topic` where a route takes one exact topic. A topic name never holds `+` or `#`, so a
/// filter here could only match nothing: it is refused, pointing at the routes that take one.
pub fn exact_topic(p: &Params) -> Result<Option<String>, ApiError> {
    match p.get("topic") {
        Some(t) if t.contains(['+', '#']) => Err(ApiError::bad_request(format!(
            "`topic` is one exact topic here, and `{t}` is a filter; \
             /api/v1/messages and /api/v1/stream take filters"
        ))
        .detail(json!({"parameter": "topic"}))),
        t => Ok(t.cloned()),
    }
}

/// The most rows any read route answers at once.
pub const MAX_LIMIT: usize = 10_000;

/// `limit`: `default` when absent, else a whole number from 1 to `MAX_LIMIT`.
pub fn limit(p: &Params, default: usize) -> Result<usize, ApiError> {
    match p.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit must be a whole number from 1 to {MAX_LIMIT}"
            ))),
        },
    }
}
