//! A consumer that keeps its place: a named, permanent slot that the server
//! holds the WAL for until the consumer acknowledges what it handled.

use std::collections::VecDeque;

use sqlx::PgConnection;
use sqlx::postgres::PgConnectOptions;

use super::pgoutput::{Decoder, lsn_text};
use super::{Change, Decode, IDLE_POLL, Scope, backoff, committed, connect, read_slot};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::query::filter::Filter;
use crate::record::Record;

/// The changes to `T`'s table since this consumer last acknowledged, and
/// on: made by the derive's `T::subscribe_durable(&db, "name", filter)`.
///
/// - Its place is a logical replication slot named `mandrake_<name>` that
///   outlives the process: after a restart (or a crash) every change
///   committed since the last [`ack`](DurableSubscription::ack) arrives,
///   in commit order. What was received but not acknowledged arrives again.
/// - `ack` confirms every transaction whose changes [`recv`] has all
///   returned; the server may then recycle that WAL. Acknowledge often: the
///   WAL behind the slot is kept until then (up to the server's
///   `max_slot_wal_keep_size`, past which the server gives the place up:
///   [`Error::SlotLost`], then [`Change::Gap`]).
/// - `cargo xtask db status` shows each consumer's lag; `cargo xtask db
///   drop-consumer NAME` removes one that will not come back.
///
/// [`recv`]: DurableSubscription::recv
///
/// ```no_run
/// # use mandrake_storage::{Change, Record};
/// # #[derive(Record, Clone)]
/// # #[record(notify)]
/// # pub struct Note { pub id: uuid::Uuid, pub body: String,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
/// let mut changes = Note::subscribe_durable(db, "search_indexer", mandrake_storage::Filter::all()).await?;
/// loop {
///     match changes.recv().await? {
///         Change::Inserted(note) | Change::Updated(note) => println!("index {}", note.body),
///         Change::Deleted(id) => println!("unindex {id}"),
///         Change::Gap => { /* rebuild the index */ }
///     }
///     changes.ack().await?;
/// }
/// # }
/// ```
pub struct DurableSubscription<T> {
    options: PgConnectOptions,
    /// `None` after a failure, until the next `recv` reconnects.
    conn: Option<PgConnection>,
    slot: String,
    decoder: Decoder,
    decode: Decode<T>,
    pending: VecDeque<Pending<T>>,
    /// The end of the last transaction `recv` has returned all of.
    delivered: u64,
    /// What the slot has confirmed.
    acked: u64,
    /// Changes read since the last ack: a peek returns them again.
    unacked: usize,
    failures: u32,
    /// Reads refused in a row because another session held the slot.
    busy: u32,
    gap_next: bool,
}

/// How long a consumer waits for its slot while another session holds it
/// (`MAX_BUSY` pauses): then it is an error (two consumers of one name?).
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);
const MAX_BUSY: u32 = 50;

/// `object_in_use`: the slot is active for another process.
fn in_use(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55006")
}

enum Pending<T> {
    Change(Change<T>),
    /// A transaction's changes are all out: its end position.
    Done(u64),
}

impl<T> std::fmt::Debug for DurableSubscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// The slot of consumer `name`; names are what a slot may be named.
pub(crate) fn slot_name(name: &str) -> Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 54
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid {
        return Err(Error::Config(format!(
            "consumer name {name:?}: use 1 to 54 lowercase letters, digits and underscores"
        )));
    }
    Ok(format!("mandrake_{name}"))
}

impl<T: Record> DurableSubscription<T> {
    /// Opens consumer `name`, creating its slot the first time (its place
    /// is then the moment this returns).
    pub async fn start(db: &Db, name: &str, filter: Filter<T>) -> Result<DurableSubscription<T>> {
        let slot = slot_name(name)?;
        let decode = Decode::new(db, filter, Scope::Handle)?;
        decode.check_published().await?;
        let options = db.feeds().options(db)?;
        let mut conn = connect(&options).await?;
        claim(&mut conn, &slot).await?;
        create_slot(&mut conn, &slot).await?;
        Ok(DurableSubscription {
            options,
            conn: Some(conn),
            slot,
            decoder: Decoder::default(),
            decode,
            pending: VecDeque::new(),
            delivered: 0,
            acked: 0,
            unacked: 0,
            failures: 0,
            busy: 0,
            gap_next: false,
        })
    }

    /// The next change, waiting for one to commit. An `Err` leaves the
    /// consumer usable: the next call reconnects and goes on from the last
    /// acknowledged place (what came since arrives again).
    pub async fn recv(&mut self) -> Result<Change<T>> {
        loop {
            match self.pending.pop_front() {
                Some(Pending::Change(change)) => {
                    // The last change of its transaction: the transaction is out.
                    while let Some(Pending::Done(end)) = self.pending.front() {
                        self.delivered = *end;
                        self.pending.pop_front();
                    }
                    return Ok(change);
                }
                Some(Pending::Done(end)) => {
                    self.delivered = end;
                    continue;
                }
                None => {}
            }
            if std::mem::take(&mut self.gap_next) {
                return Ok(Change::Gap);
            }
            let conn = match &mut self.conn {
                Some(conn) => conn,
                None => {
                    tokio::time::sleep(backoff(self.failures)).await;
                    let conn = connect(&self.options).await;
                    let mut conn = self.failed_on(conn)?;
                    claim(&mut conn, &self.slot).await?;
                    // Unacknowledged changes come again: the place is the slot's.
                    (self.decoder, self.delivered) = (Decoder::default(), self.acked);
                    self.conn.insert(conn)
                }
            };
            let limit = self.unacked + 1000;
            let messages = read_slot(conn, &self.slot, false, limit).await;
            let messages = match messages {
                Ok(messages) => messages,
                // The slot is busy: most often the backend of a consumer
                // process that was just killed, still finishing its read.
                Err(err) if in_use(&err) && self.busy < MAX_BUSY => {
                    self.busy += 1;
                    tokio::time::sleep(BUSY_PAUSE).await;
                    continue;
                }
                Err(err) => return Err(self.read_failed(err).await),
            };
            self.busy = 0;
            self.failures = 0;
            let fresh: Vec<_> = committed(&mut self.decoder, &messages)?
                .into_iter()
                .filter(|tx| tx.end_lsn > self.delivered)
                .collect();
            if fresh.is_empty() {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            self.unacked += fresh.iter().map(|tx| tx.events.len()).sum::<usize>();
            let refs: Vec<_> = fresh.iter().collect();
            let items = self
                .decode
                .changes(
                    &refs,
                    |end| Some(Pending::Done(end)),
                    |_, c| Pending::Change(c),
                )
                .await?;
            self.pending.extend(items);
        }
    }

    /// Confirms every transaction whose changes `recv` has all returned:
    /// after a restart they do not come again.
    pub async fn ack(&mut self) -> Result<()> {
        if self.delivered <= self.acked {
            return Ok(());
        }
        let Some(conn) = &mut self.conn else {
            return Err(Error::FeedInterrupted(
                "the consumer's connection is down: recv reconnects".into(),
            ));
        };
        sqlx::query("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)")
            .bind(&self.slot)
            .bind(lsn_text(self.delivered))
            .execute(conn)
            .await?;
        (self.acked, self.unacked) = (self.delivered, 0);
        Ok(())
    }

    fn failed_on<V>(&mut self, outcome: Result<V>) -> Result<V> {
        if outcome.is_err() {
            self.failures += 1;
        }
        outcome
    }

    /// After a failed read: a slot the server gave up becomes a new one
    /// and a `Gap`; anything else reconnects at the next `recv`.
    async fn read_failed(&mut self, err: sqlx::Error) -> Error {
        let conn = self.conn.as_mut().expect("read on a connection");
        let lost: Option<bool> = sqlx::query_scalar(
            "SELECT wal_status = 'lost' FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&self.slot)
        .fetch_optional(&mut *conn)
        .await
        .ok()
        .flatten();
        if lost == Some(true) {
            let renewed = async {
                sqlx::query("SELECT pg_drop_replication_slot($1)")
                    .bind(&self.slot)
                    .execute(&mut *conn)
                    .await?;
                create_slot(conn, &self.slot).await
            }
            .await;
            if renewed.is_ok() {
                self.pending.clear();
                (self.decoder, self.delivered, self.acked, self.unacked) =
                    (Decoder::default(), 0, 0, 0);
                self.gap_next = true;
                return Error::SlotLost {
                    slot: self.slot.clone(),
                };
            }
        }
        tracing::warn!(target: "mandrake_storage", slot = %self.slot, error = %err,
            "durable change feed interrupted");
        self.conn = None;
        self.failures += 1;
        self.pending.clear();
        err.into()
    }
}

/// The session advisory lock a live consumer of `slot` holds for as long
/// as its connection lives (the key as SQL, from the bound slot name).
pub(crate) const CONSUMER_LOCK: &str = "hashtextextended('mandrake consumer ' || $1, 0)";

/// The condition on `pg_locks l` that it is granted in this database:
/// `slot` is the SQL of the slot's name.
pub(crate) fn consumer_lock_held(slot: &str) -> String {
    format!(
        "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((l.classid::int8 << 32) | l.objid::int8) = {}",
        CONSUMER_LOCK.replace("$1", slot)
    )
}

/// Makes this connection the one live consumer of `slot`: its session holds
/// the consumer's advisory lock until it closes (a killed process's too, once
/// the server sees it gone). A second consumer of the name would read the
/// slot between the first one's reads, and each would get some of the
/// changes: it is refused with [`Error::ConsumerBusy`], naming the holder.
pub(crate) async fn claim(conn: &mut PgConnection, slot: &str) -> Result<()> {
    let sql = format!("SELECT pg_try_advisory_lock({CONSUMER_LOCK})");
    // A consumer restarted after a kill may find its old backend still
    // finishing: it is given 2 s to go.
    for attempt in 0..=10 {
        let got: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()))
            .bind(slot)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            return Ok(());
        }
        if attempt < 10 {
            tokio::time::sleep(BUSY_PAUSE).await;
        }
    }
    let holder: Option<(i32, String, Option<String>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT a.pid, a.application_name, host(a.client_addr) FROM pg_locks l \
             JOIN pg_stat_activity a ON a.pid = l.pid WHERE {} LIMIT 1",
            consumer_lock_held("$1")
        )))
        .bind(slot)
        .fetch_optional(&mut *conn)
        .await?;
    Err(Error::ConsumerBusy {
        name: slot.trim_start_matches("mandrake_").to_owned(),
        holder: holder.map(|(pid, app, addr)| {
            let from = addr.map(|a| format!(" from {a}")).unwrap_or_default();
            format!("backend pid {pid}, application {app:?}{from}")
        }),
    })
}

async fn create_slot(conn: &mut PgConnection, slot: &str) -> Result<()> {
    sqlx::query(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput') \
         WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(slot)
    .execute(conn)
    .await?;
    Ok(())
}
