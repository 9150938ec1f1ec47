//! Applying and reverting migrations, on top of sqlx's migrator.
//!
//! The files and the `_sqlx_migrations` table are sqlx's own, so the folder
//! also works with `sqlx migrate run`. What sqlx leaves open is closed here:
//! a lock with a timeout that is always released, refusal of out-of-order
//! pending files, a record of a failed `-- no-transaction` file, tamper checks
//! before anything runs, and refusal to roll back past a missing down file.
//!
//! ```no_run
//! # async fn demo() -> mandrake_storage::Result<()> {
//! use mandrake_storage::migrate::{Migrations, MigrateOptions, migrate};
//!
//! // Or embedded at compile time: mandrake_storage::embed_migrations!("migrations")?
//! let migrations = Migrations::from_dir("migrations")?;
//! let url = mandrake_storage::Settings::from_env()?.resolve_url().await?;
//! let report = migrate(&url, &migrations, &MigrateOptions::default()).await?;
//! println!("applied {} migrations", report.applied.len());
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migrate, Migration, MigrationType};
use sqlx::postgres::PgDatabaseError;
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::error::{Error, MigrationError, Result};

/// sqlx's bookkeeping table.
pub const TABLE: &str = "_sqlx_migrations";

/// The migrations of an application: `<version>_<name>.up.sql` files with
/// their `.down.sql` partners.
#[derive(Debug, Clone, Default)]
pub struct Migrations {
    ups: BTreeMap<i64, Migration>,
    downs: BTreeMap<i64, Migration>,
    /// `<version>_<name>` of each up file, for messages.
    names: BTreeMap<i64, String>,
}

impl Migrations {
    /// Reads a migrations folder the way sqlx does (same versions,
    /// descriptions and checksums). A missing folder is an empty set.
    ///
    /// Refuses a folder with two files of one version, a `.down.sql` with no
    /// `.up.sql`, or a file that is not a migration: sqlx would silently skip
    /// or drop such files.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Migrations> {
        let dir = dir.as_ref();
        if !dir.exists() {
            return Ok(Migrations::default());
        }
        let names: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| MigrationError::Unreadable {
                place: dir.display().to_string(),
                reason: e.to_string(),
            })?
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        check_file_names(&dir.display().to_string(), &names)?;
        let resolved =
            sqlx::migrate::resolve_blocking(dir).map_err(|e| MigrationError::Unreadable {
                place: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        let mut out = Migrations::default();
        for (migration, path) in resolved {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.insert(migration, &name);
        }
        Ok(out)
    }

    /// Builds the set from `(file name, contents)` pairs, e.g. files embedded
    /// with `include_str!` by [`crate::embed_migrations!`].
    pub fn from_sources(files: &[(&str, &'static str)]) -> Result<Migrations> {
        let names: Vec<String> = files.iter().map(|(name, _)| name.to_string()).collect();
        check_file_names("the embedded migrations", &names)?;
        let mut out = Migrations::default();
        for (name, sql) in files {
            let (version, rest) =
                name.split_once('_')
                    .ok_or_else(|| MigrationError::BadFileName {
                        name: name.to_string(),
                    })?;
            let version: i64 = version.parse().map_err(|_| MigrationError::BadFileName {
                name: name.to_string(),
            })?;
            let kind = MigrationType::from_filename(rest);
            let description = rest.trim_end_matches(kind.suffix()).replace('_', " ");
            let migration = Migration::new(
                version,
                Cow::Owned(description),
                kind,
                sqlx::SqlSafeStr::into_sql_str(*sql),
                sql.starts_with("-- no-transaction"),
            );
            out.insert(migration, name);
        }
        Ok(out)
    }

    fn insert(&mut self, migration: Migration, file_name: &str) {
        let version = migration.version;
        if migration.migration_type == MigrationType::ReversibleDown {
            self.downs.insert(version, migration);
        } else {
            let stem = file_name
                .trim_end_matches(".sql")
                .trim_end_matches(".up")
                .to_owned();
            self.names.insert(version, stem);
            self.ups.insert(version, migration);
        }
    }

    /// Versions of the up files, oldest first.
    pub fn versions(&self) -> impl Iterator<Item = i64> + '_ {
        self.ups.keys().copied()
    }

    /// `<version>_<name>` of a version.
    pub fn name(&self, version: i64) -> String {
        self.names
            .get(&version)
            .cloned()
            .unwrap_or_else(|| version.to_string())
    }

    /// True when there is no migration.
    pub fn is_empty(&self) -> bool {
        self.ups.is_empty()
    }
}

/// What a file in a migrations folder is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// `<version>_<name>.up.sql` or `<version>_<name>.sql`.
    Up(i64),
    /// `<version>_<name>.down.sql`.
    Down(i64),
    /// A hidden file (`.gitkeep`): not ours to judge.
    Hidden,
    NotMigration,
}

fn file_kind(name: &str) -> FileKind {
    if name.starts_with('.') {
        return FileKind::Hidden;
    }
    let Some((version, rest)) = name.split_once('_') else {
        return FileKind::NotMigration;
    };
    let Ok(version) = version.parse::<i64>() else {
        return FileKind::NotMigration;
    };
    let Some(stem) = rest.strip_suffix(".sql") else {
        return FileKind::NotMigration;
    };
    if stem.strip_suffix(".down").is_some_and(|d| !d.is_empty()) {
        FileKind::Down(version)
    } else if stem.trim_end_matches(".up").is_empty() {
        FileKind::NotMigration
    } else {
        FileKind::Up(version)
    }
}

/// Every problem with the file names of a migrations folder, reported at once.
fn check_file_names(place: &str, names: &[String]) -> Result<()> {
    let mut ups: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    let mut downs: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    let mut problems = Vec::new();
    for name in names {
        match file_kind(name) {
            FileKind::Up(v) => ups.entry(v).or_default().push(name),
            FileKind::Down(v) => downs.entry(v).or_default().push(name),
            FileKind::Hidden => {}
            FileKind::NotMigration => problems.push(format!(
                "{name} is not a migration (expected <version>_<name>.up.sql or .down.sql)"
            )),
        }
    }
    for (kind, files) in [("up", &ups), ("down", &downs)] {
        for (version, names) in files.iter().filter(|(_, n)| n.len() > 1) {
            let mut names = names.clone();
            names.sort();
            problems.push(format!(
                "version {version} has {} {kind} files ({}): give each migration its own version",
                names.len(),
                names.join(", ")
            ));
        }
    }
    for (version, names) in &downs {
        if !ups.contains_key(version) {
            problems.push(format!("{} has no up file", names[0]));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort();
    Err(MigrationError::AmbiguousFolder {
        place: place.to_owned(),
        problems,
    }
    .into())
}

/// Options of [`migrate`].
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Apply pending migrations up to and including this version.
    pub to: Option<i64>,
    /// Say what would be applied, apply nothing.
    pub dry_run: bool,
    /// Apply pending migrations older than the newest applied one.
    pub allow_out_of_order: bool,
    /// How long to wait for another migrator to finish.
    pub lock_timeout: Duration,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            to: None,
            dry_run: false,
            allow_out_of_order: false,
            lock_timeout: Duration::from_secs(60),
        }
    }
}

/// What a run did (or, with `dry_run`, would do): `(version, name)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Migrations applied (or that would be, with `dry_run`).
    pub applied: Vec<(i64, String)>,
    /// Migrations reverted.
    pub reverted: Vec<(i64, String)>,
    /// What ran but deserves a look (an up file with no statement).
    pub warnings: Vec<String>,
}

/// Which migrations to revert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackTarget {
    /// The newest N applied migrations.
    Steps(usize),
    /// Every applied migration newer than this version, which must be an
    /// applied one (or 0: every migration).
    To(i64),
}

/// The state of one version in [`status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Applied, and its file is unchanged.
    Applied,
    /// Not applied yet.
    Pending,
    /// Applied, but the file changed since.
    Changed,
    /// Applied, but its file is gone.
    MissingFile,
    /// A `-- no-transaction` file that failed partway.
    Failed,
    /// A `-- no-transaction` file whose run was interrupted: how much of it
    /// took effect is unknown.
    Unknown,
    /// A `-- no-transaction` file running now (a migrator holds the lock).
    Running,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Applied => "applied",
            State::Pending => "pending",
            State::Changed => "changed",
            State::MissingFile => "missing file",
            State::Failed => "failed",
            State::Unknown => "unknown",
            State::Running => "running",
        })
    }
}

/// One line of [`status`].
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    /// The migration's version (its timestamp).
    pub version: i64,
    /// `<version>_<name>`.
    pub name: String,
    /// Where it stands.
    pub state: State,
    /// When it was applied.
    pub applied_at: Option<DateTime<Utc>>,
    /// How long it took to apply.
    pub duration: Option<Duration>,
}

/// A row of `_sqlx_migrations`.
struct AppliedRow {
    version: i64,
    description: String,
    installed_on: DateTime<Utc>,
    success: bool,
    checksum: Vec<u8>,
    execution_time: i64,
}

/// A dedicated connection holding the migration lock. The lock is a session
/// lock: it goes when the connection closes, so every path releases it —
/// an error, a panic, or a cancelled future that drops this value.
struct Locked {
    conn: PgConnection,
    key: i64,
}

impl Locked {
    async fn acquire(url: &str, timeout: Duration) -> Result<Locked> {
        let mut conn = crate::admin::connect_one(url).await?;
        let database: String = sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&mut conn)
            .await?;
        let key = lock_key(&database);
        let ms = timeout.as_millis().max(1).to_string();
        sqlx::query("SELECT set_config('lock_timeout', $1, false)")
            .bind(&ms)
            .execute(&mut conn)
            .await?;
        let taken = sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut conn)
            .await;
        if let Err(err) = taken {
            if sqlstate(&err).as_deref() == Some("55P03") {
                let holder = lock_holder(url, key).await;
                return Err(MigrationError::LockTimeout {
                    database,
                    holder,
                    waited: timeout,
                }
                .into());
            }
            return Err(err.into());
        }
        sqlx::query("RESET lock_timeout").execute(&mut conn).await?;
        // PostgreSQL 14+: notice within a second when a cancelled migrator
        // drops this connection mid-statement, and free the lock then.
        let _ = sqlx::query("SET client_connection_check_interval = 1000")
            .execute(&mut conn)
            .await;
        conn.ensure_migrations_table(TABLE).await?;
        Ok(Locked { conn, key })
    }

    async fn release(mut self) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.conn)
            .await?;
        self.conn.close().await?;
        Ok(())
    }

    async fn applied(&mut self) -> Result<Vec<AppliedRow>> {
        applied_rows(&mut self.conn).await
    }
}

/// The advisory lock key of migrations on `database`: the key sqlx uses, so
/// this runner and `sqlx migrate run` exclude each other.
pub fn lock_key(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

async fn lock_holder(url: &str, key: i64) -> Option<i32> {
    let mut conn = crate::admin::connect_one(url).await.ok()?;
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND ((classid::bigint << 32) | objid::bigint) = $1 LIMIT 1",
    )
    .bind(key)
    .fetch_optional(&mut conn)
    .await
    .ok()
    .flatten()
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

async fn applied_rows(conn: &mut PgConnection) -> Result<Vec<AppliedRow>> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(TABLE)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT version, description, installed_on, success, checksum, execution_time \
         FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(AppliedRow {
                version: r.try_get(0)?,
                description: r.try_get(1)?,
                installed_on: r.try_get(2)?,
                success: r.try_get(3)?,
                checksum: r.try_get(4)?,
                execution_time: r.try_get(5)?,
            })
        })
        .collect()
}

/// Refuses to go on when an applied migration's file changed or is gone,
/// or when a no-transaction migration failed partway.
fn check_applied(migrations: &Migrations, applied: &[AppliedRow]) -> Result<()> {
    if let Some(failed) = applied.iter().find(|a| !a.success) {
        return Err(MigrationError::Dirty {
            name: migrations.name(failed.version),
            version: failed.version,
            interrupted: failed.execution_time == STARTED,
        }
        .into());
    }
    let mut problems = Vec::new();
    for a in applied {
        match migrations.ups.get(&a.version) {
            None => problems.push(format!(
                "{}_{} was applied but its file is missing",
                a.version,
                a.description.replace(' ', "_")
            )),
            Some(m) if *m.checksum != *a.checksum => problems.push(format!(
                "{} was applied but its file has changed since",
                migrations.name(a.version)
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(MigrationError::ChecksumMismatch { problems }.into())
    }
}

/// The runner holds an advisory lock and runs `-- no-transaction` files:
/// both need one session, which PgBouncer in transaction mode does not give.
fn refuse_pgbouncer(url: &str) -> Result<()> {
    let in_url = crate::url::strip_pgbouncer(url).1;
    if in_url || crate::config::pgbouncer_from_env()? {
        return Err(MigrationError::NeedsDirectUrl.into());
    }
    Ok(())
}

/// Applies pending migrations in version order, each in its own transaction
/// (unless marked `-- no-transaction`), holding the migration lock.
pub async fn migrate(
    url: &str,
    migrations: &Migrations,
    options: &MigrateOptions,
) -> Result<Report> {
    refuse_pgbouncer(url)?;
    if let Some(to) = options.to
        && !migrations.ups.contains_key(&to)
    {
        return Err(MigrationError::VersionMissing {
            version: to,
            known: migrations.versions().collect(),
            applied: false,
        }
        .into());
    }
    let mut locked = Locked::acquire(url, options.lock_timeout).await?;
    let applied = locked.applied().await?;
    check_applied(migrations, &applied)?;
    let done: BTreeSet<i64> = applied.iter().map(|a| a.version).collect();
    let newest = done.iter().next_back().copied();
    let pending: Vec<&Migration> = migrations
        .ups
        .values()
        .filter(|m| !done.contains(&m.version))
        .filter(|m| options.to.is_none_or(|to| m.version <= to))
        .collect();
    if let Some(newest) = newest {
        let old: Vec<String> = pending
            .iter()
            .filter(|m| m.version < newest)
            .map(|m| migrations.name(m.version))
            .collect();
        if !old.is_empty() && !options.allow_out_of_order {
            return Err(MigrationError::OutOfOrder {
                newest,
                pending: old,
            }
            .into());
        }
    }
    let mut report = Report::default();
    for migration in pending {
        let name = migrations.name(migration.version);
        if statements(migration.sql.as_str()).is_empty() {
            report.warnings.push(format!(
                "{name}.up.sql has no statement (empty, or comments only): it is recorded as \
                 applied and changes nothing"
            ));
        }
        if !options.dry_run {
            apply_one(&mut locked.conn, migration, &name).await?;
        }
        report.applied.push((migration.version, name));
    }
    locked.release().await?;
    Ok(report)
}

/// `execution_time` of a `-- no-transaction` file recorded before it runs:
/// if it is still there, the run was interrupted and the state is unknown.
const STARTED: i64 = -1;
/// `execution_time` of a `-- no-transaction` file that failed with an error.
const FAILED: i64 = -2;

async fn apply_one(conn: &mut PgConnection, migration: &Migration, name: &str) -> Result<()> {
    if !migration.no_tx {
        return conn
            .apply(TABLE, migration)
            .await
            .map(|_| ())
            .map_err(|err| {
                Error::Migration(describe_failure(name, migration.sql.as_str(), 0, err))
            });
    }
    // Outside a transaction a file can stop half-way (an error, or a killed
    // process): record the attempt first, so nothing runs on top of it until
    // someone has looked (`resolve`).
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ($1, $2, FALSE, $3, $4)",
    )
    .bind(migration.version)
    .bind(&*migration.description)
    .bind(&*migration.checksum)
    .bind(STARTED)
    .execute(&mut *conn)
    .await?;
    let start = std::time::Instant::now();
    let outcome = execute_each(conn, migration.sql.as_str()).await;
    restore_session(conn).await?;
    let (success, time) = match &outcome {
        Ok(_) => (true, start.elapsed().as_nanos() as i64),
        Err(_) => (false, FAILED),
    };
    let recorded = sqlx::query(
        "UPDATE _sqlx_migrations SET success = $2, execution_time = $3 WHERE version = $1",
    )
    .bind(migration.version)
    .bind(success)
    .bind(time)
    .execute(&mut *conn)
    .await?;
    if recorded.rows_affected() != 1 {
        return Err(MigrationError::HistoryLost {
            name: name.to_owned(),
        }
        .into());
    }
    outcome.map_err(|(err, offset)| {
        let err = sqlx::migrate::MigrateError::ExecuteMigration(err, migration.version);
        Error::Migration(describe_failure(name, migration.sql.as_str(), offset, err))
    })
}

/// After a `-- no-transaction` file: its `SET`s (a `lock_timeout`, a
/// `statement_timeout`) hold for the session, and must not reach the next
/// file of the run.
async fn restore_session(conn: &mut PgConnection) -> Result<()> {
    conn.execute("RESET ALL").await?;
    // As `Locked::acquire` set it (PostgreSQL 14+).
    let _ = conn
        .execute("SET client_connection_check_interval = 1000")
        .await;
    Ok(())
}

/// A `-- no-transaction` down file, a statement at a time (see
/// [`statements`]), then its version forgotten. Down files that may stop
/// half-way should be safe to run again (`IF EXISTS`), as generated ones are.
async fn revert_outside_transaction(
    conn: &mut PgConnection,
    down: &Migration,
    name: &str,
) -> Result<()> {
    let ran = execute_each(conn, down.sql.as_str()).await;
    restore_session(conn).await?;
    let describe = |(err, offset), what: &str| {
        let err = sqlx::migrate::MigrateError::ExecuteMigration(err, down.version);
        Error::Migration(describe_failure(what, down.sql.as_str(), offset, err))
    };
    ran.map_err(|e| describe(e, name))?;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(down.version)
        .execute(&mut *conn)
        .await
        .map_err(|e| describe((e, 0), name))?;
    Ok(())
}

/// Runs `sql` one statement at a time: PostgreSQL runs the statements of
/// one query string as one implicit transaction, where CREATE INDEX
/// CONCURRENTLY and friends refuse to run.
/// A failure carries the failing statement's byte offset in `sql`, so that
/// its line is counted from the file's start.
async fn execute_each(
    conn: &mut PgConnection,
    sql: &str,
) -> std::result::Result<(), (sqlx::Error, usize)> {
    for statement in statements(sql) {
        let offset = statement.as_ptr() as usize - sql.as_ptr() as usize;
        conn.execute(sqlx::AssertSqlSafe(statement.to_owned()))
            .await
            .map_err(|e| (e, offset))?;
    }
    Ok(())
}

/// The statements of `sql`, split at the semicolons outside quotes,
/// dollar-quoted bodies and comments; blank and comment-only pieces are left out.
pub(crate) fn statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    let mut meaningful = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
                meaningful = true;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |e| i + 2 + e + 1);
            }
            b'$' => {
                // `$tag$ … $tag$`; a `$1` parameter is no quote.
                let tag_end = sql[i + 1..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map(|e| i + 1 + e);
                match tag_end {
                    Some(e) if bytes[e] == b'$' && !bytes[i + 1].is_ascii_digit() => {
                        let tag = &sql[i..=e];
                        i = sql[e + 1..]
                            .find(tag)
                            .map_or(bytes.len(), |f| e + 1 + f + tag.len() - 1);
                    }
                    _ => {}
                }
                meaningful = true;
            }
            b';' => {
                if meaningful {
                    out.push(sql[start..=i].trim());
                }
                start = i + 1;
                meaningful = false;
            }
            c if !c.is_ascii_whitespace() => meaningful = true,
            _ => {}
        }
        i += 1;
    }
    if meaningful {
        out.push(sql[start..].trim());
    }
    out
}

/// `20250101000000_x.up.sql failed at line 3: relation "y" does not exist`;
/// `offset`: where in `sql` the failing statement starts (0 when the file
/// ran whole).
fn describe_failure(
    name: &str,
    sql: &str,
    offset: usize,
    err: sqlx::migrate::MigrateError,
) -> MigrationError {
    let inner = match &err {
        sqlx::migrate::MigrateError::Execute(e)
        | sqlx::migrate::MigrateError::ExecuteMigration(e, _) => Some(e),
        _ => None,
    };
    let pg = inner
        .and_then(|e| e.as_database_error())
        .and_then(|e| e.try_downcast_ref::<PgDatabaseError>());
    let (line, message) = match pg {
        Some(pg) => {
            let line = match pg.position() {
                Some(sqlx::postgres::PgErrorPosition::Original(p)) => {
                    let before = sql[..offset].matches('\n').count();
                    let within = sql[offset..].chars().take(p).filter(|c| *c == '\n').count();
                    Some((before + within + 1, p))
                }
                _ => None,
            };
            (line, pg.message().to_owned())
        }
        None => (None, err.to_string()),
    };
    MigrationError::Failed {
        name: name.to_owned(),
        line,
        message,
    }
}

/// Reverts applied migrations, newest first, with their down files. Refuses
/// before doing anything when one of them has no down file.
pub async fn rollback(
    url: &str,
    migrations: &Migrations,
    target: RollbackTarget,
    lock_timeout: Duration,
) -> Result<Report> {
    refuse_pgbouncer(url)?;
    let mut locked = Locked::acquire(url, lock_timeout).await?;
    let applied = locked.applied().await?;
    check_applied(migrations, &applied)?;
    let newest_first = applied.iter().rev().map(|a| a.version);
    let versions: Vec<i64> = match target {
        RollbackTarget::Steps(n) if n > applied.len() => {
            return Err(MigrationError::TooManySteps {
                steps: n,
                applied: applied.len(),
            }
            .into());
        }
        RollbackTarget::Steps(n) => newest_first.take(n).collect(),
        RollbackTarget::To(v) if v == 0 || applied.iter().any(|a| a.version == v) => {
            newest_first.filter(|a| *a > v).collect()
        }
        // A mistyped target would otherwise revert everything.
        RollbackTarget::To(v) => {
            return Err(MigrationError::VersionMissing {
                version: v,
                known: applied.iter().map(|a| a.version).collect(),
                applied: true,
            }
            .into());
        }
    };
    let missing: Vec<String> = versions
        .iter()
        .filter(|v| !migrations.downs.contains_key(v))
        .map(|v| migrations.name(*v))
        .collect();
    if !missing.is_empty() {
        return Err(MigrationError::NoDownFile { names: missing }.into());
    }
    let mut report = Report::default();
    for version in versions {
        let down = &migrations.downs[&version];
        let name = migrations.name(version);
        let what = format!("{name} (down)");
        if down.no_tx {
            revert_outside_transaction(&mut locked.conn, down, &what).await?;
        } else {
            locked
                .conn
                .revert(TABLE, down)
                .await
                .map_err(|e| Error::Migration(describe_failure(&what, down.sql.as_str(), 0, e)))?;
        }
        report.reverted.push((version, name));
    }
    locked.release().await?;
    Ok(report)
}

/// Every version, from the files and the database, with its state.
pub async fn status(url: &str, migrations: &Migrations) -> Result<Vec<StatusRow>> {
    let mut conn = crate::admin::connect_one(url).await?;
    let applied = applied_rows(&mut conn).await?;
    // An unfinished file is still running while a migrator holds the lock.
    let running = lock_held(&mut conn).await?;
    let by_version: BTreeMap<i64, &AppliedRow> = applied.iter().map(|a| (a.version, a)).collect();
    let versions: BTreeSet<i64> = migrations
        .versions()
        .chain(by_version.keys().copied())
        .collect();
    Ok(versions
        .into_iter()
        .map(|version| {
            let file = migrations.ups.get(&version);
            let row = by_version.get(&version);
            let state = match (file, row) {
                (_, Some(r)) if !r.success && r.execution_time == STARTED && running => {
                    State::Running
                }
                (_, Some(r)) if !r.success && r.execution_time == STARTED => State::Unknown,
                (_, Some(r)) if !r.success => State::Failed,
                (None, Some(_)) => State::MissingFile,
                (Some(f), Some(r)) if *f.checksum != *r.checksum => State::Changed,
                (Some(_), Some(_)) => State::Applied,
                _ => State::Pending,
            };
            let name = match (file, row) {
                (None, Some(r)) => format!("{version}_{}", r.description.replace(' ', "_")),
                _ => migrations.name(version),
            };
            StatusRow {
                version,
                name,
                state,
                applied_at: row.filter(|r| r.success).map(|r| r.installed_on),
                duration: row
                    .filter(|r| r.execution_time >= 0)
                    .map(|r| Duration::from_nanos(r.execution_time as u64)),
            }
        })
        .collect())
}

/// Whether a migrator holds the migration lock of the connected database.
async fn lock_held(conn: &mut PgConnection) -> Result<bool> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((classid::bigint << 32) | objid::bigint) = $1)",
    )
    .bind(lock_key(&database))
    .fetch_one(&mut *conn)
    .await?)
}

/// Forgets a failed or interrupted no-transaction migration, so the next
/// `migrate` applies it again. It takes the migration lock first: a file
/// that is still running is refused (forgetting it would make it run twice).
pub async fn resolve(url: &str, version: i64) -> Result<bool> {
    let mut locked =
        Locked::acquire(url, Duration::from_secs(2))
            .await
            .map_err(|err| match err {
                Error::Migration(MigrationError::LockTimeout {
                    database, holder, ..
                }) => MigrationError::Running { database, holder }.into(),
                other => other,
            })?;
    let done = sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1 AND NOT success")
        .bind(version)
        .execute(&mut locked.conn)
        .await?;
    locked.release().await?;
    Ok(done.rows_affected() > 0)
}

#[cfg(test)]
mod tests {
    use super::statements;

    #[test]
    fn statements_split_outside_quotes_comments_and_dollar_bodies() {
        let sql = "-- no-transaction\nSET lock_timeout = '5s';\n\
            DO $$ BEGIN PERFORM 1; END $$;\n\
            /* a; comment */ SELECT 'a;b', \"c;d\", $1;\n-- trailing; comment\n";
        assert_eq!(
            statements(sql),
            [
                "-- no-transaction\nSET lock_timeout = '5s';",
                "DO $$ BEGIN PERFORM 1; END $$;",
                "/* a; comment */ SELECT 'a;b', \"c;d\", $1;"
            ]
        );
        assert_eq!(statements("SELECT 1"), ["SELECT 1"]);
    }
}
