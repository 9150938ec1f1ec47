//! The `cargo xtask` commands as library functions, so any application can
//! have the same tool by writing a thin `main` with its own record types.

use clap::{Parser, Subcommand};

use crate::cluster::{Cluster, DEFAULT_DATABASE};
use crate::error::{Error, Result};

/// Command-line interface of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Database tasks for a mandrake-storage workspace"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage the embedded PostgreSQL cluster (used when DATABASE_URL is not set).
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create (first time) and start the cluster; a no-op while it runs.
    Start,
    /// Stop the cluster.
    Stop,
    /// Say whether the cluster runs, where it lives and its URL.
    Status,
    /// Print a connection string that psql and sqlx accept.
    Url,
}

/// Parses the process arguments and runs the command; the `main` of an xtask.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<std::process::ExitCode> {
    match cli.command {
        Command::Db(cmd) => db_command(cmd).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
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
        DbCommand::Url => println!("{}", start(&cluster).await?),
    }
    Ok(())
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
