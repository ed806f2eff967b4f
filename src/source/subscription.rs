//! The topic filters this run subscribes to, and their QoS. A reload may change them while the
//! session is up: removed filters are unsubscribed and new ones subscribed on the same
//! connection, so the session, and what the broker holds for it, is kept. It owns the list and
//! the requests a dropped connection may have swallowed (they are sent again on the next
//! connection). It must never drop a delivery: messages still arriving on a removed filter are
//! stored like any other.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use super::client::Client;

pub struct Subscription {
    state: Mutex<State>,
    /// Bumped on every change, so a reader can tell its copy of the filters is old.
    generation: AtomicU64,
}

struct State {
    topics: Vec<String>,
    qos: u8,
    /// Filters a reload removed during this run; unsubscribed again with the next resend.
    removed: Vec<String>,
    /// A change was made since the last connection: send it again when the next one is made.
    resend: bool,
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub subscribed: Vec<String>,
    pub unsubscribed: Vec<String>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.subscribed.is_empty() && self.unsubscribed.is_empty()
    }
}

impl Subscription {
    pub fn new(topics: Vec<String>, qos: u8) -> Self {
        Subscription {
            state: Mutex::new(State {
                topics,
                qos,
                removed: Vec::new(),
                resend: false,
            }),
            generation: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The filters in force and their QoS.
    pub fn filters(&self) -> (Vec<String>, u8) {
        let st = self.state();
        (st.topics.clone(), st.qos)
    }

    /// The filters in force and those removed during this run, whose deliveries may still
    /// arrive: every filter this run has asked for.
    pub fn asked_for(&self) -> Vec<String> {
        let st = self.state();
        st.topics.iter().chain(&st.removed).cloned().collect()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Makes `topics` at `qos` the filters in force and sends the difference on the current
    /// connection: a new QoS subscribes every filter again (a subscription to a filter already
    /// held replaces it).
    pub fn replace(&self, client: &Client, topics: Vec<String>, qos: u8) -> Change {
        let change = self.apply(topics, qos);
        send(client, &change.unsubscribed, &change.subscribed, qos);
        change
    }

    /// `replace` without sending anything.
    fn apply(&self, topics: Vec<String>, qos: u8) -> Change {
        let mut st = self.state();
        let unsubscribed: Vec<String> = st
            .topics
            .iter()
            .filter(|t| !topics.contains(t))
            .cloned()
            .collect();
        let subscribed: Vec<String> = topics
            .iter()
            .filter(|t| qos != st.qos || !st.topics.contains(t))
            .cloned()
            .collect();
        let change = Change {
            subscribed,
            unsubscribed,
        };
        if change.is_empty() {
            return change;
        }
        st.removed.retain(|r| !topics.contains(r));
        st.removed.extend(change.unsubscribed.iter().cloned());
        st.topics = topics;
        st.qos = qos;
        st.resend = true;
        self.generation.fetch_add(1, Ordering::Relaxed);
        change
    }

    /// Takes the filters an earlier run with this client id subscribed to: those this run does
    /// not ask for are unsubscribed with the next subscription, like filters a reload removed
    /// (a session the broker kept still holds them). Returns them.
    pub fn end_earlier(&self, earlier: Vec<String>) -> Vec<String> {
        let mut st = self.state();
        let stale: Vec<String> = earlier
            .into_iter()
            .filter(|f| !st.topics.contains(f) && !st.removed.contains(f))
            .collect();
        if !stale.is_empty() {
            st.removed.extend(stale.iter().cloned());
            st.resend = true;
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        stale
    }

    /// On a new connection: subscribes every filter when `all` (the first connection of the run,
    /// or the broker lost the session), or when a change since the last connection may not have
    /// reached the broker.
    pub fn on_connect(&self, client: &Client, all: bool) {
        let mut st = self.state();
        if !all && !st.resend {
            return;
        }
        let unsubscribe = if st.resend { st.removed.clone() } else { Vec::new() };
        st.resend = false;
        send(client, &unsubscribe, &st.topics, st.qos);
    }
}

fn send(client: &Client, unsubscribe: &[String], subscribe: &[String], qos: u8) {
    if !unsubscribe.is_empty() {
        if let Err(e) = client.try_unsubscribe(unsubscribe) {
            tracing::error!(error = %e, "cannot queue the unsubscription");
        }
    }
    if !subscribe.is_empty() {
        if let Err(e) = client.try_subscribe(subscribe, qos) {
            tracing::error!(error = %e, "cannot queue the subscription");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_earlier_runs_filters_this_run_does_not_ask_for_are_ended() {
        let sub = Subscription::new(v(&["a/#", "$share/g/b/#"]), 1);
        assert!(sub.end_earlier(v(&["a/#", "$share/g/b/#"])).is_empty());
        assert_eq!(sub.generation(), 0, "the same filters: nothing to do");
        assert_eq!(sub.end_earlier(v(&["a/#", "old/#", "b/#"])), v(&["old/#", "b/#"]));
        assert_eq!(
            sub.filters(),
            (v(&["a/#", "$share/g/b/#"]), 1),
            "this run's filters stay"
        );
        assert_eq!(
            sub.asked_for(),
            v(&["a/#", "$share/g/b/#", "old/#", "b/#"]),
            "the kept session may still deliver on them"
        );
        assert!(sub.state().resend, "unsubscribed with the next subscription");
        assert!(sub.end_earlier(v(&["old/#"])).is_empty(), "already ending");
    }

    #[test]
    fn a_change_sends_only_the_difference_and_remembers_what_was_removed() {
        let sub = Subscription::new(v(&["a/#", "b/#"]), 1);
        assert_eq!(
            sub.apply(v(&["a/#", "b/#"]), 1),
            Change::default(),
            "nothing to send"
        );
        assert_eq!(sub.generation(), 0);
        let change = sub.apply(v(&["b/#", "c/#"]), 1);
        assert_eq!(
            change,
            Change {
                subscribed: v(&["c/#"]),
                unsubscribed: v(&["a/#"])
            }
        );
        assert_eq!(sub.filters(), (v(&["b/#", "c/#"]), 1));
        assert_eq!(
            sub.asked_for(),
            v(&["b/#", "c/#", "a/#"]),
            "a/# may still deliver"
        );
        assert_eq!(sub.generation(), 1);
        let change = sub.apply(v(&["a/#", "b/#", "c/#"]), 0);
        assert_eq!(
            change.subscribed,
            v(&["a/#", "b/#", "c/#"]),
            "a new QoS renews every filter"
        );
        assert_eq!(
            sub.asked_for(),
            v(&["a/#", "b/#", "c/#"]),
            "a/# is back, not removed"
        );
    }

    #[test]
    fn filters_a_reload_adds_are_not_strays() {
        let sub = Subscription::new(v(&["a/#"]), 1);
        let mut strays = super::super::strays::Strays::new(&sub);
        sub.apply(v(&["b/#"]), 1);
        assert!(!strays.first_stray("b/1", &sub), "added by the reload");
        assert!(!strays.first_stray("a/1", &sub), "removed by it, still in flight");
        assert!(strays.first_stray("c/1", &sub));
    }
}
