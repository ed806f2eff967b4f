//! What a backfill asks of a store: which stored messages already have their readings and their
//! rows in each mapping table (`Coverage`), and the stored messages themselves, to derive again
//! with the readings config in force. It owns no rule of what to derive (`crate::backfill` does)
//! and must never change a stored message.

use std::collections::HashMap;

use crate::message::{Message, Origin};

/// A set of message ids between two bounds, one bit each: 10 million messages take 1.25 MB,
/// whatever pattern of ids is in it.
#[derive(Debug, Clone, Default)]
pub struct IdSet {
    first: i64,
    /// How many ids from `first` it can hold.
    span: u64,
    bits: Vec<u64>,
}

impl IdSet {
    /// An empty set that can hold the ids `first..=last`.
    pub fn new(first: i64, last: i64) -> Self {
        let span = last.saturating_sub(first).saturating_add(1).max(0) as u64;
        IdSet {
            first,
            span,
            bits: vec![0; span.div_ceil(64) as usize],
        }
    }

    fn slot(&self, id: i64) -> Option<(usize, u64)> {
        let at = u64::try_from(id.checked_sub(self.first)?).ok()?;
        (at < self.span).then(|| ((at / 64) as usize, 1 << (at % 64)))
    }

    /// Adds `id`; an id outside the bounds is ignored (a message stored after the coverage was
    /// read is not the backfill's).
    pub fn insert(&mut self, id: i64) {
        if let Some((word, bit)) = self.slot(id) {
            self.bits[word] |= bit;
        }
    }

    pub fn contains(&self, id: i64) -> bool {
        self.slot(id)
            .is_some_and(|(word, bit)| self.bits[word] & bit != 0)
    }
}

/// The stored messages a backfill covers (`first_id..=last_id`, the ids stored when it was
/// read), and which of them already have what it would derive.
#[derive(Debug, Clone, Default)]
pub struct Coverage {
    pub first_id: i64,
    pub last_id: i64,
    /// Messages with readings or a note on why they have none.
    pub readings: IdSet,
    /// Per mapping table: messages with a row in it. A table not created yet is absent.
    pub mapped: HashMap<String, IdSet>,
    /// Per mapping table: messages whose value did not fit it, as recorded in `rejected`.
    pub misfits: HashMap<String, IdSet>,
}

impl Coverage {
    /// No message covered yet among the ids `first..=last`, and no mapping table.
    pub fn new(first: i64, last: i64) -> Self {
        Coverage {
            first_id: first,
            last_id: last,
            readings: IdSet::new(first, last),
            mapped: HashMap::new(),
            misfits: HashMap::new(),
        }
    }

    /// Whether message `id` has a row in mapping table `table`.
    pub fn has_row(&self, table: &str, id: i64) -> bool {
        self.mapped.get(table).is_some_and(|s| s.contains(id))
    }

    /// Whether `rejected` holds a misfit of message `id` for mapping table `table`.
    pub fn has_misfit(&self, table: &str, id: i64) -> bool {
        self.misfits.get(table).is_some_and(|s| s.contains(id))
    }
}

/// A stored message as the pipeline had it, for deriving again: topic, payload bytes (the exact
/// ones when the stored text is not them), receive time, QoS and size.
pub fn stored_message(
    topic: String,
    payload: Vec<u8>,
    received_at: chrono::DateTime<chrono::Utc>,
    qos: u8,
) -> Message {
    let size = payload.len();
    Message {
        topic,
        payload: payload.into(),
        size,
        qos,
        retain: false,
        received_at,
        content_type: None,
        user_properties: Vec::new(),
        // Not written again: a backfill writes derived rows only.
        origin: Origin::Http,
        rejection: None,
        derived: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_set_holds_the_ids_between_its_bounds_only() {
        let mut s = IdSet::new(10, 200);
        for id in [10, 11, 73, 74, 200, 9, 201, -5, i64::MAX, i64::MIN] {
            s.insert(id);
        }
        assert!(s.contains(10) && s.contains(11) && s.contains(73) && s.contains(74) && s.contains(200));
        assert!(!s.contains(9) && !s.contains(201) && !s.contains(12) && !s.contains(i64::MIN));
        assert_eq!((-10..=300).filter(|id| s.contains(*id)).count(), 5);
        let mut empty = IdSet::new(5, 4);
        empty.insert(5);
        assert!(!empty.contains(5) && !empty.contains(4));
        let none = IdSet::default();
        assert!(!none.contains(0));
    }
}
