//! JSON → (field, value) pairs. Nested objects become dotted names (`a.b`), arrays `a[0]`;
//! numbers, numeric strings ("21.4") and booleans (0/1) are numbers; other strings are text,
//! among them codes written with digits ("000013", "0042", a 20-digit SIM id), which a number
//! would change; nulls are skipped. Depth and field count are bounded.

use serde_json::Value as Json;

use super::Reading;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlattenError {
    #[error("JSON nested deeper than {0} levels")]
    TooDeep(usize),
    #[error("more than {0} fields")]
    TooManyFields(usize),
}

/// Most digits an integer can have and still be held exactly by an `f64` (2^53 has 16).
const EXACT_DIGITS: usize = 15;

/// A string that is a number the way a sensor would write it (`"21.4"`, `" 55 "`, `"-1e3"`).
/// Not a code made of digits: a leading zero before another digit (as JSON itself forbids in a
/// number: `"007"`, a network id `"000013"`), or an integer longer than a float holds exactly
/// (a SIM card's 20-digit ICCID would come back rounded).
fn numeric(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.is_empty() || t.len() > 64 {
        return None;
    }
    // Rust accepts "inf"/"nan"/"infinity"; a sensor's status string is not a number.
    if !t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return None;
    }
    let unsigned = t.trim_start_matches(['-', '+']).as_bytes();
    let zero_padded = unsigned.len() > 1 && unsigned[0] == b'0' && unsigned[1].is_ascii_digit();
    let long_integer = unsigned.len() > EXACT_DIGITS && unsigned.iter().all(u8::is_ascii_digit);
    if zero_padded || long_integer {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The value a field name points at: a top-level key as written, else a dotted path through
/// nested objects (`params.ts`), the names `flatten` gives nested fields.
pub fn field<'a>(json: &'a Json, name: &str) -> Option<&'a Json> {
    json.get(name).or_else(|| nested(json, name))
}

/// The value at the dotted path `name` (`params.ts`), when `name` is one.
fn nested<'a>(json: &'a Json, name: &str) -> Option<&'a Json> {
    if !name.contains('.') {
        return None;
    }
    name.split('.').try_fold(json, |v, key| v.get(key))
}

/// Takes the value at the dotted path `path` out of `json`, leaving null; `None` when the
/// payload has no such field or it is null.
pub fn take(json: &mut Json, path: &str) -> Option<Json> {
    let spot = path.split('.').try_fold(json, |v, key| v.get_mut(key))?;
    (!spot.is_null()).then(|| spot.take())
}

/// Whether the reading named `reading` is the field `name` or inside it.
pub fn within(reading: &str, name: &str) -> bool {
    reading
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Takes the parsed payload by value: names and text move into the readings instead of being
/// copied. `skip_top` names top-level fields that are not readings (event time, device).
pub fn flatten(
    json: Json,
    max_depth: usize,
    max_fields: usize,
    skip_top: impl Fn(&str) -> bool,
) -> Result<Vec<Reading>, FlattenError> {
    let mut out = Vec::new();
    match json {
        Json::Object(map) => {
            for (k, v) in map {
                if skip_top(&k) {
                    continue;
                }
                walk(v, k, 1, max_depth, max_fields, &mut out)?;
            }
        }
        Json::Array(items) => {
            for (i, v) in items.into_iter().enumerate() {
                walk(v, format!("[{i}]"), 1, max_depth, max_fields, &mut out)?;
            }
        }
        other => walk(other, "value".into(), 0, max_depth, max_fields, &mut out)?,
    }
    Ok(out)
}

fn walk(
    v: Json,
    name: String,
    depth: usize,
    max_depth: usize,
    max_fields: usize,
    out: &mut Vec<Reading>,
) -> Result<(), FlattenError> {
    if depth > max_depth {
        return Err(FlattenError::TooDeep(max_depth));
    }
    let value = match v {
        Json::Null => return Ok(()),
        Json::Bool(b) => Value::Number(if b { 1.0 } else { 0.0 }),
        Json::Number(n) => match n.as_f64().filter(|f| f.is_finite()) {
            Some(f) => Value::Number(f),
            None => Value::Text(n.to_string()),
        },
        Json::String(s) => match numeric(&s) {
            Some(f) => Value::Number(f),
            None => Value::Text(s),
        },
        Json::Object(map) => {
            for (k, child) in map {
                walk(
                    child,
                    format!("{name}.{k}"),
                    depth + 1,
                    max_depth,
                    max_fields,
                    out,
                )?;
            }
            return Ok(());
        }
        Json::Array(items) => {
            for (i, child) in items.into_iter().enumerate() {
                walk(
                    child,
                    format!("{name}[{i}]"),
                    depth + 1,
                    max_depth,
                    max_fields,
                    out,
                )?;
            }
            return Ok(());
        }
    };
    if out.len() >= max_fields {
        return Err(FlattenError::TooManyFields(max_fields));
    }
    out.push(Reading { field: name, value });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Vec<(String, Value)> {
        flatten(serde_json::from_str(s).unwrap(), 8, 256, |_| false)
            .unwrap()
            .into_iter()
            .map(|r| (r.field, r.value))
            .collect()
    }

    #[test]
    fn rules() {
        use Value::*;
        assert_eq!(
            f(r#"{"a":{"b":1,"c":[2,"3.5",true]},"s":"on","n":null,"x":"nan"}"#),
            [
                ("a.b".into(), Number(1.0)),
                ("a.c[0]".into(), Number(2.0)),
                ("a.c[1]".into(), Number(3.5)),
                ("a.c[2]".into(), Number(1.0)),
                ("s".into(), Text("on".into())),
                ("x".into(), Text("nan".into())),
            ]
        );
        assert_eq!(
            f(r#"[1,{"t":2}]"#),
            [("[0]".into(), Number(1.0)), ("[1].t".into(), Number(2.0))]
        );
        assert_eq!(f(r#""21.4""#), [("value".into(), Number(21.4))]);
    }

    #[test]
    fn codes_made_of_digits_stay_text() {
        use Value::*;
        assert_eq!(
            f(r#"{"a":"0","b":"0.5","c":"-0.25","d":"123456789012345","e":"1e3","f":"+7"}"#),
            [
                ("a".into(), Number(0.0)),
                ("b".into(), Number(0.5)),
                ("c".into(), Number(-0.25)),
                ("d".into(), Number(123_456_789_012_345.0)),
                ("e".into(), Number(1000.0)),
                ("f".into(), Number(7.0)),
            ]
        );
        assert_eq!(
            f(r#"{"a":"007","b":"000013","c":"-01","d":"89014103211118510720","e":"0000000000000000"}"#),
            [
                ("a".into(), Text("007".into())),
                ("b".into(), Text("000013".into())),
                ("c".into(), Text("-01".into())),
                ("d".into(), Text("89014103211118510720".into())),
                ("e".into(), Text("0000000000000000".into())),
            ]
        );
    }

    #[test]
    fn a_field_is_a_top_level_key_or_a_dotted_path() {
        let j: Json = serde_json::from_str(r#"{"a.b":1,"p":{"ts":2,"q":{"r":3}},"l":[4]}"#).unwrap();
        assert_eq!(field(&j, "a.b"), Some(&Json::from(1)));
        assert_eq!(field(&j, "p.ts"), Some(&Json::from(2)));
        assert_eq!(field(&j, "p.q.r"), Some(&Json::from(3)));
        assert_eq!(field(&j, "p.x"), None);
        assert_eq!(field(&j, "l.0"), None);
        assert!(within("p.ts", "p.ts") && within("p.q.r", "p.q") && within("l[0]", "l"));
        assert!(!within("p.tsx", "p.ts") && !within("p", "p.ts"));
    }

    #[test]
    fn limits() {
        let wide = format!(
            "{{{}}}",
            (0..300)
                .map(|i| format!("\"f{i}\":{i}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let j: Json = serde_json::from_str(&wide).unwrap();
        assert_eq!(
            flatten(j, 8, 256, |_| false),
            Err(FlattenError::TooManyFields(256))
        );
        let j: Json = serde_json::from_str(r#"{"a":{"b":{"c":1}}}"#).unwrap();
        assert_eq!(flatten(j, 2, 256, |_| false), Err(FlattenError::TooDeep(2)));
    }
}
