//! The receiving side of `tidegate bench --no-stream`: throughput without a live-stream client.
//! It polls tidegate's committed-message counter, then reads the bench topic's rows back through
//! the API for loss and duplicates (which the stream mode also does when the live stream skipped
//! messages). A row does not say when it was committed, so there is no latency here; it must
//! never follow the stream (that is the cost this mode leaves out).

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Report, Tally};
use crate::telemetry::COMMITTED;

/// tidegate's standard CPU counter on `/metrics`.
const CPU: &str = "process_cpu_seconds_total";

/// How often the counter is read: fine enough for a run of a few seconds, cheap for tidegate.
const POLL: Duration = Duration::from_millis(10);
/// Rows a page when reading back: small pages keep tidegate's memory (measured by the bench) low.
const PAGE: usize = 1_000;

pub struct Counter {
    http: reqwest::Client,
    api: String,
    token: Option<String>,
    baseline: Reading,
}

/// What one read of `/metrics` tells: messages committed so far, and tidegate's CPU seconds
/// (absent where tidegate has no process CPU clock to export).
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    committed: u64,
    cpu: Option<f64>,
}

#[derive(serde::Deserialize)]
struct Page {
    messages: Vec<Row>,
    next: Option<String>,
}

#[derive(serde::Deserialize)]
struct Row {
    payload: String,
}

/// The value of an unlabelled metric in Prometheus text.
fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse::<f64>().ok())?
    })
}

impl Counter {
    /// Reads the counter once, before anything is published.
    pub async fn new(http: reqwest::Client, api: &str, token: Option<&str>) -> anyhow::Result<Counter> {
        let mut c = Counter {
            http,
            api: api.trim_end_matches('/').to_string(),
            token: token.map(String::from),
            baseline: Reading::default(),
        };
        c.baseline = c.read().await?;
        Ok(c)
    }

    async fn get(&self, path_and_query: &str) -> anyhow::Result<reqwest::Response> {
        let mut req = self.http.get(format!("{}{path_and_query}", self.api));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("GET {}{path_and_query}", self.api))?;
        if !resp.status().is_success() {
            anyhow::bail!("GET {path_and_query} answered {}", resp.status());
        }
        Ok(resp)
    }

    async fn read(&self) -> anyhow::Result<Reading> {
        let text = self.get("/metrics").await?.text().await?;
        Ok(Reading {
            // Before its first commit tidegate may not list the counter yet.
            committed: metric_value(&text, COMMITTED).map_or(0, |v| v as u64),
            cpu: metric_value(&text, CPU),
        })
    }

    /// Waits until `total` more messages are committed, or nothing moves for `idle`; then reads
    /// `topic`'s rows back until every sequence number is there or nothing new came for `idle`.
    pub async fn wait(
        self,
        topic: &str,
        total: u64,
        bar: &indicatif::ProgressBar,
        idle: Duration,
        started: super::Start,
    ) -> anyhow::Result<Report> {
        let base = self.baseline;
        let (mut seen, mut moved, mut last) = (base, Instant::now(), started.at);
        while seen.committed - base.committed < total && moved.elapsed() < idle {
            tokio::time::sleep(POLL).await;
            let now = self.read().await?;
            if now.committed > seen.committed {
                (seen, moved, last) = (now, Instant::now(), Instant::now());
                bar.set_position((seen.committed - base.committed).min(total));
            }
        }
        // Both CPU figures stop here, before the rows are read back (which is not ingest work).
        let load_cpu = started.load_cpu_us_per_msg(total);
        let tidegate_cpu = super::per_msg(base.cpu, seen.cpu, total);
        let seconds = (last - started.at).as_secs_f64().max(1e-6);
        super::window_closed(bar, seen.committed - base.committed, seconds);
        // The counter counts all of tidegate's traffic: rows of ours may still be on their way.
        let tally = self.stored(topic, total, idle).await?;
        Ok(Report {
            tidegate_cpu_us_per_msg: tidegate_cpu,
            load_cpu_us_per_msg: load_cpu,
            ..tally.report(seconds, None)
        })
    }

    /// The sequence numbers among `topic`'s stored rows, read again until all `total` are there
    /// or none came for `idle`.
    pub async fn stored(&self, topic: &str, total: u64, idle: Duration) -> anyhow::Result<Tally> {
        let (mut best, mut grew) = (0, Instant::now());
        loop {
            let tally = self.read_back(topic, total).await?;
            if tally.unique > best {
                (best, grew) = (tally.unique, Instant::now());
            }
            if tally.unique >= total || grew.elapsed() >= idle {
                return Ok(tally);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The sequence numbers among `topic`'s stored rows.
    async fn read_back(&self, topic: &str, total: u64) -> anyhow::Result<Tally> {
        let mut tally = Tally::new(total);
        let query: String = url::form_urlencoded::byte_serialize(topic.as_bytes()).collect();
        let mut next = Some(format!(
            "/api/v1/messages?topic={query}&order=oldest&limit={PAGE}"
        ));
        while let Some(path) = next {
            let page: Page = self.get(&path).await?.json().await.context("reading rows back")?;
            for row in &page.messages {
                if let Some((seq, _)) = super::collect::parse(row.payload.as_bytes()) {
                    tally.add(seq);
                }
            }
            next = page.next;
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn reads_an_unlabelled_metric_and_not_its_look_alikes() {
        let text = "# TYPE tidegate_messages_committed_total counter\n\
                    tidegate_messages_committed_total_created 5\n\
                    tidegate_messages_committed_total 1234\n\
                    process_cpu_seconds_total 2.37\n";
        assert_eq!(
            metric_value(text, "tidegate_messages_committed_total"),
            Some(1234.0)
        );
        assert_eq!(metric_value(text, "process_cpu_seconds_total"), Some(2.37));
        assert_eq!(
            metric_value("other 1\n", "tidegate_messages_committed_total"),
            None
        );
    }
}
