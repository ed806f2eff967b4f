//! `readings_latest`: the newest reading of every series (topic, device, field), kept up to date
//! with each batch, so a dashboard's "current value" card reads one row per series instead of
//! searching `readings` for each series' newest row. Both stores use this fold; only the upsert
//! SQL differs. A reading never replaces one with a later event time: the upserts compare `ts`.

use chrono::{DateTime, Utc};

use crate::{message::Message, readings::Value};

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

/// The newest reading per series among `stored` messages, sorted by series (so concurrent
/// upserts take their row locks in the same order). Of two readings with the same time, the one
/// that arrived later wins, as it would one batch later.
pub fn fold<'a>(stored: impl Iterator<Item = &'a Message>) -> Vec<Latest<'a>> {
    let mut newest: foldhash::HashMap<(&'a str, &'a str, &'a str), Latest<'a>> = Default::default();
    for m in stored {
        let Some(d) = &m.derived else { continue };
        let device = d.device.as_deref().unwrap_or_default();
        for r in &d.readings {
            let (value, text) = match &r.value {
                Value::Number(v) => (Some(*v), None),
                Value::Text(t) => (None, Some(t.as_str())),
            };
            let reading = Latest {
                topic: &m.topic,
                device,
                field: &r.field,
                value,
                text,
                ts: d.ts,
            };
            newest
                .entry((&m.topic, device, &r.field))
                .and_modify(|l| {
                    if reading.ts >= l.ts {
                        *l = reading.clone();
                    }
                })
                .or_insert(reading);
        }
    }
    let mut out: Vec<Latest<'a>> = newest.into_values().collect();
    out.sort_unstable_by(|a, b| (a.topic, a.device, a.field).cmp(&(b.topic, b.device, b.field)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{message::Origin, readings};

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
        let got: Vec<String> = fold(batch.iter())
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
