//! The durable local spool (`--spool DIR`): a SQLite file in front of the real store. A batch
//! is "committed" once it is appended and fsync'd there, so the broker can be acknowledged while
//! PostgreSQL (or the API `subscribe` forwards to) is down for longer than the broker's queue
//! lasts. A forwarder moves spooled rows to the real store in order and deletes what the store
//! committed. It must never acknowledge past its size limit: when full, writes fail and the
//! writer stops acknowledging, so the broker holds the rest.
//!
//! Exactly-once across a crash between the store's commit and the spool's delete: stores that
//! can (PostgreSQL) record the last spool id in the same transaction; for the remote API, the
//! first batch after a restart is sent marked as a redelivery, which the receiving store
//! recognises by its delivery marks.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{params, Connection};
use tokio::sync::{watch, Notify};

use super::{Committed, MessageQuery, Outcome, SpoolPosition, Store, StoreError, StoredMessage, TopicStats};
use crate::{
    config::current::Current,
    message::{Message, Origin},
    pipeline::writer::Live,
    time,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS spool (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    topic           TEXT NOT NULL,
    payload         BLOB NOT NULL,
    size            INTEGER NOT NULL,
    qos             INTEGER NOT NULL,
    retain          INTEGER NOT NULL,
    received_at     TEXT NOT NULL,
    content_type    TEXT,
    user_properties TEXT,
    session         TEXT,
    pkid            INTEGER,
    redelivery      INTEGER,
    rejection       TEXT
);
"#;

pub const SPOOL_BYTES: &str = "tidegate_spool_bytes";
pub const SPOOL_FORWARDED: &str = "tidegate_spool_forwarded_total";
pub const SPOOL_MESSAGES: &str = "tidegate_spool_messages";
pub const SPOOL_OLDEST_SECONDS: &str = "tidegate_spool_oldest_seconds";

pub struct SpoolStore {
    conn: Arc<Mutex<Connection>>,
    inner: Arc<dyn Store>,
    max_bytes: u64,
    path: PathBuf,
    wake: Arc<Notify>,
}

fn used_bytes(c: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = c.query_row(
        "SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())",
        [],
        |r| r.get(0),
    )?;
    let size: i64 = c.query_row("SELECT page_size FROM pragma_page_size()", [], |r| r.get(0))?;
    Ok((pages.max(0) * size) as u64)
}

impl SpoolStore {
    /// Opens `dir/spool.db` in front of `inner`.
    pub fn open(dir: &Path, max_bytes: u64, inner: Arc<dyn Store>) -> Result<Self, StoreError> {
        let path = dir.join("spool.db");
        let err = |e: String| StoreError::Open {
            target: path.display().to_string(),
            reason: e,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let c = Connection::open(&path).map_err(|e| err(e.to_string()))?;
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(e.to_string()))?;
        // The spool is where acknowledged messages live until forwarded: every append is fsync'd.
        c.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| err(e.to_string()))?;
        c.execute_batch(SCHEMA).map_err(|e| err(e.to_string()))?;
        Ok(SpoolStore {
            conn: Arc::new(Mutex::new(c)),
            inner,
            max_bytes,
            path,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Starts the forwarder; it runs until `stop` fires. It derives readings and mapped rows
    /// with `readings` for a store that writes them.
    pub fn start_forwarder(
        &self,
        name: String,
        live: Live,
        readings: Current<crate::readings::ReadingsConfig>,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let f = Forwarder {
            conn: self.conn.clone(),
            inner: self.inner.clone(),
            wake: self.wake.clone(),
            name,
            live,
            readings: self.inner.uses_derived().then_some(readings),
        };
        tokio::spawn(f.run(stop))
    }
}

fn append(c: &mut Connection, batch: &[Message], max_bytes: u64) -> Result<Vec<Outcome>, String> {
    let used = used_bytes(c).map_err(|e| e.to_string())?;
    metrics::gauge!(SPOOL_BYTES).set(used as f64);
    if used >= max_bytes {
        return Err(format!(
            "the spool is full ({used} of {max_bytes} bytes, --spool-max); not acknowledging until the database takes the backlog"
        ));
    }
    let tx = c.transaction().map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(batch.len());
    {
        let mut ins = tx
            .prepare_cached(
                "INSERT INTO spool (topic, payload, size, qos, retain, received_at, content_type, user_properties, session, pkid, redelivery, rejection)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .map_err(|e| e.to_string())?;
        for m in batch {
            let (session, pkid, dup) = match &m.origin {
                Origin::Mqtt {
                    session,
                    pkid,
                    redelivery,
                } => (Some(&**session), Some(*pkid), Some(*redelivery)),
                Origin::Http => (None, None, None),
            };
            ins.execute(params![
                m.topic,
                &m.payload[..],
                m.size as i64,
                m.qos,
                m.retain,
                time::to_sql_text(m.received_at),
                m.content_type,
                m.user_properties_json(),
                session,
                pkid,
                dup,
                m.rejection,
            ])
            .map_err(|e| e.to_string())?;
            out.push(Outcome::Spooled);
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(out)
}

#[async_trait]
impl Store for SpoolStore {
    async fn write(&self, batch: Arc<Vec<Message>>) -> Result<Committed, StoreError> {
        let conn = self.conn.clone();
        let max = self.max_bytes;
        let out = tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            append(&mut c, &batch, max)
        })
        .await
        .map_err(|_| StoreError::Closed)?
        .map_err(StoreError::Write)?;
        self.wake.notify_one();
        Ok(Committed::new(out))
    }

    async fn messages(&self, q: MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.messages(q).await
    }

    async fn topics(&self) -> Result<Vec<TopicStats>, StoreError> {
        self.inner.topics().await
    }

    async fn readings(&self, q: super::ReadingsQuery) -> Result<Vec<super::Point>, StoreError> {
        self.inner.readings(q).await
    }

    async fn latest(&self, q: super::LatestQuery) -> Result<Vec<super::LatestReading>, StoreError> {
        self.inner.latest(q).await
    }

    async fn retain(&self, policy: &crate::config::RetentionPolicy, chunk: usize) -> Result<u64, StoreError> {
        self.inner.retain(policy, chunk).await
    }

    async fn write_stats(
        &self,
        rows: &std::collections::HashMap<crate::pipeline::stats::StatsKey, crate::pipeline::stats::StatsRow>,
    ) -> Result<(), StoreError> {
        self.inner.write_stats(rows).await
    }

    async fn subscriptions(&self, client_id: &str) -> Result<Option<Vec<String>>, StoreError> {
        self.inner.subscriptions(client_id).await
    }

    async fn record_subscriptions(&self, client_id: &str, filters: &[String]) -> Result<(), StoreError> {
        self.inner.record_subscriptions(client_id, filters).await
    }

    async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        self.inner.schema_version().await
    }

    fn describe(&self) -> String {
        format!(
            "{} (spooled through {})",
            self.inner.describe(),
            self.path.display()
        )
    }
}

struct Forwarder {
    conn: Arc<Mutex<Connection>>,
    inner: Arc<dyn Store>,
    wake: Arc<Notify>,
    name: String,
    live: Live,
    /// Set when the store behind uses readings: the spool keeps raw messages only, so what the
    /// writer derived (for the statistics' event times) is derived again on the way out, with
    /// the config in force then.
    readings: Option<Current<crate::readings::ReadingsConfig>>,
}

const FORWARD_BATCH: i64 = 5000;

/// Derives the readings and mapped rows of messages read back from the spool, from what was
/// stored (receive time included), so they are those the messages would have had without the
/// spool. Off the runtime thread, and outside the spool's lock, which appends need.
async fn derive_all(
    cfg: Arc<crate::readings::ReadingsConfig>,
    mut batch: Vec<Message>,
) -> Option<Vec<Message>> {
    tokio::task::spawn_blocking(move || {
        for m in batch.iter_mut().filter(|m| m.rejection.is_none()) {
            m.derived = crate::readings::derive(&cfg, &m.topic, &m.payload, m.received_at);
        }
        batch
    })
    .await
    .ok()
}

/// Publishes how many messages wait in the spool and how long the oldest has waited (both 0 when
/// it is empty), read from the primary key: ids grow by one an append and go from the front, so
/// their span is the count, without counting rows.
fn record_backlog(c: &Connection) -> rusqlite::Result<()> {
    let (waiting, oldest): (i64, Option<String>) = c
        .prepare_cached(
            "SELECT coalesce((SELECT max(id) FROM spool) - (SELECT min(id) FROM spool) + 1, 0),
                    (SELECT received_at FROM spool ORDER BY id LIMIT 1)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let age = oldest.and_then(|t| time::from_sql_text(&t)).map_or(0.0, |t| {
        (time::now() - t).num_milliseconds().max(0) as f64 / 1000.0
    });
    metrics::gauge!(SPOOL_MESSAGES).set(waiting as f64);
    metrics::gauge!(SPOOL_OLDEST_SECONDS).set(age);
    Ok(())
}

fn read_head(c: &Connection, mark_redelivery: bool) -> rusqlite::Result<(Vec<Message>, i64)> {
    let mut st = c.prepare_cached(
        "SELECT id, topic, payload, size, qos, retain, received_at, content_type, user_properties, session, pkid, redelivery, rejection
         FROM spool ORDER BY id LIMIT ?1",
    )?;
    let mut last = 0;
    let rows = st.query_map([FORWARD_BATCH], |r| {
        let id: i64 = r.get(0)?;
        let session: Option<String> = r.get(9)?;
        let origin = match session {
            Some(session) => Origin::Mqtt {
                session: session.into(),
                pkid: r.get::<_, i64>(10)? as u16,
                redelivery: r.get::<_, bool>(11)? || mark_redelivery,
            },
            None => Origin::Http,
        };
        let payload: Vec<u8> = r.get(2)?;
        let props: Option<String> = r.get(8)?;
        let received: String = r.get(6)?;
        let mut m = Message::new(
            r.get(1)?,
            Bytes::from(payload),
            r.get(4)?,
            r.get(5)?,
            origin,
            usize::MAX,
        );
        m.size = r.get::<_, i64>(3)? as usize;
        m.received_at = time::from_sql_text(&received).unwrap_or_else(time::now);
        m.content_type = r.get(7)?;
        m.user_properties = props
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default();
        m.rejection = r.get(12)?;
        Ok((id, m))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, m) = row?;
        last = id;
        out.push(m);
    }
    Ok((out, last))
}

impl Forwarder {
    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut fault: Option<String> = None;
        let mut backoff = Duration::from_millis(200);
        // Until the store confirmed where it stands, what we send may already be there.
        let mut resuming = true;
        loop {
            if *stop.borrow() {
                return;
            }
            let _ = self.with_conn(|c| record_backlog(c)).await;
            if resuming {
                match self.inner.spool_position(&self.name).await {
                    Ok(Some(pos)) => {
                        let _ = self
                            .with_conn(move |c| c.execute("DELETE FROM spool WHERE id <= ?1", [pos]))
                            .await;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.report(&mut fault, e.to_string());
                        self.pause(&mut stop, &mut backoff).await;
                        continue;
                    }
                }
            }
            let mark = resuming;
            let (batch, last_id) = match self.with_conn(move |c| read_head(c, mark)).await {
                Ok(x) => x,
                Err(e) => {
                    self.report(&mut fault, format!("cannot read the spool: {e}"));
                    self.pause(&mut stop, &mut backoff).await;
                    continue;
                }
            };
            if batch.is_empty() {
                resuming = false;
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let batch = match &self.readings {
                None => batch,
                Some(cfg) => match derive_all(cfg.get(), batch).await {
                    Some(b) => b,
                    // The rows are still spooled: read them again.
                    None => continue,
                },
            };
            let batch = Arc::new(batch);
            let position = SpoolPosition {
                name: self.name.clone(),
                last_id,
            };
            let result = match self.inner.write_from_spool(batch.clone(), position).await {
                Some(r) => r,
                None => self.inner.write(batch.clone()).await,
            };
            match result {
                Ok(committed) => {
                    let _ = self
                        .with_conn(move |c| c.execute("DELETE FROM spool WHERE id <= ?1", [last_id]))
                        .await;
                    metrics::counter!(SPOOL_FORWARDED).increment(batch.len() as u64);
                    if fault.take().is_some() {
                        tracing::info!(store = %self.inner.describe(), "forwarding the spool again");
                    }
                    backoff = Duration::from_millis(200);
                    resuming = false;
                    if self.live.receiver_count() > 0 {
                        for (m, o) in batch.iter().zip(committed.outcomes()) {
                            if let Outcome::Stored { id } = o {
                                let _ = self.live.send(Arc::new(StoredMessage::from_message(*id, m)));
                            }
                        }
                    }
                }
                Err(e) => {
                    // A failed attempt may still have committed: the next one is a possible redelivery.
                    resuming = true;
                    self.report(&mut fault, e.to_string());
                    self.pause(&mut stop, &mut backoff).await;
                }
            }
        }
    }

    fn report(&self, fault: &mut Option<String>, reason: String) {
        if fault.as_deref() != Some(reason.as_str()) {
            tracing::warn!(store = %self.inner.describe(), error = %reason, "cannot forward the spool yet; messages stay spooled (retrying)");
            *fault = Some(reason);
        }
    }

    /// Waits `backoff` (or until `stop`), refreshing the backlog figures every second meanwhile:
    /// an outage is when they matter.
    async fn pause(&self, stop: &mut watch::Receiver<bool>, backoff: &mut Duration) {
        let until = tokio::time::Instant::now() + *backoff;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || *stop.borrow() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
                changed = stop.changed() => if changed.is_err() { break },
            }
            let _ = self.with_conn(|c| record_backlog(c)).await;
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(10));
    }
}
