//! The `Db` handle: a sqlx pool configured from the environment.

use std::str::FromStr;
use std::time::Duration;

use either::Either;
pub use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgQueryResult, PgRow};
use sqlx::{Execute, Executor, Postgres, Transaction};

use crate::cluster::{Cluster, DEFAULT_DATABASE};
use crate::error::{Error, Result};

/// Connection settings, read from the environment by [`Settings::from_env`].
///
/// | variable | meaning | default |
/// |---|---|---|
/// | `DATABASE_URL` | server to use | the embedded cluster |
/// | `MANDRAKE_POOL_SIZE` | most pooled connections | 10 |
/// | `MANDRAKE_ACQUIRE_TIMEOUT_SECS` | wait for a free connection | 30 |
/// | `MANDRAKE_STATEMENT_TIMEOUT_MS` | server-side statement timeout, 0 = none | 0 |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `None` means: start and use the embedded cluster.
    pub database_url: Option<String>,
    pub pool_size: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: None,
            pool_size: 10,
            acquire_timeout: Duration::from_secs(30),
            statement_timeout: None,
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
        let defaults = Settings::default();
        let database_url = lookup("DATABASE_URL").filter(|u| !u.trim().is_empty());
        if let Some(url) = &database_url {
            PgConnectOptions::from_str(url)
                .map_err(|e| Error::Config(format!("DATABASE_URL is not a valid URL: {e}")))?;
        }
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
        Ok(Settings {
            database_url,
            pool_size,
            acquire_timeout,
            statement_timeout,
        })
    }

    /// The URL to connect to, starting the embedded cluster when no
    /// `DATABASE_URL` is set.
    pub async fn resolve_url(&self) -> Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => {
                tokio::task::spawn_blocking(|| {
                    let cluster = Cluster::default_for_workspace()?;
                    cluster.start()?;
                    Ok::<_, Error>(cluster)
                })
                .await
                .map_err(|e| Error::Config(format!("cluster start panicked: {e}")))??
                .ensure_database(DEFAULT_DATABASE)
                .await
            }
        }
    }
}

/// One unpooled connection (for admin work and migration locks).
pub async fn connect_one(url: &str) -> Result<sqlx::PgConnection> {
    use sqlx::Connection;
    Ok(sqlx::PgConnection::connect_with(&connect_options(url)?).await?)
}

pub(crate) fn connect_options(url: &str) -> Result<PgConnectOptions> {
    PgConnectOptions::from_str(url).map_err(|e| Error::Config(format!("bad database URL: {e}")))
}

/// `CREATE DATABASE` that tolerates a concurrent creator.
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
    ReadCommitted,
    RepeatableRead,
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

/// The application's handle on the database: a connection pool.
///
/// `&Db` is a sqlx executor, so it goes wherever a `&PgPool` goes; every
/// repository method takes it, a connection, or a transaction.
///
/// ```no_run
/// # async fn demo() -> mandrake_storage::Result<()> {
/// let db = mandrake_storage::Db::connect().await?; // DATABASE_URL, else the embedded cluster
/// let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
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
        Db::connect_options(connect_options(url)?, settings).await
    }

    /// Connects with parsed options and the pool settings of `settings`.
    pub async fn connect_options(mut options: PgConnectOptions, settings: &Settings) -> Result<Db> {
        if let Some(timeout) = settings.statement_timeout {
            let ms = timeout.as_millis().to_string();
            options = options.options([("statement_timeout", ms.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(settings.pool_size)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Db { pool })
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> Db {
        Db { pool }
    }

    /// The underlying sqlx pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Starts a transaction; it rolls back when dropped without `commit`.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
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
                let mut tx = self.pool.begin().await?;
                sqlx::query(isolation.sql()).execute(&mut *tx).await?;
                let value = work(&mut tx).await?;
                tx.commit().await?;
                Ok::<T, Error>(value)
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

    /// Closes every connection of the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

// Delegates to the pool, so `&db` works as an executor.
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
        (&self.pool).fetch_many(query)
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        (&self.pool).fetch_optional(query)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, std::result::Result<sqlx::postgres::PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        (&self.pool).prepare_with(sql, parameters)
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, std::result::Result<sqlx_core::describe::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        (&self.pool).describe(sql)
    }
}
