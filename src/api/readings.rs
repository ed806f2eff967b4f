//! `GET /api/v1/readings`: a time series from the best table for the range — raw readings
//! for short ranges, minute or hour rollups for longer ones, days folded from hours.

use std::collections::HashMap;

use axum::{
    extract::{Query, State},
    Json,
};
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::{params, ApiError, AppState};
use crate::store::{Point, ReadingsQuery, Resolution};

#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; they are parsed by hand for precise errors
pub struct ReadingsParams {
    /// One exact topic (a filter with + or # is refused: /api/v1/messages takes filters).
    topic: Option<String>,
    device: Option<String>,
    /// Field name, e.g. `temp` or `a.b[0]`.
    field: Option<String>,
    /// RFC 3339; default 24 hours ago.
    since: Option<String>,
    /// RFC 3339; default now.
    until: Option<String>,
    /// `raw`, `1m`, `1h` or `1d`; default chosen from the range.
    bucket: Option<String>,
    /// 1 to 10000, default 1000.
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Series {
    /// The resolution used: raw, 1m, 1h or 1d.
    pub bucket: String,
    pub points: Vec<Point>,
}

/// Numeric readings as a time series (count, min, max, avg, last per point).
#[utoipa::path(get, path = "/api/v1/readings", tag = "readings", params(ReadingsParams),
    responses((status = 200, body = Series), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn get_readings(
    State(s): State<AppState>,
    Query(p): Query<params::Params>,
) -> Result<Json<Series>, ApiError> {
    params::only_known(
        &p,
        &["topic", "device", "field", "since", "until", "bucket", "limit"],
    )?;
    let until = params::time(&p, "until")?.unwrap_or_else(Utc::now);
    let since = params::time(&p, "since")?.unwrap_or(until - TimeDelta::hours(24));
    if since >= until {
        return Err(ApiError::bad_request("`since` must be before `until`"));
    }
    let limit = params::limit(&p, 1000)?;
    let bucket = match p.get("bucket").map(String::as_str) {
        Some(b @ ("raw" | "1m" | "1h" | "1d")) => b.to_string(),
        Some(_) => return Err(ApiError::bad_request("bucket must be raw, 1m, 1h or 1d")),
        None => {
            let span = until - since;
            if span <= TimeDelta::hours(2) {
                "raw"
            } else if span <= TimeDelta::days(3) {
                "1m"
            } else if span <= TimeDelta::days(90) {
                "1h"
            } else {
                "1d"
            }
            .to_string()
        }
    };
    let resolution = match bucket.as_str() {
        "raw" => Resolution::Raw,
        "1m" => Resolution::Minute,
        _ => Resolution::Hour,
    };
    let q = ReadingsQuery {
        topic: params::exact_topic(&p)?,
        device: p.get("device").cloned(),
        field: p.get("field").cloned(),
        since: Some(since),
        until: Some(until),
        resolution,
        limit: if bucket == "1d" { params::MAX_LIMIT } else { limit },
    };
    let mut points = s.store.readings(q).await?;
    if bucket == "1d" {
        points = fold_days(points);
        points.truncate(limit);
    }
    Ok(Json(Series { bucket, points }))
}

/// Folds hourly buckets into days (UTC), keeping each series apart.
fn fold_days(hours: Vec<Point>) -> Vec<Point> {
    let mut days: Vec<Point> = Vec::new();
    let mut index: HashMap<(String, Option<String>, String, DateTime<Utc>), usize> = HashMap::new();
    for h in hours {
        let day = h.ts.duration_trunc(TimeDelta::days(1)).unwrap_or(h.ts);
        let key = (h.topic.clone(), h.device.clone(), h.field.clone(), day);
        match index.get(&key) {
            Some(&i) => {
                let d = &mut days[i];
                let total = d.count + h.count;
                d.avg = (d.avg * d.count as f64 + h.avg * h.count as f64) / total as f64;
                d.count = total;
                d.min = d.min.min(h.min);
                d.max = d.max.max(h.max);
                d.last = h.last;
            }
            None => {
                index.insert(key, days.len());
                days.push(Point { ts: day, ..h });
            }
        }
    }
    days
}
