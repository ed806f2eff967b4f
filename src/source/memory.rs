//! The store's record of the topic filters this client id subscribed to. A broker that keeps a
//! session keeps its subscriptions too, so a filter an earlier run had and this run has not
//! would go on delivering (telegraf#9703): read once at start, the record names those filters,
//! which are then unsubscribed; it is rewritten whenever this run's filters change. It must
//! never delay or fail the session: a store that does not answer in time leaves the session as
//! the broker holds it, with a warning, and the stray deliveries are still stored.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::store::Store;

/// How long the start waits for the store's answer before connecting without it.
const READ_WITHIN: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Memory {
    store: Arc<dyn Store>,
    client_id: Arc<str>,
    /// The filters to record next. One task writes them, so the last change is the one kept.
    latest: Arc<watch::Sender<Vec<String>>>,
}

impl Memory {
    /// Starts the task that records; it ends when the last copy is dropped.
    pub fn new(store: Arc<dyn Store>, client_id: &str) -> Self {
        // The initial value is never written: only a `record` marks the channel changed.
        let (latest, mut changed) = watch::channel(Vec::<String>::new());
        let client_id: Arc<str> = client_id.into();
        let (writer, id) = (store.clone(), client_id.clone());
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                let filters = changed.borrow_and_update().clone();
                if let Err(e) = writer.record_subscriptions(&id, &filters).await {
                    tracing::warn!(error = %e, "cannot record this run's topic filters; the next run may not unsubscribe those it drops");
                }
            }
        });
        Memory {
            store,
            client_id,
            latest: Arc::new(latest),
        }
    }

    /// The filters an earlier run with this client id last subscribed to; `None` when there is
    /// no record or the store cannot say.
    pub async fn earlier(&self) -> Option<Vec<String>> {
        match tokio::time::timeout(READ_WITHIN, self.store.subscriptions(&self.client_id)).await {
            Ok(Ok(filters)) => filters,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read which topic filters an earlier run subscribed to; a filter it had and this run has not may go on delivering (those messages are stored)");
                None
            }
            Err(_) => {
                tracing::warn!("the store did not say in time which topic filters an earlier run subscribed to; a filter it had and this run has not may go on delivering (those messages are stored)");
                None
            }
        }
    }

    /// Records `filters` as this client id's, in the background; a later call wins over an
    /// earlier one not yet written.
    pub fn record(&self, filters: Vec<String>) {
        self.latest.send_replace(filters);
    }
}
