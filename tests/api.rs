//! The HTTP API over real HTTP against a real tidegate process: every route and its errors,
//! auth, the live stream, readiness, the metrics invariant and the split deployment.

mod support;

use std::time::Duration;

use reqwest::{blocking::Client, StatusCode};
use serde_json::{json, Value};
use support::{
    broker::{BrokerOptions, Mosquitto},
    certs::Certs,
    db,
    tidegate::Tidegate,
};

const TOKEN: &str = "test-token-0123456789abcdef";

fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// A `serve` process on a temp database.
fn serve(dir: &std::path::Path, extra: &[&str]) -> Tidegate {
    let dbp = dir.join("api.db");
    let mut args = vec!["serve", "--db", dbp.to_str().unwrap()];
    args.extend_from_slice(extra);
    let t = Tidegate::start(&args, dir);
    t.api();
    t
}

/// A `subscribe` of `topic` on `broker` forwarding to `api`, once it has subscribed.
fn subscribe(
    broker: &str,
    topic: &str,
    api: &str,
    client_id: &str,
    extra: &[&str],
    dir: &std::path::Path,
) -> Tidegate {
    let mut args = vec![
        "subscribe",
        "--broker",
        broker,
        "--topic",
        topic,
        "--api",
        api,
        "--client-id",
        client_id,
    ];
    args.extend_from_slice(extra);
    Tidegate::subscribed(&args, dir)
}

fn post(c: &Client, base: &str, ct: &str, body: impl Into<reqwest::blocking::Body>) -> (StatusCode, Value) {
    post_to(c, &format!("{base}/api/v1/messages"), ct, body)
}

fn post_to(c: &Client, url: &str, ct: &str, body: impl Into<reqwest::blocking::Body>) -> (StatusCode, Value) {
    let r = c.post(url).header("content-type", ct).body(body).send().unwrap();
    let s = r.status();
    (s, r.json().unwrap_or(Value::Null))
}

fn get(c: &Client, url: &str) -> (StatusCode, Value) {
    let r = c.get(url).send().unwrap();
    let s = r.status();
    (s, r.json().unwrap_or(Value::Null))
}

#[test]
fn ingest_then_query_every_shape() {
    let dir = tempfile::tempdir().unwrap();
    let t = serve(dir.path(), &[]);
    let base = t.api();
    let c = client();

    let (s, v) = post(
        &c,
        &base,
        "application/json",
        r#"{"topic":"s/1/temp","payload":{"t":21.40}}"#,
    );
    assert_eq!(
        (s, v.clone()),
        (
            StatusCode::CREATED,
            json!({"stored":1,"duplicates":0,"rejected":0})
        )
    );
    let arr = json!([
        {"topic":"s/2/temp","payload":"22.5","received_at":"2026-01-01T10:00:00Z"},
        {"topic":"s/2/hum","payload":55,"qos":0},
        {"topic":"other","payload_base64":"/wA="}
    ]);
    assert_eq!(
        post(&c, &base, "application/json", arr.to_string()).0,
        StatusCode::CREATED
    );
    let nd: String = (0..250)
        .map(|i| format!("{{\"topic\":\"nd/x\",\"payload\":\"{i}\"}}\n"))
        .collect();
    let (s, v) = post(&c, &base, "application/x-ndjson", nd);
    assert_eq!((s, v["stored"].as_u64()), (StatusCode::CREATED, Some(250)));

    // Topic filters with wildcards; JSON payloads keep their exact text.
    let (_, v) = get(
        &c,
        &format!("{base}/api/v1/messages?topic=s/%2B/temp&order=oldest"),
    );
    let topics: Vec<&str> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["s/1/temp", "s/2/temp"]);
    assert_eq!(v["messages"][0]["payload"], r#"{"t":21.40}"#);
    let (_, v) = get(&c, &format!("{base}/api/v1/messages?topic=s/%23"));
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    let (_, v) = get(&c, &format!("{base}/api/v1/messages?topic=other"));
    assert_eq!(v["messages"][0]["payload_base64"], "/wA=");

    // Time range: only the message received at 10:00 on Jan 1.
    let (_, v) = get(
        &c,
        &format!("{base}/api/v1/messages?since=2026-01-01T09:00:00Z&until=2026-01-01T11:00:00%2B00:00"),
    );
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    assert_eq!(v["messages"][0]["topic"], "s/2/temp");

    // Cursor pagination walks all 250 NDJSON rows exactly once, newest first.
    let mut url = format!("{base}/api/v1/messages?topic=nd/x&limit=100");
    let mut seen = Vec::new();
    loop {
        let (s, v) = get(&c, &url);
        assert_eq!(s, StatusCode::OK);
        for m in v["messages"].as_array().unwrap() {
            seen.push(m["payload"].as_str().unwrap().parse::<u32>().unwrap());
        }
        match v["next"].as_str() {
            Some(n) => url = format!("{base}{n}"),
            None => break,
        }
    }
    assert_eq!(seen, (0..250).rev().collect::<Vec<_>>());

    let (_, v) = get(&c, &format!("{base}/api/v1/topics"));
    let nd = v["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "nd/x")
        .unwrap()
        .clone();
    assert_eq!(nd["message_count"], 250);
    assert_eq!(nd["last_minute"], 250);

    let (s, spec) = get(&c, &format!("{base}/api/v1/openapi.json"));
    assert_eq!(s, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/messages",
        "/api/v1/topics",
        "/api/v1/stream",
        "/api/v1/readings",
        "/api/v1/readings/latest",
        "/api/v1/preview",
        "/api/v1/reload",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            spec["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[test]
fn preview_answers_what_would_be_stored_with_the_running_config_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("tidegate.toml");
    std::fs::write(
        &conf,
        "max_payload = \"128B\"\n[[mapping]]\nfilter = \"sensors/+/telemetry\"\ntable = \"telemetry\"\n[mapping.columns]\ntemperature_c = \"$.temp\"\n",
    )
    .unwrap();
    let t = serve(dir.path(), &["--config", conf.to_str().unwrap()]);
    let base = t.api();
    let c = client();
    let preview = |ct: &str, body: String| post_to(&c, &format!("{base}/api/v1/preview"), ct, body);
    let body = json!([
        {"topic":"sensors/s3/telemetry","payload":{"device":"s3","temp":"21.4","hum":55,"ts":"2026-11-25T10:00:00Z"}},
        {"topic":"sensors/s4/telemetry","payload":{"temp":"hot"}},
        {"topic":"plain","payload":"on"}
    ]);
    let (s, v) = preview("application/json", body.to_string());
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = v.as_array().unwrap();
    assert_eq!(p.len(), 3, "one preview per message, in order: {v}");

    assert_eq!(p[0]["table"], "messages");
    assert_eq!(p[0]["device"], "s3");
    assert_eq!(p[0]["ts"], "2026-11-25T10:00:00Z");
    assert_eq!(p[0]["ts_source"], "payload");
    let fields: Vec<&str> = p[0]["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["hum", "temp"], "{v}");
    assert_eq!(
        p[0]["readings"][1]["value"], 21.4,
        "text that reads as a number is charted as one"
    );
    assert_eq!(
        p[0]["mappings"],
        json!([{"table":"telemetry","row":{"temperature_c":21.4}}])
    );

    assert_eq!(
        p[1]["table"], "messages",
        "a value that does not fit loses no message"
    );
    let refused = p[1]["mappings"][0]["rejected"].as_str().unwrap();
    assert!(
        refused.contains("temperature_c") && refused.contains("hot"),
        "{refused}"
    );
    assert_eq!(p[1]["readings"], json!([{"field":"temp","text":"hot"}]));

    assert!(p[2]["readings"].as_array().unwrap().is_empty());
    assert!(p[2]["note"].as_str().unwrap().contains("not JSON"), "{v}");
    assert!(
        p[2]["mappings"].as_array().unwrap().is_empty(),
        "no mapping for this topic"
    );

    // Over the configured limit: what MQTT would record in `rejected`, what the ingest route refuses.
    let big = json!({"topic":"plain","payload":"x".repeat(200)});
    let (s, e) = preview("application/json", big.to_string());
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("over the limit of 128 bytes"),
        "{e}"
    );
    assert_eq!(e["detail"]["index"], 0);

    // The same errors as the ingest route, naming what is wrong.
    let (s, e) = preview(
        "application/x-ndjson",
        "{\"topic\":\"ok\",\"payload\":1}\n{\"topic\":\"a/#\",\"payload\":1}\n".into(),
    );
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    assert_eq!(e["detail"]["index"], 1);
    assert!(e["error"].as_str().unwrap().contains('#'), "{e}");
    let (s, e) = preview("text/plain", "{}".into());
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{e}");

    // An NDJSON body of 2,000 previews (parsed off the runtime thread), then: nothing stored.
    let nd: String = (0..2000)
        .map(|i| format!("{{\"topic\":\"sensors/n{i}/telemetry\",\"payload\":{{\"temp\":{i}}}}}\n"))
        .collect();
    let (s, v) = preview("application/x-ndjson", nd);
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 2000);
    assert_eq!(v[1999]["mappings"][0]["row"]["temperature_c"], 1999.0);
    let (_, v) = get(&c, &format!("{base}/api/v1/messages"));
    assert_eq!(v["messages"], json!([]), "a preview stored something");
    let (_, v) = get(&c, &format!("{base}/api/v1/topics"));
    assert_eq!(v["topics"], json!([]));
    let db = rusqlite::Connection::open(dir.path().join("api.db")).unwrap();
    let tables: i64 = db
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'telemetry'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 0, "a preview created the mapped table");
}

#[test]
fn bad_requests_get_clear_4xx_and_nothing_is_half_stored() {
    let dir = tempfile::tempdir().unwrap();
    let t = serve(dir.path(), &["--max-body", "64KiB", "--max-payload", "1KiB"]);
    let base = t.api();
    let c = client();
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "application/json",
            b"{\"topic\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "EOF",
        ),
        (
            "application/json",
            b"[{\"topic\":\"ok\"},{\"payload\":\"x\"}]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "topic",
        ),
        (
            "application/json",
            b"[{\"topic\":\"ok\"},{\"topic\":\"a/+\"}]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "wildcard",
        ),
        (
            "application/json",
            b"{\"topic\":\"a\",\"qos\":\"x\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            "application/json",
            b"\xff\xfe".to_vec(),
            StatusCode::BAD_REQUEST,
            "UTF-8",
        ),
        (
            "text/plain",
            b"hello".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "application/json",
            vec![b' '; 100 * 1024],
            StatusCode::PAYLOAD_TOO_LARGE,
            "",
        ),
        (
            "application/json",
            format!("{{\"topic\":\"a\",\"payload\":\"{}\"}}", "x".repeat(2000)).into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "limit",
        ),
    ];
    for (ct, body, status, needle) in cases {
        let (s, v) = post(&c, &base, ct, body);
        assert_eq!(s, status, "{v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(needle)),
            "`{needle}` not in {v}"
        );
    }
    // The valid first message of the refused arrays was not stored either.
    assert_eq!(
        db::count(&dir.path().join("api.db"), "SELECT count(*) FROM messages"),
        0
    );

    post(&c, &base, "application/json", r#"{"topic":"keep","payload":"1"}"#);
    let sql = "1' OR '1'='1'; DROP TABLE messages; --";
    for q in [
        format!("since={}", urlencode(sql)),
        format!("until={}", urlencode(sql)),
        format!("limit={}", urlencode(sql)),
        format!("after_id={}", urlencode(sql)),
        format!("order={}", urlencode(sql)),
        "limit=0".into(),
        "limit=10001".into(),
        "limit=99999999999999999999999".into(),
        "since=2026-13-45T99:00:00Z".into(),
        format!("{}=1", urlencode(sql)),
    ] {
        let (s, v) = get(&c, &format!("{base}/api/v1/messages?{q}"));
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        assert!(v["error"].is_string());
    }
    // A topic that looks like SQL is just a topic.
    let (s, v) = get(
        &c,
        &format!(
            "{base}/api/v1/messages?topic={}",
            urlencode("a'; DROP TABLE messages; --")
        ),
    );
    assert_eq!(
        (s, v["messages"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    assert_eq!(
        db::count(&dir.path().join("api.db"), "SELECT count(*) FROM messages"),
        1
    );
    // Every parameter of the readings and stream routes: text ones are values, never SQL;
    // the others are refused with a 400 naming the parameter.
    for p in ["topic", "device", "field"] {
        let (s, v) = get(&c, &format!("{base}/api/v1/readings?{p}={}", urlencode(sql)));
        assert_eq!(s, StatusCode::OK, "{p}: {v}");
        assert_eq!(v["points"].as_array().map(Vec::len), Some(0), "{p}: {v}");
    }
    for p in ["since", "until", "bucket", "limit"] {
        let (s, v) = get(&c, &format!("{base}/api/v1/readings?{p}={}", urlencode(sql)));
        assert_eq!(s, StatusCode::BAD_REQUEST, "{p}: {v}");
        assert!(v["error"].as_str().unwrap().contains(p), "{p}: {v}");
    }
    for p in ["topic", "device", "field"] {
        let (s, v) = get(
            &c,
            &format!("{base}/api/v1/readings/latest?{p}={}", urlencode(sql)),
        );
        assert_eq!(s, StatusCode::OK, "{p}: {v}");
        assert_eq!(v["readings"].as_array().map(Vec::len), Some(0), "{p}: {v}");
    }
    for q in [
        "limit=0",
        "limit=10001",
        &format!("limit={}", urlencode(sql)),
        "since=2026-01-01T00:00:00Z",
    ] {
        let (s, v) = get(&c, &format!("{base}/api/v1/readings/latest?{q}"));
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}: {v}");
        let name = q.split('=').next().unwrap();
        assert!(v["error"].as_str().unwrap().contains(name), "{q}: {v}");
    }
    // The readings routes take one exact topic: a filter could only match nothing, so it is
    // refused, naming the parameter and the routes that take filters.
    for route in ["readings", "readings/latest"] {
        for filter in ["sensors/+/temp", "sensors/#"] {
            let (s, v) = get(&c, &format!("{base}/api/v1/{route}?topic={}", urlencode(filter)));
            assert_eq!(s, StatusCode::BAD_REQUEST, "{route} {filter}: {v}");
            assert_eq!(v["detail"]["parameter"], "topic", "{route} {filter}: {v}");
            assert!(v["error"].as_str().unwrap().contains("/api/v1/messages"), "{v}");
        }
    }
    // As a live-stream filter it is a valid (if odd) topic filter: a stream, not an error.
    let r = c
        .get(format!("{base}/api/v1/stream?topic={}", urlencode(sql)))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    drop(r);
    let (s, v) = get(&c, &format!("{base}/api/v1/topics"));
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["topics"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        db::count(&dir.path().join("api.db"), "SELECT count(*) FROM messages"),
        1
    );
    let (s, v) = get(&c, &format!("{base}/no/such/route"));
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].is_string());
    let r = c.delete(format!("{base}/api/v1/messages")).send().unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json::<Value>().unwrap()["error"].is_string());
    let (s, _) = get(&c, &format!("{base}/api/v1/stream?topic=a/%23/b"));
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_large_body_is_stored_whole_and_a_bad_line_in_it_is_named() {
    // Over 64 KiB, so parsed on a blocking thread rather than the runtime's.
    let dir = tempfile::tempdir().unwrap();
    let t = serve(dir.path(), &[]);
    let base = t.api();
    let c = client();
    let lines = |bad: Option<usize>| -> String {
        (0..3000)
            .map(|i| match bad {
                Some(b) if b == i => format!("{{\"payload\":{{\"seq\":{i}}}}}\n"),
                _ => format!(
                    "{{\"topic\":\"big/{}\",\"payload\":{{\"seq\":{i},\"pad\":\"{}\"}}}}\n",
                    i % 7,
                    "x".repeat(40)
                ),
            })
            .collect()
    };
    let body = lines(None);
    assert!(body.len() > 64 << 10);
    let (s, v) = post(&c, &base, "application/x-ndjson", body);
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["stored"], 3000, "{v}");

    let (s, v) = post(&c, &base, "application/x-ndjson", lines(Some(2500)));
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["detail"]["index"], 2500, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| e.contains("topic")), "{v}");
    assert_eq!(
        db::count(&dir.path().join("api.db"), "SELECT count(*) FROM messages"),
        3000
    );
}

#[test]
fn a_token_guards_every_route_but_healthz() {
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("auth.db");
    let t = Tidegate::start_with_env(
        &["serve", "--db", dbp.to_str().unwrap(), "--listen", "0.0.0.0:0"],
        &[("TIDEGATE_API_TOKEN", TOKEN)],
        dir.path(),
    );
    let base = t.api().replace("0.0.0.0", "127.0.0.1");
    let c = client();
    assert_eq!(
        c.get(format!("{base}/healthz")).send().unwrap().status(),
        StatusCode::OK
    );
    for path in [
        "/readyz",
        "/metrics",
        "/api/v1/messages",
        "/api/v1/topics",
        "/api/v1/readings/latest",
        "/api/v1/subscriptions/some-client",
        "/api/v1/openapi.json",
    ] {
        let url = format!("{base}{path}");
        assert_eq!(
            c.get(&url).send().unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            c.get(&url)
                .bearer_auth("wrong-token-0123456789")
                .send()
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            c.get(&url).bearer_auth(TOKEN).send().unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
    let r = c
        .get(format!("{base}/api/v1/messages?token={TOKEN}"))
        .send()
        .unwrap();
    assert_ne!(r.status(), StatusCode::OK);
    let r = c
        .post(format!("{base}/api/v1/messages"))
        .header("content-type", "application/json")
        .body(r#"{"topic":"a","payload":"1"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body = r.text().unwrap();
    assert!(!body.contains(TOKEN));
    let preview = |token: Option<&str>| {
        let r = c
            .post(format!("{base}/api/v1/preview"))
            .header("content-type", "application/json")
            .body(r#"{"topic":"a","payload":"1"}"#);
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
        .send()
        .unwrap()
        .status()
    };
    assert_eq!(preview(None), StatusCode::UNAUTHORIZED);
    assert_eq!(preview(Some(TOKEN)), StatusCode::OK);
    let reload = format!("{base}/api/v1/reload");
    assert_eq!(c.post(&reload).send().unwrap().status(), StatusCode::UNAUTHORIZED);
    let r = c.post(&reload).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap(),
        json!({"applied": [], "restart_needed": [], "overridden": []}),
        "nothing changed, the token read again included"
    );
    assert!(!t.log_text().contains(TOKEN), "token in the log");
}

#[test]
fn a_client_over_the_rate_limit_gets_429_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let t = serve(dir.path(), &["--api-rate-limit", "20"]);
    let base = t.api();
    let c = client();
    let mut created = 0;
    let mut limited = None;
    // 60 requests as fast as one client can: the burst of 20 passes, the rest are turned away.
    for i in 0..60 {
        let r = c
            .post(format!("{base}/api/v1/messages"))
            .header("content-type", "application/json")
            .body(json!({"topic": "rate/limited", "payload": i.to_string()}).to_string())
            .send()
            .unwrap();
        match r.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry = r.headers().get("retry-after").cloned();
                let body: Value = r.json().unwrap();
                limited.get_or_insert((retry, body));
            }
            s => panic!("unexpected status {s}"),
        }
    }
    let (retry, body) = limited.expect("no request was limited");
    assert!(retry.is_some(), "429 without Retry-After");
    assert!(
        body["error"].as_str().unwrap().contains("too many requests"),
        "{body}"
    );
    assert!((20..60).contains(&created), "created {created}");
    // Every request that got 201 is stored, none of the limited ones; the query itself may be
    // limited right after the burst, so it retries.
    let stored = loop {
        let (s, v) = get(&c, &format!("{base}/api/v1/topics"));
        if s == StatusCode::OK {
            break v["topics"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["topic"] == "rate/limited")
                .map(|x| x["message_count"].as_u64().unwrap())
                .unwrap_or(0);
        }
        assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(stored, created as u64);
    let metrics = loop {
        let r = c.get(format!("{base}/metrics")).send().unwrap();
        if r.status() == StatusCode::OK {
            break r.text().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(support::metric(&metrics, "tidegate_http_rate_limited_total") >= 1.0);
}

#[test]
fn the_live_stream_carries_mqtt_messages_and_readiness_follows_the_broker() {
    let mut broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("live.db");
    let url = broker.url();
    let t = Tidegate::run_subscribed(&url, dbp.to_str().unwrap(), "live/#", "live", &[], dir.path());
    let base = t.api();
    let c = client();
    assert_eq!(get(&c, &format!("{base}/readyz")).0, StatusCode::OK);

    let stream_client = Client::builder().build().unwrap();
    let mut resp = stream_client
        .get(format!("{base}/api/v1/stream?topic=live/%2B/temp"))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    std::thread::sleep(Duration::from_millis(300));
    broker.publish_lines("live/other/hum", 1, &["55".into()]);
    broker.publish_lines("live/s1/temp", 1, &["21.5".into()]);
    let mut buf = String::new();
    let mut chunk = [0u8; 4096];
    let got = support::wait_for(Duration::from_secs(10), || {
        use std::io::Read;
        let n = resp.read(&mut chunk).ok()?;
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        buf.contains("21.5").then_some(())
    });
    assert!(got.is_some(), "stream did not deliver: {buf}");
    assert!(buf.contains("event: message") && buf.contains("live/s1/temp"));
    assert!(!buf.contains("live/other/hum"), "filter not applied: {buf}");

    broker.stop();
    let down = support::wait_for(Duration::from_secs(15), || {
        let (s, v) = get(&c, &format!("{base}/readyz"));
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some(v)
    })
    .expect("readyz stayed 200 with the broker down");
    assert!(down["reasons"][0].as_str().unwrap().contains("MQTT"), "{down}");
    broker.start_again();
    assert!(
        support::wait_for(Duration::from_secs(40), || (get(&c, &format!("{base}/readyz")).0
            == StatusCode::OK)
            .then_some(()))
        .is_some()
    );
}

/// Takes over `client_id`'s session at the broker on `port` and leaves it subscribed to
/// `none/here` only: the broker kicks tidegate off, tidegate reconnects to a kept session whose
/// subscription is gone — connected, delivering nothing (the silent stall of telegraf#16038).
fn drop_subscription(port: u16, client_id: &str, filter: &str) {
    let out = std::process::Command::new("mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-V",
            "mqttv5",
            "-x",
            "3600",
            "-i",
            client_id,
            "-c",
            "-q",
            "1",
        ])
        .args(["-E", "-t", "none/here", "-U", filter])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_connected_session_that_delivers_nothing_is_resubscribed_with_stale_after() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("stale.db");
    let url = broker.url();
    let c = client();
    let count = |topic: &str| {
        db::count(
            &dbp,
            &format!("SELECT count(*) FROM messages WHERE topic = '{topic}'"),
        )
    };
    let reconnected = |t: &Tidegate| {
        t.wait_log("the broker kept our session", Duration::from_secs(15))
            && support::wait_for(Duration::from_secs(15), || {
                (get(&c, &format!("{}/readyz", t.api())).0 == StatusCode::OK).then_some(())
            })
            .is_some()
    };

    // Without the watchdog the stall lasts: connected, ready, and nothing stored.
    let plain = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "plain/#",
        "stall-plain",
        &[],
        dir.path(),
    );
    drop_subscription(broker.port, "stall-plain", "plain/#");
    assert!(reconnected(&plain), "{}", plain.log_text());
    broker.publish_lines("plain/a", 1, &["lost".into()]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count("plain/a"), 0, "the scenario did not stall");
    assert_eq!(get(&c, &format!("{}/readyz", plain.api())).0, StatusCode::OK);
    drop(plain);

    let t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "st/#",
        "stall",
        &["--stale-after", "2s"],
        dir.path(),
    );
    let base = t.api();
    broker.publish_lines("st/a", 1, &["1".into()]);
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages WHERE topic = 'st/a'",
        1,
        Duration::from_secs(10),
    );
    drop_subscription(broker.port, "stall", "st/#");
    let stale = support::wait_for(Duration::from_secs(15), || {
        let (s, v) = get(&c, &format!("{base}/readyz"));
        (s == StatusCode::SERVICE_UNAVAILABLE && v.to_string().contains("stale")).then_some(v)
    })
    .unwrap_or_else(|| panic!("readyz never said stale:\n{}", t.log_text()));
    assert!(
        stale["reasons"][0]
            .as_str()
            .unwrap()
            .contains("no message for 2s"),
        "{stale}"
    );
    assert!(t.log_text().contains("subscribing again"), "{}", t.log_text());

    // Subscribed again: the next message is stored and the source is ready again.
    broker.publish_lines("st/b", 1, &["2".into()]);
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages WHERE topic = 'st/b'",
        1,
        Duration::from_secs(10),
    );
    assert!(
        support::wait_for(Duration::from_secs(5), || (get(&c, &format!("{base}/readyz")).0
            == StatusCode::OK)
            .then_some(()))
        .is_some(),
        "{}",
        t.log_text()
    );
    assert!(t.log_text().contains("the session delivers again"));
    let metrics = c.get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    assert_eq!(
        support::metric(&metrics, "tidegate_mqtt_stale_total"),
        1.0,
        "{metrics}"
    );
}

#[test]
fn metrics_keep_the_invariant_after_a_run_with_duplicates_and_rejections() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("m.db");
    let url = broker.url();
    let mut t = Tidegate::run_subscribed(
        &url,
        dbp.to_str().unwrap(),
        "m/#",
        "metrics",
        &["--max-payload", "100"],
        dir.path(),
    );
    let base = t.api();
    broker.publish_lines("m/a", 1, &db::seq_lines(0, 500));
    broker.publish_bytes("m/big", &[b'x'; 500], &[]);
    let c = client();
    // A retried forward (same MQTT delivery, marked redelivery) is recognised as a duplicate.
    let line =
        json!({"topic":"m/http","payload":"p","mqtt":{"session":"other","packet_id":7,"redelivery":false}});
    let retry =
        json!({"topic":"m/http","payload":"p","mqtt":{"session":"other","packet_id":7,"redelivery":true}});
    assert_eq!(
        post(&c, &base, "application/json", line.to_string()).1["stored"],
        1
    );
    assert_eq!(
        post(&c, &base, "application/json", retry.to_string()).1["duplicates"],
        1
    );
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages",
        501,
        Duration::from_secs(20),
    );
    let text = support::wait_for(Duration::from_secs(10), || {
        let text = c.get(format!("{base}/metrics")).send().ok()?.text().ok()?;
        (support::metric(&text, "tidegate_messages_committed_total") >= 501.0).then_some(text)
    })
    .unwrap();
    let received = support::metric(&text, "tidegate_messages_received_total");
    let committed = support::metric(&text, "tidegate_messages_committed_total");
    let dups = support::metric(&text, "tidegate_duplicates_suppressed_total");
    let rejected = support::metric(&text, "tidegate_messages_rejected_total");
    let in_flight = support::metric(&text, "tidegate_in_flight_messages");
    assert_eq!(
        (received, committed, dups, rejected, in_flight),
        (503.0, 501.0, 1.0, 1.0, 0.0),
        "{text}"
    );
    assert_eq!(received, committed + dups + rejected + in_flight);
    assert_eq!(support::metric(&text, "tidegate_mqtt_connected"), 1.0);
    assert!(support::metric(&text, "tidegate_messages_acked_total") >= 501.0);
    assert!(
        text.contains("tidegate_http_requests_total{route=\"/api/v1/messages\",status=\"201\"}"),
        "{text}"
    );
    assert!(text.contains("tidegate_commit_seconds_bucket"));
    // One WAL fsync covers one commit or several (`--sqlite-sync full`, the default).
    let fsyncs = support::metric(&text, "tidegate_sqlite_fsync_seconds_count");
    let batches = support::metric(&text, "tidegate_batches_total");
    assert!(
        fsyncs >= 1.0 && fsyncs <= batches,
        "{fsyncs} fsyncs, {batches} batches\n{text}"
    );
    assert!(
        text.contains("tidegate_sqlite_fsync_seconds_bucket{le=\"0.001\"}"),
        "{text}"
    );
    // The standard process figures, read from /proc when scraped.
    assert!(
        text.contains("# TYPE process_cpu_seconds_total counter"),
        "{text}"
    );
    assert!(
        support::metric(&text, "process_cpu_seconds_total") > 0.0,
        "{text}"
    );
    assert!(
        support::metric(&text, "process_resident_memory_bytes") > 1e6,
        "{text}"
    );

    // The same counts as data, in tidegate_stats, once the stop flushed the last minute.
    assert!(t.term().success());
    let c = db::open(&dbp);
    let all: (i64, i64, i64, i64) = c
        .query_row(
            "SELECT sum(received), sum(committed), sum(duplicates), sum(rejected) FROM tidegate_stats WHERE topic = '*'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        all,
        (received as i64, committed as i64, dups as i64, rejected as i64)
    );
    let per_topic: i64 = c
        .query_row(
            "SELECT sum(committed) FROM tidegate_stats WHERE topic = 'm/a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(per_topic, 500);
    let lag: f64 = c
        .query_row(
            "SELECT max(lag_ms_max) FROM tidegate_stats WHERE topic = '*'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(lag > 0.0 && lag < 60_000.0, "lag {lag}");
}

#[test]
fn ingest_answers_503_while_the_store_cannot_write_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let t = serve(dir.path(), &[]);
    let base = t.api();
    let c = client();
    assert_eq!(
        post(&c, &base, "application/json", r#"{"topic":"a","payload":"0"}"#).0,
        StatusCode::CREATED
    );
    let mut locker = rusqlite::Connection::open(dir.path().join("api.db")).unwrap();
    let tx = locker
        .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
        .unwrap();
    let waiting = {
        let base = base.clone();
        std::thread::spawn(move || {
            post(
                &client(),
                &base,
                "application/json",
                r#"{"topic":"a","payload":"1"}"#,
            )
            .0
        })
    };
    let v = support::wait_for(Duration::from_secs(20), || {
        let (s, v) = get(&c, &format!("{base}/readyz"));
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some(v)
    })
    .expect("readyz did not report the store");
    assert!(v["reasons"][0].as_str().unwrap().contains("store"), "{v}");
    let r = c
        .post(format!("{base}/api/v1/messages"))
        .header("content-type", "application/json")
        .body(r#"{"topic":"a","payload":"2"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().get("retry-after").is_some());
    tx.rollback().unwrap();
    drop(locker);
    assert_eq!(
        waiting.join().unwrap(),
        StatusCode::CREATED,
        "the waiting request was not committed"
    );
    assert_eq!(db::payloads(&dir.path().join("api.db"), "a"), ["0", "1"]);
}

#[test]
fn split_deployment_survives_kill9_of_serve_exactly_once() {
    const TOTAL: usize = 10_000;
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("split.db");
    let port = support::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut server = Tidegate::start(
        &["serve", "--db", dbp.to_str().unwrap(), "--listen", &listen],
        dir.path(),
    );
    let api = server.api();
    let url = broker.url();
    let sub = subscribe(&url, "sp/#", &api, "split-sub", &[], dir.path());
    // serve is down while messages arrive: the subscriber must hold them (no ack) and retry.
    server.kill9();
    broker.publish_lines("sp/x", 1, &db::seq_lines(0, 2000));
    assert!(
        sub.wait_log("cannot write to the store", Duration::from_secs(15)),
        "{}",
        sub.log_text()
    );
    server.start_again();
    // Then crashes of serve in the middle of a stream.
    let port_n = broker.port;
    let publisher =
        std::thread::spawn(move || Mosquitto::publish_lines_on(port_n, "sp/x", &db::seq_lines(2000, TOTAL)));
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        server.restart();
    }
    publisher.join().unwrap();
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages",
        TOTAL as i64,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (missing, dup) = db::exactly_once(&dbp, "sp/x", TOTAL);
    assert!(missing.is_empty(), "{} missing", missing.len());
    assert!(
        dup.is_empty(),
        "{} duplicated: {:?}",
        dup.len(),
        &dup[..dup.len().min(10)]
    );
}

#[test]
fn an_api_token_is_rotated_by_reloads_without_a_restart_or_a_lost_message() {
    const OLD: &str = "old-token-0123456789abcdef";
    const NEW: &str = "new-token-9876543210fedcba";
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("rotate.db");
    let (serve_file, sub_file) = (dir.path().join("serve.token"), dir.path().join("sub.token"));
    std::fs::write(&serve_file, format!("{OLD}\n")).unwrap();
    std::fs::write(&sub_file, format!("{OLD}\n")).unwrap();
    let server = Tidegate::start(
        &[
            "serve",
            "--db",
            dbp.to_str().unwrap(),
            "--api-token-file",
            serve_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    let api = server.api();
    let url = broker.url();
    let sub = subscribe(
        &url,
        "rot/#",
        &api,
        "rotate-sub",
        &["--api-token-file", sub_file.to_str().unwrap()],
        dir.path(),
    );
    let c = client();
    let status = |token: &str| {
        c.get(format!("{api}/api/v1/topics"))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
    };
    let stored = |n: i64| {
        let got = db::wait_count(&dbp, "SELECT count(*) FROM messages", n, Duration::from_secs(30));
        assert_eq!(got, n, "{}\n{}", sub.log_text(), server.log_text());
    };
    broker.publish_lines("rot/x", 1, &db::seq_lines(0, 1000));
    stored(1000);
    assert_eq!(status(NEW), StatusCode::UNAUTHORIZED);

    // 1. serve accepts both.
    std::fs::write(&serve_file, format!("{NEW}\n{OLD}\n")).unwrap();
    server.hangup();
    assert!(
        server.wait_log("API tokens read again: 2 accepted", Duration::from_secs(10)),
        "{}",
        server.log_text()
    );
    assert_eq!(status(OLD), StatusCode::OK);
    assert_eq!(status(NEW), StatusCode::OK);

    // 2. subscribe sends the new one, on its running MQTT session.
    std::fs::write(&sub_file, format!("{NEW}\n")).unwrap();
    sub.hangup();
    assert!(
        sub.wait_log("a new token for the API at", Duration::from_secs(10)),
        "{}",
        sub.log_text()
    );
    broker.publish_lines("rot/x", 1, &db::seq_lines(1000, 2000));
    stored(2000);

    // 3. serve drops the old one.
    std::fs::write(&serve_file, format!("{NEW}\n")).unwrap();
    let r = c
        .post(format!("{api}/api/v1/reload"))
        .bearer_auth(NEW)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().unwrap(),
        json!({"applied": ["API tokens read again: 1 accepted"], "restart_needed": [], "overridden": []})
    );
    assert_eq!(status(OLD), StatusCode::UNAUTHORIZED);
    assert_eq!(status(NEW), StatusCode::OK);
    broker.publish_lines("rot/x", 1, &db::seq_lines(2000, 3000));
    stored(3000);

    assert!(
        !sub.log_text().contains("answered 401"),
        "subscribe was refused on the way:\n{}",
        sub.log_text()
    );

    // 4. A subscriber left with the old token is refused, says why, and keeps what it holds
    // unacknowledged until its token is put right.
    std::fs::write(&sub_file, format!("{OLD}\n")).unwrap();
    sub.hangup();
    let swaps = || sub.log_text().matches("a new token for the API at").count();
    assert!(support::wait_for(Duration::from_secs(10), || (swaps() == 2).then_some(())).is_some());
    broker.publish_lines("rot/x", 1, &db::seq_lines(3000, 3100));
    assert!(
        sub.wait_log("the token sent is not one it accepts", Duration::from_secs(15)),
        "{}",
        sub.log_text()
    );
    assert_eq!(db::count(&dbp, "SELECT count(*) FROM messages"), 3000);
    std::fs::write(&sub_file, format!("{NEW}\n")).unwrap();
    sub.hangup();
    stored(3100);

    let (missing, dup) = db::exactly_once(&dbp, "rot/x", 3100);
    assert!(missing.is_empty() && dup.is_empty(), "{missing:?} {dup:?}");
    for log in [server.log_text(), sub.log_text()] {
        assert!(
            !log.contains(OLD) && !log.contains(NEW),
            "a token in the log:\n{log}"
        );
    }
}

#[test]
fn a_reload_never_drops_the_token_of_an_api_other_machines_reach() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tidegate.toml");
    std::fs::write(
        &file,
        format!("listen = \"0.0.0.0:0\"\napi_token = \"{TOKEN}\"\n"),
    )
    .unwrap();
    let t = serve(dir.path(), &["--config", file.to_str().unwrap()]);
    let base = t.api().replace("0.0.0.0", "127.0.0.1");
    // Valid on its own (loopback needs no token), but the address changes only at a restart.
    std::fs::write(&file, "listen = \"127.0.0.1:0\"\n").unwrap();
    let c = client();
    let r = c
        .post(format!("{base}/api/v1/reload"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = r.json().unwrap();
    assert_eq!(report["applied"], json!([]), "{report}");
    let restart = report["restart_needed"].to_string();
    assert!(
        restart.contains("api-token") && restart.contains("listen"),
        "{report}"
    );
    let topics = format!("{base}/api/v1/topics");
    assert_eq!(c.get(&topics).send().unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        c.get(&topics).bearer_auth(TOKEN).send().unwrap().status(),
        StatusCode::OK
    );
}

/// A `serve` over HTTPS with `certs`' server certificate and the test token, and its base URL
/// by the name the certificate holds (`https://localhost:PORT`).
fn serve_https(db: &std::path::Path, certs: &Certs, dir: &std::path::Path) -> (Tidegate, String) {
    let server = Tidegate::start(
        &[
            "serve",
            "--db",
            db.to_str().unwrap(),
            "--api-tls-cert",
            certs.server_pem.to_str().unwrap(),
            "--api-tls-key",
            certs.server_key.to_str().unwrap(),
            "--api-token",
            TOKEN,
        ],
        dir,
    );
    let api = server.api();
    assert!(api.starts_with("https://127.0.0.1:"), "{api}");
    let port = api.rsplit(':').next().unwrap().to_string();
    (server, format!("https://localhost:{port}"))
}

/// HTTPS end to end. `serve` with a certificate from a private CA answers only over TLS: a
/// client trusting the CA gets answers, one that does not refuses the certificate, plain HTTP to
/// the port gets no answer. A `subscribe` trusting the CA (`--api-ca-file`) forwards a stream
/// through it exactly once; one trusting another CA stores nothing, says what to do, and never
/// shows the token.
#[test]
fn the_api_serves_https_and_subscribe_forwards_through_it_trusting_a_private_ca() {
    const TOTAL: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::write(dir.path(), "tidegate test API CA");
    let dbp = dir.path().join("tls.db");
    let (_server, base) = serve_https(&dbp, &certs, dir.path());
    let port = base.rsplit(':').next().unwrap().to_string();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&certs.ca_pem).unwrap()).unwrap();
    let trusting = Client::builder()
        .add_root_certificate(ca)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = trusting
        .post(format!("{base}/api/v1/messages"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"topic":"tls/direct","payload":{"t":1.5}}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text());
    assert_eq!(get(&trusting, &format!("{base}/healthz")).0, StatusCode::OK);

    let untrusting = client().get(format!("{base}/healthz")).send().unwrap_err();
    assert!(
        format!("{untrusting:?}").contains("UnknownIssuer"),
        "a client without the CA must refuse the certificate: {untrusting:?}"
    );
    let plain = client().get(format!("http://127.0.0.1:{port}/healthz")).send();
    assert!(
        plain.is_err(),
        "plain HTTP got an answer from the HTTPS port: {plain:?}"
    );

    let broker = Mosquitto::start(BrokerOptions::default());
    let url = broker.url();
    let subscribe = |topic: &str, ca: &std::path::Path, id: &str| {
        vec![
            "subscribe".to_string(),
            "--broker".into(),
            url.clone(),
            "--topic".into(),
            topic.into(),
            "--api".into(),
            base.clone(),
            "--api-ca-file".into(),
            ca.to_str().unwrap().into(),
            "--api-token".into(),
            TOKEN.into(),
            "--client-id".into(),
            id.into(),
        ]
    };
    let args = subscribe("tls/#", &certs.ca_pem, "tls-sub");
    let _sub = Tidegate::subscribed(&args.iter().map(String::as_str).collect::<Vec<_>>(), dir.path());
    broker.publish_lines("tls/x", 1, &db::seq_lines(0, TOTAL));
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages WHERE topic = 'tls/x'",
        TOTAL as i64,
        Duration::from_secs(60),
    );
    let (missing, dup) = db::exactly_once(&dbp, "tls/x", TOTAL);
    assert!(
        missing.is_empty() && dup.is_empty(),
        "{} missing, {} duplicated",
        missing.len(),
        dup.len()
    );

    // The load tool reaches the API the same way, following its live stream over TLS.
    let ca = certs.ca_pem.to_str().unwrap();
    let bench = [
        "bench",
        "--json",
        "--messages",
        "500",
        "--broker",
        &url,
        "--topic",
        "tls/bench",
        "--api",
        &base,
        "--api-ca-file",
        ca,
        "--api-token",
        TOKEN,
    ];
    let (status, out) = support::tidegate::run_to_end(&bench, &[], dir.path());
    assert!(status.success(), "{out}");
    let r: Value = serde_json::from_str(out.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(
        [&r["received"], &r["lost"], &r["duplicates"]],
        [&json!(500), &json!(0), &json!(0)],
        "{r}"
    );

    let args = subscribe("wrong/#", &certs.other_ca_pem, "tls-wrong");
    let wrong = Tidegate::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), dir.path());
    broker.publish_lines("wrong/x", 1, &db::seq_lines(0, 10));
    assert!(
        wrong.wait_log("--api-ca-file", Duration::from_secs(30)),
        "no hint to trust the API's CA:\n{}",
        wrong.log_text()
    );
    let log = wrong.log_text();
    assert!(log.contains("certificate"), "{log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        db::count(&dbp, "SELECT count(*) FROM messages WHERE topic = 'wrong/x'"),
        0,
        "a subscriber that cannot trust the API stored something"
    );
}

/// A renewed certificate is served after a reload, from the same files, without a restart; a
/// reload whose files do not load is refused naming the setting, and the running certificate
/// stays.
#[test]
fn a_reload_serves_a_renewed_api_certificate_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let first = Certs::write(dir.path(), "tidegate test API CA");
    let renewed_dir = tempfile::tempdir().unwrap();
    let renewed = Certs::write(renewed_dir.path(), "a renewal CA");
    let (server, base) = serve_https(&dir.path().join("renew.db"), &first, dir.path());
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A client trusting both CAs; a fresh one for each look, so each makes a new handshake.
    let trusting = || {
        let mut c = Client::builder().tls_info(true);
        for ca in [&first.ca_pem, &renewed.ca_pem] {
            c = c.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
        }
        c.build().unwrap()
    };
    let served = || {
        let r = trusting().get(format!("{base}/healthz")).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
        info.peer_certificate().unwrap().to_vec()
    };
    let der = |pem: &std::path::Path| {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_file(pem).unwrap().to_vec()
    };
    let reload = || {
        let r = trusting()
            .post(format!("{base}/api/v1/reload"))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        (r.status(), r.json::<Value>().unwrap())
    };
    assert_eq!(served(), der(&first.server_pem));

    std::fs::copy(&renewed.server_pem, &first.server_pem).unwrap();
    std::fs::copy(&renewed.server_key, &first.server_key).unwrap();
    let (status, body) = reload();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["applied"].to_string().contains("API certificate read again"),
        "{body}"
    );
    assert_eq!(
        served(),
        der(&renewed.server_pem),
        "the renewed certificate is not served"
    );

    // A key that is not the certificate's: refused, the renewed certificate still served.
    std::fs::copy(&renewed.client_key, &first.server_key).unwrap();
    let (status, body) = reload();
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("api-tls-key"), "{body}");
    assert_eq!(served(), der(&renewed.server_pem));
    let log = server.log_text();
    let key_line = std::fs::read_to_string(&renewed.client_key).unwrap();
    let key_line = key_line.lines().nth(1).unwrap();
    assert!(!log.contains(key_line), "a key's contents in the log");
}

/// A `subscribe` serves nothing unless given `--listen`; then liveness, readiness (down while
/// the API it posts to cannot be reached, up once it answers) and its metrics, no other route.
#[test]
fn a_subscribe_given_listen_serves_health_and_metrics_only() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("health.db");
    let (url, api_port) = (broker.url(), support::free_port());
    let api = format!("http://127.0.0.1:{api_port}");
    let sub = subscribe(
        &url,
        "h/#",
        &api,
        "health-sub",
        &["--listen", "127.0.0.1:0"],
        dir.path(),
    );
    let base = sub.api();
    let c = client();
    assert_eq!(get(&c, &format!("{base}/healthz")).0, StatusCode::OK);
    let readyz = || get(&c, &format!("{base}/readyz"));

    broker.publish_lines("h/x", 1, &db::seq_lines(0, 10));
    let down = support::wait_for(Duration::from_secs(20), || {
        let (s, v) = readyz();
        (s == StatusCode::SERVICE_UNAVAILABLE).then_some(v)
    })
    .unwrap_or_else(|| panic!("never not ready with its API down:\n{}", sub.log_text()));
    assert!(
        down["reasons"][0]
            .as_str()
            .unwrap()
            .contains("store not writable"),
        "{down}"
    );

    let _server = Tidegate::start(
        &[
            "serve",
            "--db",
            dbp.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{api_port}"),
        ],
        dir.path(),
    );
    db::wait_count(&dbp, "SELECT count(*) FROM messages", 10, Duration::from_secs(60));
    assert!(
        support::wait_for(Duration::from_secs(20), || (readyz().0 == StatusCode::OK)
            .then_some(()))
        .is_some(),
        "not ready again once its API answers: {:?}",
        readyz()
    );
    // The rows are in the database a moment before the subscriber reads the API's answer and
    // counts them as committed.
    let metrics = || c.get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    let committed = |text: &str| support::metric(text, "tidegate_messages_committed_total");
    assert!(
        support::wait_for(Duration::from_secs(20), || (committed(&metrics()) == 10.0)
            .then_some(()))
        .is_some(),
        "{}",
        metrics()
    );

    assert_eq!(get(&c, &format!("{base}/api/v1/topics")).0, StatusCode::NOT_FOUND);
    let (_, spec) = get(&c, &format!("{base}/api/v1/openapi.json"));
    let mut paths: Vec<&String> = spec["paths"].as_object().unwrap().keys().collect();
    paths.sort();
    assert_eq!(paths, ["/healthz", "/metrics", "/readyz"]);
}

/// The record of a client id's topic filters, which `tidegate subscribe` keeps here: written,
/// read back (a client id with a slash included), replaced, and refused with a clear error when
/// it is not one MQTT allows.
#[test]
fn subscription_records_are_kept_per_client_id_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = serve(dir.path(), &[]);
    let base = t.api();
    let c = client();
    let url = |id: &str| format!("{base}/api/v1/subscriptions/{}", urlencode(id));
    let put = |id: &str, body: &str| {
        let r = c
            .put(url(id))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        let s = r.status();
        (s, r.json().unwrap_or(Value::Null))
    };
    assert_eq!(
        get(&c, &url("site/sub-1")),
        (
            StatusCode::OK,
            json!({"client_id": "site/sub-1", "filters": null})
        ),
        "no record yet"
    );
    let (s, _) = put("site/sub-1", r#"{"filters": ["a/#", "$share/g/b/+"]}"#);
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = put("sub-2", r#"{"filters": ["c"]}"#);
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&c, &url("site/sub-1")).1,
        json!({"client_id": "site/sub-1", "filters": ["a/#", "$share/g/b/+"]})
    );
    let (s, _) = put("site/sub-1", r#"{"filters": ["d/#"]}"#);
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        get(&c, &url("site/sub-1")).1["filters"],
        json!(["d/#"]),
        "replaced"
    );
    assert_eq!(
        get(&c, &url("sub-2")).1["filters"],
        json!(["c"]),
        "each client id its own"
    );

    let (s, e) = put("sub-2", "not json");
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(e["error"].as_str().unwrap().contains("\"filters\""), "{e}");
    let (s, e) = put("sub-2", r#"{"filters": ["x"], "extra": 1}"#);
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    assert!(e["error"].as_str().unwrap().contains("extra"), "{e}");
    let (s, e) = put("sub-2", r#"{"filters": ["ok", ""]}"#);
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e["detail"]["index"], 1, "{e}");
    assert!(e["error"].as_str().unwrap().contains("empty"), "{e}");
    let (s, e) = put("sub-2", r#"{"filters": ["a\u0000b"]}"#);
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(e["error"].as_str().unwrap().contains("NUL"), "{e}");
    assert_eq!(
        get(&c, &url("sub-2")).1["filters"],
        json!(["c"]),
        "nothing refused was kept"
    );

    let spec = get(&c, &format!("{base}/api/v1/openapi.json")).1;
    let path = &spec["paths"]["/api/v1/subscriptions/{client_id}"];
    assert!(path["get"].is_object() && path["put"].is_object(), "{path}");
}

/// `tidegate subscribe` has no database: the tidegate it forwards to keeps its record of topic
/// filters, so a `subscribe` restarted with another `--topic` on a session the broker kept ends
/// the filter it dropped (telegraf#9703), and what was queued on it meanwhile is still stored.
#[test]
fn a_subscribe_restarted_with_another_topic_ends_the_dropped_filter_through_the_api() {
    let broker = Mosquitto::start(BrokerOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let dbp = dir.path().join("api.db");
    let server = serve(dir.path(), &[]);
    let api = server.api();
    let url = broker.url();
    let start = |topic: &str| subscribe(&url, topic, &api, "moved-sub", &[], dir.path());
    let mut first = start("old/#");
    broker.publish_lines("old/a", 1, &db::seq_lines(0, 5));
    db::wait_count(&dbp, "SELECT count(*) FROM messages", 5, Duration::from_secs(15));
    assert!(first.term().success());
    let c = client();
    assert_eq!(
        get(&c, &format!("{api}/api/v1/subscriptions/moved-sub")).1["filters"],
        json!(["old/#"]),
        "recorded through the API:\n{}",
        first.log_text()
    );
    // Queued for the kept session while nothing is connected.
    broker.publish_lines("old/a", 1, &db::seq_lines(5, 10));

    let mut second = start("new/#");
    let log = second.log_text();
    assert!(
        log.contains("kept our session") && log.contains("unsubscribing them") && log.contains("old/#"),
        "{log}"
    );
    broker.publish_lines("old/a", 1, &db::seq_lines(10, 15));
    broker.publish_lines("new/a", 1, &db::seq_lines(0, 20));
    db::wait_count(
        &dbp,
        "SELECT count(*) FROM messages WHERE topic = 'new/a'",
        20,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        db::payloads(&dbp, "old/a"),
        db::seq_lines(0, 10),
        "what was queued on the dropped filter is stored, and nothing after its end:\n{}",
        second.log_text()
    );
    assert_eq!(
        get(&c, &format!("{api}/api/v1/subscriptions/moved-sub")).1["filters"],
        json!(["new/#"])
    );
    assert!(!second.log_text().contains("none of --topic matches"));
    assert!(second.term().success());
}
