//! The writer thread: the one owner of the write connection. It takes commands in order from
//! the store (batches, retention, statistics, subscriptions), commits queued batches together
//! (group commit) and answers each batch once the fsync covers it. It must never let a batch
//! overtake an earlier one that failed, nor write anything after an fsync failed.

use std::{collections::VecDeque, sync::Arc};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::{backfill, checkpoint, durable, retain, series, stats, subscriptions, write};
use crate::{
    message::Message,
    store::{Outcome, StoreError},
};

pub(super) type WriteReply = oneshot::Sender<Result<Vec<Outcome>, StoreError>>;

pub(super) enum Command {
    Write(Arc<Vec<Message>>, WriteReply),
    /// What was derived from stored messages (`Store::write_derived`), answered with no
    /// outcomes once it is on disk.
    Backfill(Arc<Vec<(i64, Message)>>, WriteReply),
    Retain(
        crate::config::RetentionPolicy,
        usize,
        oneshot::Sender<Result<u64, StoreError>>,
    ),
    Stats(StatsRows, oneshot::Sender<Result<(), StoreError>>),
    Subscriptions(String, Vec<String>, oneshot::Sender<Result<(), StoreError>>),
}

pub(super) type StatsRows =
    std::collections::HashMap<crate::pipeline::stats::StatsKey, crate::pipeline::stats::StatsRow>;

/// How many batches may wait for the writer thread. Deep, so that everything the pipeline has
/// gathered while a commit runs goes into the next one (`write_held`); the pipeline bounds the
/// messages they hold (`pipeline::writer`).
pub(super) const QUEUE_DEPTH: usize = 64;

pub(super) fn writer_thread(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Command>,
    checkpointer: checkpoint::Checkpointer,
    syncer: Option<durable::Syncer>,
    group_max: usize,
) {
    // After a failed write, later writes wait here until the pipeline hands the failed batch
    // back and it commits (`Store::queue_depth`).
    let mut failed: Option<Arc<Vec<Message>>> = None;
    let mut held: VecDeque<(Arc<Vec<Message>>, WriteReply)> = VecDeque::new();
    let mut series = series::Series::default();
    // A command taken from the queue while gathering writes, handled next.
    let mut next: Option<Command> = None;
    loop {
        let Some(cmd) = next.take().or_else(|| rx.blocking_recv()) else {
            break;
        };
        // After a failed fsync nothing is written again (not even statistics or retention), and
        // nothing waits: every command is refused at once. Holding writes behind a failed batch
        // would deadlock here, because the fsync can fail a batch the writer already wrote,
        // while the batch it marks failed is a later one; the earlier batch's retry would then
        // wait behind the later one forever, and so would stopping.
        if let Some((syncer, why)) = syncer.as_ref().and_then(|s| Some((s, s.broken()?))) {
            let refused = || StoreError::Write(why.to_string());
            // Through the syncer, so that answers keep their order.
            for (_, reply) in held.drain(..) {
                syncer.answer(reply, Err(refused()));
            }
            failed = None;
            match cmd {
                Command::Write(_, reply) | Command::Backfill(_, reply) => {
                    syncer.answer(reply, Err(refused()))
                }
                Command::Retain(_, _, reply) => {
                    let _ = reply.send(Err(refused()));
                }
                Command::Stats(_, reply) | Command::Subscriptions(_, _, reply) => {
                    let _ = reply.send(Err(refused()));
                }
            }
            continue;
        }
        match cmd {
            Command::Write(batch, reply) => {
                if failed.as_ref().is_some_and(|f| !Arc::ptr_eq(f, &batch)) {
                    held.push_back((batch, reply));
                    continue;
                }
                failed = None;
                held.push_front((batch, reply));
                // Group commit: the batches queued behind this one go in the same transaction.
                // With many series a commit writes a page per series whatever it holds, so
                // fewer, larger commits write less for the same messages.
                while let Ok(cmd) = rx.try_recv() {
                    match cmd {
                        Command::Write(batch, reply) => held.push_back((batch, reply)),
                        other => {
                            next = Some(other);
                            break;
                        }
                    }
                }
                write_held(
                    &mut conn,
                    &mut series,
                    syncer.as_ref(),
                    group_max,
                    &mut held,
                    &mut failed,
                );
            }
            Command::Backfill(rows, reply) => {
                let result = backfill::write(&mut conn, &mut series, &rows)
                    .map(|()| Vec::new())
                    .map_err(|e| StoreError::Write(e.to_string()));
                match &syncer {
                    Some(syncer) => syncer.answer(reply, result),
                    None => {
                        let _ = reply.send(result);
                    }
                }
            }
            Command::Retain(policy, chunk, reply) => {
                let result =
                    retain::retain(&mut conn, &policy, chunk).map_err(|e| StoreError::Write(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Stats(rows, reply) => {
                let result =
                    stats::write_stats(&mut conn, &rows).map_err(|e| StoreError::Write(e.to_string()));
                let _ = reply.send(result);
            }
            Command::Subscriptions(client_id, filters, reply) => {
                let result = subscriptions::record(&conn, &client_id, &filters)
                    .map_err(|e| StoreError::Write(e.to_string()));
                let _ = reply.send(result);
            }
        }
    }
    // The last sender is gone: answer what waits for its fsync, then fold the WAL back so the
    // file is complete on its own.
    drop(syncer);
    checkpointer.stop(&mut conn);
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Writes the held batches in order, in as few transactions of at most `group_max` messages as
/// they fit in (a batch larger than that goes alone), and answers each with its own outcomes. A transaction of several batches that fails is tried again one
/// batch at a time, so that a batch fails only for itself, as it would have alone: the first
/// that fails is `failed`, and the ones after it stay held, unanswered, until its retry.
fn write_held(
    conn: &mut Connection,
    series: &mut series::Series,
    syncer: Option<&durable::Syncer>,
    group_max: usize,
    held: &mut VecDeque<(Arc<Vec<Message>>, WriteReply)>,
    failed: &mut Option<Arc<Vec<Message>>>,
) {
    let answer = |reply: WriteReply, result| match syncer {
        Some(syncer) => syncer.answer(reply, result),
        None => {
            let _ = reply.send(result);
        }
    };
    let mut limit = group_max;
    while failed.is_none() && !held.is_empty() {
        let mut group = Vec::new();
        let mut size = 0;
        while let Some((batch, _)) = held.front() {
            if !group.is_empty() && size + batch.len() > limit {
                break;
            }
            size += batch.len();
            group.extend(held.pop_front());
        }
        let result = match syncer.and_then(durable::Syncer::broken) {
            Some(why) => Err(StoreError::Write(why.to_string())),
            None => {
                let slices: Vec<&[Message]> = group.iter().map(|(b, _)| &b[..]).collect();
                write::write_batch(conn, series, &slices).map_err(|e| StoreError::Write(e.to_string()))
            }
        };
        match result {
            Ok(outcomes) => {
                let mut outcomes = outcomes.into_iter();
                for (batch, reply) in group {
                    let own = outcomes.by_ref().take(batch.len()).collect();
                    // Let go of the batch before answering, so the pipeline holds the last
                    // reference and frees the messages on the thread that allocated them:
                    // freed here, they cost this thread, the bottleneck, ~6 % of its time.
                    drop(batch);
                    answer(reply, Ok(own));
                }
            }
            Err(_) if group.len() > 1 => {
                for item in group.into_iter().rev() {
                    held.push_front(item);
                }
                limit = 0;
            }
            Err(e) => {
                let (batch, reply) = group.into_iter().next().expect("a group holds a batch");
                *failed = Some(batch);
                answer(reply, Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::PathBuf,
        time::{Duration, Instant},
    };

    use super::{
        super::{connect, schema},
        *,
    };
    use crate::message::Origin;

    fn batch(topic: &str) -> Arc<Vec<Message>> {
        let m = Message::new(
            topic.into(),
            bytes::Bytes::from_static(b"1"),
            1,
            false,
            Origin::Http,
            1024,
        );
        Arc::new(vec![m])
    }

    /// The answer, or `None` if none came within five seconds.
    fn answer<T>(mut rx: oneshot::Receiver<T>) -> Option<T> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match rx.try_recv() {
                Ok(v) => return Some(v),
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) if Instant::now() > deadline => return None,
                Err(oneshot::error::TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// A file at the current schema, and a writer thread for it once `start` is called,
    /// committing at most `group_max` messages at a time: the commands sent before then are all
    /// queued when it takes the first.
    fn queued_writer(
        setup: &str,
        group_max: usize,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        mpsc::Sender<Command>,
        impl FnOnce() -> std::thread::JoinHandle<()>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = connect(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        schema::migrate(&mut conn).unwrap();
        conn.execute_batch(setup).unwrap();
        let checkpointer = checkpoint::Checkpointer::start(&path, &mut conn).unwrap();
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let start =
            move || std::thread::spawn(move || writer_thread(conn, rx, checkpointer, None, group_max));
        (dir, path, tx, start)
    }

    /// Messages delivered on MQTT session `s` with the next packet ids, readings and the
    /// mappings of `cfg` derived.
    fn delivered(
        payloads: &[&str],
        pkid: &mut u16,
        cfg: &crate::readings::ReadingsConfig,
    ) -> Arc<Vec<Message>> {
        let session: Arc<str> = "s".into();
        Arc::new(
            payloads
                .iter()
                .map(|p| {
                    *pkid += 1;
                    let origin = Origin::Mqtt {
                        session: session.clone(),
                        pkid: *pkid,
                        redelivery: false,
                    };
                    let mut m = Message::new(
                        "s/1".into(),
                        bytes::Bytes::from(p.to_string()),
                        1,
                        false,
                        origin,
                        1024,
                    );
                    m.derived = crate::readings::derive(cfg, &m.topic, &m.payload, m.received_at);
                    m
                })
                .collect(),
        )
    }

    fn send(
        tx: &mpsc::Sender<Command>,
        b: &Arc<Vec<Message>>,
    ) -> oneshot::Receiver<Result<Vec<Outcome>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        tx.blocking_send(Command::Write(b.clone(), reply)).unwrap();
        rx
    }

    fn ids(answer: Option<Result<Vec<Outcome>, StoreError>>) -> Vec<i64> {
        let outcomes = answer.expect("answered").expect("committed");
        outcomes
            .iter()
            .map(|o| match o {
                Outcome::Stored { id } => *id,
                other => panic!("not stored: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn batches_queued_for_the_writer_go_in_one_commit_and_each_gets_its_own_outcomes() {
        // Up to the batch size: all three together, or the first two and then the third.
        for (group_max, commits) in [(6, 1), (3, 2)] {
            let (_dir, path, tx, start) = queued_writer("", group_max);
            let (mut pkid, cfg) = (0, crate::readings::ReadingsConfig::default());
            let batches = [
                delivered(&[r#"{"v":1}"#], &mut pkid, &cfg),
                delivered(&[r#"{"v":2}"#, r#"{"v":3}"#], &mut pkid, &cfg),
                delivered(&[r#"{"v":4}"#, r#"{"v":5}"#, r#"{"v":6}"#], &mut pkid, &cfg),
            ];
            let answers: Vec<_> = batches.iter().map(|b| send(&tx, b)).collect();
            let writer = start();
            let got: Vec<Vec<i64>> = answers.into_iter().map(|a| ids(answer(a))).collect();
            assert_eq!(got, [vec![1], vec![2, 3], vec![4, 5, 6]]);
            drop(tx);
            writer.join().unwrap();
            let conn = connect(&path).unwrap();
            let rows: i64 = conn
                .query_row("SELECT count(*) FROM delivery_batches", [], |r| r.get(0))
                .unwrap();
            assert_eq!(rows, commits, "a row of delivery marks per commit and session");
            let values: Vec<f64> = conn
                .prepare("SELECT value FROM readings ORDER BY message_id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        }
    }

    #[test]
    fn a_batch_that_fails_in_a_group_commit_fails_alone_and_the_ones_after_it_wait() {
        // The user's own table for a mapping refuses one batch's row; no other batch has one.
        let (_dir, path, tx, start) = queued_writer(
            "CREATE TABLE wide (id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, ts DATETIME NOT NULL,
                                topic TEXT NOT NULL, device TEXT, v REAL CHECK (v < 100));",
            5000,
        );
        let spec: crate::readings::mapping::MappingSpec =
            toml::from_str("filter = \"s/+\"\ntable = \"wide\"\n[columns]\nv = \"$.v\"\n").unwrap();
        let mapped = crate::readings::ReadingsConfig {
            mappings: vec![Arc::new(
                crate::readings::mapping::Mapping::from_spec(&spec).unwrap(),
            )],
            ..Default::default()
        };
        let plain = crate::readings::ReadingsConfig::default();
        let mut pkid = 0;
        let fine = delivered(&[r#"{"v":1}"#], &mut pkid, &plain);
        let refused = delivered(&[r#"{"v":500}"#], &mut pkid, &mapped);
        let after = delivered(&[r#"{"v":2}"#], &mut pkid, &plain);
        let (a, b, c) = (send(&tx, &fine), send(&tx, &refused), send(&tx, &after));
        let writer = start();
        assert_eq!(ids(answer(a)), [1], "the batch before the refused one commits");
        let why = answer(b).expect("answered").unwrap_err().to_string();
        assert!(why.contains("CHECK"), "{why}");
        // The pipeline retries the refused batch; the one after it waits for that, unanswered.
        let b = send(&tx, &refused);
        assert!(answer(b).expect("answered").is_err());
        let mut c = c;
        assert!(matches!(c.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        drop(tx);
        writer.join().unwrap();
        let stored: i64 = connect(&path)
            .unwrap()
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, 1);
    }

    #[test]
    fn after_a_failed_fsync_every_command_is_refused_at_once_even_an_earlier_batchs_retry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = connect(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        schema::migrate(&mut conn).unwrap();
        let checkpointer = checkpoint::Checkpointer::start(&path, &mut conn).unwrap();
        // The fsync fails, after the writer has already gone on to the next batch.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let syncer = durable::Syncer::with(move || {
            gate.recv().ok();
            Err(std::io::Error::other("injected EIO"))
        })
        .unwrap();
        let (tx, rx) = mpsc::channel(2);
        let writer = std::thread::spawn(move || writer_thread(conn, rx, checkpointer, Some(syncer), 5000));
        let write = |b: &Arc<Vec<Message>>| {
            let (reply, rx) = oneshot::channel();
            tx.blocking_send(Command::Write(b.clone(), reply)).unwrap();
            rx
        };
        let (a, b) = (batch("a"), batch("b"));
        let a_first = write(&a);
        release.send(()).unwrap();
        let a_first = answer(a_first).expect("the first batch is answered");
        assert!(a_first.unwrap_err().to_string().contains("injected EIO"));
        assert!(answer(write(&b)).expect("answered").is_err());
        // The pipeline retries the earlier batch first: it must not wait behind the later one.
        assert!(answer(write(&a))
            .expect("the retry is answered, not held")
            .is_err());
        assert!(answer(write(&b)).expect("answered").is_err());
        let (reply, rx) = oneshot::channel();
        tx.blocking_send(Command::Stats(StatsRows::default(), reply))
            .unwrap();
        assert!(
            answer(rx).expect("answered").is_err(),
            "nothing is written after a failed fsync"
        );
        drop(tx);
        writer.join().unwrap();
    }
}
