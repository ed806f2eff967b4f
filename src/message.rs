//! The message as it travels from a source to a store. It owns the normalisation every source
//! shares (size limit, UTF-8 check, content hash) and must never decide anything about delivery:
//! acknowledgements live in `pipeline::envelope`.

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// Where a message came from, kept so that a broker redelivery can be recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Delivered by an MQTT broker on the persistent session `session` with packet id `pkid`.
    /// `redelivery` is the DUP flag: the broker may have sent it before.
    Mqtt {
        session: std::sync::Arc<str>,
        pkid: u16,
        redelivery: bool,
    },
    /// Posted to the HTTP API.
    Http,
}

impl Origin {
    /// The value of the stores' `source` column.
    pub fn source(&self) -> &'static str {
        match self {
            Origin::Mqtt { .. } => "mqtt",
            Origin::Http => "http",
        }
    }
}

/// One message, normalised.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    /// The exact payload bytes; empty when the message was rejected for its size.
    pub payload: Bytes,
    /// The payload size as received (kept when the payload itself is dropped).
    pub size: usize,
    pub qos: u8,
    pub retain: bool,
    pub received_at: DateTime<Utc>,
    pub content_type: Option<String>,
    pub user_properties: Vec<(String, String)>,
    pub origin: Origin,
    /// Set when the message must go to the `rejected` table instead of `messages`.
    pub rejection: Option<String>,
    /// Readings, device and event time extracted from the payload (set by the writer).
    pub derived: Option<crate::readings::Derived>,
}

impl Message {
    /// Builds a message and applies the payload size limit: an over-size payload is dropped and
    /// the message marked rejected, so it is recorded and acknowledged instead of blocking the
    /// stream.
    pub fn new(
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
        origin: Origin,
        max_payload: usize,
    ) -> Self {
        let size = payload.len();
        let (payload, rejection) = if size > max_payload {
            (
                Bytes::new(),
                Some(format!(
                    "payload of {size} bytes is over the limit of {max_payload} bytes (--max-payload)"
                )),
            )
        } else {
            (payload, None)
        };
        Message {
            topic,
            payload,
            size,
            qos,
            retain,
            received_at: crate::time::now(),
            content_type: None,
            user_properties: Vec::new(),
            origin,
            rejection,
            derived: None,
        }
    }

    /// The payload as text: `Some` when it is valid UTF-8.
    pub fn payload_text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }

    /// The payload as text for display columns: invalid UTF-8 sequences become U+FFFD. The exact
    /// bytes are stored beside it whenever this differs from the payload.
    pub fn payload_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.payload)
    }

    /// A stable 128-bit hash of topic and payload, used to recognise redeliveries. It must not
    /// change between releases: rows written by an older tidegate are compared against it.
    pub fn content_hash(&self) -> [u8; 16] {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(self.topic.len() as u64).to_le_bytes());
        h.update(self.topic.as_bytes());
        h.update(&self.payload);
        h.digest128().to_le_bytes()
    }

    /// User properties as a JSON array of `[name, value]` pairs (names may repeat in MQTT 5).
    pub fn user_properties_json(&self) -> Option<String> {
        if self.user_properties.is_empty() {
            return None;
        }
        serde_json::to_string(&self.user_properties).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, payload: &'static [u8], max: usize) -> Message {
        Message::new(
            topic.into(),
            Bytes::from_static(payload),
            1,
            false,
            Origin::Http,
            max,
        )
    }

    #[test]
    fn over_size_payload_is_dropped_and_marked() {
        let m = msg("t", b"0123456789", 4);
        assert!(m.payload.is_empty());
        assert_eq!(m.size, 10);
        assert!(m.rejection.unwrap().contains("10 bytes"));
    }

    #[test]
    fn hash_depends_on_topic_and_payload() {
        let a = msg("a", b"x", 10).content_hash();
        assert_eq!(a, msg("a", b"x", 10).content_hash());
        assert_ne!(a, msg("b", b"x", 10).content_hash());
        assert_ne!(a, msg("a", b"y", 10).content_hash());
        // The length prefix keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            msg("ab", b"c", 10).content_hash(),
            msg("a", b"bc", 10).content_hash()
        );
    }

    #[test]
    fn lossy_text_for_invalid_utf8() {
        let m = msg("t", b"\xff\x00ok", 10);
        assert!(m.payload_text().is_none());
        assert_eq!(m.payload_lossy(), "\u{fffd}\u{0}ok");
    }
}
