//! Attribute names, spelled once.

pub const RECORD: &str = "record";

// struct level
pub const TABLE: &str = "table";
pub const INDEX: &str = "index";
pub const UNIQUE: &str = "unique";
pub const RENAMED_FROM: &str = "renamed_from";
pub const NOTIFY: &str = "notify";
pub const EXTENSION: &str = "extension";
pub const CHECK: &str = "check";
pub const FOREIGN_KEY: &str = "foreign_key";

// field level (also `index`, `unique`, `renamed_from`)
pub const RENAME: &str = "rename";
pub const REFERENCES: &str = "references";
pub const ON_DELETE: &str = "on_delete";
pub const DEFAULT: &str = "default";
pub const SQL_TYPE: &str = "sql_type";
pub const SKIP: &str = "skip";
pub const SECRET: &str = "secret";
pub const VERSION: &str = "version";
pub const GENERATED: &str = "generated";
pub const SEARCH: &str = "search";
pub const TENANT: &str = "tenant";
pub const COMPRESSION: &str = "compression";

// required fields
pub const ID: &str = "id";
pub const CREATED_AT: &str = "created_at";
pub const UPDATED_AT: &str = "updated_at";
