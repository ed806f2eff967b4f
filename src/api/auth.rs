//! Bearer-token auth for every route but `/healthz`, against the tokens in force (a reload may
//! replace them: two are accepted while clients move from the old to the new). The comparison
//! is constant-time, and a token in the query string is refused (it would end up in proxy logs).

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::{ApiError, AppState};
use crate::secret::Secret;

pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let tokens = state.tokens.get();
    if tokens.is_empty() {
        return next.run(req).await;
    }
    // The page itself holds no data; it asks for the token and sends it with every call.
    if matches!(req.uri().path(), "/healthz" | "/") {
        return next.run(req).await;
    }
    if req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.starts_with("token=") || kv.starts_with("access_token="))
    }) {
        return ApiError::bad_request(
            "tokens are not accepted in the query string; send `Authorization: Bearer <token>`",
        )
        .into_response();
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if accepted(given, &tokens) {
        next.run(req).await
    } else {
        let mut resp = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token; send `Authorization: Bearer <token>`",
        )
        .into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        resp
    }
}

/// Whether `given` is one of `tokens`. Each is compared in full, in constant time, so the time
/// taken tells at most how many there are.
fn accepted(given: &str, tokens: &[Secret]) -> bool {
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |any, t| {
            any | given.as_bytes().ct_eq(t.expose().as_bytes())
        })
        .into()
}

pub struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_token_in_force_is_accepted_and_only_whole() {
        let tokens = [
            Secret::new("old-token-0123456789"),
            Secret::new("new-token-0123456789"),
        ];
        assert!(accepted("old-token-0123456789", &tokens));
        assert!(accepted("new-token-0123456789", &tokens));
        assert!(!accepted("new-token-012345678", &tokens));
        assert!(!accepted("new-token-01234567890", &tokens));
        assert!(!accepted("", &tokens));
        assert!(!accepted("old-token-0123456789", &[]));
    }
}
