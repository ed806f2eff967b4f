//! The writer: commits each batch and only then acknowledges it. A failed commit is retried with
//! backoff, forever, without acknowledging anything — the broker holds the backlog meanwhile.
//! It must never drop a batch while it can still be committed.

use std::{sync::Arc, time::Duration};

use tokio::sync::{broadcast, mpsc, watch};

use super::{batcher, envelope::Ingest};
use crate::{
    config::PipelineSettings,
    store::{Committed, Outcome, Store, StoredMessage},
    telemetry as t,
};

/// Messages as they are committed, for the live stream.
pub type Live = broadcast::Sender<Arc<StoredMessage>>;

/// What the writer needs besides its queue.
pub struct Writer {
    pub store: Arc<dyn Store>,
    pub settings: PipelineSettings,
    /// Set to the reason while the store cannot be written; `None` when it works.
    pub fault: watch::Sender<Option<String>>,
    /// Fires when the process stops: a batch that cannot be committed is then abandoned
    /// (unacknowledged, so redelivered later) instead of retried.
    pub stop: watch::Receiver<bool>,
    pub live: Live,
    pub readings: Arc<crate::readings::ReadingsConfig>,
    pub stats: Arc<super::stats::StatsBook>,
}

impl Writer {
    /// Runs until every source is gone and the queue is drained, or until `stop` fires while the
    /// store cannot write.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Ingest>) {
        let PipelineSettings {
            batch_size,
            batch_delay,
        } = self.settings.clone();
        while let Some(mut batch) = batcher::next_batch(&mut rx, batch_size, batch_delay).await {
            if self.readings.enabled {
                for m in batch.messages_mut() {
                    if m.rejection.is_none() && m.derived.is_none() {
                        m.derived =
                            crate::readings::derive(&self.readings, &m.topic, &m.payload, m.received_at);
                    }
                }
            }
            let batch = batch.seal();
            let mut backoff = Duration::from_millis(100);
            loop {
                let started = std::time::Instant::now();
                match self.store.write(batch.messages.clone()).await {
                    Ok(committed) => {
                        metrics::histogram!(t::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                        metrics::histogram!(t::BATCH_SIZE).record(batch.messages.len() as f64);
                        metrics::counter!(t::BATCHES).increment(1);
                        if self.fault.borrow().is_some() {
                            tracing::info!(store = %self.store.describe(), "store writable again; resuming acknowledgements");
                            let _ = self.fault.send(None);
                            metrics::gauge!(t::STORE_WRITABLE).set(1.0);
                        }
                        self.publish_live(&batch.messages, &committed);
                        self.stats
                            .record(&batch.messages, committed.outcomes(), crate::time::now());
                        record_outcomes(&committed);
                        let acked = batch.acknowledge(&committed);
                        metrics::counter!(t::ACKED).increment(acked as u64);
                        break;
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        if self.fault.borrow().as_deref() != Some(reason.as_str()) {
                            tracing::error!(
                                store = %self.store.describe(),
                                error = %reason,
                                "cannot write to the store; nothing is acknowledged until it works again (retrying)"
                            );
                            let _ = self.fault.send(Some(reason));
                            metrics::gauge!(t::STORE_WRITABLE).set(0.0);
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.stop.changed() => {}
                        }
                        if *self.stop.borrow() {
                            tracing::warn!(
                                rows = batch.messages.len(),
                                "stopping with an uncommitted batch; it was not acknowledged and will be redelivered"
                            );
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    fn publish_live(&self, messages: &[crate::message::Message], committed: &Committed) {
        if self.live.receiver_count() == 0 {
            return;
        }
        for (m, outcome) in messages.iter().zip(committed.outcomes()) {
            if let Outcome::Stored { id } = outcome {
                let _ = self.live.send(Arc::new(StoredMessage::from_message(*id, m)));
            }
        }
    }
}

fn record_outcomes(committed: &Committed) {
    let (mut stored, mut dup, mut rejected) = (0u64, 0u64, 0u64);
    for o in committed.outcomes() {
        match o {
            Outcome::Stored { .. } | Outcome::Spooled => stored += 1,
            Outcome::Duplicate => dup += 1,
            Outcome::Rejected => rejected += 1,
        }
    }
    metrics::counter!(t::COMMITTED).increment(stored);
    metrics::counter!(t::DUPLICATES).increment(dup);
    metrics::counter!(t::REJECTED).increment(rejected);
    metrics::gauge!(t::IN_FLIGHT).decrement((stored + dup + rejected) as f64);
}
