//! PostgreSQL connection URLs: `postgres://user[:pass]@host[:port]/db?sslmode=…&sslrootcert=…`.
//! libpq's `verify-ca`/`verify-full` are accepted (rustls always verifies chain and host name);
//! the password may come from the URL, TIDEGATE_DB_PASSWORD or a file, and is never displayed.

use std::{path::PathBuf, str::FromStr};

use super::ConfigError;
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgTls {
    Disable,
    Prefer,
    Require,
}

#[derive(Debug, Clone)]
pub struct PgTarget {
    /// Connection settings, password included (tokio-postgres redacts it in `Debug`).
    pub config: tokio_postgres::Config,
    pub tls: PgTls,
    pub ca_file: Option<PathBuf>,
    /// `postgres://user@host:port/db`, safe to log.
    pub display: String,
}

impl PartialEq for PgTarget {
    fn eq(&self, other: &Self) -> bool {
        self.display == other.display
    }
}
impl Eq for PgTarget {}

pub fn parse(input: &str, password: Option<Secret>) -> Result<PgTarget, ConfigError> {
    let bad = |why: String| ConfigError::new("db", why);
    let mut url = url::Url::parse(input).map_err(|e| bad(format!("not a PostgreSQL URL: {e}")))?;
    let host = url.host_str().unwrap_or("").to_string();
    if host.is_empty() {
        return Err(bad("the PostgreSQL URL has no host".into()));
    }
    let mut tls = PgTls::Prefer;
    let mut ca_file = None;
    let mut rest: Vec<(String, String)> = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                tls = match v.as_ref() {
                    "disable" => PgTls::Disable,
                    "allow" | "prefer" => PgTls::Prefer,
                    "require" | "verify-ca" | "verify-full" => PgTls::Require,
                    other => {
                        return Err(bad(format!(
                            "sslmode `{other}` is not disable, prefer, require or verify-full"
                        )))
                    }
                }
            }
            "sslrootcert" => ca_file = Some(PathBuf::from(v.as_ref())),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    if let Some(ca) = &ca_file {
        if !ca.is_file() {
            return Err(bad(format!("sslrootcert {} does not exist", ca.display())));
        }
    }
    url.set_query(None);
    if !rest.is_empty() {
        let q: Vec<String> = rest.iter().map(|(k, v)| format!("{k}={v}")).collect();
        url.set_query(Some(&q.join("&")));
    }
    let url_password = url.password().map(percent_decode);
    let _ = url.set_password(None);
    let display = url.to_string();
    let mut config =
        tokio_postgres::Config::from_str(url.as_str()).map_err(|e| bad(format!("`{display}`: {e}")))?;
    if let Some(p) = url_password.map(Secret::new).or(password) {
        config.password(p.expose());
    }
    config.ssl_mode(match tls {
        PgTls::Disable => tokio_postgres::config::SslMode::Disable,
        PgTls::Prefer => tokio_postgres::config::SslMode::Prefer,
        PgTls::Require => tokio_postgres::config::SslMode::Require,
    });
    config.application_name("tidegate");
    config.connect_timeout(std::time::Duration::from_secs(10));
    Ok(PgTarget {
        config,
        tls,
        ca_file,
        display,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_the_password() {
        let t = parse(
            "postgres://u:p%40ss@db.example:6543/iot?sslmode=verify-full",
            None,
        )
        .unwrap();
        assert_eq!(t.display, "postgres://u@db.example:6543/iot");
        assert_eq!(t.tls, PgTls::Require);
        assert_eq!(t.config.get_password(), Some(&b"p@ss"[..]));
        assert!(!format!("{t:?}").contains("p@ss"));
        let t = parse("postgresql://u@h/d", Some(Secret::new("fromenv"))).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"fromenv"[..]));
        assert!(parse("postgres://u@h/d?sslmode=sometimes", None).is_err());
        assert!(parse("postgres:///d", None).is_err());
    }
}
