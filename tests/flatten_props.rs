//! Property: any JSON value, any bytes, either yield readings or a recorded reason (or nothing
//! for non-JSON) — never a panic, and never more fields than the limit.

use proptest::prelude::*;
use tidegate::readings::{derive, ReadingsConfig};

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        any::<i64>().prop_map(|i| serde_json::json!(i)),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(12, 200, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::hash_map(".{0,6}", inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn any_json_gives_readings_or_a_reason(v in json(), depth in 1usize..10, fields in 1usize..50) {
        let cfg = ReadingsConfig { max_depth: depth, max_fields: fields, ..Default::default() };
        let payload = serde_json::to_vec(&v).unwrap();
        let now = chrono::Utc::now();
        if let Some(d) = derive(&cfg, "t", &payload, now) {
            prop_assert!(d.readings.len() <= fields);
            prop_assert!(!d.readings.is_empty() || d.note.is_some() || matches!(v, serde_json::Value::Null) || is_empty_container(&v) || only_skipped(&v));
        }
    }

    #[test]
    fn any_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = derive(&ReadingsConfig::default(), "t", &bytes, chrono::Utc::now());
    }
}

fn is_empty_container(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Array(a) => a.iter().all(is_empty_container),
        serde_json::Value::Object(o) => o.values().all(is_empty_container),
        serde_json::Value::Null => true,
        _ => false,
    }
}

/// Objects whose only non-null fields are the time or device fields (used, not read).
fn only_skipped(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(o) => o.iter().all(|(k, v)| {
            ["ts", "timestamp", "time", "device", "device_id"].contains(&k.as_str()) || is_empty_container(v)
        }),
        _ => false,
    }
}
