//! Turns payloads into chartable readings: one row per numeric (or text) field of a JSON
//! payload, with a device and an event time. Pure and total: any payload yields readings, a
//! recorded reason, or nothing (not JSON) — never a panic. It must never do I/O; the stores
//! write what it returns in the same transaction as the message.

mod device;
mod event_time;
mod flatten;

use chrono::{DateTime, Utc};

pub use device::DeviceRule;
pub use event_time::{parse_time, TimeSource};
pub use flatten::{flatten, FlattenError, Value};

/// How readings are extracted.
#[derive(Debug, Clone)]
pub struct ReadingsConfig {
    pub enabled: bool,
    pub max_depth: usize,
    pub max_fields: usize,
    pub device: DeviceRule,
    /// Payload fields tried in order for the event time.
    pub time_fields: Vec<String>,
}

impl Default for ReadingsConfig {
    fn default() -> Self {
        ReadingsConfig {
            enabled: true,
            max_depth: 8,
            max_fields: 256,
            device: DeviceRule::default(),
            time_fields: vec!["ts".into(), "timestamp".into(), "time".into()],
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
}

/// Extracts readings from one message. `None` when readings are off or the payload is not JSON.
pub fn derive(
    cfg: &ReadingsConfig,
    topic: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
) -> Option<Derived> {
    if !cfg.enabled || payload.is_empty() {
        return None;
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    // Cheap pre-check: only JSON objects, arrays, numbers, strings, booleans are candidates.
    if !matches!(first, b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f') {
        return None;
    }
    let json: serde_json::Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) if e.to_string().contains("recursion limit") => {
            return Some(Derived {
                ts: received_at,
                ts_source: TimeSource::Received,
                device: device::from_topic(&cfg.device, topic),
                readings: Vec::new(),
                note: Some("JSON nested too deeply to read; stored raw only".into()),
            })
        }
        Err(_) => return None,
    };
    let mut note = None;
    let (ts, ts_source) = match event_time::find(&json, &cfg.time_fields) {
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
    let mut skip: Vec<&str> = cfg.time_fields.iter().map(String::as_str).collect();
    match &cfg.device {
        DeviceRule::Field(f) => skip.push(f),
        DeviceRule::Default => skip.extend(["device", "device_id"]),
        DeviceRule::Topic(_) => {}
    }
    let readings = match flatten(&json, cfg.max_depth, cfg.max_fields, &skip) {
        Ok(r) => r,
        Err(e) => {
            note = Some(format!("{e}; stored raw only"));
            Vec::new()
        }
    };
    Some(Derived {
        ts,
        ts_source,
        device,
        readings,
        note,
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

    #[test]
    fn deep_json_is_noted() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let d = derive(&ReadingsConfig::default(), "t", deep.as_bytes(), now()).unwrap();
        assert!(d.readings.is_empty() && d.note.is_some());
        let nine = format!("{}1{}", "{\"a\":".repeat(9), "}".repeat(9));
        let d = derive(&ReadingsConfig::default(), "t", nine.as_bytes(), now()).unwrap();
        assert!(d.readings.is_empty() && d.note.unwrap().contains("deeper"));
    }
}
