//! Queries for the API, on read-only connections of their own: WAL lets them run while the
//! writer commits. Nothing here may write.

use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use base64::Engine;
use rusqlite::{params_from_iter, types::Value, Connection, OpenFlags};

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

pub fn messages(conn: &Connection, q: &MessageQuery) -> rusqlite::Result<Vec<StoredMessage>> {
    let mut sql = String::from(
        "SELECT id, received_at, topic, payload, payload_raw, qos, retain, content_type FROM messages WHERE 1=1",
    );
    let mut args: Vec<Value> = Vec::new();
    let prefix = q.topic_prefix();
    match &prefix {
        Some((p, true)) => {
            sql.push_str(" AND topic = ?");
            args.push(Value::Text(p.clone()));
        }
        Some((p, false)) if !p.is_empty() => {
            // Every topic starting with the literal prefix; the wildcard part is checked below.
            sql.push_str(" AND topic >= ? AND topic < ?");
            args.push(Value::Text(p.clone()));
            args.push(Value::Text(format!("{p}\u{10FFFF}")));
        }
        _ => {}
    }
    if let Some(s) = q.since {
        sql.push_str(" AND received_at >= ?");
        args.push(Value::Text(time::to_sql_text(s)));
    }
    if let Some(u) = q.until {
        sql.push_str(" AND received_at < ?");
        args.push(Value::Text(time::to_sql_text(u)));
    }
    let (cmp, dir) = match q.order {
        Order::NewestFirst => ("<", "DESC"),
        Order::OldestFirst => (">", "ASC"),
    };
    let wildcard = matches!(prefix, Some((_, false)));
    let page = if wildcard { q.limit.max(500) } else { q.limit };
    sql.push_str(&format!(" AND id {cmp} ? ORDER BY id {dir} LIMIT {page}"));
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
    use crate::store::{Point, Resolution};
    let (from, ts_col) = match q.resolution {
        Resolution::Raw => (
            "SELECT ts, topic, device, field, 1, value, value, value, value FROM readings WHERE value IS NOT NULL",
            "ts",
        ),
        Resolution::Minute => (
            "SELECT bucket, topic, nullif(device, ''), field, count, min, max, avg, last FROM readings_1m WHERE 1=1",
            "bucket",
        ),
        Resolution::Hour => (
            "SELECT bucket, topic, nullif(device, ''), field, count, min, max, avg, last FROM readings_1h WHERE 1=1",
            "bucket",
        ),
    };
    let mut sql = from.to_string();
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
