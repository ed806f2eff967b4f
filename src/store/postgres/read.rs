//! Queries for the API. Values are bound parameters; the SQL text is fixed per query shape.

use base64::Engine;
use tokio_postgres::{types::ToSql, Client, Row};

use crate::{
    config::filter_matches,
    store::query::{MessageQuery, Order, StoredMessage, TopicStats},
};

fn row_to_message(r: &Row) -> StoredMessage {
    let raw: Option<Vec<u8>> = r.get(4);
    let qos: i16 = r.get(5);
    StoredMessage {
        id: r.get(0),
        received_at: r.get(1),
        topic: r.get(2),
        payload: r.get::<_, Option<String>>(3).unwrap_or_default(),
        payload_base64: raw.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        qos: qos as u8,
        retain: r.get(6),
        content_type: r.get(7),
    }
}

pub async fn messages(
    client: &Client,
    q: &MessageQuery,
) -> Result<Vec<StoredMessage>, tokio_postgres::Error> {
    let mut sql = String::from(
        "SELECT id, received_at, topic, payload, payload_raw, qos, retain, content_type FROM messages WHERE true",
    );
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut n = 0;
    let mut arg = |sql: &mut String, frag: &str, v: Box<dyn ToSql + Sync + Send>| {
        n += 1;
        sql.push_str(&frag.replace('$', &format!("${n}")));
        args.push(v);
    };
    let prefix = q.topic_prefix();
    match &prefix {
        Some((p, true)) => {
            arg(
                &mut sql,
                " AND left(topic, 256) COLLATE \"C\" = left($, 256)",
                Box::new(p.clone()),
            );
            arg(&mut sql, " AND topic = $", Box::new(p.clone()));
        }
        Some((p, false)) if !p.is_empty() => {
            if p.chars().count() <= 256 {
                arg(
                    &mut sql,
                    " AND left(topic, 256) COLLATE \"C\" >= $",
                    Box::new(p.clone()),
                );
                arg(
                    &mut sql,
                    " AND left(topic, 256) COLLATE \"C\" < $",
                    Box::new(format!("{p}\u{10FFFF}")),
                );
            }
            arg(&mut sql, " AND starts_with(topic, $)", Box::new(p.clone()));
        }
        _ => {}
    }
    if let Some(s) = q.since {
        arg(&mut sql, " AND received_at >= $", Box::new(s));
    }
    if let Some(u) = q.until {
        arg(&mut sql, " AND received_at < $", Box::new(u));
    }
    let (cmp, dir) = match q.order {
        Order::NewestFirst => ("<", "DESC"),
        Order::OldestFirst => (">", "ASC"),
    };
    let wildcard = matches!(prefix, Some((_, false)));
    let page = if wildcard { q.limit.max(500) } else { q.limit };
    let cursor_index = n + 1;
    sql.push_str(&format!(
        " AND id {cmp} ${cursor_index} ORDER BY id {dir} LIMIT {page}"
    ));
    let stmt = client.prepare(&sql).await?;
    let mut cursor = q.after_id.unwrap_or(match q.order {
        Order::NewestFirst => i64::MAX,
        Order::OldestFirst => i64::MIN,
    });
    let mut out = Vec::new();
    loop {
        let mut params: Vec<&(dyn ToSql + Sync)> =
            args.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
        params.push(&cursor);
        let rows = client.query(&stmt, &params).await?;
        let fetched = rows.len();
        let mut last = cursor;
        for r in &rows {
            let m = row_to_message(r);
            last = m.id;
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
        cursor = last;
        if fetched < page {
            return Ok(out);
        }
    }
}

/// A digest of every column of the tables and views in the current schema: it changes when one
/// is added or dropped. PostgreSQL keeps no schema counter as SQLite does.
pub async fn schema_version(client: &Client) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(hashtextextended(string_agg(c.relname || '.' || a.attname || ':' || a.atttypid::text, ','
                                                         ORDER BY c.relname, a.attnum), 0), 0)
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

pub async fn topics(client: &Client) -> Result<Vec<TopicStats>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT t.topic, t.message_count, t.first_seen, t.last_seen,
                    (SELECT count(*) FROM messages m
                     WHERE left(m.topic, 256) COLLATE \"C\" = left(t.topic, 256) AND m.topic = t.topic
                       AND m.received_at >= now() - interval '1 minute')
             FROM topics t ORDER BY t.topic",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TopicStats {
            topic: r.get(0),
            message_count: r.get(1),
            first_seen: r.get(2),
            last_seen: r.get(3),
            last_minute: r.get(4),
        })
        .collect())
}

/// The newest reading of each series matching `q`: the series first, then each one's row of
/// `series_latest`. Ordered as SQLite orders `readings_latest`'s key (bytes; no device first).
pub async fn latest(
    client: &Client,
    q: &crate::store::LatestQuery,
) -> Result<Vec<crate::store::LatestReading>, tokio_postgres::Error> {
    let mut sql = String::from(
        "SELECT s.topic, s.device, s.field, l.value, l.text, l.ts
         FROM series s JOIN series_latest l ON l.series_id = s.id WHERE true",
    );
    let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
    for (column, filter) in [
        ("s.topic", &q.topic),
        ("s.device", &q.device),
        ("s.field", &q.field),
    ] {
        if let Some(v) = filter {
            args.push(v);
            sql.push_str(&format!(" AND {column} = ${}", args.len()));
        }
    }
    sql.push_str(&format!(
        r#" ORDER BY s.topic COLLATE "C", coalesce(s.device, '') COLLATE "C", s.field COLLATE "C" LIMIT {}"#,
        q.limit
    ));
    let rows = client.query(&sql, &args).await?;
    Ok(rows
        .iter()
        .map(|r| crate::store::LatestReading {
            topic: r.get(0),
            device: r.get::<_, Option<String>>(1).filter(|d| !d.is_empty()),
            field: r.get(2),
            value: r.get(3),
            text: r.get(4),
            ts: r.get(5),
        })
        .collect())
}

pub async fn readings(
    client: &Client,
    q: &crate::store::ReadingsQuery,
) -> Result<Vec<crate::store::Point>, tokio_postgres::Error> {
    use crate::store::{Point, Resolution};
    // Straight from the tables behind the views: the series first (a few rows), then each
    // one's points or buckets through its series index.
    let (from, ts_col) = match q.resolution {
        Resolution::Raw => (
            "SELECT p.ts, s.topic, s.device, s.field, 1::bigint, p.value, p.value, p.value, p.value
             FROM series_points p JOIN series s ON s.id = p.series_id WHERE p.value IS NOT NULL",
            "p.ts",
        ),
        Resolution::Minute => (
            "SELECT r.bucket, s.topic, s.device, s.field, r.count, r.min, r.max, r.avg, r.last
             FROM series_1m r JOIN series s ON s.id = r.series_id WHERE true",
            "r.bucket",
        ),
        Resolution::Hour => (
            "SELECT r.bucket, s.topic, s.device, s.field, r.count, r.min, r.max, r.avg, r.last
             FROM series_1h r JOIN series s ON s.id = r.series_id WHERE true",
            "r.bucket",
        ),
    };
    let mut sql = from.to_string();
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut push = |sql: &mut String, frag: &str, v: Box<dyn ToSql + Sync + Send>| {
        args.push(v);
        sql.push_str(&frag.replace('$', &format!("${}", args.len())));
    };
    if let Some(t) = &q.topic {
        push(&mut sql, " AND s.topic = $", Box::new(t.clone()));
    }
    if let Some(d) = &q.device {
        push(&mut sql, " AND s.device = $", Box::new(d.clone()));
    }
    if let Some(f) = &q.field {
        push(&mut sql, " AND s.field = $", Box::new(f.clone()));
    }
    if let Some(s) = q.since {
        push(&mut sql, &format!(" AND {ts_col} >= $"), Box::new(s));
    }
    if let Some(u) = q.until {
        push(&mut sql, &format!(" AND {ts_col} < $"), Box::new(u));
    }
    sql.push_str(&format!(" ORDER BY {ts_col} LIMIT {}", q.limit));
    let params: Vec<&(dyn ToSql + Sync)> = args.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)).collect();
    let rows = client.query(&sql, &params).await?;
    Ok(rows
        .iter()
        .map(|r| Point {
            ts: r.get(0),
            topic: r.get(1),
            device: r.get(2),
            field: r.get(3),
            count: r.get(4),
            min: r.get(5),
            max: r.get(6),
            avg: r.get(7),
            last: r.get(8),
        })
        .collect())
}
