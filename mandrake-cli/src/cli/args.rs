//! The command line, as clap parses it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Command-line interface of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Database tasks for a mandrake-storage workspace"
)]
pub struct Cli {
    /// The migrations folder (default: `migrations/` at the workspace root).
    #[arg(long, global = true, value_name = "DIR")]
    pub migrations: Option<PathBuf>,
    /// The server to use (default: DATABASE_URL, else the embedded cluster).
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    #[command(subcommand)]
    /// The command to run.
    pub command: Command,
}

#[derive(Debug, Subcommand)]
/// The commands of `cargo xtask`.
pub enum Command {
    /// Manage the embedded PostgreSQL cluster (used when DATABASE_URL is not set).
    #[command(subcommand)]
    Db(DbCommand),
    /// Apply pending migrations in version order, each in a transaction.
    Migrate(MigrateArgs),
    /// Revert applied migrations with their down files (default: the newest one).
    Rollback(RollbackArgs),
    /// Show every migration: name, applied at, duration and state.
    Status {
        /// Exit 1 when a migration is pending, failed or in an unknown state.
        #[arg(long)]
        exit_code: bool,
    },
    /// Forget a failed `-- no-transaction` migration so `migrate` applies it again.
    Resolve {
        /// The failed migration's version.
        version: i64,
    },
    /// Write an up/down migration for the difference between the types and
    /// the migrations, proven on scratch databases first.
    NewMigration {
        /// A short snake_case name, e.g. `add_message_tags`.
        name: String,
        /// Allow dropping tables or columns and type changes that can lose data.
        #[arg(long)]
        allow_destructive: bool,
        /// How long each statement of the files waits for a lock before the
        /// migration fails (`SET LOCAL lock_timeout`).
        #[arg(long, default_value = "5s", value_name = "DURATION")]
        lock_timeout: String,
        /// How long each statement of the files may run (`SET LOCAL statement_timeout`).
        #[arg(long, default_value = "10min", value_name = "DURATION")]
        statement_timeout: String,
        /// Never hold a long lock on a busy table: indexes built and dropped
        /// CONCURRENTLY (each in a `-- no-transaction` migration of its own),
        /// foreign keys and CHECKs added NOT VALID and validated after, NOT
        /// NULL through a validated CHECK.
        #[arg(long)]
        online: bool,
        /// Replay the folder and apply the types' DDL afresh, without the
        /// cache under `.mandrake/cache/` (which is never trusted stale).
        #[arg(long)]
        no_cache: bool,
    },
    /// Exit 1, listing the differences, when the migrations do not build
    /// exactly the types' schema; pending migrations are linted too (their
    /// findings are warnings here: `lint` is the gate).
    Check {
        /// Replay the folder and apply the types' DDL afresh, without the
        /// cache under `.mandrake/cache/`.
        #[arg(long)]
        no_cache: bool,
    },
    /// Random pairs of schemas: for each, `new-migration` must write a
    /// migration it proves (up, down, up again; `--online` for odd seeds),
    /// and a second run nothing.
    FuzzDiff {
        /// How many cases.
        #[arg(long, default_value_t = 100)]
        cases: u64,
        /// The first case's seed (a failure names its seed: rerun it with `--seed S --cases 1`).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Check migration files against squawk's rules (blocking locks,
    /// scans under lock, missing timeouts); exit 1 on a finding.
    Lint {
        /// Files or folders (default: the migrations folder).
        files: Vec<PathBuf>,
        /// Report, but do not fail on, migrations older than this version
        /// (those that were applied before the linter existed and cannot
        /// change without changing their checksums).
        #[arg(long, value_name = "VERSION")]
        accept_before: Option<i64>,
    },
    /// Print the full DDL of the registered types, in dependency order, or
    /// an ER diagram of them.
    Schema {
        /// `sql` (the DDL) or `mermaid` (an `erDiagram`, for docs/SCHEMA.md).
        #[arg(long, value_enum, default_value_t = SchemaFormat::Sql)]
        format: SchemaFormat,
    },
}

/// What `schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFormat {
    /// The `CREATE TABLE` statements.
    Sql,
    /// A Mermaid `erDiagram`.
    Mermaid,
}

#[derive(Debug, Args)]
/// Arguments of `migrate`.
pub struct MigrateArgs {
    /// Apply pending migrations up to and including this version.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<i64>,
    /// Apply contract migrations too (`-- contract`: they drop what the old
    /// binaries still use); run it once every binary is the new one.
    #[arg(long)]
    pub complete: bool,
    /// Print what would be applied; apply nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply pending migrations older than the newest applied one.
    #[arg(long)]
    pub allow_out_of_order: bool,
    /// Seconds to wait for another migrator to finish.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub lock_timeout: u64,
}

#[derive(Debug, Args)]
/// Arguments of `rollback`.
pub struct RollbackArgs {
    /// Revert the newest N applied migrations.
    #[arg(long, conflicts_with = "to", value_name = "N")]
    pub steps: Option<usize>,
    /// Revert every applied migration newer than this version: an applied
    /// version, or 0 to revert them all.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<i64>,
    /// Seconds to wait for another migrator to finish.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub lock_timeout: u64,
}

#[derive(Debug, Subcommand)]
/// The commands of `cargo xtask db`.
pub enum DbCommand {
    /// Create (first time) and start the cluster; a no-op while it runs.
    Start,
    /// Stop the cluster.
    Stop,
    /// Say whether the cluster runs, where it lives and its URL, and the
    /// change feed's replication slots: each one's lag in bytes and time.
    Status,
    /// Drop a durable change-feed consumer's slot (`T::subscribe_durable`
    /// NAME) that will not come back, so the server stops keeping WAL for it.
    DropConsumer {
        /// The consumer's name.
        name: String,
    },
    /// Print a connection string that psql and sqlx accept (without
    /// starting a stopped cluster).
    Url,
    /// Stop the cluster and delete it with all its data.
    Destroy,
    /// The statements that took the most time (pg_stat_statements), each
    /// with the table and repository operation it belongs to.
    Top {
        /// How many statements to show.
        #[arg(long, default_value_t = 10, value_name = "N")]
        limit: i64,
        /// Forget the statistics gathered so far.
        #[arg(long)]
        reset: bool,
        /// Show each statement whole, on lines of its own, not cut to one line.
        #[arg(long)]
        full: bool,
    },
    /// Back the database up with pg_dump (custom format), or with --base
    /// take a base backup of the embedded cluster for point-in-time recovery.
    Backup(BackupArgs),
    /// Restore a backup into a new database (or with --force in place of the
    /// live one), or with --base recover the embedded cluster to an instant.
    Restore(RestoreArgs),
    /// Restore a backup into a scratch database and check it: migration
    /// history, schema, row counts. Exit 0 only when all hold.
    Verify {
        /// The backup file.
        file: PathBuf,
    },
    /// WAL archiving of the embedded cluster into .mandrake/wal, which
    /// point-in-time recovery needs.
    Archiving {
        /// `on`, `off` or `status`.
        #[arg(value_enum)]
        action: ArchivingAction,
    },
}

/// What `db archiving` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ArchivingAction {
    /// Archive every WAL segment (restarts the server).
    On,
    /// Stop archiving (restarts the server).
    Off,
    /// Say whether WAL is archived, how much, and where.
    Status,
}

#[derive(Debug, Args)]
/// Arguments of `db backup`.
pub struct BackupArgs {
    /// The file to write (default: .mandrake/backups/<db>-<UTC timestamp>.dump).
    #[arg(long, value_name = "FILE", conflicts_with = "base")]
    pub out: Option<PathBuf>,
    /// Afterwards delete the oldest backups of this database beyond the newest N.
    #[arg(long, value_name = "N", conflicts_with = "base")]
    pub keep: Option<usize>,
    /// A base backup of the embedded cluster (pg_basebackup) into .mandrake/base/.
    #[arg(long)]
    pub base: bool,
}

#[derive(Debug, Args)]
/// Arguments of `db restore`.
pub struct RestoreArgs {
    /// The backup file (a pg_dump archive).
    #[arg(required_unless_present = "base", conflicts_with = "base")]
    pub file: Option<PathBuf>,
    /// The database to restore into (default: a new `<db>_restored_<timestamp>`).
    #[arg(long, value_name = "NAME", conflicts_with = "base")]
    pub into: Option<String>,
    /// Replace the live database (or --into NAME), safely: restore into a new
    /// database first, then swap names. With --base: make the recovered copy
    /// the embedded cluster, keeping the old data directory aside.
    #[arg(long)]
    pub force: bool,
    /// A base backup folder (from `db backup --base`) to recover from.
    #[arg(long, value_name = "DIR", requires = "to_time")]
    pub base: Option<PathBuf>,
    /// The instant to recover to, e.g. "2026-11-27 12:00:00+00".
    #[arg(long, value_name = "TIMESTAMP", requires = "base")]
    pub to_time: Option<String>,
}
