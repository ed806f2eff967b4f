//! The event time a payload carries: RFC 3339 with any offset, ISO 8601 offsets without a colon
//! (`+0000`, `-03`, as C's `strftime("%z")` writes them), `YYYY-MM-DD HH:MM[:SS]` without one
//! (the devices' local time in `--time-zone`, UTC by default), unix seconds, milliseconds,
//! microseconds or nanoseconds (told apart by magnitude), as numbers or strings. Converted to
//! UTC. Times far from the receive time are not trusted. It must never store a time without
//! knowing its zone.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// From the payload.
    Payload,
    /// No time in the payload: the receive time.
    Received,
    /// The payload's time was unreadable or implausible: the receive time, flagged.
    Suspect,
}

impl TimeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeSource::Payload => "payload",
            TimeSource::Received => "received",
            TimeSource::Suspect => "suspect",
        }
    }
}

/// A unix time's unit, by its magnitude: each unit starts where the one before it would be past
/// the year 5000 (1e11 s is the year 5138, 1e11 ms is 1973), so any time after 1973 is read
/// right whatever unit the device counts in.
const UNITS: [(f64, f64); 3] = [(1e17, 1e-6), (1e14, 1e-3), (1e11, 1.0)];

/// `v` as a time in UTC; a time written without an offset is local time in `zone`.
pub fn parse_time(v: &Value, zone: Tz) -> Result<DateTime<Utc>, String> {
    let from_number = |n: f64| -> Result<DateTime<Utc>, String> {
        if !n.is_finite() || n < 0.0 {
            return Err(format!("time {n} is not a unix time"));
        }
        let ms = UNITS
            .iter()
            .find(|(from, _)| n >= *from)
            .map_or(n * 1000.0, |(_, to_ms)| n * to_ms);
        if ms > 8.0e15 {
            return Err(format!("time {n} is out of range"));
        }
        Utc.timestamp_millis_opt(ms as i64)
            .single()
            .ok_or_else(|| format!("time {n} is out of range"))
    };
    match v {
        Value::Number(n) => from_number(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => {
            let t = s.trim();
            if let Ok(n) = t.parse::<f64>() {
                return from_number(n);
            }
            if let Ok(d) = DateTime::parse_from_rfc3339(t) {
                return Ok(d.with_timezone(&Utc));
            }
            // `%#z` takes `+hhmm`, `+hh:mm` and `+hh`.
            for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
                if let Ok(d) = DateTime::parse_from_str(t, fmt) {
                    return Ok(d.with_timezone(&Utc));
                }
            }
            for fmt in [
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M",
                "%Y-%m-%dT%H:%M",
            ] {
                if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
                    return match zone.from_local_datetime(&n) {
                        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
                        // The hour the clocks went back happens twice: the first one.
                        LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&Utc)),
                        LocalResult::None => Err(format!(
                            "time `{t}` does not exist in {zone} (the clocks moved forward then)"
                        )),
                    };
                }
            }
            Err(format!(
                "time `{}` is not RFC 3339 or unix time",
                t.chars().take(40).collect::<String>()
            ))
        }
        _ => Err("time is neither a string nor a number".into()),
    }
}

/// The first of `fields` present in an object payload (a top-level key, or a dotted path such as
/// `params.ts`), parsed.
pub fn find(json: &Value, fields: &[String], zone: Tz) -> Option<Result<DateTime<Utc>, String>> {
    json.as_object()?;
    fields
        .iter()
        .find_map(|f| super::flatten::field(json, f))
        .map(|v| parse_time(v, zone))
}

/// More than a day ahead of the receive time, or before 2000: a clock that is wrong.
pub fn plausible(t: DateTime<Utc>, received: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if t > received + chrono::Duration::days(1) {
        return Err(format!("event time {t} is in the future; using the receive time"));
    }
    if t < Utc
        .with_ymd_and_hms(2000, 1, 1, 0, 0, 0)
        .single()
        .unwrap_or(received)
    {
        return Err(format!("event time {t} is before 2000; using the receive time"));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn every_format_becomes_utc() {
        let want = utc("2026-11-25T10:00:00Z");
        for v in [
            json!("2026-11-25T10:00:00Z"),
            json!("2026-11-25T07:00:00-03:00"),
            json!("2026-11-25T15:30:00+05:30"),
            json!("2026-11-25 10:00:00"),
            json!(1795600800),
            json!(1795600800000u64),
            json!(1795600800000000u64),
            json!(1795600800000000000u64),
            json!("1795600800"),
            json!("1795600800000000"),
            json!(1795600800.0),
            json!("2026-11-25T10:00:00+0000"),
            json!("2026-11-25T10:00:00.000+0000"),
            json!("2026-11-25T07:00:00-0300"),
            json!("2026-11-25T07:00:00-03"),
            json!("2026-11-25 13:00:00+03"),
            json!("2026-11-25T10:00"),
            json!("2026-11-25 10:00"),
        ] {
            assert_eq!(parse_time(&v, Tz::UTC).unwrap(), want, "{v}");
        }
        assert_eq!(
            parse_time(&json!(1795600800.5), Tz::UTC).unwrap(),
            utc("2026-11-25T10:00:00.500Z")
        );
        assert_eq!(
            parse_time(&json!(1795600800123456u64), Tz::UTC).unwrap(),
            utc("2026-11-25T10:00:00.123Z"),
            "microseconds keep their milliseconds"
        );
        for bad in [
            json!("yesterday"),
            json!(-5),
            json!(true),
            json!(1e300),
            json!("2026-11-25T10:00:00+25"),
            json!("2026-11-25T10"),
        ] {
            assert!(parse_time(&bad, Tz::UTC).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_time_without_an_offset_is_local_time_in_the_zone() {
        let sp: Tz = "America/Sao_Paulo".parse().unwrap();
        assert_eq!(
            parse_time(&json!("2026-11-25 07:00:00"), sp).unwrap(),
            utc("2026-11-25T10:00:00Z"),
            "UTC-3"
        );
        // Only times without an offset: the others say which zone they are in.
        for v in [
            json!("2026-11-25T10:00:00Z"),
            json!("2026-11-25T07:00:00-03:00"),
            json!(1795600800),
        ] {
            assert_eq!(parse_time(&v, sp).unwrap(), utc("2026-11-25T10:00:00Z"), "{v}");
        }
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        assert_eq!(
            parse_time(&json!("2026-07-01T12:00:00"), berlin).unwrap(),
            utc("2026-07-01T10:00:00Z"),
            "summer time, UTC+2"
        );
        assert_eq!(
            parse_time(&json!("2026-10-25 02:30:00"), berlin).unwrap(),
            utc("2026-10-25T00:30:00Z"),
            "02:30 happens twice when the clocks go back: the first"
        );
        let gap = parse_time(&json!("2026-03-29 02:30:00"), berlin).unwrap_err();
        assert!(gap.contains("does not exist in Europe/Berlin"), "{gap}");
    }
}
