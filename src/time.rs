//! Timestamps in the one text format Metabase filters correctly on SQLite:
//! `YYYY-MM-DD HH:MM:SS.SSS`, UTC, a space and no offset (see docs/metabase.md).

use chrono::{DateTime, NaiveDateTime, Utc};

pub const FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Formats an instant for a SQLite `DATETIME` column.
pub fn to_sql_text(t: DateTime<Utc>) -> String {
    t.format(FORMAT).to_string()
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
}
