//! The `cargo xtask` commands as library functions, so any application can
//! have the same tool by writing a thin `main` with its own record types.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::scaffold;
use mandrake_storage::Settings;
use mandrake_storage::cluster::{Cluster, DEFAULT_DATABASE, workspace_root};
use mandrake_storage::migrate::{self, MigrateOptions, Migrations, RollbackTarget};
use mandrake_storage::schema::TableSchema;
use mandrake_storage::schema::ddl::create_schema;
use mandrake_storage::{Error, MigrationError, Result};

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
    },
    /// Exit 1, listing the differences, when the migrations do not build
    /// exactly the types' schema; pending migrations are linted too (their
    /// findings are warnings here: `lint` is the gate).
    Check,
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

/// The schema diagram `check` keeps current, when the workspace has it.
const SCHEMA_DOC: &str = "docs/SCHEMA.md";

#[derive(Debug, Args)]
/// Arguments of `migrate`.
pub struct MigrateArgs {
    /// Apply pending migrations up to and including this version.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<i64>,
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
    /// Say whether the cluster runs, where it lives and its URL.
    Status,
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

/// Parses the process arguments and runs the command for `tables`: the whole
/// `main` of an application's xtask.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     // Every `#[derive(Record)]` of the linked crates (link yours by
///     // calling something of it, as Mandrake's xtask does with `tables()`).
///     mandrake_cli::main(&mandrake_storage::registered_tables())
/// }
/// ```
pub fn main(tables: &[&TableSchema]) -> std::process::ExitCode {
    run_blocking(Cli::parse(), tables)
}

/// Runs `cli` on a fresh runtime and reports an error the way a command
/// line should: one line on stderr. Exit codes: 0 when the command did its
/// job, 1 when it found what it checks for (`check` finds drift, `status
/// --exit-code` finds pending or failed migrations), 2 on an error (a bad
/// URL, an unreachable server, a refused migration).
pub fn run_blocking(cli: Cli, tables: &[&TableSchema]) -> std::process::ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli, tables)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Runs one parsed command on `tables`. `check` and `new-migration` rename
/// what the rename hints of the linked record types say
/// ([`mandrake_storage::registered_renames`]).
pub async fn run(cli: Cli, tables: &[&TableSchema]) -> Result<std::process::ExitCode> {
    let dir = match &cli.migrations {
        Some(dir) => dir.clone(),
        None => workspace_root()?.join("migrations"),
    };
    let url = cli.database_url.clone();
    let database_url = || async { database_url(url.as_deref()).await };
    match cli.command {
        Command::Db(DbCommand::Top { limit, reset }) => {
            let url = database_url().await?;
            if reset {
                crate::stats::reset(&url).await?;
                println!("statement statistics reset");
                return Ok(std::process::ExitCode::SUCCESS);
            }
            let rows = crate::stats::top(&url, tables, limit).await?;
            println!(
                "{:>8} {:>11} {:>9} {:>9}  {:<28} statement",
                "calls", "total ms", "mean ms", "rows", "table.operation"
            );
            for row in rows {
                let origin = row
                    .origin
                    .map(|(table, op)| format!("{table}.{op}"))
                    .unwrap_or_else(|| "-".into());
                let mut query: String = row.query.split_whitespace().collect::<Vec<_>>().join(" ");
                if query.chars().count() > 70 {
                    query = query.chars().take(69).collect::<String>() + "…";
                }
                println!(
                    "{:>8} {:>11.1} {:>9.3} {:>9}  {origin:<28} {query}",
                    row.calls, row.total_ms, row.mean_ms, row.rows
                );
            }
        }
        Command::Db(DbCommand::Backup(args)) if !args.base => {
            let url = database_url().await?;
            return backup_command(&url, args).await;
        }
        Command::Db(DbCommand::Restore(args)) if args.base.is_none() => {
            let url = database_url().await?;
            return restore_command(&url, args).await;
        }
        Command::Db(DbCommand::Verify { file }) => {
            let url = database_url().await?;
            let migrations = Migrations::from_dir(&dir)?;
            return verify_command(&url, &file, &migrations).await;
        }
        Command::Db(cmd) => db_command(cmd).await?,
        Command::Migrate(args) => {
            let migrations = Migrations::from_dir(&dir)?;
            let options = MigrateOptions {
                to: args.to,
                dry_run: args.dry_run,
                allow_out_of_order: args.allow_out_of_order,
                lock_timeout: Duration::from_secs(args.lock_timeout),
            };
            let report = migrate::migrate(&database_url().await?, &migrations, &options).await?;
            let verb = if args.dry_run {
                "would apply"
            } else {
                "applied"
            };
            for (_, name) in &report.applied {
                println!("{verb} {name}");
            }
            if report.applied.is_empty() {
                println!("nothing to apply: the database is up to date");
            }
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
        }
        Command::Rollback(args) => {
            let migrations = Migrations::from_dir(&dir)?;
            let target = match (args.steps, args.to) {
                (_, Some(v)) => RollbackTarget::To(v),
                (steps, None) => RollbackTarget::Steps(steps.unwrap_or(1)),
            };
            let timeout = Duration::from_secs(args.lock_timeout);
            let report =
                migrate::rollback(&database_url().await?, &migrations, target, timeout).await?;
            for (_, name) in &report.reverted {
                println!("reverted {name}");
            }
            if report.reverted.is_empty() {
                println!("nothing to roll back");
            }
        }
        Command::Status { exit_code } => {
            let migrations = Migrations::from_dir(&dir)?;
            let rows = migrate::status(&database_url().await?, &migrations).await?;
            let unfinished = rows.iter().any(|r| {
                matches!(
                    r.state,
                    migrate::State::Pending
                        | migrate::State::Failed
                        | migrate::State::Unknown
                        | migrate::State::Running
                )
            });
            if rows.is_empty() {
                println!("no migrations in {}", dir.display());
            }
            let stuck: Vec<i64> = rows
                .iter()
                .filter(|r| matches!(r.state, migrate::State::Failed | migrate::State::Unknown))
                .map(|r| r.version)
                .collect();
            let running: Vec<i64> = rows
                .iter()
                .filter(|r| r.state == migrate::State::Running)
                .map(|r| r.version)
                .collect();
            for row in rows {
                let at = row
                    .applied_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_else(|| "-".into());
                let took = row
                    .duration
                    .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<13} {:<23} {:>10}  {}",
                    row.state.to_string(),
                    at,
                    took,
                    row.name
                );
            }
            for version in &running {
                println!(
                    "\n{version} is running now (outside a transaction); `cargo xtask status` \
                     again once it ends"
                );
            }
            for version in stuck {
                println!(
                    "\n{version} ran outside a transaction and did not finish: check what it \
                     changed, repair by hand, then `cargo xtask resolve {version}`"
                );
            }
            if exit_code && unfinished {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Resolve { version } => {
            if migrate::resolve(&database_url().await?, version).await? {
                println!(
                    "forgot failed migration {version}; `cargo xtask migrate` applies it again"
                );
            } else {
                return Err(Error::Migration(MigrationError::Other(format!(
                    "no failed migration {version} is recorded"
                ))));
            }
        }
        Command::Schema { format } => match format {
            SchemaFormat::Sql => print!("{}", create_schema(tables)),
            SchemaFormat::Mermaid => print!("{}", crate::diagram::mermaid(tables)),
        },
        Command::FuzzDiff { cases, seed } => {
            let url = database_url().await?;
            let failures = crate::fuzz::fuzz(&url, seed, cases).await;
            for (seed, err) in &failures {
                println!(
                    "case {seed} failed: {err}\n{}",
                    crate::fuzz::describe(*seed)
                );
            }
            println!("{} of {cases} cases passed", cases - failures.len() as u64);
            if !failures.is_empty() {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Lint {
            files,
            accept_before,
        } => {
            let files = if files.is_empty() { vec![dir] } else { files };
            let findings = crate::lint::lint_paths(&files)?;
            let accepted = |f: &crate::lint::Finding| {
                accept_before
                    .zip(crate::lint::version_of(&f.file))
                    .is_some_and(|(before, version)| version < before)
            };
            let (old, new): (Vec<_>, Vec<_>) = findings.iter().partition(|f| accepted(f));
            for finding in &new {
                println!("{finding}");
            }
            if !old.is_empty() {
                println!(
                    "{} finding(s) in migrations before {} accepted",
                    old.len(),
                    accept_before.unwrap_or_default()
                );
            }
            if !new.is_empty() {
                return Ok(std::process::ExitCode::FAILURE);
            }
            println!("ok: no lint findings");
        }
        Command::Check => {
            let migrations = Migrations::from_dir(&dir)?;
            let url = database_url().await?;
            let pending: Vec<PathBuf> = migrate::status(&url, &migrations)
                .await?
                .into_iter()
                .filter(|r| r.state == migrate::State::Pending)
                .flat_map(|r| ["up", "down"].map(|kind| dir.join(format!("{}.{kind}.sql", r.name))))
                .filter(|p| p.exists())
                .collect();
            for finding in crate::lint::lint_paths(&pending)? {
                println!("warning: {finding}");
            }
            let renames = mandrake_storage::registered_renames();
            let plan = scaffold::check(&url, &migrations, tables, &renames).await?;
            if !plan.is_empty() {
                println!(
                    "the migrations in {} do not build the types' schema:",
                    dir.display()
                );
                for step in &plan.steps {
                    println!("  - {}", step.description);
                }
                println!("run `cargo xtask new-migration <name>` to write the missing migration");
                return Ok(std::process::ExitCode::FAILURE);
            }
            println!("ok: the migrations build exactly the types' schema");
            if let Some(stale) = stale_schema_doc(tables)? {
                println!("{stale}");
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::NewMigration {
            name,
            allow_destructive,
            lock_timeout,
            statement_timeout,
            online,
        } => {
            let url = database_url().await?;
            let options = scaffold::NewMigrationOptions {
                allow_destructive,
                timeouts: scaffold::Timeouts {
                    lock: lock_timeout,
                    statement: statement_timeout,
                },
                online,
            };
            let renames = mandrake_storage::registered_renames();
            let made =
                scaffold::new_migration_with(&url, &dir, tables, &renames, &name, &options).await?;
            if made.files.is_empty() {
                println!("the schema is up to date: no migration written");
            }
            for step in &made.plan.steps {
                let mark = if step.destructive {
                    " (DESTRUCTIVE)"
                } else {
                    ""
                };
                println!("  {}{mark}", step.description);
            }
            if !made.files.is_empty() {
                println!("verified and wrote");
            }
            for (up, down) in &made.files {
                println!("  {}\n  {}", up.display(), down.display());
            }
            if let Some(doc) = redraw_schema_doc(tables)? {
                println!("redrew the diagram in {}", doc.display());
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Redraws the diagram of `docs/SCHEMA.md`, if it exists and is stale, so
/// a schema change and its diagram land together; returns its path then.
fn redraw_schema_doc(tables: &[&TableSchema]) -> Result<Option<PathBuf>> {
    let path = workspace_root()?.join(SCHEMA_DOC);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let current = crate::diagram::mermaid(tables);
    match crate::diagram::replace_in(&text, &current) {
        Some(redrawn) if redrawn != text => {
            std::fs::write(&path, redrawn)
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
            Ok(Some(path))
        }
        _ => Ok(None),
    }
}

/// Why `docs/SCHEMA.md` no longer shows the registered types, if it exists
/// and does not.
fn stale_schema_doc(tables: &[&TableSchema]) -> Result<Option<String>> {
    let path = workspace_root()?.join(SCHEMA_DOC);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let current = crate::diagram::mermaid(tables);
    if crate::diagram::embedded_in(&text) == Some(current.as_str()) {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} is stale: `cargo xtask new-migration` redraws it (or replace its ```mermaid \
         block with the output of `cargo xtask schema --format mermaid`)",
        path.display()
    )))
}

/// `--database-url`, else DATABASE_URL, else the embedded cluster (started
/// if needed).
async fn database_url(given: Option<&str>) -> Result<String> {
    let mut settings = Settings::from_env()?;
    if let Some(url) = given {
        settings.database_url = Some(url.to_owned());
    }
    settings.resolve_url().await
}

async fn db_command(cmd: DbCommand) -> Result<()> {
    let cluster = Cluster::default_for_workspace()?;
    match cmd {
        DbCommand::Start => {
            let was_running = cluster.status()?.running;
            let url = start(&cluster).await?;
            let verb = if was_running {
                "already running"
            } else {
                "started"
            };
            println!("cluster {verb} at {}\n{url}", cluster.root().display());
        }
        DbCommand::Stop => {
            blocking({
                let c = cluster.clone();
                move || c.stop()
            })
            .await?;
            println!("cluster stopped ({})", cluster.root().display());
        }
        DbCommand::Status => {
            let status = cluster.status()?;
            let state = match status.pid {
                Some(pid) if status.running => format!("running (pid {pid})"),
                _ => "stopped".to_owned(),
            };
            println!("state:  {state}");
            println!("data:   {}", status.root.display());
            println!("socket: {}", cluster.socket_dir().display());
            println!("url:    {}", cluster.url(DEFAULT_DATABASE));
        }
        DbCommand::Url => {
            // Only the URL goes to stdout, so `psql "$(cargo xtask db url)"` works.
            println!("{}", cluster.url(DEFAULT_DATABASE));
            if !cluster.status()?.running {
                eprintln!("the cluster is stopped: `cargo xtask db start` starts it");
            }
        }
        DbCommand::Top { .. } | DbCommand::Verify { .. } => {
            unreachable!("handled with the database commands")
        }
        DbCommand::Backup(_) => {
            let dir = cluster.base_backup()?;
            println!(
                "base backup in {}\nrecover with `cargo xtask db restore --base {} --to-time \
                 \"<timestamp>\"` (instants after it need `cargo xtask db archiving on`)",
                dir.display(),
                dir.display()
            );
        }
        DbCommand::Restore(args) => {
            let (Some(base), Some(to_time)) = (args.base, args.to_time) else {
                unreachable!("clap requires both")
            };
            let copy = cluster.recover(&base, &to_time).await?;
            if args.force {
                let kept = cluster.replace_with(&copy)?;
                println!(
                    "the embedded cluster is now as it was at {to_time}; its old data is kept \
                     in {}\nWAL archiving is off on it: `cargo xtask db archiving on` turns it on",
                    kept.display()
                );
            } else {
                println!(
                    "recovered a copy as it was at {to_time}, running beside the embedded \
                     cluster in {root}\n{}\nstop and delete it with `MANDRAKE_DATA_DIR={root} \
                     cargo xtask db destroy`; --force makes the recovery the embedded cluster",
                    copy.url(DEFAULT_DATABASE),
                    root = copy.root().display(),
                );
            }
        }
        DbCommand::Archiving { action } => {
            if action != ArchivingAction::Status {
                cluster.set_archiving(action == ArchivingAction::On).await?;
            }
            let status = cluster.archiving().await?;
            println!(
                "archiving: {}\nfolder:    {}\narchived:  {} segment(s){}\nfailed:    {}",
                if status.on { "on" } else { "off" },
                status.dir.display(),
                status.archived,
                status
                    .last_archived
                    .map(|s| format!(", newest {s}"))
                    .unwrap_or_default(),
                status.failed
            );
        }
        DbCommand::Destroy => {
            blocking({
                let c = cluster.clone();
                move || c.destroy()
            })
            .await?;
            println!("cluster destroyed ({})", cluster.root().display());
        }
    }
    Ok(())
}

async fn backup_command(url: &str, args: BackupArgs) -> Result<std::process::ExitCode> {
    if args.keep == Some(0) {
        return Err(mandrake_storage::BackupError::KeepZero.into());
    }
    let database = database_name(url)?;
    let dir = mandrake_storage::backup::default_dir()?;
    let out = args
        .out
        .unwrap_or_else(|| mandrake_storage::backup::default_path(&dir, &database));
    let made = mandrake_storage::backup::backup(url, &out, |line| eprintln!("{line}")).await?;
    println!(
        "wrote {} ({:.1} MiB in {:.1} s)\ntables: {}",
        made.path.display(),
        made.bytes as f64 / (1024.0 * 1024.0),
        made.duration.as_secs_f64(),
        made.tables.join(", ")
    );
    if let Some(keep) = args.keep {
        let folder = made.path.parent().unwrap_or(&dir);
        for old in mandrake_storage::backup::prune(folder, &database, keep, Some(&made.path))? {
            println!("deleted {}", old.display());
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn restore_command(url: &str, args: RestoreArgs) -> Result<std::process::ExitCode> {
    use mandrake_storage::backup::RestoreTarget;
    let file = args.file.expect("clap requires FILE without --base");
    let target = match (args.into, args.force) {
        (None, false) => RestoreTarget::New,
        (Some(name), false) => RestoreTarget::Named(name),
        (Some(name), true) => RestoreTarget::Replace(name),
        (None, true) => RestoreTarget::Replace(database_name(url)?),
    };
    let restored = mandrake_storage::backup::restore(url, &file, &target).await?;
    match restored.replaced {
        Some(kept) => println!(
            "database {} now holds {}; its previous contents are kept as database {kept} \
             (drop it when you no longer need it)",
            restored.database,
            file.display()
        ),
        None => println!("{}", restored_message(&file, &restored)),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// What `db restore` says of a copy: where it is, and the `DATABASE_URL` to
/// use, without the password (it stays out of the terminal and its scrollback).
fn restored_message(
    file: &std::path::Path,
    restored: &mandrake_storage::backup::Restored,
) -> String {
    let shown = mandrake_storage::url::redact_url(&restored.url);
    let hint = if shown == restored.url {
        ""
    } else {
        " (with your password in place of ***)"
    };
    format!(
        "restored {} into database {}\npoint the app at it: DATABASE_URL='{shown}'{hint}",
        file.display(),
        restored.database,
    )
}

async fn verify_command(
    url: &str,
    file: &std::path::Path,
    migrations: &Migrations,
) -> Result<std::process::ExitCode> {
    let report = mandrake_storage::backup::verify(url, file, migrations).await?;
    for (table, rows) in &report.tables {
        println!("{rows:>10}  {table}");
    }
    if let Some(version) = report.migrated_to {
        println!("migrated to {version}");
    }
    if !report.pending.is_empty() {
        println!(
            "newer migrations, applied by `migrate` after a restore: {}",
            report.pending.join(", ")
        );
    }
    if report.ok() {
        println!(
            "ok: {} restores, with the schema its migrations build",
            file.display()
        );
        return Ok(std::process::ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    Ok(std::process::ExitCode::FAILURE)
}

fn database_name(url: &str) -> Result<String> {
    let options = mandrake_storage::admin::connect_options(url)?;
    Ok(options.get_database().unwrap_or("postgres").to_owned())
}

/// Starts the cluster if needed and makes sure the default database exists.
async fn start(cluster: &Cluster) -> Result<String> {
    blocking({
        let c = cluster.clone();
        move || c.start()
    })
    .await?;
    cluster.ensure_database(DEFAULT_DATABASE).await
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Config(format!("task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restored_url_is_shown_without_its_password() {
        let restored = mandrake_storage::backup::Restored {
            database: "app_restored_1".into(),
            url: "postgres://app:S3cretPass@db:5432/app_restored_1".into(),
            replaced: None,
        };
        let text = restored_message(std::path::Path::new("a.dump"), &restored);
        assert!(!text.contains("S3cretPass"), "{text}");
        assert!(
            text.contains("DATABASE_URL='postgres://app:***@db:5432/app_restored_1'"),
            "{text}"
        );
    }
}
