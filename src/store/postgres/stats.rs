//! tidegate's own per-minute health rows (`tidegate_stats`), added to what each minute already
//! holds, in a transaction of their own. It must never overwrite a minute's counts: instances
//! sharing the database add to the same rows.

use std::collections::HashMap;

use tokio_postgres::Client;

use super::pg_text;

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
