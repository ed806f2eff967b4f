//! Acknowledgements to the broker, gated by connection generation. Every (re)connection starts a
//! new generation; an ack is sent only if its delivery arrived on the current one. The check and
//! the send happen under the same lock as "new generation + drain queued acks", so an ack can
//! never reach a later connection, where its packet id could name another message (rumqttc
//! #849). Acks are sent in the order the writer commits, which is arrival order. An ack is
//! never dropped: when rumqttc's request channel is full (brokers do not always honour our
//! Receive Maximum, so a committed batch can owe more acks than the channel holds), the rest wait
//! in order in an overflow queue that a small task feeds in as the event loop drains the channel.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use super::client::{AckToken, Client};

pub struct AckGate {
    state: Mutex<GateState>,
    overflowed: Arc<Notify>,
}

struct GateState {
    generation: u64,
    client: Client,
    overflow: VecDeque<AckToken>,
}

impl AckGate {
    pub(crate) fn new(client: Client) -> Arc<Self> {
        let gate = Arc::new(AckGate {
            state: Mutex::new(GateState {
                generation: 0,
                client,
                overflow: VecDeque::new(),
            }),
            overflowed: Arc::new(Notify::new()),
        });
        // Holds only a weak reference: the task ends when the gate is dropped (see Drop).
        let (weak, wake) = (Arc::downgrade(&gate), gate.overflowed.clone());
        tokio::spawn(async move {
            loop {
                let Some(gate) = weak.upgrade() else { return };
                let waiting = gate.flush();
                drop(gate);
                if waiting == 0 {
                    wake.notified().await;
                } else {
                    // Let the event loop drain the channel before feeding it again.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        gate
    }

    /// Moves waiting acks into the request channel while it has room; returns how many wait still.
    pub(crate) fn flush(&self) -> usize {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let GateState { client, overflow, .. } = &mut *s;
        while let Some(token) = overflow.front() {
            if client.try_ack(token).is_err() {
                break;
            }
            overflow.pop_front();
        }
        overflow.len()
    }

    /// Waits (up to `limit`) until every waiting ack is in the request channel.
    pub(crate) async fn flushed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.flush() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).generation
    }

    /// Starts a new generation, running `drain` (the event loop's `clean`) under the lock so
    /// that no ack of the old generation can be queued after it.
    pub(crate) fn new_generation(&self, drain: impl FnOnce()) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.generation += 1;
        // Waiting acks belong to the old connection, like the queued ones `drain` removes.
        s.overflow.clear();
        drain();
    }

    fn ack(&self, generation: u64, token: AckToken) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.generation != generation {
            return false;
        }
        // Behind waiting acks, or into the channel; if it is full, wait in order.
        if !s.overflow.is_empty() || s.client.try_ack(&token).is_err() {
            s.overflow.push_back(token);
            if s.overflow.len() == 1 {
                self.overflowed.notify_one();
            }
        }
        true
    }
}

impl Drop for AckGate {
    fn drop(&mut self) {
        self.overflowed.notify_one();
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
        let sent = self.gate.ack(self.generation, self.token);
        if !sent {
            tracing::debug!("delivery from an earlier connection not acknowledged; the broker redelivers it");
        }
        sent
    }
}
