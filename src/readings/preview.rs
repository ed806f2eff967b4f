//! What a message would become — the table its row goes to, its readings, device and event time,
//! and its rows in mapped tables — decided by the same functions the writer calls, and written
//! nowhere. `tidegate mapping test` and `POST /api/v1/preview` both answer with it; it must
//! never touch a store.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{mapping::SqlValue, ReadingsConfig, Value};
use crate::message::Message;

/// What storing one message would write.
#[derive(Debug, Serialize, ToSchema)]
pub struct Preview {
    pub topic: String,
    /// `messages`, or `rejected` when the message would be recorded there instead.
    pub table: &'static str,
    /// Why the message would go to `rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The time its readings would be charted at (UTC); absent when it gives none.
    pub ts: Option<DateTime<Utc>>,
    /// Where `ts` comes from: `payload`, `received`, or `suspect` (an implausible payload time,
    /// replaced by the receive time).
    pub ts_source: Option<&'static str>,
    pub device: Option<String>,
    /// The rows `readings` would get, one per field.
    pub readings: Vec<PreviewReading>,
    /// Why the payload gives no readings, or why its own time was not used.
    pub note: Option<String>,
    /// One entry per mapping whose filter matches the topic.
    pub mappings: Vec<MappedPreview>,
}

/// One row of `readings`: a number in `value` or, for a text field, `text`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewReading {
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A mapping's row, or why the payload does not fit it (the message is stored all the same, and
/// the refused row recorded in `rejected`).
#[derive(Debug, Serialize, ToSchema)]
pub struct MappedPreview {
    pub table: String,
    /// Column name → value.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<serde_json::Map<String, serde_json::Value>>,
    /// Columns the row would add to the table (`auto_columns = true`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub new_columns: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// What the writer would store for `m` with `cfg`, with `m.received_at` as the receive time.
pub fn preview(cfg: &ReadingsConfig, m: &Message) -> Preview {
    let mut p = Preview {
        topic: m.topic.clone(),
        table: "messages",
        reason: None,
        ts: None,
        ts_source: None,
        device: None,
        readings: Vec::new(),
        note: None,
        mappings: Vec::new(),
    };
    if let Some(reason) = &m.rejection {
        p.table = "rejected";
        p.reason = Some(reason.clone());
        return p;
    }
    let Some(d) = super::derive(cfg, &m.topic, &m.payload, m.received_at) else {
        p.note = Some(
            if !cfg.enabled && !cfg.mappings.iter().any(|mapping| mapping.matches(&m.topic)) {
                "readings are off (`--readings off`) and no mapping matches the topic: the message is stored raw only"
            } else {
                "the payload is not JSON: the message is stored raw only"
            }
            .into(),
        );
        return p;
    };
    p.ts = Some(d.ts);
    p.ts_source = Some(d.ts_source.as_str());
    p.device = d.device;
    p.note = d.note;
    p.readings = d
        .readings
        .into_iter()
        .map(|r| match r.value {
            Value::Number(v) => PreviewReading {
                field: r.field,
                value: Some(v),
                text: None,
            },
            Value::Text(t) => PreviewReading {
                field: r.field,
                value: None,
                text: Some(t),
            },
        })
        .collect();
    p.mappings = d
        .mapped
        .into_iter()
        .map(|(mapping, row)| {
            let table = mapping.table.as_str().to_string();
            match row {
                Ok(row) => MappedPreview {
                    table,
                    row: Some(
                        row.values
                            .into_iter()
                            .map(|(column, v)| (column.as_str().to_string(), json(v)))
                            .collect(),
                    ),
                    new_columns: row
                        .new_columns
                        .into_iter()
                        .map(|(column, _)| column.as_str().to_string())
                        .collect(),
                    rejected: None,
                },
                Err(reason) => MappedPreview {
                    table,
                    row: None,
                    new_columns: Vec::new(),
                    rejected: Some(reason),
                },
            }
        })
        .collect();
    p
}

fn json(v: SqlValue) -> serde_json::Value {
    match v {
        SqlValue::Null => serde_json::Value::Null,
        SqlValue::Real(f) => serde_json::json!(f),
        SqlValue::Integer(i) => serde_json::json!(i),
        SqlValue::Text(s) => serde_json::Value::String(s),
        SqlValue::Bool(b) => serde_json::Value::Bool(b),
        SqlValue::Time(t) => serde_json::json!(t),
    }
}

/// `tidegate mapping test`: the preview of one message on `topic` with the readings, mappings
/// and payload limit of the config file at `config`, or the defaults without one.
pub fn from_config_file(
    config: Option<&std::path::Path>,
    topic: &str,
    payload: &[u8],
) -> Result<Preview, crate::config::ConfigError> {
    use crate::config::{Mode, RunArgs, Settings};
    crate::config::validate_topic_name(topic).map_err(|e| crate::config::ConfigError::new("topic", e))?;
    let args = RunArgs {
        config: config.map(std::path::Path::to_path_buf),
        broker: Some("mqtt://preview.invalid".into()),
        listen: Some("off".into()),
        ..Default::default()
    };
    let settings = Settings::resolve(Mode::Run, args)?;
    let m = Message::new(
        topic.into(),
        bytes::Bytes::copy_from_slice(payload),
        1,
        false,
        crate::message::Origin::Http,
        settings.max_payload,
    );
    Ok(preview(&settings.readings, &m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Origin;

    fn message(topic: &str, payload: &str, max_payload: usize) -> Message {
        let mut m = Message::new(
            topic.into(),
            bytes::Bytes::copy_from_slice(payload.as_bytes()),
            1,
            false,
            Origin::Http,
            max_payload,
        );
        m.received_at = "2026-11-25T10:00:30Z".parse().unwrap();
        m
    }

    fn with_mapping(toml: &str) -> ReadingsConfig {
        let spec: super::super::mapping::MappingSpec = toml::from_str(toml).unwrap();
        ReadingsConfig {
            mappings: vec![std::sync::Arc::new(
                super::super::mapping::Mapping::from_spec(&spec).unwrap(),
            )],
            ..Default::default()
        }
    }

    #[test]
    fn shows_the_readings_device_time_and_mapped_row_the_writer_would_store() {
        let cfg = with_mapping("filter = \"sensors/+/telemetry\"\ntable = \"telemetry\"\n[columns]\ntemperature_c = \"$.temp\"\n");
        let m = message(
            "sensors/s3/telemetry",
            r#"{"device":"s3","temp":"21.4","hum":55,"ts":"2026-11-25T10:00:00Z"}"#,
            1024,
        );
        let p = preview(&cfg, &m);
        let derived = super::super::derive(&cfg, &m.topic, &m.payload, m.received_at).unwrap();
        assert_eq!(p.table, "messages");
        assert_eq!(p.ts, Some(derived.ts));
        assert_eq!(p.ts_source, Some("payload"));
        assert_eq!(p.device.as_deref(), Some("s3"));
        let fields: Vec<&str> = p.readings.iter().map(|r| r.field.as_str()).collect();
        let want: Vec<&str> = derived.readings.iter().map(|r| r.field.as_str()).collect();
        assert_eq!(fields, want, "the writer's readings, in its order");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["mappings"][0]["table"], "telemetry");
        assert_eq!(v["mappings"][0]["row"]["temperature_c"], 21.4);
        assert!(v["mappings"][0].get("rejected").is_none(), "{v}");

        let hot = preview(&cfg, &message("sensors/s3/telemetry", r#"{"temp":"hot"}"#, 1024));
        let refused = hot.mappings[0].rejected.as_deref().unwrap();
        assert!(refused.contains("temperature_c"), "{refused}");
        assert!(hot.mappings[0].row.is_none());
        assert_eq!(hot.table, "messages", "the message itself is stored all the same");
    }

    #[test]
    fn says_why_a_message_gives_no_readings() {
        let cfg = ReadingsConfig::default();
        let raw = preview(&cfg, &message("a/b", "not json", 1024));
        assert!(raw.readings.is_empty() && raw.ts.is_none());
        assert!(
            raw.note.as_deref().unwrap().contains("not JSON"),
            "{:?}",
            raw.note
        );

        let off = ReadingsConfig {
            enabled: false,
            ..Default::default()
        };
        let p = preview(&off, &message("a/b", r#"{"temp":1}"#, 1024));
        assert!(p.readings.is_empty());
        assert!(
            p.note.as_deref().unwrap().contains("readings are off"),
            "{:?}",
            p.note
        );
        let mapped_only = ReadingsConfig {
            enabled: false,
            ..with_mapping("filter = \"a/+\"\ntable = \"wide\"\n[columns]\nt = \"$.temp\"\n")
        };
        let p = preview(
            &mapped_only,
            &message("a/b", r#"{"temp":1,"ts":"1999-01-01T00:00:00Z"}"#, 1024),
        );
        assert!(p.readings.is_empty() && p.note.is_none(), "readings off: {p:?}");
        assert_eq!(
            p.ts_source,
            Some("suspect"),
            "the mapped row's time is still checked"
        );
        assert_eq!(
            p.mappings[0].row.as_ref().unwrap()["t"],
            1.0,
            "a mapping applies with readings off"
        );
        assert!(preview(&mapped_only, &message("x/y", r#"{"temp":1}"#, 1024))
            .mappings
            .is_empty());
        let raw = preview(&mapped_only, &message("a/b", "not json", 1024));
        assert!(
            raw.note.as_deref().unwrap().contains("not JSON"),
            "{:?}",
            raw.note
        );

        let big = preview(&cfg, &message("a/b", r#"{"temp":1}"#, 4));
        assert_eq!(big.table, "rejected");
        assert!(
            big.reason.as_deref().unwrap().contains("over the limit"),
            "{:?}",
            big.reason
        );
        assert!(big.readings.is_empty());

        let suspect = preview(
            &cfg,
            &message("a/b", r#"{"temp":1,"ts":"1999-01-01T00:00:00Z"}"#, 1024),
        );
        assert_eq!(suspect.ts_source, Some("suspect"));
        assert!(suspect.note.is_some());
    }
}
