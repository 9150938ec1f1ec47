//! Which Rust types map to which SQL column types.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgHasArrayType, PgRow};
use sqlx::types::Json;
use sqlx::{Arguments, Column, Decode, Encode, Postgres, Row, Type, ValueRef};
use uuid::Uuid;

/// A Rust type that can be a column of a `#[derive(Record)]` struct.
///
/// Implemented for the supported field types and, through
/// `#[derive(RecordEnum)]`, for enums. Any other type needs
/// `#[record(sql_type = "…")]` on the field.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no SQL column type",
    label = "unsupported field type",
    note = "add `#[record(sql_type = \"<SQL type>\")]` to the field, or `#[derive(RecordEnum)]` to an enum"
)]
pub trait ColumnType:
    for<'q> Encode<'q, Postgres>
    + for<'r> Decode<'r, Postgres>
    + Type<Postgres>
    + Send
    + Sized
    + 'static
{
    /// The column type in DDL.
    const SQL_TYPE: &'static str;
    /// `Option<T>` columns are nullable; everything else is NOT NULL.
    const NULLABLE: bool = false;
    /// For enums: the values a CHECK constraint allows.
    const VALUES: &'static [&'static str] = &[];
    /// How one value travels inside the array that `create_many` binds
    /// (`UNNEST($1::<type>[], …)`): the value itself for most types.
    type Cell: for<'q> Encode<'q, Postgres> + Type<Postgres> + PgHasArrayType + Send;
    /// Converts a value for the `create_many` array; `None` is SQL NULL.
    fn into_cell(self) -> Option<Self::Cell>;
    /// What a filter compares this column with: the type itself, and for an
    /// `Option<X>` column, `X` (`Message::TITLE.eq("x")`).
    type Scalar: for<'q> Encode<'q, Postgres> + Type<Postgres> + Send + 'static;
    /// Why the database would refuse this value, checked before it is sent
    /// so that the error can name the column.
    fn invalid(&self) -> Option<&'static str> {
        None
    }
    /// Reads this type from column `index` of `row`. Integers also read a
    /// narrower integer column (an `i64` field an `INTEGER`), so that a
    /// binary whose field is already wider runs against the table before an
    /// `integer → bigint` change has switched it.
    fn decode_at(row: &PgRow, index: usize) -> Result<Self, sqlx::Error> {
        row.try_get(index)
    }
}

const NUL_IN_TEXT: &str = "text cannot contain the NUL character (\\0)";

/// Binding found a value the column cannot store; the repository turns it
/// into [`crate::Error::InvalidValue`].
#[derive(Debug)]
pub(crate) struct InvalidValue {
    pub column: &'static str,
    pub reason: &'static str,
}

impl std::fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid value for column {}: {}",
            self.column, self.reason
        )
    }
}

impl std::error::Error for InvalidValue {}

fn check<T: ColumnType>(value: &T, column: &'static str) -> Result<(), BoxDynError> {
    match value.invalid() {
        Some(reason) => Err(Box::new(InvalidValue { column, reason })),
        None => Ok(()),
    }
}

/// Two columns' values (their inner type, for a nullable one) are of one
/// type: a join's keys must be, and the compiler says so in these words.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "a join's keys hold different types: the left one `{Other}`, the right one `{Self}`",
    label = "this key holds `{Self}`, the left key `{Other}`",
    note = "join a column of the left record with a column of the right that holds the same type (a nullable column counts as its inner type)"
)]
pub trait SameValues<Other> {}

impl<T> SameValues<T> for T {}

/// `T` itself, when `T` is a [`ColumnType`]. The derive names every field
/// type through this, so an unsupported type is reported once, at its field.
#[doc(hidden)]
pub trait ColumnTypeOf {
    type Type: ColumnType;
}

impl<T: ColumnType> ColumnTypeOf for T {
    type Type = T;
}

/// The plain column types. An integer type `reads (…)` the narrower integer
/// columns too (see [`ColumnType::decode_at`]).
macro_rules! scalar_columns {
    ($($ty:ty => $sql:literal $(reads ($($narrow:ty),+))?),* $(,)?) => {$(
        impl ColumnType for $ty {
            const SQL_TYPE: &'static str = $sql;
            type Cell = Self;
            type Scalar = Self;
            fn into_cell(self) -> Option<Self> {
                Some(self)
            }
            $(fn decode_at(row: &PgRow, index: usize) -> Result<Self, sqlx::Error> {
                let stored = row.try_column(index)?.type_info();
                $(if *stored == <$narrow as Type<Postgres>>::type_info() {
                    return row.try_get::<$narrow, _>(index).map(<$ty>::from);
                })+
                row.try_get(index)
            })?
        }
    )*};
}

scalar_columns! {
    Uuid => "UUID",
    bool => "BOOLEAN",
    i16 => "SMALLINT",
    i32 => "INTEGER" reads (i16),
    i64 => "BIGINT" reads (i32, i16),
    f32 => "REAL",
    f64 => "DOUBLE PRECISION",
    DateTime<Utc> => "TIMESTAMPTZ",
    NaiveDate => "DATE",
    serde_json::Value => "JSONB",
    Vec<u8> => "BYTEA",
}

impl ColumnType for String {
    const SQL_TYPE: &'static str = "TEXT";
    type Cell = Self;
    type Scalar = Self;
    fn into_cell(self) -> Option<Self> {
        Some(self)
    }
    fn invalid(&self) -> Option<&'static str> {
        self.contains('\0').then_some(NUL_IN_TEXT)
    }
}

impl<T> ColumnType for Json<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    const SQL_TYPE: &'static str = "JSONB";
    type Cell = Self;
    type Scalar = Self;
    fn into_cell(self) -> Option<Self> {
        Some(self)
    }
}

/// `Vec<String>` is `TEXT[]`. PostgreSQL has no arrays of arrays with
/// different lengths, so in `create_many` each array travels as its text
/// literal (`{"a","b"}`) and is cast back.
impl ColumnType for Vec<String> {
    const SQL_TYPE: &'static str = "TEXT[]";
    type Cell = String;
    type Scalar = Self;
    fn into_cell(self) -> Option<String> {
        let items: Vec<String> = self
            .iter()
            .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        Some(format!("{{{}}}", items.join(",")))
    }
    fn invalid(&self) -> Option<&'static str> {
        self.iter().find_map(|s| s.invalid())
    }
}

impl<T: ColumnType> ColumnType for Option<T> {
    const SQL_TYPE: &'static str = T::SQL_TYPE;
    const NULLABLE: bool = true;
    const VALUES: &'static [&'static str] = T::VALUES;
    type Cell = T::Cell;
    type Scalar = T;
    fn into_cell(self) -> Option<T::Cell> {
        self.and_then(T::into_cell)
    }
    fn invalid(&self) -> Option<&'static str> {
        self.as_ref().and_then(T::invalid)
    }
    fn decode_at(row: &PgRow, index: usize) -> Result<Self, sqlx::Error> {
        if row.try_get_raw(index)?.is_null() {
            return Ok(None);
        }
        T::decode_at(row, index).map(Some)
    }
}

/// `T::SQL_TYPE`, `T::NULLABLE` and `T::VALUES` as functions: what the
/// derive calls (see [`ColumnTypeOf`]).
#[doc(hidden)]
pub fn column_sql_type<T: ColumnType>() -> &'static str {
    T::SQL_TYPE
}

/// A column type whose large values PostgreSQL stores out of line and can
/// compress (TOAST): text, bytes, JSON and arrays.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is never compressed: PostgreSQL stores it inline",
    label = "`compression` is for a field of text, bytes, JSON or an array",
    note = "remove `compression` from this field"
)]
pub trait Compressible {}
impl Compressible for String {}
impl Compressible for Vec<u8> {}
impl<J> Compressible for sqlx::types::Json<J> {}
impl Compressible for serde_json::Value {}
impl<T: Compressible> Compressible for Option<T> {}
impl Compressible for Vec<String> {}

/// Checks at compile time that `T` can be compressed (see [`Compressible`]).
#[doc(hidden)]
pub const fn compressible<T: Compressible>() {}

#[doc(hidden)]
pub fn column_nullable<T: ColumnType>() -> bool {
    T::NULLABLE
}

#[doc(hidden)]
pub fn column_values<T: ColumnType>() -> &'static [&'static str] {
    T::VALUES
}

/// An empty `create_many` array for a column of type `T`.
#[doc(hidden)]
pub fn cells<T: ColumnType>(rows: usize) -> Vec<Option<T::Cell>> {
    Vec::with_capacity(rows)
}

/// Appends `value.into_cell()` to a `create_many` array, once `value` is
/// checked for `column`.
#[doc(hidden)]
pub fn push_cell<T: ColumnType>(
    cells: &mut Vec<Option<T::Cell>>,
    value: T,
    column: &'static str,
) -> Result<(), BoxDynError> {
    check(&value, column)?;
    cells.push(value.into_cell());
    Ok(())
}

/// Reads column `index` of `row`; what the derive calls, so that an
/// unsupported field type fails with `ColumnType`'s message alone.
#[doc(hidden)]
pub fn decode_column<T: ColumnType>(row: &PgRow, index: usize) -> Result<T, sqlx::Error> {
    T::decode_at(row, index)
}

/// Binds `value` for `column` as the next parameter (see [`decode_column`]).
#[doc(hidden)]
pub fn bind_column<T: ColumnType>(
    args: &mut PgArguments,
    value: T,
    column: &'static str,
) -> Result<(), BoxDynError> {
    check(&value, column)?;
    args.add(value)
}

/// A Rust enum stored as TEXT limited by a CHECK; implemented by
/// `#[derive(RecordEnum)]`.
///
/// ```
/// use mandrake_storage::RecordEnum;
///
/// #[derive(RecordEnum, Debug, Clone, Copy, PartialEq, Eq)]
/// enum Role {
///     User,
///     Assistant,
///     #[record(rename = "sys")]
///     System,
/// }
///
/// assert_eq!(Role::VALUES, &["user", "assistant", "sys"]);
/// assert_eq!(Role::System.as_str(), "sys");
/// assert_eq!(Role::parse("assistant"), Some(Role::Assistant));
/// ```
pub trait RecordEnum: Sized + 'static {
    /// The stored spelling of every variant, in declaration order.
    const VALUES: &'static [&'static str];
    /// The stored spelling of this variant.
    fn as_str(&self) -> &'static str;
    /// The variant stored as `value`.
    fn parse(value: &str) -> Option<Self>;
}

/// Support for the code `#[derive(RecordEnum)]` emits.
#[doc(hidden)]
pub mod enum_support {
    use sqlx::error::BoxDynError;
    use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
    use sqlx::{Decode, Encode, Postgres, Type, encode::IsNull};

    use super::RecordEnum;

    pub fn type_info() -> PgTypeInfo {
        <String as Type<Postgres>>::type_info()
    }

    pub fn compatible(ty: &PgTypeInfo) -> bool {
        <String as Type<Postgres>>::compatible(ty)
    }

    pub fn array_type_info() -> PgTypeInfo {
        <Vec<String> as Type<Postgres>>::type_info()
    }

    pub fn encode<E: RecordEnum>(
        value: &E,
        buf: &mut PgArgumentBuffer,
    ) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(value.as_str(), buf)
    }

    pub fn decode<E: RecordEnum>(value: PgValueRef<'_>) -> Result<E, BoxDynError> {
        let text = <&str as Decode<Postgres>>::decode(value)?;
        E::parse(text).ok_or_else(|| {
            format!(
                "{text:?} is not one of {:?} ({})",
                E::VALUES,
                std::any::type_name::<E>()
            )
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_become_literals() {
        let v = vec![
            "a b".to_owned(),
            "q\"uote".to_owned(),
            "back\\slash".to_owned(),
        ];
        assert_eq!(v.into_cell().unwrap(), r#"{"a b","q\"uote","back\\slash"}"#);
    }
}
