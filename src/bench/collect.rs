//! The receiving side of `tidegate bench`: tidegate's live stream (after commit) or a null
//! subscriber. Each message's sequence number and send time give loss, duplicates and latency.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use super::{Report, Tally};
use crate::config::BrokerUrl;

pub struct Collector {
    rx: mpsc::UnboundedReceiver<(u64, u64)>,
    _task: tokio::task::JoinHandle<()>,
}

/// (sequence number, microseconds since it was sent) from a bench payload.
pub(super) fn parse(payload: &[u8]) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct P {
        seq: u64,
        sent_us: u64,
    }
    let p: P = serde_json::from_slice(payload).ok()?;
    Some((p.seq, super::now_us().saturating_sub(p.sent_us)))
}

impl Collector {
    /// Follows tidegate's `/api/v1/stream` for the bench topic.
    pub async fn stream(api: &str, token: Option<&str>, topic: &str) -> anyhow::Result<Collector> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut req = reqwest::Client::new().get(format!(
            "{}/api/v1/stream?topic={topic}",
            api.trim_end_matches('/')
        ));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await?;
        if !resp.status().is_success() {
            anyhow::bail!("the live stream answered {}", resp.status());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = Vec::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.extend_from_slice(&chunk);
                while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
                    let block: Vec<u8> = buf.drain(..i + 2).collect();
                    for line in block.split(|b| *b == b'\n') {
                        if let Some(data) = line.strip_prefix(b"data:") {
                            let v: Option<serde_json::Value> = serde_json::from_slice(data).ok();
                            if let Some(p) = v
                                .as_ref()
                                .and_then(|v| v["payload"].as_str())
                                .and_then(|p| parse(p.as_bytes()))
                            {
                                let _ = tx.send(p);
                            }
                        }
                    }
                }
            }
        });
        Ok(Collector { rx, _task: task })
    }

    /// A subscriber that acknowledges on receipt and stores nothing: the ceiling.
    pub async fn null(broker: &BrokerUrl, topic: &str, qos: u8) -> anyhow::Result<Collector> {
        let mut opts = MqttOptions::new(
            format!("tidegate-bench-null-{}", rand::random::<u32>()),
            broker.host.clone(),
            broker.port,
        );
        opts.set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        client
            .subscribe(
                topic,
                if qos == 0 {
                    QoS::AtMostOnce
                } else {
                    QoS::AtLeastOnce
                },
            )
            .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready = Some(ready_tx);
        let task = tokio::spawn(async move {
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some(x) = parse(&p.payload) {
                            let _ = tx.send(x);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx).await.ok();
        Ok(Collector { rx, _task: task })
    }

    /// Collects until every sequence number arrived, or nothing new came for `idle`.
    pub async fn wait(
        mut self,
        total: u64,
        bar: &indicatif::ProgressBar,
        idle: Duration,
        started: super::Start,
    ) -> Report {
        let mut tally = Tally::new(total);
        let mut lat: Vec<u64> = Vec::with_capacity(total as usize);
        let mut last = started.at;
        while tally.unique < total {
            match tokio::time::timeout(idle, self.rx.recv()).await {
                Ok(Some((seq, us))) => {
                    last = Instant::now();
                    if tally.add(seq) {
                        lat.push(us);
                        bar.inc(1);
                    }
                }
                _ => break,
            }
        }
        let load_cpu = started.load_cpu_us_per_msg(total);
        let seconds = (last - started.at).as_secs_f64().max(1e-6);
        super::window_closed(bar, tally.unique, seconds);
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat[i] as f64 / 1000.0
        };
        Report {
            load_cpu_us_per_msg: load_cpu,
            ..tally.report(seconds, Some([pct(0.5), pct(0.9), pct(0.99), pct(1.0)]))
        }
    }
}
