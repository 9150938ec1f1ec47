//! Live changes of `#[record(notify)]` tables: a LISTEN on the table's
//! channel, the changed rows fetched in batches, and a [`Change::Gap`] where
//! events may have been missed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::FutureExt;
use futures_util::stream::{self, BoxStream, StreamExt};
use sqlx::postgres::{PgArguments, PgListener, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{Acquire, Arguments, Row};
use uuid::Uuid;

use crate::db::Db;
use crate::error::{Error, Result};
use crate::query::filter::{Filter, Node, bind_all, where_clause};
use crate::record::Record;
use crate::schema::TableSchema;
use crate::sql::quote_ident;

/// One change to a row of a `#[record(notify)]` table, as it committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<T> {
    /// A row was inserted; this is the row as it is when fetched.
    Inserted(T),
    /// A row was updated; this is the row as it is when fetched. An update
    /// that moves a row out of the subscription's filter arrives too, with
    /// the row's new values: a subscriber drops the row it showed.
    Updated(T),
    /// The row with this id was deleted.
    Deleted(Uuid),
    /// The connection was lost and is back: changes made meanwhile may be
    /// missing, so read again what the subscriber shows.
    Gap,
}

/// The most notifications turned into one fetch.
const MAX_BATCH: usize = 1000;

/// A stream of the changes to `T`'s table, in commit order, from the moment
/// [`Subscription::start`] returned. Made by the derive's `T::subscribe`.
///
/// - It listens on its own connection, and reconnects by itself: a lost
///   connection yields [`Change::Gap`] (after an `Err` if reconnecting
///   failed for a while), never a silent hole.
/// - Nothing arrives for a transaction that rolled back.
/// - Notifications that are waiting are turned into rows by one query.
/// - An insert or update whose row was deleted before it was fetched is left
///   out: its [`Change::Deleted`] follows.
/// - Dropping the stream ends the LISTEN.
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
pub struct Subscription<T> {
    inner: BoxStream<'static, Result<Change<T>>>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl<T> Stream for Subscription<T> {
    type Item = Result<Change<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

impl<T: Record> Subscription<T> {
    /// LISTENs on `T`'s channel and returns once the LISTEN is in place.
    /// `filter` may use `id` and the columns the notifications carry (the
    /// foreign keys); another column is `Error::Schema`.
    pub async fn start(db: &Db, filter: Filter<T>) -> Result<Subscription<T>> {
        // Behind PgBouncer the LISTEN needs the server itself (or is refused
        // here): on a pooled server connection it would hand notifications to
        // other clients' queries.
        let options = db.session_options("the change feed (subscribe)")?;
        let schema = T::schema();
        let filter = match (db.current_tenant(), &schema.tenant) {
            // Row security hides another tenant's rows but not its
            // notifications' keys: a tenant's feed keeps to its own.
            (Some(tenant), Some(column)) => {
                let index = schema
                    .columns
                    .iter()
                    .position(|c| c.name == *column)
                    .expect("the tenant column is a column");
                crate::Column::<T, Uuid>::new(&schema.columns[index].name, index)
                    .eq(tenant)
                    .and(filter)
            }
            _ => filter,
        };
        let (node, values) = filter.into_parts();
        let sql = fetch_sql(schema, &node, &T::columns("t"))?;
        let mut args = PgArguments::default();
        bind_all(values, &mut args).map_err(sqlx::Error::Encode)?;
        // Without the triggers the stream would wait forever in silence.
        let installed: bool = sqlx::query_scalar(
            "SELECT count(*) = 3 FROM pg_trigger WHERE tgrelid = to_regclass($1) \
             AND tgname IN ('notify_insert', 'notify_update', 'notify_delete')",
        )
        .bind(quote_ident(&schema.name))
        .fetch_one(db)
        .await?;
        if !installed {
            return Err(Error::Schema(format!(
                "table {} lacks its notify triggers in this database: apply the \
                 migrations (`cargo xtask migrate`)",
                schema.name
            )));
        }

        // A pool of one, so that PgListener can reconnect by itself.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .acquire_timeout(db.acquire_timeout())
            .connect_with(options)
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(&schema.notify_channel()).await?;

        let state = State {
            listener,
            db: db.clone(),
            sql: sql.into(),
            args,
            pending: VecDeque::new(),
            failures: 0,
        };
        Ok(Subscription {
            inner: stream::unfold(state, State::next).boxed(),
        })
    }
}

/// The query turning a batch of notifications into changes. The batch is
/// one JSON array (`$n`, after the filter's values), read as a table named
/// like `T`'s, so that the filter's SQL applies to it unchanged. An update
/// is in the batch twice, with its keys after and before (same `seq`): it
/// passes when either does, so a row leaving the filter is heard of too.
fn fetch_sql(schema: &TableSchema, node: &Node, columns: &str) -> Result<String> {
    let Some(keys) = &schema.notify else {
        return Err(Error::Schema(format!(
            "table {} has no change notifications: add #[record(notify)]",
            schema.name
        )));
    };
    let carried = |column: usize| {
        let name = &schema.columns[column].name;
        name == "id" || keys.contains(name)
    };
    if let Some(column) = columns_of(node).into_iter().find(|c| !carried(*c)) {
        return Err(Error::Schema(format!(
            "a subscription to {} can filter on id and {}, the columns its notifications \
             carry, not on {}",
            schema.name,
            keys.join(", "),
            schema.columns[column].name
        )));
    }
    let typed: Vec<String> = std::iter::once("id")
        .chain(keys.iter().map(String::as_str))
        .map(|name| {
            let sql_type = schema.column(name).map_or("UUID", |c| c.sql_type.as_str());
            format!("{} {sql_type}", quote_ident(name))
        })
        .collect();
    let mut param = 0;
    let condition = where_clause(schema, node, &mut param);
    let table = quote_ident(&schema.name);
    Ok(format!(
        "SELECT e.op, e.id, t.id IS NOT NULL, {columns} \
         FROM (SELECT DISTINCT ON (seq) * FROM jsonb_to_recordset(${batch}::jsonb) \
         AS {table}(seq INT8, op TEXT, {typed}){condition} ORDER BY seq) e \
         LEFT JOIN {table} t ON t.id = e.id ORDER BY e.seq",
        batch = param + 1,
        typed = typed.join(", "),
    ))
}

/// The columns a filter reads.
fn columns_of(node: &Node) -> Vec<usize> {
    match node {
        Node::All => Vec::new(),
        Node::Compare { column, .. } => vec![*column],
        Node::And(parts) | Node::Or(parts) => parts.iter().flat_map(columns_of).collect(),
        Node::Not(inner) => columns_of(inner),
        Node::Related { column, .. } => vec![*column],
    }
}

/// A subscription between two items.
struct State<T> {
    listener: PgListener,
    db: Db,
    sql: Arc<str>,
    /// The filter's values, bound once; each fetch appends its batch.
    args: PgArguments,
    pending: VecDeque<Change<T>>,
    /// Failed attempts since the last good one: while above zero, the next
    /// item is a reconnect, then a [`Change::Gap`].
    failures: u32,
}

impl<T: Record> State<T> {
    async fn next(mut self) -> Option<(Result<Change<T>>, State<T>)> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Some((Ok(change), self));
            }
            if self.failures > 0 {
                tokio::time::sleep(backoff(self.failures)).await;
                return match (&mut self.listener).acquire().await {
                    Ok(_) => {
                        self.failures = 0;
                        Some((Ok(Change::Gap), self))
                    }
                    Err(err) => self.failed(err.into()),
                };
            }
            match self.listener.try_recv().await {
                Ok(Some(first)) => {
                    let mut batch = vec![first];
                    let mut lost = None;
                    // Whatever else has arrived joins the batch. `next_buffered`
                    // alone sees only what came in while the listener ran a
                    // query, so the socket is polled too, without waiting
                    // (`try_recv` is cancel-safe: a message half-read stays
                    // in the buffer).
                    while batch.len() < MAX_BATCH {
                        let more = match self.listener.next_buffered() {
                            Some(more) => Some(more),
                            None => match self.listener.try_recv().now_or_never() {
                                Some(Ok(Some(more))) => Some(more),
                                None => None,
                                // Lost (and reconnected, or not): after this
                                // batch, a Gap, or the reconnect loop's.
                                Some(Ok(None)) => {
                                    lost = Some(None);
                                    None
                                }
                                Some(Err(err)) => {
                                    lost = Some(Some(err));
                                    None
                                }
                            },
                        };
                        match more {
                            Some(more) => batch.push(more),
                            None => break,
                        }
                    }
                    let payloads = batch.iter().map(|n| n.payload()).collect::<Vec<_>>();
                    match fetch::<T>(&self.db, &self.sql, &self.args, &payloads).await {
                        Ok(changes) => self.pending.extend(changes),
                        // The batch is lost: say so, then a Gap.
                        Err(err) => return self.failed(err),
                    }
                    match lost {
                        None => {}
                        Some(None) => self.pending.push_back(Change::Gap),
                        Some(Some(err)) => {
                            tracing::warn!(target: "mandrake_storage", error = %err,
                                "change feed interrupted");
                            // The reconnect below yields the Gap.
                            self.failures += 1;
                        }
                    }
                }
                // Lost and already reconnected (sqlx's eager reconnect).
                Ok(None) => {
                    tracing::warn!(target: "mandrake_storage", channel = self.listener_channel(),
                        "change feed reconnected; changes may have been missed");
                    return Some((Ok(Change::Gap), self));
                }
                Err(err) => return self.failed(err.into()),
            }
        }
    }

    fn failed(mut self, err: Error) -> Option<(Result<Change<T>>, State<T>)> {
        tracing::warn!(target: "mandrake_storage", channel = self.listener_channel(),
            error = %err, "change feed interrupted");
        self.failures += 1;
        Some((Err(err), self))
    }

    fn listener_channel(&self) -> String {
        T::schema().notify_channel()
    }
}

/// The changes `payloads` announce that pass the filter, in their order.
async fn fetch<T: Record>(
    db: &Db,
    sql: &Arc<str>,
    args: &PgArguments,
    payloads: &[&str],
) -> Result<Vec<Change<T>>> {
    let mut events = Vec::with_capacity(payloads.len());
    for (seq, payload) in payloads.iter().enumerate() {
        let mut event: serde_json::Map<String, serde_json::Value> = serde_json::from_str(payload)
            .map_err(|e| {
            Error::Schema(format!("unexpected change notification {payload:?}: {e}"))
        })?;
        event.insert("seq".into(), seq.into());
        if let Some(serde_json::Value::Object(old)) = event.remove("old") {
            let mut before = event.clone();
            before.extend(old);
            events.push(before);
        }
        events.push(event);
    }
    let mut args = args.clone();
    args.add(Json(events)).map_err(sqlx::Error::Encode)?;
    let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql.clone()), args)
        .fetch_all(db)
        .await?;
    let mut changes = Vec::with_capacity(rows.len());
    for row in rows {
        let op: String = row.try_get(0)?;
        let found: bool = row.try_get(2)?;
        let change = match (op.as_str(), found) {
            ("delete", _) => Change::Deleted(row.try_get(1)?),
            ("insert", true) => Change::Inserted(T::decode(&row, 3)?),
            ("update", true) => Change::Updated(T::decode(&row, 3)?),
            // Deleted since; its Deleted event follows.
            _ => continue,
        };
        changes.push(change);
    }
    Ok(changes)
}

/// 100 ms, 200 ms, … up to 5 s between reconnect attempts.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis((50u64 << failures.min(7)).min(5_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::filter::Column;
    use crate::schema::{ColumnDef, OnDelete};

    struct M;
    const CONVERSATION: Column<M, Uuid> = Column::new("conversation_id", 1);
    const BODY: Column<M, String> = Column::new("body", 2);

    fn schema() -> TableSchema {
        TableSchema::new("messages")
            .with_column(ColumnDef::new("id", "UUID"))
            .with_column(ColumnDef::new("conversation_id", "UUID"))
            .with_column(ColumnDef::new("body", "TEXT"))
            .with_foreign_key("conversation_id", "conversations", OnDelete::Cascade)
            .with_notify()
    }

    #[test]
    fn the_filter_applies_to_the_batch_and_the_batch_comes_last() {
        let (node, _) = CONVERSATION.eq(Uuid::nil()).into_parts();
        let sql = fetch_sql(&schema(), &node, "").unwrap();
        assert!(
            sql.contains(r#"jsonb_to_recordset($2::jsonb) AS "messages"(seq INT8, op TEXT, "id" UUID, "conversation_id" UUID) WHERE "conversation_id" = $1 ORDER BY seq"#),
            "{sql}"
        );
    }

    #[test]
    fn a_filter_on_a_column_not_carried_is_refused() {
        let (node, _) = BODY.eq("x").into_parts();
        let err = fetch_sql(&schema(), &node, "").unwrap_err().to_string();
        assert!(err.contains("not on body"), "{err}");
        let plain = TableSchema::new("t").with_column(ColumnDef::new("id", "UUID"));
        let err = fetch_sql(&plain, &Node::All, "").unwrap_err().to_string();
        assert!(err.contains("#[record(notify)]"), "{err}");
    }
}
