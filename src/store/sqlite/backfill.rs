//! A backfill on SQLite: the coverage of the stored messages read in one snapshot, the messages
//! read a chunk at a time, and what was derived from them written by the writer thread in one
//! short transaction per chunk (`write::write_derived`, the same rows a batch writes). It must
//! never write a message, nor hold the write lock for longer than a chunk.

use std::rc::Rc;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use super::{series::Series, write::write_derived};
use crate::{
    message::Message,
    readings::mapping::Ident,
    store::backfill::{stored_message, Coverage, IdSet},
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
        let exists = tx
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [table.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if exists {
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
