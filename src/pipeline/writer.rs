//! The writer: commits each batch and only then acknowledges it. A failed commit is retried with
//! backoff, forever, without acknowledging anything — the broker holds the backlog meanwhile.
//! It must never drop a batch while it can still be committed.

use std::{sync::Arc, time::Duration};

use futures::{stream::FuturesOrdered, StreamExt};
use tokio::sync::{broadcast, mpsc, watch};

use super::{
    batcher::Batcher,
    envelope::{Ingest, SealedBatch},
};
use crate::{
    config::{current::Current, PipelineSettings},
    store::{Committed, Outcome, Store, StoredMessage},
    telemetry as t,
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
        let mut derive = Deriver {
            config: readings.get(),
            readings,
            on: store.uses_derived(),
        };
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

/// Readings and mapped rows are derived as a message is taken into a batch, before it is sealed,
/// with the config in force at that moment.
struct Deriver {
    readings: Current<crate::readings::ReadingsConfig>,
    config: Arc<crate::readings::ReadingsConfig>,
    /// False for the remote API: the receiving tidegate derives.
    on: bool,
}

impl Deriver {
    fn derive(&mut self, ingest: &mut Ingest) {
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

/// Commits batches and acknowledges them.
struct Committer {
    store: Arc<dyn Store>,
    fault: watch::Sender<Option<String>>,
    stop: watch::Receiver<bool>,
    live: Live,
    stats: Arc<super::stats::StatsBook>,
}

impl Committer {
    /// Commits, retrying with backoff. `None` when stopping before it could commit: the batch
    /// is dropped unacknowledged, so it is redelivered.
    async fn commit(self: Arc<Self>, batch: SealedBatch) -> Option<(SealedBatch, Committed)> {
        let mut stop = self.stop.clone();
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            match self.store.write(batch.messages.clone()).await {
                Ok(committed) => {
                    // Handed over to committed: behind a queueing store this includes the wait
                    // for the batch ahead, which is what an acknowledgement waits for too.
                    metrics::histogram!(t::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
                    metrics::histogram!(t::BATCH_SIZE).record(batch.messages.len() as f64);
                    metrics::counter!(t::BATCHES).increment(1);
                    if self.fault.borrow().is_some() {
                        tracing::info!(store = %self.store.describe(), "store writable again; resuming acknowledgements");
                        let _ = self.fault.send(None);
                        metrics::gauge!(t::STORE_WRITABLE).set(1.0);
                    }
                    return Some((batch, committed));
                }
                Err(e) => {
                    let reason = e.to_string();
                    if self.fault.borrow().as_deref() != Some(reason.as_str()) {
                        tracing::error!(
                            store = %self.store.describe(),
                            error = %reason,
                            "cannot write to the store; nothing is acknowledged until it works again (retrying)"
                        );
                        let _ = self.fault.send(Some(reason));
                        metrics::gauge!(t::STORE_WRITABLE).set(0.0);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => {}
                    }
                    if *stop.borrow() {
                        tracing::warn!(
                            rows = batch.messages.len(),
                            "stopping with an uncommitted batch; it was not acknowledged and will be redelivered"
                        );
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Everything owed once a batch is committed, in the order batches were handed over: the
    /// live stream, the statistics, and the acknowledgements. Returns how many messages the
    /// batch held.
    fn acknowledge(&self, batch: SealedBatch, committed: &Committed) -> usize {
        let held = batch.messages.len();
        self.publish_live(&batch.messages, committed);
        self.stats
            .record(&batch.messages, committed.outcomes(), crate::time::now());
        record_outcomes(committed);
        let acked = batch.acknowledge(committed);
        metrics::counter!(t::ACKED).increment(acked as u64);
        held
    }

    fn publish_live(&self, messages: &[crate::message::Message], committed: &Committed) {
        if self.live.receiver_count() == 0 {
            return;
        }
        for (m, outcome) in messages.iter().zip(committed.outcomes()) {
            if let Outcome::Stored { id } = outcome {
                let _ = self.live.send(Arc::new(StoredMessage::from_message(*id, m)));
            }
        }
    }
}

fn record_outcomes(committed: &Committed) {
    let (mut stored, mut dup, mut rejected) = (0u64, 0u64, 0u64);
    for o in committed.outcomes() {
        match o {
            Outcome::Stored { .. } | Outcome::Spooled => stored += 1,
            Outcome::Duplicate => dup += 1,
            Outcome::Rejected => rejected += 1,
        }
    }
    metrics::counter!(t::COMMITTED).increment(stored);
    metrics::counter!(t::DUPLICATES).increment(dup);
    metrics::counter!(t::REJECTED).increment(rejected);
    metrics::gauge!(t::IN_FLIGHT).decrement((stored + dup + rejected) as f64);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;

    use super::*;
    use crate::{
        message::{Message, Origin},
        pipeline::Ack,
        store::{MessageQuery, StoreError, StoredMessage, TopicStats},
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
