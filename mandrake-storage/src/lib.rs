#![deny(missing_docs)]
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
//! | struct | `index(a, using = "gin", ops = "gin_trgm_ops", where = "<sql>", include(b))` | index of another method, with an operator class, partial, covering |
//! | struct | `index(expr = "lower(email)")`, `unique(email, where = "deleted_at IS NULL")` | index on an expression; a partial or expression `unique` is a unique index |
//! | struct | `extension = "pg_trgm"` (repeatable) | `CREATE EXTENSION IF NOT EXISTS` before the tables |
//! | struct | `check = "<sql condition>"` (repeatable) | a CHECK, named after what it checks |
//! | struct | `foreign_key(a, b, references = "users(a, id)", on_delete = "cascade")` | a foreign key over several columns to a primary or unique key |
//! | struct | `renamed_from = "old"` | the table's previous name (the diff renames it) |
//! | struct | `notify` | announce every committed change; adds `T::subscribe` ([`Subscription`]) |
//! | field | `rename = "col"` | column name |
//! | field | `unique`, `index` | single-column unique constraint / index |
//! | field | `references = "table"`, `on_delete = "cascade" \| "set null" \| "restrict"` | foreign key to `table(id)` |
//! | field | `default = "<sql>"` | column default |
//! | field | `sql_type = "<sql>"` | column type for a type with no built-in mapping |
//! | field | `renamed_from = "old"` | the column's previous name |
//! | field | `skip` | not stored (filled with `Default::default()`) |
//! | field | `secret` | shown as `"<redacted>"` in `Debug` |
//! | field | `version` | integer column for optimistic locking |
//! | field | `index = false` | no index of its own for a foreign key (by default each gets one, unless an index or unique key starts with it) |
//! | field | `generated = "<sql>"` | `GENERATED ALWAYS AS (…) STORED`: read back, never in `New…` or the patch |
//!
//! The derive also implements `Debug` (so do not derive it too) and generates
//! `New<Name>` (create input: no id, timestamps or version) and `<Name>Patch`
//! (an `Option` per column; `Some(None)` sets a nullable column to NULL). On a
//! table with a `version` column, `update` takes `patch.expect_version(v)`
//! ([`Versioned`]), so the optimistic-lock check cannot be forgotten;
//! `update_unchecked` is the explicit way around it.
//!
//! # Typed queries
//!
//! Every stored field `foo` of a record `T` is a constant `T::FOO` of type
//! [`Column<T, V>`]; every unique constraint is a [`UniqueKey<T>`] named
//! `T::ON_<FIELDS>`. Filters, orders and upsert keys are built from them, so
//! a misspelled column, a value of the wrong type, `is_null` on a NOT NULL
//! column or another record's column fails to compile.
//!
//! ```no_run
//! use mandrake_storage::{Db, Filter, ListOptions, Record, RecordEnum};
//! # use chrono::{DateTime, Utc};
//! # use uuid::Uuid;
//! # #[derive(RecordEnum, Clone, Copy, Debug, PartialEq)]
//! # pub enum Role { User, Assistant }
//! #[derive(Record, Clone)]
//! pub struct Message {
//!     pub id: Uuid,
//!     pub conversation_id: Uuid,
//!     pub role: Role,
//!     pub content: String,
//!     pub created_at: DateTime<Utc>,
//!     pub updated_at: DateTime<Utc>,
//! }
//!
//! # async fn demo(db: &Db, conversation: Uuid, since: DateTime<Utc>) -> mandrake_storage::Result<()> {
//! let filter = Message::CONVERSATION_ID.eq(conversation)
//!     .and(Message::ROLE.is_in([Role::User, Role::Assistant]))
//!     .and(Message::CONTENT.contains_text("50%").or(Message::CREATED_AT.gt(since)));
//! let newest = ListOptions::new().order_by(Message::CREATED_AT.desc()).limit(50);
//! let page = Message::repo().list(db, filter, newest).await?;
//! let more = Message::repo()
//!     .list(db, Filter::all(), ListOptions::new().order_by(Message::CREATED_AT.desc()).after_opt(page.next))
//!     .await?;
//! let archived = Message::repo().delete_where(db, Message::CREATED_AT.lt(since)).await?;
//! # Ok(()) }
//! ```
//!
//! The SQL text of a call depends only on the filter's *shape* (its structure
//! and operators) and the options' form; it is built on first use and cached,
//! and every value is bound (`is_in` binds one array, whatever its length).
//! Raw SQL stays first-class: records implement `sqlx::FromRow`, and
//! [`Record::columns`] / [`Record::decode`] serve hand-written joins.

#![warn(unreachable_pub)]
#![deny(unsafe_code)]

pub mod admin;
#[cfg(all(feature = "backup", unix))]
pub mod backup;
#[cfg(all(feature = "embedded", unix))]
pub mod cluster;
mod config;
mod db;
mod error;
mod fallback;
mod feed;
#[cfg(feature = "migrate")]
pub mod migrate;
#[cfg(all(feature = "backup", unix))]
pub mod pitr;
mod query;
mod record;
pub mod schema;
mod sql;
#[cfg(all(feature = "testing", unix))]
pub mod testing;
pub mod url;

/// What the derives' generated code calls: not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::record::column::{
        ColumnTypeOf, Compressible, bind_column, cells, column_nullable, column_sql_type,
        column_values, compressible, decode_column, enum_support, push_cell,
    };
    pub use crate::record::{Layout, Registration, Statements, UpsertStatements};
    pub use inventory;
}

pub use admin::connect_one;
pub use config::Settings;
pub use db::dry_run::DryRun;
pub use db::pool::{PoolConnection, PoolStatus};
pub use db::replica::WriteToken;
pub use db::transaction::Transaction;
pub use db::{BoxFuture, Db, Isolation, MAX_ATTEMPTS};
pub use error::{BackupError, Error, MigrationError, Result, Right};
pub use feed::{
    Change, DurableSubscription, FeedEvent, SlotStatus, Subscription, TenantChange, drop_consumer,
    feed_slots,
};
/// `#[derive(FromRow)]` on a struct of query results (named fields read the
/// column of their name, tuple fields by position), through the re-exported
/// `sqlx`: no sqlx dependency of your own is needed.
///
/// ```no_run
/// use mandrake_storage::FromRow;
/// #[derive(FromRow)]
/// struct Titled {
///     title: String,
///     messages: i64,
/// }
/// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
/// let rows: Vec<Titled> = mandrake_storage::sqlx::query_as(
///     "SELECT c.title, count(m.id) AS messages FROM conversations c \
///      LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id",
/// )
/// .fetch_all(db)
/// .await?;
/// # Ok(()) }
/// ```
pub use mandrake_derive::FromRow;
#[cfg(feature = "migrate")]
pub use mandrake_derive::embed_migrations;
pub use mandrake_derive::{Record, RecordEnum};
pub use query::aggregate::{
    Aggregate, Bucket, Bucketed, GroupKey, Having, Measure, MeasureValue, Numeric, NumericColumn,
    Operand, OrderedColumn, Sort, TimestampColumn,
};
pub use query::filter::MAX_SEARCH_QUERY_CHARS;
pub use query::filter::{Column, Filter, JsonColumn, Plain, Search, Searchable, TextColumn};
pub use query::join::{Join, JoinedSide};
pub use query::json::{JsonPath, PathValue};
pub use query::list::{Cursor, ListOptions, Order, Page};
pub use query::search::{Hit, SearchFields, SearchOptions};
pub use record::column::{ColumnType, RecordEnum};
pub use record::{
    Record, Repo, TenantRoot, UniqueKey, Versioned, registered_renames, registered_tables,
};
pub use schema::{ColumnDef, DatabaseSchema, Lookup, LookupKind, OnDelete, TableSchema};
/// The trait [`FromRow`](macro@FromRow) implements. From sqlx-core: the
/// same name at sqlx's root is its derive too when an app turns on sqlx's
/// `macros`, and would clash with ours.
pub use sqlx_core::from_row::FromRow;
pub use url::redact_url;
pub use {chrono, serde_json, sqlx, uuid};
