//! The Metabase that tidegate asks to sync its schema when tables or columns appear: URL,
//! database id and API key, all three or none. It must never contact Metabase.

use super::{ConfigError, Mode, RunArgs};
use crate::secret::Secret;

/// The Metabase told to read the schema again when tables or columns appear (`metabase`).
#[derive(Debug, Clone, PartialEq)]
pub struct MetabaseSettings {
    /// Without a trailing slash.
    pub url: String,
    pub database: u32,
    pub api_key: Secret,
}

pub(super) fn resolve_metabase(a: &RunArgs, mode: Mode) -> Result<Option<MetabaseSettings>, ConfigError> {
    let Some(url) = a.metabase_url.as_deref() else {
        if a.metabase_database.is_some() || a.metabase_api_key.is_some() {
            return Err(ConfigError::new(
                "metabase-url",
                "is missing: --metabase-database and TIDEGATE_METABASE_API_KEY are for the Metabase at that URL",
            ));
        }
        return Ok(None);
    };
    if mode == Mode::Subscribe {
        return Err(ConfigError::new(
            "metabase-url",
            "`subscribe` stores nothing; set it on the tidegate that writes the database",
        ));
    }
    let parsed = url::Url::parse(url)
        .map_err(|e| ConfigError::new("metabase-url", format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::new(
            "metabase-url",
            format!("`{url}` must be an http:// or https:// URL, such as http://127.0.0.1:3000"),
        ));
    }
    let database = match a.metabase_database {
        Some(0) | None => return Err(ConfigError::new(
            "metabase-database",
            "is missing: give the database's id in Metabase (the number in its URL under Admin → Databases)",
        )),
        Some(id) => id,
    };
    let api_key = match a.metabase_api_key.as_deref().map(str::trim) {
        Some(k) if !k.is_empty() => Secret::new(k),
        _ => {
            return Err(ConfigError::new(
                "metabase-api-key",
                "is missing: create an API key in Metabase (Admin → Settings → Authentication → API keys) and set TIDEGATE_METABASE_API_KEY",
            ))
        }
    };
    Ok(Some(MetabaseSettings {
        url: url.trim_end_matches('/').to_string(),
        database,
        api_key,
    }))
}
