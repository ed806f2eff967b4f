//! One batch, one transaction, a fixed number of statements whatever its size: the bulk rows
//! (messages, readings) go in with binary `COPY`, the upserts through `UNNEST` (one prepared
//! statement for any batch size). Keys are upserted in sorted order, so two instances writing
//! the same topics lock rows in the same order and cannot deadlock. Dedup follows
//! `store::dedup`, with the marks this batch needs read up front.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, Transaction};
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    types::{Json, ToSql, Type},
    Client, Row,
};

use super::{
    series::{self, Pending, SeriesError},
    turn::{Attempt, Overtaken},
};
use crate::{
    message::{Message, Origin},
    store::{
        dedup::{self, Hash, Marks, Verdict},
        delivery_marks, Outcome, SpoolPosition,
    },
};

/// Why a batch's rows were not written.
#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Overtaken(#[from] Overtaken),
    #[error("{0}")]
    Series(String),
}

impl From<SeriesError> for RowsError {
    fn from(e: SeriesError) -> Self {
        match e {
            SeriesError::Pg(e) => RowsError::Pg(e),
            e @ (SeriesError::Unresolved(_) | SeriesError::Missing(_)) => RowsError::Series(e.to_string()),
        }
    }
}

/// PostgreSQL text cannot hold NUL; such text is kept with U+FFFD (the exact bytes go to
/// `payload_raw`).
pub fn pg_text(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The first key of the per-session advisory locks (two-key space, apart from migrations').
const SESSION_LOCKS: i32 = 0x7469_6465; // "tide"

/// Runs one of the fixed statements, prepared once per connection, so the server does not parse
/// and plan it again for every batch (at low rates every message is a batch of its own).
async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.execute(&st, params).await
}

async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let st = tx.prepare_cached(sql).await?;
    tx.query(&st, params).await
}

/// Marks prefetched for the batch, updated in memory as the batch is decided.
#[derive(Default)]
struct Prefetched {
    /// Only for the packet ids redelivered in this batch: no other delivery mark is looked up.
    delivery: delivery_marks::Lookup,
    /// Per topic, the last stored hash and whether this batch changed it.
    retained: HashMap<String, (Hash, bool)>,
}

impl Marks for Prefetched {
    type Error = std::convert::Infallible;
    fn delivery(&mut self, session: &str, pkid: u16) -> Result<Option<Hash>, Self::Error> {
        Ok(self.delivery.get(session, pkid))
    }
    fn last_stored(&mut self, topic: &str) -> Result<Option<Hash>, Self::Error> {
        Ok(self.retained.get(topic).map(|(h, _)| *h))
    }
    fn set_last_stored(&mut self, topic: &str, hash: Hash) -> Result<(), Self::Error> {
        // Every stored message lands here: no allocation once a topic is known.
        match self.retained.get_mut(topic) {
            Some(e) => *e = (hash, true),
            None => {
                self.retained.insert(topic.to_string(), (hash, true));
            }
        }
        Ok(())
    }
}

fn hash_of(v: Vec<u8>) -> Option<Hash> {
    v.try_into().ok()
}

/// Writes `batch` in its own transaction, claiming its token first (`claim`), in its `turn`
/// when it is a pipeline batch.
#[allow(clippy::too_many_arguments)]
pub async fn write_batch(
    client: &mut ClientWrapper,
    batch: &[Message],
    position: Option<&SpoolPosition>,
    id_seq: &str,
    known: &series::Known,
    token: i64,
    turn: Option<&mut Attempt<'_>>,
) -> Result<Vec<Outcome>, RowsError> {
    let tx = client.transaction().await?;
    let mut series = Pending::new(known);
    let outcomes = write_rows(&tx, batch, id_seq, &mut series, Some(token), turn, position).await?;
    tx.commit().await?;
    series.commit();
    Ok(outcomes)
}

/// Records how far a spool has been forwarded, inside the batch's transaction.
pub async fn record_position(tx: &Transaction<'_>, p: &SpoolPosition) -> Result<(), tokio_postgres::Error> {
    exec(tx, RECORD_POSITION, &[&p.name, &p.last_id]).await.map(drop)
}

const RECORD_POSITION: &str = "INSERT INTO spool_positions (name, last_id) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id";

/// The sequence behind `messages.id`, looked up once per store: naming it in the statement
/// keeps `nextval` cheap (a lookup per row costs more than the insert).
pub async fn id_sequence(client: &Client) -> Result<String, tokio_postgres::Error> {
    client
        .query_one("SELECT pg_get_serial_sequence('messages', 'id')", &[])
        .await
        .map(|r| r.get(0))
}

/// Writes `batch` inside the caller's transaction (or savepoint), without committing.
///
/// The statements of each step below are pipelined on the connection: sent together and run by
/// the server one after another in the order written (so the lock order below holds). Sent one
/// at a time they waited for about a dozen round trips a batch, which is most of a batch's time
/// when the database is across a network; pipelined, the whole transaction waits for about half
/// as many, whatever the batch holds.
///
/// With a `token`, the transaction claims it before anything else (see `claim`). With a
/// `position`, it records how far the spool has been forwarded, among the shared rows. With a
/// `turn`, the usual batch copies its rows while the batch before it is still being written,
/// and waits for that one's commit only before the statements that must follow it (`turn`); a
/// batch that reads marks waits for it before anything else.
pub async fn write_rows(
    tx: &Transaction<'_>,
    batch: &[Message],
    id_seq: &str,
    series: &mut Pending<'_>,
    token: Option<i64>,
    mut turn: Option<&mut Attempt<'_>>,
    position: Option<&SpoolPosition>,
) -> Result<Vec<Outcome>, RowsError> {
    let hashes: Vec<Hash> = batch.iter().map(Message::content_hash).collect();
    // Step 1: every statement prepared (a round trip on a connection's first batch only; later
    // ones find them cached), so the ones below are sent in the order they are written rather
    // than as their preparations return.
    futures::future::try_join_all(
        FIXED_STATEMENTS
            .iter()
            .copied()
            .chain(ROLLUP_UPSERTS.iter().map(String::as_str))
            .map(|sql| tx.prepare_cached(sql)),
    )
    .await?;

    // One transaction at a time per MQTT session: a restarted tidegate's batch waits here for
    // a commit its killed predecessor left in flight, so the marks read below include it and a
    // redelivery of that batch is recognised (the marks it inserted cannot be row-locked yet).
    // A batch that reads no marks takes the lock just before appending its own (step 4).
    let mut own: Vec<&str> = batch
        .iter()
        .filter_map(|m| match &m.origin {
            Origin::Mqtt { session, .. } => Some(&**session),
            Origin::Http => None,
        })
        .collect();
    // Sorted, so two batches that need the same locks take them in the same order. (A session's
    // messages come in runs: deduplicating first leaves little to sort.)
    own.dedup();
    own.sort_unstable();
    own.dedup();
    // Sent first: a transaction that cannot claim its token writes nothing.
    let claimed = async {
        match token {
            Some(t) => claim(tx, t).await,
            None => Ok(()),
        }
    };
    let lock = lock_sessions(tx, &own);

    let redelivered = delivery_marks::redelivered(batch);
    let retained_topics: Vec<String> = batch
        .iter()
        .filter(|m| m.retain)
        .map(|m| pg_text(&m.topic).into_owned())
        .collect();
    let mut marks = Prefetched::default();
    let decide = |marks: &mut Prefetched| -> Vec<Verdict> {
        // In arrival order, as SQLite does row by row.
        let mut verdicts = Vec::with_capacity(batch.len());
        for (m, h) in batch.iter().zip(&hashes) {
            let v = match dedup::verdict(m, *h, marks) {
                Ok(v) => v,
                Err(never) => match never {},
            };
            marks.delivery.decided(m, *h, v, &redelivered);
            verdicts.push(v);
        }
        verdicts
    };
    let stored = |verdicts: &[Verdict]| verdicts.iter().filter(|v| **v == Verdict::Store).count();

    // Step 2: what the verdicts need: nothing but the ids when no message is a redelivery or
    // retained (the usual batch), else the locks and the marks, and the ids in a step of their
    // own.
    let reads_marks = !(redelivered.is_empty() && retained_topics.is_empty());
    let (verdicts, ids) = if !reads_marks {
        let verdicts = decide(&mut marks);
        let ids = async {
            if let Some(turn) = turn.as_deref_mut() {
                turn.wait_to_draw_ids().await;
            }
            next_ids(tx, stored(&verdicts), id_seq).await
        };
        let (claimed, ids) = futures::join!(claimed, ids);
        claimed?;
        (verdicts, ids?)
    } else {
        // The marks must include the earlier batch's, so it commits first.
        if let Some(turn) = turn.as_deref() {
            turn.wait_for_earlier_commit().await?;
        }
        let delivery = async {
            if redelivered.is_empty() {
                return Ok(Vec::new());
            }
            // Oldest first, so a packet id's latest mark is the one left.
            query(tx, READ_DELIVERY, &[&delivery_marks::sessions(&redelivered)]).await
        };
        let retained = async {
            if retained_topics.is_empty() {
                return Ok(Vec::new());
            }
            query(tx, READ_RETAINED, &[&retained_topics]).await
        };
        let (claimed, locked, delivery, retained) = futures::join!(claimed, lock, delivery, retained);
        claimed?;
        locked?;
        for r in delivery? {
            marks.delivery.add_row(r.get(0), r.get(1), &redelivered);
        }
        for r in retained? {
            if let Some(h) = hash_of(r.get(1)) {
                marks.retained.insert(r.get(0), (h, false));
            }
        }
        let verdicts = decide(&mut marks);
        let ids = next_ids(tx, stored(&verdicts), id_seq).await?;
        (verdicts, ids)
    };
    if let Some(turn) = turn.as_deref() {
        turn.ids_drawn();
    }

    let to_store: Vec<usize> = (0..batch.len())
        .filter(|&i| verdicts[i] == Verdict::Store)
        .collect();
    let stored_messages: Vec<&Message> = to_store.iter().map(|&i| &batch[i]).collect();
    let series_ids = reading_series(tx, series, turn.as_deref(), &stored_messages).await?;

    // Step 3: the rows no other transaction touches, while the batch before may still be
    // writing.
    let copies = async {
        let done = futures::join!(
            copy_messages(tx, batch, &to_store, &ids),
            insert_rejected(tx, batch, &verdicts),
            copy_readings(tx, &series_ids, batch, &to_store, &ids),
            insert_notes(tx, batch, &to_store, &ids),
        );
        first_error([done.0, done.1, done.2, done.3])
    };

    // Step 4: the rows shared with other batches, once the batch before has committed. Upserts'
    // keys are sorted and the statements always go in this order (the session lock first), so
    // two transactions writing the same topics lock rows in the same order. Sent as soon as that
    // commit is in, without waiting for step 3's answers: when it already is (a lone batch, a
    // spooled one), steps 3 and 4 share one round trip.
    let marks_rows = delivery_marks::new_rows(batch, &verdicts, &hashes);
    let mut changed: Vec<(&String, &Hash)> = marks
        .retained
        .iter()
        .filter(|(_, (_, changed))| *changed)
        .map(|(t, (h, _))| (t, h))
        .collect();
    changed.sort_unstable();
    let folded = crate::store::rollup::aggregate(stored_messages.iter().copied());
    let rollups = rollup_rows(series, folded.buckets)?;
    let latest = latest_rows(series, folded.latest)?;
    let shared = async {
        if let Some(turn) = turn.as_deref() {
            turn.wait_for_earlier_commit().await?;
        }
        let tail_lock = async {
            match reads_marks {
                true => Ok(()),
                false => lock_sessions(tx, &own).await,
            }
        };
        let done = futures::join!(
            tail_lock,
            append_marks(tx, marks_rows),
            upsert_retained(tx, &changed),
            upsert_rollups(tx, &rollups),
            upsert_latest(tx, &latest),
            upsert_topics(tx, &stored_messages),
            async {
                match position {
                    Some(p) => record_position(tx, p).await,
                    None => Ok(()),
                }
            },
        );
        first_error([done.0, done.1, done.2, done.3, done.4, done.5, done.6]).map_err(RowsError::from)
    };
    // Step 3's error first: it is the statement the server refused, and step 4's only report
    // the transaction aborted.
    let (copied, shared) = futures::join!(copies, shared);
    copied?;
    shared?;
    // Mapping tables may need DDL first: statement by statement, after everything else.
    write_mapped(tx, batch, &to_store, &ids).await?;

    let mut next_id = ids.into_iter();
    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Duplicate => Outcome::Duplicate,
            Verdict::Reject => Outcome::Rejected,
            Verdict::Store => Outcome::Stored {
                id: next_id.next().unwrap_or_default(),
            },
        })
        .collect())
}

/// Takes the advisory lock of each MQTT session in `own` (sorted), until the transaction ends.
async fn lock_sessions(tx: &Transaction<'_>, own: &[&str]) -> Result<(), tokio_postgres::Error> {
    if !own.is_empty() {
        exec(tx, LOCK_SESSIONS, &[&SESSION_LOCKS, &own]).await?;
    }
    Ok(())
}

const LOCK_SESSIONS: &str = "SELECT pg_advisory_xact_lock($1, hashtext(s)) FROM unnest($2::text[]) AS s";
const READ_DELIVERY: &str =
    "SELECT session, marks FROM delivery_batches WHERE session = ANY($1) ORDER BY session, total";
const READ_RETAINED: &str =
    "SELECT topic, hash FROM retained_marks WHERE md5(topic) IN (SELECT md5(t) FROM unnest($1::text[]) t)";
/// One row holding the ids as an array: a row per id cost tidegate a parsed row each (about a
/// thousand instructions a message). Sorted by the caller; sorting here cost the server more.
const NEXT_IDS: &str = "SELECT array_agg(nextval($2::text::regclass)) FROM generate_series(1, $1::int)";
const COPY_MESSAGES: &str = "COPY messages (id, received_at, topic, payload, payload_raw, payload_size, qos, retain, content_type, user_properties, source)
     FROM STDIN (FORMAT binary)";
const INSERT_REJECTED: &str = "INSERT INTO rejected (received_at, topic, size, qos, reason, source)
     SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bigint[], $4::smallint[], $5::text[], $6::text[])";
const APPEND_MARKS: &str =
    "WITH prev AS (SELECT coalesce(max(total), 0) AS total FROM delivery_batches WHERE session = $1),
          ins AS (INSERT INTO delivery_batches (session, total, n, marks)
                  SELECT $1, total + $2::int, $2::int, $3 FROM prev RETURNING total)
     DELETE FROM delivery_batches WHERE session = $1 AND total <= (SELECT total FROM ins) - $4";
const UPSERT_RETAINED: &str =
    "INSERT INTO retained_marks (topic, hash) SELECT * FROM unnest($1::text[], $2::bytea[])
     ON CONFLICT ((md5(topic))) DO UPDATE SET hash = excluded.hash";
const COPY_READINGS: &str =
    "COPY series_points (message_id, series_id, ts, value, text, ts_source) FROM STDIN (FORMAT binary)";
const INSERT_NOTES: &str =
    "INSERT INTO reading_notes (message_id, note) SELECT * FROM unnest($1::bigint[], $2::text[])
     ON CONFLICT (message_id) DO UPDATE SET note = excluded.note";
const UPSERT_TOPICS: &str = "INSERT INTO topics (topic, message_count, first_seen, last_seen)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[])
     ON CONFLICT ((md5(topic))) DO UPDATE SET message_count = topics.message_count + excluded.message_count,
         first_seen = least(topics.first_seen, excluded.first_seen),
         last_seen = greatest(topics.last_seen, excluded.last_seen)";

const UPSERT_LATEST: &str = "INSERT INTO series_latest (series_id, value, text, ts)
     SELECT * FROM unnest($1::int[], $2::float8[], $3::text[], $4::timestamptz[])
     ON CONFLICT (series_id) DO UPDATE SET value = excluded.value, text = excluded.text, ts = excluded.ts
     WHERE excluded.ts >= series_latest.ts";

const CLAIM_TOKEN: &str = "INSERT INTO commit_tokens (token, at) VALUES ($1, now())";
const PRUNE_TOKENS: &str = "DELETE FROM commit_tokens
     WHERE (token BETWEEN $1 AND $2 AND at < now() - make_interval(secs => $3) AND token <> ALL($4))
        OR at < now() - interval '1 day'";

/// Claims a batch's token in its transaction: one token per batch, the same for every attempt
/// at it. When an attempt's `COMMIT` goes unanswered (the connection dropped, the answer timed
/// out), the batch may or may not be stored; the retry's claim tells which. If the earlier
/// attempt committed, the claim fails (`already_committed`) and the retry writes nothing. If that
/// attempt is still running on the server, the claim waits for it. If it comes to the server
/// later than the retry, its own claim fails and it stores nothing. Either way the batch is
/// stored once.
pub async fn claim(tx: &Transaction<'_>, token: i64) -> Result<(), tokio_postgres::Error> {
    exec(tx, CLAIM_TOKEN, &[&token]).await.map(drop)
}

/// Whether `e` is a claim refused because the token is already committed.
pub fn already_committed(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.table() == Some("commit_tokens")
    })
}

/// Deletes the tokens in `own` (this process's) older than `keep` except `pending`, and
/// anyone's older than a day (`PgStore::prune_commit_tokens` says why). Answers how many.
pub async fn prune_tokens(
    client: &Client,
    own: (i64, i64),
    keep: std::time::Duration,
    pending: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(PRUNE_TOKENS, &[&own.0, &own.1, &keep.as_secs_f64(), &pending])
        .await
}

/// What `write_rows` runs, besides the rollup upserts (`ROLLUP_UPSERTS`).
const FIXED_STATEMENTS: [&str; 14] = [
    CLAIM_TOKEN,
    LOCK_SESSIONS,
    READ_DELIVERY,
    READ_RETAINED,
    NEXT_IDS,
    COPY_MESSAGES,
    INSERT_REJECTED,
    APPEND_MARKS,
    UPSERT_RETAINED,
    COPY_READINGS,
    INSERT_NOTES,
    UPSERT_TOPICS,
    UPSERT_LATEST,
    RECORD_POSITION,
];

/// The first error in statement order. That is the statement the server refused; every one
/// pipelined after it only reports the transaction aborted, and the caller must see the first
/// to tell refused data (written message by message) from a failed connection (retried).
fn first_error(
    done: impl IntoIterator<Item = Result<(), tokio_postgres::Error>>,
) -> Result<(), tokio_postgres::Error> {
    done.into_iter().collect()
}

/// One row of delivery marks per MQTT session of the batch.
async fn append_marks(
    tx: &Transaction<'_>,
    rows: Vec<(&str, Vec<(u16, Hash)>)>,
) -> Result<(), tokio_postgres::Error> {
    first_error(
        futures::future::join_all(rows.into_iter().map(|(session, marks)| async move {
            let n = marks.len() as i32;
            let packed = delivery_marks::pack(&marks);
            // The session's advisory lock (taken above) makes `max(total)` safe to build on.
            exec(tx, APPEND_MARKS, &[&session, &n, &packed, &delivery_marks::KEPT])
                .await
                .map(drop)
        }))
        .await,
    )
}

/// `n` new message ids, in order.
async fn next_ids(tx: &Transaction<'_>, n: usize, id_seq: &str) -> Result<Vec<i64>, tokio_postgres::Error> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let st = tx.prepare_cached(NEXT_IDS).await?;
    let mut ids: Vec<i64> = tx.query_one(&st, &[&(n as i32), &id_seq]).await?.try_get(0)?;
    // An aggregate's input order is not promised; the calls were made in order, so this is
    // normally a check of an already sorted vector.
    ids.sort_unstable();
    Ok(ids)
}

async fn insert_rejected(
    tx: &Transaction<'_>,
    batch: &[Message],
    verdicts: &[Verdict],
) -> Result<(), tokio_postgres::Error> {
    let rejected: Vec<&Message> = batch
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| **v == Verdict::Reject)
        .map(|(m, _)| m)
        .collect();
    if rejected.is_empty() {
        return Ok(());
    }
    let at: Vec<DateTime<Utc>> = rejected.iter().map(|m| m.received_at).collect();
    let topic: Vec<String> = rejected.iter().map(|m| pg_text(&m.topic).into_owned()).collect();
    let size: Vec<i64> = rejected.iter().map(|m| m.size as i64).collect();
    let qos: Vec<i16> = rejected.iter().map(|m| i16::from(m.qos)).collect();
    let reason: Vec<String> = rejected
        .iter()
        .map(|m| pg_text(m.rejection.as_deref().unwrap_or("rejected")).into_owned())
        .collect();
    let source: Vec<&str> = rejected.iter().map(|m| source_of(m)).collect();
    exec(tx, INSERT_REJECTED, &[&at, &topic, &size, &qos, &reason, &source]).await?;
    Ok(())
}

/// The topics whose last stored message this batch changed, sorted.
async fn upsert_retained(
    tx: &Transaction<'_>,
    changed: &[(&String, &Hash)],
) -> Result<(), tokio_postgres::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let (t, h): (Vec<&String>, Vec<Vec<u8>>) = changed.iter().map(|(t, h)| (*t, h.to_vec())).unzip();
    exec(tx, UPSERT_RETAINED, &[&t, &h]).await?;
    Ok(())
}

/// Counts and first/last times per topic, keys sorted.
async fn upsert_topics(tx: &Transaction<'_>, stored: &[&Message]) -> Result<(), tokio_postgres::Error> {
    if stored.is_empty() {
        return Ok(());
    }
    let mut tally: BTreeMap<std::borrow::Cow<'_, str>, (i64, DateTime<Utc>, DateTime<Utc>)> =
        Default::default();
    for m in stored {
        let at = m.received_at;
        let e = tally.entry(pg_text(&m.topic)).or_insert((0, at, at));
        e.0 += 1;
        e.1 = e.1.min(at);
        e.2 = e.2.max(at);
    }
    let mut t = Vec::new();
    let mut n = Vec::new();
    let mut first = Vec::new();
    let mut last = Vec::new();
    for (topic, (count, f, l)) in tally {
        t.push(topic);
        n.push(count);
        first.push(f);
        last.push(l);
    }
    exec(tx, UPSERT_TOPICS, &[&t, &n, &first, &last]).await?;
    Ok(())
}

fn source_of(m: &Message) -> &'static str {
    match m.origin {
        Origin::Mqtt { .. } => "mqtt",
        Origin::Http => "http",
    }
}

/// MQTT 5 user properties as stored in `jsonb`: `[[name, value], ...]`.
type UserProperties = Json<Vec<(String, String)>>;

const MESSAGE_TYPES: [Type; 11] = [
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::INT4,
    Type::INT2,
    Type::BOOL,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
];

/// The stored messages (`to_store[i]` becomes row `ids[i]`), streamed with binary `COPY`.
async fn copy_messages(
    tx: &Transaction<'_>,
    batch: &[Message],
    to_store: &[usize],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    if to_store.is_empty() {
        return Ok(());
    }
    let copy = tx.prepare_cached(COPY_MESSAGES).await?;
    let sink = tx.copy_in(&copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &MESSAGE_TYPES);
    futures::pin_mut!(writer);
    for (&i, id) in to_store.iter().zip(ids) {
        let m = &batch[i];
        let text = m.payload_lossy();
        let exact = m.payload_text().is_some() && !text.contains('\0');
        let raw: Option<&[u8]> = (!exact).then_some(&m.payload[..]);
        let props: Option<UserProperties> = (!m.user_properties.is_empty()).then(|| {
            Json(
                m.user_properties
                    .iter()
                    .map(|(k, v)| (pg_text(k).into_owned(), pg_text(v).into_owned()))
                    .collect(),
            )
        });
        let row: [&(dyn ToSql + Sync); 11] = [
            id,
            &m.received_at,
            &pg_text(&m.topic),
            &pg_text(&text),
            &raw,
            &i32::try_from(m.size).unwrap_or(i32::MAX),
            &i16::from(m.qos),
            &m.retain,
            &m.content_type.as_deref().map(pg_text),
            &props,
            &source_of(m),
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

const READING_TYPES: [Type; 6] = [
    Type::INT8,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
];

/// The table a rollup width is stored in, by series (schema 14; `readings_1m` and
/// `readings_1h` are views of them).
fn rollup_table(w: crate::store::rollup::Width) -> &'static str {
    match w {
        crate::store::rollup::Width::Minute => "series_1m",
        crate::store::rollup::Width::Hour => "series_1h",
    }
}

/// The rollup upserts, in `rollup::WIDTHS` order: built once, not per batch.
static ROLLUP_UPSERTS: std::sync::LazyLock<[String; 2]> =
    std::sync::LazyLock::new(|| crate::store::rollup::WIDTHS.map(|w| rollup_upsert(rollup_table(w))));

/// The rollup upsert for one table of `rollup::WIDTHS`.
fn rollup_upsert(t: &str) -> String {
    format!(
        "INSERT INTO {t} (series_id, bucket, count, min, max, sum, avg, last, last_ts)
         SELECT i, b, n, mn, mx, s, s / n, l, lt
         FROM unnest($1::int[], $2::timestamptz[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::timestamptz[])
              AS u(i, b, n, mn, mx, s, l, lt)
         ON CONFLICT (series_id, bucket) DO UPDATE SET
            count = {t}.count + excluded.count,
            min = least({t}.min, excluded.min),
            max = greatest({t}.max, excluded.max),
            sum = {t}.sum + excluded.sum,
            avg = ({t}.sum + excluded.sum) / ({t}.count + excluded.count),
            last = CASE WHEN excluded.last_ts >= {t}.last_ts THEN excluded.last ELSE {t}.last END,
            last_ts = greatest({t}.last_ts, excluded.last_ts)"
    )
}

/// The series id of every reading of the stored messages, in order, finding or creating in
/// `tx` the series no committed batch has.
///
/// A batch that brings a new series first waits for the batch before it (`turn`) to commit.
/// That one may be adding the same series: if this one got there first, its row would hold
/// that batch's insert while it waited for that batch's commit, and neither would ever commit.
/// New series are rare after the first batches, so this wait is too.
async fn reading_series(
    tx: &Transaction<'_>,
    series: &mut Pending<'_>,
    turn: Option<&Attempt<'_>>,
    stored: &[&Message],
) -> Result<Vec<i32>, RowsError> {
    let mut ids = Vec::new();
    let unknown = series.ids(stored, &mut ids);
    if unknown.is_empty() {
        return Ok(ids);
    }
    // A series no batch has committed yet costs a round trip or two, before the copies.
    if let Some(turn) = turn {
        turn.wait_for_earlier_commit().await?;
    }
    series.resolve(tx, unknown).await?;
    ids.clear();
    match series.ids(stored, &mut ids).first() {
        None => Ok(ids),
        Some(k) => Err(RowsError::Series(format!(
            "no id for series {:?} after resolving it",
            k.replace('\0', "|")
        ))),
    }
}

/// The readings of the stored messages (`to_store[i]` became row `ids[i]`), streamed with
/// binary `COPY`, each with its series' id (`series_ids`, in the same order: `reading_series`).
async fn copy_readings(
    tx: &Transaction<'_>,
    series_ids: &[i32],
    batch: &[Message],
    to_store: &[usize],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    use crate::readings::Value;
    if !to_store
        .iter()
        .any(|&i| batch[i].derived.as_ref().is_some_and(|d| !d.readings.is_empty()))
    {
        return Ok(());
    }
    let copy = tx.prepare_cached(COPY_READINGS).await?;
    let sink = tx.copy_in(&copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &READING_TYPES);
    futures::pin_mut!(writer);
    let mut series_ids = series_ids.iter();
    for (&i, &id) in to_store.iter().zip(ids) {
        let m = &batch[i];
        let Some(d) = &m.derived else { continue };
        for (r, series_id) in d.readings.iter().zip(&mut series_ids) {
            let (value, text) = match &r.value {
                Value::Number(v) => (Some(*v), None),
                Value::Text(t) => (None, Some(pg_text(t))),
            };
            let row: [&(dyn ToSql + Sync); 6] =
                [&id, &series_id, &d.ts, &value, &text, &d.ts_source.as_str()];
            writer.as_mut().write(&row).await?;
        }
    }
    writer.finish().await?;
    Ok(())
}

/// Notes on stored payloads that gave no readings.
async fn insert_notes(
    tx: &Transaction<'_>,
    batch: &[Message],
    to_store: &[usize],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    let mut notes: (Vec<i64>, Vec<String>) = Default::default();
    for (&i, &id) in to_store.iter().zip(ids) {
        if let Some(n) = batch[i].derived.as_ref().and_then(|d| d.note.as_ref()) {
            notes.0.push(id);
            notes.1.push(pg_text(n).into_owned());
        }
    }
    if !notes.0.is_empty() {
        exec(tx, INSERT_NOTES, &[&notes.0, &notes.1]).await?;
    }
    Ok(())
}

/// A batch's buckets of one rollup table by series id, sorted by series and bucket (so two
/// transactions upserting the same rows lock them in the same order), as columns.
#[derive(Default)]
struct RollupRows {
    series: Vec<i32>,
    bucket: Vec<DateTime<Utc>>,
    count: Vec<i64>,
    min: Vec<f64>,
    max: Vec<f64>,
    sum: Vec<f64>,
    last: Vec<f64>,
    last_ts: Vec<DateTime<Utc>>,
}

/// Both rollup tables' rows of a batch (`rollup::aggregate`), in `WIDTHS` order.
fn rollup_rows(
    series: &Pending<'_>,
    buckets: [(
        crate::store::rollup::Width,
        Vec<(crate::store::rollup::Key<'_>, crate::store::rollup::Agg)>,
    ); 2],
) -> Result<[RollupRows; 2], SeriesError> {
    let mut out: [RollupRows; 2] = Default::default();
    for ((_, aggs), rows) in buckets.into_iter().zip(&mut out) {
        let ids = series.ids_of(aggs.iter().map(|(k, _)| (k.topic, k.device, k.field)))?;
        let mut keyed: Vec<(i32, crate::store::rollup::Agg, DateTime<Utc>)> = ids
            .into_iter()
            .zip(aggs)
            .map(|(id, (k, a))| (id, a, k.bucket))
            .collect();
        keyed.sort_unstable_by_key(|(id, _, bucket)| (*id, *bucket));
        for (id, a, bucket) in keyed {
            rows.series.push(id);
            rows.bucket.push(bucket);
            rows.count.push(a.count);
            rows.min.push(a.min);
            rows.max.push(a.max);
            rows.sum.push(a.sum);
            rows.last.push(a.last);
            rows.last_ts.push(a.last_ts);
        }
    }
    Ok(out)
}

/// Adds a batch's buckets to the rollup tables, one upsert per table, both sent at once.
async fn upsert_rollups(tx: &Transaction<'_>, tables: &[RollupRows; 2]) -> Result<(), tokio_postgres::Error> {
    // `aggregate` answers in `WIDTHS` order, as `ROLLUP_UPSERTS` is built.
    first_error(
        futures::future::join_all(
            tables
                .iter()
                .zip(ROLLUP_UPSERTS.iter())
                .filter(|(c, _)| !c.series.is_empty())
                .map(|(c, sql)| async move {
                    exec(
                        tx,
                        sql,
                        &[
                            &c.series, &c.bucket, &c.count, &c.min, &c.max, &c.sum, &c.last, &c.last_ts,
                        ],
                    )
                    .await
                    .map(drop)
                }),
        )
        .await,
    )
}

/// A batch's newest reading of each series, by series id and sorted by it, as columns.
#[derive(Default)]
struct LatestRows<'a> {
    series: Vec<i32>,
    value: Vec<Option<f64>>,
    text: Vec<Option<std::borrow::Cow<'a, str>>>,
    ts: Vec<DateTime<Utc>>,
}

fn latest_rows<'a>(
    series: &Pending<'_>,
    newest: Vec<crate::store::latest::Latest<'a>>,
) -> Result<LatestRows<'a>, SeriesError> {
    let ids = series.ids_of(newest.iter().map(|l| (l.topic, l.device, l.field)))?;
    let mut keyed: Vec<(i32, crate::store::latest::Latest<'a>)> = ids.into_iter().zip(newest).collect();
    keyed.sort_unstable_by_key(|(id, _)| *id);
    let mut rows = LatestRows::default();
    for (id, l) in keyed {
        rows.series.push(id);
        rows.value.push(l.value);
        rows.text.push(l.text.map(pg_text));
        rows.ts.push(l.ts);
    }
    Ok(rows)
}

/// Brings `series_latest` up to a batch's newest readings, one upsert.
async fn upsert_latest(tx: &Transaction<'_>, rows: &LatestRows<'_>) -> Result<(), tokio_postgres::Error> {
    if rows.series.is_empty() {
        return Ok(());
    }
    exec(
        tx,
        UPSERT_LATEST,
        &[&rows.series, &rows.value, &rows.text, &rows.ts],
    )
    .await?;
    Ok(())
}

/// One chunk of retention, in its own short transaction.
pub async fn retain(
    client: &mut Client,
    policy: &crate::config::RetentionPolicy,
    chunk: usize,
) -> Result<u64, tokio_postgres::Error> {
    let now = Utc::now();
    let cutoff = |d: std::time::Duration| now - chrono::Duration::from_std(d).unwrap_or_default();
    let chunk = chunk as i64;
    let tx = client.transaction().await?;
    let mut n = 0;
    if let Some(d) = policy.raw {
        let c = cutoff(d);
        // Any expired chunk, not the oldest first: `messages_received_at` is a BRIN index too.
        let gone = tx
            .query(
                "WITH gone AS (DELETE FROM messages
                               WHERE ctid = ANY(ARRAY(SELECT ctid FROM messages WHERE received_at < $1 LIMIT $2))
                               RETURNING topic)
                 SELECT topic, count(*) FROM gone GROUP BY topic",
                &[&c, &chunk],
            )
            .await?;
        n += uncount_topics(&tx, &gone).await?;
        n += tx
            .execute(
                "DELETE FROM rejected WHERE id IN (SELECT id FROM rejected WHERE received_at < $1 LIMIT $2)",
                &[&c, &chunk],
            )
            .await?;
    }
    if let Some(d) = policy.readings {
        let c = cutoff(d);
        // Any expired chunk, not the oldest first: `series_points_ts` is a BRIN index, which
        // finds the block ranges but cannot return rows in order without sorting them all.
        // The series stay: their ids are remembered (`series`), and a series is one row.
        n += tx
            .execute(
                "DELETE FROM series_points WHERE ctid = ANY(ARRAY(SELECT ctid FROM series_points WHERE ts < $1 LIMIT $2))",
                &[&c, &chunk],
            )
            .await?;
        // A series silent for longer than readings are kept has no current value either.
        n += tx
            .execute(
                "DELETE FROM series_latest WHERE ctid = ANY(ARRAY(SELECT ctid FROM series_latest WHERE ts < $1 LIMIT $2))",
                &[&c, &chunk],
            )
            .await?;
    }
    if let Some(d) = policy.rollups {
        let c = cutoff(d);
        for t in crate::store::rollup::WIDTHS.map(rollup_table) {
            n += tx
                .execute(
                    &format!(
                        "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE bucket < $1 LIMIT $2)"
                    ),
                    &[&c, &chunk],
                )
                .await?;
        }
    }
    tx.commit().await?;
    Ok(n)
}

/// Takes what retention deleted (topic, count) off `topics`, which counts the messages stored;
/// returns how many. The rows are locked in topic order first, the order the writers' upserts
/// take them in, so retention cannot deadlock with a batch.
async fn uncount_topics(
    tx: &tokio_postgres::Transaction<'_>,
    gone: &[Row],
) -> Result<u64, tokio_postgres::Error> {
    if gone.is_empty() {
        return Ok(0);
    }
    let topics: Vec<String> = gone.iter().map(|r| r.get(0)).collect();
    let counts: Vec<i64> = gone.iter().map(|r| r.get(1)).collect();
    tx.execute(
        "SELECT 1 FROM topics WHERE md5(topic) IN (SELECT md5(t) FROM unnest($1::text[]) t)
         ORDER BY topic COLLATE \"C\" FOR UPDATE",
        &[&topics],
    )
    .await?;
    tx.execute(
        "UPDATE topics SET message_count = greatest(topics.message_count - d.n, 0)
         FROM unnest($1::text[], $2::bigint[]) AS d(topic, n)
         WHERE md5(topics.topic) = md5(d.topic) AND topics.topic = d.topic",
        &[&topics, &counts],
    )
    .await?;
    Ok(counts.iter().sum::<i64>() as u64)
}

/// Adds statistics rows (counts add up, the max is kept, the mean recomputed).
pub async fn write_stats(
    client: &mut Client,
    rows: &HashMap<crate::pipeline::stats::StatsKey, crate::pipeline::stats::StatsRow>,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let stmt = tx
        .prepare(
            "INSERT INTO tidegate_stats AS s (minute, topic, received, committed, duplicates, rejected, lag_ms_mean, lag_ms_max, lag_ms_sum, reconnects)
             VALUES ($1, $2, $3, $4::bigint, $5, $6, CASE WHEN $4::bigint > 0 THEN $8::float8 / $4::bigint END,
                     CASE WHEN $4::bigint > 0 THEN $7::float8 END, $8::float8, $9)
             ON CONFLICT (minute, (md5(topic))) DO UPDATE SET
                received = s.received + excluded.received,
                committed = s.committed + excluded.committed,
                duplicates = s.duplicates + excluded.duplicates,
                rejected = s.rejected + excluded.rejected,
                lag_ms_sum = s.lag_ms_sum + excluded.lag_ms_sum,
                lag_ms_mean = CASE WHEN s.committed + excluded.committed > 0
                                   THEN (s.lag_ms_sum + excluded.lag_ms_sum) / (s.committed + excluded.committed) END,
                lag_ms_max = greatest(s.lag_ms_max, excluded.lag_ms_max),
                reconnects = s.reconnects + excluded.reconnects",
        )
        .await?;
    for ((minute, topic), r) in rows {
        let topic = pg_text(topic);
        tx.execute(
            &stmt,
            &[
                minute,
                &topic.as_ref(),
                &r.received,
                &r.committed,
                &r.duplicates,
                &r.rejected,
                &r.lag_ms_max,
                &r.lag_ms_sum,
                &r.reconnects,
            ],
        )
        .await?;
    }
    tx.commit().await
}

/// Rows of the mapping tables; a value that does not fit is recorded in `rejected`.
async fn write_mapped(
    tx: &Transaction<'_>,
    batch: &[Message],
    to_store: &[usize],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    use tokio_postgres::types::ToSql;

    use crate::{
        readings::mapping::{ColType, SqlValue},
        store::mapped,
    };
    let mut shapes: HashMap<String, HashMap<String, ColType>> = HashMap::new();
    for (&i, &id) in to_store.iter().zip(ids) {
        let m = &batch[i];
        let Some(d) = &m.derived else { continue };
        for (mapping, result) in &d.mapped {
            let t = mapping.table.quoted();
            if !shapes.contains_key(mapping.table.as_str()) {
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, message_id bigint NOT NULL,
                                                     ts timestamptz NOT NULL, topic text NOT NULL, device text);
                     CREATE INDEX IF NOT EXISTS \"{}_ts\" ON {t} (ts);",
                    mapping.table.as_str()
                ))
                .await?;
                let rows = tx
                    .query(
                        "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1",
                        &[&mapping.table.as_str()],
                    )
                    .await?;
                let cols = rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), mapped::col_type(&r.get::<_, String>(1))))
                    .collect();
                shapes.insert(mapping.table.as_str().to_string(), cols);
            }
            let shape = shapes.get_mut(mapping.table.as_str()).expect("loaded above");
            match result.clone().and_then(|row| mapped::plan(mapping, &row, shape)) {
                Ok((add, values)) => {
                    for (name, ty) in add {
                        tx.batch_execute(&format!(
                            "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {} {}",
                            name.quoted(),
                            ty.postgres()
                        ))
                        .await?;
                    }
                    let topic = pg_text(&m.topic).into_owned();
                    let device = d.device.as_deref().map(|x| pg_text(x).into_owned());
                    let mut params: Vec<Box<dyn ToSql + Sync + Send>> =
                        vec![Box::new(id), Box::new(d.ts), Box::new(topic), Box::new(device)];
                    let mut names = Vec::new();
                    for (name, v) in values {
                        let ty = shape.get(name.as_str()).copied().unwrap_or(ColType::Text);
                        params.push(match (v, ty) {
                            (SqlValue::Null, ColType::Real) => Box::new(None::<f64>),
                            (SqlValue::Null, ColType::Integer) => Box::new(None::<i64>),
                            (SqlValue::Null, ColType::Boolean) => Box::new(None::<bool>),
                            (SqlValue::Null, ColType::Timestamp) => Box::new(None::<DateTime<Utc>>),
                            (SqlValue::Null, ColType::Text) => Box::new(None::<String>),
                            (SqlValue::Integer(i), ColType::Real) => Box::new(i as f64),
                            (SqlValue::Real(f), ColType::Integer) => Box::new(f as i64),
                            (SqlValue::Real(f), _) => Box::new(f),
                            (SqlValue::Integer(i), _) => Box::new(i),
                            (SqlValue::Text(s), _) => Box::new(pg_text(&s).into_owned()),
                            (SqlValue::Bool(b), _) => Box::new(b),
                            (SqlValue::Time(t), _) => Box::new(t),
                        });
                        names.push(name.quoted());
                    }
                    let marks: Vec<String> = (1..=params.len()).map(|i| format!("${i}")).collect();
                    let cols = if names.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", names.join(", "))
                    };
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
                    tx.execute(
                        &format!(
                            "INSERT INTO {t} (message_id, ts, topic, device{cols}) VALUES ({})",
                            marks.join(", ")
                        ),
                        &refs,
                    )
                    .await?;
                }
                Err(reason) => {
                    tx.execute(
                        "INSERT INTO rejected (received_at, topic, size, qos, reason, source) VALUES ($1, $2, $3, $4, $5, 'mapping')",
                        &[&m.received_at, &pg_text(&m.topic).as_ref(), &(m.size as i64), &i16::from(m.qos), &pg_text(&reason).as_ref()],
                    )
                    .await?;
                }
            }
        }
    }
    Ok(())
}
