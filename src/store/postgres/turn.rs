//! Turns: the order of two pipeline batches in flight at once. The later batch copies its rows
//! on a connection of its own while the earlier one is still writing, but it draws its message
//! ids only after the earlier one has drawn its own, and writes its marks, rollups and `COMMIT`
//! only after the earlier one has committed. It owns that order only; it must never let a batch
//! draw ids or commit ahead of the batch handed over before it.
//!
//! Why ids too: ids follow arrival, so a reader paging by id never skips a row committed after
//! it looked. When the earlier batch fails after the later one drew its ids, the later attempt
//! gives up (`Overtaken`) and the store starts it again behind the earlier one's retry, with
//! new ids.

use tokio::sync::watch;

/// Where one attempt at a batch stands, numbered by attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Started(u32),
    IdsDrawn(u32),
    Committed(u32),
    Failed(u32),
}

/// The earlier batch started again after this attempt drew its ids: its new ids would come
/// after ours, so this attempt must not commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batch before this one is being written again; this one follows it")]
pub struct Overtaken;

/// A batch's place: its own stage, and the stage of the batch handed over before it.
pub struct Turn {
    me: watch::Sender<Stage>,
    before: Option<watch::Receiver<Stage>>,
}

impl Turn {
    /// A batch handed over after `before` (none: nothing earlier is still being written).
    pub fn after(before: Option<&Turn>) -> Turn {
        Turn {
            me: watch::Sender::new(Stage::Started(0)),
            before: before.map(|b| b.me.subscribe()),
        }
    }

    /// Starts an attempt. Until it ends the batch counts as not committed.
    pub fn attempt(&self) -> Attempt<'_> {
        let n = match *self.me.borrow() {
            Stage::Started(n) | Stage::IdsDrawn(n) | Stage::Committed(n) | Stage::Failed(n) => n + 1,
        };
        self.me.send_replace(Stage::Started(n));
        Attempt {
            turn: self,
            n,
            before_at: None,
            ended: false,
        }
    }
}

/// One attempt at writing a batch. Dropped without `committed`, it counts as failed, so the
/// batch after it never waits for an attempt that is gone.
pub struct Attempt<'t> {
    turn: &'t Turn,
    n: u32,
    /// The earlier batch's attempt whose ids this one drew after (0: it had committed).
    before_at: Option<u32>,
    ended: bool,
}

impl Attempt<'_> {
    /// Waits until the earlier batch has drawn its ids (or committed); call just before drawing
    /// this batch's. An earlier attempt that failed is waited out: its retry draws anew.
    pub async fn wait_to_draw_ids(&mut self) {
        let Some(before) = &self.turn.before else {
            self.before_at = Some(0);
            return;
        };
        let mut before = before.clone();
        let seen = before
            .wait_for(|s| matches!(s, Stage::IdsDrawn(_) | Stage::Committed(_)))
            .await
            .map(|s| *s);
        self.before_at = Some(match seen {
            Ok(Stage::IdsDrawn(n)) => n,
            // Committed, or the earlier batch is gone (its sender dropped): nothing to wait for.
            _ => 0,
        });
    }

    /// Tells the next batch it may draw its ids.
    pub fn ids_drawn(&self) {
        self.turn.me.send_replace(Stage::IdsDrawn(self.n));
    }

    /// Waits until the earlier batch has committed; call before anything that must follow it.
    /// `Overtaken` when the earlier batch started another attempt after this one drew its ids.
    pub async fn wait_for_earlier_commit(&self) -> Result<(), Overtaken> {
        let Some(before) = &self.turn.before else {
            return Ok(());
        };
        let mut before = before.clone();
        let drawn_after = self.before_at;
        let outcome = before
            .wait_for(|s| match (s, drawn_after) {
                (Stage::Committed(_), _) => true,
                // Not drawn yet (the whole attempt waits, as after a refused batch): only a
                // commit ends the wait.
                (_, None) => false,
                (Stage::IdsDrawn(n) | Stage::Started(n), Some(at)) => *n != at,
                (Stage::Failed(_), Some(_)) => true,
            })
            .await
            .map(|s| *s);
        match (outcome, drawn_after) {
            (Ok(Stage::Committed(_)), None) | (Err(_), _) => Ok(()),
            // The ids were drawn after this very attempt of the earlier batch, or after it had
            // already committed (`Some(0)`).
            (Ok(Stage::Committed(n)), Some(at)) if at == 0 || n == at => Ok(()),
            _ => Err(Overtaken),
        }
    }

    /// The batch is committed.
    pub fn committed(mut self) {
        self.turn.me.send_replace(Stage::Committed(self.n));
        self.ended = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.turn.me.send_replace(Stage::Failed(self.n));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn pending<F: std::future::Future>(f: F) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f).await.is_err()
    }

    /// Two batches, the second handed over after the first.
    fn pair() -> (Turn, Turn) {
        let first = Turn::after(None);
        let second = Turn::after(Some(&first));
        (first, second)
    }

    /// An attempt at the later of two batches that drew its ids after the earlier one's
    /// attempt `a` drew its own.
    async fn drawn_after<'t>(a: &Attempt<'_>, second: &'t Turn) -> Attempt<'t> {
        a.ids_drawn();
        let mut b = second.attempt();
        b.wait_to_draw_ids().await;
        b
    }

    #[tokio::test]
    async fn the_later_batch_draws_after_and_commits_after_the_earlier_one() {
        let (first, second) = pair();
        let a = first.attempt();
        let mut b = second.attempt();
        assert!(pending(b.wait_to_draw_ids()).await, "waits for the earlier ids");
        a.ids_drawn();
        b.wait_to_draw_ids().await;
        b.ids_drawn();
        assert!(
            pending(b.wait_for_earlier_commit()).await,
            "waits for the earlier commit"
        );
        a.committed();
        assert_eq!(b.wait_for_earlier_commit().await, Ok(()));
        b.committed();
        let third = Turn::after(Some(&second));
        let mut c = third.attempt();
        c.wait_to_draw_ids().await;
        assert_eq!(
            c.wait_for_earlier_commit().await,
            Ok(()),
            "a committed batch holds up nothing"
        );
    }

    #[tokio::test]
    async fn an_earlier_batch_that_fails_after_the_later_drew_its_ids_sends_it_back() {
        let (first, second) = pair();
        let a = first.attempt();
        let b = drawn_after(&a, &second).await;
        b.ids_drawn();
        drop(a);
        assert_eq!(b.wait_for_earlier_commit().await, Err(Overtaken));
        drop(b);
        // The retries: the later one waits while the earlier one has not drawn again.
        let mut b = second.attempt();
        assert!(
            pending(b.wait_to_draw_ids()).await,
            "a failed attempt's ids do not count"
        );
        let a = first.attempt();
        a.ids_drawn();
        b.wait_to_draw_ids().await;
        a.committed();
        assert_eq!(b.wait_for_earlier_commit().await, Ok(()));
    }

    #[tokio::test]
    async fn a_new_attempt_of_the_earlier_batch_is_seen_even_when_it_already_drew_again() {
        let (first, second) = pair();
        let a = first.attempt();
        let b = drawn_after(&a, &second).await;
        drop(a);
        let a = first.attempt();
        a.ids_drawn();
        a.committed();
        assert_eq!(b.wait_for_earlier_commit().await, Err(Overtaken));
    }

    #[tokio::test]
    async fn an_attempt_that_never_drew_waits_for_any_commit() {
        let (first, second) = pair();
        let a = first.attempt();
        let b = second.attempt();
        assert!(pending(b.wait_for_earlier_commit()).await);
        drop(a);
        assert!(
            pending(b.wait_for_earlier_commit()).await,
            "a failure is waited out"
        );
        let a = first.attempt();
        a.committed();
        assert_eq!(b.wait_for_earlier_commit().await, Ok(()));
    }

    #[tokio::test]
    async fn a_batch_whose_predecessor_is_gone_does_not_wait() {
        let second = {
            let first = Turn::after(None);
            Turn::after(Some(&first))
        };
        let mut b = second.attempt();
        b.wait_to_draw_ids().await;
        assert_eq!(b.wait_for_earlier_commit().await, Ok(()));
    }
}
