//! Queries for the API, on read-only connections of their own: WAL lets them run while the
//! writer commits. Nothing here may write.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use base64::Engine;
use rusqlite::{params_from_iter, types::Value, Connection, OpenFlags, OptionalExtension};

use crate::{
    config::filter_matches,
    store::{
        query::{MessageQuery, Order, StoredMessage, TopicStats},
        StoreError,
    },
    time,
};

/// A few reusable read-only connections.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: &Path) -> Self {
        Readers {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| StoreError::Query(e.to_string()))?;
                c.busy_timeout(std::time::Duration::from_secs(5))
                    .map_err(|e| StoreError::Query(e.to_string()))?;
                c
            }
        };
        let result = f(&conn).map_err(|e| StoreError::Query(e.to_string()));
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 8 {
            idle.push(conn);
        }
        result
    }
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let received: String = r.get(1)?;
    let raw: Option<Vec<u8>> = r.get(4)?;
    Ok(StoredMessage {
        id: r.get(0)?,
        received_at: time::from_sql_text(&received).unwrap_or_default(),
        topic: r.get(2)?,
        payload: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
        payload_base64: raw.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        qos: r.get(5)?,
        retain: r.get(6)?,
        content_type: r.get(7)?,
    })
}

/// Whether a page of `prefix`'s messages, with no time bounds, is cheaper to find by walking
/// the ids and skipping other topics than through the `(topic, received_at)` index.
///
/// Why: the index hands over every row of the topic, to be sorted by id for each page, so paging
/// through a topic that fills most of the table reads the whole topic once a page. Walking the
/// ids reads about `page / share` rows in order, where `share` is the topic's part of the table
/// (from the `topics` counts); the index reads `share × rows`, each looked up in the table and
/// then sorted, at about `INDEX_ROW_COST` times the cost of a row walked.
fn walk_ids(conn: &Connection, prefix: &(String, bool), page: usize) -> rusqlite::Result<bool> {
    let (p, exact) = prefix;
    let in_topic: Option<i64> = if *exact {
        conn.prepare_cached("SELECT message_count FROM topics WHERE topic = ?1")?
            .query_row([p], |r| r.get(0))
            .optional()?
    } else {
        conn.prepare_cached("SELECT sum(message_count) FROM topics WHERE topic >= ?1 AND topic < ?2")?
            .query_row([p.clone(), format!("{p}\u{10FFFF}")], |r| r.get(0))?
    };
    let Some(in_topic) = in_topic else {
        return Ok(false);
    };
    let (all, rows): (i64, i64) = conn
        .prepare_cached(
            // max and min in separate subqueries: together in one they would scan the table.
            "SELECT (SELECT coalesce(sum(message_count), 0) FROM topics),
                    coalesce((SELECT max(id) FROM messages) - (SELECT min(id) FROM messages) + 1, 0)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if all <= 0 {
        return Ok(false);
    }
    let share = in_topic as f64 / all as f64;
    Ok(INDEX_ROW_COST * share * share * rows as f64 > page as f64)
}

/// Measured on 1M rows: 2.1 µs a row through the topic index and the sort, 0.13 µs a row walked.
const INDEX_ROW_COST: f64 = 16.0;

pub fn messages(conn: &Connection, q: &MessageQuery) -> rusqlite::Result<Vec<StoredMessage>> {
    let (sql, args, page, wildcard) = messages_sql(conn, q)?;
    let mut cursor = q.after_id.unwrap_or(match q.order {
        Order::NewestFirst => i64::MAX,
        Order::OldestFirst => i64::MIN,
    });
    let mut out = Vec::new();
    let mut st = conn.prepare_cached(&sql)?;
    loop {
        let mut a = args.clone();
        a.push(Value::Integer(cursor));
        let rows: Vec<StoredMessage> = st
            .query_map(params_from_iter(a), row_to_message)?
            .collect::<rusqlite::Result<_>>()?;
        let fetched = rows.len();
        if let Some(last) = rows.last() {
            cursor = last.id;
        }
        for m in rows {
            let keep = match &q.topic {
                Some(f) if wildcard => filter_matches(f, &m.topic),
                _ => true,
            };
            if keep {
                out.push(m);
                if out.len() == q.limit {
                    return Ok(out);
                }
            }
        }
        if fetched < page {
            return Ok(out);
        }
    }
}

/// The statement for one page of `q` (its last argument, the id cursor, is added per page),
/// its arguments, the page size and whether rows must still be matched against a wildcard.
fn messages_sql(conn: &Connection, q: &MessageQuery) -> rusqlite::Result<(String, Vec<Value>, usize, bool)> {
    let prefix = q.topic_prefix();
    let wildcard = matches!(prefix, Some((_, false)));
    let page = if wildcard { q.limit.max(500) } else { q.limit };
    let walk = match &prefix {
        Some(p) if q.since.is_none() && q.until.is_none() => walk_ids(conn, p, page)?,
        _ => false,
    };
    // NOT INDEXED still walks the ids: it only keeps SQLite off the secondary indexes.
    let table = if walk { "messages NOT INDEXED" } else { "messages" };
    let mut filters = String::new();
    let mut args: Vec<Value> = Vec::new();
    match &prefix {
        Some((p, true)) => {
            filters.push_str(" AND topic = ?");
            args.push(Value::Text(p.clone()));
        }
        Some((p, false)) if !p.is_empty() => {
            // Every topic starting with the literal prefix; the wildcard part is checked below.
            filters.push_str(" AND topic >= ? AND topic < ?");
            args.push(Value::Text(p.clone()));
            args.push(Value::Text(format!("{p}\u{10FFFF}")));
        }
        _ => {}
    }
    if let Some(s) = q.since {
        filters.push_str(" AND received_at >= ?");
        args.push(Value::Text(time::to_sql_text(s)));
    }
    if let Some(u) = q.until {
        filters.push_str(" AND received_at < ?");
        args.push(Value::Text(time::to_sql_text(u)));
    }
    let (cmp, dir) = match q.order {
        Order::NewestFirst => ("<", "DESC"),
        Order::OldestFirst => (">", "ASC"),
    };
    const COLUMNS: &str = "id, received_at, topic, payload, payload_raw, qos, retain, content_type";
    let sql = if !walk && !filters.is_empty() {
        // The page's ids first, from the index alone (an index entry ends with its row's id),
        // then only those rows. Why: a topic's rows are spread over the table among the other
        // topics', so reading every row in a time range to keep the newest 100 reads a page per
        // row. Measured on 10M rows, 833 in the range, cold cache: p95 93/82 → 13/15 ms.
        format!(
            "SELECT {COLUMNS} FROM messages WHERE id IN
             (SELECT id FROM messages WHERE 1=1{filters} AND id {cmp} ? ORDER BY id {dir} LIMIT {page})
             ORDER BY id {dir}"
        )
    } else {
        format!(
            "SELECT {COLUMNS} FROM {table} WHERE 1=1{filters} AND id {cmp} ? ORDER BY id {dir} LIMIT {page}"
        )
    };
    Ok((sql, args, page, wildcard))
}

pub fn topics(conn: &Connection) -> rusqlite::Result<Vec<TopicStats>> {
    let minute_ago = time::to_sql_text(time::now() - chrono::Duration::seconds(60));
    let mut st = conn.prepare_cached(
        "SELECT t.topic, t.message_count, t.first_seen, t.last_seen,
                (SELECT count(*) FROM messages m WHERE m.topic = t.topic AND m.received_at >= ?1)
         FROM topics t ORDER BY t.topic",
    )?;
    let rows = st.query_map([minute_ago], |r| {
        let first: String = r.get(2)?;
        let last: String = r.get(3)?;
        Ok(TopicStats {
            topic: r.get(0)?,
            message_count: r.get(1)?,
            first_seen: time::from_sql_text(&first).unwrap_or_default(),
            last_seen: time::from_sql_text(&last).unwrap_or_default(),
            last_minute: r.get(4)?,
        })
    })?;
    rows.collect()
}

pub fn readings(
    conn: &Connection,
    q: &crate::store::ReadingsQuery,
) -> rusqlite::Result<Vec<crate::store::Point>> {
    use crate::store::Point;
    let (sql, args) = readings_sql(q);
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map(params_from_iter(args), |r| {
        let ts: String = r.get(0)?;
        Ok(Point {
            ts: time::from_sql_text(&ts).unwrap_or_default(),
            topic: r.get(1)?,
            device: r.get(2)?,
            field: r.get(3)?,
            count: r.get(4)?,
            min: r.get(5)?,
            max: r.get(6)?,
            avg: r.get(7)?,
            last: r.get(8)?,
        })
    })?;
    rows.collect()
}

/// The newest reading of each series matching `q`, from `readings_latest` (one row per series:
/// its key order is the answer's order, so no sort).
pub fn latest(
    conn: &Connection,
    q: &crate::store::LatestQuery,
) -> rusqlite::Result<Vec<crate::store::LatestReading>> {
    let mut sql = String::from("SELECT topic, device, field, value, text, ts FROM readings_latest WHERE 1=1");
    let mut args: Vec<Value> = Vec::new();
    for (column, filter) in [("topic", &q.topic), ("device", &q.device), ("field", &q.field)] {
        if let Some(v) = filter {
            sql.push_str(&format!(" AND {column} = ?"));
            args.push(Value::Text(v.clone()));
        }
    }
    sql.push_str(&format!(" ORDER BY topic, device, field LIMIT {}", q.limit));
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map(params_from_iter(args), |r| {
        let device: String = r.get(1)?;
        let ts: String = r.get(5)?;
        Ok(crate::store::LatestReading {
            topic: r.get(0)?,
            // The table's key holds '' for a series without a device.
            device: (!device.is_empty()).then_some(device),
            field: r.get(2)?,
            value: r.get(3)?,
            text: r.get(4)?,
            ts: time::from_sql_text(&ts).unwrap_or_default(),
        })
    })?;
    rows.collect()
}

/// The SQL of a readings query and its arguments. Raw readings naming a topic or a device start
/// from those few `series` rows and read each one's points through the `(series_id, ts)` index
/// (`CROSS JOIN` fixes that order); SQLite's planner has no statistics to know that `series` is
/// small, and through the `readings` view it walks the `(ts)` index over every series instead.
fn readings_sql(q: &crate::store::ReadingsQuery) -> (String, Vec<Value>) {
    use crate::store::Resolution;
    const RAW: &str = "SELECT ts, topic, device, field, 1, value, value, value, value";
    let by_series = q.topic.is_some() || q.device.is_some();
    let (from, ts_col) = match q.resolution {
        Resolution::Raw if by_series => (
            format!("{RAW} FROM series s CROSS JOIN series_points p ON p.series_id = s.id WHERE value IS NOT NULL"),
            "ts",
        ),
        Resolution::Raw => (format!("{RAW} FROM readings WHERE value IS NOT NULL"), "ts"),
        Resolution::Minute => (
            "SELECT bucket, topic, nullif(device, ''), field, count, min, max, avg, last FROM readings_1m WHERE 1=1".into(),
            "bucket",
        ),
        Resolution::Hour => (
            "SELECT bucket, topic, nullif(device, ''), field, count, min, max, avg, last FROM readings_1h WHERE 1=1".into(),
            "bucket",
        ),
    };
    let mut sql = from;
    let mut args: Vec<Value> = Vec::new();
    if let Some(t) = &q.topic {
        sql.push_str(" AND topic = ?");
        args.push(Value::Text(t.clone()));
    }
    if let Some(d) = &q.device {
        sql.push_str(" AND device = ?");
        args.push(Value::Text(d.clone()));
    }
    if let Some(f) = &q.field {
        sql.push_str(" AND field = ?");
        args.push(Value::Text(f.clone()));
    }
    if let Some(s) = q.since {
        sql.push_str(&format!(" AND {ts_col} >= ?"));
        args.push(Value::Text(time::to_sql_text(s)));
    }
    if let Some(u) = q.until {
        sql.push_str(&format!(" AND {ts_col} < ?"));
        args.push(Value::Text(time::to_sql_text(u)));
    }
    sql.push_str(&format!(" ORDER BY {ts_col} LIMIT {}", q.limit));
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database where `big` fills most of the table and `rare` a few rows.
    fn filled() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("q.db")).unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        let tx = c.transaction().unwrap();
        for i in 0..3000 {
            let topic = if i % 500 == 7 { "rare" } else { "big" };
            tx.execute(
                "INSERT INTO messages (received_at, topic, payload, payload_size, qos, retain, source)
                 VALUES ('2026-12-03 10:00:00.000', ?1, ?2, 1, 1, 0, 'http')",
                rusqlite::params![topic, i.to_string()],
            )
            .unwrap();
        }
        tx.execute_batch(
            "INSERT INTO topics SELECT topic, count(*), min(received_at), max(received_at) FROM messages GROUP BY topic",
        )
        .unwrap();
        tx.commit().unwrap();
        (dir, c)
    }

    fn query(topic: &str, after_id: Option<i64>, order: Order) -> MessageQuery {
        MessageQuery {
            topic: Some(topic.into()),
            since: None,
            until: None,
            after_id,
            limit: 100,
            order,
        }
    }

    /// SQLite's plan for `sql`, its steps joined by `; `.
    fn explain(c: &Connection, sql: &str, args: Vec<Value>) -> String {
        let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = st
            .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    fn plan(c: &Connection, q: &MessageQuery) -> String {
        let (sql, mut args, ..) = messages_sql(c, q).unwrap();
        args.push(Value::Integer(0));
        explain(c, &sql, args)
    }

    /// Raw readings of a device or topic go through its series, whatever the time range, and
    /// answer exactly its points; the same query without them goes through the `(ts)` index.
    #[test]
    fn raw_readings_of_a_device_or_topic_are_read_series_by_series() {
        use crate::store::{ReadingsQuery, Resolution};
        let dir = tempfile::tempdir().unwrap();
        let mut c = Connection::open(dir.path().join("r.db")).unwrap();
        crate::store::sqlite::schema::migrate(&mut c).unwrap();
        let tx = c.transaction().unwrap();
        for d in 0..20 {
            for f in ["temp", "hum"] {
                tx.execute(
                    "INSERT INTO series (topic, device, field) VALUES (?1, ?2, ?3)",
                    rusqlite::params![format!("site/d{d}"), format!("d{d}"), f],
                )
                .unwrap();
            }
        }
        for i in 0..4000i64 {
            let ts = time::to_sql_text(
                time::from_sql_text("2026-12-06 00:00:00.000").unwrap() + chrono::Duration::seconds(i),
            );
            tx.execute(
                "INSERT INTO series_points (message_id, series_id, ts, value, ts_source) VALUES (?1, ?2, ?3, ?4, 'payload')",
                rusqlite::params![i, i % 40 + 1, ts, i as f64],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        let q = |topic: Option<&str>, device: Option<&str>| ReadingsQuery {
            topic: topic.map(Into::into),
            device: device.map(Into::into),
            field: Some("temp".into()),
            since: Some(time::from_sql_text("2026-12-06 00:10:00.000").unwrap()),
            until: None,
            resolution: Resolution::Raw,
            limit: 5000,
        };
        let plan = |q: &ReadingsQuery| -> String {
            let (sql, args) = readings_sql(q);
            explain(&c, &sql, args)
        };
        for (topic, device) in [(None, Some("d7")), (Some("site/d7"), None)] {
            let p = plan(&q(topic, device));
            assert!(
                p.starts_with("SCAN s") || p.starts_with("SEARCH s"),
                "series first: {p}"
            );
            assert!(p.contains("INDEX series_points_series_ts"), "{p}");
            let pts = readings(&c, &q(topic, device)).unwrap();
            // d7's temp is series 15: points 14, 54, 94, … from 00:10 (i >= 600) on.
            let want: Vec<f64> = (600..4000).filter(|i| i % 40 == 14).map(|i| i as f64).collect();
            assert_eq!(pts.iter().map(|p| p.last).collect::<Vec<_>>(), want);
            assert!(pts
                .iter()
                .all(|p| p.device.as_deref() == Some("d7") && p.field == "temp"));
        }
        let all = readings(&c, &q(None, None)).unwrap();
        assert_eq!(all.len(), (600..4000).filter(|i| i % 2 == 0).count());
        assert!(plan(&q(None, None)).contains("series_points_ts"));
    }

    #[test]
    fn a_page_of_a_large_topic_walks_the_ids_and_a_rare_topic_uses_its_index() {
        let (_dir, c) = filled();
        let big = plan(&c, &query("big", None, Order::NewestFirst));
        assert!(!big.contains("TEMP B-TREE") && !big.contains("INDEX"), "{big}");
        // Through the index, the page's ids come from the index alone; only those rows are read.
        let rare = plan(&c, &query("rare", None, Order::NewestFirst));
        assert!(
            rare.contains("COVERING INDEX messages_topic_received_at"),
            "{rare}"
        );
        // A time range keeps the index: it bounds the rows the topic hands over.
        let since = |mut q: MessageQuery| {
            q.since = Some(time::from_sql_text("2026-12-03 09:00:00.000").unwrap());
            q
        };
        let timed = plan(&c, &since(query("big", None, Order::OldestFirst)));
        assert!(
            timed.contains("COVERING INDEX messages_topic_received_at"),
            "{timed}"
        );

        // Either way, the pages are the topic's rows in id order.
        let ids = |topic: &str| -> Vec<i64> {
            let mut st = c
                .prepare("SELECT id FROM messages WHERE topic = ?1 ORDER BY id")
                .unwrap();
            st.query_map([topic], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        for (topic, timed) in [("big", false), ("rare", false), ("big", true), ("rare", true)] {
            for order in [Order::OldestFirst, Order::NewestFirst] {
                let mut want = ids(topic);
                if order == Order::NewestFirst {
                    want.reverse();
                }
                let mut got = Vec::new();
                let mut after = None;
                loop {
                    let q = query(topic, after, order);
                    let page = messages(&c, &if timed { since(q) } else { q }).unwrap();
                    assert!(page.iter().all(|m| m.topic == topic));
                    got.extend(page.iter().map(|m| m.id));
                    match page.last() {
                        Some(m) if page.len() == 100 => after = Some(m.id),
                        _ => break,
                    }
                }
                assert_eq!(got, want, "{topic} {order:?} timed: {timed}");
            }
        }
    }
}
