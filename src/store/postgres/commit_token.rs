//! Commit tokens: the one row a batch's transaction claims, which tells a retry whether an
//! attempt whose `COMMIT` went unanswered stored the batch. It owns the `commit_tokens` table;
//! it must never let two attempts at one batch both commit.

use deadpool_postgres::Transaction;
use tokio_postgres::Client;

use super::write::exec;

pub(super) const CLAIM_TOKEN: &str = "INSERT INTO commit_tokens (token, at) VALUES ($1, now())";
const PRUNE_TOKENS: &str = "DELETE FROM commit_tokens
     WHERE (token BETWEEN $1 AND $2 AND at < now() - make_interval(secs => $3) AND token <> ALL($4))
        OR at < now() - interval '1 day'";

/// Claims a batch's token in its transaction: one token per batch, the same for every attempt
/// at it. When an attempt's `COMMIT` goes unanswered (the connection dropped, the answer timed
/// out), the batch may or may not be stored; the retry's claim tells which. If the earlier
/// attempt committed, the claim fails (`already_committed`) and the retry writes nothing. If that
/// attempt is still running on the server, the claim waits for it. If it comes to the server
/// later than the retry, its own claim fails and it stores nothing. Either way the batch is
/// stored once.
pub async fn claim(tx: &Transaction<'_>, token: i64) -> Result<(), tokio_postgres::Error> {
    exec(tx, CLAIM_TOKEN, &[&token]).await.map(drop)
}

/// Whether `e` is a claim refused because the token is already committed.
pub fn already_committed(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION && db.table() == Some("commit_tokens")
    })
}

/// Deletes the tokens in `own` (this process's) older than `keep` except `pending`, and
/// anyone's older than a day (`PgStore::prune_commit_tokens` says why). Answers how many.
pub async fn prune_tokens(
    client: &Client,
    own: (i64, i64),
    keep: std::time::Duration,
    pending: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(PRUNE_TOKENS, &[&own.0, &own.1, &keep.as_secs_f64(), &pending])
        .await
}
