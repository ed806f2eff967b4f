//! The PostgreSQL store: a small connection pool, batches written with a fixed set of `UNNEST`
//! statements in one transaction, and the same dedup rule as SQLite. `COMMIT` returning means
//! the WAL is flushed (`synchronous_commit` stays on for tidegate's sessions), so acking after it
//! is safe. A batch the database refuses for its data is split, and a single refused message is
//! recorded in `rejected`, so one bad message can never stall the stream.

mod backfill;
mod commit_token;
mod copy;
mod error;
mod latest;
mod mapped;
mod marks;
mod read;
mod retain;
mod rollups;
mod schema;
mod series;
mod stats;
mod turn;
mod write;

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer};

use super::{Committed, MessageQuery, Outcome, SpoolPosition, Store, StoreError, StoredMessage, TopicStats};
use crate::{
    config::{PgTarget, PgTls},
    message::Message,
};

use error::{describe_pg, is_data_error, pool_error, WriteError};
pub use schema::VERSION as SCHEMA_VERSION;

/// PostgreSQL text cannot hold NUL; such text is kept with U+FFFD (the exact bytes go to
/// `payload_raw`).
fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// Whether mapping table `table` exists (it is made with its first row).
async fn table_exists(
    client: &impl tokio_postgres::GenericClient,
    table: &crate::readings::mapping::Ident,
) -> Result<bool, tokio_postgres::Error> {
    let found: Option<String> = client
        .query_one("SELECT to_regclass($1)::text", &[&table.quoted()])
        .await?
        .get(0);
    Ok(found.is_some())
}

/// How long one batch may take before the connection is presumed dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many recent batches keep their token for a retry. The pipeline retries one batch until
/// it commits; a spool forwarding beside it makes two.
const RECENT_BATCHES: usize = 8;

/// A batch handed to the store lately.
struct Recent {
    batch: Weak<Vec<Message>>,
    token: i64,
    /// Only pipeline batches take turns; a spool forwarder's follow one another by themselves.
    turn: Option<Arc<turn::Turn>>,
}

/// How long this process keeps the token of a batch it has finished with
/// (`PgStore::prune_commit_tokens`).
const OWN_TOKENS_KEPT: Duration = Duration::from_secs(30 * 60);
/// How long deleting old tokens may hold up the batch written before it.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed write waits to learn the database's schema version before it reports.
const SCHEMA_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgStore {
    pool: Pool,
    display: String,
    /// `messages.id`'s sequence, qualified.
    id_seq: String,
    /// The latest batches, their tokens (`commit_token::claim`) and, for the pipeline's, their turns
    /// (`turn`). A retry hands over the same allocation, which the weak reference keeps from
    /// being reused by another batch.
    recent: Mutex<VecDeque<Recent>>,
    /// The high half of every token this store hands out (random, per process), so it can
    /// tell its own tokens from other instances'; the low half counts its batches.
    token_prefix: u32,
    next_token: AtomicU32,
    /// When old tokens were last deleted.
    pruned: Mutex<Instant>,
    /// The ids of the series whose rows are committed.
    series: series::Known,
}

fn tls_config(target: &PgTarget) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &target.ca_file {
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    pub async fn open(target: &PgTarget) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            target: target.display.clone(),
            reason,
        };
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match target.tls {
            PgTls::Disable => Manager::from_config(target.config.clone(), tokio_postgres::NoTls, mgr_config),
            _ => {
                let tls =
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(target).map_err(open_err)?);
                Manager::from_config(target.config.clone(), tls, mgr_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(4)
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| open_err(pool_error(&e)))?;
        schema::migrate(&mut client).await.map_err(|e| match e {
            schema::MigrateError::TooNew(found) => StoreError::TooNew {
                target: target.display.clone(),
                found: i64::from(found),
                known: i64::from(schema::VERSION),
            },
            schema::MigrateError::Sql(e) => open_err(format!("migration failed: {}", describe_pg(&e))),
            e @ schema::MigrateError::NameTaken { .. } => open_err(e.to_string()),
        })?;
        let id_seq = write::id_sequence(&client)
            .await
            .map_err(|e| open_err(describe_pg(&e)))?;
        Ok(PgStore {
            pool,
            display: target.display.clone(),
            id_seq,
            recent: Mutex::new(VecDeque::new()),
            token_prefix: rand::random(),
            next_token: AtomicU32::new(rand::random()),
            pruned: Mutex::new(Instant::now() - Duration::from_secs(3600)),
            series: series::Known::default(),
        })
    }

    /// The batch's token and turn: those it was given on an earlier attempt, else new ones (a
    /// turn only for a pipeline batch, after the pipeline batch handed over before it).
    fn place(&self, batch: &Arc<Vec<Message>>, pipeline: bool) -> (i64, Option<Arc<turn::Turn>>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = recent
            .iter()
            .find(|r| std::ptr::eq(r.batch.as_ptr(), Arc::as_ptr(batch)))
        {
            return (r.token, r.turn.clone());
        }
        // A counter, not random bits: two live batches of this process never share a token
        // (it wraps after 2^32 batches, long after the first ones' tokens were deleted).
        let low = self.next_token.fetch_add(1, Ordering::Relaxed);
        let token = self.own_tokens().0 | i64::from(low);
        let turn = pipeline.then(|| {
            let before = recent
                .iter()
                .rev()
                .find_map(|r| r.turn.as_ref().filter(|_| r.batch.strong_count() > 0));
            Arc::new(turn::Turn::after(before.map(|t| &**t)))
        });
        recent.push_back(Recent {
            batch: Arc::downgrade(batch),
            token,
            turn: turn.clone(),
        });
        if recent.len() > RECENT_BATCHES {
            recent.pop_front();
        }
        (token, turn)
    }

    /// The range of this process's tokens: its prefix, then any low half.
    fn own_tokens(&self) -> (i64, i64) {
        let first = (u64::from(self.token_prefix) << 32) as i64;
        (first, first | 0xFFFF_FFFF)
    }

    /// Whether it is time to delete old tokens (about once a minute).
    fn prune_due(&self) -> bool {
        let mut pruned = self.pruned.lock().unwrap_or_else(|p| p.into_inner());
        if pruned.elapsed() < Duration::from_secs(60) {
            return false;
        }
        *pruned = Instant::now();
        true
    }

    /// Deletes the commit tokens no retry can need any more, and answers how many.
    ///
    /// Why it keeps what it keeps: a retry of a batch still held by the pipeline needs its
    /// token however long the database stays away, so this process's pending tokens stay. A
    /// finished batch's token stays `OWN_TOKENS_KEPT`, for an earlier attempt still on its way
    /// to the server (TCP gives up on a lost connection after about a quarter of an hour).
    /// Other instances' tokens are theirs to delete; after a day they are a stopped instance's.
    /// Without this, a token a commit would pile up: 100 commits a second is 8.6M rows a day.
    pub async fn prune_commit_tokens(&self) -> Result<u64, StoreError> {
        let pending: Vec<i64> = {
            let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent
                .iter()
                .filter(|r| r.batch.strong_count() > 0)
                .map(|r| r.token)
                .collect()
        };
        let client = self.client(StoreError::Write).await?;
        commit_token::prune_tokens(&client, self.own_tokens(), OWN_TOKENS_KEPT, &pending)
            .await
            .map_err(|e| StoreError::Write(describe_pg(&e)))
    }

    async fn write_once(
        &self,
        batch: &[Message],
        position: Option<&SpoolPosition>,
        token: i64,
        turn: Option<&mut turn::Attempt<'_>>,
    ) -> Result<Vec<Outcome>, WriteError> {
        let mut client = self.client(WriteError::Other).await?;
        write::write_batch(
            &mut client,
            batch,
            position,
            &self.id_seq,
            &self.series,
            token,
            turn,
        )
        .await
        .map_err(|e| WriteError::from_rows(&e))
    }

    /// A pooled connection; a failure to get one becomes a `kind` error (a query's or a write's).
    async fn client<E>(&self, kind: fn(String) -> E) -> Result<deadpool_postgres::Object, E> {
        self.pool.get().await.map_err(|e| kind(pool_error(&e)))
    }
}

impl PgStore {
    async fn write_at(
        &self,
        batch: &Arc<Vec<Message>>,
        position: Option<&SpoolPosition>,
    ) -> Result<Committed, StoreError> {
        let (token, turn) = self.place(batch, position.is_none());
        // A half-open connection would wait forever; give up and retry on a new connection.
        let written = match tokio::time::timeout(
            WRITE_TIMEOUT,
            self.write_inner(batch, position, token, turn.as_deref()),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(StoreError::Write(format!(
                "PostgreSQL did not answer within {} s; retrying on a new connection",
                WRITE_TIMEOUT.as_secs()
            ))),
        };
        if written.is_ok() && self.prune_due() {
            // Nothing is lost when this fails: the tokens wait for the next minute. Bounded,
            // because the batch's acknowledgement waits for it.
            match tokio::time::timeout(PRUNE_TIMEOUT, self.prune_commit_tokens()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "could not delete old commit tokens; trying again in a minute")
                }
                Err(_) => tracing::warn!(
                    "deleting old commit tokens took over {} s; trying again in a minute",
                    PRUNE_TIMEOUT.as_secs()
                ),
            }
        }
        written
    }

    async fn write_inner(
        &self,
        batch: &[Message],
        position: Option<&SpoolPosition>,
        token: i64,
        turn: Option<&turn::Turn>,
    ) -> Result<Committed, StoreError> {
        let mut attempt = turn.map(turn::Turn::attempt);
        let mut written = self.write_once(batch, position, token, attempt.as_mut()).await;
        // Sent back behind the batch before it (`turn`): nothing is wrong, so no error goes up;
        // the new attempt waits for that batch's new ids.
        while matches!(written, Err(WriteError::Overtaken)) {
            drop(attempt.take());
            attempt = turn.map(turn::Turn::attempt);
            written = self.write_once(batch, position, token, attempt.as_mut()).await;
        }
        if let Err(WriteError::Data(e)) = &written {
            tracing::warn!(error = %e, "the database refused a batch; writing its messages one by one");
            // A new attempt with new ids: the batch after this one, if it drew its ids
            // already, starts again behind it.
            drop(attempt.take());
            attempt = turn.map(turn::Turn::attempt);
            if let Some(a) = &attempt {
                // It draws no ids through the turn, so this waits for the earlier batch's
                // commit and cannot be overtaken.
                a.wait_for_earlier_commit().await.ok();
            }
            written = self.write_one_by_one(batch, position, token).await;
        }
        if written.is_ok() || matches!(written, Err(WriteError::AlreadyCommitted)) {
            if let Some(a) = attempt {
                a.committed();
            }
        }
        match written {
            Ok(outcomes) => Ok(Committed::new(outcomes)),
            Err(WriteError::AlreadyCommitted) => {
                tracing::info!(
                    rows = batch.len(),
                    "an earlier attempt at this batch was committed although its answer was lost; not writing it again"
                );
                Ok(Committed::new(vec![Outcome::Duplicate; batch.len()]))
            }
            Err(WriteError::Overtaken) => Err(StoreError::Write(turn::Overtaken.to_string())),
            Err(WriteError::Data(e)) => Err(StoreError::Write(e)),
            Err(WriteError::Other(e)) => Err(StoreError::Write(match self.newer_schema().await {
                Some(found) => format!(
                    "{e}; the database is at schema {found}, newer than this tidegate's {}: an instance of a newer \
                     version upgraded it. Upgrade this one too (it acknowledges nothing until then)",
                    schema::VERSION
                ),
                None => e,
            })),
        }
    }

    /// The schema another tidegate moved the database to since this one opened it, if newer
    /// than this build's: the likeliest reason a table it writes is gone or changed. Asked only
    /// after a write failed, and given up on quickly, since the database may be down.
    async fn newer_schema(&self) -> Option<i32> {
        let ask = async {
            let client = self.pool.get().await.ok()?;
            let row = client
                .query_one("SELECT max(version) FROM tidegate_schema", &[])
                .await
                .ok()?;
            row.get::<_, Option<i32>>(0)
        };
        tokio::time::timeout(SCHEMA_CHECK_TIMEOUT, ask)
            .await
            .ok()
            .flatten()
            .filter(|&v| v > schema::VERSION)
    }

    /// Still one transaction, with a savepoint per message: a message the database refuses is
    /// recorded in `rejected` instead, and the batch stays all-or-nothing.
    async fn write_one_by_one(
        &self,
        batch: &[Message],
        position: Option<&SpoolPosition>,
        token: i64,
    ) -> Result<Vec<Outcome>, WriteError> {
        let mut client = self.client(WriteError::Other).await?;
        self.savepoint_each(&mut client, batch, position, token)
            .await
            .map_err(|e| WriteError::from_rows(&e))
    }

    async fn savepoint_each(
        &self,
        client: &mut deadpool_postgres::ClientWrapper,
        batch: &[Message],
        position: Option<&SpoolPosition>,
        token: i64,
    ) -> Result<Vec<Outcome>, write::RowsError> {
        let mut tx = client.transaction().await?;
        commit_token::claim(&tx, token).await?;
        let mut series = series::Pending::new(&self.series);
        let mut outcomes = Vec::with_capacity(batch.len());
        for m in batch {
            let sp = tx.transaction().await?;
            // The series a savepoint creates are gone if it rolls back.
            let mut sp_series = series.savepoint();
            match write::write_rows(
                &sp,
                std::slice::from_ref(m),
                &self.id_seq,
                &mut sp_series,
                None,
                None,
                None,
            )
            .await
            {
                Ok(mut o) => {
                    sp.commit().await?;
                    series.adopt(sp_series);
                    outcomes.append(&mut o);
                }
                Err(write::RowsError::Pg(e)) if is_data_error(&e) => {
                    sp.rollback().await?;
                    let mut r = m.clone();
                    r.payload = bytes::Bytes::new();
                    r.rejection = Some(format!("the database refused this message: {}", describe_pg(&e)));
                    let sp = tx.transaction().await?;
                    // A rejection stores no readings, so it creates no series.
                    let mut o = write::write_rows(
                        &sp,
                        std::slice::from_ref(&r),
                        &self.id_seq,
                        &mut series.savepoint(),
                        None,
                        None,
                        None,
                    )
                    .await?;
                    sp.commit().await?;
                    outcomes.append(&mut o);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(p) = position {
            write::record_position(&tx, p).await?;
        }
        tx.commit().await?;
        series.commit();
        Ok(outcomes)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn write(&self, batch: Arc<Vec<Message>>) -> Result<Committed, StoreError> {
        self.write_at(&batch, None).await
    }

    /// Two: the next batch copies its rows while this one commits (`turn`).
    fn queue_depth(&self) -> usize {
        2
    }

    async fn write_from_spool(
        &self,
        batch: Arc<Vec<Message>>,
        position: SpoolPosition,
    ) -> Option<Result<Committed, StoreError>> {
        Some(self.write_at(&batch, Some(&position)).await)
    }

    async fn spool_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        let row = client
            .query_opt("SELECT last_id FROM spool_positions WHERE name = $1", &[&name])
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn subscriptions(&self, client_id: &str) -> Result<Option<Vec<String>>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        let row = client
            .query_opt(
                "SELECT filters FROM mqtt_subscriptions WHERE client_id = $1",
                &[&client_id],
            )
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn record_subscriptions(&self, client_id: &str, filters: &[String]) -> Result<(), StoreError> {
        let client = self.client(StoreError::Write).await?;
        client
            .execute(
                "INSERT INTO mqtt_subscriptions (client_id, filters, recorded_at) VALUES ($1, $2, now())
                 ON CONFLICT (client_id) DO UPDATE SET filters = excluded.filters, recorded_at = excluded.recorded_at",
                &[&client_id, &filters],
            )
            .await
            .map_err(|e| StoreError::Write(describe_pg(&e)))?;
        Ok(())
    }

    async fn messages(&self, q: MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        read::messages(&client, &q)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn readings(&self, q: crate::store::ReadingsQuery) -> Result<Vec<crate::store::Point>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        read::readings(&client, &q)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn latest(
        &self,
        q: crate::store::LatestQuery,
    ) -> Result<Vec<crate::store::LatestReading>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        read::latest(&client, &q)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn coverage(
        &self,
        tables: &[crate::readings::mapping::Ident],
    ) -> Result<crate::store::backfill::Coverage, StoreError> {
        let mut client = self.client(StoreError::Query).await?;
        backfill::coverage(&mut client, tables)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn stored(&self, after: i64, last: i64, limit: usize) -> Result<Vec<(i64, Message)>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        backfill::stored(&client, after, last, limit)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn counted_but_gone(
        &self,
        minutes: Vec<crate::store::backfill::Minute>,
    ) -> Result<Vec<bool>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        backfill::counted_but_gone(&client, &minutes)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn write_derived(&self, rows: Arc<Vec<(i64, Message)>>) -> Result<(), StoreError> {
        let (ids, messages): (Vec<i64>, Vec<Message>) = Arc::try_unwrap(rows)
            .unwrap_or_else(|shared| (*shared).clone())
            .into_iter()
            .unzip();
        let mut client = self.client(StoreError::Write).await?;
        backfill::write(&mut client, &self.series, &messages, &ids)
            .await
            .map_err(|e| match e {
                write::RowsError::Pg(e) => StoreError::Write(describe_pg(&e)),
                other => StoreError::Write(other.to_string()),
            })
    }

    async fn retain(&self, policy: &crate::config::RetentionPolicy, chunk: usize) -> Result<u64, StoreError> {
        let mut client = self.client(StoreError::Write).await?;
        retain::retain(&mut client, policy, chunk)
            .await
            .map_err(|e| StoreError::Write(describe_pg(&e)))
    }

    async fn write_stats(
        &self,
        rows: &std::collections::HashMap<crate::pipeline::stats::StatsKey, crate::pipeline::stats::StatsRow>,
    ) -> Result<(), StoreError> {
        let mut client = self.client(StoreError::Write).await?;
        stats::write_stats(&mut client, rows)
            .await
            .map_err(|e| StoreError::Write(describe_pg(&e)))
    }

    async fn topics(&self) -> Result<Vec<TopicStats>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        read::topics(&client)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        let client = self.client(StoreError::Query).await?;
        read::schema_version(&client)
            .await
            .map(Some)
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    fn describe(&self) -> String {
        self.display.clone()
    }
}
