//! Wires sources, pipeline and store together for each command, and runs the clean stop:
//! stop intake → commit what is queued → acknowledge it → disconnect. Errors here are for the
//! operator, so they say what to do.

use anyhow::Context;
use tokio::sync::watch;

use crate::{
    config::Settings,
    pipeline::{self, writer},
    source::MqttSource,
    store,
};

/// `tidegate run`: subscribe and store until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let store = store::open(&settings.store)
        .await
        .context("opening the database")?;
    tracing::info!(store = %store.describe(), "database ready");

    let (tx, rx) = pipeline::channel();
    let (fault_tx, _fault_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(writer::run(
        store.clone(),
        rx,
        settings.pipeline.clone(),
        fault_tx,
        stop_rx,
    ));

    let source = MqttSource::start(settings.mqtt.clone(), tx).context("setting up TLS")?;

    crate::shutdown::signal().await;
    tracing::info!("stopping: committing what is in flight, then disconnecting");
    source.stop_intake();
    let _ = stop_tx.send(true);
    writer.await.context("writer task")?;
    source.disconnect().await;
    drop(store);
    tracing::info!("stopped cleanly");
    Ok(())
}
