//! The one rule every store applies to recognise a message it already has, so SQLite and
//! PostgreSQL decide identically:
//! - a broker redelivery (DUP flag) whose session and packet id last committed the same content
//!   is a duplicate (the crash came between commit and PUBACK);
//! - a retained message (retain flag set: a replay on a new subscription, never a live delivery)
//!   equal to the last message stored on its topic is the state tidegate already has.
//!
//! Two identical messages published separately are both stored: the first delivery of a
//! message never carries the DUP flag. Stores supply the marks; this module never does I/O.

use crate::message::{Message, Origin};

pub type Hash = [u8; 16];

/// Where a store keeps its marks (read inside the write transaction).
pub trait Marks {
    type Error;
    fn delivery(&mut self, session: &str, pkid: u16) -> Result<Option<Hash>, Self::Error>;
    /// The hash of the last message stored on `topic`.
    fn last_stored(&mut self, topic: &str) -> Result<Option<Hash>, Self::Error>;
    fn set_last_stored(&mut self, topic: &str, hash: Hash) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Duplicate,
    Reject,
    Store,
}

/// Decides what to do with `m`, and records a message to be stored as its topic's last.
/// The caller records the delivery mark after writing (see `delivery_mark`).
pub fn verdict<M: Marks>(m: &Message, hash: Hash, marks: &mut M) -> Result<Verdict, M::Error> {
    if let Origin::Mqtt {
        session,
        pkid,
        redelivery: true,
    } = &m.origin
    {
        if marks.delivery(session, *pkid)? == Some(hash) {
            return Ok(Verdict::Duplicate);
        }
    }
    if m.retain && marks.last_stored(&m.topic)? == Some(hash) {
        return Ok(Verdict::Duplicate);
    }
    if m.rejection.is_some() {
        return Ok(Verdict::Reject);
    }
    marks.set_last_stored(&m.topic, hash)?;
    Ok(Verdict::Store)
}

/// The (session, packet id) mark to record for a written message, if it came over MQTT with QoS > 0.
pub fn delivery_mark(m: &Message) -> Option<(&str, u16)> {
    match &m.origin {
        Origin::Mqtt { session, pkid, .. } if m.qos > 0 => Some((&**session, *pkid)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::Bytes;

    use super::*;

    #[derive(Default)]
    struct Mem {
        delivery: HashMap<(String, u16), Hash>,
        retained: HashMap<String, Hash>,
    }

    impl Marks for Mem {
        type Error = ();
        fn delivery(&mut self, s: &str, p: u16) -> Result<Option<Hash>, ()> {
            Ok(self.delivery.get(&(s.to_string(), p)).copied())
        }
        fn last_stored(&mut self, t: &str) -> Result<Option<Hash>, ()> {
            Ok(self.retained.get(t).copied())
        }
        fn set_last_stored(&mut self, t: &str, h: Hash) -> Result<(), ()> {
            self.retained.insert(t.into(), h);
            Ok(())
        }
    }

    fn mqtt(payload: &'static str, pkid: u16, dup: bool, retain: bool) -> Message {
        let origin = Origin::Mqtt {
            session: "s".into(),
            pkid,
            redelivery: dup,
        };
        Message::new(
            "t".into(),
            Bytes::from_static(payload.as_bytes()),
            1,
            retain,
            origin,
            100,
        )
    }

    fn run(marks: &mut Mem, m: &Message) -> Verdict {
        let v = verdict(m, m.content_hash(), marks).unwrap();
        if v != Verdict::Duplicate {
            if let Some((s, p)) = delivery_mark(m) {
                marks.delivery.insert((s.into(), p), m.content_hash());
            }
        }
        v
    }

    #[test]
    fn redelivery_of_a_committed_message_is_a_duplicate() {
        let mut marks = Mem::default();
        assert_eq!(run(&mut marks, &mqtt("a", 1, false, false)), Verdict::Store);
        assert_eq!(run(&mut marks, &mqtt("a", 1, true, false)), Verdict::Duplicate);
        // Same packet id, different content: a different message.
        assert_eq!(run(&mut marks, &mqtt("b", 1, true, false)), Verdict::Store);
        // Identical content without the DUP flag: published separately, stored.
        assert_eq!(run(&mut marks, &mqtt("b", 1, false, false)), Verdict::Store);
        assert_eq!(run(&mut marks, &mqtt("b", 2, false, false)), Verdict::Store);
    }

    #[test]
    fn retained_replays_are_stored_once() {
        let mut marks = Mem::default();
        assert_eq!(run(&mut marks, &mqtt("on", 1, false, true)), Verdict::Store);
        assert_eq!(run(&mut marks, &mqtt("on", 9, false, true)), Verdict::Duplicate);
        assert_eq!(run(&mut marks, &mqtt("off", 10, false, true)), Verdict::Store);
        assert_eq!(run(&mut marks, &mqtt("on", 11, false, true)), Verdict::Store);
        // Delivered live (retain flag cleared by the broker), then replayed to a new session.
        assert_eq!(run(&mut marks, &mqtt("lamp", 12, false, false)), Verdict::Store);
        let mut replay = mqtt("lamp", 1, false, true);
        replay.topic = "t".into();
        assert_eq!(run(&mut marks, &replay), Verdict::Duplicate);
    }
}
