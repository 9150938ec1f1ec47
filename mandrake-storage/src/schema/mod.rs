//! The schema model at the centre: the derive fills it, catalog introspection
//! fills it, the diff compares two of them, and [`ddl`] renders SQL from it.

pub mod change;
pub mod ddl;
pub mod introspect;

pub use change::{Function, Object, SchemaChange};

pub use crate::sql::{SCHEMA, quote_table};
use serde::{Deserialize, Serialize};

/// One table: what a `#[derive(Record)]` struct describes, or what the
/// catalog holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The table name.
    pub name: String,
    /// The columns, in order.
    pub columns: Vec<ColumnDef>,
    /// The primary key's columns (`id`).
    pub primary_key: Vec<String>,
    /// The primary key constraint's name (`<table>_pkey` when we make it).
    pub primary_key_name: String,
    /// Unique constraints.
    pub uniques: Vec<Unique>,
    /// Indexes (besides those of constraints).
    pub indexes: Vec<Index>,
    /// Foreign keys.
    pub foreign_keys: Vec<ForeignKey>,
    /// CHECK constraints.
    pub checks: Vec<Check>,
    /// Whether the `set_timestamp` trigger keeps `updated_at` current.
    pub timestamp_trigger: bool,
    /// With `#[record(notify)]`: the table is in the feed's publication
    /// ([`FEED_PUBLICATION`]) with `REPLICA IDENTITY FULL`, so the change
    /// feed decodes every insert, update and delete from the WAL, with the
    /// row before an update or delete too.
    pub feed: bool,
    /// The NOTIFY triggers the feed used before it read the WAL, with the
    /// columns their payload carried. Only introspection finds them (the
    /// derive never asks for them), so `new-migration` drops them.
    pub notify_triggers: Option<Vec<String>>,
    /// The extensions the table needs (`#[record(extension = "pg_trgm")]`):
    /// created before any table. The catalog does not say which table needs
    /// which, so a table read back has none; the database's are in
    /// [`DatabaseSchema::extensions`].
    pub extensions: Vec<String>,
    /// Row-level security, `ENABLE`d for every role but the tables' owner,
    /// which runs the migrations and the [`Lookup`]s (see
    /// [`TableSchema::with_tenant`]).
    pub row_security: bool,
    /// Row security `FORCE`d on the owner too: how tenant-scoped tables were
    /// made before the [`Lookup`]s. Only introspection finds it, so
    /// `new-migration` lifts it.
    pub row_security_forced: bool,
    /// Its row-level security policies.
    pub policies: Vec<Policy>,
    /// The functions through which a tenant's search and pattern filters
    /// reach the column's index ([`Lookup`]).
    pub lookups: Vec<Lookup>,
    /// With `#[record(tenant)]`: the tenant key column. A declaration: a
    /// table read back from the catalog has its policy, not this.
    pub tenant: Option<String>,
}

/// A function that finds the current tenant's rows matching a full-text
/// query or a `LIKE` pattern through the column's own index, for the typed
/// filters of a tenant-scoped table: `"id" = ANY(ARRAY(SELECT lookup(…)))`
/// beside the filter itself.
///
/// Why: under row security PostgreSQL evaluates no operator that is not
/// leakproof (`@@`, `LIKE`, the trigram operators) before the policy, so it
/// cannot use them as index conditions; a tenant's search read every row of
/// the tenant (182 ms against 0.1 ms as the owner, on 1,000,000 rows in 10
/// tenants). A lookup runs as the tables' owner (`SECURITY DEFINER`), whom
/// row security leaves out, and keeps to the tenant itself. It only
/// narrows: the statement around it still goes through the policy and
/// still checks the filter, so a lookup can never add a row. Without a
/// tenant it returns every match only to a session whose role reads every
/// row anyway (a superuser, `BYPASSRLS`, or the owner), and nothing to
/// anyone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lookup {
    /// The function's name, in [`SCHEMA`].
    pub name: String,
    /// The column it searches.
    pub column: String,
    /// The tenant column it keeps to.
    pub tenant: String,
    /// What it matches.
    pub kind: LookupKind,
}

/// What a [`Lookup`] matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupKind {
    /// A full-text query on a `#[record(search)]` field's vector
    /// (`lookup(tsquery)`).
    Matches,
    /// A `LIKE` or `ILIKE` pattern on a column with a trigram index
    /// (`lookup(pattern text, ignore_case boolean)`).
    Like,
}

impl Lookup {
    /// The lookup of `kind` on `table.column`, keeping to `tenant`.
    pub fn new(table: &str, column: &str, tenant: &str, kind: LookupKind) -> Lookup {
        let suffix = match kind {
            LookupKind::Matches => "matches",
            LookupKind::Like => "like",
        };
        Lookup {
            name: identifier(format!("{table}_{column}_{suffix}")),
            column: column.to_owned(),
            tenant: tenant.to_owned(),
            kind,
        }
    }
}

/// A row-level security policy for every command and role: the rows a
/// statement may see (`USING`) and write (`WITH CHECK`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The policy name.
    pub name: String,
    /// The `USING` condition, as PostgreSQL prints it when read back.
    pub using: String,
    /// The `WITH CHECK` condition.
    pub check: String,
}

/// The SQL of the transaction's tenant: NULL when none is set.
pub(crate) fn current_tenant_sql() -> String {
    // In a subquery the setting is read once per statement (an InitPlan),
    // not once per row: a page sorted from 20,000 rows took 5× longer.
    format!(
        "(SELECT NULLIF(current_setting({}, true), '')::uuid)",
        crate::sql::quote_literal(TENANT_SETTING)
    )
}

/// The setting that names the current tenant (`set_config` with
/// `is_local`, per transaction): tenant policies compare their column to it.
pub const TENANT_SETTING: &str = "mandrake.tenant";

/// The publication of the `#[record(notify)]` tables, which the change feed
/// decodes from the WAL.
pub const FEED_PUBLICATION: &str = "mandrake_feed";

/// A column; `sql_type` is valid DDL (`TEXT`, `TIMESTAMPTZ`, `VARCHAR(20)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// The column name.
    pub name: String,
    /// The SQL type.
    pub sql_type: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// A SQL expression, e.g. `now()`.
    pub default: Option<String>,
    /// For a generated column (`GENERATED ALWAYS AS (…) STORED`): the
    /// expression its value is computed from; never written by the app.
    pub generated: Option<String>,
    /// How PostgreSQL compresses its large values (`lz4` or `pglz`);
    /// `None` is the server's `default_toast_compression`.
    #[serde(default)]
    pub compression: Option<String>,
}

/// A unique constraint over one or more columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unique {
    /// The constraint name.
    pub name: String,
    /// Its columns.
    pub columns: Vec<String>,
}

/// An index: over columns (with an operator class) or an expression, of any
/// access method, partial (`WHERE`), covering (`INCLUDE`), unique or not. A
/// unique key that is partial or on an expression is a unique index, not a
/// constraint.
///
/// Read back from the catalog, `key` and `predicate` are PostgreSQL's own
/// printed form (`pg_get_indexdef`), so comparing two read-back schemas is
/// exact and a down rebuilds the index as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// The index name.
    pub name: String,
    /// Its leading plain columns, in order (empty for an expression).
    pub columns: Vec<String>,
    /// `UNIQUE`.
    pub unique: bool,
    /// The access method: `btree`, `gin`, `gist`, `brin` or `hash`.
    pub method: String,
    /// What goes inside `( )`: columns with their operator classes, or an
    /// expression.
    pub key: String,
    /// Covering columns (`INCLUDE`).
    pub include: Vec<String>,
    /// The condition of a partial index (`WHERE`).
    pub predicate: Option<String>,
}

/// The access methods an index may name.
pub const INDEX_METHODS: [&str; 5] = ["btree", "gin", "gist", "brin", "hash"];

impl Index {
    /// A b-tree over `columns` of `table`, named `<table>_<cols>_idx`.
    pub fn on(table: &str, columns: &[&str]) -> Index {
        Index {
            name: identifier(format!("{table}_{}_idx", columns.join("_"))),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            unique: false,
            method: "btree".into(),
            key: crate::sql::ident_list(columns),
            include: Vec::new(),
            predicate: None,
        }
    }

    /// A b-tree over an SQL expression (`lower(email)`).
    pub fn on_expression(table: &str, expression: &str) -> Index {
        Index {
            columns: Vec::new(),
            key: expression.to_owned(),
            ..Index::on(table, &[])
        }
    }

    /// With another access method (`gin`, …).
    pub fn using(mut self, method: &str) -> Index {
        self.method = method.to_owned();
        self
    }

    /// With an operator class on each column (`gin_trgm_ops`).
    pub fn ops(mut self, class: &str) -> Index {
        self.key = self
            .columns
            .iter()
            .map(|c| format!("{} {class}", crate::sql::quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        self
    }

    /// Partial: only rows where `predicate` holds.
    pub fn filter(mut self, predicate: &str) -> Index {
        self.predicate = Some(predicate.to_owned());
        self
    }

    /// Covering `columns` (`INCLUDE`).
    pub fn include(mut self, columns: &[&str]) -> Index {
        self.include = columns.iter().map(|c| c.to_string()).collect();
        self
    }

    /// `UNIQUE`.
    pub fn unique(mut self) -> Index {
        self.unique = true;
        self
    }

    /// Renamed for `table` after its other settings: a plain b-tree keeps
    /// `<table>_<cols>_idx`; any other gets a short hash of what it is, so two
    /// indexes on one column never share a name (`_key` when unique).
    pub fn named_for(mut self, table: &str) -> Index {
        let plain = self.method == "btree"
            && !self.unique
            && self.predicate.is_none()
            && self.include.is_empty()
            && !self.columns.is_empty()
            && self.key == crate::sql::ident_list(&self.columns);
        let what = if self.columns.is_empty() {
            "expr".to_owned()
        } else {
            self.columns.join("_")
        };
        self.name = if plain {
            identifier(format!("{table}_{what}_idx"))
        } else {
            let spec = format!(
                "{}|{}|{}|{:?}|{:?}",
                self.method, self.unique, self.key, self.include, self.predicate
            );
            let hash = short_hash(&spec);
            let suffix = if self.unique { "key" } else { "idx" };
            identifier(format!("{table}_{what}_{:08x}_{suffix}", hash))
        };
        self
    }

    /// Whether two indexes are the same index but for their names.
    pub fn same_as(&self, other: &Index) -> bool {
        (
            &self.method,
            self.unique,
            &self.key,
            &self.include,
            &self.predicate,
        ) == (
            &other.method,
            other.unique,
            &other.key,
            &other.include,
            &other.predicate,
        )
    }

    /// What it covers, in words: its columns, or its key.
    pub fn describe(&self) -> String {
        if self.columns.is_empty() {
            self.key.clone()
        } else {
            self.columns.join(", ")
        }
    }
}

/// A single-column foreign key to another table's `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignKey {
    /// The constraint name.
    pub name: String,
    /// The referencing columns, in order (one for a field's `references`).
    pub columns: Vec<String>,
    /// The referenced table.
    pub references: String,
    /// The referenced columns, a primary or unique key of that table
    /// (`["id"]` for a field's `references`).
    pub referenced: Vec<String>,
    /// What deleting the referenced row does.
    pub on_delete: OnDelete,
}

impl ForeignKey {
    /// `folder_id → folders`, or `(workspace_id, folder_id) → folders(workspace_id, id)`.
    pub fn describe(&self) -> String {
        if self.columns.len() == 1 && self.referenced == ["id"] {
            format!("{} → {}", self.columns[0], self.references)
        } else {
            format!(
                "({}) → {}({})",
                self.columns.join(", "),
                self.references,
                self.referenced.join(", ")
            )
        }
    }
}

/// What happens to a row when the row it references is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnDelete {
    /// Refuse the delete while rows reference it (checked at the end of the statement).
    NoAction,
    /// Delete the referencing rows too.
    Cascade,
    /// Set the referencing column to NULL.
    SetNull,
    /// Refuse the delete at once.
    Restrict,
    /// Set the referencing columns but the first, the tenant key, to NULL
    /// (PostgreSQL 15's `SET NULL (columns)`): what `SetNull` becomes on a
    /// key that [`with_tenant_keys`] leads with the tenant, which every row
    /// keeps.
    SetNullKeepTenant,
}

impl OnDelete {
    /// The SQL spelling, as `pg_get_constraintdef` prints it (without the
    /// column list of `SetNullKeepTenant`).
    pub fn sql(self) -> &'static str {
        match self {
            OnDelete::NoAction => "NO ACTION",
            OnDelete::Cascade => "CASCADE",
            OnDelete::SetNull | OnDelete::SetNullKeepTenant => "SET NULL",
            OnDelete::Restrict => "RESTRICT",
        }
    }
}

/// A CHECK constraint; `expression` is the part inside `CHECK ( … )`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// The constraint name.
    pub name: String,
    /// The condition, as PostgreSQL prints it.
    pub expression: String,
}

/// PostgreSQL cuts identifiers at 63 bytes. A name we make that is longer
/// keeps its first 54 bytes and ends in a hash of the whole, so two long
/// names that share their start (two composite indexes) stay distinct.
/// FNV-1a, cut to 32 bits: stable across Rust releases, unlike std's hasher,
/// so a generated name never changes from one build to the next.
fn short_hash(text: &str) -> u32 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as u32
}

/// The generated `tsvector` column of a text column with full-text search:
/// `content` → `content_search`.
pub fn search_vector(column: &str) -> String {
    identifier(format!("{column}_search"))
}

/// `name` as an identifier PostgreSQL keeps whole: a name over its 63 bytes
/// is cut and ends in a hash of the whole, so two long names stay apart.
pub fn identifier(name: String) -> String {
    if name.len() <= 63 {
        return name;
    }
    let mut end = 54;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let hash = short_hash(&name);
    format!("{}_{:08x}", &name[..end], hash)
}

impl TableSchema {
    /// An empty table, to fill with the `with_…` builders (as the derive does).
    pub fn new(name: &str) -> TableSchema {
        TableSchema {
            name: name.to_owned(),
            columns: Vec::new(),
            primary_key: Vec::new(),
            primary_key_name: String::new(),
            uniques: Vec::new(),
            indexes: Vec::new(),
            foreign_keys: Vec::new(),
            checks: Vec::new(),
            timestamp_trigger: false,
            feed: false,
            notify_triggers: None,
            extensions: Vec::new(),
            row_security: false,
            row_security_forced: false,
            policies: Vec::new(),
            lookups: Vec::new(),
            tenant: None,
        }
    }

    /// Looks a column up by name.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Adds a column (builder style, used by the derive).
    pub fn with_column(mut self, column: ColumnDef) -> Self {
        self.columns.push(column);
        self
    }

    /// Declares the primary key.
    pub fn with_primary_key(mut self, columns: &[&str]) -> Self {
        self.primary_key = columns.iter().map(|c| c.to_string()).collect();
        self.primary_key_name = identifier(format!("{}_pkey", self.name));
        self
    }

    /// Adds a unique constraint named the way PostgreSQL would name it
    /// (`<table>_<cols>_key`).
    pub fn with_unique(mut self, columns: &[&str]) -> Self {
        let name = identifier(format!("{}_{}_key", self.name, columns.join("_")));
        self.uniques.push(Unique {
            name,
            columns: columns.iter().map(|c| c.to_string()).collect(),
        });
        self
    }

    /// Adds an index named `<table>_<cols>_idx`.
    pub fn with_index(mut self, columns: &[&str]) -> Self {
        self.indexes.push(Index::on(&self.name, columns));
        self
    }

    /// Needs the extension `name` (`CREATE EXTENSION IF NOT EXISTS`).
    pub fn with_extension(mut self, name: &str) -> Self {
        self.extensions.push(name.to_owned());
        self
    }

    /// Adds `index`, named for this table (see [`Index::named_for`]).
    ///
    /// ```
    /// use mandrake_storage::schema::{Index, TableSchema};
    /// let t = TableSchema::new("messages")
    ///     .with_index_def(Index::on("messages", &["content"]).using("gin").ops("gin_trgm_ops"));
    /// assert!(t.indexes[0].name.starts_with("messages_content_"));
    /// ```
    pub fn with_index_def(mut self, index: Index) -> Self {
        let index = index.named_for(&self.name);
        self.indexes.push(index);
        self
    }

    /// Adds a foreign key `<column> → <references>(id)`.
    pub fn with_foreign_key(mut self, column: &str, references: &str, on_delete: OnDelete) -> Self {
        self.foreign_keys.push(ForeignKey {
            name: identifier(format!("{}_{}_fkey", self.name, column)),
            columns: vec![column.to_owned()],
            references: references.to_owned(),
            referenced: vec!["id".to_owned()],
            on_delete,
        });
        self
    }

    /// Adds a foreign key over several columns to a primary or unique key
    /// of `references` (`(workspace_id, user_id) → users(workspace_id, id)`):
    /// what keeps a child in its parent's tenant.
    ///
    /// ```
    /// use mandrake_storage::{OnDelete, TableSchema};
    /// let t = TableSchema::new("conversations").with_composite_foreign_key(
    ///     &["workspace_id", "user_id"], "users", &["workspace_id", "id"], OnDelete::Cascade);
    /// assert_eq!(t.foreign_keys[0].name, "conversations_workspace_id_user_id_fkey");
    /// ```
    pub fn with_composite_foreign_key(
        mut self,
        columns: &[&str],
        references: &str,
        referenced: &[&str],
        on_delete: OnDelete,
    ) -> Self {
        self.foreign_keys.push(ForeignKey {
            name: identifier(format!("{}_{}_fkey", self.name, columns.join("_"))),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            references: references.to_owned(),
            referenced: referenced.iter().map(|c| c.to_string()).collect(),
            on_delete,
        });
        self
    }
    /// Gives each foreign key an index of its own, unless an index, unique
    /// key or the primary key already starts with its column, or the column
    /// is in `except` (a field's `index = false`): without one, every cascade
    /// and every lookup of a parent's children scans the table. Call it after
    /// the keys, indexes and unique keys.
    ///
    /// ```
    /// use mandrake_storage::{OnDelete, TableSchema};
    /// let t = TableSchema::new("models")
    ///     .with_foreign_key("provider_id", "providers", OnDelete::Cascade)
    ///     .with_foreign_key("owner_id", "users", OnDelete::Cascade)
    ///     .with_unique(&["provider_id", "model_id"])
    ///     .with_foreign_key_indexes(&[]);
    /// assert_eq!(t.indexes.len(), 1);
    /// assert_eq!(t.indexes[0].columns, ["owner_id"]);
    /// ```
    pub fn with_foreign_key_indexes(mut self, except: &[&str]) -> Self {
        let starts = |columns: &[String], key: &[String]| columns.starts_with(key);
        let missing: Vec<Vec<String>> = self
            .foreign_keys
            .iter()
            .map(|k| k.columns.clone())
            .filter(|key| !key.iter().any(|c| except.contains(&c.as_str())))
            .filter(|key| {
                !self.indexes.iter().any(|i| starts(&i.columns, key))
                    && !self.uniques.iter().any(|u| starts(&u.columns, key))
                    && !starts(&self.primary_key, key)
            })
            .collect();
        for key in missing {
            let columns: Vec<&str> = key.iter().map(String::as_str).collect();
            if !self.indexes.iter().any(|i| i.columns == key) {
                self.indexes.push(Index::on(&self.name, &columns));
            }
        }
        self
    }
    /// Restricts a text column to `values` (how enums are stored); no
    /// constraint when `values` is empty.
    pub fn with_allowed_values(mut self, column: &str, values: &[&str]) -> Self {
        if values.is_empty() {
            return self;
        }
        let list = values
            .iter()
            .map(|v| crate::sql::quote_literal(v))
            .collect::<Vec<_>>()
            .join(", ");
        self.checks.push(Check {
            name: identifier(format!("{}_{}_check", self.name, column)),
            expression: format!("{} IN ({list})", crate::sql::quote_ident(column)),
        });
        self
    }

    /// Adds `CHECK (condition)`, named `<table>_<hash>_check` after what it
    /// checks, so two checks never share a name and an unchanged one keeps it.
    ///
    /// ```
    /// use mandrake_storage::TableSchema;
    /// let t = TableSchema::new("messages").with_check("tokens_in >= 0");
    /// assert!(t.checks[0].name.starts_with("messages_") && t.checks[0].name.ends_with("_check"));
    /// ```
    pub fn with_check(mut self, condition: &str) -> Self {
        let hash = short_hash(condition);
        self.checks.push(Check {
            name: identifier(format!("{}_{:08x}_check", self.name, hash)),
            expression: condition.to_owned(),
        });
        self
    }

    /// Full-text search on the text column `column` in configuration
    /// `config` (`simple`, `english`, …): a generated `tsvector` column
    /// [`search_vector`]`(column)` (an absent text is an empty vector) and a
    /// GIN index on it. Call it after the record's own columns: the vector
    /// is the database's, never a field.
    ///
    /// ```
    /// use mandrake_storage::{ColumnDef, TableSchema};
    /// let t = TableSchema::new("messages")
    ///     .with_column(ColumnDef::new("content", "text"))
    ///     .with_search("content", "english");
    /// assert_eq!(t.columns[1].name, "content_search");
    /// assert_eq!(t.indexes[0].method, "gin");
    /// ```
    pub fn with_search(self, column: &str, config: &str) -> Self {
        let vector = search_vector(column);
        let expression = format!(
            "to_tsvector({}::regconfig, COALESCE({}, ''))",
            crate::sql::quote_literal(config),
            crate::sql::quote_ident(column)
        );
        let index = Index::on(&self.name, &[vector.as_str()]).using("gin");
        self.with_column(ColumnDef::new(&vector, "tsvector").generated(&expression))
            .with_index_def(index)
    }

    /// Scopes the table to tenants by `column` (`#[record(tenant)]`): row
    /// security enabled (the owner, trusted, is left out), and one policy,
    /// `<table>_tenant`, that lets a statement see and write only rows whose
    /// `column` equals the transaction's [`TENANT_SETTING`]; without a
    /// tenant set, none. A [`Lookup`] for each search field and each column
    /// with a trigram index lets a tenant's filters on them use the index. A
    /// unique key `(column, id)` lets other tenant-scoped tables point here
    /// within the tenant, and every other unique key leads with `column`
    /// (unique within a tenant). On `id` it makes the tenant root, whose row is the
    /// tenant itself (see [`TableSchema::is_tenant_root`]). Call it after the
    /// columns and unique keys.
    ///
    /// ```
    /// use mandrake_storage::{ColumnDef, TableSchema};
    /// let t = TableSchema::new("chats")
    ///     .with_column(ColumnDef::new("id", "uuid"))
    ///     .with_column(ColumnDef::new("workspace_id", "uuid"))
    ///     .with_tenant("workspace_id");
    /// assert!(t.row_security);
    /// assert_eq!(t.policies[0].name, "chats_tenant");
    /// assert_eq!(t.uniques[0].columns, ["workspace_id", "id"]);
    /// ```
    pub fn with_tenant(mut self, column: &str) -> Self {
        let condition = format!(
            "{} = {}",
            crate::sql::quote_ident(column),
            current_tenant_sql()
        );
        self.policies.push(Policy {
            name: identifier(format!("{}_tenant", self.name)),
            using: condition.clone(),
            check: condition,
        });
        self.row_security = true;
        self.tenant = Some(column.to_owned());
        self.lookups = self.lookups_for(column);
        if !self.is_tenant_root() {
            self.unique_per_tenant(column);
        }
        let key = [column.to_owned(), "id".to_owned()];
        if !self.is_tenant_root() && !self.uniques.iter().any(|u| u.columns == key) {
            self = self.with_unique(&[column, "id"]);
        }
        self
    }

    /// The [`Lookup`]s a table scoped by `tenant` needs: one per search
    /// field (a column with a generated `<column>_search` vector) and one
    /// per column with a trigram index of its own (`gin_trgm_ops` or
    /// `gist_trgm_ops`).
    fn lookups_for(&self, tenant: &str) -> Vec<Lookup> {
        let searched = self.columns.iter().filter(|c| {
            self.column(&search_vector(&c.name))
                .is_some_and(|v| v.sql_type == "tsvector" && v.generated.is_some())
        });
        let patterned = self
            .indexes
            .iter()
            .filter_map(|i| match i.columns.as_slice() {
                [column] if i.key.contains("_trgm_ops") && i.predicate.is_none() => Some(column),
                _ => None,
            });
        let mut lookups: Vec<Lookup> = searched
            .map(|c| Lookup::new(&self.name, &c.name, tenant, LookupKind::Matches))
            .chain(patterned.map(|c| Lookup::new(&self.name, c, tenant, LookupKind::Like)))
            .collect();
        lookups.dedup();
        lookups
    }

    /// The [`Lookup`] of `kind` on `column`, if the table has one.
    pub fn lookup(&self, column: &str, kind: LookupKind) -> Option<&Lookup> {
        self.lookups
            .iter()
            .find(|l| l.column == column && l.kind == kind)
    }

    /// Makes every unique key and unique index lead with the tenant column
    /// `column`, so that it is unique within a tenant: another tenant's use
    /// of a name neither blocks nor reveals it (`UniqueViolation` would),
    /// and an upsert on it never meets another tenant's row. Citus asks the
    /// same of a distributed table's unique keys.
    fn unique_per_tenant(&mut self, column: &str) {
        let table = self.name.clone();
        for unique in &mut self.uniques {
            if !unique.columns.iter().any(|c| c == column) {
                unique.columns.insert(0, column.to_owned());
                unique.name = identifier(format!("{table}_{}_key", unique.columns.join("_")));
            }
        }
        for index in self.indexes.iter_mut().filter(|i| i.unique) {
            if !index.columns.iter().any(|c| c == column) {
                index.columns.insert(0, column.to_owned());
                index.key = format!("{}, {}", crate::sql::quote_ident(column), index.key);
                *index = index.clone().named_for(&table);
            }
        }
    }

    /// The partial unique indexes on plain b-tree columns, each as its
    /// columns and condition, in index order: upsert keys among the rows
    /// where the condition holds (`unique(name, where = "deleted_at IS
    /// NULL")`).
    pub fn partial_upsert_keys(&self) -> impl Iterator<Item = (&[String], Option<&str>)> {
        self.indexes
            .iter()
            .filter(|i| {
                i.unique
                    && i.method == "btree"
                    && i.include.is_empty()
                    && !i.columns.is_empty()
                    && i.key == crate::sql::ident_list(&i.columns)
            })
            .filter_map(|i| Some((i.columns.as_slice(), Some(i.predicate.as_deref()?))))
    }

    /// Whether this is the tenant root (`#[record(tenant)]` on `id`): each
    /// row is a tenant, and a tenant handle sees and writes only its own.
    pub fn is_tenant_root(&self) -> bool {
        self.tenant.as_deref() == Some("id")
    }

    /// Turns on the `set_timestamp` trigger.
    pub fn with_timestamp_trigger(mut self) -> Self {
        self.timestamp_trigger = true;
        self
    }

    /// Puts the table in the change feed (`#[record(notify)]`).
    pub fn with_notify(mut self) -> Self {
        self.feed = true;
        self
    }
}

impl ColumnDef {
    /// A NOT NULL column without default.
    pub fn new(name: &str, sql_type: &str) -> ColumnDef {
        ColumnDef {
            name: name.to_owned(),
            sql_type: sql_type.to_owned(),
            nullable: false,
            default: None,
            generated: None,
            compression: None,
        }
    }

    /// Whether the column accepts NULL.
    pub fn nullable(mut self, nullable: bool) -> Self {
        self.nullable = nullable;
        self
    }

    /// The column default, a SQL expression.
    pub fn default(mut self, expression: &str) -> Self {
        self.default = Some(expression.to_owned());
        self
    }

    /// Generated from `expression` (`GENERATED ALWAYS AS (…) STORED`).
    pub fn generated(mut self, expression: &str) -> Self {
        self.generated = Some(expression.to_owned());
        self
    }

    /// Large values compressed with `method` (`lz4` or `pglz`), from
    /// `#[record(compression = "…")]`.
    pub fn compression(mut self, method: &str) -> Self {
        self.compression = Some(method.to_owned());
        self
    }
}

/// A whole schema: the tables plus the shared trigger function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DatabaseSchema {
    /// The tables.
    pub tables: Vec<TableSchema>,
    /// Whether `trigger_set_timestamp()` exists.
    pub timestamp_function: bool,
    /// Whether `trigger_notify_change()` exists: the old feed's, which
    /// only introspection finds.
    pub notify_function: bool,
    /// Whether the feed's publication ([`FEED_PUBLICATION`]) exists.
    pub feed_publication: bool,
    /// Whether it publishes all the feed needs: `TRUNCATE` (a consumer
    /// then hears of one) and, on PostgreSQL 18, stored generated columns.
    pub feed_publishes_all: bool,
    /// The extensions the database has (`pg_trgm`, …), `plpgsql` left out.
    pub extensions: Vec<String>,
}

impl DatabaseSchema {
    /// The schema that a set of record types describes.
    pub fn from_tables(tables: &[&TableSchema]) -> DatabaseSchema {
        DatabaseSchema {
            tables: tables.iter().map(|t| (*t).clone()).collect(),
            timestamp_function: !tables.is_empty(),
            notify_function: tables.iter().any(|t| t.notify_triggers.is_some()),
            feed_publication: tables.iter().any(|t| t.feed),
            feed_publishes_all: tables.iter().any(|t| t.feed),
            extensions: extensions_of(tables),
        }
    }

    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&TableSchema> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The same schema in a canonical form for comparison: tables, columns
    /// and constraints sorted by name (PostgreSQL appends added columns at
    /// the end, so physical order is not part of the comparison).
    pub fn normalized(&self) -> DatabaseSchema {
        let mut tables: Vec<TableSchema> = self
            .tables
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.columns.sort_by(|a, b| a.name.cmp(&b.name));
                t.uniques.sort_by(|a, b| a.name.cmp(&b.name));
                t.indexes.sort_by(|a, b| a.name.cmp(&b.name));
                t.foreign_keys.sort_by(|a, b| a.name.cmp(&b.name));
                t.checks.sort_by(|a, b| a.name.cmp(&b.name));
                t.policies.sort_by(|a, b| a.name.cmp(&b.name));
                t.lookups.sort_by(|a, b| a.name.cmp(&b.name));
                t
            })
            .collect();
        tables.sort_by(|a, b| a.name.cmp(&b.name));
        DatabaseSchema {
            tables,
            timestamp_function: self.timestamp_function,
            notify_function: self.notify_function,
            feed_publication: self.feed_publication,
            feed_publishes_all: self.feed_publishes_all,
            extensions: self.extensions.clone(),
        }
    }
}

/// `tables` with every foreign key from one tenant-scoped table to another
/// over the tenant too: `conversation_id → conversations(id)` in a table
/// scoped by `workspace_id` becomes `(workspace_id, conversation_id) →
/// conversations(workspace_id, id)`, so a row can never point into another
/// tenant (and the tenant column is the distribution column a sharded
/// deployment needs). A key the record spells out itself is kept.
pub fn with_tenant_keys(tables: &[&TableSchema]) -> Vec<TableSchema> {
    let tenant_of = |name: &str| {
        tables
            .iter()
            .find(|t| t.name == name)
            .and_then(|t| t.tenant.clone())
    };
    tables
        .iter()
        .map(|&table| {
            let mut table = table.clone();
            let Some(tenant) = table.tenant.clone().filter(|_| !table.is_tenant_root()) else {
                return table;
            };
            for key in &mut table.foreign_keys {
                let single = key.columns.len() == 1 && key.referenced == ["id"];
                // A key to the tenant root is to the tenant itself: nothing to add.
                if let (true, Some(parent_tenant)) = (single, tenant_of(&key.references))
                    && key.columns[0] != tenant
                    && parent_tenant != "id"
                {
                    key.columns.insert(0, tenant.clone());
                    key.referenced.insert(0, parent_tenant);
                    if key.on_delete == OnDelete::SetNull {
                        key.on_delete = OnDelete::SetNullKeepTenant;
                    }
                    key.name = identifier(format!("{}_{}_fkey", table.name, key.columns.join("_")));
                }
            }
            table
        })
        .collect()
}

/// The extensions `tables` declare, each once, in name order.
pub fn extensions_of(tables: &[&TableSchema]) -> Vec<String> {
    let mut all: Vec<String> = tables.iter().flat_map(|t| t.extensions.clone()).collect();
    all.sort();
    all.dedup();
    all
}

/// Rename hints: the names tables and columns had before, so that the diff
/// renames them instead of dropping and adding (which loses their data).
///
/// They are history, not shape, so they live beside the schema rather than
/// in it: `#[record(renamed_from = "old")]` on a struct or field makes the
/// derive return them from [`crate::Record::renames`], and
/// [`crate::registered_renames`] gathers those of every record type.
///
/// ```
/// use mandrake_storage::schema::Renames;
///
/// let hints = Renames::default()
///     .table("folders", "directories")
///     .column("directories", "title", "name");
/// assert_eq!(hints.table_from("directories"), Some("folders"));
/// assert_eq!(hints.column_from("directories", "name"), Some("title"));
/// assert_eq!(hints.column_from("directories", "title"), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Renames {
    /// `(old, new)` table names.
    tables: Vec<(String, String)>,
    /// `(table, old, new)`, the table by its new name.
    columns: Vec<(String, String, String)>,
}

impl Renames {
    /// No hints: every name is as it always was.
    pub const NONE: Renames = Renames {
        tables: Vec::new(),
        columns: Vec::new(),
    };

    /// Table `old` is now called `new`.
    pub fn table(mut self, old: &str, new: &str) -> Self {
        self.tables.push((old.to_owned(), new.to_owned()));
        self
    }

    /// Column `old` of `table` (its new name, if it was renamed too) is now
    /// called `new`.
    pub fn column(mut self, table: &str, old: &str, new: &str) -> Self {
        self.columns
            .push((table.to_owned(), old.to_owned(), new.to_owned()));
        self
    }

    /// The earlier name of table `table`, if it has one.
    pub fn table_from(&self, table: &str) -> Option<&str> {
        self.tables
            .iter()
            .find(|(_, new)| new == table)
            .map(|(old, _)| old.as_str())
    }

    /// The earlier name of column `column` of `table`, if it has one.
    pub fn column_from(&self, table: &str, column: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(t, _, new)| t == table && new == column)
            .map(|(_, old, _)| old.as_str())
    }

    /// Whether there are no hints.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.columns.is_empty()
    }
}

impl Extend<Renames> for Renames {
    fn extend<I: IntoIterator<Item = Renames>>(&mut self, iter: I) {
        for other in iter {
            self.tables.extend(other.tables);
            self.columns.extend(other.columns);
        }
    }
}

impl FromIterator<Renames> for Renames {
    fn from_iter<I: IntoIterator<Item = Renames>>(iter: I) -> Self {
        let mut all = Renames::default();
        all.extend(iter);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_sharing_their_start_stay_distinct_and_fit() {
        let cols = |last: &'static str| {
            vec![
                "conversation_identifier",
                "participant_identifier",
                "created_at_timestamp",
                last,
            ]
        };
        let t = TableSchema::new("messages_archive")
            .with_index(&cols("a"))
            .with_index(&cols("b"));
        let (a, b) = (&t.indexes[0].name, &t.indexes[1].name);
        assert_ne!(a, b);
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_eq!(identifier("short_name".into()), "short_name");
    }
}
