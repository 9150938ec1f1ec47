//! Values inside a JSON column, reached by a path of keys: `ToolResult::
//! OUTPUT.at("status")` is the text at `output -> 'status'`, and
//! `.at_i64("exit_code")` the number there, compared as a `bigint`. They
//! filter as columns do.
//!
//! The keys are written into the SQL as literals, not bound, so that an
//! expression index on the same path (`index(expr = "(output ->> 'status')")`)
//! serves the filter; the compared values are bound as always.

use std::marker::PhantomData;

use sqlx::postgres::PgHasArrayType;
use sqlx::{Encode, Postgres, Type};

use crate::query::filter::{Column, Filter, JsonColumn, Node, Op, Value};

/// What a path's value is read as: text (`->>`), or text cast to a number or
/// a boolean. A value of another JSON type there makes the cast, and the
/// statement, fail (SQLSTATE 22P02): filter on text where the type varies.
pub trait PathValue: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static {
    /// The cast after `->>`, if any.
    #[doc(hidden)]
    const CAST: Option<&'static str>;
}

impl PathValue for String {
    const CAST: Option<&'static str> = None;
}
impl PathValue for i64 {
    const CAST: Option<&'static str> = Some("bigint");
}
impl PathValue for f64 {
    const CAST: Option<&'static str> = Some("double precision");
}
impl PathValue for bool {
    const CAST: Option<&'static str> = Some("boolean");
}

/// The value at a path of keys inside a JSON column of `T`, read as `V`.
/// Missing keys and JSON `null` read as SQL NULL.
///
/// ```
/// # use mandrake_storage::Record;
/// # use mandrake_storage::sqlx::types::Json;
/// # #[derive(Record, Clone)]
/// # pub struct Call { pub id: uuid::Uuid, pub output: Json<serde_json::Value>,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// // Failed calls whose exit code was not 0, and those that read a README:
/// let failed = Call::OUTPUT.at("status").eq("failed").and(Call::OUTPUT.at_i64("exit_code").ne(0));
/// let readme = Call::OUTPUT.at("args").at("path").ends_with_text("README.md");
/// ```
pub struct JsonPath<T, V> {
    column: usize,
    keys: Vec<String>,
    _marker: PhantomData<fn() -> (T, V)>,
}

impl<T, V: JsonColumn, S> Column<T, V, S> {
    /// The text at key `key` of this JSON column (`column ->> 'key'`).
    pub fn at(self, key: &str) -> JsonPath<T, String> {
        JsonPath::new(self.index(), vec![key.to_owned()])
    }

    /// The number at key `key`, as a `bigint`.
    pub fn at_i64(self, key: &str) -> JsonPath<T, i64> {
        JsonPath::new(self.index(), vec![key.to_owned()])
    }

    /// The number at key `key`, as a `double precision`.
    pub fn at_f64(self, key: &str) -> JsonPath<T, f64> {
        JsonPath::new(self.index(), vec![key.to_owned()])
    }

    /// The boolean at key `key`.
    pub fn at_bool(self, key: &str) -> JsonPath<T, bool> {
        JsonPath::new(self.index(), vec![key.to_owned()])
    }
}

impl<T, V> JsonPath<T, V> {
    fn new(column: usize, keys: Vec<String>) -> Self {
        JsonPath {
            column,
            keys,
            _marker: PhantomData,
        }
    }

    fn deeper<W>(mut self, key: &str) -> JsonPath<T, W> {
        self.keys.push(key.to_owned());
        JsonPath::new(self.column, self.keys)
    }

    /// The text at key `key` under this path (`a -> 'b' ->> 'key'`).
    pub fn at(self, key: &str) -> JsonPath<T, String> {
        self.deeper(key)
    }

    /// The number at key `key` under this path, as a `bigint`.
    pub fn at_i64(self, key: &str) -> JsonPath<T, i64> {
        self.deeper(key)
    }

    /// The number at key `key` under this path, as a `double precision`.
    pub fn at_f64(self, key: &str) -> JsonPath<T, f64> {
        self.deeper(key)
    }

    /// The boolean at key `key` under this path.
    pub fn at_bool(self, key: &str) -> JsonPath<T, bool> {
        self.deeper(key)
    }
}

impl<T, V: PathValue> JsonPath<T, V> {
    fn compare(self, op: Op, values: Vec<Box<dyn Value>>) -> Filter<T> {
        Filter::from_parts(
            Node::Path {
                column: self.column,
                keys: self.keys,
                cast: V::CAST,
                op,
            },
            values,
        )
    }

    /// The value is `value`.
    pub fn eq(self, value: impl Into<V>) -> Filter<T> {
        self.compare(Op::Eq, vec![Box::new(value.into())])
    }

    /// The value is not `value`; a missing one counts as not `value`
    /// (`IS DISTINCT FROM`).
    pub fn ne(self, value: impl Into<V>) -> Filter<T> {
        self.compare(Op::Ne, vec![Box::new(value.into())])
    }

    /// The value is below `value`.
    pub fn lt(self, value: impl Into<V>) -> Filter<T> {
        self.compare(Op::Lt, vec![Box::new(value.into())])
    }

    /// The value is at most `value`.
    pub fn le(self, value: impl Into<V>) -> Filter<T> {
        self.compare(Op::Le, vec![Box::new(value.into())])
    }

    /// The value is above `value`.
    pub fn gt(self, value: impl Into<V>) -> Filter<T> {
        self.compare(Op::Gt, vec![Box::new(value.into())])
    }

    /// The value is at least `value`.
    pub fn ge(self, value: impl Into<V>) -> Filter<T> {
        self.compare(Op::Ge, vec![Box::new(value.into())])
    }

    /// The value is one of `values` (one array parameter).
    pub fn is_in<I>(self, values: I) -> Filter<T>
    where
        I: IntoIterator,
        I::Item: Into<V>,
        V: PgHasArrayType,
    {
        let values: Vec<V> = values.into_iter().map(Into::into).collect();
        self.compare(Op::In, vec![Box::new(values)])
    }

    /// The key is missing, or holds JSON `null`.
    pub fn is_null(self) -> Filter<T> {
        self.compare(Op::IsNull, Vec::new())
    }

    /// The key is there with a value other than JSON `null`.
    pub fn is_not_null(self) -> Filter<T> {
        self.compare(Op::IsNotNull, Vec::new())
    }
}

impl<T> JsonPath<T, String> {
    /// The text contains `text`, ignoring case; `%`, `_` and `\` in it
    /// match literally.
    pub fn contains_text(self, text: &str) -> Filter<T> {
        let pattern = format!("%{}%", crate::query::filter::escape_like(text));
        self.compare(Op::ILike, vec![Box::new(pattern)])
    }

    /// The text ends with `suffix`, ignoring case, matched literally.
    pub fn ends_with_text(self, suffix: &str) -> Filter<T> {
        let pattern = format!("%{}", crate::query::filter::escape_like(suffix));
        self.compare(Op::ILike, vec![Box::new(pattern)])
    }

    /// `text LIKE pattern` (case-sensitive; `%` and `_` are wildcards).
    pub fn like(self, pattern: impl Into<String>) -> Filter<T> {
        self.compare(Op::Like, vec![Box::new(pattern.into())])
    }
}
