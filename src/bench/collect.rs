//! The receiving side of `tidegate bench`: tidegate's live stream (after commit) or a null
//! subscriber. Each message's sequence number and send time give loss, duplicates and latency.

use std::time::{Duration, Instant};

use futures::StreamExt;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use tokio::sync::mpsc;

use super::{Report, Tally};
use crate::{config::BrokerAccess, source::reach};

pub struct Collector {
    rx: mpsc::UnboundedReceiver<Seen>,
    _task: tokio::task::JoinHandle<()>,
}

/// What the receiving side saw.
#[derive(Debug, PartialEq)]
pub(super) enum Seen {
    /// A bench message: its sequence number and microseconds since it was sent.
    Message(u64, u64),
    /// The live stream skipped this many committed messages because this client fell behind
    /// (its `lagged` event). They are stored; only their events are gone.
    Skipped(u64),
}

/// What one run of the receiving side gives: the report of what it saw, and how many messages
/// the live stream skipped.
pub(super) struct Outcome {
    pub report: Report,
    pub skipped: u64,
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
    pub async fn stream(
        http: reqwest::Client,
        api: &str,
        token: Option<&str>,
        topic: &str,
    ) -> anyhow::Result<Collector> {
        let mut req = http.get(format!(
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
                    if let Some(seen) = event(&block) {
                        let _ = tx.send(seen);
                    }
                }
            }
        });
        Ok(Collector { rx, _task: task })
    }

    /// A subscriber that acknowledges on receipt and stores nothing: the ceiling.
    pub async fn null(broker: &BrokerAccess, topic: &str, qos: u8) -> anyhow::Result<Collector> {
        let client_id = format!("tidegate-bench-null-{}", rand::random::<u32>());
        let mut opts = reach::v4_options(client_id, broker)?;
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
                            let _ = r.send(Ok(()));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Some((seq, us)) = parse(&p.payload) {
                            let _ = tx.send(Seen::Message(seq, us));
                        }
                    }
                    Ok(_) => {}
                    // Before the subscription is confirmed, a failure is the user's to fix
                    // (address, password, CA); later, a dropped connection is tried again.
                    Err(e) => match ready.take() {
                        Some(r) => {
                            let _ = r.send(Err(reach::describe_v4(&e)));
                            return;
                        }
                        None => tokio::time::sleep(Duration::from_millis(100)).await,
                    },
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
            Ok(Ok(Ok(()))) => Ok(Collector { rx, _task: task }),
            Ok(Ok(Err(e))) => {
                anyhow::bail!("the null subscriber could not connect to {}: {e}", broker.broker)
            }
            _ => anyhow::bail!("the broker did not confirm the null subscriber's subscription within 10 s"),
        }
    }

    /// Collects until every sequence number arrived or was skipped, or nothing new came for
    /// `idle`.
    pub async fn wait(
        mut self,
        total: u64,
        bar: &indicatif::ProgressBar,
        idle: Duration,
        started: super::Start,
    ) -> Outcome {
        let mut tally = Tally::new(total);
        let mut lat: Vec<u64> = Vec::with_capacity(total as usize);
        let mut last = started.at;
        let mut skipped = 0;
        while tally.unique + skipped < total {
            match tokio::time::timeout(idle, self.rx.recv()).await {
                Ok(Some(Seen::Message(seq, us))) => {
                    last = Instant::now();
                    if tally.add(seq) {
                        lat.push(us);
                        bar.inc(1);
                    }
                }
                Ok(Some(Seen::Skipped(n))) => {
                    skipped += n;
                    bar.inc(n);
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
        let report = Report {
            load_cpu_us_per_msg: load_cpu,
            ..tally.report(seconds, Some([pct(0.5), pct(0.9), pct(0.99), pct(1.0)]))
        };
        Outcome { report, skipped }
    }
}

/// One server-sent event of tidegate's live stream: a bench message, a `lagged` notice, or
/// nothing of ours.
fn event(block: &[u8]) -> Option<Seen> {
    let mut lagged = false;
    for line in block.split(|b| *b == b'\n') {
        if line == b"event: lagged" {
            lagged = true;
        } else if let Some(data) = line.strip_prefix(b"data:") {
            if lagged {
                let n = std::str::from_utf8(data).ok()?.trim().parse().ok()?;
                return Some(Seen::Skipped(n));
            }
            let v: serde_json::Value = serde_json::from_slice(data).ok()?;
            let (seq, us) = parse(v["payload"].as_str()?.as_bytes())?;
            return Some(Seen::Message(seq, us));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{event, Seen};

    #[test]
    fn a_lagged_notice_counts_the_skipped_messages_and_a_message_its_sequence() {
        assert_eq!(event(b"event: lagged\ndata: 1234\n\n"), Some(Seen::Skipped(1234)));
        let Some(Seen::Message(seq, _)) =
            event(br#"data: {"topic":"bench/x","payload":"{\"seq\":7,\"sent_us\":1,\"pad\":\"x\"}"}"#)
        else {
            panic!("a bench message was not recognised");
        };
        assert_eq!(seq, 7);
        // Keep-alive comments and other payloads are nothing of ours.
        assert_eq!(event(b":\n\n"), None);
        assert_eq!(event(br#"data: {"topic":"t","payload":"21.5"}"#), None);
        assert_eq!(event(b"event: lagged\ndata: many\n\n"), None);
    }
}
