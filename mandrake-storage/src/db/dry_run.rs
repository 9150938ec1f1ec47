//! [`DryRun`]: an executor that records the statements a typed call sends
//! and runs none of them, to see the SQL of any call.

use std::sync::Mutex;

use either::Either;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use sqlx::postgres::{PgQueryResult, PgRow};
use sqlx::{Execute, Executor, Postgres};

use crate::error::NotRun;

/// An executor that runs nothing: hand it to any repository call (or raw
/// sqlx) in place of `&db`, and the call records its statement and fails
/// with [`Error::DryRun`](crate::Error::DryRun). A call that would send
/// several statements stops at its first.
///
/// ```
/// # use mandrake_storage::{DryRun, ListOptions, Record};
/// # #[derive(Record, Clone)]
/// # pub struct Note { pub id: uuid::Uuid, pub stars: i32,
/// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dry = DryRun::new();
/// let _ = Note::repo().list(&dry, Note::STARS.ge(4), ListOptions::new().limit(10)).await;
/// assert_eq!(
///     dry.statements(),
///     [r#"SELECT "id", "stars", "created_at", "updated_at" FROM "public"."notes" WHERE "stars" >= $1 ORDER BY "created_at" ASC, "id" ASC LIMIT $2"#]
/// );
/// # }
/// ```
#[derive(Debug, Default)]
pub struct DryRun {
    statements: Mutex<Vec<String>>,
}

impl DryRun {
    /// A dry run with nothing recorded.
    pub fn new() -> DryRun {
        DryRun::default()
    }

    /// The statements recorded, in the order they were sent.
    pub fn statements(&self) -> Vec<String> {
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record<'q>(&self, query: impl Execute<'q, Postgres>) -> sqlx::Error {
        self.statements
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(query.sql().as_str().to_owned());
        sqlx::Error::AnyDriverError(Box::new(NotRun))
    }
}

impl<'p> Executor<'p> for &'p DryRun {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let err = self.record(query);
        Box::pin(futures_util::stream::once(async move { Err(err) }))
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let err = self.record(query);
        Box::pin(async move { Err(err) })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        _parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, Result<sqlx::postgres::PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        let err = self.record(sqlx::raw_sql(sql));
        Box::pin(async move { Err(err) })
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, Result<sqlx_core::describe::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        let err = self.record(sqlx::raw_sql(sql));
        Box::pin(async move { Err(err) })
    }
}
