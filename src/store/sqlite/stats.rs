//! tidegate's own per-minute health rows (`tidegate_stats`), added to what each minute already
//! holds, in a transaction of their own on the writer thread. It must never overwrite a
//! minute's counts: a restart within the minute adds to them.

use rusqlite::{params, Connection, TransactionBehavior};

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
