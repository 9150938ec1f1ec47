//! Every setting, read from the environment in this one place: the
//! connection (`DATABASE_URL`, PgBouncer, replicas, the direct URL), the pool
//! and the slow-call threshold.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::url::{parse_url, redact_url};

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
/// | `MANDRAKE_FEED_URL` | the server itself as a role `WITH REPLICATION`, where the change feed reads its slots | the direct URL behind PgBouncer, else the database URL; the embedded cluster's owner |
/// | `MANDRAKE_REPLICA_URLS` | streaming replicas for [`Db::read`], comma-separated | none |
/// | `MANDRAKE_REPLICA_MAX_LAG_MS` | skip a replica further behind than this | 1000 |
/// | `MANDRAKE_SLOW_QUERY_MS` | log a repository call slower than this at WARN (process-wide) | 500 |
/// | `MANDRAKE_DATA_DIR` | where the embedded cluster lives (feature `embedded`) | `.mandrake/` |
/// | `MANDRAKE_PG_BIN` | the server binaries of the embedded and test clusters (a folder with `initdb`, `pg_ctl`) | PATH, `pg_config --bindir`, the newest `/usr/lib/postgresql/*/bin` |
/// | `MANDRAKE_TEST_PGBOUNCER` | `1`: `TestDb::db()` goes through a PgBouncer (feature `testing`) | 0 |
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
    /// the change feed when [`Settings::feed_url`] is unset. Without it those
    /// calls are refused.
    pub direct_url: Option<String>,
    /// Where the change feed reads its replication slots
    /// (`MANDRAKE_FEED_URL`): the server itself, as a role `WITH
    /// REPLICATION`. Without it, [`Settings::direct_url`] behind PgBouncer,
    /// else the database URL (whose role then needs `REPLICATION`).
    pub feed_url: Option<String>,
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
            .field("feed_url", &self.feed_url.as_deref().map(redact_url))
            .finish()
    }
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
            feed_url: None,
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
        let feed_url = url("MANDRAKE_FEED_URL")?;
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
            feed_url,
        })
    }
}

/// A whole number, if set.
fn number(key: &str, value: Option<String>) -> Result<Option<u64>> {
    value
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| Error::Config(format!("{key} must be a whole number, got {v:?}")))
        })
        .transpose()
}

/// `1`/`true` or `0`/`false`/unset.
fn flag(key: &str, value: Option<String>) -> Result<bool> {
    match value.as_deref().map(str::trim) {
        None | Some("" | "0" | "false") => Ok(false),
        Some("1" | "true") => Ok(true),
        Some(other) => Err(Error::Config(format!(
            "{key} must be 1 or 0, got {other:?}"
        ))),
    }
}

/// `MANDRAKE_SLOW_QUERY_MS` (default 500): a repository call slower than this
/// is logged at WARN. Read once per process: calls do not know their `Db`.
pub(crate) fn slow_query_threshold() -> Duration {
    static THRESHOLD: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *THRESHOLD.get_or_init(|| {
        let key = "MANDRAKE_SLOW_QUERY_MS";
        let ms = number(key, std::env::var(key).ok()).unwrap_or_else(|err| {
            tracing::warn!(target: "mandrake_storage", "{err}: using 500");
            None
        });
        Duration::from_millis(ms.unwrap_or(500))
    })
}

/// `MANDRAKE_PGBOUNCER` alone, for a caller that must refuse PgBouncer (the
/// migration runner) without reading every other setting.
#[cfg(feature = "migrate")]
pub(crate) fn pgbouncer_from_env() -> Result<bool> {
    flag(
        "MANDRAKE_PGBOUNCER",
        std::env::var("MANDRAKE_PGBOUNCER").ok(),
    )
}

/// `MANDRAKE_DATA_DIR`: where the embedded cluster lives instead of
/// `.mandrake/` at the workspace root.
#[cfg(all(feature = "embedded", unix))]
pub(crate) fn data_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("MANDRAKE_DATA_DIR").map(std::path::PathBuf::from)
}

/// `MANDRAKE_TEST_PGBOUNCER=1`: the test harness sends `TestDb::db()` through
/// a PgBouncer it starts.
#[cfg(all(feature = "testing", unix))]
pub(crate) fn test_pgbouncer() -> bool {
    std::env::var("MANDRAKE_TEST_PGBOUNCER").is_ok_and(|v| v == "1")
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
