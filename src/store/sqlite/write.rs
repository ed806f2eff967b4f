//! One batch, one transaction: messages, rejections and the marks that recognise redeliveries
//! (the rule itself is `store::dedup`). It must never commit part of a batch.

use rusqlite::{params, CachedStatement, Connection, OptionalExtension, TransactionBehavior};

use crate::{
    message::{Message, Origin},
    store::{
        dedup::{self, Hash, Marks, Verdict},
        Outcome,
    },
};

/// Marks read and written inside the write transaction.
struct SqliteMarks<'c> {
    get_mark: CachedStatement<'c>,
    get_retained: CachedStatement<'c>,
    put_retained: CachedStatement<'c>,
}

fn to_hash(v: Option<Vec<u8>>) -> Option<Hash> {
    v.and_then(|b| b.try_into().ok())
}

impl Marks for SqliteMarks<'_> {
    type Error = rusqlite::Error;
    fn delivery(&mut self, session: &str, pkid: u16) -> rusqlite::Result<Option<Hash>> {
        Ok(to_hash(
            self.get_mark
                .query_row(params![session, pkid], |r| r.get(0))
                .optional()?,
        ))
    }
    fn retained(&mut self, topic: &str) -> rusqlite::Result<Option<Hash>> {
        Ok(to_hash(
            self.get_retained
                .query_row(params![topic], |r| r.get(0))
                .optional()?,
        ))
    }
    fn set_retained(&mut self, topic: &str, hash: Hash) -> rusqlite::Result<()> {
        self.put_retained.execute(params![topic, &hash[..]]).map(|_| ())
    }
}

pub fn write_batch(conn: &mut Connection, batch: &[Message]) -> rusqlite::Result<Vec<Outcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut topics = TopicTally::default();
    {
        let mut insert_msg = tx.prepare_cached(
            "INSERT INTO messages (received_at, topic, payload, payload_raw, payload_size, qos, retain, content_type, user_properties, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut insert_rejected = tx.prepare_cached(
            "INSERT INTO rejected (received_at, topic, size, qos, reason, source) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut put_mark = tx.prepare_cached(
            "INSERT OR REPLACE INTO delivery_marks (session, pkid, hash, message_id) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut marks = SqliteMarks {
            get_mark: tx
                .prepare_cached("SELECT hash FROM delivery_marks WHERE session = ?1 AND pkid = ?2")?,
            get_retained: tx.prepare_cached("SELECT hash FROM retained_marks WHERE topic = ?1")?,
            put_retained: tx
                .prepare_cached("INSERT OR REPLACE INTO retained_marks (topic, hash) VALUES (?1, ?2)")?,
        };

        for m in batch {
            let hash = m.content_hash();
            let received_at = crate::time::to_sql_text(m.received_at);
            let source = match m.origin {
                Origin::Mqtt { .. } => "mqtt",
                Origin::Http => "http",
            };
            let (outcome, id) = match dedup::verdict(m, hash, &mut marks)? {
                Verdict::Duplicate => {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
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
                    (Outcome::Rejected, None)
                }
                Verdict::Store => {
                    let text = m.payload_lossy();
                    let raw: Option<&[u8]> = m.payload_text().is_none().then_some(&m.payload[..]);
                    insert_msg.execute(params![
                        received_at,
                        m.topic,
                        text.as_ref(),
                        raw,
                        m.size as i64,
                        m.qos,
                        m.retain,
                        m.content_type,
                        m.user_properties_json(),
                        source,
                    ])?;
                    let id = tx.last_insert_rowid();
                    topics.add(&m.topic, &received_at);
                    (Outcome::Stored { id }, Some(id))
                }
            };
            if let Some((session, pkid)) = dedup::delivery_mark(m) {
                put_mark.execute(params![session, pkid, &hash[..], id])?;
            }
            outcomes.push(outcome);
        }
        let mut upsert_topic = tx.prepare_cached(
            "INSERT INTO topics (topic, message_count, first_seen, last_seen) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (topic) DO UPDATE SET message_count = message_count + excluded.message_count,
                                               last_seen = max(last_seen, excluded.last_seen)",
        )?;
        for (topic, (count, first, last)) in topics.0 {
            upsert_topic.execute(params![topic, count, first, last])?;
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

/// Per-topic counts of one batch, folded into `topics` with one upsert per topic.
#[derive(Default)]
struct TopicTally<'a>(std::collections::HashMap<&'a str, (i64, String, String)>);

impl<'a> TopicTally<'a> {
    fn add(&mut self, topic: &'a str, at: &str) {
        let e = self
            .0
            .entry(topic)
            .or_insert_with(|| (0, at.to_string(), at.to_string()));
        e.0 += 1;
        if at > e.2.as_str() {
            e.2 = at.to_string();
        }
    }
}
