//! mandrake-storage: plain Rust structs in, a typed PostgreSQL storage layer out.
//!
//! `#[derive(Record)]` on a struct gives its table description ([`TableSchema`]),
//! the `CREATE TABLE` and `updated_at` trigger SQL, and a typed repository.
//! Migrations are generated from the difference between the types and the
//! migrations folder and proven on scratch databases before they are written.

pub mod cli;
pub mod cluster;
mod db;
pub mod ddl;
mod error;
pub mod schema;
pub mod testing;

pub use db::{Db, Settings, connect_one};
pub use error::{Error, Result};
pub use schema::{Column, OnDelete, TableSchema};
pub use sqlx;
