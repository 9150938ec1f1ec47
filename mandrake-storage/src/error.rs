//! The one error type of the library.

use std::fmt;

use uuid::Uuid;

/// Everything that can go wrong when storing or migrating records.
///
/// Database failures that a caller can act on get their own variant, so a
/// duplicate key is matched as `Error::UniqueViolation { .. }` rather than by
/// reading SQLSTATE codes:
///
/// ```
/// use mandrake_storage::Error;
///
/// fn describe(err: &Error) -> String {
///     match err {
///         Error::NotFound { table, id } => format!("no row {id} in {table}"),
///         Error::UniqueViolation { constraint } => format!("already taken ({constraint})"),
///         other => other.to_string(),
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `get`, `update` or another call that needs an existing row found none.
    NotFound {
        /// The table searched.
        table: &'static str,
        /// The id looked for.
        id: Uuid,
    },
    /// A unique constraint or unique index rejected the row.
    UniqueViolation {
        /// The constraint's (or unique index's) name.
        constraint: String,
    },
    /// A foreign key rejected the row (missing parent, or a restricting child).
    ForeignKeyViolation {
        /// The constraint's name.
        constraint: String,
    },
    /// A CHECK constraint (for instance an enum column's) rejected the row.
    CheckViolation {
        /// The constraint's name.
        constraint: String,
    },
    /// A NOT NULL column received NULL.
    NotNullViolation {
        /// The column's name.
        column: String,
    },
    /// A value the database cannot store, caught before it was sent (for
    /// example text with a NUL character).
    InvalidValue {
        /// The column the value was for.
        column: &'static str,
        /// Why it cannot be stored.
        reason: &'static str,
    },
    /// An optimistic-lock update found a different version than the caller expected.
    Conflict {
        /// The table.
        table: &'static str,
        /// The row.
        id: Uuid,
    },
    /// No pooled connection became free in time.
    PoolTimeout {
        /// The pool's size.
        size: usize,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// Applying, reverting or planning migrations failed; match on the
    /// [`MigrationError`] to tell a dirty database from a lock timeout.
    Migration(MigrationError),
    /// A schema or filter did not fit the table it was used with.
    Schema(String),
    /// A page cursor that is damaged, tampered with, or from another listing.
    InvalidCursor(String),
    /// A setting (environment variable, server binaries, data directory) is unusable.
    Config(String),
    /// A backup, restore or recovery failed: a missing client tool, a damaged
    /// archive, a database that may not be replaced ([`BackupError`]).
    Backup(BackupError),
    /// The call needs a server session of its own (the change feed's
    /// replication connection), which PgBouncer in transaction mode does not
    /// keep: set `MANDRAKE_FEED_URL` ([`crate::Settings::feed_url`]) to the
    /// server itself.
    NeedsSession {
        /// What needed it.
        what: &'static str,
    },
    /// A TLS connection failed: the server's certificate did not verify
    /// (an unknown CA, a host name it does not hold), or the handshake did.
    Tls {
        /// The host connected to.
        host: String,
        /// Why, as the TLS library says.
        reason: String,
    },
    /// The change feed needs `wal_level = logical`, and the server runs
    /// with `current`.
    WalLevel {
        /// The server's `wal_level`.
        current: String,
    },
    /// The connected role lacks a right what was asked needs; checked in
    /// the catalog before trying, so nothing was done. The message names
    /// the managed services' name for the right.
    MissingRight {
        /// The role connected.
        role: String,
        /// The right it lacks.
        right: Right,
    },
    /// The change feed's role may not read replication slots: it needs
    /// `REPLICATION`, RDS's `rds_replication`, or to be a superuser.
    FeedRole {
        /// The role the feed connected as.
        role: String,
    },
    /// The server gave up a durable consumer's slot (it fell further
    /// behind than `max_slot_wal_keep_size`): what committed meanwhile is
    /// gone. The consumer goes on from now, after a [`crate::Change::Gap`].
    SlotLost {
        /// The slot.
        slot: String,
    },
    /// Another session is live as durable consumer `name`: one name has
    /// one live consumer, since two would each get some of its changes.
    ConsumerBusy {
        /// The consumer's name.
        name: String,
        /// Who holds it: the backend, its application name and address.
        holder: Option<String>,
    },
    /// The change feed's connection failed; a [`crate::Change::Gap`]
    /// follows once it is back.
    FeedInterrupted(String),
    /// `commit` found the transaction aborted by an earlier failed
    /// statement: PostgreSQL rolled it back, and nothing was committed.
    TransactionAborted,
    /// A row written to a tenant-scoped table (`#[record(tenant)]`) was
    /// refused by its row security: no tenant was set (write through
    /// [`crate::Db::tenant`]), or the row names another tenant.
    TenantRefused {
        /// The table.
        table: String,
    },
    /// A typed call met a column (or the table) its record names and the
    /// database does not have: the binary's types and the database's schema
    /// disagree. After `migrate --complete` the old binary's columns are
    /// gone; before the migrations the new binary's are not there yet.
    SchemaMoved {
        /// The record's table.
        table: String,
        /// The missing column, when it was a column.
        column: Option<String>,
    },
    /// [`crate::Repo::explain`] on a tenant-scoped table: the planner's
    /// estimates count every tenant's rows, so a plan would tell one tenant
    /// about another's data. Explain it as the owner, outside the app (the
    /// tools' `cargo xtask db top`, or `psql`).
    ExplainRefused {
        /// The table.
        table: &'static str,
    },
    /// Behind PgBouncer in transaction mode a tenant holds only inside a
    /// transaction, so a tenant handle cannot check a connection out
    /// ([`crate::Db::acquire`]): use its [`crate::Db::begin`] instead.
    TenantNeedsTransaction,
    /// A tenant handle on a role that bypasses row security (a superuser,
    /// `BYPASSRLS`, or the owner of the tenant-scoped tables), which would
    /// show it every tenant's rows. Connect the application as a role of its
    /// own, or say that trusted code means it with
    /// [`crate::Db::bypassing_row_security`].
    RowSecurityBypassed {
        /// The role the handle connected as.
        role: String,
    },
    /// A tree walk ([`Repo::ancestors`](crate::Repo::ancestors),
    /// [`Repo::descendants`](crate::Repo::descendants)) along a column that
    /// is no key to its own table's `id`.
    NotATree {
        /// The table.
        table: &'static str,
        /// The column given as the parent.
        column: &'static str,
    },
    /// The call went to a [`DryRun`](crate::DryRun), which records its
    /// statement and runs nothing.
    DryRun,
    /// Any other failure reported by the driver or the server.
    Database(sqlx::Error),
}

/// What went wrong with migrations, one variant per case a caller or an
/// operator acts on differently. `Display` says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationError {
    /// The migrations folder cannot be read.
    Unreadable {
        /// The folder.
        place: String,
        /// Why.
        reason: String,
    },
    /// The folder holds files sqlx would misread (two up files of one
    /// version, a down file without its up, a file that is no migration).
    AmbiguousFolder {
        /// The folder.
        place: String,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// A file name with no version.
    BadFileName {
        /// The file name.
        name: String,
    },
    /// `--to` names no migration (`applied`: no applied one, for a rollback).
    VersionMissing {
        /// The version asked for.
        version: i64,
        /// The versions there are (applied ones for a rollback).
        known: Vec<i64>,
        /// Whether this was a rollback target.
        applied: bool,
    },
    /// A `-- no-transaction` migration failed partway (or its run was
    /// interrupted): repair by hand, then `resolve`.
    Dirty {
        /// `<version>_<name>`.
        name: String,
        /// Its version.
        version: i64,
        /// Interrupted (state unknown) rather than failed with an error.
        interrupted: bool,
    },
    /// Applied migrations whose files changed since, or are gone.
    ChecksumMismatch {
        /// One line per migration.
        problems: Vec<String>,
    },
    /// Pending migrations older than the newest applied one (merged branches).
    OutOfOrder {
        /// The newest applied version.
        newest: i64,
        /// The older pending ones.
        pending: Vec<String>,
    },
    /// Another migrator held the lock past the timeout.
    LockTimeout {
        /// The database.
        database: String,
        /// The backend holding the lock, if it could be seen.
        holder: Option<i32>,
        /// How long this one waited.
        waited: std::time::Duration,
    },
    /// `resolve` while a migration runs: it would then run twice.
    Running {
        /// The database.
        database: String,
        /// The backend running it, if it could be seen.
        holder: Option<i32>,
    },
    /// A PgBouncer URL: migrations need a session of their own.
    NeedsDirectUrl,
    /// A statement of a migration failed; the migration rolled back whole
    /// (or, outside a transaction, is recorded as failed).
    Failed {
        /// `<version>_<name>` (with ` (down)` for a down file).
        name: String,
        /// The line of the file the error points at, if the server said.
        line: Option<(usize, usize)>,
        /// The server's message.
        message: String,
    },
    /// A `-- no-transaction` file ran, but its history row was removed meanwhile.
    HistoryLost {
        /// `<version>_<name>`.
        name: String,
    },
    /// A rollback would revert migrations that have no down file.
    NoDownFile {
        /// Their names.
        names: Vec<String>,
    },
    /// `rollback --steps` past the number of applied migrations.
    TooManySteps {
        /// Steps asked for.
        steps: usize,
        /// Migrations applied.
        applied: usize,
    },
    /// Planning, proving or writing a migration failed, or sqlx's migrator
    /// reported something else: the reason.
    Other(String),
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |versions: &[i64]| {
            if versions.is_empty() {
                "(none)".to_owned()
            } else {
                versions
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        match self {
            MigrationError::Unreadable { place, reason } => {
                write!(f, "cannot read {place}: {reason}")
            }
            MigrationError::AmbiguousFolder { place, problems } => write!(
                f,
                "refusing to run: {place} has {} problem(s):\n  - {}",
                problems.len(),
                problems.join("\n  - ")
            ),
            MigrationError::BadFileName { name } => write!(f, "bad migration file name {name:?}"),
            MigrationError::VersionMissing {
                version,
                known,
                applied: false,
            } => write!(
                f,
                "--to {version} names no migration; the versions are: {}",
                list(known)
            ),
            MigrationError::VersionMissing {
                version,
                known,
                applied: true,
            } => write!(
                f,
                "--to {version} names no applied migration, so nothing was rolled back; the \
                 applied versions are: {}",
                list(known)
            ),
            MigrationError::Dirty {
                name,
                version,
                interrupted,
            } => {
                let what = if *interrupted {
                    "was interrupted (or is running elsewhere), so its state is unknown"
                } else {
                    "failed partway"
                };
                write!(
                    f,
                    "migration {name} {what} (it runs outside a transaction); check what it did \
                     and repair the database by hand, then run `cargo xtask resolve {version}` so \
                     it can be applied again"
                )
            }
            MigrationError::ChecksumMismatch { problems } => {
                write!(f, "refusing to run: {}", problems.join("; "))
            }
            MigrationError::OutOfOrder { newest, pending } => write!(
                f,
                "pending migrations older than the newest applied one ({newest}): {}; this \
                 usually comes from merging branches. Give them newer versions, or pass \
                 --allow-out-of-order",
                pending.join(", ")
            ),
            MigrationError::LockTimeout {
                database,
                holder,
                waited,
            } => write!(
                f,
                "another migration holds the lock on database {database} (backend pid {}); gave \
                 up after {waited:?}",
                holder.map_or("unknown".into(), |p| p.to_string())
            ),
            MigrationError::Running { database, holder } => write!(
                f,
                "a migration is running now on database {database} (backend pid {}); wait for it \
                 to end (`cargo xtask status` says running), and resolve only what it leaves \
                 unknown or failed",
                holder.map_or("unknown".into(), |p| p.to_string())
            ),
            MigrationError::NeedsDirectUrl => f.write_str(
                "migrations need a session of their own (an advisory lock, session settings), \
                 which PgBouncer in transaction mode does not give: run them with a direct URL \
                 to the server (without pgbouncer=true, MANDRAKE_PGBOUNCER unset)",
            ),
            MigrationError::Failed {
                name,
                line,
                message,
            } => match line {
                Some((line, character)) => write!(
                    f,
                    "{name} failed at line {line} (character {character}): {message}"
                ),
                None => write!(f, "{name} failed: {message}"),
            },
            MigrationError::HistoryLost { name } => write!(
                f,
                "{name} ran, but its history row was removed meanwhile (a `resolve` from \
                 elsewhere?), so the run is not recorded and the next `migrate` would apply it \
                 again: check what it changed and record it by hand"
            ),
            MigrationError::NoDownFile { names } => {
                write!(f, "cannot roll back: no down file for {}", names.join(", "))
            }
            MigrationError::TooManySteps { steps, applied } => write!(
                f,
                "--steps {steps}, but only {applied} migration(s) are applied, so nothing was \
                 rolled back; to revert every one, say --to 0"
            ),
            MigrationError::Other(reason) => f.write_str(reason),
        }
    }
}

/// What went wrong with a backup, a restore or a recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupError {
    /// No `pg_dump`/`pg_restore` of the server's major version.
    MissingTools {
        /// The server's major version.
        major: u32,
        /// What was found instead.
        found: String,
    },
    /// The file is not a readable archive (truncated or damaged?).
    NotAnArchive {
        /// The file.
        path: String,
        /// What `pg_restore` said.
        detail: String,
    },
    /// The target database exists (and `--force` was not given).
    DatabaseExists {
        /// Its name.
        name: String,
    },
    /// There is no database of that name to replace.
    NoSuchDatabase {
        /// Its name.
        name: String,
    },
    /// A database name over PostgreSQL's 63 bytes (it would be cut silently).
    NameTooLong {
        /// The name.
        name: String,
    },
    /// `--keep 0` would delete every backup, the new one included.
    KeepZero,
    /// A recovery target time before the base backup was taken.
    TargetBeforeBase {
        /// The time asked for.
        to_time: String,
        /// When the base backup started.
        started: String,
        /// The base backup.
        base: String,
    },
    /// A tool or step failed; nothing was changed unless it says so.
    Failed(String),
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::MissingTools { major, found } => write!(
                f,
                "no pg_dump and pg_restore of PostgreSQL {major} (the server's version) on PATH, \
                 via pg_config or in /usr/lib/postgresql/{major}/bin (found: {found}): install \
                 the client tools of that version (Debian: postgresql-client-{major})"
            ),
            BackupError::NotAnArchive { path, detail } => write!(
                f,
                "{path} is not a valid backup archive (truncated or damaged?): {detail}"
            ),
            BackupError::DatabaseExists { name } => write!(
                f,
                "database {name} exists: restore into a new name, or replace it with --force"
            ),
            BackupError::NoSuchDatabase { name } => {
                write!(f, "there is no database {name} to replace")
            }
            BackupError::NameTooLong { name } => write!(
                f,
                "database names are at most 63 bytes; {name} has {}",
                name.len()
            ),
            BackupError::KeepZero => f.write_str(
                "--keep 0 would delete every backup, the new one included: keep at least 1",
            ),
            BackupError::TargetBeforeBase {
                to_time,
                started,
                base,
            } => write!(
                f,
                "--to-time {to_time} is before the base backup in {base} was taken ({started}): \
                 recovery can only go forward from a base backup; use an older one"
            ),
            BackupError::Failed(reason) => f.write_str(reason),
        }
    }
}

impl From<MigrationError> for Error {
    fn from(err: MigrationError) -> Error {
        Error::Migration(err)
    }
}

impl From<BackupError> for Error {
    fn from(err: BackupError) -> Error {
        Error::Backup(err)
    }
}

/// A pool timeout on its way through sqlx's executor trait, which returns
/// `sqlx::Error`: carried as a driver error, turned back into
/// [`Error::PoolTimeout`] by `From<sqlx::Error>`.
#[derive(Debug)]
pub(crate) struct PoolTimeout {
    pub(crate) size: usize,
    pub(crate) waited: std::time::Duration,
}

impl fmt::Display for PoolTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no connection free in a pool of {} after waiting {:?}",
            self.size, self.waited
        )
    }
}

impl std::error::Error for PoolTimeout {}

/// The driver error a [`DryRun`](crate::DryRun) answers with; `From<sqlx::Error>`
/// makes it [`Error::DryRun`].
#[derive(Debug)]
pub(crate) struct NotRun;

impl fmt::Display for NotRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not run: a dry run")
    }
}

impl std::error::Error for NotRun {}

/// One of our errors carried through a sqlx executor, whose methods can only
/// return `sqlx::Error`; `From<sqlx::Error>` takes it out again.
#[derive(Debug)]
pub(crate) struct Carried(pub(crate) Error);

impl Carried {
    /// `err` as the driver error an executor returns.
    pub(crate) fn through_sqlx(err: Error) -> sqlx::Error {
        sqlx::Error::AnyDriverError(Box::new(Carried(err)))
    }
}

impl fmt::Display for Carried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Carried {}

/// Shorthand for `Result<T, mandrake_storage::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for failures that succeed when the whole transaction is tried again:
    /// serialization failures (`40001`) and deadlocks (`40P01`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }

    /// The SQLSTATE code of a database error, if this is one (the
    /// constraint variants included).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            Error::UniqueViolation { .. } => Some("23505".into()),
            Error::ForeignKeyViolation { .. } => Some("23503".into()),
            Error::CheckViolation { .. } => Some("23514".into()),
            Error::NotNullViolation { .. } => Some("23502".into()),
            Error::TenantRefused { .. } => Some("42501".into()),
            _ => None,
        }
    }
}

/// A right a role may lack ([`Error::MissingRight`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// `CREATEDB`: the tools make scratch databases.
    CreateDb,
    /// `CREATEROLE`: making the application's role.
    CreateRole,
}

impl fmt::Display for Right {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Right::CreateDb => {
                "may not create databases (CREATEDB), which the tools' scratch databases need: \
                 set MANDRAKE_DEV_URL to a development server whose role may, or grant CREATEDB \
                 (the owner role of RDS, Supabase and Azure has it; on Neon, the project owner)"
            }
            Right::CreateRole => {
                "may not create roles (CREATEROLE), which making the application's role needs: \
                 run as the service's owner role (RDS's master user, Neon's project owner, \
                 Supabase's postgres, Azure's admin user all have it), or create the role \
                 yourself (see the GUIDE's two roles)"
            }
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound { table, id } => write!(f, "no row in {table} with id {id}"),
            Error::UniqueViolation { constraint } => {
                write!(f, "unique constraint {constraint} violated")
            }
            Error::ForeignKeyViolation { constraint } => {
                write!(f, "foreign key {constraint} violated")
            }
            Error::CheckViolation { constraint } => write!(f, "check {constraint} violated"),
            Error::NotNullViolation { column } => write!(f, "column {column} must not be NULL"),
            Error::InvalidValue { column, reason } => {
                write!(f, "invalid value for column {column}: {reason}")
            }
            Error::Conflict { table, id } => write!(
                f,
                "row {id} in {table} was changed by someone else (version mismatch)"
            ),
            Error::PoolTimeout { size, waited } => write!(
                f,
                "no connection free in a pool of {size} after waiting {waited:?} \
                 (MANDRAKE_POOL_SIZE, MANDRAKE_ACQUIRE_TIMEOUT_SECS)"
            ),
            Error::Migration(msg) => write!(f, "migration error: {msg}"),
            Error::Schema(msg) => write!(f, "schema error: {msg}"),
            Error::InvalidCursor(msg) => write!(f, "invalid cursor: {msg}"),
            Error::Config(msg) => write!(f, "configuration error: {msg}"),
            Error::Backup(msg) => write!(f, "backup error: {msg}"),
            Error::NeedsSession { what } => write!(
                f,
                "{what} needs a server session of its own, which PgBouncer in transaction mode \
                 does not keep: set MANDRAKE_DIRECT_URL (for the change feed, MANDRAKE_FEED_URL) \
                 to the server's own URL (not PgBouncer's)"
            ),
            Error::Tls { host, reason } => write!(
                f,
                "TLS with {host} failed: {reason} (sslmode and sslrootcert in the URL say what is \
                 verified: verify-full checks the CA and the host name)"
            ),
            Error::WalLevel { current } => write!(
                f,
                "the change feed decodes the WAL and needs wal_level = logical, but the server \
                 runs with wal_level = {current}: set it in postgresql.conf (or ALTER SYSTEM SET \
                 wal_level = logical) and restart the server; on Amazon RDS and Aurora set the \
                 parameter rds.logical_replication = 1, on Google Cloud SQL the flag \
                 cloudsql.logical_decoding = on, on Azure the server parameter wal_level = \
                 logical (the embedded cluster has it: restart it with `cargo xtask db stop` and \
                 `cargo xtask db start`)"
            ),
            Error::MissingRight { role, right } => write!(f, "role {role} {right}"),
            Error::FeedRole { role } => write!(
                f,
                "the change feed reads replication slots, which role {role} may not: connect it \
                 as a role WITH REPLICATION through MANDRAKE_FEED_URL (not the application's \
                 role, which row security holds); on RDS and Aurora GRANT rds_replication TO \
                 the role, on Supabase and Azure ALTER ROLE … WITH REPLICATION, on Neon use \
                 the project owner with logical replication on"
            ),
            Error::SlotLost { slot } => write!(
                f,
                "the server gave up replication slot {slot} (the consumer fell further behind \
                 than max_slot_wal_keep_size): changes committed meanwhile are lost; the \
                 consumer goes on from now after a Gap"
            ),
            Error::FeedInterrupted(msg) => write!(f, "change feed interrupted: {msg}"),
            Error::TenantRefused { table } => write!(
                f,
                "the row was refused by {table}'s tenant policy: write it through db.tenant(id), \
                 with its tenant column equal to that tenant"
            ),
            Error::TransactionAborted => f.write_str(
                "the transaction was aborted by an earlier failed statement and rolled back: \
                 nothing was committed",
            ),
            Error::ConsumerBusy { name, holder } => write!(
                f,
                "durable consumer {name} is live in another session ({}): one name has one live \
                 consumer; stop that one, or give this one a name of its own",
                holder
                    .as_deref()
                    .unwrap_or("holder not visible to this role")
            ),
            Error::SchemaMoved { table, column } => write!(
                f,
                "{table}{} is not in the database: this binary's record types and the \
                 database's schema disagree; deploy the binary that matches the applied \
                 migrations (an old binary after `migrate --complete`, or a new one before \
                 `migrate`)",
                column
                    .as_deref()
                    .map(|c| format!(".{c}"))
                    .unwrap_or_default()
            ),
            Error::ExplainRefused { table } => write!(
                f,
                "EXPLAIN of {table} is refused: it is tenant-scoped, and the planner's estimates \
                 count every tenant's rows; explain it as the owner outside the app (cargo xtask \
                 db top, or psql)"
            ),
            Error::TenantNeedsTransaction => f.write_str(
                "behind PgBouncer in transaction mode a tenant holds only inside a transaction: \
                 use db.tenant(id).begin() instead of acquire()",
            ),
            Error::RowSecurityBypassed { role } => write!(
                f,
                "a tenant handle connected as {role}, which bypasses row security (a superuser, \
                 BYPASSRLS, or the owner of the tenant-scoped tables) and would see every \
                 tenant's rows: connect the application as a role of its own (see the GUIDE's \
                 production setup), or call db.bypassing_row_security() where trusted code \
                 means to"
            ),
            Error::NotATree { table, column } => write!(
                f,
                "{table}.{column} is no key to {table}'s own id: a tree walks a nullable \
                 self-reference (#[record(references = \"{table}\")] on an Option<Uuid>)"
            ),
            Error::DryRun => f.write_str(
                "a dry run recorded the statement and ran nothing (DryRun::statements has it)",
            ),
            Error::Database(err) => write!(f, "database error: {err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database(err) => Some(err),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    /// Sorts constraint failures into their own variants by SQLSTATE.
    fn from(err: sqlx::Error) -> Self {
        let err = match err {
            sqlx::Error::AnyDriverError(driver) => match driver.downcast::<Carried>() {
                Ok(carried) => return carried.0,
                Err(driver) => sqlx::Error::AnyDriverError(driver),
            },
            other => other,
        };
        if let sqlx::Error::AnyDriverError(driver) = &err
            && let Some(timeout) = driver.downcast_ref::<PoolTimeout>()
        {
            return Error::PoolTimeout {
                size: timeout.size,
                waited: timeout.waited,
            };
        }
        if let sqlx::Error::AnyDriverError(driver) = &err
            && driver.is::<NotRun>()
        {
            return Error::DryRun;
        }
        let sqlx::Error::Database(db) = &err else {
            return Error::Database(err);
        };
        let constraint = || db.constraint().unwrap_or_default().to_owned();
        match db.code().as_deref() {
            Some("23505") => Error::UniqueViolation {
                constraint: constraint(),
            },
            Some("23503") => Error::ForeignKeyViolation {
                constraint: constraint(),
            },
            Some("23514") => Error::CheckViolation {
                constraint: constraint(),
            },
            // The error's own field, not its (translatable) message text.
            Some("23502") => Error::NotNullViolation {
                column: db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.column())
                    .unwrap_or_default()
                    .to_owned(),
            },
            // The server names no table for it: the message does (the
            // clusters we start speak English).
            Some("42501") if db.message().contains("row-level security policy") => {
                Error::TenantRefused {
                    table: db
                        .message()
                        .split('"')
                        .nth(1)
                        .unwrap_or_default()
                        .to_owned(),
                }
            }
            _ => Error::Database(err),
        }
    }
}

#[cfg(feature = "migrate")]
impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
            other => Error::Migration(MigrationError::Other(other.to_string())),
        }
    }
}
