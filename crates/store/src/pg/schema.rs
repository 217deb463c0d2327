//! The tables in PostgreSQL, created and migrated at start.
//!
//! Every node runs [`migrate`] as it starts, under a transaction-scoped
//! advisory lock, so that nodes starting together create the schema
//! once. The version lives in the `meta` row; a node refuses a schema
//! newer than it knows (an older keycard must not write a layout it does
//! not understand), and migrates an older one forward in the same
//! transaction.

use tokio_postgres::Client;

use super::connect::unavailable;
use crate::types::StoreError;

/// The schema version this build writes.
pub const VERSION: i32 = 1;

/// The SQL of each table, `{s}` standing for the schema.
///
/// - `meta`, one row: the schema version, the last tock and the highest
///   tock dropped from the change log. Every write transaction locks it
///   first (`FOR UPDATE`), so writers from every node take turns, tocks
///   are handed out in commit order and a change visible anywhere is
///   never followed by a smaller tock.
/// - `data`: a node's path key (the order-preserving encoding, so the
///   primary key's byte order is path order), its tock and its msgpack
///   value.
/// - `log`: the change log, tock → path key and new value (`NULL`: the
///   node was deleted); the last `history` changes.
const CREATE_V1: &str = "
CREATE TABLE {s}.meta (
    id int PRIMARY KEY CHECK (id = 1),
    version int NOT NULL,
    tock bigint NOT NULL,
    pruned bigint NOT NULL
);
CREATE TABLE {s}.data (
    key bytea PRIMARY KEY,
    tock bigint NOT NULL,
    value bytea NOT NULL
);
CREATE TABLE {s}.log (
    tock bigint PRIMARY KEY,
    key bytea NOT NULL,
    value bytea
);
";

fn db(e: tokio_postgres::Error) -> StoreError {
    unavailable(&e)
}

/// Creates the schema `schema` and its tables, or checks and migrates
/// them; returns the last tock and the highest pruned tock.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<(u64, u64), StoreError> {
    let txn = client.transaction().await.map_err(db)?;
    txn.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[&format!("keycard schema {schema}")],
    )
    .await
    .map_err(db)?;
    txn.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .map_err(db)?;
    let meta = format!("{schema}.meta");
    let exists: Option<String> = txn
        .query_one("SELECT to_regclass($1)::text", &[&meta])
        .await
        .map_err(db)?
        .try_get(0)
        .map_err(db)?;
    if exists.is_none() {
        txn.batch_execute(&CREATE_V1.replace("{s}", schema))
            .await
            .map_err(db)?;
        txn.execute(
            &format!("INSERT INTO {meta} (id, version, tock, pruned) VALUES (1, $1, 0, 0)"),
            &[&VERSION],
        )
        .await
        .map_err(db)?;
    }
    let row = txn
        .query_opt(
            &format!("SELECT version, tock, pruned FROM {meta} WHERE id = 1"),
            &[],
        )
        .await
        .map_err(db)?
        .ok_or_else(|| {
            StoreError::Corrupt(format!("{meta} has no row: this schema is not keycard's"))
        })?;
    let version: i32 = row.try_get(0).map_err(db)?;
    if version > VERSION {
        return Err(StoreError::Backend(format!(
            "the database's keycard schema {schema:?} is version {version}, newer than this \
             keycard knows ({VERSION}): run a keycard at least as new as the one that wrote it"
        )));
    }
    // Migrations from older versions go here, in order, each bumping
    // `version` in this transaction.
    let (tock, pruned): (i64, i64) = (row.try_get(1).map_err(db)?, row.try_get(2).map_err(db)?);
    txn.commit().await.map_err(db)?;
    let tock = u64::try_from(tock).map_err(|_| StoreError::Corrupt("a negative tock".into()))?;
    let pruned =
        u64::try_from(pruned).map_err(|_| StoreError::Corrupt("a negative pruned tock".into()))?;
    Ok((tock, pruned))
}
