//! API errors: `{"error": "...", "detail": ...}` with the right status. Messages name what is
//! wrong and never include secrets or SQL.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    /// What went wrong, for people.
    pub error: String,
    /// Where, when known (e.g. the index of the offending message, a parameter name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    #[serde(skip)]
    status: u16,
    #[serde(skip)]
    retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            error: error.into(),
            detail: None,
            status: status.as_u16(),
            retry_after: None,
        }
    }
    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = Some(d);
        self
    }
    pub fn bad_request(e: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e)
    }
    pub fn unprocessable(e: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, e)
    }
    pub fn not_found(e: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, e)
    }
    pub fn unavailable(e: impl Into<String>, retry_after: u32) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e).retry_after(retry_after)
    }
    /// Seconds the client should wait before trying again (`Retry-After`).
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after;
        let mut resp = (status, Json(self)).into_response();
        if let Some(s) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::warn!(error = %e, "store query failed");
        ApiError::unavailable("the store cannot answer right now; retry later", 2)
    }
}
