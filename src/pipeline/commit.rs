//! Commits a sealed batch, retrying with backoff forever, and once it is committed does
//! everything owed for it: the live stream, the statistics, the metrics and the
//! acknowledgements. It must never acknowledge a batch the store has not committed: only
//! `acknowledge` releases acks, and it needs the store's `Committed`.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{envelope::SealedBatch, writer::Live};
use crate::{
    store::{Committed, Outcome, Store, StoredMessage},
    telemetry as t,
};

/// Commits batches and acknowledges them.
pub struct Committer {
    pub store: Arc<dyn Store>,
    pub fault: watch::Sender<Option<String>>,
    pub stop: watch::Receiver<bool>,
    pub live: Live,
    pub stats: Arc<super::stats::StatsBook>,
}

impl Committer {
    /// Commits, retrying with backoff. `None` when stopping before it could commit: the batch
    /// is dropped unacknowledged, so it is redelivered.
    pub async fn commit(self: Arc<Self>, batch: SealedBatch) -> Option<(SealedBatch, Committed)> {
        let mut stop = self.stop.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            match self.store.write(batch.messages.clone()).await {
                Ok(committed) => {
                    // Handed over to committed: behind a queueing store this includes the wait
                    // for the batch ahead, which is what an acknowledgement waits for too.
                    metrics::histogram!(t::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::histogram!(t::BATCH_SIZE).record(batch.messages.len() as f64);
                    metrics::counter!(t::BATCHES).increment(1);
                    if self.fault.borrow().is_some() {
                        tracing::info!(store = %self.store.describe(), "store writable again; resuming acknowledgements");
                        let _ = self.fault.send(None);
                        metrics::gauge!(t::STORE_WRITABLE).set(1.0);
                    }
                    return Some((batch, committed));
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
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() {
                        tracing::warn!(
                            rows = batch.messages.len(),
                            "stopping with an uncommitted batch; it was not acknowledged and will be redelivered"
                        );
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Everything owed once a batch is committed, in the order batches were handed over: the
    /// live stream, the statistics, and the acknowledgements. Returns how many messages the
    /// batch held.
    pub fn acknowledge(&self, batch: SealedBatch, committed: &Committed) -> usize {
        let held = batch.messages.len();
        self.publish_live(&batch.messages, committed);
        self.stats
            .record(&batch.messages, committed.outcomes(), crate::time::now());
        record_outcomes(committed);
        let acked = batch.acknowledge(committed);
        metrics::counter!(t::ACKED).increment(acked as u64);
        held
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
