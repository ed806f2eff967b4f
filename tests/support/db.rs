//! Reads a tidegate SQLite file the way a user (or Metabase) would.

use std::{path::Path, time::Duration};

use rusqlite::Connection;

pub fn open(path: &Path) -> Connection {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(3)).unwrap();
    c
}

pub fn count(path: &Path, sql: &str) -> i64 {
    if !path.exists() {
        return 0;
    }
    let c = open(path);
    c.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

/// Waits until `SELECT count(*)`-style `sql` returns at least `n`; returns the last value.
pub fn wait_count(path: &Path, sql: &str, n: i64, timeout: Duration) -> i64 {
    let mut last = 0;
    super::wait_for(timeout, || {
        last = count(path, sql);
        (last >= n).then_some(())
    });
    last
}

/// Payloads of every stored message on `topic`, in id order.
pub fn payloads(path: &Path, topic: &str) -> Vec<String> {
    let c = open(path);
    let mut st = c
        .prepare("SELECT payload FROM messages WHERE topic = ?1 ORDER BY id")
        .unwrap();
    st.query_map([topic], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Checks that every `seq-<n>` for n in 0..total is stored exactly once; returns (missing, duplicated).
pub fn exactly_once(path: &Path, topic: &str, total: usize) -> (Vec<usize>, Vec<usize>) {
    tally(payloads(path, topic).iter().map(String::as_str), total)
}

/// Counts `seq-<n>` payloads: (numbers never seen, numbers seen more than once).
pub fn tally<'a>(payloads: impl Iterator<Item = &'a str>, total: usize) -> (Vec<usize>, Vec<usize>) {
    let mut seen = vec![0u32; total];
    for p in payloads {
        if let Some(n) = p.strip_prefix("seq-").and_then(|s| s.parse::<usize>().ok()) {
            if n < total {
                seen[n] += 1;
            }
        }
    }
    let missing = seen
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == 0)
        .map(|(i, _)| i)
        .collect();
    let dup = seen
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 1)
        .map(|(i, _)| i)
        .collect();
    (missing, dup)
}

pub fn seq_lines(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("seq-{i}")).collect()
}

/// `exactly_once` for a PostgreSQL database (by URL, via psql).
pub fn pg_exactly_once(url: &str, topic: &str, total: usize) -> (Vec<usize>, Vec<usize>) {
    let out = std::process::Command::new("psql")
        .args([
            url,
            "-tAc",
            &format!("SELECT payload FROM messages WHERE topic = '{topic}'"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    tally(String::from_utf8_lossy(&out.stdout).lines(), total)
}

/// Waits until `sql` (a count) on a PostgreSQL database reaches `n`.
pub fn pg_wait_count(url: &str, sql: &str, n: i64, timeout: std::time::Duration) -> i64 {
    let mut last = 0;
    super::wait_for(timeout, || {
        let out = std::process::Command::new("psql")
            .args([url, "-tAc", sql])
            .output()
            .ok()?;
        last = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        (last >= n).then_some(())
    });
    last
}
