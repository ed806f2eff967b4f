//! The MQTT side of the settings: broker, topic filters (and the share group), QoS, protocol
//! version, client id, credentials, TLS files and session timers, checked together. It must
//! never read a file but to check it exists (the password file excepted).

use std::{path::PathBuf, time::Duration};

use super::{
    check_file, default_client_id, env, read_secret_file, validate_filter, BrokerUrl, ConfigError, RunArgs,
};
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttVersion {
    V5,
    V311,
}

/// As `--mqtt-version` takes it, for logs.
impl std::fmt::Display for MqttVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MqttVersion::V5 => "5",
            MqttVersion::V311 => "3.1.1",
        })
    }
}

impl MqttVersion {
    /// How many deliveries the broker may send before it waits for tidegate's acknowledgements.
    /// MQTT 5: the Receive Maximum tidegate announces. MQTT 3.1.1 has no way to announce one,
    /// and brokers keep their own: 20 is Mosquitto's and VerneMQ's default, and the smallest
    /// common one.
    pub fn ack_window(self) -> usize {
        match self {
            MqttVersion::V5 => usize::from(crate::source::RECEIVE_MAXIMUM),
            MqttVersion::V311 => 20,
        }
    }
}

/// TLS material, paths checked to exist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How a client reaches a broker and proves who it is, as given: flags, or the TIDEGATE_* and
/// seed-script variables. `tidegate run` takes these among its settings; `tidegate bench`
/// takes them alone, so a load test reaches the same broker the same way.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AccessArgs {
    /// MQTT user name.
    #[arg(long, env = "TIDEGATE_USERNAME")]
    pub username: Option<String>,
    /// MQTT password (prefer the env var or --password-file: flags show up in `ps`).
    #[arg(long, env = "TIDEGATE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// File whose first line is the MQTT password.
    #[arg(long, env = "TIDEGATE_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// PEM file with extra CA certificates to trust (for a private or self-signed broker).
    #[arg(long, env = "TIDEGATE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (needs --client-key).
    #[arg(long, env = "TIDEGATE_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// PEM private key for --client-cert.
    #[arg(long, env = "TIDEGATE_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
}

/// A broker, and what a client needs to be let in: checked, the password read, TLS files
/// known to exist.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerAccess {
    pub broker: BrokerUrl,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsFiles,
}

/// Checks credentials and TLS files against the broker URL. The seed script's HIVE_USER and
/// HIVE_PSWD stand in for a user name and password not given.
pub fn resolve_access(broker: BrokerUrl, a: AccessArgs) -> Result<BrokerAccess, ConfigError> {
    let username = a.username.or_else(|| env("HIVE_USER"));
    let password = match (a.password, &a.password_file) {
        (Some(p), _) => Some(Secret::new(p)),
        (None, Some(path)) => Some(read_secret_file("password-file", path)?),
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
            format!("TLS files were given but the broker URL `{broker}` is not TLS; use mqtts:// or wss://"),
        ));
    }
    Ok(BrokerAccess {
        broker,
        username,
        password,
        tls,
    })
}

/// Everything the MQTT source needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSettings {
    pub access: BrokerAccess,
    pub topics: Vec<String>,
    pub qos: u8,
    pub client_id: String,
    pub version: MqttVersion,
    pub session_expiry: Duration,
    pub keep_alive: Duration,
    /// How long a connected session may go without a message before it is subscribed again and
    /// reported not ready; `None` when the watchdog is off.
    pub stale_after: Option<Duration>,
    pub max_payload: usize,
}

pub(super) fn resolve_mqtt(
    a: &RunArgs,
    target: &str,
    max_payload: usize,
) -> Result<MqttSettings, ConfigError> {
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

    let topics: Vec<String> = a
        .topics
        .clone()
        .unwrap_or_else(|| vec!["#".into()])
        .into_iter()
        .map(|t| t.trim().to_string())
        .collect();
    if topics.is_empty() {
        return Err(ConfigError::new("topic", "at least one topic filter is needed"));
    }
    for t in &topics {
        validate_filter(t).map_err(|e| ConfigError::new("topic", e))?;
    }

    let topics = match &a.share_group {
        None => topics,
        Some(g) => {
            if g.is_empty() || g.contains(['/', '+', '#']) || g.chars().any(char::is_control) {
                return Err(ConfigError::new(
                    "share-group",
                    format!("`{g}` must be a name without /, + or #"),
                ));
            }
            if let Some(t) = topics.iter().find(|t| t.starts_with("$share/")) {
                return Err(ConfigError::new(
                    "share-group",
                    format!("topic `{t}` is already a shared subscription"),
                ));
            }
            topics.into_iter().map(|t| format!("$share/{g}/{t}")).collect()
        }
    };

    let qos = a.qos.unwrap_or(1);
    if qos > 1 {
        return Err(ConfigError::new(
            "qos",
            format!("{qos} is not supported; use 1 (at least once, nothing lost) or 0"),
        ));
    }

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

    let client_id = a.client_id.clone().unwrap_or_else(|| default_client_id(target));
    if client_id.is_empty() || client_id.len() > 256 || client_id.chars().any(char::is_control) {
        return Err(ConfigError::new(
            "client-id",
            "must be 1 to 256 printable characters, stable and unique per instance",
        ));
    }

    let access = resolve_access(
        broker,
        AccessArgs {
            username: a.username.clone(),
            password: a.password.clone(),
            password_file: a.password_file.clone(),
            ca_file: a.ca_file.clone(),
            client_cert: a.client_cert.clone(),
            client_key: a.client_key.clone(),
        },
    )?;

    let session_expiry = a.session_expiry.map(|s| s.0).unwrap_or(Duration::from_secs(3600));
    if session_expiry.as_secs() > u32::MAX as u64 {
        return Err(ConfigError::new(
            "session-expiry",
            "is longer than MQTT allows (about 136 years)",
        ));
    }
    let keep_alive = a.keep_alive.map(|s| s.0).unwrap_or(Duration::from_secs(30));
    // rumqttc refuses (panics on) keep-alives under 5 s.
    if keep_alive < Duration::from_secs(5) || keep_alive.as_secs() > u16::MAX as u64 {
        return Err(ConfigError::new("keep-alive", "must be between 5s and 18h"));
    }
    let stale_after = a.stale_after.map(|s| s.0);
    if stale_after.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(ConfigError::new(
            "stale-after",
            "must be at least 1s (leave it unset to turn the watchdog off)",
        ));
    }
    Ok(MqttSettings {
        access,
        topics,
        qos,
        client_id,
        version,
        session_expiry,
        keep_alive,
        stale_after,
        max_payload,
    })
}
