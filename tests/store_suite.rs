//! One suite, every store: the same writes and queries against SQLite and PostgreSQL (a fresh
//! database on the machine's server), through the `Store` trait the pipeline and API use.

mod support;

use std::sync::Arc;

use bytes::Bytes;
use tidegate::{
    config::{DbUrl, SqliteSync, StoreSettings},
    message::{Message, Origin},
    store::{self, postgres::PgStore, MessageQuery, Order, Outcome, Store},
};

fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn stores() -> Vec<(String, StoreSettings, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = StoreSettings {
        db: DbUrl::Sqlite(dir.path().join("suite.db")),
        sqlite_sync: SqliteSync::Full,
        batch_size: 5000,
    };
    let pg_url = support::pg::fresh_database(&support::pg::shared());
    let pg = StoreSettings {
        db: DbUrl::parse(&pg_url).unwrap(),
        sqlite_sync: SqliteSync::Full,
        batch_size: 5000,
    };
    vec![
        ("sqlite".into(), sqlite, Some(dir)),
        ("postgres".into(), pg, None),
    ]
}

/// A fresh PostgreSQL database: its server, its name, and store settings for it.
fn fresh_pg() -> (String, String, StoreSettings) {
    let server = support::pg::shared();
    let url = support::pg::fresh_database(&server);
    let db = url
        .split('?')
        .next()
        .and_then(|u| u.rsplit('/').next())
        .unwrap()
        .to_string();
    let settings = StoreSettings {
        db: DbUrl::parse(&url).unwrap(),
        sqlite_sync: SqliteSync::Full,
        batch_size: 5000,
    };
    (server, db, settings)
}

fn msg(topic: &str, payload: &[u8]) -> Message {
    Message::new(
        topic.into(),
        Bytes::copy_from_slice(payload),
        1,
        false,
        Origin::Http,
        1 << 20,
    )
}

fn mqtt(topic: &str, payload: &[u8], pkid: u16, dup: bool) -> Message {
    let origin = Origin::Mqtt {
        session: "suite-session".into(),
        pkid,
        redelivery: dup,
    };
    Message::new(
        topic.into(),
        Bytes::copy_from_slice(payload),
        1,
        false,
        origin,
        1 << 20,
    )
}

async fn write(s: &Arc<dyn Store>, batch: Vec<Message>) -> Vec<Outcome> {
    s.write(Arc::new(batch)).await.unwrap().outcomes().to_vec()
}

/// One topic's field in the raw readings (at most 1,000 points).
async fn raw_points(s: &Arc<dyn Store>, topic: &str, field: &str) -> Vec<tidegate::store::Point> {
    s.readings(tidegate::store::ReadingsQuery {
        topic: Some(topic.into()),
        device: None,
        field: Some(field.into()),
        since: None,
        until: None,
        resolution: tidegate::store::Resolution::Raw,
        limit: 1000,
    })
    .await
    .unwrap()
}

/// The values of one topic's field in the raw readings, sorted.
async fn raw_values(s: &Arc<dyn Store>, topic: &str, field: &str) -> Vec<f64> {
    let mut values: Vec<f64> = raw_points(s, topic, field).await.iter().map(|p| p.last).collect();
    values.sort_by(f64::total_cmp);
    values
}

fn all(topic: Option<&str>) -> MessageQuery {
    MessageQuery {
        topic: topic.map(String::from),
        since: None,
        until: None,
        after_id: None,
        limit: 1000,
        order: Order::OldestFirst,
    }
}

#[test]
fn every_store_writes_dedups_and_answers_queries_the_same_way() {
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // Rows, ids in order, outcomes per message.
            let out = write(&s, vec![msg("a/1", b"x"), msg("a/2", b"y"), msg("b", b"z")]).await;
            let ids: Vec<i64> = out
                .iter()
                .map(|o| match o {
                    Outcome::Stored { id } => *id,
                    other => panic!("{name}: {other:?}"),
                })
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}: {ids:?}");

            // Redelivery of a committed message is a duplicate; identical new messages are not.
            assert_eq!(
                write(&s, vec![mqtt("r", b"1", 7, false)]).await[0],
                Outcome::Stored { id: ids[2] + 1 },
                "{name}"
            );
            assert_eq!(
                write(&s, vec![mqtt("r", b"1", 7, true)]).await,
                [Outcome::Duplicate],
                "{name}"
            );
            let out = write(
                &s,
                vec![
                    mqtt("r", b"1", 8, false),
                    mqtt("r", b"1", 9, false),
                    mqtt("r", b"1", 8, true),
                ],
            )
            .await;
            assert!(
                matches!(
                    out[..],
                    [Outcome::Stored { .. }, Outcome::Stored { .. }, Outcome::Duplicate]
                ),
                "{name}: {out:?}"
            );

            // Retained replays once; rejections recorded, not stored.
            let mut ret = mqtt("status", b"on", 20, false);
            ret.retain = true;
            let mut ret2 = ret.clone();
            ret2.origin = Origin::Mqtt {
                session: "other".into(),
                pkid: 1,
                redelivery: false,
            };
            assert!(matches!(write(&s, vec![ret]).await[..], [Outcome::Stored { .. }]));
            assert_eq!(write(&s, vec![ret2]).await, [Outcome::Duplicate], "{name}");
            let big = Message::new(
                "big".into(),
                Bytes::from(vec![0u8; 100]),
                1,
                false,
                Origin::Http,
                10,
            );
            assert_eq!(write(&s, vec![big]).await, [Outcome::Rejected], "{name}");

            // Hostile content is stored exactly (bytes kept where text cannot hold them).
            let long = format!("t/{}", "ü".repeat(3000));
            let odd = "t/it's \"quoted\"/100%/'; DROP TABLE messages; --/🚀";
            let out = write(
                &s,
                vec![
                    msg("t/nul", b"a\0b"),
                    msg("t/bin", b"\xff\xfe\x00"),
                    msg(&long, b"long"),
                    msg(odd, b"odd"),
                    msg("t/empty", b""),
                ],
            )
            .await;
            assert!(
                out.iter().all(|o| matches!(o, Outcome::Stored { .. })),
                "{name}: {out:?}"
            );
            let nul = &s.messages(all(Some("t/nul"))).await.unwrap()[0];
            assert_eq!(
                nul.payload.replace('\u{FFFD}', "\0").as_bytes(),
                b"a\0b",
                "{name}"
            );
            let bin = &s.messages(all(Some("t/bin"))).await.unwrap()[0];
            assert_eq!(bin.payload_base64.as_deref(), Some("//4A"), "{name}");
            assert_eq!(
                s.messages(all(Some(&long))).await.unwrap()[0].payload,
                "long",
                "{name}"
            );
            assert_eq!(
                s.messages(all(Some(odd))).await.unwrap()[0].payload,
                "odd",
                "{name}"
            );
            assert_eq!(
                s.messages(all(Some("t/empty"))).await.unwrap()[0].payload,
                "",
                "{name}"
            );

            // Filters, order, cursor, time range.
            let a: Vec<String> = s
                .messages(all(Some("a/+")))
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.topic)
                .collect();
            assert_eq!(a, ["a/1", "a/2"], "{name}");
            let t = s.messages(all(Some("t/#"))).await.unwrap();
            assert_eq!(t.len(), 5, "{name}");
            let newest = s
                .messages(MessageQuery {
                    order: Order::NewestFirst,
                    limit: 2,
                    ..all(None)
                })
                .await
                .unwrap();
            let next = s
                .messages(MessageQuery {
                    order: Order::NewestFirst,
                    limit: 2,
                    after_id: Some(newest[1].id),
                    ..all(None)
                })
                .await
                .unwrap();
            assert!(newest[0].id > newest[1].id && newest[1].id > next[0].id, "{name}");
            let future = chrono::Utc::now() + chrono::Duration::hours(1);
            assert!(s
                .messages(MessageQuery {
                    since: Some(future),
                    ..all(None)
                })
                .await
                .unwrap()
                .is_empty());
            assert_eq!(
                s.messages(MessageQuery {
                    until: Some(future),
                    ..all(Some("b"))
                })
                .await
                .unwrap()
                .len(),
                1
            );

            let topics = s.topics().await.unwrap();
            let r = topics.iter().find(|t| t.topic == "r").unwrap();
            assert_eq!((r.message_count, r.last_minute), (3, 3), "{name}");
            assert!(
                topics.iter().all(|t| t.topic != "big"),
                "{name}: rejected messages are not topics"
            );
        });
    }
}

#[test]
fn every_store_migrates_once_and_keeps_the_seed_contract() {
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let a = store::open(&settings).await.unwrap();
            write(&a, vec![msg("x", b"1")]).await;
            drop(a);
            // Opening again is a no-op migration; the row is still there, through `dados` too.
            let b = store::open(&settings).await.unwrap();
            assert_eq!(b.messages(all(None)).await.unwrap().len(), 1, "{name}");
        });
        match &settings.db {
            DbUrl::Sqlite(p) => {
                let c = rusqlite::Connection::open(p).unwrap();
                let v: String = c.query_row("SELECT valor FROM dados", [], |r| r.get(0)).unwrap();
                assert_eq!(v, "1");
                c.pragma_update(None, "user_version", 99).unwrap();
            }
            DbUrl::Postgres(t) => {
                let db = t.config.get_dbname().unwrap();
                assert_eq!(
                    support::pg::psql(&support::pg::shared(), db, "SELECT valor FROM dados"),
                    "1"
                );
                support::pg::psql(
                    &support::pg::shared(),
                    db,
                    "INSERT INTO tidegate_schema VALUES (99)",
                );
            }
        }
        // A database from a newer tidegate is refused, not touched.
        let err = rt().block_on(store::open(&settings)).err().unwrap().to_string();
        assert!(err.contains("newer tidegate"), "{name}: {err}");
    }
}

/// A message with readings, at a fixed event time, whose field `v` is `v`.
fn timed_reading(topic: &str, v: &str) -> Message {
    with_readings(msg(
        topic,
        format!(r#"{{"ts":"2026-11-25T10:00:00Z","v":{v}}}"#).as_bytes(),
    ))
}

fn with_readings(mut m: Message) -> Message {
    m.derived = tidegate::readings::derive(&Default::default(), &m.topic, &m.payload, m.received_at);
    m
}

/// Rollups recomputed from `readings` with plain SQL, as (table, topic, device, field, bucket, count, min, max, sum, last).
fn recompute_sqlite(path: &std::path::Path) -> Vec<(String, String, String, i64, i64, i64, i64)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut out = Vec::new();
    for (table, fmt) in [
        ("readings_1m", "%Y-%m-%d %H:%M:00.000"),
        ("readings_1h", "%Y-%m-%d %H:00:00.000"),
    ] {
        let stored: Vec<(String, i64, i64, i64, i64)> = c
            .prepare(&format!("SELECT topic||'|'||device||'|'||field||'|'||bucket, count, CAST(round(min*1000) AS INT), CAST(round(max*1000) AS INT), CAST(round(last*1000) AS INT) FROM {table} ORDER BY 1"))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let fresh: Vec<(String, i64, i64, i64, i64)> = c
            .prepare(&format!(
                "SELECT topic||'|'||ifnull(device,'')||'|'||field||'|'||strftime('{fmt}', ts), count(*), CAST(round(min(value)*1000) AS INT), CAST(round(max(value)*1000) AS INT),
                        CAST(round((SELECT r2.value FROM readings r2 WHERE r2.topic = r.topic AND ifnull(r2.device,'') = ifnull(r.device,'') AND r2.field = r.field
                                      AND strftime('{fmt}', r2.ts) = strftime('{fmt}', r.ts) AND r2.value IS NOT NULL ORDER BY r2.ts DESC, r2.id DESC LIMIT 1)*1000) AS INT)
                 FROM readings r WHERE value IS NOT NULL GROUP BY 1 ORDER BY 1"
            ))
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored.len(), fresh.len(), "{table}");
        for (s, f) in stored.iter().zip(&fresh) {
            assert_eq!(s, f, "{table}");
            out.push((table.to_string(), s.0.clone(), String::new(), s.1, s.2, s.3, s.4));
        }
    }
    out
}

fn recompute_pg(db: &str) {
    let server = support::pg::shared();
    for (table, unit) in [("readings_1m", "minute"), ("readings_1h", "hour")] {
        let stored = support::pg::psql(
            &server,
            db,
            &format!("SELECT string_agg(k, ',' ORDER BY k) FROM (SELECT topic||'|'||device||'|'||field||'|'||extract(epoch FROM bucket)||'|'||count||'|'||round(min::numeric,3)||'|'||round(max::numeric,3)||'|'||round(last::numeric,3) AS k FROM {table}) s"),
        );
        let fresh = support::pg::psql(
            &server,
            db,
            &format!(
                "SELECT string_agg(k, ',' ORDER BY k) FROM (
                   SELECT topic||'|'||coalesce(device,'')||'|'||field||'|'||extract(epoch FROM date_trunc('{unit}', ts))||'|'||count(*)||'|'||round(min(value)::numeric,3)||'|'||round(max(value)::numeric,3)||'|'||
                          round((array_agg(value ORDER BY ts DESC, id DESC))[1]::numeric,3) AS k
                   FROM readings WHERE value IS NOT NULL GROUP BY topic, coalesce(device,''), field, date_trunc('{unit}', ts)) s"
            ),
        );
        assert!(!stored.is_empty());
        assert_eq!(stored, fresh, "{table}");
    }
}

#[test]
fn rollups_equal_a_full_recomputation_after_a_random_stream() {
    use rand::{Rng, SeedableRng};
    for seed in 0..3u64 {
        for (name, settings, _dir) in stores() {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let base: chrono::DateTime<chrono::Utc> = "2026-11-20T00:00:00Z".parse().unwrap();
            rt().block_on(async {
                let s = store::open(&settings).await.unwrap();
                for _batch in 0..rng.random_range(3..8) {
                    let batch: Vec<Message> = (0..rng.random_range(1..60))
                        .map(|_| {
                            let ts = base + chrono::Duration::seconds(rng.random_range(0..3 * 3600));
                            let dev = ["s1", "s2", "s3"][rng.random_range(0..3)];
                            let mut p = serde_json::json!({"device": dev, "ts": ts.to_rfc3339(), "temp": (rng.random_range(-200..400) as f64) / 10.0});
                            if rng.random_bool(0.5) {
                                p["hum"] = serde_json::json!(format!("{}", rng.random_range(0..100)));
                            }
                            if rng.random_bool(0.2) {
                                p["nested"] = serde_json::json!({"v": [rng.random_range(0..10), true]});
                            }
                            let topic = ["sensors/a", "sensors/b"][rng.random_range(0..2)];
                            with_readings(msg(topic, p.to_string().as_bytes()))
                        })
                        .collect();
                    write(&s, batch).await;
                }
                let pts = s
                    .readings(tidegate::store::ReadingsQuery {
                        topic: Some("sensors/a".into()),
                        device: None,
                        field: Some("temp".into()),
                        since: Some(base),
                        until: Some(base + chrono::Duration::days(1)),
                        resolution: tidegate::store::Resolution::Hour,
                        limit: 100,
                    })
                    .await
                    .unwrap();
                assert!(!pts.is_empty(), "{name}");
                assert!(pts.iter().all(|p| p.min <= p.avg && p.avg <= p.max), "{name}");
            });
            match &settings.db {
                DbUrl::Sqlite(p) => {
                    recompute_sqlite(p);
                }
                DbUrl::Postgres(t) => recompute_pg(t.config.get_dbname().unwrap()),
            }
        }
    }
}

/// The text rows `sql` returns from the store's database, one per line.
fn text_rows(settings: &StoreSettings, sql: &str) -> String {
    match &settings.db {
        DbUrl::Sqlite(p) => {
            let c = rusqlite::Connection::open(p).unwrap();
            let rows: Vec<String> = c
                .prepare(sql)
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows.join("\n")
        }
        DbUrl::Postgres(t) => support::pg::psql(&support::pg::shared(), t.config.get_dbname().unwrap(), sql)
            .trim()
            .to_string(),
    }
}

/// One line per row of `readings_latest`: `topic|device|field|value|text`, sorted (values
/// rounded: SQLite and PostgreSQL print a REAL differently).
fn latest_rows(settings: &StoreSettings) -> String {
    text_rows(
        settings,
        "SELECT topic || '|' || device || '|' || field || '|' || coalesce(CAST(CAST(round(value) AS INTEGER) AS TEXT), '') || '|' || coalesce(text, '')
         FROM readings_latest ORDER BY topic, device, field",
    )
}

#[test]
fn every_store_keeps_the_newest_reading_of_each_series() {
    use tidegate::config::RetentionPolicy;
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let now = chrono::Utc::now();
            let at = |payload: &str, ago: chrono::Duration| {
                let mut m = msg("s/1", payload.as_bytes());
                m.received_at = now - ago;
                with_readings(m)
            };
            let mut quiet = msg("s/2", br#"{"device":"b","temp":7}"#);
            quiet.received_at = now - chrono::Duration::days(40);
            write(
                &s,
                vec![
                    at(r#"{"temp":20,"status":"ok"}"#, chrono::Duration::minutes(5)),
                    with_readings(quiet),
                ],
            )
            .await;
            // Measured an hour ago but arriving now: not the current value.
            let late = format!(
                r#"{{"temp":19,"ts":"{}"}}"#,
                (now - chrono::Duration::hours(1)).to_rfc3339()
            );
            write(
                &s,
                vec![
                    at(&late, chrono::Duration::zero()),
                    at(r#"{"status":"door open"}"#, chrono::Duration::zero()),
                ],
            )
            .await;
            assert_eq!(
                latest_rows(&settings),
                "s/1||status||door open\ns/1||temp|20|\ns/2|b|temp|7|",
                "{name}"
            );
            // The same through the store's query, as `GET /api/v1/readings/latest` asks it.
            let latest = |topic: Option<&str>, device: Option<&str>, field: Option<&str>, limit| {
                let s = s.clone();
                let q = store::LatestQuery {
                    topic: topic.map(Into::into),
                    device: device.map(Into::into),
                    field: field.map(Into::into),
                    limit,
                };
                async move {
                    s.latest(q)
                        .await
                        .unwrap()
                        .into_iter()
                        .map(|r| {
                            (
                                r.topic,
                                r.device,
                                r.field,
                                r.value,
                                r.text,
                                r.ts.timestamp_millis(),
                            )
                        })
                        .collect::<Vec<_>>()
                }
            };
            let ms = |ago: chrono::Duration| (now - ago).timestamp_millis();
            let all = latest(None, None, None, 100).await;
            assert_eq!(
                all,
                [
                    (
                        "s/1".into(),
                        None,
                        "status".into(),
                        None,
                        Some("door open".into()),
                        ms(chrono::Duration::zero())
                    ),
                    (
                        "s/1".into(),
                        None,
                        "temp".into(),
                        Some(20.0),
                        None,
                        ms(chrono::Duration::minutes(5))
                    ),
                    (
                        "s/2".into(),
                        Some("b".into()),
                        "temp".into(),
                        Some(7.0),
                        None,
                        ms(chrono::Duration::days(40))
                    ),
                ],
                "{name}"
            );
            assert_eq!(latest(None, None, Some("temp"), 100).await, all[1..], "{name}");
            assert_eq!(latest(None, Some("b"), None, 100).await, all[2..], "{name}");
            assert_eq!(
                latest(Some("s/1"), None, Some("status"), 100).await,
                all[..1],
                "{name}"
            );
            assert_eq!(latest(None, None, None, 2).await, all[..2], "{name}");
            assert!(latest(Some("s/9"), None, None, 100).await.is_empty(), "{name}");
            // Retention of readings takes the current value of a series silent for longer.
            let policy = RetentionPolicy {
                raw: None,
                readings: Some(std::time::Duration::from_secs(30 * 86400)),
                rollups: None,
                ..Default::default()
            };
            while s.retain(&policy, 100).await.unwrap() > 0 {}
            assert_eq!(
                latest_rows(&settings),
                "s/1||status||door open\ns/1||temp|20|",
                "{name}"
            );
        });
    }
}

/// `tidegate_stats` takes the pipeline's per-minute rows in every store, and a second flush
/// for the same minute adds up (PostgreSQL refused every flush until session 22: a parameter
/// used both as a count and in a division had no single type).
#[test]
fn every_store_records_the_topic_filters_of_each_client_id_and_keeps_them_across_a_reopen() {
    let v = |f: &[&str]| f.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            assert_eq!(
                s.subscriptions("a").await.unwrap(),
                None,
                "{name}: nothing recorded yet"
            );
            s.record_subscriptions("a", &v(&["x/#", "$share/g/y/+"]))
                .await
                .unwrap();
            s.record_subscriptions("b", &v(&[])).await.unwrap();
            s.record_subscriptions("a", &v(&["x/#", "z/'quoted\"/#"]))
                .await
                .unwrap();
            drop(s);
            let s = store::open(&settings).await.unwrap();
            assert_eq!(
                s.subscriptions("a").await.unwrap(),
                Some(v(&["x/#", "z/'quoted\"/#"])),
                "{name}: the last record replaces the one before"
            );
            assert_eq!(s.subscriptions("b").await.unwrap(), Some(v(&[])), "{name}");
            assert_eq!(s.subscriptions("c").await.unwrap(), None, "{name}");
        });
    }
}

#[test]
fn every_store_keeps_pipeline_statistics_and_adds_them_up() {
    use tidegate::pipeline::stats::StatsRow;
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let minute: chrono::DateTime<chrono::Utc> = "2026-11-25T10:00:00Z".parse().unwrap();
            let row = |committed: i64, lag_max: f64| StatsRow {
                received: committed + 1,
                committed,
                duplicates: 1,
                rejected: 0,
                lag_ms_sum: lag_max * committed as f64 / 2.0,
                lag_ms_max: lag_max,
                reconnects: 0,
            };
            let first = [
                ((minute, "*".to_string()), row(10, 40.0)),
                ((minute, "a/b".to_string()), row(10, 40.0)),
            ];
            s.write_stats(&first.into_iter().collect()).await.unwrap();
            let second = [((minute, "*".to_string()), row(30, 22.0))];
            s.write_stats(&second.into_iter().collect()).await.unwrap();
        });
        let sql = "SELECT topic || ' ' || received || ' ' || committed || ' ' || duplicates || ' ' || CAST(round(lag_ms_mean) AS INTEGER) || ' ' || CAST(round(lag_ms_max) AS INTEGER)
                   FROM tidegate_stats ORDER BY topic";
        let got = text_rows(&settings, sql);
        // `*`: 11 + 31 received, 10 + 30 committed, 2 duplicates, mean (200 + 330) / 40, max 40.
        assert_eq!(got, "* 42 40 2 13 40\na/b 11 10 1 20 40", "{name}");
    }
}

/// A retention period longer than time itself (a typo such as `9999999999999d`) keeps
/// everything: it must neither delete every row nor bring the writer down.
#[test]
fn a_retention_period_past_the_calendar_keeps_everything() {
    use tidegate::config::RetentionPolicy;
    const YEAR: u64 = 365 * 86400;
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let now = chrono::Utc::now();
            let mut batch = Vec::new();
            for days_ago in [40i64, 1] {
                let mut m = msg("ret/forever", format!("{{\"v\":{days_ago}}}").as_bytes());
                m.received_at = now - chrono::Duration::days(days_ago);
                batch.push(with_readings(m));
            }
            write(&s, batch).await;
            // Past what a time span can hold, and past the earliest date a time can hold.
            for keep in [u64::MAX, 400_000 * YEAR] {
                let keep = Some(std::time::Duration::from_secs(keep));
                let policy = RetentionPolicy {
                    raw: keep,
                    readings: keep,
                    rollups: keep,
                    ..Default::default()
                };
                assert_eq!(s.retain(&policy, 100).await.unwrap(), 0, "{name}: {keep:?}");
            }
            let left = s.messages(all(Some("ret/forever"))).await.unwrap();
            assert_eq!(left.len(), 2, "{name}");
        });
    }
}

/// Runs retention in chunks of `chunk` rows until a chunk deletes nothing; returns the rows deleted.
async fn retain_all(s: &Arc<dyn Store>, policy: &tidegate::config::RetentionPolicy, chunk: usize) -> u64 {
    let mut deleted = 0;
    loop {
        match s.retain(policy, chunk).await.unwrap() {
            0 => return deleted,
            n => deleted += n,
        }
    }
}

#[test]
fn retention_deletes_exactly_what_is_older() {
    use tidegate::config::RetentionPolicy;
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let now = chrono::Utc::now();
            let mut batch = Vec::new();
            for days_ago in [40i64, 31, 29, 1] {
                let mut m = msg("ret/x", format!("{{\"v\":{days_ago}}}").as_bytes());
                m.received_at = now - chrono::Duration::days(days_ago);
                batch.push(with_readings(m));
            }
            write(&s, batch).await;
            let policy = RetentionPolicy {
                raw: Some(std::time::Duration::from_secs(30 * 86400)),
                readings: Some(std::time::Duration::from_secs(30 * 86400)),
                rollups: None,
                ..Default::default()
            };
            // In chunks of one row: the caller loops until nothing is left.
            let deleted = retain_all(&s, &policy, 1).await;
            assert_eq!(deleted, 4, "{name}: two messages and their two readings");
            let left: Vec<String> = s
                .messages(all(Some("ret/x")))
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.payload)
                .collect();
            assert_eq!(left, [r#"{"v":29}"#, r#"{"v":1}"#], "{name}");
            // `topics` counts what is stored, not what ever arrived.
            let counted = s.topics().await.unwrap();
            let x = counted.iter().find(|t| t.topic == "ret/x").unwrap();
            assert_eq!(x.message_count, 2, "{name}");
            let pts = s
                .readings(tidegate::store::ReadingsQuery {
                    topic: Some("ret/x".into()),
                    device: None,
                    field: None,
                    since: Some(now - chrono::Duration::days(100)),
                    until: Some(now + chrono::Duration::days(1)),
                    resolution: tidegate::store::Resolution::Raw,
                    limit: 100,
                })
                .await
                .unwrap();
            assert_eq!(
                pts.iter().map(|p| p.last).collect::<Vec<_>>(),
                [29.0, 1.0],
                "{name}"
            );
            // Rollups were not part of the policy: the old buckets are still there.
            let hours = s
                .readings(tidegate::store::ReadingsQuery {
                    topic: Some("ret/x".into()),
                    device: None,
                    field: None,
                    since: Some(now - chrono::Duration::days(100)),
                    until: Some(now + chrono::Duration::days(1)),
                    resolution: tidegate::store::Resolution::Hour,
                    limit: 100,
                })
                .await
                .unwrap();
            assert_eq!(hours.len(), 4, "{name}");
        });
    }
}

/// A note (why a message gave no readings) is deleted with its message: a device whose every
/// message gets one (a clock that is wrong) must not grow `reading_notes` past raw retention.
#[test]
fn every_store_retention_deletes_a_messages_note_with_it() {
    use tidegate::config::RetentionPolicy;
    let policy = RetentionPolicy {
        raw: Some(std::time::Duration::from_secs(30 * 86400)),
        readings: None,
        rollups: None,
        ..Default::default()
    };
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let now = chrono::Utc::now();
            let batch = [40i64, 35, 1]
                .iter()
                .map(|days| {
                    // A number past a 64-bit float: the message is kept raw, with a note.
                    let mut m = msg("notes/x", format!(r#"{{"v":1e999,"d":{days}}}"#).as_bytes());
                    m.received_at = now - chrono::Duration::days(*days);
                    with_readings(m)
                })
                .collect();
            write(&s, batch).await;
            let notes = || text_rows(&settings, "SELECT CAST(count(*) AS TEXT) FROM reading_notes");
            assert_eq!(notes(), "3", "{name}");
            let deleted = retain_all(&s, &policy, 1).await;
            assert_eq!(deleted, 4, "{name}: two messages and their notes");
            assert_eq!(notes(), "1", "{name}");
        });
    }
}

/// A mapping with `retain` has its rows older than that deleted (by `ts`); a mapping without
/// keeps them whatever the other periods say, and a table not created yet is no error.
#[test]
fn every_store_retention_trims_a_mapping_table_that_asks_for_it_and_no_other() {
    use tidegate::{
        config::RetentionPolicy,
        readings::{
            mapping::{Ident, Mapping, MappingSpec},
            ReadingsConfig,
        },
    };
    let mapping =
        |toml: &str| Arc::new(Mapping::from_spec(&toml::from_str::<MappingSpec>(toml).unwrap()).unwrap());
    let cfg = ReadingsConfig {
        mappings: vec![
            mapping("filter = \"trim/#\"\ntable = \"m_trim\"\nretain = \"30d\"\n[columns]\nv = \"$.v\"\n"),
            mapping("filter = \"keep/#\"\ntable = \"m_keep\"\n[columns]\nv = \"$.v\"\n"),
        ],
        ..Default::default()
    };
    let policy = RetentionPolicy {
        raw: Some(std::time::Duration::from_secs(365 * 86400)),
        mapped: vec![
            (
                Ident::parse("m_trim").unwrap(),
                std::time::Duration::from_secs(30 * 86400),
            ),
            (
                Ident::parse("m_none").unwrap(),
                std::time::Duration::from_secs(86400),
            ),
        ],
        ..Default::default()
    };
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let now = chrono::Utc::now();
            let mut batch = Vec::new();
            for topic in ["trim/a", "keep/a"] {
                for days in [40i64, 31, 1] {
                    let mut m = msg(topic, format!(r#"{{"v":{days}}}"#).as_bytes());
                    m.received_at = now - chrono::Duration::days(days);
                    m.derived = tidegate::readings::derive(&cfg, &m.topic, &m.payload, m.received_at);
                    batch.push(m);
                }
            }
            write(&s, batch).await;
            assert_eq!(retain_all(&s, &policy, 1).await, 2, "{name}");
            let values = |t: &str| {
                text_rows(
                    &settings,
                    &format!("SELECT CAST(CAST(v AS INTEGER) AS TEXT) FROM {t} ORDER BY ts"),
                )
            };
            assert_eq!(values("m_trim"), "1", "{name}");
            assert_eq!(values("m_keep"), "40\n31\n1", "{name}");
            assert_eq!(
                s.messages(all(None)).await.unwrap().len(),
                6,
                "{name}: messages kept"
            );
        });
    }
}

/// A PostgreSQL database at schema 5 (text-prefix readings index, b-trees on `ts` and
/// `received_at`, one delivery mark row per packet id) is moved to the current schema in place:
/// its readings stay, new ones join them, queries find both, and a redelivery of a message
/// committed under schema 5 is still recognised.
#[test]
fn a_postgres_database_at_schema_5_is_upgraded_in_place() {
    let (server, db, settings) = fresh_pg();
    let temp = |topic: &str, v: i32| with_readings(msg(topic, format!(r#"{{"temp": {v}}}"#).as_bytes()));
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(&s, vec![temp("old/a", 1), temp("old/a", 2)]).await;
    });
    let readings = "SELECT string_agg(id || ' ' || message_id || ' ' || ts || ' ' || topic || ' ' || coalesce(device, '-') || ' ' || field || ' ' || value || ' ' || ts_source, ';' ORDER BY id) FROM readings";
    let before = support::pg::psql(&server, &db, readings);
    let rollups = |t: &str| {
        format!("SELECT string_agg(concat_ws(' ', topic, device, field, bucket, count, min, max, sum, avg, last, last_ts), ';' ORDER BY topic, device, field, bucket) FROM {t} WHERE topic = 'old/a'")
    };
    let rollups_before = ["readings_1m", "readings_1h"].map(|t| support::pg::psql(&server, &db, &rollups(t)));
    // Back to schema 5's readings table and indexes (and primary key) and delivery marks, as a tidegate of
    // that version left them, with the mark of one message it committed (packet id 7).
    let committed = mqtt("old/m", b"v5", 7, false);
    let hash: String = committed
        .content_hash()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    support::pg::psql(
        &server,
        &db,
        &format!(
            r#"CREATE TABLE readings_v5 AS SELECT id, message_id, ts, topic, device, field, value, text, ts_source FROM readings;
           CREATE TABLE readings_1m_v5 AS SELECT * FROM readings_1m;
           CREATE TABLE readings_1h_v5 AS SELECT * FROM readings_1h;
           -- A series retention left in the rollups only: no reading names it.
           INSERT INTO readings_1h_v5 VALUES ('gone/x', 'dev', 'temp', '2026-01-01 00:00+00', 2, 1, 3, 4, 2, 3, '2026-01-01 00:00:30+00');
           DROP VIEW readings_1m; DROP VIEW readings_1h; DROP VIEW readings_latest;
           DROP TABLE series_1m; DROP TABLE series_1h; DROP TABLE series_latest;
           ALTER TABLE readings_1m_v5 RENAME TO readings_1m;
           ALTER TABLE readings_1h_v5 RENAME TO readings_1h;
           CREATE UNIQUE INDEX readings_1m_key ON readings_1m ((md5(topic)), (md5(device)), (md5(field)), bucket);
           CREATE INDEX readings_1m_bucket ON readings_1m (bucket);
           CREATE INDEX readings_1m_device_field ON readings_1m ((md5(device)), (md5(field)), bucket);
           CREATE UNIQUE INDEX readings_1h_key ON readings_1h ((md5(topic)), (md5(device)), (md5(field)), bucket);
           CREATE INDEX readings_1h_bucket ON readings_1h (bucket);
           CREATE INDEX readings_1h_device_field ON readings_1h ((md5(device)), (md5(field)), bucket);
           DROP VIEW readings; DROP TABLE series_points; DROP TABLE series;
           ALTER TABLE readings_v5 RENAME TO readings;
           ALTER TABLE readings ADD PRIMARY KEY (id);
           CREATE INDEX readings_ts ON readings (ts);
           CREATE INDEX readings_topic_field_ts ON readings ((left(topic, 200)) COLLATE "C", (left(field, 200)) COLLATE "C", ts);
           DROP TABLE delivery_batches;
           CREATE TABLE delivery_marks (session text COLLATE "C" NOT NULL, pkid integer NOT NULL, hash bytea NOT NULL,
                                        message_id bigint, PRIMARY KEY (session, pkid));
           INSERT INTO delivery_marks VALUES ('suite-session', 7, decode('{hash}', 'hex'), NULL),
                                             ('suite-session', 8, decode('00', 'hex'), NULL);
           DROP INDEX messages_received_at; CREATE INDEX messages_received_at ON messages (received_at);
           DROP TABLE commit_tokens;
           DROP TABLE mqtt_subscriptions;
           ALTER TABLE rejected DROP COLUMN message_id, DROP COLUMN mapping;
           DELETE FROM tidegate_schema WHERE version >= 6;"#
        ),
    );
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        assert_eq!(
            latest_rows(&settings),
            "old/a||temp|2|",
            "rebuilt from the stored readings"
        );
        // Schema 14 moved the rollups by series: the views answer as the tables did, also for
        // a series only the rollups named.
        for (t, before) in ["readings_1m", "readings_1h"].iter().zip(&rollups_before) {
            assert!(before.trim().starts_with("old/a  temp "), "{t}: {before}");
            assert_eq!(support::pg::psql(&server, &db, &rollups(t)), *before, "{t}");
        }
        let gone = support::pg::psql(
            &server,
            &db,
            "SELECT concat_ws(' ', topic, device, field, bucket, count, min, max, sum, avg, last, last_ts) FROM readings_1h WHERE topic = 'gone/x'",
        );
        assert_eq!(
            gone.trim(),
            "gone/x dev temp 2026-01-01 00:00:00+00 2 1 3 4 2 3 2026-01-01 00:00:30+00"
        );
        assert_eq!(
            write(
                &s,
                vec![mqtt("old/m", b"v5", 7, true), mqtt("old/m", b"new", 8, true)]
            )
            .await[0],
            Outcome::Duplicate
        );
        write(&s, vec![temp("old/a", 3)]).await;
        // The mark with a different hash did not make its redelivery a duplicate.
        assert_eq!(
            s.topics()
                .await
                .unwrap()
                .iter()
                .find(|t| t.topic == "old/m")
                .unwrap()
                .message_count,
            1
        );
        assert_eq!(raw_values(&s, "old/a", "temp").await, [1.0, 2.0, 3.0]);
    });
    // The readings kept their ids and every column; the new one came after them.
    let after = support::pg::psql(&server, &db, readings);
    assert!(
        after.trim().starts_with(&format!("{};", before.trim())),
        "before: {before}\nafter: {after}"
    );
    assert_eq!(after.trim().split(';').count(), 3, "{after}");
    // The new reading joined the moved buckets.
    for t in ["readings_1m", "readings_1h"] {
        let totals = support::pg::psql(
            &server,
            &db,
            &format!("SELECT sum(count) || ' ' || sum(sum) || ' ' || min(min) || ' ' || max(max) FROM {t} WHERE topic = 'old/a' AND device = '' AND field = 'temp'"),
        );
        assert_eq!(totals.trim(), "3 6 1 3", "{t}");
    }
    // Schema 13 moved the readings into `series_points`, by series, with their own indexes.
    let indexes = support::pg::psql(
        &server,
        &db,
        "SELECT string_agg(indexname || ':' || split_part(indexdef, ' USING ', 2), ' ' ORDER BY indexname) FROM pg_indexes WHERE tablename IN ('readings', 'series_points')",
    );
    assert_eq!(
        indexes.trim(),
        "series_points_series_ts:btree (series_id, ts) series_points_ts:brin (ts)"
    );
    let messages_ts = support::pg::psql(
        &server,
        &db,
        "SELECT split_part(indexdef, ' USING ', 2) FROM pg_indexes WHERE indexname = 'messages_received_at'",
    );
    assert_eq!(messages_ts.trim(), "brin (received_at)");
    let version = support::pg::psql(&server, &db, "SELECT max(version) FROM tidegate_schema");
    assert_eq!(
        version.trim(),
        tidegate::store::postgres::SCHEMA_VERSION.to_string()
    );
}

/// PostgreSQL keeps room on the pages of the rollups and `readings_latest`, whose rows every
/// batch updates: an update then stays on its row's page (heap-only), with no new entry in the
/// table's indexes. Enough series to fill pages, then one more reading each: no row moved.
#[test]
fn postgres_updates_rollups_and_latest_values_in_place() {
    let (server, db, settings) = fresh_pg();
    let batch = |v: i32| {
        (0..400)
            .map(|i| {
                with_readings(msg(
                    &format!("room/{i}"),
                    format!(r#"{{"ts":"2026-01-01T00:00:10Z","temp":{v}}}"#).as_bytes(),
                ))
            })
            .collect::<Vec<_>>()
    };
    let pages = |table: &str| {
        support::pg::psql(
            &server,
            &db,
            &format!(
                "SELECT string_agg(series_id || '@' || (ctid::text::point)[0], ' ' ORDER BY series_id) FROM {table}"
            ),
        )
    };
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(&s, batch(1)).await;
        let before: Vec<String> = ["series_1m", "series_1h", "series_latest"].map(pages).into();
        assert!(
            before[0].contains("@1"),
            "the rows fill more than a page: {}",
            before[0]
        );
        write(&s, batch(2)).await;
        let after: Vec<String> = ["series_1m", "series_1h", "series_latest"].map(pages).into();
        assert_eq!(before, after);
    });
    assert_eq!(
        support::pg::psql(
            &server,
            &db,
            "SELECT count(*) || ' ' || sum(count) || ' ' || max(last) FROM readings_1m"
        )
        .trim(),
        "400 800 2"
    );
}

/// Every store keeps a session's delivery marks one row per batch and drops a row once 65,535
/// newer marks exist (no more messages than that can be in flight): after 80,000 deliveries,
/// recent redeliveries are still recognised and the oldest row is gone.
#[test]
fn every_store_keeps_delivery_marks_per_batch_and_prunes_past_the_packet_id_space() {
    let delivery = |i: u32, dup: bool| {
        let origin = Origin::Mqtt {
            session: "prune-session".into(),
            pkid: (i % 65_535 + 1) as u16,
            redelivery: dup,
        };
        Message::new(
            "p/t".into(),
            Bytes::from(i.to_string()),
            1,
            false,
            origin,
            1 << 20,
        )
    };
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            for b in 0..8 {
                write(
                    &s,
                    (b * 10_000..(b + 1) * 10_000)
                        .map(|i| delivery(i, false))
                        .collect(),
                )
                .await;
            }
            let outcomes = write(
                &s,
                vec![
                    delivery(79_999, true), // the last delivery
                    delivery(15_000, true), // packet id 15,001, not reused since
                    delivery(5_000, true),  // packet id 5,001, reused by delivery 70,535
                    delivery(12_000, true), // packet id 12,001: both marks kept, the newer one counts
                    delivery(5_000, true),  // again: matches the mark made just above, in this batch
                ],
            )
            .await;
            assert_eq!(outcomes[0], Outcome::Duplicate, "{name}");
            assert_eq!(outcomes[1], Outcome::Duplicate, "{name}");
            assert!(
                matches!(outcomes[2], Outcome::Stored { .. }),
                "{name}: {outcomes:?}"
            );
            assert!(
                matches!(outcomes[3], Outcome::Stored { .. }),
                "{name}: {outcomes:?}"
            );
            assert_eq!(outcomes[4], Outcome::Duplicate, "{name}");
        });
        // Totals 10,000 … 80,000, then 80,002 for the last batch: the first row is covered by
        // 65,535 newer marks and is gone; the second is not.
        let sql = "SELECT count(*) || ' ' || min(total) || ' ' || max(total) FROM delivery_batches WHERE session = 'prune-session'";
        let rows = match &settings.db {
            DbUrl::Sqlite(p) => rusqlite::Connection::open(p)
                .unwrap()
                .query_row(sql, [], |r| r.get::<_, String>(0))
                .unwrap(),
            DbUrl::Postgres(t) => {
                support::pg::psql(&support::pg::shared(), t.config.get_dbname().unwrap(), sql)
            }
        };
        assert_eq!(rows.trim(), "8 20000 80002", "{name}");
    }
}

/// An SQLite database at schema 4 (one delivery mark row per packet id) is moved to the current
/// schema in place: a redelivery of a message committed under schema 4 is still recognised, and
/// `readings_latest` (schema 6) is built from the readings already stored.
#[test]
fn an_sqlite_database_at_schema_4_keeps_its_delivery_marks() {
    let (_dir, path, settings) = sqlite_file("v4.db");
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(&s, vec![with_readings(msg("x", br#"{"temp":5}"#))]).await;
        write(&s, vec![with_readings(msg("x", br#"{"temp":6}"#))]).await;
    });
    let committed = mqtt("old/m", b"v4", 7, false);
    {
        // Back to schema 4's marks, as a tidegate of that version left them.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "DROP TABLE delivery_batches;
             CREATE TABLE delivery_marks (session TEXT NOT NULL, pkid INTEGER NOT NULL, hash BLOB NOT NULL,
                                          message_id INTEGER, PRIMARY KEY (session, pkid)) WITHOUT ROWID;
             DROP TABLE readings_latest;
             PRAGMA user_version = 4;",
        )
        .unwrap();
        back_to_schema_6(&c);
        c.execute_batch("PRAGMA user_version = 4;").unwrap();
        let mut put = c
            .prepare("INSERT INTO delivery_marks VALUES ('suite-session', ?1, ?2, NULL)")
            .unwrap();
        put.execute(rusqlite::params![7, &committed.content_hash()[..]])
            .unwrap();
        put.execute(rusqlite::params![8, &[0u8][..]]).unwrap();
    }
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        let out = write(
            &s,
            vec![mqtt("old/m", b"v4", 7, true), mqtt("old/m", b"new", 8, true)],
        )
        .await;
        assert_eq!(out[0], Outcome::Duplicate);
        // A malformed mark does not stop the upgrade, and matches nothing.
        assert!(matches!(out[1], Outcome::Stored { .. }), "{out:?}");
    });
    assert_eq!(
        latest_rows(&settings),
        "x||temp|6|",
        "rebuilt from the stored readings"
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, tidegate::store::sqlite::SCHEMA_VERSION);
    let old: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'delivery_marks'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0);
}

/// A new SQLite file of that name in a directory of its own (kept while the `TempDir` lives), and
/// the settings that open it.
fn sqlite_file(name: &str) -> (tempfile::TempDir, std::path::PathBuf, StoreSettings) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let settings = StoreSettings {
        db: DbUrl::Sqlite(path.clone()),
        sqlite_sync: SqliteSync::Full,
        batch_size: 5000,
    };
    (dir, path, settings)
}

/// How SQLite plans a `readings` question filtered by device over a time range, as Metabase asks
/// it.
fn device_plan(c: &rusqlite::Connection) -> String {
    plan(c, "SELECT ts, value FROM readings WHERE device = 'pump' AND field = 'temp' AND ts >= '2026-01-01 00:00:00.000'")
}

/// How SQLite plans `sql`, its steps joined by ` | `.
fn plan(c: &rusqlite::Connection, sql: &str) -> String {
    c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Opens the store and writes one message of device `pump`, with readings `temp` 5 and `hum` 40.
fn write_pump(settings: &StoreSettings) {
    rt().block_on(async {
        let s = store::open(settings).await.unwrap();
        write(
            &s,
            vec![with_readings(msg(
                "plant/d1",
                br#"{"device":"pump","temp":5,"hum":40}"#,
            ))],
        )
        .await;
    });
}

/// Schema 9 indexes the series' devices, so that a `readings` question filtered by device starts
/// from that device's series instead of walking every reading in the time range: a schema-8
/// file gets the index in place, with its readings unchanged.
#[test]
fn an_sqlite_database_at_schema_8_gets_the_device_index_and_device_questions_start_from_it() {
    let (_dir, path, settings) = sqlite_file("v8.db");
    write_pump(&settings);
    let every = "SELECT group_concat(id || '|' || ts || '|' || topic || '|' || device || '|' || field || '|' || value, ';')
                 FROM (SELECT * FROM readings ORDER BY id)";
    let before = text_rows(&settings, every);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        let fresh = device_plan(&c);
        assert!(
            fresh.contains("INDEX series_device"),
            "a new file has it: {fresh}"
        );
        back_to_one_rollup_table(&c);
        c.execute_batch("DROP INDEX series_device; PRAGMA user_version = 8;")
            .unwrap();
        let old = device_plan(&c);
        assert!(
            !old.contains("series_device") && old.contains("INDEX series_points_ts"),
            "schema 8 walks the time index: {old}"
        );
    }
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(
            &s,
            vec![with_readings(msg("plant/d1", br#"{"device":"pump","temp":6}"#))],
        )
        .await;
    });
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, tidegate::store::sqlite::SCHEMA_VERSION);
    let plan = device_plan(&c);
    assert!(
        plan.starts_with("SEARCH s USING INDEX series_device")
            && plan.contains("INDEX series_points_series_ts"),
        "the device's series first, then their points: {plan}"
    );
    let after = text_rows(&settings, every);
    assert!(
        after.starts_with(&before) && after.len() > before.len(),
        "{before} → {after}"
    );
    assert!(after.ends_with("|plant/d1|pump|temp|6.0"), "{after}");
}

/// The columns of a rollup table's key, in order.
fn rollup_key(c: &rusqlite::Connection, table: &str) -> String {
    c.query_row(
        &format!(
            "SELECT group_concat(name, ',') FROM (SELECT name FROM pragma_index_xinfo(
                (SELECT name FROM pragma_index_list('{table}') WHERE origin = 'pk')) WHERE key ORDER BY seqno)"
        ),
        [],
        |r| r.get(0),
    )
    .unwrap()
}

/// Schema 10 splits each rollup table behind a view of its name: the buckets still filling in an
/// `_open` table keyed by bucket (so a batch's upserts land on a few pages), the others in the old
/// table, renamed `_closed` and still keyed by series (so a chart of one series reads its
/// buckets together). A schema-9 file reads the same through the view, a late reading merges
/// into its closed bucket, a current one goes to the open part, and the view's columns keep
/// their declared types for Metabase.
#[test]
fn an_sqlite_database_at_schema_9_gets_its_rollups_split_open_and_closed_and_reads_the_same() {
    let (_dir, path, settings) = sqlite_file("v9.db");
    let at = |device: &str, ts: &str, temp: i32| {
        with_readings(msg(
            "plant/d1",
            format!(r#"{{"device":"{device}","ts":"{ts}","temp":{temp}}}"#).as_bytes(),
        ))
    };
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(
            &s,
            vec![
                at("pump", "2026-01-01T00:00:10Z", 5),
                at("pump", "2026-01-01T00:01:10Z", 7),
                at("fan", "2026-01-01T00:01:20Z", 1),
            ],
        )
        .await;
    });
    let rollups = |t: &str| {
        format!(
            "SELECT group_concat(bucket || '|' || device || '|' || field || '|' || count || '|' || sum || '|' || last, ';')
             FROM (SELECT * FROM {t} WHERE bucket < '2026-06-01' ORDER BY bucket, device, field)"
        )
    };
    let before = text_rows(&settings, &rollups("readings_1m"));
    let hour_before = text_rows(&settings, &rollups("readings_1h"));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        back_to_one_rollup_table(&c);
        c.execute_batch("PRAGMA user_version = 9;").unwrap();
        assert_eq!(rollup_key(&c, "readings_1m"), "topic,device,field,bucket");
    }
    assert_eq!(text_rows(&settings, &rollups("readings_1m")), before);
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        write(
            &s,
            vec![at("pump", "2026-01-01T00:01:40Z", 9), at("pump", &now, 3)],
        )
        .await;
    });
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, tidegate::store::sqlite::SCHEMA_VERSION);
    let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    for t in ["readings_1m", "readings_1h"] {
        assert_eq!(
            rollup_key(&c, &format!("{t}_closed")),
            "topic,device,field,bucket",
            "{t}"
        );
        assert_eq!(
            rollup_key(&c, &format!("{t}_open")),
            "bucket,topic,device,field",
            "{t}"
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM {t}_open WHERE bucket < '2026-06-01'"
            )),
            0,
            "{t}"
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM {t}_open WHERE count = 1 AND last = 3"
            )),
            1,
            "{t}: the current bucket is open"
        );
        assert_eq!(
            count(&format!(
                "SELECT count(*) FROM {t}_closed WHERE bucket > '2026-06-01'"
            )),
            0,
            "{t}"
        );
        let types: String = c
            .query_row(
                &format!("SELECT group_concat(name || ' ' || type, ', ') FROM pragma_table_info('{t}')"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            types,
            "topic TEXT, device TEXT, field TEXT, bucket DATETIME, count INTEGER, min REAL, max REAL, sum REAL, avg REAL, last REAL, last_ts DATETIME",
            "{t}"
        );
    }
    assert_eq!(
        before,
        "2026-01-01 00:00:00.000|pump|temp|1|5.0|5.0;2026-01-01 00:01:00.000|fan|temp|1|1.0|1.0;2026-01-01 00:01:00.000|pump|temp|1|7.0|7.0"
    );
    assert_eq!(
        text_rows(&settings, &rollups("readings_1m")),
        "2026-01-01 00:00:00.000|pump|temp|1|5.0|5.0;2026-01-01 00:01:00.000|fan|temp|1|1.0|1.0;2026-01-01 00:01:00.000|pump|temp|2|16.0|9.0"
    );
    assert_eq!(
        hour_before,
        "2026-01-01 00:00:00.000|fan|temp|1|1.0|1.0;2026-01-01 00:00:00.000|pump|temp|2|12.0|7.0"
    );
    assert_eq!(
        text_rows(&settings, &rollups("readings_1h")),
        "2026-01-01 00:00:00.000|fan|temp|1|1.0|1.0;2026-01-01 00:00:00.000|pump|temp|3|21.0|9.0"
    );
    let plan = plan(
        &c,
        "SELECT bucket, avg FROM readings_1m WHERE topic = 'plant/d1' AND device = 'pump' AND field = 'temp' ORDER BY bucket",
    );
    assert!(
        plan.contains("SEARCH readings_1m_closed USING PRIMARY KEY (topic=? AND device=? AND field=?)"),
        "one series' closed buckets are read together: {plan}"
    );
}

/// Takes the current SQLite schema back to schema 10: `rejected` without the stored message
/// and the mapping table of a misfit.
fn back_to_schema_10(c: &rusqlite::Connection) {
    c.execute_batch(
        "ALTER TABLE rejected DROP COLUMN message_id;
         ALTER TABLE rejected DROP COLUMN mapping;
         PRAGMA user_version = 10;",
    )
    .unwrap();
}

/// Turns the current SQLite schema's rollups back into one table per width, as tidegate left
/// them before schema 10.
fn back_to_one_rollup_table(c: &rusqlite::Connection) {
    back_to_schema_10(c);
    for t in ["readings_1m", "readings_1h"] {
        c.execute_batch(&format!(
            "INSERT INTO {t}_closed SELECT * FROM {t}_open;
             DROP VIEW {t};
             DROP TABLE {t}_open;
             ALTER TABLE {t}_closed RENAME TO {t};"
        ))
        .unwrap();
    }
}

/// Turns the current SQLite schema's readings back into schema 6's one table, as a tidegate of
/// that version left them.
fn back_to_schema_6(c: &rusqlite::Connection) {
    back_to_one_rollup_table(c);
    c.execute_batch(
        "CREATE TABLE readings_v6 (id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, ts DATETIME NOT NULL,
                                   topic TEXT NOT NULL, device TEXT, field TEXT NOT NULL, value REAL, text TEXT,
                                   ts_source TEXT NOT NULL);
         INSERT INTO readings_v6 SELECT id, message_id, ts, topic, device, field, value, text, ts_source FROM readings;
         DROP VIEW readings;
         DROP TABLE series_points;
         DROP TABLE series;
         ALTER TABLE readings_v6 RENAME TO readings;
         CREATE INDEX readings_ts ON readings (ts);
         CREATE INDEX readings_topic_field_ts ON readings (topic, field, ts);
         DROP TABLE mqtt_subscriptions;
         PRAGMA user_version = 6;",
    )
    .unwrap();
}

/// Schema 7 stores readings by series: the readings of a schema-6 file move over with their ids
/// and values, `readings` reads the same as before, and new readings join the same series.
#[test]
fn an_sqlite_database_at_schema_6_moves_its_readings_to_series_unchanged() {
    let (_dir, path, settings) = sqlite_file("v6.db");
    let device = with_readings(msg(
        "plant/d7",
        br#"{"device":"pump","temp":5,"state":"on","ts":"2026-11-25T10:00:00Z"}"#,
    ));
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(
            &s,
            vec![with_readings(msg("x", br#"{"temp":5,"hum":40}"#)), device],
        )
        .await;
        write(&s, vec![timed_reading("y", "1.5")]).await;
    });
    let every = "SELECT group_concat(id || '|' || message_id || '|' || ts || '|' || topic || '|' || coalesce(device, '-')
                 || '|' || field || '|' || coalesce(value, '-') || '|' || coalesce(text, '-') || '|' || ts_source, ';')
                 FROM (SELECT * FROM readings ORDER BY id)";
    let before = text_rows(&settings, every);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        back_to_schema_6(&c);
        let kind: String = c
            .query_row(
                "SELECT type FROM sqlite_master WHERE name = 'readings'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kind, "table");
    }
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        assert_eq!(
            text_rows(&settings, every),
            before,
            "the same readings, ids and types"
        );
        write(&s, vec![with_readings(msg("x", br#"{"temp":6}"#))]).await;
    });
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
    assert_eq!(v, tidegate::store::sqlite::SCHEMA_VERSION);
    assert!(before.contains("|plant/d7|pump|state|-|on|payload"), "{before}");
    let series: String = c
        .query_row(
            "SELECT group_concat(topic || '/' || coalesce(device, '-') || '/' || field, ' ') FROM (SELECT * FROM series ORDER BY topic, field)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        series, "plant/d7/pump/state plant/d7/pump/temp x/-/hum x/-/temp y/-/v",
        "one row per series; the new reading of x/temp joined its old series"
    );
    assert!(device_plan(&c).contains("INDEX series_device"));
    let temps: String = c
        .query_row(
            "SELECT group_concat(value, ',') FROM (SELECT value FROM readings WHERE topic = 'x' AND field = 'temp' ORDER BY id)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(temps, "5.0,6.0");
    // The declared types Metabase reads from the view are the table's.
    let types: String = c
        .query_row(
            "SELECT group_concat(name || ':' || type, ',') FROM pragma_table_info('readings')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        types,
        "id:INTEGER,message_id:INTEGER,ts:DATETIME,topic:TEXT,device:TEXT,field:TEXT,value:REAL,text:TEXT,ts_source:TEXT"
    );
}

#[test]
fn a_database_from_the_first_released_schema_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-v1.db"),
        &path,
    )
    .unwrap();
    let settings = StoreSettings {
        db: DbUrl::Sqlite(path.clone()),
        sqlite_sync: SqliteSync::Full,
        batch_size: 5000,
    };
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        let old = s.messages(all(None)).await.unwrap();
        assert_eq!(
            old.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(),
            ["21.5", "21.6", r#"{"online":true}"#]
        );
        // New messages get readings, next to the old rows.
        write(&s, vec![with_readings(msg("sensors/s1/temp", b"22.0"))]).await;
        let topics = s.topics().await.unwrap();
        assert_eq!(
            topics
                .iter()
                .find(|t| t.topic == "sensors/s1/temp")
                .unwrap()
                .message_count,
            3
        );
    });
    let c = rusqlite::Connection::open(&path).unwrap();
    let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, tidegate::store::sqlite::SCHEMA_VERSION);
    let n: i64 = c
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
    let dados: i64 = c
        .query_row("SELECT count(*) FROM dados", [], |r| r.get(0))
        .unwrap();
    assert_eq!(dados, 4);
}

#[test]
fn mappings_fill_wide_tables_add_columns_and_reject_values_that_do_not_fit() {
    use tidegate::readings::{
        mapping::{Mapping, MappingSpec},
        ReadingsConfig,
    };
    let specs: Vec<MappingSpec> = toml::from_str::<std::collections::HashMap<String, Vec<MappingSpec>>>(
        r#"
        [[mapping]]
        filter = "sensors/+/telemetry"
        table = "telemetry"
        [mapping.columns]
        temperature_c = "$.temp"
        status = { path = "$.status", type = "text" }

        [[mapping]]
        filter = "sensors/#"
        table = "everything"
        auto_columns = true
        "#,
    )
    .unwrap()
    .remove("mapping")
    .unwrap();
    let cfg = ReadingsConfig {
        mappings: specs
            .iter()
            .map(|s| std::sync::Arc::new(Mapping::from_spec(s).unwrap()))
            .collect(),
        ..Default::default()
    };
    let derive = |topic: &str, p: &str| {
        let mut m = msg(topic, p.as_bytes());
        m.derived = tidegate::readings::derive(&cfg, topic, &m.payload, m.received_at);
        m
    };
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            // What tells Metabase to read the schema again (`tidegate::metabase`).
            let version = || async { s.schema_version().await.unwrap().expect("a version") };
            let created = version().await;
            write(
                &s,
                vec![derive("sensors/s1/telemetry", r#"{"temp":21.5,"status":"ok"}"#)],
            )
            .await;
            let mapped = version().await;
            assert_ne!(mapped, created, "{name}: two tables were created");
            // A new field mid-stream: a new column where auto_columns is on, ignored where it is off.
            write(
                &s,
                vec![derive(
                    "sensors/s1/telemetry",
                    r#"{"temp":"22.5","status":"ok","pressure":1013}"#,
                )],
            )
            .await;
            let widened = version().await;
            assert_ne!(widened, mapped, "{name}: a column was added");
            // A value that does not fit its column: the message is kept, the row goes to `rejected`.
            let out = write(
                &s,
                vec![derive("sensors/s1/telemetry", r#"{"temp":"hot","status":"ok"}"#)],
            )
            .await;
            assert!(matches!(out[..], [Outcome::Stored { .. }]), "{name}");
            assert_eq!(version().await, widened, "{name}: rows alone change no schema");
            assert_eq!(
                s.messages(all(Some("sensors/s1/telemetry"))).await.unwrap().len(),
                3,
                "{name}"
            );
        });
        let q = |sql: &str| -> String {
            match &settings.db {
                DbUrl::Sqlite(p) => {
                    let c = rusqlite::Connection::open(p).unwrap();
                    c.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
                        .unwrap()
                        .unwrap_or_default()
                }
                DbUrl::Postgres(t) => {
                    support::pg::psql(&support::pg::shared(), t.config.get_dbname().unwrap(), sql)
                }
            }
        };
        assert_eq!(q("SELECT string_agg(CAST(temperature_c AS TEXT) || ':' || status, ',' ORDER BY id) FROM telemetry"), "21.5:ok,22.5:ok", "{name}");
        assert_eq!(
            q("SELECT CAST(count(*) AS TEXT) FROM everything WHERE pressure IS NOT NULL"),
            "1",
            "{name}"
        );
        let cols = match &settings.db {
            DbUrl::Sqlite(_) => q("SELECT group_concat(name, ',') FROM (SELECT name FROM pragma_table_info('telemetry') ORDER BY name)"),
            DbUrl::Postgres(_) => q("SELECT string_agg(column_name::text, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'telemetry'"),
        };
        assert_eq!(
            cols, "device,id,message_id,status,temperature_c,topic,ts",
            "{name}: auto_columns off adds nothing"
        );
        let reason = q("SELECT reason FROM rejected WHERE source = 'mapping'");
        assert!(
            reason.contains("temperature_c") && reason.contains("hot"),
            "{name}: {reason}"
        );
    }
}

#[test]
fn retention_runs_while_ingest_goes_on_and_deletes_only_what_is_older() {
    use tidegate::config::RetentionPolicy;
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let now = chrono::Utc::now();
            // 2,000 old messages to delete…
            for chunk in 0..4 {
                let batch: Vec<Message> = (0..500)
                    .map(|i| {
                        let mut m = msg("ret/live", format!("old-{}", chunk * 500 + i).as_bytes());
                        m.received_at = now - chrono::Duration::days(40);
                        with_readings(m)
                    })
                    .collect();
                write(&s, batch).await;
            }
            let policy = RetentionPolicy {
                raw: Some(std::time::Duration::from_secs(30 * 86400)),
                readings: Some(std::time::Duration::from_secs(30 * 86400)),
                rollups: None,
                ..Default::default()
            };
            // …while new ones keep arriving: small retention chunks interleave with the writes.
            let writer = {
                let s = s.clone();
                tokio::spawn(async move {
                    for k in 0..40 {
                        let batch = (0..50)
                            .map(|i| msg("ret/live", format!("new-{}", k * 50 + i).as_bytes()))
                            .collect();
                        write(&s, batch).await;
                    }
                })
            };
            let mut deleted = 0;
            loop {
                let n = s.retain(&policy, 100).await.unwrap();
                deleted += n;
                if n == 0 && writer.is_finished() {
                    break;
                }
                tokio::task::yield_now().await;
            }
            writer.await.unwrap();
            assert_eq!(
                deleted, 2000,
                "{name}: 2,000 old messages (their payloads are not JSON: no readings)"
            );
            let left: Vec<String> = s
                .messages(MessageQuery {
                    limit: 10_000,
                    ..all(Some("ret/live"))
                })
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.payload)
                .collect();
            assert_eq!(left.len(), 2000, "{name}");
            assert!(left.iter().all(|p| p.starts_with("new-")), "{name}");
        });
    }
}

/// Raw readings by topic and field: exact for long topics that share a prefix, and on PostgreSQL
/// answered through `series_points_series_ts` (by series id, since schema 13) once the table
/// holds enough readings for an index to be worth it.
#[test]
fn raw_readings_by_topic_and_field_are_exact_and_indexed() {
    let long = "sensors/".to_string() + &"x".repeat(300);
    let (a, b) = (format!("{long}/a"), format!("{long}/b"));
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let batch = (0..50)
                .flat_map(|i| {
                    [
                        with_readings(msg(&a, format!(r#"{{"temp": {i}, "hum": 1}}"#).as_bytes())),
                        with_readings(msg(&b, br#"{"temp": -1}"#)),
                    ]
                })
                .collect();
            write(&s, batch).await;
            if let DbUrl::Postgres(t) = &settings.db {
                pg_history(&support::pg::shared(), t.config.get_dbname().unwrap());
            }
            let pts = raw_points(&s, &a, "temp").await;
            assert_eq!(pts.len(), 50, "{name}");
            assert!(
                pts.iter()
                    .all(|p| p.topic == a && p.field == "temp" && p.min >= 0.0),
                "{name}"
            );
        });
        if let DbUrl::Postgres(t) = &settings.db {
            let db = t.config.get_dbname().unwrap();
            // Statistics reach the view when the connection that ran the query next goes idle
            // for long enough: up to ten seconds.
            let scans = (0..150)
                .map(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    support::pg::psql(
                        &support::pg::shared(),
                        db,
                        "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'series_points_series_ts'",
                    )
                })
                .find(|n| n.trim() != "0")
                .unwrap_or_default();
            assert!(
                scans.trim().parse::<i64>().unwrap_or(0) >= 1,
                "index not used: {scans:?}"
            );
        }
    }
}

/// Readings history in a PostgreSQL store, as a long run would leave it: 100 devices (`dev1` …
/// `dev100`, topics `plant/1` …) of 3 fields, 200 readings each from 2026-01-01 00:01 UTC, a
/// minute apart; then planner statistics, as autovacuum gathers them.
fn pg_history(server: &str, db: &str) {
    support::pg::psql(
        server,
        db,
        "INSERT INTO series (topic, device, field)
             SELECT 'plant/' || d, 'dev' || d, f FROM generate_series(1, 100) d, unnest(ARRAY['temp', 'hum', 'pres']) f;
         INSERT INTO series_points (message_id, series_id, ts, value, ts_source)
             SELECT 0, s.id, timestamptz '2026-01-01 00:00:00+00' + n * interval '1 minute', n, 'received'
             FROM series s, generate_series(1, 200) n WHERE s.device LIKE 'dev%';
         INSERT INTO series_1m (series_id, bucket, count, min, max, sum, avg, last, last_ts)
             SELECT s.id, timestamptz '2026-01-01 00:00:00+00' + n * interval '1 minute', 1, n, n, n, n, n, now()
             FROM series s, generate_series(1, 200) n WHERE s.device LIKE 'dev%';
         ANALYZE series; ANALYZE series_points; ANALYZE series_1m;",
    );
}

/// Schema 13 stores PostgreSQL's readings by series, as SQLite's schema 7 does: a `readings`
/// question filtered by device (Metabase's usual one) starts from that device's series and reads
/// only their points through `series_points_series_ts`, instead of every reading in the range.
#[test]
fn a_postgresql_readings_question_by_device_reads_only_that_devices_series() {
    let (server, db, settings) = fresh_pg();
    write_pump(&settings);
    pg_history(&server, &db);
    let question = "SELECT ts, value FROM readings WHERE device = 'dev7' AND field = 'temp' AND ts >= '2026-01-01 02:00:00+00'";
    assert_eq!(
        device_question(
            &server,
            &db,
            question,
            "value",
            "series_points",
            "series_points_series_ts"
        ),
        "81 120 200"
    );
    assert_eq!(
        pump_rows(&server, &db, "readings", "value"),
        "plant/d1 pump hum=40,plant/d1 pump temp=5"
    );
}

/// `question`, filtered by device, on `pg_history`'s series: asserts that its plan reads `table`
/// through `index` only, and answers the count, least and greatest of its `column`.
fn device_question(server: &str, db: &str, question: &str, column: &str, table: &str, index: &str) -> String {
    let plan = support::pg::psql(server, db, &format!("EXPLAIN {question}"));
    assert!(plan.contains(index), "{plan}");
    assert!(!plan.contains(&format!("Seq Scan on {table}")), "{plan}");
    support::pg::psql(
        server,
        db,
        &format!("SELECT count(*) || ' ' || min({column}) || ' ' || max({column}) FROM ({question}) q"),
    )
    .trim()
    .to_string()
}

/// `write_pump`'s series in `table` (a view), as `topic device field=column`.
fn pump_rows(server: &str, db: &str, table: &str, column: &str) -> String {
    support::pg::psql(
        server,
        db,
        &format!("SELECT string_agg(topic || ' ' || device || ' ' || field || '=' || {column}, ',' ORDER BY field) FROM {table} WHERE device = 'pump'"),
    )
    .trim()
    .to_string()
}

/// Schema 14 keys PostgreSQL's rollups and current values by series too: a `readings_1m`
/// question filtered by device reads only that device's buckets through `series_1m_key`
/// (the md5 keys before it matched no question Metabase writes), and the views answer with the
/// texts as the tables did, `''` for no device.
#[test]
fn a_postgresql_rollup_question_by_device_reads_only_that_devices_buckets() {
    let (server, db, settings) = fresh_pg();
    write_pump(&settings);
    pg_history(&server, &db);
    let question = "SELECT bucket, avg FROM readings_1m WHERE device = 'dev7' AND field = 'temp' AND bucket >= '2026-01-01 02:00:00+00'";
    assert_eq!(
        device_question(&server, &db, question, "avg", "series_1m", "series_1m_key"),
        "81 120 200"
    );
    for (table, column) in [
        ("readings_1m", "avg"),
        ("readings_1h", "avg"),
        ("readings_latest", "value"),
    ] {
        assert_eq!(
            pump_rows(&server, &db, table, column),
            "plant/d1 pump hum=40,plant/d1 pump temp=5",
            "{table}"
        );
    }
}

/// A user's own table under a name a PostgreSQL migration needs stops the upgrade with a message
/// naming it and saying what to do, and leaves the database as it was (the migrations are one
/// transaction); once renamed, the next start upgrades.
#[test]
fn a_postgresql_table_of_the_users_under_a_name_tidegate_needs_stops_the_upgrade_with_what_to_do() {
    let (server, db, settings) = fresh_pg();
    support::pg::psql(
        &server,
        &db,
        "CREATE TABLE series_1m (mine text); INSERT INTO series_1m VALUES ('kept');",
    );
    let err = rt()
        .block_on(store::open(&settings))
        .err()
        .expect("the upgrade must stop")
        .to_string();
    assert!(
        err.contains("`series_1m` already exists")
            && err.contains("schema 14")
            && err.contains("ALTER TABLE series_1m RENAME TO"),
        "{err}"
    );
    let left = support::pg::psql(
        &server,
        &db,
        "SELECT (SELECT string_agg(mine, ',') FROM series_1m) || ' ' || (to_regclass('messages') IS NULL)",
    );
    assert_eq!(left.trim(), "kept true");
    support::pg::psql(&server, &db, "ALTER TABLE series_1m RENAME TO my_series_1m");
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(&s, vec![with_readings(msg("after/rename", br#"{"temp":7}"#))]).await;
        assert_eq!(raw_values(&s, "after/rename", "temp").await, [7.0]);
    });
}

/// A PostgreSQL database moved to a newer schema by another instance while this one runs: its
/// writes fail (here, a table it writes is gone), and the error says why and what to do
/// instead of only what failed.
#[test]
fn a_postgresql_write_failing_after_a_newer_tidegate_upgraded_the_database_says_so() {
    let (server, db, settings) = fresh_pg();
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        write(&s, vec![with_readings(msg("up/a", br#"{"temp":1}"#))]).await;
        support::pg::psql(
            &server,
            &db,
            "INSERT INTO tidegate_schema (version) VALUES (99); ALTER TABLE series_1m RENAME TO series_1m_v99;",
        );
        let err = s
            .write(Arc::new(vec![with_readings(msg("up/a", br#"{"temp":2}"#))]))
            .await
            .expect_err("the write must fail")
            .to_string();
        assert!(err.contains("series_1m"), "{err}");
        assert!(
            err.contains(&format!(
                "the database is at schema 99, newer than this tidegate's {}",
                tidegate::store::postgres::SCHEMA_VERSION
            )) && err.contains("Upgrade this one too"),
            "{err}"
        );
    });
}

/// Two batches of one store in flight at once (the pipeline's: the second copies its rows while
/// the first is being written) that both bring the same new series. The second may reach the
/// series table first; if it kept that row locked while waiting for the first batch's commit,
/// and the first waited on that row, neither would ever commit.
#[test]
fn a_postgresql_batch_in_flight_behind_another_with_the_same_new_series_does_not_stall_it() {
    let (_server, _db, settings) = fresh_pg();
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        for round in 0..5 {
            // The first batch adds many series and the shared one last (sorted), the second only
            // the shared one: the second's insert is the quicker to get there.
            let mut first: Vec<Message> = (0..6)
                .map(|m| {
                    let fields: Vec<String> =
                        (0..250).map(|i| format!(r#""f{round}_{m}_{i:03}": 1"#)).collect();
                    with_readings(msg("same/t", format!("{{{}}}", fields.join(",")).as_bytes()))
                })
                .collect();
            first.push(with_readings(msg(
                "same/t",
                format!(r#"{{"zz{round}": 1}}"#).as_bytes(),
            )));
            let second = vec![with_readings(msg(
                "same/t",
                format!(r#"{{"zz{round}": 2}}"#).as_bytes(),
            ))];
            let both = async { tokio::join!(s.write(Arc::new(first)), s.write(Arc::new(second))) };
            let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(20), both)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the two batches did not commit within 20 s"));
            assert!(
                a.is_ok() && b.is_ok(),
                "round {round}: {:?} {:?}",
                a.err(),
                b.err()
            );
        }
        assert_eq!(raw_values(&s, "same/t", "zz4").await, [1.0, 2.0]);
    });
}

/// Two instances writing the same topics at once (a share group on one database): every batch
/// commits and the per-topic counts and rollups add up (no lost update between the upserts).
#[test]
fn concurrent_writers_on_the_same_topics_all_commit_and_add_up() {
    use rand::seq::SliceRandom;
    const TOPICS: usize = 50;
    const ROUNDS: usize = 20;
    let pg_url = support::pg::fresh_database(&support::pg::shared());
    let settings = StoreSettings {
        db: DbUrl::parse(&pg_url).unwrap(),
        sqlite_sync: SqliteSync::Full,
        batch_size: 5000,
    };
    rt().block_on(async {
        let one = store::open(&settings).await.unwrap();
        let two = store::open(&settings).await.unwrap();
        let topics: Vec<String> = (0..TOPICS).map(|i| format!("plant/{i}")).collect();
        let mut rng = rand::rng();
        for round in 0..ROUNDS {
            let batch = |rng: &mut rand::rngs::ThreadRng| {
                let mut t = topics.clone();
                t.shuffle(rng);
                t.iter()
                    .map(|t| with_readings(msg(t, format!(r#"{{"v": {round}, "w": 2}}"#).as_bytes())))
                    .collect::<Vec<_>>()
            };
            let (b1, b2) = (batch(&mut rng), batch(&mut rng));
            let (r1, r2) = tokio::join!(one.write(Arc::new(b1)), two.write(Arc::new(b2)));
            assert!(
                r1.is_ok() && r2.is_ok(),
                "round {round}: {:?} {:?}",
                r1.err(),
                r2.err()
            );
        }
    });
    let db = match &settings.db {
        DbUrl::Postgres(t) => t.config.get_dbname().unwrap().to_string(),
        DbUrl::Sqlite(_) => unreachable!(),
    };
    let counts = support::pg::psql(
        &support::pg::shared(),
        &db,
        "SELECT sum(message_count) || '/' || count(*) || '/' || (SELECT sum(count) FROM readings_1m) FROM topics",
    );
    assert_eq!(
        counts.trim(),
        format!("{}/{TOPICS}/{}", ROUNDS * 2 * TOPICS, ROUNDS * 2 * TOPICS * 2)
    );
    // Both created the same series at once in the first round: one row each, and every reading
    // is in `readings` (none points at a series row that is not there).
    let series = support::pg::psql(
        &support::pg::shared(),
        &db,
        "SELECT (SELECT count(*) FROM series) || '/' || (SELECT count(*) FROM readings) || '/' || (SELECT count(*) FROM series_points)",
    );
    let readings = ROUNDS * 2 * TOPICS * 2;
    assert_eq!(series.trim(), format!("{}/{readings}/{readings}", TOPICS * 2));
}

/// PostgreSQL refuses what SQLite stores, a rollup sum past the largest float8: the message
/// whose reading overflows is recorded in `rejected` with the reason, and the rest of its batch
/// is stored. A batch's statements are pipelined, so this also checks that the refusal decides
/// what happens, not the "transaction aborted" of every statement sent after it.
#[test]
fn a_message_postgresql_refuses_is_rejected_alone_and_the_rest_of_its_batch_is_stored() {
    let (server, db, settings) = fresh_pg();
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        let first = write(&s, vec![timed_reading("big/a", "1e308")]).await;
        assert!(matches!(first[..], [Outcome::Stored { .. }]), "{first:?}");
        // The refused message brings a new series (`fresh`), created in its savepoint and gone
        // with it; the next message needs that series again.
        let second = write(
            &s,
            vec![
                timed_reading("ok/b", "1"),
                with_readings(msg(
                    "big/a",
                    br#"{"ts":"2026-11-25T10:00:00Z","v":1e308,"fresh":5}"#,
                )),
                with_readings(msg("big/a", br#"{"ts":"2026-11-25T10:00:00Z","fresh":6}"#)),
                timed_reading("ok/c", "2"),
            ],
        )
        .await;
        assert!(
            matches!(
                second[..],
                [
                    Outcome::Stored { .. },
                    Outcome::Rejected,
                    Outcome::Stored { .. },
                    Outcome::Stored { .. }
                ]
            ),
            "{second:?}"
        );
    });
    let sql = |q: &str| support::pg::psql(&server, &db, q);
    let reason = sql("SELECT topic || ': ' || reason FROM rejected");
    assert!(
        reason.starts_with("big/a: the database refused this message") && reason.contains("out of range"),
        "{reason}"
    );
    assert_eq!(
        sql("SELECT string_agg(topic, ',' ORDER BY id) FROM messages"),
        "big/a,ok/b,big/a,ok/c"
    );
    // Every reading stored is in `readings`: none points at a series that was rolled back.
    assert_eq!(
        sql("SELECT string_agg(topic || ' ' || field || '=' || value, ',' ORDER BY id) FROM readings"),
        "big/a v=1e+308,ok/b v=1,big/a fresh=6,ok/c v=2"
    );
    assert_eq!(sql("SELECT count(*) FROM series_points"), "4");
    assert_eq!(
        sql("SELECT string_agg(topic || '/' || field || '=' || count, ',' ORDER BY topic, field) FROM readings_1h"),
        "big/a/fresh=1,big/a/v=1,ok/b/v=1,ok/c/v=1"
    );
}

#[test]
fn an_sqlite_batch_that_fails_midway_leaves_nothing_behind_and_commits_whole_on_retry() {
    let (_dir, path, settings) = sqlite_file("fail.db");
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        let first = write(&s, vec![with_readings(msg("a", br#"{"v": 1}"#))]).await;
        let Outcome::Stored { id: first } = first[0] else {
            panic!("{first:?}")
        };
        // The database refuses the batch's third message, after two were taken in.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.topic = 'boom'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        let batch = Arc::new(vec![
            with_readings(msg("a", br#"{"v": 2}"#)),
            with_readings(msg("b", br#"{"v": 3, "w": 4}"#)),
            with_readings(msg("boom", br#"{"v": 5}"#)),
            with_readings(msg("c", br#"{"v": 6}"#)),
        ]);
        let err = s.write(batch.clone()).await.err().unwrap().to_string();
        assert!(err.contains("refused"), "{err}");
        c.execute_batch("DROP TRIGGER refuse").unwrap();
        // Refused again later in the transaction, after it created the series of `b` and `w`:
        // the writer must not reuse those rolled-back series ids on the retry.
        c.execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON series_points WHEN NEW.value = 5
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        let err = s.write(batch.clone()).await.err().unwrap().to_string();
        assert!(err.contains("refused"), "{err}");
        c.execute_batch("DROP TRIGGER refuse").unwrap();

        // The same batch again: stored whole, once, in arrival order, right after the first.
        let out = s.write(batch).await.unwrap().outcomes().to_vec();
        let ids: Vec<Outcome> = (1..=4).map(|k| Outcome::Stored { id: first + k }).collect();
        assert_eq!(out, ids);
        let rows: Vec<(i64, String, String)> = c
            .prepare("SELECT id, topic, payload FROM messages ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let topics: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(topics, ["a", "a", "b", "boom", "c"]);
        assert_eq!(rows[3], (first + 3, "boom".into(), r#"{"v": 5}"#.into()));
        // Each reading points at its own message, none twice.
        let readings: Vec<(i64, String, f64)> = c
            .prepare("SELECT message_id, field, value FROM readings ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected = [
            (first, "v", 1.0),
            (first + 1, "v", 2.0),
            (first + 2, "v", 3.0),
            (first + 2, "w", 4.0),
            (first + 3, "v", 5.0),
            (first + 4, "v", 6.0),
        ];
        let expected: Vec<(i64, String, f64)> =
            expected.iter().map(|(i, f, v)| (*i, f.to_string(), *v)).collect();
        assert_eq!(readings, expected);
    });
}

#[test]
fn a_postgresql_batch_retried_after_its_commit_went_unanswered_is_stored_once() {
    let (server, db, settings) = fresh_pg();
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        let batch = Arc::new(vec![mqtt("t/a", b"1", 1, false), msg("t/b", b"2")]);
        let first = s.write(batch.clone()).await.unwrap().outcomes().to_vec();
        assert!(
            matches!(first[..], [Outcome::Stored { .. }, Outcome::Stored { .. }]),
            "{first:?}"
        );
        // The pipeline hands the same batch over again when a COMMIT's answer never came: here
        // the COMMIT went through, so nothing more may be stored (the HTTP message included,
        // which has no delivery mark to recognise it by).
        let retried = s.write(batch.clone()).await.unwrap().outcomes().to_vec();
        assert_eq!(retried, [Outcome::Duplicate, Outcome::Duplicate]);
        // Equal messages in a batch of their own are new messages.
        let later = write(&s, vec![mqtt("t/a", b"1", 2, false), msg("t/b", b"2")]).await;
        assert!(
            matches!(later[..], [Outcome::Stored { .. }, Outcome::Stored { .. }]),
            "{later:?}"
        );
    });
    let sql = |q: &str| support::pg::psql(&server, &db, q);
    assert_eq!(sql("SELECT count(*) FROM messages"), "4");
    assert_eq!(sql("SELECT count(*) FROM commit_tokens"), "2");
}

#[test]
fn a_postgresql_store_deletes_the_commit_tokens_no_retry_can_need() {
    let (server, db, settings) = fresh_pg();
    let sql = |q: &str| support::pg::psql(&server, &db, q);
    let DbUrl::Postgres(target) = &settings.db else {
        panic!("a PostgreSQL URL")
    };
    rt().block_on(async {
        let (this, other) = (
            PgStore::open(target).await.unwrap(),
            PgStore::open(target).await.unwrap(),
        );
        // A finished batch, one the pipeline still holds (as it does until a retry succeeds),
        // and another instance's batch.
        this.write(Arc::new(vec![msg("t/a", b"1")])).await.unwrap();
        let held = Arc::new(vec![msg("t/b", b"2")]);
        this.write(held.clone()).await.unwrap();
        other.write(Arc::new(vec![msg("t/c", b"3")])).await.unwrap();
        assert_eq!(sql("SELECT count(*) FROM commit_tokens"), "3");

        sql("UPDATE commit_tokens SET at = now() - interval '2 hours'");
        assert_eq!(
            this.prune_commit_tokens().await.unwrap(),
            1,
            "only its own finished batch's"
        );
        assert_eq!(sql("SELECT count(*) FROM commit_tokens"), "2");
        // The held batch is still recognised when it is handed over again.
        let again = this.write(held.clone()).await.unwrap().outcomes().to_vec();
        assert_eq!(again, [Outcome::Duplicate]);

        // After a day, any instance's tokens go.
        sql("UPDATE commit_tokens SET at = now() - interval '2 days'");
        assert_eq!(this.prune_commit_tokens().await.unwrap(), 2);
    });
    assert_eq!(sql("SELECT count(*) FROM messages"), "3");
}

/// The stored ids of a committed batch, in its order.
fn stored_ids(store: &str, c: &tidegate::store::Committed) -> Vec<i64> {
    c.outcomes()
        .iter()
        .map(|o| match o {
            Outcome::Stored { id } => *id,
            other => panic!("{store}: expected every message stored, got {other:?}"),
        })
        .collect()
}

/// Two batches handed over at once (every store takes two in flight) commit in the order they
/// were handed over: ids follow it, and a redelivery of the second, handed over together with a
/// new batch, is recognised from the marks the second left.
#[test]
fn batches_in_flight_together_commit_in_the_order_handed_over() {
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            assert!(s.queue_depth() >= 2, "{name}: takes batches two deep");
            let batch = |from: u16, dup: bool| {
                Arc::new(
                    (from..from + 40)
                        .map(|i| {
                            with_readings(mqtt(
                                &format!("pair/{}", i % 3),
                                format!(r#"{{"v":{i}}}"#).as_bytes(),
                                i,
                                dup,
                            ))
                        })
                        .collect::<Vec<_>>(),
                )
            };
            let (a, b) = futures::join!(s.write(batch(1, false)), s.write(batch(41, false)));
            let (a, b) = (stored_ids(&name, &a.unwrap()), stored_ids(&name, &b.unwrap()));
            for ids in [&a, &b] {
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "{name}: {ids:?}");
            }
            assert!(a.last() < b.first(), "{name}: {a:?} then {b:?}");
            let (again, d) = futures::join!(s.write(batch(41, true)), s.write(batch(81, false)));
            assert!(
                again.unwrap().outcomes().iter().all(|o| *o == Outcome::Duplicate),
                "{name}: the redelivered batch is recognised"
            );
            let d = stored_ids(&name, &d.unwrap());
            assert!(b.last() < d.first(), "{name}: {b:?} then {d:?}");
            let stored = s.messages(all(None)).await.unwrap();
            assert_eq!(stored.len(), 120, "{name}");
        });
    }
}

/// The first of two PostgreSQL batches in flight is refused and written again message by
/// message, with new ids, after the second drew its own: the second starts again behind it, so
/// ids still follow the order the batches were handed over, and nothing is stored twice.
#[test]
fn a_postgresql_batch_written_again_is_not_overtaken_by_the_next() {
    let (server, db, settings) = fresh_pg();
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        // Two at once, so both connections are open before the batches under test.
        let (big, warm) = futures::join!(
            s.write(Arc::new(vec![timed_reading("big/a", "1e308")])),
            s.write(Arc::new(vec![timed_reading("warm/e", "0")]))
        );
        big.unwrap();
        warm.unwrap();
        let refused = Arc::new(vec![
            timed_reading("ok/b", "1"),
            timed_reading("big/a", "1e308"),
            timed_reading("ok/c", "2"),
        ]);
        let next = Arc::new(
            (0..20)
                .map(|i| timed_reading("next/d", &i.to_string()))
                .collect::<Vec<_>>(),
        );
        // The second is sent back behind the first inside the store, without an error: the
        // pipeline would take one for a fault of the database.
        let (first, second) = futures::join!(s.write(refused.clone()), s.write(next.clone()));
        let first = first.unwrap();
        let second = stored_ids("postgres", &second.unwrap());
        let first_ids: Vec<i64> = first
            .outcomes()
            .iter()
            .filter_map(|o| match o {
                Outcome::Stored { id } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(first_ids.len(), 2, "{:?}", first.outcomes());
        assert!(
            first_ids.iter().all(|id| id < &second[0]),
            "{first_ids:?} then {second:?}"
        );
    });
    let sql = |q: &str| support::pg::psql(&server, &db, q);
    assert_eq!(sql("SELECT count(*) FROM messages WHERE topic = 'next/d'"), "20");
    assert_eq!(sql("SELECT count(*) FROM readings WHERE topic = 'next/d'"), "20");
    assert_eq!(
        sql("SELECT sum(count) FROM readings_1m WHERE topic = 'next/d'"),
        "20"
    );
}

#[test]
fn a_postgresql_batch_from_the_spool_records_how_far_the_spool_went_with_its_rows() {
    let (server, db, settings) = fresh_pg();
    rt().block_on(async {
        let s = store::open(&settings).await.unwrap();
        let at = |last_id| store::SpoolPosition {
            name: "spool-a".into(),
            last_id,
        };
        let mut batch: Vec<Message> = (0..3)
            .map(|i| timed_reading("spooled/a", &i.to_string()))
            .collect();
        batch.push(timed_reading("spooled/big", "1e308"));
        let first = s
            .write_from_spool(Arc::new(batch), at(42))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored_ids("postgres", &first).len(), 4);
        assert_eq!(s.spool_position("spool-a").await.unwrap(), Some(42));
        // A refused message (its rollup's sum would overflow) sends the batch down the
        // one-by-one path, which records the position too.
        let refused = vec![
            timed_reading("spooled/a", "3"),
            timed_reading("spooled/big", "1e308"),
        ];
        let second = s
            .write_from_spool(Arc::new(refused), at(44))
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(second.outcomes(), [Outcome::Stored { .. }, Outcome::Rejected]),
            "{:?}",
            second.outcomes()
        );
        assert_eq!(s.spool_position("spool-a").await.unwrap(), Some(44));
        assert_eq!(s.spool_position("spool-b").await.unwrap(), None);
    });
    let sql = |q: &str| support::pg::psql(&server, &db, q);
    assert_eq!(
        sql("SELECT count(*) FROM messages WHERE topic = 'spooled/a'"),
        "4"
    );
    assert_eq!(
        sql("SELECT count(*) FROM rejected WHERE topic = 'spooled/big'"),
        "1"
    );
    assert_eq!(
        sql("SELECT count(*) FROM readings WHERE topic = 'spooled/a'"),
        "4"
    );
}

/// A backfill leaves a store as if its readings and mapping had been on from the start: the
/// same readings, mapping rows, rollups, latest values and misfits in `rejected` as a store that
/// derived every message as it came, for messages stored with readings off, then on, then
/// without the mapping. A second run adds nothing, and records no misfit again.
#[test]
fn every_store_backfills_to_what_deriving_from_the_start_gives() {
    use tidegate::backfill::TableTally;
    use tidegate::readings::{
        mapping::{Mapping, MappingSpec},
        ReadingsConfig,
    };
    let spec: MappingSpec =
        toml::from_str("filter = \"plant/+/climate\"\ntable = \"climate\"\n[columns]\ntemp = \"$.temp\"\n")
            .unwrap();
    let full = ReadingsConfig {
        mappings: vec![Arc::new(Mapping::from_spec(&spec).unwrap())],
        ..Default::default()
    };
    let readings_only = ReadingsConfig::default();
    let base: chrono::DateTime<chrono::Utc> = "2026-12-01T08:00:00Z".parse().unwrap();
    // Batches of (message, how the live store derived it: None = readings off).
    let mut phases: Vec<(Vec<Message>, Option<&ReadingsConfig>)> = Vec::new();
    let mut n = 0;
    let mut next = |k: usize| -> Vec<Message> {
        (0..k)
            .map(|_| {
                n += 1;
                let ts = base + chrono::Duration::seconds(37 * n);
                let topic = format!("plant/{}/climate", ["a", "b", "c"][n as usize % 3]);
                let payload = if n % 10 == 0 {
                    "not json".to_string()
                } else if n % 7 == 3 {
                    // A value the mapping's REAL column cannot take: a misfit.
                    format!(r#"{{"ts":"{}","temp":"hot","hum":{}}}"#, ts.to_rfc3339(), n % 90)
                } else {
                    format!(
                        r#"{{"ts":"{}","temp":{}.5,"hum":{}}}"#,
                        ts.to_rfc3339(),
                        n % 30,
                        n % 90
                    )
                };
                let mut m = msg(&topic, payload.as_bytes());
                m.received_at = ts + chrono::Duration::seconds(1);
                m
            })
            .collect()
    };
    for (k, cfg) in [
        (120, None),
        (80, None),
        (60, Some(&readings_only)),
        (50, Some(&full)),
    ] {
        phases.push((next(k), cfg));
    }
    let derive = |m: &Message, cfg: &ReadingsConfig| {
        let mut m = m.clone();
        m.derived = tidegate::readings::derive(cfg, &m.topic, &m.payload, m.received_at);
        m
    };
    let dump = |settings: &StoreSettings| -> Vec<String> {
        [
            "SELECT message_id || '|' || topic || '|' || coalesce(device, '') || '|' || field || '|' || coalesce(CAST(value AS TEXT), text) || '|' || CAST(ts AS TEXT) || '|' || ts_source FROM readings ORDER BY message_id, field",
            "SELECT message_id || '|' || topic || '|' || CAST(temp AS TEXT) || '|' || CAST(ts AS TEXT) FROM climate ORDER BY message_id",
            "SELECT topic || '|' || device || '|' || field || '|' || CAST(bucket AS TEXT) || '|' || count || '|' || CAST(round(sum * 1000) AS BIGINT) || '|' || CAST(round(last * 1000) AS BIGINT) || '|' || CAST(last_ts AS TEXT) FROM readings_1m ORDER BY 1",
            "SELECT topic || '|' || device || '|' || field || '|' || CAST(bucket AS TEXT) || '|' || count || '|' || CAST(round(min * 1000) AS BIGINT) || '|' || CAST(round(max * 1000) AS BIGINT) FROM readings_1h ORDER BY 1",
            "SELECT message_id || '|' || mapping || '|' || topic || '|' || reason FROM rejected ORDER BY message_id",
        ]
        .iter()
        .map(|sql| text_rows(settings, sql))
        .chain([latest_rows(settings)])
        .collect()
    };
    let (mut reference, mut backfilled) = (stores(), stores());
    for ((name, want, _d1), (_, got, _d2)) in reference.iter_mut().zip(backfilled.iter_mut()) {
        rt().block_on(async {
            let all_on = store::open(want).await.unwrap();
            let live = store::open(got).await.unwrap();
            for (batch, cfg) in &phases {
                write(&all_on, batch.iter().map(|m| derive(m, &full)).collect()).await;
                let as_live = batch
                    .iter()
                    .map(|m| cfg.map_or_else(|| m.clone(), |c| derive(m, c)))
                    .collect();
                write(&live, as_live).await;
            }
            let dry = tidegate::backfill::backfill(&*live, &full, true).await.unwrap();
            let first = tidegate::backfill::backfill(&*live, &full, false).await.unwrap();
            assert_eq!(
                (dry.read, dry.readings, &dry.mapped),
                (first.read, first.readings, &first.mapped),
                "{name}: a dry run counts what the run adds"
            );
            // 200 messages stored with readings off, 20 of them not JSON; 260 stored before
            // the mapping, 26 of them not JSON and 33 with a misfit (6 more among the 50
            // stored with the mapping, recorded then).
            assert_eq!(first.read, 310, "{name}");
            assert_eq!(
                (first.messages_with_readings, first.readings),
                (180, 360),
                "{name}"
            );
            let tally = |rows, misfits, known_misfits| TableTally {
                rows,
                misfits,
                known_misfits,
                expired: 0,
            };
            assert_eq!(
                first.mapped.get("climate"),
                Some(&tally(201, 33, 6)),
                "{name}: {first}"
            );
            let again = tidegate::backfill::backfill(&*live, &full, false).await.unwrap();
            assert_eq!((again.readings, again.notes), (0, 0), "{name}: {again}");
            assert_eq!(
                again.mapped.get("climate"),
                Some(&tally(0, 0, 39)),
                "{name}: {again}"
            );
            assert!(
                again.to_string().contains("39 still do not fit"),
                "{name}: {again}"
            );
        });
        let (want, got) = (dump(want), dump(got));
        for (w, g) in want.iter().zip(&got) {
            assert!(!w.is_empty(), "{name}");
            assert_eq!(g, w, "{name}");
        }
    }
}

/// Readings retention deletes by time and keeps the rollups: a message whose readings it
/// removed lacks readings as much as one stored with readings off, but its minute still counts
/// them. The backfill must give readings only to the second, or `readings_1m` and `readings_1h`
/// would count the first twice.
#[test]
fn every_store_backfill_leaves_out_readings_retention_removed_and_the_rollups_still_count() {
    use tidegate::config::RetentionPolicy;
    let readings = tidegate::readings::ReadingsConfig::default();
    let policy = RetentionPolicy {
        raw: None,
        readings: Some(std::time::Duration::from_secs(30 * 86400)),
        rollups: None,
        ..Default::default()
    };
    let minute = |days: i64| {
        tidegate::store::rollup::Width::Minute.floor(chrono::Utc::now() - chrono::Duration::days(days))
    };
    let at = |t: chrono::DateTime<chrono::Utc>, secs: i64, v: i64| {
        let mut m = msg("bf/r", format!(r#"{{"v":{v}}}"#).as_bytes());
        m.received_at = t + chrono::Duration::seconds(secs);
        m
    };
    let (derived_once, never_derived, recent) = (minute(40), minute(50), minute(1));
    let counts = |settings: &StoreSettings| -> Vec<String> {
        ["readings_1m", "readings_1h"]
            .iter()
            .map(|t| {
                text_rows(
                    settings,
                    &format!(
                        "SELECT CAST(count AS TEXT) || ' ' || CAST(CAST(round(sum) AS INTEGER) AS TEXT) FROM {t} WHERE topic = 'bf/r' ORDER BY bucket"
                    ),
                )
            })
            .collect()
    };
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            write(
                &s,
                (0..3)
                    .map(|k| with_readings(at(derived_once, 10 * k, 10)))
                    .collect(),
            )
            .await;
            write(&s, (0..2).map(|k| at(never_derived, 10 * k, 7)).collect()).await;
            write(&s, vec![with_readings(at(recent, 0, 1))]).await;
            let retain = || retain_all(&s, &policy, 1000);
            retain().await;
            assert_eq!(raw_values(&s, "bf/r", "v").await, [1.0], "{name}: retention ran");
            let key = |minute| tidegate::store::backfill::Minute {
                topic: "bf/r".into(),
                device: String::new(),
                field: "v".into(),
                minute,
            };
            // Minutes close together are read as one range of buckets, far apart one by one.
            let near = vec![
                key(derived_once),
                key(derived_once + chrono::Duration::minutes(1)),
            ];
            let far = vec![key(never_derived), key(derived_once), key(recent)];
            assert_eq!(s.counted_but_gone(near).await.unwrap(), [true, false], "{name}");
            assert_eq!(
                s.counted_but_gone(far).await.unwrap(),
                [false, true, false],
                "{name}"
            );
            let want = ["2 14\n3 30\n1 1", "2 14\n3 30\n1 1"];

            let dry = tidegate::backfill::backfill(&*s, &readings, true).await.unwrap();
            let first = tidegate::backfill::backfill(&*s, &readings, false).await.unwrap();
            assert_eq!(
                (dry.readings, dry.counted_already),
                (first.readings, first.counted_already),
                "{name}"
            );
            assert_eq!(
                (first.read, first.messages_with_readings, first.counted_already),
                (6, 2, 3),
                "{name}: {first}"
            );
            assert!(
                first
                    .to_string()
                    .contains("3 messages skipped: retention removed their readings"),
                "{name}: {first}"
            );
            assert_eq!(counts(&settings), want, "{name}");
            // Retention removes what the backfill gave the old messages; the next backfill
            // leaves all five alone.
            retain().await;
            let again = tidegate::backfill::backfill(&*s, &readings, false).await.unwrap();
            assert_eq!((again.readings, again.counted_already), (0, 5), "{name}: {again}");
            assert_eq!(counts(&settings), want, "{name}");
        });
    }
}

/// One batch whose mapping rows change their columns from message to message (a field that
/// comes and goes, `auto_columns` adding it midway): every row lands in order with its own
/// values, in every store.
#[test]
fn a_batch_of_mapping_rows_with_changing_columns_keeps_each_rows_values() {
    use tidegate::readings::{
        mapping::{Mapping, MappingSpec},
        ReadingsConfig,
    };
    let spec: MappingSpec =
        toml::from_str("filter = \"w/#\"\ntable = \"wide\"\nauto_columns = true\n").unwrap();
    let cfg = ReadingsConfig {
        mappings: vec![Arc::new(Mapping::from_spec(&spec).unwrap())],
        ..Default::default()
    };
    let payloads = [
        r#"{"a":1}"#,
        r#"{"a":2,"b":20}"#,
        r#"{"a":3,"b":30}"#,
        r#"{"a":4}"#,
        r#"{"b":50,"c":"x"}"#,
    ];
    for (name, settings, _dir) in stores() {
        rt().block_on(async {
            let s = store::open(&settings).await.unwrap();
            let batch = payloads
                .iter()
                .map(|p| {
                    let mut m = msg("w/1", p.as_bytes());
                    m.derived = tidegate::readings::derive(&cfg, &m.topic, &m.payload, m.received_at);
                    m
                })
                .collect();
            write(&s, batch).await;
        });
        let rows = text_rows(
            &settings,
            "SELECT message_id || ':' || coalesce(CAST(CAST(a AS INTEGER) AS TEXT), '-') || ',' || coalesce(CAST(CAST(b AS INTEGER) AS TEXT), '-') || ',' || coalesce(c, '-') FROM wide ORDER BY id",
        );
        assert_eq!(rows, "1:1,-,-\n2:2,20,-\n3:3,30,-\n4:4,-,-\n5:-,50,x", "{name}");
    }
}
