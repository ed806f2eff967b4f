//! The command line as a user meets it: bad settings fail fast with one line naming the setting
//! and exit code 2, before anything connects; the seed script's .env works unchanged.

mod support;

use std::time::Duration;

use support::{
    broker::{BrokerOptions, Mosquitto},
    certs::Certs,
    db,
    tidegate::{run_to_end, Tidegate},
};

/// Runs tidegate with `args` in `dir` and checks it exits 2 with a short error naming
/// `setting`, before creating a database. Returns what it printed.
fn refused_before_start(args: &[&str], setting: &str, dir: &std::path::Path) -> String {
    let (status, out) = run_to_end(args, &[], dir);
    assert_eq!(status.code(), Some(2), "{args:?}: {out}");
    assert!(
        out.contains(setting),
        "{args:?}: `{out}` does not name `{setting}`"
    );
    assert!(out.trim().lines().count() <= 3, "{args:?}: too chatty: {out}");
    assert!(
        !dir.join("tidegate.db").exists(),
        "{args:?} created a database before failing"
    );
    out
}

#[test]
fn bad_settings_exit_2_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--broker", "http://x"], "broker"),
        (&["run", "--broker", "mqtt://h:0"], "broker"),
        (&["run", "--broker", "mqtt://h", "--topic", "a/#/b"], "topic"),
        (&["run", "--broker", "mqtt://h", "--topic", "$share/g"], "topic"),
        (&["run", "--broker", "mqtt://h:1:2"], "broker"),
        (&["run", "--broker", "mqtt://h", "--qos", "2"], "qos"),
        (
            &["run", "--broker", "mqtt://h", "--mqtt-version", "4.0"],
            "mqtt-version",
        ),
        (
            &["run", "--broker", "mqtts://h", "--ca-file", "/no/such/ca.pem"],
            "ca-file",
        ),
        (&["run", "--broker", "mqtt://h", "--db", "mysql://x/y"], "db"),
        (
            &["run", "--broker", "mqtt://h", "--session-expiry", "soon"],
            "session-expiry",
        ),
        (
            &["run", "--broker", "mqtt://h", "--max-payload", "lots"],
            "max-payload",
        ),
        (
            &["run", "--broker", "mqtt://h", "--config", "/no/such.toml"],
            "config",
        ),
        (
            &[
                "run",
                "--broker",
                "mqtt://h",
                "--readings-root",
                "uplink..decoded",
            ],
            "readings-root",
        ),
        (&["run"], "broker"),
        // A device named by mistake is refused, not read until the memory runs out.
        (&["run", "--config", "/dev/zero"], "config"),
        (
            &[
                "run",
                "--broker",
                "mqtt://h",
                "--username",
                "u",
                "--password-file",
                "/dev/zero",
            ],
            "password-file",
        ),
    ];
    for (args, setting) in cases {
        refused_before_start(args, setting, dir.path());
    }
}

/// The API's HTTPS settings are read and checked before anything starts: a certificate without
/// its key, a file that is not PEM, a key that belongs to another certificate, a CA file for a
/// plain-HTTP API. Each exits 2 naming the setting, and no error shows a key's contents.
#[test]
fn api_tls_settings_are_checked_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let c = Certs::write(dir.path(), "tidegate test API CA");
    let p = |path: &std::path::Path| path.to_str().unwrap().to_string();
    let (cert, key, other_key, ca) = (p(&c.server_pem), p(&c.server_key), p(&c.client_key), p(&c.ca_pem));
    let db = p(&dir.path().join("tidegate.db"));
    let serve = |tls: &[&str]| {
        let mut a = vec!["serve".to_string(), "--db".into(), db.clone()];
        a.extend(tls.iter().map(|s| s.to_string()));
        a
    };
    let subscribe = |api: &str, ca: &str| {
        [
            "subscribe",
            "--broker",
            "mqtt://h",
            "--api",
            api,
            "--api-ca-file",
            ca,
        ]
        .map(String::from)
        .to_vec()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (serve(&["--api-tls-cert", &cert]), "api-tls-key"),
        (serve(&["--api-tls-key", &key]), "api-tls-cert"),
        (
            serve(&["--api-tls-cert", "/no/such.pem", "--api-tls-key", &key]),
            "api-tls-cert",
        ),
        (
            serve(&["--api-tls-cert", "/dev/zero", "--api-tls-key", &key]),
            "api-tls-cert",
        ),
        (
            serve(&["--api-tls-cert", &key, "--api-tls-key", &key]),
            "api-tls-cert",
        ),
        (
            serve(&["--api-tls-cert", &cert, "--api-tls-key", &cert]),
            "api-tls-key",
        ),
        (
            serve(&["--api-tls-cert", &cert, "--api-tls-key", &other_key]),
            "api-tls-key",
        ),
        (subscribe("http://127.0.0.1:8080", &ca), "api-ca-file"),
        (subscribe("https://127.0.0.1:8080", &key), "api-ca-file"),
        (
            [
                "run",
                "--broker",
                "mqtt://h",
                "--db",
                &db,
                "--listen",
                "off",
                "--api-tls-cert",
                &cert,
                "--api-tls-key",
                &key,
            ]
            .map(String::from)
            .to_vec(),
            "api-tls-cert",
        ),
    ];
    let secret_lines: Vec<String> = [&c.server_key, &c.client_key]
        .iter()
        .flat_map(|k| {
            std::fs::read_to_string(k)
                .unwrap()
                .lines()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (args, setting) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = refused_before_start(&args, setting, dir.path());
        assert!(
            secret_lines.iter().all(|l| !out.contains(l.as_str())),
            "{args:?}: a key's contents in the error: {out}"
        );
    }
}

/// The load tool's numbers are bounded before anything is allocated or connected: a run of 10^11
/// messages, or a rate times a duration past the bound, is a setting to fix, not a crash.
#[test]
fn bench_settings_out_of_range_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--null", "--messages", "100000000000"], "--messages"),
        (&["--null", "--messages", "0"], "--messages"),
        (&["--null", "--rate", "18446744073709551615"], "--rate"),
        (&["--null", "--rate", "10000000", "--duration", "1h"], "duration"),
        (&["--null", "--size", "100000000000"], "--size"),
        (&["--null", "--size", "10"], "--size"),
        (&["--null", "--qos", "2"], "--qos"),
        (&["--null", "--connections", "0"], "--connections"),
        (&["--null", "--broker", "http://x"], "broker"),
        (
            &["--null", "--broker", "mqtt://h", "--ca-file", "/no/such/ca.pem"],
            "ca-file",
        ),
        (&["--messages", "10"], "api"),
    ];
    for (args, setting) in cases {
        let args = [&["bench"], *args].concat();
        let (status, out) = run_to_end(&args, &[], dir.path());
        assert_eq!(status.code(), Some(2), "{args:?}: {out}");
        assert!(
            out.contains(setting),
            "{args:?}: `{out}` does not name `{setting}`"
        );
        assert!(!out.contains("panicked"), "{args:?}: {out}");
    }
}

#[test]
fn a_config_file_with_a_typo_is_refused_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tidegate.toml");
    std::fs::write(&file, "broker = \"mqtt://h\"\ntopicz = [\"a\"]\n").unwrap();
    let (status, out) = run_to_end(&["run", "--config", file.to_str().unwrap()], &[], dir.path());
    assert_eq!(status.code(), Some(2));
    assert!(out.contains("topicz"), "{out}");
}

#[test]
fn the_seed_scripts_env_file_works_and_the_password_stays_secret() {
    let broker = Mosquitto::start(BrokerOptions {
        password: Some(("aluno".into(), "segredo da turma".into())),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    // The course's .env names a bare host (TLS on 8883); tidegate's own variable overrides the
    // address for this plain-TCP test broker while the user and password come from the seed's names.
    // Written as python-dotenv, which the script uses, accepts it: spaces around `=`, and a
    // password with spaces left unquoted, which dotenvy alone refuses.
    std::fs::write(
        dir.path().join(".env"),
        format!(
            "# .env do curso\nBROKER_ADDR = ignored.example\nHIVE_USER=aluno\nHIVE_PSWD=segredo da turma\nTIDEGATE_BROKER=mqtt://127.0.0.1:{}\n",
            broker.port
        ),
    )
    .unwrap();
    let log = dir.path().join("log.txt");
    let mut child = std::process::Command::new(support::tidegate::bin())
        .args([
            "run",
            "--topic",
            "my/test/topic",
            "--client-id",
            "seed-env",
            "--listen",
            "off",
        ])
        .current_dir(dir.path())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let dbp = dir.path().join("tidegate.db");
    let up = support::wait_for(Duration::from_secs(15), || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("subscribed")
            .then_some(())
    });
    assert!(up.is_some(), "{}", std::fs::read_to_string(&log).unwrap());
    broker.publish_lines_with(
        "my/test/topic",
        1,
        &["42".into()],
        &["-u", "aluno", "-P", "segredo da turma"],
    );
    assert_eq!(
        db::wait_count(&dbp, "SELECT count(*) FROM dados", 1, Duration::from_secs(10)),
        1
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("segredo da turma"), "password in the log:\n{text}");
}

#[test]
fn a_bare_seed_host_means_tls_on_8883() {
    let dir = tempfile::tempdir().unwrap();
    // Port 8883 on loopback has no broker: tidegate must try TLS there and keep retrying.
    let t = Tidegate::start_with_env(
        &["run", "--db", dir.path().join("x.db").to_str().unwrap()],
        &[("BROKER_ADDR", "127.0.0.1")],
        dir.path(),
    );
    assert!(
        t.wait_log("mqtts://127.0.0.1:8883", Duration::from_secs(10)),
        "{}",
        t.log_text()
    );
}

#[test]
fn the_demo_runs_and_leaves_a_database_like_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("demo.db");
    let mut t = Tidegate::start(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--db",
            dbp.to_str().unwrap(),
            "--devices",
            "3",
            "--rate",
            "20",
        ],
        dir.path(),
    );
    assert!(
        t.wait_log("tidegate demo is running", Duration::from_secs(20)),
        "{}",
        t.log_text()
    );
    assert!(
        db::wait_count(&dbp, "SELECT count(*) FROM readings", 50, Duration::from_secs(20)) >= 50,
        "{}",
        t.log_text()
    );
    let status = t.term();
    assert!(status.success(), "{}", t.log_text());
    let messages = db::count(&dbp, "SELECT count(*) FROM messages");
    assert!(messages > 10);
    assert_eq!(db::count(&dbp, "SELECT count(*) FROM dados"), messages);
    assert!(db::count(&dbp, "SELECT count(*) FROM readings_1m WHERE field = 'temp'") > 0);
    assert_eq!(
        db::count(
            &dbp,
            "SELECT count(DISTINCT device) FROM readings WHERE device LIKE 'sensor-%'"
        ),
        3
    );
    let ok: String = db::open(&dbp)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn the_systemd_unit_verifies_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tidegate.service")).unwrap();
    let env = dir.path().join("tidegate.env");
    std::fs::write(&env, "TIDEGATE_BROKER=mqtt://127.0.0.1:1883\n").unwrap();
    let unit = unit
        .replace("/usr/local/bin/tidegate", support::tidegate::bin())
        .replace("/etc/tidegate/tidegate.env", env.to_str().unwrap());
    let path = dir.path().join("tidegate.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.trim().is_empty(), "systemd-analyze printed: {text}");
}

/// The log of a run that subscribes and stops cleanly; `first` goes before the subcommand. The
/// log goes to a file, as it would under systemd or with `2> tidegate.log`.
fn log_of_a_short_run(first: &[&str], client_id: &str) -> String {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("l.db");
    let url = broker.url();
    let mut args = first.to_vec();
    args.extend([
        "run",
        "--broker",
        &url,
        "--db",
        dbp.to_str().unwrap(),
        "--client-id",
        client_id,
    ]);
    let mut t = Tidegate::subscribed(&args, dir.path());
    assert!(t.term().success());
    t.log_text()
}

/// A setting the command has no use for is named in a warning at start, not silently dropped:
/// `serve` subscribes to nothing, `subscribe` stores nothing locally.
#[test]
fn settings_a_command_does_not_use_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("u.db");
    let cases: [(&[&str], &str, &[&str]); 2] = [
        (
            &[
                "serve",
                "--db",
                dbp.to_str().unwrap(),
                "--broker",
                "mqtt://127.0.0.1:1",
                "--topic",
                "a/#",
            ],
            "`tidegate serve`",
            &["--broker", "--topic"],
        ),
        (
            &[
                "subscribe",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--api",
                "http://127.0.0.1:1",
                "--db",
                "x.db",
                "--readings",
                "off",
            ],
            "`tidegate subscribe`",
            &["--db", "--readings"],
        ),
    ];
    for (args, command, named) in cases {
        let mut t = Tidegate::start(args, dir.path());
        assert!(
            t.wait_log("ignored", Duration::from_secs(15)),
            "{args:?}: no warning:\n{}",
            t.log_text()
        );
        let log = t.log_text();
        let line = log.lines().find(|l| l.contains("ignored")).unwrap();
        assert!(line.contains(command), "{line}");
        for flag in named {
            assert!(line.contains(flag), "{args:?}: `{flag}` not named: {line}");
        }
        t.term();
    }
    assert!(
        !dir.path().join("x.db").exists(),
        "subscribe created the database it was given"
    );
}

#[test]
fn json_logs_are_one_object_per_line_with_stable_fields() {
    let text = log_of_a_short_run(&["--log-format", "json"], "json-logs");
    let mut seen = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "message"] {
            assert!(v.get(field).is_some(), "no `{field}` in {line}");
        }
        seen.push(v["message"].as_str().unwrap().to_string());
    }
    for m in ["connecting to the broker", "subscribed", "stopped cleanly"] {
        assert!(seen.iter().any(|s| s.contains(m)), "{m} not logged: {seen:?}");
    }
}

#[test]
fn text_logs_in_a_file_are_plain_with_values_as_users_write_them() {
    let text = log_of_a_short_run(&[], "text-logs");
    assert!(!text.contains('\u{1b}'), "escape codes in a log file: {text:?}");
    assert!(text.contains("store=sqlite://"), "fields not as written: {text}");
    // Values as a user writes them, not as Rust prints its types.
    assert!(
        text.lines()
            .any(|l| l.contains("connecting to the broker") && l.ends_with(" version=5")),
        "{text}"
    );
    assert!(!text.contains("Some("), "{text}");
}

#[test]
fn version_config_completions_and_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let (s, out) = run_to_end(&["--version"], &[], dir.path());
    assert!(s.success() && out.contains("commit "), "{out}");

    let (s, toml) = run_to_end(&["config", "default"], &[], dir.path());
    assert!(s.success());
    let file = dir.path().join("t.toml");
    std::fs::write(&file, format!("{toml}\nbroker = \"mqtt://127.0.0.1:1883\"\n")).unwrap();
    let (s, out) = run_to_end(&["config", "check", file.to_str().unwrap()], &[], dir.path());
    assert!(s.success(), "{out}");
    assert!(out.contains("ok"));
    std::fs::write(&file, "broker = \"mqtt://h\"\nqos = 7\n").unwrap();
    let (s, out) = run_to_end(&["config", "check", file.to_str().unwrap()], &[], dir.path());
    assert_eq!(s.code(), Some(2));
    assert!(out.contains("qos"), "{out}");

    let (s, out) = run_to_end(&["completions", "bash"], &[], dir.path());
    assert!(
        s.success() && out.contains("tidegate") && out.contains("--broker"),
        "{out}"
    );
    let (s, out) = run_to_end(&["man"], &[], dir.path());
    assert!(
        s.success() && out.contains(".TH tidegate"),
        "{}",
        &out[..out.len().min(200)]
    );
}

#[test]
fn mapping_test_prints_rows_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    std::fs::write(
        &file,
        "[[mapping]]\nfilter = \"sensors/+/telemetry\"\ntable = \"telemetry\"\n[mapping.columns]\ntemperature_c = \"$.temp\"\n",
    )
    .unwrap();
    let args = [
        "mapping",
        "test",
        "--config",
        file.to_str().unwrap(),
        "--topic",
        "sensors/s3/telemetry",
        "--payload",
    ];
    let (s, out) = run_to_end(&[&args[..], &[r#"{"temp":"21.4"}"#]].concat(), &[], dir.path());
    assert!(s.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["mappings"],
        serde_json::json!([{"table": "telemetry", "row": {"temperature_c": 21.4}}]),
        "{out}"
    );
    assert_eq!(v["readings"][0]["field"], "temp");
    let (_, out) = run_to_end(&[&args[..], &[r#"{"temp":"hot"}"#]].concat(), &[], dir.path());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let refused = v["mappings"][0]["rejected"].as_str().unwrap_or_default();
    assert!(refused.contains("temperature_c"), "{out}");
    // Without a file: the default readings rules, and no mapping.
    let (s, out) = run_to_end(
        &[
            "mapping",
            "test",
            "--topic",
            "sensors/s3/telemetry",
            "--payload",
            r#"{"device":"s3","temp":"21.4"}"#,
        ],
        &[],
        dir.path(),
    );
    assert!(s.success(), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["device"], "s3", "{out}");
    assert_eq!(
        v["readings"],
        serde_json::json!([{"field": "temp", "value": 21.4}]),
        "{out}"
    );
    assert_eq!(v["mappings"], serde_json::json!([]), "{out}");
    // `--payload -` reads it from standard input.
    let mut child = std::process::Command::new(support::tidegate::bin())
        .args(["mapping", "test", "--topic", "a/b", "--payload", "-"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), br#"{"temp": 7}"#).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["readings"],
        serde_json::json!([{"field": "temp", "value": 7.0}])
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "it created files"
    );
}

#[test]
fn a_sighup_while_the_store_opens_is_applied_once_running_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    // A new file held by another writer: tidegate's first migration waits for it (up to 5 s).
    let holder = db::open(&path);
    holder.pragma_update(None, "journal_mode", "WAL").unwrap();
    holder
        .execute_batch("CREATE TABLE other (x); BEGIN IMMEDIATE; INSERT INTO other VALUES (1);")
        .unwrap();
    let mut t = Tidegate::start(&["serve", "--db", path.to_str().unwrap()], dir.path());
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        t.exited().is_none(),
        "tidegate stopped before the SIGHUP:\n{}",
        t.log_text()
    );
    assert!(
        !t.log_text().contains("API listening"),
        "the store opened despite the lock"
    );
    // `systemctl reload` or a log rotation, while the store is still opening.
    t.hangup();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        t.exited(),
        None,
        "SIGHUP stopped tidegate while it opened the store:\n{}",
        t.log_text()
    );
    holder.execute_batch("COMMIT").unwrap();
    let _ = t.api();
    assert!(
        t.wait_log("SIGHUP: reading the config file again", Duration::from_secs(10)),
        "the early SIGHUP was not applied once running:\n{}",
        t.log_text()
    );
    assert!(t.term().success());
}

/// `backfill` refuses what would do nothing, before touching a database: a database path that
/// does not exist (opening it would create an empty one) and a config that derives nothing.
#[test]
fn backfill_refuses_a_missing_database_and_a_config_that_derives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = refused_before_start(&["backfill", "--db", "tidegate.db"], "no database at", dir.path());
    assert!(out.contains("--db"), "{out}");
    std::fs::write(dir.path().join("other.db"), b"").unwrap();
    let out = refused_before_start(
        &["backfill", "--db", "other.db", "--readings", "off"],
        "nothing to derive",
        dir.path(),
    );
    assert!(out.contains("readings"), "{out}");
    assert_eq!(
        std::fs::metadata(dir.path().join("other.db")).unwrap().len(),
        0,
        "untouched"
    );
}

/// A `--db` that SQLite cannot open says why and what to do, not only SQLite's "unable to open
/// database file": a directory that does not exist, a directory given as the file.
#[test]
fn a_database_path_that_cannot_be_opened_says_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("t.db");
    let cases = [
        (
            missing.to_str().unwrap(),
            "no-such-dir does not exist; create it (mkdir -p ",
        ),
        (
            dir.path().to_str().unwrap(),
            "it is a directory; give --db a file name in it",
        ),
    ];
    for (db, says) in cases {
        let (status, out) = run_to_end(
            &[
                "run",
                "--broker",
                "mqtt://127.0.0.1:1",
                "--db",
                db,
                "--listen",
                "off",
            ],
            &[],
            dir.path(),
        );
        assert!(!status.success(), "{db}: {out}");
        assert!(out.contains(says), "{db}: {out}");
    }
    assert!(!dir.path().join("no-such-dir").exists(), "nothing created");
}
