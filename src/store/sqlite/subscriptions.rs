//! The topic filters each MQTT client id last subscribed to, one row per client id with the
//! filters as a JSON array: read at start, to unsubscribe what a session the broker kept from an
//! earlier run still holds and this run no longer asks for. It owns that table only.

use rusqlite::{params, Connection, OptionalExtension};

/// The recorded filters of `client_id`, as stored (a JSON array).
pub fn read(conn: &Connection, client_id: &str) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT filters FROM mqtt_subscriptions WHERE client_id = ?1",
        [client_id],
        |r| r.get(0),
    )
    .optional()
}

pub fn parse(client_id: &str, json: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(json).map_err(|e| {
        format!("mqtt_subscriptions holds `{json}` for {client_id}, not a list of topic filters: {e}")
    })
}

pub fn record(conn: &Connection, client_id: &str, filters: &[String]) -> rusqlite::Result<()> {
    let json = serde_json::to_string(filters).unwrap_or_else(|_| "[]".into());
    conn.execute(
        "INSERT INTO mqtt_subscriptions (client_id, filters, recorded_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (client_id) DO UPDATE SET filters = excluded.filters, recorded_at = excluded.recorded_at",
        params![client_id, json, crate::time::to_sql_text(crate::time::now())],
    )?;
    Ok(())
}
