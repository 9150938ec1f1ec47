//! The handle an application holds: `Db`, a lean pool of sqlx connections
//! configured from [`Settings`], with its transactions, its executor (so `&Db`
//! goes wherever a sqlx executor goes) and its read replicas. It knows
//! nothing of the embedded cluster: [`Settings::resolve_url`] is the one seam.

pub(crate) mod caller;
pub(crate) mod dry_run;
pub(crate) mod executor;
pub(crate) mod pool;
pub(crate) mod replica;
pub(crate) mod transaction;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize};
use std::time::Duration;

pub use futures_core::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgTransactionManager};
use sqlx::{AssertSqlSafe, SqlSafeStr};
use sqlx_core::transaction::TransactionManager;

use crate::admin::connect_options;
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::url::strip_pgbouncer;
use pool::{Manager, Pool, PoolConnection, PoolStatus, pool_error};
use transaction::Transaction;

/// How many times [`Db::transaction`] tries a transaction that keeps
/// failing with a serialization failure or deadlock.
pub const MAX_ATTEMPTS: u32 = 8;

/// Transaction isolation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// PostgreSQL's default: each statement sees what was committed before it began.
    ReadCommitted,
    /// The whole transaction sees one snapshot.
    RepeatableRead,
    /// As if the transactions ran one at a time; may fail with a retryable error.
    Serializable,
}

impl Isolation {
    /// The `BEGIN` that opens a transaction at this level. The level goes on
    /// the `BEGIN` itself: behind PgBouncer the opening also sets the tenant
    /// with a `SELECT`, after which PostgreSQL refuses `SET TRANSACTION`.
    fn begin(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        }
    }
}

/// 5 ms, 10 ms, 20 ms … (capped), each with up to 100% random extra so that
/// the transactions that collided do not collide again in step.
fn backoff(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(7);
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * base / 255;
    Duration::from_millis(base + jitter)
}

/// The application's handle on the database: a lean connection pool.
///
/// `&Db` is a sqlx executor, so it goes wherever a `&PgPool` goes; every
/// repository method takes it, a checked-out connection ([`Db::acquire`]), or
/// a transaction ([`Db::begin`]).
///
/// ```no_run
/// # async fn demo() -> mandrake_storage::Result<()> {
/// let db = mandrake_storage::Db::connect().await?; // DATABASE_URL, else the embedded cluster
/// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    acquire_timeout: Duration,
    /// Behind PgBouncer in transaction mode.
    pgbouncer: bool,
    /// The statement timeout behind PgBouncer (elsewhere a startup option).
    timeout_ms: Option<Arc<str>>,
    /// What the handle acts for ([`Db::tenant`]).
    tenant: Option<uuid::Uuid>,
    /// When each statement needs a transaction of its own (behind
    /// PgBouncer, or for a tenant): what opens it, in one round trip
    /// (`BEGIN`, the statement timeout, the tenant).
    begin: Option<Arc<str>>,
    /// The read replicas, when there are any ([`Db::read`]).
    pub(crate) replicas: Option<Arc<Replicas>>,
    /// On a replica's pool: the primary, for a read the replica cannot serve.
    primary: Option<Arc<Fallback>>,
    /// In PgBouncer mode: the server itself ([`Settings::direct_url`]).
    direct: Option<Arc<PgConnectOptions>>,
    /// The change feed: where it reads slots, and its decoding stream.
    feeds: Arc<Feeds>,
    /// Row security as the pool's role meets it.
    row_security: RowSecurity,
}

/// Whether the pool's role bypasses row security, and whether this handle
/// was told that is meant ([`Db::bypassing_row_security`]).
#[derive(Debug, Clone, Default)]
struct RowSecurity {
    /// The role, when it is a superuser, has `BYPASSRLS`, or owns a
    /// tenant-scoped table. Read at connect when it does; otherwise again
    /// at a tenant handle's first call, since the migrations that make the
    /// tables often run after the pool connects (on the same role).
    bypassed_by: Arc<tokio::sync::OnceCell<Option<Arc<str>>>>,
    /// Trusted code asked for that.
    bypass_meant: bool,
}

impl RowSecurity {
    /// A tenant handle on a role that bypasses row security would see every
    /// tenant's rows: refused, unless meant. `db` is the handle; the
    /// catalog is asked without its tenant.
    async fn check(&self, db: &Db) -> Result<()> {
        if db.tenant.is_none() || self.bypass_meant {
            return Ok(());
        }
        let ask = || async {
            let mut untenanted = db.clone();
            untenanted.tenant = None;
            row_security_bypassed_by(&untenanted).await
        };
        let role = self.bypassed_by.get_or_try_init(ask).await?;
        match role {
            Some(role) => Err(Error::RowSecurityBypassed {
                role: role.to_string(),
            }),
            None => Ok(()),
        }
    }
}

/// A [`Db`]'s change feed: where it reads slots (`None`: where the handle
/// goes), and the decoding stream shared by its subscriptions while any
/// runs. Shared by the handle's clones and tenant handles. The stream is
/// held as `Any`, so that this module needs nothing of `feed`'s.
pub(crate) struct Feeds {
    pub(crate) options: Option<PgConnectOptions>,
    pub(crate) hub: tokio::sync::Mutex<Option<Box<dyn std::any::Any + Send + Sync>>>,
}

impl Feeds {
    fn new(options: Option<PgConnectOptions>) -> Feeds {
        Feeds {
            options,
            hub: tokio::sync::Mutex::new(None),
        }
    }

    /// Where slots are read: the feed URL, else the server the handle
    /// reaches (behind PgBouncer, its direct URL, or a refusal).
    pub(crate) fn options(&self, db: &Db) -> Result<PgConnectOptions> {
        match &self.options {
            Some(options) => Ok(options.clone()),
            None => db.session_options("the change feed (subscribe)"),
        }
    }
}

/// The replicas of a [`Db`] (their checks and routing: `replica.rs`; the
/// types live here because a `Db` holds them and they hold `Db`s).
pub(crate) struct Replicas {
    pub(super) members: Vec<Member>,
    pub(super) next: AtomicUsize,
    pub(super) max_lag: Duration,
}

pub(super) struct Member {
    pub(super) db: Db,
    /// Answering and within the lag limit at the last check.
    pub(super) usable: Arc<AtomicBool>,
    /// The WAL position it had replayed at the last check.
    pub(super) replayed: AtomicI64,
    /// Found not to be a replica of this primary (warned once).
    pub(super) refused: AtomicBool,
}

/// What a replica's pool falls back to: the primary's, held weakly so that
/// the replicas do not keep the primary's pool alive.
pub(crate) struct Fallback {
    pub(super) primary: WeakDb,
    pub(super) usable: Arc<AtomicBool>,
}

/// A [`Db`] that does not keep its pool alive (without its replicas).
pub(crate) struct WeakDb {
    pool: deadpool::managed::WeakPool<Manager>,
    acquire_timeout: Duration,
    pgbouncer: bool,
    timeout_ms: Option<Arc<str>>,
    tenant: Option<uuid::Uuid>,
    begin: Option<Arc<str>>,
    direct: Option<Arc<PgConnectOptions>>,
    feeds: Arc<Feeds>,
    row_security: RowSecurity,
}

impl WeakDb {
    /// The `Db`, if its pool still lives.
    pub(crate) fn upgrade(&self) -> Option<Db> {
        Some(Db {
            pool: self.pool.upgrade()?,
            acquire_timeout: self.acquire_timeout,
            pgbouncer: self.pgbouncer,
            timeout_ms: self.timeout_ms.clone(),
            tenant: self.tenant,
            begin: self.begin.clone(),
            replicas: None,
            primary: None,
            direct: self.direct.clone(),
            feeds: self.feeds.clone(),
            row_security: self.row_security.clone(),
        })
    }
}

/// The pool's role, when it bypasses row security (a superuser, or
/// `BYPASSRLS`): tenant handles on it are refused ([`RowSecurity`]), and a
/// warning says so when tenant-scoped tables exist, since through it every
/// tenant sees every tenant's rows.
async fn row_security_bypassed_by(db: &Db) -> Result<Option<Arc<str>>> {
    // The owner of a tenant-scoped table is left out of its row security
    // (it runs the migrations and the lookups), as a superuser is.
    let row = sqlx::query_as::<_, (String, bool)>(
        "SELECT current_user::text, EXISTS (SELECT 1 FROM pg_class c WHERE c.relrowsecurity \
           AND c.relnamespace = 'public'::regnamespace) \
         FROM pg_roles r WHERE r.rolname = current_user AND (r.rolsuper OR r.rolbypassrls \
           OR EXISTS (SELECT 1 FROM pg_class c WHERE c.relrowsecurity \
             AND NOT c.relforcerowsecurity AND c.relnamespace = 'public'::regnamespace \
             AND pg_has_role(current_user, c.relowner, 'USAGE')))",
    )
    .fetch_optional(db);
    let row = crate::db::caller::ours(row).await?;
    let Some((role, tenant_tables)) = row else {
        return Ok(None);
    };
    if tenant_tables {
        tracing::warn!(
            target: "mandrake_storage",
            role,
            "connected as {role}, which bypasses row security (a superuser, BYPASSRLS, or the \
             tables' owner): tenant-scoped tables show every tenant's rows to it, and tenant \
             handles on it are refused; connect the application as a role of its own (see the \
             GUIDE's production setup)"
        );
    }
    Ok(Some(Arc::from(role)))
}

/// Behind PgBouncer, what opens the transaction each statement runs in:
/// `BEGIN`, then the statement timeout and the tenant as settings local to
/// it. Elsewhere `None`: the timeout is a startup option and the session
/// holds the tenant ([`PoolConnection::hold_tenant`]).
fn opening(
    pgbouncer: bool,
    timeout_ms: Option<&str>,
    tenant: Option<uuid::Uuid>,
) -> Option<Arc<str>> {
    if !pgbouncer {
        return None;
    }
    let mut sql = "BEGIN".to_owned();
    if let Some(ms) = timeout_ms {
        sql.push_str(&format!("; SET LOCAL statement_timeout = {ms}"));
    }
    // Set even without a tenant (to none): a server connection PgBouncer
    // hands around may carry a session-level tenant someone's SQL left.
    // A Uuid prints as hex and dashes only: safe as a literal.
    let id = tenant.map(|t| t.to_string()).unwrap_or_default();
    sql.push_str(&format!(
        "; SELECT set_config('{}', '{id}', true)",
        crate::schema::TENANT_SETTING
    ));
    Some(Arc::from(sql))
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("pool", &self.pool_status())
            .finish()
    }
}

impl Db {
    /// Connects with [`Settings::from_env`].
    pub async fn connect() -> Result<Db> {
        Db::connect_with(&Settings::from_env()?).await
    }

    /// Connects with explicit settings: to `DATABASE_URL`, else to the
    /// embedded cluster as the application's role ([`Settings::resolve_app_url`]).
    pub async fn connect_with(settings: &Settings) -> Result<Db> {
        let url = settings.resolve_app_url().await?;
        let mut settings = settings.clone();
        // On the embedded cluster the feed reads slots as its owner.
        if settings.feed_url.is_none() && settings.database_url.is_none() {
            settings.feed_url = Some(settings.resolve_url().await?);
        }
        Db::connect_url(&url, &settings).await
    }

    /// Connects to `url` with the pool settings of `settings`.
    pub async fn connect_url(url: &str, settings: &Settings) -> Result<Db> {
        let (url, pgbouncer) = strip_pgbouncer(url);
        let settings = Settings {
            pgbouncer: settings.pgbouncer || pgbouncer,
            ..settings.clone()
        };
        Db::connect_options(connect_options(&url)?, &settings).await
    }

    /// Connects with parsed options and the pool settings of `settings`.
    /// One connection is opened at once, so a wrong URL or a server that is
    /// down fails here, with its cause, instead of at the first query.
    pub async fn connect_options(options: PgConnectOptions, settings: &Settings) -> Result<Db> {
        let mut db = Db::build(options, settings)?;
        if let Some(role) = row_security_bypassed_by(&db).await? {
            db.row_security.bypassed_by =
                Arc::new(tokio::sync::OnceCell::new_with(Some(Some(role))));
        }
        let min_idle = settings.min_idle.min(settings.pool_size) as usize;
        crate::db::pool::top_up(&db.pool, min_idle).await;
        crate::db::pool::maintain(&db.pool, settings, min_idle);
        if !settings.replica_urls.is_empty() {
            db.replicas = Some(Replicas::start(&db, settings)?);
        }
        Ok(db)
    }

    /// The pool, not yet connected.
    pub(crate) fn build(mut options: PgConnectOptions, settings: &Settings) -> Result<Db> {
        let timeout_ms = settings
            .statement_timeout
            .map(|t| t.as_millis().to_string());
        if settings.pgbouncer {
            // PgBouncer refuses startup options, sqlx's `extra_float_digits`
            // among them (a stock PgBouncer ends the connection; since
            // PostgreSQL 12 its default prints floats exactly anyway), and
            // its server connections keep no prepared statement from one
            // transaction to the next: none is cached (see `Transaction` for
            // those made inside one).
            options = options.statement_cache_capacity(0).extra_float_digits(None);
        } else if let Some(ms) = &timeout_ms {
            options = options.options([("statement_timeout", ms.as_str())]);
        }
        let begin = opening(settings.pgbouncer, timeout_ms.as_deref(), None);
        let manager = Manager::new(
            options,
            settings.validate_after,
            settings.max_lifetime,
            settings.idle_timeout,
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size as usize)
            .wait_timeout(Some(settings.acquire_timeout))
            .create_timeout(Some(settings.acquire_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the pool: {e}")))?;
        let direct = match &settings.direct_url {
            Some(url) if settings.pgbouncer => Some(Arc::new(connect_options(url)?)),
            _ => None,
        };
        let feed = settings
            .feed_url
            .as_deref()
            .map(connect_options)
            .transpose()?;
        Ok(Db {
            pool,
            acquire_timeout: settings.acquire_timeout,
            pgbouncer: settings.pgbouncer,
            timeout_ms: timeout_ms.map(Arc::from),
            tenant: None,
            begin,
            replicas: None,
            primary: None,
            direct,
            feeds: Arc::new(Feeds::new(feed)),
            row_security: RowSecurity::default(),
        })
    }

    /// A handle that does not keep the pool alive, for tasks and for the
    /// replicas' way back to the primary.
    pub(crate) fn downgrade(&self) -> WeakDb {
        WeakDb {
            pool: self.pool.weak(),
            acquire_timeout: self.acquire_timeout,
            pgbouncer: self.pgbouncer,
            timeout_ms: self.timeout_ms.clone(),
            tenant: self.tenant,
            begin: self.begin.clone(),
            direct: self.direct.clone(),
            feeds: self.feeds.clone(),
            row_security: self.row_security.clone(),
        }
    }

    /// This replica's pool falls back to the primary's for reads it cannot serve.
    pub(crate) fn with_primary(mut self, primary: Arc<Fallback>) -> Db {
        self.primary = Some(primary);
        self
    }

    /// The options of a connection that keeps a session of its own for
    /// `what` (the change feed): the pool's; behind PgBouncer, whose server
    /// connections change hands every transaction, the direct URL's, else
    /// [`Error::NeedsSession`]. A session's state on a pooled server
    /// connection would reach whichever client gets it next.
    pub(crate) fn session_options(&self, what: &'static str) -> Result<PgConnectOptions> {
        match (self.pgbouncer, &self.direct) {
            (false, _) => Ok(self.pool.manager().options().clone()),
            (true, Some(direct)) => Ok((**direct).clone()),
            (true, None) => Err(Error::NeedsSession { what }),
        }
    }

    /// The change feed of this handle's pool.
    pub(crate) fn feeds(&self) -> &Arc<Feeds> {
        &self.feeds
    }

    /// A connection of the pool for several statements in a row; it goes
    /// back when dropped.
    /// Whatever it changes in its session (`SET`, `SET ROLE`, `LISTEN`, an
    /// open `BEGIN`) is undone before the connection serves anyone else.
    ///
    /// Behind PgBouncer a tenant handle's connection cannot hold its tenant
    /// between transactions: that is [`Error::TenantNeedsTransaction`].
    pub async fn acquire(&self) -> Result<PoolConnection> {
        if self.pgbouncer && self.tenant.is_some() {
            return Err(Error::TenantNeedsTransaction);
        }
        let mut conn = self.checkout().await?;
        conn.mark_session_touched();
        Ok(conn)
    }

    async fn checkout(&self) -> std::result::Result<PoolConnection, sqlx::Error> {
        self.row_security
            .check(self)
            .await
            .map_err(crate::error::Carried::through_sqlx)?;
        let mut conn = self
            .pool
            .get()
            .await
            .map(PoolConnection::new)
            .map_err(|e| pool_error(e, self.pool.status().max_size, self.acquire_timeout))?;
        // Behind PgBouncer a session setting would reach other clients: there
        // each statement and transaction sets the tenant locally instead.
        if !self.pgbouncer {
            conn.hold_tenant(self.tenant).await?;
        }
        Ok(conn)
    }

    /// Size, idle and busy connections, and waiting callers.
    pub fn pool_status(&self) -> PoolStatus {
        crate::db::pool::status(&self.pool)
    }

    /// Starts a transaction; it rolls back when dropped without `commit`.
    pub async fn begin(&self) -> Result<Transaction> {
        self.begin_at(None).await
    }

    async fn begin_at(&self, isolation: Option<Isolation>) -> Result<Transaction> {
        let mut conn = self.checkout().await?;
        // sqlx counts the transaction only once BEGIN has answered: a begin
        // cut off before that would leave an open transaction it cannot see,
        // so a connection dropped in that window is rolled back before reuse.
        conn.set_in_flight(true);
        // `BEGIN [ISOLATION LEVEL …]; SET LOCAL statement_timeout = …` in one round trip.
        let statement = match (&self.begin, isolation) {
            (Some(opening), None) => Some(AssertSqlSafe(opening.clone()).into_sql_str()),
            (Some(opening), Some(level)) => {
                let settings = opening.strip_prefix("BEGIN").unwrap_or_default();
                Some(AssertSqlSafe(format!("{}{settings}", level.begin())).into_sql_str())
            }
            (None, Some(level)) => Some(level.begin().into_sql_str()),
            (None, None) => None,
        };
        PgTransactionManager::begin(&mut conn, statement).await?;
        conn.set_in_flight(false);
        Ok(Transaction {
            conn: Some(conn),
            pgbouncer: self.pgbouncer,
        })
    }

    /// Runs `work` in a transaction at `isolation`: commits on `Ok`, rolls
    /// back on `Err` or panic, and runs it again (up to [`MAX_ATTEMPTS`]
    /// times, with growing randomized pauses) when it fails with a
    /// serialization failure or deadlock.
    ///
    /// ```no_run
    /// # use mandrake_storage::{Db, Isolation};
    /// # async fn demo(db: &Db) -> mandrake_storage::Result<()> {
    /// let total: i64 = db
    ///     .transaction(Isolation::Serializable, |tx| {
    ///         Box::pin(async move {
    ///             Ok(sqlx::query_scalar("SELECT count(*) FROM pg_class").fetch_one(&mut *tx).await?)
    ///         })
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<T, F>(&self, isolation: Isolation, mut work: F) -> Result<T>
    where
        F: for<'t> FnMut(&'t mut sqlx::PgConnection) -> BoxFuture<'t, Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let outcome = async {
                let mut tx = self.begin_at(Some(isolation)).await?;
                let done = work(&mut tx).await;
                match done {
                    Ok(value) => tx.commit().await.map(|()| value),
                    // Rolled back in the open, the connection stays pooled.
                    Err(err) => {
                        let _ = tx.rollback().await;
                        Err(err)
                    }
                }
            }
            .await;
            match outcome {
                Err(err) if err.is_retryable() && attempt < MAX_ATTEMPTS => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A handle on the same pool that acts for tenant `id`: every statement
    /// and transaction through it runs with the tenant set, and the row
    /// security of tenant-scoped tables (`#[record(tenant)]`) shows and lets
    /// it write only that tenant's rows.
    ///
    /// How the tenant is set: on a direct connection, the checked-out
    /// session holds it as a setting, changed (one round trip) only when
    /// the connection last served another tenant or none, and cleared
    /// before it serves a handle without a tenant. Behind PgBouncer, where
    /// a session setting would reach other clients, each statement and
    /// transaction sets it with `set_config(…, true)`, local to its
    /// transaction (two round trips more per statement).
    ///
    /// It goes wherever `&Db` goes: repository calls, [`Db::begin`],
    /// [`Db::transaction`], [`Db::acquire`], raw sqlx. On a `Db` without a
    /// tenant, tenant-scoped tables show no rows and refuse writes.
    ///
    /// ```no_run
    /// # use mandrake_storage::{Db, Filter, ListOptions};
    /// # async fn demo(db: &Db, workspace: uuid::Uuid) -> mandrake_storage::Result<()> {
    /// let db = db.tenant(workspace);
    /// let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_class").fetch_one(&db).await?;
    /// let mut tx = db.begin().await?;    // the tenant holds for the whole transaction
    /// # Ok(()) }
    /// ```
    pub fn tenant(&self, id: uuid::Uuid) -> Db {
        let mut db = self.clone();
        db.tenant = Some(id);
        db.begin = opening(self.pgbouncer, self.timeout_ms.as_deref(), Some(id));
        db
    }

    /// This handle, allowed to act for a tenant although its role bypasses
    /// row security (a superuser, or `BYPASSRLS`): for trusted code that
    /// means it, such as an operator's tool. A tenant handle on such a role
    /// is otherwise refused with [`Error::RowSecurityBypassed`], because
    /// row security would not hold it to its tenant's rows.
    pub fn bypassing_row_security(&self) -> Db {
        let mut db = self.clone();
        db.row_security.bypass_meant = true;
        db
    }

    /// The tenant this handle acts for, if any.
    pub fn current_tenant(&self) -> Option<uuid::Uuid> {
        self.tenant
    }

    /// Closes the pool: no new checkouts; connections close as they return.
    pub async fn close(&self) {
        self.pool.close();
    }
}

#[cfg(all(test, not(all(feature = "embedded", unix))))]
mod without_embedded {
    use super::*;

    #[tokio::test]
    async fn a_missing_database_url_is_a_config_error_naming_it() {
        let err = Db::connect_with(&Settings::default()).await.unwrap_err();
        match err {
            Error::Config(message) => assert!(message.contains("DATABASE_URL"), "{message}"),
            other => panic!("expected a Config error, got {other}"),
        }
    }
}
