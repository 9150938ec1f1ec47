//! Typed columns and the filters built from them.
//!
//! `#[derive(Record)]` gives every stored field `foo` of `T` a constant
//! `T::FOO: Column<T, V>`. Its operators build a [`Filter<T>`]: a tree whose
//! *shape* (structure and operators) decides the SQL text, built once per
//! shape, while the values travel as bound parameters.

use std::marker::PhantomData;

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgHasArrayType};
use sqlx::types::Json;
use sqlx::{Arguments, Encode, Postgres, Type};

use crate::query::list::Order;
use crate::record::Record;
use crate::record::column::ColumnType;
use crate::schema::{Lookup, LookupKind, TableSchema};
use crate::sql::{path_sql, quote_ident};

/// A column of record `T` holding values of type `V` (`Option<X>` for a
/// nullable column). Emitted by the derive as `T::FIELD`; `Copy`.
///
/// ```
/// use mandrake_storage::{Column, Filter, Record};
/// # use chrono::{DateTime, Utc};
/// # use uuid::Uuid;
/// #[derive(Record, Clone)]
/// pub struct Note {
///     pub id: Uuid,
///     pub title: Option<String>,
///     pub stars: i32,
///     pub created_at: DateTime<Utc>,
///     pub updated_at: DateTime<Utc>,
/// }
///
/// let column: Column<Note, i32> = Note::STARS;
/// let filter: Filter<Note> = Note::STARS.ge(3).and(Note::TITLE.is_not_null());
/// ```
///
/// A field with `#[record(search)]` is a `Column<T, V, Search>`: it has
/// [`Column::matches`] too, and [`Repo::search`](crate::Repo::search) ranks by it.
pub struct Column<T, V, S = Plain> {
    name: &'static str,
    index: usize,
    /// The text search configuration of a `Search` column.
    config: &'static str,
    _marker: Marker<T, V, S>,
}

/// Ties a column to its record, value type and kind without owning any.
type Marker<T, V, S> = PhantomData<fn() -> (T, V, S)>;

/// The kind of a column without full-text search.
#[derive(Debug, Clone, Copy)]
pub struct Plain;

/// The kind of a column with `#[record(search)]`: it has a `tsvector`
/// column and a GIN index of its own.
#[derive(Debug, Clone, Copy)]
pub struct Search;

/// Implemented by [`Search`] only: what [`Column::matches`] needs.
#[diagnostic::on_unimplemented(
    message = "this column has no full-text search",
    label = "`matches` needs a column with `#[record(search)]`",
    note = "add `#[record(search)]` (or `search = \"english\"`) to the field, then generate a migration"
)]
pub trait Searchable {}
impl Searchable for Search {}

impl<T, V, S> Clone for Column<T, V, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, V, S> Copy for Column<T, V, S> {}

impl<T, V, S> std::fmt::Debug for Column<T, V, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Column({})", self.name)
    }
}

impl<T, V> Column<T, V> {
    /// The column named `name`, at position `index` of the table's columns.
    #[doc(hidden)]
    pub const fn new(name: &'static str, index: usize) -> Self {
        Column {
            name,
            index,
            config: "",
            _marker: PhantomData,
        }
    }
}

impl<T, V> Column<T, V, Search> {
    /// A column with full-text search in configuration `config`.
    #[doc(hidden)]
    pub const fn searchable(name: &'static str, index: usize, config: &'static str) -> Self {
        Column {
            name,
            index,
            config,
            _marker: PhantomData,
        }
    }
}

impl<T, V, S> Column<T, V, S> {
    /// The text search configuration (`simple`, `english`, …) of a column
    /// with `#[record(search)]`; empty for any other.
    pub const fn config(&self) -> &'static str {
        self.config
    }

    /// The column's name in the table.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Ascending order on this column (NULLs last).
    pub fn asc(self) -> Order<T> {
        Order::new(self.index, false)
    }

    /// Descending order on this column (NULLs last).
    pub fn desc(self) -> Order<T> {
        Order::new(self.index, true)
    }

    fn compare(self, op: Op, values: Vec<Box<dyn Value>>) -> Filter<T> {
        Filter {
            node: Node::Compare {
                column: self.index,
                op,
            },
            values,
            _marker: PhantomData,
        }
    }
}

impl<T, V: ColumnType, S> Column<T, V, S> {
    /// `column = value`. On an `Option<X>` column `value` is an `X`.
    pub fn eq(self, value: impl Into<V::Scalar>) -> Filter<T> {
        self.compare(Op::Eq, vec![boxed(value.into())])
    }

    /// `column <> value`. On a nullable column this is `IS DISTINCT FROM`:
    /// rows where the column is NULL are kept (NULL is not `value`).
    pub fn ne(self, value: impl Into<V::Scalar>) -> Filter<T> {
        self.compare(Op::Ne, vec![boxed(value.into())])
    }

    /// `column < value`.
    pub fn lt(self, value: impl Into<V::Scalar>) -> Filter<T> {
        self.compare(Op::Lt, vec![boxed(value.into())])
    }

    /// `column <= value`.
    pub fn le(self, value: impl Into<V::Scalar>) -> Filter<T> {
        self.compare(Op::Le, vec![boxed(value.into())])
    }

    /// `column > value`.
    pub fn gt(self, value: impl Into<V::Scalar>) -> Filter<T> {
        self.compare(Op::Gt, vec![boxed(value.into())])
    }

    /// `column >= value`.
    pub fn ge(self, value: impl Into<V::Scalar>) -> Filter<T> {
        self.compare(Op::Ge, vec![boxed(value.into())])
    }

    /// `column BETWEEN lo AND hi` (both ends included).
    pub fn between(self, lo: impl Into<V::Scalar>, hi: impl Into<V::Scalar>) -> Filter<T> {
        self.compare(Op::Between, vec![boxed(lo.into()), boxed(hi.into())])
    }

    /// `column = ANY($1)`: one array parameter, so the SQL text is the same
    /// for any number of values. An empty list matches no row.
    pub fn is_in<I>(self, values: I) -> Filter<T>
    where
        I: IntoIterator,
        I::Item: Into<V::Scalar>,
        V::Scalar: PgHasArrayType,
    {
        let values: Vec<V::Scalar> = values.into_iter().map(Into::into).collect();
        self.compare(Op::In, vec![boxed(values)])
    }

    /// The opposite of [`Column::is_in`]; like [`Column::ne`], it keeps the
    /// rows where a nullable column is NULL. An empty list matches every row.
    pub fn not_in<I>(self, values: I) -> Filter<T>
    where
        I: IntoIterator,
        I::Item: Into<V::Scalar>,
        V::Scalar: PgHasArrayType,
    {
        let values: Vec<V::Scalar> = values.into_iter().map(Into::into).collect();
        self.compare(Op::NotIn, vec![boxed(values)])
    }
}

impl<T, V: ColumnType, S> Column<T, V, S> {
    /// `column IN (SELECT parent_column FROM parent WHERE parent_filter)`
    /// (sent as `column = ANY(ARRAY(SELECT …))`, which the index on `column` serves):
    /// rows whose column (a foreign key, say) names a row of another
    /// record that matches a filter, in one statement. The two columns hold
    /// the same type (a nullable one counts as its inner type); a NULL
    /// column matches nothing.
    ///
    /// ```
    /// # use mandrake_storage::Record;
    /// # use chrono::{DateTime, Utc};
    /// # use uuid::Uuid;
    /// # #[derive(Record, Clone)]
    /// # pub struct Chat { pub id: Uuid, pub workspace: String,
    /// #   pub created_at: DateTime<Utc>, pub updated_at: DateTime<Utc> }
    /// # #[derive(Record, Clone)]
    /// # pub struct Line { pub id: Uuid, #[record(references = "chats")] pub chat_id: Uuid,
    /// #   pub created_at: DateTime<Utc>, pub updated_at: DateTime<Utc> }
    /// // The lines of this workspace's chats:
    /// let lines = Line::CHAT_ID.is_in_query(Chat::ID, Chat::WORKSPACE.eq("acme"));
    /// ```
    pub fn is_in_query<P: Record, W, PS>(
        self,
        parent_column: Column<P, W, PS>,
        parent_filter: Filter<P>,
    ) -> Filter<T>
    where
        W: ColumnType<Scalar = V::Scalar>,
    {
        self.related(Relation::InQuery, parent_column.index, parent_filter)
    }

    /// `EXISTS (SELECT 1 FROM child WHERE child.child_column = column AND
    /// child_filter)`: rows that another record's rows point at, among
    /// those matching a filter. The two columns hold the same type (a
    /// nullable one counts as its inner type).
    ///
    /// ```
    /// # use mandrake_storage::Record;
    /// # use chrono::{DateTime, Utc};
    /// # use uuid::Uuid;
    /// # #[derive(Record, Clone)]
    /// # pub struct Chat { pub id: Uuid,
    /// #   pub created_at: DateTime<Utc>, pub updated_at: DateTime<Utc> }
    /// # #[derive(Record, Clone)]
    /// # pub struct Call { pub id: Uuid, #[record(references = "chats")] pub chat_id: Option<Uuid>,
    /// #   pub error: Option<String>, pub created_at: DateTime<Utc>, pub updated_at: DateTime<Utc> }
    /// // Chats with a failed call:
    /// let failing = Chat::ID.referenced_by(Call::CHAT_ID, Call::ERROR.is_not_null());
    /// ```
    pub fn referenced_by<C: Record, W, CS>(
        self,
        child_column: Column<C, W, CS>,
        child_filter: Filter<C>,
    ) -> Filter<T>
    where
        W: ColumnType<Scalar = V::Scalar>,
    {
        self.related(Relation::ReferencedBy, child_column.index, child_filter)
    }

    fn related<O: Record>(
        self,
        kind: Relation,
        other_column: usize,
        other: Filter<O>,
    ) -> Filter<T> {
        Filter {
            node: Node::Related {
                column: self.index,
                kind,
                other: OtherTable(O::schema()),
                other_column,
                filter: Box::new(other.node),
            },
            values: other.values,
            _marker: PhantomData,
        }
    }
}

impl<T, X> Column<T, Option<X>> {
    /// `column IS NULL`; only on nullable (`Option`) columns.
    pub fn is_null(self) -> Filter<T> {
        self.compare(Op::IsNull, Vec::new())
    }

    /// `column IS NOT NULL`; only on nullable (`Option`) columns.
    pub fn is_not_null(self) -> Filter<T> {
        self.compare(Op::IsNotNull, Vec::new())
    }
}

/// Text columns: `String` and `Option<String>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a text column",
    note = "like, ilike, starts_with and contains_text work on String and Option<String> columns"
)]
pub trait TextColumn {}
impl TextColumn for String {}
impl TextColumn for Option<String> {}

/// JSON columns: `Json<_>`, `serde_json::Value`, and their `Option`s.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a JSON column",
    note = "json_contains works on Json<_> and serde_json::Value columns"
)]
pub trait JsonColumn {}
impl<J> JsonColumn for Json<J> {}
impl JsonColumn for serde_json::Value {}
impl<J: JsonColumn> JsonColumn for Option<J> {}

impl<T, V: TextColumn, S> Column<T, V, S> {
    /// `column LIKE pattern` (case-sensitive; `%` and `_` are wildcards).
    pub fn like(self, pattern: impl Into<String>) -> Filter<T> {
        self.compare(Op::Like, vec![boxed(pattern.into())])
    }

    /// `column ILIKE pattern` (case-insensitive; `%` and `_` are wildcards).
    pub fn ilike(self, pattern: impl Into<String>) -> Filter<T> {
        self.compare(Op::ILike, vec![boxed(pattern.into())])
    }

    /// The column starts with `prefix`, ignoring case. `prefix` matches
    /// literally: `%`, `_` and `\` in it are not wildcards.
    pub fn starts_with(self, prefix: &str) -> Filter<T> {
        self.ilike(format!("{}%", escape_like(prefix)))
    }

    /// The column contains `text`, ignoring case. `text` matches literally:
    /// `%`, `_` and `\` in it are not wildcards.
    pub fn contains_text(self, text: &str) -> Filter<T> {
        self.ilike(format!("%{}%", escape_like(text)))
    }

    /// Full-text search: the field matches `query`, read as a web search
    /// box reads it (`websearch_to_tsquery`): words are all required,
    /// `"quoted phrases"` keep their order, `or` between words, `-word`
    /// excludes. A query of only stop words or punctuation matches nothing.
    /// Served by the field's GIN index; only fields with `#[record(search)]`
    /// have it. A query past 10,000 characters is refused
    /// ([`crate::Error::InvalidValue`]).
    ///
    /// ```
    /// # use mandrake_storage::Record;
    /// # #[derive(Record, Clone)]
    /// # pub struct Note { pub id: uuid::Uuid,
    /// #   #[record(search = "english")] pub body: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// let filter = Note::BODY.matches(r#""connection pool" -pgbouncer"#);
    /// ```
    pub fn matches(self, query: &str) -> Filter<T>
    where
        S: Searchable,
    {
        let query = SearchQuery {
            text: query.to_owned(),
            column: self.name(),
        };
        self.compare(Op::Matches(self.config), vec![boxed(query)])
    }
}

impl<T, V: JsonColumn, S> Column<T, V, S> {
    /// `column @> value`: the JSON column contains `value` (JSONB containment).
    pub fn json_contains(self, value: impl serde::Serialize + Send + Sync + 'static) -> Filter<T> {
        self.compare(Op::JsonContains, vec![boxed(Json(value))])
    }
}

/// `%`, `_` and the escape character `\` made literal for LIKE.
pub(crate) fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A condition on the rows of record `T`: built from its columns, combined
/// with [`Filter::and`], [`Filter::or`] and [`Filter::not`] to any depth.
///
/// ```
/// # use mandrake_storage::{Filter, Record};
/// # use chrono::{DateTime, Utc};
/// # use uuid::Uuid;
/// # #[derive(Record, Clone)]
/// # pub struct Note { pub id: Uuid, pub title: Option<String>, pub stars: i32,
/// #   pub created_at: DateTime<Utc>, pub updated_at: DateTime<Utc> }
/// let good_or_untitled = Note::STARS.ge(4).or(Note::TITLE.is_null());
/// let everything = Filter::<Note>::all();
/// let not_spam = Note::TITLE.contains_text("100% free").not();
/// ```
pub struct Filter<T> {
    node: Node,
    /// Bound values, in the order the rendered SQL numbers them.
    values: Vec<Box<dyn Value>>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Filter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("shape", &self.node)
            .field("values", &self.values.len())
            .finish()
    }
}

impl<T> Default for Filter<T> {
    fn default() -> Self {
        Filter::all()
    }
}

impl<T> Filter<T> {
    /// Every row.
    pub fn all() -> Filter<T> {
        Filter {
            node: Node::All,
            values: Vec::new(),
            _marker: PhantomData,
        }
    }

    /// Rows matching both.
    pub fn and(self, other: Filter<T>) -> Filter<T> {
        self.join(other, true)
    }

    /// Rows matching either.
    pub fn or(self, other: Filter<T>) -> Filter<T> {
        self.join(other, false)
    }

    /// Rows not matching (also `!filter`).
    // An inherent method, so `a.not()` works without importing `std::ops::Not`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter<T> {
        Filter {
            node: Node::Not(Box::new(self.node)),
            values: self.values,
            _marker: PhantomData,
        }
    }

    fn join(mut self, other: Filter<T>, and: bool) -> Filter<T> {
        // `a.and(b).and(c)` is one AND of three, not a nest of two, and
        // `all()` drops out of an AND (it binds no value, so numbering holds).
        let mut parts = Vec::new();
        for node in [self.node, other.node] {
            match node {
                Node::All if and => {}
                Node::And(inner) if and => parts.extend(inner),
                Node::Or(inner) if !and => parts.extend(inner),
                other => parts.push(other),
            }
        }
        self.values.extend(other.values);
        let node = match parts.len() {
            0 => Node::All,
            1 => parts.pop().expect("one part"),
            _ if and => Node::And(parts),
            _ => Node::Or(parts),
        };
        Filter {
            node,
            values: self.values,
            _marker: PhantomData,
        }
    }

    /// The shape (what the SQL text depends on) and the values to bind.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    pub(crate) fn into_parts(self) -> (Node, Vec<Box<dyn Value>>) {
        (self.node, self.values)
    }

    pub(crate) fn from_parts(node: Node, values: Vec<Box<dyn Value>>) -> Filter<T> {
        Filter {
            node,
            values,
            _marker: PhantomData,
        }
    }
}

impl<T> std::ops::Not for Filter<T> {
    type Output = Filter<T>;
    fn not(self) -> Filter<T> {
        Filter::not(self)
    }
}

/// The shape of a filter: everything but its values.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Node {
    All,
    Compare {
        column: usize,
        op: Op,
    },
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    /// A comparison of the value at a path of keys in a JSON column
    /// (see [`crate::JsonPath`]), cast as the path reads it.
    Path {
        column: usize,
        keys: Vec<String>,
        cast: Option<&'static str>,
        op: Op,
    },
    /// A condition on another table's rows (see [`Relation`]).
    Related {
        column: usize,
        kind: Relation,
        other: OtherTable,
        other_column: usize,
        filter: Box<Node>,
    },
}

/// How a [`Node::Related`] ties this table's column to the other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Relation {
    /// `column IN (SELECT other_column FROM other WHERE …)`.
    InQuery,
    /// `EXISTS (SELECT 1 FROM other WHERE other_column = column AND …)`.
    ReferencedBy,
}

/// Another record's table, compared and hashed by address: each record's
/// schema is one static.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OtherTable(pub &'static TableSchema);

impl PartialEq for OtherTable {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.0, other.0)
    }
}
impl Eq for OtherTable {}
impl std::hash::Hash for OtherTable {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.0, state)
    }
}

#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Between,
    In,
    NotIn,
    IsNull,
    IsNotNull,
    Like,
    ILike,
    JsonContains,
    /// Full-text search in the given configuration.
    Matches(&'static str),
}

/// A value waiting to be bound.
pub(crate) trait Value: Send {
    fn bind(self: Box<Self>, args: &mut PgArguments) -> Result<(), BoxDynError>;
}

impl<V> Value for V
where
    V: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
{
    fn bind(self: Box<Self>, args: &mut PgArguments) -> Result<(), BoxDynError> {
        args.add(*self)
    }
}

fn boxed<V>(value: V) -> Box<dyn Value>
where
    V: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static,
{
    Box::new(value)
}

/// Binds `values` in order.
pub(crate) fn bind_all(
    values: Vec<Box<dyn Value>>,
    args: &mut PgArguments,
) -> Result<(), BoxDynError> {
    values.into_iter().try_for_each(|v| v.bind(args))
}

/// ` WHERE …` for `node` (nothing for [`Node::All`]); parameters are numbered
/// from `*param + 1` on, and `*param` is left at the last one used.
pub(crate) fn where_clause(schema: &TableSchema, node: &Node, param: &mut usize) -> String {
    match node {
        Node::All => String::new(),
        node => format!(" WHERE {}", condition(schema, node, param)),
    }
}

/// The SQL of one condition, identifiers from the schema, values as `$n`.
pub(crate) fn condition(schema: &TableSchema, node: &Node, param: &mut usize) -> String {
    condition_in(schema, node, param, true)
}

/// [`condition`] on a row that is not read from the table (the change
/// feed's rows, decoded from the WAL): no lookup narrows it, since a lookup
/// finds the table's rows as they are now, not as the change wrote them.
pub(crate) fn row_condition(schema: &TableSchema, node: &Node, param: &mut usize) -> String {
    condition_in(schema, node, param, false)
}

/// `c <op> $n` for the operators that read the same on a column and on an
/// expression (`nullable`: whether it can be NULL, which `ne` and `not_in`
/// count as a value unlike theirs).
fn compare_sql(c: &str, nullable: bool, op: &Op, next: &mut impl FnMut() -> String) -> String {
    match op {
        Op::Eq => format!("{c} = {}", next()),
        Op::Ne if nullable => format!("{c} IS DISTINCT FROM {}", next()),
        Op::Ne => format!("{c} <> {}", next()),
        Op::Lt => format!("{c} < {}", next()),
        Op::Le => format!("{c} <= {}", next()),
        Op::Gt => format!("{c} > {}", next()),
        Op::Ge => format!("{c} >= {}", next()),
        Op::Between => {
            let lo = next();
            format!("{c} BETWEEN {lo} AND {}", next())
        }
        Op::In => format!("{c} = ANY({})", next()),
        Op::NotIn if nullable => format!("({c} IS NULL OR {c} <> ALL({}))", next()),
        Op::NotIn => format!("{c} <> ALL({})", next()),
        Op::IsNull => format!("{c} IS NULL"),
        Op::IsNotNull => format!("{c} IS NOT NULL"),
        Op::Like => format!("{c} LIKE {}", next()),
        Op::ILike => format!("{c} ILIKE {}", next()),
        Op::JsonContains => format!("{c} @> {}", next()),
        Op::Matches(_) => unreachable!("a search names its field, never an expression"),
    }
}

/// [`condition`]; `narrow`: whether a search or pattern with a lookup is
/// narrowed by it ([`narrowed`]): not under `NOT`, where no index helps,
/// nor on rows that are not the table's ([`row_condition`]).
fn condition_in(schema: &TableSchema, node: &Node, param: &mut usize, narrow: bool) -> String {
    let mut next = || {
        *param += 1;
        format!("${param}")
    };
    match node {
        Node::All => "TRUE".into(),
        Node::Path {
            column,
            keys,
            cast,
            op,
        } => {
            let c = path_sql(&quote_ident(&schema.columns[*column].name), keys, *cast);
            compare_sql(&c, true, op, &mut next)
        }
        Node::Compare { column, op } => {
            let def = &schema.columns[*column];
            let c = quote_ident(&def.name);
            match op {
                Op::Like | Op::ILike => {
                    let pattern = next();
                    let (operator, ignore_case) = match op {
                        Op::ILike => ("ILIKE", true),
                        _ => ("LIKE", false),
                    };
                    let found = format!("{c} {operator} {pattern}");
                    let lookup = schema.lookup(&def.name, LookupKind::Like);
                    let arguments = format!("{pattern}, {ignore_case}");
                    narrowed(lookup.filter(|_| narrow), &arguments, found)
                }
                Op::Matches(config) => {
                    let query = tsquery(config, &next());
                    let vector = quote_ident(&crate::schema::search_vector(&def.name));
                    let found = format!("{vector} @@ {query}");
                    let lookup = schema.lookup(&def.name, LookupKind::Matches);
                    narrowed(lookup.filter(|_| narrow), &query, found)
                }
                op => compare_sql(&c, def.nullable, op, &mut next),
            }
        }
        Node::And(parts) | Node::Or(parts) => {
            let joiner = if matches!(node, Node::And(_)) {
                " AND "
            } else {
                " OR "
            };
            let parts: Vec<String> = parts
                .iter()
                .map(|p| condition_in(schema, p, param, narrow))
                .collect();
            format!("({})", parts.join(joiner))
        }
        Node::Not(inner) => format!("NOT {}", wrapped(condition_in(schema, inner, param, false))),
        Node::Related {
            column,
            kind,
            other: OtherTable(other),
            other_column,
            filter,
        } => {
            let c = quote_ident(&schema.columns[*column].name);
            let o = quote_ident(&other.columns[*other_column].name);
            let table = crate::sql::quote_table(&other.name);
            // Unqualified names inside resolve to the other table first.
            let inner = match filter.as_ref() {
                Node::All => None,
                node => Some(condition_in(other, node, param, narrow)),
            };
            match kind {
                // The other table's values, gathered once (an InitPlan), are
                // an array the index on `column` is searched with, as for
                // `is_in`: as `IN (SELECT …)` the planner took a hash join
                // over the whole table, 6.6× slower for a page (see the
                // analytics bench in BENCHMARKS.md).
                Relation::InQuery => format!(
                    "{c} = ANY(ARRAY(SELECT {o} FROM {table}{}))",
                    inner.map(|i| format!(" WHERE {i}")).unwrap_or_default()
                ),
                Relation::ReferencedBy => format!(
                    "EXISTS (SELECT 1 FROM {table} AS __other WHERE __other.{o} = {}.{c}{})",
                    quote_ident(&schema.name),
                    inner.map(|i| format!(" AND {i}")).unwrap_or_default()
                ),
            }
        }
    }
}

/// `found`, first narrowed to the rows `lookup` finds with `arguments`
/// when there is one: the ids come from the column's index, computed once
/// (an InitPlan), and the primary key fetches their rows. `found` is still
/// checked, so the lookup only ever narrows (see [`crate::schema::Lookup`]).
pub(crate) fn narrowed(lookup: Option<&Lookup>, arguments: &str, found: String) -> String {
    match lookup {
        Some(lookup) => format!(
            "(\"id\" = ANY(ARRAY(SELECT {}({arguments}))) AND {found})",
            crate::schema::ddl::lookup_function(lookup)
        ),
        None => found,
    }
}

/// `websearch_to_tsquery('<config>'::regconfig, <param>)`: the query a
/// search box means (phrases in quotes, `or`, `-word`), never a syntax error.
pub(crate) fn tsquery(config: &str, param: &str) -> String {
    format!(
        "websearch_to_tsquery({}::regconfig, {param})",
        crate::sql::quote_literal(config)
    )
}

fn wrapped(sql: String) -> String {
    if sql.starts_with('(') && sql.ends_with(')') {
        sql
    } else {
        format!("({sql})")
    }
}

/// The longest full-text query accepted, in characters. PostgreSQL evaluates
/// a query's words as one nested condition, and a long enough query (about
/// 200,000 characters) exhausts its stack ("stack depth limit exceeded");
/// 10,000 is far past any search box and far below that.
pub const MAX_SEARCH_QUERY_CHARS: usize = 10_000;

/// A full-text query as it is bound: one longer than
/// [`MAX_SEARCH_QUERY_CHARS`] is refused before the server sees it, as
/// [`crate::Error::InvalidValue`] naming the field.
#[derive(Debug, Clone)]
pub(crate) struct SearchQuery {
    pub(crate) text: String,
    pub(crate) column: &'static str,
}

impl Type<Postgres> for SearchQuery {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for SearchQuery {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, BoxDynError> {
        if self.text.chars().count() > MAX_SEARCH_QUERY_CHARS {
            return Err(Box::new(crate::record::column::InvalidValue {
                column: self.column,
                reason: "a search query is at most 10,000 characters (MAX_SEARCH_QUERY_CHARS)",
            }));
        }
        <String as Encode<Postgres>>::encode_by_ref(&self.text, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnDef;

    struct T;

    fn schema() -> TableSchema {
        TableSchema::new("t")
            .with_column(ColumnDef::new("a", "INTEGER"))
            .with_column(ColumnDef::new("b", "TEXT").nullable(true))
    }

    const A: Column<T, i32> = Column::new("a", 0);
    const B: Column<T, Option<String>> = Column::new("b", 1);

    fn sql(filter: Filter<T>) -> (String, usize) {
        let (node, values) = filter.into_parts();
        let mut param = 0;
        let text = where_clause(&schema(), &node, &mut param);
        assert_eq!(param, values.len(), "one parameter per value");
        (text, values.len())
    }

    #[test]
    fn nesting_gets_its_parentheses_and_numbers_in_order() {
        let f = A
            .eq(1)
            .and(B.is_null().or(B.ne("x")))
            .and(A.between(2, 3).not());
        assert_eq!(
            sql(f).0,
            r#" WHERE ("a" = $1 AND ("b" IS NULL OR "b" IS DISTINCT FROM $2) AND NOT ("a" BETWEEN $3 AND $4))"#
        );
        assert_eq!(sql(Filter::all()).0, "");
        assert_eq!(sql(A.is_in([1, 2, 3])).0, r#" WHERE "a" = ANY($1)"#);
        assert_eq!(
            sql(B.not_in(Vec::<String>::new())).0,
            r#" WHERE ("b" IS NULL OR "b" <> ALL($1))"#
        );
    }

    #[test]
    fn the_shape_ignores_values_and_list_lengths() {
        let shape = |f: Filter<T>| f.into_parts().0;
        assert_eq!(shape(A.is_in([1])), shape(A.is_in(0..10_000)));
        assert_eq!(shape(A.eq(1).and(B.eq("x"))), shape(A.eq(2).and(B.eq("y"))));
        assert_ne!(shape(A.eq(1).and(B.eq("x"))), shape(A.eq(1).or(B.eq("x"))));
    }

    #[test]
    fn like_input_is_escaped_to_match_literally() {
        assert_eq!(escape_like(r"100%_\x"), r"100\%\_\\x");
    }
}
