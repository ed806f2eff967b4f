//! The marks that recognise redeliveries and replays of retained messages (the rule is
//! `store::dedup`): the ones a batch needs, read up front under its MQTT sessions' advisory
//! locks, and the batch's own, appended among the rows shared with other batches. It must never
//! read or append marks of a session whose lock the transaction does not hold.

use std::collections::HashMap;

use deadpool_postgres::Transaction;

use super::write::{exec, first_error};
use crate::store::{
    dedup::{Hash, Marks},
    delivery_marks,
};

/// The first key of the per-session advisory locks (two-key space, apart from migrations').
const SESSION_LOCKS: i32 = 0x7469_6465; // "tide"

pub(super) const LOCK_SESSIONS: &str =
    "SELECT pg_advisory_xact_lock($1, hashtext(s)) FROM unnest($2::text[]) AS s";
pub(super) const READ_DELIVERY: &str =
    "SELECT session, marks FROM delivery_batches WHERE session = ANY($1) ORDER BY session, total";
pub(super) const READ_RETAINED: &str =
    "SELECT topic, hash FROM retained_marks WHERE md5(topic) IN (SELECT md5(t) FROM unnest($1::text[]) t)";
pub(super) const APPEND_MARKS: &str =
    "WITH prev AS (SELECT coalesce(max(total), 0) AS total FROM delivery_batches WHERE session = $1),
          ins AS (INSERT INTO delivery_batches (session, total, n, marks)
                  SELECT $1, total + $2::int, $2::int, $3 FROM prev RETURNING total)
     DELETE FROM delivery_batches WHERE session = $1 AND total <= (SELECT total FROM ins) - $4";
pub(super) const UPSERT_RETAINED: &str =
    "INSERT INTO retained_marks (topic, hash) SELECT * FROM unnest($1::text[], $2::bytea[])
     ON CONFLICT ((md5(topic))) DO UPDATE SET hash = excluded.hash";

/// Marks prefetched for the batch, updated in memory as the batch is decided.
#[derive(Default)]
pub(super) struct Prefetched {
    /// Only for the packet ids redelivered in this batch: no other delivery mark is looked up.
    pub(super) delivery: delivery_marks::Lookup,
    /// Per topic, the last stored hash and whether this batch changed it.
    pub(super) retained: HashMap<String, (Hash, bool)>,
}

impl Marks for Prefetched {
    type Error = std::convert::Infallible;
    fn delivery(&mut self, session: &str, pkid: u16) -> Result<Option<Hash>, Self::Error> {
        Ok(self.delivery.get(session, pkid))
    }
    fn last_stored(&mut self, topic: &str) -> Result<Option<Hash>, Self::Error> {
        Ok(self.retained.get(topic).map(|(h, _)| *h))
    }
    fn set_last_stored(&mut self, topic: &str, hash: Hash) -> Result<(), Self::Error> {
        // Every stored message lands here: no allocation once a topic is known.
        match self.retained.get_mut(topic) {
            Some(e) => *e = (hash, true),
            None => {
                self.retained.insert(topic.to_string(), (hash, true));
            }
        }
        Ok(())
    }
}

pub(super) fn hash_of(v: Vec<u8>) -> Option<Hash> {
    v.try_into().ok()
}

/// Takes the advisory lock of each MQTT session in `own` (sorted), until the transaction ends.
pub(super) async fn lock_sessions(tx: &Transaction<'_>, own: &[&str]) -> Result<(), tokio_postgres::Error> {
    if !own.is_empty() {
        exec(tx, LOCK_SESSIONS, &[&SESSION_LOCKS, &own]).await?;
    }
    Ok(())
}

/// One row of delivery marks per MQTT session of the batch.
pub(super) async fn append_marks(
    tx: &Transaction<'_>,
    rows: Vec<(&str, Vec<(u16, Hash)>)>,
) -> Result<(), tokio_postgres::Error> {
    first_error(
        futures::future::join_all(rows.into_iter().map(|(session, marks)| async move {
            let n = marks.len() as i32;
            let packed = delivery_marks::pack(&marks);
            // The session's advisory lock (taken above) makes `max(total)` safe to build on.
            exec(tx, APPEND_MARKS, &[&session, &n, &packed, &delivery_marks::KEPT])
                .await
                .map(drop)
        }))
        .await,
    )
}

/// The topics whose last stored message this batch changed, sorted.
pub(super) async fn upsert_retained(
    tx: &Transaction<'_>,
    changed: &[(&String, &Hash)],
) -> Result<(), tokio_postgres::Error> {
    if changed.is_empty() {
        return Ok(());
    }
    let (t, h): (Vec<&String>, Vec<Vec<u8>>) = changed.iter().map(|(t, h)| (*t, h.to_vec())).unzip();
    exec(tx, UPSERT_RETAINED, &[&t, &h]).await?;
    Ok(())
}
