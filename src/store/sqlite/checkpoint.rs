//! Checkpoints beside the writer: copying the WAL into the database file (and that file's
//! fsync) runs on its own thread and connection, overlapping the next batch instead of
//! lengthening this one's commit. It owns no data and must never hold a write lock: a PASSIVE
//! checkpoint only copies frames every reader and the writer are done with.

use std::{
    path::Path,
    sync::mpsc::{sync_channel, Receiver},
    thread::JoinHandle,
};

use rusqlite::{wal::CheckpointMode, Connection};

/// New WAL bytes between two wake-ups of the checkpointer: SQLite's own default (1,000 pages of
/// 4 KiB).
const WAKE_AT_BYTES: i64 = 4 << 20;
/// WAL bytes after which the writer checkpoints inline, as SQLite would by itself. Reached
/// only when the checkpointer cannot keep up (for example while a reader holds an old
/// snapshot); it keeps the WAL bounded whatever happens on the other thread.
const INLINE_AT_BYTES: i64 = 32 << 20;

pub struct Checkpointer {
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Replaces the writer connection's automatic checkpoint with a wake-up of a thread of
    /// its own.
    pub fn start(path: &Path, writer: &mut Connection) -> Result<Checkpointer, String> {
        let conn = super::connect(path).map_err(|e| e.to_string())?;
        // A connection learns the file is in WAL mode only once it reads it; until then a
        // checkpoint does nothing.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| e.to_string())?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!("the checkpointer sees journal mode `{mode}`, not WAL"));
        }
        // The hook counts frames (pages); the thresholds are bytes whatever the page size.
        let page: i64 = writer
            .pragma_query_value(None, "page_size", |r| r.get(0))
            .map_err(|e| e.to_string())?;
        // SQLite pages are 512 B to 64 KiB, so the frame counts fit an i32.
        let frames = |bytes: i64| (bytes / page.max(512)) as i32;
        let mut schedule = Schedule::new(frames(WAKE_AT_BYTES), frames(INLINE_AT_BYTES));
        let (wake, woken) = sync_channel::<()>(1);
        writer
            .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames: i32| {
                match schedule.after_commit(frames) {
                    Step::Nothing => {}
                    // Full means a wake-up is already pending: one checkpoint covers every
                    // commit before it. Disconnected only happens while stopping.
                    Step::Wake => {
                        let _ = wake.try_send(());
                    }
                    // Busy (the other thread is checkpointing) is fine: the WAL is being copied.
                    Step::Inline => {
                        let _ = wal.checkpoint_v2(CheckpointMode::PASSIVE);
                    }
                }
                Ok(())
            }))
            .map_err(|e| e.to_string())?;
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(conn, woken))
            .map_err(|e| e.to_string())?;
        Ok(Checkpointer { thread: Some(thread) })
    }

    /// Removes the hook (dropping the wake-up sender) and waits for a checkpoint in progress.
    pub fn stop(mut self, writer: &mut Connection) {
        let _ = writer.wal_hook(None::<fn(&mut rusqlite::hooks::Wal, i32) -> rusqlite::Result<()>>);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the writer does after a commit, given the WAL's frame count.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    Nothing,
    Wake,
    Inline,
}

/// When to checkpoint. The WAL restarts from its beginning only when a writer finds it fully
/// copied, which under steady load only the inline checkpoint achieves; until then the frame
/// count keeps growing. The checkpointer is woken once per `wake_at` new frames, not after every
/// commit past the mark: a checkpoint copies each page once however many commits rewrote it, and
/// every commit rewrites the last page of each index (waking per commit copied 1.7 times as many
/// bytes with batches of 300 messages). Close to the inline mark it is woken every commit, so the
/// inline checkpoint on the writer's path finds little left to copy.
struct Schedule {
    wake_at: i32,
    inline_at: i32,
    /// The frame count when the checkpointer was last woken.
    woken_at: i32,
}

impl Schedule {
    fn new(wake_at: i32, inline_at: i32) -> Self {
        Schedule {
            wake_at,
            inline_at,
            woken_at: 0,
        }
    }

    fn after_commit(&mut self, frames: i32) -> Step {
        if frames < self.woken_at {
            // The WAL restarted.
            self.woken_at = 0;
        }
        if frames >= self.inline_at {
            Step::Inline
        } else if frames - self.woken_at >= self.wake_at || frames >= self.inline_at - self.wake_at {
            self.woken_at = frames;
            Step::Wake
        } else {
            Step::Nothing
        }
    }
}

fn run(conn: Connection, woken: Receiver<()>) {
    while woken.recv().is_ok() {
        if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            tracing::debug!(error = %e, "checkpoint skipped");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn the_checkpointer_is_woken_once_per_wake_mark_of_new_frames() {
        let mut s = Schedule::new(100, 1000);
        let steps: Vec<Step> = [40, 90, 130, 170, 229, 231, 300, 331]
            .into_iter()
            .map(|f| s.after_commit(f))
            .collect();
        use Step::*;
        assert_eq!(
            steps,
            [Nothing, Nothing, Wake, Nothing, Nothing, Wake, Nothing, Wake]
        );
        // Near the inline mark, every commit wakes it; at the mark the writer copies.
        assert_eq!(s.after_commit(905), Wake);
        assert_eq!(s.after_commit(910), Wake);
        assert_eq!(s.after_commit(1000), Inline);
        // After the WAL restarts, counting starts again from its beginning.
        assert_eq!(s.after_commit(60), Nothing);
        assert_eq!(s.after_commit(100), Wake);
    }

    #[test]
    fn the_wal_is_copied_into_the_database_by_the_other_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let mut writer = super::super::connect(&path).unwrap();
        writer
            .query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
            .unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let checkpointer = Checkpointer::start(&path, &mut writer).unwrap();
        // About 1,500 pages in one commit: past the wake-up mark, well short of the inline one.
        writer
            .execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
                 INSERT INTO t SELECT randomblob(3500) FROM n",
            )
            .unwrap();
        let db_len = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let started = Instant::now();
        while db_len() < 5_000_000 && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            db_len() >= 5_000_000,
            "the database file stayed at {} bytes",
            db_len()
        );
        checkpointer.stop(&mut writer);
        // After `stop` the hook is gone: commits no longer wake anyone, and nothing panics.
        writer
            .execute_batch("INSERT INTO t SELECT randomblob(3500) FROM t LIMIT 1200")
            .unwrap();
    }
}
