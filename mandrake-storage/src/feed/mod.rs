//! Live changes of `#[record(notify)]` tables, decoded from the WAL: the
//! tables are in the `mandrake_feed` publication, and a logical replication
//! slot with the built-in `pgoutput` plugin reads their committed changes.
//! Nothing runs on the writer's path: no trigger, no NOTIFY.
//!
//! - [`Subscription`]: from now on. One decoding stream (a temporary slot)
//!   per [`Db`] serves every subscription of the process ([`hub`]).
//! - [`DurableSubscription`]: a named slot of its own that keeps its place
//!   across restarts ([`durable`]).
//!
//! The live stream reads its slot over a replication connection
//! ([`wal_stream`], over TLS where `sslmode` asks), which decodes each
//! change once; durable consumers read theirs through
//! `pg_logical_slot_*_binary_changes`, polled (which decodes again from the
//! slot's restart point on each read: see `docs/BENCHMARKS.md`).

mod durable;
mod hub;
mod pgoutput;
mod slots;
mod wal_stream;

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::stream::{BoxStream, StreamExt};
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnectOptions};
use sqlx::{Arguments, Connection, PgConnection, Row};
use uuid::Uuid;

pub use durable::DurableSubscription;
pub use slots::{SlotStatus, drop_consumer, feed_slots};

use crate::db::Db;
use crate::error::{Error, Result};
use crate::query::filter::{Filter, Node, bind_all, row_condition};
use crate::record::Record;
use crate::schema::{FEED_PUBLICATION, TableSchema, current_tenant_sql};
use crate::sql::quote_ident;
use pgoutput::Committed;

/// One change to a row of a `#[record(notify)]` table, as it committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// A row was inserted; this is the row as the commit wrote it.
    Inserted(T),
    /// A row was updated; this is the row as the commit wrote it. An update
    /// that moves a row out of the subscription's filter arrives too (the
    /// WAL keeps the row before it), with the row's new values: a
    /// subscriber drops the row it showed.
    Updated(T),
    /// The row with this id was deleted.
    Deleted(Uuid),
    /// Changes may be missing here (the feed's connection was lost, the
    /// subscriber fell too far behind, or the server dropped a slot's
    /// place): read again what the subscriber shows.
    Gap,
}

/// A change with the tenant whose row it is: what a subscription to every
/// tenant yields ([`Subscription::all_tenants`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantChange<T> {
    /// The row's tenant (its tenant column); `None` for a [`Change::Gap`],
    /// which may span every tenant.
    pub tenant: Option<Uuid>,
    /// The change.
    pub change: Change<T>,
}

/// What a subscription yields for each change: the change itself, or the
/// change with its tenant.
pub trait FeedEvent<T>: Send + 'static {
    /// `change`, of a row of `tenant` (when the subscription reads it).
    fn from_change(tenant: Option<Uuid>, change: Change<T>) -> Self;
}

impl<T: Send + 'static> FeedEvent<T> for Change<T> {
    fn from_change(_: Option<Uuid>, change: Change<T>) -> Self {
        change
    }
}

impl<T: Send + 'static> FeedEvent<T> for TenantChange<T> {
    fn from_change(tenant: Option<Uuid>, change: Change<T>) -> Self {
        TenantChange { tenant, change }
    }
}

/// A stream of the changes to `T`'s table, in commit order, from the moment
/// [`Subscription::start`] returned. Made by the derive's `T::subscribe`.
///
/// - Nothing arrives for a transaction that rolled back.
/// - Each event carries the row as that commit wrote it, decoded from the
///   WAL; the table is not read again.
/// - A lost decoding connection yields an `Err`, then [`Change::Gap`] once
///   it is back; a subscriber that falls more than 4,096 batches behind
///   gets a `Gap` too. Never a silent hole.
/// - The filter may use any column; a tenant handle's subscription sees
///   its own tenant's rows only, as row security would.
/// - Dropping the last subscription of a [`Db`] ends its decoding stream
///   and drops its slot.
///
/// ```no_run
/// # use futures_util::StreamExt;
/// # use mandrake_storage::{Change, Record};
/// # #[derive(Record, Clone)]
/// # #[record(notify)]
/// # pub struct Note { pub id: uuid::Uuid, pub body: String,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
/// let mut changes = Note::subscribe(db, mandrake_storage::Filter::all()).await?;
/// while let Some(change) = changes.next().await {
///     match change? {
///         Change::Inserted(note) | Change::Updated(note) => println!("{}", note.body),
///         Change::Deleted(id) => println!("{id} is gone"),
///         Change::Gap => { /* reload what is shown */ }
///     }
/// }
/// # Ok(()) }
/// ```
pub struct Subscription<T, E = Change<T>> {
    inner: BoxStream<'static, Result<E>>,
    _record: std::marker::PhantomData<fn() -> T>,
}

impl<T, E> std::fmt::Debug for Subscription<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl<T, E> Stream for Subscription<T, E> {
    type Item = Result<E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl<T: Record> Subscription<T> {
    /// Joins the process's decoding stream of `db` (starting it if needed)
    /// and returns once every change committed from now on will arrive.
    pub async fn start(db: &Db, filter: Filter<T>) -> Result<Subscription<T>> {
        Subscription::open(Decode::new(db, filter, Scope::Handle)?).await
    }

    /// **Trusted code only.** Every tenant's changes to `T`'s
    /// tenant-scoped table, each with its tenant: for a search indexer or
    /// an audit log that serves all tenants, which would otherwise need a
    /// subscription per tenant. It reads past row security, whatever
    /// tenant `db` acts for: never hand its events to a tenant's user.
    pub async fn all_tenants(
        db: &Db,
        filter: Filter<T>,
    ) -> Result<Subscription<T, TenantChange<T>>> {
        Subscription::open(Decode::new(db, filter, Scope::AllTenants)?).await
    }
}

impl<T: Record, E: FeedEvent<T>> Subscription<T, E> {
    async fn open(decode: Decode<T>) -> Result<Subscription<T, E>> {
        decode.check_published().await?;
        let receiver = hub::subscribe(&decode.db).await?;
        Ok(Subscription {
            inner: hub::stream(receiver, decode).boxed(),
            _record: std::marker::PhantomData,
        })
    }
}

/// Whose rows a subscription hears of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The handle's tenant's, as row security would show them (no tenant:
    /// none of a tenant-scoped table).
    Handle,
    /// Every tenant's, each change with its tenant (trusted code).
    AllTenants,
}

/// Turns decoded row changes of `T`'s table into [`Change`]s that pass the
/// filter: one statement a batch, on the subscriber's own handle (so its
/// tenant), reading no table. The batch is a JSON array of the rows, each
/// made a row of `T`'s table by `jsonb_populate_record` (the table's own
/// column types); an update is there twice, after and before (same seq),
/// and passes when either passes, so a row leaving the filter is heard of.
pub(crate) struct Decode<T> {
    db: Db,
    scope: Scope,
    sql: std::sync::Arc<str>,
    /// The filter's values, bound once; each batch is appended.
    args: PgArguments,
    _record: std::marker::PhantomData<fn() -> T>,
}

impl<T: Record> Decode<T> {
    pub(crate) fn new(db: &Db, filter: Filter<T>, scope: Scope) -> Result<Decode<T>> {
        let schema = T::schema();
        if !schema.feed {
            return Err(Error::Schema(format!(
                "table {} is not in the change feed: add #[record(notify)]",
                schema.name
            )));
        }
        let (node, values) = filter.into_parts();
        let sql = decode_sql(schema, &node, &T::columns("e"), scope);
        let mut args = PgArguments::default();
        bind_all(values, &mut args).map_err(sqlx::Error::Encode)?;
        Ok(Decode {
            db: db.clone(),
            scope,
            sql: sql.into(),
            args,
            _record: std::marker::PhantomData,
        })
    }

    /// Without its publication the stream would wait forever in silence.
    async fn check_published(&self) -> Result<()> {
        let table = &T::schema().name;
        let published: bool = crate::db::caller::ours(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables pt \
             JOIN pg_class c ON c.oid = to_regclass(quote_ident(pt.schemaname) || '.' || quote_ident(pt.tablename)) \
             WHERE pt.pubname = $1 AND pt.tablename = $2 AND c.relreplident = 'f')",
        )
        .bind(FEED_PUBLICATION)
        .bind(table)
        .fetch_one(&self.db))
        .await?;
        if published {
            return Ok(());
        }
        Err(Error::Schema(format!(
            "table {table} is not in the change feed's publication ({FEED_PUBLICATION}, with \
             REPLICA IDENTITY FULL) in this database: apply the migrations (`cargo xtask migrate`)"
        )))
    }

    /// The changes of `committed` to `T`'s table that pass the filter, in
    /// commit order; each transaction's changes are followed by `done(end)`.
    async fn changes<P>(
        &self,
        committed: &[impl std::ops::Deref<Target = Committed>],
        mut done: impl FnMut(u64) -> Option<P>,
        wrap: impl Fn(Option<Uuid>, Change<T>) -> P,
    ) -> Result<Vec<P>> {
        let table = T::schema().name.as_str();
        let mut batch = Vec::new();
        // Which transaction each seq belongs to, to put each `done` after its last change.
        let mut ends = Vec::with_capacity(committed.len());
        // A transaction that emptied the table: what a subscriber shows is
        // gone, which only a Gap (read it all again) says.
        let mut truncated = std::collections::HashSet::new();
        for tx in committed {
            for event in tx.events.iter().filter(|e| &*e.table == table) {
                if event.op == pgoutput::Op::Truncate {
                    truncated.insert(tx.end_lsn);
                    continue;
                }
                let seq = batch.len();
                let mut row = event.row.clone();
                row.insert("$seq".into(), seq.into());
                row.insert("$op".into(), event.op.as_str().into());
                batch.push(Value::Object(row));
                if let Some(old) = &event.old {
                    let mut old = old.clone();
                    old.insert("$seq".into(), seq.into());
                    old.insert("$old".into(), true.into());
                    batch.push(Value::Object(old));
                }
            }
            ends.push((batch.len(), tx.end_lsn));
        }
        let mut out = Vec::new();
        let mut rows = Vec::new();
        if !batch.is_empty() {
            let mut args = self.args.clone();
            args.add(sqlx::types::Json(batch))
                .map_err(sqlx::Error::Encode)?;
            let sql = sqlx::AssertSqlSafe(self.sql.clone());
            rows = crate::db::caller::ours(sqlx::query_with(sql, args).fetch_all(&self.db)).await?;
        }
        let mut rows = rows.into_iter().peekable();
        for (end_seq, end_lsn) in ends {
            while let Some(row) = rows.next_if(|r| r.get::<i64, _>(1) < end_seq as i64) {
                let op: &str = row.try_get(0)?;
                let change = match op {
                    "delete" => Change::Deleted(row.try_get(2)?),
                    "insert" => Change::Inserted(T::decode(&row, 3)?),
                    _ => Change::Updated(T::decode(&row, 3)?),
                };
                // Every tenant's: the row's tenant comes after its columns.
                let tenant = match (self.scope, &T::schema().tenant) {
                    (Scope::AllTenants, Some(_)) => row.try_get(3 + T::statements().names.len())?,
                    _ => None,
                };
                out.push(wrap(tenant, change));
            }
            if truncated.contains(&end_lsn) {
                out.push(wrap(None, Change::Gap));
            }
            out.extend(done(end_lsn));
        }
        Ok(out)
    }
}

/// The statement of [`Decode`]: the batch is `$n`, after the filter's
/// values; the filter's SQL applies to each row unchanged. A tenant-scoped
/// table keeps to the handle's tenant as its policy does (no tenant: no rows).
///
/// A row of the WAL may lack columns the table has now, and each is made
/// here as the table would make it:
/// - a generated column, which PostgreSQL does not publish: computed from
///   the row's other columns by its own expression;
/// - a column added after the change was written (an ordinary deploy):
///   its default, as `ADD COLUMN … DEFAULT` gave the rows of that time.
fn decode_sql(schema: &TableSchema, node: &Node, columns: &str, scope: Scope) -> String {
    let mut param = 0;
    let mut pass = match node {
        Node::All => "true".to_owned(),
        node => format!("({})", row_condition(schema, node, &mut param)),
    };
    // Whether the row is the subscriber's tenant's: a row an update moved
    // to another tenant is, to the one it left, deleted; its new values
    // are the other tenant's.
    let tenant = schema.tenant.as_deref().map(quote_ident);
    let (own, tenant_column) = match (&tenant, scope) {
        (Some(t), Scope::Handle) => (format!("{t} = {}", current_tenant_sql()), String::new()),
        (Some(t), Scope::AllTenants) => ("true".to_owned(), format!(", e.{t}")),
        (None, _) => ("true".to_owned(), String::new()),
    };
    if tenant.is_some() && scope == Scope::Handle {
        pass = format!("{pass} AND {own}");
    }
    let table = quote_ident(&schema.name);
    let row = schema
        .columns
        .iter()
        .map(|c| {
            let name = quote_ident(&c.name);
            match (&c.generated, &c.default) {
                (Some(expression), _) => format!("({expression}) AS {name}"),
                (None, Some(default)) => format!(
                    "CASE WHEN x.\"mandrake$change\" ? {} THEN r.{name} ELSE {default} END AS {name}",
                    crate::sql::quote_literal(&c.name)
                ),
                (None, None) => format!("r.{name}"),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    // Innermost, each change as a row of the table (missing columns made);
    // then, under the table's own name, so that the filter's SQL reads it
    // as it reads the table, whether it passes.
    format!(
        "SELECT CASE WHEN e.\"mandrake$own\" THEN e.\"mandrake$op\" ELSE 'delete' END, \
         e.\"mandrake$seq\", e.\"id\", {columns}{tenant_column} \
         FROM (SELECT {table}.*, \
         bool_or({pass}) OVER (PARTITION BY {table}.\"mandrake$seq\") AS \"mandrake$pass\", \
         {own} AS \"mandrake$own\" \
         FROM (SELECT {row}, x.\"mandrake$change\"->>'$op' AS \"mandrake$op\", \
         (x.\"mandrake$change\"->>'$seq')::int8 AS \"mandrake$seq\", \
         x.\"mandrake$change\" ? '$old' AS \"mandrake$old\" \
         FROM jsonb_array_elements(${batch}::jsonb) AS x(\"mandrake$change\") \
         CROSS JOIN LATERAL jsonb_populate_record(NULL::{qualified}, x.\"mandrake$change\") AS r) \
         AS {table}) e \
         WHERE e.\"mandrake$pass\" AND NOT e.\"mandrake$old\" ORDER BY e.\"mandrake$seq\"",
        batch = param + 1,
        qualified = crate::sql::quote_table(&schema.name),
    )
}

/// A connection for reading slots: to [`crate::Settings::feed_url`] (else
/// the server the handle reaches), checked for what logical decoding needs,
/// so that a server that cannot feed says why at once.
pub(crate) async fn connect(options: &PgConnectOptions) -> Result<PgConnection> {
    let mut conn = crate::admin::connect(options).await?;
    let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&mut conn)
        .await?;
    if wal_level != "logical" {
        let _ = conn.close().await;
        return Err(Error::WalLevel { current: wal_level });
    }
    // RDS and Aurora grant replication as membership in rds_replication.
    let (role, allowed): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper OR rolreplication \
           OR EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' \
             AND pg_has_role(current_user, g.oid, 'MEMBER')) \
         FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await?;
    if !allowed {
        let _ = conn.close().await;
        return Err(Error::FeedRole { role });
    }
    Ok(conn)
}

/// The rows since the slot's place, each one `pgoutput` message; `get`
/// consumes them, a peek leaves the place where it is.
async fn read_slot(
    conn: &mut PgConnection,
    slot: &str,
    consume: bool,
    limit: usize,
) -> std::result::Result<Vec<Vec<u8>>, sqlx::Error> {
    let sql = if consume {
        "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, $2, \
         'proto_version', '1', 'publication_names', 'mandrake_feed')"
    } else {
        "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, $2, \
         'proto_version', '1', 'publication_names', 'mandrake_feed')"
    };
    sqlx::query_scalar(sql)
        .bind(slot)
        .bind(i32::try_from(limit).unwrap_or(i32::MAX))
        .fetch_all(conn)
        .await
}

/// The transactions in `messages` that changed a published table.
fn committed(decoder: &mut pgoutput::Decoder, messages: &[Vec<u8>]) -> Result<Vec<Committed>> {
    let mut done = Vec::new();
    for message in messages {
        match decoder.read(message).map_err(Error::FeedInterrupted)? {
            Some(tx) if !tx.events.is_empty() => done.push(tx),
            _ => {}
        }
    }
    Ok(done)
}

/// 100 ms, 200 ms, … up to 5 s between reconnect attempts.
fn backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_millis((50u64 << failures.min(7)).min(5_000))
}

/// How long a reader waits after finding nothing new.
const IDLE_POLL: std::time::Duration = std::time::Duration::from_millis(5);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::filter::Column;
    use crate::schema::ColumnDef;

    struct M;
    const BODY: Column<M, String> = Column::new("body", 2);

    fn schema() -> TableSchema {
        TableSchema::new("messages")
            .with_column(ColumnDef::new("id", "UUID"))
            .with_column(ColumnDef::new("conversation_id", "UUID"))
            .with_column(ColumnDef::new("body", "TEXT"))
            .with_notify()
    }

    #[test]
    fn the_filter_applies_to_each_decoded_row_and_the_batch_comes_last() {
        let (node, _) = BODY.eq("x".to_owned()).into_parts();
        let sql = decode_sql(&schema(), &node, r#""e"."id""#, Scope::Handle);
        assert!(
            sql.contains(r#"bool_or(("body" = $1)) OVER (PARTITION BY "messages"."mandrake$seq")"#),
            "{sql}"
        );
        assert!(
            sql.contains(r#"jsonb_array_elements($2::jsonb) AS x("mandrake$change") CROSS JOIN LATERAL jsonb_populate_record(NULL::"public"."messages", x."mandrake$change") AS r) AS "messages""#),
            "{sql}"
        );
    }

    #[test]
    fn a_tenant_scoped_table_keeps_to_the_current_tenant() {
        let mut schema = schema();
        schema.tenant = Some("conversation_id".into());
        let sql = decode_sql(&schema, &Node::All, "", Scope::Handle);
        assert!(
            sql.contains(&format!(
                r#"true AND "conversation_id" = {}"#,
                current_tenant_sql()
            )),
            "{sql}"
        );
    }
}
