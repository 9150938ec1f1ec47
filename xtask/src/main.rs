//! `cargo xtask …`: hands Mandrake's tables to mandrake-storage's command line.

fn main() -> std::process::ExitCode {
    mandrake_storage::cli::main(&mandrake_types::tables())
}
