//! Parses an ingest request body (a JSON object, a JSON array, or NDJSON) into messages. Pure
//! and total: any bytes give messages or a `BodyError` naming the problem, never a panic. It
//! must never touch the pipeline or the store.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::{
    config::validate_topic_name,
    message::{Message, Origin},
};

/// One message to store.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncomingMessage {
    /// Topic name (no wildcards).
    pub topic: String,
    /// The payload: a JSON string is stored as its text; any other JSON value is stored as the
    /// JSON text exactly as sent.
    #[schema(value_type = Option<Object>)]
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// The payload as base64, for bytes that are not text (instead of `payload`).
    pub payload_base64: Option<String>,
    /// 0, 1 or 2 (default 1); informative only.
    pub qos: Option<u8>,
    #[serde(default)]
    pub retain: bool,
    /// RFC 3339 time of receipt (default: now).
    pub received_at: Option<String>,
    pub content_type: Option<String>,
    /// MQTT 5 user properties as `[name, value]` pairs.
    pub user_properties: Option<Vec<(String, String)>>,
    /// Set by `tidegate subscribe`: the MQTT delivery this message came from, so a retried
    /// request is recognised and stored once.
    pub mqtt: Option<MqttDelivery>,
    /// Set by `tidegate subscribe` for a message it refused (e.g. over its size limit): recorded
    /// in `rejected` instead of `messages`.
    pub rejected: Option<Rejection>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttDelivery {
    pub session: String,
    pub packet_id: u16,
    pub redelivery: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rejection {
    pub reason: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// 400 (not parseable), 413 (a payload too large), 415 (wrong content type), 422 (parseable
    /// but wrong).
    pub status: u16,
    pub message: String,
    /// The 0-based index of the offending message.
    pub index: Option<usize>,
}

impl BodyError {
    fn new(status: u16, message: impl Into<String>, index: Option<usize>) -> Self {
        BodyError {
            status,
            message: message.into(),
            index,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
}

/// Picks the format from a `Content-Type` header.
pub fn format_of(content_type: Option<&str>) -> Result<Format, BodyError> {
    let ct = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" | "application/jsonlines" => {
            Ok(Format::Ndjson)
        }
        "" => Err(BodyError::new(
            415,
            "missing Content-Type; use application/json or application/x-ndjson",
            None,
        )),
        other => Err(BodyError::new(
            415,
            format!("Content-Type `{other}` is not supported; use application/json or application/x-ndjson"),
            None,
        )),
    }
}

fn json_error(e: serde_json::Error, index: Option<usize>) -> BodyError {
    use serde_json::error::Category;
    let status = match e.classify() {
        Category::Data => 422,
        _ => 400,
    };
    BodyError::new(status, format!("{e}"), index)
}

/// Parses the whole body. `max_payload` applies to each message's payload.
pub fn parse(format: Format, body: &[u8], max_payload: usize) -> Result<Vec<Message>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        BodyError::new(
            400,
            format!("the body is not valid UTF-8 (at byte {})", e.valid_up_to()),
            None,
        )
    })?;
    // A byte-order mark, as Windows tools write at the head of a UTF-8 file (RFC 8259 lets a
    // parser ignore it), is not the first message's text.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let messages = match format {
        Format::Json => {
            let items: Vec<IncomingMessage> = match text.trim_start().as_bytes().first() {
                Some(b'[') => serde_json::from_str(text).map_err(|e| json_error(e, None))?,
                Some(b'{') => vec![serde_json::from_str(text).map_err(|e| json_error(e, Some(0)))?],
                None => return Err(BodyError::new(400, "the body is empty", None)),
                Some(_) => {
                    return Err(BodyError::new(
                        400,
                        "the body must be a JSON object or an array of objects",
                        None,
                    ))
                }
            };
            to_messages(items.len(), items.into_iter().map(Ok), max_payload)?
        }
        Format::Ndjson => {
            let lines = text.lines().filter(|l| !l.trim().is_empty()).enumerate();
            let items = lines.map(|(i, l)| serde_json::from_str(l).map_err(|e| json_error(e, Some(i))));
            to_messages(
                text.bytes().filter(|&b| b == b'\n').count() + 1,
                items,
                max_payload,
            )?
        }
    };
    if messages.is_empty() {
        return Err(BodyError::new(422, "no messages in the body", None));
    }
    Ok(messages)
}

/// Builds the messages straight into a vector sized up front (`capacity`): a message is a few
/// hundred bytes, and growing the vector item by item copied each one several times.
fn to_messages(
    capacity: usize,
    items: impl Iterator<Item = Result<IncomingMessage, BodyError>>,
    max_payload: usize,
) -> Result<Vec<Message>, BodyError> {
    let mut messages = Vec::with_capacity(capacity);
    for (i, item) in items.enumerate() {
        let m = to_message(item?, max_payload).map_err(|(status, m)| BodyError::new(status, m, Some(i)))?;
        messages.push(m);
    }
    Ok(messages)
}

fn to_message(item: IncomingMessage, max_payload: usize) -> Result<Message, (u16, String)> {
    validate_topic_name(&item.topic).map_err(|e| (422, e))?;
    let payload: Bytes = match (&item.payload, &item.payload_base64) {
        (Some(_), Some(_)) => {
            return Err((422, "give either `payload` or `payload_base64`, not both".into()))
        }
        (Some(raw), None) => {
            let r = raw.get();
            if r.starts_with('"') {
                let s: String = serde_json::from_str(r).map_err(|e| (422, format!("payload: {e}")))?;
                Bytes::from(s)
            } else {
                Bytes::copy_from_slice(r.as_bytes())
            }
        }
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| (422, format!("payload_base64 is not valid base64: {e}")))?,
        (None, None) => Bytes::new(),
    };
    let qos = item.qos.unwrap_or(1);
    if qos > 2 {
        return Err((422, format!("qos {qos} is not 0, 1 or 2")));
    }
    if item.rejected.is_none() && payload.len() > max_payload {
        return Err((
            413,
            format!(
                "payload of {} bytes is over the limit of {max_payload} bytes",
                payload.len()
            ),
        ));
    }
    let origin = match item.mqtt {
        Some(d) => Origin::Mqtt {
            session: d.session.into(),
            pkid: d.packet_id,
            redelivery: d.redelivery,
        },
        None => Origin::Http,
    };
    let mut m = Message::new(item.topic, payload, qos, item.retain, origin, usize::MAX);
    if let Some(t) = item.received_at {
        m.received_at = chrono::DateTime::parse_from_rfc3339(&t)
            .map_err(|e| (422, format!("received_at `{t}` is not an RFC 3339 time: {e}")))?
            .with_timezone(&chrono::Utc);
    }
    m.content_type = item.content_type;
    m.user_properties = item.user_properties.unwrap_or_default();
    if let Some(r) = item.rejected {
        m.payload = Bytes::new();
        m.size = usize::try_from(r.size).unwrap_or(usize::MAX);
        m.rejection = Some(r.reason);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(f: Format, body: &str) -> Result<Vec<Message>, BodyError> {
        parse(f, body.as_bytes(), 1024)
    }

    #[test]
    fn a_byte_order_mark_at_the_head_is_not_part_of_the_body() {
        for (format, body) in [
            (
                Format::Ndjson,
                "\u{feff}{\"topic\":\"a\",\"payload\":1}\n{\"topic\":\"b\",\"payload\":2}\n",
            ),
            (Format::Json, "\u{feff}[{\"topic\":\"a\",\"payload\":1}]"),
        ] {
            assert_eq!(p(format, body).unwrap()[0].topic, "a");
        }
        // Anywhere else it is text, and a line that is not JSON is named.
        assert!(p(Format::Ndjson, "{\"topic\":\"a\",\"payload\":1}\n\u{feff}x\n").is_err());
    }

    #[test]
    fn accepts_object_array_and_ndjson() {
        assert_eq!(
            p(Format::Json, r#"{"topic":"a","payload":"x"}"#).unwrap().len(),
            1
        );
        let many = p(
            Format::Json,
            r#"[{"topic":"a","payload":{"t":21.40}},{"topic":"b","payload":7}]"#,
        )
        .unwrap();
        assert_eq!(&many[0].payload[..], br#"{"t":21.40}"#);
        assert_eq!(&many[1].payload[..], b"7");
        let nd = p(
            Format::Ndjson,
            "{\"topic\":\"a\",\"payload\":\"1\"}\n\n{\"topic\":\"b\"}\n",
        )
        .unwrap();
        assert_eq!(nd.len(), 2);
        assert!(nd[1].payload.is_empty());
        let b = p(Format::Json, r#"{"topic":"a","payload_base64":"/w=="}"#).unwrap();
        assert_eq!(&b[0].payload[..], b"\xff");
    }

    #[test]
    fn names_what_is_wrong() {
        let cases = [
            (r#"{"topic":"a""#, 400, Some(0)),
            (r#"{"payload":"x"}"#, 422, Some(0)),
            (r#"[{"topic":"ok"},{"topic":"a/#"}]"#, 422, Some(1)),
            (r#"{"topic":"a","qos":"one"}"#, 422, Some(0)),
            (r#"{"topic":"a","qos":3}"#, 422, Some(0)),
            (r#"{"topic":"a","received_at":"yesterday"}"#, 422, Some(0)),
            (
                r#"{"topic":"a","payload":"x","payload_base64":"eA=="}"#,
                422,
                Some(0),
            ),
            (r#"{"topic":"a","payload_base64":"!!"}"#, 422, Some(0)),
            (r#"{"topic":"a","colour":"red"}"#, 422, Some(0)),
            (r#"[]"#, 422, None),
            (r#"42"#, 400, None),
            ("", 400, None),
        ];
        for (body, status, index) in cases {
            let e = p(Format::Json, body).unwrap_err();
            assert_eq!((e.status, e.index), (status, index), "{body}: {}", e.message);
        }
        let big = format!(r#"{{"topic":"a","payload":"{}"}}"#, "x".repeat(2000));
        assert_eq!(p(Format::Json, &big).unwrap_err().status, 413);
        assert_eq!(parse(Format::Json, b"\xff", 10).unwrap_err().status, 400);
        assert_eq!(format_of(Some("text/plain")).unwrap_err().status, 415);
        assert_eq!(
            format_of(Some("application/json; charset=utf-8")).unwrap(),
            Format::Json
        );
    }

    #[test]
    fn received_at_with_an_offset_becomes_utc() {
        let m = p(
            Format::Json,
            r#"{"topic":"a","received_at":"2026-11-25T12:00:00+02:00"}"#,
        )
        .unwrap();
        assert_eq!(
            crate::time::to_sql_text(m[0].received_at),
            "2026-11-25 10:00:00.000"
        );
    }
}
