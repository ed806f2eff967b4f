//! End to end through a real Mosquitto into a real SQLite file: the delivery guarantee, TLS and
//! passwords, restarts and crashes of both sides, readers during ingest, bad input.

mod support;

use std::time::Duration;

use support::{
    broker::{BrokerOptions, Mosquitto},
    db,
    tidegate::Tidegate,
};

const MSGS: &str = "SELECT count(*) FROM messages";

struct Case {
    broker: Mosquitto,
    dir: tempfile::TempDir,
}

impl Case {
    fn new(opts: BrokerOptions) -> Case {
        Case {
            broker: Mosquitto::start(opts),
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn db(&self) -> std::path::PathBuf {
        self.dir.path().join("t.db")
    }
    fn start(&self, client_id: &str, extra: &[&str]) -> Tidegate {
        let url = self.broker.url();
        let db = self.db();
        let mut args = support::tidegate::run_args(&url, db.to_str().unwrap(), "t/#", client_id);
        args.extend_from_slice(extra);
        let t = Tidegate::start(&args, self.dir.path());
        assert!(
            t.wait_log("subscribed", Duration::from_secs(15))
                || t.wait_log("kept our session", Duration::from_secs(1)),
            "tidegate did not subscribe:\n{}",
            t.log_text()
        );
        t
    }

    /// Starts tidegate with its settings in a config file holding `file`, which the test may
    /// rewrite and reload (no `--topic` flag: a flag would win over the file). Returns the file.
    fn start_from_file(&self, client_id: &str, file: &str, extra: &[&str]) -> (Tidegate, std::path::PathBuf) {
        let conf = self.dir.path().join("tidegate.toml");
        std::fs::write(&conf, file).unwrap();
        let (url, db) = (self.broker.url(), self.db());
        let mut args = vec![
            "run",
            "--broker",
            &url,
            "--db",
            db.to_str().unwrap(),
            "--client-id",
            client_id,
            "--config",
            conf.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        (Tidegate::subscribed(&args, self.dir.path()), conf)
    }
}

#[test]
fn qos1_messages_become_rows_mqtt5_and_311() {
    for version in ["5", "3.1.1"] {
        let case = Case::new(BrokerOptions::default());
        let _t = case.start("n-rows", &["--mqtt-version", version]);
        case.broker.publish_lines("t/a", 1, &db::seq_lines(0, 2000));
        let n = db::wait_count(&case.db(), MSGS, 2000, Duration::from_secs(30));
        assert_eq!(n, 2000, "MQTT {version}");
        let (missing, dup) = db::exactly_once(&case.db(), "t/a", 2000);
        assert!(
            missing.is_empty() && dup.is_empty(),
            "MQTT {version}: missing {missing:?} dup {dup:?}"
        );
        // The seed's table shows every message, with its declared types intact.
        let c = db::open(&case.db());
        assert_eq!(db::count(&case.db(), "SELECT count(*) FROM dados"), 2000);
        let ts: String = c
            .query_row("SELECT \"timestamp\" FROM dados LIMIT 1", [], |r| r.get(0))
            .unwrap();
        assert!(
            ts.len() == 23 && &ts[10..11] == " " && !ts.contains('T'),
            "timestamp `{ts}` is not YYYY-MM-DD HH:MM:SS.SSS"
        );
        let types: Vec<String> = c
            .prepare("SELECT type FROM pragma_table_info('dados') ORDER BY cid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(types, ["INTEGER", "TEXT", "DATETIME"]);
    }
}

#[test]
fn mqtt5_content_type_and_user_properties_are_stored_with_the_message() {
    let case = Case::new(BrokerOptions::default());
    let _t = case.start("props", &["--mqtt-version", "5"]);
    case.broker.publish_bytes(
        "t/props",
        b"{\"t\":21.5}",
        &[
            "-V",
            "5",
            "-D",
            "publish",
            "content-type",
            "application/json",
            // Names may repeat in MQTT 5, and their order is kept.
            "-D",
            "publish",
            "user-property",
            "site",
            "north",
            "-D",
            "publish",
            "user-property",
            "site",
            "south",
        ],
    );
    case.broker.publish_bytes("t/plain", b"1", &["-V", "5"]);
    assert_eq!(db::wait_count(&case.db(), MSGS, 2, Duration::from_secs(15)), 2);
    let c = db::open(&case.db());
    let row = |topic: &str| -> (Option<String>, Option<String>, String) {
        c.query_row(
            "SELECT content_type, user_properties, payload FROM messages WHERE topic = ?1",
            [topic],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    assert_eq!(
        row("t/props"),
        (
            Some("application/json".into()),
            Some(r#"[["site","north"],["site","south"]]"#.into()),
            r#"{"t":21.5}"#.into()
        )
    );
    assert_eq!(row("t/plain"), (None, None, "1".into()));
}

#[test]
fn identical_payloads_published_separately_are_all_stored() {
    let case = Case::new(BrokerOptions::default());
    let _t = case.start("identical", &[]);
    let same: Vec<String> = (0..300).map(|_| "21.5".to_string()).collect();
    case.broker.publish_lines("t/same", 1, &same);
    assert_eq!(
        db::wait_count(&case.db(), MSGS, 300, Duration::from_secs(20)),
        300
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(db::count(&case.db(), MSGS), 300);
}

/// `--batch-delay` spaces commits (each writes every page it touches whole) without delaying a
/// message after a quiet spell, and without outwaiting a broker that stops sending once its
/// in-flight window waits for acknowledgements.
#[test]
fn a_batch_delay_spaces_commits_yet_never_delays_a_lone_message_or_a_full_window() {
    let case = Case::new(BrokerOptions::default());
    // MQTT 3.1.1 announces no window: tidegate takes the broker's as 20.
    let _t = case.start("linger", &["--batch-delay", "10s", "--mqtt-version", "3.1.1"]);
    let lines = db::seq_lines(0, 22);
    let committed = |n: i64, within: Duration| db::wait_count(&case.db(), MSGS, n, within);

    case.broker.publish_lines("t/linger", 1, &lines[..1]);
    assert_eq!(
        committed(1, Duration::from_secs(5)),
        1,
        "after a quiet spell a message goes at once"
    );

    case.broker.publish_lines("t/linger", 1, &lines[1..2]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        db::count(&case.db(), MSGS),
        1,
        "right after a commit the next one waits for the delay"
    );

    // With these 19 the batch owes 20 acknowledgements: it goes without waiting out the delay.
    let sent = std::time::Instant::now();
    case.broker.publish_lines("t/linger", 1, &lines[2..21]);
    assert_eq!(committed(21, Duration::from_secs(5)), 21);
    assert!(sent.elapsed() < Duration::from_secs(6), "{:?}", sent.elapsed());

    // And after that commit, a message waits for the delay again, then goes.
    case.broker.publish_lines("t/linger", 1, &lines[21..]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(db::count(&case.db(), MSGS), 21);
    assert_eq!(committed(22, Duration::from_secs(20)), 22);
    let (missing, dup) = db::exactly_once(&case.db(), "t/linger", 22);
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {missing:?} duplicated {dup:?}"
    );
}

#[test]
fn a_connected_idle_subscriber_allocates_little_memory() {
    // Allocated (anonymous) memory, not the mapped binary, whose size depends on the build. With
    // rumqttc's default of a slot per outgoing packet id for MQTT 5 this was ~18 MiB.
    for version in ["5", "3.1.1"] {
        let case = Case::new(BrokerOptions::default());
        let t = case.start("idle-mem", &["--mqtt-version", version]);
        std::thread::sleep(Duration::from_millis(500));
        let status = std::fs::read_to_string(format!("/proc/{}/status", t.pid())).unwrap();
        let anon_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        assert!(
            anon_kib < 10 * 1024,
            "MQTT {version}: {anon_kib} KiB allocated while idle"
        );
    }
}

#[test]
fn tls_with_password_works_and_an_unknown_ca_is_refused() {
    let case = Case::new(BrokerOptions {
        tls: true,
        password: Some(("sensor".into(), "pa55-w0rd-xyz".into())),
        ..Default::default()
    });
    let tls = case.broker.tls.as_ref().unwrap();
    let url = case.broker.url();
    let db = case.db();
    let base = [
        "run",
        "--broker",
        &url,
        "--db",
        db.to_str().unwrap(),
        "--topic",
        "t/#",
        "--username",
        "sensor",
    ];

    // Without the test CA the broker's certificate is not trusted: no connection, clear log.
    let mut refused = Tidegate::start_with_env(
        &[
            &base[..],
            &[
                "--client-id",
                "tls-a",
                "--ca-file",
                tls.other_ca_pem.to_str().unwrap(),
            ],
        ]
        .concat(),
        &[("TIDEGATE_PASSWORD", "pa55-w0rd-xyz")],
        case.dir.path(),
    );
    assert!(
        refused.wait_log("TLS failed", Duration::from_secs(15)),
        "{}",
        refused.log_text()
    );
    assert!(!refused.log_text().contains("subscribed"));
    refused.kill9();

    // A wrong password is refused by the broker, and the log does not show it.
    let mut wrong = Tidegate::start_with_env(
        &[
            &base[..],
            &["--client-id", "tls-b", "--ca-file", tls.ca_pem.to_str().unwrap()],
        ]
        .concat(),
        &[("TIDEGATE_PASSWORD", "not-the-password-123")],
        case.dir.path(),
    );
    assert!(
        wrong.wait_log("refused the connection", Duration::from_secs(15)),
        "{}",
        wrong.log_text()
    );
    assert!(!wrong.log_text().contains("not-the-password-123"));
    wrong.kill9();

    let ok = Tidegate::start_with_env(
        &[
            &base[..],
            &["--client-id", "tls-c", "--ca-file", tls.ca_pem.to_str().unwrap()],
        ]
        .concat(),
        &[("TIDEGATE_PASSWORD", "pa55-w0rd-xyz")],
        case.dir.path(),
    );
    assert!(
        ok.wait_log("subscribed", Duration::from_secs(15)),
        "{}",
        ok.log_text()
    );
    let pubargs = [
        "-u",
        "sensor",
        "-P",
        "pa55-w0rd-xyz",
        "--cafile",
        tls.ca_pem.to_str().unwrap(),
        "-h",
        "localhost",
    ];
    case.broker
        .publish_lines_with("t/tls", 1, &db::seq_lines(0, 100), &pubargs);
    assert_eq!(db::wait_count(&db, MSGS, 100, Duration::from_secs(20)), 100);
    assert!(
        !ok.log_text().contains("pa55-w0rd-xyz"),
        "password leaked into the log"
    );
}

#[test]
fn a_tls_broker_at_an_ipv6_address_is_reached_and_its_certificate_checked_for_it() {
    let case = Case::new(BrokerOptions {
        tls: true,
        ipv6: true,
        ..Default::default()
    });
    let tls = case.broker.tls.as_ref().unwrap();
    let url = format!("mqtts://[::1]:{}", case.broker.port);
    let db = case.db();
    let run = |client_id: &str, ca: &std::path::Path| {
        let mut args = support::tidegate::run_args(&url, db.to_str().unwrap(), "t/#", client_id);
        args.extend_from_slice(&["--ca-file", ca.to_str().unwrap()]);
        Tidegate::start(&args, case.dir.path())
    };
    // The certificate is checked for the address: another CA's is still refused.
    let mut refused = run("tls6-a", &tls.other_ca_pem);
    assert!(
        refused.wait_log("TLS failed", Duration::from_secs(15)),
        "{}",
        refused.log_text()
    );
    refused.kill9();
    let ok = run("tls6-b", &tls.ca_pem);
    assert!(
        ok.wait_log("subscribed", Duration::from_secs(15)),
        "{}",
        ok.log_text()
    );
    case.broker.publish_lines_with(
        "t/v6",
        1,
        &db::seq_lines(0, 100),
        &["--cafile", tls.ca_pem.to_str().unwrap(), "-h", "localhost"],
    );
    assert_eq!(db::wait_count(&db, MSGS, 100, Duration::from_secs(20)), 100);
}

#[test]
fn messages_published_while_stopped_arrive_after_restart() {
    let case = Case::new(BrokerOptions::default());
    let mut t = case.start("offline", &[]);
    case.broker.publish_lines("t/a", 1, &db::seq_lines(0, 100));
    assert_eq!(
        db::wait_count(&case.db(), MSGS, 100, Duration::from_secs(20)),
        100
    );
    assert!(t.term().success());
    case.broker.publish_lines("t/a", 1, &db::seq_lines(100, 600));
    let t2 = case.start("offline", &[]);
    assert!(t2.log_text().contains("kept our session"), "{}", t2.log_text());
    assert_eq!(
        db::wait_count(&case.db(), MSGS, 600, Duration::from_secs(30)),
        600
    );
    let (missing, dup) = db::exactly_once(&case.db(), "t/a", 600);
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {missing:?} dup {dup:?}"
    );
}

#[test]
fn kill9_mid_stream_loses_nothing_and_stores_each_message_once() {
    const TOTAL: usize = 20_000;
    let case = Case::new(BrokerOptions::default());
    let mut t = case.start("crashy", &["--mqtt-version", "5"]);
    let port = case.broker.port;
    let publisher = std::thread::spawn(move || {
        // Four chunks so the crashes land while messages are in flight.
        support::broker::Mosquitto::publish_lines_on(port, "t/k", &db::seq_lines(0, TOTAL));
    });
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(700));
        t.restart();
    }
    publisher.join().unwrap();
    let n = db::wait_count(&case.db(), MSGS, TOTAL as i64, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let (missing, dup) = db::exactly_once(&case.db(), "t/k", TOTAL);
    assert!(
        missing.is_empty(),
        "{} missing, e.g. {:?} (rows {n})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        dup.is_empty(),
        "{} duplicated, e.g. {:?}",
        dup.len(),
        &dup[..dup.len().min(10)]
    );
    let ok: String = db::open(&case.db())
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn sigterm_commits_in_flight_and_exits_zero() {
    let case = Case::new(BrokerOptions::default());
    let mut t = case.start("term", &[]);
    case.broker.publish_lines("t/s", 1, &db::seq_lines(0, 1000));
    let status = t.term();
    assert!(status.success(), "exit status {status:?}\n{}", t.log_text());
    assert!(t.log_text().contains("stopped cleanly"));
    // Whatever was not committed before the stop is still at the broker: nothing lost.
    let _t2 = case.start("term", &[]);
    assert_eq!(
        db::wait_count(&case.db(), MSGS, 1000, Duration::from_secs(20)),
        1000
    );
    let (missing, dup) = db::exactly_once(&case.db(), "t/s", 1000);
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {missing:?} dup {dup:?}"
    );
}

#[test]
fn retained_message_is_stored_once_across_restarts() {
    let case = Case::new(BrokerOptions::default());
    case.broker.publish_bytes("t/status", b"online", &["-r"]);
    let mut t = case.start("ret", &["--mqtt-version", "3.1.1"]);
    assert_eq!(db::wait_count(&case.db(), MSGS, 1, Duration::from_secs(10)), 1);
    assert!(t.term().success());
    // A new client id means a new session, so the broker sends the retained message again.
    for id in ["ret-2", "ret-3"] {
        let mut t = case.start(id, &[]);
        std::thread::sleep(Duration::from_millis(800));
        assert!(t.term().success());
    }
    assert_eq!(
        db::count(
            &case.db(),
            "SELECT count(*) FROM messages WHERE topic = 't/status'"
        ),
        1
    );
    // A changed retained value is a new message.
    case.broker.publish_bytes("t/status", b"offline", &["-r"]);
    let _t = case.start("ret-4", &[]);
    db::wait_count(&case.db(), MSGS, 2, Duration::from_secs(10));
    assert_eq!(db::payloads(&case.db(), "t/status"), ["online", "offline"]);
}

/// A broker keeps a session's subscriptions with it, so a filter dropped from `--topic` would go
/// on delivering (telegraf#9703 ignored the change altogether). tidegate records the filters it
/// subscribes to in the store and, on the next run with the same client id, unsubscribes those
/// it no longer asks for; a subscription it has no record of is stored from and named instead.
#[test]
fn a_changed_topic_takes_effect_on_a_kept_session_and_the_dropped_filter_is_ended() {
    for version in ["5", "3.1.1"] {
        let case = Case::new(BrokerOptions::default());
        let (url, db) = (case.broker.url(), case.db());
        let run = |topics: &'static str| {
            let mut args = support::tidegate::run_args(&url, db.to_str().unwrap(), topics, "moved");
            args.extend_from_slice(&["--mqtt-version", version]);
            let t = Tidegate::start(&args, case.dir.path());
            assert!(
                t.wait_log("subscribed", Duration::from_secs(15)),
                "MQTT {version}: {topics} not subscribed:\n{}",
                t.log_text()
            );
            t
        };
        let count = |topic: &str| db::payloads(&db, topic).len();
        case.broker.publish_bytes("keep/status", b"up", &["-r"]);
        let mut first = run("keep/#,old/#");
        db::wait_count(&db, MSGS, 1, Duration::from_secs(10));
        assert!(first.term().success());
        // Queued for the kept session while tidegate is stopped: delivered, never dropped.
        case.broker.publish_lines("old/a", 1, &db::seq_lines(0, 5));

        let mut second = run("keep/#,new/#");
        let log = second.log_text();
        assert!(log.contains("kept our session"), "MQTT {version}: {log}");
        assert!(
            log.contains("unsubscribing them") && log.contains("old/#") && !log.contains("\"keep/#\"]"),
            "MQTT {version}: {log}"
        );
        case.broker.publish_lines("old/a", 1, &db::seq_lines(5, 10));
        case.broker.publish_lines("new/a", 1, &db::seq_lines(0, 50));
        db::wait_count(
            &db,
            "SELECT count(*) FROM messages WHERE topic = 'new/a'",
            50,
            Duration::from_secs(20),
        );
        let (missing, dup) = db::exactly_once(&db, "new/a", 50);
        assert!(
            missing.is_empty() && dup.is_empty(),
            "MQTT {version}: new topic missing {missing:?} dup {dup:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            db::payloads(&db, "old/a"),
            db::seq_lines(0, 5),
            "MQTT {version}: what was queued on the dropped filter is stored, and nothing after its end:\n{}",
            second.log_text()
        );
        assert_eq!(
            db::payloads(&db, "keep/status"),
            ["up"],
            "MQTT {version}: a resubscribed filter's retained message, twice"
        );
        assert!(
            !second.log_text().contains("none of --topic matches"),
            "MQTT {version}"
        );
        assert!(second.term().success());

        // A subscription made outside tidegate on its session: no record names it, so its
        // messages are stored and the operator is told, once, how to end it.
        let mut sub = std::process::Command::new("mosquitto_sub");
        sub.args([
            "-h",
            "127.0.0.1",
            "-p",
            &case.broker.port.to_string(),
            "-i",
            "moved",
            "-c",
            "-q",
            "1",
            "-t",
            "stray/#",
            "-E",
        ]);
        if version == "5" {
            sub.args(["-V", "mqttv5", "-x", "3600"]);
        }
        assert!(sub.status().unwrap().success());
        let third = run("keep/#,new/#");
        case.broker.publish_lines("stray/a", 1, &db::seq_lines(0, 2));
        db::wait_count(
            &db,
            "SELECT count(*) FROM messages WHERE topic = 'stray/a'",
            2,
            Duration::from_secs(20),
        );
        assert_eq!(count("stray/a"), 2, "MQTT {version}");
        let log = third.log_text();
        assert_eq!(
            log.matches("none of --topic matches").count(),
            1,
            "MQTT {version}: said once:\n{log}"
        );
        assert!(
            log.contains("stray/a") && log.contains("-U 'OLD/FILTER'"),
            "{log}"
        );
        assert_eq!(count("old/a"), 5, "MQTT {version}");
    }
}

#[test]
fn a_reload_changes_topics_and_mappings_on_the_same_session_and_refuses_a_bad_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    for version in ["5", "3.1.1"] {
        let case = Case::new(BrokerOptions::default());
        let db = case.db();
        let (t, conf) =
            case.start_from_file("reloaded", "topics = [\"a/#\"]\n", &["--mqtt-version", version]);
        let write = |text: &str| std::fs::write(&conf, text).unwrap();
        let http = reqwest::blocking::Client::new();
        let reload = || {
            let r = http.post(format!("{}/api/v1/reload", t.api())).send().unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().unwrap())
        };
        // The SUBACK's log line ("subscribed topics=…").
        let subacks = || {
            t.log_text()
                .lines()
                .filter(|l| l.contains(" subscribed "))
                .count()
        };
        let count = |topic: &str| {
            db::count(
                &db,
                &format!("SELECT count(*) FROM messages WHERE topic = '{topic}'"),
            )
        };
        case.broker.publish_lines("a/1", 1, &db::seq_lines(0, 10));
        assert_eq!(
            db::wait_count(&db, MSGS, 10, Duration::from_secs(10)),
            10,
            "MQTT {version}"
        );

        // Other topics, a new mapping, and a setting only a restart applies.
        write(
            "topics = [\"b/#\"]\nbatch_size = 100\nclient_id = \"from-the-file\"\n[[mapping]]\nfilter = \"b/+\"\ntable = \"wide\"\n[mapping.columns]\ntemp = \"$.temp\"\n",
        );
        let (status, report) = reload();
        assert_eq!(status, 200, "MQTT {version}: {report}");
        let applied: Vec<&str> = report["applied"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            applied.contains(&"unsubscribed from a/#"),
            "MQTT {version}: {report}"
        );
        assert!(
            applied.contains(&"subscribed to b/# at QoS 1"),
            "MQTT {version}: {report}"
        );
        assert!(
            applied.iter().any(|a| a.contains("1 mapping(s)")),
            "MQTT {version}: {report}"
        );
        assert_eq!(
            report["restart_needed"],
            serde_json::json!(["batch-size/batch-delay"]),
            "MQTT {version}"
        );
        assert_eq!(
            report["overridden"],
            serde_json::json!(["client_id"]),
            "MQTT {version}: --client-id wins over the file"
        );
        assert!(
            support::wait_for(Duration::from_secs(10), || (subacks() == 2).then_some(())).is_some(),
            "MQTT {version}: no SUBACK for b/#:\n{}",
            t.log_text()
        );
        case.broker.publish_lines("a/2", 1, &db::seq_lines(0, 10));
        let temps: Vec<String> = (0..5).map(|i| format!("{{\"temp\": {}.5}}", 20 + i)).collect();
        case.broker.publish_lines("b/1", 1, &temps);
        assert_eq!(
            db::wait_count(&db, MSGS, 15, Duration::from_secs(10)),
            15,
            "MQTT {version}"
        );
        assert_eq!(count("a/2"), 0, "MQTT {version}: a/# was unsubscribed");
        assert_eq!(
            db::count(
                &db,
                "SELECT count(*) FROM wide WHERE temp >= 20.5 AND topic = 'b/1'"
            ),
            5,
            "MQTT {version}: the new mapping fills its table"
        );

        // A broken file changes nothing, and says what is wrong.
        for (text, setting) in [
            ("topics = [\"c/#\"\n", "config"),
            ("topics = [\"c/#\"]\nqos = 7\n", "qos"),
        ] {
            write(text);
            let (status, body) = reload();
            assert_eq!(status, 422, "MQTT {version}: {body}");
            assert_eq!(body["detail"]["setting"], setting, "MQTT {version}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("nothing changed"),
                "{body}"
            );
        }
        case.broker.publish_lines("b/1", 1, &temps);
        case.broker.publish_lines("c/1", 1, &db::seq_lines(0, 3));
        assert_eq!(
            db::wait_count(&db, MSGS, 20, Duration::from_secs(10)),
            20,
            "MQTT {version}"
        );

        // SIGHUP does the same as the route.
        write("topics = [\"c/#\"]\n");
        t.hangup();
        assert!(
            support::wait_for(Duration::from_secs(10), || (subacks() == 3).then_some(())).is_some(),
            "MQTT {version}: no SUBACK for c/# after SIGHUP:\n{}",
            t.log_text()
        );
        case.broker.publish_lines("c/2", 1, &db::seq_lines(0, 3));
        assert_eq!(
            db::wait_count(&db, MSGS, 23, Duration::from_secs(10)),
            23,
            "MQTT {version}"
        );
        assert_eq!(
            count("c/1"),
            0,
            "MQTT {version}: published before c/# was subscribed"
        );

        let metrics = http
            .get(format!("{}/metrics", t.api()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        assert_eq!(
            support::metric(&metrics, "tidegate_mqtt_reconnects_total"),
            0.0,
            "MQTT {version}: one session throughout"
        );
        assert_eq!(
            support::metric(&metrics, "tidegate_config_reloads_total{result=\"applied\"}"),
            2.0,
            "MQTT {version}"
        );
        assert_eq!(
            support::metric(&metrics, "tidegate_config_reloads_total{result=\"refused\"}"),
            2.0,
            "MQTT {version}"
        );
        t.assert_metrics_balance();
        // The record the next run unsubscribes from follows the reloads.
        assert_eq!(
            support::wait_for(Duration::from_secs(10), || {
                let filters: String = db::open(&db)
                    .query_row(
                        "SELECT filters FROM mqtt_subscriptions WHERE client_id = 'reloaded'",
                        [],
                        |r| r.get(0),
                    )
                    .ok()?;
                (filters == r#"["c/#"]"#).then_some(filters)
            }),
            Some(r#"["c/#"]"#.to_string()),
            "MQTT {version}"
        );
    }
}

#[test]
fn a_reload_while_the_broker_is_away_takes_effect_when_it_is_back() {
    let mut case = Case::new(BrokerOptions {
        persistence: true,
        ..Default::default()
    });
    let db = case.db();
    let (t, conf) = case.start_from_file("away", "topics = [\"d/#\"]\n", &[]);
    case.broker.stop();
    assert!(
        t.wait_log("reconnecting", Duration::from_secs(10)),
        "{}",
        t.log_text()
    );
    std::fs::write(&conf, "topics = [\"e/#\"]\n").unwrap();
    t.hangup();
    assert!(
        t.wait_log("config reloaded", Duration::from_secs(10)),
        "{}",
        t.log_text()
    );
    case.broker.start_again();
    assert!(
        t.wait_log("the broker kept our session", Duration::from_secs(20)),
        "{}",
        t.log_text()
    );
    let subscribed = || {
        t.log_text()
            .lines()
            .filter(|l| l.contains(" subscribed ") && l.contains("e/#"))
            .count()
    };
    assert!(
        support::wait_for(Duration::from_secs(10), || (subscribed() >= 1).then_some(())).is_some(),
        "no SUBACK for e/#:\n{}",
        t.log_text()
    );
    case.broker.publish_lines("d/1", 1, &db::seq_lines(0, 5));
    case.broker.publish_lines("e/1", 1, &db::seq_lines(0, 5));
    assert_eq!(db::wait_count(&db, MSGS, 5, Duration::from_secs(10)), 5);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(db::payloads(&db, "e/1").len(), 5, "{}", t.log_text());
    assert_eq!(
        db::payloads(&db, "d/1").len(),
        0,
        "d/# was unsubscribed:\n{}",
        t.log_text()
    );
}

#[test]
fn a_seed_database_is_upgraded_and_keeps_its_rows() {
    let case = Case::new(BrokerOptions::default());
    {
        // Exactly what the course note creates, with rows the seed script wrote.
        let c = rusqlite::Connection::open(case.db()).unwrap();
        c.execute_batch(
            "CREATE TABLE dados (id INTEGER PRIMARY KEY AUTOINCREMENT, valor TEXT, timestamp DATETIME DEFAULT CURRENT_TIMESTAMP);
             INSERT INTO dados (valor) VALUES ('21.5');
             INSERT INTO dados (valor) VALUES ('22.0');
             INSERT INTO dados (valor, timestamp) VALUES ('old', '2024-01-01 09:30:00');",
        )
        .unwrap();
    }
    let _t = case.start("seed", &[]);
    case.broker.publish_lines("t/new", 1, &["23.1".to_string()]);
    assert_eq!(
        db::wait_count(
            &case.db(),
            "SELECT count(*) FROM dados",
            4,
            Duration::from_secs(15)
        ),
        4
    );
    let c = db::open(&case.db());
    let rows: Vec<(i64, String, String)> = c
        .prepare("SELECT id, valor, \"timestamp\" FROM dados ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows[0].0, 1);
    assert_eq!(
        rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        ["21.5", "22.0", "old", "23.1"]
    );
    assert_eq!(rows[2].2, "2024-01-01 09:30:00.000");
    assert_eq!(rows[3].0, 4, "new ids continue after the seed's");
    // The original table is kept untouched under another name.
    assert_eq!(db::count(&case.db(), "SELECT count(*) FROM dados_seed"), 3);
    // The seed's rows came without readings; a backfill derives them, beside the running
    // tidegate, as for the message it stored itself ("old" is not JSON: nothing).
    let readings = "SELECT group_concat(message_id || '=' || value, ',') FROM (SELECT * FROM readings ORDER BY message_id)";
    let text = |sql: &str| -> String { db::open(&case.db()).query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(text(readings), "4=23.1");
    let db_path = case.db();
    let (status, out) = support::tidegate::run_to_end(
        &["backfill", "--db", db_path.to_str().unwrap()],
        &[],
        db_path.parent().unwrap(),
    );
    assert!(
        status.success() && out.contains("readings: added 2 to 2 messages"),
        "{out}"
    );
    assert_eq!(text(readings), "1=21.5,2=22.0,4=23.1");
}

#[test]
fn bad_input_is_stored_exactly_or_rejected_never_a_crash() {
    let case = Case::new(BrokerOptions::default());
    let t = case.start("bad", &["--max-payload", "1KiB"]);
    let b = &case.broker;
    b.publish_bytes("t/bin", b"\xff\xfe\x00\x01binary", &[]);
    b.publish_bytes("t/empty", b"", &[]);
    b.publish_bytes("t/big", &vec![b'x'; 4096], &[]);
    let odd = "t/it's \"quoted\"/100%/'; DROP TABLE messages; --/🚀";
    b.publish_bytes(odd, b"odd", &[]);
    let long = format!("t/{}", "x".repeat(5000));
    b.publish_bytes(&long, b"long", &[]);
    b.publish_bytes("t/after", b"still alive", &[]);

    assert_eq!(db::wait_count(&case.db(), MSGS, 5, Duration::from_secs(15)), 5);
    let c = db::open(&case.db());
    let raw: Vec<u8> = c
        .query_row(
            "SELECT payload_raw FROM messages WHERE topic = 't/bin'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(raw, b"\xff\xfe\x00\x01binary");
    let empty: (String, i64) = c
        .query_row(
            "SELECT payload, payload_size FROM messages WHERE topic = 't/empty'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(empty, (String::new(), 0));
    assert_eq!(db::payloads(&case.db(), odd), ["odd"]);
    assert_eq!(db::payloads(&case.db(), &long), ["long"]);
    let rejected: (String, i64, String) = c
        .query_row("SELECT topic, size, reason FROM rejected", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((rejected.0.as_str(), rejected.1), ("t/big", 4096));
    assert!(rejected.2.contains("max-payload"), "{}", rejected.2);
    assert_eq!(
        db::count(&case.db(), "SELECT count(*) FROM messages WHERE topic = 't/big'"),
        0
    );
    assert_eq!(db::payloads(&case.db(), "t/after"), ["still alive"]);
    // One connection the whole time: the over-size message did not cause a reconnect loop.
    assert!(
        !t.log_text().contains("connection to the broker lost"),
        "{}",
        t.log_text()
    );
}

#[test]
fn a_locked_database_delays_acks_and_recovers_by_itself() {
    let case = Case::new(BrokerOptions::default());
    let t = case.start("locked", &[]);
    case.broker.publish_lines("t/l", 1, &db::seq_lines(0, 10));
    assert_eq!(db::wait_count(&case.db(), MSGS, 10, Duration::from_secs(15)), 10);

    // Another process takes the write lock and holds it longer than tidegate's busy timeout.
    let mut locker = rusqlite::Connection::open(case.db()).unwrap();
    let tx = locker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    case.broker.publish_lines("t/l", 1, &db::seq_lines(10, 200));
    assert!(
        t.wait_log("cannot write to the store", Duration::from_secs(20)),
        "{}",
        t.log_text()
    );
    tx.rollback().unwrap();
    drop(locker);

    assert!(
        t.wait_log("store writable again", Duration::from_secs(20)),
        "{}",
        t.log_text()
    );
    assert_eq!(
        db::wait_count(&case.db(), MSGS, 200, Duration::from_secs(20)),
        200
    );
    let (missing, dup) = db::exactly_once(&case.db(), "t/l", 200);
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {missing:?} dup {dup:?}"
    );
    // The batch queued behind the one that failed did not overtake it once the lock went.
    let seqs: Vec<usize> = db::payloads(&case.db(), "t/l")
        .iter()
        .map(|p| p.strip_prefix("seq-").unwrap().parse().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ids do not follow the publish order: {seqs:?}"
    );
}

#[test]
fn mqtt_over_websockets_works() {
    let case = Case::new(BrokerOptions {
        websockets: true,
        ..Default::default()
    });
    let url = format!("ws://127.0.0.1:{}/mqtt", case.broker.ws_port);
    let db = case.db();
    let _t = Tidegate::run_subscribed(&url, db.to_str().unwrap(), "t/#", "ws", &[], case.dir.path());
    case.broker.publish_lines("t/ws", 1, &db::seq_lines(0, 500));
    assert_eq!(db::wait_count(&db, MSGS, 500, Duration::from_secs(20)), 500);
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let case = Case::new(BrokerOptions {
        tls: true,
        mutual_tls: true,
        ..Default::default()
    });
    let tls = case.broker.tls.as_ref().unwrap();
    let url = case.broker.url();
    let db = case.db();
    let base = [
        "run",
        "--broker",
        &url,
        "--db",
        db.to_str().unwrap(),
        "--topic",
        "t/#",
        "--ca-file",
        tls.ca_pem.to_str().unwrap(),
    ];
    // Without a client certificate the broker refuses the handshake.
    let mut anon = Tidegate::start(&[&base[..], &["--client-id", "mtls-a"]].concat(), case.dir.path());
    std::thread::sleep(Duration::from_secs(2));
    assert!(!anon.log_text().contains("subscribed"), "{}", anon.log_text());
    anon.kill9();
    let _t = Tidegate::subscribed(
        &[
            &base[..],
            &[
                "--client-id",
                "mtls-b",
                "--client-cert",
                tls.client_pem.to_str().unwrap(),
                "--client-key",
                tls.client_key.to_str().unwrap(),
            ],
        ]
        .concat(),
        case.dir.path(),
    );
    let pubargs = [
        "--cafile",
        tls.ca_pem.to_str().unwrap(),
        "--cert",
        tls.client_pem.to_str().unwrap(),
        "--key",
        tls.client_key.to_str().unwrap(),
        "-h",
        "localhost",
    ];
    case.broker
        .publish_lines_with("t/mtls", 1, &db::seq_lines(0, 100), &pubargs);
    assert_eq!(db::wait_count(&db, MSGS, 100, Duration::from_secs(20)), 100);
}

#[test]
fn a_backlog_flood_is_acknowledged_completely_nothing_redelivered_afterwards() {
    // No in-flight limit at the broker: it sends the whole backlog at once, so tidegate owes far
    // more acks than rumqttc's request channel holds. None may be dropped.
    const TOTAL: usize = 60_000;
    let case = Case::new(BrokerOptions {
        max_inflight: Some(0),
        max_queued: Some(0),
        ..Default::default()
    });
    let mut t = case.start("flood", &[]);
    assert!(t.term().success());
    case.broker.publish_lines("t/flood", 1, &db::seq_lines(0, TOTAL));
    let mut t = case.start("flood", &[]);
    db::wait_count(&case.db(), MSGS, TOTAL as i64, Duration::from_secs(60));
    let received = t.assert_metrics_balance();
    assert_eq!(received, TOTAL as f64);
    assert!(t.term().success());
    // Had an ack been lost, the broker would redeliver that message to the next connection.
    let t = case.start("flood", &[]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(t.assert_metrics_balance(), 0.0, "{}", t.log_text());
    let (missing, dup) = db::exactly_once(&case.db(), "t/flood", TOTAL);
    assert!(missing.is_empty() && dup.is_empty());
}

/// Write system calls made by a process's main thread, where the MQTT connection runs.
fn main_thread_writes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("syscw: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn the_acks_of_a_committed_batch_leave_together_mqtt5_and_311() {
    // rumqttc writes each request on its own (rumqttc #810); tidegate's copy flushes the acks
    // queued together (vendor/README.md). Unpatched, this backlog took one write per message.
    const TOTAL: usize = 5_000;
    for version in ["5", "3.1.1"] {
        let case = Case::new(BrokerOptions {
            max_inflight: Some(0),
            ..Default::default()
        });
        let mut t = case.start("acks", &["--mqtt-version", version]);
        assert!(t.term().success());
        case.broker.publish_lines("t/acks", 1, &db::seq_lines(0, TOTAL));
        let mut t = case.start("acks", &["--mqtt-version", version]);
        let before = main_thread_writes(t.pid());
        db::wait_count(&case.db(), MSGS, TOTAL as i64, Duration::from_secs(60));
        assert_eq!(t.assert_metrics_balance(), TOTAL as f64);
        // The last acks leave once the event loop next runs.
        std::thread::sleep(Duration::from_millis(300));
        let writes = main_thread_writes(t.pid()) - before;
        assert!(
            writes < TOTAL as u64 / 5,
            "MQTT {version}: {writes} writes for {TOTAL} acks"
        );
        assert!(t.term().success());
        // Every ack arrived: the next connection is redelivered nothing.
        let t = case.start("acks", &["--mqtt-version", version]);
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(t.assert_metrics_balance(), 0.0, "MQTT {version}");
        let (missing, dup) = db::exactly_once(&case.db(), "t/acks", TOTAL);
        assert!(missing.is_empty() && dup.is_empty(), "MQTT {version}");
    }
}

#[test]
fn a_long_reader_lets_the_wal_grow_and_it_is_trimmed_afterwards() {
    let case = Case::new(BrokerOptions {
        max_inflight: Some(1000),
        ..Default::default()
    });
    let _t = case.start("wal", &["--readings", "off"]);
    let dbp = case.db();
    case.broker.publish_lines("t/w", 1, &db::seq_lines(0, 10));
    db::wait_count(&dbp, MSGS, 10, Duration::from_secs(15));
    let wal = dbp.with_extension("db-wal");
    let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    // A dashboard query that keeps its snapshot open: checkpoints cannot restart the WAL.
    let reader = db::open(&dbp);
    reader.execute_batch("BEGIN").unwrap();
    let _: i64 = reader.query_row(MSGS, [], |r| r.get(0)).unwrap();
    let pad = "x".repeat(2000);
    let lines: Vec<String> = (10..30_010).map(|i| format!("seq-{i} {pad}")).collect();
    case.broker.publish_lines("t/w", 1, &lines);
    db::wait_count(&dbp, MSGS, 30_010, Duration::from_secs(60));
    let grown = size();
    assert!(
        grown > 48 << 20,
        "the WAL did not grow past the limit: {grown} bytes"
    );
    reader.execute_batch("COMMIT").unwrap();
    drop(reader);
    // Once the reader is gone, the next checkpoints restart the WAL and trim it.
    let trimmed = support::wait_for(Duration::from_secs(30), || {
        case.broker
            .publish_lines("t/w", 1, &db::seq_lines(40_000, 41_000));
        (size() <= 32 << 20).then_some(size())
    });
    assert!(trimmed.is_some(), "the WAL stayed at {} bytes", size());
}
