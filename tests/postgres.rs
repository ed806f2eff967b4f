//! tidegate into PostgreSQL end to end: scale-out with shared subscriptions, crashes of an
//! instance, PostgreSQL restarts, and the local spool for outages longer than the broker's queue.

mod support;

use std::time::Duration;

use support::{
    broker::{BrokerOptions, Mosquitto},
    db,
    pg::{self, PgServer},
    report::{self, Row},
    tidegate::Tidegate,
};

fn pg_url_without_params(url: &str) -> String {
    url.split('?').next().unwrap().to_string()
}

fn metric(base: &str, name: &str) -> f64 {
    support::metric(&reqwest_get(&format!("{base}/metrics")), name)
}

fn reqwest_get(url: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::get(url)
        .and_then(|r| r.text())
        .unwrap_or_default()
}

#[test]
fn three_instances_share_one_stream_exactly_once_even_when_one_crashes() {
    const TOTAL: usize = 50_000;
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database(&pg::shared());
    let broker_url = broker.url();
    let mut instances: Vec<Tidegate> = (0..3)
        .map(|i| {
            let id = format!("scale-{i}");
            let t = Tidegate::subscribed(
                &[
                    "run",
                    "--broker",
                    &broker_url,
                    "--db",
                    &url,
                    "--topic",
                    "seq/#",
                    "--share-group",
                    "g",
                    "--client-id",
                    &id,
                ],
                dir.path(),
            );
            t
        })
        .collect();
    let port = broker.port;
    let publisher =
        std::thread::spawn(move || Mosquitto::publish_lines_on(port, "seq/x", &db::seq_lines(0, TOTAL)));
    std::thread::sleep(Duration::from_millis(800));
    instances[1].restart();
    publisher.join().unwrap();
    let plain = pg_url_without_params(&url);
    let n = db::pg_wait_count(
        &plain,
        "SELECT count(*) FROM messages",
        TOTAL as i64,
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (missing, dup) = db::pg_exactly_once(&plain, "seq/x", TOTAL);
    assert!(missing.is_empty(), "{} missing (rows {n})", missing.len());
    assert!(dup.is_empty(), "{} duplicated", dup.len());
    // Every instance took part (the restarted one counts from its restart).
    for (i, t) in instances.iter().enumerate() {
        let committed = metric(&t.api(), "tidegate_messages_committed_total");
        assert!(committed > 0.0, "instance {i} stored nothing");
    }
}

#[test]
fn postgres_down_for_20s_loses_nothing_and_acks_nothing_meanwhile() {
    const TOTAL: usize = 6_000;
    let mut server = PgServer::start();
    let url = pg::fresh_database(&server.url());
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let broker_url = broker.url();
    let t = Tidegate::run_subscribed(&broker_url, &url, "pgd/#", "pg-down", &[], dir.path());
    let api = t.api();
    broker.publish_lines("pgd/x", 1, &db::seq_lines(0, 2000));
    let plain = pg_url_without_params(&url);
    assert_eq!(
        db::pg_wait_count(
            &plain,
            "SELECT count(*) FROM messages",
            2000,
            Duration::from_secs(30)
        ),
        2000
    );

    server.stop();
    broker.publish_lines("pgd/x", 1, &db::seq_lines(2000, TOTAL));
    assert!(
        t.wait_log("cannot write to the store", Duration::from_secs(20)),
        "{}",
        t.log_text()
    );
    let ready = reqwest_get(&format!("{api}/readyz"));
    assert!(ready.contains("store not writable"), "{ready}");
    let acked_at_stop = metric(&api, "tidegate_messages_acked_total");
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(
        metric(&api, "tidegate_messages_acked_total"),
        acked_at_stop,
        "acked while PostgreSQL was down"
    );
    server.start_again();

    assert!(
        t.wait_log("store writable again", Duration::from_secs(60)),
        "{}",
        t.log_text()
    );
    db::pg_wait_count(
        &plain,
        "SELECT count(*) FROM messages",
        TOTAL as i64,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (missing, dup) = db::pg_exactly_once(&plain, "pgd/x", TOTAL);
    assert!(
        missing.is_empty() && dup.is_empty(),
        "missing {} dup {}",
        missing.len(),
        dup.len()
    );
}

#[test]
fn a_60s_postgres_outage_at_500_msgs_loses_nothing_with_the_spool_and_the_broker_drops_without() {
    const RATE: usize = 500;
    const TOTAL: usize = RATE * 70;
    let mut server = PgServer::start();
    let with_spool = pg::fresh_database(&server.url());
    let without = pg::fresh_database(&server.url());
    // Mosquitto's default queue for an offline or slow persistent session: 1000 messages.
    let broker = Mosquitto::start(BrokerOptions {
        max_queued: Some(1000),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let b = broker.url();
    let spooled = Tidegate::start(
        &[
            "run",
            "--broker",
            &b,
            "--db",
            &with_spool,
            "--topic",
            "out/#",
            "--client-id",
            "spooled",
            "--spool",
            spool_dir.to_str().unwrap(),
        ],
        dir.path(),
    );
    let plain = Tidegate::start(
        &[
            "run",
            "--broker",
            &b,
            "--db",
            &without,
            "--topic",
            "out/#",
            "--client-id",
            "unspooled",
        ],
        dir.path(),
    );
    for t in [&spooled, &plain] {
        assert!(
            t.wait_log("subscribed", Duration::from_secs(20)),
            "{}",
            t.log_text()
        );
    }
    let port = broker.port;
    let publisher = std::thread::spawn(move || Mosquitto::publish_paced_on(port, "out/x", 0, TOTAL, RATE));
    std::thread::sleep(Duration::from_secs(5));
    server.stop();
    std::thread::sleep(Duration::from_secs(60));
    server.start_again();
    let back = std::time::Instant::now();
    publisher.join().unwrap();

    let with_plain = pg_url_without_params(&with_spool);
    let n = db::pg_wait_count(
        &with_plain,
        "SELECT count(*) FROM messages",
        TOTAL as i64,
        Duration::from_secs(90),
    );
    let recovery = back.elapsed().as_secs_f64();
    spooled.assert_metrics_balance();
    let (missing, dup) = db::pg_exactly_once(&with_plain, "out/x", TOTAL);
    report::record(&Row {
        scenario: "PostgreSQL stopped for 60 s, with the spool".into(),
        parameters: format!("{RATE} msg/s for 70 s; broker queue limit 1000 (Mosquitto's default)"),
        sent: TOTAL,
        lost: missing.len(),
        duplicated: dup.len(),
        recovery_s: recovery,
        peak_rss_mib: report::peak_rss_mib(spooled.pid()),
        notes: "acknowledged after the fsync'd spool append; forwarded in order once PostgreSQL was back"
            .into(),
    });
    assert!(
        missing.is_empty() && dup.is_empty(),
        "with spool: {} missing, {} duplicated (rows {n})",
        missing.len(),
        dup.len()
    );
    assert!(
        spooled.log_text().contains("cannot forward the spool yet"),
        "{}",
        spooled.log_text()
    );

    let without_plain = pg_url_without_params(&without);
    std::thread::sleep(Duration::from_secs(5));
    let (lost, dup) = db::pg_exactly_once(&without_plain, "out/x", TOTAL);
    plain.assert_metrics_balance();
    report::record(&Row {
        scenario: "PostgreSQL stopped for 60 s, without the spool (what the broker drops)".into(),
        parameters: format!("{RATE} msg/s for 70 s; broker queue limit 1000 (Mosquitto's default)"),
        sent: TOTAL,
        lost: lost.len(),
        duplicated: dup.len(),
        recovery_s: 0.0,
        peak_rss_mib: report::peak_rss_mib(plain.pid()),
        notes: "tidegate acknowledged nothing while down; the broker dropped what exceeded its queue: use `--spool` for outages longer than the queue".into(),
    });
    println!(
        "BROKER-LOSS without spool: {} of {TOTAL} messages lost at the broker (queue limit 1000, 60 s outage at {RATE} msg/s); with spool: 0",
        lost.len()
    );
    assert!(dup.is_empty());
    assert!(
        lost.len() > 10_000,
        "expected the broker to drop most of the outage's messages, lost {}",
        lost.len()
    );
}

#[test]
fn a_full_spool_stops_acknowledging_and_says_so_then_drains() {
    const TOTAL: usize = 3000;
    let mut server = PgServer::start();
    let url = pg::fresh_database(&server.url());
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    let b = broker.url();
    let t = Tidegate::run_subscribed(
        &b,
        &url,
        "full/#",
        "full",
        &["--spool", spool_dir.to_str().unwrap(), "--spool-max", "1MiB"],
        dir.path(),
    );
    let api = t.api();
    server.stop();
    // About 3 MB of payload: three times what the spool may hold.
    let pad = "x".repeat(1000);
    let lines: Vec<String> = (0..TOTAL).map(|i| format!("seq-{i} {pad}")).collect();
    broker.publish_lines("full/x", 1, &lines);
    assert!(
        t.wait_log("the spool is full", Duration::from_secs(30)),
        "{}",
        t.log_text()
    );
    let ready = reqwest_get(&format!("{api}/readyz"));
    assert!(ready.contains("spool is full"), "{ready}");
    // The backlog shows: messages waiting, and the oldest's wait growing.
    let spool = || {
        let m = reqwest_get(&format!("{api}/metrics"));
        (
            support::metric(&m, "tidegate_spool_messages"),
            support::metric(&m, "tidegate_spool_oldest_seconds"),
        )
    };
    let (waiting, age) = support::wait_for(Duration::from_secs(10), || {
        let (w, a) = spool();
        (w > 0.0 && a > 0.0).then_some((w, a))
    })
    .expect("the spool's backlog is not in /metrics");
    assert!(waiting < TOTAL as f64, "{waiting}: more than were published");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(spool().1 >= age + 1.0, "the oldest's wait does not grow");
    server.start_again();
    let plain = pg_url_without_params(&url);
    let n = db::pg_wait_count(
        &plain,
        "SELECT count(*) FROM messages",
        TOTAL as i64,
        Duration::from_secs(90),
    );
    assert_eq!(n, TOTAL as i64);
    let out = std::process::Command::new("psql")
        .args([
            &plain,
            "-tAc",
            "SELECT count(DISTINCT split_part(payload, ' ', 1)) FROM messages",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), TOTAL.to_string());
    assert!(
        support::wait_for(Duration::from_secs(10), || (spool() == (0.0, 0.0)).then_some(())).is_some(),
        "the drained spool still shows a backlog: {:?}",
        spool()
    );
}

#[test]
fn the_database_password_is_checked_and_never_shown() {
    const PW: &str = "db-s3cret-Pa55word";
    const WRONG: &str = "wrong-guess-Pa55";
    let server = PgServer::start_with_password(PW);
    let url = pg::fresh_database(&server.url());
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let broker_url = broker.url();

    // The right password, given in the URL: rows arrive, and no log line or API body shows it.
    let mut t = Tidegate::run_subscribed(&broker_url, &url, "pw/#", "pw-ok", &[], dir.path());
    broker.publish_lines("pw/x", 1, &db::seq_lines(0, 100));
    let plain = pg_url_without_params(&url);
    assert_eq!(
        db::pg_wait_count(
            &plain,
            "SELECT count(*) FROM messages",
            100,
            Duration::from_secs(30)
        ),
        100
    );
    let api = t.api();
    for route in ["/readyz", "/metrics", "/api/v1/topics", "/api/v1/openapi.json"] {
        assert!(
            !reqwest_get(&format!("{api}{route}")).contains(PW),
            "password in {route}"
        );
    }
    assert!(t.term().success());
    assert!(
        !t.log_text().contains(PW),
        "password in the log:\n{}",
        t.log_text()
    );

    // The same password from TIDEGATE_DB_PASSWORD with a URL that has none.
    let no_pw = url.replace(&format!(":{PW}@"), "@");
    assert!(!no_pw.contains(PW));
    // `config check` on a file that holds the password in its URL prints the settings without it.
    let file = dir.path().join("tidegate.toml");
    std::fs::write(&file, format!("broker = \"{broker_url}\"\ndb = \"{url}\"\n")).unwrap();
    let (status, text) =
        support::tidegate::run_to_end(&["config", "check", file.to_str().unwrap()], &[], dir.path());
    assert!(status.success(), "{text}");
    assert!(!text.contains(PW), "password in `config check`:\n{text}");
    let t = Tidegate::start_with_env(
        &[
            "run",
            "--broker",
            &broker_url,
            "--db",
            &no_pw,
            "--topic",
            "pw/#",
            "--client-id",
            "pw-env",
        ],
        &[("TIDEGATE_DB_PASSWORD", PW)],
        dir.path(),
    );
    assert!(
        t.wait_log("subscribed", Duration::from_secs(20)),
        "{}",
        t.log_text()
    );
    drop(t);

    // A wrong password: refused with an error that says what to check, naming neither password.
    let wrong = url.replace(PW, WRONG);
    let (status, text) = support::tidegate::run_to_end(
        &[
            "run",
            "--broker",
            &broker_url,
            "--db",
            &wrong,
            "--topic",
            "pw/#",
            "--client-id",
            "pw-bad",
        ],
        &[],
        dir.path(),
    );
    assert!(!status.success());
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        !text.contains(WRONG) && !text.contains(PW),
        "a password in the error:\n{text}"
    );
}

/// TLS to PostgreSQL: verified whenever it is asked for, and not in the way of a server on this
/// machine whose certificate cannot be verified (as a distribution's self-signed one), where a
/// URL without `sslmode` connects without TLS.
#[test]
fn tls_to_postgresql_is_verified_and_a_local_url_without_sslmode_needs_none() {
    let (server, tls) = PgServer::start_with_tls();
    let url = pg::fresh_database(&server.url());
    let name = pg_url_without_params(&url)
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let ca = tls.ca_pem.to_str().unwrap();
    // tidegate's connections to the server, and how many of them use TLS.
    let sessions = || {
        pg::psql(
            &server.url(),
            &name,
            "SELECT count(*) FILTER (WHERE s.ssl) || ' of ' || count(*) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'tidegate'",
        )
    };
    let serve = |db: &str| {
        let t = Tidegate::start(&["serve", "--db", db], dir.path());
        assert!(
            t.wait_log("API listening", Duration::from_secs(20)),
            "{db}:\n{}",
            t.log_text()
        );
        t
    };

    // No sslmode, the server on this machine: no TLS, although it offers TLS.
    let plain = format!("postgres://postgres@127.0.0.1:{}/{name}", server.port);
    let t = serve(&plain);
    let seen = sessions();
    assert!(seen.starts_with("0 of ") && seen != "0 of 0", "{seen}");
    drop(t);

    // Asked for and verifiable (the CA given, the name the certificate holds): TLS it is.
    let verified = format!(
        "postgres://postgres@localhost:{}/{name}?sslmode=verify-full&sslrootcert={ca}",
        server.port
    );
    let t = serve(&verified);
    let seen = sessions();
    let (with_tls, all) = seen.split_once(" of ").unwrap();
    assert!(with_tls == all && all != "0", "{seen}");
    drop(t);

    // Asked for and not verifiable: refused, saying why, whatever the CA says of the rest.
    for (db, why) in [
        // The certificate names localhost, not 127.0.0.1.
        (
            format!(
                "postgres://postgres@127.0.0.1:{}/{name}?sslmode=require&sslrootcert={ca}",
                server.port
            ),
            "not valid for name",
        ),
        // `prefer` verifies too, where libpq's takes any certificate.
        (
            format!(
                "postgres://postgres@localhost:{}/{name}?sslmode=prefer",
                server.port
            ),
            "certificate",
        ),
        // Signed by a CA nobody told tidegate about.
        (
            format!(
                "postgres://postgres@localhost:{}/{name}?sslmode=require",
                server.port
            ),
            "certificate",
        ),
    ] {
        let (status, out) = support::tidegate::run_to_end(&["serve", "--db", &db], &[], dir.path());
        assert!(!status.success(), "{db}: {out}");
        assert!(out.contains(why), "{db}: {out}");
        assert!(
            out.contains("sslrootcert=PATH") && out.contains("sslmode=disable"),
            "{db}: says what to do: {out}"
        );
    }
}

/// Mapping tables are made and widened in name order, by every instance and by `tidegate
/// backfill`. A batch whose messages widen `b` and then `a` waits for `a` holding nothing on `b`,
/// so another transaction widening `a` and then `b` (another instance's batch) goes through, and
/// neither is aborted as a deadlock.
#[test]
fn mapping_tables_are_widened_in_one_order_so_two_writers_cannot_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("tidegate.toml");
    std::fs::write(
        &conf,
        "[[mapping]]\nfilter = \"ddl/a\"\ntable = \"a\"\nauto_columns = true\n\
         [[mapping]]\nfilter = \"ddl/b\"\ntable = \"b\"\nauto_columns = true\n",
    )
    .unwrap();
    let url = pg::fresh_database(&pg::shared());
    let plain = pg_url_without_params(&url);
    let t = Tidegate::start(
        &["serve", "--db", &url, "--config", conf.to_str().unwrap()],
        dir.path(),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ingest = format!("{}/api/v1/messages", t.api());
    let post = move |lines: &[(&str, &str)]| {
        let body: String = lines
            .iter()
            .map(|(topic, payload)| format!("{{\"topic\":\"{topic}\",\"payload\":{payload}}}\n"))
            .collect();
        reqwest::blocking::Client::new()
            .post(&ingest)
            .header("content-type", "application/x-ndjson")
            .body(body)
            .timeout(Duration::from_secs(60))
            .send()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(post(&[("ddl/a", r#"{"x":1}"#), ("ddl/b", r#"{"x":1}"#)]), 201);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let other = rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&plain, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    });
    let count = |sql: &str| -> i64 { rt.block_on(other.query_one(sql, &[])).unwrap().get(0) };
    rt.block_on(other.batch_execute("BEGIN; ALTER TABLE a ADD COLUMN other_a integer"))
        .unwrap();
    // In message order this batch widens `b` first.
    let batch = std::thread::spawn(move || post(&[("ddl/b", r#"{"y":2}"#), ("ddl/a", r#"{"y":2}"#)]));
    let waits = support::wait_for(Duration::from_secs(20), || {
        (count("SELECT count(*) FROM pg_locks WHERE relation = 'a'::regclass AND NOT granted") > 0)
            .then_some(())
    });
    assert!(waits.is_some(), "tidegate's batch never waited for table a");
    assert_eq!(
        count("SELECT count(*) FROM pg_locks WHERE relation = 'b'::regclass AND pid <> pg_backend_pid()"),
        0,
        "the batch waiting for a holds a lock on b: a writer taking a then b deadlocks with it"
    );
    rt.block_on(other.batch_execute("ALTER TABLE b ADD COLUMN other_b integer; COMMIT"))
        .expect("the other writer widened a then b");
    assert_eq!(batch.join().unwrap(), 201, "{}", t.log_text());
    let (server, name) = plain.rsplit_once('/').unwrap();
    let q = |sql: &str| pg::psql(server, name, sql);
    assert_eq!(q("SELECT count(*) || ' ' || count(y) FROM a"), "2 1");
    assert_eq!(q("SELECT count(*) || ' ' || count(y) FROM b"), "2 1");
    assert!(!t.log_text().contains("deadlock"), "{}", t.log_text());
}
