//! `POST /api/v1/reload`: reads the config file again and applies what can change while running
//! (`reload` owns which), as SIGHUP does, and answers what took effect and what needs a restart.
//! It must never apply an invalid file.

use axum::{extract::State, Json};

use super::{ApiError, AppState};
use crate::reload::Report;

/// Read the config file again; apply topic filters, readings, mappings and retention.
#[utoipa::path(
    post,
    path = "/api/v1/reload",
    tag = "operations",
    responses(
        (status = 200, description = "the file was valid: what took effect, and the changed settings that need a restart", body = Report),
        (status = 401, description = "missing or wrong token", body = ApiError),
        (status = 422, description = "the file is invalid (`detail.setting` names the setting); nothing changed", body = ApiError)
    )
)]
pub async fn post_reload(State(s): State<AppState>) -> Result<Json<Report>, ApiError> {
    match s.reload.reload().await {
        Ok(report) => Ok(Json(report)),
        Err(e) => Err(ApiError::unprocessable(format!("{e}; nothing changed"))
            .detail(serde_json::json!({ "setting": e.setting }))),
    }
}
