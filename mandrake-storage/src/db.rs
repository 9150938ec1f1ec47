//! The `Db` handle: a lean pool of sqlx connections configured from the
//! environment.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use either::Either;
pub use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgQueryResult, PgRow, PgTransactionManager};
use sqlx::{AssertSqlSafe, Execute, Executor, PgConnection, Postgres, SqlSafeStr, SqlStr};
use sqlx_core::ext::async_stream::{TryAsyncStream, Yielder};
use sqlx_core::transaction::TransactionManager;

use crate::pool::{
    Manager, Pool, PoolConnection, PoolStatus, RESET_SESSION, is_broken, pool_error,
};

use crate::error::{Error, Result};

/// Connection settings, read from the environment by [`Settings::from_env`].
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `DATABASE_URL` | server to use | the embedded cluster |
/// | `MANDRAKE_POOL_SIZE` | most pooled connections | 10 |
/// | `MANDRAKE_ACQUIRE_TIMEOUT_SECS` | wait for a free connection | 30 |
/// | `MANDRAKE_STATEMENT_TIMEOUT_MS` | server-side statement timeout, 0 = none | 0 |
/// | `MANDRAKE_POOL_VALIDATE_AFTER_MS` | ping a connection at checkout only after this idle time | 500 |
/// | `MANDRAKE_POOL_MAX_LIFETIME_SECS` | replace a connection this old, 0 = never | 1800 |
/// | `MANDRAKE_POOL_IDLE_TIMEOUT_SECS` | replace a connection idle this long, 0 = never | 600 |
/// | `MANDRAKE_POOL_MIN_IDLE` | connections kept open and idle | 0 |
/// | `MANDRAKE_PGBOUNCER` | `1`: the URL is PgBouncer's, in transaction mode | 0 |
/// | `MANDRAKE_DIRECT_URL` | the server itself, for what needs a session (the change feed) behind PgBouncer | none |
/// | `MANDRAKE_REPLICA_URLS` | streaming replicas for [`Db::read`], comma-separated | none |
/// | `MANDRAKE_REPLICA_MAX_LAG_MS` | skip a replica further behind than this | 1000 |
///
/// `Debug` shows the URLs without their passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None` means: start and use the embedded cluster.
    pub database_url: Option<String>,
    /// The most connections the pool opens.
    pub pool_size: u32,
    /// How long a caller waits for a free connection (and for a new one to connect).
    pub acquire_timeout: Duration,
    /// A server-side limit on every statement.
    pub statement_timeout: Option<Duration>,
    /// A connection idle longer than this is pinged before it is handed out.
    pub validate_after: Duration,
    /// A connection older than this is replaced.
    pub max_lifetime: Option<Duration>,
    /// A connection idle longer than this is replaced.
    pub idle_timeout: Option<Duration>,
    /// Connections kept open even when idle, ready for a burst.
    pub min_idle: u32,
    /// Connecting through PgBouncer in transaction mode
    /// (`MANDRAKE_PGBOUNCER=1`, or `pgbouncer=true` in the URL): every
    /// statement is unnamed and runs inside a transaction, and the statement
    /// timeout is set per transaction instead of per session.
    pub pgbouncer: bool,
    /// Streaming replicas that [`Db::read`] sends reads to
    /// (`MANDRAKE_REPLICA_URLS`, comma-separated).
    pub replica_urls: Vec<String>,
    /// A replica further behind the primary than this is skipped until it
    /// catches up (`MANDRAKE_REPLICA_MAX_LAG_MS`, default 1000).
    pub replica_max_lag: Duration,
    /// With [`Settings::pgbouncer`]: the server itself, not PgBouncer
    /// (`MANDRAKE_DIRECT_URL`), for what needs a session of its own, such as
    /// the change feed's LISTEN. Without it those calls are refused.
    pub direct_url: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let replicas: Vec<String> = self.replica_urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("Settings")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("pool_size", &self.pool_size)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("validate_after", &self.validate_after)
            .field("max_lifetime", &self.max_lifetime)
            .field("idle_timeout", &self.idle_timeout)
            .field("min_idle", &self.min_idle)
            .field("pgbouncer", &self.pgbouncer)
            .field("replica_urls", &replicas)
            .field("replica_max_lag", &self.replica_max_lag)
            .field("direct_url", &self.direct_url.as_deref().map(redact_url))
            .finish()
    }
}

/// `url` with its password replaced by `***`, for messages and logs.
///
/// ```
/// use mandrake_storage::redact_url;
/// assert_eq!(redact_url("postgres://app:S3cret@db/x"), "postgres://app:***@db/x");
/// assert_eq!(redact_url("postgres://db/x?password=S3cret&sslmode=require"),
///            "postgres://db/x?password=***&sslmode=require");
/// ```
pub fn redact_url(url: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let end = url[authority..]
        .find(['/', '?'])
        .map_or(url.len(), |i| authority + i);
    let mut out = match url[authority..end].rfind('@') {
        Some(at) => {
            let userinfo = &url[authority..authority + at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:***{}", &url[..authority], &url[authority + at..])
                }
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    };
    if let Some((base, query)) = out.clone().split_once('?') {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", pairs.join("&"));
    }
    out
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: None,
            pool_size: 10,
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: None,
            validate_after: Duration::from_millis(500),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            min_idle: 0,
            pgbouncer: false,
            replica_urls: Vec::new(),
            replica_max_lag: Duration::from_secs(1),
            direct_url: None,
        }
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Settings> {
        Settings::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `lookup`, so they can be tested without
    /// touching the process environment.
    ///
    /// ```
    /// use mandrake_storage::Settings;
    ///
    /// let s = Settings::from_lookup(|k| (k == "MANDRAKE_POOL_SIZE").then(|| "4".into())).unwrap();
    /// assert_eq!(s.pool_size, 4);
    /// assert!(Settings::from_lookup(|_| Some("many".into())).is_err());
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings> {
        fn number(key: &str, value: Option<String>) -> Result<Option<u64>> {
            value
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| {
                        Error::Config(format!("{key} must be a whole number, got {v:?}"))
                    })
                })
                .transpose()
        }
        fn flag(key: &str, value: Option<String>) -> Result<bool> {
            match value.as_deref().map(str::trim) {
                None | Some("" | "0" | "false") => Ok(false),
                Some("1" | "true") => Ok(true),
                Some(other) => Err(Error::Config(format!(
                    "{key} must be 1 or 0, got {other:?}"
                ))),
            }
        }
        let defaults = Settings::default();
        let url = |key: &str| -> Result<Option<String>> {
            let value = lookup(key).filter(|u| !u.trim().is_empty());
            if let Some(url) = &value {
                parse_url(url).map_err(|e| Error::Config(format!("{key}: {e}")))?;
            }
            Ok(value)
        };
        let database_url = url("DATABASE_URL")?;
        let direct_url = url("MANDRAKE_DIRECT_URL")?;
        let pool_size = match number("MANDRAKE_POOL_SIZE", lookup("MANDRAKE_POOL_SIZE"))? {
            Some(0) => {
                return Err(Error::Config(
                    "MANDRAKE_POOL_SIZE must be at least 1".into(),
                ));
            }
            Some(n) => u32::try_from(n)
                .map_err(|_| Error::Config("MANDRAKE_POOL_SIZE is too large".into()))?,
            None => defaults.pool_size,
        };
        let acquire_timeout = number(
            "MANDRAKE_ACQUIRE_TIMEOUT_SECS",
            lookup("MANDRAKE_ACQUIRE_TIMEOUT_SECS"),
        )?
        .map_or(defaults.acquire_timeout, Duration::from_secs);
        let statement_timeout = number(
            "MANDRAKE_STATEMENT_TIMEOUT_MS",
            lookup("MANDRAKE_STATEMENT_TIMEOUT_MS"),
        )?
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis);
        let validate_after = number(
            "MANDRAKE_POOL_VALIDATE_AFTER_MS",
            lookup("MANDRAKE_POOL_VALIDATE_AFTER_MS"),
        )?
        .map_or(defaults.validate_after, Duration::from_millis);
        let optional_secs = |key: &str, default: Option<Duration>| -> Result<Option<Duration>> {
            Ok(match number(key, lookup(key))? {
                Some(0) => None,
                Some(secs) => Some(Duration::from_secs(secs)),
                None => default,
            })
        };
        Ok(Settings {
            database_url,
            pool_size,
            acquire_timeout,
            statement_timeout,
            validate_after,
            max_lifetime: optional_secs("MANDRAKE_POOL_MAX_LIFETIME_SECS", defaults.max_lifetime)?,
            idle_timeout: optional_secs("MANDRAKE_POOL_IDLE_TIMEOUT_SECS", defaults.idle_timeout)?,
            min_idle: number("MANDRAKE_POOL_MIN_IDLE", lookup("MANDRAKE_POOL_MIN_IDLE"))?.map_or(
                Ok(defaults.min_idle),
                |n| {
                    u32::try_from(n)
                        .map_err(|_| Error::Config("MANDRAKE_POOL_MIN_IDLE is too large".into()))
                },
            )?,
            pgbouncer: flag("MANDRAKE_PGBOUNCER", lookup("MANDRAKE_PGBOUNCER"))?,
            replica_urls: lookup("MANDRAKE_REPLICA_URLS")
                .iter()
                .flat_map(|urls| urls.split(','))
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(|u| {
                    parse_url(u)
                        .map_err(|e| Error::Config(format!("MANDRAKE_REPLICA_URLS: {e}")))?;
                    Ok(u.to_owned())
                })
                .collect::<Result<_>>()?,
            replica_max_lag: number(
                "MANDRAKE_REPLICA_MAX_LAG_MS",
                lookup("MANDRAKE_REPLICA_MAX_LAG_MS"),
            )?
            .map_or(defaults.replica_max_lag, Duration::from_millis),
            direct_url,
        })
    }

    /// The URL to connect to: `DATABASE_URL`; without it, the embedded
    /// cluster (started if needed) when the `embedded` feature is on, else
    /// a `Config` error naming the variable. A production binary that lost
    /// its variable stops instead of running on an empty database.
    pub async fn resolve_url(&self) -> Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => embedded_url().await,
        }
    }
}

#[cfg(all(feature = "embedded", unix))]
async fn embedded_url() -> Result<String> {
    use crate::cluster::{Cluster, DEFAULT_DATABASE};
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::default_for_workspace()?;
        tracing::info!(
            data = %cluster.root().display(),
            "DATABASE_URL is not set: using the embedded PostgreSQL cluster \
             (it keeps running; `cargo xtask db stop` stops it)"
        );
        cluster.start()?;
        Ok::<_, Error>(cluster)
    })
    .await
    .map_err(|e| Error::Config(format!("cluster start panicked: {e}")))??
    .ensure_database(DEFAULT_DATABASE)
    .await
}

#[cfg(not(all(feature = "embedded", unix)))]
async fn embedded_url() -> Result<String> {
    Err(Error::Config(
        "DATABASE_URL is not set: set it to the server to use (the embedded development \
         cluster needs mandrake-storage's `embedded` feature)"
            .into(),
    ))
}

/// One unpooled connection (for admin work and migration locks).
pub async fn connect_one(url: &str) -> Result<sqlx::PgConnection> {
    Ok(crate::pool::connect(&connect_options(url)?).await?)
}

pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions> {
    parse_url(url).map_err(|e| Error::Config(format!("bad database URL: {e}")))
}

/// The query parameters sqlx reads from a URL, and ours (`pgbouncer`).
const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    "pgbouncer",
];

/// A PostgreSQL URL parsed, refusing what sqlx would accept and ignore: another
/// scheme (`mysql://`), or a parameter it does not know (a typo such as
/// `sslmod=require` would silently connect without TLS).
fn parse_url(url: &str) -> std::result::Result<PgConnectOptions, String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(format!(
            "{} is not a PostgreSQL URL (postgres://user:password@host:port/database)",
            redact_url(url)
        ));
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if !URL_PARAMETERS.contains(&key) {
                return Err(format!(
                    "unknown URL parameter {key:?}; known: {}",
                    URL_PARAMETERS.join(", ")
                ));
            }
        }
    }
    PgConnectOptions::from_str(url).map_err(|e| e.to_string())
}

/// `CREATE DATABASE` that tolerates a concurrent creator.
#[cfg(all(feature = "embedded", unix))]
pub(crate) async fn create_database(conn: &mut sqlx::PgConnection, name: &str) -> Result<()> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(());
    }
    let sql = format!("CREATE DATABASE {}", crate::ddl::quote_ident(name));
    match conn.execute(sqlx::AssertSqlSafe(sql)).await {
        // Someone else created it between our check and our CREATE.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(())
        }
        other => other.map(|_| ()).map_err(Error::from),
    }
}

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
    fn sql(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
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
    /// In PgBouncer mode: what opens the transaction each statement runs in
    /// (`BEGIN`, with the statement timeout).
    begin: Option<Arc<str>>,
    /// The read replicas, when there are any ([`Db::read`]).
    pub(crate) replicas: Option<Arc<crate::replica::Replicas>>,
    /// On a replica's pool: the primary, for a read the replica cannot serve.
    primary: Option<Arc<crate::replica::Fallback>>,
    /// In PgBouncer mode: the server itself ([`Settings::direct_url`]).
    direct: Option<Arc<PgConnectOptions>>,
}

/// A [`Db`] that does not keep its pool alive (without its replicas).
pub(crate) struct WeakDb {
    pool: deadpool::managed::WeakPool<Manager>,
    acquire_timeout: Duration,
    begin: Option<Arc<str>>,
    direct: Option<Arc<PgConnectOptions>>,
}

impl WeakDb {
    /// The `Db`, if its pool still lives.
    pub(crate) fn upgrade(&self) -> Option<Db> {
        Some(Db {
            pool: self.pool.upgrade()?,
            acquire_timeout: self.acquire_timeout,
            begin: self.begin.clone(),
            replicas: None,
            primary: None,
            direct: self.direct.clone(),
        })
    }
}

/// `url` without a `pgbouncer=true` parameter, and whether it had one.
pub(crate) fn strip_pgbouncer(url: &str) -> (String, bool) {
    without_params(url, |pair| matches!(pair, "pgbouncer=true" | "pgbouncer=1"))
}

/// `url` without the query parameters (`key=value`) that `drop` picks, and
/// whether there were any.
pub(crate) fn without_params(url: &str, drop: impl Fn(&str) -> bool) -> (String, bool) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), false);
    };
    let (dropped, kept): (Vec<&str>, Vec<&str>) = query.split('&').partition(|p| drop(p));
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, !dropped.is_empty())
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

    /// Connects with explicit settings.
    pub async fn connect_with(settings: &Settings) -> Result<Db> {
        let url = settings.resolve_url().await?;
        Db::connect_url(&url, settings).await
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
        drop(db.acquire().await?);
        let min_idle = settings.min_idle.min(settings.pool_size) as usize;
        crate::pool::top_up(&db.pool, min_idle).await;
        crate::pool::maintain(&db.pool, settings, min_idle);
        if !settings.replica_urls.is_empty() {
            db.replicas = Some(crate::replica::Replicas::start(&db, settings)?);
        }
        Ok(db)
    }

    /// The pool, not yet connected.
    pub(crate) fn build(mut options: PgConnectOptions, settings: &Settings) -> Result<Db> {
        let timeout_ms = settings
            .statement_timeout
            .map(|t| t.as_millis().to_string());
        let begin = if settings.pgbouncer {
            // PgBouncer refuses startup options, and its server connections
            // keep no prepared statement from one transaction to the next:
            // none is cached (see `Transaction` for those made inside one).
            options = options.statement_cache_capacity(0);
            Some(Arc::from(match &timeout_ms {
                Some(ms) => format!("BEGIN; SET LOCAL statement_timeout = {ms}"),
                None => "BEGIN".to_owned(),
            }))
        } else {
            if let Some(ms) = &timeout_ms {
                options = options.options([("statement_timeout", ms.as_str())]);
            }
            None
        };
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
        Ok(Db {
            pool,
            acquire_timeout: settings.acquire_timeout,
            begin,
            replicas: None,
            primary: None,
            direct,
        })
    }

    /// A handle that does not keep the pool alive, for tasks and for the
    /// replicas' way back to the primary.
    pub(crate) fn downgrade(&self) -> WeakDb {
        WeakDb {
            pool: self.pool.weak(),
            acquire_timeout: self.acquire_timeout,
            begin: self.begin.clone(),
            direct: self.direct.clone(),
        }
    }

    /// This replica's pool falls back to the primary's for reads it cannot serve.
    pub(crate) fn with_primary(mut self, primary: Arc<crate::replica::Fallback>) -> Db {
        self.primary = Some(primary);
        self
    }

    /// The options of a connection that keeps a session of its own for
    /// `what` (a LISTEN): the pool's; behind PgBouncer, whose server
    /// connections change hands every transaction, the direct URL's, else
    /// [`Error::NeedsSession`]. A LISTEN on a pooled server connection would
    /// deliver its notifications to whichever client gets it next.
    pub(crate) fn session_options(&self, what: &'static str) -> Result<PgConnectOptions> {
        match (&self.begin, &self.direct) {
            (None, _) => Ok(self.pool.manager().options().clone()),
            (Some(_), Some(direct)) => Ok((**direct).clone()),
            (Some(_), None) => Err(Error::NeedsSession { what }),
        }
    }

    /// How long a caller waits for a connection.
    pub(crate) fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// A connection of the pool for several statements in a row; it goes
    /// back when dropped.
    /// Whatever it changes in its session (`SET`, `SET ROLE`, `LISTEN`, an
    /// open `BEGIN`) is undone before the connection serves anyone else.
    pub async fn acquire(&self) -> Result<PoolConnection> {
        let mut conn = self.checkout().await?;
        conn.mark_session_touched();
        Ok(conn)
    }

    async fn checkout(&self) -> std::result::Result<PoolConnection, sqlx::Error> {
        self.pool
            .get()
            .await
            .map(PoolConnection::new)
            .map_err(|e| pool_error(e, self.pool.status().max_size, self.acquire_timeout))
    }

    /// Size, idle and busy connections, and waiting callers.
    pub fn pool_status(&self) -> PoolStatus {
        crate::pool::status(&self.pool)
    }

    /// Starts a transaction; it rolls back when dropped without `commit`.
    pub async fn begin(&self) -> Result<Transaction> {
        let mut conn = self.checkout().await?;
        // sqlx counts the transaction only once BEGIN has answered: a begin
        // cut off before that would leave an open transaction it cannot see,
        // so a connection dropped in that window is rolled back before reuse.
        conn.set_in_flight(true);
        match &self.begin {
            // `BEGIN; SET LOCAL statement_timeout = …` in one round trip.
            Some(begin) => {
                PgTransactionManager::begin(
                    &mut conn,
                    Some(AssertSqlSafe(begin.clone()).into_sql_str()),
                )
                .await?
            }
            None => PgTransactionManager::begin(&mut conn, None).await?,
        }
        conn.set_in_flight(false);
        Ok(Transaction {
            conn: Some(conn),
            pgbouncer: self.begin.is_some(),
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
                let mut tx = self.begin().await?;
                let done = async {
                    sqlx::query(isolation.sql()).execute(&mut *tx).await?;
                    work(&mut tx).await
                }
                .await;
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

    /// Closes the pool: no new checkouts; connections close as they return.
    pub async fn close(&self) {
        self.pool.close();
    }
}

/// Through PgBouncer: the statements sqlx named in a transaction, and the
/// session settings, go before it ends (see [`Transaction`]).
const DEALLOCATE_AND_RESET: &str = "DEALLOCATE ALL; SET SESSION AUTHORIZATION DEFAULT; \
    RESET ALL; UNLISTEN *; SELECT pg_advisory_unlock_all(); CLOSE ALL";

/// A transaction on a connection of the pool: `&mut *tx` is an executor.
/// Dropped without [`Transaction::commit`] (an early return, a cancelled
/// future, a panic), it rolls back: the rollback is sent before the
/// connection is used again, and a connection still inside a transaction
/// after that is closed rather than reused.
pub struct Transaction {
    conn: Option<PoolConnection>,
    /// Through PgBouncer: the statements sqlx prepared by name inside the
    /// transaction are on a server connection this client will not see
    /// again, so they are deallocated before it ends.
    pgbouncer: bool,
}

impl Transaction {
    /// Commits the transaction.
    ///
    /// A transaction that an earlier failed statement aborted is not
    /// committed (PostgreSQL would answer `COMMIT` with `ROLLBACK`, which
    /// sqlx reports as success): it is rolled back and this returns
    /// [`Error::TransactionAborted`]. Session settings changed inside the
    /// transaction (`SET`, `SET ROLE`) are reset, so they never reach the
    /// next user of the connection.
    pub async fn commit(mut self) -> Result<()> {
        let mut conn = self.conn.take().expect("open until commit or rollback");
        // Any statement fails in an aborted transaction: the reset is the probe.
        let end = if self.pgbouncer {
            DEALLOCATE_AND_RESET
        } else {
            RESET_SESSION
        };
        if let Err(err) = conn.execute(sqlx::raw_sql(end)).await {
            let aborted = err
                .as_database_error()
                .is_some_and(|e| e.code().as_deref() == Some("25P02"));
            self.conn = Some(conn);
            let _ = self.roll_back().await;
            return Err(if aborted {
                Error::TransactionAborted
            } else {
                err.into()
            });
        }
        Ok(PgTransactionManager::commit(&mut conn).await?)
    }

    /// Rolls the transaction back.
    pub async fn rollback(mut self) -> Result<()> {
        self.roll_back().await
    }

    async fn roll_back(&mut self) -> Result<()> {
        let mut conn = self.conn.take().expect("open until commit or rollback");
        if self.pgbouncer && conn.execute("DEALLOCATE ALL").await.is_err() {
            // An aborted transaction refuses even that: closing the
            // connection makes PgBouncer close its server connection, which
            // ends the transaction and its statements.
            conn.discard();
            return Ok(());
        }
        Ok(PgTransactionManager::rollback(&mut conn).await?)
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Transaction {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("open until commit or rollback")
    }
}

impl std::ops::DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("open until commit or rollback")
    }
}

/// A statement taken apart, so that a read can run a second time.
struct Replay {
    sql: SqlStr,
    args: Option<PgArguments>,
    persistent: bool,
}

/// Whether `sql` may change the session it runs in, so that its pooled
/// connection must be checked and reset before anyone else uses it: anything
/// but one plain query (`SET`, `BEGIN`, `LISTEN`, several statements), or a
/// query calling `set_config` or a session advisory lock.
fn touches_session(sql: &str) -> bool {
    let text = sql.trim_start();
    let first = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    let plain = [
        "select", "insert", "update", "delete", "with", "values", "table",
    ]
    .iter()
    .any(|k| first.eq_ignore_ascii_case(k));
    let several = text.trim_end().trim_end_matches(';').contains(';');
    let calls = |name: &str| {
        text.as_bytes()
            .windows(name.len())
            .any(|w| w.eq_ignore_ascii_case(name.as_bytes()))
    };
    !plain || several || calls("set_config") || calls("pg_advisory")
}

impl Replay {
    /// `named`: whether the statement may be prepared by name and cached on
    /// the connection (not through PgBouncer).
    fn new<'q, E: Execute<'q, Postgres>>(
        mut query: E,
        named: bool,
    ) -> std::result::Result<Replay, sqlx::Error> {
        let persistent = query.persistent() && named;
        let args = query.take_arguments().map_err(sqlx::Error::Encode)?;
        Ok(Replay {
            sql: query.sql(),
            args,
            persistent,
        })
    }

    fn clone_replay(&self) -> Replay {
        Replay {
            sql: self.sql.clone(),
            args: self.args.clone(),
            persistent: self.persistent,
        }
    }

    /// A copy to run again, when running it again is safe: a `SELECT` reads.
    fn spare(&self) -> Option<Replay> {
        let text = self.sql.as_str().trim_start();
        let read = text
            .get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("select"));
        read.then(|| self.clone_replay())
    }
}

impl<'q> Execute<'q, Postgres> for Replay {
    fn sql(self) -> SqlStr {
        self.sql
    }
    fn statement(&self) -> Option<&sqlx::postgres::PgStatement> {
        None
    }
    fn take_arguments(
        &mut self,
    ) -> std::result::Result<Option<PgArguments>, sqlx::error::BoxDynError> {
        Ok(self.args.take())
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// One call on a connection: what `run` does with a checked-out one.
type Call<T> =
    for<'c> fn(&'c mut PgConnection, Replay) -> BoxFuture<'c, std::result::Result<T, sqlx::Error>>;

impl Db {
    /// A connection of its own, outside the pool: for a read whose pooled
    /// connection turned out to be dead (other pooled ones may be too).
    async fn fresh_connection(&self) -> std::result::Result<PgConnection, sqlx::Error> {
        self.pool.manager().connect().await
    }

    /// Runs `call` on `conn`; through PgBouncer inside a transaction of its
    /// own, because sqlx parses and executes a statement in two round trips,
    /// which PgBouncer could otherwise send to two different servers.
    async fn call<T>(
        &self,
        conn: &mut PgConnection,
        query: Replay,
        call: Call<T>,
    ) -> std::result::Result<T, sqlx::Error> {
        let touched = touches_session(query.sql.as_str());
        self.open_statement_transaction(conn).await?;
        let done = call(conn, query).await;
        let closed = self
            .end_statement_transaction(conn, done.is_ok(), touched)
            .await;
        let done = done?;
        closed?;
        Ok(done)
    }

    /// Through PgBouncer: opens the transaction a statement runs in.
    async fn open_statement_transaction(
        &self,
        conn: &mut PgConnection,
    ) -> std::result::Result<(), sqlx::Error> {
        if let Some(begin) = &self.begin {
            conn.execute(sqlx::raw_sql(AssertSqlSafe(begin.clone())))
                .await?;
        }
        Ok(())
    }

    /// Through PgBouncer: commits (`ok`) or rolls back what
    /// [`Db::open_statement_transaction`] opened.
    /// `touched`: the statement may have changed the session, which on
    /// PgBouncer's server connection would reach other clients: it is reset
    /// before the commit.
    async fn end_statement_transaction(
        &self,
        conn: &mut PgConnection,
        ok: bool,
        touched: bool,
    ) -> std::result::Result<(), sqlx::Error> {
        if self.begin.is_some() {
            if ok && touched {
                conn.execute(sqlx::raw_sql(RESET_SESSION)).await?;
            }
            conn.execute(if ok { "COMMIT" } else { "ROLLBACK" }).await?;
        }
        Ok(())
    }

    /// Runs `call` on a pooled connection, marked in flight so that a
    /// cancelled call leaves it to be restored; a read that fails at the
    /// transport level runs once more on a new connection.
    async fn run<T>(&self, query: Replay, call: Call<T>) -> std::result::Result<T, sqlx::Error> {
        let spare = query.spare();
        let mut conn = match self.checkout().await {
            Ok(conn) => conn,
            // A replica that cannot be reached: the primary serves the read.
            Err(err) => {
                return match (spare, self.primary_for(&err)) {
                    (Some(again), Some(primary)) => Box::pin(primary.run(again, call)).await,
                    _ => Err(err),
                };
            }
        };
        if touches_session(query.sql.as_str()) {
            conn.mark_session_touched();
        }
        conn.set_in_flight(true);
        let outcome = self.call(&mut conn, query, call).await;
        conn.set_in_flight(false);
        let err = match outcome {
            Err(err) => err,
            done => return done,
        };
        let broken = is_broken(&err);
        conn.discard_if_broken(&err);
        match spare {
            Some(again) if broken => match self.primary_for(&err) {
                Some(primary) => Box::pin(primary.run(again, call)).await,
                None => {
                    self.call(&mut self.fresh_connection().await?, again, call)
                        .await
                }
            },
            _ => Err(err),
        }
    }

    /// `query` taken apart to run, and to run again; through PgBouncer its
    /// statement stays unnamed.
    fn replay<'q, E: Execute<'q, Postgres>>(
        &self,
        query: E,
    ) -> std::result::Result<Replay, sqlx::Error> {
        Replay::new(query, self.begin.is_none())
    }

    /// On a replica's pool, when `err` says the replica cannot be reached:
    /// the primary, to run the read instead.
    fn primary_for(&self, err: &sqlx::Error) -> Option<Db> {
        self.primary.as_ref().and_then(|p| p.take_over(err))
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        match self.conn.take() {
            // Closed: PgBouncer then closes its server connection too, and
            // with it the transaction and the statements made in it.
            Some(conn) if self.pgbouncer => conn.discard(),
            Some(mut conn) => {
                // Queued here, flushed by the pool before the connection is reused.
                PgTransactionManager::start_rollback(&mut conn);
                self.conn = Some(conn);
            }
            None => {}
        }
    }
}

type Item = Either<PgQueryResult, PgRow>;

/// Yields every item of `rows`.
async fn forward(
    mut rows: BoxStream<'_, std::result::Result<Item, sqlx::Error>>,
    yielder: &Yielder<Item>,
) -> std::result::Result<(), sqlx::Error> {
    while let Some(item) = rows.try_next().await? {
        yielder.r#yield(item).await;
    }
    Ok(())
}

// Checks a connection out for each call, so `&db` works as an executor. A
// connection that fails at the transport level is not put back, and a read
// that failed that way runs once more on a new connection: a server restart
// leaves every idle connection dead, and a read is safe to repeat.
impl<'p> Executor<'p> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, std::result::Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(TryAsyncStream::new(move |yielder| async move {
            let query = db.replay(query)?;
            let spare = query.spare();
            let mut conn = match db.checkout().await {
                Ok(conn) => conn,
                // A replica that cannot be reached: the primary serves the read.
                Err(err) => {
                    return match (spare, db.primary_for(&err)) {
                        (Some(again), Some(primary)) => {
                            forward((&primary).fetch_many(again), &yielder).await
                        }
                        _ => Err(err),
                    };
                }
            };
            let touched = touches_session(query.sql.as_str());
            if touched {
                conn.mark_session_touched();
            }
            conn.set_in_flight(true);
            let mut yielded = false;
            let outcome = async {
                // Through PgBouncer: in a transaction of its own, as in `call`.
                db.open_statement_transaction(&mut conn).await?;
                let streamed = async {
                    let mut rows = conn.fetch_many(query);
                    while let Some(item) = rows.try_next().await? {
                        yielded = true;
                        yielder.r#yield(item).await;
                    }
                    Ok::<_, sqlx::Error>(())
                }
                .await;
                let closed = db
                    .end_statement_transaction(&mut conn, streamed.is_ok(), touched)
                    .await;
                streamed?;
                closed
            }
            .await;
            conn.set_in_flight(false);
            let Err(err) = outcome else { return Ok(()) };
            let broken = is_broken(&err);
            conn.discard_if_broken(&err);
            match spare {
                Some(again) if broken && !yielded => match db.primary_for(&err) {
                    Some(primary) => forward((&primary).fetch_many(again), &yielder).await,
                    None => {
                        let mut fresh = db.fresh_connection().await?;
                        forward(fresh.fetch_many(again), &yielder).await
                    }
                },
                _ => Err(err),
            }
        }))
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(async move { db.run(db.replay(query)?, |c, q| c.fetch_optional(q)).await })
    }

    // `fetch_all` and `execute` straight on the connection: the default ones
    // would pass every row through the stream of `fetch_many` above.
    fn fetch_all<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Vec<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(async move { db.run(db.replay(query)?, |c, q| c.fetch_all(q)).await })
    }

    fn execute<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<PgQueryResult, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(async move { db.run(db.replay(query)?, |c, q| c.execute(q)).await })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, std::result::Result<sqlx::postgres::PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        let db = self.clone();
        Box::pin(async move { db.checkout().await?.prepare_with(sql, parameters).await })
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, std::result::Result<sqlx_core::describe::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        let db = self.clone();
        Box::pin(async move { db.checkout().await?.describe(sql).await })
    }
}

#[cfg(test)]
mod settings {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings> {
        Settings::from_lookup(|key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn debug_never_shows_a_password() {
        let s = with(&[
            ("DATABASE_URL", "postgres://app:S3cretPass@db:5432/app"),
            (
                "MANDRAKE_REPLICA_URLS",
                "postgres://app:S3cretPass@replica/app",
            ),
            (
                "MANDRAKE_DIRECT_URL",
                "postgres://db/app?password=S3cretPass",
            ),
        ])
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("S3cretPass"), "{shown}");
        assert!(shown.contains("postgres://app:***@db:5432/app"), "{shown}");
        assert!(shown.contains("password=***"), "{shown}");
    }

    #[test]
    fn urls_of_other_databases_and_unknown_parameters_are_refused() {
        let err = with(&[("DATABASE_URL", "mysql://app:pw@db/app")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a PostgreSQL URL"), "{err}");
        assert!(!err.contains("pw@"), "{err}");
        let err = with(&[("DATABASE_URL", "postgres://db/app?bogus_param=1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"bogus_param\""), "{err}");
        let err = with(&[("MANDRAKE_REPLICA_URLS", "postgres://r/app?sslmod=require")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MANDRAKE_REPLICA_URLS") && err.contains("sslmod"),
            "{err}"
        );
        with(&[(
            "DATABASE_URL",
            "postgresql://app@db/app?sslmode=require&application_name=x&pgbouncer=true",
        )])
        .unwrap();
    }
}

#[cfg(test)]
mod session {
    use super::touches_session;

    #[test]
    fn only_one_plain_query_leaves_the_session_alone() {
        for plain in [
            "SELECT 1",
            "  insert into t values ($1)",
            "WITH x AS (SELECT 1) SELECT * FROM x;",
            "UPDATE t SET a = 'x;y'".split(';').next().unwrap(),
        ] {
            assert!(!touches_session(plain), "{plain}");
        }
        for touching in [
            "BEGIN",
            "set role app",
            "LISTEN x",
            "SELECT 1; BEGIN",
            "SELECT set_config('role', 'app', false)",
            "SELECT PG_ADVISORY_LOCK(1)",
            "RESET ALL",
        ] {
            assert!(touches_session(touching), "{touching}");
        }
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
