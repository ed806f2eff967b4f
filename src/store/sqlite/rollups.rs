//! The rollup tables of a write transaction: a batch's buckets (`store::rollup::aggregate`)
//! added to `readings_1m` and `readings_1h`, each split in an open part (buckets still filling)
//! and a closed part (schema 10). It must never leave a bucket in both parts at a commit.

use rusqlite::{params, Connection};

use crate::store::rollup;

/// Adds a batch's buckets of every width, after moving the buckets that are over to the closed
/// part.
pub(super) fn upsert_rollups(
    tx: &Connection,
    buckets: [(rollup::Width, Vec<(rollup::Key<'_>, rollup::Agg)>); 2],
) -> rusqlite::Result<()> {
    for (width, aggs) in buckets {
        if aggs.is_empty() {
            continue;
        }
        let open = close_buckets(tx, width, crate::time::now())?;
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
    Ok(())
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
