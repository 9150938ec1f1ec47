//! The repository: typed CRUD for any [`Record`], on a pool, a connection or
//! a transaction.

use std::marker::PhantomData;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Encode, PgExecutor, Postgres, Row, Type};
use uuid::Uuid;

use crate::ddl::quote_ident;
use crate::error::{Error, Result};
use crate::record::{Record, Statements};
use crate::schema::TableSchema;

/// Typed CRUD for one record type: `Message::repo().get(&db, id)`.
///
/// Every method takes any sqlx executor, so the same call works on `&Db`, a
/// `&PgPool`, `&mut PgConnection`, or inside a transaction (`&mut *tx`).
///
/// ```no_run
/// # use mandrake_storage::{Record, Db, Filter, ListOptions};
/// # #[derive(Record, Clone)]
/// # pub struct Note { pub id: uuid::Uuid, pub body: String,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// # async fn demo(db: &Db) -> mandrake_storage::Result<()> {
/// let note = Note::repo().create(db, NewNote { body: "hi".into() }).await?;
/// let mut tx = db.begin().await?;
/// Note::repo()
///     .update(&mut *tx, note.id, NotePatch { body: Some("edited".into()) })
///     .await?;
/// tx.commit().await?;
/// let page = Note::repo()
///     .list(db, Filter::new().eq("body", "edited"), ListOptions::new().limit(10))
///     .await?;
/// assert_eq!(page.items[0].body, "edited");
/// # Ok(()) }
/// ```
pub struct Repo<T>(PhantomData<fn() -> T>);

impl<T> Clone for Repo<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Repo<T> {}

impl<T> std::fmt::Debug for Repo<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repo<{}>", std::any::type_name::<T>())
    }
}

impl<T: Record> Default for Repo<T> {
    fn default() -> Self {
        Repo::new()
    }
}

fn bind_error(err: sqlx::error::BoxDynError) -> Error {
    match err.downcast::<crate::column::InvalidValue>() {
        Ok(invalid) => Error::InvalidValue {
            column: invalid.column,
            reason: invalid.reason,
        },
        Err(err) => Error::Database(sqlx::Error::Encode(err)),
    }
}

impl<T: Record> Repo<T> {
    pub fn new() -> Self {
        Repo(PhantomData)
    }

    /// Inserts one row (with a new UUIDv7 id) and returns it as stored.
    pub async fn create<'e, E: PgExecutor<'e>>(&self, executor: E, new: T::New) -> Result<T> {
        let mut args = PgArguments::default();
        T::bind_new(new, Uuid::now_v7(), &mut args).map_err(bind_error)?;
        let row = sqlx::query_with(T::statements().insert.as_str(), args)
            .fetch_one(executor)
            .await?;
        Ok(T::decode(&row, 0)?)
    }

    /// Inserts any number of rows in one statement (`INSERT … SELECT … FROM
    /// UNNEST(…)`, one array parameter per column, so there is no 65,535
    /// parameter limit) and returns them in input order.
    pub async fn create_many<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        rows: Vec<T::New>,
    ) -> Result<Vec<T>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let count = rows.len();
        let ids: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
        let mut args = PgArguments::default();
        T::bind_new_batch(rows, ids, &mut args).map_err(bind_error)?;
        // Decode rows as they arrive rather than holding them all twice.
        let mut stored = Vec::with_capacity(count);
        let mut stream =
            sqlx::query_with(T::statements().insert_many.as_str(), args).fetch(executor);
        while let Some(row) = stream.try_next().await? {
            stored.push(T::decode(&row, 0)?);
        }
        // RETURNING order is not promised by PostgreSQL, but UUIDv7 ids made
        // in one process are ordered by creation: sorting by id restores the
        // input order (and costs one pass when it is already in order).
        stored.sort_unstable_by_key(|r| r.id());
        Ok(stored)
    }

    /// The row with `id`, or `Error::NotFound`.
    pub async fn get<'e, E: PgExecutor<'e>>(&self, executor: E, id: Uuid) -> Result<T> {
        self.find(executor, id).await?.ok_or(Error::NotFound {
            table: T::statements().table,
            id,
        })
    }

    /// The row with `id`, if there is one.
    pub async fn find<'e, E: PgExecutor<'e>>(&self, executor: E, id: Uuid) -> Result<Option<T>> {
        let row = sqlx::query(T::statements().select_by_id.as_str())
            .bind(id)
            .fetch_optional(executor)
            .await?;
        Ok(row.as_ref().map(|r| T::decode(r, 0)).transpose()?)
    }

    /// Changes the columns set in the patch; `updated_at` moves through the
    /// trigger. On a table with a `version` column the input is
    /// [`Versioned`](crate::Versioned) (`patch.expect_version(v)`): when the
    /// row has moved past `v` the call fails with `Error::Conflict` and
    /// changes nothing, else the version goes up by one. A patch that sets
    /// nothing changes nothing (not even `updated_at`) and returns the row.
    pub async fn update<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        id: Uuid,
        update: T::Update,
    ) -> Result<T> {
        let (patch, version) = T::split_update(update);
        self.write_patch(executor, id, patch, version).await
    }

    /// Like [`Repo::update`] but without the version check: the write wins
    /// whatever the row's version (which still goes up by one). The same as
    /// `update` on a table without a version column.
    pub async fn update_unchecked<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        id: Uuid,
        patch: T::Patch,
    ) -> Result<T> {
        self.write_patch(executor, id, patch, None).await
    }

    async fn write_patch<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        id: Uuid,
        patch: T::Patch,
        version: Option<i64>,
    ) -> Result<T> {
        let statements = T::statements();
        let mut args = PgArguments::default();
        args.add(id).map_err(bind_error)?;
        let set = T::bind_patch(patch, &mut args).map_err(bind_error)?;
        let sql = if set == 0 {
            args = PgArguments::default();
            args.add(id).map_err(bind_error)?;
            &statements.select_unchanged
        } else {
            &statements.update
        };
        if statements.has_version {
            args.add(version).map_err(bind_error)?;
        }
        let row = sqlx::query_with(sql.as_str(), args)
            .fetch_optional(executor)
            .await?;
        let table = statements.table;
        let Some(row) = row else {
            return Err(Error::NotFound { table, id });
        };
        if statements.has_version {
            let current: bool = row.try_get(row.len() - 1)?;
            if !current {
                return Err(Error::Conflict { table, id });
            }
        }
        Ok(T::decode(&row, 0)?)
    }

    /// Deletes the row; says whether there was one.
    pub async fn delete<'e, E: PgExecutor<'e>>(&self, executor: E, id: Uuid) -> Result<bool> {
        let done = sqlx::query(T::statements().delete.as_str())
            .bind(id)
            .execute(executor)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Inserts `new`, or when a row with the same values in `conflict` (the
    /// columns of a unique constraint) exists, updates that row's other
    /// columns. Returns the stored row; an existing row keeps its id.
    pub async fn upsert<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        new: T::New,
        conflict: &[&str],
    ) -> Result<T> {
        let statements = T::statements();
        let sql = statements
            .upserts
            .iter()
            .find(|(cols, _)| {
                cols.len() == conflict.len() && cols.iter().zip(conflict).all(|(a, b)| a == b)
            })
            .map(|(_, sql)| sql.as_str())
            .ok_or_else(|| {
                Error::Schema(format!(
                    "{} has no unique constraint on ({})",
                    statements.table,
                    conflict.join(", ")
                ))
            })?;
        let mut args = PgArguments::default();
        T::bind_new(new, Uuid::now_v7(), &mut args).map_err(bind_error)?;
        let row = sqlx::query_with(sql, args).fetch_one(executor).await?;
        Ok(T::decode(&row, 0)?)
    }

    /// How many rows match `filter`.
    pub async fn count<'e, E: PgExecutor<'e>>(&self, executor: E, filter: Filter) -> Result<i64> {
        self.aggregate(executor, filter, Aggregate::Count).await
    }

    /// Whether any row matches `filter`.
    pub async fn exists<'e, E: PgExecutor<'e>>(&self, executor: E, filter: Filter) -> Result<bool> {
        self.aggregate(executor, filter, Aggregate::Exists).await
    }

    async fn aggregate<'e, E, V>(&self, executor: E, filter: Filter, kind: Aggregate) -> Result<V>
    where
        E: PgExecutor<'e>,
        V: for<'r> sqlx::Decode<'r, Postgres> + Type<Postgres>,
    {
        let schema = T::schema();
        let (conditions, args) = filter.resolve(schema)?;
        let sql = T::statements().sql_for(Shape::Aggregate(kind, conditions.clone()), || {
            let rows = format!(
                "{}{}",
                quote_ident(&schema.name),
                where_clause(schema, &conditions)
            );
            match kind {
                Aggregate::Count => format!("SELECT count(*) FROM {rows}"),
                Aggregate::Exists => format!("SELECT EXISTS (SELECT 1 FROM {rows})"),
            }
        });
        let row = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_one(executor)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// One page of the rows matching `filter`, in the order of `options`;
    /// `Page::next` continues after the last row (keyset pagination, so rows
    /// inserted meanwhile never shift the pages).
    ///
    /// The SQL depends on which columns are filtered and how the page is
    /// ordered, so it is built on the first call of each such shape and then
    /// reused; values are always bound.
    pub async fn list<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter,
        options: ListOptions,
    ) -> Result<Page<T>> {
        let schema = T::schema();
        let statements = T::statements();
        let order = options.order_column(schema)?;
        let (conditions, mut args) = filter.resolve(schema)?;
        let shape = ListShape {
            conditions,
            order,
            descending: options.descending,
            after: options.after.is_some(),
            limit: options.limit.is_some(),
        };
        let order = &schema.columns[order];
        if let Some(cursor) = &options.after {
            let (value, id) = cursor.decode(&order.name, options.descending)?;
            if order.name != "id" {
                args.add(value).map_err(bind_error)?;
            }
            args.add(id).map_err(bind_error)?;
        }
        let limit = options.limit.map(i64::from);
        if let Some(limit) = limit {
            // One row more than asked tells whether another page follows.
            args.add(limit + 1).map_err(bind_error)?;
        }
        let sql = statements.sql_for(Shape::List(shape.clone()), || {
            list_sql(schema, statements, &shape)
        });
        let rows: Vec<PgRow> = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_all(executor)
            .await
            .map_err(|err| match Error::from(err) {
                // The cursor's value is the only text cast to a column type:
                // a data exception here means the cursor is bad, not the table.
                e if options.after.is_some()
                    && e.sqlstate().is_some_and(|c| c.starts_with("22")) =>
                {
                    Error::InvalidCursor(format!("its position does not fit the column ({e})"))
                }
                e => e,
            })?;
        let more = limit.is_some_and(|l| rows.len() as i64 > l);
        let shown = if more { rows.len() - 1 } else { rows.len() };
        let items = rows[..shown]
            .iter()
            .map(|r| T::decode(r, 0))
            .collect::<Result<Vec<T>, _>>()?;
        let next = match (more, items.last()) {
            (true, Some(last)) => {
                let row = &rows[shown - 1];
                let value: String = row.try_get(row.len() - 1)?;
                Some(Cursor::new(
                    &order.name,
                    options.descending,
                    &value,
                    last.id(),
                ))
            }
            _ => None,
        };
        Ok(Page { items, next })
    }
}

/// What varies between calls of `count`, `exists` and `list`: everything but
/// the values. Each shape's SQL is built once and kept in [`Statements`].
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Shape {
    Aggregate(Aggregate, Vec<(usize, Condition)>),
    List(ListShape),
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aggregate {
    Count,
    Exists,
}

#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListShape {
    /// `(column index, condition)` pairs.
    conditions: Vec<(usize, Condition)>,
    /// The ordering column's index.
    order: usize,
    descending: bool,
    after: bool,
    limit: bool,
}

/// ` WHERE …` (or nothing) naming only the schema's own columns; `$1…` in
/// the order of the `Equals` conditions.
fn where_clause(schema: &TableSchema, conditions: &[(usize, Condition)]) -> String {
    let mut param = 0;
    let parts: Vec<String> = conditions
        .iter()
        .map(|(column, condition)| {
            let ident = quote_ident(&schema.columns[*column].name);
            match condition {
                Condition::Equals => {
                    param += 1;
                    format!("{ident} = ${param}")
                }
                Condition::IsNull => format!("{ident} IS NULL"),
                Condition::IsNotNull => format!("{ident} IS NOT NULL"),
            }
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", parts.join(" AND "))
    }
}

/// `SELECT <columns>, <order column>::TEXT … ORDER BY <order>, id LIMIT …`;
/// the extra text column becomes the next page's cursor.
fn list_sql(schema: &TableSchema, statements: &Statements, shape: &ListShape) -> String {
    let order = &schema.columns[shape.order];
    let order_ident = quote_ident(&order.name);
    let (dir, cmp) = if shape.descending {
        ("DESC", "<")
    } else {
        ("ASC", ">")
    };
    let mut sql = format!(
        "SELECT {}, {order_ident}::TEXT AS __cursor FROM {}{}",
        statements.columns,
        quote_ident(&schema.name),
        where_clause(schema, &shape.conditions)
    );
    let mut param = shape
        .conditions
        .iter()
        .filter(|(_, c)| *c == Condition::Equals)
        .count();
    if shape.after {
        sql.push_str(if shape.conditions.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        if order.name == "id" {
            sql.push_str(&format!("\"id\" {cmp} ${}", param + 1));
            param += 1;
        } else {
            sql.push_str(&format!(
                "({order_ident}, \"id\") {cmp} (${}::{}, ${})",
                param + 1,
                order.sql_type,
                param + 2
            ));
            param += 2;
        }
    }
    sql.push_str(&format!(" ORDER BY {order_ident} {dir}"));
    if order.name != "id" {
        sql.push_str(&format!(", \"id\" {dir}"));
    }
    if shape.limit {
        sql.push_str(&format!(" LIMIT ${}", param + 1));
    }
    sql
}

/// Equality conditions on columns, ANDed together; values are always bound.
///
/// ```
/// use mandrake_storage::Filter;
/// let f = Filter::new().eq("role", "user").is_null("deleted_at");
/// ```
#[derive(Default)]
pub struct Filter {
    conditions: Vec<(String, Condition)>,
    args: PgArguments,
    error: Option<String>,
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    Equals,
    IsNull,
    IsNotNull,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let columns: Vec<&str> = self.conditions.iter().map(|(c, _)| c.as_str()).collect();
        f.debug_struct("Filter").field("columns", &columns).finish()
    }
}

impl Filter {
    /// No condition: every row.
    pub fn new() -> Filter {
        Filter::default()
    }

    /// `column = value`.
    pub fn eq<V>(mut self, column: &str, value: V) -> Filter
    where
        V: for<'q> Encode<'q, Postgres> + Type<Postgres>,
    {
        if let Err(e) = self.args.add(value) {
            self.error
                .get_or_insert(format!("cannot bind value for {column}: {e}"));
        }
        self.conditions.push((column.to_owned(), Condition::Equals));
        self
    }

    /// `column IS NULL`.
    pub fn is_null(mut self, column: &str) -> Filter {
        self.conditions.push((column.to_owned(), Condition::IsNull));
        self
    }

    /// `column IS NOT NULL`.
    pub fn is_not_null(mut self, column: &str) -> Filter {
        self.conditions
            .push((column.to_owned(), Condition::IsNotNull));
        self
    }

    /// The conditions as `(column index, condition)`, every column checked
    /// against the schema, and the bound values.
    fn resolve(self, schema: &TableSchema) -> Result<(Vec<(usize, Condition)>, PgArguments)> {
        if let Some(error) = self.error {
            return Err(Error::Schema(error));
        }
        let conditions = self
            .conditions
            .into_iter()
            .map(|(name, condition)| {
                let column = schema
                    .columns
                    .iter()
                    .position(|c| c.name == name)
                    .ok_or_else(|| {
                        Error::Schema(format!("{} has no column {name:?}", schema.name))
                    })?;
                Ok((column, condition))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((conditions, self.args))
    }
}

/// Order, page size and position of a `list` call.
///
/// ```
/// use mandrake_storage::ListOptions;
/// let newest_first = ListOptions::new().order_by("created_at").descending().limit(50);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    order_by: Option<String>,
    descending: bool,
    limit: Option<u32>,
    after: Option<Cursor>,
}

impl ListOptions {
    /// Oldest first by `created_at`, no limit.
    pub fn new() -> ListOptions {
        ListOptions::default()
    }

    /// Order by `id`, `created_at`, `updated_at` or an indexed NOT NULL column
    /// (ties broken by `id`).
    pub fn order_by(mut self, column: &str) -> Self {
        self.order_by = Some(column.to_owned());
        self
    }

    pub fn descending(mut self) -> Self {
        self.descending = true;
        self
    }

    pub fn ascending(mut self) -> Self {
        self.descending = false;
        self
    }

    /// At most `limit` rows per page.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Continue after the page that returned `cursor`.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Continue after `cursor` when there is one (`page.next`).
    pub fn after_opt(mut self, cursor: Option<Cursor>) -> Self {
        self.after = cursor;
        self
    }

    /// The index of the ordering column, which must suit keyset pages.
    fn order_column(&self, schema: &TableSchema) -> Result<usize> {
        let name = self.order_by.as_deref().unwrap_or("created_at");
        let index = schema
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Error::Schema(format!("{} has no column {name:?}", schema.name)))?;
        let indexed = ["id", "created_at", "updated_at"].contains(&name)
            || schema.indexes.iter().any(|i| i.columns[0] == name)
            || schema.uniques.iter().any(|u| u.columns[0] == name);
        if !indexed || schema.columns[index].nullable {
            return Err(Error::Schema(format!(
                "cannot order {} by {name}: keyset pages need id, created_at, updated_at \
                 or an indexed NOT NULL column",
                schema.name
            )));
        }
        Ok(index)
    }
}

/// One page of a `list`; `next` is the cursor for the page after it, `None`
/// on the last page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<Cursor>,
}

/// An opaque position in a listing: pass it to [`ListOptions::after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

/// The checksum that makes an edited cursor an error rather than a query.
fn checksum(text: &str) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    CRC.checksum(text.as_bytes())
}

impl Cursor {
    fn new(column: &str, descending: bool, value: &str, id: Uuid) -> Cursor {
        let dir = if descending { "d" } else { "a" };
        let raw = format!("{column}\u{0}{dir}\u{0}{id}\u{0}{value}");
        let sum = checksum(&raw);
        Cursor(URL_SAFE_NO_PAD.encode(format!("{raw}\u{0}{sum:08x}")))
    }

    /// Rebuilds a cursor from [`Cursor::as_str`] (e.g. from an HTTP query).
    pub fn from_string(text: impl Into<String>) -> Cursor {
        Cursor(text.into())
    }

    /// The cursor as URL-safe text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The order column's value and the id, once the whole cursor checks out.
    fn decode(&self, column: &str, descending: bool) -> Result<(String, Uuid)> {
        let invalid = |why: &str| Error::InvalidCursor(why.to_owned());
        let bytes = URL_SAFE_NO_PAD
            .decode(&self.0)
            .map_err(|_| invalid("not a cursor of this library"))?;
        let text = String::from_utf8(bytes).map_err(|_| invalid("not a cursor of this library"))?;
        let (raw, sum) = text
            .rsplit_once('\u{0}')
            .ok_or_else(|| invalid("not a cursor of this library"))?;
        if u32::from_str_radix(sum, 16).ok() != Some(checksum(raw)) {
            return Err(invalid("its checksum does not match: it was changed"));
        }
        let mut parts = raw.splitn(4, '\u{0}');
        let (Some(col), Some(dir), Some(id), Some(value)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a cursor of this library"));
        };
        let cursor_descending = match dir {
            "a" => false,
            "d" => true,
            _ => return Err(invalid("unknown direction")),
        };
        if col != column || cursor_descending != descending {
            return Err(Error::InvalidCursor(format!(
                "it belongs to a listing ordered by {col} {}, not {column} {}",
                if cursor_descending { "desc" } else { "asc" },
                if descending { "desc" } else { "asc" },
            )));
        }
        let id = id.parse().map_err(|_| invalid("its id is not a UUID"))?;
        Ok((value.to_owned(), id))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
