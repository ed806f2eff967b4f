//! Rollups kept up to date incrementally: each batch's numeric readings are folded into
//! per-minute and per-hour buckets (count, min, max, sum, avg, last) and upserted, so a month-long
//! chart reads thousands of rollup rows instead of millions of readings — and nothing is ever
//! rescanned. The same pass keeps each series' newest reading for `readings_latest`
//! (`store::latest`). Both stores use this aggregation; only the upsert SQL differs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::latest::Latest;
use crate::{message::Message, readings::Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    Minute,
    Hour,
}

impl Width {
    pub fn table(self) -> &'static str {
        match self {
            Width::Minute => "readings_1m",
            Width::Hour => "readings_1h",
        }
    }

    /// The start of `t`'s bucket. In whole seconds: `duration_trunc` gives the same (a floor,
    /// before 1970 too) at about 200 instructions a call, once per width for every message with
    /// readings, and it refused times outside 1678–2262 (each left as its own bucket).
    pub fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let width = match self {
            Width::Minute => 60,
            Width::Hour => 3600,
        };
        let s = t.timestamp();
        DateTime::from_timestamp(s - s.rem_euclid(width), 0).unwrap_or(t)
    }
}

/// A bucket, borrowing its strings from the batch it was folded from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key<'a> {
    pub topic: &'a str,
    /// `''` when the message has no device (a key column cannot be NULL and stay unique).
    pub device: &'a str,
    pub field: &'a str,
    pub bucket: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Agg {
    pub count: i64,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub last: f64,
    pub last_ts: DateTime<Utc>,
}

impl Agg {
    fn add(&mut self, v: f64, ts: DateTime<Utc>) {
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        if ts >= self.last_ts {
            self.last = v;
            self.last_ts = ts;
        }
    }
}

/// One series: the part of a bucket's key that is hashed.
#[derive(PartialEq, Eq, Hash)]
struct Series<'a> {
    topic: &'a str,
    device: &'a str,
    field: &'a str,
}

/// The buckets of one series, per width (few: a batch spans minutes, not days, unless it is a
/// replay; the b-tree keeps a long one cheap too).
type Buckets = [BTreeMap<DateTime<Utc>, Agg>; 2];

/// One series' part of a batch: its buckets (numbers only) and its newest reading (number or
/// text) as (time, value, text).
#[derive(Default)]
struct SeriesFold<'a> {
    buckets: Buckets,
    newest: Option<(DateTime<Utc>, Option<f64>, Option<&'a str>)>,
}

/// What one pass over a batch's readings gives.
pub struct Folded<'a> {
    /// Each width's buckets, in `WIDTHS` order.
    pub buckets: [(Width, Vec<(Key<'a>, Agg)>); 2],
    /// Each series' newest reading, sorted by series (so concurrent upserts take their row locks
    /// in the same order). Of two with the same time, the later arrival wins, as it would one
    /// batch later.
    pub latest: Vec<Latest<'a>>,
}

pub const WIDTHS: [Width; 2] = [Width::Minute, Width::Hour];

/// Folds the readings of `stored` messages into minute and hour buckets (numbers) and each
/// series' newest reading in one pass: one hash look-up per reading, for its series, instead of
/// one per reading and width, and one more for the newest. Each bucket still adds its readings in
/// arrival order, so its sums are bit-for-bit those of a fold per width.
pub fn aggregate<'a>(stored: impl Iterator<Item = &'a Message>) -> Folded<'a> {
    let mut series: foldhash::HashMap<Series<'a>, SeriesFold<'a>> = Default::default();
    for m in stored {
        let Some(d) = &m.derived else { continue };
        let buckets = WIDTHS.map(|w| w.floor(d.ts));
        for r in &d.readings {
            let s = series
                .entry(Series {
                    topic: &m.topic,
                    device: d.device.as_deref().unwrap_or_default(),
                    field: &r.field,
                })
                .or_default();
            let (number, text) = match &r.value {
                Value::Number(v) => (Some(*v), None),
                Value::Text(t) => (None, Some(t.as_str())),
            };
            if s.newest.is_none_or(|(ts, ..)| d.ts >= ts) {
                s.newest = Some((d.ts, number, text));
            }
            let Some(v) = number else { continue };
            for (per_width, bucket) in s.buckets.iter_mut().zip(buckets) {
                per_width
                    .entry(bucket)
                    .and_modify(|a| a.add(v, d.ts))
                    .or_insert(Agg {
                        count: 1,
                        min: v,
                        max: v,
                        sum: v,
                        last: v,
                        last_ts: d.ts,
                    });
            }
        }
    }
    let mut out = WIDTHS.map(|w| (w, Vec::new()));
    let mut latest = Vec::with_capacity(series.len());
    for (k, fold) in series {
        if let Some((ts, value, text)) = fold.newest {
            latest.push(Latest {
                topic: k.topic,
                device: k.device,
                field: k.field,
                value,
                text,
                ts,
            });
        }
        for ((_, rows), buckets) in out.iter_mut().zip(fold.buckets) {
            rows.extend(buckets.into_iter().map(|(bucket, a)| {
                let key = Key {
                    topic: k.topic,
                    device: k.device,
                    field: k.field,
                    bucket,
                };
                (key, a)
            }));
        }
    }
    latest.sort_unstable_by(|a, b| (a.topic, a.device, a.field).cmp(&(b.topic, b.device, b.field)));
    Folded { buckets: out, latest }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use chrono::TimeZone;

    use super::*;
    use crate::{
        message::Origin,
        readings::{derive, ReadingsConfig},
    };

    #[test]
    fn a_bucket_starts_where_truncating_to_its_width_says() {
        use chrono::{DurationRound, TimeDelta};
        for t in [
            "2026-01-02T10:59:59.999Z",
            "2026-01-02T11:00:00Z",
            "1969-12-31T23:59:30.5Z",
        ] {
            let t: DateTime<Utc> = t.parse().unwrap();
            for (w, d) in [
                (Width::Minute, TimeDelta::minutes(1)),
                (Width::Hour, TimeDelta::hours(1)),
            ] {
                assert_eq!(w.floor(t), t.duration_trunc(d).unwrap(), "{t} {w:?}");
            }
        }
        // Past nanoseconds' range (1678 to 2262) `duration_trunc` refuses, and left the time as
        // it was: a bucket of its own.
        for (t, minute, hour) in [
            (
                "1900-03-01T00:10:01Z",
                "1900-03-01T00:10:00Z",
                "1900-03-01T00:00:00Z",
            ),
            (
                "9999-12-31T23:59:59Z",
                "9999-12-31T23:59:00Z",
                "9999-12-31T23:00:00Z",
            ),
        ] {
            let t: DateTime<Utc> = t.parse().unwrap();
            assert_eq!(Width::Minute.floor(t), minute.parse::<DateTime<Utc>>().unwrap());
            assert_eq!(Width::Hour.floor(t), hour.parse::<DateTime<Utc>>().unwrap());
        }
        // A leap second (nanoseconds past 10^9) falls in the minute it ends.
        let leap = chrono::Timelike::with_nanosecond(
            &Utc.with_ymd_and_hms(2016, 12, 31, 23, 59, 59).unwrap(),
            1_500_000_000,
        )
        .unwrap();
        assert_eq!(
            Width::Minute.floor(leap),
            Utc.with_ymd_and_hms(2016, 12, 31, 23, 59, 0).unwrap()
        );
    }

    fn at(h: u32, m: u32, payload: &str) -> Message {
        let mut msg = Message::new(
            "site/a".into(),
            Bytes::copy_from_slice(payload.as_bytes()),
            0,
            false,
            Origin::Http,
            1 << 20,
        );
        msg.received_at = Utc.with_ymd_and_hms(2026, 1, 2, h, m, 30).unwrap();
        msg.derived = derive(
            &ReadingsConfig::default(),
            &msg.topic,
            &msg.payload,
            msg.received_at,
        );
        msg
    }

    #[test]
    fn one_pass_gives_each_width_its_own_buckets_in_arrival_order() {
        let batch = [
            at(10, 0, r#"{"t": 1, "h": 50}"#),
            at(10, 0, r#"{"t": 3}"#),
            at(10, 1, r#"{"t": 5, "label": "x"}"#),
            at(11, 0, r#"{"t": 7}"#),
        ];
        let [(minute_w, minute), (hour_w, hour)] = aggregate(batch.iter()).buckets;
        assert_eq!((minute_w, hour_w), (Width::Minute, Width::Hour));
        let find = |rows: &[(Key, Agg)], field: &str, h: u32, m: u32| {
            let bucket = Utc.with_ymd_and_hms(2026, 1, 2, h, m, 0).unwrap();
            rows.iter()
                .find(|(k, _)| k.field == field && k.bucket == bucket)
                .map(|(_, a)| (a.count, a.sum, a.min, a.max, a.last))
        };
        // Minutes: t in 10:00 (1, 3), 10:01 (5), 11:00 (7); h in 10:00; text is not rolled up.
        assert_eq!(minute.len(), 4);
        assert_eq!(find(&minute, "t", 10, 0), Some((2, 4.0, 1.0, 3.0, 3.0)));
        assert_eq!(find(&minute, "t", 10, 1), Some((1, 5.0, 5.0, 5.0, 5.0)));
        assert_eq!(find(&minute, "h", 10, 0), Some((1, 50.0, 50.0, 50.0, 50.0)));
        // Hours: t in 10:00 (1, 3, 5) and 11:00 (7).
        assert_eq!(hour.len(), 3);
        assert_eq!(find(&hour, "t", 10, 0), Some((3, 9.0, 1.0, 5.0, 5.0)));
        assert_eq!(find(&hour, "t", 11, 0), Some((1, 7.0, 7.0, 7.0, 7.0)));
        assert!(minute.iter().chain(&hour).all(|(k, _)| k.field != "label"));
    }
}
