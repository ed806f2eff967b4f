//! tidegate into PostgreSQL end to end: scale-out with shared subscriptions, crashes of an
//! instance, PostgreSQL restarts, and the local spool for outages longer than the broker's queue.

mod support;

use std::time::Duration;

use support::{
    broker::{BrokerOptions, Mosquitto},
    db,
    pg::{self, PgServer},
    tidegate::Tidegate,
};

fn pg_url_without_params(url: &str) -> String {
    url.split('?').next().unwrap().to_string()
}

fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest_get(&format!("{base}/metrics"));
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn reqwest_get(url: &str) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::get(url).and_then(|r| r.text()).unwrap_or_default()
}

#[test]
fn three_instances_share_one_stream_exactly_once_even_when_one_crashes() {
    const TOTAL: usize = 50_000;
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let url = pg::fresh_database(pg::SHARED);
    let broker_url = broker.url();
    let mut instances: Vec<Tidegate> = (0..3)
        .map(|i| {
            let id = format!("scale-{i}");
            let t = Tidegate::start(
                &["run", "--broker", &broker_url, "--db", &url, "--topic", "seq/#", "--share-group", "g", "--client-id", &id],
                dir.path(),
            );
            assert!(t.wait_log("subscribed", Duration::from_secs(20)), "{}", t.log_text());
            t
        })
        .collect();
    let port = broker.port;
    let publisher = std::thread::spawn(move || Mosquitto::publish_lines_on(port, "seq/x", &db::seq_lines(0, TOTAL)));
    std::thread::sleep(Duration::from_millis(800));
    instances[1].restart();
    publisher.join().unwrap();
    let plain = pg_url_without_params(&url);
    let n = db::pg_wait_count(&plain, "SELECT count(*) FROM messages", TOTAL as i64, Duration::from_secs(120));
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
    let t = Tidegate::start(
        &["run", "--broker", &broker_url, "--db", &url, "--topic", "pgd/#", "--client-id", "pg-down"],
        dir.path(),
    );
    assert!(t.wait_log("subscribed", Duration::from_secs(20)), "{}", t.log_text());
    let api = t.api();
    broker.publish_lines("pgd/x", 1, &db::seq_lines(0, 2000));
    let plain = pg_url_without_params(&url);
    assert_eq!(db::pg_wait_count(&plain, "SELECT count(*) FROM messages", 2000, Duration::from_secs(30)), 2000);

    server.stop();
    broker.publish_lines("pgd/x", 1, &db::seq_lines(2000, TOTAL));
    assert!(t.wait_log("cannot write to the store", Duration::from_secs(20)), "{}", t.log_text());
    let ready = reqwest_get(&format!("{api}/readyz"));
    assert!(ready.contains("store not writable"), "{ready}");
    let acked_at_stop = metric(&api, "tidegate_messages_acked_total");
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(metric(&api, "tidegate_messages_acked_total"), acked_at_stop, "acked while PostgreSQL was down");
    server.start_again();

    assert!(t.wait_log("store writable again", Duration::from_secs(60)), "{}", t.log_text());
    db::pg_wait_count(&plain, "SELECT count(*) FROM messages", TOTAL as i64, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let (missing, dup) = db::pg_exactly_once(&plain, "pgd/x", TOTAL);
    assert!(missing.is_empty() && dup.is_empty(), "missing {} dup {}", missing.len(), dup.len());
}
