//! Acknowledgements to the broker, gated by connection generation. Every (re)connection starts a
//! new generation; an ack is sent only if its delivery arrived on the current one. The check and
//! the send happen under the same lock as "new generation + drain queued acks", so an ack can
//! never reach a later connection, where its packet id could name another message (rumqttc
//! #849). Acks are sent in the order the writer commits, which is arrival order.

use std::sync::{Arc, Mutex};

use super::client::{AckToken, Client};

pub struct AckGate {
    state: Mutex<GateState>,
}

struct GateState {
    generation: u64,
    client: Client,
}

impl AckGate {
    pub(crate) fn new(client: Client) -> Arc<Self> {
        Arc::new(AckGate {
            state: Mutex::new(GateState {
                generation: 0,
                client,
            }),
        })
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).generation
    }

    /// Starts a new generation, running `drain` (the event loop's `clean`) under the lock so
    /// that no ack of the old generation can be queued after it.
    pub(crate) fn new_generation(&self, drain: impl FnOnce()) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.generation += 1;
        drain();
    }

    fn ack(&self, generation: u64, token: &AckToken) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.generation != generation {
            return false;
        }
        s.client.try_ack(token);
        true
    }
}

/// The acknowledgement owed for one delivery. Dropping it sends nothing: the broker keeps the
/// message and redelivers it.
pub struct MqttAck {
    gate: Arc<AckGate>,
    generation: u64,
    token: AckToken,
}

impl MqttAck {
    pub(crate) fn new(gate: Arc<AckGate>, generation: u64, token: AckToken) -> Self {
        MqttAck {
            gate,
            generation,
            token,
        }
    }

    /// Sends the PUBACK if the connection it arrived on is still the current one. Called only by
    /// the pipeline after the commit.
    pub(crate) fn acknowledge(self) -> bool {
        let sent = self.gate.ack(self.generation, &self.token);
        if !sent {
            tracing::debug!("delivery from an earlier connection not acknowledged; the broker redelivers it");
        }
        sent
    }
}
