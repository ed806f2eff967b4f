//! Deliveries that none of this run's topic filters asked for. A session the broker kept from an
//! earlier run still holds that run's subscriptions, and a filter the earlier run had and this one
//! has not keeps delivering. Those messages are stored like any other — nothing the broker hands
//! over is dropped — and the operator is told once how to end the old subscription. It must never
//! drop or delay a message.

pub struct Strays {
    /// The filters as matched against topics: without a `$share/GROUP/` prefix.
    filters: Vec<String>,
    warned: bool,
}

impl Strays {
    pub fn new(topics: &[String]) -> Self {
        let filters = topics
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
            warned: false,
        }
    }

    /// True for the first delivery on a topic no filter matches; false for every other.
    pub fn first_stray(&mut self, topic: &str) -> bool {
        if self.warned
            || self
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
        let mut s = Strays::new(&["$share/g/sensors/#".into(), "plant/+/temp".into()]);
        assert!(
            !s.first_stray("sensors/a/b"),
            "the group prefix is not part of the filter"
        );
        assert!(!s.first_stray("plant/7/temp"));
        assert!(s.first_stray("old/topic"));
        assert!(!s.first_stray("old/other"), "once per run");
        assert!(!s.first_stray("old/topic"));
    }
}
