//! `tidegate bench`, the load tool, against a real Mosquitto and a real tidegate: each way of
//! measuring (the live stream, the committed counter and stored rows, the null subscriber) sees
//! every message exactly once and says so in its JSON report, with the CPU each side spent.

mod support;

use support::{
    broker::{BrokerOptions, Mosquitto},
    db,
    tidegate::{run_to_end, Tidegate},
};

fn bench(args: &[&str], dir: &std::path::Path) -> serde_json::Value {
    let args = [&["bench", "--json", "--messages", "3000"], args].concat();
    let (status, out) = run_to_end(&args, &[], dir);
    assert!(status.success(), "tidegate {args:?} failed:\n{out}");
    let json = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no report:\n{out}"));
    serde_json::from_str(json).unwrap()
}

#[test]
fn every_measuring_mode_counts_each_message_once() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("bench.db");
    let tg = Tidegate::run_subscribed(
        &broker.url(),
        db_path.to_str().unwrap(),
        "bench/#",
        "bench-test",
        &[],
        dir.path(),
    );
    let (url, api) = (broker.url(), tg.api());
    let modes: [(&str, &[&str]); 3] = [
        ("stream", &["--api", &api]),
        ("no-stream", &["--api", &api, "--no-stream"]),
        // Outside tidegate's subscription.
        ("null", &["--null", "--topic", "elsewhere"]),
    ];
    for (name, mode) in modes {
        let r = bench(&[&["--broker", url.as_str()], mode].concat(), dir.path());
        for (key, want) in [
            ("published", 3000),
            ("received", 3000),
            ("lost", 0),
            ("duplicates", 0),
        ] {
            assert_eq!(r[key], want, "{name}: {key} in {r}");
        }
        assert!(r["msg_per_s"].as_f64().unwrap() > 0.0, "{name}: {r}");
        // Latency needs a per-message signal: the stream or the null subscriber, not the rows.
        assert_eq!(r["latency_ms_p99"].is_null(), name == "no-stream", "{name}: {r}");
        // tidegate's CPU comes from the /metrics the counter polls; the tool's own, always.
        let tidegate_cpu = r["tidegate_cpu_us_per_msg"].as_f64();
        match name {
            "no-stream" => assert!(tidegate_cpu.unwrap() > 0.0, "{name}: {r}"),
            _ => assert_eq!(tidegate_cpu, None, "{name}: {r}"),
        }
        assert!(r["load_cpu_us_per_msg"].as_f64().unwrap() > 0.0, "{name}: {r}");
    }
    // The two tidegate runs committed their messages, and only those.
    assert_eq!(db::count(&db_path, "SELECT count(*) FROM messages"), 6000);
}
