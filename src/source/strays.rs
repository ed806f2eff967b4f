//! Deliveries that none of this run's topic filters asked for. A session the broker kept from an
//! earlier run still holds that run's subscriptions, and a filter the earlier run had and this one
//! has not keeps delivering. Those messages are stored like any other — nothing the broker hands
//! over is dropped — and the operator is told once how to end the old subscription. It must never
//! drop or delay a message.

use super::subscription::Subscription;

pub struct Strays {
    /// The filters as matched against topics: without a `$share/GROUP/` prefix.
    filters: Vec<String>,
    /// The subscription's generation `filters` was taken at; a reload makes it old.
    generation: u64,
    warned: bool,
}

impl Strays {
    pub fn new(sub: &Subscription) -> Self {
        let filters = sub
            .asked_for()
            .iter()
            .map(|t| {
                t.strip_prefix("$share/")
                    .and_then(|rest| rest.split_once('/'))
                    .map_or(t.as_str(), |(_group, filter)| filter)
                    .to_string()
            })
            .collect();
        Strays {
            filters,
            generation: sub.generation(),
            warned: false,
        }
    }

    /// True for the first delivery on a topic none of the filters this run asked for matches
    /// (including those a reload added or removed); false for every other.
    pub fn first_stray(&mut self, topic: &str, sub: &Subscription) -> bool {
        if self.warned {
            return false;
        }
        if sub.generation() != self.generation {
            *self = Strays::new(sub);
        }
        if self
            .filters
            .iter()
            .any(|f| crate::config::filter_matches(f, topic))
        {
            return false;
        }
        self.warned = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_first_topic_outside_every_filter_is_reported() {
        let sub = Subscription::new(vec!["$share/g/sensors/#".into(), "plant/+/temp".into()], 1);
        let mut s = Strays::new(&sub);
        assert!(
            !s.first_stray("sensors/a/b", &sub),
            "the group prefix is not part of the filter"
        );
        assert!(!s.first_stray("plant/7/temp", &sub));
        assert!(s.first_stray("old/topic", &sub));
        assert!(!s.first_stray("old/other", &sub), "once per run");
        assert!(!s.first_stray("old/topic", &sub));
    }
}
