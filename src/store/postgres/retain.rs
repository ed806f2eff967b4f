//! Retention on PostgreSQL: one chunk of expired rows a table, in its own short transaction
//! beside the writers. It must never lock `topics` rows in another order than the writers do.

use chrono::Utc;
use tokio_postgres::{Client, Row};

use super::rollups::rollup_table;
use crate::config::RetentionPolicy;

/// One chunk of retention, in its own short transaction.
pub async fn retain(
    client: &mut Client,
    policy: &RetentionPolicy,
    chunk: usize,
) -> Result<u64, tokio_postgres::Error> {
    let now = Utc::now();
    let cutoff = |keep| RetentionPolicy::cutoff(now, keep);
    let chunk = chunk as i64;
    let tx = client.transaction().await?;
    let mut n = 0;
    if let Some(c) = cutoff(policy.raw) {
        // Any expired chunk, not the oldest first: `messages_received_at` is a BRIN index too.
        // A message's note (why it gave no readings) goes with it.
        let gone = tx
            .query(
                "WITH gone AS (DELETE FROM messages
                               WHERE ctid = ANY(ARRAY(SELECT ctid FROM messages WHERE received_at < $1 LIMIT $2))
                               RETURNING id, topic),
                      notes AS (DELETE FROM reading_notes WHERE message_id IN (SELECT id FROM gone) RETURNING 1)
                 SELECT topic, count(*), (SELECT count(*) FROM notes) FROM gone GROUP BY topic",
                &[&c, &chunk],
            )
            .await?;
        n += gone.first().map_or(0, |r| r.get::<_, i64>(2) as u64);
        n += uncount_topics(&tx, &gone).await?;
        n += tx
            .execute(
                "DELETE FROM rejected WHERE id IN (SELECT id FROM rejected WHERE received_at < $1 LIMIT $2)",
                &[&c, &chunk],
            )
            .await?;
    }
    if let Some(c) = cutoff(policy.readings) {
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
    if let Some(c) = cutoff(policy.rollups) {
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
    // The mapping tables given a `retain`: a statement each, outside the transaction above. A
    // batch widening a mapping table waits for every lock on it, and holds row locks (`topics`)
    // that transaction takes; a lock held only for its own statement cannot close a cycle.
    for (table, keep) in &policy.mapped {
        let Some(c) = cutoff(Some(*keep)) else { continue };
        if super::table_exists(&*client, table).await? {
            let t = table.quoted();
            n += client
                .execute(
                    &format!("DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE ts < $1 LIMIT $2))"),
                    &[&c, &chunk],
                )
                .await?;
        }
    }
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
