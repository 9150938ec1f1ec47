//! Orders, pages and keyset cursors for `list`.
//!
//! Every listing is ordered by its columns and then by `id`, so each row has
//! a unique position and a cursor (the position of a page's last row) resumes
//! exactly, in any mix of directions and with nullable columns (NULLs sort
//! last, ascending or descending).

use std::marker::PhantomData;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgRow, PgTypeInfo};
use sqlx::{Encode, Postgres, Row, Type, ValueRef as _};

use crate::error::{Error, Result};
use crate::schema::TableSchema;
use crate::sql::quote_ident;

/// One column of an ordering, from [`crate::Column::asc`] or
/// [`crate::Column::desc`].
pub struct Order<T> {
    column: usize,
    descending: bool,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Order<T> {
    pub(crate) fn new(column: usize, descending: bool) -> Order<T> {
        Order {
            column,
            descending,
            _marker: PhantomData,
        }
    }

    pub(crate) fn column(&self) -> usize {
        self.column
    }

    pub(crate) fn is_descending(&self) -> bool {
        self.descending
    }
}

impl<T> Clone for Order<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Order<T> {}

impl<T> std::fmt::Debug for Order<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = if self.descending { "desc" } else { "asc" };
        write!(f, "Order(column {} {dir})", self.column)
    }
}

/// Order, size and position of a `list` call.
///
/// ```
/// # use mandrake_storage::{ListOptions, Record};
/// # use chrono::{DateTime, Utc};
/// # use uuid::Uuid;
/// # #[derive(Record, Clone)]
/// # pub struct Note { pub id: Uuid, pub title: Option<String>, pub stars: i32,
/// #   pub created_at: DateTime<Utc>, pub updated_at: DateTime<Utc> }
/// let best_first = ListOptions::new()
///     .order_by(Note::STARS.desc())
///     .then_by(Note::TITLE.asc())
///     .limit(50);
/// ```
pub struct ListOptions<T> {
    order: Vec<(usize, bool)>,
    limit: Option<u32>,
    offset: Option<u64>,
    after: Option<Cursor>,
    _marker: PhantomData<fn() -> T>,
}

impl<T> Clone for ListOptions<T> {
    fn clone(&self) -> Self {
        ListOptions {
            order: self.order.clone(),
            limit: self.limit,
            offset: self.offset,
            after: self.after.clone(),
            _marker: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for ListOptions<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListOptions")
            .field("order", &self.order)
            .field("limit", &self.limit)
            .field("offset", &self.offset)
            .field("after", &self.after)
            .finish()
    }
}

impl<T> Default for ListOptions<T> {
    fn default() -> Self {
        ListOptions {
            order: Vec::new(),
            limit: None,
            offset: None,
            after: None,
            _marker: PhantomData,
        }
    }
}

impl<T> ListOptions<T> {
    /// Oldest first (`created_at`, then `id`), no limit.
    pub fn new() -> ListOptions<T> {
        ListOptions::default()
    }

    /// Order by this column first (replacing any order set before).
    pub fn order_by(mut self, order: Order<T>) -> Self {
        self.order = vec![(order.column, order.descending)];
        self
    }

    /// Then by this column, for rows equal in the columns before it.
    pub fn then_by(mut self, order: Order<T>) -> Self {
        self.order.push((order.column, order.descending));
        self
    }

    /// At most `limit` rows per page (for `load_by`: per parent).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Skip the first `offset` rows (offset pages; cursors are cheaper on
    /// deep pages and stable while rows are added).
    pub fn offset(mut self, offset: u64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Continue after the page that returned `cursor` (`page.next`).
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// Continue after `cursor` when there is one.
    pub fn after_opt(mut self, cursor: Option<Cursor>) -> Self {
        self.after = cursor;
        self
    }

    pub(crate) fn limit_value(&self) -> Option<u32> {
        self.limit
    }

    pub(crate) fn offset_value(&self) -> Option<u64> {
        self.offset
    }

    pub(crate) fn cursor(&self) -> Option<&Cursor> {
        self.after.as_ref()
    }

    /// The full ordering: the columns asked for (`created_at` when none),
    /// then `id` in the direction of the last one, unless `id` is there.
    pub(crate) fn keys(&self, schema: &TableSchema) -> Vec<(usize, bool)> {
        let position = |name: &str| {
            schema
                .columns
                .iter()
                .position(|c| c.name == name)
                .expect("every record has id and created_at")
        };
        let mut keys = self.order.clone();
        if keys.is_empty() {
            keys.push((position("created_at"), false));
        }
        let id = position("id");
        if !keys.iter().any(|(c, _)| *c == id) {
            let last_descending = keys.last().is_some_and(|(_, d)| *d);
            keys.push((id, last_descending));
        }
        keys
    }
}

/// One page of a `list`; `next` continues after it, `None` on the last page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The rows of this page, in order.
    pub items: Vec<T>,
    /// The cursor for the page after this one.
    pub next: Option<Cursor>,
}

/// One key of an ordering as the SQL and the cursor see it: a column of a
/// table, or of one side of a join.
#[derive(Debug, Clone)]
pub(crate) struct SortKey {
    /// Its name in a cursor: `name`, or `alias.name` in a join.
    pub(crate) label: String,
    /// The quoted column, qualified in a join.
    pub(crate) sql: String,
    pub(crate) sql_type: String,
    /// Whether it can be NULL (NULLs sort last either way).
    pub(crate) nullable: bool,
    pub(crate) descending: bool,
    /// Its place among the columns a row is read back with.
    pub(crate) at: usize,
}

impl SortKey {
    /// The keys of a listing of one table, its columns read in order.
    pub(crate) fn of(schema: &TableSchema, keys: &[(usize, bool)]) -> Vec<SortKey> {
        keys.iter()
            .map(|&(c, descending)| {
                let def = &schema.columns[c];
                SortKey {
                    label: def.name.clone(),
                    sql: quote_ident(&def.name),
                    sql_type: def.sql_type.clone(),
                    nullable: def.nullable,
                    descending,
                    at: c,
                }
            })
            .collect()
    }

    fn name(&self) -> String {
        format!("{}{}", if self.descending { "-" } else { "" }, self.label)
    }
}

/// ` ORDER BY …` for `keys`.
pub(crate) fn order_by(keys: &[SortKey]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .map(|key| {
            let dir = if key.descending { "DESC" } else { "ASC" };
            // NOT NULL columns keep the plain form, which an index serves.
            let nulls = if key.nullable { " NULLS LAST" } else { "" };
            format!("{} {dir}{nulls}", key.sql)
        })
        .collect();
    format!(" ORDER BY {}", parts.join(", "))
}

/// The rows after a cursor's position, its values bound as `$n::type` from
/// `*param + 1` on.
pub(crate) fn after_condition(keys: &[SortKey], param: &mut usize) -> String {
    let bound: Vec<String> = keys
        .iter()
        .map(|key| {
            *param += 1;
            format!("${param}::{}", key.sql_type)
        })
        .collect();
    let uniform = keys
        .iter()
        .all(|k| !k.nullable && k.descending == keys[0].descending);
    if uniform {
        // One row comparison, which an index on these columns serves.
        let cmp = if keys[0].descending { "<" } else { ">" };
        let cols: Vec<&str> = keys.iter().map(|k| k.sql.as_str()).collect();
        return format!("({}) {cmp} ({})", cols.join(", "), bound.join(", "));
    }
    // Mixed directions or nullable columns: after in the first key, or equal
    // in it and after in the next, and so on.
    let terms: Vec<String> = (0..keys.len())
        .map(|j| {
            let mut parts: Vec<String> = (0..j)
                .map(|i| {
                    let key = &keys[i];
                    if key.nullable {
                        format!("{} IS NOT DISTINCT FROM {}", key.sql, bound[i])
                    } else {
                        format!("{} = {}", key.sql, bound[i])
                    }
                })
                .collect();
            let key = &keys[j];
            let cmp = if key.descending { "<" } else { ">" };
            let (col, value) = (&key.sql, &bound[j]);
            parts.push(if key.nullable {
                format!("({value} IS NOT NULL AND ({col} {cmp} {value} OR {col} IS NULL))")
            } else {
                format!("{col} {cmp} {value}")
            });
            format!("({})", parts.join(" AND "))
        })
        .collect();
    format!("({})", terms.join(" OR "))
}

/// The error of a page's statement. After a cursor (`after`), its values
/// are the only ones not encoded by us, so a data exception means the
/// cursor is bad, not the table.
pub(crate) fn page_error(after: bool, error: sqlx::Error) -> Error {
    let error = Error::from(error);
    match error.sqlstate() {
        Some(code) if after && (code.starts_with("22") || code == "08P01") => {
            Error::InvalidCursor(format!("its position does not fit the columns ({error})"))
        }
        _ => error,
    }
}

/// The page of `rows`, read by `decode`: a statement that asks for one row
/// more than `limit` learns from it that another page follows, and then
/// the cursor is the position of the last row shown, in the order `keys`
/// gives (made only then).
pub(crate) fn page_of<I>(
    rows: &[PgRow],
    limit: Option<usize>,
    keys: impl FnOnce() -> Vec<SortKey>,
    decode: impl Fn(&PgRow) -> Result<I>,
) -> Result<Page<I>> {
    let shown = limit.map_or(rows.len(), |n| rows.len().min(n));
    let items = rows[..shown]
        .iter()
        .map(decode)
        .collect::<Result<Vec<I>>>()?;
    let next = match (rows.len() > shown, shown.checked_sub(1)) {
        (true, Some(last)) => Some(Cursor::at_row(&keys(), &rows[last])?),
        _ => None,
    };
    Ok(Page { items, next })
}

/// An opaque position in a listing: pass it to [`ListOptions::after`]. It
/// names the order it belongs to and carries a checksum, so a cursor that was
/// edited or comes from another order is an [`Error::InvalidCursor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

#[derive(serde::Serialize, serde::Deserialize)]
struct Position {
    /// `name` or `-name` (descending) per key.
    order: Vec<String>,
    /// Each key's type (its OID) and value as PostgreSQL sent it (binary,
    /// base64): no text conversion on either side.
    values: Vec<(u32, Option<String>)>,
}

/// The checksum that makes an edited cursor an error rather than a query.
fn checksum(text: &str) -> u32 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    CRC.checksum(text.as_bytes())
}

fn order_names(keys: &[SortKey]) -> Vec<String> {
    keys.iter().map(SortKey::name).collect()
}

impl Cursor {
    /// The position of `row` in an ordering by `keys`.
    pub(crate) fn at_row(keys: &[SortKey], row: &PgRow) -> Result<Cursor> {
        let values = keys
            .iter()
            .map(|key| {
                let value = row.try_get_raw(key.at)?;
                let oid = value.type_info().oid().map_or(0, |o| o.0);
                let bytes = (!value.is_null())
                    .then(|| value.as_bytes().map(|b| URL_SAFE_NO_PAD.encode(b)))
                    .transpose()
                    .map_err(sqlx::Error::Decode)?;
                Ok((oid, bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        let position = Position {
            order: order_names(keys),
            values,
        };
        let json = serde_json::to_string(&position).expect("strings serialize");
        Ok(Cursor(
            URL_SAFE_NO_PAD.encode(format!("{:08x}{json}", checksum(&json))),
        ))
    }

    /// Rebuilds a cursor from [`Cursor::as_str`] (e.g. from an HTTP query).
    pub fn from_string(text: impl Into<String>) -> Cursor {
        Cursor(text.into())
    }

    /// The cursor as URL-safe text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key values of the position, ready to bind, once the whole cursor
    /// checks out against the listing's order.
    pub(crate) fn values(&self, keys: &[SortKey]) -> Result<Vec<RawValue>> {
        let foreign = || Error::InvalidCursor("not a cursor of this library".into());
        let bytes = URL_SAFE_NO_PAD.decode(&self.0).map_err(|_| foreign())?;
        let text = String::from_utf8(bytes).map_err(|_| foreign())?;
        let (sum, json) = text.split_at_checked(8).ok_or_else(foreign)?;
        if u32::from_str_radix(sum, 16).ok() != Some(checksum(json)) {
            return Err(Error::InvalidCursor(
                "its checksum does not match: it was changed".into(),
            ));
        }
        let position: Position = serde_json::from_str(json).map_err(|_| foreign())?;
        let expected = order_names(keys);
        if position.order != expected || position.values.len() != keys.len() {
            return Err(Error::InvalidCursor(format!(
                "it belongs to a listing ordered by ({}), not ({})",
                position.order.join(", "),
                expected.join(", ")
            )));
        }
        position
            .values
            .into_iter()
            .map(|(oid, value)| {
                let bytes = value
                    .map(|v| URL_SAFE_NO_PAD.decode(v).map_err(|_| foreign()))
                    .transpose()?;
                Ok(RawValue { oid, bytes })
            })
            .collect()
    }
}

/// A value bound exactly as PostgreSQL sent it, with its type.
#[derive(Debug)]
pub(crate) struct RawValue {
    oid: u32,
    bytes: Option<Vec<u8>>,
}

impl Type<Postgres> for RawValue {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(0))
    }
    fn compatible(_: &PgTypeInfo) -> bool {
        true
    }
}

impl Encode<'_, Postgres> for RawValue {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> std::result::Result<IsNull, BoxDynError> {
        match &self.bytes {
            Some(bytes) => {
                buf.extend_from_slice(bytes);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn produces(&self) -> Option<PgTypeInfo> {
        Some(PgTypeInfo::with_oid(Oid(self.oid)))
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnDef;

    fn schema() -> TableSchema {
        TableSchema::new("t")
            .with_column(ColumnDef::new("id", "UUID"))
            .with_column(ColumnDef::new("a", "INTEGER"))
            .with_column(ColumnDef::new("b", "TEXT").nullable(true))
            .with_column(ColumnDef::new("created_at", "TIMESTAMPTZ"))
    }

    #[test]
    fn id_breaks_ties_and_uniform_orders_use_a_row_comparison() {
        let s = schema();
        let keys = ListOptions::<()>::new().keys(&s);
        assert_eq!(keys, vec![(3, false), (0, false)]);
        let keys = SortKey::of(&s, &keys);
        let mut p = 0;
        assert_eq!(
            after_condition(&keys, &mut p),
            r#"("created_at", "id") > ($1::TIMESTAMPTZ, $2::UUID)"#
        );
        assert_eq!(order_by(&keys), r#" ORDER BY "created_at" ASC, "id" ASC"#);
    }

    #[test]
    fn mixed_and_nullable_orders_expand_with_nulls_last() {
        let s = schema();
        let keys = SortKey::of(&s, &[(1, true), (2, false), (0, false)]);
        let mut p = 0;
        assert_eq!(
            after_condition(&keys, &mut p),
            "((\"a\" < $1::INTEGER) OR (\"a\" = $1::INTEGER AND ($2::TEXT IS NOT NULL AND (\"b\" > $2::TEXT OR \"b\" IS NULL))) \
             OR (\"a\" = $1::INTEGER AND \"b\" IS NOT DISTINCT FROM $2::TEXT AND \"id\" > $3::UUID))"
        );
        assert_eq!(
            order_by(&keys),
            r#" ORDER BY "a" DESC, "b" ASC NULLS LAST, "id" ASC"#
        );
    }

    #[test]
    fn cursors_refuse_other_orders_and_foreign_text() {
        let s = schema();
        let keys = SortKey::of(&s, &[(1, true), (0, true)]);
        let position = Position {
            order: order_names(&keys),
            values: vec![
                (23, Some(URL_SAFE_NO_PAD.encode([0, 0, 0, 3]))),
                (2950, None),
            ],
        };
        let json = serde_json::to_string(&position).unwrap();
        let cursor = Cursor(URL_SAFE_NO_PAD.encode(format!("{:08x}{json}", checksum(&json))));
        let values = cursor.values(&keys).unwrap();
        assert_eq!(values[0].oid, 23);
        assert_eq!(values[0].bytes.as_deref(), Some(&[0u8, 0, 0, 3][..]));
        assert!(values[1].bytes.is_none());
        let other = SortKey::of(&s, &[(1, false), (0, false)]);
        assert!(matches!(
            cursor.values(&other),
            Err(Error::InvalidCursor(_))
        ));
        let foreign = Cursor::from_string("%%").values(&keys);
        assert!(matches!(foreign, Err(Error::InvalidCursor(_))));
    }
}
