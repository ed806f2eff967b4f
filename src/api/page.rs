//! The live page at `/`: one self-contained HTML file compiled into the binary (no CDN, works
//! offline). It reads the same API as everyone else and asks for the token when the API wants one.

use axum::response::{Html, IntoResponse};

const INDEX: &str = include_str!("page/index.html");

/// The live page.
#[utoipa::path(get, path = "/", tag = "page", security(()), responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn index() -> impl IntoResponse {
    Html(INDEX)
}
