//! `readings_latest`: the newest reading of every series (topic, device, field), kept up to date
//! with each batch, so a dashboard's "current value" card reads one row per series instead of
//! searching `readings` for each series' newest row. The rollups' pass over a batch finds each
//! series' newest reading (`rollup::aggregate`); both stores upsert it, and a reading never
//! replaces one with a later event time: the upserts compare `ts`.

use chrono::{DateTime, Utc};

/// The newest reading of one series in a batch, borrowing from the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Latest<'a> {
    pub topic: &'a str,
    /// `''` when the message has no device, as in the rollups (a key column).
    pub device: &'a str,
    pub field: &'a str,
    pub value: Option<f64>,
    pub text: Option<&'a str>,
    pub ts: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use crate::{
        message::{Message, Origin},
        readings,
        store::rollup,
    };

    fn msg(topic: &str, payload: &str, at: &str) -> Message {
        let mut m = Message::new(
            topic.into(),
            bytes::Bytes::copy_from_slice(payload.as_bytes()),
            1,
            false,
            Origin::Http,
            1024,
        );
        m.received_at = at.parse().unwrap();
        m.derived = readings::derive(
            &readings::ReadingsConfig::default(),
            topic,
            &m.payload,
            m.received_at,
        );
        m
    }

    #[test]
    fn the_newest_reading_by_event_time_wins_and_text_counts_too() {
        let batch = [
            msg("s/1", r#"{"temp":20,"status":"ok"}"#, "2026-11-25T10:00:00Z"),
            // Arrives later but was measured earlier: not the latest.
            msg(
                "s/1",
                r#"{"temp":19,"ts":"2026-11-25T09:00:00Z"}"#,
                "2026-11-25T10:00:05Z",
            ),
            msg("s/1", r#"{"status":"door open"}"#, "2026-11-25T10:00:10Z"),
            msg("s/2", r#"{"device":"b","temp":7}"#, "2026-11-25T10:00:00Z"),
            // Same time as the first: the later arrival wins.
            msg("s/1", r#"{"temp":21}"#, "2026-11-25T10:00:00Z"),
        ];
        let got: Vec<String> = rollup::aggregate(batch.iter())
            .latest
            .into_iter()
            .map(|l| format!("{} {} {} {:?} {:?}", l.topic, l.device, l.field, l.value, l.text))
            .collect();
        assert_eq!(
            got,
            [
                r#"s/1  status None Some("door open")"#,
                "s/1  temp Some(21.0) None",
                "s/2 b temp Some(7.0) None",
            ]
        );
    }
}
