//! mandrake-storage: plain Rust structs in, a typed PostgreSQL storage layer out.
//!
//! `#[derive(Record)]` on a struct gives its table description ([`TableSchema`]),
//! the `CREATE TABLE` and `updated_at` trigger SQL, and a typed repository
//! ([`Repo`]). Migrations are generated from the difference between the types
//! and the migrations folder and proven on scratch databases before they are
//! written.
//!
//! # Attributes of `#[derive(Record)]`
//!
//! | where | attribute | meaning |
//! |---|---|---|
//! | struct | `table = "name"` | table name (default: snake_case plural of the struct) |
//! | struct | `index(a, b)` / `unique(a, b)` | composite index / unique constraint |
//! | struct | `renamed_from = "old"` | the table's previous name (the diff renames it) |
//! | field | `rename = "col"` | column name |
//! | field | `unique`, `index` | single-column unique constraint / index |
//! | field | `references = "table"`, `on_delete = "cascade" \| "set null" \| "restrict"` | foreign key to `table(id)` |
//! | field | `default = "<sql>"` | column default |
//! | field | `sql_type = "<sql>"` | column type for a type with no built-in mapping |
//! | field | `renamed_from = "old"` | the column's previous name |
//! | field | `skip` | not stored (filled with `Default::default()`) |
//! | field | `secret` | shown as `"<redacted>"` in `Debug` |
//! | field | `version` | integer column for optimistic locking |
//!
//! The derive also implements `Debug` (so do not derive it too) and generates
//! `New<Name>` (create input: no id, timestamps or version) and `<Name>Patch`
//! (an `Option` per column; `Some(None)` sets a nullable column to NULL). On a
//! table with a `version` column, `update` takes `patch.expect_version(v)`
//! ([`Versioned`]), so the optimistic-lock check cannot be forgotten;
//! `update_unchecked` is the explicit way around it.

pub mod cli;
pub mod cluster;
mod column;
mod db;
pub mod ddl;
pub mod diff;
mod error;
mod filter;
pub mod introspect;
mod list;
pub mod migrate;
mod pool;
mod record;
mod repo;
pub mod scaffold;
pub mod schema;
pub mod testing;

pub use column::{
    ColumnType, ColumnTypeOf, RecordEnum, bind_column, cells, column_nullable, column_sql_type,
    column_values, decode_column, enum_support, push_cell,
};
pub use db::{BoxFuture, Db, Isolation, MAX_ATTEMPTS, Settings, Transaction, connect_one};
pub use error::{Error, Result};
pub use filter::{Column, Filter, JsonColumn, TextColumn};
pub use list::{Cursor, ListOptions, Order, Page};
pub use mandrake_derive::{Record, RecordEnum, embed_migrations};
pub use pool::{PoolConnection, PoolStatus};
pub use record::{Layout, Record, Statements, UniqueKey, UpsertStatements, Versioned};
pub use repo::Repo;
pub use schema::{ColumnDef, DatabaseSchema, OnDelete, TableSchema};
pub use {chrono, sqlx, uuid};
