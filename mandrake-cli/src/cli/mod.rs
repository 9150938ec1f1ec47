//! The `cargo xtask` commands as library functions, so any application can
//! have the same tool by writing a thin `main` with its own record types.

mod args;
mod db;
mod migrations;
mod scratch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use mandrake_storage::schema::TableSchema;
use mandrake_storage::schema::ddl::create_schema;
use mandrake_storage::{Error, Result, Settings};

pub use scratch::ScratchServer;

pub use args::{
    ArchivingAction, BackupArgs, Cli, Command, DbCommand, MigrateArgs, RestoreArgs, RollbackArgs,
    SchemaFormat,
};

/// Parses the process arguments and runs the command for `tables`: the whole
/// `main` of an application's xtask.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     // Every `#[derive(Record)]` of the linked crates (link yours with
///     // `use your_app as _;`, or by calling into it).
///     mandrake_cli::main(&mandrake_storage::registered_tables())
/// }
/// ```
pub fn main(tables: &[&TableSchema]) -> ExitCode {
    run_blocking(Cli::parse(), tables)
}

/// Runs `cli` on a fresh runtime and reports an error the way a command
/// line should: one line on stderr. Exit codes: 0 when the command did its
/// job, 1 when it found what it checks for (`check` finds drift, `status
/// --exit-code` finds pending or failed migrations), 2 on an error (a bad
/// URL, an unreachable server, a refused migration).
pub fn run_blocking(cli: Cli, tables: &[&TableSchema]) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli, tables)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// What every command may need: the migrations folder and the server.
struct Context {
    dir: PathBuf,
    url: Option<String>,
}

impl Context {
    /// `--database-url`, else `DATABASE_URL`, else the embedded cluster.
    async fn url(&self) -> Result<String> {
        let mut settings = Settings::from_env()?;
        if let Some(url) = &self.url {
            settings.database_url = Some(url.clone());
        }
        settings.resolve_url().await
    }

    /// The server `check`, `new-migration` and `fuzz-diff` make their
    /// scratch databases on ([`ScratchServer`]); says which on stdout.
    async fn scratch_url(&self) -> Result<String> {
        let dev = std::env::var("MANDRAKE_DEV_URL")
            .ok()
            .filter(|u| !u.is_empty());
        let embedded = mandrake_storage::cluster::find_bin_dir().is_ok();
        let server = ScratchServer::choose(self.url.is_some(), dev.is_some(), embedded);
        let url = match server {
            ScratchServer::Flag => self.url.clone().unwrap_or_default(),
            ScratchServer::DevUrl => dev.unwrap_or_default(),
            ScratchServer::Embedded => {
                let settings = Settings {
                    database_url: None,
                    ..Settings::from_env()?
                };
                settings.resolve_url().await?
            }
            ScratchServer::DatabaseUrl => self.url().await?,
        };
        println!(
            "scratch databases on {} ({server})",
            mandrake_storage::redact_url(&url)
        );
        Ok(url)
    }
}

/// Runs one parsed command on `tables`. `check` and `new-migration` rename
/// what the rename hints of the linked record types say
/// ([`mandrake_storage::registered_renames`]).
pub async fn run(cli: Cli, tables: &[&TableSchema]) -> Result<ExitCode> {
    let dir = match cli.migrations {
        Some(dir) => dir,
        None => mandrake_storage::cluster::workspace_root()?.join("migrations"),
    };
    let ctx = Context {
        dir,
        url: cli.database_url,
    };
    match cli.command {
        Command::Db(DbCommand::Top { limit, reset, full }) => {
            db::top(&ctx, tables, limit, reset, full).await
        }
        Command::Db(DbCommand::Backup(args)) if !args.base => {
            db::backup_command(&ctx.url().await?, args).await
        }
        Command::Db(DbCommand::Restore(args)) if args.base.is_none() => {
            db::restore_command(&ctx.url().await?, args).await
        }
        Command::Db(DbCommand::Verify { file }) => {
            let migrations = mandrake_storage::migrate::Migrations::from_dir(&ctx.dir)?;
            db::verify_command(&ctx.url().await?, &file, &migrations).await
        }
        Command::Db(DbCommand::Status) => db::status(&ctx).await,
        Command::Db(DbCommand::DropConsumer { name }) => {
            let mut conn = mandrake_storage::connect_one(&ctx.url().await?).await?;
            mandrake_storage::drop_consumer(&mut conn, &name).await?;
            println!("dropped consumer {name}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Db(cmd) => db::db_command(cmd).await.map(|()| ExitCode::SUCCESS),
        Command::Migrate(args) => migrations::migrate(&ctx, args).await,
        Command::Rollback(args) => migrations::rollback(&ctx, args).await,
        Command::Status { exit_code } => migrations::status(&ctx, exit_code).await,
        Command::Resolve { version } => migrations::resolve(&ctx, version).await,
        Command::Schema { format } => {
            match format {
                SchemaFormat::Sql => print!("{}", create_schema(tables)),
                SchemaFormat::Mermaid => print!("{}", crate::diagram::mermaid(tables)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::FuzzDiff { cases, seed } => migrations::fuzz_diff(&ctx, cases, seed).await,
        Command::Lint {
            files,
            accept_before,
        } => migrations::lint(&ctx, files, accept_before),
        Command::Check { no_cache } => {
            migrations::check(&ctx, tables, &cache(&ctx, no_cache)?).await
        }
        Command::NewMigration {
            name,
            allow_destructive,
            lock_timeout,
            statement_timeout,
            online,
            no_cache,
        } => {
            let options = crate::scaffold::NewMigrationOptions {
                allow_destructive,
                timeouts: crate::scaffold::Timeouts {
                    lock: lock_timeout,
                    statement: statement_timeout,
                },
                online,
                cache: cache(&ctx, no_cache)?,
            };
            migrations::new_migration(&ctx, tables, name, options).await
        }
    }
}

/// The cache of the migrations folder, or none with `--no-cache`.
fn cache(ctx: &Context, no_cache: bool) -> Result<crate::cache::Cache> {
    match no_cache {
        true => Ok(crate::cache::Cache::off()),
        false => crate::cache::Cache::for_folder(&ctx.dir),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Config(format!("task failed: {e}")))?
}
