//! One batch, one transaction: messages, rejections and the marks that recognise redeliveries.
//! It must never commit part of a batch.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::{
    message::{Message, Origin},
    store::Outcome,
};

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
        let mut get_mark =
            tx.prepare_cached("SELECT hash FROM delivery_marks WHERE session = ?1 AND pkid = ?2")?;
        let mut put_mark = tx.prepare_cached(
            "INSERT OR REPLACE INTO delivery_marks (session, pkid, hash, message_id) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut get_retained = tx.prepare_cached("SELECT hash FROM retained_marks WHERE topic = ?1")?;
        let mut put_retained =
            tx.prepare_cached("INSERT OR REPLACE INTO retained_marks (topic, hash) VALUES (?1, ?2)")?;

        for m in batch {
            let hash = m.content_hash();
            let received_at = crate::time::to_sql_text(m.received_at);
            let source = match m.origin {
                Origin::Mqtt { .. } => "mqtt",
                Origin::Http => "http",
            };
            if let Origin::Mqtt {
                session,
                pkid,
                redelivery: true,
            } = &m.origin
            {
                let seen: Option<Vec<u8>> = get_mark
                    .query_row(params![session, pkid], |r| r.get(0))
                    .optional()?;
                if seen.as_deref() == Some(&hash[..]) {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
            }
            if m.retain {
                let seen: Option<Vec<u8>> = get_retained
                    .query_row(params![m.topic], |r| r.get(0))
                    .optional()?;
                if seen.as_deref() == Some(&hash[..]) {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
                put_retained.execute(params![m.topic, &hash[..]])?;
            }
            let (outcome, id) = match &m.rejection {
                Some(reason) => {
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
                None => {
                    let text = m.payload_lossy();
                    let raw: Option<&[u8]> = match m.payload_text() {
                        Some(_) => None,
                        None => Some(&m.payload),
                    };
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
            if let Origin::Mqtt { session, pkid, .. } = &m.origin {
                if m.qos > 0 {
                    put_mark.execute(params![session, pkid, &hash[..], id])?;
                }
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
