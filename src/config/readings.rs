//! The readings side of the settings: on or off, the `[[mapping]]` tables, and how a payload's
//! device, event time and fields are found, checked into one `ReadingsConfig`.

use super::{ConfigError, RunArgs};

pub(super) fn resolve_readings(a: &RunArgs) -> Result<crate::readings::ReadingsConfig, ConfigError> {
    let enabled = match a.readings.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("on") | Some("true") => true,
        Some("off") | Some("false") => false,
        Some(other) => {
            return Err(ConfigError::new(
                "readings",
                format!("`{other}` is not on or off"),
            ))
        }
    };
    let mut r = crate::readings::ReadingsConfig {
        enabled,
        ..Default::default()
    };
    let mut tables = std::collections::HashSet::new();
    for spec in a.mappings.iter().flatten() {
        let m =
            crate::readings::mapping::Mapping::from_spec(spec).map_err(|e| ConfigError::new("mapping", e))?;
        if !tables.insert(m.table.clone()) {
            return Err(ConfigError::new(
                "mapping",
                format!("table `{}` is mapped twice", m.table.as_str()),
            ));
        }
        r.mappings.push(std::sync::Arc::new(m));
    }
    if let Some(d) = &a.device_from {
        r.device = crate::readings::DeviceRule::parse(d).map_err(|e| ConfigError::new("device-from", e))?;
    }
    if let Some(t) = &a.time_fields {
        if t.iter().any(|f| f.trim().is_empty()) {
            return Err(ConfigError::new("time-field", "field names cannot be empty"));
        }
        r.time_fields = t.iter().map(|f| f.trim().to_string()).collect();
    }
    if let Some(z) = &a.time_zone {
        r.time_zone = z.trim().parse().map_err(|_| {
            ConfigError::new(
                "time-zone",
                format!("`{z}` is not a time zone name; use an IANA name such as America/Sao_Paulo, Europe/Lisbon or UTC"),
            )
        })?;
    }
    if let Some(d) = a.readings_max_depth {
        if !(1..=64).contains(&d) {
            return Err(ConfigError::new("readings-max-depth", "must be between 1 and 64"));
        }
        r.max_depth = d;
    }
    if let Some(n) = a.readings_max_fields {
        if !(1..=100_000).contains(&n) {
            return Err(ConfigError::new(
                "readings-max-fields",
                "must be between 1 and 100000",
            ));
        }
        r.max_fields = n;
    }
    if let Some(root) = &a.readings_root {
        let root = root.trim();
        if root.is_empty() || root.split('.').any(str::is_empty) {
            return Err(ConfigError::new(
                "readings-root",
                format!("`{root}` is not a dotted path to a payload field, such as uplink_message.decoded_payload"),
            ));
        }
        r.root = Some(root.to_string());
    }
    Ok(r)
}
