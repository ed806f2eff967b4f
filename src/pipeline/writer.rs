//! The writer: takes ingests off the queue into the next batch (deriving their readings), hands
//! each sealed batch to `commit`, which commits it and only then acknowledges it, and keeps the
//! acknowledgements in the order the batches were handed over. A failed commit is retried with
//! backoff, forever, without acknowledging anything — the broker holds the backlog meanwhile.
//! It must never drop a batch while it can still be committed.

use std::sync::Arc;

use futures::{stream::FuturesOrdered, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};

use super::{batcher::Batcher, commit::Committer, derive::Deriver, envelope::Ingest};
use crate::{
    config::{current::Current, PipelineSettings},
    store::{Store, StoredMessage},
};

/// The size from which a batch is handed to a store that groups queued batches
/// (`Store::groups_queued`) while it is still committing. Smaller ones wait for that commit to
/// end, growing meanwhile: a batch costs the pipeline and the store a little whatever it holds.
const QUEUE_AT: usize = 256;

/// Messages as they are committed, for the live stream.
pub type Live = broadcast::Sender<Arc<StoredMessage>>;

/// What the writer needs besides its queue.
pub struct Writer {
    pub store: Arc<dyn Store>,
    pub settings: PipelineSettings,
    /// Set to the reason while the store cannot be written; `None` when it works.
    pub fault: watch::Sender<Option<String>>,
    /// Fires when the process stops: a batch that cannot be committed is then abandoned
    /// (unacknowledged, so redelivered later) instead of retried.
    pub stop: watch::Receiver<bool>,
    pub live: Live,
    /// Replaced by a reload; a message is derived with the config in force when it is taken.
    pub readings: Current<crate::readings::ReadingsConfig>,
    pub stats: Arc<super::stats::StatsBook>,
}

impl Writer {
    /// Runs until every source is gone and the queue is drained, or until `stop` fires while the
    /// store cannot write.
    ///
    /// The next batch is gathered and its readings derived while the previous one commits; a
    /// store that queues (`Store::queue_depth`) is handed it at once, or for one that commits
    /// what is queued together (`Store::groups_queued`, SQLite) once it holds `QUEUE_AT`
    /// messages or cannot grow, so the store goes from one commit to the next without waiting
    /// for this loop. Batches are acknowledged in the order they were handed over, whatever
    /// order their answers come in.
    pub async fn run(self, mut rx: mpsc::Receiver<Ingest>) {
        let Writer {
            store,
            settings,
            fault,
            stop,
            live,
            readings,
            stats,
        } = self;
        let depth = store.queue_depth().max(1);
        // Below this, a batch waits behind a running commit, growing: for a store that commits
        // what is queued together, it would join that store's next commit anyway.
        let queue_at = if store.groups_queued() { QUEUE_AT } else { 1 };
        let mut derive = Deriver::new(readings, store.uses_derived());
        let committer = Arc::new(Committer {
            store,
            fault,
            stop,
            live,
            stats,
        });
        let mut batcher = Batcher::new(settings.batch_size, settings.batch_delay, settings.ack_window);
        let mut in_flight = FuturesOrdered::new();
        // Messages in the batches handed over and not yet answered.
        let mut queued = 0;
        let most_queued = 2 * settings.batch_size;
        let mut open = true;
        loop {
            let due = batcher.due();
            // Whether the batch being built may be handed over now, if it is ready. Behind a
            // running commit, only a batch of `queue_at` or one that cannot grow: a smaller one
            // waits for the commit to end, growing meanwhile. Whatever is queued stays under two
            // full batches.
            let may_go = |batcher: &Batcher, in_flight: usize, queued: usize, open: bool| {
                in_flight == 0
                    || (in_flight < depth
                        && queued + batcher.size() <= most_queued
                        && (batcher.size() >= queue_at || batcher.complete(open)))
            };
            tokio::select! {
                biased;
                done = in_flight.next(), if !in_flight.is_empty() => match done {
                    Some(Some((batch, committed))) => queued -= committer.acknowledge(batch, &committed),
                    // Stopping with a batch that could not be committed: it stays unacknowledged,
                    // and so does everything after it.
                    _ => return,
                },
                ingest = rx.recv(), if open && batcher.has_room() => match ingest {
                    Some(mut ingest) => {
                        derive.derive(&mut ingest);
                        batcher.push(ingest);
                    }
                    None => open = false,
                },
                // Built only when polled: no timer per message while a commit runs.
                _ = async {
                    match due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                }, if due.is_some() && may_go(&batcher, in_flight.len(), queued, open) => {}
                else => break,
            }
            if in_flight.len() < depth {
                // Everything queued behind what woke us goes in too.
                while open && batcher.has_room() {
                    match rx.try_recv() {
                        Ok(mut ingest) => {
                            derive.derive(&mut ingest);
                            batcher.push(ingest);
                        }
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                    }
                }
                if batcher.ready(open) && may_go(&batcher, in_flight.len(), queued, open) {
                    let batch = batcher.take().seal();
                    queued += batch.messages.len();
                    in_flight.push_back(committer.clone().commit(batch));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Mutex, time::Duration};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::{
        message::{Message, Origin},
        pipeline::Ack,
        store::{Committed, MessageQuery, Outcome, StoreError, StoredMessage, TopicStats},
    };

    /// Records the size of each batch handed over; a commit ends when the test lets it.
    struct Gate {
        sizes: Mutex<Vec<usize>>,
        commits: Semaphore,
        depth: usize,
        groups: bool,
    }

    #[async_trait::async_trait]
    impl Store for Gate {
        async fn write(&self, batch: Arc<Vec<Message>>) -> Result<Committed, StoreError> {
            self.sizes.lock().unwrap().push(batch.len());
            self.commits.acquire().await.expect("open").forget();
            Ok(Committed::new(vec![Outcome::Stored { id: 0 }; batch.len()]))
        }
        fn queue_depth(&self) -> usize {
            self.depth
        }
        fn groups_queued(&self) -> bool {
            self.groups
        }
        async fn messages(&self, _: MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
            Err(StoreError::Closed)
        }
        async fn topics(&self) -> Result<Vec<TopicStats>, StoreError> {
            Err(StoreError::Closed)
        }
        fn describe(&self) -> String {
            "gate".into()
        }
    }

    fn posted(n: usize) -> Ingest {
        let m = || {
            Message::new(
                "t".into(),
                bytes::Bytes::from_static(b"1"),
                0,
                false,
                Origin::Http,
                1024,
            )
        };
        Ingest::many((0..n).map(|_| m()).collect(), Ack::None)
    }

    /// A pipeline in front of a `Gate`, and the sender feeding it.
    fn pipeline(
        depth: usize,
        groups: bool,
    ) -> (Arc<Gate>, crate::pipeline::Sender, tokio::task::JoinHandle<()>) {
        let gate = Arc::new(Gate {
            sizes: Mutex::new(Vec::new()),
            commits: Semaphore::new(0),
            depth,
            groups,
        });
        let (tx, rx) = crate::pipeline::channel();
        let writer = Writer {
            store: gate.clone(),
            settings: PipelineSettings {
                batch_size: 5000,
                batch_delay: Duration::ZERO,
                ack_window: usize::MAX,
            },
            fault: watch::channel(None).0,
            stop: watch::channel(false).1,
            live: broadcast::channel(1).0,
            readings: Current::fixed(Default::default()),
            stats: Default::default(),
        };
        (gate, tx, tokio::spawn(writer.run(rx)))
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    #[tokio::test]
    async fn behind_a_running_commit_a_small_batch_grows_and_a_large_one_is_queued() {
        let (gate, tx, writer) = pipeline(64, true);
        let sizes = || gate.sizes.lock().unwrap().clone();
        tx.send(posted(1)).await.unwrap();
        settle().await;
        assert_eq!(sizes(), [1], "with nothing committing, a batch goes at once");
        for _ in 0..10 {
            tx.send(posted(1)).await.unwrap();
        }
        settle().await;
        assert_eq!(
            sizes(),
            [1],
            "a small batch waits for the running commit, growing"
        );
        tx.send(posted(QUEUE_AT)).await.unwrap();
        settle().await;
        assert_eq!(sizes(), [1, 10 + QUEUE_AT], "a large one is queued behind it");
        tx.send(posted(3)).await.unwrap();
        gate.commits.add_permits(2);
        settle().await;
        assert_eq!(
            sizes(),
            [1, 10 + QUEUE_AT, 3],
            "once the commits end, the rest goes"
        );
        gate.commits.add_permits(1);
        drop(tx);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_store_that_commits_each_batch_alone_gets_the_next_one_at_once() {
        let (gate, tx, writer) = pipeline(2, false);
        let sizes = || gate.sizes.lock().unwrap().clone();
        tx.send(posted(1)).await.unwrap();
        settle().await;
        for _ in 0..10 {
            tx.send(posted(1)).await.unwrap();
        }
        settle().await;
        assert_eq!(sizes(), [1, 10], "the next batch overlaps the running commit");
        tx.send(posted(1)).await.unwrap();
        settle().await;
        assert_eq!(sizes(), [1, 10], "two at a time");
        gate.commits.add_permits(1);
        settle().await;
        assert_eq!(sizes(), [1, 10, 1]);
        gate.commits.add_permits(2);
        drop(tx);
        writer.await.unwrap();
    }
}
