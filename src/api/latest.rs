//! `GET /api/v1/readings/latest`: the current value of each series (topic, device, field), as
//! a "current value" card or a small app would ask for it. It reads `readings_latest`, one row
//! per series kept by the writer, never the readings themselves.

use axum::{
    extract::{Query, State},
    Json,
};
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::{params, ApiError, AppState};
use crate::store::{LatestQuery, LatestReading};

#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents the parameters; they are parsed by hand for precise errors
pub struct LatestParams {
    /// One exact topic (a filter with + or # is refused: /api/v1/messages takes filters).
    topic: Option<String>,
    /// Exact device.
    device: Option<String>,
    /// Exact field name, e.g. `temp` or `a.b[0]`.
    field: Option<String>,
    /// 1 to 10000, default 1000.
    limit: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Latest {
    /// Ordered by topic, device (none first) and field.
    pub readings: Vec<LatestReading>,
}

/// The newest reading of every series matching the filters: a number (`value`) or a text, and
/// the time it was measured at (the payload's event time when it had one).
#[utoipa::path(get, path = "/api/v1/readings/latest", tag = "readings", params(LatestParams),
    responses((status = 200, body = Latest), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
pub async fn get_latest(
    State(s): State<AppState>,
    Query(p): Query<params::Params>,
) -> Result<Json<Latest>, ApiError> {
    params::only_known(&p, &["topic", "device", "field", "limit"])?;
    let limit = params::limit(&p, 1000)?;
    let q = LatestQuery {
        topic: params::exact_topic(&p)?,
        device: p.get("device").cloned(),
        field: p.get("field").cloned(),
        limit,
    };
    Ok(Json(Latest {
        readings: s.store.latest(q).await?,
    }))
}
