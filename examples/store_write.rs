//! Store write micro-benchmark: the bench payload (3 readings a message) written to a store in
//! batches, with no broker in the way, so a change to a store's write path can be measured on
//! its own. Prints messages per second and the process CPU per message.
//!
//! `cargo run --release --example store_write -- [DB_URL] [MESSAGES] [BATCH]`
//! (DB_URL defaults to a fresh SQLite file in a temporary directory.)

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use tidegate::{
    config::{DbUrl, SqliteSync, StoreSettings},
    message::{Message, Origin},
    readings::ReadingsConfig,
};

/// This process's CPU seconds (every thread), from tidegate's own process clock; 0 without one.
fn cpu_seconds() -> f64 {
    tidegate::telemetry::process_cpu_seconds().unwrap_or(0.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir()?;
    let url = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| dir.path().join("w.db").display().to_string());
    let total: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(100_000);
    let batch: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(4_000);
    let db = DbUrl::parse(&url)?;
    let store = tidegate::store::open(&StoreSettings {
        db,
        sqlite_sync: SqliteSync::Full,
        batch_size: batch,
    })
    .await?;
    let readings = ReadingsConfig::default();
    let session: std::sync::Arc<str> = format!("w{}", std::process::id()).into();
    let mut batches = Vec::new();
    let mut seq = 0usize;
    while seq < total {
        let n = batch.min(total - seq);
        let msgs: Vec<Message> = (seq..seq + n)
            .map(|i| {
                let payload = format!(
                    "{{\"seq\":{i},\"sent_us\":{},\"pad\":\"{}\"}}",
                    1_700_000_000_000_000u64 + i as u64,
                    "x".repeat(50)
                );
                let mut m = Message::new(
                    format!("bench/w/{}", i % 4),
                    Bytes::from(payload),
                    1,
                    false,
                    Origin::Mqtt {
                        session: session.clone(),
                        pkid: (i % 65_535 + 1) as u16,
                        redelivery: false,
                    },
                    1 << 20,
                );
                m.derived = tidegate::readings::derive(&readings, &m.topic, &m.payload, m.received_at);
                m
            })
            .collect();
        batches.push(Arc::new(msgs));
        seq += n;
    }
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    for b in batches {
        store.write(b).await?;
    }
    let (cpu, secs) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    println!(
        "{total} messages in batches of {batch}: {:.0} msg/s, {:.2} µs of this process's CPU a message (a database server's own CPU is not counted)",
        total as f64 / secs,
        cpu * 1e6 / total as f64
    );
    Ok(())
}
