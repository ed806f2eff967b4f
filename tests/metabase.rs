//! Telling Metabase of new tables: a real tidegate process, over real HTTP, against a listener
//! that answers Metabase's `POST /api/database/:id/sync_schema` as Metabase does and records
//! each call (Metabase itself is a JVM application this machine cannot download). The same
//! test runs against SQLite and PostgreSQL.

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::blocking::Client;
use support::{pg, tidegate::Tidegate};

const KEY: &str = "mb_test-key-5f1c2a9e";

/// One call Metabase received: method, path and the API key it carried.
#[derive(Debug, Clone, PartialEq)]
struct Call {
    method: String,
    path: String,
    key: Option<String>,
}

/// A listener answering every request like Metabase's sync endpoint: 200 `{"status":"ok"}` for
/// the right key, 403 for any other; or, `silent`, never answering.
struct FakeMetabase {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl FakeMetabase {
    fn start() -> FakeMetabase {
        Self::listen(false)
    }

    fn listen(silent: bool) -> FakeMetabase {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let record = calls.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or_default().to_string(),
                    parts.next().unwrap_or_default().to_string(),
                );
                let mut key = None;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        if name.trim().eq_ignore_ascii_case("x-api-key") {
                            key = Some(value.trim().to_string());
                        }
                    }
                }
                record.lock().unwrap().push(Call {
                    method,
                    path,
                    key: key.clone(),
                });
                if silent {
                    // Held open, unanswered, for as long as the test runs.
                    std::mem::forget(stream);
                    continue;
                }
                let (status, body) = if key.as_deref() == Some(KEY) {
                    ("200 OK", r#"{"status":"ok"}"#)
                } else {
                    ("403 Forbidden", "Unauthenticated")
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        FakeMetabase { url, calls }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn wait_calls(&self, n: usize) -> Vec<Call> {
        support::wait_for(Duration::from_secs(20), || {
            let calls = self.calls();
            (calls.len() >= n).then_some(calls)
        })
        .unwrap_or_else(|| panic!("Metabase got {} calls, expected {n}", self.calls().len()))
    }
}

fn post(api: &str, topic: &str, payload: &str) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r = Client::new()
        .post(format!("{api}/api/v1/messages"))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"topic": topic, "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap()})
                .to_string(),
        )
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

/// `serve` on `db`, told of `metabase` as database `database` with `key`, plus `extra` flags.
fn serve(
    db: &str,
    metabase: &FakeMetabase,
    database: &str,
    key: &str,
    extra: &[&str],
    dir: &std::path::Path,
) -> Tidegate {
    let mut args = vec![
        "serve",
        "--db",
        db,
        "--metabase-url",
        &metabase.url,
        "--metabase-database",
        database,
    ];
    args.extend_from_slice(extra);
    Tidegate::start_with_env(&args, &[("TIDEGATE_METABASE_API_KEY", key)], dir)
}

/// Metabase is asked to sync once at start, once after a mapping creates its table, and not
/// again while the schema stays as it is; every call carries the key, and the log never does.
fn new_tables_reach_metabase(db: &str, dir: &std::path::Path) {
    let metabase = FakeMetabase::start();
    let conf = support::telemetry_mapping(dir);
    let t = serve(
        db,
        &metabase,
        "7",
        KEY,
        &["--config", conf.to_str().unwrap()],
        dir,
    );
    let api = t.api();
    metabase.wait_calls(1);
    post(&api, "other/topic", r#"{"temp":1}"#);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        metabase.calls().len(),
        1,
        "readings into tables that exist change no schema"
    );
    post(&api, "sensors/s1/telemetry", r#"{"temp":21.5}"#);
    let calls = metabase.wait_calls(2);
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        metabase.calls().len(),
        2,
        "no call while the schema stays the same"
    );
    let expected = Call {
        method: "POST".into(),
        path: "/api/database/7/sync_schema".into(),
        key: Some(KEY.into()),
    };
    assert!(calls.iter().all(|c| *c == expected), "{calls:?}");
    let log = t.log_text();
    assert!(log.contains("asked Metabase to sync the schema"), "{log}");
    assert!(!log.contains(KEY), "the API key is in the log:\n{log}");
}

#[test]
fn a_new_mapping_table_in_sqlite_is_announced_to_metabase() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mb.db");
    new_tables_reach_metabase(db.to_str().unwrap(), dir.path());
}

#[test]
fn a_new_mapping_table_in_postgresql_is_announced_to_metabase() {
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database(&pg::shared());
    new_tables_reach_metabase(&url, dir.path());
}

#[test]
fn a_refused_key_is_named_in_the_log_without_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let metabase = FakeMetabase::start();
    let wrong = "mb_wrong-key-000000";
    let db = dir.path().join("refused.db");
    let t = serve(db.to_str().unwrap(), &metabase, "3", wrong, &[], dir.path());
    assert!(
        t.wait_log("Metabase refused the API key (HTTP 403", Duration::from_secs(20)),
        "{}",
        t.log_text()
    );
    assert_eq!(metabase.calls()[0].key.as_deref(), Some(wrong));
    assert!(!t.log_text().contains(wrong), "{}", t.log_text());
}

#[test]
fn a_metabase_that_never_answers_does_not_hold_up_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let metabase = FakeMetabase::listen(true);
    let db = dir.path().join("silent.db");
    let mut t = serve(db.to_str().unwrap(), &metabase, "4", KEY, &[], dir.path());
    t.api();
    metabase.wait_calls(1);
    // The call waits for an answer (for up to 30 s); stopping must not.
    assert!(t.term().success(), "{}", t.log_text());
    assert!(t.log_text().contains("stopped cleanly"), "{}", t.log_text());
}

/// A mapping table that `tidegate backfill` creates reaches Metabase at once, with no tidegate
/// running to notice it; a backfill that creates nothing asks for no sync.
#[test]
fn a_table_a_backfill_creates_is_announced_to_metabase() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("later.db");
    let db = db.to_str().unwrap();
    let mut t = Tidegate::start(&["serve", "--db", db], dir.path());
    post(&t.api(), "sensors/s1/telemetry", r#"{"temp":21.5}"#);
    assert!(t.term().success());
    let metabase = FakeMetabase::start();
    let conf = support::telemetry_mapping(dir.path());
    let backfill = || {
        support::tidegate::run_to_end(
            &[
                "backfill",
                "--db",
                db,
                "--config",
                conf.to_str().unwrap(),
                "--metabase-url",
                &metabase.url,
                "--metabase-database",
                "7",
            ],
            &[("TIDEGATE_METABASE_API_KEY", KEY)],
            dir.path(),
        )
    };
    let (status, out) = backfill();
    assert!(status.success(), "{out}");
    assert!(out.contains("mapping table telemetry: added 1 row"), "{out}");
    assert!(out.contains("asked Metabase"), "{out}");
    assert!(!out.contains(KEY), "{out}");
    let calls = metabase.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (calls[0].path.as_str(), calls[0].key.as_deref()),
        ("/api/database/7/sync_schema", Some(KEY))
    );
    let (status, again) = backfill();
    assert!(status.success() && !again.contains("Metabase"), "{again}");
    assert_eq!(metabase.calls().len(), 1, "nothing new, no sync");
}
