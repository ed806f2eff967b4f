//! What a backfill asks of a store: which stored messages already have their readings and their
//! rows in each mapping table (`Coverage`), and the stored messages themselves, to derive again
//! with the readings config in force. It owns no rule of what to derive (`crate::backfill` does)
//! and must never change a stored message.

use std::collections::HashMap;

use crate::message::{Message, Origin};

/// A set of message ids between two bounds, one bit each, in pages of 65,536 ids made as ids
/// land in them: 10 million messages take 1.25 MB, and ids far apart (a sequence that jumped to
/// 2^62) take a page each instead of a bit for every id between them.
#[derive(Debug, Clone, Default)]
pub struct IdSet {
    first: i64,
    /// The largest offset from `first` it can hold; `None` when it can hold none.
    last_at: Option<u64>,
    pages: Pages,
}

type Page = Box<[u64; PAGE_WORDS]>;

/// The pages by number: a slot each while the bounds span few enough of them (looked up as fast
/// as one bitmap), else only those made.
#[derive(Debug, Clone)]
enum Pages {
    Slots(Vec<Option<Page>>),
    Made(foldhash::HashMap<u64, Page>),
}

impl Default for Pages {
    fn default() -> Self {
        Pages::Slots(Vec::new())
    }
}

/// A page holds 2^16 ids, in words of 64.
const PAGE_BITS: u32 = 16;
const PAGE_WORDS: usize = 1 << (PAGE_BITS - 6);
/// Most page slots kept (8 MiB of them): bounds up to 68 billion ids apart.
const MAX_SLOTS: u64 = 1 << 20;

impl IdSet {
    /// An empty set that can hold the ids `first..=last`.
    pub fn new(first: i64, last: i64) -> Self {
        // In i128: `last - first` overflows i64 for bounds at its ends, never a u64.
        let last_at = u64::try_from(i128::from(last) - i128::from(first)).ok();
        let pages = match last_at.map(|at| (at >> PAGE_BITS) + 1) {
            Some(n) if n <= MAX_SLOTS => Pages::Slots((0..n).map(|_| None).collect()),
            Some(_) => Pages::Made(Default::default()),
            None => Pages::default(),
        };
        IdSet {
            first,
            last_at,
            pages,
        }
    }

    /// The page, word and bit of `id`, if it is within the bounds.
    fn slot(&self, id: i64) -> Option<(u64, usize, u64)> {
        let at = u64::try_from(i128::from(id) - i128::from(self.first)).ok()?;
        (at <= self.last_at?).then(|| (at >> PAGE_BITS, ((at >> 6) as usize) % PAGE_WORDS, 1 << (at % 64)))
    }

    /// Adds `id`; an id outside the bounds is ignored (a message stored after the coverage was
    /// read is not the backfill's).
    pub fn insert(&mut self, id: i64) {
        let Some((page, word, bit)) = self.slot(id) else {
            return;
        };
        let blank = || Box::new([0; PAGE_WORDS]);
        let page = match &mut self.pages {
            // `slot` bounds the page number by the slots `IdSet::new` made.
            Pages::Slots(slots) => slots[page as usize].get_or_insert_with(blank),
            Pages::Made(made) => made.entry(page).or_insert_with(blank),
        };
        page[word] |= bit;
    }

    pub fn contains(&self, id: i64) -> bool {
        let Some((page, word, bit)) = self.slot(id) else {
            return false;
        };
        let page = match &self.pages {
            Pages::Slots(slots) => slots[page as usize].as_ref(),
            Pages::Made(made) => made.get(&page),
        };
        page.is_some_and(|p| p[word] & bit != 0)
    }

    /// Pages made so far.
    #[cfg(test)]
    fn pages_made(&self) -> usize {
        match &self.pages {
            Pages::Slots(slots) => slots.iter().flatten().count(),
            Pages::Made(made) => made.len(),
        }
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

/// One series' minute, as `readings_1m` keys it: `device` is `''` for a message without one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minute {
    pub topic: String,
    pub device: String,
    pub field: String,
    pub minute: chrono::DateTime<chrono::Utc>,
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

    /// Ids at the ends of i64, or far apart, cost a page each, not a bit for every id between.
    #[test]
    fn ids_far_apart_take_little_memory() {
        let mut s = IdSet::new(i64::MIN, i64::MAX);
        for id in [i64::MIN, -1, 0, 1, 1 << 62, i64::MAX] {
            s.insert(id);
        }
        for id in [i64::MIN, -1, 0, 1, 1 << 62, i64::MAX] {
            assert!(s.contains(id), "{id}");
        }
        assert!(!s.contains(2) && !s.contains(i64::MIN + 1) && !s.contains(i64::MAX - 1));
        assert!(s.pages_made() <= 5, "{} pages", s.pages_made());
        let mut wide = IdSet::new(1, i64::MAX);
        wide.insert(0);
        wide.insert(65_536 * 3 + 5);
        assert!(!wide.contains(0) && wide.contains(65_536 * 3 + 5) && wide.pages_made() == 1);
        // Bounds close enough for a slot a page, as most stores' are.
        let mut near = IdSet::new(1, 10_000_000);
        for id in (1..=10_000_000).step_by(3) {
            near.insert(id);
        }
        assert!(matches!(near.pages, Pages::Slots(_)) && near.pages_made() == 153);
        assert!(
            near.contains(1) && near.contains(9_999_997) && !near.contains(2) && !near.contains(10_000_001)
        );
    }
}
