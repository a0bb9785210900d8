//! The advisory lock that serialises changes to one schema (two operator replicas, the operator and a
//! standalone worker, two pipelines claiming one schema). Taken with `pg_try_advisory_lock` and retried with
//! the shared backoff for a bounded time, so a holder that never lets go fails the caller instead of hanging it.

use std::time::Duration;

use sqlx::PgConnection;

use super::{SchemaError, sql};
use crate::backoff::Backoff;

/// How long a caller waits for another holder of the lock before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Session lock (held until [`unlock`]) or transaction lock (released at COMMIT or ROLLBACK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Session,
    Transaction,
}

/// The lock key of a schema.
pub(crate) fn key(schema: &str) -> String {
    format!("cryptoviz:{schema}")
}

/// Take the schema's advisory lock, retrying for at most [`LOCK_WAIT`].
pub(crate) async fn lock(c: &mut PgConnection, schema: &str, scope: Scope) -> Result<(), SchemaError> {
    let stmt = match scope {
        Scope::Session => "SELECT pg_try_advisory_lock(hashtext($1))",
        Scope::Transaction => "SELECT pg_try_advisory_xact_lock(hashtext($1))",
    };
    let deadline = tokio::time::Instant::now() + LOCK_WAIT;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let got: bool =
            sqlx::query_scalar(stmt).bind(key(schema)).fetch_one(&mut *c).await.map_err(sql("advisory lock"))?;
        if got {
            return Ok(());
        }
        let wait = backoff.next_delay();
        if tokio::time::Instant::now() + wait > deadline {
            return Err(SchemaError::Busy { schema: schema.into(), waited: LOCK_WAIT });
        }
        tokio::time::sleep(wait).await;
    }
}

/// Release a session lock taken with [`lock`].
pub(crate) async fn unlock(c: &mut PgConnection, schema: &str) {
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))").bind(key(schema)).execute(&mut *c).await;
}
