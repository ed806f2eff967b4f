//! Reloading the configuration while running (`SIGHUP`, `POST /api/v1/reload`). The TOML file is
//! read and validated again, whole, as at start. If it is valid, what can change without a
//! restart takes effect: the topic filters and their QoS (on the same MQTT session), readings,
//! device and time rules and mappings (from the next message taken into a batch), retention (from
//! its next round), the API's certificate files as they are now (from the next connection), the
//! API tokens accepted and the token `subscribe` sends (from the next request). Every other
//! changed setting is named as needing a restart. An invalid file
//! changes nothing. A change that derives what stored messages lack (readings turned on, a new
//! mapping table) suggests `tidegate backfill`. It must never drop the MQTT session or a
//! message, nor apply half a file.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{watch, Mutex};
use utoipa::ToSchema;

use crate::{
    config::{current::Replace, ConfigError, RetentionPolicy, Settings},
    readings::ReadingsConfig,
    secret::Secret,
    source::Resubscriber,
};

/// What a reload did.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Report {
    /// What took effect, for people (e.g. `subscribed to b/#`).
    pub applied: Vec<String>,
    /// Settings that changed in the file but take effect only after a restart; until then the
    /// running values stay.
    pub restart_needed: Vec<String>,
    /// Settings the file sets but a flag or an environment variable overrides (they win): change
    /// them there, or drop the flag or variable so the file decides.
    pub overridden: Vec<String>,
    /// What to run next for what changed, such as a backfill for a new mapping (absent when
    /// nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub suggested: Vec<String>,
}

/// Where a reload hands each replaceable setting to the parts that use it.
pub struct Handles {
    pub readings: Replace<ReadingsConfig>,
    pub retention: Replace<RetentionPolicy>,
    pub source: Option<Resubscriber>,
    /// The tokens the API accepts.
    pub api_tokens: Replace<Vec<Secret>>,
    /// The token `subscribe` sends to the API it forwards to.
    pub remote_token: Replace<Option<Secret>>,
}

pub struct Reloader {
    /// The settings in force; the lock also keeps two reloads from interleaving.
    settings: Mutex<Settings>,
    handles: Handles,
}

impl Reloader {
    pub fn new(settings: Settings, handles: Handles) -> Self {
        Reloader {
            settings: Mutex::new(settings),
            handles,
        }
    }

    /// Reads the config file again and applies what can change while running.
    pub async fn reload(&self) -> Result<Report, ConfigError> {
        let mut now = self.settings.lock().await;
        let new = match now.reread() {
            Ok(new) => new,
            Err(e) => {
                metrics::counter!(crate::telemetry::CONFIG_RELOADS, "result" => "refused").increment(1);
                tracing::error!(error = %e, "config reload refused: nothing changed; fix the file and reload again");
                return Err(e);
            }
        };
        let mut report = Report {
            restart_needed: now.needs_restart(&new).into_iter().map(String::from).collect(),
            overridden: new.overridden_in_file(),
            ..Report::default()
        };
        let h = &self.handles;
        if let (Some(source), Some(m)) = (&h.source, &new.mqtt) {
            let change = source.change(m.topics.clone(), m.qos);
            report.applied.extend(
                change
                    .unsubscribed
                    .iter()
                    .map(|t| format!("unsubscribed from {t}")),
            );
            report.applied.extend(
                change
                    .subscribed
                    .iter()
                    .map(|t| format!("subscribed to {t} at QoS {}", m.qos)),
            );
        }
        if new.readings != now.readings {
            report.suggested.extend(backfill_suggestion(&now, &new));
            h.readings.send_replace(Arc::new(new.readings.clone()));
            report.applied.push(format!(
                "readings {}, {} mapping(s), device and time rules",
                if new.readings.enabled { "on" } else { "off" },
                new.readings.mappings.len()
            ));
        }
        // Same files (other files need a restart): what they hold now, say a renewed
        // certificate, is served from the next connection on.
        if let (Some(running), Some(fresh)) = (
            now.api.as_ref().and_then(|a| a.tls.as_ref()),
            new.api.as_ref().and_then(|a| a.tls.as_ref()),
        ) {
            if running == fresh && running.adopt(fresh) {
                report.applied.push(format!(
                    "API certificate read again from {}",
                    running.cert.display()
                ));
            }
        }
        if new.retention != now.retention {
            h.retention.send_replace(Arc::new(new.retention.clone()));
            report.applied.push("retention".into());
        }
        // Never the tokens themselves in the report or the log: how many, and for which API.
        if let (Some(running), Some(fresh)) = (&mut now.api, &new.api) {
            // A file that drops the token and moves the API to loopback is valid, but the move
            // waits for a restart: until then the API stays guarded on the address it has.
            if fresh.tokens.is_empty() && !running.listen.ip().is_loopback() {
                report.restart_needed.push("api-token".into());
            } else if running.tokens != fresh.tokens {
                h.api_tokens.send_replace(Arc::new(fresh.tokens.clone()));
                running.tokens = fresh.tokens.clone();
                report.applied.push(match fresh.tokens.len() {
                    0 => "the API asks for no token now".into(),
                    n => format!("API tokens read again: {n} accepted"),
                });
            }
        }
        if let (Some(running), Some(fresh)) = (&mut now.remote, &new.remote) {
            if running.token != fresh.token {
                h.remote_token.send_replace(Arc::new(fresh.token.clone()));
                running.token = fresh.token.clone();
                report
                    .applied
                    .push(format!("a new token for the API at {}", fresh.url));
            }
        }
        // What needs a restart keeps its running value; the rest is now in force.
        now.readings = new.readings;
        now.retention = new.retention;
        if let (Some(m), Some(n)) = (&mut now.mqtt, new.mqtt) {
            m.topics = n.topics;
            m.qos = n.qos;
        }
        metrics::counter!(crate::telemetry::CONFIG_RELOADS, "result" => "applied").increment(1);
        tracing::info!(
            applied = ?report.applied,
            restart_needed = ?report.restart_needed,
            "config reloaded"
        );
        if !report.overridden.is_empty() {
            tracing::warn!(
                settings = ?report.overridden,
                "the config file sets these, but a flag or an environment variable overrides them"
            );
        }
        if !report.restart_needed.is_empty() {
            tracing::warn!(
                settings = ?report.restart_needed,
                "these settings changed in the file but apply only after a restart"
            );
        }
        for s in &report.suggested {
            tracing::info!("{s}");
        }
        Ok(report)
    }
}

/// When a reload starts deriving something the stored messages lack (readings turned on, a new
/// mapping table), the command that derives it for them: a mapping otherwise fills its table
/// from the next message on, and nothing says so. Only where this process has a store.
fn backfill_suggestion(now: &Settings, new: &Settings) -> Option<String> {
    now.store.as_ref()?;
    let mut gained = Vec::new();
    if new.readings.enabled && !now.readings.enabled {
        gained.push("readings".to_string());
    }
    let before: Vec<&str> = now.readings.mappings.iter().map(|m| m.table.as_str()).collect();
    let mut tables: Vec<&str> = (new.readings.mappings.iter().map(|m| m.table.as_str()))
        .filter(|t| !before.contains(t))
        .collect();
    tables.sort_unstable();
    tables.dedup();
    gained.extend(tables.iter().map(|t| format!("rows in mapping table {t}")));
    if gained.is_empty() {
        return None;
    }
    let file = now
        .config_file()
        .map(|f| format!(" --config {}", f.display()))
        .unwrap_or_default();
    Some(format!(
        "messages stored before this reload have no {}: `tidegate backfill{file}` derives them, beside this process (docs/metabase.md)",
        gained.join(" and no ")
    ))
}

/// SIGHUP, listened for from the moment it is called. Call it first: until then SIGHUP's default
/// action ends the process, and opening the store (a migration, a database that is slow to
/// answer) can take minutes, during which `systemctl reload` or a log rotation would stop
/// tidegate halfway. A SIGHUP that arrives before the reloader runs is kept and applied then.
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    pub fn listen() -> Hangup {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let signal = signal(SignalKind::hangup())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /api/v1/reload"))
                .ok();
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }
}

/// Reloads on every SIGHUP until `stop` fires (`systemctl reload` sends it).
pub async fn on_hangup(hangup: Hangup, reloader: Arc<Reloader>, mut stop: watch::Receiver<bool>) {
    #[cfg(unix)]
    {
        let Some(mut hup) = hangup.signal else {
            return;
        };
        while !*stop.borrow() {
            tokio::select! {
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reading the config file again");
                    let _ = reloader.reload().await;
                }
                changed = stop.changed() => if changed.is_err() { return },
            }
        }
    }
    #[cfg(not(unix))]
    {
        drop((hangup, reloader));
        let _ = stop.wait_for(|s| *s).await;
    }
}
