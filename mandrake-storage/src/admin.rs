//! Connections outside the pool, for administration: one-off connections,
//! and databases created by name.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::error::{Error, Result};
use crate::url::parse_url;

/// One unpooled connection (for admin work and migration locks).
pub async fn connect_one(url: &str) -> Result<sqlx::PgConnection> {
    Ok(connect(&connect_options(url)?).await?)
}

/// The connection options of `url`, parsed strictly (see [`crate::url`]).
pub fn connect_options(url: &str) -> Result<PgConnectOptions> {
    parse_url(url).map_err(|e| Error::Config(format!("bad database URL: {e}")))
}

/// `CREATE DATABASE` that tolerates a concurrent creator.
#[cfg(all(feature = "embedded", unix))]
pub(crate) async fn create_database(conn: &mut sqlx::PgConnection, name: &str) -> Result<()> {
    use sqlx::Executor;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(());
    }
    let sql = format!("CREATE DATABASE {}", crate::sql::quote_ident(name));
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

/// A new connection. EAGAIN from a Unix socket means the server's accept
/// backlog is full (a burst of connects): worth a few short retries, about a
/// second in all. Anything else, "connection refused" included, fails at once.
pub(crate) async fn connect(
    options: &PgConnectOptions,
) -> std::result::Result<sqlx::PgConnection, sqlx::Error> {
    let mut pause = Duration::from_millis(2);
    loop {
        match <sqlx::PgConnection as sqlx::Connection>::connect_with(options).await {
            Err(sqlx::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && pause < Duration::from_millis(600) =>
            {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            other => return other,
        }
    }
}
