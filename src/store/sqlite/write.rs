//! One batch, one transaction: messages, rejections and the marks that recognise redeliveries
//! (the rule itself is `store::dedup`). It must never commit part of a batch.

use std::{collections::HashSet, rc::Rc};

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, TransactionBehavior};

use super::{rows, series::Series};
use crate::{
    message::{Message, Origin},
    store::{
        dedup::{self, Hash, Marks, Verdict},
        delivery_marks, rollup, Outcome,
    },
};

/// Marks read and written inside the write transaction.
struct SqliteMarks<'c> {
    /// Only for the packet ids redelivered in this batch, read up front.
    delivery: delivery_marks::Lookup,
    get_last: CachedStatement<'c>,
    /// Last message per topic in this batch, written once per topic at the end.
    last: foldhash::HashMap<String, Hash>,
}

fn to_hash(v: Option<Vec<u8>>) -> Option<Hash> {
    v.and_then(|b| b.try_into().ok())
}

impl Marks for SqliteMarks<'_> {
    type Error = rusqlite::Error;
    fn delivery(&mut self, session: &str, pkid: u16) -> rusqlite::Result<Option<Hash>> {
        Ok(self.delivery.get(session, pkid))
    }
    fn last_stored(&mut self, topic: &str) -> rusqlite::Result<Option<Hash>> {
        if let Some(h) = self.last.get(topic) {
            return Ok(Some(*h));
        }
        Ok(to_hash(
            self.get_last.query_row(params![topic], |r| r.get(0)).optional()?,
        ))
    }
    fn set_last_stored(&mut self, topic: &str, hash: Hash) -> rusqlite::Result<()> {
        // Every stored message lands here: no allocation once a topic is known.
        match self.last.get_mut(topic) {
            Some(h) => *h = hash,
            None => {
                self.last.insert(topic.to_string(), hash);
            }
        }
        Ok(())
    }
}

/// The stored marks of the sessions `redelivered` names, for those packet ids only.
fn read_marks(
    tx: &Connection,
    redelivered: &HashSet<(&str, u16)>,
) -> rusqlite::Result<delivery_marks::Lookup> {
    let mut lookup = delivery_marks::Lookup::default();
    if redelivered.is_empty() {
        return Ok(lookup);
    }
    // Oldest first, so a packet id's latest mark is the one left.
    let mut st = tx.prepare_cached("SELECT marks FROM delivery_batches WHERE session = ?1 ORDER BY total")?;
    for session in delivery_marks::sessions(redelivered) {
        let mut rows = st.query([session])?;
        while let Some(r) = rows.next()? {
            lookup.add_row(session, r.get_ref(0)?.as_blob()?, redelivered);
        }
    }
    Ok(lookup)
}

/// Appends one row of marks per session and drops that session's rows no redelivery can
/// refer to any more.
fn write_marks(tx: &Connection, rows: Vec<(&str, Vec<(u16, Hash)>)>) -> rusqlite::Result<()> {
    for (session, marks) in rows {
        let prev: i64 = tx
            .prepare_cached("SELECT coalesce(max(total), 0) FROM delivery_batches WHERE session = ?1")?
            .query_row([session], |r| r.get(0))?;
        let total = prev + marks.len() as i64;
        tx.prepare_cached("INSERT INTO delivery_batches (session, total, n, marks) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![
                session,
                total,
                marks.len() as i64,
                delivery_marks::pack(&marks)
            ])?;
        tx.prepare_cached("DELETE FROM delivery_batches WHERE session = ?1 AND total <= ?2")?
            .execute(params![session, total - delivery_marks::KEPT])?;
    }
    Ok(())
}

/// The columns tidegate writes of a message, in the order they are bound.
const MESSAGE_COLUMNS: &str =
    "received_at, topic, payload, payload_raw, payload_size, qos, retain, content_type, user_properties, source";
/// The same for a reading.
const READING_COLUMNS: &str = "message_id, series_id, ts, value, text, ts_source";

/// A message to store, with what its row holds beyond the message itself.
struct MessageRow<'a> {
    /// Where its outcome is in the batch's.
    at: usize,
    m: &'a Message,
    received_at: &'a Rc<str>,
    text: std::borrow::Cow<'a, str>,
    raw: Option<&'a [u8]>,
    user_properties: Option<String>,
    source: &'static str,
}

/// Writes `batches` in one transaction, in order, as if they were one batch, and returns their
/// messages' outcomes in the same order. `series` remembers the series ids across batches.
pub fn write_batch(
    conn: &mut Connection,
    series: &mut Series,
    batches: &[&[Message]],
) -> rusqlite::Result<Vec<Outcome>> {
    let batch: Vec<&Message> = batches.iter().flat_map(|b| b.iter()).collect();
    let result = write_in_transaction(conn, series, &batch);
    series.settle(result.is_ok());
    result
}

fn write_in_transaction(
    conn: &mut Connection,
    series: &mut Series,
    batch: &[&Message],
) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut topics = TopicTally::default();
    let mut stored: Vec<(&Message, i64)> = Vec::new();
    // A batch's messages mostly share their millisecond: each distinct one is formatted once.
    let mut last: Option<(i64, Rc<str>)> = None;
    let received: Vec<Rc<str>> = batch
        .iter()
        .map(|m| {
            let ms = m.received_at.timestamp_millis();
            match &last {
                Some((at, text)) if *at == ms => text.clone(),
                _ => {
                    let text: Rc<str> = crate::time::to_sql_text(m.received_at).into();
                    last = Some((ms, text.clone()));
                    text
                }
            }
        })
        .collect();
    {
        let mut insert_rejected = tx.prepare_cached(
            "INSERT INTO rejected (received_at, topic, size, qos, reason, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut insert_note =
            tx.prepare_cached("INSERT OR REPLACE INTO reading_notes (message_id, note) VALUES (?1, ?2)")?;
        let redelivered = delivery_marks::redelivered(batch.iter().copied());
        let mut marks = SqliteMarks {
            delivery: read_marks(&tx, &redelivered)?,
            get_last: tx.prepare_cached("SELECT hash FROM retained_marks WHERE topic = ?1")?,
            last: Default::default(),
        };

        let mut message_rows = Vec::with_capacity(batch.len());
        let mut verdicts = Vec::with_capacity(batch.len());
        let mut hashes = Vec::with_capacity(batch.len());
        for (&m, received_at) in batch.iter().zip(&received) {
            let hash = m.content_hash();
            let source = match m.origin {
                Origin::Mqtt { .. } => "mqtt",
                Origin::Http => "http",
            };
            let verdict = dedup::verdict(m, hash, &mut marks)?;
            marks.delivery.decided(m, hash, verdict, &redelivered);
            verdicts.push(verdict);
            hashes.push(hash);
            let outcome = match verdict {
                Verdict::Duplicate => Outcome::Duplicate,
                Verdict::Reject => {
                    let reason = m.rejection.as_deref().unwrap_or("rejected");
                    insert_rejected.execute(params![
                        received_at,
                        m.topic,
                        m.size as i64,
                        m.qos,
                        reason,
                        source
                    ])?;
                    Outcome::Rejected
                }
                Verdict::Store => {
                    // Validated once: the display text, and the exact bytes only when they differ.
                    let (text, raw) = match m.payload_text() {
                        Some(t) => (std::borrow::Cow::Borrowed(t), None),
                        None => (m.payload_lossy(), Some(&m.payload[..])),
                    };
                    topics.add(&m.topic, received_at);
                    message_rows.push(MessageRow {
                        at: outcomes.len(),
                        m,
                        received_at,
                        text,
                        raw,
                        user_properties: m.user_properties_json(),
                        source,
                    });
                    // The id is known once the rows are inserted, below.
                    Outcome::Stored { id: 0 }
                }
            };
            outcomes.push(outcome);
        }
        let first = insert_messages(&tx, &message_rows)?;
        let mut reading_rows = Vec::new();
        for (id, row) in (first..).zip(&message_rows) {
            outcomes[row.at] = Outcome::Stored { id };
            let m = row.m;
            let Some(d) = &m.derived else { continue };
            let ts: Rc<str> = if d.ts.timestamp_millis() == m.received_at.timestamp_millis() {
                row.received_at.clone()
            } else {
                crate::time::to_sql_text(d.ts).into()
            };
            for r in &d.readings {
                let series = series.id(&tx, &m.topic, d.device.as_deref(), &r.field)?;
                reading_rows.push((id, ts.clone(), series, d, r));
            }
            if let Some(note) = &d.note {
                insert_note.execute(params![id, note])?;
            }
            stored.push((m, id));
        }
        rows::insert(
            &tx,
            "series_points",
            READING_COLUMNS,
            reading_rows.len(),
            |st, i, p| {
                let (id, ts, series, d, r) = &reading_rows[i];
                let (value, text) = match &r.value {
                    crate::readings::Value::Number(v) => (Some(*v), None),
                    crate::readings::Value::Text(t) => (None, Some(t.as_str())),
                };
                st.raw_bind_parameter(p, id)?;
                st.raw_bind_parameter(p + 1, series)?;
                st.raw_bind_parameter(p + 2, &**ts)?;
                st.raw_bind_parameter(p + 3, value)?;
                st.raw_bind_parameter(p + 4, text)?;
                st.raw_bind_parameter(p + 5, d.ts_source.as_str())
            },
        )?;
        write_marks(
            &tx,
            delivery_marks::new_rows(batch.iter().copied(), &verdicts, &hashes),
        )?;
        let mut put_last =
            tx.prepare_cached("INSERT OR REPLACE INTO retained_marks (topic, hash) VALUES (?1, ?2)")?;
        for (topic, hash) in &marks.last {
            put_last.execute(params![topic, &hash[..]])?;
        }
        write_mapped(&tx, &stored)?;
        let mut upsert_topic = tx.prepare_cached(
            "INSERT INTO topics (topic, message_count, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (topic) DO UPDATE SET message_count = message_count + excluded.message_count,
                                               last_seen = max(last_seen, excluded.last_seen)",
        )?;
        for (topic, (count, first, last)) in topics.0 {
            upsert_topic.execute(params![topic, count, first, last])?;
        }
        let mut upsert_latest = tx.prepare_cached(
            "INSERT INTO readings_latest (topic, device, field, value, text, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (topic, device, field) DO UPDATE SET value = excluded.value, text = excluded.text, ts = excluded.ts
             WHERE excluded.ts >= readings_latest.ts",
        )?;
        let folded = rollup::aggregate(stored.iter().map(|(m, _)| *m));
        for l in folded.latest {
            upsert_latest.execute(params![
                l.topic,
                l.device,
                l.field,
                l.value,
                l.text,
                crate::time::to_sql_text(l.ts)
            ])?;
        }
        for (width, aggs) in folded.buckets {
            if aggs.is_empty() {
                continue;
            }
            let open = close_buckets(&tx, width, crate::time::now())?;
            let t = width.table();
            let upsert = |part: &str| {
                format!(
                    "INSERT INTO {t}_{part} ({ROLLUP_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8 / ?5, ?9, ?10)
                     ON CONFLICT (topic, device, field, bucket) DO UPDATE SET {MERGE}"
                )
            };
            let mut to_open = tx.prepare_cached(&upsert("open"))?;
            let mut to_closed = tx.prepare_cached(&upsert("closed"))?;
            for (k, a) in aggs {
                let bucket = crate::time::to_sql_text(k.bucket);
                let up = if open.holds(&bucket) {
                    &mut to_open
                } else {
                    &mut to_closed
                };
                up.execute(params![
                    k.topic,
                    k.device,
                    k.field,
                    bucket,
                    a.count,
                    a.min,
                    a.max,
                    a.sum,
                    a.last,
                    crate::time::to_sql_text(a.last_ts)
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Inserts the batch's messages in order. Returns the first one's id; the others follow it by
/// one.
fn insert_messages(tx: &Connection, messages: &[MessageRow<'_>]) -> rusqlite::Result<i64> {
    let n = rows::insert(tx, "messages", MESSAGE_COLUMNS, messages.len(), |st, i, p| {
        let r = &messages[i];
        st.raw_bind_parameter(p, &**r.received_at)?;
        st.raw_bind_parameter(p + 1, &r.m.topic)?;
        st.raw_bind_parameter(p + 2, r.text.as_ref())?;
        st.raw_bind_parameter(p + 3, r.raw)?;
        st.raw_bind_parameter(p + 4, r.m.size as i64)?;
        st.raw_bind_parameter(p + 5, r.m.qos)?;
        st.raw_bind_parameter(p + 6, r.m.retain)?;
        st.raw_bind_parameter(p + 7, &r.m.content_type)?;
        st.raw_bind_parameter(p + 8, &r.user_properties)?;
        st.raw_bind_parameter(p + 9, r.source)
    })?;
    if n != messages.len() {
        return Err(rusqlite::Error::StatementChangedRows(n));
    }
    // `id` is an INTEGER PRIMARY KEY without AUTOINCREMENT, and the immediate transaction holds
    // the write lock: each row took the largest id so far plus one, so the batch's ids are the
    // `n` ending at the last one.
    Ok(tx.last_insert_rowid() - (n as i64 - 1))
}

/// A rollup row's columns, in both parts of its table.
const ROLLUP_COLUMNS: &str = "topic, device, field, bucket, count, min, max, sum, avg, last, last_ts";

/// How a rollup row already stored (`excluded` being the one arriving) takes in another.
const MERGE: &str = "count = count + excluded.count,
                    min = min(min, excluded.min),
                    max = max(max, excluded.max),
                    sum = sum + excluded.sum,
                    avg = (sum + excluded.sum) / (count + excluded.count),
                    last = CASE WHEN excluded.last_ts >= last_ts THEN excluded.last ELSE last END,
                    last_ts = max(last_ts, excluded.last_ts)";

/// Which buckets of a rollup table are written to its open part (schema 10).
pub(super) struct OpenBuckets {
    /// The bucket `now` falls in.
    current: String,
    /// The latest bucket of the closed part, which may be past `current` if the clock went back.
    last_closed: Option<String>,
}

impl OpenBuckets {
    /// A bucket goes to the open part if it is not over yet and the closed part holds nothing
    /// as late: then no bucket is ever in both parts.
    pub(super) fn holds(&self, bucket: &str) -> bool {
        bucket >= self.current.as_str() && self.last_closed.as_deref().is_none_or(|c| bucket > c)
    }
}

/// Moves the rows of buckets that are over (before the one `now` falls in) from the open part of
/// a rollup table to the closed part, merging each into the closed row of its bucket if late
/// readings made one. Most batches find nothing to move; the first of each minute moves a row
/// per series, once.
pub(super) fn close_buckets(
    tx: &Connection,
    width: rollup::Width,
    now: chrono::DateTime<chrono::Utc>,
) -> rusqlite::Result<OpenBuckets> {
    let t = width.table();
    let current = crate::time::to_sql_text(width.floor(now));
    tx.prepare_cached(&format!(
        "INSERT INTO {t}_closed ({ROLLUP_COLUMNS}) SELECT {ROLLUP_COLUMNS} FROM {t}_open WHERE bucket < ?1
         ON CONFLICT (topic, device, field, bucket) DO UPDATE SET {MERGE}"
    ))?
    .execute([&current])?;
    tx.prepare_cached(&format!("DELETE FROM {t}_open WHERE bucket < ?1"))?
        .execute([&current])?;
    let last_closed = tx
        .prepare_cached(&format!("SELECT max(bucket) FROM {t}_closed"))?
        .query_row([], |r| r.get(0))?;
    Ok(OpenBuckets { current, last_closed })
}

/// Per-topic counts of one batch, folded into `topics` with one upsert per topic.
#[derive(Default)]
struct TopicTally<'a>(foldhash::HashMap<&'a str, (i64, &'a str, &'a str)>);

impl<'a> TopicTally<'a> {
    fn add(&mut self, topic: &'a str, at: &'a str) {
        let e = self.0.entry(topic).or_insert((0, at, at));
        e.0 += 1;
        e.1 = e.1.min(at);
        e.2 = e.2.max(at);
    }
}

/// One short transaction deleting at most `chunk` rows per table older than the policy allows.
pub fn retain(
    conn: &mut Connection,
    policy: &crate::config::RetentionPolicy,
    chunk: usize,
) -> rusqlite::Result<u64> {
    let now = crate::time::now();
    let cutoff = |d: std::time::Duration| {
        crate::time::to_sql_text(now - chrono::Duration::from_std(d).unwrap_or_default())
    };
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut n = 0u64;
    if let Some(d) = policy.raw {
        let c = cutoff(d);
        // `topics` counts the messages stored, so what retention deletes comes off it too.
        let mut gone: std::collections::HashMap<String, i64> = Default::default();
        {
            let mut delete = tx.prepare(&format!(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE received_at < ?1 ORDER BY received_at LIMIT {chunk})
                 RETURNING topic"
            ))?;
            let mut rows = delete.query([&c])?;
            while let Some(r) = rows.next()? {
                *gone.entry(r.get(0)?).or_default() += 1;
            }
        }
        let mut uncount = tx.prepare_cached(
            "UPDATE topics SET message_count = max(message_count - ?2, 0) WHERE topic = ?1",
        )?;
        for (topic, k) in &gone {
            uncount.execute(params![topic, k])?;
            n += *k as u64;
        }
        drop(uncount);
        n += tx.execute(
            &format!("DELETE FROM rejected WHERE id IN (SELECT id FROM rejected WHERE received_at < ?1 LIMIT {chunk})"),
            [&c],
        )? as u64;
        n += tx.execute(
            &format!(
                "DELETE FROM tidegate_stats WHERE (minute, topic) IN
                 (SELECT minute, topic FROM tidegate_stats WHERE minute < ?1 LIMIT {chunk})"
            ),
            [&c],
        )? as u64;
    }
    if let Some(d) = policy.readings {
        let c = cutoff(d);
        n += tx.execute(
            &format!("DELETE FROM series_points WHERE id IN (SELECT id FROM series_points WHERE ts < ?1 ORDER BY ts LIMIT {chunk})"),
            [&c],
        )? as u64;
        // A series silent for longer than readings are kept has no current value either.
        n += tx.execute(
            &format!(
                "DELETE FROM readings_latest WHERE (topic, device, field) IN
                 (SELECT topic, device, field FROM readings_latest WHERE ts < ?1 LIMIT {chunk})"
            ),
            [&c],
        )? as u64;
    }
    if let Some(d) = policy.rollups {
        let c = cutoff(d);
        for t in [
            "readings_1m_closed",
            "readings_1m_open",
            "readings_1h_closed",
            "readings_1h_open",
        ] {
            n += tx.execute(
                &format!(
                    "DELETE FROM {t} WHERE (topic, device, field, bucket) IN
                     (SELECT topic, device, field, bucket FROM {t} WHERE bucket < ?1 LIMIT {chunk})"
                ),
                [&c],
            )? as u64;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Adds statistics rows (counts add up, the max is kept, the mean recomputed).
pub fn write_stats(
    conn: &mut Connection,
    rows: &std::collections::HashMap<crate::pipeline::stats::StatsKey, crate::pipeline::stats::StatsRow>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut up = tx.prepare_cached(
            "INSERT INTO tidegate_stats (minute, topic, received, committed, duplicates, rejected, lag_ms_mean, lag_ms_max, lag_ms_sum, reconnects)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, CASE WHEN ?4 > 0 THEN ?8 / ?4 END, CASE WHEN ?4 > 0 THEN ?7 END, ?8, ?9)
             ON CONFLICT (minute, topic) DO UPDATE SET
                received = received + excluded.received,
                committed = committed + excluded.committed,
                duplicates = duplicates + excluded.duplicates,
                rejected = rejected + excluded.rejected,
                lag_ms_sum = lag_ms_sum + excluded.lag_ms_sum,
                lag_ms_mean = CASE WHEN committed + excluded.committed > 0
                                   THEN (lag_ms_sum + excluded.lag_ms_sum) / (committed + excluded.committed) END,
                lag_ms_max = max(ifnull(lag_ms_max, 0), ifnull(excluded.lag_ms_max, 0)),
                reconnects = reconnects + excluded.reconnects",
        )?;
        for ((minute, topic), r) in rows {
            up.execute(params![
                crate::time::to_sql_text(*minute),
                topic,
                r.received,
                r.committed,
                r.duplicates,
                r.rejected,
                r.lag_ms_max,
                r.lag_ms_sum,
                r.reconnects
            ])?;
        }
    }
    tx.commit()
}

/// Rows of the mapping tables for the stored messages; a value that does not fit its column is
/// recorded in `rejected` (the message itself is already stored).
fn write_mapped(tx: &rusqlite::Transaction<'_>, stored: &[(&Message, i64)]) -> rusqlite::Result<()> {
    use crate::{readings::mapping::SqlValue, store::mapped};
    use rusqlite::types::Value;
    let mut shapes: std::collections::HashMap<
        String,
        std::collections::HashMap<String, crate::readings::mapping::ColType>,
    > = Default::default();
    for &(m, id) in stored {
        let Some(d) = &m.derived else { continue };
        for (mapping, result) in &d.mapped {
            let t = mapping.table.quoted();
            if !shapes.contains_key(mapping.table.as_str()) {
                let ix = format!("\"{}_ts\"", mapping.table.as_str());
                tx.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, ts DATETIME NOT NULL, topic TEXT NOT NULL, device TEXT);
                     CREATE INDEX IF NOT EXISTS {ix} ON {t} (ts);"
                ))?;
                let mut st = tx.prepare(&format!(
                    "SELECT name, type FROM pragma_table_info('{}')",
                    mapping.table.as_str()
                ))?;
                let cols = st
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, mapped::col_type(&r.get::<_, String>(1)?)))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                shapes.insert(mapping.table.as_str().to_string(), cols);
            }
            let shape = shapes.get_mut(mapping.table.as_str()).expect("loaded above");
            let planned = result.clone().and_then(|row| mapped::plan(mapping, &row, shape));
            match planned {
                Ok((add, values)) => {
                    for (name, ty) in add {
                        tx.execute_batch(&format!(
                            "ALTER TABLE {t} ADD COLUMN {} {}",
                            name.quoted(),
                            ty.sqlite()
                        ))?;
                    }
                    let names: Vec<String> = values.iter().map(|(n, _)| n.quoted()).collect();
                    let mut args: Vec<Value> = vec![
                        Value::Integer(id),
                        Value::Text(crate::time::to_sql_text(d.ts)),
                        Value::Text(m.topic.clone()),
                        d.device.clone().map(Value::Text).unwrap_or(Value::Null),
                    ];
                    for (_, v) in &values {
                        args.push(match v {
                            SqlValue::Null => Value::Null,
                            SqlValue::Real(f) => Value::Real(*f),
                            SqlValue::Integer(i) => Value::Integer(*i),
                            SqlValue::Text(s) => Value::Text(s.clone()),
                            SqlValue::Bool(b) => Value::Integer(i64::from(*b)),
                            SqlValue::Time(t) => Value::Text(crate::time::to_sql_text(*t)),
                        });
                    }
                    let marks: Vec<String> = (1..=args.len()).map(|i| format!("?{i}")).collect();
                    let cols = if names.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", names.join(", "))
                    };
                    tx.execute(
                        &format!(
                            "INSERT INTO {t} (message_id, ts, topic, device{cols}) VALUES ({})",
                            marks.join(", ")
                        ),
                        rusqlite::params_from_iter(args),
                    )?;
                }
                Err(reason) => {
                    tx.execute(
                        "INSERT INTO rejected (received_at, topic, size, qos, reason, source) VALUES (?1, ?2, ?3, ?4, ?5, 'mapping')",
                        params![crate::time::to_sql_text(m.received_at), m.topic, m.size as i64, m.qos, reason],
                    )?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rollup::Width;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    fn rows(c: &Connection, table: &str) -> String {
        c.query_row(
            &format!(
                "SELECT ifnull(group_concat(bucket || ' ' || count || ' ' || sum || ' ' || last, '; '), '')
                 FROM (SELECT * FROM {table} ORDER BY bucket)"
            ),
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    /// When its minute is over, an open bucket moves to the closed part, merged into the closed
    /// row a late reading made; a clock set back never sends a bucket to the open part while
    /// the closed part holds it or a later one.
    #[test]
    fn buckets_that_are_over_move_to_the_closed_part_and_stay_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("r.db")).unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        c.execute_batch(
            "INSERT INTO readings_1m_open VALUES ('t', '', 'x', '2026-01-01 00:01:00.000', 2, 1, 3, 4, 2, 3, '2026-01-01 00:01:30.000');
             INSERT INTO readings_1m_open VALUES ('t', '', 'x', '2026-01-01 00:02:00.000', 1, 5, 5, 5, 5, 5, '2026-01-01 00:02:10.000');
             INSERT INTO readings_1m_closed VALUES ('t', '', 'x', '2026-01-01 00:01:00.000', 1, 6, 6, 6, 6, 6, '2026-01-01 00:01:59.000');",
        )
        .unwrap();
        let open = close_buckets(&c, Width::Minute, at("2026-01-01T00:02:30Z")).unwrap();
        assert_eq!(
            rows(&c, "readings_1m_closed"),
            "2026-01-01 00:01:00.000 3 10.0 6.0"
        );
        assert_eq!(rows(&c, "readings_1m_open"), "2026-01-01 00:02:00.000 1 5.0 5.0");
        assert!(open.holds("2026-01-01 00:02:00.000"));
        assert!(!open.holds("2026-01-01 00:01:00.000"));
        let later = close_buckets(&c, Width::Minute, at("2026-01-01T00:05:00Z")).unwrap();
        assert_eq!(rows(&c, "readings_1m_open"), "");
        assert!(!later.holds("2026-01-01 00:02:00.000") && later.holds("2026-01-01 00:05:00.000"));
        // The clock goes back to 00:01: what the closed part holds stays closed.
        let back = close_buckets(&c, Width::Minute, at("2026-01-01T00:01:10Z")).unwrap();
        assert!(!back.holds("2026-01-01 00:02:00.000"));
        assert!(back.holds("2026-01-01 00:02:01.000") && back.holds("2026-01-01 00:03:00.000"));
        let both: i64 = c
            .query_row(
                "SELECT count(*) FROM readings_1m GROUP BY topic, device, field, bucket ORDER BY 1 DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(both, 1, "no bucket in both parts");
    }
}
