//! The series a reading belongs to (topic, device, field), as the integer id its
//! `series_points` row keeps instead of those texts. It owns the `series` table and the writer's
//! memory of its ids; it must never hand out the id of a row a rolled-back batch created.
//!
//! Why: with the texts in every reading and in the series index, SQLite compared long shared
//! topic prefixes on every index insert and wrote each text again per reading; an integer key
//! took a fifth of the write transaction's instructions off (docs/performance-history.md,
//! session 24). `readings` stays, as a view with the same columns.

use rusqlite::{params, Connection, OptionalExtension};

/// Series ids the writer has seen, kept across batches (there are few series and many readings).
#[derive(Default)]
pub struct Series {
    ids: foldhash::HashMap<String, i64>,
    /// Keys whose rows this batch created: forgotten if it does not commit.
    fresh: Vec<String>,
    /// The look-up key, rebuilt in place for every reading.
    key: String,
}

impl Series {
    /// The id of the series, created inside `tx` when it is new. No device and an empty one are
    /// the same series, as the table's unique index says.
    pub fn id(
        &mut self,
        tx: &Connection,
        topic: &str,
        device: Option<&str>,
        field: &str,
    ) -> rusqlite::Result<i64> {
        self.key.clear();
        for part in [topic, device.unwrap_or(""), field] {
            self.key.push_str(part);
            self.key.push('\0');
        }
        if let Some(id) = self.ids.get(self.key.as_str()) {
            return Ok(*id);
        }
        let found: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM series WHERE topic = ?1 AND field = ?2 AND coalesce(device, '') = coalesce(?3, '')",
            )?
            .query_row(params![topic, field, device], |r| r.get(0))
            .optional()?;
        let id = match found {
            Some(id) => id,
            None => {
                let device = device.filter(|d| !d.is_empty());
                tx.prepare_cached("INSERT INTO series (topic, device, field) VALUES (?1, ?2, ?3)")?
                    .execute(params![topic, device, field])?;
                self.fresh.push(self.key.clone());
                tx.last_insert_rowid()
            }
        };
        self.ids.insert(self.key.clone(), id);
        Ok(id)
    }

    /// Ends a batch: the series it created are kept if it committed, forgotten if not.
    pub fn settle(&mut self, committed: bool) {
        if committed {
            self.fresh.clear();
        } else {
            for key in self.fresh.drain(..) {
                self.ids.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("s.db")).unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        (dir, c)
    }

    #[test]
    fn one_id_per_series_and_no_device_is_the_empty_device() {
        let (_d, mut c) = db();
        let mut s = Series::default();
        let tx = c.transaction().unwrap();
        let a = s.id(&tx, "t", None, "x").unwrap();
        assert_eq!(s.id(&tx, "t", Some(""), "x").unwrap(), a);
        let b = s.id(&tx, "t", Some("d1"), "x").unwrap();
        let c2 = s.id(&tx, "t", Some("d1"), "y").unwrap();
        assert_eq!(s.id(&tx, "t", Some("d1"), "x").unwrap(), b);
        assert!(a != b && b != c2 && a != c2);
        tx.commit().unwrap();
        s.settle(true);
        // A second writer (a restart) finds the same ids in the table.
        let mut again = Series::default();
        let tx = c.transaction().unwrap();
        assert_eq!(again.id(&tx, "t", Some("d1"), "y").unwrap(), c2);
        let n: i64 = tx
            .query_row("SELECT count(*) FROM series", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn a_series_created_by_a_batch_that_rolled_back_is_forgotten() {
        let (_d, mut c) = db();
        let mut s = Series::default();
        let kept = {
            let tx = c.transaction().unwrap();
            let kept = s.id(&tx, "t", None, "kept").unwrap();
            tx.commit().unwrap();
            s.settle(true);
            kept
        };
        let lost = {
            let tx = c.transaction().unwrap();
            let lost = s.id(&tx, "t", None, "lost").unwrap();
            drop(tx); // rolled back
            s.settle(false);
            lost
        };
        let tx = c.transaction().unwrap();
        assert_eq!(s.id(&tx, "t", None, "kept").unwrap(), kept);
        let again = s.id(&tx, "t", None, "lost").unwrap();
        let exists: i64 = tx
            .query_row(
                "SELECT count(*) FROM series WHERE id = ?1 AND field = 'lost'",
                [again],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            exists, 1,
            "the id handed out is a row that exists (rolled-back id was {lost})"
        );
    }
}
