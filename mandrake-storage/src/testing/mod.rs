//! Test harness: a throwaway PostgreSQL per test process and a fresh database
//! per test, so tests run in parallel and leave nothing behind.
//!
//! ```no_run
//! # async fn demo() -> mandrake_storage::Result<()> {
//! let test_db = mandrake_storage::testing::TestDb::empty().await?;
//! sqlx::query("CREATE TABLE t (x int)").execute(test_db.db()).await?;
//! # Ok(()) }
//! ```
//!
//! With `DATABASE_URL` set, the databases are made on that server instead and
//! dropped when the [`TestDb`] is dropped. Otherwise a cluster is initialized in
//! a temporary folder on first use; a small guardian process waits for the test
//! process to exit (however it exits) and then stops the server and deletes the
//! folder.
//!
//! With `MANDRAKE_TEST_PGBOUNCER=1`, a PgBouncer in transaction mode (from
//! PATH or `/usr/sbin`) is started on a Unix socket in front of that cluster,
//! and every [`TestDb::db`] connects through it in PgBouncer mode; setup,
//! migrations and the change feed's session still go straight to the server.
//!
//! With `MANDRAKE_TEST_TLS=1`, that cluster takes TCP only over TLS and the
//! test databases belong to an owner that is not a superuser ([`tls`]).

pub mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Executor;
use sqlx::postgres::PgConnectOptions;

pub use crate::admin::APP_ROLE;
use crate::admin::create_database;
use crate::cluster::Cluster;
use crate::config::Settings;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::schema::TableSchema;

/// Where test databases are made.
#[derive(Debug)]
struct Server {
    /// Options for the maintenance database; `.database(..)` picks another.
    admin: PgConnectOptions,
    /// The throwaway cluster; `None` on the shared `DATABASE_URL` server,
    /// where each test database must be dropped by itself.
    cluster: Option<Cluster>,
}

/// The PgBouncer in front of the throwaway cluster, started on first use.
static PGBOUNCER: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

fn pgbouncer() -> Result<&'static Path> {
    PGBOUNCER
        .get_or_init(|| {
            let server = server().map_err(|e| e.to_string())?;
            let cluster = server.cluster.as_ref().ok_or_else(|| {
                "PgBouncer tests need the throwaway cluster: unset DATABASE_URL".to_owned()
            })?;
            start_pgbouncer(cluster).map_err(|e| e.to_string())
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| Error::Config(e.clone()))
}

static SERVER: OnceLock<std::result::Result<Server, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn server() -> Result<&'static Server> {
    SERVER
        .get_or_init(|| start_server().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Config(e.clone()))
}

fn start_server() -> Result<Server> {
    if let Some(url) = Settings::from_env()?.database_url {
        let admin = PgConnectOptions::from_str(&url)
            .map_err(|e| Error::Config(format!("bad DATABASE_URL: {e}")))?;
        return Ok(Server {
            admin,
            cluster: None,
        });
    }
    let cluster = throwaway_cluster()?;
    cluster.start()?;
    let admin = if std::env::var("MANDRAKE_TEST_TLS").is_ok_and(|v| v == "1") {
        tls::secure(&cluster)?
    } else {
        PgConnectOptions::from_str(&cluster.url("postgres"))
            .map_err(|e| Error::Config(e.to_string()))?
    };
    Ok(Server {
        admin,
        cluster: Some(cluster),
    })
}

/// `options` sent through the test PgBouncer instead of straight to the server.
fn via_pgbouncer(options: &PgConnectOptions) -> Result<PgConnectOptions> {
    // A Unix socket has no TLS (libpq ignores sslmode there too).
    Ok(options
        .clone()
        .socket(pgbouncer()?)
        .port(PGBOUNCER_PORT)
        .ssl_mode(sqlx::postgres::PgSslMode::Disable))
}

fn through_pgbouncer() -> bool {
    crate::config::test_pgbouncer()
}

/// Starts a PgBouncer in transaction mode on a Unix socket in front of
/// `cluster` (as the server's user when we are root, as PgBouncer refuses
/// root), stopped by a guardian when this process ends; returns its socket
/// folder (connect with `.socket(folder).port(PGBOUNCER_PORT)`). One per
/// cluster at a time.
pub fn start_pgbouncer(cluster: &Cluster) -> Result<PathBuf> {
    let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join("pgbouncer")),
        )
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Config(
                "MANDRAKE_TEST_PGBOUNCER=1 but there is no pgbouncer: install it (Debian: \
                 pgbouncer)"
                    .into(),
            )
        })?;
    let dir = cluster.root().join("pgbouncer");
    cluster.prepare_dir(&dir)?;
    let file = |name: &str, text: String| -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
        cluster.hand_over(&path)?;
        Ok(path)
    };
    let users = file(
        "users.txt",
        format!(
            "\"postgres\" \"\"\n\"{APP_ROLE}\" \"\"\n\"{}\" \"\"\n",
            tls::TLS_OWNER
        ),
    )?;
    let config = file(
        "pgbouncer.ini",
        format!(
            "[databases]\n* = host={server} port=5432\n\n[pgbouncer]\n\
             listen_addr =\nlisten_port = {PGBOUNCER_PORT}\nunix_socket_dir = {dir}\n\
             auth_type = trust\nauth_file = {users}\npool_mode = transaction\n\
             default_pool_size = 20\nmax_client_conn = 1000\n\
             admin_users = postgres\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            server = cluster.socket_dir().display(),
            dir = dir.display(),
            users = users.display(),
        ),
    )?;
    let out = cluster.run(Command::new(&binary).arg("-d").arg(&config))?;
    if !out.status.success() {
        return Err(Error::Config(format!(
            "pgbouncer did not start: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // Stopped when this process ends, however it ends.
    Command::new("sh")
        .args([
            "-c",
            r#"while kill -0 "$1" 2>/dev/null; do sleep 0.2; done; kill "$(cat "$2")" 2>/dev/null"#,
            "mandrake-pgbouncer-guardian",
        ])
        .arg(std::process::id().to_string())
        .arg(dir.join("pgbouncer.pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Config(format!("cannot start the pgbouncer guardian: {e}")))?;
    // Ready when it accepts: the socket file appears at bind(), a moment
    // before listen(), and a connection in between is refused.
    let socket = dir.join(format!(".s.PGSQL.{PGBOUNCER_PORT}"));
    for _ in 0..100 {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(dir);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(Error::Config(format!(
        "pgbouncer started but does not accept connections on {}",
        socket.display()
    )))
}

/// The port in the name of [`start_pgbouncer`]'s socket.
pub const PGBOUNCER_PORT: u16 = 6432;

/// A cluster (not yet started) in a fresh temporary folder, guarded so that
/// it is stopped and removed when this process ends.
pub fn throwaway_cluster() -> Result<Cluster> {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("mandrake-test-{}-{n}", std::process::id()));
    let cluster = Cluster::new(&root, true)?;
    spawn_guardian(cluster.root(), &cluster.socket_dir())?;
    Ok(cluster)
}

/// A detached shell that outlives this process: once the process is gone it
/// shuts the server down (SIGQUIT: immediate) and deletes its folders.
fn spawn_guardian(root: &Path, socket_dir: &Path) -> Result<()> {
    const SCRIPT: &str = r#"
while kill -0 "$1" 2>/dev/null; do sleep 0.2; done
pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -QUIT "$pid" 2>/dev/null
  i=0
  while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$2" "$3"
"#;
    use std::os::unix::process::CommandExt;
    let socket: PathBuf = if socket_dir.starts_with(root) {
        root.to_path_buf()
    } else {
        socket_dir.to_path_buf()
    };
    Command::new("sh")
        .args(["-c", SCRIPT, "mandrake-guardian"])
        .arg(std::process::id().to_string())
        .arg(root)
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Config(format!("cannot start the cleanup guardian: {e}")))?;
    Ok(())
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct TestDb {
    db: Db,
    name: String,
    options: PgConnectOptions,
}

impl TestDb {
    /// A new, empty database.
    pub async fn empty() -> Result<TestDb> {
        TestDb::create(None).await
    }

    /// A new database with `tables` (and the trigger function) created.
    pub async fn with_tables(tables: &[&TableSchema]) -> Result<TestDb> {
        let test_db = TestDb::empty().await?;
        let sql = crate::schema::ddl::create_schema(tables);
        (&test_db.db).execute(sqlx::AssertSqlSafe(sql)).await?;
        Ok(test_db)
    }

    /// A new database with the workspace's `migrations/` applied. On the
    /// throwaway cluster it is cloned from a template migrated once per test
    /// process; on a shared `DATABASE_URL` server, where a template would be
    /// left behind, each database is migrated by itself.
    pub async fn migrated() -> Result<TestDb> {
        if server()?.cluster.is_none() {
            let test_db = TestDb::empty().await?;
            migrate_workspace(&test_db.url()).await?;
            return Ok(test_db);
        }
        static TEMPLATE: tokio::sync::OnceCell<std::result::Result<String, String>> =
            tokio::sync::OnceCell::const_new();
        let template = TEMPLATE
            .get_or_init(|| async {
                let build = async {
                    let name = format!("mandrake_template_{}", std::process::id());
                    let options = ensure_template(&name).await?;
                    let url = url_of(&options);
                    migrate_workspace(&url).await?;
                    Ok::<_, Error>(name)
                };
                build.await.map_err(|e| e.to_string())
            })
            .await
            .as_ref()
            .map_err(|e| Error::Config(format!("cannot build the migrated template: {e}")))?;
        TestDb::from_template(template).await
    }

    /// A new database cloned from `template` (a database name on the same server).
    pub async fn from_template(template: &str) -> Result<TestDb> {
        TestDb::create(Some(template)).await
    }

    async fn create(template: Option<&str>) -> Result<TestDb> {
        let server = server()?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("mandrake_test_{}_{n}", std::process::id());
        let mut admin = server.admin_connection().await?;
        crate::admin::create_database_from(&mut admin, &name, template).await?;
        let options = server.admin.clone().database(&name);
        let db = test_pool(options.clone(), &options).await?;
        Ok(TestDb { db, name, options })
    }

    /// The pool of this test's database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A connection string for this database.
    pub fn url(&self) -> String {
        url_of(&self.options)
    }

    /// Connection options for this database (for extra pools or connections).
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// Connection options for this database through a PgBouncer in
    /// transaction mode, started in front of the throwaway cluster on first
    /// use; connect with [`Settings::pgbouncer`] on.
    pub fn through_pgbouncer(&self) -> Result<PgConnectOptions> {
        via_pgbouncer(&self.options)
    }

    /// A pool on this database as [`APP_ROLE`], the way an application
    /// connects: not a superuser, not the tables' owner, without
    /// `BYPASSRLS`, so row security holds. The role is made on first use
    /// and granted what it needs on the tables that exist now (through
    /// PgBouncer when the tests run through it).
    pub async fn app_db(&self) -> Result<Db> {
        let mut owner = crate::admin::connect_one(&self.url()).await?;
        crate::admin::ensure_app_role(&mut owner).await?;
        test_pool(self.options.clone().username(APP_ROLE), &self.options).await
    }

    /// Connection options for the admin console of that PgBouncer
    /// (`SHOW POOLS`, `SHOW STATS`: simple queries only).
    pub fn pgbouncer_console(&self) -> Result<PgConnectOptions> {
        // As a `Db` in PgBouncer mode, without the startup option it refuses.
        Ok(self
            .through_pgbouncer()?
            .database("pgbouncer")
            .extra_float_digits(None))
    }
}

/// A test's pool on `options`: five connections, through PgBouncer when
/// the tests run through it; the change feed reads its slots on `feed`
/// (the owner, straight to the server), as `MANDRAKE_FEED_URL` would say.
async fn test_pool(options: PgConnectOptions, feed: &PgConnectOptions) -> Result<Db> {
    let mut settings = Settings {
        pool_size: 5,
        feed_url: Some(url_of(feed)),
        ..Settings::default()
    };
    let options = if through_pgbouncer() {
        settings.pgbouncer = true;
        // What needs a session of its own (the change feed) goes straight
        // to the server, as MANDRAKE_DIRECT_URL would send it.
        settings.direct_url = Some(url_of(&options));
        via_pgbouncer(&options)?
    } else {
        options
    };
    Db::connect_options(options, &settings).await
}

/// `options` as a URL. sqlx 0.9 writes a root certificate file as
/// `sslrootcert=file: <path>`, which it cannot read back: the path alone.
fn url_of(options: &PgConnectOptions) -> String {
    use sqlx::ConnectOptions;
    let mut url = options.to_url_lossy();
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| {
            let v = v.strip_prefix("file: ").unwrap_or(&v).to_owned();
            (k.into_owned(), v)
        })
        .collect();
    url.query_pairs_mut().clear().extend_pairs(pairs);
    url.to_string()
}

impl Server {
    async fn admin_connection(&self) -> Result<sqlx::PgConnection> {
        Ok(crate::admin::connect(&self.admin).await?)
    }
}

/// Creates database `name` on the test server if missing and returns its
/// connection options (for building a template that tests clone).
async fn ensure_template(name: &str) -> Result<PgConnectOptions> {
    let server = server()?;
    let mut admin = server.admin_connection().await?;
    create_database(&mut admin, name).await?;
    Ok(server.admin.clone().database(name))
}

/// The throwaway cluster of this process, if tests use one (none with `DATABASE_URL`).
pub fn cluster() -> Result<Option<&'static Cluster>> {
    Ok(server()?.cluster.as_ref())
}

/// Applies the workspace's `migrations/` to the database at `url`.
async fn migrate_workspace(url: &str) -> Result<()> {
    let dir = crate::cluster::workspace_root()?.join("migrations");
    let migrations = crate::migrate::Migrations::from_dir(dir)?;
    crate::migrate::migrate(
        url,
        &migrations,
        &crate::migrate::MigrateOptions::complete(),
    )
    .await?;
    Ok(())
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Ok(server) = server() else { return };
        if server.cluster.is_some() {
            return; // the whole cluster goes when the process ends
        }
        // Drop is synchronous and may run inside the test's runtime, whose
        // connections cannot be driven from here: a thread with a runtime of
        // its own drops the database, and FORCE ends the pool's sessions.
        let name = self.name.clone();
        let admin = server.admin.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect_with(&admin).await?;
                let sql = format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    crate::sql::quote_ident(&name)
                );
                conn.execute(sqlx::AssertSqlSafe(sql)).await.map(|_| ())
            })
            .map_err(std::io::Error::other)
        })
        .join();
    }
}
