//! Groups ingests into the next batch while the previous one commits: whatever arrives, up to
//! the size limit, optionally lingering for more. It never splits an ingest (an HTTP request is
//! all or nothing) and never acknowledges anything.
//!
//! Why linger: every commit writes each page it touches whole, about 50 KiB whatever the batch
//! holds, so at a few hundred messages a second one commit a message writes tens of MB a second
//! (docs/deploy.md, "Disk writes"). With a delay, batches go at most once per delay, yet a
//! message after a quiet spell goes at once, and a batch owing the broker as many
//! acknowledgements as it may have in flight goes at once too: past that the broker only waits.

use std::time::Duration;

use tokio::time::Instant;

use super::envelope::{Batch, Ingest};

pub struct Batcher {
    building: Batch,
    max: usize,
    /// Broker deliveries a batch may owe before it goes without lingering.
    ack_window: usize,
    linger: Duration,
    /// When the first ingest of the batch being built arrived.
    since: Option<Instant>,
    /// When the last batch was taken.
    taken: Option<Instant>,
}

impl Batcher {
    pub fn new(max: usize, linger: Duration, ack_window: usize) -> Self {
        Batcher {
            building: Batch::default(),
            max,
            ack_window,
            linger,
            since: None,
            taken: None,
        }
    }

    pub fn push(&mut self, ingest: Ingest) {
        self.since.get_or_insert_with(Instant::now);
        self.building.push(ingest);
    }

    pub fn has_room(&self) -> bool {
        self.building.len() < self.max
    }

    /// When the batch being built is due, however much more arrives: a linger after the last
    /// batch was taken, or at once after a quiet spell that long. `None` while it is empty.
    pub fn due(&self) -> Option<Instant> {
        let since = self.since?;
        Some(match self.taken {
            Some(taken) => since.max(taken + self.linger),
            None => since,
        })
    }

    /// Whether the batch should go to the store now: it is full, it owes the broker its whole
    /// in-flight window, its linger is over, or nothing more can arrive (`open` is false).
    pub fn ready(&self, open: bool) -> bool {
        self.complete(open) || (!self.building.is_empty() && self.due().is_some_and(|d| d <= Instant::now()))
    }

    /// Whether the batch cannot usefully grow: it is full, it owes the broker its whole
    /// in-flight window, or nothing more can arrive (`open` is false).
    pub fn complete(&self, open: bool) -> bool {
        !self.building.is_empty() && (!self.has_room() || self.building.owed() >= self.ack_window || !open)
    }

    /// Messages in the batch being built.
    pub fn size(&self) -> usize {
        self.building.len()
    }

    pub fn take(&mut self) -> Batch {
        self.since = None;
        self.taken = Some(Instant::now());
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
        let mut b = Batcher::new(5, Duration::from_millis(200), usize::MAX);
        assert!(!b.ready(true) && !b.ready(false), "an empty batch never goes");
        b.push(ingest(3));
        assert!(
            b.ready(true),
            "the first batch does not wait: nothing was committed before it"
        );
        assert_eq!(b.take().len(), 3);
        b.push(ingest(3));
        assert!(!b.ready(true), "room left and lingering after the last batch");
        assert!(b.ready(false), "nothing more can arrive");
        std::thread::sleep(Duration::from_millis(250));
        assert!(b.ready(true), "linger over");
        b.push(ingest(4));
        assert!(!b.has_room());
        assert_eq!(b.take().len(), 7, "an ingest is never split, even past the limit");
        assert!(b.due().is_none() && b.has_room());
        std::thread::sleep(Duration::from_millis(250));
        b.push(ingest(1));
        assert!(
            b.ready(true),
            "after a quiet spell as long as the linger, a message goes at once"
        );

        let mut eager = Batcher::new(5, Duration::ZERO, usize::MAX);
        eager.push(ingest(1));
        assert!(eager.ready(true), "no linger: goes as soon as it has something");
    }
}
