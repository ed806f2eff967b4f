//! The bulk rows of a batch, messages and readings, streamed with binary `COPY`: no statement
//! grows with the batch, and no other transaction touches these rows. It must never write a
//! row a verdict did not store: the callers pass the stored messages and their ids.

use deadpool_postgres::Transaction;
use tokio_postgres::{
    binary_copy::BinaryCopyInWriter,
    types::{Json, ToSql, Type},
};

use super::pg_text;
use crate::message::Message;

pub(super) const COPY_MESSAGES: &str = "COPY messages (id, received_at, topic, payload, payload_raw, payload_size, qos, retain, content_type, user_properties, source)
     FROM STDIN (FORMAT binary)";
pub(super) const COPY_READINGS: &str =
    "COPY series_points (message_id, series_id, ts, value, text, ts_source) FROM STDIN (FORMAT binary)";

/// MQTT 5 user properties as stored in `jsonb`: `[[name, value], ...]`.
type UserProperties = Json<Vec<(String, String)>>;

const MESSAGE_TYPES: [Type; 11] = [
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::BYTEA,
    Type::INT4,
    Type::INT2,
    Type::BOOL,
    Type::TEXT,
    Type::JSONB,
    Type::TEXT,
];

/// The stored messages (`to_store[i]` becomes row `ids[i]`), streamed with binary `COPY`.
pub(super) async fn copy_messages(
    tx: &Transaction<'_>,
    batch: &[Message],
    to_store: &[usize],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    if to_store.is_empty() {
        return Ok(());
    }
    let copy = tx.prepare_cached(COPY_MESSAGES).await?;
    let sink = tx.copy_in(&copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &MESSAGE_TYPES);
    futures::pin_mut!(writer);
    for (&i, id) in to_store.iter().zip(ids) {
        let m = &batch[i];
        let text = m.payload_lossy();
        let exact = m.payload_text().is_some() && !text.contains('\0');
        let raw: Option<&[u8]> = (!exact).then_some(&m.payload[..]);
        let props: Option<UserProperties> = (!m.user_properties.is_empty()).then(|| {
            Json(
                m.user_properties
                    .iter()
                    .map(|(k, v)| (pg_text(k).into_owned(), pg_text(v).into_owned()))
                    .collect(),
            )
        });
        let row: [&(dyn ToSql + Sync); 11] = [
            id,
            &m.received_at,
            &pg_text(&m.topic),
            &pg_text(&text),
            &raw,
            &i32::try_from(m.size).unwrap_or(i32::MAX),
            &i16::from(m.qos),
            &m.retain,
            &m.content_type.as_deref().map(pg_text),
            &props,
            &m.origin.source(),
        ];
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    Ok(())
}

const READING_TYPES: [Type; 6] = [
    Type::INT8,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
];

/// The readings of the stored messages (`to_store[i]` became row `ids[i]`), streamed with
/// binary `COPY`, each with its series' id (`series_ids`, in the same order: `reading_series`).
pub(super) async fn copy_readings(
    tx: &Transaction<'_>,
    series_ids: &[i32],
    batch: &[Message],
    to_store: &[usize],
    ids: &[i64],
) -> Result<(), tokio_postgres::Error> {
    use crate::readings::Value;
    if !to_store
        .iter()
        .any(|&i| batch[i].derived.as_ref().is_some_and(|d| !d.readings.is_empty()))
    {
        return Ok(());
    }
    let copy = tx.prepare_cached(COPY_READINGS).await?;
    let sink = tx.copy_in(&copy).await?;
    let writer = BinaryCopyInWriter::new(sink, &READING_TYPES);
    futures::pin_mut!(writer);
    let mut series_ids = series_ids.iter();
    for (&i, &id) in to_store.iter().zip(ids) {
        let m = &batch[i];
        let Some(d) = &m.derived else { continue };
        for (r, series_id) in d.readings.iter().zip(&mut series_ids) {
            let (value, text) = match &r.value {
                Value::Number(v) => (Some(*v), None),
                Value::Text(t) => (None, Some(pg_text(t))),
            };
            let row: [&(dyn ToSql + Sync); 6] =
                [&id, &series_id, &d.ts, &value, &text, &d.ts_source.as_str()];
            writer.as_mut().write(&row).await?;
        }
    }
    writer.finish().await?;
    Ok(())
}
