//! The pipeline between sources and the store: `envelope` (a message and the promise to
//! acknowledge it), `batcher` (groups envelopes), `derive` (readings, as a message joins a
//! batch), `writer` (the loop that hands batches over) and `commit` (commits a batch, then acks
//! it).
//! Nothing here may acknowledge a message before the store has committed it.

pub mod batcher;
mod commit;
mod derive;
pub mod envelope;
pub mod stats;
pub mod writer;

pub use envelope::{Ack, Ingest};

use tokio::sync::mpsc;

/// How many ingests may wait for the writer: two default batches, so the next batch is ready
/// when a commit ends. It bounds memory: brokers do not always honour the in-flight window
/// (Mosquitto 2.0 was seen sending 25,000 unacknowledged messages at full speed), and when the
/// queue is full the session stops reading, so TCP pushes back on the broker.
pub const QUEUE_CAPACITY: usize = 10_000;

/// The sending side sources use.
pub type Sender = mpsc::Sender<Ingest>;

pub fn channel() -> (Sender, mpsc::Receiver<Ingest>) {
    mpsc::channel(QUEUE_CAPACITY)
}
