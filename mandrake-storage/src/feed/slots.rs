//! What the tools show and do about the feed's slots: each slot's lag, and
//! dropping a durable consumer that will not come back.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::durable::slot_name;
use crate::error::{Error, Result};

/// One replication slot of the database, as `cargo xtask db status` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotStatus {
    /// The slot: `mandrake_<consumer>` for a durable consumer,
    /// `mandrake_feed_…` for a process's live subscriptions.
    pub name: String,
    /// Whether a session is reading it at this moment.
    pub active: bool,
    /// Whether a consumer holds it, reading or waiting between its reads
    /// (a durable consumer polls, so `active` is mostly false while it runs).
    pub live: bool,
    /// Whether it outlives its session (a durable consumer's).
    pub durable: bool,
    /// WAL written since its place, in bytes.
    pub lag_bytes: i64,
    /// When the oldest change it has not confirmed committed (`None`: it
    /// is caught up, or a session held it while we looked).
    pub oldest_pending: Option<DateTime<Utc>>,
    /// The server's word on its WAL: `reserved`, `extended`, `unreserved`,
    /// or `lost` (given up: the consumer gets [`Error::SlotLost`]).
    pub wal_status: String,
}

/// Name, active, live, durable, lag in bytes, WAL status.
type SlotRow = (String, bool, bool, bool, Option<i64>, Option<String>);

/// The logical slots of the current database, durable consumers first.
pub async fn feed_slots(conn: &mut PgConnection) -> Result<Vec<SlotStatus>> {
    // A durable consumer's session holds its advisory lock while it lives.
    let sql = format!(
        "SELECT slot_name::text, active, active OR EXISTS (SELECT 1 FROM pg_locks l WHERE {}), \
         NOT temporary, \
         pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, wal_status \
         FROM pg_replication_slots WHERE database = current_database() AND slot_type = 'logical' \
         ORDER BY temporary, slot_name",
        super::durable::consumer_lock_held("slot_name::text")
    );
    let rows: Vec<SlotRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await?;
    let mut slots = Vec::with_capacity(rows.len());
    for (name, active, live, durable, lag, wal_status) in rows {
        let wal_status = wal_status.unwrap_or_default();
        // The first pending transaction's Begin holds its commit time; a
        // slot in use or given up cannot be peeked.
        let oldest_pending = if active || wal_status == "lost" {
            None
        } else {
            let first: Option<Vec<u8>> = sqlx::query_scalar(
                "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, 1, \
                 'proto_version', '1', 'publication_names', 'mandrake_feed') LIMIT 1",
            )
            .bind(&name)
            .fetch_optional(&mut *conn)
            .await
            .ok()
            .flatten();
            first.as_deref().and_then(super::pgoutput::begin_time)
        };
        slots.push(SlotStatus {
            name,
            active,
            live,
            durable,
            lag_bytes: lag.unwrap_or(0),
            oldest_pending,
            wal_status,
        });
    }
    Ok(slots)
}

/// Drops durable consumer `name`'s slot, and with it what it had not
/// acknowledged: the server may recycle that WAL. A consumer that starts
/// again under the name begins from then. A consumer running now, even
/// between its reads, is not dropped: [`Error::ConsumerBusy`] names it.
pub async fn drop_consumer(conn: &mut PgConnection, name: &str) -> Result<()> {
    let slot = slot_name(name)?;
    // Held while dropping, so no consumer starts meanwhile; released after.
    super::durable::claim(conn, &slot).await?;
    let dropped = drop_slot(conn, name, &slot).await;
    let unlock = format!(
        "SELECT pg_advisory_unlock({})",
        super::durable::CONSUMER_LOCK
    );
    sqlx::query(sqlx::AssertSqlSafe(unlock))
        .bind(&slot)
        .execute(&mut *conn)
        .await?;
    dropped
}

async fn drop_slot(conn: &mut PgConnection, name: &str, slot: &str) -> Result<()> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 \
         AND database = current_database())",
    )
    .bind(slot)
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Err(Error::Config(format!(
            "no durable consumer {name} (slot {slot}) in this database"
        )));
    }
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(slot)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
