//! The pipeline between sources and the store: `envelope` (a message and the promise to
//! acknowledge it), `batcher` (groups envelopes) and `writer` (commits a batch, then acks it).
//! Nothing here may acknowledge a message before the store has committed it.

pub mod batcher;
pub mod envelope;
pub mod stats;
pub mod writer;

pub use envelope::{Ack, Ingest};

use tokio::sync::mpsc;

/// How many ingests may wait for the writer. The broker's in-flight window normally keeps the
/// queue far below this; it bounds memory when a large backlog arrives at once.
pub const QUEUE_CAPACITY: usize = 20_000;

/// The sending side sources use.
pub type Sender = mpsc::Sender<Ingest>;

pub fn channel() -> (Sender, mpsc::Receiver<Ingest>) {
    mpsc::channel(QUEUE_CAPACITY)
}
