//! Mappings: a topic filter → a wide table with named, typed columns taken from JSON paths, the
//! shape Metabase charts best. Pure: it computes the row and the columns a message needs; the
//! stores run the (validated, quoted) DDL and inserts. Table and column names are checked
//! identifiers — never raw text from payloads or topics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::filter_matches;

/// A SQL identifier: `[a-z_][a-z0-9_]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    pub fn parse(s: &str) -> Result<Ident, String> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        const RESERVED: [&str; 8] = [
            "id",
            "message_id",
            "ts",
            "topic",
            "device",
            "select",
            "table",
            "order",
        ];
        if !ok {
            return Err(format!(
                "`{s}` is not a valid name: use lowercase letters, digits and _ (at most 63)"
            ));
        }
        if RESERVED.contains(&s) {
            return Err(format!(
                "`{s}` is reserved (tidegate's own column or an SQL keyword)"
            ));
        }
        Ok(Ident(s.to_string()))
    }

    /// A column name made from a payload field (`a.b[0]` → `a_b_0`), or `None` if nothing is left.
    pub fn from_field(field: &str) -> Option<Ident> {
        let mut s: String = field
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        while s.contains("__") {
            s = s.replace("__", "_");
        }
        let s = s.trim_matches('_');
        let s = if s.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            format!("f_{s}")
        } else {
            s.to_string()
        };
        let s: String = s.chars().take(63).collect();
        Ident::parse(&s)
            .or_else(|_| Ident::parse(&format!("f_{s}").chars().take(63).collect::<String>()))
            .ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Quoted for SQL (the name is already restricted; quoting keeps keywords safe).
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColType {
    Real,
    Integer,
    Text,
    Boolean,
    Timestamp,
}

impl ColType {
    pub fn sqlite(self) -> &'static str {
        match self {
            ColType::Real => "REAL",
            ColType::Integer => "INTEGER",
            ColType::Text => "TEXT",
            ColType::Boolean => "BOOLEAN",
            ColType::Timestamp => "DATETIME",
        }
    }
    pub fn postgres(self) -> &'static str {
        match self {
            ColType::Real => "double precision",
            ColType::Integer => "bigint",
            ColType::Text => "text",
            ColType::Boolean => "boolean",
            ColType::Timestamp => "timestamptz",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Real(f64),
    Integer(i64),
    Text(String),
    Bool(bool),
    Time(chrono::DateTime<chrono::Utc>),
}

/// A column as written in the TOML: `name = "$.path"` (REAL) or `name = { path = "$.path", type = "text" }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ColumnSpec {
    Path(String),
    Full {
        path: String,
        #[serde(rename = "type")]
        ty: ColType,
    },
}

/// A mapping as written in the TOML (`[[mapping]]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    pub filter: String,
    pub table: String,
    #[serde(default)]
    pub auto_columns: bool,
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, ColumnSpec>,
    /// Rows older than this (by `ts`) are deleted; kept when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<crate::config::Span>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: Ident,
    /// JSON pointer (`/a/b/0`).
    pub pointer: String,
    pub ty: ColType,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub filter: String,
    pub table: Ident,
    pub auto_columns: bool,
    pub columns: Vec<Column>,
    /// How long its rows are kept (by `ts`); `None`: for good.
    pub retain: Option<std::time::Duration>,
}

/// `$.a.b[0]` → `/a/b/0`.
fn pointer(path: &str) -> Result<String, String> {
    let rest = path
        .strip_prefix("$.")
        .or_else(|| path.strip_prefix('$'))
        .ok_or_else(|| format!("path `{path}` must start with `$.`, e.g. $.temp"))?;
    let mut out = String::new();
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        let (name, idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push('/');
            out.push_str(&name.replace('~', "~0").replace('/', "~1"));
        }
        for seg in idx.split('[').filter(|s| !s.is_empty()) {
            let n = seg.strip_suffix(']').filter(|n| n.parse::<usize>().is_ok());
            let n = n.ok_or_else(|| format!("path `{path}`: `[{seg}` is not an array index"))?;
            out.push('/');
            out.push_str(n);
        }
    }
    if out.is_empty() {
        return Err(format!("path `{path}` names no field"));
    }
    Ok(out)
}

impl Mapping {
    pub fn from_spec(spec: &MappingSpec) -> Result<Mapping, String> {
        crate::config::validate_filter(&spec.filter).map_err(|e| format!("mapping filter: {e}"))?;
        let table = Ident::parse(&spec.table).map_err(|e| format!("mapping table: {e}"))?;
        // Every table and view either store creates: a mapping of one of these names would
        // write its rows into tidegate's own (`CREATE TABLE IF NOT EXISTS` finds it there).
        const OURS: [&str; 28] = [
            "messages",
            "readings",
            "readings_1m",
            "readings_1h",
            "readings_1m_open",
            "readings_1m_closed",
            "readings_1h_open",
            "readings_1h_closed",
            "readings_latest",
            "reading_notes",
            "series",
            "series_points",
            "series_1m",
            "series_1h",
            "series_latest",
            "rejected",
            "topics",
            "dados",
            "dados_seed",
            "tidegate_stats",
            "tidegate_schema",
            "retained_marks",
            "delivery_marks",
            "delivery_batches",
            "commit_tokens",
            "spool_positions",
            "mqtt_subscriptions",
            "sqlite_sequence",
        ];
        if OURS.iter().any(|t| t.eq_ignore_ascii_case(table.as_str())) {
            return Err(format!(
                "mapping table `{}` is one of tidegate's own tables",
                table.as_str()
            ));
        }
        let mut columns = Vec::new();
        for (name, c) in &spec.columns {
            let (path, ty) = match c {
                ColumnSpec::Path(p) => (p.as_str(), ColType::Real),
                ColumnSpec::Full { path, ty } => (path.as_str(), *ty),
            };
            columns.push(Column {
                name: Ident::parse(name).map_err(|e| format!("mapping `{}` column: {e}", spec.table))?,
                pointer: pointer(path)?,
                ty,
            });
        }
        if columns.is_empty() && !spec.auto_columns {
            return Err(format!(
                "mapping `{}` has no columns and auto_columns is off",
                spec.table
            ));
        }
        let retain = spec.retain.map(|r| r.0);
        if retain.is_some_and(|r| r < std::time::Duration::from_secs(60)) {
            return Err(format!("mapping `{}`: retain must be at least 1m", spec.table));
        }
        Ok(Mapping {
            filter: spec.filter.clone(),
            table,
            auto_columns: spec.auto_columns,
            columns,
            retain,
        })
    }

    pub fn matches(&self, topic: &str) -> bool {
        filter_matches(&self.filter, topic)
    }
}

fn convert(v: &Value, ty: ColType, zone: chrono_tz::Tz) -> Result<SqlValue, String> {
    let bad = || format!("expects {}, got {}", ty.sqlite().to_lowercase(), shorten(v));
    Ok(match (ty, v) {
        (_, Value::Null) => SqlValue::Null,
        (ColType::Real, Value::Number(n)) => SqlValue::Real(n.as_f64().ok_or_else(bad)?),
        (ColType::Real, Value::String(s)) => SqlValue::Real(
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(bad)?,
        ),
        (ColType::Integer, Value::Number(n)) => SqlValue::Integer(n.as_i64().ok_or_else(bad)?),
        (ColType::Integer, Value::String(s)) => SqlValue::Integer(s.trim().parse().map_err(|_| bad())?),
        (ColType::Boolean, Value::Bool(b)) => SqlValue::Bool(*b),
        (ColType::Boolean, Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
            SqlValue::Bool(n.as_i64() == Some(1))
        }
        (ColType::Timestamp, v) => SqlValue::Time(super::parse_time(v, zone).map_err(|_| bad())?),
        (ColType::Text, Value::String(s)) => SqlValue::Text(s.clone()),
        (ColType::Text, other) => SqlValue::Text(other.to_string()),
        _ => return Err(bad()),
    })
}

fn shorten(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// The row a message gives for a mapping: values for the mapped columns and, with
/// `auto_columns`, new columns for payload fields no column maps.
#[derive(Debug, Clone, PartialEq)]
pub struct MappedRow {
    pub values: Vec<(Ident, SqlValue)>,
    pub new_columns: Vec<(Ident, ColType)>,
}

/// Applies `m` to a JSON payload; `Err` names the column and the value that does not fit.
/// The row `m` makes of `json`; timestamps without an offset are local time in `zone`.
pub fn apply(
    m: &Mapping,
    json: &Value,
    readings: &[super::Reading],
    zone: chrono_tz::Tz,
) -> Result<MappedRow, String> {
    let mut values = Vec::new();
    for c in &m.columns {
        let v = json.pointer(&c.pointer).unwrap_or(&Value::Null);
        let v = convert(v, c.ty, zone)
            .map_err(|e| format!("mapping `{}`: column `{}` {e}", m.table.as_str(), c.name.as_str()))?;
        values.push((c.name.clone(), v));
    }
    let mut new_columns = Vec::new();
    if m.auto_columns {
        let mapped: std::collections::HashSet<&str> = m.columns.iter().map(|c| c.name.as_str()).collect();
        for r in readings {
            let Some(name) = Ident::from_field(&r.field) else {
                continue;
            };
            if mapped.contains(name.as_str()) || values.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let (ty, v) = match &r.value {
                super::Value::Number(f) => (ColType::Real, SqlValue::Real(*f)),
                super::Value::Text(t) => (ColType::Text, SqlValue::Text(t.clone())),
            };
            new_columns.push((name.clone(), ty));
            values.push((name, v));
        }
    }
    Ok(MappedRow { values, new_columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(toml: &str) -> Mapping {
        Mapping::from_spec(&toml::from_str::<MappingSpec>(toml).unwrap()).unwrap()
    }

    #[test]
    fn a_mapping_keeps_its_rows_as_long_as_its_retain_says() {
        let m = spec("filter = \"a/#\"\ntable = \"t\"\nauto_columns = true\nretain = \"90d\"\n");
        assert_eq!(m.retain, Some(std::time::Duration::from_secs(90 * 86400)));
        assert_eq!(
            spec("filter = \"a/#\"\ntable = \"t\"\nauto_columns = true\n").retain,
            None
        );
        let short: MappingSpec =
            toml::from_str("filter = \"a/#\"\ntable = \"t\"\nauto_columns = true\nretain = \"30s\"\n")
                .unwrap();
        assert_eq!(
            Mapping::from_spec(&short).err().unwrap_or_default(),
            "mapping `t`: retain must be at least 1m"
        );
        let typo =
            toml::from_str::<MappingSpec>("filter = \"a/#\"\ntable = \"t\"\nretain = \"90 days ago\"\n");
        assert!(typo.unwrap_err().to_string().contains("is not a duration"));
    }

    #[test]
    fn paths_types_and_conflicts() {
        let m = spec(
            r#"filter = "sensors/+/telemetry"
               table = "telemetry"
               [columns]
               temperature_c = "$.temp"
               status = { path = "$.status", type = "text" }
               first = { path = "$.list[0]", type = "integer" }"#,
        );
        assert!(m.matches("sensors/s1/telemetry") && !m.matches("other"));
        let row = apply(
            &m,
            &serde_json::json!({"temp": "21.5", "status": "ok", "list": [3]}),
            &[],
            chrono_tz::Tz::UTC,
        )
        .unwrap();
        assert_eq!(
            row.values,
            [
                (Ident("first".into()), SqlValue::Integer(3)),
                (Ident("status".into()), SqlValue::Text("ok".into())),
                (Ident("temperature_c".into()), SqlValue::Real(21.5)),
            ]
        );
        let err = apply(&m, &serde_json::json!({"temp": "hot"}), &[], chrono_tz::Tz::UTC).unwrap_err();
        assert!(err.contains("temperature_c") && err.contains("hot"), "{err}");
    }

    #[test]
    fn names_are_validated() {
        for bad in ["Temp", "1x", "a-b", "x; DROP TABLE messages", "", "id"] {
            assert!(Ident::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Ident::from_field("a.b[0]").unwrap().as_str(), "a_b_0");
        assert_eq!(Ident::from_field("Temp (°C)").unwrap().as_str(), "temp_c");
        assert_eq!(Ident::from_field("9lives").unwrap().as_str(), "f_9lives");
        for ours in [
            "messages",
            "series",
            "series_points",
            "series_latest",
            "readings_latest",
            "readings_1m_open",
        ] {
            let bad = MappingSpec {
                filter: "a".into(),
                table: ours.into(),
                auto_columns: true,
                columns: Default::default(),
                retain: None,
            };
            let err = Mapping::from_spec(&bad).err().unwrap_or_default();
            assert!(
                err.contains(&format!("`{ours}` is one of tidegate's own tables")),
                "{ours}: {err}"
            );
        }
    }
}
