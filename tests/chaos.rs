//! The fault suite: real Mosquitto and PostgreSQL processes, a TCP proxy that delays, cuts and
//! blackholes traffic, crashes of tidegate and of the broker, a filesystem that fills up. Every
//! scenario publishes numbered QoS 1 messages and ends with the same check — every number stored
//! exactly once — and records its figures for docs/reliability.md (scripts/reliability-report).

mod support;

use std::time::{Duration, Instant};

use support::{
    broker::{BrokerOptions, Mosquitto},
    db, pg,
    proxy::Proxy,
    report::{self, Row},
    tidegate::Tidegate,
};

const MSGS: &str = "SELECT count(*) FROM messages";

fn check_sqlite(path: &std::path::Path, topic: &str, total: usize) -> (usize, usize) {
    let (missing, dup) = db::exactly_once(path, topic, total);
    let ok: String = db::open(path)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    (missing.len(), dup.len())
}

/// Publishes at `rate` for `secs` while tidegate is killed with -9 every 3 s and restarted.
fn kill9_loop(db: &str, secs: usize, kills: usize, client_id: &str) -> (usize, Duration, f64) {
    const RATE: usize = 2000;
    let total = RATE * secs;
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let url = broker.url();
    let mut t = Tidegate::run_subscribed(&url, db, "k/#", client_id, &[], dir.path());
    let port = broker.port;
    let publisher = std::thread::spawn(move || Mosquitto::publish_paced_on(port, "k/x", 0, total, RATE));
    let mut rss: f64 = 0.0;
    for _ in 0..kills {
        std::thread::sleep(Duration::from_secs(3));
        rss = rss.max(report::peak_rss_mib(t.pid()));
        t.restart();
    }
    publisher.join().unwrap();
    let end = Instant::now();
    let plain = db.split('?').next().unwrap();
    if db.starts_with("postgres") {
        db::pg_wait_count(plain, MSGS, total as i64, Duration::from_secs(60));
    } else {
        db::wait_count(
            std::path::Path::new(db),
            MSGS,
            total as i64,
            Duration::from_secs(60),
        );
    }
    let recovery = end.elapsed();
    t.assert_metrics_balance();
    (total, recovery, rss)
}

#[test]
fn kill9_every_3s_for_a_minute_under_load_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("k.db");
    let (total, recovery, rss) = kill9_loop(dbp.to_str().unwrap(), 60, 20, "chaos-kill");
    let (lost, dup) = check_sqlite(&dbp, "k/x", total);
    report::record(&Row {
        scenario: "kill -9 of tidegate every 3 s for a minute (SQLite)".into(),
        parameters: "2000 msg/s, 20 kills, restart at once".into(),
        sent: total,
        lost,
        duplicated: dup,
        recovery_s: recovery.as_secs_f64(),
        peak_rss_mib: rss,
        notes: "PRAGMA integrity_check ok".into(),
    });
    assert_eq!((lost, dup), (0, 0));
}

#[test]
fn kill9_every_3s_for_a_minute_under_load_postgres() {
    let url = pg::fresh_database(&pg::shared());
    let (total, recovery, rss) = kill9_loop(&url, 60, 20, "chaos-kill-pg");
    let (missing, dup) = db::pg_exactly_once(url.split('?').next().unwrap(), "k/x", total);
    report::record(&Row {
        scenario: "kill -9 of tidegate every 3 s for a minute (PostgreSQL)".into(),
        parameters: "2000 msg/s, 20 kills, restart at once".into(),
        sent: total,
        lost: missing.len(),
        duplicated: dup.len(),
        recovery_s: recovery.as_secs_f64(),
        peak_rss_mib: rss,
        notes: String::new(),
    });
    assert_eq!((missing.len(), dup.len()), (0, 0));
}

#[test]
fn broker_killed_with_sigkill_tidegate_reconnects_and_resubscribes() {
    let mut broker = Mosquitto::start(BrokerOptions {
        persistence: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("b.db");
    let url = broker.url();
    let t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "bk/#",
        "chaos-broker",
        &[],
        dir.path(),
    );
    // Messages queued at the broker while tidegate's window is full, then the broker dies.
    broker.publish_lines("bk/x", 1, &db::seq_lines(0, 5000));
    broker.kill9();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    broker.start_again();
    // Mosquitto saves its state every 30 min by default: after kill -9 it has no session for us.
    assert!(
        support::wait_for(Duration::from_secs(40), || t
            .log_text()
            .matches("subscribed")
            .count()
            .ge(&2)
            .then_some(()))
        .is_some(),
        "{}",
        t.log_text()
    );
    broker.publish_lines("bk/x", 1, &db::seq_lines(5000, 7000));
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages WHERE payload >= 'seq-5000' AND length(payload) = 8",
        2000,
        Duration::from_secs(30),
    );
    let recovery = down.elapsed().as_secs_f64();
    t.assert_metrics_balance();
    let (missing, dup) = db::exactly_once(&dbp, "bk/x", 7000);
    let after_restart_missing = missing.iter().filter(|&&n| n >= 5000).count();
    report::record(&Row {
        scenario: "broker killed with -9 and restarted (persistence on, default autosave)".into(),
        parameters: "5000 messages before the kill, 2000 after".into(),
        sent: 7000,
        lost: missing.len(),
        duplicated: dup.len(),
        recovery_s: recovery,
        peak_rss_mib: report::peak_rss_mib(t.pid()),
        notes: format!(
            "{} lost with the broker's memory (state not yet saved); tidegate saw `session_present=0`, warned of a possible gap and resubscribed; 0 lost after the restart",
            missing.len()
        ),
    });
    assert_eq!(after_restart_missing, 0);
    assert!(dup.is_empty());
    assert!(t.log_text().contains("possible gap"), "{}", t.log_text());
}

#[test]
fn broker_stopped_gracefully_and_restarted_mid_stream() {
    const TOTAL: usize = 7000;
    let mut broker = Mosquitto::start(BrokerOptions {
        persistence: true,
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("g.db");
    let url = broker.url();
    let t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "bg/#",
        "chaos-broker-term",
        &[],
        dir.path(),
    );
    broker.publish_lines("bg/x", 1, &db::seq_lines(0, 5000));
    // SIGTERM while tidegate is still working through the queue: Mosquitto saves the session.
    broker.stop();
    let down = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    broker.start_again();
    assert!(
        t.wait_log("kept our session", Duration::from_secs(30)),
        "{}",
        t.log_text()
    );
    broker.publish_lines("bg/x", 1, &db::seq_lines(5000, TOTAL));
    db::wait_count(&dbp, MSGS, TOTAL as i64, Duration::from_secs(30));
    let recovery = down.elapsed().as_secs_f64();
    t.assert_metrics_balance();
    let (lost, dup) = check_sqlite(&dbp, "bg/x", TOTAL);
    report::record(&Row {
        scenario: "broker stopped gracefully (SIGTERM) and restarted mid-stream (persistence on)".into(),
        parameters: "5000 messages queued before the stop, 1 s down, 2000 after".into(),
        sent: TOTAL,
        lost,
        duplicated: dup,
        recovery_s: recovery,
        peak_rss_mib: report::peak_rss_mib(t.pid()),
        notes: "session kept (`session_present=1`): no resubscription needed, no gap".into(),
    });
    assert_eq!((lost, dup), (0, 0));
    assert!(!t.log_text().contains("possible gap"), "{}", t.log_text());
}

#[test]
fn a_metabase_like_reader_during_full_speed_ingest_sees_no_lock() {
    const TOTAL: usize = 40_000;
    let broker = Mosquitto::start(BrokerOptions {
        max_inflight: Some(1000),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("r.db");
    let url = broker.url();
    let t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "mr/#",
        "chaos-reader",
        &[],
        dir.path(),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let dbp = dbp.clone();
        std::thread::spawn(move || {
            // Like Metabase's SQLite driver: a read-write connection, a 3 s busy timeout, and
            // aggregates that scan the whole table while it grows.
            let c = rusqlite::Connection::open(&dbp).unwrap();
            c.busy_timeout(Duration::from_secs(3)).unwrap();
            let (mut ok, mut errors, mut longest) = (0u64, Vec::new(), Duration::ZERO);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let r: rusqlite::Result<i64> = c
                    .prepare_cached(
                        "SELECT count(*) FROM (SELECT topic, strftime('%Y-%m-%d %H:%M', received_at) AS m, count(*), \
                         avg(length(payload)) FROM messages GROUP BY topic, m)",
                    )
                    .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
                    .and_then(|_| {
                        c.query_row(
                            "SELECT count(*) FROM dados WHERE \"timestamp\" >= datetime('now', '-1 hour')",
                            [],
                            |r| r.get(0),
                        )
                    });
                longest = longest.max(started.elapsed());
                match r {
                    Ok(_) => ok += 1,
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ok, errors, longest)
        })
    };
    let started = Instant::now();
    broker.publish_lines("mr/x", 1, &db::seq_lines(0, TOTAL));
    db::wait_count(&dbp, MSGS, TOTAL as i64, Duration::from_secs(60));
    let took = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, errors, longest) = reader.join().unwrap();
    t.assert_metrics_balance();
    let (lost, dup) = check_sqlite(&dbp, "mr/x", TOTAL);
    let writer_locked = t.log_text().matches("locked").count();
    report::record(&Row {
        scenario: "Metabase-like reader hammering the SQLite file during full-speed ingest".into(),
        parameters: format!(
            "read-write connection, 3 s busy timeout, whole-table aggregates in a loop; {TOTAL} messages at full speed ({:.0} msg/s)",
            TOTAL as f64 / took
        ),
        sent: TOTAL,
        lost,
        duplicated: dup,
        recovery_s: 0.0,
        peak_rss_mib: report::peak_rss_mib(t.pid()),
        notes: format!(
            "{ok} reader queries (longest {:.0} ms), {} \"database is locked\" on the reader, {writer_locked} on tidegate",
            longest.as_secs_f64() * 1000.0,
            errors.len()
        ),
    });
    assert!(
        errors.is_empty(),
        "reader errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    assert_eq!(writer_locked, 0, "{}", t.log_text());
    assert!(ok > 10, "the reader ran only {ok} queries");
    assert_eq!((lost, dup), (0, 0));
}

#[test]
fn network_faults_between_tidegate_and_the_broker() {
    const TOTAL: usize = 30_000;
    let broker = Mosquitto::start(BrokerOptions::default());
    let proxy = Proxy::start(broker.port);
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("n.db");
    let url = format!("mqtt://127.0.0.1:{}", proxy.port);
    let t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "n/#",
        "chaos-net",
        &["--keep-alive", "5s"],
        dir.path(),
    );
    let port = broker.port;
    let publisher = std::thread::spawn(move || Mosquitto::publish_paced_on(port, "n/x", 0, TOTAL, 2000));
    std::thread::sleep(Duration::from_secs(2));
    proxy.set_latency(50);
    std::thread::sleep(Duration::from_secs(2));
    proxy.set_latency(0);
    for _ in 0..3 {
        proxy.drop_all();
        std::thread::sleep(Duration::from_secs(1));
    }
    // Half-open: nothing flows, nothing is closed. The keep-alive must notice.
    proxy.blackhole(true);
    let noticed = t.wait_log("connection to the broker lost", Duration::from_secs(20));
    proxy.drop_all();
    proxy.blackhole(false);
    let healed = Instant::now();
    publisher.join().unwrap();
    db::wait_count(&dbp, MSGS, TOTAL as i64, Duration::from_secs(60));
    let recovery = healed.elapsed().as_secs_f64();
    t.assert_metrics_balance();
    let (lost, dup) = check_sqlite(&dbp, "n/x", TOTAL);
    report::record(&Row {
        scenario: "network faults tidegate ↔ broker (TCP proxy)".into(),
        parameters: "2000 msg/s; 50 ms latency 2 s; 3 cuts mid-stream; blackhole (half-open) until the keep-alive (5 s) notices".into(),
        sent: TOTAL,
        lost,
        duplicated: dup,
        recovery_s: recovery,
        peak_rss_mib: report::peak_rss_mib(t.pid()),
        notes: format!("half-open connection noticed by the keep-alive: {noticed}"),
    });
    assert!(noticed, "{}", t.log_text());
    assert_eq!((lost, dup), (0, 0));
}

#[test]
fn network_faults_and_a_slow_link_between_tidegate_and_postgres() {
    const TOTAL: usize = 20_000;
    let server = pg::PgServer::start();
    let proxy = Proxy::start(server.port);
    let url = pg::fresh_database(&server.url());
    let name = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let via_proxy = format!(
        "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
        proxy.port
    );
    let plain = format!("{}/{name}", server.url());
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let b = broker.url();
    let t = Tidegate::run_subscribed(&b, &via_proxy, "np/#", "chaos-net-pg", &[], dir.path());
    // A slow store: 100 ms on every round trip to PostgreSQL while messages pour in.
    proxy.set_latency(100);
    broker.publish_lines("np/x", 1, &db::seq_lines(0, TOTAL / 2));
    std::thread::sleep(Duration::from_secs(5));
    let slow_rss = report::peak_rss_mib(t.pid());
    proxy.set_latency(0);
    for _ in 0..3 {
        proxy.drop_all();
        std::thread::sleep(Duration::from_millis(700));
    }
    broker.publish_lines("np/x", 1, &db::seq_lines(TOTAL / 2, TOTAL));
    let healed = Instant::now();
    db::pg_wait_count(&plain, MSGS, TOTAL as i64, Duration::from_secs(90));
    let recovery = healed.elapsed().as_secs_f64();
    t.assert_metrics_balance();
    let (missing, dup) = db::pg_exactly_once(&plain, "np/x", TOTAL);
    report::record(&Row {
        scenario: "slow link and cut connections tidegate ↔ PostgreSQL (TCP proxy)".into(),
        parameters: "100 ms per round trip for 5 s under a 10 000-message burst, then 3 cuts".into(),
        sent: TOTAL,
        lost: missing.len(),
        duplicated: dup.len(),
        recovery_s: recovery,
        peak_rss_mib: slow_rss.max(report::peak_rss_mib(t.pid())),
        notes: "memory stays bounded while the store is slow: the broker holds the backlog".into(),
    });
    assert_eq!((missing.len(), dup.len()), (0, 0));
    assert!(slow_rss < 200.0, "RSS grew to {slow_rss} MiB with a slow store");
}

#[test]
fn a_full_filesystem_stops_acks_then_recovers_when_space_is_freed() {
    const TOTAL: usize = 6000;
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(
        ok.success(),
        "mounting a small tmpfs needs root (the test command runs as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let broker = Mosquitto::start(BrokerOptions::default());
    let dbp = mnt.join("full.db");
    let url = broker.url();
    let t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "f/#",
        "chaos-full",
        // The outage below lasts longer than this: tidegate's own stop must not read as a silent
        // session.
        &["--readings", "off", "--stale-after", "1s"],
        dir.path(),
    );
    let api = t.api();
    broker.publish_lines("f/x", 1, &db::seq_lines(0, 1000));
    db::wait_count(&dbp, MSGS, 1000, Duration::from_secs(15));
    // Fill what is left of the filesystem.
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let pad = "p".repeat(400);
    let lines: Vec<String> = (1000..TOTAL).map(|i| format!("seq-{i} {pad}")).collect();
    broker.publish_lines("f/x", 1, &lines);
    assert!(
        t.wait_log("cannot write to the store", Duration::from_secs(30)),
        "{}",
        t.log_text()
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ready = reqwest::blocking::get(format!("{api}/readyz")).unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body = ready.text().unwrap();
    assert!(body.contains("full"), "{body}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !t.log_text().contains("while connected (--stale-after)"),
        "the watchdog took the store's outage for a silent session:\n{}",
        t.log_text()
    );
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    assert!(
        t.wait_log("store writable again", Duration::from_secs(30)),
        "{}",
        t.log_text()
    );
    db::wait_count(&dbp, MSGS, TOTAL as i64, Duration::from_secs(30));
    let recovery = freed.elapsed().as_secs_f64();
    t.assert_metrics_balance();
    let c = db::open(&dbp);
    let mut seen = vec![0u32; TOTAL];
    let mut st = c
        .prepare("SELECT payload FROM messages WHERE topic = 'f/x'")
        .unwrap();
    for p in st.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        let p = p.unwrap();
        if let Some(n) = p
            .strip_prefix("seq-")
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse::<usize>().ok())
        {
            seen[n] += 1;
        }
    }
    let lost = seen.iter().filter(|c| **c == 0).count();
    let dup = seen.iter().filter(|c| **c > 1).count();
    report::record(&Row {
        scenario: "SQLite on a filesystem that fills up, then space freed".into(),
        parameters: "24 MiB tmpfs filled by another file; 5000 messages of ~410 bytes arrive meanwhile"
            .into(),
        sent: TOTAL,
        lost,
        duplicated: dup,
        recovery_s: recovery,
        peak_rss_mib: report::peak_rss_mib(t.pid()),
        notes: "no acknowledgement while full; /readyz 503 with the reason; resumed by itself".into(),
    });
    assert_eq!((lost, dup), (0, 0));
}

/// `tests/support/faulty_fs.py` mounted at `mnt`: a passthrough to `root` whose fsync answers
/// EIO while `flag` exists. Unmounted on drop.
struct FaultyFs {
    mnt: std::path::PathBuf,
    daemon: std::process::Child,
}

impl FaultyFs {
    fn mount(root: &std::path::Path, mnt: &std::path::Path, flag: &std::path::Path) -> FaultyFs {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/faulty_fs.py");
        let daemon = std::process::Command::new("python3")
            .arg(script)
            .args([root, mnt, flag])
            .spawn()
            .expect("python3 runs tests/support/faulty_fs.py");
        let fs = FaultyFs {
            mnt: mnt.to_path_buf(),
            daemon,
        };
        let mounted = support::wait_for(Duration::from_secs(15), || {
            let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
            mounts
                .lines()
                .any(|l| l.split(' ').nth(1) == mnt.to_str())
                .then_some(())
        });
        assert!(
            mounted.is_some(),
            "the FUSE filesystem did not mount (needs /dev/fuse, root, libfuse2 and fusepy: scripts/test installs them)"
        );
        fs
    }
}

impl Drop for FaultyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mnt)
            .status();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

#[test]
fn a_disk_that_stops_confirming_writes_stops_acks_until_restart_and_loses_nothing() {
    const BEFORE: usize = 1000;
    const TOTAL: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let (root, mnt, flag) = (
        dir.path().join("root"),
        dir.path().join("mnt"),
        dir.path().join("fail"),
    );
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&mnt).unwrap();
    let _fs = FaultyFs::mount(&root, &mnt, &flag);
    let broker = Mosquitto::start(BrokerOptions::default());
    let dbp = mnt.join("fsync.db");
    let url = broker.url();
    let mut t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "d/#",
        "chaos-fsync",
        &["--readings", "off"],
        dir.path(),
    );
    broker.publish_lines("d/x", 1, &db::seq_lines(0, BEFORE));
    db::wait_count(&dbp, MSGS, BEFORE as i64, Duration::from_secs(15));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = |api: &str| {
        reqwest::blocking::get(format!("{api}/metrics"))
            .unwrap()
            .text()
            .unwrap()
    };
    let api = t.api();
    let acked = support::wait_for(Duration::from_secs(10), || {
        let m = support::metric(&metrics(&api), "tidegate_messages_acked_total");
        (m == BEFORE as f64).then_some(m)
    });
    assert!(acked.is_some(), "the first messages are acknowledged");

    // From now on every fsync fails, as on a disk that is going away.
    std::fs::write(&flag, b"").unwrap();
    broker.publish_lines("d/x", 1, &db::seq_lines(BEFORE, TOTAL));
    assert!(
        t.wait_log("could not be written to disk", Duration::from_secs(30)),
        "{}",
        t.log_text()
    );
    let ready = reqwest::blocking::get(format!("{api}/readyz")).unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.text().unwrap().contains("restart tidegate"));
    // Nothing after the fault is acknowledged, even once the disk answers again: what reached it
    // is unknown until a restart reads the file afresh.
    std::fs::remove_file(&flag).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let acked_during = support::metric(&metrics(&api), "tidegate_messages_acked_total");
    assert_eq!(
        acked_during, BEFORE as f64,
        "messages acknowledged after the failed fsync"
    );
    assert!(t.term().success(), "{}", t.log_text());

    let restarted = Instant::now();
    t.start_again();
    db::wait_count(&dbp, MSGS, TOTAL as i64, Duration::from_secs(30));
    let recovery = restarted.elapsed().as_secs_f64();
    // The broker delivered again what was not acknowledged; the rows committed before the fault
    // was noticed are recognised, not stored twice.
    let api = t.api();
    t.assert_metrics_balance();
    let after = metrics(&api);
    let redelivered = support::metric(&after, "tidegate_messages_received_total");
    assert!(
        redelivered >= (TOTAL as f64 - acked_during),
        "the broker redelivered {redelivered}, fewer than the {} unacknowledged",
        TOTAL as f64 - acked_during
    );
    let (lost, dup) = check_sqlite(&dbp, "d/x", TOTAL);
    report::record(&Row {
        scenario: "SQLite on a disk whose fsync starts failing (FUSE), then tidegate restarted".into(),
        parameters: format!(
            "{BEFORE} messages, then fsync answers EIO while {} more arrive; fault cleared, tidegate restarted",
            TOTAL - BEFORE
        ),
        sent: TOTAL,
        lost,
        duplicated: dup,
        recovery_s: recovery,
        peak_rss_mib: report::peak_rss_mib(t.pid()),
        notes: format!(
            "{acked_during} acknowledged in all before the restart; /readyz 503 asking for a restart; the broker redelivered {redelivered}"
        ),
    });
    assert_eq!((lost, dup), (0, 0));
}

#[test]
fn a_client_id_collision_is_detected_and_named() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("c.db");
    let url = broker.url();
    let t = Tidegate::run_subscribed(&url, dbp.to_str().unwrap(), "c/#", "twin", &[], dir.path());
    // Another client with the same id connects every second, kicking tidegate off each time.
    let port = broker.port.to_string();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kicker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("mosquitto_pub")
                    .args(["-p", &port, "-i", "twin", "-t", "c/kick", "-m", "x", "-q", "0"])
                    .status();
                std::thread::sleep(Duration::from_millis(900));
            }
        })
    };
    let named = t.wait_log(
        "is another client using client id `twin`",
        Duration::from_secs(30),
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    kicker.join().unwrap();
    report::record(&Row {
        scenario: "client id collision (another client kicks tidegate off every second)".into(),
        parameters: "mosquitto_pub -i <tidegate's id> every 0.9 s".into(),
        notes: format!("tidegate named the cause in its log: {named}"),
        peak_rss_mib: report::peak_rss_mib(t.pid()),
        ..Default::default()
    });
    assert!(named, "{}", t.log_text());
}

#[test]
fn a_corpus_of_nasty_messages_over_mqtt_and_http() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("nasty.db");
    let url = broker.url();
    let mut t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "nasty/#",
        "nasty",
        &["--max-payload", "4MiB"],
        dir.path(),
    );
    let api = t.api();
    // 100 MiB payload: recorded in `rejected`, acknowledged, the connection stays up.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![b'x'; 100 << 20]).unwrap();
    let ok = std::process::Command::new("mosquitto_pub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "nasty/big",
            "-q",
            "1",
            "-f",
            big.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::remove_file(&big).unwrap();
    // 64k-deep JSON and a 100k-field object: stored raw, the reason noted.
    let deep = format!("{}1{}", "[".repeat(65_536), "]".repeat(65_536));
    broker.publish_bytes("nasty/deep", deep.as_bytes(), &[]);
    let wide = format!(
        "{{{}}}",
        (0..100_000)
            .map(|i| format!("\"f{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    broker.publish_bytes("nasty/wide", wide.as_bytes(), &[]);
    // A retained storm: 500 retained topics, replayed to a second session — stored once each.
    for i in 0..500 {
        broker.publish_bytes(&format!("nasty/retained/{i}"), b"state", &["-r", "-q", "0"]);
    }
    broker.publish_bytes("nasty/after", b"alive", &[]);
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages WHERE topic = 'nasty/after'",
        1,
        Duration::from_secs(30),
    );
    let rss = report::peak_rss_mib(t.pid());
    assert!(t.term().success());
    let t2 = Tidegate::run_subscribed(&url, dbp.to_str().unwrap(), "nasty/#", "nasty-2", &[], dir.path());
    std::thread::sleep(Duration::from_secs(2));

    let size: i64 = db::open(&dbp)
        .query_row("SELECT size FROM rejected WHERE topic = 'nasty/big'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(size, 100 << 20);
    let notes = db::count(&dbp, "SELECT count(*) FROM reading_notes n JOIN messages m ON m.id = n.message_id WHERE m.topic IN ('nasty/deep', 'nasty/wide')");
    assert_eq!(notes, 2);
    assert_eq!(
        db::count(
            &dbp,
            "SELECT count(*) FROM messages WHERE topic LIKE 'nasty/retained/%'"
        ),
        500
    );
    assert!(
        !t.log_text().contains("connection to the broker lost"),
        "{}",
        t.log_text()
    );
    // Over HTTP: a 100 MiB body and a 64k-deep body get clear 4xx answers.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let c = reqwest::blocking::Client::new();
    let r = c
        .post(format!("{}/api/v1/messages", t2.api()))
        .header("content-type", "application/json")
        .body(vec![b' '; 100 << 20])
        .send();
    assert!(
        r.map(|r| r.status().as_u16() == 413).unwrap_or(true),
        "a 100 MiB body was not refused"
    );
    let body = format!("{{\"topic\":\"nasty/http\",\"payload\":{deep}}}");
    let r = c
        .post(format!("{}/api/v1/messages", t2.api()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    // Stored exactly as sent (a raw JSON value), with the readings' reason noted.
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(
        db::count(&dbp, "SELECT count(*) FROM messages WHERE topic = 'nasty/http'"),
        1
    );
    let _ = api;
    report::record(&Row {
        scenario: "nasty messages over MQTT and HTTP".into(),
        parameters: "100 MiB payload; 64k-deep JSON; 100k-field object; 500 retained topics replayed to a new session; 100 MiB and 64k-deep HTTP bodies".into(),
        sent: 504,
        lost: 0,
        duplicated: 0,
        recovery_s: 0.0,
        peak_rss_mib: rss,
        notes: "over-size recorded in `rejected`; deep/wide JSON stored raw with the reason; retained stored once; HTTP 413 for the huge body; no reconnect".into(),
    });
}
