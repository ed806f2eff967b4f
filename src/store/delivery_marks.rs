//! How every store keeps delivery marks (`store::dedup`'s evidence for a redelivery): one row per
//! committed batch and MQTT session, holding that batch's packet ids and content hashes packed
//! in arrival order, instead of one upsert per message. `total` counts a session's marks, so a
//! row is dropped once `KEPT` newer marks exist: no more messages than that can be in flight, so
//! no redelivery can refer to it. This module owns the format and the batch bookkeeping; it
//! must never do I/O (each store reads and writes the rows in its own transaction).

use std::collections::{HashMap, HashSet};

use super::dedup::{self, Hash, Verdict};
use crate::message::{Message, Origin};

/// A session's marks older than this many newer ones are dropped (MQTT's packet-id space).
pub const KEPT: i64 = 65_535;

/// One mark in a packed row: the packet id (big-endian) and the hash.
const MARK_LEN: usize = 2 + 16;

/// Packs marks in arrival order: when they are read back in order, a packet id's last mark wins.
pub fn pack(marks: &[(u16, Hash)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(marks.len() * MARK_LEN);
    for (pkid, hash) in marks {
        out.extend_from_slice(&pkid.to_be_bytes());
        out.extend_from_slice(hash);
    }
    out
}

pub fn unpack(packed: &[u8]) -> impl Iterator<Item = (u16, Hash)> + '_ {
    packed.chunks_exact(MARK_LEN).filter_map(|e| {
        let (pkid, hash) = e.split_at(2);
        Some((u16::from_be_bytes([pkid[0], pkid[1]]), hash.try_into().ok()?))
    })
}

/// The (session, packet id) pairs a batch redelivers: only their marks are ever read.
pub fn redelivered<'a>(batch: impl IntoIterator<Item = &'a Message>) -> HashSet<(&'a str, u16)> {
    batch
        .into_iter()
        .filter_map(|m| match &m.origin {
            Origin::Mqtt {
                session,
                pkid,
                redelivery: true,
            } => Some((&**session, *pkid)),
            _ => None,
        })
        .collect()
}

/// The sessions among `redelivered`, sorted: whose rows to read, oldest first.
pub fn sessions<'a>(redelivered: &HashSet<(&'a str, u16)>) -> Vec<&'a str> {
    let mut s: Vec<&str> = redelivered.iter().map(|(s, _)| *s).collect();
    s.sort_unstable();
    s.dedup();
    s
}

/// The marks a batch looks up, read from the stored rows and kept current as the batch is
/// decided (a packet id can be delivered, then redelivered, within one batch).
#[derive(Default)]
pub struct Lookup {
    marks: HashMap<(String, u16), Hash>,
}

impl Lookup {
    /// Takes in one stored row (rows must come oldest first), keeping only the marks asked for.
    pub fn add_row(&mut self, session: &str, packed: &[u8], wanted: &HashSet<(&str, u16)>) {
        for (pkid, hash) in unpack(packed) {
            if wanted.contains(&(session, pkid)) {
                self.marks.insert((session.to_string(), pkid), hash);
            }
        }
    }

    pub fn get(&self, session: &str, pkid: u16) -> Option<Hash> {
        // Only redelivered ids are ever asked for: the key's allocation is rare.
        self.marks.get(&(session.to_string(), pkid)).copied()
    }

    /// Records `m`'s mark once it is decided, if a later message of the batch may ask for it.
    pub fn decided(&mut self, m: &Message, hash: Hash, v: Verdict, wanted: &HashSet<(&str, u16)>) {
        if v == Verdict::Duplicate || wanted.is_empty() {
            return;
        }
        if let Some((s, p)) = dedup::delivery_mark(m) {
            if wanted.contains(&(s, p)) {
                self.marks.insert((s.to_string(), p), hash);
            }
        }
    }
}

/// The marks a decided batch leaves, one packed row's worth per session, in session order
/// (the order PostgreSQL takes its locks in).
pub fn new_rows<'a>(
    batch: impl IntoIterator<Item = &'a Message>,
    verdicts: &[Verdict],
    hashes: &[Hash],
) -> Vec<(&'a str, Vec<(u16, Hash)>)> {
    let mut rows: Vec<(&str, Vec<(u16, Hash)>)> = Vec::new();
    for ((m, v), h) in batch.into_iter().zip(verdicts).zip(hashes) {
        if *v == Verdict::Duplicate {
            continue;
        }
        if let Some((session, pkid)) = dedup::delivery_mark(m) {
            // A session's messages come in runs: the last row is nearly always the one.
            let at = match rows.iter().rposition(|(s, _)| *s == session) {
                Some(at) => at,
                None => {
                    rows.push((session, Vec::new()));
                    rows.len() - 1
                }
            };
            rows[at].1.push((pkid, *h));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(b.0));
    rows
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn delivery(session: &str, pkid: u16, dup: bool, body: &str) -> Message {
        let origin = Origin::Mqtt {
            session: session.into(),
            pkid,
            redelivery: dup,
        };
        Message::new(
            "t".into(),
            Bytes::from(body.to_string()),
            1,
            false,
            origin,
            1 << 20,
        )
    }

    #[test]
    fn packed_marks_read_back_in_order() {
        let marks = [(1, [1; 16]), (65_535, [2; 16]), (1, [3; 16])];
        let packed = pack(&marks);
        assert_eq!(packed.len(), 3 * MARK_LEN);
        assert_eq!(unpack(&packed).collect::<Vec<_>>(), marks);
        // A torn tail is ignored, not misread.
        assert_eq!(unpack(&packed[..MARK_LEN + 5]).count(), 1);
    }

    #[test]
    fn rows_group_by_session_skip_duplicates_and_keep_arrival_order() {
        let batch = [
            delivery("b", 5, false, "x"),
            delivery("a", 9, false, "y"),
            delivery("b", 6, true, "z"),
            delivery("b", 7, false, "w"),
        ];
        let hashes: Vec<Hash> = batch.iter().map(Message::content_hash).collect();
        let verdicts = [
            Verdict::Store,
            Verdict::Reject,
            Verdict::Duplicate,
            Verdict::Store,
        ];
        let rows = new_rows(&batch, &verdicts, &hashes);
        assert_eq!(
            rows,
            vec![
                ("a", vec![(9, hashes[1])]),
                ("b", vec![(5, hashes[0]), (7, hashes[3])]),
            ]
        );
    }

    #[test]
    fn a_lookup_keeps_only_what_is_asked_and_follows_the_batch() {
        let batch = [delivery("s", 3, true, "again"), delivery("s", 4, false, "x")];
        let wanted = redelivered(&batch);
        assert_eq!(sessions(&wanted), ["s"]);
        let mut l = Lookup::default();
        l.add_row("s", &pack(&[(3, [1; 16]), (4, [2; 16])]), &wanted);
        l.add_row("s", &pack(&[(3, [5; 16])]), &wanted);
        assert_eq!(l.get("s", 3), Some([5; 16]), "the newer row wins");
        assert_eq!(l.get("s", 4), None, "not redelivered: not kept");
        l.decided(&batch[0], [7; 16], Verdict::Store, &wanted);
        assert_eq!(l.get("s", 3), Some([7; 16]));
    }
}
