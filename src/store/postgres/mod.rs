//! The PostgreSQL store: a small connection pool, batches written with a fixed set of `UNNEST`
//! statements in one transaction, and the same dedup rule as SQLite. `COMMIT` returning means
//! the WAL is flushed (`synchronous_commit` stays on for tidegate's sessions), so acking after it
//! is safe. A batch the database refuses for its data is split, and a single refused message is
//! recorded in `rejected`, so one bad message can never stall the stream.

mod read;
mod schema;
mod write;

use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer};

use super::{Committed, MessageQuery, Outcome, SpoolPosition, Store, StoreError, StoredMessage, TopicStats};
use crate::{
    config::{PgTarget, PgTls},
    message::Message,
};

pub use schema::VERSION as SCHEMA_VERSION;

/// How long one batch may take before the connection is presumed dead.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub struct PgStore {
    pool: Pool,
    display: String,
    /// `messages.id`'s sequence, qualified.
    id_seq: String,
}

fn tls_config(target: &PgTarget) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = &target.ca_file {
        for cert in
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?
        {
            let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
        }
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                src = inner.source();
            }
            s
        }
    }
}

/// Errors caused by the data of the batch rather than by the connection or the server state.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let class = &db.code().code()[..2];
        matches!(class, "22" | "23" | "54")
    })
}

impl PgStore {
    pub async fn open(target: &PgTarget) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            target: target.display.clone(),
            reason,
        };
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match target.tls {
            PgTls::Disable => Manager::from_config(target.config.clone(), tokio_postgres::NoTls, mgr_config),
            _ => {
                let tls =
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(target).map_err(open_err)?);
                Manager::from_config(target.config.clone(), tls, mgr_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(4)
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        let mut client = pool.get().await.map_err(|e| open_err(pool_error(&e)))?;
        schema::migrate(&mut client).await.map_err(|e| match e {
            schema::MigrateError::TooNew(found) => StoreError::TooNew {
                target: target.display.clone(),
                found: i64::from(found),
                known: i64::from(schema::VERSION),
            },
            schema::MigrateError::Sql(e) => open_err(format!("migration failed: {}", describe_pg(&e))),
        })?;
        let id_seq = write::id_sequence(&client)
            .await
            .map_err(|e| open_err(describe_pg(&e)))?;
        Ok(PgStore {
            pool,
            display: target.display.clone(),
            id_seq,
        })
    }

    async fn write_once(
        &self,
        batch: &[Message],
        position: Option<&SpoolPosition>,
    ) -> Result<Vec<Outcome>, WriteError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| WriteError::Other(pool_error(&e)))?;
        write::write_batch(&mut client, batch, position, &self.id_seq)
            .await
            .map_err(|e| {
                if is_data_error(&e) {
                    WriteError::Data(describe_pg(&e))
                } else {
                    WriteError::Other(describe_pg(&e))
                }
            })
    }
}

impl PgStore {
    async fn write_at(
        &self,
        batch: &[Message],
        position: Option<&SpoolPosition>,
    ) -> Result<Committed, StoreError> {
        // A half-open connection would wait forever; give up and retry on a new connection.
        match tokio::time::timeout(WRITE_TIMEOUT, self.write_inner(batch, position)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Write(format!(
                "PostgreSQL did not answer within {} s; retrying on a new connection",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn write_inner(
        &self,
        batch: &[Message],
        position: Option<&SpoolPosition>,
    ) -> Result<Committed, StoreError> {
        match self.write_once(batch, position).await {
            Ok(outcomes) => return Ok(Committed::new(outcomes)),
            Err(WriteError::Other(e)) => return Err(StoreError::Write(e)),
            Err(WriteError::Data(e)) => {
                tracing::warn!(error = %e, "the database refused a batch; writing its messages one by one")
            }
        }
        self.write_one_by_one(batch, position)
            .await
            .map(Committed::new)
            .map_err(StoreError::Write)
    }

    /// Still one transaction, with a savepoint per message: a message the database refuses is
    /// recorded in `rejected` instead, and the batch stays all-or-nothing.
    async fn write_one_by_one(
        &self,
        batch: &[Message],
        position: Option<&SpoolPosition>,
    ) -> Result<Vec<Outcome>, String> {
        let mut client = self.pool.get().await.map_err(|e| pool_error(&e))?;
        self.savepoint_each(&mut client, batch, position)
            .await
            .map_err(|e| describe_pg(&e))
    }

    async fn savepoint_each(
        &self,
        client: &mut deadpool_postgres::ClientWrapper,
        batch: &[Message],
        position: Option<&SpoolPosition>,
    ) -> Result<Vec<Outcome>, tokio_postgres::Error> {
        let mut tx = client.transaction().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for m in batch {
            let sp = tx.transaction().await?;
            match write::write_rows(&sp, std::slice::from_ref(m), &self.id_seq).await {
                Ok(mut o) => {
                    sp.commit().await?;
                    outcomes.append(&mut o);
                }
                Err(e) if is_data_error(&e) => {
                    sp.rollback().await?;
                    let mut r = m.clone();
                    r.payload = bytes::Bytes::new();
                    r.rejection = Some(format!("the database refused this message: {}", describe_pg(&e)));
                    let sp = tx.transaction().await?;
                    let mut o = write::write_rows(&sp, std::slice::from_ref(&r), &self.id_seq).await?;
                    sp.commit().await?;
                    outcomes.append(&mut o);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(p) = position {
            write::record_position(&tx, p).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }
}

enum WriteError {
    /// The database refused the data (bad encoding, a limit exceeded, ...).
    Data(String),
    Other(String),
}

fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => describe_pg(pg),
        other => other.to_string(),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn write(&self, batch: Arc<Vec<Message>>) -> Result<Committed, StoreError> {
        self.write_at(&batch, None).await
    }

    async fn write_from_spool(
        &self,
        batch: Arc<Vec<Message>>,
        position: SpoolPosition,
    ) -> Option<Result<Committed, StoreError>> {
        Some(self.write_at(&batch, Some(&position)).await)
    }

    async fn spool_position(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Query(pool_error(&e)))?;
        let row = client
            .query_opt("SELECT last_id FROM spool_positions WHERE name = $1", &[&name])
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn messages(&self, q: MessageQuery) -> Result<Vec<StoredMessage>, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Query(pool_error(&e)))?;
        read::messages(&client, &q)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn readings(&self, q: crate::store::ReadingsQuery) -> Result<Vec<crate::store::Point>, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Query(pool_error(&e)))?;
        read::readings(&client, &q)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    async fn retain(&self, policy: &crate::config::RetentionPolicy, chunk: usize) -> Result<u64, StoreError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Write(pool_error(&e)))?;
        write::retain(&mut client, policy, chunk)
            .await
            .map_err(|e| StoreError::Write(describe_pg(&e)))
    }

    async fn write_stats(
        &self,
        rows: &std::collections::HashMap<crate::pipeline::stats::StatsKey, crate::pipeline::stats::StatsRow>,
    ) -> Result<(), StoreError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Write(pool_error(&e)))?;
        write::write_stats(&mut client, rows)
            .await
            .map_err(|e| StoreError::Write(describe_pg(&e)))
    }

    async fn topics(&self) -> Result<Vec<TopicStats>, StoreError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| StoreError::Query(pool_error(&e)))?;
        read::topics(&client)
            .await
            .map_err(|e| StoreError::Query(describe_pg(&e)))
    }

    fn describe(&self) -> String {
        self.display.clone()
    }
}
