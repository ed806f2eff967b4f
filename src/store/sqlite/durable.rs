//! Makes the writer's commits durable beside it. With `--sqlite-sync full` the writer commits
//! with `synchronous=NORMAL` (no fsync inside the commit) and hands each batch's answer here;
//! this thread fsyncs the WAL and only then answers, so a batch is acknowledged once it is on
//! disk, while the writer already writes the next one. One fsync covers every commit before it.
//! It must never answer a write before the fsync that covers it, and after a failed fsync the
//! writer must not write again: what reached the disk is then unknown.
//!
//! Why this is as durable as SQLite's own FULL: in WAL mode a transaction is on disk once its
//! frames and the WAL header are; FULL fsyncs them inside the commit, this fsyncs them after it,
//! before anyone is told. A crash before the fsync loses only unanswered batches (recovery drops
//! frames whose checksums do not chain), which the broker delivers again. A checkpoint fsyncs the
//! WAL before copying it and the database file after, in either mode, and the WAL starts over
//! only once all of it is in the database file.

use std::{
    fs::File,
    io,
    sync::{mpsc, Arc, OnceLock},
    thread::JoinHandle,
};

use super::writer_thread::WriteReply;
use crate::store::{Outcome, StoreError};

/// A write's answer, held until the WAL is on disk.
struct Pending {
    reply: WriteReply,
    result: Result<Vec<Outcome>, StoreError>,
}

pub struct Syncer {
    tx: Option<mpsc::Sender<Pending>>,
    thread: Option<JoinHandle<()>>,
    broken: Arc<OnceLock<String>>,
}

impl Syncer {
    /// Fsyncs the WAL of the database file `db` (as SQLite names it). The WAL exists once a
    /// connection has read the file in WAL mode.
    pub fn start(db: &str) -> io::Result<Syncer> {
        let wal = File::options().write(true).open(format!("{db}-wal"))?;
        Syncer::with(move || wal.sync_data())
    }

    /// Runs `sync` to make every commit so far durable (tests give their own).
    pub fn with(mut sync: impl FnMut() -> io::Result<()> + Send + 'static) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<Pending>();
        let broken = Arc::new(OnceLock::new());
        let seen = broken.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-fsync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut due = vec![first];
                    due.extend(rx.try_iter());
                    if seen.get().is_none() && due.iter().any(|p| p.result.is_ok()) {
                        let started = std::time::Instant::now();
                        let synced = sync();
                        // Looked up each time: the store opens before the recorder is installed.
                        metrics::histogram!(crate::telemetry::SQLITE_FSYNC_SECONDS)
                            .record(started.elapsed().as_secs_f64());
                        if let Err(e) = synced {
                            let _ = seen.set(format!(
                                "the database's write-ahead log could not be written to disk ({e}); \
                                 tidegate stopped writing to it: check the disk, then restart tidegate"
                            ));
                        }
                    }
                    for p in due {
                        let result = match (p.result, seen.get()) {
                            (Ok(_), Some(why)) => Err(StoreError::Write(why.clone())),
                            (result, _) => result,
                        };
                        let _ = p.reply.send(result);
                    }
                }
            })?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            broken,
        })
    }

    /// Answers `reply` once every commit so far is on disk (an error at once, in its turn).
    pub fn answer(&self, reply: WriteReply, result: Result<Vec<Outcome>, StoreError>) {
        let pending = Pending { reply, result };
        if let Some(tx) = &self.tx {
            // The thread only stops when this is dropped.
            let _ = tx.send(pending);
        }
    }

    /// Why the writer must not write any more, after a failed fsync.
    pub fn broken(&self) -> Option<&str> {
        self.broken.get().map(String::as_str)
    }
}

impl Drop for Syncer {
    /// Answers everything still waiting (after its fsync) before the store closes.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use tokio::sync::oneshot;

    use super::*;

    fn stored(id: i64) -> Result<Vec<Outcome>, StoreError> {
        Ok(vec![Outcome::Stored { id }])
    }

    #[test]
    fn a_write_is_answered_only_after_the_fsync_that_covers_it() {
        let (release, gate) = mpsc::channel::<()>();
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = syncs.clone();
        let s = Syncer::with(move || {
            gate.recv().ok();
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        let (reply, mut answer) = oneshot::channel();
        s.answer(reply, stored(1));
        std::thread::sleep(Duration::from_millis(50));
        assert!(answer.try_recv().is_err(), "answered before its fsync");
        release.send(()).unwrap();
        let (reply, answer2) = oneshot::channel();
        s.answer(reply, stored(2));
        release.send(()).unwrap();
        drop(s);
        assert!(matches!(answer.try_recv(), Ok(Ok(_))));
        assert!(matches!(answer2.blocking_recv(), Ok(Ok(_))));
        assert!(syncs.load(Ordering::SeqCst) >= 1);
    }

    #[test]
    fn after_a_failed_fsync_no_write_is_acknowledged_and_the_writer_is_told_to_stop() {
        let s = Syncer::with(|| Err(io::Error::other("EIO"))).unwrap();
        let (reply, answer) = oneshot::channel();
        s.answer(reply, stored(1));
        let err = answer.blocking_recv().unwrap().unwrap_err().to_string();
        assert!(err.contains("could not be written to disk (EIO)"), "{err}");
        assert!(err.contains("restart tidegate"), "{err}");
        assert!(s.broken().is_some());
        let (reply, answer) = oneshot::channel();
        s.answer(reply, stored(2));
        assert!(answer.blocking_recv().unwrap().is_err());
    }

    #[test]
    fn it_syncs_the_wal_sqlite_names_and_refuses_to_start_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let conn = super::super::connect(&dir.path().join("t.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        let s = Syncer::start(conn.path().unwrap()).unwrap();
        let (reply, answer) = oneshot::channel();
        s.answer(reply, stored(1));
        assert!(matches!(answer.blocking_recv(), Ok(Ok(_))));
        assert!(s.broken().is_none());
        let missing = dir.path().join("none.db");
        assert!(Syncer::start(missing.to_str().unwrap()).is_err());
    }

    #[test]
    fn errors_pass_through_in_their_turn_without_an_fsync() {
        let syncs = Arc::new(AtomicUsize::new(0));
        let counted = syncs.clone();
        let s = Syncer::with(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        let (reply, answer) = oneshot::channel();
        s.answer(reply, Err(StoreError::Write("refused".into())));
        assert!(answer.blocking_recv().unwrap().is_err());
        assert_eq!(syncs.load(Ordering::SeqCst), 0);
        assert!(s.broken().is_none());
    }
}
