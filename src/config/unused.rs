//! The settings a command has no use for, given anyway: `subscribe --db x` stores nothing there,
//! `serve --broker y` subscribes to nothing, `subscribe --api-tls-cert` without `--listen`
//! serves nothing. It names them so the operator is told instead of left to wonder; it must
//! never refuse them, since one config file or environment may serve several commands.

use super::{Mode, RunArgs};

/// How a client reaches the broker and what it subscribes to: `run` and `subscribe`.
const MQTT: &[&str] = &[
    "broker",
    "topics",
    "qos",
    "share_group",
    "client_id",
    "username",
    "password",
    "password_file",
    "mqtt_version",
    "ca_file",
    "client_cert",
    "client_key",
    "session_expiry",
    "keep_alive",
    "stale_after",
];
/// The database, its upkeep and what is derived for it: `run` and `serve` (a `subscribe`
/// leaves them to the tidegate whose API it posts to).
const STORE: &[&str] = &[
    "db",
    "db_password_file",
    "sqlite_sync",
    "retain_raw",
    "retain_readings",
    "retain_rollups",
    "readings",
    "device_from",
    "time_fields",
    "time_zone",
    "readings_max_depth",
    "readings_max_fields",
    "readings_root",
    "mapping",
];
/// What a `subscribe` serves only when given `--listen` (health and metrics).
const HEALTH_API: &[&str] = &["api_tls_cert", "api_tls_key", "api_rate_limit"];
/// Request bodies: a `subscribe` takes none.
const BODIES: &[&str] = &["max_body"];
/// The API a `subscribe` posts to.
const REMOTE_API: &[&str] = &["api", "api_ca_file"];

/// The settings in `given` (flags, environment and file, without defaults) that `mode` does not
/// use, as their flags (`[[mapping]]` for the mapping tables, which have none).
pub fn by(mode: Mode, given: &RunArgs) -> Vec<String> {
    let unused: &[&[&str]] = match mode {
        Mode::Run => &[REMOTE_API],
        Mode::Serve => &[MQTT, REMOTE_API],
        Mode::Subscribe if given.listen.is_some() => &[STORE, BODIES],
        Mode::Subscribe => &[STORE, BODIES, HEALTH_API],
    };
    // The serialized settings hold exactly those given (every field skips `None`).
    let Ok(table) = toml::Table::try_from(given) else {
        return Vec::new();
    };
    let given: Vec<&str> = unused
        .iter()
        .flat_map(|names| names.iter().copied())
        .filter(|name| table.contains_key(*name))
        .collect();
    if given.is_empty() {
        return Vec::new();
    }
    // Only now: the flag names come from the whole command line definition.
    let flags = super::reference::flags();
    given
        .into_iter()
        .map(|name| match flags.iter().find(|(key, _)| key == name) {
            Some((_, flag)) => flag.clone(),
            None => format!("[[{name}]]"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_a_setting() {
        let flags = crate::config::reference::flags();
        for name in [MQTT, STORE, HEALTH_API, BODIES, REMOTE_API].concat() {
            assert!(
                flags.iter().any(|(k, _)| k == name) || name == "mapping",
                "`{name}` is not a setting"
            );
        }
    }

    #[test]
    fn names_what_the_command_does_not_use() {
        let given = RunArgs {
            broker: Some("mqtt://h".into()),
            db: Some("x.db".into()),
            api: Some("http://h:8080".into()),
            listen: Some("127.0.0.1:9".into()),
            api_tls_cert: Some("c.pem".into()),
            readings: Some("off".into()),
            time_fields: Some(vec!["t".into()]),
            batch_size: Some(10),
            ..Default::default()
        };
        assert_eq!(by(Mode::Run, &given), ["--api"]);
        assert_eq!(by(Mode::Serve, &given), ["--broker", "--api"]);
        assert_eq!(
            by(Mode::Subscribe, &given),
            ["--db", "--readings", "--time-field"]
        );
        let no_listen = RunArgs {
            listen: None,
            ..given
        };
        assert_eq!(
            by(Mode::Subscribe, &no_listen),
            ["--db", "--readings", "--time-field", "--api-tls-cert"],
            "without --listen a subscriber serves nothing for a certificate to secure"
        );
        assert!(by(Mode::Subscribe, &RunArgs::default()).is_empty());
    }
}
