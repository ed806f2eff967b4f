//! One batch, one transaction, a fixed number of statements whatever its size: the bulk rows
//! (messages, readings) go in with binary `COPY`, the upserts through `UNNEST` (one prepared
//! statement for any batch size). Keys are upserted in sorted order, so two instances writing
//! the same topics lock rows in the same order and cannot deadlock. Dedup follows
//! `store::dedup`, with the marks this batch needs read up front.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::{ClientWrapper, Transaction};
use tokio_postgres::{types::ToSql, Client, Row};

use super::{
    commit_token::{claim, CLAIM_TOKEN},
    copy::{copy_messages, copy_readings, COPY_MESSAGES, COPY_READINGS},
    latest::{latest_rows, upsert_latest, UPSERT_LATEST},
    mapped::write_mapped,
    marks::{
        append_marks, hash_of, lock_sessions, upsert_retained, Prefetched, APPEND_MARKS, LOCK_SESSIONS,
        READ_DELIVERY, READ_RETAINED, UPSERT_RETAINED,
    },
    pg_text,
    rollups::{rollup_rows, upsert_rollups, ROLLUP_UPSERTS},
    series::{self, Pending, SeriesError},
    turn::{Attempt, Overtaken},
};
use crate::{
    message::{Message, Origin},
    store::{
        dedup::{self, Hash, Verdict},
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

/// Runs one of the fixed statements, prepared once per connection, so the server does not parse
/// and plan it again for every batch (at low rates every message is a batch of its own).
pub(super) async fn exec(
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

/// One row holding the ids as an array: a row per id cost tidegate a parsed row each (about a
/// thousand instructions a message). Sorted by the caller; sorting here cost the server more.
const NEXT_IDS: &str = "SELECT array_agg(nextval($2::text::regclass)) FROM generate_series(1, $1::int)";
const INSERT_REJECTED: &str = "INSERT INTO rejected (received_at, topic, size, qos, reason, source)
     SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::bigint[], $4::smallint[], $5::text[], $6::text[])";
const INSERT_NOTES: &str =
    "INSERT INTO reading_notes (message_id, note) SELECT * FROM unnest($1::bigint[], $2::text[])
     ON CONFLICT (message_id) DO UPDATE SET note = excluded.note";
const UPSERT_TOPICS: &str = "INSERT INTO topics (topic, message_count, first_seen, last_seen)
     SELECT * FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::timestamptz[])
     ON CONFLICT ((md5(topic))) DO UPDATE SET message_count = topics.message_count + excluded.message_count,
         first_seen = least(topics.first_seen, excluded.first_seen),
         last_seen = greatest(topics.last_seen, excluded.last_seen)";

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
pub(super) fn first_error(
    done: impl IntoIterator<Item = Result<(), tokio_postgres::Error>>,
) -> Result<(), tokio_postgres::Error> {
    done.into_iter().collect()
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
    let source: Vec<&str> = rejected.iter().map(|m| m.origin.source()).collect();
    exec(tx, INSERT_REJECTED, &[&at, &topic, &size, &qos, &reason, &source]).await?;
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

/// The series id of every reading of the stored messages, in order, finding or creating in
/// `tx` the series no committed batch has.
///
/// A batch that brings a new series first waits for the batch before it (`turn`) to commit.
/// That one may be adding the same series: if this one got there first, its row would hold
/// that batch's insert while it waited for that batch's commit, and neither would ever commit.
/// New series are rare after the first batches, so this wait is too.
pub(super) async fn reading_series(
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

/// Notes on stored payloads that gave no readings.
pub(super) async fn insert_notes(
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
