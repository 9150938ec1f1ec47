#![deny(missing_docs)]
#![warn(unreachable_pub)]
#![deny(unsafe_code)]
//! The authoring tools of mandrake-storage, as a library: the schema diff
//! and its online planner, `new-migration` and `check` (scaffold), squawk's
//! lint, the diff fuzzer, `db top`, the ER diagram, and the command line that
//! drives them. An application's xtask is a thin `main` over [`main`]:
//!
//! ```no_run
//! // xtask/src/main.rs
//! // use your_app as _; // links your crate in, and with it every record it defines
//! fn main() -> std::process::ExitCode {
//!     mandrake_cli::main(&mandrake_storage::registered_tables())
//! }
//! ```
//!
//! It depends on the runtime (`mandrake-storage`), never the other way round.

pub mod cache;
mod cli;
pub mod diagram;
pub mod diff;
pub mod expand;
pub mod fuzz;
pub mod lint;
pub mod online;
pub mod scaffold;
pub mod stats;

pub use cli::{
    ArchivingAction, BackupArgs, Cli, Command, DbCommand, MigrateArgs, RestoreArgs, RollbackArgs,
    SchemaFormat, ScratchServer, main, run, run_blocking,
};
