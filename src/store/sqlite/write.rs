//! One batch, one transaction: messages, rejections, readings, the marks that recognise
//! redeliveries (the rule itself is `store::dedup`), topic counts and latest values, then the
//! rollups (`rollups`) and mapped tables (`mapped`). It must never commit part of a batch.

use std::{collections::HashSet, rc::Rc};

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, TransactionBehavior};

use super::{mapped::write_mapped, rollups::upsert_rollups, rows, series::Series};
use crate::{
    message::Message,
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
            let source = m.origin.source();
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
        let mut derived = Vec::with_capacity(message_rows.len());
        for (id, row) in (first..).zip(&message_rows) {
            outcomes[row.at] = Outcome::Stored { id };
            if row.m.derived.is_some() {
                derived.push((row.m, id, row.received_at));
            }
        }
        write_marks(
            &tx,
            delivery_marks::new_rows(batch.iter().copied(), &verdicts, &hashes),
        )?;
        let mut put_last =
            tx.prepare_cached("INSERT OR REPLACE INTO retained_marks (topic, hash) VALUES (?1, ?2)")?;
        for (topic, hash) in &marks.last {
            put_last.execute(params![topic, &hash[..]])?;
        }
        let mut upsert_topic = tx.prepare_cached(
            "INSERT INTO topics (topic, message_count, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (topic) DO UPDATE SET message_count = message_count + excluded.message_count,
                                               last_seen = max(last_seen, excluded.last_seen)",
        )?;
        for (topic, (count, first, last)) in topics.0 {
            upsert_topic.execute(params![topic, count, first, last])?;
        }
        write_derived(&tx, series, &derived)?;
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Writes what was derived from stored messages, each given with its id and its receive time as
/// stored: readings and notes, mapping rows, latest values and rollups. A batch's transaction
/// calls it for the messages it stores; `backfill` for messages stored before.
pub(super) fn write_derived(
    tx: &rusqlite::Transaction<'_>,
    series: &mut Series,
    messages: &[(&Message, i64, &Rc<str>)],
) -> rusqlite::Result<()> {
    let mut insert_note =
        tx.prepare_cached("INSERT OR REPLACE INTO reading_notes (message_id, note) VALUES (?1, ?2)")?;
    let mut reading_rows = Vec::new();
    let mut stored = Vec::with_capacity(messages.len());
    for &(m, id, received_at) in messages {
        let Some(d) = &m.derived else { continue };
        let ts: Rc<str> = if d.ts.timestamp_millis() == m.received_at.timestamp_millis() {
            received_at.clone()
        } else {
            crate::time::to_sql_text(d.ts).into()
        };
        for r in &d.readings {
            let series = series.id(tx, &m.topic, d.device.as_deref(), &r.field)?;
            reading_rows.push((id, ts.clone(), series, d, r));
        }
        if let Some(note) = &d.note {
            insert_note.execute(params![id, note])?;
        }
        stored.push((m, id));
    }
    rows::insert(
        tx,
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
    write_mapped(tx, &stored)?;
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
    upsert_rollups(tx, folded.buckets)
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
