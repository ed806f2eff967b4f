//! The store: one trait, one implementation per database, chosen once from the `--db` URL.
//! A store commits a batch in one transaction and reports, per message, what became of it. It
//! must never acknowledge anything itself: `Committed` is handed back to the pipeline, which acks.

pub mod backfill;
pub mod dedup;
pub mod delivery_marks;
pub mod latest;
pub mod mapped;
pub mod postgres;
pub mod query;
pub mod remote;
pub mod retention;
pub mod rollup;
pub mod spool;
pub mod sqlite;

pub use query::{
    LatestQuery, LatestReading, MessageQuery, Order, Point, ReadingsQuery, Resolution, StoredMessage,
    TopicStats,
};

use std::sync::Arc;

use async_trait::async_trait;

use crate::{config::StoreSettings, message::Message};

/// What became of one message of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored as row `id` of `messages`.
    Stored { id: i64 },
    /// Recognised as a redelivery of a message already stored; nothing written.
    Duplicate,
    /// Recorded in `rejected` with the message's rejection reason.
    Rejected,
    /// Appended to the local spool (fsync'd); forwarded to the database later.
    Spooled,
}

/// Proof that a batch is committed. Only a store can make one (the field is private to this
/// crate), so the pipeline cannot acknowledge a batch that was not committed.
#[derive(Debug)]
pub struct Committed {
    outcomes: Vec<Outcome>,
}

impl Committed {
    pub(crate) fn new(outcomes: Vec<Outcome>) -> Self {
        Self { outcomes }
    }

    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database {target}: {reason}")]
    Open { target: String, reason: String },
    #[error("the database {target} was written by a newer tidegate (schema version {found}, this one knows up to {known}); upgrade tidegate or use another file")]
    TooNew { target: String, found: i64, known: i64 },
    #[error("write failed: {0}")]
    Write(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("the store has stopped")]
    Closed,
}

/// A database tidegate writes to.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes every message of `batch` in one transaction, or nothing.
    async fn write(&self, batch: Arc<Vec<Message>>) -> Result<Committed, StoreError>;

    /// How many batches the pipeline may hand over before the first one is committed. A store
    /// that takes more than one must commit them in the order `write` was called, and after a
    /// failed write hold back every later one until that same batch (the same `Arc`) is written
    /// again: nothing may overtake a batch, or ids, delivery marks and retained marks would no
    /// longer follow arrival.
    fn queue_depth(&self) -> usize {
        1
    }

    /// Whether the store commits the batches queued for it together, as one transaction, when
    /// its running commit ends (group commit). The pipeline then lets a small batch grow behind
    /// a running commit instead of handing it over at once: it would join the same commit
    /// anyway. A store that commits each batch on its own gets the next one at once, so that it
    /// overlaps with the running commit.
    fn groups_queued(&self) -> bool {
        false
    }

    /// Whether this store uses `Message::derived`: the readings and mapped rows it writes, or
    /// the event time the pipeline statistics it keeps are measured from. The writer derives
    /// them only for a store that does; the remote API leaves that to the receiving tidegate.
    fn uses_derived(&self) -> bool {
        true
    }

    /// Messages matching `q`, in the order asked.
    async fn messages(&self, q: MessageQuery) -> Result<Vec<StoredMessage>, StoreError>;

    /// Every topic with its counts.
    async fn topics(&self) -> Result<Vec<TopicStats>, StoreError>;

    /// Numeric readings or rollup buckets matching `q`, oldest first.
    async fn readings(&self, _q: ReadingsQuery) -> Result<Vec<Point>, StoreError> {
        Err(StoreError::Query("this store has no readings".into()))
    }

    /// The newest reading of each series matching `q` (`readings_latest`), ordered by topic,
    /// device and field.
    async fn latest(&self, _q: LatestQuery) -> Result<Vec<LatestReading>, StoreError> {
        Err(StoreError::Query("this store has no readings".into()))
    }

    /// Deletes one chunk (at most `chunk` rows per table) of data older than `policy` allows;
    /// returns how many rows went. Called repeatedly in the background.
    async fn retain(
        &self,
        _policy: &crate::config::RetentionPolicy,
        _chunk: usize,
    ) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Adds per-minute pipeline statistics to `tidegate_stats` (counts add up; max is kept).
    async fn write_stats(
        &self,
        _rows: &std::collections::HashMap<crate::pipeline::stats::StatsKey, crate::pipeline::stats::StatsRow>,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes `batch` and records `position` as the last spool row it covers, in the same
    /// transaction, so a spool forwarder that crashed after the commit knows where to resume.
    /// Stores that cannot (the remote API) answer `None`.
    async fn write_from_spool(
        &self,
        _batch: Arc<Vec<Message>>,
        _position: SpoolPosition,
    ) -> Option<Result<Committed, StoreError>> {
        None
    }

    /// The last spool row committed for spool `name`, for stores that record it.
    async fn spool_position(&self, _name: &str) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    /// The topic filters `client_id` last subscribed to, as `record_subscriptions` left them;
    /// `None` when none were recorded (a new client id, or a store that keeps no record).
    async fn subscriptions(&self, _client_id: &str) -> Result<Option<Vec<String>>, StoreError> {
        Ok(None)
    }

    /// Records the topic filters `client_id` subscribes to, replacing the last record, so that
    /// a later run can unsubscribe those it no longer asks for from a session the broker kept.
    async fn record_subscriptions(&self, _client_id: &str, _filters: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// A number that changes whenever a table, view or column is added or dropped, so that a
    /// reader such as Metabase can be told to read the schema again (`crate::metabase`). `None`
    /// for a store that keeps no tables of its own.
    async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        Ok(None)
    }

    /// Which stored messages, from the first to the newest stored now, already have readings
    /// (or a note on why they have none) and a row in each of the mapping `tables`, read in one
    /// snapshot. For `tidegate backfill`.
    async fn coverage(
        &self,
        _tables: &[crate::readings::mapping::Ident],
    ) -> Result<backfill::Coverage, StoreError> {
        Err(StoreError::Query(
            "this store keeps no messages to derive from".into(),
        ))
    }

    /// Up to `limit` stored messages with ids in `after + 1..=last`, in id order, each with its
    /// id, to derive again (`backfill::stored_message`).
    async fn stored(
        &self,
        _after: i64,
        _last: i64,
        _limit: usize,
    ) -> Result<Vec<(i64, Message)>, StoreError> {
        Err(StoreError::Query(
            "this store keeps no messages to derive from".into(),
        ))
    }

    /// Which of `minutes` count more numbers in `readings_1m` than `readings` holds for them,
    /// each compared in one snapshot: their readings were stored once and removed since (by
    /// retention), so a backfill must not fold them into the rollups again. In `minutes`' order.
    async fn counted_but_gone(&self, _minutes: Vec<backfill::Minute>) -> Result<Vec<bool>, StoreError> {
        Err(StoreError::Query("this store keeps no readings".into()))
    }

    /// Writes what was derived from stored messages (`Message::derived` of each, with its id):
    /// readings, notes, mapping rows, latest values and rollups, in one transaction, durable when
    /// it returns. Never a message, a topic count or a mark.
    async fn write_derived(&self, _rows: Arc<Vec<(i64, Message)>>) -> Result<(), StoreError> {
        Err(StoreError::Write("this store keeps no readings".into()))
    }

    /// A short description for logs, without secrets.
    fn describe(&self) -> String;
}

/// A spool's name and the id of the last spool row a batch covers.
#[derive(Debug, Clone)]
pub struct SpoolPosition {
    pub name: String,
    pub last_id: i64,
}

/// Opens the store the settings name, running migrations first.
pub async fn open(settings: &StoreSettings) -> Result<Arc<dyn Store>, StoreError> {
    match &settings.db {
        crate::config::DbUrl::Sqlite(path) => {
            let store = sqlite::SqliteStore::open(path, settings.sqlite_sync, settings.batch_size)?;
            Ok(Arc::new(store))
        }
        crate::config::DbUrl::Postgres(target) => Ok(Arc::new(postgres::PgStore::open(target).await?)),
    }
}
