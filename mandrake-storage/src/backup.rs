//! Logical backups: `pg_dump` archives made, verified and restored, with the
//! server's own client tools. What `cargo xtask db backup | restore | verify`
//! runs, as library functions an application can offer too ("back up now").
//!
//! ```no_run
//! # async fn demo(url: &str) -> mandrake_storage::Result<()> {
//! use mandrake_storage::backup;
//! let dir = backup::default_dir()?;
//! let made = backup::backup(url, &backup::default_path(&dir, "mandrake"), |_| {}).await?;
//! backup::prune(&dir, "mandrake", 7, Some(&made.path))?; // keep the newest seven
//! let copy = backup::restore(url, &made.path, &backup::RestoreTarget::New).await?;
//! println!("restored into {}", copy.url);
//! # Ok(()) }
//! ```

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor, PgConnection};

use crate::admin::{connect_one, connect_options};
use crate::error::{BackupError, Error, Result};
use crate::migrate::{MigrateOptions, Migrations, State, migrate, status};
use crate::sql::quote_ident;
use crate::url::without_params;

/// The PostgreSQL client tools (`pg_dump`, `pg_restore`) of one major version.
#[derive(Debug, Clone)]
pub struct ClientTools {
    bin_dir: PathBuf,
}

impl ClientTools {
    /// The tools matching the major version of the server at `url`, found
    /// the way the embedded cluster finds `initdb`: on PATH, via
    /// `pg_config --bindir`, or in `/usr/lib/postgresql/<major>/bin`.
    pub async fn for_server(url: &str) -> Result<ClientTools> {
        let mut conn = connect_one(url).await?;
        let major = crate::admin::server_major(&mut conn).await?;
        let _ = conn.close().await;
        ClientTools::find(major)
    }

    /// The tools of PostgreSQL `major`, or an error naming what was found.
    pub fn find(major: u32) -> Result<ClientTools> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        // The binaries of the embedded and test clusters come with theirs.
        if let Some(dir) = std::env::var_os("MANDRAKE_PG_BIN") {
            candidates.push(PathBuf::from(dir));
        }
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        let mut seen = Vec::new();
        for dir in candidates {
            if !dir.join("pg_dump").is_file() || !dir.join("pg_restore").is_file() {
                continue;
            }
            match tool_major(&dir.join("pg_dump")) {
                Some(found) if found == major => return Ok(ClientTools { bin_dir: dir }),
                Some(found) => seen.push(format!("{found} in {}", dir.display())),
                None => {}
            }
        }
        let seen = if seen.is_empty() {
            "none".to_owned()
        } else {
            seen.join(", ")
        };
        Err(BackupError::MissingTools { major, found: seen }.into())
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(tool));
        cmd.stdin(Stdio::null());
        cmd
    }
}

/// `pg_dump (PostgreSQL) 15.18 (Debian …)` → 15.
fn tool_major(tool: &Path) -> Option<u32> {
    let out = Command::new(tool).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split(") ").nth(1)?;
    version.split(['.', ' ']).next()?.trim().parse().ok()
}

/// What [`backup`] made.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The archive.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// How long the dump took.
    pub duration: Duration,
    /// The tables whose rows it holds.
    pub tables: Vec<String>,
}

/// `.mandrake/backups` at the workspace root.
#[cfg(all(feature = "embedded", unix))]
pub fn default_dir() -> Result<PathBuf> {
    Ok(crate::cluster::workspace_root()?
        .join(".mandrake")
        .join("backups"))
}

/// `<dir>/<database>-<UTC timestamp>.dump`.
pub fn default_path(dir: &Path, database: &str) -> PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
    dir.join(format!("{database}-{stamp}.dump"))
}

/// Dumps the database at `url` into `out` (pg_dump's custom format, which
/// `pg_restore` reads). `progress` gets one line per table as it is dumped.
/// The archive appears only when complete: a failed dump leaves no file.
pub async fn backup(
    url: &str,
    out: &Path,
    progress: impl FnMut(&str) + Send + 'static,
) -> Result<Backup> {
    let tools = ClientTools::for_server(url).await?;
    let url = url.to_owned();
    let out = out.to_owned();
    blocking(move || dump(&tools, &url, &out, progress)).await
}

fn dump(
    tools: &ClientTools,
    url: &str,
    out: &Path,
    mut progress: impl FnMut(&str),
) -> Result<Backup> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| io(format!("cannot create {}", dir.display()), e))?;
    }
    let partial = out.with_extension("partial");
    let started = Instant::now();
    let mut child = tools
        .command("pg_dump")
        .args(["--format=custom", "--verbose", "--file"])
        .arg(&partial)
        .args(libpq_connection(url))
        .envs(libpq_environment(url))
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io("cannot run pg_dump".into(), e))?;
    let mut errors = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            // `pg_dump: dumping contents of table "public.messages"`
            if let Some(table) = line.split("dumping contents of table ").nth(1) {
                progress(&format!("dumping {}", table.trim_matches('"')));
            } else if line.contains("error") {
                errors.push(line);
            }
        }
    }
    let status = child.wait().map_err(|e| io("pg_dump".into(), e))?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Backup(BackupError::Failed(format!(
            "pg_dump failed: {}",
            errors.join("; ")
        ))));
    }
    std::fs::rename(&partial, out).map_err(|e| io(format!("cannot write {}", out.display()), e))?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(Backup {
        path: out.to_owned(),
        bytes,
        duration: started.elapsed(),
        tables: archive_tables(tools, out)?,
    })
}

/// The tables whose data `archive` holds, from its table of contents; an
/// error says the file is not a readable archive.
fn archive_tables(tools: &ClientTools, archive: &Path) -> Result<Vec<String>> {
    let out = tools
        .command("pg_restore")
        .arg("--list")
        .arg(archive)
        .output()
        .map_err(|e| io("cannot run pg_restore".into(), e))?;
    if !out.status.success() {
        return Err(not_an_archive(archive, &out.stderr));
    }
    // `3398; 0 16390 TABLE DATA public messages postgres`
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| l.split(" TABLE DATA ").nth(1))
        .filter_map(|rest| rest.split_whitespace().nth(1).map(str::to_owned))
        .collect())
}

fn not_an_archive(archive: &Path, stderr: &[u8]) -> Error {
    BackupError::NotAnArchive {
        path: archive.display().to_string(),
        detail: String::from_utf8_lossy(stderr).trim().to_owned(),
    }
    .into()
}

/// Deletes the oldest of `database`'s backups in `dir` beyond the newest
/// `keep`, and never `written` (the backup just made); returns what it
/// deleted. Only names [`default_path`] gives, `<database>-<UTC timestamp>.dump`,
/// count: another database's backups (`app-staging-…` beside `app-…`) are
/// not this one's. `keep` must be at least 1.
pub fn prune(
    dir: &Path,
    database: &str,
    keep: usize,
    written: Option<&Path>,
) -> Result<Vec<PathBuf>> {
    if keep == 0 {
        return Err(BackupError::KeepZero.into());
    }
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io(format!("cannot read {}", dir.display()), e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| {
                    n.strip_prefix(database)?
                        .strip_prefix('-')?
                        .strip_suffix(".dump")
                })
                .is_some_and(is_stamp)
        })
        .collect();
    // The names end in a UTC timestamp: name order is age order.
    dumps.sort();
    let excess = dumps.len().saturating_sub(keep);
    let old: Vec<PathBuf> = dumps
        .drain(..excess)
        .filter(|p| written.is_none_or(|w| !same_file(p, w)))
        .collect();
    for path in &old {
        std::fs::remove_file(path)
            .map_err(|e| io(format!("cannot delete {}", path.display()), e))?;
    }
    Ok(old)
}

/// `20261127T081500Z` or `20261127T081500.123Z`, as [`default_path`] writes them.
fn is_stamp(text: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    let Some(body) = text.strip_suffix('Z') else {
        return false;
    };
    let (time, millis) = body.split_once('.').unwrap_or((body, "000"));
    match time.split_once('T') {
        Some((date, clock)) => digits(date, 8) && digits(clock, 6) && digits(millis, 3),
        None => false,
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    a == b || std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok()
}

/// Where [`restore`] puts the archive's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreTarget {
    /// A new database named `<database>_restored_<timestamp>`.
    New,
    /// A new database of this name; it must not exist.
    Named(String),
    /// In place of this existing database (`--force`): the archive is
    /// restored into a new database first, then the names are swapped in one
    /// transaction, so a failure at any point leaves the database as it was.
    /// The replaced database is kept, renamed, for you to drop.
    Replace(String),
}

/// What [`restore`] made.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The database that now holds the archive's contents.
    pub database: String,
    /// Its URL.
    pub url: String,
    /// With [`RestoreTarget::Replace`]: the name the replaced database now has.
    pub replaced: Option<String>,
}

/// Restores `archive` on the server of `url` (whose database names the
/// default target's prefix). A damaged archive is refused, and nothing on
/// the server changes.
pub async fn restore(url: &str, archive: &Path, target: &RestoreTarget) -> Result<Restored> {
    let current = connect_options(url)?
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S%3f").to_string();
    let tools = ClientTools::for_server(url).await?;
    let mut admin = crate::admin::server_connection(url).await?;
    if let RestoreTarget::Named(name) | RestoreTarget::Replace(name) = target
        && name.len() > 63
    {
        // PostgreSQL would cut it silently, and then find neither name.
        return Err(BackupError::NameTooLong { name: name.clone() }.into());
    }
    let (fresh, replace) = match target {
        RestoreTarget::New => (name_with(&current, "_restored_", &stamp), None),
        RestoreTarget::Named(name) => {
            if crate::admin::database_exists(&mut admin, name).await? {
                return Err(BackupError::DatabaseExists { name: name.clone() }.into());
            }
            (name.clone(), None)
        }
        RestoreTarget::Replace(name) => {
            if !crate::admin::database_exists(&mut admin, name).await? {
                return Err(BackupError::NoSuchDatabase { name: name.clone() }.into());
            }
            (name_with(name, "_restoring_", &stamp), Some(name.clone()))
        }
    };
    restore_into(&tools, url, &mut admin, archive, &fresh).await?;
    let Some(live) = replace else {
        return Ok(Restored {
            url: crate::url::with_database(url, &fresh),
            database: fresh,
            replaced: None,
        });
    };
    let kept = name_with(&live, "_replaced_", &stamp);
    if let Err(err) = swap(&mut admin, &live, &fresh, &kept).await {
        crate::admin::drop_database(&mut admin, &fresh).await;
        return Err(err);
    }
    Ok(Restored {
        url: crate::url::with_database(url, &live),
        database: live,
        replaced: Some(kept),
    })
}

/// Creates `name` and restores `archive` into it in one transaction; on any
/// failure the new database is dropped again.
async fn restore_into(
    tools: &ClientTools,
    server: &str,
    admin: &mut PgConnection,
    archive: &Path,
    name: &str,
) -> Result<()> {
    // Read the table of contents first: a file that is no archive at all
    // creates nothing.
    archive_tables(tools, archive)?;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {} TEMPLATE template0",
            quote_ident(name)
        )))
        .await?;
    let url = crate::url::with_database(server, name);
    let tools = tools.clone();
    let file = archive.to_owned();
    let result = blocking(move || {
        let out = tools
            .command("pg_restore")
            .args([
                "--exit-on-error",
                "--single-transaction",
                "--no-owner",
                "--no-privileges",
            ])
            .args(libpq_connection(&url))
            .envs(libpq_environment(&url))
            .arg(&file)
            .output()
            .map_err(|e| io("cannot run pg_restore".into(), e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Backup(BackupError::Failed(format!(
                "restoring {} failed, so nothing was changed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))))
        }
    })
    .await;
    if result.is_err() {
        crate::admin::drop_database(admin, name).await;
    }
    result
}

/// Renames `live` to `kept` and `fresh` to `live` in one transaction, after
/// ending the sessions on `live` and refusing new ones meanwhile.
async fn swap(admin: &mut PgConnection, live: &str, fresh: &str, kept: &str) -> Result<()> {
    let (live_q, fresh_q, kept_q) = (quote_ident(live), quote_ident(fresh), quote_ident(kept));
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {live_q} ALLOW_CONNECTIONS false"
        )))
        .await?;
    let mut last = None;
    // A session may still be ending when the rename runs: try a few times.
    for _ in 0..50 {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(live)
        .execute(&mut *admin)
        .await?;
        let renamed = async {
            let mut tx = admin.begin().await?;
            tx.execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {live_q} RENAME TO {kept_q}"
            )))
            .await?;
            tx.execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {fresh_q} RENAME TO {live_q}"
            )))
            .await?;
            tx.commit().await
        }
        .await;
        match renamed {
            Ok(()) => {
                last = None;
                break;
            }
            Err(err) => last = Some(err),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let target = if last.is_some() { &live_q } else { &kept_q };
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {target} ALLOW_CONNECTIONS true"
        )))
        .await?;
    match last {
        None => Ok(()),
        Some(err) => Err(Error::Backup(BackupError::Failed(format!(
            "could not take the place of {live} (sessions kept reconnecting?): {err}"
        )))),
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default)]
pub struct Verification {
    /// Each table of the archive with its row count.
    pub tables: Vec<(String, i64)>,
    /// The newest migration the archive's database had applied.
    pub migrated_to: Option<i64>,
    /// Migrations in the folder newer than the archive (fine: `migrate`
    /// applies them after a restore).
    pub pending: Vec<String>,
    /// What is wrong; empty when the archive is sound.
    pub problems: Vec<String>,
}

impl Verification {
    /// True when nothing is wrong.
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Restores `archive` into a scratch database on the server of `url` and
/// checks it: its migration history against `migrations`, its schema against
/// what those migrations build, and its rows counted per table. The scratch
/// databases are dropped afterwards. A damaged archive is an `Err`.
pub async fn verify(url: &str, archive: &Path, migrations: &Migrations) -> Result<Verification> {
    let tools = ClientTools::for_server(url).await?;
    let mut admin = crate::admin::server_connection(url).await?;
    let mut scratch = crate::admin::Scratch::new(url);
    let (restored, expected) = (scratch.name("verify"), scratch.name("expected"));
    let result = match restore_into(&tools, url, &mut admin, archive, &restored).await {
        Ok(()) => check_restored(url, &mut admin, migrations, &restored, &expected).await,
        Err(err) => Err(err),
    };
    scratch.drop_all().await;
    result
}

async fn check_restored(
    server: &str,
    admin: &mut PgConnection,
    migrations: &Migrations,
    restored: &str,
    expected: &str,
) -> Result<Verification> {
    let restored_url = crate::url::with_database(server, restored);
    let mut report = Verification::default();
    let mut conn = connect_one(&restored_url).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await?;
    for table in tables {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {}",
            quote_ident(&table)
        )))
        .fetch_one(&mut conn)
        .await?;
        report.tables.push((table, count));
    }
    let has_history = report.tables.iter().any(|(t, _)| t == "_sqlx_migrations");
    if !has_history {
        report.problems.push(
            "no migration history (_sqlx_migrations): not a database our migrations built".into(),
        );
        return Ok(report);
    }
    for row in status(&restored_url, migrations).await? {
        match row.state {
            State::Applied => report.migrated_to = Some(row.version),
            State::Pending => report.pending.push(row.name),
            other => report
                .problems
                .push(format!("migration {}: {other}", row.name)),
        }
    }
    // What the migrations build, up to where the archive stood.
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(expected)
        )))
        .await?;
    let expected_url = crate::url::with_database(server, expected);
    if let Some(version) = report.migrated_to {
        let options = MigrateOptions {
            to: Some(version),
            ..MigrateOptions::complete()
        };
        migrate(&expected_url, migrations, &options).await?;
    }
    let have = crate::schema::introspect::inspect_url(&restored_url)
        .await?
        .normalized();
    let want = crate::schema::introspect::inspect_url(&expected_url)
        .await?
        .normalized();
    for table in &want.tables {
        match have.table(&table.name) {
            None => report
                .problems
                .push(format!("table {} is missing", table.name)),
            Some(t) if t != table => report.problems.push(format!(
                "table {} differs from what the migrations build",
                table.name
            )),
            Some(_) => {}
        }
    }
    for table in &have.tables {
        if want.table(&table.name).is_none() {
            report.problems.push(format!(
                "table {} is not built by the migrations",
                table.name
            ));
        }
    }
    Ok(report)
}

/// `<base><infix><stamp>`, the base cut so the whole fits in 63 bytes.
fn name_with(base: &str, infix: &str, stamp: &str) -> String {
    let room = 63 - infix.len() - stamp.len();
    let mut end = base.len().min(room);
    while !base.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{infix}{stamp}", &base[..end])
}

/// The URL parameters libpq reads from the environment instead, with their
/// variables (sqlx's spellings too).
const LIBPQ_ENVIRONMENT: &[(&str, &str)] = &[
    ("password", "PGPASSWORD"),
    ("sslmode", "PGSSLMODE"),
    ("ssl-mode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("ssl-root-cert", "PGSSLROOTCERT"),
    ("ssl-ca", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("ssl-cert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("ssl-key", "PGSSLKEY"),
];

/// `--dbname=<url>` for the client tools: without the password (a command
/// line is visible to every user in `ps`) and the TLS settings, which
/// [`libpq_environment`] passes, and without the one parameter sqlx adds
/// that libpq refuses (`statement-cache-capacity`).
fn libpq_connection(url: &str) -> [String; 1] {
    let (url, _) = without_params(url, |pair| {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        key == "statement-cache-capacity" || LIBPQ_ENVIRONMENT.iter().any(|(k, _)| *k == key)
    });
    [format!("--dbname={}", crate::url::without_password(&url))]
}

/// The environment of the client tools for `url`: `PGPASSWORD` when it
/// carries a password (a process's environment is readable only by its user
/// and root), and `PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY` as its
/// TLS parameters say, so `pg_dump` verifies the server as the pool does.
fn libpq_environment(url: &str) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = crate::url::url_password(url)
        .map(|password| ("PGPASSWORD", password))
        .into_iter()
        .collect();
    let query = url.split_once('?').map_or("", |(_, q)| q);
    for (key, value) in query.split('&').filter_map(|p| p.split_once('=')) {
        if let Some((_, var)) = LIBPQ_ENVIRONMENT
            .iter()
            .find(|(k, var)| *k == key && *var != "PGPASSWORD")
        {
            env.push((var, crate::url::percent_decode(value)));
        }
    }
    env
}

fn io(context: String, err: std::io::Error) -> Error {
    Error::Backup(BackupError::Failed(format!("{context}: {err}")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Backup(BackupError::Failed(format!("task failed: {e}"))))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_postgres_limit() {
        let long = "x".repeat(80);
        let name = name_with(&long, "_restored_", "20261127081500");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("_restored_20261127081500"));
        assert_eq!(
            name_with("mandrake", "_replaced_", "1"),
            "mandrake_replaced_1"
        );
    }

    #[test]
    fn urls_keep_their_parts_and_change_the_database() {
        assert_eq!(
            crate::url::with_database(
                "postgres://u@localhost:5432/app?host=%2Ftmp",
                "app_restored_1"
            ),
            "postgres://u@localhost:5432/app_restored_1?host=%2Ftmp"
        );
        assert_eq!(
            crate::url::with_database("postgres://h", "a b"),
            "postgres://h/a%20b"
        );
        assert_eq!(
            crate::url::with_database("postgres://h:1/x", "y"),
            "postgres://h:1/y"
        );
        assert_eq!(
            libpq_connection("postgres://h/x?sslmode=prefer&statement-cache-capacity=100"),
            ["--dbname=postgres://h/x"]
        );
        assert_eq!(
            libpq_connection("postgres://h/x?statement-cache-capacity=1"),
            ["--dbname=postgres://h/x"]
        );
    }

    #[test]
    fn the_password_and_tls_go_through_the_environment_never_the_command_line() {
        let url = "postgres://app:S3cret%21@h:5432/x?sslmode=verify-full&sslrootcert=%2Fca.crt\
                   &sslcert=/c.crt&sslkey=/c.key&application_name=x";
        assert_eq!(
            libpq_connection(url),
            ["--dbname=postgres://app@h:5432/x?application_name=x"]
        );
        assert_eq!(
            libpq_environment(url),
            [
                ("PGPASSWORD", "S3cret!".to_owned()),
                ("PGSSLMODE", "verify-full".to_owned()),
                ("PGSSLROOTCERT", "/ca.crt".to_owned()),
                ("PGSSLCERT", "/c.crt".to_owned()),
                ("PGSSLKEY", "/c.key".to_owned()),
            ]
        );
        let in_query = "postgres://app@h/x?password=S3cret&ssl-mode=require";
        assert_eq!(libpq_connection(in_query), ["--dbname=postgres://app@h/x"]);
        assert_eq!(
            libpq_environment(in_query),
            [
                ("PGPASSWORD", "S3cret".to_owned()),
                ("PGSSLMODE", "require".to_owned())
            ]
        );
        assert!(libpq_environment("postgres://app@h/x").is_empty());
    }

    #[test]
    fn prune_keeps_the_newest_of_this_database_only() {
        let dir = std::env::temp_dir().join(format!("mandrake-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for stamp in [
            "20260101T000000Z",
            "20260301T000000.123Z",
            "20260201T000000Z",
        ] {
            std::fs::write(dir.join(format!("app-{stamp}.dump")), b"x").unwrap();
        }
        std::fs::write(dir.join("other-20250101T000000Z.dump"), b"x").unwrap();
        // Another database whose name starts with this one's.
        std::fs::write(dir.join("app-staging-20250101T000000Z.dump"), b"x").unwrap();
        std::fs::write(dir.join("app-notes.dump"), b"x").unwrap();
        let gone = prune(&dir, "app", 2, None).unwrap();
        assert_eq!(gone, [dir.join("app-20260101T000000Z.dump")]);
        assert!(dir.join("other-20250101T000000Z.dump").exists());
        assert!(dir.join("app-staging-20250101T000000Z.dump").exists());
        assert!(dir.join("app-notes.dump").exists());
        // Never the file just written, even when it is not the newest name.
        let written = dir.join("app-20260201T000000Z.dump");
        let gone = prune(&dir, "app", 1, Some(&written)).unwrap();
        assert!(gone.is_empty(), "{gone:?}");
        assert!(written.exists());
        let err = prune(&dir, "app", 0, None).unwrap_err().to_string();
        assert!(err.contains("keep at least 1"), "{err}");
        assert!(dir.join("app-20260301T000000.123Z.dump").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
