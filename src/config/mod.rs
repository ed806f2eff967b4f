//! Turns flags, environment variables, the `.env` file and the TOML file into one validated
//! `Settings`. Everything is checked here, before anything connects; this module must never open
//! a socket or a database.

mod args;
mod broker;
mod values;

use std::{path::PathBuf, time::Duration};

pub use args::RunArgs;
pub use broker::{filter_matches, validate_filter, validate_topic_name, BrokerUrl, Transport};
pub use values::{Size, Span};

use crate::secret::Secret;

/// A setting that is wrong, and why. Printed as one line; the process exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting `{setting}`: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, problem: impl Into<String>) -> Self {
        Self {
            setting,
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V5,
    V311,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    Full,
    Normal,
}

/// Where rows go, chosen once from the `--db` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
}

impl DbUrl {
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::new("db", why);
        if input.trim().is_empty() {
            return Err(bad("is empty; give a file path such as tidegate.db".into()));
        }
        if let Some(path) = input
            .strip_prefix("sqlite://")
            .or_else(|| input.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(bad(format!("`{input}` has no file path")));
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(path)));
        }
        if input.starts_with("postgres://") || input.starts_with("postgresql://") {
            return Err(bad(
                "PostgreSQL is not supported by this build yet; use a SQLite file".into(),
            ));
        }
        if let Some((scheme, _)) = input.split_once("://") {
            return Err(bad(format!(
                "unknown database scheme `{scheme}`; use a SQLite path or sqlite://PATH"
            )));
        }
        Ok(DbUrl::Sqlite(PathBuf::from(input)))
    }
}

impl std::fmt::Display for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DbUrl::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
        }
    }
}

/// TLS material, paths checked to exist.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Everything the MQTT source needs.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub broker: BrokerUrl,
    pub topics: Vec<String>,
    pub qos: u8,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub version: MqttVersion,
    pub tls: TlsFiles,
    pub session_expiry: Duration,
    pub keep_alive: Duration,
    pub max_payload: usize,
}

/// How the writer batches and commits.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub batch_size: usize,
    pub batch_delay: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub db: DbUrl,
    pub sqlite_sync: SqliteSync,
}

/// The validated settings of `tidegate run`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mqtt: MqttSettings,
    pub pipeline: PipelineSettings,
    pub store: StoreSettings,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Reads the TOML file named by `--config`, if any.
pub fn load_file(path: &std::path::Path) -> Result<RunArgs, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("config", format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        ConfigError::new(
            "config",
            format!("{}: {}", path.display(), e.to_string().trim().replace('\n', " ")),
        )
    })
}

fn check_file(setting: &'static str, path: &Option<PathBuf>) -> Result<(), ConfigError> {
    if let Some(p) = path {
        if !p.is_file() {
            return Err(ConfigError::new(
                setting,
                format!("file {} does not exist or is not a file", p.display()),
            ));
        }
    }
    Ok(())
}

/// A client id that stays the same across restarts of one instance and differs between
/// instances on other hosts or databases: `tidegate-<host>-<hash of the db path>`.
pub fn default_client_id(db: &DbUrl) -> String {
    let host: String = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(24)
        .collect();
    let DbUrl::Sqlite(path) = db;
    let key = std::fs::canonicalize(path)
        .or_else(|_| std::env::current_dir().map(|d| d.join(path)))
        .unwrap_or_else(|_| path.clone());
    let hash = xxhash_rust::xxh3::xxh3_64(key.to_string_lossy().as_bytes());
    format!("tidegate-{host}-{:08x}", hash as u32)
}

impl Settings {
    /// Merges flags/env (already in `cli`), the TOML file and the seed script's variables, then
    /// validates every value.
    pub fn resolve(cli: RunArgs) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => load_file(path)?,
            None => RunArgs::default(),
        };
        let a = cli.or(file);

        let broker = match (a.broker.as_deref(), env("BROKER_ADDR")) {
            (Some(b), _) => BrokerUrl::parse(b)?,
            (None, Some(seed)) => BrokerUrl::from_seed_host(&seed)?,
            (None, None) => {
                return Err(ConfigError::new(
                    "broker",
                    "no broker given; pass --broker mqtts://HOST:8883 or set TIDEGATE_BROKER (or BROKER_ADDR in .env)",
                ))
            }
        };

        let topics = a.topics.unwrap_or_else(|| vec!["#".into()]);
        let topics: Vec<String> = topics.into_iter().map(|t| t.trim().to_string()).collect();
        if topics.is_empty() {
            return Err(ConfigError::new("topic", "at least one topic filter is needed"));
        }
        for t in &topics {
            validate_filter(t).map_err(|e| ConfigError::new("topic", e))?;
        }

        let qos = a.qos.unwrap_or(1);
        if qos > 1 {
            return Err(ConfigError::new(
                "qos",
                format!("{qos} is not supported; use 1 (at least once, nothing lost) or 0"),
            ));
        }

        let db = DbUrl::parse(a.db.as_deref().unwrap_or("tidegate.db"))?;

        let version = match a.mqtt_version.as_deref().map(str::trim) {
            None | Some("5") | Some("5.0") => MqttVersion::V5,
            Some("3.1.1") | Some("3") | Some("4") | Some("311") => MqttVersion::V311,
            Some(other) => {
                return Err(ConfigError::new(
                    "mqtt-version",
                    format!("`{other}` is not 5 or 3.1.1"),
                ))
            }
        };

        let client_id = a.client_id.unwrap_or_else(|| default_client_id(&db));
        if client_id.is_empty() || client_id.len() > 256 || client_id.chars().any(char::is_control) {
            return Err(ConfigError::new(
                "client-id",
                "must be 1 to 256 printable characters, stable and unique per instance",
            ));
        }

        let username = a.username.or_else(|| env("HIVE_USER"));
        let password = match (a.password, a.password_file) {
            (Some(p), _) => Some(Secret::new(p)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    ConfigError::new(
                        "password-file",
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    )
                })?;
                Some(Secret::new(text.lines().next().unwrap_or("").to_string()))
            }
            (None, None) => env("HIVE_PSWD").map(Secret::new),
        };
        if password.is_some() && username.is_none() {
            return Err(ConfigError::new(
                "username",
                "a password is set but no user name; pass --username",
            ));
        }

        let tls = TlsFiles {
            ca_file: a.ca_file,
            client_cert: a.client_cert,
            client_key: a.client_key,
        };
        check_file("ca-file", &tls.ca_file)?;
        check_file("client-cert", &tls.client_cert)?;
        check_file("client-key", &tls.client_key)?;
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(ConfigError::new(
                "client-cert",
                "--client-cert and --client-key go together",
            ));
        }
        if !broker.transport.is_tls() && (tls.ca_file.is_some() || tls.client_cert.is_some()) {
            return Err(ConfigError::new(
                "ca-file",
                format!(
                    "TLS files were given but the broker URL `{broker}` is not TLS; use mqtts:// or wss://"
                ),
            ));
        }

        let session_expiry = a.session_expiry.map(|s| s.0).unwrap_or(Duration::from_secs(3600));
        if session_expiry.as_secs() > u32::MAX as u64 {
            return Err(ConfigError::new(
                "session-expiry",
                "is longer than MQTT allows (about 136 years)",
            ));
        }
        let keep_alive = a.keep_alive.map(|s| s.0).unwrap_or(Duration::from_secs(30));
        if keep_alive < Duration::from_secs(1) || keep_alive.as_secs() > u16::MAX as u64 {
            return Err(ConfigError::new("keep-alive", "must be between 1s and 18h"));
        }
        let max_payload = a.max_payload.map(|s| s.0).unwrap_or(1 << 20);
        if max_payload == 0 || max_payload > 256 << 20 {
            return Err(ConfigError::new(
                "max-payload",
                "must be between 1 byte and 256MiB",
            ));
        }
        let sqlite_sync = match a.sqlite_sync.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("full") => SqliteSync::Full,
            Some("normal") => SqliteSync::Normal,
            Some(other) => {
                return Err(ConfigError::new(
                    "sqlite-sync",
                    format!("`{other}` is not full or normal"),
                ))
            }
        };
        let batch_size = a.batch_size.unwrap_or(5000);
        if !(1..=100_000).contains(&batch_size) {
            return Err(ConfigError::new("batch-size", "must be between 1 and 100000"));
        }
        let batch_delay = a.batch_delay.map(|s| s.0).unwrap_or(Duration::ZERO);
        if batch_delay > Duration::from_secs(10) {
            return Err(ConfigError::new(
                "batch-delay",
                "must be at most 10s (the broker waits for acks)",
            ));
        }

        Ok(Settings {
            mqtt: MqttSettings {
                broker,
                topics,
                qos,
                client_id,
                username,
                password,
                version,
                tls,
                session_expiry,
                keep_alive,
                max_payload,
            },
            pipeline: PipelineSettings {
                batch_size,
                batch_delay,
            },
            store: StoreSettings { db, sqlite_sync },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(broker: &str) -> RunArgs {
        RunArgs {
            broker: Some(broker.into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(args("mqtt://localhost")).unwrap();
        assert_eq!(s.mqtt.topics, vec!["#"]);
        assert_eq!(s.mqtt.qos, 1);
        assert_eq!(s.mqtt.version, MqttVersion::V5);
        assert_eq!(s.store.db, DbUrl::Sqlite("tidegate.db".into()));
        assert_eq!(s.store.sqlite_sync, SqliteSync::Full);
        assert!(s.mqtt.client_id.starts_with("tidegate-"));
        assert_eq!(s.mqtt.max_payload, 1 << 20);
    }

    #[test]
    fn errors_name_the_setting() {
        let cases: Vec<(RunArgs, &str)> = vec![
            (
                RunArgs {
                    qos: Some(2),
                    ..args("mqtt://h")
                },
                "qos",
            ),
            (
                RunArgs {
                    topics: Some(vec!["a/#/b".into()]),
                    ..args("mqtt://h")
                },
                "topic",
            ),
            (
                RunArgs {
                    mqtt_version: Some("4.0".into()),
                    ..args("mqtt://h")
                },
                "mqtt-version",
            ),
            (
                RunArgs {
                    db: Some("mysql://x".into()),
                    ..args("mqtt://h")
                },
                "db",
            ),
            (
                RunArgs {
                    ca_file: Some("/nonexistent".into()),
                    ..args("mqtts://h")
                },
                "ca-file",
            ),
            (
                RunArgs {
                    password: Some("pw".into()),
                    ..args("mqtt://h")
                },
                "username",
            ),
            (
                RunArgs {
                    sqlite_sync: Some("off".into()),
                    ..args("mqtt://h")
                },
                "sqlite-sync",
            ),
            (args("bogus://h"), "broker"),
        ];
        for (a, setting) in cases {
            let err = Settings::resolve(a).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let s = Settings::resolve(RunArgs {
            username: Some("u".into()),
            password: Some("s3cr3t-pw".into()),
            ..args("mqtt://h")
        })
        .unwrap();
        assert!(!format!("{s:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn toml_file_parses_and_rejects_unknown_keys() {
        let ok: RunArgs = toml::from_str(
            "broker = \"mqtt://h\"\ntopics = [\"a/#\"]\nmax_payload = \"2MiB\"\nsession_expiry = \"2h\"",
        )
        .unwrap();
        assert_eq!(ok.max_payload, Some(Size(2 << 20)));
        assert!(toml::from_str::<RunArgs>("brokr = \"x\"").is_err());
    }
}
