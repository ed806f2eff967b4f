//! Turns flags, environment variables, the `.env` file and the TOML file into one validated
//! `Settings`. Everything is checked here, before anything connects; this module must never open
//! a socket or a database.

mod api;
mod args;
mod broker;
pub mod current;
pub mod dotenv;
mod metabase;
mod mqtt;
mod postgres;
mod readings;
pub mod reference;
mod store;
mod unused;
mod values;

use std::{path::PathBuf, time::Duration};

pub use api::{ApiSettings, RemoteSettings};
pub use args::RunArgs;
pub use broker::{filter_matches, validate_filter, validate_topic_name, BrokerUrl, Transport};
pub use metabase::MetabaseSettings;
pub use mqtt::{resolve_access, AccessArgs, BrokerAccess, MqttSettings, MqttVersion, TlsFiles};
pub use postgres::{PgTarget, PgTls};
pub use store::{DbUrl, RetentionPolicy, SpoolSettings, SqliteSync, StoreSettings};
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

/// How the writer batches and commits.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSettings {
    pub batch_size: usize,
    pub batch_delay: Duration,
    /// Broker deliveries a batch may owe an acknowledgement before it goes without waiting out
    /// `batch_delay`: the broker's in-flight window (`MqttVersion::ack_window`), unbounded
    /// without MQTT.
    pub ack_window: usize,
}

/// Which command the settings are for; each needs a different part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MQTT → store, with the API.
    Run,
    /// API and store, no MQTT.
    Serve,
    /// MQTT → a remote tidegate API, no store.
    Subscribe,
}

impl Mode {
    /// The command's name.
    pub fn command(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Serve => "serve",
            Mode::Subscribe => "subscribe",
        }
    }
}

/// The validated settings of one command.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mqtt: Option<MqttSettings>,
    pub pipeline: PipelineSettings,
    pub store: Option<StoreSettings>,
    pub api: Option<ApiSettings>,
    pub remote: Option<RemoteSettings>,
    pub spool: Option<SpoolSettings>,
    pub metabase: Option<MetabaseSettings>,
    pub readings: crate::readings::ReadingsConfig,
    pub retention: RetentionPolicy,
    pub max_payload: usize,
    /// Settings given that this command does not use (their flags), to warn about.
    pub unused: Vec<String>,
    /// What these settings were resolved from, to resolve them again on a reload.
    pub origin: Origin,
}

/// The command and its flags and environment (the TOML file is read again on every resolve).
#[derive(Clone)]
pub struct Origin {
    pub mode: Mode,
    args: RunArgs,
}

// By hand: the flags may hold a password or a token.
impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("mode", &self.mode)
            .field("config", &self.args.config)
            .finish_non_exhaustive()
    }
}

/// MQTT's largest payload (a packet is at most 256 MiB), the most `--max-payload` allows.
pub const MAX_PAYLOAD: usize = 256 << 20;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A settings file's text, refused past `max` bytes: a device or a wrong file named by mistake
/// (`/dev/zero`, a database) must not fill the memory before it is found wrong.
pub(crate) fn read_bounded(path: &std::path::Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded_bytes(path, max)?).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// As `read_bounded`, for a file that need not be text.
pub(crate) fn read_bounded_bytes(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("it is larger than {max} bytes; is it the right file?"),
        ));
    }
    Ok(bytes)
}

/// Reads the TOML file named by `--config`, if any.
pub fn load_file(path: &std::path::Path) -> Result<RunArgs, ConfigError> {
    let text = read_bounded(path, 16 << 20)
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

/// The first line of a secret file (a password, a token).
fn read_secret_file(setting: &'static str, path: &std::path::Path) -> Result<Secret, ConfigError> {
    Ok(read_secret_lines(setting, path)?
        .into_iter()
        .next()
        .unwrap_or_else(|| Secret::new("")))
}

/// Every line of a secret file that is not blank, trailing spaces cut.
fn read_secret_lines(setting: &'static str, path: &std::path::Path) -> Result<Vec<Secret>, ConfigError> {
    // The error's kind only: its text is never the file's, but say no more than needed.
    let text = read_bounded(path, 64 << 10).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::InvalidData => "larger than 64 KiB, or not text".to_string(),
            kind => kind.to_string(),
        };
        ConfigError::new(setting, format!("cannot read {}: {why}", path.display()))
    })?;
    Ok(text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(|l| Secret::new(l.to_string()))
        .collect())
}

/// A client id that stays the same across restarts of one instance and differs between
/// instances on other hosts or databases: `tidegate-<host>-<hash of the db path or API URL>`.
pub fn default_client_id(target: &str) -> String {
    let host: String = hostname::get()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".into())
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(24)
        .collect();
    let hash = xxhash_rust::xxh3::xxh3_64(target.as_bytes());
    format!("tidegate-{host}-{:08x}", hash as u32)
}

impl Settings {
    /// Merges flags/env (already in `cli`), the TOML file and the seed script's variables, then
    /// validates every value the command needs.
    pub fn resolve(mode: Mode, cli: RunArgs) -> Result<Settings, ConfigError> {
        let origin = Origin {
            mode,
            args: cli.clone(),
        };
        let file = match &cli.config {
            Some(path) => load_file(path)?,
            None => RunArgs::default(),
        };
        let given = cli.clone().or(file.clone());
        let unused = unused::by(mode, &given);
        let a = cli.or(file).or(RunArgs::defaults());

        let max_payload = a.max_payload.map(|s| s.0).unwrap_or(1 << 20);
        if max_payload == 0 || max_payload > MAX_PAYLOAD {
            return Err(ConfigError::new(
                "max-payload",
                "must be between 1 byte and 256MiB",
            ));
        }
        let mut pipeline = resolve_pipeline(&a)?;
        let store = match mode {
            Mode::Run | Mode::Serve => Some(store::resolve_store(&a)?),
            Mode::Subscribe => None,
        };
        let remote = match mode {
            Mode::Subscribe => Some(api::resolve_remote(&a)?),
            _ => None,
        };
        let api = match mode {
            Mode::Run | Mode::Serve => api::resolve_api(&a, mode)?,
            // A subscriber's health and metrics, only where asked: the default address is that
            // of a `serve` it may run beside.
            Mode::Subscribe if given.listen.is_some() => api::resolve_api(&a, mode)?,
            Mode::Subscribe => None,
        };
        let mqtt = match mode {
            Mode::Run | Mode::Subscribe => {
                let target = match (&store, &remote) {
                    (Some(s), _) => store::db_key(&s.db),
                    (None, Some(r)) => r.url.clone(),
                    _ => String::new(),
                };
                Some(mqtt::resolve_mqtt(&a, &target, max_payload)?)
            }
            Mode::Serve => None,
        };
        if let Some(m) = &mqtt {
            pipeline.ack_window = m.version.ack_window();
        }
        let spool = store::resolve_spool(&a, store.as_ref())?;
        let metabase = metabase::resolve_metabase(&a, mode)?;
        let readings = readings::resolve_readings(&a)?;
        let mut retention = store::resolve_retention(&a)?;
        retention.mapped = readings
            .mappings
            .iter()
            .filter_map(|m| Some((m.table.clone(), m.retain?)))
            .collect();
        Ok(Settings {
            mqtt,
            pipeline,
            store,
            api,
            remote,
            spool,
            metabase,
            readings,
            retention,
            max_payload,
            unused,
            origin,
        })
    }

    /// The same command's settings resolved again: the TOML file as it is now, the flags and
    /// environment as they were at start (a flag still wins over the file).
    pub fn reread(&self) -> Result<Settings, ConfigError> {
        Settings::resolve(self.origin.mode, self.origin.args.clone())
    }

    /// The TOML file these settings were read from, if any.
    pub fn config_file(&self) -> Option<&std::path::Path> {
        self.origin.args.config.as_deref()
    }

    /// The settings the config file gives a value that a flag or an environment variable
    /// overrides (they win over the file), by their names in the file: editing them there
    /// changes nothing. Only names, never values (some are secrets).
    pub fn overridden_in_file(&self) -> Vec<String> {
        let Some(file) = self.origin.args.config.as_deref().and_then(|p| load_file(p).ok()) else {
            return Vec::new();
        };
        match (
            serde_json::to_value(&self.origin.args),
            serde_json::to_value(&file),
        ) {
            (Ok(serde_json::Value::Object(flags)), Ok(serde_json::Value::Object(file))) => file
                .iter()
                .filter(|(k, v)| flags.get(*k).is_some_and(|f| !f.is_null() && f != *v))
                .map(|(k, _)| k.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The settings in `new` that differ from these and that only a restart applies: everything
    /// but the topic filters, their QoS, readings, mappings and retention.
    pub fn needs_restart(&self, new: &Settings) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                changed.push(name);
            }
        };
        match (&self.mqtt, &new.mqtt) {
            (Some(a), Some(b)) => {
                check("broker", a.access.broker == b.access.broker);
                check("client-id", a.client_id == b.client_id);
                check(
                    "username/password",
                    a.access.username == b.access.username && a.access.password == b.access.password,
                );
                check("mqtt-version", a.version == b.version);
                check("ca-file/client-cert/client-key", a.access.tls == b.access.tls);
                check("session-expiry", a.session_expiry == b.session_expiry);
                check("keep-alive", a.keep_alive == b.keep_alive);
                check("stale-after", a.stale_after == b.stale_after);
            }
            (a, b) => check("broker", a.is_none() == b.is_none()),
        }
        check("max-payload", self.max_payload == new.max_payload);
        check("batch-size/batch-delay", self.pipeline == new.pipeline);
        // The batch size is in both; it is named once, with the pipeline.
        check(
            "db/sqlite-sync",
            self.store.as_ref().map(|s| (&s.db, s.sqlite_sync))
                == new.store.as_ref().map(|s| (&s.db, s.sqlite_sync)),
        );
        // Tokens are swapped by a reload (`reload`), so they are left out of both comparisons.
        let api_but_tokens = |a: &Option<ApiSettings>| {
            a.as_ref().map(|a| ApiSettings {
                tokens: Vec::new(),
                ..a.clone()
            })
        };
        check(
            "listen/api-tls-cert/api-tls-key/max-body/api-rate-limit",
            api_but_tokens(&self.api) == api_but_tokens(&new.api),
        );
        let remote_but_token = |r: &Option<RemoteSettings>| {
            r.as_ref().map(|r| RemoteSettings {
                token: None,
                ..r.clone()
            })
        };
        check(
            "api/api-ca-file",
            remote_but_token(&self.remote) == remote_but_token(&new.remote),
        );
        check("spool/spool-max", self.spool == new.spool);
        check(
            "metabase-url/metabase-database/metabase-api-key",
            self.metabase == new.metabase,
        );
        changed
    }
}

fn batch_size(a: &RunArgs) -> Result<usize, ConfigError> {
    let batch_size = a.batch_size.unwrap_or(5000);
    if !(1..=100_000).contains(&batch_size) {
        return Err(ConfigError::new("batch-size", "must be between 1 and 100000"));
    }
    Ok(batch_size)
}

fn resolve_pipeline(a: &RunArgs) -> Result<PipelineSettings, ConfigError> {
    let batch_size = batch_size(a)?;
    let batch_delay = a.batch_delay.map(|s| s.0).unwrap_or(Duration::ZERO);
    if batch_delay > Duration::from_secs(10) {
        return Err(ConfigError::new(
            "batch-delay",
            "must be at most 10s (the broker waits for acks)",
        ));
    }
    Ok(PipelineSettings {
        batch_size,
        batch_delay,
        ack_window: usize::MAX,
    })
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
    fn only_settings_a_reload_cannot_apply_are_named_for_a_restart() {
        let run = |a: RunArgs| Settings::resolve(Mode::Run, a).unwrap();
        let base = run(args("mqtt://localhost"));
        let live = run(RunArgs {
            topics: Some(vec!["other/#".into()]),
            qos: Some(0),
            readings: Some("off".parse().unwrap()),
            retain_raw: Some("30d".parse().unwrap()),
            api_token: Some("a-new-token-of-length".into()),
            ..args("mqtt://localhost")
        });
        assert!(
            base.needs_restart(&live).is_empty(),
            "{:?}",
            base.needs_restart(&live)
        );
        let fixed = run(RunArgs {
            batch_size: Some(10),
            password: Some("changed".into()),
            username: Some("u".into()),
            ..args("mqtt://elsewhere")
        });
        assert_eq!(
            base.needs_restart(&fixed),
            ["broker", "username/password", "batch-size/batch-delay"]
        );
        assert!(
            !format!("{:?}", fixed.origin).contains("changed"),
            "the password stays out of Debug"
        );
    }

    #[test]
    fn every_line_of_the_token_file_is_accepted_and_the_first_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let with = |text: &str, mode| {
            std::fs::write(&file, text).unwrap();
            Settings::resolve(
                mode,
                RunArgs {
                    api_token_file: Some(file.clone()),
                    api: Some("http://127.0.0.1:9".into()),
                    ..args("mqtt://h")
                },
            )
        };
        let two = with("new-token-0123456789\n\nold-token-0123456789  \n", Mode::Run).unwrap();
        let tokens: Vec<_> = two
            .api
            .unwrap()
            .tokens
            .iter()
            .map(|t| t.expose().to_owned())
            .collect();
        assert_eq!(tokens, ["new-token-0123456789", "old-token-0123456789"]);
        let sub = with("new-token-0123456789\nold-token-0123456789\n", Mode::Subscribe).unwrap();
        assert_eq!(
            sub.remote.unwrap().token.unwrap().expose(),
            "new-token-0123456789"
        );
        let short = with("new-token-0123456789\ntiny-tok\n", Mode::Run).unwrap_err();
        assert_eq!(short.setting, "api-token-file");
        assert!(short.to_string().contains("token 2 of 2"), "{short}");
        assert!(!short.to_string().contains("tiny-tok"), "{short}");
        let empty = with("\n  \n", Mode::Run).unwrap_err();
        assert!(empty.to_string().contains("holds no token"), "{empty}");
    }

    #[test]
    fn the_time_zone_is_an_iana_name() {
        let zone = |z: &str| {
            Settings::resolve(
                Mode::Run,
                RunArgs {
                    time_zone: Some(z.into()),
                    ..args("mqtt://localhost")
                },
            )
        };
        assert_eq!(
            zone("America/Sao_Paulo").unwrap().readings.time_zone,
            chrono_tz::Tz::America__Sao_Paulo
        );
        let e = zone("Brasilia").unwrap_err();
        assert_eq!(e.setting, "time-zone");
        assert!(e.problem.contains("America/Sao_Paulo"), "{e}");
        let default = Settings::resolve(Mode::Run, args("mqtt://localhost")).unwrap();
        assert_eq!(default.readings.time_zone, chrono_tz::Tz::UTC);
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(Mode::Run, args("mqtt://localhost")).unwrap();
        let (m, st) = (s.mqtt.clone().unwrap(), s.store.clone().unwrap());
        assert_eq!(m.topics, vec!["#"]);
        assert_eq!(m.qos, 1);
        assert_eq!(m.version, MqttVersion::V5);
        assert_eq!(st.db, DbUrl::Sqlite("tidegate.db".into()));
        assert_eq!(st.sqlite_sync, SqliteSync::Full);
        assert!(m.client_id.starts_with("tidegate-"));
        assert_eq!(m.max_payload, 1 << 20);
        assert_eq!(m.stale_after, None, "the watchdog is off unless asked for");
        assert_eq!(s.api.unwrap().listen.to_string(), "127.0.0.1:8080");
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
                    stale_after: Some(values::Span(Duration::from_millis(500))),
                    ..args("mqtt://h")
                },
                "stale-after",
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
            (
                RunArgs {
                    listen: Some("0.0.0.0:8080".into()),
                    ..args("mqtt://h")
                },
                "listen",
            ),
            (
                RunArgs {
                    listen: Some("localhost".into()),
                    ..args("mqtt://h")
                },
                "listen",
            ),
            (
                RunArgs {
                    api_token: Some("short".into()),
                    ..args("mqtt://h")
                },
                "api-token",
            ),
        ];
        for (a, setting) in cases {
            let err = Settings::resolve(Mode::Run, a).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
        }
    }

    #[test]
    fn password_is_not_in_debug_output() {
        let s = Settings::resolve(
            Mode::Run,
            RunArgs {
                username: Some("u".into()),
                password: Some("s3cr3t-pw".into()),
                ..args("mqtt://h")
            },
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn metabase_needs_its_url_database_and_key_and_never_prints_the_key() {
        let full = || RunArgs {
            metabase_url: Some("http://127.0.0.1:3000/".into()),
            metabase_database: Some(2),
            metabase_api_key: Some("mb_k3y-value".into()),
            ..args("mqtt://h")
        };
        let s = Settings::resolve(Mode::Run, full()).unwrap();
        let m = s.metabase.as_ref().unwrap();
        assert_eq!((m.url.as_str(), m.database), ("http://127.0.0.1:3000", 2));
        assert_eq!(m.api_key.expose(), "mb_k3y-value");
        assert!(!format!("{s:?}").contains("mb_k3y-value"));
        assert!(Settings::resolve(Mode::Run, args("mqtt://h"))
            .unwrap()
            .metabase
            .is_none());
        let cases = [
            (
                RunArgs {
                    metabase_url: None,
                    ..full()
                },
                "metabase-url",
            ),
            (
                RunArgs {
                    metabase_url: Some("localhost:3000".into()),
                    ..full()
                },
                "metabase-url",
            ),
            (
                RunArgs {
                    metabase_database: None,
                    ..full()
                },
                "metabase-database",
            ),
            (
                RunArgs {
                    metabase_api_key: Some(" ".into()),
                    ..full()
                },
                "metabase-api-key",
            ),
        ];
        for (a, setting) in cases {
            let err = Settings::resolve(Mode::Run, a).unwrap_err();
            assert_eq!(err.setting, setting, "{err}");
            assert!(!err.to_string().contains("mb_k3y-value"), "{err}");
        }
    }

    #[test]
    fn a_mapping_retain_joins_the_retention_policy() {
        let spec = |table: &str, retain: Option<&str>| crate::readings::mapping::MappingSpec {
            filter: format!("{table}/#"),
            table: table.into(),
            auto_columns: true,
            columns: Default::default(),
            retain: retain.map(|r| r.parse().unwrap()),
        };
        let s = Settings::resolve(
            Mode::Serve,
            RunArgs {
                mappings: Some(vec![spec("kept", None), spec("trimmed", Some("90d"))]),
                ..RunArgs::default()
            },
        )
        .unwrap();
        let mapped: Vec<_> = s
            .retention
            .mapped
            .iter()
            .map(|(t, d)| (t.as_str(), d.as_secs()))
            .collect();
        assert_eq!(mapped, [("trimmed", 90 * 86400)]);
        assert!(!s.retention.is_off());
    }

    #[test]
    fn each_mode_takes_what_it_needs() {
        let serve = Settings::resolve(Mode::Serve, RunArgs::default()).unwrap();
        assert!(serve.mqtt.is_none() && serve.store.is_some() && serve.api.is_some());
        let err = Settings::resolve(Mode::Subscribe, args("mqtt://h")).unwrap_err();
        assert_eq!(err.setting, "api");
        let sub = Settings::resolve(
            Mode::Subscribe,
            RunArgs {
                api: Some("http://127.0.0.1:9/".into()),
                ..args("mqtt://h")
            },
        )
        .unwrap();
        assert_eq!(sub.remote.unwrap().url, "http://127.0.0.1:9");
        assert!(sub.store.is_none());
        let open = RunArgs {
            listen: Some("0.0.0.0:0".into()),
            api_token: Some("0123456789abcdef".into()),
            ..args("mqtt://h")
        };
        assert!(Settings::resolve(Mode::Run, open).is_ok());
    }

    #[test]
    fn share_group_prefixes_every_topic() {
        let s = Settings::resolve(
            Mode::Run,
            RunArgs {
                share_group: Some("ingest".into()),
                topics: Some(vec!["a/#".into(), "b".into()]),
                ..args("mqtt://h")
            },
        )
        .unwrap();
        assert_eq!(s.mqtt.unwrap().topics, ["$share/ingest/a/#", "$share/ingest/b"]);
        let bad = RunArgs {
            share_group: Some("a/b".into()),
            ..args("mqtt://h")
        };
        assert_eq!(
            Settings::resolve(Mode::Run, bad).unwrap_err().setting,
            "share-group"
        );
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
