//! The SQLite store: one writer thread owns the only write connection (WAL, short
//! transactions, each batch on disk before it is answered by default), so readers such as
//! Metabase are never locked out. It must never hold a write transaction open across anything
//! but the batch itself.

mod backfill;
mod checkpoint;
mod durable;
mod mapped;
pub mod medium;
mod read;
mod retain;
mod rollups;
mod rows;
mod schema;
mod series;
mod stats;
mod subscriptions;
mod write;
mod writer_thread;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{Committed, MessageQuery, Store, StoreError, StoredMessage, TopicStats};
use crate::{config::SqliteSync, message::Message};

pub use schema::VERSION as SCHEMA_VERSION;
use writer_thread::{writer_thread, Command, StatsRows, QUEUE_DEPTH};

pub struct SqliteStore {
    path: PathBuf,
    readers: Arc<read::Readers>,
    tx: mpsc::Sender<Command>,
}

/// Opens a connection with the settings every tidegate connection shares.
pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// Why SQLite could not open `path`, said so that the operator knows what to change: SQLite's
/// own "unable to open database file" does not say that the directory is missing or that the
/// path is a directory.
fn cannot_open(path: &Path, e: &rusqlite::Error) -> String {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return format!(
            "the directory {} does not exist; create it (mkdir -p {}) or give --db a file in an existing directory",
            dir.display(),
            dir.display()
        );
    }
    if path.is_dir() {
        return format!(
            "it is a directory; give --db a file name in it, such as {}",
            path.join("tidegate.db").display()
        );
    }
    e.to_string()
}

impl SqliteStore {
    /// Opens (or creates) the file, migrates it and starts the writer thread, which commits at
    /// most `group_max` messages at a time (unless one batch holds more).
    pub fn open(path: &Path, sync: SqliteSync, group_max: usize) -> Result<Self, StoreError> {
        let target = path.display().to_string();
        let open_err = |reason: String| StoreError::Open {
            target: target.clone(),
            reason,
        };
        let mut conn = connect(path).map_err(|e| open_err(cannot_open(path, &e)))?;
        // Room for every statement a write transaction runs (about thirty with both rollup
        // widths): with rusqlite's default of 16, a batch pushed its own first statements out
        // and SQLite compiled them again in the next.
        conn.set_prepared_statement_cache_capacity(64);
        // WAL lets readers (Metabase) read while tidegate writes; it is persistent in the file.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| open_err(format!("cannot switch to WAL: {e}")))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!(
                "the file stays in `{mode}` journal mode (is it on a network filesystem?); WAL is required"
            )));
        }
        let sync_level = match sync {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync_level)
            .map_err(|e| open_err(e.to_string()))?;
        // An 8 MiB page cache: 16 MiB took 9–11 MiB more peak memory and measured no faster,
        // with 3 series or with 3,000 and 12,000 (docs/performance-history.md, session 29).
        conn.pragma_update(None, "cache_size", -8_192)
            .map_err(|e| open_err(e.to_string()))?;
        // A long reader (a Metabase dashboard) keeps the WAL from restarting, so it grows past
        // the 4 MiB autocheckpoint; once it does restart, trim it back instead of keeping the peak.
        conn.pragma_update(None, "journal_size_limit", 32 << 20)
            .map_err(|e| open_err(e.to_string()))?;
        schema::migrate(&mut conn).map_err(|e| match e {
            schema::MigrateError::TooNew(found) => StoreError::TooNew {
                target: target.clone(),
                found,
                known: schema::VERSION,
            },
            schema::MigrateError::Sql(e) => open_err(format!("migration failed: {e}")),
        })?;
        let syncer = match sync {
            SqliteSync::Full => durable_beside(&conn).map_err(|e| open_err(e.to_string()))?,
            SqliteSync::Normal => None,
        };
        let checkpointer = checkpoint::Checkpointer::start(path, &mut conn)
            .map_err(|e| open_err(format!("cannot start the checkpointer: {e}")))?;
        // As deep as the pipeline queues (`queue_depth`), so that every batch it hands over is
        // here for the next group commit; the pipeline bounds the messages they hold.
        let (tx, rx) = mpsc::channel::<Command>(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_thread(conn, rx, checkpointer, syncer, group_max))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            readers: Arc::new(read::Readers::new(path)),
            tx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// FULL made durable beside the writer (`durable`): the commits themselves then sync nothing,
/// and the writer goes on with the next batch while the disk catches up. When the WAL cannot be
/// opened for that, SQLite keeps syncing inside each commit: as durable, only slower.
fn durable_beside(conn: &Connection) -> rusqlite::Result<Option<durable::Syncer>> {
    let Some(db) = conn.path().filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    match durable::Syncer::start(db) {
        Ok(syncer) => {
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            Ok(Some(syncer))
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "cannot open the write-ahead log to sync it beside the writer; SQLite syncs in each commit instead (slower)"
            );
            Ok(None)
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, batch: Arc<Vec<Message>>) -> Result<Committed, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Write(batch, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        let outcomes = rx.await.map_err(|_| StoreError::Closed)??;
        Ok(Committed::new(outcomes))
    }

    async fn messages(&self, q: MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(|c| read::messages(c, &q)))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    async fn readings(&self, q: crate::store::ReadingsQuery) -> Result<Vec<crate::store::Point>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(|c| read::readings(c, &q)))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    async fn latest(
        &self,
        q: crate::store::LatestQuery,
    ) -> Result<Vec<crate::store::LatestReading>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(|c| read::latest(c, &q)))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    async fn coverage(
        &self,
        tables: &[crate::readings::mapping::Ident],
    ) -> Result<crate::store::backfill::Coverage, StoreError> {
        let (readers, tables) = (self.readers.clone(), tables.to_vec());
        tokio::task::spawn_blocking(move || readers.with(|c| backfill::coverage(c, &tables)))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    async fn stored(&self, after: i64, last: i64, limit: usize) -> Result<Vec<(i64, Message)>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(|c| backfill::stored(c, after, last, limit)))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    async fn counted_but_gone(
        &self,
        minutes: Vec<crate::store::backfill::Minute>,
    ) -> Result<Vec<bool>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(|c| backfill::counted_but_gone(c, &minutes)))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    async fn write_derived(&self, rows: Arc<Vec<(i64, Message)>>) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Backfill(rows, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?.map(drop)
    }

    async fn retain(&self, policy: &crate::config::RetentionPolicy, chunk: usize) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Retain(policy.clone(), chunk, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn write_stats(&self, rows: &StatsRows) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(rows.clone(), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn subscriptions(&self, client_id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let (readers, client_id) = (self.readers.clone(), client_id.to_string());
        let json = tokio::task::spawn_blocking({
            let client_id = client_id.clone();
            move || readers.with(|c| subscriptions::read(c, &client_id))
        })
        .await
        .map_err(|_| StoreError::Closed)??;
        json.map(|j| subscriptions::parse(&client_id, &j).map_err(StoreError::Query))
            .transpose()
    }

    async fn record_subscriptions(&self, client_id: &str, filters: &[String]) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Subscriptions(client_id.into(), filters.to_vec(), reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn topics(&self) -> Result<Vec<TopicStats>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || readers.with(read::topics))
            .await
            .map_err(|_| StoreError::Closed)?
    }

    /// SQLite's own counter, which every change to the schema increments.
    async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            readers.with(|c| c.query_row("PRAGMA schema_version", [], |r| r.get(0)).map(Some))
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }

    /// The writer thread takes the next batches the moment a commit ends, instead of waiting for
    /// the pipeline to answer the last one and send another (9–21 % more API ingest than one at a
    /// time, docs/performance-history.md, session 11), and commits all of them together.
    fn queue_depth(&self) -> usize {
        QUEUE_DEPTH
    }

    /// `write_held` commits what is queued together.
    fn groups_queued(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}
