//! The store's record of the topic filters this client id subscribed to. A broker that keeps a
//! session keeps its subscriptions too, so a filter an earlier run had and this run has not
//! would go on delivering (telegraf#9703): read once at start, the record names those filters,
//! which are then unsubscribed; it is rewritten whenever this run's filters change. It must
//! never delay or fail the session: a store that does not answer in time leaves the session as
//! the broker holds it, with a warning, and the stray deliveries are still stored.

use std::{sync::Arc, time::Duration};

use crate::store::Store;

/// How long the start waits for the store's answer before connecting without it.
const READ_WITHIN: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Memory {
    store: Arc<dyn Store>,
    client_id: Arc<str>,
}

impl Memory {
    pub fn new(store: Arc<dyn Store>, client_id: &str) -> Self {
        Memory {
            store,
            client_id: client_id.into(),
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

    /// Records `filters` as this client id's, in the background.
    pub fn record(&self, filters: Vec<String>) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.store.record_subscriptions(&this.client_id, &filters).await {
                tracing::warn!(error = %e, "cannot record this run's topic filters; the next run may not unsubscribe those it drops");
            }
        });
    }
}
