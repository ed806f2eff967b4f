//! The `[[mapping]]` tables on SQLite: created, widened and filled inside the batch's
//! transaction. It must never fail a batch over a value that does not fit its column: that is
//! recorded in `rejected`, and the message is stored all the same.

use rusqlite::params;

use crate::message::Message;

/// Rows of the mapping tables for the stored messages; a value that does not fit its column is
/// recorded in `rejected` (the message itself is already stored).
pub(super) fn write_mapped(
    tx: &rusqlite::Transaction<'_>,
    stored: &[(&Message, i64)],
) -> rusqlite::Result<()> {
    use crate::{readings::mapping::SqlValue, store::mapped};
    use rusqlite::types::Value;
    let mut shapes: std::collections::HashMap<
        String,
        std::collections::HashMap<String, crate::readings::mapping::ColType>,
    > = Default::default();
    for &(m, id) in stored {
        let Some(d) = &m.derived else { continue };
        for (mapping, result) in &d.mapped {
            let t = mapping.table.quoted();
            if !shapes.contains_key(mapping.table.as_str()) {
                let ix = format!("\"{}_ts\"", mapping.table.as_str());
                tx.execute_batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY, message_id INTEGER NOT NULL, ts DATETIME NOT NULL, topic TEXT NOT NULL, device TEXT);
                     CREATE INDEX IF NOT EXISTS {ix} ON {t} (ts);"
                ))?;
                let mut st = tx.prepare(&format!(
                    "SELECT name, type FROM pragma_table_info('{}')",
                    mapping.table.as_str()
                ))?;
                let cols = st
                    .query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, mapped::col_type(&r.get::<_, String>(1)?)))
                    })?
                    .collect::<rusqlite::Result<_>>()?;
                shapes.insert(mapping.table.as_str().to_string(), cols);
            }
            let shape = shapes.get_mut(mapping.table.as_str()).expect("loaded above");
            let planned = result.clone().and_then(|row| mapped::plan(mapping, &row, shape));
            match planned {
                Ok((add, values)) => {
                    for (name, ty) in add {
                        tx.execute_batch(&format!(
                            "ALTER TABLE {t} ADD COLUMN {} {}",
                            name.quoted(),
                            ty.sqlite()
                        ))?;
                    }
                    let names: Vec<String> = values.iter().map(|(n, _)| n.quoted()).collect();
                    let mut args: Vec<Value> = vec![
                        Value::Integer(id),
                        Value::Text(crate::time::to_sql_text(d.ts)),
                        Value::Text(m.topic.clone()),
                        d.device.clone().map(Value::Text).unwrap_or(Value::Null),
                    ];
                    for (_, v) in &values {
                        args.push(match v {
                            SqlValue::Null => Value::Null,
                            SqlValue::Real(f) => Value::Real(*f),
                            SqlValue::Integer(i) => Value::Integer(*i),
                            SqlValue::Text(s) => Value::Text(s.clone()),
                            SqlValue::Bool(b) => Value::Integer(i64::from(*b)),
                            SqlValue::Time(t) => Value::Text(crate::time::to_sql_text(*t)),
                        });
                    }
                    let marks: Vec<String> = (1..=args.len()).map(|i| format!("?{i}")).collect();
                    let cols = if names.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", names.join(", "))
                    };
                    // Cached: a table's rows mostly share their columns, and compiling the
                    // statement again for every row cost more than inserting it.
                    tx.prepare_cached(&format!(
                        "INSERT INTO {t} (message_id, ts, topic, device{cols}) VALUES ({})",
                        marks.join(", ")
                    ))?
                    .execute(rusqlite::params_from_iter(args))?;
                }
                Err(reason) => {
                    tx.prepare_cached(
                        "INSERT INTO rejected (received_at, topic, size, qos, reason, source, message_id, mapping)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'mapping', ?6, ?7)",
                    )?
                    .execute(params![
                        crate::time::to_sql_text(m.received_at),
                        m.topic,
                        m.size as i64,
                        m.qos,
                        reason,
                        id,
                        mapping.table.as_str()
                    ])?;
                }
            }
        }
    }
    Ok(())
}
