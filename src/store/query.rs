//! What can be asked of a store, and what comes back — the same for every database. Values
//! reach SQL only as bound parameters, never as text.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

#[derive(Debug, Clone)]
pub struct MessageQuery {
    /// An MQTT topic filter (`+` and `#` allowed); `None` for every topic.
    pub topic: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Cursor: only ids after this one in the chosen order.
    pub after_id: Option<i64>,
    pub limit: usize,
    pub order: Order,
}

impl MessageQuery {
    /// The literal topic prefix before the first wildcard, which an index can serve, and whether
    /// the filter is an exact topic name.
    pub fn topic_prefix(&self) -> Option<(String, bool)> {
        let f = self.topic.as_deref()?;
        let cut = f.find(['+', '#']).unwrap_or(f.len());
        Some((f[..cut].to_string(), cut == f.len()))
    }
}

/// A stored message as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StoredMessage {
    pub id: i64,
    /// When tidegate received it (UTC).
    pub received_at: DateTime<Utc>,
    pub topic: String,
    /// The payload as UTF-8 text (invalid sequences replaced; see `payload_base64`).
    pub payload: String,
    /// The exact bytes, base64-encoded, present only when the payload is not valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    pub qos: u8,
    pub retain: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopicStats {
    pub topic: String,
    pub message_count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last_minute: i64,
}

impl StoredMessage {
    /// The API view of a message just committed as row `id`.
    pub fn from_message(id: i64, m: &crate::message::Message) -> Self {
        use base64::Engine;
        StoredMessage {
            id,
            received_at: m.received_at,
            topic: m.topic.clone(),
            payload: m.payload_lossy().into_owned(),
            payload_base64: m
                .payload_text()
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(&m.payload)),
            qos: m.qos,
            retain: m.retain,
            content_type: m.content_type.clone(),
        }
    }
}

/// The table a readings query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Raw,
    Minute,
    Hour,
}

#[derive(Debug, Clone)]
pub struct ReadingsQuery {
    pub topic: Option<String>,
    pub device: Option<String>,
    pub field: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub resolution: Resolution,
    pub limit: usize,
}

/// One point of a time series: a raw reading (count 1) or a bucket.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Point {
    pub ts: DateTime<Utc>,
    pub topic: String,
    pub device: Option<String>,
    pub field: String,
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub last: f64,
}

/// The current value of the series matching every filter given (exact matches).
#[derive(Debug, Clone)]
pub struct LatestQuery {
    pub topic: Option<String>,
    pub device: Option<String>,
    pub field: Option<String>,
    pub limit: usize,
}

/// The newest reading of one series: a number or a text, and the time it was measured at.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct LatestReading {
    pub topic: String,
    /// `null` when the series has no device.
    pub device: Option<String>,
    pub field: String,
    pub value: Option<f64>,
    pub text: Option<String>,
    pub ts: DateTime<Utc>,
}
