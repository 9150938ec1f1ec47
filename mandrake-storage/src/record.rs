//! The `Record` trait that `#[derive(Record)]` implements, and the SQL text
//! built once per record type from its schema.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use uuid::Uuid;

use crate::ddl::{ident_list, quote_ident};
use crate::repo::{Repo, Shape};
use crate::schema::TableSchema;

/// A struct stored as one table row. Implemented by `#[derive(Record)]`;
/// the repository ([`Record::repo`]) is generic code over this trait.
///
/// ```
/// use mandrake_storage::{Record, RecordEnum};
/// use chrono::{DateTime, Utc};
/// use uuid::Uuid;
///
/// #[derive(Record, Clone)]
/// #[record(index(name))]
/// pub struct Planet {
///     pub id: Uuid,
///     pub name: String,
///     #[record(rename = "mass_kg")]
///     pub mass: Option<f64>,
///     pub created_at: DateTime<Utc>,
///     pub updated_at: DateTime<Utc>,
/// }
///
/// assert_eq!(Planet::schema().name, "planets");
/// let sql = mandrake_storage::ddl::create_table(Planet::schema());
/// assert!(sql.contains(r#""mass_kg" DOUBLE PRECISION,"#));
/// // NewPlanet has no id or timestamps; PlanetPatch has an Option per column.
/// let new = NewPlanet { name: "Ceres".into(), mass: None };
/// let patch = PlanetPatch { mass: Some(Some(9.4e20)), ..Default::default() };
/// ```
pub trait Record: Sized + Send + Unpin + 'static {
    /// The input of `create`: every stored column but `id`, the timestamps
    /// and the version.
    type New: Send;
    /// The columns to change: `Some` for each column to change.
    type Patch: Send + Default;
    /// The input of [`Repo::update`]: the patch, and on a table with a
    /// `version` column the version the caller last read
    /// ([`Versioned`], made by the patch's `expect_version`).
    type Update: Send;

    /// The table this type is stored in.
    fn schema() -> &'static TableSchema;

    /// This row's primary key.
    fn id(&self) -> Uuid;

    /// The repository of this type.
    fn repo() -> Repo<Self> {
        Repo::new()
    }

    #[doc(hidden)]
    fn statements() -> &'static Statements;
    /// Decodes the columns of [`Statements::columns`] found at `offset..` of
    /// `row`, by position (a join puts a second record after the first).
    #[doc(hidden)]
    fn decode(row: &PgRow, offset: usize) -> Result<Self, sqlx::Error>;
    /// Binds `id` and then the insert columns of `new`.
    #[doc(hidden)]
    fn bind_new(new: Self::New, id: Uuid, args: &mut PgArguments) -> Result<(), BoxDynError>;
    /// Binds one array per insert column (ids first) for `create_many`.
    #[doc(hidden)]
    fn bind_new_batch(
        rows: Vec<Self::New>,
        ids: Vec<Uuid>,
        args: &mut PgArguments,
    ) -> Result<(), BoxDynError>;
    /// The patch of an update and the version it expects, if any.
    #[doc(hidden)]
    fn split_update(update: Self::Update) -> (Self::Patch, Option<i64>);
    /// Binds a `(set?, value)` pair per patch column; returns how many are set.
    #[doc(hidden)]
    fn bind_patch(patch: Self::Patch, args: &mut PgArguments) -> Result<usize, BoxDynError>;
}

/// A patch that applies only while the row is still at `version`: the input
/// of `update` on a table with a `#[record(version)]` column. A stale version
/// fails with [`crate::Error::Conflict`] and changes nothing.
///
/// ```
/// use mandrake_storage::{Record, Versioned};
/// # use chrono::{DateTime, Utc};
/// # use uuid::Uuid;
/// #[derive(Record, Clone)]
/// pub struct Counter {
///     pub id: Uuid,
///     pub value: i64,
///     #[record(version)]
///     pub version: i32,
///     pub created_at: DateTime<Utc>,
///     pub updated_at: DateTime<Utc>,
/// }
///
/// let update: Versioned<CounterPatch> =
///     CounterPatch { value: Some(2), ..Default::default() }.expect_version(1);
/// assert_eq!(update.version, 1);
/// ```
#[derive(Debug, Clone)]
pub struct Versioned<P> {
    /// The columns to change.
    pub patch: P,
    /// The version the caller last read.
    pub version: i64,
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
    pub insert: String,
    pub insert_many: String,
    pub select_by_id: String,
    /// What an empty patch runs: the row, and whether its version is the
    /// expected one (`$2`, NULL for any) on a versioned table.
    pub select_unchanged: String,
    pub update: String,
    pub delete: String,
    /// `(conflict columns, statement)` for each unique constraint.
    pub upserts: Vec<(Vec<String>, String)>,
    pub has_version: bool,
    /// SQL of `count`, `exists` and `list`, built once per shape.
    shapes: RwLock<HashMap<Shape, Arc<str>>>,
}

impl Statements {
    /// The SQL of `shape`, built by `build` on its first use.
    pub fn sql_for(&self, shape: Shape, build: impl FnOnce() -> String) -> Arc<str> {
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
        let table = quote_ident(&schema.name);
        let names: Vec<String> = schema.columns.iter().map(|c| c.name.clone()).collect();
        let columns = ident_list(&names);
        let sql_type = |name: &str| column_type(schema, name);
        let mut insert_cols = vec!["id".to_owned()];
        insert_cols.extend(layout.insert.iter().map(|c| c.to_string()));
        let placeholders: Vec<String> = (1..=insert_cols.len()).map(|i| format!("${i}")).collect();
        let insert_head = format!("INSERT INTO {table} ({})", ident_list(&insert_cols));
        let insert = format!(
            "{insert_head} VALUES ({}) RETURNING {columns}",
            placeholders.join(", ")
        );
        // One array parameter per column: any number of rows, one statement.
        let unnest_args: Vec<String> = insert_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("${}::{}[]", i + 1, array_element_type(sql_type(c))))
            .collect();
        let casts: Vec<String> = insert_cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("c{i}::{}", sql_type(c)))
            .collect();
        let aliases: Vec<String> = (0..insert_cols.len()).map(|i| format!("c{i}")).collect();
        let insert_many = format!(
            "{insert_head} SELECT {} FROM UNNEST({}) AS u({}) RETURNING {columns}",
            casts.join(", "),
            unnest_args.join(", "),
            aliases.join(", ")
        );
        let select_by_id = format!("SELECT {columns} FROM {table} WHERE \"id\" = $1");
        let update = update_statement(schema, &table, &columns, layout);
        let select_unchanged = match layout.version {
            Some(v) => format!(
                "SELECT {columns}, ($2::BIGINT IS NULL OR {} = $2) FROM {table} WHERE \"id\" = $1",
                quote_ident(v)
            ),
            None => select_by_id.clone(),
        };
        let delete = format!("DELETE FROM {table} WHERE \"id\" = $1");
        let upserts = schema
            .uniques
            .iter()
            .map(|u| {
                let mut updates: Vec<String> = layout
                    .insert
                    .iter()
                    .filter(|c| !u.columns.iter().any(|k| k == *c))
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
                let sql = format!(
                    "{insert_head} VALUES ({}) ON CONFLICT ({}) {action} RETURNING {columns}",
                    placeholders.join(", "),
                    ident_list(&u.columns)
                );
                (u.columns.clone(), sql)
            })
            .collect();
        Statements {
            table: &schema.name,
            columns,
            names,
            insert,
            insert_many,
            select_by_id,
            select_unchanged,
            update,
            delete,
            upserts,
            has_version: layout.version.is_some(),
            shapes: RwLock::default(),
        }
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

/// `SET col = CASE WHEN $set THEN $value ELSE col END` per patch column: one
/// fixed statement serves every combination of changed columns. With a version
/// column, a miss is told apart from a stale version in the same statement.
fn update_statement(schema: &TableSchema, table: &str, columns: &str, layout: Layout) -> String {
    let mut sets: Vec<String> = layout
        .patch
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let ty = column_type(schema, c);
            format!(
                "{0} = CASE WHEN ${1}::BOOLEAN THEN ${2}::{ty} ELSE {0} END",
                quote_ident(c),
                2 * i + 2,
                2 * i + 3
            )
        })
        .collect();
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
    sets.push(format!("{v} = {v} + 1"));
    format!(
        "WITH updated AS (UPDATE {table} SET {} WHERE \"id\" = $1 AND (${expected}::BIGINT IS NULL OR {v} = ${expected}) RETURNING {columns}) \
         SELECT {columns}, TRUE FROM updated \
         UNION ALL SELECT {columns}, FALSE FROM {table} WHERE \"id\" = $1 AND NOT EXISTS (SELECT 1 FROM updated)",
        sets.join(", ")
    )
}
