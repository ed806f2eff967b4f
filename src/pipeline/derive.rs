//! Readings and mapped rows, derived from each message as the writer takes it into a batch,
//! before the batch is sealed, with the readings config in force at that moment (a reload
//! replaces it between two messages, never within one). It must never do I/O or drop a message:
//! a payload that gives nothing is stored raw.

use std::sync::Arc;

use super::envelope::Ingest;
use crate::config::current::Current;

/// The readings config in force, and whether the store wants what it derives.
pub struct Deriver {
    readings: Current<crate::readings::ReadingsConfig>,
    config: Arc<crate::readings::ReadingsConfig>,
    /// False for the remote API: the receiving tidegate derives.
    on: bool,
}

impl Deriver {
    /// `on` is false for a store that derives nothing itself (the remote API: the receiving
    /// tidegate derives).
    pub fn new(readings: Current<crate::readings::ReadingsConfig>, on: bool) -> Self {
        Deriver {
            config: readings.get(),
            readings,
            on,
        }
    }

    /// Sets `derived` on each message of `ingest` that is not rejected and not derived already.
    pub fn derive(&mut self, ingest: &mut Ingest) {
        if let Some(new) = self.readings.fresh() {
            self.config = new;
        }
        let r = &*self.config;
        let nothing_to_derive = !r.enabled && r.mappings.is_empty();
        if !self.on || nothing_to_derive {
            return;
        }
        for m in ingest.messages_mut() {
            if m.rejection.is_none() && m.derived.is_none() {
                m.derived = crate::readings::derive(r, &m.topic, &m.payload, m.received_at);
            }
        }
    }
}
