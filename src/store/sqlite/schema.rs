//! The SQLite schema and its migrations, as a `PRAGMA user_version` ladder. It owns table
//! layout only; it must never delete a user's rows (the seed's `dados` table is kept, renamed).

use rusqlite::{Connection, OptionalExtension};

use crate::store::{dedup::Hash, delivery_marks};

/// The newest schema this build knows.
pub const VERSION: i64 = 11;

const V1: &str = r#"
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    received_at     DATETIME NOT NULL,
    topic           TEXT NOT NULL,
    payload         TEXT,
    payload_raw     BLOB,
    payload_size    INTEGER NOT NULL,
    qos             INTEGER NOT NULL,
    retain          BOOLEAN NOT NULL,
    content_type    TEXT,
    user_properties TEXT,
    source          TEXT NOT NULL
);
CREATE INDEX messages_received_at ON messages (received_at);
CREATE INDEX messages_topic_received_at ON messages (topic, received_at);

CREATE TABLE rejected (
    id          INTEGER PRIMARY KEY,
    received_at DATETIME NOT NULL,
    topic       TEXT NOT NULL,
    size        INTEGER NOT NULL,
    qos         INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    source      TEXT NOT NULL
);
CREATE INDEX rejected_received_at ON rejected (received_at);

-- One row per topic, kept up to date in each write transaction, so listing topics never scans
-- the messages table.
CREATE TABLE topics (
    topic         TEXT PRIMARY KEY,
    message_count INTEGER NOT NULL,
    first_seen    DATETIME NOT NULL,
    last_seen     DATETIME NOT NULL
) WITHOUT ROWID;

-- The last message committed for each packet id of each MQTT session: a redelivery (DUP flag)
-- with the same packet id and content is a duplicate. Bounded: 65535 rows per session.
CREATE TABLE delivery_marks (
    session    TEXT NOT NULL,
    pkid       INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    message_id INTEGER,
    PRIMARY KEY (session, pkid)
) WITHOUT ROWID;

-- The last message stored on each topic, so a retained replay of it is stored once.
CREATE TABLE retained_marks (
    topic TEXT PRIMARY KEY,
    hash  BLOB NOT NULL
) WITHOUT ROWID;
"#;

/// Version 2: readings (one row per JSON field), their rollups, and notes on payloads that gave
/// no readings.
const V2_TEMPLATE: &str = r#"
CREATE TABLE readings (
    id         INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    ts         DATETIME NOT NULL,
    topic      TEXT NOT NULL,
    device     TEXT,
    field      TEXT NOT NULL,
    value      REAL,
    text       TEXT,
    ts_source  TEXT NOT NULL
);
CREATE INDEX readings_ts ON readings (ts);
CREATE INDEX readings_topic_field_ts ON readings (topic, field, ts);

{ROLLUPS}
CREATE TABLE reading_notes (
    message_id INTEGER PRIMARY KEY,
    note       TEXT NOT NULL
);
"#;

/// Version 3: tidegate's own per-minute health, for a Metabase dashboard.
const V3: &str = r#"
CREATE TABLE tidegate_stats (
    minute      DATETIME NOT NULL,
    topic       TEXT NOT NULL,
    received    INTEGER NOT NULL,
    committed   INTEGER NOT NULL,
    duplicates  INTEGER NOT NULL,
    rejected    INTEGER NOT NULL,
    lag_ms_mean REAL,
    lag_ms_max  REAL,
    lag_ms_sum  REAL NOT NULL,
    reconnects  INTEGER NOT NULL,
    PRIMARY KEY (minute, topic)
) WITHOUT ROWID;
"#;

/// Version 4: rollups by device and field (a dashboard filter), without the topic.
const V4: &str = r#"
CREATE INDEX readings_1m_device_field ON readings_1m (device, field, bucket);
CREATE INDEX readings_1h_device_field ON readings_1h (device, field, bucket);
"#;

/// Version 5: delivery marks as one row per committed batch and MQTT session
/// (`store::delivery_marks`), instead of one upsert per message — that upsert was a fifth of the
/// writer's time per message. A rowid table: a row holds up to a batch of marks.
const V5: &str = r#"
CREATE TABLE delivery_batches (
    id      INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    total   INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    marks   BLOB NOT NULL
);
CREATE UNIQUE INDEX delivery_batches_session_total ON delivery_batches (session, total);
"#;

/// Version 6: the newest reading of every series (`store::latest`), for "current value" cards,
/// filled from the readings already stored by `fill_latest`.
const V6: &str = r#"
CREATE TABLE readings_latest (
    topic  TEXT NOT NULL,
    device TEXT NOT NULL,
    field  TEXT NOT NULL,
    value  REAL,
    text   TEXT,
    ts     DATETIME NOT NULL,
    PRIMARY KEY (topic, device, field)
) WITHOUT ROWID;
"#;

/// Version 7: readings stored by series (`store::sqlite::series`). Each reading keeps its
/// series' id instead of the topic, device and field texts. `readings` stays, as a view with the
/// same columns and declared types, so Metabase questions and SQL written against it still work.
/// The readings move with their ids; the two indexes are built once, after the copy.
const V7: &str = r#"
CREATE TABLE series (
    id     INTEGER PRIMARY KEY,
    topic  TEXT NOT NULL,
    device TEXT,
    field  TEXT NOT NULL
);
CREATE UNIQUE INDEX series_key ON series (topic, field, coalesce(device, ''));
CREATE TABLE series_points (
    id         INTEGER PRIMARY KEY,
    message_id INTEGER NOT NULL,
    series_id  INTEGER NOT NULL,
    ts         DATETIME NOT NULL,
    value      REAL,
    text       TEXT,
    ts_source  TEXT NOT NULL
);
INSERT INTO series (topic, device, field) SELECT DISTINCT topic, nullif(device, ''), field FROM readings;
INSERT INTO series_points (id, message_id, series_id, ts, value, text, ts_source)
SELECT r.id, r.message_id, s.id, r.ts, r.value, r.text, r.ts_source
FROM readings r JOIN series s
  ON s.topic = r.topic AND s.field = r.field AND coalesce(s.device, '') = coalesce(r.device, '');
DROP TABLE readings;
CREATE INDEX series_points_ts ON series_points (ts);
CREATE INDEX series_points_series_ts ON series_points (series_id, ts);
CREATE VIEW readings AS
SELECT p.id AS id, p.message_id AS message_id, p.ts AS ts, s.topic AS topic, s.device AS device,
       s.field AS field, p.value AS value, p.text AS text, p.ts_source AS ts_source
FROM series_points p JOIN series s ON s.id = p.series_id;
"#;

/// Version 8: the topic filters each MQTT client id last subscribed to
/// (`store::sqlite::subscriptions`), as a JSON array.
const V8: &str = r#"
CREATE TABLE mqtt_subscriptions (
    client_id   TEXT PRIMARY KEY,
    filters     TEXT NOT NULL,
    recorded_at DATETIME NOT NULL
) WITHOUT ROWID;
"#;

/// Version 9: an index on the series' devices. A `readings` question filtered by device
/// (Metabase's usual one) then starts from that device's few series and reads their points
/// through the series index. Without it, and without planner statistics (tidegate gathers none:
/// docs/metabase.md), SQLite walked the time index and joined every reading in the range to its
/// series. On 10 million readings: a week of one device's field 356 → 24 ms,
/// `DISTINCT device` (Metabase's field values) 3.4 → 0.49 s (docs/performance-history.md,
/// session 28). `series` has a row per series, so the index costs the write path nothing.
const V9: &str = r#"
CREATE INDEX series_device ON series (device);
"#;

/// Version 11: a mapping value that does not fit its column names, in `rejected`, the stored
/// message (`message_id`) and the mapping table (`mapping`). A Metabase question then shows the
/// payload beside the reason, and `tidegate backfill` does not record the same misfit again on
/// each run. Both are empty for a message refused whole (it has no stored row).
const V11: &str = r#"
ALTER TABLE rejected ADD COLUMN message_id INTEGER;
ALTER TABLE rejected ADD COLUMN mapping TEXT;
"#;

/// Version 10: each rollup table split in two behind a view of its name. `{t}_closed` is the
/// old table, keyed by series first, so that a chart of one series reads its buckets together;
/// `{t}_open` holds the buckets still filling (the current minute or hour, and any later), keyed
/// by bucket, a few rows per series. Every batch updated the current bucket of each of its
/// series: in one table keyed by series those rows sat on a page per series once the table held
/// some history, and a batch touching many series rewrote a page of each table per series. With
/// 3,000 series and a few hours of history, `scripts/bench`'s many-series case wrote 69 KB a
/// message at 4.4–5.2k msg/s, against 27 KB at 12.0–12.1k split (docs/performance-history.md,
/// session 30). Keyed by bucket alone, a chart read one series' buckets a page each. Now a batch
/// rewrites the few pages of the open table, and a closed bucket moves once
/// (`rollups::close_buckets`). The writer keeps the two apart: at every commit each bucket is in
/// exactly one of them. The upgrade renames the table in place: no row is copied.
const V10_ROLLUP: &str = r#"
ALTER TABLE {t} RENAME TO {t}_closed;
CREATE TABLE {t}_open (
{columns}
    PRIMARY KEY (bucket, topic, device, field)
) WITHOUT ROWID;
CREATE VIEW {t} AS
SELECT topic, device, field, bucket, count, min, max, sum, avg, last, last_ts FROM {t}_closed
UNION ALL
SELECT topic, device, field, bucket, count, min, max, sum, avg, last, last_ts FROM {t}_open;
"#;

fn v10() -> String {
    rollup_tables(V10_ROLLUP)
}

/// One series' newest stored reading, while `fill_latest` reads them.
struct Newest {
    topic: String,
    device: String,
    field: String,
    value: Option<f64>,
    text: Option<String>,
    ts: String,
}

/// Fills `readings_latest` from `readings` in one pass in row order, keeping each series' newest
/// reading in memory (one entry per series). The `GROUP BY` that says the same in SQL sorted
/// every reading on disk first: 27 s for 10 million readings, against a few seconds for this.
fn fill_latest(tx: &Connection) -> rusqlite::Result<()> {
    let mut newest: std::collections::HashMap<String, Newest> = Default::default();
    let mut key = String::new();
    {
        let mut st =
            tx.prepare("SELECT topic, coalesce(device, ''), field, value, text, ts FROM readings")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (topic, device, field) = (
                r.get_ref(0)?.as_str()?,
                r.get_ref(1)?.as_str()?,
                r.get_ref(2)?.as_str()?,
            );
            let ts = r.get_ref(5)?.as_str()?;
            key.clear();
            for part in [topic, device, field] {
                key.push_str(part);
                key.push('\0');
            }
            // Timestamps are fixed-width UTC text: their order is time order. A later row with
            // the same time wins, as it would have when written.
            if let Some(n) = newest.get_mut(key.as_str()) {
                if ts >= n.ts.as_str() {
                    n.value = r.get(3)?;
                    n.text = r.get(4)?;
                    ts.clone_into(&mut n.ts);
                }
                continue;
            }
            newest.insert(
                key.clone(),
                Newest {
                    topic: topic.into(),
                    device: device.into(),
                    field: field.into(),
                    value: r.get(3)?,
                    text: r.get(4)?,
                    ts: ts.into(),
                },
            );
        }
    }
    let mut put = tx.prepare(
        "INSERT INTO readings_latest (topic, device, field, value, text, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for n in newest.into_values() {
        put.execute(rusqlite::params![
            n.topic, n.device, n.field, n.value, n.text, n.ts
        ])?;
    }
    Ok(())
}

/// Moves version 4's marks (one row per packet id, so no order among them) into one row per
/// session.
fn pack_old_marks(tx: &Connection) -> rusqlite::Result<()> {
    let mut by_session: std::collections::BTreeMap<String, Vec<(u16, Hash)>> = Default::default();
    {
        let mut st = tx.prepare("SELECT session, pkid, hash FROM delivery_marks")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let (session, pkid, hash): (String, i64, Vec<u8>) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if let (Ok(pkid), Ok(hash)) = (u16::try_from(pkid), Hash::try_from(hash)) {
                by_session.entry(session).or_default().push((pkid, hash));
            }
        }
    }
    let mut put =
        tx.prepare("INSERT INTO delivery_batches (session, total, n, marks) VALUES (?1, ?2, ?2, ?3)")?;
    for (session, marks) in by_session {
        put.execute(rusqlite::params![
            session,
            marks.len() as i64,
            delivery_marks::pack(&marks)
        ])?;
    }
    tx.execute_batch("DROP TABLE delivery_marks")
}

/// Schema 2's rollup tables, one per width, same layout (schema 10 splits each in two).
const ROLLUP: &str = r#"
CREATE TABLE {t} (
{columns}
    PRIMARY KEY (topic, device, field, bucket)
) WITHOUT ROWID;
CREATE INDEX {t}_bucket ON {t} (bucket);
"#;

fn v2() -> String {
    V2_TEMPLATE.replace("{ROLLUPS}", &rollup_tables(ROLLUP))
}

/// The columns of a rollup table, in every schema so far.
const ROLLUP_COLUMNS: &str = r#"    topic   TEXT NOT NULL,
    device  TEXT NOT NULL,
    field   TEXT NOT NULL,
    bucket  DATETIME NOT NULL,
    count   INTEGER NOT NULL,
    min     REAL NOT NULL,
    max     REAL NOT NULL,
    sum     REAL NOT NULL,
    avg     REAL NOT NULL,
    last    REAL NOT NULL,
    last_ts DATETIME NOT NULL,"#;

/// `template` for both rollup tables, `{t}` standing for the table's name.
fn rollup_tables(template: &str) -> String {
    ["readings_1m", "readings_1h"]
        .map(|t| template.replace("{columns}", ROLLUP_COLUMNS).replace("{t}", t))
        .join("")
}

/// `dados` keeps the seed script's contract: `id INTEGER`, `valor TEXT`, `timestamp DATETIME`.
/// Plain column references keep the declared types Metabase reads.
const DADOS_VIEW: &str = r#"
CREATE VIEW dados AS SELECT id AS id, payload AS valor, received_at AS "timestamp" FROM messages;
"#;

fn table_kind(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row("SELECT type FROM sqlite_master WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
}

/// Whether `name` is a table (a mapping table is made with its first row).
pub(super) fn is_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(table_kind(conn, name)?.as_deref() == Some("table"))
}

/// Brings the database to `VERSION`. Idempotent; refuses a file from a newer tidegate.
pub fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > VERSION {
        return Err(MigrateError::TooNew(found));
    }
    if found == VERSION {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)?;
    if found < 1 {
        let seed_table = table_kind(&tx, "dados")?.as_deref() == Some("table");
        tx.execute_batch(V1)?;
        if seed_table {
            // A database made by the seed script: its rows move into `messages` with their ids,
            // and the original table stays as `dados_seed` so nothing the user had is lost.
            tx.execute_batch(
                r#"
                ALTER TABLE dados RENAME TO dados_seed;
                INSERT INTO messages (id, received_at, topic, payload, payload_size, qos, retain, source)
                SELECT id,
                       COALESCE(strftime('%Y-%m-%d %H:%M:%f', "timestamp"), "timestamp", '1970-01-01 00:00:00.000'),
                       'dados', CAST(valor AS TEXT), COALESCE(length(CAST(valor AS BLOB)), 0), 1, 0, 'seed'
                FROM dados_seed;
                INSERT INTO topics (topic, message_count, first_seen, last_seen)
                SELECT topic, count(*), min(received_at), max(received_at) FROM messages GROUP BY topic;
                "#,
            )?;
        }
        tx.execute_batch(DADOS_VIEW)?;
    }
    if found < 2 {
        tx.execute_batch(&v2())?;
    }
    if found < 3 {
        tx.execute_batch(V3)?;
    }
    if found < 4 {
        tx.execute_batch(V4)?;
    }
    if found < 5 {
        tx.execute_batch(V5)?;
        pack_old_marks(&tx)?;
    }
    if found < 6 {
        tx.execute_batch(V6)?;
        fill_latest(&tx)?;
    }
    if found < 7 {
        if found >= 2 {
            // The one step that rewrites every reading: say so, since it takes a while.
            let readings: i64 = tx.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))?;
            if readings > 0 {
                tracing::info!(
                    readings,
                    "upgrading the database to schema 7: moving the stored readings to the series layout, once (about a minute per 10 million readings); nothing is written until it is done, and the broker keeps the messages meanwhile"
                );
            }
        }
        tx.execute_batch(V7)?;
    }
    if found < 8 {
        tx.execute_batch(V8)?;
    }
    if found < 9 {
        tx.execute_batch(V9)?;
    }
    if found < 10 {
        tx.execute_batch(&v10())?;
    }
    if found < 11 {
        tx.execute_batch(V11)?;
    }
    tx.pragma_update(None, "user_version", VERSION)?;
    tx.commit()?;
    if found >= 1 {
        if let Some(bytes) = space_left_unused(conn)? {
            tracing::info!(
                "after the upgrade the database file holds {} MiB unused (pages the old layout or deleted rows left); SQLite fills them again as data arrives. To give them back to the disk at once, stop tidegate and run `sqlite3 FILE 'VACUUM'` (it needs about the file's size in free disk space while it runs)",
                bytes >> 20
            );
        }
    }
    Ok(())
}

/// Unused space worth mentioning: an upgrade that moves rows to a new layout (schema 7) leaves
/// the old pages free inside the file, which does not shrink by itself.
const UNUSED_WORTH_SAYING: i64 = 16 << 20;

/// The bytes of free pages in the file, when there are at least `UNUSED_WORTH_SAYING`.
fn space_left_unused(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    let bytes: i64 = conn.query_row(
        "SELECT f.freelist_count * p.page_size FROM pragma_freelist_count f, pragma_page_size p",
        [],
        |r| r.get(0),
    )?;
    Ok((bytes >= UNUSED_WORTH_SAYING).then_some(bytes))
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("schema version {0} is newer than this tidegate")]
    TooNew(i64),
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_space_is_reported_once_it_is_worth_saying() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("unused.db")).unwrap();
        conn.execute_batch("CREATE TABLE old (b BLOB)").unwrap();
        let fill_then_drop = |mib: i64| {
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
                 INSERT INTO old (b) SELECT zeroblob(1048576) FROM n",
                [mib],
            )
            .unwrap();
            conn.execute("DELETE FROM old", []).unwrap();
        };
        assert_eq!(space_left_unused(&conn).unwrap(), None, "a new file");
        fill_then_drop(8);
        assert_eq!(
            space_left_unused(&conn).unwrap(),
            None,
            "8 MiB is not worth a word"
        );
        fill_then_drop(20);
        let unused = space_left_unused(&conn).unwrap().expect("20 MiB unused");
        assert!((20 << 20..24 << 20).contains(&unused), "{unused}");
    }
}
