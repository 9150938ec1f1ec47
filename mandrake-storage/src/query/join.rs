//! Typed joins ([`Repo::join`](crate::Repo::join),
//! [`Repo::left_join`](crate::Repo::left_join)): rows of two records in one
//! statement, read back as pairs, `(L, R)` or `(L, Option<R>)`.
//!
//! Each side is read from its own filtered subquery, `(SELECT * FROM t
//! WHERE …)`, so each record's filter names its own columns unqualified, as
//! everywhere else; PostgreSQL pulls such subqueries up into the join, so
//! the plan is the one of the same join written by hand. Under a tenant
//! handle, row security applies to both sides.

use std::marker::PhantomData;

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, PgExecutor, Row};
use uuid::Uuid;

use crate::error::Result;
use crate::query::filter::Column;
use crate::query::filter::{Filter, bind_all, where_clause};
use crate::query::list::{
    Cursor, Order, Page, SortKey, after_condition, order_by, page_error, page_of,
};
use crate::record::Record;
use crate::record::Repo;
use crate::record::column::{ColumnType, SameValues};
use crate::record::repo::{bind_error, call_span, refuse_secret_order, traced};
use crate::record::statements::{JoinShape, Shape, Side};
use crate::sql::{quote_ident, quote_table};

impl<T: Record> Repo<T> {
    /// `T`'s rows joined with `R`'s where `left_key` equals `right_key`,
    /// read as `(T, R)` pairs: a builder ([`Join`]) of filters and orders
    /// on either side and a limit, run by `fetch`, in one statement. The
    /// two keys hold the same type (a nullable one counts as its inner
    /// type): the compiler checks it.
    pub fn join<'e, E, R, VL, SL, VR, SR>(
        &self,
        executor: E,
        left_key: Column<T, VL, SL>,
        right_key: Column<R, VR, SR>,
    ) -> Join<T, R, E, R>
    where
        E: PgExecutor<'e>,
        R: Record,
        VL: ColumnType,
        VR: ColumnType<Scalar: SameValues<VL::Scalar>>,
    {
        Join::new(executor, left_key.index(), right_key.index())
    }

    /// [`Repo::join`] that keeps every row of `T` matching its filters
    /// (`LEFT JOIN`): `(T, None)` where no row of `R` matches.
    pub fn left_join<'e, E, R, VL, SL, VR, SR>(
        &self,
        executor: E,
        left_key: Column<T, VL, SL>,
        right_key: Column<R, VR, SR>,
    ) -> Join<T, R, E, Option<R>>
    where
        E: PgExecutor<'e>,
        R: Record,
        VL: ColumnType,
        VR: ColumnType<Scalar: SameValues<VL::Scalar>>,
    {
        Join::new(executor, left_key.index(), right_key.index())
    }
}

/// What the right side of a joined row reads as: the record (inner join),
/// or `None` where a left join found no row.
#[doc(hidden)]
pub trait JoinedSide<R>: Sized {
    /// Whether the join keeps left rows without a match (`LEFT JOIN`).
    const OUTER: bool;
    /// Reads it from `row`, its columns from `offset` on.
    fn read(row: &PgRow, offset: usize) -> Result<Self>;
}

impl<R: Record> JoinedSide<R> for R {
    const OUTER: bool = false;
    fn read(row: &PgRow, offset: usize) -> Result<Self> {
        Ok(R::decode(row, offset)?)
    }
}

impl<R: Record> JoinedSide<R> for Option<R> {
    const OUTER: bool = true;
    fn read(row: &PgRow, offset: usize) -> Result<Self> {
        // The id is never NULL in a row that is there.
        let found: Option<Uuid> = row.try_get(offset + R::statements().id_column)?;
        match found {
            Some(_) => Ok(Some(R::decode(row, offset)?)),
            None => Ok(None),
        }
    }
}

/// A join of `L`'s rows with `R`'s, read as `(L, Out)`: built by
/// [`Repo::join`](crate::Repo::join) (`Out` = `R`) and
/// [`Repo::left_join`](crate::Repo::left_join) (`Out` = `Option<R>`).
///
/// ```no_run
/// # use mandrake_storage::Record;
/// # #[derive(Record, Clone)]
/// # pub struct Provider { pub id: uuid::Uuid, pub name: String,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// # #[derive(Record, Clone)]
/// # pub struct Model { pub id: uuid::Uuid, #[record(references = "providers")] pub provider_id: uuid::Uuid,
/// #   pub model_id: String, pub enabled: bool,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
/// let rows: Vec<(Model, Provider)> = Model::repo()
///     .join(db, Model::PROVIDER_ID, Provider::ID)
///     .filter(Model::ENABLED.eq(true))
///     .filter_joined(Provider::NAME.ne("local"))
///     .order_by_joined(Provider::NAME.asc())
///     .order_by(Model::MODEL_ID.asc())
///     .limit(100)
///     .fetch()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Join<L, R, E, Out = R> {
    executor: E,
    on: (usize, usize),
    left_filter: Filter<L>,
    right_filter: Filter<R>,
    order: Vec<(Side, usize, bool)>,
    limit: Option<u32>,
    after: Option<Cursor>,
    _marker: PhantomData<fn() -> Out>,
}

impl<'e, L: Record, R: Record, E: PgExecutor<'e>, Out: JoinedSide<R>> Join<L, R, E, Out> {
    pub(crate) fn new(executor: E, left_key: usize, right_key: usize) -> Self {
        Join {
            executor,
            on: (left_key, right_key),
            left_filter: Filter::all(),
            right_filter: Filter::all(),
            order: Vec::new(),
            limit: None,
            after: None,
            _marker: PhantomData,
        }
    }

    /// Keeps the pairs whose left row matches `filter`; several are ANDed.
    pub fn filter(mut self, filter: Filter<L>) -> Self {
        self.left_filter = std::mem::take(&mut self.left_filter).and(filter);
        self
    }

    /// Joins only the right rows that match `filter`; several are ANDed.
    /// On a left join, a left row whose matches all fail it pairs with
    /// `None`.
    pub fn filter_joined(mut self, filter: Filter<R>) -> Self {
        self.right_filter = std::mem::take(&mut self.right_filter).and(filter);
        self
    }

    /// Orders by a left column; orders apply in call order, and the two
    /// ids break the last ties.
    pub fn order_by(mut self, order: Order<L>) -> Self {
        self.order
            .push((Side::Left, order.column(), order.is_descending()));
        self
    }

    /// Orders by a right column (NULLs last).
    pub fn order_by_joined(mut self, order: Order<R>) -> Self {
        self.order
            .push((Side::Right, order.column(), order.is_descending()));
        self
    }

    /// At most `n` pairs (a page of `n` for [`Join::page`]).
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    /// Continues after the page that returned `cursor` (`page.next`).
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Continues after `cursor` when there is one.
    pub fn after_opt(mut self, cursor: Option<Cursor>) -> Self {
        self.after = cursor;
        self
    }

    /// Runs the join: one statement.
    pub async fn fetch(self) -> Result<Vec<(L, Out)>> {
        Ok(self.run(call_span!("join", L), false).await?.items)
    }

    /// Runs the join for one keyset page of `limit` pairs, as
    /// [`Repo::list`](crate::Repo::list) pages: `Page::next` continues
    /// after its last pair, in the same order, and pairs added meanwhile
    /// never shift the pages. One statement.
    ///
    /// ```no_run
    /// # use mandrake_storage::Record;
    /// # #[derive(Record, Clone)]
    /// # pub struct Provider { pub id: uuid::Uuid, pub name: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # #[derive(Record, Clone)]
    /// # pub struct Model { pub id: uuid::Uuid, #[record(references = "providers")] pub provider_id: uuid::Uuid,
    /// #   pub model_id: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
    /// let mut next = None;
    /// loop {
    ///     let page = Model::repo()
    ///         .join(db, Model::PROVIDER_ID, Provider::ID)
    ///         .order_by_joined(Provider::NAME.asc())
    ///         .limit(50)
    ///         .after_opt(next)
    ///         .page()
    ///         .await?;
    ///     for (model, provider) in &page.items {
    ///         println!("{} / {}", provider.name, model.model_id);
    ///     }
    ///     next = page.next;
    ///     if next.is_none() { break; }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn page(self) -> Result<Page<(L, Out)>> {
        self.run(call_span!("join page", L), true).await
    }

    async fn run(self, span: tracing::Span, paged: bool) -> Result<Page<(L, Out)>> {
        if paged || self.after.is_some() {
            // A page's cursor carries the values it is ordered by.
            let on = |side: Side| -> Vec<(usize, bool)> {
                self.order
                    .iter()
                    .filter(|&&(s, _, _)| s == side)
                    .map(|&(_, column, descending)| (column, descending))
                    .collect()
            };
            refuse_secret_order::<L>(&on(Side::Left))?;
            refuse_secret_order::<R>(&on(Side::Right))?;
        }
        let (left, left_values) = self.left_filter.into_parts();
        let (right, right_values) = self.right_filter.into_parts();
        let shape = JoinShape {
            right: R::statements().table,
            on: self.on,
            outer: Out::OUTER,
            left_filter: left,
            right_filter: right,
            order: self.order,
            after: self.after.is_some(),
            // One pair more than asked tells whether another page follows.
            limit: self.limit.map(|n| n.saturating_add(u32::from(paged))),
        };
        // Only a cursor reads the keys after the SQL is built: a plain fetch
        // skips them.
        let keys = match paged || self.after.is_some() {
            true => join_keys::<L, R>(&shape),
            false => Vec::new(),
        };
        let sql = L::statements().sql_for(Shape::Join(shape.clone()), || {
            join_sql::<L, R>(&shape, &join_keys::<L, R>(&shape))
        });
        let mut args = PgArguments::default();
        bind_all(left_values, &mut args).map_err(bind_error)?;
        bind_all(right_values, &mut args).map_err(bind_error)?;
        if let Some(cursor) = &self.after {
            for value in cursor.values(&keys)? {
                args.add(value).map_err(bind_error)?;
            }
        }
        let executor = self.executor;
        let limit = self.limit.filter(|_| paged).map(|n| n as usize);
        traced::<L, _>(
            span,
            async move {
                let rows = sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
                    .fetch_all(executor)
                    .await
                    .map_err(|err| page_error(shape.after, err))?;
                page_of(
                    &rows,
                    limit,
                    || keys,
                    |row| Ok((L::decode(row, 0)?, Out::read(row, L::WIDTH)?)),
                )
            },
            |page: &Page<(L, Out)>| page.items.len() as u64,
        )
        .await
    }
}

/// The join's full order: the orders asked for, in call order, then each
/// side's `id` not ordered on already (ascending), so every pair has one
/// place and a cursor resumes exactly. The right side of a left join may
/// be NULL throughout.
fn join_keys<L: Record, R: Record>(shape: &JoinShape) -> Vec<SortKey> {
    let key = |side: Side, index: usize, descending: bool| {
        let (alias, schema, offset) = match side {
            Side::Left => ("l", L::schema(), 0),
            Side::Right => ("r", R::schema(), L::WIDTH),
        };
        let def = &schema.columns[index];
        SortKey {
            label: format!("{alias}.{}", def.name),
            sql: format!("\"{alias}\".{}", quote_ident(&def.name)),
            sql_type: def.sql_type.clone(),
            nullable: def.nullable || (side == Side::Right && shape.outer),
            descending,
            at: offset + index,
        }
    };
    let mut keys: Vec<SortKey> = shape
        .order
        .iter()
        .map(|&(side, index, descending)| key(side, index, descending))
        .collect();
    for (side, schema) in [(Side::Left, L::schema()), (Side::Right, R::schema())] {
        let id = schema.columns.iter().position(|c| c.name == "id");
        if let Some(id) = id
            && !shape.order.iter().any(|&(s, c, _)| s == side && c == id)
        {
            keys.push(key(side, id, false));
        }
    }
    keys
}

/// `SELECT l.…, r.… FROM (SELECT * FROM L WHERE …) AS l [LEFT] JOIN
/// (SELECT * FROM R WHERE …) AS r ON l.key = r.key [WHERE <after cursor>]
/// ORDER BY … LIMIT n`; parameters: the left filter's, the right filter's,
/// then the cursor's.
fn join_sql<L: Record, R: Record>(shape: &JoinShape, keys: &[SortKey]) -> String {
    let (left, right) = (L::schema(), R::schema());
    let mut param = 0;
    let left_rows = format!(
        "(SELECT * FROM {}{}) AS \"l\"",
        quote_table(&left.name),
        where_clause(left, &shape.left_filter, &mut param)
    );
    let right_rows = format!(
        "(SELECT * FROM {}{}) AS \"r\"",
        quote_table(&right.name),
        where_clause(right, &shape.right_filter, &mut param)
    );
    let mut sql = format!(
        "SELECT {}, {} FROM {left_rows} {} {right_rows} ON \"l\".{} = \"r\".{}",
        L::statements().qualified_columns("l"),
        R::statements().qualified_columns("r"),
        if shape.outer { "LEFT JOIN" } else { "JOIN" },
        quote_ident(&left.columns[shape.on.0].name),
        quote_ident(&right.columns[shape.on.1].name),
    );
    if shape.after {
        sql.push_str(" WHERE ");
        sql.push_str(&after_condition(keys, &mut param));
    }
    sql.push_str(&order_by(keys));
    if let Some(n) = shape.limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    sql
}
