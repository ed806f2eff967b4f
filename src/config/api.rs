//! The HTTP API settings: the address this process serves on, its token, HTTPS certificate, body
//! size and rate limit, and for `subscribe` the tidegate API it forwards to and the CAs it trusts
//! for it. It must never accept a token shorter than 16 characters, nor an address other
//! machines reach without a token.

use std::net::SocketAddr;

use rustls_pki_types::CertificateDer;

use super::{read_secret_lines, ConfigError, Mode, RunArgs};
use crate::{api::tls::ServerTls, secret::Secret};

/// The HTTP API this process serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    pub listen: SocketAddr,
    /// The bearer tokens accepted; none: no token asked. Several while a token is rotated (the
    /// lines of `--api-token-file`), so clients can move to the new one one by one.
    pub tokens: Vec<Secret>,
    /// Serve HTTPS with this certificate; plain HTTP when `None`.
    pub tls: Option<ServerTls>,
    /// Every route, or (for `subscribe`) health and metrics only.
    pub routes: crate::api::Routes,
    pub max_body: usize,
    /// Requests a second per client address; `None` when the limit is off.
    pub rate_limit: Option<std::num::NonZeroU32>,
}

/// `subscribe`: the tidegate API that stores for us.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSettings {
    pub url: String,
    /// The token sent: `--api-token`, or the first line of `--api-token-file`.
    pub token: Option<Secret>,
    /// CA certificates trusted for an https:// URL besides the public roots (`--api-ca-file`).
    pub ca: Vec<CertificateDer<'static>>,
}

/// `--api-token`, or each line of `--api-token-file` (the first is the one a client sends).
fn api_tokens(a: &RunArgs) -> Result<Vec<Secret>, ConfigError> {
    let (setting, tokens) = match (&a.api_token, &a.api_token_file) {
        (Some(t), _) => ("api-token", vec![Secret::new(t.clone())]),
        (None, Some(path)) => {
            let lines = read_secret_lines("api-token-file", path)?;
            if lines.is_empty() {
                return Err(ConfigError::new(
                    "api-token-file",
                    format!("{} holds no token", path.display()),
                ));
            }
            ("api-token-file", lines)
        }
        (None, None) => return Ok(Vec::new()),
    };
    if let Some(n) = tokens.iter().position(|t| t.expose().len() < 16) {
        let which = match tokens.len() {
            1 => String::new(),
            len => format!("token {} of {len} ", n + 1),
        };
        return Err(ConfigError::new(
            setting,
            format!("{which}is shorter than 16 characters; use a long random token"),
        ));
    }
    Ok(tokens)
}

pub(super) fn resolve_api(a: &RunArgs, mode: Mode) -> Result<Option<ApiSettings>, ConfigError> {
    let listen = a.listen.as_deref().unwrap_or("127.0.0.1:8080").trim();
    if listen.eq_ignore_ascii_case("off") {
        if mode == Mode::Serve {
            return Err(ConfigError::new("listen", "`serve` is the API; it cannot be off"));
        }
        if a.api_tls_cert.is_some() || a.api_tls_key.is_some() {
            return Err(ConfigError::new(
                "api-tls-cert",
                "is given but the API is off (--listen off): drop it or give the API an address",
            ));
        }
        return Ok(None);
    }
    let listen: SocketAddr = listen.parse().map_err(|_| {
        ConfigError::new(
            "listen",
            format!("`{listen}` is not an address such as 127.0.0.1:8080 (or `off`)"),
        )
    })?;
    let tokens = api_tokens(a)?;
    if !listen.ip().is_loopback() && tokens.is_empty() {
        return Err(ConfigError::new(
            "listen",
            format!("{listen} is reachable from other machines; set TIDEGATE_API_TOKEN (or --api-token-file) first"),
        ));
    }
    let tls = match (&a.api_tls_cert, &a.api_tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            Some(ServerTls::load(cert, key).map_err(|e| ConfigError::new(e.setting(), e.to_string()))?)
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                "api-tls-key",
                "is needed with --api-tls-cert: the PEM private key the certificate was issued for",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "api-tls-cert",
                "is needed with --api-tls-key: the PEM certificate chain to serve",
            ))
        }
    };
    let max_body = a.max_body.map(|s| s.0).unwrap_or(8 << 20);
    if max_body < 1024 {
        return Err(ConfigError::new("max-body", "must be at least 1KiB"));
    }
    Ok(Some(ApiSettings {
        listen,
        tokens,
        tls,
        routes: match mode {
            Mode::Subscribe => crate::api::Routes::Health,
            Mode::Run | Mode::Serve => crate::api::Routes::All,
        },
        max_body,
        rate_limit: std::num::NonZeroU32::new(a.api_rate_limit.unwrap_or(1000)),
    }))
}

pub(super) fn resolve_remote(a: &RunArgs) -> Result<RemoteSettings, ConfigError> {
    let url = a.api.as_deref().ok_or_else(|| {
        ConfigError::new(
            "api",
            "`subscribe` needs the API to forward to, e.g. --api http://127.0.0.1:8080",
        )
    })?;
    let parsed =
        url::Url::parse(url).map_err(|e| ConfigError::new("api", format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::new(
            "api",
            format!("`{url}` must be an http:// or https:// URL"),
        ));
    }
    let ca = match &a.api_ca_file {
        None => Vec::new(),
        Some(_) if parsed.scheme() != "https" => {
            return Err(ConfigError::new(
                "api-ca-file",
                format!("is for an https:// --api; `{url}` is plain HTTP"),
            ))
        }
        Some(path) => {
            crate::api::tls::ca_certificates(path).map_err(|e| ConfigError::new("api-ca-file", e))?
        }
    };
    Ok(RemoteSettings {
        url: url.trim_end_matches('/').to_string(),
        token: api_tokens(a)?.into_iter().next(),
        ca,
    })
}
