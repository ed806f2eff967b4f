//! The writer: commits each batch and only then acknowledges it. A failed commit is retried with
//! backoff, forever, without acknowledging anything — the broker holds the backlog meanwhile.
//! It must never drop a batch while it can still be committed.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use super::{batcher, envelope::Ingest};
use crate::{config::PipelineSettings, store::Store};

/// Store health as the writer last saw it; `None` while writes succeed.
pub type StoreFault = watch::Receiver<Option<String>>;

/// Runs until every source is gone and the queue is drained, or until `stop` fires while the
/// store cannot write (then the pending batch is left unacknowledged for redelivery).
pub async fn run(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Ingest>,
    settings: PipelineSettings,
    fault: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    while let Some(batch) = batcher::next_batch(&mut rx, settings.batch_size, settings.batch_delay).await {
        let batch = batch.seal();
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.write(batch.messages.clone()).await {
                Ok(committed) => {
                    if fault.borrow().is_some() {
                        tracing::info!(store = %store.describe(), "store writable again; resuming acknowledgements");
                        let _ = fault.send(None);
                    }
                    tracing::debug!(rows = batch.messages.len(), "batch committed");
                    batch.acknowledge(&committed);
                    break;
                }
                Err(e) => {
                    let reason = e.to_string();
                    if fault.borrow().as_deref() != Some(reason.as_str()) {
                        tracing::error!(
                            store = %store.describe(),
                            error = %reason,
                            "cannot write to the store; nothing is acknowledged until it works again (retrying)"
                        );
                        let _ = fault.send(Some(reason));
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
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
