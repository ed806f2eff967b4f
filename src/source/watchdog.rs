//! The stale-session watchdog (`--stale-after`). A session that stays connected but delivers
//! nothing — the broker dropped the subscription, or kept a session without it — is the silent
//! stall MQTT consumers are known for (telegraf#16038, #13922). When nothing has arrived for the
//! configured time, it subscribes again, once, and reports the source not ready until a message
//! arrives. While the store is failing, tidegate itself holds deliveries back (no
//! acknowledgements, a full queue), so that quiet is not counted. It must never touch a delivery
//! or an acknowledgement.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::watch;

use super::{client::Client, session::SourceStatus, subscription::Subscription};

/// What the session loop tells the watchdog: when the last message (or connection) came, and
/// whether the watchdog has called the session stale.
#[derive(Default)]
pub struct Heartbeat {
    /// Unix milliseconds.
    last: AtomicI64,
    stale: AtomicBool,
}

impl Heartbeat {
    /// A connection or a delivery at `at_ms`. True when it ends a stale spell.
    pub fn beat(&self, at_ms: i64) -> bool {
        self.last.store(at_ms, Ordering::Relaxed);
        self.stale.load(Ordering::Relaxed) && self.stale.swap(false, Ordering::Relaxed)
    }

    /// Quiet that tidegate caused itself, up to `at_ms`: the clock starts again from there, and a
    /// stale spell stays as it was.
    fn hold(&self, at_ms: i64) {
        self.last.store(at_ms, Ordering::Relaxed);
    }
}

pub struct Watchdog {
    pub after: Duration,
    pub client: Client,
    pub subscription: Arc<Subscription>,
    pub heartbeat: Arc<Heartbeat>,
    pub status: Arc<watch::Sender<SourceStatus>>,
    /// The writer's fault, if any (`pipeline::writer`).
    pub store_fault: watch::Receiver<Option<String>>,
}

impl Watchdog {
    /// Runs until aborted (the source aborts it when it stops).
    pub async fn run(self) {
        let every = (self.after / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        // Saturating: a period past i64 milliseconds means never, not at once.
        let after_ms = i64::try_from(self.after.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::time::sleep(every).await;
            if self.store_fault.borrow().is_some() {
                self.heartbeat.hold(crate::time::now().timestamp_millis());
                continue;
            }
            let connected = self.status.borrow().connected;
            if !connected || self.heartbeat.stale.load(Ordering::Relaxed) {
                continue;
            }
            let quiet = crate::time::now().timestamp_millis() - self.heartbeat.last.load(Ordering::Relaxed);
            if quiet < after_ms {
                continue;
            }
            self.heartbeat.stale.store(true, Ordering::Relaxed);
            let after = humantime::format_duration(self.after);
            let (topics, qos) = self.subscription.filters();
            tracing::warn!(
                %after,
                ?topics,
                "no message for {after} while connected (--stale-after): subscribing again; not ready until a message arrives"
            );
            metrics::counter!(crate::telemetry::MQTT_STALE).increment(1);
            self.status.send_modify(|st| {
                st.stale = Some(format!(
                    "no message for {after} while connected; subscribed again"
                ))
            });
            if let Err(e) = self.client.try_subscribe(&topics, qos) {
                tracing::error!(error = %e, "cannot queue the subscription");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_ends_a_stale_spell_once() {
        let h = Heartbeat::default();
        assert!(!h.beat(1), "not stale: nothing to end");
        h.stale.store(true, Ordering::Relaxed);
        assert!(h.beat(2));
        assert!(!h.beat(3));
        assert_eq!(h.last.load(Ordering::Relaxed), 3);
    }
}
