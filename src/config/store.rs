//! Where rows go: the database URL (chosen once: a SQLite path or a PostgreSQL URL), SQLite's
//! sync level, the spool in front of a database or the remote API, and how long rows are kept.
//! It must never open the database: it only reads the password file.

use std::{path::PathBuf, time::Duration};

use chrono::{DateTime, Utc};

use super::{batch_size, env, postgres, read_secret_file, ConfigError, PgTarget, RunArgs};
use crate::secret::Secret;

/// `--sqlite-sync`: `full` (the default) loses nothing acknowledged on power loss; `normal`
/// survives a crash of tidegate but may lose the last commits on power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    Full,
    Normal,
}

/// Where rows go, chosen once from the `--db` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    Sqlite(PathBuf),
    Postgres(Box<PgTarget>),
}

impl DbUrl {
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        Self::parse_with_password(input, None)
    }

    /// As `parse`; `password` is used for PostgreSQL when the URL has none.
    pub fn parse_with_password(input: &str, password: Option<Secret>) -> Result<Self, ConfigError> {
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
            return Ok(DbUrl::Postgres(Box::new(postgres::parse(input, password)?)));
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
            DbUrl::Postgres(t) => f.write_str(&t.display),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub db: DbUrl,
    pub sqlite_sync: SqliteSync,
    /// `--batch-size`: the most messages one transaction holds. The pipeline cuts batches at it,
    /// and SQLite commits the batches queued for it together up to it.
    pub batch_size: usize,
}

/// The local spool in front of PostgreSQL or the remote API.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// How long each kind of data is kept; `None` keeps it forever.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub raw: Option<Duration>,
    pub readings: Option<Duration>,
    pub rollups: Option<Duration>,
    /// The mapping tables given a `retain`, with it.
    pub mapped: Vec<(crate::readings::mapping::Ident, Duration)>,
}

impl RetentionPolicy {
    pub fn is_off(&self) -> bool {
        self.raw.is_none() && self.readings.is_none() && self.rollups.is_none() && self.mapped.is_empty()
    }

    /// The time before which rows kept for `keep` have expired at `now`. `None` when nothing
    /// expires: no period, or one reaching back past what a time can hold (a typo such as
    /// `9999999999999d`), which keeps everything rather than deleting everything.
    pub fn cutoff(now: DateTime<Utc>, keep: Option<Duration>) -> Option<DateTime<Utc>> {
        now.checked_sub_signed(chrono::TimeDelta::from_std(keep?).ok()?)
    }
}

pub(super) fn resolve_store(a: &RunArgs) -> Result<StoreSettings, ConfigError> {
    let password = match &a.db_password_file {
        Some(path) => Some(read_secret_file("db-password-file", path)?),
        None => env("TIDEGATE_DB_PASSWORD").map(Secret::new),
    };
    let db = DbUrl::parse_with_password(a.db.as_deref().unwrap_or("tidegate.db"), password)?;
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
    Ok(StoreSettings {
        db,
        sqlite_sync,
        batch_size: batch_size(a)?,
    })
}

/// The spool directory and its size limit; a SQLite store needs none.
pub(super) fn resolve_spool(
    a: &RunArgs,
    store: Option<&StoreSettings>,
) -> Result<Option<SpoolSettings>, ConfigError> {
    let Some(dir) = &a.spool else {
        return Ok(None);
    };
    if let Some(StoreSettings {
        db: DbUrl::Sqlite(_), ..
    }) = store
    {
        return Err(ConfigError::new(
            "spool",
            "a SQLite file is already local and durable; --spool is for PostgreSQL or `subscribe`",
        ));
    }
    let max_bytes = a.spool_max.map(|s| s.0 as u64).unwrap_or(1 << 30);
    if max_bytes < 1 << 20 {
        return Err(ConfigError::new("spool-max", "must be at least 1MiB"));
    }
    Ok(Some(SpoolSettings {
        dir: dir.clone(),
        max_bytes,
    }))
}

pub(super) fn resolve_retention(a: &RunArgs) -> Result<RetentionPolicy, ConfigError> {
    let retention = RetentionPolicy {
        raw: a.retain_raw.map(|s| s.0),
        readings: a.retain_readings.map(|s| s.0),
        rollups: a.retain_rollups.map(|s| s.0),
        mapped: Vec::new(),
    };
    for (name, d) in [
        ("retain-raw", retention.raw),
        ("retain-readings", retention.readings),
        ("retain-rollups", retention.rollups),
    ] {
        if d.is_some_and(|d| d < Duration::from_secs(60)) {
            return Err(ConfigError::new(name, "must be at least 1m"));
        }
    }
    Ok(retention)
}

/// What identifies the database in the default client id: the SQLite file's full path, or the
/// PostgreSQL URL without its password.
pub(super) fn db_key(db: &DbUrl) -> String {
    match db {
        DbUrl::Sqlite(path) => std::fs::canonicalize(path)
            .or_else(|_| std::env::current_dir().map(|d| d.join(path)))
            .unwrap_or_else(|_| path.clone())
            .to_string_lossy()
            .into_owned(),
        DbUrl::Postgres(t) => t.display.clone(),
    }
}
