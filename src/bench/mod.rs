//! `tidegate bench`: a load tool users can point at their own broker and tidegate. It publishes
//! numbered, timestamped messages over several connections and measures what comes out the
//! other side — from tidegate's live stream (each event is sent after its commit, so the
//! latency is publish→commit), with `--no-stream` from tidegate's committed counter and the
//! stored rows, or with `--null` from a subscriber that stores nothing (the ceiling the broker
//! and this machine allow). Reports throughput, latency percentiles, loss and duplicates. It
//! never asserts a speed; it prints figures.

mod collect;
mod count;
mod publish;

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::config::{resolve_access, AccessArgs, BrokerAccess, BrokerUrl, ConfigError};

/// The most messages one run publishes: the receiving side keeps a flag for each.
const MAX_MESSAGES: u64 = 100_000_000;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Broker to publish to: mqtt://, mqtts://, ws:// or wss://, as for `tidegate run`.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub broker: String,
    /// The broker's user name, password and TLS files, as for `tidegate run`.
    #[command(flatten)]
    pub access: AccessArgs,
    /// The tidegate API whose live stream shows what was committed, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub api: Option<String>,
    /// PEM CA certificates to trust for an https:// --api with a certificate of its own.
    #[arg(long, requires = "api")]
    pub api_ca_file: Option<std::path::PathBuf>,
    /// API token, if the API has one.
    #[arg(long, env = "TIDEGATE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Measure a subscriber that acknowledges on receipt and stores nothing, instead of tidegate.
    #[arg(long)]
    pub null: bool,
    /// With --api: measure throughput without following the live stream, which at full speed
    /// costs tidegate and this tool CPU that the null subscriber does not pay. Polls tidegate's
    /// committed counter on /metrics (it counts all of tidegate's traffic: use a tidegate that
    /// receives nothing else), then reads the rows back for loss and duplicates. No latency.
    #[arg(long, requires = "api", conflicts_with = "null")]
    pub no_stream: bool,
    /// Only publish (every QoS 1 message acknowledged by the broker), measuring nothing else:
    /// e.g. to build a backlog for a stopped tidegate. Publishes to exactly --topic.
    #[arg(long, conflicts_with_all = ["api", "null"])]
    pub publish_only: bool,
    /// Messages to publish in all (ignored with --rate), up to 100,000,000.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=MAX_MESSAGES))]
    pub messages: u64,
    /// Publish at this many messages per second in all, for --duration.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_MESSAGES))]
    pub rate: Option<u64>,
    /// With --rate: for how long.
    #[arg(long, default_value = "10s")]
    pub duration: crate::config::Span,
    /// Payload size in bytes, 60 to 1,000,000 (JSON with seq, send time and padding).
    #[arg(long, default_value_t = 100, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(60..=1_000_000))]
    pub size: usize,
    /// Publisher QoS: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Publishing connections.
    #[arg(long, default_value_t = 4, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub connections: usize,
    /// Topic prefix; each run uses PREFIX/<random>.
    #[arg(long, default_value = "bench/tidegate")]
    pub topic: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// What one run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub published: u64,
    pub received: u64,
    pub duplicates: u64,
    pub lost: u64,
    pub seconds: f64,
    pub msg_per_s: f64,
    /// `None` when not measured (`--no-stream`).
    pub latency_ms_p50: Option<f64>,
    pub latency_ms_p90: Option<f64>,
    pub latency_ms_p99: Option<f64>,
    pub latency_ms_max: Option<f64>,
    /// tidegate's CPU time a message over the measured window, in µs, from its
    /// `process_cpu_seconds_total` (`--no-stream` only: the counter is read there anyway).
    pub tidegate_cpu_us_per_msg: Option<f64>,
    /// This tool's own CPU time a message over the measured window, in µs: the publishing
    /// connections, and with `--null` the subscriber too. On a machine shared with the broker
    /// and tidegate, it shows where the cores went.
    pub load_cpu_us_per_msg: Option<f64>,
    /// Live-stream events this client missed because it fell behind, as the stream's `lagged`
    /// notices count them (every topic's, not only the bench's). When there are any,
    /// `received`, `lost` and `duplicates` come from the stored rows.
    pub skipped_by_stream: u64,
}

impl Report {
    /// This report, with loss and duplicates from `stored` (the rows) because the live stream
    /// skipped `skipped` events. Throughput counts the stored messages over the same window.
    fn with_stored(self, stored: &Tally, skipped: u64) -> Report {
        let rows = stored.report(self.seconds, None);
        Report {
            received: rows.received,
            lost: rows.lost,
            duplicates: rows.duplicates,
            msg_per_s: rows.msg_per_s,
            skipped_by_stream: skipped,
            ..self
        }
    }
}

/// When the measured window opened: the wall clock, and this process's CPU time.
#[derive(Debug, Clone, Copy)]
struct Start {
    at: Instant,
    cpu: Option<f64>,
}

impl Start {
    fn now() -> Start {
        Start {
            at: Instant::now(),
            cpu: crate::telemetry::process_cpu_seconds(),
        }
    }

    /// This process's CPU since the start, in µs a message.
    fn load_cpu_us_per_msg(&self, messages: u64) -> Option<f64> {
        per_msg(self.cpu, crate::telemetry::process_cpu_seconds(), messages)
    }
}

/// Says on stderr that the measured window has closed, before the slower checks that follow
/// (reading a million rows back takes a while), so a person knows what is going on and a script
/// can sample other processes' CPU at that moment (`scripts/bench` does).
fn window_closed(bar: &indicatif::ProgressBar, received: u64, seconds: f64) {
    bar.suspend(|| eprintln!("measured window closed: {received} messages in {seconds:.2} s"));
}

/// CPU seconds between two readings, in µs a message.
fn per_msg(before: Option<f64>, after: Option<f64>, messages: u64) -> Option<f64> {
    Some((after? - before?).max(0.0) * 1e6 / messages.max(1) as f64)
}

/// The client that reads tidegate's API, trusting `ca_file`'s certificates besides the public
/// roots.
fn api_client(ca_file: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = match ca_file {
        Some(path) => {
            crate::api::tls::ca_certificates(path).map_err(|e| ConfigError::new("api-ca-file", e))?
        }
        None => Vec::new(),
    };
    let http = crate::api::tls::trusting(reqwest::Client::builder(), &ca)
        .map_err(|e| ConfigError::new("api-ca-file", e))?;
    Ok(http.build()?)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let broker = resolve_access(BrokerUrl::parse(&args.broker)?, args.access.clone())?;
    if args.api.is_none() && !args.null && !args.publish_only {
        return Err(ConfigError::new(
            "api",
            "say what to measure: --api http://HOST:PORT (tidegate's live stream), --null, or --publish-only",
        )
        .into());
    }
    // Read before anything is published, so a wrong file is a setting to fix (exit 2).
    let http = api_client(args.api_ca_file.as_deref())?;
    let topic = format!(
        "{}/{:08x}",
        args.topic.trim_end_matches('/'),
        rand::random::<u32>()
    );
    let total = match args.rate {
        Some(r) => r
            .checked_mul(args.duration.0.as_secs().max(1))
            .filter(|&n| n <= MAX_MESSAGES)
            .ok_or_else(|| {
                ConfigError::new(
                    "duration",
                    format!("--rate times --duration is more than {MAX_MESSAGES} messages; shorten it"),
                )
            })?,
        None => args.messages,
    };
    let (rate, size, qos, connections) = (args.rate, args.size, args.qos, args.connections);
    let publisher = move |broker: BrokerAccess, topic: String| {
        publish::run(broker, topic, total, rate, size, qos, connections)
    };
    if args.publish_only {
        let topic = args.topic.clone();
        let started = Instant::now();
        publisher(broker, topic.clone()).await?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "published {total} to {topic} in {seconds:.2} s  →  {:.0} msg/s (acknowledged by the broker)",
            total as f64 / seconds
        );
        return Ok(());
    }
    let api = args.api.clone().unwrap_or_default();
    let token = args.api_token.as_deref();
    let receiver = if args.null {
        Receiver::Events(collect::Collector::null(&broker, &topic, args.qos).await?)
    } else if args.no_stream {
        Receiver::Rows(count::Counter::new(http.clone(), &api, token).await?)
    } else {
        Receiver::Events(collect::Collector::stream(http.clone(), &api, token, &topic).await?)
    };
    let bar = indicatif::ProgressBar::new(total);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} received  {per_sec}  {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Start::now();
    let mut publishing = tokio::spawn(publisher(broker, topic.clone()));
    let idle = Duration::from_secs(15);
    let receiving = async {
        Ok::<_, anyhow::Error>(match receiver {
            Receiver::Events(c) => {
                let seen = c.wait(total, &bar, idle, started).await;
                // Only the live stream skips: a client that falls behind misses events, not rows.
                if seen.skipped > 0 {
                    let rows = count::Counter::new(http, &api, token).await?;
                    let stored = rows.stored(&topic, total, idle).await?;
                    seen.report.with_stored(&stored, seen.skipped)
                } else {
                    seen.report
                }
            }
            Receiver::Rows(c) => c.wait(&topic, total, &bar, idle, started).await?,
        })
    };
    tokio::pin!(receiving);
    // A publisher the broker refuses ends the run at once, not after the receiving side's
    // idle wait.
    let mut published = false;
    let report = loop {
        tokio::select! {
            report = &mut receiving => break report?,
            done = &mut publishing, if !published => {
                done.context("publisher")??;
                published = true;
            }
        }
    };
    if !published {
        publishing.await.context("publisher")??;
    }
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "published {}  received {}  lost {}  duplicates {}  in {:.2} s  →  {:.0} msg/s",
            report.published,
            report.received,
            report.lost,
            report.duplicates,
            report.seconds,
            report.msg_per_s,
        );
        if report.skipped_by_stream > 0 {
            println!(
                "the live stream skipped {} events because this client fell behind: loss and \
                 duplicates are counted from the stored rows, latency from the events received",
                report.skipped_by_stream
            );
        }
        let ms = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.1}"));
        println!(
            "latency (publish→{}) ms: p50 {}  p90 {}  p99 {}  max {}",
            if args.null { "receive" } else { "commit" },
            ms(report.latency_ms_p50),
            ms(report.latency_ms_p90),
            ms(report.latency_ms_p99),
            ms(report.latency_ms_max)
        );
        let us = |v: Option<f64>| v.map_or_else(|| "—".to_string(), |v| format!("{v:.2} µs"));
        println!(
            "CPU a message: tidegate {}  this tool {}",
            us(report.tidegate_cpu_us_per_msg),
            us(report.load_cpu_us_per_msg)
        );
    }
    Ok(())
}

/// Which sequence numbers came out the other side: each counted once, extra copies apart.
struct Tally {
    seen: Vec<bool>,
    unique: u64,
    duplicates: u64,
}

impl Tally {
    fn new(total: u64) -> Tally {
        Tally {
            seen: vec![false; total as usize],
            unique: 0,
            duplicates: 0,
        }
    }

    /// Counts `seq`; true the first time it is seen. Numbers out of range are ignored.
    fn add(&mut self, seq: u64) -> bool {
        match self.seen.get_mut(seq as usize) {
            Some(s) if !*s => {
                *s = true;
                self.unique += 1;
                true
            }
            Some(_) => {
                self.duplicates += 1;
                false
            }
            None => false,
        }
    }

    /// The report of a run that took `seconds`; `latency_ms` is p50, p90, p99 and max.
    fn report(&self, seconds: f64, latency_ms: Option<[f64; 4]>) -> Report {
        let total = self.seen.len() as u64;
        let [p50, p90, p99, max] = latency_ms.map_or([None; 4], |l| l.map(Some));
        Report {
            published: total,
            received: self.unique,
            duplicates: self.duplicates,
            lost: total - self.unique,
            seconds,
            msg_per_s: self.unique as f64 / seconds,
            latency_ms_p50: p50,
            latency_ms_p90: p90,
            latency_ms_p99: p99,
            latency_ms_max: max,
            tidegate_cpu_us_per_msg: None,
            load_cpu_us_per_msg: None,
            skipped_by_stream: 0,
        }
    }
}

/// What tells the bench a message came out the other side.
enum Receiver {
    /// One event per message: the live stream or the null subscriber.
    Events(collect::Collector),
    /// tidegate's committed counter, then its stored rows.
    Rows(count::Counter),
}

/// Microseconds since the unix epoch, the clock in every bench payload.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn events_the_stream_skipped_are_counted_from_the_rows_not_as_lost() {
        let mut streamed = Tally::new(10);
        for seq in 0..6 {
            streamed.add(seq);
        }
        let from_stream = streamed.report(2.0, Some([1.0, 2.0, 3.0, 4.0]));
        assert_eq!(from_stream.lost, 4, "the events alone");
        let mut rows = Tally::new(10);
        for seq in (0..10).chain([3]) {
            rows.add(seq);
        }
        let r = from_stream.with_stored(&rows, 4);
        assert_eq!((r.received, r.lost, r.duplicates), (10, 0, 1));
        assert_eq!(r.skipped_by_stream, 4);
        assert_eq!(r.msg_per_s, 5.0, "ten stored messages in two seconds");
        assert_eq!(
            r.latency_ms_p99,
            Some(3.0),
            "latency stays that of the events received"
        );
        // A message missing from the rows is lost, whatever the stream said.
        let mut short = Tally::new(10);
        for seq in 0..9 {
            short.add(seq);
        }
        assert_eq!(streamed.report(2.0, None).with_stored(&short, 4).lost, 1);
    }
}
