//! The series a reading belongs to (topic, device, field), as the integer id its
//! `series_points` row keeps instead of those texts (schema 13). It owns the `series` table and
//! the store's memory of its ids; it must never remember an id before the transaction that
//! created its row has committed, since a rolled-back row leaves readings pointing at nothing.
//!
//! Several instances may create the same series at once: the insert skips a row another
//! transaction holds (waiting for it to finish), and a second look-up, a statement later, sees
//! it committed. Series rows are never deleted, so a remembered id stays right.

use std::{collections::HashMap, sync::Mutex};

use deadpool_postgres::Transaction;

use super::pg_text;
use crate::message::Message;

/// The ids of series whose rows are committed, shared by the store's connections.
#[derive(Default)]
pub struct Known(Mutex<HashMap<String, i32>>);

/// The series ids one transaction has used: its own until it commits (`Pending::commit`).
pub struct Pending<'a> {
    known: &'a Known,
    fresh: HashMap<String, i32>,
}

/// Why a series has no id.
#[derive(Debug, thiserror::Error)]
pub enum SeriesError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error(
        "series {0:?} is neither in `series` nor could be added to it (an md5 collision in `series_key`?)"
    )]
    Unresolved(String),
    #[error("series {0:?} has no id in this transaction: its readings were not resolved first")]
    Missing(String),
}

/// The look-up key of a series: its texts as stored (`pg_text`), no device as the empty one.
fn key(buf: &mut String, topic: &str, device: Option<&str>, field: &str) {
    buf.clear();
    for part in [topic, device.unwrap_or(""), field] {
        buf.push_str(&pg_text(part));
        buf.push('\0');
    }
}

fn parts(key: &str) -> (&str, &str, &str) {
    let mut it = key.split('\0');
    let mut next = || it.next().unwrap_or("");
    (next(), next(), next())
}

const SELECT: &str = "SELECT s.id, u.i FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(t, d, f, i)
     JOIN series s ON md5(s.topic) = md5(u.t) AND md5(coalesce(s.device, '')) = md5(u.d) AND md5(s.field) = md5(u.f)
      AND s.topic = u.t AND coalesce(s.device, '') = u.d AND s.field = u.f";
/// In the order given (sorted), so two transactions adding the same series cannot deadlock.
const INSERT: &str = "INSERT INTO series (topic, device, field)
     SELECT t, nullif(d, ''), f FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(t, d, f, i) ORDER BY i
     ON CONFLICT ((md5(topic)), (md5(coalesce(device, ''))), (md5(field))) DO NOTHING
     RETURNING id, topic, coalesce(device, ''), field";

impl<'a> Pending<'a> {
    pub fn new(known: &'a Known) -> Self {
        Pending {
            known,
            fresh: HashMap::new(),
        }
    }

    /// The series id of every reading of `stored`, in order, into `ids`; answers the keys of
    /// the series it has no id for (then `ids` is incomplete), each once.
    pub fn ids(&self, stored: &[&Message], ids: &mut Vec<i32>) -> Vec<String> {
        let known = self.known.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut unknown: Vec<String> = Vec::new();
        let mut k = String::new();
        for m in stored {
            let Some(d) = &m.derived else { continue };
            for r in &d.readings {
                key(&mut k, &m.topic, d.device.as_deref(), &r.field);
                match self.fresh.get(&k).or_else(|| known.get(&k)) {
                    Some(id) => ids.push(*id),
                    None => unknown.push(k.clone()),
                }
            }
        }
        unknown.sort_unstable();
        unknown.dedup();
        unknown
    }

    /// The id of each series `keys` names (topic, device or `''`, field), in order: the rollups'
    /// and current values' keys, whose readings `ids` and `resolve` have seen. `Err` names the
    /// first series this transaction has no id for.
    pub fn ids_of<'k>(
        &self,
        keys: impl IntoIterator<Item = (&'k str, &'k str, &'k str)>,
    ) -> Result<Vec<i32>, SeriesError> {
        let known = self.known.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut k = String::new();
        keys.into_iter()
            .map(|(topic, device, field)| {
                key(&mut k, topic, Some(device), field);
                self.fresh
                    .get(&k)
                    .or_else(|| known.get(&k))
                    .copied()
                    .ok_or_else(|| SeriesError::Missing(k.replace('\0', "|")))
            })
            .collect()
    }

    fn has(&self, key: &str) -> bool {
        self.fresh.contains_key(key)
            || self
                .known
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(key)
    }

    /// Finds or creates, inside `tx`, every series in `keys` (sorted and distinct, as `ids`
    /// answers them) this transaction has no id for: another batch may have committed some of
    /// them since.
    pub async fn resolve(&mut self, tx: &Transaction<'_>, keys: Vec<String>) -> Result<(), SeriesError> {
        let mut missing: Vec<String> = keys.into_iter().filter(|k| !self.has(k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        // Look up, add what is still missing, and look up once more for rows another
        // transaction committed while the insert waited for it.
        for step in 0..3 {
            let (mut t, mut d, mut f) = (Vec::new(), Vec::new(), Vec::new());
            for (topic, device, field) in missing.iter().map(|k| parts(k)) {
                t.push(topic);
                d.push(device);
                f.push(field);
            }
            let mut found: Vec<(usize, i32)> = Vec::new();
            if step == 1 {
                let st = tx.prepare_cached(INSERT).await?;
                for r in tx.query(&st, &[&t, &d, &f]).await? {
                    let mut k = String::new();
                    key(&mut k, r.get(1), Some(r.get(2)), r.get(3));
                    if let Ok(i) = missing.binary_search(&k) {
                        found.push((i, r.get(0)));
                    }
                }
            } else {
                let st = tx.prepare_cached(SELECT).await?;
                for r in tx.query(&st, &[&t, &d, &f]).await? {
                    let i: i64 = r.get(1);
                    found.push((i as usize - 1, r.get(0)));
                }
            }
            found.sort_unstable();
            for (i, id) in found.into_iter().rev() {
                self.fresh.insert(missing.remove(i), id);
            }
            if missing.is_empty() {
                return Ok(());
            }
        }
        Err(SeriesError::Unresolved(missing.swap_remove(0).replace('\0', "|")))
    }

    /// The ids of a savepoint inside this transaction, to be adopted if it is released.
    pub fn savepoint(&self) -> Pending<'a> {
        Pending {
            known: self.known,
            fresh: self.fresh.clone(),
        }
    }

    /// Takes a released savepoint's ids as this transaction's.
    pub fn adopt(&mut self, released: Pending<'a>) {
        self.fresh = released.fresh;
    }

    /// The transaction committed: its ids are everyone's now.
    pub fn commit(self) {
        if self.fresh.is_empty() {
            return;
        }
        let mut known = self.known.0.lock().unwrap_or_else(|p| p.into_inner());
        known.extend(self.fresh);
    }
}
