//! Wires sources, pipeline, store and API together for each command, and runs the clean stop:
//! stop intake → commit what is queued → acknowledge it → disconnect. Errors here are for the
//! operator, so they say what to do.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{broadcast, oneshot, watch};

use crate::{
    api,
    config::{current::Current, Settings},
    pipeline::{self, writer::Writer},
    reload::Reloader,
    source::MqttSource,
    store::{self, remote::RemoteStore, spool::SpoolStore, Store},
};

/// Runs `run`, `serve` or `subscribe` (whichever parts `settings` has) until SIGINT/SIGTERM.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    run_until(settings, crate::shutdown::signal(), None).await
}

/// As `run`, stopping when `stop` completes; reports the API address through `bound`.
pub async fn run_until(
    settings: Settings,
    stop: impl std::future::Future<Output = ()>,
    bound: Option<oneshot::Sender<std::net::SocketAddr>>,
) -> anyhow::Result<()> {
    if !settings.unused.is_empty() {
        tracing::warn!(
            settings = %settings.unused.join(", "),
            "given but of no use to `tidegate {}`: ignored",
            settings.origin.mode.command()
        );
    }
    let hangup = crate::reload::Hangup::listen();
    // The tokens, like readings and retention below, are read per request: a reload swaps them.
    let (replace_remote_token, remote_token) =
        Current::new(settings.remote.as_ref().and_then(|r| r.token.clone()));
    let (replace_api_tokens, api_tokens) = Current::new(
        settings
            .api
            .as_ref()
            .map(|a| a.tokens.clone())
            .unwrap_or_default(),
    );
    let store: Arc<dyn Store> = match (&settings.store, &settings.remote) {
        (Some(s), _) => store::open(s).await.context("opening the database")?,
        (None, Some(r)) => Arc::new(RemoteStore::new(r, remote_token)?),
        (None, None) => anyhow::bail!("nothing to store into"),
    };
    let metrics = crate::telemetry::install();
    let (tx, rx) = pipeline::channel();
    let stats = Arc::new(crate::pipeline::stats::StatsBook::default());
    let (fault_tx, fault_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (live, _) = broadcast::channel(16_384);

    // Readings and retention are read per unit of work, so a reload can replace them.
    let (replace_readings, readings) = Current::new(settings.readings.clone());
    let (replace_retention, retention_policy) = Current::new(settings.retention.clone());
    let mut forwarder = None;
    let store: Arc<dyn Store> = match &settings.spool {
        None => store,
        Some(sp) => {
            let spool = SpoolStore::open(&sp.dir, sp.max_bytes, store).context("opening the spool")?;
            let name = settings
                .mqtt
                .as_ref()
                .map(|m| m.client_id.clone())
                .unwrap_or_else(|| "tidegate".into());
            forwarder = Some(spool.start_forwarder(name, live.clone(), readings.clone(), stop_rx.clone()));
            Arc::new(spool)
        }
    };
    tracing::info!(store = %store.describe(), "store ready");
    if let Some(crate::config::StoreSettings {
        db: crate::config::DbUrl::Sqlite(path),
        ..
    }) = &settings.store
    {
        if settings.pipeline.batch_delay.is_zero() && store::sqlite::medium::on_sd_card(path) {
            tracing::warn!(
                db = %path.display(),
                "the database is on an SD card or eMMC, and each message is committed as soon as it arrives: every commit writes about 50 KiB, so a steady 100 msg/s writes about 500 GB a day and wears the card out. Set --batch-delay 1s (TIDEGATE_BATCH_DELAY=1s) to commit at most once a second (docs/deploy.md, \"Disk writes\")"
            );
        }
    }
    let writer = tokio::spawn(
        Writer {
            store: store.clone(),
            settings: settings.pipeline.clone(),
            fault: fault_tx,
            stop: stop_rx.clone(),
            live: live.clone(),
            readings: readings.clone(),
            stats: stats.clone(),
        }
        .run(rx),
    );

    let retention = tokio::spawn(crate::store::retention::run(
        store.clone(),
        retention_policy,
        stop_rx.clone(),
    ));

    let metabase = settings
        .metabase
        .clone()
        .map(|m| tokio::spawn(crate::metabase::run(m, store.clone(), stop_rx.clone())));

    let source = match &settings.mqtt {
        Some(m) => Some(
            MqttSource::start(
                m.clone(),
                tx.clone(),
                fault_rx.clone(),
                crate::source::Memory::new(store.clone(), &m.client_id),
            )
            .context("setting up TLS for the broker")?,
        ),
        None => None,
    };

    let reloader = Arc::new(Reloader::new(
        settings.clone(),
        crate::reload::Handles {
            readings: replace_readings,
            retention: replace_retention,
            source: source.as_ref().map(MqttSource::resubscriber),
            api_tokens: replace_api_tokens,
            remote_token: replace_remote_token,
        },
    ));
    let hangup = tokio::spawn(crate::reload::on_hangup(
        hangup,
        reloader.clone(),
        stop_rx.clone(),
    ));

    let stats_task = tokio::spawn(crate::pipeline::stats::run(
        stats.clone(),
        store.clone(),
        source.as_ref().map(|s| s.status()),
        std::time::Duration::from_secs(10),
        stop_rx.clone(),
    ));

    let server = match &settings.api {
        Some(a) => {
            let state = api::AppState {
                store: store.clone(),
                ingest: tx.clone(),
                fault: fault_rx,
                mqtt: source.as_ref().map(|s| s.status()),
                tokens: api_tokens,
                live,
                metrics,
                max_payload: settings.max_payload,
                readings: readings.clone(),
                reload: reloader.clone(),
                stop: stop_rx.clone(),
            };
            let router = api::router(state, a.max_body, a.rate_limit, a.routes);
            let (bound_tx, bound_rx) = oneshot::channel();
            let task = tokio::spawn(api::serve(
                a.listen,
                router,
                a.tls.clone(),
                stop_rx.clone(),
                bound_tx,
            ));
            match bound_rx.await {
                Ok(addr) => {
                    if let Some(b) = bound {
                        let _ = b.send(addr);
                    }
                }
                Err(_) => {
                    let err = task.await.ok().and_then(Result::err);
                    anyhow::bail!(
                        "cannot listen on {} for the API: {} (another process there? use --listen ADDR or --listen off)",
                        a.listen,
                        err.map(|e| e.to_string()).unwrap_or_default()
                    );
                }
            }
            Some(task)
        }
        None => None,
    };
    drop(tx);

    stop.await;
    tracing::info!("stopping: committing what is in flight, then disconnecting");
    if let Some(s) = &source {
        s.stop_intake();
    }
    let _ = stop_tx.send(true);
    if let Some(task) = server {
        let _ = task.await;
    }
    writer.await.context("writer task")?;
    let _ = stats_task.await;
    crate::pipeline::stats::final_flush(&stats, &store).await;
    let _ = retention.await;
    if let Some(m) = metabase {
        let _ = m.await;
    }
    let _ = hangup.await;
    if let Some(f) = forwarder {
        let _ = f.await;
    }
    if let Some(s) = source {
        s.disconnect().await;
    }
    tracing::info!("stopped cleanly");
    Ok(())
}
