//! Timestamps in the one text format Metabase filters correctly on SQLite:
//! `YYYY-MM-DD HH:MM:SS.SSS`, UTC, a space and no offset (see docs/metabase.md).

use chrono::{DateTime, NaiveDateTime, Utc};

pub const FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Formats an instant for a SQLite `DATETIME` column. Called for every message and reading on
/// the writer thread, so it formats the fields directly instead of interpreting `FORMAT`
/// (chrono's strftime showed up in the profile); the test checks both agree.
pub fn to_sql_text(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    // Years beyond four digits and leap seconds (`:60`) are rare: chrono handles them.
    if !(0..=9999).contains(&t.year()) || t.nanosecond() >= 1_000_000_000 {
        return t.format(FORMAT).to_string();
    }
    let mut s = String::with_capacity(23);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_millis()
    );
    s
}

/// Reads back what `to_sql_text` wrote, and the seed script's `CURRENT_TIMESTAMP` format.
pub fn from_sql_text(s: &str) -> Option<DateTime<Utc>> {
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_seed_format() {
        let t = from_sql_text("2026-11-25 10:00:00.123").unwrap();
        assert_eq!(to_sql_text(t), "2026-11-25 10:00:00.123");
        let seed = from_sql_text("2024-01-01 09:30:00").unwrap();
        assert_eq!(to_sql_text(seed), "2024-01-01 09:30:00.000");
    }

    #[test]
    fn the_fast_format_matches_chrono() {
        let mut ms: i64 = -62_135_596_800_000; // 0001-01-01
        while ms < 253_402_300_799_000 {
            // 9999-12-31
            let t = DateTime::from_timestamp_millis(ms).unwrap();
            assert_eq!(to_sql_text(t), t.format(FORMAT).to_string(), "{ms}");
            ms += 86_400_123 * 97 + 7;
        }
        let far = DateTime::from_timestamp(300_000_000_000, 0).unwrap();
        assert_eq!(to_sql_text(far), far.format(FORMAT).to_string());
        let leap = DateTime::from_timestamp(1_483_228_799, 1_500_000_000).unwrap();
        assert_eq!(to_sql_text(leap), leap.format(FORMAT).to_string());
    }
}
