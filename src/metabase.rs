//! Tells Metabase to read the database's schema again when it changes: a new mapping table or
//! column shows up in Metabase within seconds instead of at its hourly sync. It owns the calls
//! to Metabase's API and the key for them. It must never hold up the pipeline (it only reads the
//! store's schema version), never print the key, and never send it anywhere but the configured
//! Metabase.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::{config::MetabaseSettings, store::Store};

/// How often the store's schema version is read. Cheap: one pragma in SQLite, one catalog query
/// in PostgreSQL.
const EVERY: Duration = Duration::from_secs(5);
/// After a failed call, the wait before the next one (the schema version is still read).
const AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Asks Metabase for a schema sync at start (this run may have created or migrated tables) and
/// whenever the store's schema version changes after that, until `stop`. A call that fails is
/// logged and made again later.
pub async fn run(settings: MetabaseSettings, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up HTTP for Metabase; it will not be told of new tables");
            return;
        }
    };
    let endpoint = endpoint(&settings);
    // The version Metabase was last told of; `None` until the first call succeeds.
    let mut synced: Option<Option<i64>> = None;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        wait = EVERY;
        let version = match store.schema_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the schema version for Metabase; trying again");
                continue;
            }
        };
        if synced == Some(version) {
            continue;
        }
        // Raced against stopping: an unreachable Metabase must not hold up the clean stop.
        let result = tokio::select! {
            r = sync(&http, &endpoint, &settings) => r,
            _ = stop.changed() => return,
        };
        match result {
            Ok(()) => {
                tracing::info!(metabase = %settings.url, database = settings.database, "asked Metabase to sync the schema");
                synced = Some(version);
            }
            Err(why) => {
                tracing::warn!(metabase = %settings.url, database = settings.database, "{why}; trying again in a minute");
                wait = AFTER_FAILURE;
            }
        }
    }
}

/// One sync, for a command that changed the schema and then ends (`tidegate backfill` creating
/// a mapping table): no running tidegate may be there to notice.
pub async fn sync_once(settings: &MetabaseSettings) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("cannot set up HTTP for Metabase: {e}"))?;
    sync(&http, &endpoint(settings), settings).await
}

fn endpoint(settings: &MetabaseSettings) -> String {
    format!("{}/api/database/{}/sync_schema", settings.url, settings.database)
}

/// One `POST /api/database/:id/sync_schema`; what went wrong, said for the operator, when it
/// did not succeed.
async fn sync(http: &reqwest::Client, endpoint: &str, settings: &MetabaseSettings) -> Result<(), String> {
    let response = http
        .post(endpoint)
        .header("x-api-key", settings.api_key.expose())
        .send()
        .await
        .map_err(|e| format!("cannot reach Metabase ({})", e.without_url()))?;
    let status = response.status();
    match status.as_u16() {
        200..=299 => Ok(()),
        401 | 403 => Err(format!(
            "Metabase refused the API key (HTTP {status}): check TIDEGATE_METABASE_API_KEY, and that the key is in the Administrators group"
        )),
        404 => Err(format!(
            "Metabase has no database {} (HTTP 404): check --metabase-database against the number in the database's URL under Admin → Databases",
            settings.database
        )),
        _ => Err(format!("Metabase answered HTTP {status} to the schema sync")),
    }
}
