//! A lean pool of sqlx `PgConnection`s on deadpool.
//!
//! sqlx's own pool pings every connection on checkout and again on release;
//! that round trip halves point-operation throughput. Here a connection is
//! validated only after it sat idle past a window (HikariCP's
//! `aliveBypassWindowMs`). One that a cancelled future left dirty is
//! restored before anyone else gets it (rolled back, the replies still due
//! read), and one that failed at the transport level is discarded.

use std::ops::{Deref, DerefMut};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::error::PoolTimeout;

/// How connections are made and kept.
#[derive(Debug)]
pub(crate) struct Manager {
    options: PgConnectOptions,
    validate_after: Duration,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
}

impl Manager {
    pub(crate) fn new(
        options: PgConnectOptions,
        validate_after: Duration,
        max_lifetime: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Manager {
        Manager {
            options,
            validate_after,
            max_lifetime,
            idle_timeout,
        }
    }

    pub(crate) fn options(&self) -> &PgConnectOptions {
        &self.options
    }
}

/// A pooled connection, and whether an operation on it was cut off.
#[derive(Debug)]
pub(crate) struct Pooled {
    conn: PgConnection,
    /// Set when its future was dropped mid-operation: the server may be in a
    /// transaction sqlx does not know of (a BEGIN cut off before its answer),
    /// and replies may still be on their way.
    dirty: bool,
    /// Set when raw SQL may have changed its session (a `SET`, a `BEGIN`, a
    /// LISTEN, a checked-out connection): checked and reset before reuse.
    session_touched: bool,
    /// The tenant its session holds ([`PoolConnection::hold_tenant`]).
    tenant: SessionTenant,
}

/// The tenant a pooled session holds as a session setting: checked on
/// every checkout, so that a connection serves a tenant handle without a
/// transaction per statement and never serves anyone else with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionTenant {
    Known(Option<uuid::Uuid>),
    /// A change was sent but its answer not read (a cancelled checkout):
    /// set again before any use.
    Unknown,
}

impl managed::Manager for Manager {
    type Type = Pooled;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<Pooled, sqlx::Error> {
        Ok(Pooled {
            conn: self.connect().await?,
            dirty: false,
            session_touched: false,
            tenant: SessionTenant::Known(None),
        })
    }

    async fn recycle(&self, pooled: &mut Pooled, metrics: &Metrics) -> RecycleResult<sqlx::Error> {
        let expired = |limit: Option<Duration>, age: Duration| limit.is_some_and(|l| age > l);
        if expired(self.max_lifetime, metrics.age()) {
            return Err(RecycleError::message("past its maximum lifetime"));
        }
        if expired(self.idle_timeout, metrics.last_used()) {
            return Err(RecycleError::message("idle too long"));
        }
        let conn = &mut pooled.conn;
        if std::mem::take(&mut pooled.dirty) {
            // Harmless outside a transaction, it ends any left open; the
            // replies still due are read before it runs.
            conn.execute("ROLLBACK")
                .await
                .map_err(RecycleError::Backend)?;
        }
        if std::mem::take(&mut pooled.session_touched) {
            // A transaction left open by a raw BEGIN is invisible to sqlx,
            // whose count only knows its own: in it, now() is the time the
            // transaction began, not this statement's. Such a connection is
            // closed (which rolls that transaction back); any other gets its
            // session settings back.
            let rows = conn
                .fetch_all(sqlx::raw_sql(CHECK_AND_RESET_SESSION))
                .await
                .map_err(RecycleError::Backend)?;
            let idle = rows.first().and_then(|r| r.try_get::<bool, _>(0).ok());
            if idle != Some(true) {
                return Err(RecycleError::message("left inside a transaction"));
            }
            // RESET ALL took the tenant setting too.
            pooled.tenant = SessionTenant::Known(None);
        }
        // A dropped transaction queued its ROLLBACK: flush it.
        let queued = conn.should_flush() || conn.is_in_transaction();
        if queued || metrics.last_used() > self.validate_after {
            conn.ping().await.map_err(RecycleError::Backend)?;
            if conn.is_in_transaction() {
                return Err(RecycleError::message("left inside a transaction"));
            }
        }
        Ok(())
    }
}

/// What a pooled session is given back after caller-written SQL ran on it
/// (see [`crate::db::caller`]): what `DISCARD ALL` does, less `DEALLOCATE
/// ALL` (sqlx's statement cache stays valid), and allowed inside a
/// transaction block. Its temporary tables go too: one named like a record's
/// table would otherwise shadow it for the next user.
macro_rules! reset_session {
    () => {
        "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; \
         SELECT pg_advisory_unlock_all(); CLOSE ALL; DISCARD TEMP"
    };
}

/// The reset ([`reset_session!`]), on its own.
pub(crate) const RESET_SESSION: &str = reset_session!();

/// Through PgBouncer: the statements sqlx named in a transaction go before
/// it ends (its server connection is another client's next), then the reset.
pub(crate) const DEALLOCATE_AND_RESET: &str = concat!("DEALLOCATE ALL; ", reset_session!());

/// The reset, then `COMMIT`, in one round trip (a statement's transaction
/// behind PgBouncer).
pub(crate) const RESET_AND_COMMIT: &str = concat!(reset_session!(), "; COMMIT");

/// Whether the connection is outside any transaction, then the reset.
const CHECK_AND_RESET_SESSION: &str =
    concat!("SELECT now() = statement_timestamp(); ", reset_session!());

impl Manager {
    pub(crate) async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        crate::admin::connect(&self.options).await
    }
}

pub(crate) type Pool = managed::Pool<Manager>;

/// Opens connections until `min_idle` are idle (or the pool is full).
pub(crate) async fn top_up(pool: &Pool, min_idle: usize) {
    let status = pool.status();
    let missing = min_idle
        .saturating_sub(status.available)
        .min(status.max_size - status.size);
    if missing == 0 {
        return;
    }
    // Idle ones are handed out first: hold them all, so that the pool has
    // to open the missing ones, then give every one back.
    let mut held = Vec::new();
    for _ in 0..status.available + missing {
        match pool.get().await {
            Ok(conn) => held.push(conn),
            Err(_) => break,
        }
    }
}

/// Once a second, while the pool lives: drops idle connections past their
/// lifetime or idle timeout (checkout would, but only when asked), and tops
/// the idle ones back up to `min_idle`.
pub(crate) fn maintain(pool: &Pool, settings: &crate::config::Settings, min_idle: usize) {
    let weak = pool.weak();
    let (max_lifetime, idle_timeout) = (settings.max_lifetime, settings.idle_timeout);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(pool) = weak.upgrade() else { return };
            pool.retain(|_, metrics| {
                max_lifetime.is_none_or(|l| metrics.age() <= l)
                    && idle_timeout.is_none_or(|t| metrics.last_used() <= t)
            });
            top_up(&pool, min_idle).await;
        }
    });
}

/// A connection checked out of [`crate::Db`]'s pool; it goes back when
/// dropped. Derefs to sqlx's `PgConnection`, so `&mut *conn` is an executor.
pub struct PoolConnection {
    object: Option<Object<Manager>>,
    /// Set while `Db` runs something on it: dropped then (its future was
    /// cancelled), the connection is restored before its next use.
    in_flight: bool,
}

impl PoolConnection {
    pub(crate) fn new(object: Object<Manager>) -> PoolConnection {
        PoolConnection {
            object: Some(object),
            in_flight: false,
        }
    }

    /// Marks the start (`true`) or the end of an operation whose
    /// cancellation must cost the connection (see `in_flight`).
    pub(crate) fn set_in_flight(&mut self, in_flight: bool) {
        self.in_flight = in_flight;
    }

    /// Marks the connection's session as possibly changed by raw SQL: before
    /// its next use it is checked for an open transaction and reset.
    pub(crate) fn mark_session_touched(&mut self) {
        if let Some(object) = &mut self.object {
            object.session_touched = true;
        }
    }

    /// Runs `reset` ([`RESET_SESSION`] or [`DEALLOCATE_AND_RESET`]), inside
    /// a transaction that then commits or outside any. Until it is known to
    /// have taken effect, the tenant the session holds is unknown: set again
    /// before the next use.
    pub(crate) async fn reset_session(&mut self, reset: &'static str) -> Result<(), sqlx::Error> {
        let object = self.object.as_mut().expect("held until dropped");
        object.tenant = SessionTenant::Unknown;
        object.conn.execute(sqlx::raw_sql(reset)).await?;
        Ok(())
    }

    /// Makes the session hold `tenant` (none: no tenant) as its
    /// `mandrake.tenant` setting, with one round trip when it held another:
    /// on a direct connection, a tenant handle's statements then need no
    /// transaction of their own, and a handle without a tenant never runs
    /// on a session that still holds one.
    pub(crate) async fn hold_tenant(
        &mut self,
        tenant: Option<uuid::Uuid>,
    ) -> Result<(), sqlx::Error> {
        let object = self.object.as_mut().expect("held until dropped");
        if object.tenant == SessionTenant::Known(tenant) {
            return Ok(());
        }
        object.tenant = SessionTenant::Unknown;
        self.in_flight = true;
        let object = self.object.as_mut().expect("held until dropped");
        sqlx::query("SELECT set_config($1, $2, false)")
            .bind(crate::schema::TENANT_SETTING)
            .bind(tenant.map(|t| t.to_string()).unwrap_or_default())
            .execute(&mut object.conn)
            .await?;
        object.tenant = SessionTenant::Known(tenant);
        self.in_flight = false;
        Ok(())
    }

    /// Takes a connection that failed at the transport level out of the
    /// pool, so nobody else gets it.
    pub(crate) fn discard_if_broken(self, err: &sqlx::Error) {
        if is_broken(err) {
            self.discard();
        }
    }

    /// Closes the connection instead of giving it back.
    pub(crate) fn discard(mut self) {
        self.in_flight = false;
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
    }
}

impl Drop for PoolConnection {
    fn drop(&mut self) {
        if self.in_flight
            && let Some(object) = &mut self.object
        {
            object.dirty = true;
        }
    }
}

impl std::fmt::Debug for PoolConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConnection").finish_non_exhaustive()
    }
}

impl Deref for PoolConnection {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.object.as_ref().expect("held until dropped").conn
    }
}

impl DerefMut for PoolConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.object.as_mut().expect("held until dropped").conn
    }
}

/// Whether `err` is PostgreSQL refusing a statement this connection
/// prepared because a column it returns changed type since (a contract's
/// switch to `bigint`): refused before it ran, it runs once prepared again.
pub(crate) fn is_stale_statement(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|db| {
        db.code().as_deref() == Some("0A000")
            && db.message() == "cached plan must not change result type"
    })
}

/// Errors after which a connection cannot be trusted again: transport
/// failures, and a server that ended the session (a FATAL error such as
/// `57P01`, sent by a terminated backend just before it closes the socket,
/// or any connection exception, class `08`).
pub(crate) fn is_broken(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let fatal = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some_and(|pg| {
                    matches!(
                        pg.severity(),
                        sqlx::postgres::PgSeverity::Fatal | sqlx::postgres::PgSeverity::Panic
                    )
                });
            let code = db.code();
            fatal
                || code
                    .as_deref()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0"))
        }
        _ => false,
    }
}

/// How busy the pool is: see [`crate::Db::pool_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now.
    pub size: usize,
    /// Open connections waiting in the pool.
    pub idle: usize,
    /// Connections checked out.
    pub in_use: usize,
    /// Callers waiting for a connection.
    pub waiters: usize,
}

pub(crate) fn status(pool: &Pool) -> PoolStatus {
    let s = pool.status();
    PoolStatus {
        max_size: s.max_size,
        size: s.size,
        idle: s.available,
        in_use: s.size - s.available,
        waiters: s.waiting,
    }
}

/// A deadpool failure as the sqlx error the executor trait must return.
pub(crate) fn pool_error(
    err: managed::PoolError<sqlx::Error>,
    size: usize,
    waited: Duration,
) -> sqlx::Error {
    match err {
        managed::PoolError::Backend(e) => e,
        managed::PoolError::Timeout(managed::TimeoutType::Create) => {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting took longer than {waited:?}"),
            ))
        }
        // sqlx's own PoolTimedOut cannot say how big the pool was or how
        // long the caller waited: the driver-error variant carries both, and
        // `Error::from` turns it into `Error::PoolTimeout`.
        managed::PoolError::Timeout(_) => {
            sqlx::Error::AnyDriverError(Box::new(PoolTimeout { size, waited }))
        }
        managed::PoolError::Closed => sqlx::Error::PoolClosed,
        other => sqlx::Error::Configuration(other.to_string().into()),
    }
}
