//! Groups queued ingests into one batch: everything waiting, up to the size limit, optionally
//! lingering a little for more. It never splits an ingest (an HTTP request is all or nothing).

use std::time::Duration;

use tokio::sync::mpsc;

use super::envelope::{Batch, Ingest};

/// Waits for the next ingest, then takes what else is queued. `None` when every source is gone
/// and the queue is empty.
pub async fn next_batch(rx: &mut mpsc::Receiver<Ingest>, max: usize, linger: Duration) -> Option<Batch> {
    let mut batch = Batch::default();
    batch.push(rx.recv().await?);
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < max {
        match rx.try_recv() {
            Ok(ingest) => batch.push(ingest),
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                if linger.is_zero() {
                    break;
                }
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(ingest)) => batch.push(ingest),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
    Some(batch)
}
