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

/// The report of a 3,000-message run says each one arrived once.
fn assert_each_seen_once(mode: &str, r: &serde_json::Value) {
    for (key, want) in [
        ("published", 3000),
        ("received", 3000),
        ("lost", 0),
        ("duplicates", 0),
    ] {
        assert_eq!(r[key], want, "{mode}: {key} in {r}");
    }
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
        assert_each_seen_once(name, &r);
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

/// A load test reaches a broker the way `tidegate run` does: here over TLS with a private CA and
/// a password, as on HiveMQ Cloud. When the broker refuses the bench, the bench says why, and
/// the password never shows.
#[test]
fn bench_reaches_a_tls_broker_with_a_password_and_says_why_one_refuses() {
    let password = "pa55-w0rd-xyz";
    let broker = Mosquitto::start(BrokerOptions {
        tls: true,
        password: Some(("sensor".into(), password.into())),
        ..Default::default()
    });
    let tls = broker.tls.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("mqtt-password");
    std::fs::write(&password_file, format!("{password}\n")).unwrap();
    let (url, ca) = (broker.url(), tls.ca_pem.to_str().unwrap());
    let login = [
        "--ca-file",
        ca,
        "--username",
        "sensor",
        "--password-file",
        password_file.to_str().unwrap(),
    ];
    let db_path = dir.path().join("bench.db");
    let tg = Tidegate::run_subscribed(
        &url,
        db_path.to_str().unwrap(),
        "bench/#",
        "bench-tls",
        &login,
        dir.path(),
    );
    let api = tg.api();
    let modes: [(&str, &[&str]); 2] = [
        ("stream", &["--api", &api]),
        ("null", &["--null", "--topic", "elsewhere"]),
    ];
    for (name, mode) in modes {
        let r = bench(
            &[&["--broker", url.as_str()], &login[..], mode].concat(),
            dir.path(),
        );
        assert_each_seen_once(name, &r);
    }
    assert_eq!(db::count(&db_path, "SELECT count(*) FROM messages"), 3000);

    // The user and CA as above, the password from the environment and wrong.
    let wrong = [("TIDEGATE_PASSWORD", "not-the-password-123")];
    let refused = |mode: &[&str], envs: &[(&str, &str)], extra: &[&str]| {
        let args = [
            &["bench", "--messages", "100", "--broker", url.as_str()],
            extra,
            mode,
        ]
        .concat();
        let (status, out) = run_to_end(&args, envs, dir.path());
        assert!(!status.success(), "{args:?} succeeded:\n{out}");
        assert!(!out.contains("not-the-password-123"), "password shown:\n{out}");
        out
    };
    let user_and_ca = ["--username", "sensor", "--ca-file", ca];
    for mode in [&["--api", api.as_str()][..], &["--null"]] {
        let out = refused(mode, &wrong, &user_and_ca);
        assert!(
            out.contains("refused the connection") && out.contains("--password"),
            "{mode:?}:\n{out}"
        );
    }
    // A broker certificate from a CA the bench was not told about is not trusted.
    let out = refused(&["--null"], &[], &login[2..]);
    assert!(out.contains("TLS failed") && out.contains("--ca-file"), "{out}");
    // A password with no user name is a mistake to name before connecting.
    let out = refused(&["--null"], &wrong, &["--ca-file", ca]);
    assert!(out.contains("username"), "{out}");
}
