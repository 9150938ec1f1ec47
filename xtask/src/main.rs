//! `cargo xtask …`: Mandrake's tables handed to mandrake-storage's command
//! line, plus `bench`, which runs the benchmark crate.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Database tasks for Mandrake"
)]
struct Xtask {
    /// The migrations folder (default: `migrations/` at the workspace root).
    #[arg(long, global = true, value_name = "DIR")]
    migrations: Option<PathBuf>,
    /// The server to use (default: DATABASE_URL, else the embedded cluster).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Compare our repository with hand-written sqlx, tokio-postgres, SeaORM
    /// and COPY, side by side (builds the bench crate in release mode).
    Bench {
        /// Passed to the benchmark: `--quick`, `--only TEXT`, `--rounds N`
        /// (`cargo xtask bench -- --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    #[command(flatten)]
    Storage(mandrake_cli::Command),
}

fn main() -> ExitCode {
    let args = Xtask::parse();
    match args.task {
        Task::Bench { args } => bench(&args),
        Task::Storage(command) => {
            let cli = mandrake_cli::Cli {
                migrations: args.migrations,
                database_url: args.database_url,
                command,
            };
            mandrake_cli::run_blocking(cli, &mandrake_types::tables())
        }
    }
}

fn bench(args: &[String]) -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "mandrake-bench",
        "--",
    ]);
    cmd.args(args);
    match cmd.status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: cannot run cargo: {err}");
            ExitCode::FAILURE
        }
    }
}
