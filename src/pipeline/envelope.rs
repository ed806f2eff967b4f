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
    messages: Messages,
    pub ack: Ack,
}

/// A broker delivery is one message: it travels inline, without a vector of its own to
/// allocate and free for every message.
#[allow(
    clippy::large_enum_variant,
    reason = "inline on purpose: boxing the one message would bring back the allocation"
)]
enum Messages {
    One(Message),
    Many(Vec<Message>),
}

impl Ingest {
    pub fn one(message: Message, ack: Ack) -> Self {
        Ingest {
            messages: Messages::One(message),
            ack,
        }
    }

    pub fn many(messages: Vec<Message>, ack: Ack) -> Self {
        Ingest {
            messages: Messages::Many(messages),
            ack,
        }
    }

    pub fn messages_mut(&mut self) -> &mut [Message] {
        match &mut self.messages {
            Messages::One(m) => std::slice::from_mut(m),
            Messages::Many(v) => v,
        }
    }
}

/// A group of ingests committed in one transaction.
#[derive(Default)]
pub struct Batch {
    messages: Vec<Message>,
    acks: Vec<(Ack, Range<usize>)>,
    /// Broker deliveries among them, each waiting for its PUBACK.
    owed: usize,
}

impl Batch {
    pub fn push(&mut self, ingest: Ingest) {
        let start = self.messages.len();
        match ingest.messages {
            Messages::One(m) => self.messages.push(m),
            // The first ingest's vector becomes the batch's: an HTTP request's thousand
            // messages are not copied.
            Messages::Many(v) if start == 0 => self.messages = v,
            Messages::Many(v) => self.messages.extend(v),
        }
        self.owed += usize::from(matches!(ingest.ack, Ack::Mqtt(_)));
        self.acks.push((ingest.ack, start..self.messages.len()));
    }

    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// How many broker deliveries wait for this batch's commit to be acknowledged.
    pub fn owed(&self) -> usize {
        self.owed
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Origin;

    fn msg(topic: &str) -> Message {
        Message::new(
            topic.into(),
            bytes::Bytes::from_static(b"1"),
            1,
            false,
            Origin::Http,
            1024,
        )
    }

    #[test]
    fn each_sender_gets_the_outcomes_of_its_own_messages_whether_it_sent_one_or_many() {
        let mut batch = Batch::default();
        let (one_tx, mut one_rx) = oneshot::channel();
        let (many_tx, mut many_rx) = oneshot::channel();
        let (last_tx, mut last_rx) = oneshot::channel();
        batch.push(Ingest::one(msg("a"), Ack::Reply(one_tx)));
        batch.push(Ingest::many(vec![msg("b"), msg("c")], Ack::Reply(many_tx)));
        batch.push(Ingest::one(msg("d"), Ack::None));
        batch.push(Ingest::one(msg("e"), Ack::Reply(last_tx)));
        let sealed = batch.seal();
        let topics: Vec<&str> = sealed.messages.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["a", "b", "c", "d", "e"], "arrival order kept");
        let outcomes = (1..=5).map(|id| Outcome::Stored { id }).collect();
        assert_eq!(sealed.acknowledge(&Committed::new(outcomes)), 4);
        assert_eq!(one_rx.try_recv().unwrap(), [Outcome::Stored { id: 1 }]);
        assert_eq!(
            many_rx.try_recv().unwrap(),
            [Outcome::Stored { id: 2 }, Outcome::Stored { id: 3 }]
        );
        assert_eq!(last_rx.try_recv().unwrap(), [Outcome::Stored { id: 5 }]);
    }

    #[test]
    fn readings_are_derived_in_place_for_one_message_or_many() {
        let mut one = Ingest::one(msg("a"), Ack::None);
        one.messages_mut()[0].topic = "x".into();
        let mut many = Ingest::many(vec![msg("b"), msg("c")], Ack::None);
        assert_eq!(many.messages_mut().len(), 2);
        let mut batch = Batch::default();
        batch.push(one);
        batch.push(many);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.seal().messages[0].topic, "x");
    }
}
