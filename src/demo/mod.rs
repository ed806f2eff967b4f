//! `tidegate demo`: an embedded broker, simulated devices and the whole pipeline into a local
//! SQLite file, with the API and the live page — tidegate working in one command, with no
//! broker, cloud account or Metabase. It must never touch anything outside its own database.

mod broker;
mod devices;

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;

use crate::config::{Mode, RunArgs, Settings};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 5)]
    pub devices: usize,
    /// Messages per second from each device.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// Where the API and the live page listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The demo database.
    #[arg(long, default_value = "tidegate-demo.db")]
    pub db: PathBuf,
    /// Port of the embedded broker (default: a free one).
    #[arg(long)]
    pub broker_port: Option<u16>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.devices == 0 || args.devices > 10_000 {
        anyhow::bail!("--devices must be between 1 and 10000");
    }
    if !(args.rate > 0.0 && args.rate <= 10_000.0) {
        anyhow::bail!("--rate must be between 0 and 10000 messages per second");
    }
    let port = broker::start(args.broker_port).context("starting the embedded broker")?;
    let settings = Settings::resolve(
        Mode::Run,
        RunArgs {
            broker: Some(format!("mqtt://127.0.0.1:{port}")),
            topics: Some(vec!["#".into()]),
            db: Some(args.db.display().to_string()),
            mqtt_version: Some("3.1.1".into()),
            client_id: Some("tidegate-demo".into()),
            listen: Some(args.listen.clone()),
            device_from: Some("demo/sensors/{device}/#".into()),
            ..Default::default()
        },
    )?;
    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
    let stop = crate::shutdown::signal();
    let pipeline = tokio::spawn(crate::app::run_until(settings, stop, Some(bound_tx)));
    let addr = match bound_rx.await {
        Ok(a) => a,
        Err(_) => return pipeline.await?,
    };
    let sim = tokio::spawn(devices::run(port, args.devices, args.rate));
    println!(
        "\ntidegate demo is running.\n\
         \n  live page     http://{addr}/\
         \n  API           http://{addr}/api/v1/messages   (spec: /api/v1/openapi.json)\
         \n  broker        mqtt://127.0.0.1:{port}  (MQTT 3.1.1, embedded)\
         \n  database      {db}\
         \n\n  publish your own:  mosquitto_pub -p {port} -t demo/hello -m 42\
         \n  Metabase:          Admin → Databases → SQLite, filename {abs}\
         \n\n  Ctrl-C stops everything.\n",
        db = args.db.display(),
        abs = std::fs::canonicalize(&args.db)
            .unwrap_or(args.db.clone())
            .display(),
    );
    let result = pipeline.await?;
    sim.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    result
}
