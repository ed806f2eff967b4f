//! Retention on SQLite: one short write transaction deleting at most a chunk of expired rows a
//! table, run by the writer thread between batches. It must never hold the write lock for
//! longer than a chunk takes.

use rusqlite::{params, Connection, TransactionBehavior};

use crate::config::RetentionPolicy;

/// One short transaction deleting at most `chunk` rows per table older than the policy allows.
pub fn retain(conn: &mut Connection, policy: &RetentionPolicy, chunk: usize) -> rusqlite::Result<u64> {
    let now = crate::time::now();
    let cutoff = |keep| RetentionPolicy::cutoff(now, keep).map(crate::time::to_sql_text);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut n = 0u64;
    if let Some(c) = cutoff(policy.raw) {
        // `topics` counts the messages stored, so what retention deletes comes off it too.
        let mut gone: std::collections::HashMap<String, i64> = Default::default();
        let mut ids = Vec::new();
        {
            let mut delete = tx.prepare(&format!(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages WHERE received_at < ?1 ORDER BY received_at LIMIT {chunk})
                 RETURNING id, topic"
            ))?;
            let mut rows = delete.query([&c])?;
            while let Some(r) = rows.next()? {
                ids.push(r.get::<_, i64>(0)?);
                *gone.entry(r.get(1)?).or_default() += 1;
            }
        }
        // A note says why a message gave no readings: it goes with the message (a note a
        // message, for a device whose clock is wrong, kept forever otherwise).
        let mut unnote = tx.prepare_cached("DELETE FROM reading_notes WHERE message_id = ?1")?;
        for id in ids {
            n += unnote.execute([id])? as u64;
        }
        drop(unnote);
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
    if let Some(c) = cutoff(policy.readings) {
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
    if let Some(c) = cutoff(policy.rollups) {
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
    // The mapping tables given a `retain`, by their `ts` index; one not created yet has no rows.
    for (table, keep) in &policy.mapped {
        let Some(c) = cutoff(Some(*keep)) else { continue };
        if super::schema::is_table(&tx, table.as_str())? {
            let t = table.quoted();
            n += tx.execute(
                &format!("DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE ts < ?1 ORDER BY ts LIMIT {chunk})"),
                [&c],
            )? as u64;
        }
    }
    tx.commit()?;
    Ok(n)
}
