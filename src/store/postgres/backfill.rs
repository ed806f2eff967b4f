//! A backfill on PostgreSQL: the coverage of the stored messages read in one snapshot, the
//! messages read a chunk at a time, and what was derived from them written in one transaction
//! per chunk with the statements a batch uses for the same rows (`write`). Other instances may
//! write meanwhile: the shared rows (rollups, latest values, series) are upserted as a batch
//! upserts them, in the same lock order. It must never write a message.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::ClientWrapper;
use futures::{pin_mut, TryStreamExt};
use tokio_postgres::{Client, IsolationLevel};

use super::{
    copy::copy_readings,
    latest::{latest_rows, upsert_latest},
    mapped::write_mapped,
    rollups::{rollup_rows, upsert_rollups},
    series::{Known, Pending},
    write::{first_error, insert_notes, reading_series, RowsError},
};
use crate::{
    message::Message,
    readings::mapping::Ident,
    store::backfill::{stored_message, Coverage, IdSet, Minute},
};

/// Which messages stored now already have readings or a note, and rows in each of `tables`, in
/// one repeatable-read snapshot.
pub async fn coverage(
    client: &mut ClientWrapper,
    tables: &[Ident],
) -> Result<Coverage, tokio_postgres::Error> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let row = tx.query_one("SELECT min(id), max(id) FROM messages", &[]).await?;
    let (Some(first), Some(last)) = (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) else {
        return Ok(Coverage::default());
    };
    let mut c = Coverage::new(first, last);
    for sql in [
        "SELECT message_id FROM series_points",
        "SELECT message_id FROM reading_notes",
    ] {
        add_ids(&tx, sql, &[], &mut c.readings).await?;
    }
    for table in tables {
        let quoted = table.quoted();
        if super::table_exists(&*tx, table).await? {
            let mut ids = IdSet::new(first, last);
            add_ids(&tx, &format!("SELECT message_id FROM {quoted}"), &[], &mut ids).await?;
            c.mapped.insert(table.as_str().to_string(), ids);
            let mut misfits = IdSet::new(first, last);
            add_ids(
                &tx,
                "SELECT message_id FROM rejected WHERE mapping = $1 AND message_id IS NOT NULL",
                &[&table.as_str()],
                &mut misfits,
            )
            .await?;
            c.misfits.insert(table.as_str().to_string(), misfits);
        }
    }
    tx.commit().await?;
    Ok(c)
}

/// Streams the ids a query answers into `set`, without holding its rows.
async fn add_ids(
    client: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    set: &mut IdSet,
) -> Result<(), tokio_postgres::Error> {
    let rows = client.query_raw(sql, params.iter().copied()).await?;
    pin_mut!(rows);
    while let Some(r) = rows.try_next().await? {
        set.insert(r.get(0));
    }
    Ok(())
}

/// For each of `minutes`, whether `readings_1m` counts more numbers than `readings` holds: one
/// statement, so both counts are read in one snapshot.
pub async fn counted_but_gone(
    client: &Client,
    minutes: &[Minute],
) -> Result<Vec<bool>, tokio_postgres::Error> {
    let (Some(first), Some(last)) = (
        minutes.iter().map(|m| m.minute).min(),
        minutes.iter().map(|m| m.minute).max(),
    ) else {
        return Ok(Vec::new());
    };
    // Each series is looked up once (a chunk's minutes share a few series): a look-up a minute
    // hashed six md5s each, and with a look-up of its bucket made a backfill half as slow again.
    let mut series: HashMap<(&str, &str, &str), i64> = HashMap::new();
    let (mut topics, mut devices, mut fields) = (Vec::new(), Vec::new(), Vec::new());
    let of: Vec<i64> = minutes
        .iter()
        .map(|m| {
            *series.entry((&m.topic, &m.device, &m.field)).or_insert_with(|| {
                topics.push(super::pg_text(&m.topic).into_owned());
                devices.push(super::pg_text(&m.device).into_owned());
                fields.push(super::pg_text(&m.field).into_owned());
                topics.len() as i64
            })
        })
        .collect();
    let at: Vec<DateTime<Utc>> = minutes.iter().map(|m| m.minute).collect();
    let (first, last) = (&first, &last);
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        vec![&topics, &devices, &fields, &of, &at];
    // The buckets of the chunk's time range read as one range a series, when it is short: most
    // minutes of messages stored with readings off have none. Else one look-up a minute.
    let as_range = (*last - *first).num_minutes() <= 4 * minutes.len() as i64;
    let buckets = if as_range {
        params.push(first);
        params.push(last);
        "MATERIALIZED (SELECT s.n, r.series_id, r.bucket, r.count FROM s JOIN series_1m r
                       ON r.series_id = s.id AND r.bucket >= $6 AND r.bucket <= $7)"
    } else {
        "NOT MATERIALIZED (SELECT s.n, r.series_id, r.bucket, r.count FROM s JOIN series_1m r ON r.series_id = s.id)"
    };
    let sql = format!(
        "WITH s AS MATERIALIZED (
             SELECT k.n, s.id FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k (topic, device, field, n)
             JOIN series s ON md5(s.topic) = md5(k.topic) AND md5(coalesce(s.device, '')) = md5(k.device)
                          AND md5(s.field) = md5(k.field)
                          AND s.topic = k.topic AND coalesce(s.device, '') = k.device AND s.field = k.field),
         b AS {buckets}
         SELECT m.i FROM unnest($4::bigint[], $5::timestamptz[]) WITH ORDINALITY AS m (n, minute, i)
         JOIN b ON b.n = m.n AND b.bucket = m.minute
         WHERE b.count > (SELECT count(*) FROM series_points p
                          WHERE p.series_id = b.series_id AND p.ts >= m.minute AND p.ts < m.minute + interval '1 minute'
                            AND p.value IS NOT NULL)",
    );
    let rows = client.query(&sql, &params).await?;
    let mut gone = vec![false; minutes.len()];
    for r in rows {
        let i = usize::try_from(r.get::<_, i64>(0) - 1).ok();
        if let Some(g) = i.and_then(|i| gone.get_mut(i)) {
            *g = true;
        }
    }
    Ok(gone)
}

/// Up to `limit` messages with ids in `after + 1..=last`, in id order.
pub async fn stored(
    client: &Client,
    after: i64,
    last: i64,
    limit: usize,
) -> Result<Vec<(i64, Message)>, tokio_postgres::Error> {
    // No upper bound in the statement: with one, and statistics from before a bulk load, the
    // planner expected a few rows in the range, read all of them and sorted them for every chunk
    // (91 ms against 0.6 ms a chunk of 2,000 out of 300,000). The rows past `last` are dropped.
    let rows = client
        .query(
            "SELECT id, received_at, topic, coalesce(payload_raw, convert_to(payload, 'UTF8')), qos
             FROM messages WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &(limit as i64)],
        )
        .await?;
    Ok(rows
        .iter()
        .take_while(|r| r.get::<_, i64>(0) <= last)
        .map(|r| {
            let payload: Option<Vec<u8>> = r.get(3);
            let qos: i16 = r.get(4);
            let m = stored_message(
                r.get(2),
                payload.unwrap_or_default(),
                r.get(1),
                u8::try_from(qos).unwrap_or(0),
            );
            (r.get(0), m)
        })
        .collect())
}

/// One transaction with what was derived from `messages` (whose ids are `ids`).
pub async fn write(
    client: &mut ClientWrapper,
    known: &Known,
    messages: &[Message],
    ids: &[i64],
) -> Result<(), RowsError> {
    let tx = client.transaction().await?;
    let mut series = Pending::new(known);
    let all: Vec<usize> = (0..messages.len()).collect();
    let refs: Vec<&Message> = messages.iter().collect();
    let series_ids = reading_series(&tx, &mut series, None, &refs).await?;
    let folded = crate::store::rollup::aggregate(refs.iter().copied());
    let rollups = rollup_rows(&series, folded.buckets)?;
    let latest = latest_rows(&series, folded.latest)?;
    let done = futures::join!(
        copy_readings(&tx, &series_ids, messages, &all, ids),
        insert_notes(&tx, messages, &all, ids),
        upsert_rollups(&tx, &rollups),
        upsert_latest(&tx, &latest),
    );
    first_error([done.0, done.1, done.2, done.3])?;
    write_mapped(&tx, messages, &all, ids).await?;
    tx.commit().await?;
    series.commit();
    Ok(())
}
