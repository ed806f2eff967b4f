//! The settings of `tidegate run` as flags, environment variables and TOML keys — one struct for
//! all three, so a setting cannot exist in one place and be missing in another. Every field is
//! optional here; defaults and validation are applied in `config::Settings::resolve`.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::values::{Size, Span};

#[derive(Debug, Clone, Default, PartialEq, Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// TOML file with these same settings (flags and env vars override it).
    #[arg(long, env = "TIDEGATE_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Broker URL: mqtt://host:1883, mqtts://host:8883, ws://host:port/path, wss://host:8884/mqtt.
    #[arg(long, env = "TIDEGATE_BROKER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,

    /// Topic filter to subscribe to (repeatable; + and # wildcards). Default: `#`.
    #[arg(long = "topic", env = "TIDEGATE_TOPICS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,

    /// Share the stream with other instances: subscribes to `$share/NAME/<filter>` for every
    /// topic, so each message goes to one member of the group.
    #[arg(long, env = "TIDEGATE_SHARE_GROUP")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub share_group: Option<String>,

    /// Subscription QoS: 1 (at least once, the default) or 0 (at most once).
    #[arg(long, env = "TIDEGATE_QOS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<u8>,

    /// Database: a SQLite path or sqlite://PATH (default tidegate.db), or
    /// postgres://user@host:port/db?sslmode=disable|prefer|require|verify-full (without
    /// sslmode: no TLS to this machine, TLS when the server offers it elsewhere).
    #[arg(long, env = "TIDEGATE_DB")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,

    /// File whose first line is the PostgreSQL password (or set TIDEGATE_DB_PASSWORD).
    #[arg(long, env = "TIDEGATE_DB_PASSWORD_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_password_file: Option<PathBuf>,

    /// MQTT client id; must be stable and unique per instance (default derived from host and db).
    #[arg(long, env = "TIDEGATE_CLIENT_ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// MQTT user name.
    #[arg(long, env = "TIDEGATE_USERNAME")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,

    /// MQTT password (prefer the env var or --password-file: flags show up in `ps`).
    #[arg(long, env = "TIDEGATE_PASSWORD", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,

    /// File whose first line is the MQTT password.
    #[arg(long, env = "TIDEGATE_PASSWORD_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,

    /// MQTT protocol version: 5 (default) or 3.1.1.
    #[arg(long, env = "TIDEGATE_MQTT_VERSION")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_version: Option<String>,

    /// PEM file with extra CA certificates to trust (for a private or self-signed broker).
    #[arg(long, env = "TIDEGATE_CA_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,

    /// PEM client certificate for mutual TLS (needs --client-key).
    #[arg(long, env = "TIDEGATE_CLIENT_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key for --client-cert.
    #[arg(long, env = "TIDEGATE_CLIENT_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,

    /// How long the broker keeps the session while tidegate is away (default 1h).
    #[arg(long, env = "TIDEGATE_SESSION_EXPIRY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_expiry: Option<Span>,

    /// MQTT keep-alive interval (default 30s).
    #[arg(long, env = "TIDEGATE_KEEP_ALIVE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<Span>,

    /// When connected and no message has arrived for this long, subscribe again and report not
    /// ready until one does (e.g. 10m; default: off). For topics that are never quiet that long.
    /// Time while the store is failing does not count.
    #[arg(long, env = "TIDEGATE_STALE_AFTER")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_after: Option<Span>,

    /// Largest payload stored; larger ones are recorded in `rejected` (default 1MiB).
    #[arg(long, env = "TIDEGATE_MAX_PAYLOAD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_payload: Option<Size>,

    /// SQLite durability: `full` (default: nothing acknowledged is lost on power loss) or
    /// `normal` (faster; survives a crash of tidegate, may lose the last commits on power loss).
    #[arg(long, env = "TIDEGATE_SQLITE_SYNC")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sqlite_sync: Option<String>,

    /// Most messages committed in one transaction (default 5000).
    #[arg(long, env = "TIDEGATE_BATCH_SIZE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,

    /// Where the HTTP API listens (`off` to disable). Default 127.0.0.1:8080. For `subscribe`,
    /// off unless given, and then only /healthz, /readyz and /metrics.
    #[arg(long, env = "TIDEGATE_LISTEN")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,

    /// Bearer token every API route but /healthz requires (needed to listen beyond loopback).
    #[arg(long, env = "TIDEGATE_API_TOKEN", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token: Option<String>,

    /// File of API tokens, one a line: each is accepted, the first is the one `subscribe` sends.
    /// A reload reads it again (rotate a token without a restart).
    #[arg(long, env = "TIDEGATE_API_TOKEN_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<PathBuf>,

    /// PEM certificate chain the API serves HTTPS with (needs --api-tls-key); the API then
    /// speaks only HTTPS. A reload (SIGHUP) reads a renewed certificate from the same files.
    #[arg(long, env = "TIDEGATE_API_TLS_CERT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_tls_cert: Option<PathBuf>,

    /// PEM private key of --api-tls-cert.
    #[arg(long, env = "TIDEGATE_API_TLS_KEY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_tls_key: Option<PathBuf>,

    /// Largest HTTP request body accepted (default 8MiB).
    #[arg(long, env = "TIDEGATE_MAX_BODY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body: Option<Size>,

    /// Most API requests a second from one client address (bursts up to the same number);
    /// beyond it the API answers 429 with Retry-After. 0 turns the limit off (default 1000).
    #[arg(long, env = "TIDEGATE_API_RATE_LIMIT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_rate_limit: Option<u32>,

    /// `subscribe` only: the tidegate API to forward to, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "TIDEGATE_API")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,

    /// `subscribe` only: PEM file with CA certificates to trust for an https:// --api (a private
    /// or self-signed certificate), besides the public ones.
    #[arg(long, env = "TIDEGATE_API_CA_FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_ca_file: Option<PathBuf>,

    /// Directory of a durable local spool: acknowledge after an fsync'd local append and forward
    /// to PostgreSQL (or the `subscribe` API) in order, so an outage longer than the broker's
    /// queue loses nothing.
    #[arg(long, env = "TIDEGATE_SPOOL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<PathBuf>,

    /// Largest spool before tidegate stops acknowledging (default 1GiB).
    #[arg(long, env = "TIDEGATE_SPOOL_MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_max: Option<Size>,

    /// Extract readings (one row per JSON field) and rollups: `on` (default) or `off`. Mappings apply either way.
    #[arg(long, env = "TIDEGATE_READINGS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings: Option<String>,

    /// Where the device name comes from: a topic pattern such as `sensors/{device}/#`, or
    /// `payload.FIELD` (`payload.a.b` for a nested field). Default: a top-level `device` or
    /// `device_id` field.
    #[arg(long, env = "TIDEGATE_DEVICE_FROM")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_from: Option<String>,

    /// Payload field holding the event time (repeatable; default ts, timestamp, time; `a.b` for a
    /// nested field).
    #[arg(long = "time-field", env = "TIDEGATE_TIME_FIELDS", value_delimiter = ',')]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_fields: Option<Vec<String>>,

    /// Time zone of payload times written without an offset (`2026-12-06 10:00:00`): an IANA
    /// name such as `America/Sao_Paulo` (default UTC). Times with an offset and unix times are
    /// exact already.
    #[arg(long, env = "TIDEGATE_TIME_ZONE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,

    /// Deepest JSON nesting turned into readings (default 8).
    #[arg(long, env = "TIDEGATE_READINGS_MAX_DEPTH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings_max_depth: Option<usize>,

    /// Most readings from one message (default 256).
    #[arg(long, env = "TIDEGATE_READINGS_MAX_FIELDS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings_max_fields: Option<usize>,

    /// The part of a payload readings come from, as a dotted path (e.g.
    /// `uplink_message.decoded_payload` for The Things Network): where a payload has it, its
    /// fields are the readings, named from there; other payloads give readings as usual. Event
    /// time and device are still found in the whole payload. Default: the whole payload.
    #[arg(long, env = "TIDEGATE_READINGS_ROOT")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readings_root: Option<String>,

    /// Delete raw messages older than this (e.g. 30d; default: keep).
    #[arg(long, env = "TIDEGATE_RETAIN_RAW")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_raw: Option<Span>,

    /// Delete readings older than this (e.g. 90d; default: keep).
    #[arg(long, env = "TIDEGATE_RETAIN_READINGS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_readings: Option<Span>,

    /// Delete rollups older than this (e.g. 5y; default: keep).
    #[arg(long, env = "TIDEGATE_RETAIN_ROLLUPS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retain_rollups: Option<Span>,

    /// Wide tables filled from JSON paths: `[[mapping]]` tables in the config file only.
    #[arg(skip)]
    #[serde(rename = "mapping", skip_serializing_if = "Option::is_none")]
    pub mappings: Option<Vec<crate::readings::mapping::MappingSpec>>,

    /// Metabase to tell when tables or columns appear (a new mapping table, an added column),
    /// e.g. http://127.0.0.1:3000: it then reads the schema at once instead of at its hourly
    /// sync. Needs --metabase-database and TIDEGATE_METABASE_API_KEY.
    #[arg(long, env = "TIDEGATE_METABASE_URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metabase_url: Option<String>,

    /// The id of this database in Metabase (the number in Admin → Databases → its URL).
    #[arg(long, env = "TIDEGATE_METABASE_DATABASE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metabase_database: Option<u32>,

    /// A Metabase API key (Admin → Settings → Authentication → API keys; the Administrators
    /// group). Prefer the env var: flags show up in `ps`.
    #[arg(long, env = "TIDEGATE_METABASE_API_KEY", hide_env_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metabase_api_key: Option<String>,

    /// Commit at most once per this long (default 0ms: as soon as the writer is free; batches
    /// grow by themselves under load). A message after a quiet spell that long is committed at
    /// once. `1s` on an SD card or eMMC: each commit writes ~50 KiB (docs/deploy.md).
    #[arg(long, env = "TIDEGATE_BATCH_DELAY")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_delay: Option<Span>,
}

impl RunArgs {
    /// Every setting that has a fixed default. Settings left `None` have none (the broker), or
    /// one derived at start (the client id from host and database; the user and password from
    /// the seed script's HIVE_USER/HIVE_PSWD).
    pub fn defaults() -> RunArgs {
        use std::time::Duration;
        RunArgs {
            topics: Some(vec!["#".into()]),
            qos: Some(1),
            db: Some("tidegate.db".into()),
            mqtt_version: Some("5".into()),
            session_expiry: Some(Span(Duration::from_secs(3600))),
            keep_alive: Some(Span(Duration::from_secs(30))),
            max_payload: Some(Size(1 << 20)),
            sqlite_sync: Some("full".into()),
            batch_size: Some(5000),
            batch_delay: Some(Span(Duration::ZERO)),
            listen: Some("127.0.0.1:8080".into()),
            max_body: Some(Size(8 << 20)),
            api_rate_limit: Some(1000),
            spool_max: Some(Size(1 << 30)),
            readings: Some("on".into()),
            time_fields: Some(vec!["ts".into(), "timestamp".into(), "time".into()]),
            time_zone: Some("UTC".into()),
            readings_max_depth: Some(8),
            readings_max_fields: Some(256),
            ..Default::default()
        }
    }

    /// Field by field: the value given here wins, else the one from `other`.
    pub fn or(self, other: RunArgs) -> RunArgs {
        RunArgs {
            config: self.config.or(other.config),
            broker: self.broker.or(other.broker),
            topics: self.topics.or(other.topics),
            qos: self.qos.or(other.qos),
            share_group: self.share_group.or(other.share_group),
            db: self.db.or(other.db),
            db_password_file: self.db_password_file.or(other.db_password_file),
            client_id: self.client_id.or(other.client_id),
            username: self.username.or(other.username),
            password: self.password.or(other.password),
            password_file: self.password_file.or(other.password_file),
            mqtt_version: self.mqtt_version.or(other.mqtt_version),
            ca_file: self.ca_file.or(other.ca_file),
            client_cert: self.client_cert.or(other.client_cert),
            client_key: self.client_key.or(other.client_key),
            session_expiry: self.session_expiry.or(other.session_expiry),
            keep_alive: self.keep_alive.or(other.keep_alive),
            stale_after: self.stale_after.or(other.stale_after),
            max_payload: self.max_payload.or(other.max_payload),
            sqlite_sync: self.sqlite_sync.or(other.sqlite_sync),
            batch_size: self.batch_size.or(other.batch_size),
            batch_delay: self.batch_delay.or(other.batch_delay),
            listen: self.listen.or(other.listen),
            api_token: self.api_token.or(other.api_token),
            api_token_file: self.api_token_file.or(other.api_token_file),
            api_tls_cert: self.api_tls_cert.or(other.api_tls_cert),
            api_tls_key: self.api_tls_key.or(other.api_tls_key),
            max_body: self.max_body.or(other.max_body),
            api_rate_limit: self.api_rate_limit.or(other.api_rate_limit),
            api: self.api.or(other.api),
            api_ca_file: self.api_ca_file.or(other.api_ca_file),
            spool: self.spool.or(other.spool),
            readings: self.readings.or(other.readings),
            mappings: self.mappings.or(other.mappings),
            device_from: self.device_from.or(other.device_from),
            time_fields: self.time_fields.or(other.time_fields),
            time_zone: self.time_zone.or(other.time_zone),
            readings_max_depth: self.readings_max_depth.or(other.readings_max_depth),
            readings_max_fields: self.readings_max_fields.or(other.readings_max_fields),
            readings_root: self.readings_root.or(other.readings_root),
            retain_raw: self.retain_raw.or(other.retain_raw),
            retain_readings: self.retain_readings.or(other.retain_readings),
            retain_rollups: self.retain_rollups.or(other.retain_rollups),
            spool_max: self.spool_max.or(other.spool_max),
            metabase_url: self.metabase_url.or(other.metabase_url),
            metabase_database: self.metabase_database.or(other.metabase_database),
            metabase_api_key: self.metabase_api_key.or(other.metabase_api_key),
        }
    }
}
