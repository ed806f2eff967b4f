//! A batch's rollup buckets (`store::rollup::aggregate`) into `series_1m` and `series_1h`, by
//! series id, one `UNNEST` upsert a table. Rows are sorted by series and bucket, the order every
//! writer locks them in; it must never upsert them in any other.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::{
    series::{Pending, SeriesError},
    write::{exec, first_error},
};

/// The table a rollup width is stored in, by series (schema 14; `readings_1m` and
/// `readings_1h` are views of them).
pub(super) fn rollup_table(w: crate::store::rollup::Width) -> &'static str {
    match w {
        crate::store::rollup::Width::Minute => "series_1m",
        crate::store::rollup::Width::Hour => "series_1h",
    }
}

/// The rollup upserts, in `rollup::WIDTHS` order: built once, not per batch.
pub(super) static ROLLUP_UPSERTS: std::sync::LazyLock<[String; 2]> =
    std::sync::LazyLock::new(|| crate::store::rollup::WIDTHS.map(|w| rollup_upsert(rollup_table(w))));

/// The rollup upsert for one table of `rollup::WIDTHS`.
fn rollup_upsert(t: &str) -> String {
    format!(
        "INSERT INTO {t} (series_id, bucket, count, min, max, sum, avg, last, last_ts)
         SELECT i, b, n, mn, mx, s, s / n, l, lt
         FROM unnest($1::int[], $2::timestamptz[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[], $7::float8[], $8::timestamptz[])
              AS u(i, b, n, mn, mx, s, l, lt)
         ON CONFLICT (series_id, bucket) DO UPDATE SET
            count = {t}.count + excluded.count,
            min = least({t}.min, excluded.min),
            max = greatest({t}.max, excluded.max),
            sum = {t}.sum + excluded.sum,
            avg = ({t}.sum + excluded.sum) / ({t}.count + excluded.count),
            last = CASE WHEN excluded.last_ts >= {t}.last_ts THEN excluded.last ELSE {t}.last END,
            last_ts = greatest({t}.last_ts, excluded.last_ts)"
    )
}

/// A batch's buckets of one rollup table by series id, sorted by series and bucket (so two
/// transactions upserting the same rows lock them in the same order), as columns.
#[derive(Default)]
pub(super) struct RollupRows {
    series: Vec<i32>,
    bucket: Vec<DateTime<Utc>>,
    count: Vec<i64>,
    min: Vec<f64>,
    max: Vec<f64>,
    sum: Vec<f64>,
    last: Vec<f64>,
    last_ts: Vec<DateTime<Utc>>,
}

/// Both rollup tables' rows of a batch (`rollup::aggregate`), in `WIDTHS` order.
pub(super) fn rollup_rows(
    series: &Pending<'_>,
    buckets: [(
        crate::store::rollup::Width,
        Vec<(crate::store::rollup::Key<'_>, crate::store::rollup::Agg)>,
    ); 2],
) -> Result<[RollupRows; 2], SeriesError> {
    let mut out: [RollupRows; 2] = Default::default();
    for ((_, aggs), rows) in buckets.into_iter().zip(&mut out) {
        let ids = series.ids_of(aggs.iter().map(|(k, _)| (k.topic, k.device, k.field)))?;
        let mut keyed: Vec<(i32, crate::store::rollup::Agg, DateTime<Utc>)> = ids
            .into_iter()
            .zip(aggs)
            .map(|(id, (k, a))| (id, a, k.bucket))
            .collect();
        keyed.sort_unstable_by_key(|(id, _, bucket)| (*id, *bucket));
        for (id, a, bucket) in keyed {
            rows.series.push(id);
            rows.bucket.push(bucket);
            rows.count.push(a.count);
            rows.min.push(a.min);
            rows.max.push(a.max);
            rows.sum.push(a.sum);
            rows.last.push(a.last);
            rows.last_ts.push(a.last_ts);
        }
    }
    Ok(out)
}

/// Adds a batch's buckets to the rollup tables, one upsert per table, both sent at once.
pub(super) async fn upsert_rollups(
    tx: &Transaction<'_>,
    tables: &[RollupRows; 2],
) -> Result<(), tokio_postgres::Error> {
    // `aggregate` answers in `WIDTHS` order, as `ROLLUP_UPSERTS` is built.
    first_error(
        futures::future::join_all(
            tables
                .iter()
                .zip(ROLLUP_UPSERTS.iter())
                .filter(|(c, _)| !c.series.is_empty())
                .map(|(c, sql)| async move {
                    exec(
                        tx,
                        sql,
                        &[
                            &c.series, &c.bucket, &c.count, &c.min, &c.max, &c.sum, &c.last, &c.last_ts,
                        ],
                    )
                    .await
                    .map(drop)
                }),
        )
        .await,
    )
}
