//! What a PostgreSQL failure means for a batch: refused data (written message by message, a
//! refused one to `rejected`), a batch an earlier attempt already committed, a batch overtaken
//! by the retry of the one before it, or anything else (retried). It must never call the
//! connection's failures data errors: that would put good messages in `rejected`.

use super::{commit_token, write};

/// The server's message and SQLSTATE, or else the error with its causes: what an operator
/// reads in the log.
pub(super) fn describe_pg(e: &tokio_postgres::Error) -> String {
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
            if s.contains("invalid peer certificate") {
                s.push_str(TLS_HINT);
            }
            s
        }
    }
}

/// What to do when the server's certificate is refused. tidegate verifies every TLS connection,
/// `sslmode=prefer` (the default for another machine) included, where libpq's `prefer` takes
/// any certificate: a URL `psql` accepts can fail here.
const TLS_HINT: &str = " (tidegate verifies the server's certificate whenever it uses TLS: give the CA \
     that signed it with `sslrootcert=PATH` in the URL — for a distribution's self-signed one, a copy \
     of the server's /etc/ssl/certs/ssl-cert-snakeoil.pem — and the host name the certificate \
     names, or `sslmode=disable` on a network you trust)";

/// Errors caused by the data of the batch rather than by the connection or the server state.
pub(super) fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        let class = &db.code().code()[..2];
        matches!(class, "22" | "23" | "54")
    })
}

pub(super) enum WriteError {
    /// The database refused the data (bad encoding, a limit exceeded, ...).
    Data(String),
    /// An earlier attempt at the batch committed it (`commit_token::claim`).
    AlreadyCommitted,
    /// The batch before it is being written again (`turn`): this one is, too, behind it.
    Overtaken,
    Other(String),
}

impl WriteError {
    pub(super) fn from_rows(e: &write::RowsError) -> Self {
        match e {
            write::RowsError::Pg(e) => Self::from_pg(e),
            write::RowsError::Overtaken(_) => WriteError::Overtaken,
            write::RowsError::Series(e) => WriteError::Other(e.clone()),
        }
    }

    pub(super) fn from_pg(e: &tokio_postgres::Error) -> Self {
        if commit_token::already_committed(e) {
            WriteError::AlreadyCommitted
        } else if is_data_error(e) {
            WriteError::Data(describe_pg(e))
        } else {
            WriteError::Other(describe_pg(e))
        }
    }
}

pub(super) fn pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(pg) => describe_pg(pg),
        other => other.to_string(),
    }
}
