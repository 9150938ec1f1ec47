//! Grouped aggregates ([`Repo::aggregate`](crate::Repo::aggregate)): keys
//! (columns, time buckets) and measures (counts, sums, averages, extremes,
//! percentiles), whose row type follows from the calls that built them.
//!
//! The builder's `Out` type is the tuple of what each call adds, keys first:
//! `.group_by(ToolResult::TOOL_NAME).count().percentile(ToolResult::DURATION_MS, 0.95)`
//! fetches `Vec<(String, i64, Option<f64>)>`. A measure over no value at all
//! (every input NULL, or no row when nothing is grouped) is NULL in SQL and
//! `None` here; counts are never NULL.

use std::marker::PhantomData;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, FromRow, PgExecutor};

use crate::error::{Error, Result};
use crate::query::filter::{Column, Filter, Node, Value, bind_all, condition};
use crate::query::list::Order;
use crate::record::Record;
use crate::record::column::ColumnType;
use crate::schema::TableSchema;
use crate::sql::{quote_ident, quote_literal};

/// The width of a time bucket ([`Column::bucket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// From the top of the hour.
    Hour,
    /// From midnight.
    Day,
    /// From Monday's midnight.
    Week,
    /// From the first of the month.
    Month,
}

impl Bucket {
    fn unit(self) -> &'static str {
        match self {
            Bucket::Hour => "hour",
            Bucket::Day => "day",
            Bucket::Week => "week",
            Bucket::Month => "month",
        }
    }
}

/// Timestamp columns: what [`Column::bucket`] truncates.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a timestamp column",
    note = "bucket works on DateTime<Utc> and Option<DateTime<Utc>> columns"
)]
pub trait TimestampColumn {}
impl TimestampColumn for DateTime<Utc> {}
impl TimestampColumn for Option<DateTime<Utc>> {}

/// Integer and floating-point columns: what `sum` adds up, into `Sum`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a numeric column",
    label = "sum, avg and percentile need a number",
    note = "sum, avg and percentile work on i16, i32, i64, f32 and f64 columns (and their Options)"
)]
pub trait NumericColumn {
    /// What the sum is read as: `i64` for integers, `f64` for floats.
    type Sum;
    /// The SQL type of the sum (an integer sum past `i64` is an error, not a wrap).
    const SUM_TYPE: &'static str;
}

macro_rules! numeric {
    ($($ty:ty => $sum:ty, $sql:literal;)*) => {$(
        impl NumericColumn for $ty {
            type Sum = $sum;
            const SUM_TYPE: &'static str = $sql;
        }
    )*};
}

numeric! {
    i16 => i64, "bigint";
    i32 => i64, "bigint";
    i64 => i64, "bigint";
    f32 => f64, "double precision";
    f64 => f64, "double precision";
}

impl<X: NumericColumn> NumericColumn for Option<X> {
    type Sum = X::Sum;
    const SUM_TYPE: &'static str = X::SUM_TYPE;
}

/// Columns with an order `min` and `max` can use.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no order for min and max",
    note = "min and max work on numbers, text, timestamps and dates (and their Options)"
)]
pub trait OrderedColumn {}
macro_rules! ordered {
    ($($ty:ty),*) => {$( impl OrderedColumn for $ty {} impl OrderedColumn for Option<$ty> {} )*};
}
ordered!(i16, i32, i64, f32, f64, String, DateTime<Utc>, NaiveDate);

/// A column truncated to a time bucket: a key of an aggregate.
///
/// ```
/// # use mandrake_storage::{Bucket, Record};
/// # #[derive(Record, Clone)]
/// # pub struct Note { pub id: uuid::Uuid,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// let per_day = Note::CREATED_AT.bucket(Bucket::Day);                  // in UTC
/// let per_paris_day = Note::CREATED_AT.bucket(Bucket::Day).in_time_zone("Europe/Paris");
/// ```
pub struct Bucketed<T, V> {
    column: usize,
    bucket: Bucket,
    zone: &'static str,
    _marker: PhantomData<fn() -> (T, V)>,
}

impl<T, V> Clone for Bucketed<T, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, V> Copy for Bucketed<T, V> {}

impl<T, V> Bucketed<T, V> {
    /// Buckets that start at midnight (or the hour, week, month) of the
    /// time zone `zone` (an IANA name, as PostgreSQL knows it), not of UTC.
    pub fn in_time_zone(mut self, zone: &'static str) -> Self {
        self.zone = zone;
        self
    }

    /// Ascending order on the bucket.
    pub fn asc(self) -> Sort<T> {
        Sort::new(Expr::Bucket(self.column, self.bucket, self.zone), false)
    }

    /// Descending order on the bucket.
    pub fn desc(self) -> Sort<T> {
        Sort::new(Expr::Bucket(self.column, self.bucket, self.zone), true)
    }
}

impl<T, V: TimestampColumn, S> Column<T, V, S> {
    /// This timestamp truncated to `bucket` (in UTC; see
    /// [`Bucketed::in_time_zone`]): a key of [`Aggregate::group_by`].
    pub fn bucket(self, bucket: Bucket) -> Bucketed<T, V> {
        Bucketed {
            column: self.index(),
            bucket,
            zone: "UTC",
            _marker: PhantomData,
        }
    }
}

/// What an aggregate can group by: a column (read as its field type) or a
/// [`Bucketed`] timestamp.
pub trait GroupKey<T> {
    /// The key's value type in the rows.
    type Out;
    #[doc(hidden)]
    fn expr(&self) -> KeyExpr;
}

/// A key's SQL, opaque outside this crate.
#[doc(hidden)]
pub struct KeyExpr(Expr);

impl<T, V, S> GroupKey<T> for Column<T, V, S> {
    type Out = V;
    fn expr(&self) -> KeyExpr {
        KeyExpr(Expr::Column(self.index()))
    }
}

impl<T, V> GroupKey<T> for Bucketed<T, V> {
    type Out = V;
    fn expr(&self) -> KeyExpr {
        KeyExpr(Expr::Bucket(self.column, self.bucket, self.zone))
    }
}

/// What a measure reads: a column, or a [`Numeric`] expression over
/// columns. `Value` is what it holds, which decides the measures it takes
/// (`sum`, `avg` and `percentile` a number; `min` and `max` an order).
pub trait Operand<T> {
    /// Its value type.
    type Value;
    #[doc(hidden)]
    fn term(&self) -> Term;
}

impl<T, V, S> Operand<T> for Column<T, V, S> {
    type Value = V;
    fn term(&self) -> Term {
        Term::Column(self.index())
    }
}

impl<T, V> Operand<T> for Numeric<T, V> {
    type Value = V;
    fn term(&self) -> Term {
        self.term.clone()
    }
}

/// An operand's SQL, opaque outside this crate.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Column(usize),
    Length(usize),
    Binary(Box<Term>, &'static str, Box<Term>),
}

impl Term {
    /// The name a measure of it is read under: the column's, `length_body`,
    /// `tokens_in_plus_tokens_out`.
    fn name(&self, schema: &TableSchema) -> String {
        match self {
            Term::Column(i) => schema.columns[*i].name.clone(),
            Term::Length(i) => format!("length_{}", schema.columns[*i].name),
            Term::Binary(a, op, b) => {
                let word = match *op {
                    "+" => "plus",
                    "-" => "minus",
                    _ => "times",
                };
                format!("{}_{word}_{}", a.name(schema), b.name(schema))
            }
        }
    }

    fn sql(&self, schema: &TableSchema) -> String {
        let col = |i: &usize| quote_ident(&schema.columns[*i].name);
        match self {
            Term::Column(i) => col(i),
            Term::Length(i) => format!("char_length({})", col(i)),
            Term::Binary(a, op, b) => format!("({} {op} {})", a.sql(schema), b.sql(schema)),
        }
    }

    /// A column it reads, for errors that name one.
    fn column(&self) -> usize {
        match self {
            Term::Column(i) | Term::Length(i) => *i,
            Term::Binary(a, ..) => a.column(),
        }
    }
}

/// A number computed from a row's columns, for the measures: the length of
/// a text column, and sums, differences and products of numbers of one
/// type. Built from the columns, so it names no column the record lacks.
///
/// ```
/// # use mandrake_storage::{Measure, Record};
/// # #[derive(Record, Clone)]
/// # pub struct Message { pub id: uuid::Uuid, pub content: String, pub tokens_in: i32, pub tokens_out: i32,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// // The 95th percentile of a message's length, and its tokens in all.
/// let long = Measure::percentile(Message::CONTENT.char_length(), 0.95);
/// let tokens = Measure::sum(Message::TOKENS_IN.plus(Message::TOKENS_OUT));
/// ```
pub struct Numeric<T, V> {
    term: Term,
    _marker: PhantomData<fn() -> (T, V)>,
}

impl<T, V> Clone for Numeric<T, V> {
    fn clone(&self) -> Self {
        Numeric::of(self.term.clone())
    }
}

impl<T, V> Numeric<T, V> {
    fn of(term: Term) -> Self {
        Numeric {
            term,
            _marker: PhantomData,
        }
    }

    fn binary(self, op: &'static str, other: impl Operand<T, Value = V>) -> Self {
        Numeric::of(Term::Binary(
            Box::new(self.term),
            op,
            Box::new(other.term()),
        ))
    }

    /// `self + other`.
    pub fn plus(self, other: impl Operand<T, Value = V>) -> Self {
        self.binary("+", other)
    }

    /// `self - other`.
    pub fn minus(self, other: impl Operand<T, Value = V>) -> Self {
        self.binary("-", other)
    }

    /// `self * other`.
    pub fn times(self, other: impl Operand<T, Value = V>) -> Self {
        self.binary("*", other)
    }
}

impl<T, V: NumericColumn, S> Column<T, V, S> {
    /// This column as a [`Numeric`], to compute with.
    pub fn numeric(self) -> Numeric<T, V> {
        Numeric::of(Term::Column(self.index()))
    }

    /// `self + other` ([`Numeric::plus`]).
    pub fn plus(self, other: impl Operand<T, Value = V>) -> Numeric<T, V> {
        self.numeric().plus(other)
    }

    /// `self - other` ([`Numeric::minus`]).
    pub fn minus(self, other: impl Operand<T, Value = V>) -> Numeric<T, V> {
        self.numeric().minus(other)
    }

    /// `self * other` ([`Numeric::times`]).
    pub fn times(self, other: impl Operand<T, Value = V>) -> Numeric<T, V> {
        self.numeric().times(other)
    }
}

impl<T, V: crate::query::filter::TextColumn, S> Column<T, V, S> {
    /// `char_length(column)`: its length in characters (NULL for NULL).
    pub fn char_length(self) -> Numeric<T, Option<i32>> {
        Numeric::of(Term::Length(self.index()))
    }
}

/// One SELECT-list expression of an aggregate; values (a `count_where`
/// filter's) are bound in the order they appear.
#[derive(Debug, Clone)]
enum Expr {
    Column(usize),
    Bucket(usize, Bucket, &'static str),
    Count,
    CountWhere(Node),
    CountDistinct(usize),
    Sum(Term, &'static str),
    Avg(Term),
    Min(Term),
    Max(Term),
    Percentile(Term, f64),
}

impl Expr {
    /// The name a row gives its value (what [`Aggregate::fetch_as`] reads):
    /// a key its column's, a measure `count`, `count_where`,
    /// `count_distinct_<column>`, `sum_<column>`, `avg_<column>`,
    /// `min_<column>`, `max_<column>` or `p<percent>_<column>` (`p95_duration_ms`).
    fn name(&self, schema: &TableSchema) -> String {
        let col = |i: &usize| schema.columns[*i].name.clone();
        match self {
            Expr::Column(i) | Expr::Bucket(i, ..) => col(i),
            Expr::Count => "count".into(),
            Expr::CountWhere(_) => "count_where".into(),
            Expr::CountDistinct(i) => format!("count_distinct_{}", col(i)),
            Expr::Sum(t, _) => format!("sum_{}", t.name(schema)),
            Expr::Avg(t) => format!("avg_{}", t.name(schema)),
            Expr::Min(t) => format!("min_{}", t.name(schema)),
            Expr::Max(t) => format!("max_{}", t.name(schema)),
            Expr::Percentile(t, p) => {
                // Rounded: 0.07 * 100.0 is 7.000000000000001.
                let percent = ((p * 100_000.0).round() / 1000.0).to_string();
                let percent = percent.replace(['.', '-'], "_");
                format!("p{percent}_{}", t.name(schema))
            }
        }
    }

    fn sql(&self, schema: &TableSchema, param: &mut usize) -> String {
        let col = |i: &usize| quote_ident(&schema.columns[*i].name);
        match self {
            Expr::Column(i) => col(i),
            Expr::Bucket(i, bucket, zone) => format!(
                "date_trunc('{}', {}, {})",
                bucket.unit(),
                col(i),
                quote_literal(zone)
            ),
            Expr::Count => "count(*)".into(),
            Expr::CountWhere(node) => {
                format!("count(*) FILTER (WHERE {})", condition(schema, node, param))
            }
            Expr::CountDistinct(i) => format!("count(DISTINCT {})", col(i)),
            Expr::Sum(t, sql_type) => format!("sum({})::{sql_type}", t.sql(schema)),
            Expr::Avg(t) => format!("avg({})::double precision", t.sql(schema)),
            Expr::Min(t) => format!("min({})", t.sql(schema)),
            Expr::Max(t) => format!("max({})", t.sql(schema)),
            // The fraction is bound, as every value is.
            Expr::Percentile(t, _) => {
                *param += 1;
                format!(
                    "percentile_cont(${param}::double precision) WITHIN GROUP (ORDER BY {})",
                    t.sql(schema)
                )
            }
        }
    }
}

/// A measure of record `T`'s rows with value type `O` (what a row holds
/// for it): what [`Aggregate::measure`] adds, and what
/// [`Aggregate::having`] and [`Aggregate::order_by`] name.
///
/// ```
/// # use mandrake_storage::{Measure, Record};
/// # #[derive(Record, Clone)]
/// # pub struct Call { pub id: uuid::Uuid, pub duration_ms: i64,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// let busy = Measure::<Call, i64>::count().gt(100);
/// let slowest_first = Measure::percentile(Call::DURATION_MS, 0.95).desc();
/// ```
pub struct Measure<T, O> {
    expr: Expr,
    values: Vec<Box<dyn Value>>,
    _marker: PhantomData<fn() -> (T, O)>,
}

impl<T, O> Measure<T, O> {
    fn of(expr: Expr) -> Self {
        Measure {
            expr,
            values: Vec::new(),
            _marker: PhantomData,
        }
    }
}

impl<T> Measure<T, i64> {
    /// `count(*)`: the rows of the group.
    pub fn count() -> Self {
        Measure::of(Expr::Count)
    }

    /// `count(*) FILTER (WHERE filter)`: the rows of the group that match.
    pub fn count_where(filter: Filter<T>) -> Self {
        let (node, values) = filter.into_parts();
        Measure {
            expr: Expr::CountWhere(node),
            values,
            _marker: PhantomData,
        }
    }

    /// `count(DISTINCT column)`: the distinct non-NULL values.
    pub fn count_distinct<V, S>(column: Column<T, V, S>) -> Self {
        Measure::of(Expr::CountDistinct(column.index()))
    }
}

impl<T> Measure<T, Option<f64>> {
    /// `avg(operand)` of a numeric column or [`Numeric`], as `f64`.
    pub fn avg<X: Operand<T>>(operand: X) -> Self
    where
        X::Value: NumericColumn,
    {
        Measure::of(Expr::Avg(operand.term()))
    }

    /// `percentile_cont(fraction) WITHIN GROUP (ORDER BY operand)`, of a
    /// numeric column or [`Numeric`]: the value below which `fraction` (0
    /// to 1) of the group's values lie, interpolated. A `fraction` outside
    /// 0..=1 (NaN and infinities too) makes the fetch fail with
    /// [`Error::InvalidValue`].
    pub fn percentile<X: Operand<T>>(operand: X, fraction: f64) -> Self
    where
        X::Value: NumericColumn,
    {
        Measure {
            expr: Expr::Percentile(operand.term(), fraction),
            values: vec![Box::new(fraction)],
            _marker: PhantomData,
        }
    }
}

impl<T, Y> Measure<T, Option<Y>> {
    /// `sum(operand)` of a numeric column or [`Numeric`]: `i64` for
    /// integers (a sum past it is an error, never a wrap), `f64` for floats.
    pub fn sum<X: Operand<T>>(operand: X) -> Self
    where
        X::Value: NumericColumn<Sum = Y>,
    {
        Measure::of(Expr::Sum(
            operand.term(),
            <X::Value as NumericColumn>::SUM_TYPE,
        ))
    }

    /// `min(operand)`, as its type.
    pub fn min<X: Operand<T>>(operand: X) -> Self
    where
        X::Value: OrderedColumn + ColumnType<Scalar = Y>,
    {
        Measure::of(Expr::Min(operand.term()))
    }

    /// `max(operand)`, as its type.
    pub fn max<X: Operand<T>>(operand: X) -> Self
    where
        X::Value: OrderedColumn + ColumnType<Scalar = Y>,
    {
        Measure::of(Expr::Max(operand.term()))
    }
}

/// What a measure is compared with in `having`: its value without the NULL.
pub trait MeasureValue {
    /// The value type.
    type Value;
}
impl MeasureValue for i64 {
    type Value = i64;
}
impl<X> MeasureValue for Option<X> {
    type Value = X;
}

impl<T, O: MeasureValue> Measure<T, O>
where
    O::Value:
        for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
{
    fn compare(mut self, op: &'static str, value: O::Value) -> Having<T> {
        self.values.push(Box::new(value));
        Having {
            expr: self.expr,
            op,
            values: self.values,
            _marker: PhantomData,
        }
    }

    /// `measure > value`, for [`Aggregate::having`].
    pub fn gt(self, value: impl Into<O::Value>) -> Having<T> {
        self.compare(">", value.into())
    }

    /// `measure >= value`.
    pub fn ge(self, value: impl Into<O::Value>) -> Having<T> {
        self.compare(">=", value.into())
    }

    /// `measure < value`.
    pub fn lt(self, value: impl Into<O::Value>) -> Having<T> {
        self.compare("<", value.into())
    }

    /// `measure <= value`.
    pub fn le(self, value: impl Into<O::Value>) -> Having<T> {
        self.compare("<=", value.into())
    }

    /// `measure = value`.
    pub fn eq(self, value: impl Into<O::Value>) -> Having<T> {
        self.compare("=", value.into())
    }
}

impl<T, O> Measure<T, O> {
    /// Ascending order on the measure (NULLs last).
    pub fn asc(self) -> Sort<T> {
        Sort::with_values(self.expr, false, self.values)
    }

    /// Descending order on the measure (NULLs last).
    pub fn desc(self) -> Sort<T> {
        Sort::with_values(self.expr, true, self.values)
    }
}

/// A condition on a measure ([`Aggregate::having`]).
pub struct Having<T> {
    expr: Expr,
    op: &'static str,
    values: Vec<Box<dyn Value>>,
    _marker: PhantomData<fn() -> T>,
}

/// An order of an aggregate's rows: on a key (a column's
/// [`asc`](Column::asc)/[`desc`](Column::desc), a bucket's) or a measure.
pub struct Sort<T> {
    expr: Expr,
    descending: bool,
    values: Vec<Box<dyn Value>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Sort<T> {
    fn new(expr: Expr, descending: bool) -> Self {
        Sort::with_values(expr, descending, Vec::new())
    }

    fn with_values(expr: Expr, descending: bool, values: Vec<Box<dyn Value>>) -> Self {
        Sort {
            expr,
            descending,
            values,
            _marker: PhantomData,
        }
    }
}

impl<T> From<Order<T>> for Sort<T> {
    fn from(order: Order<T>) -> Self {
        Sort::new(Expr::Column(order.column()), order.is_descending())
    }
}

/// Appends `X` to a tuple type: how each call of the builder grows its row.
#[doc(hidden)]
pub trait Push<X> {
    type Output;
}

macro_rules! push {
    ($($t:ident)*) => {
        impl<$($t,)* X> Push<X> for ($($t,)*) {
            type Output = ($($t,)* X,);
        }
    };
}
push!();
push!(A);
push!(A B);
push!(A B C);
push!(A B C D);
push!(A B C D E);
push!(A B C D E F);
push!(A B C D E F G);
push!(A B C D E F G H);
push!(A B C D E F G H I);
push!(A B C D E F G H I J);
push!(A B C D E F G H I J K);

/// The builder's stage while keys may still be added.
#[derive(Debug)]
pub struct Keys;
/// The builder's stage once a measure is added: keys come first.
#[derive(Debug)]
pub struct Measures;

/// A grouped aggregate of record `T`'s rows matching a filter, built call by
/// call; its rows are the tuple `Out` (keys, then measures, in call order).
/// From [`Repo::aggregate`](crate::Repo::aggregate).
///
/// ```no_run
/// # use mandrake_storage::{Bucket, Measure, Record};
/// # #[derive(Record, Clone)]
/// # pub struct Call { pub id: uuid::Uuid, pub tool: String, pub duration_ms: i64,
/// #   pub error: Option<String>,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
/// let per_tool: Vec<(String, i64, i64, Option<f64>)> = Call::repo()
///     .aggregate(db, Call::CREATED_AT.ge(chrono::Utc::now() - chrono::Duration::days(7)))
///     .group_by(Call::TOOL)
///     .count()
///     .count_where(Call::ERROR.is_not_null())
///     .percentile(Call::DURATION_MS, 0.95)
///     .order_by(Measure::count().desc())
///     .fetch()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "an aggregate runs on .fetch()"]
pub struct Aggregate<T, E, Out = (), Stage = Keys> {
    executor: E,
    filter: Filter<T>,
    keys: Vec<Expr>,
    measures: Vec<Measure<T, ()>>,
    having: Vec<Having<T>>,
    order: Vec<Sort<T>>,
    limit: Option<i64>,
    _marker: PhantomData<fn() -> (Out, Stage)>,
}

impl<T, E> Aggregate<T, E> {
    pub(crate) fn new(executor: E, filter: Filter<T>) -> Self {
        Aggregate {
            executor,
            filter,
            keys: Vec::new(),
            measures: Vec::new(),
            having: Vec::new(),
            order: Vec::new(),
            limit: None,
            _marker: PhantomData,
        }
    }
}

impl<T, E, Out, Stage> Aggregate<T, E, Out, Stage> {
    fn retype<Out2, Stage2>(self) -> Aggregate<T, E, Out2, Stage2> {
        Aggregate {
            executor: self.executor,
            filter: self.filter,
            keys: self.keys,
            measures: self.measures,
            having: self.having,
            order: self.order,
            limit: self.limit,
            _marker: PhantomData,
        }
    }
}

impl<T, E, Out> Aggregate<T, E, Out, Keys> {
    /// Groups by `key` (a column, or a [`Bucketed`] timestamp); its value
    /// comes next in each row. Keys come before measures.
    pub fn group_by<K: GroupKey<T>>(mut self, key: K) -> Aggregate<T, E, Out::Output, Keys>
    where
        Out: Push<K::Out>,
    {
        self.keys.push(key.expr().0);
        self.retype()
    }
}

impl<T, E, Out, Stage> Aggregate<T, E, Out, Stage> {
    /// Adds `measure`; its value comes next in each row.
    pub fn measure<O>(mut self, measure: Measure<T, O>) -> Aggregate<T, E, Out::Output, Measures>
    where
        Out: Push<O>,
    {
        self.measures.push(Measure {
            expr: measure.expr,
            values: measure.values,
            _marker: PhantomData,
        });
        self.retype()
    }

    /// [`Measure::count`]: `i64`.
    pub fn count(self) -> Aggregate<T, E, Out::Output, Measures>
    where
        Out: Push<i64>,
    {
        self.measure(Measure::count())
    }

    /// [`Measure::count_where`]: `i64`.
    pub fn count_where(self, filter: Filter<T>) -> Aggregate<T, E, Out::Output, Measures>
    where
        Out: Push<i64>,
    {
        self.measure(Measure::count_where(filter))
    }

    /// [`Measure::count_distinct`]: `i64`.
    pub fn count_distinct<V, S>(
        self,
        column: Column<T, V, S>,
    ) -> Aggregate<T, E, Out::Output, Measures>
    where
        Out: Push<i64>,
    {
        self.measure(Measure::count_distinct(column))
    }

    /// [`Measure::sum`]: `Option<i64>` for integers, `Option<f64>` for floats.
    pub fn sum<X: Operand<T>>(self, operand: X) -> Aggregate<T, E, Out::Output, Measures>
    where
        X::Value: NumericColumn,
        Out: Push<Option<<X::Value as NumericColumn>::Sum>>,
    {
        self.measure(Measure::sum(operand))
    }

    /// [`Measure::avg`]: `Option<f64>`.
    pub fn avg<X: Operand<T>>(self, operand: X) -> Aggregate<T, E, Out::Output, Measures>
    where
        X::Value: NumericColumn,
        Out: Push<Option<f64>>,
    {
        self.measure(Measure::avg(operand))
    }

    /// [`Measure::min`]: the operand's type, as an `Option`.
    pub fn min<X: Operand<T>>(self, operand: X) -> Aggregate<T, E, Out::Output, Measures>
    where
        X::Value: OrderedColumn + ColumnType,
        Out: Push<Option<<X::Value as ColumnType>::Scalar>>,
    {
        self.measure(Measure::min(operand))
    }

    /// [`Measure::max`]: the operand's type, as an `Option`.
    pub fn max<X: Operand<T>>(self, operand: X) -> Aggregate<T, E, Out::Output, Measures>
    where
        X::Value: OrderedColumn + ColumnType,
        Out: Push<Option<<X::Value as ColumnType>::Scalar>>,
    {
        self.measure(Measure::max(operand))
    }

    /// [`Measure::percentile`]: `Option<f64>`.
    pub fn percentile<X: Operand<T>>(
        self,
        operand: X,
        fraction: f64,
    ) -> Aggregate<T, E, Out::Output, Measures>
    where
        X::Value: NumericColumn,
        Out: Push<Option<f64>>,
    {
        self.measure(Measure::percentile(operand, fraction))
    }

    /// Keeps the groups where `condition` holds (`HAVING`); several are ANDed.
    pub fn having(mut self, condition: Having<T>) -> Self {
        self.having.push(condition);
        self
    }

    /// Orders the rows (by a key or a measure); several apply in call order.
    /// Without one the order is the keys'.
    pub fn order_by(mut self, sort: impl Into<Sort<T>>) -> Self {
        self.order.push(sort.into());
        self
    }

    /// At most `n` rows.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(i64::from(n));
        self
    }
}

impl<T: Record, E, Out, Stage> Aggregate<T, E, Out, Stage> {
    /// The statement [`Aggregate::fetch`] sends, without running it;
    /// parameters are `$1`, `$2`, … in the order they are bound.
    pub fn to_sql(&self) -> String {
        self.render().0
    }

    /// Every percentile's fraction is a number from 0 to 1.
    fn check_fractions(&self) -> Result<()> {
        let exprs = self.measures.iter().map(|m| &m.expr);
        let exprs = exprs
            .chain(self.having.iter().map(|h| &h.expr))
            .chain(self.order.iter().map(|s| &s.expr));
        for expr in exprs {
            if let Expr::Percentile(term, p) = expr
                && !(0.0..=1.0).contains(p)
            {
                return Err(Error::InvalidValue {
                    column: T::schema().columns[term.column()].name.as_str(),
                    reason: "a percentile's fraction is a number from 0 to 1",
                });
            }
        }
        Ok(())
    }

    /// The SQL, and the values in the order it binds them: the measures',
    /// the filter's, `having`'s, `order_by`'s, then the limit.
    fn render(&self) -> (String, usize) {
        let schema = T::schema();
        let mut param = 0;
        let mut names: Vec<String> = Vec::new();
        let select: Vec<String> = self
            .keys
            .iter()
            .chain(self.measures.iter().map(|m| &m.expr))
            .map(|e| {
                // A second `count_where` is `count_where_2`, and so on.
                let base = e.name(schema);
                let mut name = base.clone();
                let mut n = 1;
                while names.contains(&name) {
                    n += 1;
                    name = format!("{base}_{n}");
                }
                names.push(name.clone());
                format!("{} AS {}", e.sql(schema, &mut param), quote_ident(&name))
            })
            .collect();
        let mut sql = format!(
            "SELECT {} FROM {}",
            select.join(", "),
            crate::sql::quote_table(&schema.name)
        );
        let node = self.filter.node();
        if *node != Node::All {
            sql.push_str(&format!(" WHERE {}", condition(schema, node, &mut param)));
        }
        if !self.keys.is_empty() {
            let positions: Vec<String> = (1..=self.keys.len()).map(|i| i.to_string()).collect();
            sql.push_str(&format!(" GROUP BY {}", positions.join(", ")));
        }
        if !self.having.is_empty() {
            let conditions: Vec<String> = self
                .having
                .iter()
                .map(|h| {
                    let e = h.expr.sql(schema, &mut param);
                    param += 1;
                    format!("{e} {} ${param}", h.op)
                })
                .collect();
            sql.push_str(&format!(" HAVING {}", conditions.join(" AND ")));
        }
        let order: Vec<String> = if self.order.is_empty() {
            (1..=self.keys.len()).map(|i| i.to_string()).collect()
        } else {
            self.order
                .iter()
                .map(|s| {
                    let dir = if s.descending { "DESC" } else { "ASC" };
                    format!("{} {dir} NULLS LAST", s.expr.sql(schema, &mut param))
                })
                .collect()
        };
        if !order.is_empty() {
            sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
        }
        if self.limit.is_some() {
            param += 1;
            sql.push_str(&format!(" LIMIT ${param}"));
        }
        (sql, param)
    }
}

impl<'e, T: Record, E: PgExecutor<'e>, Out, Stage> Aggregate<T, E, Out, Stage> {
    /// Runs the aggregate: one row per group (one row in all without keys).
    pub async fn fetch(self) -> Result<Vec<Out>>
    where
        Out: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.fetch_as::<Out>().await
    }

    /// Runs the aggregate into `R`, a struct deriving
    /// [`FromRow`](macro@crate::FromRow) whose fields are named as the row
    /// names its values: a key by its column (a bucket too), a measure
    /// `count`, `count_where` (then `count_where_2`, …),
    /// `count_distinct_<column>`, `sum_<column>`, `avg_<column>`,
    /// `min_<column>`, `max_<column>`, `p<percent>_<column>`
    /// (`p95_duration_ms`). [`Aggregate::to_sql`] shows them.
    pub async fn fetch_as<R>(self) -> Result<Vec<R>>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.check_fractions()?;
        let (sql, _) = self.render();
        let mut args = PgArguments::default();
        let values = self
            .measures
            .into_iter()
            .flat_map(|m| m.values)
            .chain(self.filter.into_parts().1)
            .chain(self.having.into_iter().flat_map(|h| h.values))
            .chain(self.order.into_iter().flat_map(|s| s.values))
            .collect();
        bind_all(values, &mut args).map_err(|e| Error::Database(sqlx::Error::Encode(e)))?;
        if let Some(limit) = self.limit {
            args.add(limit)
                .map_err(|e| Error::Database(sqlx::Error::Encode(e)))?;
        }
        let span = tracing::debug_span!(target: "mandrake_storage", "aggregate", table = T::statements().table);
        let rows = crate::db::caller::ours(tracing::Instrument::instrument(
            sqlx::query_as_with::<_, R, _>(sqlx::AssertSqlSafe(sql), args).fetch_all(self.executor),
            span,
        ))
        .await?;
        Ok(rows)
    }
}
