//! Retention in the background: small chunks, each its own short transaction, with pauses, so
//! ingest and readers never wait behind a large delete.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use super::Store;
use crate::config::{current::Current, RetentionPolicy};

pub const CHUNK: usize = 2000;

/// Deletes everything the policy no longer keeps, then sleeps a minute (or until a reload
/// changes the policy), until `stop`. With the policy off it only waits.
pub async fn run(
    store: Arc<dyn Store>,
    mut policy: Current<RetentionPolicy>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let now = policy.get();
        let mut total = 0u64;
        while !now.is_off() {
            if *stop.borrow() {
                return;
            }
            match store.retain(&now, CHUNK).await {
                Ok(0) => break,
                Ok(n) => {
                    total += n;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention could not delete old rows; will try again");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(rows = total, "retention deleted old rows");
        }
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)), if !now.is_off() => {}
            _ = policy.changed() => {}
            _ = stop.changed() => {}
        }
    }
}
