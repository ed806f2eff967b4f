//! A backfill on SQLite: the coverage of the stored messages read in one snapshot, the messages
//! read a chunk at a time, and what was derived from them written by the writer thread in one
//! short transaction per chunk (`write::write_derived`, the same rows a batch writes). It must
//! never write a message, nor hold the write lock for longer than a chunk.

use std::{collections::HashSet, rc::Rc};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{series::Series, write::write_derived};
use crate::{
    message::Message,
    readings::mapping::Ident,
    store::backfill::{stored_message, Coverage, IdSet, Minute},
};

/// Which messages stored now already have readings or a note, and rows in each of `tables`.
/// One snapshot, so that a message committed meanwhile (with whatever it derived) is after
/// `last_id` and outside the backfill.
pub fn coverage(conn: &Connection, tables: &[Ident]) -> rusqlite::Result<Coverage> {
    let tx = conn.unchecked_transaction()?;
    let (first, last): (Option<i64>, Option<i64>) =
        tx.query_row("SELECT min(id), max(id) FROM messages", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(Coverage::default());
    };
    let mut c = Coverage::new(first, last);
    for sql in [
        "SELECT message_id FROM series_points",
        "SELECT message_id FROM reading_notes",
    ] {
        add_ids(&tx, sql, [], &mut c.readings)?;
    }
    for table in tables {
        if super::schema::is_table(&tx, table.as_str())? {
            let mut ids = IdSet::new(first, last);
            add_ids(
                &tx,
                &format!("SELECT message_id FROM {}", table.quoted()),
                [],
                &mut ids,
            )?;
            c.mapped.insert(table.as_str().to_string(), ids);
            let mut misfits = IdSet::new(first, last);
            add_ids(
                &tx,
                "SELECT message_id FROM rejected WHERE mapping = ?1 AND message_id IS NOT NULL",
                [table.as_str()],
                &mut misfits,
            )?;
            c.misfits.insert(table.as_str().to_string(), misfits);
        }
    }
    Ok(c)
}

fn add_ids(
    tx: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    set: &mut IdSet,
) -> rusqlite::Result<()> {
    let mut st = tx.prepare(sql)?;
    let mut rows = st.query(params)?;
    while let Some(r) = rows.next()? {
        set.insert(r.get(0)?);
    }
    Ok(())
}

/// A bucket of `readings_1m`: topic, device (`''` for none), field and minute.
type Bucket = (String, String, String, DateTime<Utc>);

/// For each of `minutes`, whether `readings_1m` counts more numbers than `readings` holds. Read
/// in one snapshot: a batch committing meanwhile adds to both counts.
pub fn counted_but_gone(conn: &Connection, minutes: &[Minute]) -> rusqlite::Result<Vec<bool>> {
    let (Some(first), Some(last)) = (
        minutes.iter().map(|m| m.minute).min(),
        minutes.iter().map(|m| m.minute).max(),
    ) else {
        return Ok(Vec::new());
    };
    let tx = conn.unchecked_transaction()?;
    // The buckets there are, read as one range: a backfill of messages stored with readings off
    // finds few (those its previous chunk filled), where a look-up a minute made it about 15 %
    // slower. A chunk whose event times lie far apart (a payload's own time can be anything)
    // looks its minutes up one at a time instead.
    let span = (last - first).num_minutes();
    let there: Option<HashSet<Bucket>> = if span <= 4 * minutes.len() as i64 {
        let mut st = tx.prepare_cached(
            "SELECT topic, device, field, bucket FROM readings_1m WHERE bucket >= ?1 AND bucket <= ?2",
        )?;
        let rows = st.query_map(
            [crate::time::to_sql_text(first), crate::time::to_sql_text(last)],
            |r| {
                let bucket: String = r.get(3)?;
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    crate::time::from_sql_text(&bucket).unwrap_or_default(),
                ))
            },
        )?;
        Some(rows.collect::<rusqlite::Result<_>>()?)
    } else {
        None
    };
    // Most minutes have no bucket there: those are answered without a string made.
    let there_at: Option<HashSet<DateTime<Utc>>> = there.as_ref().map(|t| t.iter().map(|k| k.3).collect());
    let mut st = tx.prepare_cached(
        "SELECT r.count > (SELECT count(*) FROM series_points p JOIN series s ON s.id = p.series_id
                           WHERE s.topic = ?1 AND coalesce(s.device, '') = ?2 AND s.field = ?3
                             AND p.ts >= ?4 AND p.ts < ?5 AND p.value IS NOT NULL)
         FROM readings_1m r WHERE r.topic = ?1 AND r.device = ?2 AND r.field = ?3 AND r.bucket = ?4",
    )?;
    let gone = minutes
        .iter()
        .map(|m| {
            if let (Some(there), Some(at)) = (&there, &there_at) {
                if !at.contains(&m.minute)
                    || !there.contains(&(m.topic.clone(), m.device.clone(), m.field.clone(), m.minute))
                {
                    return Ok(false);
                }
            }
            let from = crate::time::to_sql_text(m.minute);
            let to = crate::time::to_sql_text(m.minute + chrono::TimeDelta::minutes(1));
            let more = st
                .query_row(rusqlite::params![m.topic, m.device, m.field, from, to], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(more.unwrap_or(false))
        })
        .collect();
    drop(st);
    tx.commit()?;
    gone
}

/// Up to `limit` messages with ids in `after + 1..=last`, in id order.
pub fn stored(
    conn: &Connection,
    after: i64,
    last: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, Message)>> {
    let mut st = conn.prepare_cached(
        "SELECT id, received_at, topic, coalesce(payload_raw, CAST(payload AS BLOB)), qos
         FROM messages WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
    )?;
    let rows = st.query_map(rusqlite::params![after, last, limit as i64], |r| {
        let received: String = r.get(1)?;
        let at = crate::time::from_sql_text(&received).unwrap_or_default();
        let payload: Option<Vec<u8>> = r.get(3)?;
        Ok((
            r.get(0)?,
            stored_message(r.get(2)?, payload.unwrap_or_default(), at, r.get(4)?),
        ))
    })?;
    rows.collect()
}

/// One transaction with what was derived from `rows` (each message with its id).
pub fn write(conn: &mut Connection, series: &mut Series, rows: &[(i64, Message)]) -> rusqlite::Result<()> {
    let result = (|| {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let received: Vec<Rc<str>> = rows
            .iter()
            .map(|(_, m)| crate::time::to_sql_text(m.received_at).into())
            .collect();
        let messages: Vec<(&Message, i64, &Rc<str>)> = rows
            .iter()
            .zip(&received)
            .map(|((id, m), at)| (m, *id, at))
            .collect();
        write_derived(&tx, series, &messages)?;
        tx.commit()
    })();
    series.settle(result.is_ok());
    result
}
