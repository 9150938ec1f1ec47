//! Connections outside the pool, for administration: one-off connections,
//! and databases created by name.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::error::{Error, Result, Right};
use crate::sql::quote_ident;
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
    let sql = format!("CREATE DATABASE {}", quote_ident(name));
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
///
/// `sslmode=allow` is libpq's: without TLS first, and with it when the server
/// refuses a connection without (sqlx alone would never try TLS). A TLS
/// failure is [`Error::Tls`] naming the host and the reason.
pub(crate) async fn connect(
    options: &PgConnectOptions,
) -> std::result::Result<sqlx::PgConnection, sqlx::Error> {
    let outcome = match connect_retrying(options).await {
        Err(err)
            if matches!(options.get_ssl_mode(), PgSslMode::Allow) && refused_without_tls(&err) =>
        {
            connect_retrying(&options.clone().ssl_mode(PgSslMode::Require)).await
        }
        other => other,
    };
    outcome.map_err(|err| match tls_failure(&err) {
        Some(reason) => crate::error::Carried::through_sqlx(Error::Tls {
            host: options.get_host().to_owned(),
            reason,
        }),
        None => err,
    })
}

/// Why TLS failed, when `err` is a TLS failure: sqlx reports a certificate
/// that did not verify as an I/O error carrying rustls' own.
fn tls_failure(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Tls(reason) => Some(reason.to_string()),
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|e| e.to_string()),
        _ => None,
    }
}

/// Whether the server turned a connection away for want of TLS (`pg_hba.conf`
/// has only `hostssl` lines for it).
fn refused_without_tls(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| {
        e.code().as_deref() == Some("28000") && e.message().contains("no encryption")
    })
}

async fn connect_retrying(
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

/// The server's version as it reports it (`SHOW server_version`: `15.18
/// (Debian 15.18-0+deb12u1)`, `18.3`), which `status` and `db status` print.
pub async fn server_version(conn: &mut sqlx::PgConnection) -> Result<String> {
    Ok(sqlx::query_scalar("SHOW server_version")
        .fetch_one(conn)
        .await?)
}

/// The version of the server at `url`, on a connection of its own.
pub async fn server_version_at(url: &str) -> Result<String> {
    use sqlx::Connection;
    let mut admin = server_connection(url).await?;
    let version = server_version(&mut admin).await;
    let _ = admin.close().await;
    version
}

/// The major version of the server (`15`, `18`), from `server_version_num`.
pub async fn server_major(conn: &mut sqlx::PgConnection) -> Result<u32> {
    let number: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(conn)
        .await?;
    Ok(number.parse::<u32>().unwrap_or(0) / 10_000)
}

/// Refuses with [`Error::MissingRight`] unless the connected role has
/// `right` (or is a superuser), as the catalog says: checked before the
/// statement that needs it, so a managed service's owner learns which right
/// and where its service grants it, not the server's bare `42501`.
pub async fn require(conn: &mut sqlx::PgConnection, right: Right) -> Result<()> {
    let attribute = match right {
        Right::CreateDb => "rolcreatedb",
        Right::CreateRole => "rolcreaterole",
    };
    let (role, has): (String, bool) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT current_user::text, rolsuper OR {attribute} FROM pg_roles \
         WHERE rolname = current_user"
    )))
    .fetch_one(conn)
    .await?;
    if has {
        Ok(())
    } else {
        Err(Error::MissingRight { role, right })
    }
}

/// A connection to the `postgres` database of `url`'s server, for CREATE,
/// DROP and ALTER DATABASE.
pub async fn server_connection(url: &str) -> Result<sqlx::PgConnection> {
    let options = connect_options(url)?.database("postgres");
    Ok(connect(&options).await?)
}

/// Whether the server has a database of that name.
pub async fn database_exists(admin: &mut sqlx::PgConnection, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(admin)
            .await?,
    )
}

/// Drops a database, ending its sessions (`WITH (FORCE)`); a failure is
/// left unreported (it is cleanup).
pub async fn drop_database(admin: &mut sqlx::PgConnection, name: &str) {
    use sqlx::Executor;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    let _ = admin.execute(sqlx::AssertSqlSafe(sql)).await;
}

/// `CREATE DATABASE name [TEMPLATE template]`.
pub async fn create_database_from(
    admin: &mut sqlx::PgConnection,
    name: &str,
    template: Option<&str>,
) -> Result<()> {
    use sqlx::Executor;
    let sql = match template {
        Some(t) => format!(
            "CREATE DATABASE {} TEMPLATE {}",
            quote_ident(name),
            quote_ident(t)
        ),
        None => format!("CREATE DATABASE {}", quote_ident(name)),
    };
    admin.execute(sqlx::AssertSqlSafe(sql)).await?;
    Ok(())
}

/// Databases made for a while on one server and dropped together: the
/// scratch databases `new-migration` replays and proves on, and the ones
/// `db verify` restores into.
///
/// ```no_run
/// # async fn demo(url: &str) -> mandrake_storage::Result<()> {
/// let mut scratch = mandrake_storage::admin::Scratch::new(url);
/// let copy_url = scratch.create("replay").await?;
/// // … use copy_url …
/// scratch.drop_all().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Scratch {
    server: String,
    names: Vec<String>,
}

impl Scratch {
    /// Scratch databases on the server of `server_url`.
    pub fn new(server_url: &str) -> Scratch {
        Scratch {
            server: server_url.to_owned(),
            names: Vec::new(),
        }
    }

    /// A fresh name for a scratch database, remembered for [`Scratch::drop_all`].
    pub fn name(&mut self, label: &str) -> String {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("mandrake_scratch_{}_{n}_{label}", std::process::id());
        self.names.push(name.clone());
        name
    }

    /// A new empty database; returns its URL. A role without `CREATEDB`
    /// is refused first ([`Right::CreateDb`]).
    pub async fn create(&mut self, label: &str) -> Result<String> {
        let name = self.name(label);
        let mut admin = server_connection(&self.server).await?;
        require(&mut admin, Right::CreateDb).await?;
        create_database_from(&mut admin, &name, None).await?;
        Ok(self.url(&name))
    }

    /// A new database copied from `template` (`CREATE DATABASE … TEMPLATE`:
    /// a file copy, no replay); returns its URL. Nobody may be connected to
    /// the template meanwhile.
    pub async fn create_from(&mut self, label: &str, template: &str) -> Result<String> {
        let name = self.name(label);
        let mut admin = server_connection(&self.server).await?;
        create_database_from(&mut admin, &name, Some(template)).await?;
        Ok(self.url(&name))
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        crate::url::with_database(&self.server, name)
    }

    /// Drops every database made here.
    pub async fn drop_all(self) {
        let Ok(mut admin) = server_connection(&self.server).await else {
            return;
        };
        for name in &self.names {
            drop_database(&mut admin, name).await;
        }
    }
}

/// The login role an application connects as on the embedded cluster and in
/// tests: not a superuser, not the tables' owner, without `BYPASSRLS`, so
/// row security holds for it. The migrations run as the owner.
pub const APP_ROLE: &str = "mandrake_app";

/// Makes [`APP_ROLE`] (if missing) with what an application needs in the
/// connected database: reading and writing every table, now and, through
/// default privileges, every table the connected role (the owner running
/// the migrations) creates later. The migrations' own history
/// (`_sqlx_migrations`) it may read, never change: that is the owner's.
pub async fn ensure_app_role(owner: &mut sqlx::PgConnection) -> Result<()> {
    use sqlx::Executor;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(APP_ROLE)
            .fetch_one(&mut *owner)
            .await?;
    if !exists {
        require(owner, Right::CreateRole).await?;
    }
    // Two processes may create it at once: the loser's error is harmless.
    let sql = format!(
        "DO $$ BEGIN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$; \
         GRANT USAGE ON SCHEMA public TO {APP_ROLE}; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}; \
         GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA public \
           GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE}; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE}; \
         DO $$ BEGIN IF to_regclass('public._sqlx_migrations') IS NOT NULL THEN \
           REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public._sqlx_migrations FROM {APP_ROLE}; \
         END IF; END $$"
    );
    owner.execute(sqlx::AssertSqlSafe(sql)).await?;
    Ok(())
}
