//! Many rows into one table through few statements: multi-row `INSERT … VALUES` in chunks of
//! fixed sizes. It owns the chunking only; what a row holds is the caller's, and it must never
//! reorder rows (the callers count ids off the order) or be used outside a transaction that is
//! all or nothing.
//!
//! Why: a statement opens its b-tree cursors afresh, so a one-row `INSERT` descends from the root
//! of the table and of each index for every row. One statement for many rows keeps them open, and
//! the table and its time index are appended to where the cursor already is. Staging the rows in
//! an in-memory table and moving them with one `INSERT … SELECT` did the same, at the price of
//! writing each row twice and reading it back once.
//!
//! `OR ROLLBACK`: a statement that writes many rows and could fail halfway keeps a statement
//! journal, a copy of each page it changes, so that it alone can be undone. The batch is undone
//! whole on any error anyway, so a failed row rolls back the transaction instead, and SQLite keeps
//! no such journal. That journal cost the writer more time than the statements saved.

use rusqlite::{Connection, Statement};

/// Statement sizes, largest first. Any count is made of at most three of each smaller size, and
/// each size is compiled once per connection (the statement cache keeps it). Counted with
/// `scripts/cost`, 16 rows a statement cost fewer instructions than 4, 32, 64 or 128.
const CHUNKS: [usize; 3] = [16, 4, 1];

/// Inserts `n` rows into `table` in order, and returns how many went in. `bind(statement, row,
/// first)` binds row `row`'s values, one per name in `columns` (comma-separated), at parameters
/// `first`, `first + 1`, ….
pub fn insert(
    tx: &Connection,
    table: &str,
    columns: &str,
    n: usize,
    mut bind: impl FnMut(&mut Statement<'_>, usize, usize) -> rusqlite::Result<()>,
) -> rusqlite::Result<usize> {
    let width = columns.split(',').count();
    let mut done = 0;
    let mut inserted = 0;
    for chunk in CHUNKS {
        if n - done < chunk {
            continue;
        }
        let mut st = tx.prepare_cached(&sql(table, columns, width, chunk))?;
        while n - done >= chunk {
            for row in 0..chunk {
                bind(&mut st, done + row, row * width + 1)?;
            }
            inserted += st.raw_execute()?;
            done += chunk;
        }
    }
    Ok(inserted)
}

fn sql(table: &str, columns: &str, width: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; width].join(","));
    format!(
        "INSERT OR ROLLBACK INTO {table} ({columns}) VALUES {}",
        vec![row; rows].join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_count_goes_in_whole_and_in_order() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b TEXT)")
            .unwrap();
        let mut expected = Vec::new();
        for n in [0, 1, 3, 4, 5, 16, 21, 127, 128, 129, 300] {
            let rows: Vec<(i64, String)> = (0..n).map(|i| (i as i64, format!("r{n}-{i}"))).collect();
            let tx = conn.unchecked_transaction().unwrap();
            let inserted = insert(&tx, "t", "a, b", rows.len(), |st, i, p| {
                st.raw_bind_parameter(p, rows[i].0)?;
                st.raw_bind_parameter(p + 1, &rows[i].1)
            })
            .unwrap();
            tx.commit().unwrap();
            assert_eq!(inserted, n, "rows inserted for a batch of {n}");
            expected.extend(rows);
        }
        let stored: Vec<(i64, String)> = conn
            .prepare("SELECT a, b FROM t ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(stored, expected);
    }

    #[test]
    fn a_row_that_fails_rolls_back_the_whole_transaction() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT NOT NULL)")
            .unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO t (a) VALUES ('before')", []).unwrap();
        let rows = ["x", "y", "z"]
            .map(Some)
            .into_iter()
            .chain([None])
            .collect::<Vec<_>>();
        let err = insert(&tx, "t", "a", rows.len(), |st, i, p| {
            st.raw_bind_parameter(p, rows[i])
        })
        .unwrap_err();
        assert!(err.to_string().contains("NOT NULL"), "{err}");
        assert!(tx.is_autocommit(), "the transaction is over");
        drop(tx);
        let left: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "nothing of the transaction is left");
    }
}
