//! The remote store of `tidegate subscribe`: a batch is "committed" when another tidegate's
//! `POST /api/v1/messages` answered 201. A retried batch is sent marked as a redelivery, so the
//! receiving store recognises what it already committed (its answer may have been lost).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::json;

use super::{Committed, MessageQuery, Outcome, Store, StoreError, StoredMessage, TopicStats};
use crate::{
    config::{current::Current, RemoteSettings},
    message::{Message, Origin},
    secret::Secret,
};

pub struct RemoteStore {
    url: String,
    /// Read per request: a reload may replace it (a token rotated).
    token: Current<Option<Secret>>,
    http: reqwest::Client,
    /// The batch whose last attempt failed: sending it again is a retry.
    failed: Mutex<Option<Arc<Vec<Message>>>>,
}

impl RemoteStore {
    /// A store posting to `s.url`, sending `token`: the one in force (`s.token` at start), which
    /// a reload may replace.
    pub fn new(s: &RemoteSettings, token: Current<Option<Secret>>) -> Result<Self, StoreError> {
        let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        let http = crate::api::tls::trusting(builder, &s.ca)
            .and_then(|b| b.build().map_err(|e| e.to_string()))
            .map_err(|reason| StoreError::Open {
                target: s.url.clone(),
                reason,
            })?;
        Ok(RemoteStore {
            url: s.url.clone(),
            token,
            http,
            failed: Mutex::new(None),
        })
    }

    /// The API's address of `client_id`'s subscription record (the id percent-encoded).
    fn subscriptions_url(&self, client_id: &str) -> Result<reqwest::Url, StoreError> {
        let mut url =
            reqwest::Url::parse(&self.url).map_err(|e| StoreError::Query(format!("{}: {e}", self.url)))?;
        url.path_segments_mut()
            .map_err(|()| StoreError::Query(format!("{} cannot take a path", self.url)))?
            .pop_if_empty()
            .extend(["api", "v1", "subscriptions", client_id]);
        Ok(url)
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self.token.get().as_ref() {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        }
    }

    /// Sends `req` with the token: the answer when it is a success, else what went wrong.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, String> {
        let resp = self
            .authorized(req)
            .send()
            .await
            .map_err(|e| format!("cannot reach the API at {}: {}", self.url, unreachable(e)))?;
        if resp.status().is_success() {
            Ok(resp)
        } else {
            Err(self.refused(resp).await)
        }
    }

    /// The error of an answer that is not a success, with the start of its body.
    async fn refused(&self, resp: reqwest::Response) -> String {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
            " (the token sent is not one it accepts: check --api-token or --api-token-file on both \
             sides; a reload reads a token file again)"
        } else {
            ""
        };
        format!(
            "the API at {} answered {status}: {}{hint}",
            self.url,
            text.chars().take(300).collect::<String>()
        )
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
        let req = self
            .http
            .post(format!("{}/api/v1/messages", self.url))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(Self::body(&batch, retry));
        let result = match self.send(req).await {
            Ok(resp) if resp.status() == reqwest::StatusCode::CREATED => {
                let v: serde_json::Value = resp.json().await.unwrap_or_default();
                let count = |k: &str| v.get(k).and_then(|n| n.as_u64()).unwrap_or(0) as usize;
                let mut outcomes = vec![Outcome::Stored { id: 0 }; count("stored")];
                outcomes.extend(std::iter::repeat_n(Outcome::Duplicate, count("duplicates")));
                outcomes.extend(std::iter::repeat_n(Outcome::Rejected, count("rejected")));
                outcomes.resize(batch.len(), Outcome::Stored { id: 0 });
                Ok(Committed::new(outcomes))
            }
            // Committed means 201; any other answer, success or not, is not a commit.
            Ok(resp) => Err(StoreError::Write(self.refused(resp).await)),
            Err(e) => Err(StoreError::Write(e)),
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

    /// Kept by the tidegate this process forwards to, which has the database.
    async fn subscriptions(&self, client_id: &str) -> Result<Option<Vec<String>>, StoreError> {
        #[derive(serde::Deserialize)]
        struct Record {
            filters: Option<Vec<String>>,
        }
        let url = self.subscriptions_url(client_id)?;
        let resp = self.send(self.http.get(url)).await.map_err(StoreError::Query)?;
        let record: Record = resp.json().await.map_err(|e| {
            StoreError::Query(format!(
                "the API at {} answered something other than a subscription record: {}",
                self.url,
                e.without_url()
            ))
        })?;
        Ok(record.filters)
    }

    async fn record_subscriptions(&self, client_id: &str, filters: &[String]) -> Result<(), StoreError> {
        let url = self.subscriptions_url(client_id)?;
        self.send(self.http.put(url).json(&json!({ "filters": filters })))
            .await
            .map_err(StoreError::Write)?;
        Ok(())
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

/// Why a request got no answer, with its causes: reqwest's own text stops at "error sending
/// request", and the cause (refused, timed out, an untrusted certificate) is what to act on.
fn unreachable(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    if text.contains("CaUsedAsEndEntity") {
        text.push_str(
            " (the API serves a CA certificate: serve one the CA issued, or a self-signed one made with \
             basicConstraints CA:FALSE, as in docs/deploy.md)",
        );
    } else if text.contains("NotValidForName") {
        text.push_str(
            " (the API's certificate does not name this host: use a name it was issued for in --api)",
        );
    } else if text.contains("certificate") {
        text.push_str(" (an API with a private or self-signed certificate: trust its CA with --api-ca-file)");
    }
    text
}
