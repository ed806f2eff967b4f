//! Groups ingests into the next batch while the previous one commits: whatever arrives, up to
//! the size limit, optionally lingering a little for more. It never splits an ingest (an HTTP
//! request is all or nothing) and never acknowledges anything.

use std::time::Duration;

use tokio::time::Instant;

use super::envelope::{Batch, Ingest};

pub struct Batcher {
    building: Batch,
    max: usize,
    linger: Duration,
    /// When the first ingest of the batch being built arrived.
    since: Option<Instant>,
}

impl Batcher {
    pub fn new(max: usize, linger: Duration) -> Self {
        Batcher {
            building: Batch::default(),
            max,
            linger,
            since: None,
        }
    }

    pub fn push(&mut self, ingest: Ingest) {
        self.since.get_or_insert_with(Instant::now);
        self.building.push(ingest);
    }

    pub fn has_room(&self) -> bool {
        self.building.len() < self.max
    }

    /// When the batch being built is due, however much more arrives; `None` while it is empty.
    pub fn due(&self) -> Option<Instant> {
        self.since.map(|s| s + self.linger)
    }

    /// Whether the batch should go to the store now: it is full, its linger is over, or nothing
    /// more can arrive (`open` is false).
    pub fn ready(&self, open: bool) -> bool {
        !self.building.is_empty()
            && (!self.has_room() || !open || self.due().is_some_and(|d| d <= Instant::now()))
    }

    pub fn take(&mut self) -> Batch {
        self.since = None;
        std::mem::take(&mut self.building)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        message::{Message, Origin},
        pipeline::Ack,
    };

    fn ingest(n: usize) -> Ingest {
        Ingest::many(
            (0..n)
                .map(|i| {
                    Message::new(
                        format!("t/{i}"),
                        bytes::Bytes::from_static(b"1"),
                        0,
                        false,
                        Origin::Http,
                        1024,
                    )
                })
                .collect(),
            Ack::None,
        )
    }

    #[test]
    fn a_batch_is_ready_when_full_closed_or_lingered_and_ingests_stay_whole() {
        let mut b = Batcher::new(5, Duration::from_millis(10));
        assert!(!b.ready(true) && !b.ready(false), "an empty batch never goes");
        b.push(ingest(3));
        assert!(!b.ready(true), "room left and lingering");
        assert!(b.ready(false), "nothing more can arrive");
        std::thread::sleep(Duration::from_millis(15));
        assert!(b.ready(true), "linger over");
        b.push(ingest(4));
        assert!(!b.has_room());
        assert_eq!(b.take().len(), 7, "an ingest is never split, even past the limit");
        assert!(b.due().is_none() && b.has_room());

        let mut eager = Batcher::new(5, Duration::ZERO);
        eager.push(ingest(1));
        assert!(eager.ready(true), "no linger: goes as soon as it has something");
    }
}
