//! A batch's newest reading of each series into `series_latest`, one `UNNEST` upsert sorted by
//! series id. An older reading arriving late must never replace a newer one.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;

use super::{
    pg_text,
    series::{Pending, SeriesError},
    write::exec,
};

pub(super) const UPSERT_LATEST: &str = "INSERT INTO series_latest (series_id, value, text, ts)
     SELECT * FROM unnest($1::int[], $2::float8[], $3::text[], $4::timestamptz[])
     ON CONFLICT (series_id) DO UPDATE SET value = excluded.value, text = excluded.text, ts = excluded.ts
     WHERE excluded.ts >= series_latest.ts";

/// A batch's newest reading of each series, by series id and sorted by it, as columns.
#[derive(Default)]
pub(super) struct LatestRows<'a> {
    series: Vec<i32>,
    value: Vec<Option<f64>>,
    text: Vec<Option<std::borrow::Cow<'a, str>>>,
    ts: Vec<DateTime<Utc>>,
}

pub(super) fn latest_rows<'a>(
    series: &Pending<'_>,
    newest: Vec<crate::store::latest::Latest<'a>>,
) -> Result<LatestRows<'a>, SeriesError> {
    let ids = series.ids_of(newest.iter().map(|l| (l.topic, l.device, l.field)))?;
    let mut keyed: Vec<(i32, crate::store::latest::Latest<'a>)> = ids.into_iter().zip(newest).collect();
    keyed.sort_unstable_by_key(|(id, _)| *id);
    let mut rows = LatestRows::default();
    for (id, l) in keyed {
        rows.series.push(id);
        rows.value.push(l.value);
        rows.text.push(l.text.map(pg_text));
        rows.ts.push(l.ts);
    }
    Ok(rows)
}

/// Brings `series_latest` up to a batch's newest readings, one upsert.
pub(super) async fn upsert_latest(
    tx: &Transaction<'_>,
    rows: &LatestRows<'_>,
) -> Result<(), tokio_postgres::Error> {
    if rows.series.is_empty() {
        return Ok(());
    }
    exec(
        tx,
        UPSERT_LATEST,
        &[&rows.series, &rows.value, &rows.text, &rows.ts],
    )
    .await?;
    Ok(())
}
