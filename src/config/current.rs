//! A setting that a reload (`SIGHUP`, `POST /api/v1/reload`) may replace while tidegate runs:
//! readers take the value in force with `get` at the start of each unit of work (a batch, a
//! request, a retention round), so a change applies from the next one and never halfway through.
//! It owns the hand-over only; deciding what may change is `reload`'s.

use std::sync::Arc;

use tokio::sync::watch;

/// The value in force now; cheap to clone and to read.
#[derive(Debug, Clone)]
pub struct Current<T>(watch::Receiver<Arc<T>>);

/// Where a reload puts the new value.
pub type Replace<T> = watch::Sender<Arc<T>>;

impl<T> Current<T> {
    /// A value that a reload can replace through the returned sender.
    pub fn new(value: T) -> (Replace<T>, Current<T>) {
        let (tx, rx) = watch::channel(Arc::new(value));
        (tx, Current(rx))
    }

    /// A value nothing will replace (tests, tools).
    pub fn fixed(value: T) -> Current<T> {
        Current::new(value).1
    }

    pub fn get(&self) -> Arc<T> {
        self.0.borrow().clone()
    }

    /// The new value when a reload replaced it since this handle last looked: one atomic load
    /// when nothing changed, for loops that keep the value they work with.
    pub fn fresh(&mut self) -> Option<Arc<T>> {
        match self.0.has_changed() {
            Ok(true) => Some(self.0.borrow_and_update().clone()),
            _ => None,
        }
    }

    /// Waits until a reload replaces the value (forever when it is fixed).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replaced_value_is_what_the_next_get_returns() {
        let (tx, mut c) = Current::new(1);
        let before = c.get();
        assert_eq!(c.fresh(), None);
        tx.send_replace(Arc::new(2));
        assert_eq!(c.fresh().as_deref(), Some(&2));
        assert_eq!(c.fresh(), None, "seen once");
        tx.send_replace(Arc::new(3));
        c.changed().await;
        assert_eq!(
            (*before, *c.get()),
            (1, 3),
            "a value already taken stays as it was"
        );
    }
}
