//! Which device a message is from: a topic pattern such as `sensors/{device}/#`, a payload
//! field, or by default a top-level `device` / `device_id` field.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceRule {
    /// `device` or `device_id` at the top of an object payload.
    #[default]
    Default,
    /// Topic levels; `{device}` captures one level, `+` matches one, `#` the rest.
    Topic(Vec<String>),
    /// A payload field: a top-level key, or a dotted path (`end_device_ids.device_id`).
    Field(String),
}

impl DeviceRule {
    /// `sensors/{device}/#` (topic) or `payload.FIELD` / `$.FIELD` (payload field).
    pub fn parse(s: &str) -> Result<DeviceRule, String> {
        let s = s.trim();
        if let Some(f) = s.strip_prefix("payload.").or_else(|| s.strip_prefix("$.")) {
            if f.is_empty() {
                return Err("name the payload field, e.g. payload.device".into());
            }
            return Ok(DeviceRule::Field(f.to_string()));
        }
        let levels: Vec<String> = s.split('/').map(String::from).collect();
        if levels.iter().filter(|l| *l == "{device}").count() != 1 {
            return Err(format!(
                "`{s}` needs exactly one `{{device}}` level, e.g. sensors/{{device}}/#"
            ));
        }
        if levels
            .iter()
            .enumerate()
            .any(|(i, l)| l == "#" && i != levels.len() - 1)
        {
            return Err(format!("`{s}`: `#` must be the last level"));
        }
        Ok(DeviceRule::Topic(levels))
    }

    pub fn payload_field(&self) -> Option<&str> {
        match self {
            DeviceRule::Field(f) => Some(f),
            _ => None,
        }
    }
}

pub fn from_topic(rule: &DeviceRule, topic: &str) -> Option<String> {
    let DeviceRule::Topic(levels) = rule else {
        return None;
    };
    let mut parts = topic.split('/');
    let mut found = None;
    for l in levels {
        if l == "#" {
            return found;
        }
        let part = parts.next()?;
        if l == "{device}" {
            found = Some(part.to_string());
        } else if l != "+" && l != part {
            return None;
        }
    }
    if parts.next().is_some() {
        return None;
    }
    found
}

fn as_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn find(rule: &DeviceRule, topic: &str, json: &Value) -> Option<String> {
    match rule {
        DeviceRule::Topic(_) => from_topic(rule, topic),
        DeviceRule::Field(f) => super::flatten::field(json, f).and_then(as_name),
        DeviceRule::Default => json
            .get("device")
            .or_else(|| json.get("device_id"))
            .and_then(as_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        let r = DeviceRule::parse("sensors/{device}/#").unwrap();
        assert_eq!(from_topic(&r, "sensors/s3/telemetry").as_deref(), Some("s3"));
        assert_eq!(from_topic(&r, "other/s3/x"), None);
        let r = DeviceRule::parse("+/{device}").unwrap();
        assert_eq!(from_topic(&r, "a/b").as_deref(), Some("b"));
        assert_eq!(from_topic(&r, "a/b/c"), None);
        assert!(DeviceRule::parse("sensors/#").is_err());
        assert_eq!(
            DeviceRule::parse("payload.id").unwrap(),
            DeviceRule::Field("id".into())
        );
    }
}
