//! The one error type of the library.

use std::fmt;

use uuid::Uuid;

/// Everything that can go wrong when storing or migrating records.
///
/// Database failures that a caller can act on get their own variant, so a
/// duplicate key is matched as `Error::UniqueViolation { .. }` rather than by
/// reading SQLSTATE codes:
///
/// ```
/// use mandrake_storage::Error;
///
/// fn describe(err: &Error) -> String {
///     match err {
///         Error::NotFound { table, id } => format!("no row {id} in {table}"),
///         Error::UniqueViolation { constraint } => format!("already taken ({constraint})"),
///         other => other.to_string(),
///     }
/// }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// `get`, `update` or another call that needs an existing row found none.
    NotFound {
        /// The table searched.
        table: &'static str,
        /// The id looked for.
        id: Uuid,
    },
    /// A unique constraint or unique index rejected the row.
    UniqueViolation {
        /// The constraint's (or unique index's) name.
        constraint: String,
    },
    /// A foreign key rejected the row (missing parent, or a restricting child).
    ForeignKeyViolation {
        /// The constraint's name.
        constraint: String,
    },
    /// A CHECK constraint (for instance an enum column's) rejected the row.
    CheckViolation {
        /// The constraint's name.
        constraint: String,
    },
    /// A NOT NULL column received NULL.
    NotNullViolation {
        /// The column's name.
        column: String,
    },
    /// A value the database cannot store, caught before it was sent (for
    /// example text with a NUL character).
    InvalidValue {
        /// The column the value was for.
        column: &'static str,
        /// Why it cannot be stored.
        reason: &'static str,
    },
    /// An optimistic-lock update found a different version than the caller expected.
    Conflict {
        /// The table.
        table: &'static str,
        /// The row.
        id: Uuid,
    },
    /// No pooled connection became free in time.
    PoolTimeout {
        /// The pool's size.
        size: usize,
        /// How long the caller waited.
        waited: std::time::Duration,
    },
    /// Applying, reverting or planning migrations failed.
    Migration(String),
    /// A schema or filter did not fit the table it was used with.
    Schema(String),
    /// A page cursor that is damaged, tampered with, or from another listing.
    InvalidCursor(String),
    /// A setting (environment variable, server binaries, data directory) is unusable.
    Config(String),
    /// A backup, restore or recovery failed: a missing client tool, a damaged
    /// archive, a database that may not be replaced.
    Backup(String),
    /// The call needs a server session of its own (the change feed's
    /// LISTEN), which PgBouncer in transaction mode does not keep: set
    /// `MANDRAKE_DIRECT_URL` ([`crate::Settings::direct_url`]) to the server itself.
    NeedsSession {
        /// What needed it.
        what: &'static str,
    },
    /// `commit` found the transaction aborted by an earlier failed
    /// statement: PostgreSQL rolled it back, and nothing was committed.
    TransactionAborted,
    /// Any other failure reported by the driver or the server.
    Database(sqlx::Error),
}

/// A pool timeout on its way through sqlx's executor trait, which returns
/// `sqlx::Error`: carried as a driver error, turned back into
/// [`Error::PoolTimeout`] by `From<sqlx::Error>`.
#[derive(Debug)]
pub(crate) struct PoolTimeout {
    pub(crate) size: usize,
    pub(crate) waited: std::time::Duration,
}

impl fmt::Display for PoolTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no connection free in a pool of {} after waiting {:?}",
            self.size, self.waited
        )
    }
}

impl std::error::Error for PoolTimeout {}

/// Shorthand for `Result<T, mandrake_storage::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// True for failures that succeed when the whole transaction is tried again:
    /// serialization failures (`40001`) and deadlocks (`40P01`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }

    /// The SQLSTATE code of a database error, if this is one (the
    /// constraint variants included).
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            Error::UniqueViolation { .. } => Some("23505".into()),
            Error::ForeignKeyViolation { .. } => Some("23503".into()),
            Error::CheckViolation { .. } => Some("23514".into()),
            Error::NotNullViolation { .. } => Some("23502".into()),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFound { table, id } => write!(f, "no row in {table} with id {id}"),
            Error::UniqueViolation { constraint } => {
                write!(f, "unique constraint {constraint} violated")
            }
            Error::ForeignKeyViolation { constraint } => {
                write!(f, "foreign key {constraint} violated")
            }
            Error::CheckViolation { constraint } => write!(f, "check {constraint} violated"),
            Error::NotNullViolation { column } => write!(f, "column {column} must not be NULL"),
            Error::InvalidValue { column, reason } => {
                write!(f, "invalid value for column {column}: {reason}")
            }
            Error::Conflict { table, id } => write!(
                f,
                "row {id} in {table} was changed by someone else (version mismatch)"
            ),
            Error::PoolTimeout { size, waited } => write!(
                f,
                "no connection free in a pool of {size} after waiting {waited:?} \
                 (MANDRAKE_POOL_SIZE, MANDRAKE_ACQUIRE_TIMEOUT_SECS)"
            ),
            Error::Migration(msg) => write!(f, "migration error: {msg}"),
            Error::Schema(msg) => write!(f, "schema error: {msg}"),
            Error::InvalidCursor(msg) => write!(f, "invalid cursor: {msg}"),
            Error::Config(msg) => write!(f, "configuration error: {msg}"),
            Error::Backup(msg) => write!(f, "backup error: {msg}"),
            Error::NeedsSession { what } => write!(
                f,
                "{what} needs a server session of its own, which PgBouncer in transaction mode \
                 does not keep: set MANDRAKE_DIRECT_URL to the server's own URL (not PgBouncer's)"
            ),
            Error::TransactionAborted => f.write_str(
                "the transaction was aborted by an earlier failed statement and rolled back: \
                 nothing was committed",
            ),
            Error::Database(err) => write!(f, "database error: {err}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Database(err) => Some(err),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    /// Sorts constraint failures into their own variants by SQLSTATE.
    fn from(err: sqlx::Error) -> Self {
        if let sqlx::Error::AnyDriverError(driver) = &err
            && let Some(timeout) = driver.downcast_ref::<PoolTimeout>()
        {
            return Error::PoolTimeout {
                size: timeout.size,
                waited: timeout.waited,
            };
        }
        let sqlx::Error::Database(db) = &err else {
            return Error::Database(err);
        };
        let constraint = || db.constraint().unwrap_or_default().to_owned();
        match db.code().as_deref() {
            Some("23505") => Error::UniqueViolation {
                constraint: constraint(),
            },
            Some("23503") => Error::ForeignKeyViolation {
                constraint: constraint(),
            },
            Some("23514") => Error::CheckViolation {
                constraint: constraint(),
            },
            // The error's own field, not its (translatable) message text.
            Some("23502") => Error::NotNullViolation {
                column: db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .and_then(|pg| pg.column())
                    .unwrap_or_default()
                    .to_owned(),
            },
            _ => Error::Database(err),
        }
    }
}

#[cfg(feature = "migrate")]
impl From<sqlx::migrate::MigrateError> for Error {
    fn from(err: sqlx::migrate::MigrateError) -> Self {
        match err {
            sqlx::migrate::MigrateError::Execute(e) => Error::from(e),
            other => Error::Migration(other.to_string()),
        }
    }
}
