//! The session loop: one task owns the rumqttc event loop (never inside `select!`, whose
//! cancellation rumqttc does not document as safe), reconnects forever with capped, jittered
//! backoff, resubscribes when the broker lost the session, and forwards deliveries to the
//! pipeline. It logs once per state change, not once per attempt.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use rand::Rng;
use tokio::{
    sync::{mpsc, watch, Notify},
    task::JoinHandle,
};

use super::{
    ack::{AckGate, MqttAck},
    client::{self, Client, Event},
    memory::Memory,
    strays::Strays,
    subscription::{Change, Subscription},
    tls::TlsError,
    watchdog::{Heartbeat, Watchdog},
};
use crate::{
    config::MqttSettings,
    pipeline::{self, Ack, Ingest},
};

/// The loop's way into the pipeline; emptied by `stop_intake` so the writer can drain and end.
type Intake = Arc<std::sync::Mutex<Option<pipeline::Sender>>>;

/// What readiness checks and metrics need to know about the broker session.
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    pub connected: bool,
    pub last_error: Option<String>,
    pub reconnects: u64,
    pub sessions_lost: u64,
    /// Set by the watchdog (`--stale-after`) while a connected session delivers nothing.
    pub stale: Option<String>,
}

pub struct MqttSource {
    client: Client,
    gate: Arc<AckGate>,
    intake: Intake,
    accepting: Arc<AtomicBool>,
    wake: Arc<Notify>,
    task: JoinHandle<()>,
    watchdog: Option<JoinHandle<()>>,
    status: watch::Receiver<SourceStatus>,
    subscription: Arc<Subscription>,
    memory: Memory,
}

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

fn jittered(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.5..1.0);
    d.mul_f64(f)
}

impl MqttSource {
    /// Starts the session loop. Fails only for local problems (TLS files); network problems are
    /// retried forever.
    /// `store_fault` is the writer's: while it names a fault, tidegate is holding deliveries
    /// back itself, and the stale-session watchdog waits instead of calling the session silent.
    pub fn start(
        settings: MqttSettings,
        tx: pipeline::Sender,
        store_fault: watch::Receiver<Option<String>>,
        memory: Memory,
    ) -> Result<Self, TlsError> {
        let (client, eventloop) = client::build(&settings)?;
        let intake: Intake = Arc::new(std::sync::Mutex::new(Some(tx)));
        let gate = AckGate::new(client.clone());
        let accepting = Arc::new(AtomicBool::new(true));
        let wake = Arc::new(Notify::new());
        let (status_tx, status) = watch::channel(SourceStatus::default());
        let status_tx = Arc::new(status_tx);
        let heartbeat = settings.stale_after.map(|_| Arc::new(Heartbeat::default()));
        let subscription = Arc::new(Subscription::new(settings.topics.clone(), settings.qos));
        let watchdog = settings
            .stale_after
            .zip(heartbeat.clone())
            .map(|(after, heartbeat)| {
                tokio::spawn(
                    Watchdog {
                        after,
                        client: client.clone(),
                        subscription: subscription.clone(),
                        heartbeat,
                        status: status_tx.clone(),
                        store_fault,
                    }
                    .run(),
                )
            });
        tracing::info!(
            broker = %settings.access.broker,
            client_id = %settings.client_id,
            topics = ?settings.topics,
            version = %settings.version,
            "connecting to the broker"
        );
        let task = tokio::spawn(session_loop(
            settings,
            client.clone(),
            eventloop,
            gate.clone(),
            intake.clone(),
            accepting.clone(),
            wake.clone(),
            status_tx,
            heartbeat,
            subscription.clone(),
            memory.clone(),
        ));
        Ok(MqttSource {
            client,
            gate,
            intake,
            accepting,
            wake,
            task,
            watchdog,
            status,
            subscription,
            memory,
        })
    }

    /// What a reload changes the session's topic filters with.
    pub fn resubscriber(&self) -> Resubscriber {
        Resubscriber {
            client: self.client.clone(),
            subscription: self.subscription.clone(),
            memory: self.memory.clone(),
        }
    }

    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.clone()
    }

    /// Stops taking new deliveries (they stay unacknowledged and the broker keeps them) and lets
    /// go of the pipeline, so the writer can drain. The loop keeps running to send acks.
    pub fn stop_intake(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.intake.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.wake.notify_one();
    }

    /// Sends DISCONNECT after every queued ack, then waits for the loop to end.
    pub async fn disconnect(self) {
        self.stop_intake();
        self.gate.flushed(Duration::from_secs(5)).await;
        self.client.try_disconnect();
        if let Some(w) = &self.watchdog {
            w.abort();
        }
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

/// Changes the topic filters of a running session.
#[derive(Clone)]
pub struct Resubscriber {
    client: Client,
    subscription: Arc<Subscription>,
    memory: Memory,
}

impl Resubscriber {
    /// Makes `topics` at `qos` the filters of this session, on the same connection: removed
    /// filters are unsubscribed, new ones subscribed. Messages already sent on a removed filter
    /// are stored. Returns what was sent.
    pub fn change(&self, topics: Vec<String>, qos: u8) -> Change {
        let change = self.subscription.replace(&self.client, topics, qos);
        if !change.is_empty() {
            tracing::info!(subscribe = ?change.subscribed, unsubscribe = ?change.unsubscribed, qos, "changing the subscription");
            self.memory.record(self.subscription.filters().0);
        }
        change
    }
}

#[allow(clippy::too_many_arguments)]
async fn session_loop(
    s: MqttSettings,
    client: Client,
    mut eventloop: client::EventLoop,
    gate: Arc<AckGate>,
    intake: Intake,
    accepting: Arc<AtomicBool>,
    wake: Arc<Notify>,
    status: Arc<watch::Sender<SourceStatus>>,
    heartbeat: Option<Arc<Heartbeat>>,
    sub: Arc<Subscription>,
    memory: Memory,
) {
    if let Some(earlier) = memory.earlier().await {
        let stale = sub.end_earlier(earlier);
        if !stale.is_empty() {
            tracing::info!(
                filters = ?stale,
                "an earlier run with this client id subscribed to topic filters this run does not ask for; unsubscribing them, since a session the broker kept still holds them"
            );
        }
    }
    let mut generation = gate.generation();
    let mut backoff = BACKOFF_MIN;
    let mut ever_connected = false;
    // Connections that dropped within seconds of being made, in a row: another client with our
    // client id keeps kicking us off (or the broker refuses us after CONNACK).
    let mut connected_at: Option<std::time::Instant> = None;
    let mut short_lived = 0u32;
    // Shared by every delivery's origin rather than copied into each.
    let session: Arc<str> = s.client_id.as_str().into();
    // Set when the broker kept a session from an earlier run, whose filters may not be ours.
    let mut strays: Option<Strays> = None;
    loop {
        match eventloop.poll(&session, s.max_payload).await {
            Ok(Event::ConnAck {
                session_present,
                detail,
            }) => {
                backoff = BACKOFF_MIN;
                connected_at = Some(std::time::Instant::now());
                if let Some(h) = &heartbeat {
                    h.beat(crate::time::now().timestamp_millis());
                }
                let previous_error = status.borrow().last_error.clone();
                metrics::gauge!(crate::telemetry::MQTT_CONNECTED).set(1.0);
                if ever_connected {
                    metrics::counter!(crate::telemetry::MQTT_RECONNECTS).increment(1);
                }
                if ever_connected && !session_present {
                    metrics::counter!(crate::telemetry::MQTT_SESSIONS_LOST).increment(1);
                }
                status.send_modify(|st| {
                    st.connected = true;
                    st.last_error = None;
                    st.stale = None;
                    if ever_connected {
                        st.reconnects += 1;
                    }
                    if !session_present && ever_connected {
                        st.sessions_lost += 1;
                    }
                });
                match (ever_connected, session_present) {
                    (_, true) => {
                        tracing::info!(broker = %s.access.broker, %detail, "connected; the broker kept our session")
                    }
                    (false, false) => {
                        tracing::info!(broker = %s.access.broker, %detail, "connected with a new session; subscribing")
                    }
                    (true, false) => tracing::warn!(
                        broker = %s.access.broker,
                        "connected, but the broker had lost our session: messages published while we were away may be missing (possible gap); subscribing again"
                    ),
                }
                if let Some(e) = previous_error {
                    tracing::debug!(error = %e, "recovered from");
                }
                // A session kept from an earlier run holds that run's subscriptions, and its
                // topics may not be ours (a changed --topic was ignored: telegraf#9703). So the
                // first connection of a run always subscribes. A filter already held is only
                // replaced: MQTT 5 resends no retained message for it (retain handling 1), and
                // a 3.1.1 broker's resent copy is recognised as already stored.
                if session_present && !ever_connected {
                    strays = Some(Strays::new(&sub));
                }
                // Also after a reload's change that the lost connection may have swallowed.
                sub.on_connect(&client, !session_present || !ever_connected);
                if !ever_connected {
                    memory.record(sub.filters().0);
                }
                ever_connected = true;
            }
            Ok(Event::Publish(message, token)) => {
                if strays
                    .as_mut()
                    .is_some_and(|st| st.first_stray(&message.topic, &sub))
                {
                    tracing::warn!(
                        topic = %message.topic,
                        client_id = %s.client_id,
                        "a message arrived on a topic none of --topic matches: the broker kept a subscription from an earlier run with this client id. Such messages are stored like the others. To end the old subscription, unsubscribe its filter once with this client id and a persistent session, e.g. `mosquitto_sub -i {} -c -q 1 -E -t '{}' -U 'OLD/FILTER'` (with your host and credentials) while tidegate is stopped",
                        s.client_id,
                        sub.filters().0.first().map_or("#", String::as_str),
                    );
                }
                if heartbeat
                    .as_ref()
                    .is_some_and(|h| h.beat(message.received_at.timestamp_millis()))
                {
                    tracing::info!(topic = %message.topic, "a message arrived: the session delivers again");
                    status.send_modify(|st| st.stale = None);
                }
                let ack = match token {
                    Some(t) => Ack::Mqtt(MqttAck::new(gate.clone(), generation, t)),
                    None => Ack::None,
                };
                let ingest = Ingest::one(message, ack);
                // Nearly always the queue has room; only when it is full is the sender cloned,
                // to wait outside the lock.
                let full = match intake.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    None => continue, // stopping: left unacknowledged, the broker keeps it
                    Some(sender) => match sender.try_send(ingest) {
                        Ok(()) => None,
                        Err(mpsc::error::TrySendError::Full(ingest)) => Some((sender.clone(), ingest)),
                        Err(mpsc::error::TrySendError::Closed(_)) => continue,
                    },
                };
                let sent = match full {
                    None => true,
                    // Waiting here is the backpressure: the broker holds what we cannot take yet.
                    Some((sender, ingest)) => tokio::select! {
                        sent = sender.send(ingest) => sent.is_ok(),
                        _ = wake.notified() => false,
                    },
                };
                if sent {
                    crate::telemetry::received("mqtt", 1);
                }
            }
            Ok(Event::SubAck { failures }) => {
                let (topics, qos) = sub.filters();
                if failures.is_empty() {
                    tracing::info!(?topics, qos, "subscribed");
                } else {
                    tracing::error!(
                        ?topics,
                        ?failures,
                        "the broker refused a subscription; check the topic filters and the user's ACL"
                    );
                }
            }
            Ok(Event::Disconnected(reason)) => {
                tracing::warn!(%reason, "the broker closed the connection");
            }
            Ok(Event::DisconnectSent) => {
                tracing::info!("disconnected from the broker");
                // The broker closes the connection once it reads our DISCONNECT. Reading until it
                // does lets our socket close with nothing unread: a socket closed with unread
                // data sends a reset, and the broker then drops what it had not read yet, the
                // last acknowledgements among it (redelivered, and recognised, next run).
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while eventloop.poll(&session, s.max_payload).await.is_ok() {}
                })
                .await;
                return;
            }
            Ok(Event::Other) => {}
            Err(e) => {
                gate.new_generation(|| eventloop.clean());
                generation = gate.generation();
                if !accepting.load(Ordering::SeqCst) {
                    return;
                }
                let reason = e.to_string();
                let was_connected = status.borrow().connected;
                match connected_at.take() {
                    Some(t) if t.elapsed() < Duration::from_secs(5) => short_lived += 1,
                    Some(_) => short_lived = 0,
                    None => {}
                }
                if short_lived == 3 {
                    tracing::error!(
                        client_id = %s.client_id,
                        "the connection keeps dropping right after it is made: is another client using client id `{}`? Each tidegate instance needs its own --client-id",
                        s.client_id
                    );
                }
                let same = status.borrow().last_error.as_deref() == Some(reason.as_str());
                if was_connected {
                    tracing::warn!(error = %reason, "connection to the broker lost; reconnecting");
                } else if !same {
                    tracing::warn!(error = %reason, "cannot connect to the broker; retrying with backoff");
                } else {
                    tracing::debug!(error = %reason, "still cannot connect");
                }
                metrics::gauge!(crate::telemetry::MQTT_CONNECTED).set(0.0);
                status.send_modify(|st| {
                    st.connected = false;
                    st.stale = None;
                    st.last_error = Some(reason);
                });
                tokio::select! {
                    _ = tokio::time::sleep(jittered(backoff)) => {}
                    _ = wake.notified() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
