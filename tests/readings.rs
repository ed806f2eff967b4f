//! Payloads to charts, end to end: the sensor example through a real Mosquitto into SQLite and
//! PostgreSQL, read back as rows and through `GET /api/v1/readings`.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{
    broker::{BrokerOptions, Mosquitto},
    db, pg,
    tidegate::Tidegate,
};

/// (ts, device, field, value, text) as stored.
type ReadingRow = (String, String, String, Option<f64>, Option<String>);

fn get(url: &str) -> Value {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::get(url).unwrap().json().unwrap()
}

#[test]
fn the_sensor_example_becomes_readings_and_rollups_in_both_stores() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("r.db");
    let pg_url = pg::fresh_database(&pg::shared());
    let b = broker.url();
    let targets = [sqlite.to_str().unwrap().to_string(), pg_url.clone()];
    let instances: Vec<Tidegate> = targets
        .iter()
        .enumerate()
        .map(|(i, dbu)| {
            let id = format!("readings-{i}");
            let t = Tidegate::run_subscribed(
                &b,
                dbu,
                "sensors/#",
                &id,
                &["--device-from", "sensors/{device}/#"],
                dir.path(),
            );
            t
        })
        .collect();
    broker.publish_lines(
        "sensors/s3/telemetry",
        1,
        &[
            r#"{"device":"s3","temp":21.4,"hum":55,"ts":"2026-11-25T10:00:00Z"}"#.into(),
            r#"{"temp":"22.6","hum":"57","status":"ok","ts":"2026-11-25T12:00:30+02:00"}"#.into(),
            "not json at all".into(),
        ],
    );
    db::wait_count(
        &sqlite,
        "SELECT count(*) FROM messages",
        3,
        Duration::from_secs(15),
    );
    let plain_pg = pg_url.split('?').next().unwrap().to_string();
    db::pg_wait_count(
        &plain_pg,
        "SELECT count(*) FROM messages",
        3,
        Duration::from_secs(15),
    );

    // SQLite rows, as Metabase sees them.
    let c = db::open(&sqlite);
    let rows: Vec<ReadingRow> = c
        .prepare("SELECT ts, device, field, value, text FROM readings ORDER BY ts, field")
        .unwrap()
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            // With the device taken from the topic, a `device` field in the payload is plain data.
            (
                "2026-11-25 10:00:00.000".into(),
                "s3".into(),
                "device".into(),
                None,
                Some("s3".into())
            ),
            (
                "2026-11-25 10:00:00.000".into(),
                "s3".into(),
                "hum".into(),
                Some(55.0),
                None
            ),
            (
                "2026-11-25 10:00:00.000".into(),
                "s3".into(),
                "temp".into(),
                Some(21.4),
                None
            ),
            (
                "2026-11-25 10:00:30.000".into(),
                "s3".into(),
                "hum".into(),
                Some(57.0),
                None
            ),
            (
                "2026-11-25 10:00:30.000".into(),
                "s3".into(),
                "status".into(),
                None,
                Some("ok".into())
            ),
            (
                "2026-11-25 10:00:30.000".into(),
                "s3".into(),
                "temp".into(),
                Some(22.6),
                None
            ),
        ]
    );
    let hour: (i64, f64, f64, f64, f64) = c
        .query_row(
            "SELECT count, min, max, avg, last FROM readings_1h WHERE field = 'temp'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(hour.0, 2);
    assert!((hour.3 - 22.0).abs() < 1e-9 && hour.4 == 22.6, "{hour:?}");
    let types: Vec<String> = c
        .prepare("SELECT type FROM pragma_table_info('readings') WHERE name IN ('ts', 'value') ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(types, ["DATETIME", "REAL"]);

    // PostgreSQL has the same readings.
    let pg_rows = pg::psql(&pg::shared(), plain_pg.rsplit('/').next().unwrap(), "SELECT string_agg(field || '=' || coalesce(value::text, text), ',' ORDER BY ts, field) FROM readings");
    assert_eq!(pg_rows, "device=s3,hum=55,temp=21.4,hum=57,status=ok,temp=22.6");

    // The API answers from the rollups for a day-long range, and raw for a short one.
    for t in &instances {
        let api = t.api();
        let v = get(&format!("{api}/api/v1/readings?topic=sensors/s3/telemetry&field=temp&since=2026-11-25T00:00:00Z&until=2026-11-26T00:00:00Z"));
        assert_eq!(v["bucket"], "1m", "{v}");
        // Both readings fall in the 10:00 minute.
        assert_eq!(v["points"].as_array().unwrap().len(), 1, "{v}");
        assert_eq!(v["points"][0]["count"], 2, "{v}");
        let v = get(&format!("{api}/api/v1/readings?device=s3&field=temp&since=2026-11-25T00:00:00Z&until=2026-11-26T00:00:00Z&bucket=1d"));
        assert_eq!(v["points"][0]["count"], 2, "{v}");
        assert!((v["points"][0]["avg"].as_f64().unwrap() - 22.0).abs() < 1e-9);
        let v = get(&format!(
            "{api}/api/v1/readings?field=temp&since=2026-11-25T09:30:00Z&until=2026-11-25T10:30:00Z"
        ));
        assert_eq!(v["bucket"], "raw");
        assert_eq!(v["points"][1]["last"], 22.6);
        // The current value of each of s3's series: the second message's, except `device`,
        // which only the first one had.
        let v = get(&format!("{api}/api/v1/readings/latest?device=s3"));
        let current: Vec<String> = v["readings"]
            .as_array()
            .unwrap_or_else(|| panic!("{v}"))
            .iter()
            .map(|r| {
                let value = if r["value"].is_null() {
                    r["text"].to_string()
                } else {
                    r["value"].to_string()
                };
                format!(
                    "{} {} {} {}",
                    r["topic"].as_str().unwrap(),
                    r["field"].as_str().unwrap(),
                    value,
                    r["ts"]
                )
            })
            .collect();
        assert_eq!(
            current,
            [
                r#"sensors/s3/telemetry device "s3" "2026-11-25T10:00:00Z""#,
                r#"sensors/s3/telemetry hum 57.0 "2026-11-25T10:00:30Z""#,
                r#"sensors/s3/telemetry status "ok" "2026-11-25T10:00:30Z""#,
                r#"sensors/s3/telemetry temp 22.6 "2026-11-25T10:00:30Z""#,
            ],
            "{v}"
        );
        let v = get(&format!("{api}/api/v1/readings/latest?field=temp&limit=5"));
        assert_eq!(v["readings"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(v["readings"][0]["device"], "s3", "{v}");
        let v = get(&format!("{api}/api/v1/readings/latest?device=s4"));
        assert_eq!(v["readings"], serde_json::json!([]), "{v}");
    }
}

#[test]
fn with_readings_off_a_mapping_still_fills_its_wide_table() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let conf = support::telemetry_mapping(dir.path());
    let sqlite = dir.path().join("off.db");
    let _t = Tidegate::run_subscribed(
        &broker.url(),
        sqlite.to_str().unwrap(),
        "#",
        "readings-off-mapped",
        &["--readings", "off", "--config", conf.to_str().unwrap()],
        dir.path(),
    );
    broker.publish_lines(
        "sensors/s1/telemetry",
        1,
        &[r#"{"temp":21.5}"#.into(), r#"{"temp":"22"}"#.into()],
    );
    broker.publish_lines("other/topic", 1, &[r#"{"temp":99}"#.into()]);
    db::wait_count(
        &sqlite,
        "SELECT count(*) FROM messages",
        3,
        Duration::from_secs(15),
    );
    let c = db::open(&sqlite);
    let mapped: Vec<f64> = c
        .prepare("SELECT temperature_c FROM telemetry ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(mapped, [21.5, 22.0], "the mapping's rows, and only its topic's");
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    assert_eq!(count("SELECT count(*) FROM readings"), 0, "readings are off");
    assert_eq!(
        count("SELECT count(*) FROM readings_1m"),
        0,
        "no rollups without readings"
    );
    assert_eq!(count("SELECT count(*) FROM reading_notes"), 0);
}

/// The spool keeps raw messages: what it forwards to PostgreSQL must still become readings,
/// rollups, current values and mapped rows, exactly as without it.
#[test]
fn messages_through_the_spool_still_become_readings_and_mapped_rows() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let conf = support::telemetry_mapping(dir.path());
    let pg_url = pg::fresh_database(&pg::shared());
    let spool = dir.path().join("spool");
    let mut t = Tidegate::run_subscribed(
        &broker.url(),
        &pg_url,
        "sensors/#",
        "spooled-readings",
        &[
            "--spool",
            spool.to_str().unwrap(),
            "--config",
            conf.to_str().unwrap(),
        ],
        dir.path(),
    );
    let plain = pg_url.split('?').next().unwrap().to_string();
    // Two batches: the second finds the mapping table there.
    for (n, line) in [
        r#"{"device":"s1","temp":21.5,"ts":"2026-11-25T10:00:00Z"}"#,
        r#"{"device":"s1","temp":22.5,"ts":"2026-11-25T10:00:30Z"}"#,
    ]
    .iter()
    .enumerate()
    {
        broker.publish_lines("sensors/s1/telemetry", 1, &[line.to_string()]);
        db::pg_wait_count(
            &plain,
            "SELECT count(*) FROM messages",
            n as i64 + 1,
            Duration::from_secs(15),
        );
    }
    let q = |sql: &str| {
        let out = std::process::Command::new("psql")
            .args([&plain, "-tAc", sql])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        q("SELECT string_agg(device || ':' || field || '=' || value, ',' ORDER BY ts) FROM readings"),
        "s1:temp=21.5,s1:temp=22.5"
    );
    assert_eq!(
        q("SELECT count || ' ' || avg FROM readings_1m WHERE field = 'temp'"),
        "2 22"
    );
    assert_eq!(
        q("SELECT value || ' ' || extract(epoch FROM ts)::bigint FROM readings_latest"),
        "22.5 1795600830"
    );
    assert_eq!(
        q("SELECT string_agg(CAST(temperature_c AS text), ',' ORDER BY id) FROM telemetry"),
        "21.5,22.5"
    );
    assert_eq!(q("SELECT count(*) FROM reading_notes"), "0");
    // The pipeline statistics still measure lag from the payloads' event time (days ago), not
    // from receipt, though the spool keeps raw messages: flushed when tidegate stops.
    assert!(t.term().success());
    let lag: f64 = q("SELECT max(lag_ms_max) FROM tidegate_stats WHERE topic = '*'")
        .parse()
        .unwrap();
    assert!(lag > 86_400_000.0, "lag {lag} ms: measured from receipt");
    // The server's notices (an `IF NOT EXISTS` on a table that exists) are not logged per batch.
    let log = t.log_text();
    assert!(!log.contains("NOTICE"), "{log}");
}

#[test]
fn a_payload_time_without_an_offset_is_local_time_in_the_configured_zone_in_both_stores() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("zone.toml");
    std::fs::write(
        &conf,
        "time_zone = \"America/Sao_Paulo\"\n[[mapping]]\nfilter = \"casa/+/sala\"\ntable = \"sala\"\n[mapping.columns]\ntemp_c = \"$.temp\"\nmeasured_at = { path = \"$.at\", type = \"timestamp\" }\n",
    )
    .unwrap();
    let sqlite = dir.path().join("zone.db");
    let pg_url = pg::fresh_database(&pg::shared());
    let plain_pg = pg_url.split('?').next().unwrap().to_string();
    let _instances: Vec<Tidegate> = [sqlite.to_str().unwrap(), pg_url.as_str()]
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let id = format!("zone-{i}");
            Tidegate::run_subscribed(
                &broker.url(),
                target,
                "casa/#",
                &id,
                &["--config", conf.to_str().unwrap()],
                dir.path(),
            )
        })
        .collect();
    // A device on Brasília time (UTC-3) writing its clock without an offset, one that says its
    // offset, and one that writes it as C's `strftime("%z")` does and counts unix microseconds.
    broker.publish_lines(
        "casa/esp32/sala",
        1,
        &[
            r#"{"ts":"2026-12-06 10:00:00","temp":21.5,"at":"2026-12-06 09:59:00"}"#.into(),
            r#"{"ts":"2026-12-06T10:00:00Z","temp":22.5,"at":1796551200}"#.into(),
            r#"{"ts":"2026-12-06T09:00:00-0300","temp":23.5,"at":1796551200000000}"#.into(),
        ],
    );
    db::wait_count(&sqlite, "SELECT count(*) FROM sala", 3, Duration::from_secs(15));
    db::pg_wait_count(&plain_pg, "SELECT count(*) FROM sala", 3, Duration::from_secs(15));

    let c = db::open(&sqlite);
    let sqlite_rows: Vec<String> = c
        .prepare(
            "SELECT r.ts || ' ' || r.ts_source || ' ' || s.measured_at FROM readings r JOIN sala s USING (message_id)
             WHERE r.field = 'temp' ORDER BY r.value",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        sqlite_rows,
        [
            "2026-12-06 13:00:00.000 payload 2026-12-06 12:59:00.000",
            "2026-12-06 10:00:00.000 payload 2026-12-06 10:00:00.000",
            "2026-12-06 12:00:00.000 payload 2026-12-06 10:00:00.000",
        ]
    );
    let pg_rows = pg::psql(
        &pg::shared(),
        plain_pg.rsplit('/').next().unwrap(),
        "SELECT string_agg(to_char(r.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || ' ' || to_char(s.measured_at AT TIME ZONE 'UTC', 'HH24:MI'), ',' ORDER BY r.value)
         FROM readings r JOIN sala s USING (message_id) WHERE r.field = 'temp'",
    );
    assert_eq!(
        pg_rows,
        "2026-12-06 13:00:00 12:59,2026-12-06 10:00:00 10:00,2026-12-06 12:00:00 10:00"
    );
}

#[test]
fn a_readings_root_takes_readings_from_the_decoded_part_of_an_uplink() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("root.db");
    let _t = Tidegate::run_subscribed(
        &broker.url(),
        sqlite.to_str().unwrap(),
        "v3/#",
        "root-0",
        &[
            "--readings-root",
            "uplink_message.decoded_payload",
            "--device-from",
            "v3/+/devices/{device}/up",
            "--time-field",
            "received_at",
        ],
        dir.path(),
    );
    broker.publish_lines(
        "v3/app@ttn/devices/node-1/up",
        1,
        &[r#"{"received_at":"2026-12-06T10:00:00Z","uplink_message":{"f_cnt":7,"rx_metadata":[{"rssi":-90}],"decoded_payload":{"temperature":21.5,"humidity":"48"}}}"#.into()],
    );
    // Another source without the root: readings as usual.
    broker.publish_lines("v3/plain", 1, &[r#"{"temperature":19}"#.into()]);
    db::wait_count(
        &sqlite,
        "SELECT count(*) FROM messages",
        2,
        Duration::from_secs(15),
    );
    let c = db::open(&sqlite);
    let rows: Vec<(String, Option<String>, String, f64)> = c
        .prepare("SELECT topic, device, field, value FROM readings ORDER BY topic, field")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            (
                "v3/app@ttn/devices/node-1/up".into(),
                Some("node-1".into()),
                "humidity".into(),
                48.0
            ),
            (
                "v3/app@ttn/devices/node-1/up".into(),
                Some("node-1".into()),
                "temperature".into(),
                21.5
            ),
            ("v3/plain".into(), None, "temperature".into(), 19.0),
        ]
    );
    let hourly: (String, i64, f64) = c
        .query_row(
            "SELECT bucket, count, avg FROM readings_1h WHERE device = 'node-1' AND field = 'temperature'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(hourly, ("2026-12-06 10:00:00.000".into(), 1, 21.5));
}

/// Messages stored while readings were off and before a mapping was added get their readings
/// and mapping rows from `tidegate backfill`, run beside a tidegate that keeps storing new
/// messages into the same database: in the end every message has exactly one reading and one
/// mapping row, whichever of the two wrote them. A second backfill adds nothing.
fn backfill_beside_a_running_tidegate(
    name: &str,
    db_url: &str,
    count: &dyn Fn(&str) -> i64,
    own_value: &str,
) {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let topic = "sensors/s1/telemetry";
    let lines = |from: usize, to: usize| -> Vec<String> {
        (from..to).map(|n| format!(r#"{{"temp":{n}}}"#)).collect()
    };
    let wait = |sql: &str, n: i64| {
        support::wait_for(Duration::from_secs(60), || (count(sql) == n).then_some(()))
            .unwrap_or_else(|| panic!("{name}: `{sql}` stayed at {} (not {n})", count(sql)))
    };
    let (before, during) = (20_000, 5_000);
    let client_id = format!("backfill-later-{name}");
    let conf = dir.path().join("tidegate.toml");
    std::fs::write(&conf, "readings = \"off\"\n").unwrap();
    let conf = conf.to_str().unwrap();
    let running = Tidegate::run_subscribed(
        &broker.url(),
        db_url,
        "sensors/#",
        &client_id,
        &["--config", conf],
        dir.path(),
    );
    broker.publish_lines(topic, 1, &lines(0, before));
    wait("SELECT count(*) FROM messages", before as i64);
    assert_eq!(count("SELECT count(*) FROM readings"), 0, "{name}");

    // Readings on (the default) and the mapping added by a reload; new messages get both as
    // they come, and the reload says what derives them for the messages stored before.
    support::telemetry_mapping(dir.path());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let report: Value = reqwest::blocking::Client::new()
        .post(format!("{}/api/v1/reload", running.api()))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let suggested = report["suggested"].to_string();
    assert!(
        suggested.contains("no readings and no rows in mapping table telemetry")
            && suggested.contains(&format!("tidegate backfill --config {conf}")),
        "{name}: {report}"
    );
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        let lines: Vec<String> = (before..before + during)
            .map(|n| format!(r#"{{"temp":{n}}}"#))
            .collect();
        for chunk in lines.chunks(500) {
            Mosquitto::publish_lines_on(port, "sensors/s1/telemetry", chunk);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let backfill =
        || support::tidegate::run_to_end(&["backfill", "--db", db_url, "--config", conf], &[], dir.path());
    let (status, out) = backfill();
    publisher.join().unwrap();
    assert!(status.success(), "{name}: {out}");
    // What the running tidegate stored after the backfill read its snapshot is its own.
    assert!(
        out.contains("readings: added 20000 to 20000 messages"),
        "{name}: {out}"
    );
    assert!(
        out.contains("mapping table telemetry: added 20000 rows"),
        "{name}: {out}"
    );
    let total = (before + during) as i64;
    wait("SELECT count(*) FROM messages", total);
    wait("SELECT count(*) FROM telemetry", total);
    assert_eq!(count("SELECT count(*) FROM readings"), total, "{name}: {out}");
    assert_eq!(
        count("SELECT count(DISTINCT message_id) FROM readings"),
        total,
        "{name}"
    );
    assert_eq!(
        count("SELECT count(DISTINCT message_id) FROM telemetry"),
        total,
        "{name}"
    );
    assert_eq!(
        count(own_value),
        total,
        "{name}: each row holds its own message's value"
    );
    assert_eq!(
        count("SELECT sum(count) FROM readings_1m WHERE field = 'temp'"),
        total,
        "{name}: the rollups count every reading once"
    );
    let (status, again) = backfill();
    assert!(status.success(), "{name}: {again}");
    assert!(
        again.contains("readings: added 0 to 0 messages"),
        "{name}: {again}"
    );
    assert!(
        again.contains("mapping table telemetry: added 0 rows"),
        "{name}: {again}"
    );
    assert_eq!(count("SELECT count(*) FROM readings"), total, "{name}");
}

#[test]
fn backfill_beside_a_running_tidegate_gives_every_message_its_readings_and_rows_once_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("later.db");
    backfill_beside_a_running_tidegate(
        "sqlite",
        sqlite.to_str().unwrap(),
        &|sql| db::count(&sqlite, sql),
        "SELECT count(*) FROM messages m JOIN telemetry t ON t.message_id = m.id \
         WHERE CAST(json_extract(m.payload, '$.temp') AS REAL) = t.temperature_c",
    );
}

#[test]
fn backfill_beside_a_running_tidegate_gives_every_message_its_readings_and_rows_once_in_postgres() {
    let server = pg::shared();
    let url = pg::fresh_database(&server);
    let name = url
        .split('?')
        .next()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    backfill_beside_a_running_tidegate(
        "postgres",
        &url,
        &|sql| pg::psql(&server, &name, sql).trim().parse().unwrap_or(-1),
        "SELECT count(*) FROM messages m JOIN telemetry t ON t.message_id = m.id \
         WHERE (m.payload::jsonb->>'temp')::float8 = t.temperature_c",
    );
}
