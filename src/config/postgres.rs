//! PostgreSQL connection URLs: `postgres://user[:pass]@host[:port]/db?sslmode=…&sslrootcert=…`.
//! libpq's `verify-ca`/`verify-full` are accepted (rustls always verifies chain and host name);
//! the password may come from the URL, TIDEGATE_DB_PASSWORD or a file, and is never displayed.
//! Without `sslmode`, a server on this machine is reached without TLS, any other with TLS when it
//! offers it.

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
    let mut tls = None;
    let mut ca_file = None;
    let mut rest: Vec<(String, String)> = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                tls = Some(match v.as_ref() {
                    "disable" => PgTls::Disable,
                    "allow" | "prefer" => PgTls::Prefer,
                    "require" | "verify-ca" | "verify-full" => PgTls::Require,
                    other => {
                        return Err(bad(format!(
                            "sslmode `{other}` is not disable, prefer, require or verify-full"
                        )))
                    }
                })
            }
            "sslrootcert" => ca_file = Some(PathBuf::from(v.as_ref())),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    // Without an sslmode: a server on this machine is reached without TLS, which guards nothing
    // there, and a distribution's PostgreSQL offers TLS with a self-signed certificate that no
    // verification accepts (Debian's `ssl-cert-snakeoil`); any other host gets TLS whenever the
    // server offers it, verified.
    let tls = tls.unwrap_or(if is_loopback(&host) {
        PgTls::Disable
    } else {
        PgTls::Prefer
    });
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
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `localhost`, a loopback address, or a Unix socket directory.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
    }

    #[test]
    fn tls_when_unsaid_is_off_on_this_machine_and_verified_elsewhere() {
        for local in [
            "postgres://u@127.0.0.1/d",
            "postgres://u@127.0.0.2:5433/d",
            "postgres://u@localhost/d",
            "postgres://u@[::1]/d",
        ] {
            assert_eq!(parse(local, None).unwrap().tls, PgTls::Disable, "{local}");
        }
        assert_eq!(
            parse("postgres://u@db.example/d", None).unwrap().tls,
            PgTls::Prefer
        );
        assert_eq!(parse("postgres://u@10.0.0.5/d", None).unwrap().tls, PgTls::Prefer);
        // Said, it is as said.
        for (url, want) in [
            ("postgres://u@127.0.0.1/d?sslmode=require", PgTls::Require),
            ("postgres://u@localhost/d?sslmode=prefer", PgTls::Prefer),
            ("postgres://u@db.example/d?sslmode=disable", PgTls::Disable),
        ] {
            assert_eq!(parse(url, None).unwrap().tls, want, "{url}");
        }
        assert!(parse("postgres:///d", None).is_err());
    }
}
