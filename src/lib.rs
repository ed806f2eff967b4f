//! tidegate moves MQTT messages into SQL databases with nothing lost.
//!
//! A message travels `source` (MQTT) → `pipeline` (batcher → writer) → `store` (SQLite or
//! PostgreSQL); the broker is acknowledged only after the store committed the row. `app` wires the
//! pieces together for each command; `config` validates every setting before anything connects;
//! `metabase` tells Metabase when the store's tables change.

/// `0.1.0 (commit abc123)`, shown by `tidegate --version`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TIDEGATE_COMMIT"),
    ")"
);

pub mod api;
pub mod app;
pub mod backfill;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod logging;
pub mod message;
pub mod metabase;
pub mod pipeline;
pub mod readings;
pub mod reload;
pub mod secret;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod time;
