//! What travels through the pipeline: messages together with the acknowledgement owed to
//! their sender. An `Ack` is consumed only by `Batch::acknowledge`, which needs the store's
//! `Committed` proof; dropping an `Ack` acknowledges nothing, so the sender redelivers.

use std::ops::Range;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::{
    message::Message,
    source::ack::MqttAck,
    store::{Committed, Outcome},
};

/// The acknowledgement owed to whoever sent a group of messages.
#[must_use = "dropping an Ack leaves the message unacknowledged (it will be redelivered)"]
pub enum Ack {
    /// A broker delivery, acknowledged with PUBACK.
    Mqtt(MqttAck),
    /// An HTTP request waiting for its answer; receives the outcomes of its messages.
    Reply(oneshot::Sender<Vec<Outcome>>),
    /// Nothing to acknowledge (QoS 0).
    None,
}

/// Messages that must be committed together, with their acknowledgement.
pub struct Ingest {
    pub messages: Vec<Message>,
    pub ack: Ack,
}

impl Ingest {
    pub fn one(message: Message, ack: Ack) -> Self {
        Ingest {
            messages: vec![message],
            ack,
        }
    }
}

/// A group of ingests committed in one transaction.
#[derive(Default)]
pub struct Batch {
    messages: Vec<Message>,
    acks: Vec<(Ack, Range<usize>)>,
}

impl Batch {
    pub fn push(&mut self, ingest: Ingest) {
        let start = self.messages.len();
        if start == 0 {
            // The first ingest's vector becomes the batch's: an HTTP request's thousand
            // messages are not copied.
            self.messages = ingest.messages;
        } else {
            self.messages.extend(ingest.messages);
        }
        self.acks.push((ingest.ack, start..self.messages.len()));
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Hands the messages to a store; the batch keeps the acks until it is acknowledged.
    pub fn seal(self) -> SealedBatch {
        SealedBatch {
            messages: Arc::new(self.messages),
            acks: self.acks,
        }
    }
}

/// A batch whose messages are shared with the store (and retried as they are on failure).
pub struct SealedBatch {
    pub messages: Arc<Vec<Message>>,
    acks: Vec<(Ack, Range<usize>)>,
}

impl SealedBatch {
    /// Acknowledges every sender, in arrival order. Takes the store's proof of commit; returns
    /// how many acknowledgements went out.
    pub fn acknowledge(self, committed: &Committed) -> usize {
        let outcomes = committed.outcomes();
        let mut sent = 0;
        for (ack, range) in self.acks {
            match ack {
                Ack::Mqtt(a) => sent += usize::from(a.acknowledge()),
                Ack::Reply(tx) => {
                    let n = range.len();
                    let reply = outcomes.get(range).map(<[Outcome]>::to_vec).unwrap_or_default();
                    if tx.send(reply).is_ok() {
                        sent += n;
                    }
                }
                Ack::None => {}
            }
        }
        sent
    }
}
