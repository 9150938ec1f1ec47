//! `&Db` as a sqlx executor: each call checks a connection out, runs (behind
//! PgBouncer inside a transaction of its own), and a read that met a dead
//! connection runs once more.

use either::Either;
use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::TryStreamExt;
use sqlx::postgres::{PgArguments, PgQueryResult, PgRow};
use sqlx::{AssertSqlSafe, Connection, Execute, Executor, PgConnection, Postgres, SqlStr};
use sqlx_core::ext::async_stream::{TryAsyncStream, Yielder};

use super::Db;
use super::caller::sql_is_ours;
use super::pool::{PoolConnection, RESET_AND_COMMIT, is_broken, is_stale_statement};

/// A statement taken apart, so that a read can run a second time.
struct Replay {
    sql: SqlStr,
    args: Option<PgArguments>,
    persistent: bool,
}

impl Replay {
    /// `named`: whether the statement may be prepared by name and cached on
    /// the connection (not through PgBouncer).
    fn new<'q, E: Execute<'q, Postgres>>(
        mut query: E,
        named: bool,
    ) -> std::result::Result<Replay, sqlx::Error> {
        let persistent = query.persistent() && named;
        let args = query.take_arguments().map_err(sqlx::Error::Encode)?;
        Ok(Replay {
            sql: query.sql(),
            args,
            persistent,
        })
    }

    fn clone_replay(&self) -> Replay {
        Replay {
            sql: self.sql.clone(),
            args: self.args.clone(),
            persistent: self.persistent,
        }
    }

    /// Whether running it again after a broken connection is safe: a
    /// `SELECT` reads.
    fn is_read(&self) -> bool {
        let text = self.sql.as_str().trim_start();
        text.get(..6)
            .is_some_and(|w| w.eq_ignore_ascii_case("select"))
    }

    /// The one copy a call keeps to run again: for a read (see
    /// [`Db::retry_target`]), or for a statement cached by name, which a
    /// schema change can make stale ([`is_stale_statement`]).
    fn copy_to_run_again(&self) -> Option<Replay> {
        (self.is_read() || self.persistent).then(|| self.clone_replay())
    }
}

impl<'q> Execute<'q, Postgres> for Replay {
    fn sql(self) -> SqlStr {
        self.sql
    }
    fn statement(&self) -> Option<&sqlx::postgres::PgStatement> {
        None
    }
    fn take_arguments(
        &mut self,
    ) -> std::result::Result<Option<PgArguments>, sqlx::error::BoxDynError> {
        Ok(self.args.take())
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
}

/// Where [`Db::route`] sends a statement.
enum Route {
    Pooled(PoolConnection),
    Primary(Db),
}

/// Where [`Db::retry_target`] sends a read to run again.
enum Retry {
    Primary(Db),
    Fresh(PgConnection),
}

/// One call on a connection: what `run` does with a checked-out one.
type Call<T> =
    for<'c> fn(&'c mut PgConnection, Replay) -> BoxFuture<'c, std::result::Result<T, sqlx::Error>>;

impl Db {
    /// A connection of its own, outside the pool: for a read whose pooled
    /// connection turned out to be dead (other pooled ones may be too). It
    /// holds this handle's tenant as a pooled one would; behind PgBouncer
    /// the statement's own transaction sets it ([`Db::call`]).
    async fn fresh_connection(&self) -> std::result::Result<PgConnection, sqlx::Error> {
        let mut conn = self.pool.manager().connect().await?;
        if let (false, Some(tenant)) = (self.pgbouncer, self.tenant) {
            sqlx::query("SELECT set_config($1, $2, false)")
                .bind(crate::schema::TENANT_SETTING)
                .bind(tenant.to_string())
                .execute(&mut conn)
                .await?;
        }
        Ok(conn)
    }

    /// Streams `query`'s items on `conn` to `yielder`; through PgBouncer
    /// inside a transaction of its own, as in [`Db::call`]. `yielded` is
    /// set once an item went out (it cannot be taken back).
    async fn stream_on(
        &self,
        conn: &mut PgConnection,
        query: Replay,
        yielder: &Yielder<Item>,
        yielded: &mut bool,
    ) -> std::result::Result<(), sqlx::Error> {
        let touched = !sql_is_ours();
        self.open_statement_transaction(conn).await?;
        let streamed = async {
            let mut rows = conn.fetch_many(query);
            while let Some(item) = rows.try_next().await? {
                *yielded = true;
                yielder.r#yield(item).await;
            }
            Ok::<_, sqlx::Error>(())
        }
        .await;
        let closed = self
            .end_statement_transaction(conn, streamed.is_ok(), touched)
            .await;
        streamed?;
        closed
    }

    /// Runs `call` on `conn`; through PgBouncer inside a transaction of its
    /// own, because sqlx parses and executes a statement in two round trips,
    /// which PgBouncer could otherwise send to two different servers.
    async fn call<T>(
        &self,
        conn: &mut PgConnection,
        query: Replay,
        call: Call<T>,
    ) -> std::result::Result<T, sqlx::Error> {
        let touched = !sql_is_ours();
        self.open_statement_transaction(conn).await?;
        let done = call(conn, query).await;
        let closed = self
            .end_statement_transaction(conn, done.is_ok(), touched)
            .await;
        let done = done?;
        closed?;
        Ok(done)
    }

    /// Through PgBouncer: opens the transaction a statement runs in.
    async fn open_statement_transaction(
        &self,
        conn: &mut PgConnection,
    ) -> std::result::Result<(), sqlx::Error> {
        if let Some(begin) = &self.begin {
            conn.execute(sqlx::raw_sql(AssertSqlSafe(begin.clone())))
                .await?;
        }
        Ok(())
    }

    /// Through PgBouncer: commits (`ok`) or rolls back what
    /// [`Db::open_statement_transaction`] opened.
    /// `touched`: the statement may have changed the session, which on
    /// PgBouncer's server connection would reach other clients: it is reset
    /// before the commit.
    async fn end_statement_transaction(
        &self,
        conn: &mut PgConnection,
        ok: bool,
        touched: bool,
    ) -> std::result::Result<(), sqlx::Error> {
        if self.begin.is_some() {
            // One round trip: the reset, then the commit.
            let end = match (ok, touched) {
                (true, true) => RESET_AND_COMMIT,
                (true, false) => "COMMIT",
                (false, _) => "ROLLBACK",
            };
            conn.execute(sqlx::raw_sql(end)).await?;
        }
        Ok(())
    }

    /// Runs `call` on a pooled connection, marked in flight so that a
    /// cancelled call leaves it to be restored; a read that fails at the
    /// transport level runs once more (see [`Db::retry_target`]).
    async fn run<T>(&self, query: Replay, call: Call<T>) -> std::result::Result<T, sqlx::Error> {
        let read = query.is_read();
        let mut again = query.copy_to_run_again();
        let mut conn = match self.route(read).await? {
            Route::Pooled(conn) => conn,
            Route::Primary(primary) => {
                let again = again.expect("routed to the primary only for a read");
                return Box::pin(primary.run(again, call)).await;
            }
        };
        let outcome = match self.call(&mut conn, query, call).await {
            Err(err) if is_stale_statement(&err) => match again.take() {
                Some(again) => self.prepare_again(&mut conn, again, call).await,
                None => Err(err),
            },
            outcome => outcome,
        };
        conn.set_in_flight(false);
        let err = match outcome {
            Err(err) => err,
            done => return done,
        };
        let spare = again.filter(|_| read);
        match self.retry_target(conn, err, spare).await? {
            (Retry::Primary(primary), again) => Box::pin(primary.run(again, call)).await,
            (Retry::Fresh(mut fresh), again) => self.call(&mut fresh, again, call).await,
        }
    }

    /// Runs `query` again on `conn` with its statement cache emptied, after
    /// PostgreSQL refused a cached statement whose result columns changed
    /// type ([`is_stale_statement`]): nothing ran, so running it is safe,
    /// a write too.
    async fn prepare_again<T>(
        &self,
        conn: &mut PgConnection,
        query: Replay,
        call: Call<T>,
    ) -> std::result::Result<T, sqlx::Error> {
        conn.clear_cached_statements().await?;
        self.call(conn, query, call).await
    }

    /// Where a statement runs: a checked-out connection (in flight, and
    /// marked for a reset when the caller wrote the statement), or, when this is a
    /// replica whose pool cannot give one and the statement is a read
    /// (`read`), the primary.
    async fn route(&self, read: bool) -> std::result::Result<Route, sqlx::Error> {
        match self.checkout().await {
            Ok(mut conn) => {
                if !sql_is_ours() {
                    conn.mark_session_touched();
                }
                conn.set_in_flight(true);
                Ok(Route::Pooled(conn))
            }
            Err(err) => match self.primary_for(&err).filter(|_| read) {
                Some(primary) => Ok(Route::Primary(primary)),
                None => Err(err),
            },
        }
    }

    /// After `err` on `conn`: a connection that failed at the transport level
    /// is not put back, and a read (`spare`) that failed so runs once more:
    /// on the primary when this is a replica, else on a new connection (a
    /// server restart leaves every idle connection dead). Anything else is
    /// `err` itself.
    async fn retry_target(
        &self,
        conn: PoolConnection,
        err: sqlx::Error,
        spare: Option<Replay>,
    ) -> std::result::Result<(Retry, Replay), sqlx::Error> {
        let broken = is_broken(&err);
        conn.discard_if_broken(&err);
        match spare {
            Some(again) if broken => match self.primary_for(&err) {
                Some(primary) => Ok((Retry::Primary(primary), again)),
                None => Ok((Retry::Fresh(self.fresh_connection().await?), again)),
            },
            _ => Err(err),
        }
    }

    /// `query` taken apart to run, and to run again; through PgBouncer its
    /// statement stays unnamed.
    fn replay<'q, E: Execute<'q, Postgres>>(
        &self,
        query: E,
    ) -> std::result::Result<Replay, sqlx::Error> {
        Replay::new(query, !self.pgbouncer)
    }

    /// On a replica's pool, when `err` says the replica cannot be reached:
    /// the primary, to run the read instead.
    fn primary_for(&self, err: &sqlx::Error) -> Option<Db> {
        self.primary.as_ref().and_then(|p| p.take_over(err))
    }
}

type Item = Either<PgQueryResult, PgRow>;

/// Yields every item of `rows`.
async fn forward(
    mut rows: BoxStream<'_, std::result::Result<Item, sqlx::Error>>,
    yielder: &Yielder<Item>,
) -> std::result::Result<(), sqlx::Error> {
    while let Some(item) = rows.try_next().await? {
        yielder.r#yield(item).await;
    }
    Ok(())
}

// Checks a connection out for each call, so `&db` works as an executor. A
// connection that fails at the transport level is not put back, and a read
// that failed that way runs once more on a new connection: a server restart
// leaves every idle connection dead, and a read is safe to repeat.
impl<'p> Executor<'p> for &'_ Db {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, std::result::Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(TryAsyncStream::new(move |yielder| async move {
            let query = db.replay(query)?;
            let read = query.is_read();
            let mut again = query.copy_to_run_again();
            let mut conn = match db.route(read).await? {
                Route::Pooled(conn) => conn,
                Route::Primary(primary) => {
                    let again = again.expect("routed to the primary only for a read");
                    return forward((&primary).fetch_many(again), &yielder).await;
                }
            };
            let mut yielded = false;
            let outcome = db.stream_on(&mut conn, query, &yielder, &mut yielded).await;
            conn.set_in_flight(false);
            let Err(err) = outcome else { return Ok(()) };
            // Refused before it ran (see `prepare_again`); only a named
            // statement is cached, so never through PgBouncer.
            if is_stale_statement(&err)
                && !yielded
                && let Some(again) = again.take()
            {
                conn.set_in_flight(true);
                conn.clear_cached_statements().await?;
                forward(conn.fetch_many(again), &yielder).await?;
                conn.set_in_flight(false);
                return Ok(());
            }
            // Rows already yielded cannot be taken back: no second run then.
            let spare = again.filter(|_| read && !yielded);
            match db.retry_target(conn, err, spare).await? {
                (Retry::Primary(primary), again) => {
                    forward((&primary).fetch_many(again), &yielder).await
                }
                (Retry::Fresh(mut fresh), again) => {
                    db.stream_on(&mut fresh, again, &yielder, &mut yielded)
                        .await
                }
            }
        }))
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Option<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(async move { db.run(db.replay(query)?, |c, q| c.fetch_optional(q)).await })
    }

    // `fetch_all` and `execute` straight on the connection: the default ones
    // would pass every row through the stream of `fetch_many` above.
    fn fetch_all<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<Vec<PgRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(async move { db.run(db.replay(query)?, |c, q| c.fetch_all(q)).await })
    }

    fn execute<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, std::result::Result<PgQueryResult, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        let db = self.clone();
        Box::pin(async move { db.run(db.replay(query)?, |c, q| c.execute(q)).await })
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [sqlx::postgres::PgTypeInfo],
    ) -> BoxFuture<'e, std::result::Result<sqlx::postgres::PgStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        let db = self.clone();
        Box::pin(async move { db.checkout().await?.prepare_with(sql, parameters).await })
    }

    fn describe<'e>(
        self,
        sql: sqlx::SqlStr,
    ) -> BoxFuture<'e, std::result::Result<sqlx_core::describe::Describe<Postgres>, sqlx::Error>>
    where
        'p: 'e,
    {
        let db = self.clone();
        Box::pin(async move { db.checkout().await?.describe(sql).await })
    }
}
