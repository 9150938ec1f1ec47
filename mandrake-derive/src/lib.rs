#![deny(missing_docs)]
//! `#[derive(Record)]` and `#[derive(RecordEnum)]` for mandrake-storage.
//!
//! Use them through `mandrake_storage`, which re-exports both and documents
//! the attributes. The derive is split like serde_derive's: `ast` parses the
//! struct into plain data with typed attributes (`attr`), `check` validates
//! it (every misuse is reported, each at its own span, through `ctxt`), and
//! `record` / `enums` emit code that only calls generic code in
//! mandrake-storage.

mod ast;
mod attr;
mod check;
mod ctxt;
mod embed;
mod enums;
mod record;
mod row;
mod symbol;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Stores a struct as a PostgreSQL table; see `mandrake_storage::Record`.
#[proc_macro_derive(Record, attributes(record))]
pub fn derive_record(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    record::expand(&input)
        .unwrap_or_else(ctxt::to_compile_errors)
        .into()
}

/// Stores a fieldless enum as TEXT limited by a CHECK; see
/// `mandrake_storage::RecordEnum`.
#[proc_macro_derive(RecordEnum, attributes(record))]
pub fn derive_record_enum(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    enums::expand(&input)
        .unwrap_or_else(ctxt::to_compile_errors)
        .into()
}

/// sqlx's `FromRow` for a struct of query results, through the `sqlx` that
/// `mandrake_storage` re-exports; see `mandrake_storage::FromRow`.
#[proc_macro_derive(FromRow)]
pub fn derive_from_row(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    row::expand(&input)
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}

/// Embeds a migrations folder (relative to the crate's `Cargo.toml`) at
/// compile time; expands to a `mandrake_storage::Result<Migrations>`.
///
/// Cargo rebuilds when an embedded file changes, not when a new file is
/// added: touch the crate (or add a `build.rs` with
/// `cargo:rerun-if-changed=migrations`) after adding one.
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    let dir = parse_macro_input!(input as syn::LitStr);
    embed::expand(&dir)
        .unwrap_or_else(|e| e.to_compile_error())
        .into()
}
