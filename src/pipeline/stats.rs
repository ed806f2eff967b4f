//! Pipeline health as data: per-minute, per-topic counts and publish→commit lag, written into
//! the store's `tidegate_stats` table so a Metabase dashboard shows ingest health next to the
//! sensor data. Lag is measured from the message's event time when the payload carries one,
//! else from its receipt. Flushing never blocks the writer: rows are handed over every few
//! seconds, and kept for the next try if the store cannot take them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio::sync::watch;

use crate::{
    message::Message,
    source::SourceStatus,
    store::{Outcome, Store},
};

/// One row of `tidegate_stats`. The topic `*` row carries totals and reconnects.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsRow {
    pub received: i64,
    pub committed: i64,
    pub duplicates: i64,
    pub rejected: i64,
    pub lag_ms_sum: f64,
    pub lag_ms_max: f64,
    pub reconnects: i64,
}

impl StatsRow {
    fn merge(&mut self, o: &StatsRow) {
        self.received += o.received;
        self.committed += o.committed;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        self.lag_ms_sum += o.lag_ms_sum;
        self.lag_ms_max = self.lag_ms_max.max(o.lag_ms_max);
        self.reconnects += o.reconnects;
    }
}

pub type StatsKey = (DateTime<Utc>, String);

#[derive(Default)]
pub struct StatsBook {
    rows: Mutex<HashMap<StatsKey, StatsRow>>,
}

pub const ALL_TOPICS: &str = "*";

fn minute(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::minutes(1)).unwrap_or(t)
}

impl StatsBook {
    /// Counts a committed batch.
    pub fn record(&self, messages: &[Message], outcomes: &[Outcome], at: DateTime<Utc>) {
        let m = minute(at);
        // Folded per topic first, so the shared map is looked up, and its key allocated, once
        // per topic of the batch instead of once per message.
        let mut by_topic: foldhash::HashMap<&str, StatsRow> = Default::default();
        let mut all = StatsRow::default();
        for (msg, o) in messages.iter().zip(outcomes) {
            let mut r = StatsRow {
                received: 1,
                ..Default::default()
            };
            match o {
                Outcome::Stored { .. } | Outcome::Spooled => {
                    r.committed = 1;
                    let from = msg
                        .derived
                        .as_ref()
                        .filter(|d| d.ts_source == crate::readings::TimeSource::Payload)
                        .map(|d| d.ts)
                        .unwrap_or(msg.received_at);
                    let lag = (at - from).num_microseconds().unwrap_or(0).max(0) as f64 / 1000.0;
                    r.lag_ms_sum = lag;
                    r.lag_ms_max = lag;
                }
                Outcome::Duplicate => r.duplicates = 1,
                Outcome::Rejected => r.rejected = 1,
            }
            all.merge(&r);
            by_topic.entry(&msg.topic).or_default().merge(&r);
        }
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, r) in by_topic {
            rows.entry((m, topic.to_string())).or_default().merge(&r);
        }
        rows.entry((m, ALL_TOPICS.to_string())).or_default().merge(&all);
    }

    fn add_reconnects(&self, n: i64, at: DateTime<Utc>) {
        if n > 0 {
            let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
            rows.entry((minute(at), ALL_TOPICS.to_string()))
                .or_default()
                .reconnects += n;
        }
    }

    fn take(&self) -> HashMap<StatsKey, StatsRow> {
        std::mem::take(&mut *self.rows.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn put_back(&self, old: HashMap<StatsKey, StatsRow>) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in old {
            rows.entry(k).or_default().merge(&v);
        }
    }
}

async fn flush(book: &StatsBook, store: &Arc<dyn Store>) {
    let rows = book.take();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = store.write_stats(&rows).await {
        tracing::debug!(error = %e, "pipeline statistics not written yet");
        book.put_back(rows);
    }
}

/// Writes the statistics every `every`, and once more when `stop` fires (after the writer).
pub async fn run(
    book: Arc<StatsBook>,
    store: Arc<dyn Store>,
    mqtt: Option<watch::Receiver<SourceStatus>>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen_reconnects = 0;
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if let Some(m) = &mqtt {
            let now = m.borrow().reconnects as i64;
            book.add_reconnects(now - seen_reconnects, Utc::now());
            seen_reconnects = now;
        }
        if stopping {
            return;
        }
        flush(&book, &store).await;
    }
}

/// The last flush, once the writer has committed everything.
pub async fn final_flush(book: &StatsBook, store: &Arc<dyn Store>) {
    flush(book, store).await;
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::Origin;

    #[test]
    fn a_batch_is_counted_per_topic_and_in_the_total_row() {
        let at = crate::time::now();
        let msg = |topic: &str| {
            let mut m = Message::new(
                topic.into(),
                Bytes::from_static(b"1"),
                1,
                false,
                Origin::Http,
                1024,
            );
            m.received_at = at - TimeDelta::milliseconds(30);
            m
        };
        let messages = [msg("a"), msg("b"), msg("a"), msg("a"), msg("b")];
        let outcomes = [
            Outcome::Stored { id: 1 },
            Outcome::Stored { id: 2 },
            Outcome::Duplicate,
            Outcome::Stored { id: 3 },
            Outcome::Rejected,
        ];
        let book = StatsBook::default();
        book.record(&messages, &outcomes, at);
        book.record(&messages[..1], &outcomes[..1], at);
        let rows = book.take();
        let row = |t: &str| rows[&(minute(at), t.to_string())].clone();
        let (a, b, all) = (row("a"), row("b"), row(ALL_TOPICS));
        assert_eq!((a.received, a.committed, a.duplicates, a.rejected), (4, 3, 1, 0));
        assert_eq!((b.received, b.committed, b.duplicates, b.rejected), (2, 1, 0, 1));
        assert_eq!(
            (all.received, all.committed, all.duplicates, all.rejected),
            (6, 4, 1, 1)
        );
        assert_eq!(rows.len(), 3);
        assert!((all.lag_ms_sum - 4.0 * 30.0).abs() < 1e-6, "{}", all.lag_ms_sum);
        assert!((a.lag_ms_max - 30.0).abs() < 1e-6);
    }
}
