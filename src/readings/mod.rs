//! Turns payloads into chartable readings: one row per numeric (or text) field of a JSON
//! payload, with a device and an event time. Pure and total: any payload yields readings, a
//! recorded reason, or nothing (not JSON) — never a panic. It must never do I/O; the stores
//! write what it returns in the same transaction as the message.

mod device;
mod event_time;
mod flatten;
pub mod mapping;
pub mod preview;

use chrono::{DateTime, Utc};

pub use device::DeviceRule;
pub use event_time::{parse_time, TimeSource};
pub use flatten::{flatten, FlattenError, Value};

/// How readings are extracted.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingsConfig {
    pub enabled: bool,
    pub max_depth: usize,
    pub max_fields: usize,
    pub device: DeviceRule,
    /// Payload fields tried in order for the event time.
    pub time_fields: Vec<String>,
    /// The zone of payload times written without an offset (`--time-zone`).
    pub time_zone: chrono_tz::Tz,
    /// Wide tables filled from JSON paths (`[[mapping]]` in the config file).
    pub mappings: Vec<std::sync::Arc<mapping::Mapping>>,
    /// The part of a payload readings come from when it has it (`--readings-root`).
    pub root: Option<String>,
}

impl Default for ReadingsConfig {
    fn default() -> Self {
        ReadingsConfig {
            enabled: true,
            max_depth: 8,
            max_fields: 256,
            device: DeviceRule::default(),
            time_fields: vec!["ts".into(), "timestamp".into(), "time".into()],
            time_zone: chrono_tz::Tz::UTC,
            mappings: Vec::new(),
            root: None,
        }
    }
}

/// One field of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub field: String,
    pub value: Value,
}

/// What a message yields besides its raw row.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// The time the readings are charted at (UTC): the payload's event time when it is
    /// plausible, else the receive time.
    pub ts: DateTime<Utc>,
    pub ts_source: TimeSource,
    pub device: Option<String>,
    pub readings: Vec<Reading>,
    /// Why a JSON payload gave no readings, or why its event time was not used.
    pub note: Option<String>,
    /// Rows for the mappings whose filter matches the topic, or why a value did not fit.
    pub mapped: Vec<(
        std::sync::Arc<mapping::Mapping>,
        Result<mapping::MappedRow, String>,
    )>,
}

/// Extracts readings, and the rows of the mappings whose filter matches `topic`, from one
/// message. `None` when the payload is not JSON, or when readings are off and no mapping matches:
/// `readings = off` turns off the readings table, not the wide tables a user configured.
pub fn derive(
    cfg: &ReadingsConfig,
    topic: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> Option<Derived> {
    if payload.is_empty() || !(cfg.enabled || cfg.mappings.iter().any(|m| m.matches(topic))) {
        return None;
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    // Cheap pre-check: only JSON objects, arrays, numbers, strings, booleans are candidates.
    if !matches!(first, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f') {
        return None;
    }
    let mut json: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            // JSON that serde_json cannot hold: say why there are no readings. Anything else
            // is not JSON, and a raw message needs no note.
            let why = e.to_string();
            let note = if why.contains("recursion limit") {
                "JSON nested too deeply to read; stored raw only"
            } else if why.contains("number out of range") {
                "JSON with a number beyond a 64-bit float (about ±1.8e308); stored raw only"
            } else {
                return None;
            };
            return Some(Derived {
                ts: received_at,
                ts_source: TimeSource::Received,
                device: device::from_topic(&cfg.device, topic),
                readings: Vec::new(),
                note: Some(note.into()),
                mapped: Vec::new(),
            });
        }
    };
    let mut note = None;
    let (ts, ts_source) = match event_time::find(&json, &cfg.time_fields, cfg.time_zone) {
        Some(Ok(t)) => match event_time::plausible(t, received_at) {
            Ok(t) => (t, TimeSource::Payload),
            Err(why) => {
                note = Some(why);
                (received_at, TimeSource::Suspect)
            }
        },
        Some(Err(why)) => {
            note = Some(why);
            (received_at, TimeSource::Suspect)
        }
        None => (received_at, TimeSource::Received),
    };
    let device = device::find(&cfg.device, topic, &json);
    // Without a mapping for this topic the payload is not needed after flattening, which then
    // takes it apart instead of copying its names and text.
    let mappings: Vec<_> = cfg.mappings.iter().filter(|m| m.matches(topic)).collect();
    let kept = (!mappings.is_empty()).then(|| json.clone());
    // Readings from the configured part of the payload when it has one; its names start there,
    // and the time and device fields, found in the whole payload, are not in it.
    let (json, whole) = match cfg.root.as_deref().and_then(|p| flatten::take(&mut json, p)) {
        Some(part) => (part, false),
        None => (json, true),
    };
    let skip = |k: &str| {
        whole
            && (cfg.time_fields.iter().any(|f| f == k)
                || match &cfg.device {
                    DeviceRule::Field(f) => f == k,
                    DeviceRule::Default => k == "device" || k == "device_id",
                    DeviceRule::Topic(_) => false,
                })
    };
    let mut readings = match flatten(json, cfg.max_depth, cfg.max_fields, skip) {
        Ok(r) => r,
        Err(e) => {
            note = Some(format!("{e}; stored raw only"));
            Vec::new()
        }
    };
    // Time and device fields named by a dotted path are nested: flattening reached them.
    let nested: Vec<&str> = (cfg.time_fields.iter().map(String::as_str))
        .chain(cfg.device.payload_field())
        .filter(|f| whole && f.contains('.'))
        .collect();
    if !nested.is_empty() {
        readings.retain(|r| !nested.iter().any(|n| flatten::within(&r.field, n)));
    }
    let mapped = kept.map_or_else(Vec::new, |json| {
        mappings
            .into_iter()
            .map(|m| (m.clone(), mapping::apply(m, &json, &readings, cfg.time_zone)))
            .collect()
    });
    Some(Derived {
        ts,
        ts_source,
        device,
        readings: if cfg.enabled { readings } else { Vec::new() },
        // The notes explain readings (`reading_notes`); with none there is nothing to explain.
        note: note.filter(|_| cfg.enabled),
        mapped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-11-25T10:00:30Z".parse().unwrap()
    }

    #[test]
    fn the_sensor_example() {
        let p = br#"{"device":"s3","temp":21.4,"hum":55,"ts":"2026-11-25T10:00:00Z"}"#;
        let d = derive(&ReadingsConfig::default(), "sensors/s3/telemetry", p, now()).unwrap();
        assert_eq!(d.device.as_deref(), Some("s3"));
        assert_eq!(d.ts, "2026-11-25T10:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert_eq!(d.ts_source, TimeSource::Payload);
        let fields: Vec<(&str, &Value)> = d.readings.iter().map(|r| (r.field.as_str(), &r.value)).collect();
        assert_eq!(
            fields,
            [("hum", &Value::Number(55.0)), ("temp", &Value::Number(21.4))]
        );
    }

    #[test]
    fn non_json_gives_nothing_and_a_bare_number_gives_value() {
        let cfg = ReadingsConfig::default();
        assert!(derive(&cfg, "t", b"hello", now()).is_none());
        assert!(derive(&cfg, "t", b"", now()).is_none());
        let d = derive(&cfg, "t", b"21.5", now()).unwrap();
        assert_eq!(
            d.readings,
            [Reading {
                field: "value".into(),
                value: Value::Number(21.5)
            }]
        );
        let d = derive(&cfg, "t", b"true", now()).unwrap();
        assert_eq!(d.readings[0].value, Value::Number(1.0));
    }

    #[test]
    fn implausible_event_time_is_flagged_not_trusted() {
        let d = derive(
            &ReadingsConfig::default(),
            "t",
            br#"{"v":1,"ts":"2099-01-01T00:00:00Z"}"#,
            now(),
        )
        .unwrap();
        assert_eq!((d.ts, d.ts_source), (now(), TimeSource::Suspect));
        assert!(d.note.unwrap().contains("future"));
    }

    fn fields(d: &Derived) -> Vec<&str> {
        d.readings.iter().map(|r| r.field.as_str()).collect()
    }

    #[test]
    fn the_fields_naming_the_device_and_time_are_not_readings_under_each_rule() {
        let p = br#"{"device":"d1","device_id":"d2","id":"d3","ts":1795600800,"v":1}"#;
        let by_default = derive(&ReadingsConfig::default(), "a/b", p, now()).unwrap();
        assert_eq!(fields(&by_default), ["id", "v"]);
        assert_eq!(by_default.device.as_deref(), Some("d1"));
        let field = ReadingsConfig {
            device: DeviceRule::parse("payload.id").unwrap(),
            ..Default::default()
        };
        let by_field = derive(&field, "a/b", p, now()).unwrap();
        assert_eq!(fields(&by_field), ["device", "device_id", "v"]);
        assert_eq!(by_field.device.as_deref(), Some("d3"));
        let topic = ReadingsConfig {
            device: DeviceRule::parse("a/{device}").unwrap(),
            ..Default::default()
        };
        let by_topic = derive(&topic, "a/b", p, now()).unwrap();
        assert_eq!(fields(&by_topic), ["device", "device_id", "id", "v"]);
        assert_eq!(by_topic.device.as_deref(), Some("b"));
    }

    #[test]
    fn a_mapping_for_the_topic_sees_the_whole_payload_and_the_readings_stay_the_same() {
        let spec: mapping::MappingSpec =
            toml::from_str("filter = \"s/+\"\ntable = \"wide\"\n[columns]\nnested = \"$.a.b\"\n").unwrap();
        let cfg = ReadingsConfig {
            mappings: vec![std::sync::Arc::new(mapping::Mapping::from_spec(&spec).unwrap())],
            ..Default::default()
        };
        let p = br#"{"a":{"b":2.5},"s":"on"}"#;
        let mapped = derive(&cfg, "s/x", p, now()).unwrap();
        let unmapped = derive(&cfg, "other", p, now()).unwrap();
        assert_eq!(mapped.readings, unmapped.readings);
        assert_eq!(fields(&mapped), ["a.b", "s"]);
        assert!(unmapped.mapped.is_empty());
        let [(m, Ok(row))] = &mapped.mapped[..] else {
            panic!("one mapped row: {:?}", mapped.mapped)
        };
        assert_eq!(m.table.as_str(), "wide");
        assert_eq!(row.values.len(), 1);
        assert_eq!(row.values[0].1, mapping::SqlValue::Real(2.5));
    }

    #[test]
    fn deep_json_is_noted() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let d = derive(&ReadingsConfig::default(), "t", deep.as_bytes(), now()).unwrap();
        assert!(d.readings.is_empty() && d.note.is_some());
        let nine = format!("{}1{}", "{\"a\":".repeat(9), "}".repeat(9));
        let d = derive(&ReadingsConfig::default(), "t", nine.as_bytes(), now()).unwrap();
        assert!(d.readings.is_empty() && d.note.unwrap().contains("deeper"));
    }

    #[test]
    fn time_and_device_fields_can_be_nested_and_are_not_readings() {
        let cfg = ReadingsConfig {
            time_fields: vec!["params.ts".into()],
            device: DeviceRule::parse("payload.src.id").unwrap(),
            ..Default::default()
        };
        let payload = br#"{"src":{"id":"plug-1"},"params":{"ts":1795600800,"power":12.5}}"#;
        let d = derive(&cfg, "t", payload, now()).unwrap();
        assert_eq!(d.ts_source, TimeSource::Payload, "{:?}", d.note);
        assert_eq!(d.ts.timestamp(), 1_795_600_800);
        assert_eq!(d.device.as_deref(), Some("plug-1"));
        let fields: Vec<&str> = d.readings.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["params.power"]);
    }

    #[test]
    fn readings_come_from_the_root_when_the_payload_has_it() {
        let cfg = ReadingsConfig {
            root: Some("up.decoded".into()),
            time_fields: vec!["received_at".into()],
            device: DeviceRule::parse("payload.ids.device_id").unwrap(),
            ..Default::default()
        };
        let uplink = br#"{"ids":{"device_id":"n1"},"received_at":"2026-11-25T10:00:00Z",
                          "up":{"f_cnt":7,"decoded":{"temp":21.5,"ts":3,"device":"x"}}}"#;
        let d = derive(&cfg, "t", uplink, now()).unwrap();
        let got: Vec<(&str, &Value)> = d.readings.iter().map(|r| (r.field.as_str(), &r.value)).collect();
        assert_eq!(
            got,
            [
                ("device", &Value::Text("x".into())),
                ("temp", &Value::Number(21.5)),
                ("ts", &Value::Number(3.0))
            ],
            "only the root's fields, named from it, none skipped"
        );
        assert_eq!(d.device.as_deref(), Some("n1"));
        assert_eq!(d.ts_source, TimeSource::Payload);
        // A payload without the root: readings as usual, the time field skipped.
        let d = derive(
            &cfg,
            "t",
            br#"{"temp":20,"received_at":"2026-11-25T10:00:00Z"}"#,
            now(),
        )
        .unwrap();
        let fields: Vec<&str> = d.readings.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, ["temp"]);
    }

    #[test]
    fn a_number_beyond_a_float_is_noted_not_called_not_json() {
        let d = derive(
            &ReadingsConfig::default(),
            "t",
            br#"{"temp":21.5,"big":1e400}"#,
            now(),
        )
        .expect("JSON, though unreadable, is noted");
        assert!(d.readings.is_empty(), "{:?}", d.readings);
        assert!(d.note.unwrap().contains("64-bit float"));
        assert!(derive(&ReadingsConfig::default(), "t", b"{temp: 1}", now()).is_none());
    }
}
