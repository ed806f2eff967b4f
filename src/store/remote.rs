//! The remote store of `tidegate subscribe`: a batch is "committed" when another tidegate's
//! `POST /api/v1/messages` answered 201. A retried batch is sent marked as a redelivery, so the
//! receiving store recognises what it already committed (its answer may have been lost).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;

use super::{Committed, MessageQuery, Outcome, Store, StoreError, StoredMessage, TopicStats};
use crate::{
    config::RemoteSettings,
    message::{Message, Origin},
};

pub struct RemoteStore {
    url: String,
    token: Option<crate::secret::Secret>,
    http: reqwest::Client,
    /// The batch whose last attempt failed: sending it again is a retry.
    failed: Mutex<Option<Arc<Vec<Message>>>>,
}

impl RemoteStore {
    pub fn new(s: &RemoteSettings) -> Result<Self, StoreError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| StoreError::Open {
                target: s.url.clone(),
                reason: e.to_string(),
            })?;
        Ok(RemoteStore {
            url: s.url.clone(),
            token: s.token.clone(),
            http,
            failed: Mutex::new(None),
        })
    }

    fn body(batch: &[Message], retry: bool) -> Vec<u8> {
        use base64::Engine;
        let mut out = Vec::with_capacity(batch.len() * 200);
        for m in batch {
            let mut v = json!({
                "topic": m.topic,
                "qos": m.qos,
                "retain": m.retain,
                "received_at": m.received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
            match m.payload_text() {
                Some(t) => v["payload"] = json!(t),
                None => {
                    v["payload_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.payload))
                }
            }
            if let Some(ct) = &m.content_type {
                v["content_type"] = json!(ct);
            }
            if !m.user_properties.is_empty() {
                v["user_properties"] = json!(m.user_properties);
            }
            if let Origin::Mqtt {
                session,
                pkid,
                redelivery,
            } = &m.origin
            {
                v["mqtt"] =
                    json!({"session": &**session, "packet_id": pkid, "redelivery": *redelivery || retry});
            }
            if let Some(reason) = &m.rejection {
                v["rejected"] = json!({"reason": reason, "size": m.size});
            }
            let _ = serde_json::to_writer(&mut out, &v);
            out.push(b'\n');
        }
        out
    }
}

#[async_trait]
impl Store for RemoteStore {
    /// The receiving tidegate derives readings from the raw messages, with its own config, and
    /// keeps the statistics.
    fn uses_derived(&self) -> bool {
        false
    }

    async fn write(&self, batch: Arc<Vec<Message>>) -> Result<Committed, StoreError> {
        let retry = {
            let f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            f.as_ref().is_some_and(|b| Arc::ptr_eq(b, &batch))
        };
        let mut req = self
            .http
            .post(format!("{}/api/v1/messages", self.url))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(Self::body(&batch, retry));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        let result = match req.send().await {
            Ok(resp) if resp.status() == reqwest::StatusCode::CREATED => {
                let v: serde_json::Value = resp.json().await.unwrap_or_default();
                let count = |k: &str| v.get(k).and_then(|n| n.as_u64()).unwrap_or(0) as usize;
                let mut outcomes = vec![Outcome::Stored { id: 0 }; count("stored")];
                outcomes.extend(std::iter::repeat_n(Outcome::Duplicate, count("duplicates")));
                outcomes.extend(std::iter::repeat_n(Outcome::Rejected, count("rejected")));
                outcomes.resize(batch.len(), Outcome::Stored { id: 0 });
                Ok(Committed::new(outcomes))
            }
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                Err(StoreError::Write(format!(
                    "the API at {} answered {status}: {}",
                    self.url,
                    text.chars().take(300).collect::<String>()
                )))
            }
            Err(e) => Err(StoreError::Write(format!(
                "cannot reach the API at {}: {}",
                self.url,
                e.without_url()
            ))),
        };
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        *f = result.is_err().then(|| batch.clone());
        result
    }

    async fn messages(&self, _q: MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        Err(StoreError::Query(
            "`subscribe` stores nothing itself; query the API it forwards to".into(),
        ))
    }

    async fn topics(&self) -> Result<Vec<TopicStats>, StoreError> {
        Err(StoreError::Query(
            "`subscribe` stores nothing itself; query the API it forwards to".into(),
        ))
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}
