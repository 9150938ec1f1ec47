//! The fixed SQL of one record type, built once from its schema and layout
//! (never per call), and the SQL of each shape of the calls that take a
//! filter, built on first use and kept.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::query::filter::Node;
use crate::schema::{TableSchema, current_tenant_sql};
use crate::sql::{ident_list, quote_ident, quote_table};

/// What varies between calls that take a filter: everything but the values.
/// Each shape's SQL is built once and kept in the record's statements.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Shape {
    Tally(Tally, Node),
    List(ListShape),
    UpdateWhere(Node),
    DeleteWhere(Node),
    CountBy(usize, Node),
    LoadBy {
        column: usize,
        keys: Vec<(usize, bool)>,
        limit: bool,
    },
    GetMany,
    Search(crate::query::search::SearchShape),
    Join(JoinShape),
    /// A tree walk along the parent column.
    Ancestors(usize),
    Descendants(usize),
}

/// Which record a join's column belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Side {
    Left,
    Right,
}

/// What a join's SQL depends on: built once per shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct JoinShape {
    pub(crate) right: &'static str,
    pub(crate) on: (usize, usize),
    pub(crate) outer: bool,
    pub(crate) left_filter: Node,
    pub(crate) right_filter: Node,
    pub(crate) order: Vec<(Side, usize, bool)>,
    /// Whether a cursor's position is bound after the filters.
    pub(crate) after: bool,
    /// In the SQL text: with `LIMIT $n` PostgreSQL never settles on a
    /// generic plan (it takes an unknown limit for a tenth of the rows) and
    /// plans the statement again at every call.
    pub(crate) limit: Option<u32>,
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Tally {
    Count,
    Exists,
}

#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ListShape {
    pub(crate) filter: Node,
    /// `(column index, descending)`, ending with `id`.
    pub(crate) keys: Vec<(usize, bool)>,
    pub(crate) after: bool,
    pub(crate) limit: bool,
    pub(crate) offset: bool,
}

/// The statements of an upsert on one unique constraint.
#[doc(hidden)]
#[derive(Debug)]
pub struct UpsertStatements {
    /// One row, `DO UPDATE`.
    pub one: String,
    /// Any number of rows, returned in input order.
    pub many: String,
    /// One row, `DO NOTHING`.
    pub ignore: String,
}

/// How the derive classifies columns; the SQL is built from it and the schema.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Columns bound by `create`, after `id`.
    pub insert: &'static [&'static str],
    /// Columns a patch can change.
    pub patch: &'static [&'static str],
    /// The optimistic-locking column, if any.
    pub version: Option<&'static str>,
    /// How many of the schema's columns are the record's fields
    /// ([`Record::WIDTH`](crate::Record::WIDTH)).
    pub fields: usize,
}

/// The fixed SQL of one record type, built once (the derive keeps it in a
/// `OnceLock`), never per call.
#[doc(hidden)]
#[derive(Debug)]
pub struct Statements {
    pub table: &'static str,
    /// The quoted select list, in field order.
    pub columns: String,
    /// The column names, in field order.
    pub names: Vec<String>,
    /// Where `id` is among them.
    pub id_column: usize,
    pub insert: String,
    pub insert_many: String,
    pub select_by_id: String,
    /// What an empty patch runs: the row, and whether its version is the
    /// expected one (`$2`, NULL for any) on a versioned table.
    pub select_unchanged: String,
    pub update: String,
    /// `touch`: an update that changes nothing but `updated_at` (through
    /// the trigger) and the version.
    pub touch: String,
    /// `import`: the insert with `created_at` and `updated_at` given (the
    /// last parameter), where the table has them.
    pub import: String,
    /// `import_many`: `insert_many` with one more array, the times.
    pub import_many: String,
    pub delete: String,
    /// Per unique constraint, in schema order (see [`UniqueKey`]).
    pub upserts: Vec<UpsertStatements>,
    pub has_version: bool,
    /// The SQL of the calls that take a filter, built once per shape.
    shapes: RwLock<HashMap<Shape, Arc<str>>>,
    layout: Layout,
}

impl Statements {
    /// The SQL of `shape`, built by `build` on its first use.
    pub(crate) fn sql_for(&self, shape: Shape, build: impl FnOnce() -> String) -> Arc<str> {
        if let Some(sql) = self
            .shapes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&shape)
        {
            return sql.clone();
        }
        let sql: Arc<str> = build().into();
        self.shapes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(shape)
            .or_insert(sql)
            .clone()
    }

    /// The select list with every column qualified by `alias`, for joins.
    pub fn qualified_columns(&self, alias: &str) -> String {
        self.names
            .iter()
            .map(|c| format!("{}.{}", quote_ident(alias), quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn new(schema: &'static TableSchema, layout: Layout) -> Statements {
        let table = quote_table(&schema.name);
        let names: Vec<String> = schema.columns[..layout.fields]
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let columns = ident_list(&names);
        let insert = Insert::new(schema, &table, layout);
        let select_by_id = format!("SELECT {columns} FROM {table} WHERE \"id\" = $1");
        let select_unchanged = match layout.version {
            Some(v) => format!(
                "SELECT {columns}, ($2::BIGINT IS NULL OR {} = $2) FROM {table} WHERE \"id\" = $1",
                quote_ident(v)
            ),
            None => select_by_id.clone(),
        };
        // The unique constraints, then the partial unique indexes on plain
        // columns: `UniqueKey`'s order (the derive numbers them alike).
        let upserts = schema
            .uniques
            .iter()
            .map(|u| (u.columns.as_slice(), None))
            .chain(schema.partial_upsert_keys())
            .map(|(key, only)| insert.upserts(schema, &table, &columns, layout, key, only))
            .collect();
        Statements {
            table: &schema.name,
            insert: format!(
                "{} VALUES ({}) RETURNING {columns}",
                insert.head,
                insert.placeholders.join(", ")
            ),
            insert_many: format!(
                "{} SELECT {} FROM UNNEST({}) AS u({}) RETURNING {columns}",
                insert.head,
                insert.casts.join(", "),
                insert.unnest_args.join(", "),
                insert.aliases.join(", ")
            ),
            update: update_statement(schema, &table, &columns, layout),
            touch: format!(
                "UPDATE {table} SET {} WHERE \"id\" = $1 RETURNING {columns}",
                match layout.version {
                    Some(v) => format!("{0} = {0} + 1", quote_ident(v)),
                    None => "\"id\" = \"id\"".into(),
                }
            ),
            import: import_statement(schema, &insert, &columns),
            import_many: import_many_statement(schema, &insert, &columns),
            delete: format!("DELETE FROM {table} WHERE \"id\" = $1"),
            select_by_id,
            select_unchanged,
            upserts,
            has_version: layout.version.is_some(),
            shapes: RwLock::default(),
            layout,
            columns,
            id_column: names
                .iter()
                .position(|n| n == "id")
                .expect("every record has an id"),
            names,
        }
    }
}

/// The pieces every insert of a record shares: its head and, per inserted
/// column, a placeholder, an array parameter (one per column: any number of
/// rows, one statement), a cast and an alias.
struct Insert {
    head: String,
    columns: Vec<String>,
    placeholders: Vec<String>,
    unnest_args: Vec<String>,
    casts: Vec<String>,
    aliases: Vec<String>,
}

impl Insert {
    fn new(schema: &TableSchema, table: &str, layout: Layout) -> Insert {
        let mut columns = vec!["id".to_owned()];
        columns.extend(layout.insert.iter().map(|c| c.to_string()));
        let numbered = |f: &dyn Fn(usize, &String) -> String| -> Vec<String> {
            columns.iter().enumerate().map(|(i, c)| f(i, c)).collect()
        };
        let tenant = |c: &String, value: String| or_tenant(schema, c, value);
        Insert {
            head: format!("INSERT INTO {table} ({})", ident_list(&columns)),
            placeholders: numbered(&|i, c| tenant(c, format!("${}", i + 1))),
            unnest_args: numbered(&|i, c| {
                format!(
                    "${}::{}[]",
                    i + 1,
                    array_element_type(column_type(schema, c))
                )
            }),
            casts: numbered(&|i, c| tenant(c, format!("c{i}::{}", column_type(schema, c)))),
            aliases: numbered(&|i, _| format!("c{i}")),
            columns,
        }
    }

    /// The upserts on the unique key `key`; for a partial unique index,
    /// among the rows where `only` holds (its condition, which PostgreSQL
    /// needs in the conflict target to infer that index).
    fn upserts(
        &self,
        schema: &TableSchema,
        table: &str,
        columns: &str,
        layout: Layout,
        key: &[String],
        only: Option<&str>,
    ) -> UpsertStatements {
        let mut updates: Vec<String> = layout
            .insert
            .iter()
            .filter(|c| !key.iter().any(|k| k == *c))
            .map(|c| format!("{0} = EXCLUDED.{0}", quote_ident(c)))
            .collect();
        // The update branch is a write like any other: it moves the
        // version, so a stale `update` after it is a conflict.
        if let Some(v) = layout.version {
            let v = quote_ident(v);
            updates.push(format!("{v} = {table}.{v} + 1"));
        }
        let action = if updates.is_empty() {
            // DO NOTHING would return no row; a no-op update returns it.
            format!("DO UPDATE SET \"id\" = {table}.\"id\"")
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        let head = &self.head;
        let target = match only {
            Some(condition) => format!("ON CONFLICT ({}) WHERE {condition}", ident_list(key)),
            None => format!("ON CONFLICT ({})", ident_list(key)),
        };
        let values = format!("VALUES ({})", self.placeholders.join(", "));
        UpsertStatements {
            one: format!("{head} {values} {target} {action} RETURNING {columns}"),
            many: self.upsert_many(schema, columns, key, &target, &action),
            ignore: format!("{head} {values} {target} DO NOTHING RETURNING {columns}"),
        }
    }

    /// Rows come back joined to their input row by the key (or, where a key
    /// column is NULL and so cannot conflict, by the id given), then sorted
    /// by input position.
    fn upsert_many(
        &self,
        schema: &TableSchema,
        columns: &str,
        key: &[String],
        target: &str,
        action: &str,
    ) -> String {
        let input_col = |k: &str| {
            let i = self
                .columns
                .iter()
                .position(|c| c == k)
                .expect("key columns are inserted");
            (
                or_tenant(schema, k, format!("input.c{i}::{}", column_type(schema, k))),
                format!("input.c{i}"),
            )
        };
        let key_join: Vec<String> = key
            .iter()
            .map(|k| format!("stored.{} = {}", quote_ident(k), input_col(k).0))
            .collect();
        let nullable_keys: Vec<String> = key
            .iter()
            .filter(|k| schema.column(k).is_some_and(|c| c.nullable))
            .map(|k| format!("{} IS NULL", input_col(k).1))
            .collect();
        let by_id = if nullable_keys.is_empty() {
            String::new()
        } else {
            format!(
                " UNION ALL SELECT stored.*, input.__ord FROM stored JOIN input \
                 ON stored.\"id\" = input.c0 WHERE {}",
                nullable_keys.join(" OR ")
            )
        };
        format!(
            "WITH input AS (SELECT * FROM UNNEST({}) WITH ORDINALITY AS u({}, __ord)), \
             stored AS ({} SELECT {} FROM input ORDER BY __ord {target} {action} \
             RETURNING {columns}) \
             SELECT stored.*, input.__ord FROM stored JOIN input ON {}{by_id} ORDER BY __ord",
            self.unnest_args.join(", "),
            self.aliases.join(", "),
            self.head,
            self.casts.join(", "),
            key_join.join(" AND ")
        )
    }
}

/// The insert with the row's times given: `$n` after the inserted columns
/// is both `created_at` and `updated_at` (a table without them imports as
/// it creates).
fn import_statement(schema: &TableSchema, insert: &Insert, columns: &str) -> String {
    let at = format!("${}", insert.placeholders.len() + 1);
    let (names, values) = with_times(schema, insert, insert.placeholders.clone(), &at);
    format!(
        "INSERT INTO {} ({}) VALUES ({}) RETURNING {columns}",
        quote_table(&schema.name),
        ident_list(&names),
        values.join(", ")
    )
}

/// The inserted columns and `values`, then `created_at` and `updated_at`
/// (where the table has them) given `at`.
fn with_times(
    schema: &TableSchema,
    insert: &Insert,
    mut values: Vec<String>,
    at: &str,
) -> (Vec<String>, Vec<String>) {
    let mut names = insert.columns.clone();
    for stamp in ["created_at", "updated_at"] {
        if schema.column(stamp).is_some() {
            names.push(stamp.to_owned());
            values.push(at.to_owned());
        }
    }
    (names, values)
}

/// `insert_many` with the times as one more array (`$N::timestamptz[]`),
/// given to `created_at` and `updated_at` where the table has them.
fn import_many_statement(schema: &TableSchema, insert: &Insert, columns: &str) -> String {
    let (names, values) = with_times(schema, insert, insert.casts.clone(), "at");
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM UNNEST({}, ${}::timestamptz[]) AS u({}, at) RETURNING {columns}",
        quote_table(&schema.name),
        ident_list(&names),
        values.join(", "),
        insert.unnest_args.join(", "),
        insert.unnest_args.len() + 1,
        insert.aliases.join(", ")
    )
}

/// `value`, or for the tenant key the transaction's tenant when `value` is
/// NULL: a tenant handle fills the key its input leaves out (`None`), and a
/// value naming another tenant meets the policy's check.
fn or_tenant(schema: &TableSchema, column: &str, value: String) -> String {
    match &schema.tenant {
        Some(t) if t == column => format!("COALESCE({value}, {})", current_tenant_sql()),
        _ => value,
    }
}

/// The SQL type of a layout column. The derive fills the layout and the
/// schema from the same fields, so every layout column is in the schema.
fn column_type<'s>(schema: &'s TableSchema, column: &str) -> &'s str {
    schema
        .column(column)
        .map(|c| c.sql_type.as_str())
        .unwrap_or_else(|| panic!("{} has no column {column}", schema.name))
}

/// `TEXT[]` columns travel as text literals in `create_many` (see
/// `ColumnType for Vec<String>`); every other type as an array of itself.
fn array_element_type(sql_type: &str) -> &str {
    if sql_type.ends_with("[]") {
        "TEXT"
    } else {
        sql_type
    }
}

/// `col = CASE WHEN $set THEN $value ELSE col END` per patch column, the
/// pairs numbered from `$first` on (and the version bump): one fixed text
/// serves every combination of changed columns.
fn patch_sets(schema: &TableSchema, layout: Layout, first: usize) -> Vec<String> {
    let mut sets: Vec<String> = layout
        .patch
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = column_type(schema, c);
            format!(
                "{0} = CASE WHEN ${1}::BOOLEAN THEN ${2}::{ty} ELSE {0} END",
                quote_ident(c),
                first + 2 * i,
                first + 2 * i + 1
            )
        })
        .collect();
    if let Some(v) = layout.version {
        let v = quote_ident(v);
        sets.push(format!("{v} = {v} + 1"));
    }
    sets
}

impl Statements {
    /// `UPDATE … SET <patch> WHERE <filter>`: the patch's pairs are `$1…`,
    /// the filter's values follow.
    pub(crate) fn update_where(
        &self,
        schema: &TableSchema,
        node: &crate::query::filter::Node,
    ) -> String {
        let sets = patch_sets(schema, self.layout, 1);
        let mut param = 2 * self.layout.patch.len();
        format!(
            "UPDATE {} SET {}{}",
            quote_table(&schema.name),
            sets.join(", "),
            crate::query::filter::where_clause(schema, node, &mut param)
        )
    }
}

/// The update of one row by id (`$1`), the patch pairs from `$2`. With a
/// version column, a miss is told apart from a stale version in the same
/// statement.
fn update_statement(schema: &TableSchema, table: &str, columns: &str, layout: Layout) -> String {
    let mut sets = patch_sets(schema, layout, 2);
    let Some(version) = layout.version else {
        if sets.is_empty() {
            sets.push("\"id\" = \"id\"".into());
        }
        return format!(
            "UPDATE {table} SET {} WHERE \"id\" = $1 RETURNING {columns}",
            sets.join(", ")
        );
    };
    let v = quote_ident(version);
    let expected = 2 * layout.patch.len() + 2;
    format!(
        "WITH updated AS (UPDATE {table} SET {} WHERE \"id\" = $1 AND (${expected}::BIGINT IS NULL OR {v} = ${expected}) RETURNING {columns}) \
         SELECT {columns}, TRUE FROM updated \
         UNION ALL SELECT {columns}, FALSE FROM {table} WHERE \"id\" = $1 AND NOT EXISTS (SELECT 1 FROM updated)",
        sets.join(", ")
    )
}
