//! `tidegate backfill`: readings and mapping rows for messages stored before they were configured
//! (stored while readings were off, or before a `[[mapping]]` was added). It reads the stored
//! messages in id order a chunk at a time, derives each with the readings config in force, keeps
//! only what that message does not have yet, and writes it in one transaction per chunk. It must
//! never change or store again a message, nor give readings to one whose readings retention
//! removed (the rollups still count those); a second run adds nothing, and a run stopped halfway
//! is finished by the next.

use std::{collections::BTreeMap, sync::Arc};

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::{
    config::{RunArgs, Settings},
    message::Message,
    readings::{Derived, ReadingsConfig},
    store::{
        self,
        backfill::{Coverage, Minute},
        rollup::Width,
        Store,
    },
};

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// Count what would be added, without writing anything.
    #[arg(long)]
    pub dry_run: bool,

    /// The same settings as `run` (the database, the readings rules and the `[[mapping]]`
    /// tables); the broker's are not used.
    #[command(flatten)]
    pub settings: Box<RunArgs>,
}

/// Messages derived per transaction at most: large enough that a commit's cost is spread thin,
/// small enough that a running tidegate's batches wait for the write lock no longer than for
/// one of their own.
const CHUNK: usize = 2_000;

/// Payload bytes a chunk should hold about: 2,000 payloads of 1 MiB (the default
/// `--max-payload`) would take 2 GiB. The next chunk's size follows the last one's payloads.
const CHUNK_BYTES: usize = 8 << 20;

/// How many messages the next chunk reads, after one of `read` messages with `bytes` of payload.
fn next_chunk(read: usize, bytes: usize) -> usize {
    match bytes.checked_div(read) {
        Some(mean) if mean > 0 => (CHUNK_BYTES / mean).clamp(1, CHUNK),
        _ => CHUNK,
    }
}

/// What a backfill added (or, on a dry run, would add).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The store, as logs name it.
    pub store: String,
    /// Stored messages read.
    pub read: u64,
    /// Messages that were given readings, and how many.
    pub messages_with_readings: u64,
    pub readings: u64,
    /// Notes on why a payload gave no readings.
    pub notes: u64,
    /// Messages not given readings because the rollups count them already (`counted_already`).
    pub counted_already: u64,
    /// Per mapping table.
    pub mapped: BTreeMap<String, TableTally>,
    pub dry_run: bool,
    /// What became of telling Metabase of a table the backfill created, when one is configured.
    pub metabase: Option<String>,
}

/// What a backfill did for one mapping table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TableTally {
    pub rows: u64,
    /// Messages whose value does not fit the table's column, recorded in `rejected` by this run
    /// (only counted on a dry run).
    pub misfits: u64,
    /// The same, already recorded there by an earlier run or live: not recorded again.
    pub known_misfits: u64,
    /// Rows older than the mapping's `retain`: not written (retention would delete them).
    pub expired: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run { "would add" } else { "added" };
        let n = |count: u64, what: &str| match count {
            1 => format!("1 {what}"),
            _ => format!("{count} {what}s"),
        };
        writeln!(
            f,
            "backfill of {}: {} read",
            self.store,
            n(self.read, "stored message")
        )?;
        writeln!(
            f,
            "  readings: {verb} {} to {} ({} on payloads that gave none)",
            self.readings,
            n(self.messages_with_readings, "message"),
            n(self.notes, "note")
        )?;
        if self.counted_already > 0 {
            writeln!(
                f,
                "  readings: {} skipped: retention removed their readings, which readings_1m and \
                 readings_1h still count (adding them again would count them twice)",
                n(self.counted_already, "message")
            )?;
        }
        for (table, t) in &self.mapped {
            write!(f, "  mapping table {table}: {verb} {}", n(t.rows, "row"))?;
            if t.misfits > 0 {
                write!(
                    f,
                    "; {} did not fit (recorded in `rejected`, source 'mapping')",
                    t.misfits
                )?;
            }
            if t.expired > 0 {
                write!(
                    f,
                    "; {} older than its retain (not written: retention would delete {})",
                    t.expired,
                    if t.expired == 1 { "it" } else { "them" }
                )?;
            }
            if t.known_misfits > 0 {
                write!(
                    f,
                    "; {} still {} not fit (in `rejected` already, not recorded again)",
                    t.known_misfits,
                    if t.known_misfits == 1 { "does" } else { "do" }
                )?;
            }
            writeln!(f)?;
        }
        if let Some(m) = &self.metabase {
            writeln!(f, "  {m}")?;
        }
        Ok(())
    }
}

/// Resolves the settings as `serve` would (nothing connects before they are valid), then runs.
pub async fn run(args: BackfillArgs) -> anyhow::Result<Summary> {
    let settings = Settings::resolve(crate::config::Mode::Serve, *args.settings)?;
    let store_settings = settings
        .store
        .as_ref()
        .context("no database is configured (--db)")?;
    let readings = &settings.readings;
    if !readings.enabled && readings.mappings.is_empty() {
        return Err(crate::config::ConfigError::new(
            "readings",
            "nothing to derive: readings are off and no [[mapping]] is configured; turn readings on \
             (`readings = \"on\"`) or add a mapping, then run backfill again",
        )
        .into());
    }
    // Opening would create an empty file: a mistyped path would "backfill" nothing, silently.
    if let crate::config::DbUrl::Sqlite(path) = &store_settings.db {
        if !path.exists() {
            return Err(crate::config::ConfigError::new(
                "db",
                format!(
                    "there is no database at {}; give the file tidegate stores into (--db, or `db` in the config file)",
                    path.display()
                ),
            )
            .into());
        }
    }
    let store = store::open(store_settings).await?;
    let schema = store.schema_version().await.ok().flatten();
    let mut summary = backfill(&*store, readings, args.dry_run).await?;
    // A mapping table the backfill created: Metabase learns of it now, not at its hourly sync.
    if let Some(mb) = &settings.metabase {
        if store.schema_version().await.ok().flatten() != schema {
            summary.metabase = Some(match crate::metabase::sync_once(mb).await {
                Ok(()) => format!(
                    "asked Metabase ({}) to sync the schema: the new table shows at once",
                    mb.url
                ),
                Err(why) => {
                    format!("Metabase was not told of the new table ({why}); its hourly sync will find it")
                }
            });
        }
    }
    Ok(summary)
}

/// Derives and writes what the stored messages lack, with `readings` as the rules.
pub async fn backfill(
    store: &dyn Store,
    readings: &ReadingsConfig,
    dry_run: bool,
) -> anyhow::Result<Summary> {
    let mut tables: Vec<_> = readings.mappings.iter().map(|m| m.table.clone()).collect();
    tables.sort();
    tables.dedup();
    let coverage = store.coverage(&tables).await?;
    let now = Utc::now();
    let mut summary = Summary {
        store: store.describe(),
        mapped: tables
            .iter()
            .map(|t| (t.as_str().to_string(), TableTally::default()))
            .collect(),
        dry_run,
        ..Summary::default()
    };
    let span = (coverage.last_id - coverage.first_id).saturating_add(1).max(0) as u64;
    let bar = progress(if coverage.last_id == 0 { 0 } else { span });
    let mut after = coverage.first_id.saturating_sub(1);
    // Small at first, until the payloads' size is known.
    let mut limit = 100;
    loop {
        let chunk = store.stored(after, coverage.last_id, limit).await?;
        let Some(&(last, _)) = chunk.last() else { break };
        after = last;
        summary.read += chunk.len() as u64;
        limit = next_chunk(chunk.len(), chunk.iter().map(|(_, m)| m.payload.len()).sum());
        let mut rows = Vec::new();
        for (id, mut m) in chunk {
            if !lacks_anything(readings, id, &m.topic, &coverage) {
                continue;
            }
            let derived = crate::readings::derive(readings, &m.topic, &m.payload, m.received_at);
            if let Some(mut d) = derived.and_then(|d| missing(d, id, &coverage, &mut summary)) {
                drop_expired(&mut d, now, &mut summary);
                if !d.readings.is_empty() || d.note.is_some() || !d.mapped.is_empty() {
                    m.derived = Some(d);
                    rows.push((id, m));
                }
            }
        }
        let counted = counted_already(store, &rows).await?;
        let rows: Vec<(i64, Message)> = rows
            .into_iter()
            .zip(counted)
            .filter_map(|((id, mut m), counted)| {
                let d = m.derived.as_mut()?;
                if counted {
                    summary.counted_already += 1;
                    d.readings.clear();
                    d.note = None;
                    if d.mapped.is_empty() {
                        return None;
                    }
                }
                tally(&mut summary, d);
                Some((id, m))
            })
            .collect();
        if !dry_run && !rows.is_empty() {
            store.write_derived(Arc::new(rows)).await?;
        }
        bar.set_position((after - coverage.first_id).saturating_add(1) as u64);
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Which of `rows` have a number in a minute that `readings_1m` counts more numbers in than
/// `readings` holds. Their readings were written once and removed by retention (which deletes
/// readings by time and keeps the rollups longer): written again they would be counted twice in
/// the rollups, and retention would remove them again.
async fn counted_already(store: &dyn Store, rows: &[(i64, Message)]) -> anyhow::Result<Vec<bool>> {
    // By borrowed key: a chunk has three readings a message or so, and far fewer minutes.
    let mut at: foldhash::HashMap<(&str, &str, &str, DateTime<Utc>), usize> =
        foldhash::HashMap::with_capacity_and_hasher(rows.len(), Default::default());
    let mut minutes: Vec<Minute> = Vec::with_capacity(rows.len());
    for key in rows.iter().flat_map(|(_, m)| numbers(m)) {
        at.entry(key).or_insert_with(|| {
            let (topic, device, field, minute) = key;
            minutes.push(Minute {
                topic: topic.to_string(),
                device: device.to_string(),
                field: field.to_string(),
                minute,
            });
            minutes.len() - 1
        });
    }
    if minutes.is_empty() {
        return Ok(vec![false; rows.len()]);
    }
    let gone = store.counted_but_gone(minutes).await?;
    let is_gone = |key| at.get(&key).and_then(|&k| gone.get(k)).copied().unwrap_or(false);
    Ok(rows.iter().map(|(_, m)| numbers(m).any(is_gone)).collect())
}

/// The series and minute of each number `m` derived, as `readings_1m` keys them.
fn numbers(m: &Message) -> impl Iterator<Item = (&str, &str, &str, DateTime<Utc>)> {
    m.derived.iter().flat_map(move |d| {
        let (device, minute) = (d.device.as_deref().unwrap_or_default(), Width::Minute.floor(d.ts));
        d.readings
            .iter()
            .filter(|r| matches!(r.value, crate::readings::Value::Number(_)))
            .map(move |r| (m.topic.as_str(), device, r.field.as_str(), minute))
    })
}

/// Whether message `id` on `topic` may lack something `readings` derives: readings (when on),
/// or a row in a mapping table whose filter matches the topic. Checked before the payload is
/// parsed: after a mapping is added, most stored messages are on other topics.
fn lacks_anything(readings: &ReadingsConfig, id: i64, topic: &str, coverage: &Coverage) -> bool {
    (readings.enabled && !coverage.readings.contains(id))
        || readings
            .mappings
            .iter()
            .any(|m| m.matches(topic) && !coverage.has_row(m.table.as_str(), id))
}

/// What of `d` message `id` does not have yet: its readings and note unless it has readings or
/// a note, and its rows in the mapping tables it has none in. `None` when that is nothing.
/// A value that still does not fit a table where `rejected` already holds this message's misfit
/// is dropped and counted in `summary`: it is tried each run (the mapping may have been mended
/// since), but recorded once.
fn missing(mut d: Derived, id: i64, coverage: &Coverage, summary: &mut Summary) -> Option<Derived> {
    if coverage.readings.contains(id) {
        d.readings.clear();
        d.note = None;
    }
    d.mapped.retain(|(m, row)| {
        let table = m.table.as_str();
        if coverage.has_row(table, id) {
            return false;
        }
        if row.is_err() && coverage.has_misfit(table, id) {
            summary.mapped.entry(table.to_string()).or_default().known_misfits += 1;
            return false;
        }
        true
    });
    (!d.readings.is_empty() || d.note.is_some() || !d.mapped.is_empty()).then_some(d)
}

/// Drops from `d` the rows of mappings whose `retain` they are older than: retention would
/// delete them again (and may have already).
fn drop_expired(d: &mut Derived, now: DateTime<Utc>, summary: &mut Summary) {
    let ts = d.ts;
    d.mapped.retain(|(m, _)| {
        let keep = m.retain.and_then(|r| chrono::TimeDelta::from_std(r).ok());
        let expired = keep
            .and_then(|k| now.checked_sub_signed(k))
            .is_some_and(|c| ts < c);
        if expired {
            summary
                .mapped
                .entry(m.table.as_str().to_string())
                .or_default()
                .expired += 1;
        }
        !expired
    });
}

fn tally(s: &mut Summary, d: &Derived) {
    if !d.readings.is_empty() {
        s.messages_with_readings += 1;
        s.readings += d.readings.len() as u64;
    }
    s.notes += u64::from(d.note.is_some());
    for (m, row) in &d.mapped {
        let e = s.mapped.entry(m.table.as_str().to_string()).or_default();
        match row {
            Ok(_) => e.rows += 1,
            Err(_) => e.misfits += 1,
        }
    }
}

/// A bar over the ids to read, on a terminal only.
fn progress(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {percent}%  {human_pos}/{human_len} message ids  {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backfill::IdSet;

    fn with_mapping(toml: &str) -> ReadingsConfig {
        use crate::readings::mapping::{Mapping, MappingSpec};
        let spec: MappingSpec = toml::from_str(toml).unwrap();
        ReadingsConfig {
            mappings: vec![Arc::new(Mapping::from_spec(&spec).unwrap())],
            ..Default::default()
        }
    }

    fn covered(ids: &[i64], table: Option<(&str, &[i64])>) -> Coverage {
        let mut c = Coverage::new(1, 10);
        for id in ids {
            c.readings.insert(*id);
        }
        if let Some((t, ids)) = table {
            let mut s = IdSet::new(1, 10);
            for id in ids {
                s.insert(*id);
            }
            c.mapped.insert(t.into(), s);
        }
        c
    }

    /// A message keeps only what it lacks: readings when it has none, a mapping's row when that
    /// table has none for it; nothing at all when it lacks nothing.
    #[test]
    fn a_chunk_holds_about_8_mib_of_payloads_and_at_most_2000_messages() {
        assert_eq!(next_chunk(100, 100 * 60), CHUNK);
        assert_eq!(next_chunk(100, 100 << 20), 8);
        assert_eq!(next_chunk(8, 8 * (64 << 20)), 1);
        assert_eq!((next_chunk(0, 0), next_chunk(5, 0)), (CHUNK, CHUNK));
    }

    #[test]
    fn only_what_a_message_lacks_is_kept() {
        let cfg = with_mapping("filter = \"s/#\"\ntable = \"climate\"\n[columns]\ntemp = \"$.t\"\n");
        let at = "2026-12-01T10:00:00Z".parse().unwrap();
        let derive = || crate::readings::derive(&cfg, "s/1", br#"{"t": 21.5, "h": 40}"#, at).unwrap();
        let none = missing(derive(), 3, &covered(&[], None), &mut Summary::default()).unwrap();
        assert_eq!((none.readings.len(), none.mapped.len()), (2, 1));
        let has_readings = missing(derive(), 3, &covered(&[3], None), &mut Summary::default()).unwrap();
        assert_eq!((has_readings.readings.len(), has_readings.mapped.len()), (0, 1));
        let has_row = missing(
            derive(),
            3,
            &covered(&[], Some(("climate", &[3]))),
            &mut Summary::default(),
        )
        .unwrap();
        assert_eq!((has_row.readings.len(), has_row.mapped.len()), (2, 0));
        assert!(missing(
            derive(),
            3,
            &covered(&[3], Some(("climate", &[3]))),
            &mut Summary::default()
        )
        .is_none());
        // Another message's coverage is not this one's.
        assert!(missing(
            derive(),
            4,
            &covered(&[3], Some(("climate", &[3]))),
            &mut Summary::default()
        )
        .is_some());
        // Not even parsed when it lacks nothing: readings there, and no mapping for its topic.
        let all = covered(&[3], Some(("climate", &[3])));
        assert!(!lacks_anything(&cfg, 3, "s/1", &all) && lacks_anything(&cfg, 4, "s/1", &all));
        assert!(!lacks_anything(&cfg, 3, "other/topic", &covered(&[3], None)));
        assert!(lacks_anything(&cfg, 3, "s/1", &covered(&[3], None)));
    }

    /// A mapping row older than its mapping's `retain` is not written, and counted; one of a
    /// mapping without `retain`, or younger, is.
    #[test]
    fn a_row_older_than_its_mappings_retain_is_left_out() {
        let cfg = |retain: &str| {
            with_mapping(&format!(
                "filter = \"s/#\"\ntable = \"climate\"\n{retain}\n[columns]\ntemp = \"$.temp\"\n"
            ))
        };
        let now = Utc::now();
        let derive = |cfg: &ReadingsConfig, days: i64| {
            crate::readings::derive(
                cfg,
                "s/1",
                br#"{"temp":21.5}"#,
                now - chrono::TimeDelta::days(days),
            )
            .unwrap()
        };
        let trimmed = cfg("retain = \"30d\"");
        let mut summary = Summary::default();
        let mut old = derive(&trimmed, 40);
        drop_expired(&mut old, now, &mut summary);
        assert!(old.mapped.is_empty());
        let mut young = derive(&trimmed, 20);
        drop_expired(&mut young, now, &mut summary);
        assert_eq!(young.mapped.len(), 1);
        let mut kept = derive(&cfg(""), 400);
        drop_expired(&mut kept, now, &mut summary);
        assert_eq!(kept.mapped.len(), 1);
        let tally = summary.mapped.get("climate").copied().unwrap_or_default();
        assert_eq!(tally.expired, 1);
        summary.read = 3;
        assert!(
            summary
                .to_string()
                .contains("1 older than its retain (not written: retention would delete it)"),
            "{summary}"
        );
    }

    /// A value that still does not fit, for a message whose misfit `rejected` holds, is dropped
    /// and counted; once it fits (the mapping mended), its row is written after all.
    #[test]
    fn a_known_misfit_is_tried_again_but_recorded_once() {
        let at = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut known = covered(&[3], None);
        let mut misfits = IdSet::new(1, 10);
        misfits.insert(3);
        known.misfits.insert("climate".into(), misfits);
        let real = with_mapping("filter = \"s/#\"\ntable = \"climate\"\n[columns]\ntemp = \"$.t\"\n");
        let hot = crate::readings::derive(&real, "s/1", br#"{"t": "hot"}"#, at).unwrap();
        assert!(hot.mapped[0].1.is_err(), "the test's payload must misfit");
        let mut summary = Summary::default();
        assert!(missing(hot.clone(), 3, &known, &mut summary).is_none());
        assert_eq!(summary.mapped["climate"].known_misfits, 1);
        let other = missing(hot, 4, &known, &mut summary).expect("message 4's misfit is not recorded yet");
        assert_eq!(
            (other.mapped.len(), summary.mapped["climate"].known_misfits),
            (1, 1)
        );
        let mended = with_mapping(
            "filter = \"s/#\"\ntable = \"climate\"\n[columns]\ntemp = { path = \"$.t\", type = \"text\" }\n",
        );
        let fits = crate::readings::derive(&mended, "s/1", br#"{"t": "hot"}"#, at).unwrap();
        let row = missing(fits, 3, &known, &mut summary).expect("a mended mapping writes the row");
        assert!(row.mapped[0].1.is_ok());
    }
}
