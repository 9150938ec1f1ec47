//! The `Record` trait that `#[derive(Record)]` implements, and the SQL text
//! built once per record type from its schema.

pub(crate) mod column;
pub(crate) mod repo;
pub(crate) mod statements;
mod tree;

pub use statements::{Layout, Statements, UpsertStatements};

use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArguments, PgRow};
use std::marker::PhantomData;

use uuid::Uuid;

use crate::schema::{Renames, TableSchema};

/// A struct stored as one table row. Implemented by `#[derive(Record)]`;
/// the repository ([`Record::repo`]) is generic code over this trait.
///
/// The derive implements `Debug` too, printing `secret` fields as
/// `"<redacted>"`, so that a logged record never shows an API key: do not
/// also derive `Debug` (`#[derive(Record, Debug)]` is error E0119,
/// conflicting implementations of `Debug`).
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
/// let sql = mandrake_storage::schema::ddl::create_table(Planet::schema());
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

    /// The earlier names of its table and columns, from
    /// `#[record(renamed_from = "old")]`: what `new-migration` renames
    /// instead of dropping and adding.
    ///
    /// ```
    /// # use mandrake_storage::Record;
    /// # use chrono::{DateTime, Utc};
    /// #[derive(Record, Clone)]
    /// #[record(renamed_from = "folders")]
    /// pub struct Directory {
    ///     pub id: uuid::Uuid,
    ///     #[record(renamed_from = "title")]
    ///     pub name: String,
    ///     pub created_at: DateTime<Utc>,
    ///     pub updated_at: DateTime<Utc>,
    /// }
    ///
    /// let hints = Directory::renames();
    /// assert_eq!(hints.table_from("directories"), Some("folders"));
    /// assert_eq!(hints.column_from("directories", "name"), Some("title"));
    /// ```
    fn renames() -> Renames {
        Renames::default()
    }

    /// The columns of `secret` fields: a page cursor would carry their
    /// values, so [`Repo::list`] refuses to order by them.
    const SECRET_COLUMNS: &'static [&'static str] = &[];

    /// How many columns [`Record::decode`] reads: the record's fields, the
    /// first columns of [`Record::schema`]. Columns after them (a search
    /// vector) are the database's own and never selected.
    const WIDTH: usize;

    /// This row's primary key.
    fn id(&self) -> Uuid;

    /// The repository of this type.
    fn repo() -> Repo<Self> {
        Repo::new()
    }

    #[doc(hidden)]
    fn statements() -> &'static Statements;

    /// Reads a record from `row`, its columns in [`Record::columns`] order
    /// starting at column `offset`: a join selects one record's columns after
    /// another's.
    ///
    /// ```no_run
    /// # use mandrake_storage::Record;
    /// # #[derive(Record, Clone)]
    /// # pub struct Note { pub id: uuid::Uuid, pub body: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
    /// let sql = format!("SELECT {}, {} FROM notes a JOIN notes b ON b.id <> a.id",
    ///     Note::columns("a"), Note::columns("b"));
    /// let width = Note::WIDTH;
    /// for row in sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(db).await? {
    ///     let (a, b) = (Note::decode(&row, 0)?, Note::decode(&row, width)?);
    /// }
    /// # Ok(()) }
    /// ```
    fn decode(row: &PgRow, offset: usize) -> Result<Self, sqlx::Error>;

    /// The record's columns qualified by `alias` (`"m"."id", "m"."title", …`),
    /// in the order [`Record::decode`] reads them: for hand-written joins.
    fn columns(alias: &str) -> String {
        Self::statements().qualified_columns(alias)
    }
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

/// The entry `#[derive(Record)]` submits for each record type, so that the
/// tools find every table of the linked crates, and its rename hints,
/// without a hand-kept list.
#[doc(hidden)]
pub struct Registration {
    schema: fn() -> &'static TableSchema,
    renames: fn() -> Renames,
}

impl Registration {
    #[doc(hidden)]
    pub const fn of<T: Record>() -> Registration {
        Registration {
            schema: T::schema,
            renames: T::renames,
        }
    }
}

inventory::collect!(Registration);

/// Every `#[derive(Record)]` type linked into this program, referenced
/// tables before the tables that reference them (then by name): what
/// `cargo xtask schema | check | new-migration` work on.
///
/// A crate whose records should count must be linked: referenced from the
/// program, as the xtask does with `mandrake_types::tables()`.
pub fn registered_tables() -> Vec<&'static TableSchema> {
    let mut pending: Vec<&'static TableSchema> = inventory::iter::<Registration>
        .into_iter()
        .map(|r| (r.schema)())
        .collect();
    pending.sort_by(|a, b| a.name.cmp(&b.name));
    pending.dedup_by(|a, b| a.name == b.name);
    let mut ordered: Vec<&'static TableSchema> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = |t: &&TableSchema| {
            t.foreign_keys.iter().all(|fk| {
                fk.references == t.name
                    || ordered.iter().any(|o| o.name == fk.references)
                    || !pending.iter().any(|p| p.name == fk.references)
            })
        };
        // A cycle of references: take the first by name and go on.
        let next = pending.iter().position(ready).unwrap_or(0);
        ordered.push(pending.remove(next));
    }
    ordered
}

/// The rename hints of every `#[derive(Record)]` type linked into this
/// program: what `cargo xtask check | new-migration` diff with.
pub fn registered_renames() -> Renames {
    inventory::iter::<Registration>
        .into_iter()
        .map(|r| (r.renames)())
        .collect()
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

/// A unique constraint of `T`, the conflict target of an upsert. The derive
/// emits one per constraint, named after its fields: `Provider::ON_NAME`,
/// `Model::ON_PROVIDER_ID_MODEL_ID`.
pub struct UniqueKey<T> {
    index: usize,
    _marker: std::marker::PhantomData<fn() -> T>,
}

impl<T> UniqueKey<T> {
    /// The `index`th unique constraint of the table's schema.
    #[doc(hidden)]
    pub const fn new(index: usize) -> Self {
        UniqueKey {
            index,
            _marker: std::marker::PhantomData,
        }
    }

    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl<T> Clone for UniqueKey<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for UniqueKey<T> {}

impl<T> std::fmt::Debug for UniqueKey<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UniqueKey({})", self.index)
    }
}

/// Typed CRUD for one record type: `Message::repo().get(&db, id)`.
///
/// Every method takes any sqlx executor, so the same call works on `&Db`, a
/// `&PgPool`, `&mut PgConnection`, or inside a transaction (`&mut *tx`).
///
/// ```no_run
/// # use mandrake_storage::{Record, Db, ListOptions};
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
///     .list(db, Note::BODY.eq("edited"), ListOptions::new().order_by(Note::CREATED_AT.desc()).limit(10))
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

/// A tenant root: a record with `#[record(tenant)]` on its `id`, whose every
/// row is a tenant (a workspace, an organization). A tenant handle sees and
/// writes only its own row, so no tenant can rename or delete another, and a
/// new one is made by [`Repo::create_tenant`]. The derive implements it.
pub trait TenantRoot: Record {}
