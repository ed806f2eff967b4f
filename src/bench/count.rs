//! The receiving side of `tidegate bench --no-stream`: throughput without a live-stream client.
//! It polls tidegate's committed-message counter, then reads the bench topic's rows back through
//! the API for loss and duplicates. A row does not say when it was committed, so there is no
//! latency here; it must never follow the stream (that is the cost this mode leaves out).

use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Report, Tally};
use crate::telemetry::COMMITTED;

/// How often the counter is read: fine enough for a run of a few seconds, cheap for tidegate.
const POLL: Duration = Duration::from_millis(10);
/// Rows a page when reading back: small pages keep tidegate's memory (measured by the bench) low.
const PAGE: usize = 1_000;

pub struct Counter {
    http: reqwest::Client,
    api: String,
    token: Option<String>,
    baseline: u64,
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

/// The value of an unlabelled counter in Prometheus text.
fn counter_value(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse::<f64>().ok().map(|v| v as u64))?
    })
}

impl Counter {
    /// Reads the counter once, before anything is published.
    pub async fn new(api: &str, token: Option<&str>) -> anyhow::Result<Counter> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut c = Counter {
            http: reqwest::Client::new(),
            api: api.trim_end_matches('/').to_string(),
            token: token.map(String::from),
            baseline: 0,
        };
        c.baseline = c.committed().await?;
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

    async fn committed(&self) -> anyhow::Result<u64> {
        let text = self.get("/metrics").await?.text().await?;
        // Before its first commit tidegate may not list the counter yet.
        Ok(counter_value(&text, COMMITTED).unwrap_or(0))
    }

    /// Waits until `total` more messages are committed, or nothing moves for `idle`; then reads
    /// `topic`'s rows back until every sequence number is there or nothing new came for `idle`.
    pub async fn wait(
        self,
        topic: &str,
        total: u64,
        bar: &indicatif::ProgressBar,
        idle: Duration,
        started: Instant,
    ) -> anyhow::Result<Report> {
        let (mut count, mut moved, mut last) = (self.baseline, Instant::now(), started);
        while count - self.baseline < total && moved.elapsed() < idle {
            tokio::time::sleep(POLL).await;
            let now = self.committed().await?;
            if now > count {
                (count, moved, last) = (now, Instant::now(), Instant::now());
                bar.set_position((count - self.baseline).min(total));
            }
        }
        let seconds = (last - started).as_secs_f64().max(1e-6);
        // The counter counts all of tidegate's traffic: rows of ours may still be on their way.
        let (mut best, mut grew) = (0, Instant::now());
        let tally = loop {
            let tally = self.read_back(topic, total).await?;
            if tally.unique > best {
                (best, grew) = (tally.unique, Instant::now());
            }
            if tally.unique >= total || grew.elapsed() >= idle {
                break tally;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        Ok(tally.report(seconds, None))
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
    use super::counter_value;

    #[test]
    fn reads_an_unlabelled_counter_and_not_its_look_alikes() {
        let text = "# TYPE tidegate_messages_committed_total counter\n\
                    tidegate_messages_committed_total_created 5\n\
                    tidegate_messages_committed_total 1234\n";
        assert_eq!(
            counter_value(text, "tidegate_messages_committed_total"),
            Some(1234)
        );
        assert_eq!(
            counter_value("other 1\n", "tidegate_messages_committed_total"),
            None
        );
    }
}
