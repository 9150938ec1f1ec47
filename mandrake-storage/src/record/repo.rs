//! The repository: typed CRUD for any [`Record`], on a pool, a connection or
//! a transaction.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, PgExecutor, Postgres, Row, Type};
use uuid::Uuid;

use super::statements::{ListShape, Shape, Tally};
use super::{Record, Repo, UniqueKey};
use crate::error::{Error, Result};
use crate::query::aggregate::Aggregate;
use crate::query::filter::{Column, Filter, Node, bind_all, condition, where_clause};
use crate::query::list::{
    ListOptions, Page, SortKey, after_condition, order_by, page_error, page_of,
};
use crate::query::search::{Hit, SearchFields, SearchOptions, SearchShape, search_sql};
use crate::record::column::{ColumnType, decode_column};
use crate::sql::{quote_ident, quote_table};

pub(crate) fn bind_error(err: sqlx::error::BoxDynError) -> Error {
    match err.downcast::<crate::record::column::InvalidValue>() {
        Ok(invalid) => Error::InvalidValue {
            column: invalid.column,
            reason: invalid.reason,
        },
        Err(err) => Error::Database(sqlx::Error::Encode(err)),
    }
}

impl<T: Record> Repo<T> {
    /// The repository of `T` (the same as `T::repo()`).
    pub fn new() -> Self {
        Repo(PhantomData)
    }

    /// Inserts one row (with a new UUIDv7 id) and returns it as stored.
    pub async fn create<'e, E: PgExecutor<'e>>(&self, executor: E, new: T::New) -> Result<T> {
        let call = insert_one::<T, E>(executor, new, Uuid::now_v7());
        traced::<T, _>(call_span!("create", T), call, |_| 1).await
    }

    /// Makes a new tenant: inserts a row of the tenant root `T` (a new
    /// UUIDv7 id) through `db.tenant(id)`, the one handle its row security
    /// lets write it, and returns it. Any handle may call it, with or
    /// without a tenant: the new tenant starts empty.
    ///
    /// ```no_run
    /// # use mandrake_storage::{Db, Record};
    /// # async fn demo<W: mandrake_storage::TenantRoot>(db: &Db, new: W::New) -> mandrake_storage::Result<()> {
    /// let workspace = W::repo().create_tenant(db, new).await?;
    /// let db = db.tenant(workspace.id()); // its rows, and nobody else's
    /// # Ok(()) }
    /// ```
    pub async fn create_tenant(&self, db: &crate::Db, new: T::New) -> Result<T>
    where
        T: crate::record::TenantRoot,
    {
        let id = Uuid::now_v7();
        let db = db.tenant(id);
        let call = insert_one::<T, _>(&db, new, id);
        traced::<T, _>(call_span!("create_tenant", T), call, |_| 1).await
    }

    /// Inserts one row like [`Repo::create`], with its `created_at` and
    /// `updated_at` given: for history imported from elsewhere, which keeps
    /// its times. (`create` leaves both to the database's `now()`.) Its id
    /// is a UUIDv7 of that time, as [`Repo::import_many`] makes; for many
    /// rows, that is the fast way.
    pub async fn import<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        new: T::New,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<T> {
        traced::<T, _>(
            call_span!("import", T),
            async move {
                let mut args = PgArguments::default();
                T::bind_new(new, id_at(&created_at)?, &mut args).map_err(bind_error)?;
                args.add(created_at).map_err(bind_error)?;
                let row = sqlx::query_with(T::statements().import.as_str(), args)
                    .fetch_one(executor)
                    .await?;
                Ok(T::decode(&row, 0)?)
            },
            |_| 1,
        )
        .await
    }

    /// Inserts any number of rows with their `created_at` (and `updated_at`)
    /// given, in one statement like [`Repo::create_many`]: history imported
    /// from elsewhere, at bulk speed. Each id is a UUIDv7 made from its
    /// row's time (to a 4,096th of a millisecond), so ids sort as the times
    /// do, and a keyset page by id reads history in order. Returns the rows
    /// in input order.
    ///
    /// A time before 1970, which a UUIDv7 cannot carry, is
    /// `Error::InvalidValue` for `created_at`, before anything is sent.
    ///
    /// ```no_run
    /// # use mandrake_storage::{Db, Record};
    /// # async fn demo<T: Record>(db: &Db, old: Vec<(T::New, chrono::DateTime<chrono::Utc>)>) -> mandrake_storage::Result<()> {
    /// let imported: Vec<T> = T::repo().import_many(db, old).await?;
    /// # Ok(()) }
    /// ```
    pub async fn import_many<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        rows: Vec<(T::New, chrono::DateTime<chrono::Utc>)>,
    ) -> Result<Vec<T>> {
        traced::<T, _>(
            call_span!("import_many", T),
            async move {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let (rows, times): (Vec<T::New>, Vec<_>) = rows.into_iter().unzip();
                let ids = times.iter().map(id_at).collect::<Result<Vec<Uuid>>>()?;
                let order: HashMap<Uuid, usize> =
                    ids.iter().enumerate().map(|(n, id)| (*id, n)).collect();
                let sql = T::statements().import_many.as_str();
                let mut stored =
                    insert_batch::<T, E>(executor, rows, ids, Some(times), sql).await?;
                stored.sort_unstable_by_key(|r| order.get(&r.id()).copied());
                Ok(stored)
            },
            |rows| rows.len() as u64,
        )
        .await
    }

    /// Moves the row's `updated_at` to now (and its version up by one) and
    /// changes nothing else: "this conversation was active". A missing row
    /// is `Error::NotFound`.
    pub async fn touch<'e, E: PgExecutor<'e>>(&self, executor: E, id: Uuid) -> Result<T> {
        traced::<T, _>(
            call_span!("touch", T),
            async move {
                let row = sqlx::query(T::statements().touch.as_str())
                    .bind(id)
                    .fetch_optional(executor)
                    .await?;
                match row {
                    Some(row) => Ok(T::decode(&row, 0)?),
                    None => Err(Error::NotFound {
                        table: T::statements().table,
                        id,
                    }),
                }
            },
            |_| 1,
        )
        .await
    }

    /// Inserts any number of rows in one statement (`INSERT … SELECT … FROM
    /// UNNEST(…)`, one array parameter per column, so there is no 65,535
    /// parameter limit) and returns them in input order.
    pub async fn create_many<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        rows: Vec<T::New>,
    ) -> Result<Vec<T>> {
        traced::<T, _>(
            call_span!("create_many", T),
            async move {
                let sql = T::statements().insert_many.as_str();
                let ids = rows.iter().map(|_| Uuid::now_v7()).collect();
                let mut stored = insert_batch::<T, E>(executor, rows, ids, None, sql).await?;
                // RETURNING order is not promised by PostgreSQL, but UUIDv7 ids made
                // in one process are ordered by creation: sorting by id restores the
                // input order (and costs one pass when it is already in order).
                stored.sort_unstable_by_key(|r| r.id());
                Ok(stored)
            },
            |rows| rows.len() as u64,
        )
        .await
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
        traced::<T, _>(
            call_span!("find", T),
            async move {
                let row = sqlx::query(T::statements().select_by_id.as_str())
                    .bind(id)
                    .fetch_optional(executor)
                    .await?;
                Ok(row.as_ref().map(|r| T::decode(r, 0)).transpose()?)
            },
            |row| u64::from(row.is_some()),
        )
        .await
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
        traced::<T, _>(
            call_span!("update", T),
            async move {
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
            },
            |_| 1,
        )
        .await
    }

    /// Deletes the row; says whether there was one.
    pub async fn delete<'e, E: PgExecutor<'e>>(&self, executor: E, id: Uuid) -> Result<bool> {
        traced::<T, _>(
            call_span!("delete", T),
            async move {
                let done = sqlx::query(T::statements().delete.as_str())
                    .bind(id)
                    .execute(executor)
                    .await?;
                Ok(done.rows_affected() > 0)
            },
            |done| u64::from(*done),
        )
        .await
    }

    /// Deletes every row matching `filter`; returns how many.
    pub async fn delete_where<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter<T>,
    ) -> Result<u64> {
        traced::<T, _>(
            call_span!("delete_where", T),
            async move {
                let schema = T::schema();
                let (node, values) = filter.into_parts();
                let mut args = PgArguments::default();
                bind_all(values, &mut args).map_err(bind_error)?;
                let sql = T::statements().sql_for(Shape::DeleteWhere(node.clone()), || {
                    let mut param = 0;
                    format!(
                        "DELETE FROM {}{}",
                        quote_table(&schema.name),
                        where_clause(schema, &node, &mut param)
                    )
                });
                let done = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                    .execute(executor)
                    .await?;
                Ok(done.rows_affected())
            },
            |n| *n,
        )
        .await
    }

    /// Applies `patch` to every row matching `filter` in one statement and
    /// returns how many rows it changed; on a versioned table each row's
    /// version goes up by one. An empty patch changes nothing and returns 0.
    pub async fn update_where<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter<T>,
        patch: T::Patch,
    ) -> Result<u64> {
        traced::<T, _>(
            call_span!("update_where", T),
            async move {
                let statements = T::statements();
                let mut args = PgArguments::default();
                if T::bind_patch(patch, &mut args).map_err(bind_error)? == 0 {
                    return Ok(0);
                }
                let (node, values) = filter.into_parts();
                bind_all(values, &mut args).map_err(bind_error)?;
                let sql = statements.sql_for(Shape::UpdateWhere(node.clone()), || {
                    statements.update_where(T::schema(), &node)
                });
                let done = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                    .execute(executor)
                    .await?;
                Ok(done.rows_affected())
            },
            |n| *n,
        )
        .await
    }

    /// Inserts `new`, or, when a row with the same values in `key` exists,
    /// updates that row's other columns (and its version). Returns the stored
    /// row; an existing row keeps its id.
    ///
    /// ```no_run
    /// # use mandrake_storage::Record;
    /// # #[derive(Record, Clone)]
    /// # pub struct Tag { pub id: uuid::Uuid, #[record(unique)] pub name: String, pub uses: i64,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
    /// let tag = Tag::repo().upsert(db, NewTag { name: "rust".into(), uses: 1 }, Tag::ON_NAME).await?;
    /// # Ok(()) }
    /// ```
    pub async fn upsert<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        new: T::New,
        key: UniqueKey<T>,
    ) -> Result<T> {
        traced::<T, _>(
            call_span!("upsert", T),
            async move {
                let mut args = PgArguments::default();
                T::bind_new(new, Uuid::now_v7(), &mut args).map_err(bind_error)?;
                let sql = upserts::<T>(key).one.as_str();
                let row = sqlx::query_with(sql, args).fetch_one(executor).await?;
                Ok(T::decode(&row, 0)?)
            },
            |_| 1,
        )
        .await
    }

    /// [`Repo::upsert`] for any number of rows in one statement (one array
    /// parameter per column, so no 65,535-parameter limit), returned in input
    /// order. Two rows with the same key in one call are refused by
    /// PostgreSQL (a row cannot be updated twice by one statement).
    pub async fn upsert_many<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        rows: Vec<T::New>,
        key: UniqueKey<T>,
    ) -> Result<Vec<T>> {
        traced::<T, _>(
            call_span!("upsert_many", T),
            async move {
                // The statement returns rows in input order itself.
                let ids = rows.iter().map(|_| Uuid::now_v7()).collect();
                let sql = upserts::<T>(key).many.as_str();
                insert_batch::<T, E>(executor, rows, ids, None, sql).await
            },
            |rows| rows.len() as u64,
        )
        .await
    }

    /// Inserts `new` unless a row with the same values in `key` exists
    /// (`ON CONFLICT DO NOTHING`): the new row, or `None`. One row a call;
    /// for many, [`Repo::upsert_many`].
    ///
    /// ```no_run
    /// # use mandrake_storage::Record;
    /// # #[derive(Record, Clone)]
    /// # pub struct Tag { pub id: uuid::Uuid, #[record(unique)] pub name: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
    /// let new = || NewTag { name: "rust".into() };
    /// let made = Tag::repo().insert_or_ignore(db, new(), Tag::ON_NAME).await?;
    /// let again = Tag::repo().insert_or_ignore(db, new(), Tag::ON_NAME).await?;
    /// assert!(made.is_some() && again.is_none(), "the name was taken");
    /// # Ok(()) }
    /// ```
    pub async fn insert_or_ignore<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        new: T::New,
        key: UniqueKey<T>,
    ) -> Result<Option<T>> {
        traced::<T, _>(
            call_span!("insert_or_ignore", T),
            async move {
                let mut args = PgArguments::default();
                T::bind_new(new, Uuid::now_v7(), &mut args).map_err(bind_error)?;
                let sql = upserts::<T>(key).ignore.as_str();
                let row = sqlx::query_with(sql, args).fetch_optional(executor).await?;
                Ok(row.as_ref().map(|r| T::decode(r, 0)).transpose()?)
            },
            |row| u64::from(row.is_some()),
        )
        .await
    }

    /// The rows with these ids, in one query, in the order of `ids` (ids
    /// with no row are left out).
    pub async fn get_many<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        ids: &[Uuid],
    ) -> Result<Vec<T>> {
        traced::<T, _>(
            call_span!("get_many", T),
            async move {
                let statements = T::statements();
                let sql = statements.sql_for(Shape::GetMany, || {
                    format!(
                        "SELECT {} FROM {} WHERE \"id\" = ANY($1)",
                        statements.columns,
                        quote_table(&T::schema().name)
                    )
                });
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(ids)
                    .fetch_all(executor)
                    .await?;
                let mut by_id: HashMap<Uuid, T> = rows
                    .iter()
                    .map(|r| T::decode(r, 0).map(|t| (t.id(), t)))
                    .collect::<Result<_, _>>()?;
                Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
            },
            |rows: &Vec<T>| rows.len() as u64,
        )
        .await
    }

    /// The children of many parents in one query, grouped by parent: the
    /// rows whose `column` is one of `parents`, each group ordered by
    /// `options` and limited **per parent** by its limit (the last message of
    /// each of 50 conversations is one statement). Parents with no rows are
    /// absent from the map.
    pub async fn load_by<'e, E, V>(
        &self,
        executor: E,
        column: Column<T, V>,
        parents: &[Uuid],
        options: ListOptions<T>,
    ) -> Result<HashMap<Uuid, Vec<T>>>
    where
        E: PgExecutor<'e>,
        V: ColumnType<Scalar = Uuid>,
    {
        traced::<T, _>(
            call_span!("load_by", T),
            async move {
                let schema = T::schema();
                let statements = T::statements();
                let keys = options.keys(schema);
                refuse_secret_order::<T>(&keys)?;
                let limit = options.limit_value();
                let shape = Shape::LoadBy {
                    column: column.index(),
                    keys: keys.clone(),
                    limit: limit.is_some(),
                };
                let sql = statements.sql_for(shape, || {
            let limit = if limit.is_some() { " LIMIT $2" } else { "" };
            format!(
                "SELECT x.*, p.parent FROM UNNEST($1::UUID[]) AS p(parent) CROSS JOIN LATERAL \
                 (SELECT {} FROM {} WHERE {} = p.parent{}{limit}) AS x",
                statements.columns,
                quote_table(&schema.name),
                quote_ident(column.name()),
                order_by(&SortKey::of(schema, &keys))
            )
        });
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(parents);
                if let Some(limit) = limit {
                    query = query.bind(i64::from(limit));
                }
                let rows = query.fetch_all(executor).await?;
                let width = T::WIDTH;
                let mut groups: HashMap<Uuid, Vec<T>> = HashMap::new();
                for row in &rows {
                    let parent: Uuid = row.try_get(width)?;
                    groups.entry(parent).or_default().push(T::decode(row, 0)?);
                }
                Ok(groups)
            },
            |groups| groups.values().map(|g| g.len() as u64).sum(),
        )
        .await
    }

    /// How many rows matching `filter` have each value of `column`, most
    /// frequent first (ties by value).
    ///
    /// ```no_run
    /// # use mandrake_storage::{Filter, Record};
    /// # #[derive(Record, Clone)]
    /// # pub struct Call { pub id: uuid::Uuid, pub tool: String, pub failed: bool,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
    /// // The tools that failed most: [("search", 12), ("read_file", 3)]
    /// let failing: Vec<(String, i64)> = Call::repo()
    ///     .count_by(db, Call::FAILED.eq(true), Call::TOOL)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn count_by<'e, E, V>(
        &self,
        executor: E,
        filter: Filter<T>,
        column: Column<T, V>,
    ) -> Result<Vec<(V, i64)>>
    where
        E: PgExecutor<'e>,
        V: ColumnType,
    {
        traced::<T, _>(
            call_span!("count_by", T),
            async move {
                let schema = T::schema();
                let (node, values) = filter.into_parts();
                let mut args = PgArguments::default();
                bind_all(values, &mut args).map_err(bind_error)?;
                let shape = Shape::CountBy(column.index(), node.clone());
                let sql = T::statements().sql_for(shape, || {
                    let c = quote_ident(column.name());
                    let mut param = 0;
                    format!(
                        "SELECT {c}, count(*) FROM {}{} GROUP BY {c} ORDER BY count(*) DESC, {c}",
                        quote_table(&schema.name),
                        where_clause(schema, &node, &mut param)
                    )
                });
                let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                    .fetch_all(executor)
                    .await?;
                rows.iter()
                    .map(|r| Ok((decode_column::<V>(r, 0)?, r.try_get(1)?)))
                    .collect()
            },
            |groups: &Vec<(V, i64)>| groups.len() as u64,
        )
        .await
    }

    /// A grouped aggregate of the rows matching `filter`: add keys
    /// (`group_by`), then measures (`count`, `sum`, `percentile`, …), then
    /// `fetch` (see [`Aggregate`]).
    ///
    /// ```no_run
    /// # use mandrake_storage::{Bucket, Filter, Record};
    /// # #[derive(Record, Clone)]
    /// # pub struct Message { pub id: uuid::Uuid, pub tokens_out: i32,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
    /// let per_day: Vec<(chrono::DateTime<chrono::Utc>, i64, Option<i64>)> = Message::repo()
    ///     .aggregate(db, Filter::all())
    ///     .group_by(Message::CREATED_AT.bucket(Bucket::Day))
    ///     .count()
    ///     .sum(Message::TOKENS_OUT)
    ///     .fetch()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn aggregate<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter<T>,
    ) -> Aggregate<T, E> {
        Aggregate::new(executor, filter)
    }

    /// How many rows match `filter`.
    pub async fn count<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter<T>,
    ) -> Result<i64> {
        traced::<T, _>(
            call_span!("count", T),
            async move { self.tally(executor, filter, Tally::Count).await },
            |n| *n as u64,
        )
        .await
    }

    /// Whether any row matches `filter`.
    pub async fn exists<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter<T>,
    ) -> Result<bool> {
        traced::<T, _>(
            call_span!("exists", T),
            async move { self.tally(executor, filter, Tally::Exists).await },
            |_| 1,
        )
        .await
    }

    async fn tally<'e, E, V>(&self, executor: E, filter: Filter<T>, kind: Tally) -> Result<V>
    where
        E: PgExecutor<'e>,
        V: for<'r> sqlx::Decode<'r, Postgres> + Type<Postgres>,
    {
        let schema = T::schema();
        let (node, values) = filter.into_parts();
        let mut args = PgArguments::default();
        bind_all(values, &mut args).map_err(bind_error)?;
        let sql = T::statements().sql_for(Shape::Tally(kind, node.clone()), || {
            let mut param = 0;
            let rows = format!(
                "{}{}",
                quote_table(&schema.name),
                where_clause(schema, &node, &mut param)
            );
            match kind {
                Tally::Count => format!("SELECT count(*) FROM {rows}"),
                Tally::Exists => format!("SELECT EXISTS (SELECT 1 FROM {rows})"),
            }
        });
        let row = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .fetch_one(executor)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// One page of the rows matching `filter`, in the order of `options`
    /// (any columns, each ascending or descending, then `id`); `Page::next`
    /// continues after the last row. Keyset pages: rows inserted meanwhile
    /// never shift them.
    ///
    /// The SQL depends only on the filter's shape and the options' form, so
    /// it is built on the first call of each and then reused.
    pub async fn list<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter<T>,
        options: ListOptions<T>,
    ) -> Result<Page<T>> {
        traced::<T, _>(
            call_span!("list", T),
            async move {
                let (sql, args, shape) = list_query(filter, &options)?;
                let rows: Vec<PgRow> = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                    .fetch_all(executor)
                    .await
                    .map_err(|err| page_error(shape.after, err))?;
                let limit = options.limit_value().map(|n| n as usize);
                page_of(
                    &rows,
                    limit,
                    || SortKey::of(T::schema(), &shape.keys),
                    |row| Ok(T::decode(row, 0)?),
                )
            },
            |page| page.items.len() as u64,
        )
        .await
    }

    /// Full-text search: the rows where any of `fields` (one field with
    /// `#[record(search)]`, or a tuple of them) matches `query` and that
    /// `filter` keeps, best first (ties newest first), each with its rank
    /// and a snippet. `query` reads as [`Column::matches`] reads it; one of
    /// only stop words finds nothing. The fields' GIN indexes find the
    /// hits; only the page returned gets snippets.
    ///
    /// ```no_run
    /// # use mandrake_storage::{Db, Record, SearchOptions};
    /// # #[derive(Record, Clone)]
    /// # pub struct Note { pub id: uuid::Uuid, pub folder: String,
    /// #   #[record(search = "english")] pub body: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &Db) -> mandrake_storage::Result<()> {
    /// let hits = Note::repo()
    ///     .search(db, Note::BODY, "pool -bouncer", Note::FOLDER.eq("work"), SearchOptions::new().limit(20))
    ///     .await?;
    /// for hit in hits {
    ///     println!("{:.3} {}", hit.rank, hit.snippet);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn search<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        fields: impl SearchFields<T>,
        query: &str,
        filter: Filter<T>,
        options: SearchOptions,
    ) -> Result<Vec<Hit<T>>> {
        let fields = fields.fields();
        let query = crate::query::filter::SearchQuery {
            text: query.to_owned(),
            column: fields
                .first()
                .map_or("", |f| T::schema().columns[f.0].name.as_str()),
        };
        traced::<T, _>(
            call_span!("search", T),
            async move {
                let schema = T::schema();
                let statements = T::statements();
                let (node, values) = filter.into_parts();
                let mut args = PgArguments::default();
                args.add(query).map_err(bind_error)?;
                bind_all(values, &mut args).map_err(bind_error)?;
                args.add(i64::from(options.limit)).map_err(bind_error)?;
                args.add(i64::from(options.offset)).map_err(bind_error)?;
                args.add(options.headline()).map_err(bind_error)?;
                let shape = SearchShape {
                    fields,
                    filter: node,
                };
                let sql = statements.sql_for(Shape::Search(shape.clone()), || {
                    search_sql(schema, &statements.columns, &shape)
                });
                let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                    .fetch_all(executor)
                    .await?;
                let n = statements.names.len();
                rows.iter()
                    .map(|r| {
                        Ok(Hit {
                            record: T::decode(r, 0)?,
                            rank: r.try_get(n)?,
                            snippet: r.try_get(n + 1)?,
                        })
                    })
                    .collect()
            },
            |hits: &Vec<Hit<T>>| hits.len() as u64,
        )
        .await
    }

    /// The plan PostgreSQL chooses for [`Repo::list`] with the same
    /// arguments (`EXPLAIN`, one line per entry), planned for these values:
    /// to see that a filter is served by an index. A tenant-scoped record is
    /// refused ([`Error::ExplainRefused`]): its estimates count every
    /// tenant's rows.
    ///
    /// ```no_run
    /// # use mandrake_storage::{Db, ListOptions, Record};
    /// # #[derive(Record, Clone)]
    /// # #[record(extension = "pg_trgm", index(body, using = "gin", ops = "gin_trgm_ops"))]
    /// # pub struct Note { pub id: uuid::Uuid, pub body: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &Db) -> mandrake_storage::Result<()> {
    /// let plan = Note::repo()
    ///     .explain(db, Note::BODY.contains_text("needle"), ListOptions::new())
    ///     .await?;
    /// println!("{}", plan.join("\n"));
    /// # Ok(()) }
    /// ```
    pub async fn explain<'e, E: PgExecutor<'e>>(
        &self,
        executor: E,
        filter: Filter<T>,
        options: ListOptions<T>,
    ) -> Result<Vec<String>> {
        if T::schema().tenant.is_some() {
            return Err(Error::ExplainRefused {
                table: T::statements().table,
            });
        }
        let (sql, args, _) = list_query(filter, &options)?;
        let explain = format!("EXPLAIN {sql}");
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(explain), args)
            .fetch_all(executor)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>(0)?))
            .collect()
    }
}

/// A list ordered by a secret column is refused: a page cursor would carry
/// its values.
pub(crate) fn refuse_secret_order<T: Record>(keys: &[(usize, bool)]) -> Result<()> {
    let schema = T::schema();
    match keys
        .iter()
        .map(|(column, _)| schema.columns[*column].name.as_str())
        .find(|name| T::SECRET_COLUMNS.contains(name))
    {
        Some(secret) => Err(Error::Schema(format!(
            "{}.{secret} is secret: a page cursor would carry its values, so no page can be \
             ordered by it",
            schema.name
        ))),
        None => Ok(()),
    }
}

/// The SQL of a [`Repo::list`] call (built once per shape) and its bound
/// arguments.
fn list_query<T: Record>(
    filter: Filter<T>,
    options: &ListOptions<T>,
) -> Result<(Arc<str>, PgArguments, ListShape)> {
    let schema = T::schema();
    let keys = options.keys(schema);
    refuse_secret_order::<T>(&keys)?;
    let (node, values) = filter.into_parts();
    let mut args = PgArguments::default();
    bind_all(values, &mut args).map_err(bind_error)?;
    if let Some(cursor) = options.cursor() {
        for value in cursor.values(&SortKey::of(schema, &keys))? {
            args.add(value).map_err(bind_error)?;
        }
    }
    let limit = options.limit_value().map(i64::from);
    if let Some(limit) = limit {
        // One row more than asked tells whether another page follows.
        args.add(limit + 1).map_err(bind_error)?;
    }
    if let Some(offset) = options.offset_value() {
        let offset = i64::try_from(offset).map_err(|_| Error::Schema("offset too large".into()))?;
        args.add(offset).map_err(bind_error)?;
    }
    let shape = ListShape {
        filter: node,
        keys,
        after: options.cursor().is_some(),
        limit: limit.is_some(),
        offset: options.offset_value().is_some(),
    };
    let sql = T::statements().sql_for(Shape::List(shape.clone()), || list_sql::<T>(&shape));
    Ok((sql, args, shape))
}

/// A span per repository call: target `mandrake_storage`, named after the
/// operation, with the table; `traced` fills in rows, time and SQLSTATE.
/// Bound values are never recorded, so secrets never reach a log.
macro_rules! call_span {
    ($op:literal, $t:ty) => {
        tracing::debug_span!(
            target: "mandrake_storage",
            $op,
            table = <$t as Record>::statements().table,
            rows = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
            sqlstate = tracing::field::Empty,
        )
    };
}
pub(crate) use call_span;

/// Runs `call` inside `span`, as a typed call (its statements leave the
/// session alone: see [`crate::db::caller`]), and records on it how many rows it returned or
/// changed, how long it took and, on a database error, its SQLSTATE. A call
/// slower than `MANDRAKE_SLOW_QUERY_MS` (default 500) is logged at WARN.
pub(crate) async fn traced<T: Record, R>(
    span: tracing::Span,
    call: impl std::future::Future<Output = Result<R>>,
    rows: impl FnOnce(&R) -> u64,
) -> Result<R> {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let outcome = crate::db::caller::ours(call.instrument(span.clone()))
        .await
        .map_err(schema_moved::<T>);
    let elapsed = started.elapsed();
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    span.record("elapsed_ms", elapsed_ms);
    match &outcome {
        Ok(value) => {
            span.record("rows", rows(value));
        }
        Err(err) => {
            if let Some(code) = err.sqlstate() {
                span.record("sqlstate", code.as_str());
            }
        }
    }
    if elapsed > crate::config::slow_query_threshold() {
        tracing::warn!(target: "mandrake_storage", parent: &span, elapsed_ms, "slow statement");
    }
    outcome
}

/// Inserts `new` as the row `id` and returns it as stored.
async fn insert_one<'e, T: Record, E: PgExecutor<'e>>(
    executor: E,
    new: T::New,
    id: Uuid,
) -> Result<T> {
    let mut args = PgArguments::default();
    T::bind_new(new, id, &mut args).map_err(bind_error)?;
    let row = sqlx::query_with(T::statements().insert.as_str(), args)
        .fetch_one(executor)
        .await?;
    Ok(T::decode(&row, 0)?)
}

/// A typed call that met a column or table its record names and the
/// database lacks: the binary's types and the database's schema disagree
/// (an old binary after a contract removed its column, or a binary ahead of
/// its migrations), which [`Error::SchemaMoved`] says.
fn schema_moved<T: Record>(err: Error) -> Error {
    let Error::Database(sqlx::Error::Database(db)) = &err else {
        return err;
    };
    // The server names the missing object in its message only.
    let named = || db.message().split('"').nth(1).map(str::to_owned);
    match db.code().as_deref() {
        Some("42703") => Error::SchemaMoved {
            table: T::statements().table.to_owned(),
            column: named(),
        },
        Some("42P01") => Error::SchemaMoved {
            table: T::statements().table.to_owned(),
            column: None,
        },
        _ => err,
    }
}

/// Binds `rows` as one array per column (`ids` first, then their `times`
/// last when the statement takes them) and runs the batch statement `sql`
/// over them, decoding rows as they stream in rather than holding them all
/// twice.
async fn insert_batch<'e, T: Record, E: PgExecutor<'e>>(
    executor: E,
    rows: Vec<T::New>,
    ids: Vec<Uuid>,
    times: Option<Vec<chrono::DateTime<chrono::Utc>>>,
    sql: &'static str,
) -> Result<Vec<T>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let count = rows.len();
    let mut args = PgArguments::default();
    T::bind_new_batch(rows, ids, &mut args).map_err(bind_error)?;
    if let Some(times) = times {
        args.add(times).map_err(bind_error)?;
    }
    let mut stored = Vec::with_capacity(count);
    let mut stream = sqlx::query_with(sql, args).fetch(executor);
    while let Some(row) = stream.try_next().await? {
        stored.push(T::decode(&row, 0)?);
    }
    Ok(stored)
}

/// A UUIDv7 carrying `at`: its milliseconds, then (RFC 9562's third
/// method) the rest of the millisecond in the 12 bits after the version,
/// then random bits.
fn id_at(at: &chrono::DateTime<chrono::Utc>) -> Result<Uuid> {
    let millis = u64::try_from(at.timestamp_millis()).map_err(|_| Error::InvalidValue {
        column: "created_at",
        reason: "before 1970, which a UUIDv7 id cannot carry",
    })?;
    let within = u64::from(at.timestamp_subsec_nanos() % 1_000_000) * 4096 / 1_000_000;
    let mut tail = [0u8; 10];
    tail.copy_from_slice(&Uuid::new_v4().as_bytes()[6..]);
    tail[0] = (within >> 8) as u8;
    tail[1] = within as u8;
    Ok(uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid())
}

/// The upsert statements of `key`.
fn upserts<T: Record>(key: UniqueKey<T>) -> &'static crate::record::UpsertStatements {
    &T::statements().upserts[key.index()]
}

/// `SELECT <columns> … WHERE <filter> AND <after cursor> ORDER BY <keys>
/// LIMIT … OFFSET …`; parameters in that order.
fn list_sql<T: Record>(shape: &ListShape) -> String {
    let schema = T::schema();
    let mut param = 0;
    let mut conditions = Vec::new();
    if shape.filter != Node::All {
        conditions.push(condition(schema, &shape.filter, &mut param));
    }
    if shape.after {
        conditions.push(after_condition(
            &SortKey::of(schema, &shape.keys),
            &mut param,
        ));
    }
    let mut sql = format!(
        "SELECT {} FROM {}",
        T::statements().columns,
        quote_table(&schema.name)
    );
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(&order_by(&SortKey::of(schema, &shape.keys)));
    if shape.limit {
        param += 1;
        sql.push_str(&format!(" LIMIT ${param}"));
    }
    if shape.offset {
        param += 1;
        sql.push_str(&format!(" OFFSET ${param}"));
    }
    sql
}
