//! The pool under `Db`: a dead connection costs a read nothing, futures
//! dropped at any point leave no dirty connection behind, and the pool says
//! how busy it is.

use std::time::Duration;

use mandrake_storage::testing::TestDb;
use mandrake_storage::{Db, Error, Settings};

async fn db_with(t: &TestDb, settings: Settings) -> Db {
    Db::connect_options(t.connect_options(), &settings)
        .await
        .unwrap()
}

/// Whether `done` holds within 10 s (checked every 100 ms).
async fn eventually(done: impl Fn() -> bool) -> bool {
    for _ in 0..100 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done()
}

async fn backend_pid(db: &Db) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(db)
        .await
        .unwrap()
}

/// A table with a typed repository: its calls leave the session as it was,
/// so the pool hands their connection on without a reset (which would find
/// a dead one first).
#[derive(mandrake_storage::Record, Clone)]
#[record(table = "notes")]
pub struct Note {
    pub id: uuid::Uuid,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The pid of the pool's one connection, read from outside it (raw SQL on
/// it would have it reset, and so checked, at its next checkout).
async fn pooled_pid(admin: &Db, application: &str) -> i32 {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
         ORDER BY backend_start DESC LIMIT 1",
    )
    .bind(application)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_read_on_a_connection_the_server_ended_runs_again_on_a_new_one() {
    use mandrake_storage::{Filter, Record};
    let t = TestDb::with_tables(&[Note::schema()]).await.unwrap();
    // One connection, never pinged at checkout: the read meets the dead
    // connection itself.
    let settings = Settings {
        pool_size: 1,
        validate_after: Duration::from_secs(3600),
        ..Settings::default()
    };
    let application = "dead_connection_test";
    let options = t.connect_options().application_name(application);
    let db = Db::connect_options(options, &settings).await.unwrap();
    let admin = t.db().clone();
    let end = |pid: i32| {
        let admin = admin.clone();
        async move {
            let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap();
            assert!(ended);
            // The backend exits a moment after the signal: wait until it is gone.
            for _ in 0..100 {
                let alive: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                )
                .bind(pid)
                .fetch_one(&admin)
                .await
                .unwrap();
                if !alive {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    Note::repo().count(&db, Filter::all()).await.unwrap();
    let first = pooled_pid(&admin, application).await;
    end(first).await;
    let second = backend_pid(&db).await;
    assert_ne!(first, second, "the read ran on a new connection");
    // A write is not repeated: its failure is the caller's to see.
    Note::repo().count(&db, Filter::all()).await.unwrap();
    end(pooled_pid(&admin, application).await).await;
    let write = sqlx::query("INSERT INTO notes (id) VALUES (gen_random_uuid())")
        .execute(&db)
        .await;
    assert!(write.is_err(), "a write on a dead connection fails");
    // The dead connection left the pool: the next call works.
    sqlx::query("INSERT INTO notes (id) VALUES (gen_random_uuid())")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(Note::repo().count(&db, Filter::all()).await.unwrap(), 1);
}

#[tokio::test]
async fn a_thousand_dropped_futures_leave_no_dirty_connection() {
    let t = TestDb::empty().await.unwrap();
    sqlx::query("CREATE TABLE log (n INT)")
        .execute(t.db())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE checks (n INT)")
        .execute(t.db())
        .await
        .unwrap();
    let db = db_with(
        &t,
        Settings {
            pool_size: 4,
            ..Settings::default()
        },
    )
    .await;
    // Each future is dropped at a different point: while checking out, in
    // BEGIN, mid-insert, mid-sleep inside its transaction, or just before
    // its commit. None ever commits.
    for i in 0..1000u64 {
        let db = db.clone();
        let work = async move {
            let mut tx = db.begin().await?;
            sqlx::query("INSERT INTO log VALUES ($1)")
                .bind(i as i32)
                .execute(&mut *tx)
                .await?;
            sqlx::query("SELECT pg_sleep(0.001)")
                .execute(&mut *tx)
                .await?;
            std::future::pending::<()>().await;
            tx.commit().await?;
            Ok::<_, Error>(())
        };
        // Cut off after a number of scheduler turns (the timer is too coarse
        // for the sub-millisecond steps): 0..40 turns reach every await.
        let turns = (i * 7919) % 40;
        tokio::select! {
            biased;
            _ = work => {}
            _ = async { for _ in 0..turns { tokio::task::yield_now().await } } => {}
        }
    }
    // 1,000 autocommit writes: one that ran inside a leftover transaction
    // would never commit, so a fresh session would count fewer.
    let mut checks = Vec::new();
    for n in 0..1000 {
        let db = db.clone();
        checks.push(tokio::spawn(async move {
            sqlx::query("INSERT INTO checks VALUES ($1)")
                .bind(n)
                .execute(&db)
                .await
        }));
    }
    eprintln!("after drops: {:?}", db.pool_status());
    let mut errors = std::collections::BTreeMap::new();
    for check in checks {
        if let Err(e) = check.await.unwrap() {
            *errors.entry(format!("{e:?}")).or_insert(0) += 1;
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    let mut fresh = mandrake_storage::connect_one(&t.url()).await.unwrap();
    let committed: i64 = sqlx::query_scalar("SELECT count(*) FROM checks")
        .fetch_one(&mut fresh)
        .await
        .unwrap();
    assert_eq!(committed, 1000, "every query committed on its own");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM log")
        .fetch_one(&mut fresh)
        .await
        .unwrap();
    assert_eq!(kept, 0, "no dropped transaction committed anything");
    let stuck: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND state LIKE 'idle in transaction%'",
    )
    .fetch_one(&mut fresh)
    .await
    .unwrap();
    assert_eq!(stuck, 0, "no pooled session sits in a transaction");
    let status = db.pool_status();
    assert_eq!(status.in_use, 0);
    assert!(status.size <= 4);
}

#[tokio::test]
async fn a_pool_timeout_says_how_big_the_pool_is_and_how_long_it_waited() {
    let t = TestDb::empty().await.unwrap();
    let settings = Settings {
        pool_size: 2,
        acquire_timeout: Duration::from_millis(200),
        ..Settings::default()
    };
    let db = db_with(&t, settings).await;
    let held = (db.acquire().await.unwrap(), db.acquire().await.unwrap());
    let status = db.pool_status();
    assert_eq!((status.size, status.in_use, status.idle), (2, 2, 0));
    let err = db.acquire().await.unwrap_err();
    assert!(matches!(err, Error::PoolTimeout { size: 2, .. }), "{err}");
    assert!(err.to_string().contains("pool of 2"), "{err}");
    let through_executor = sqlx::query("SELECT 1")
        .execute(&db)
        .await
        .map_err(Error::from);
    assert!(matches!(through_executor, Err(Error::PoolTimeout { .. })));
    drop(held);
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

#[tokio::test]
async fn a_begin_cut_off_at_any_point_leaves_no_transaction_open() {
    let t = TestDb::empty().await.unwrap();
    sqlx::query("CREATE TABLE marks (k INT)")
        .execute(t.db())
        .await
        .unwrap();
    // One connection, so the next statement runs where the begin was cut off.
    let db = db_with(
        &t,
        Settings {
            pool_size: 1,
            ..Settings::default()
        },
    )
    .await;
    let mut fresh = mandrake_storage::connect_one(&t.url()).await.unwrap();
    for k in 0..30 {
        tokio::select! {
            biased;
            _ = db.begin() => {}
            _ = async { for _ in 0..k { tokio::task::yield_now().await } } => {}
        }
        sqlx::query("INSERT INTO marks VALUES ($1)")
            .bind(k)
            .execute(&db)
            .await
            .unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM marks WHERE k = $1")
            .bind(k)
            .fetch_one(&mut fresh)
            .await
            .unwrap();
        assert_eq!(
            seen, 1,
            "cut off after {k} turns: the next write ran inside a leftover transaction"
        );
    }
}

#[tokio::test]
async fn min_idle_connections_are_kept_and_idle_ones_past_their_timeout_go() {
    let t = TestDb::empty().await.unwrap();
    let warm = db_with(
        &t,
        Settings {
            pool_size: 6,
            min_idle: 3,
            ..Settings::default()
        },
    )
    .await;
    let status = warm.pool_status();
    assert_eq!((status.size, status.idle), (3, 3), "opened at connect");
    let held = (warm.acquire().await.unwrap(), warm.acquire().await.unwrap());
    // The maintenance task runs once a second: wait for it (bounded).
    let topped_up = eventually(|| {
        let s = warm.pool_status();
        (s.in_use, s.idle) == (2, 3)
    })
    .await;
    assert!(
        topped_up,
        "topped up while two are busy: {:?}",
        warm.pool_status()
    );
    drop(held);

    let short = db_with(
        &t,
        Settings {
            pool_size: 4,
            idle_timeout: Some(Duration::from_secs(1)),
            ..Settings::default()
        },
    )
    .await;
    let _ = (
        short.acquire().await.unwrap(),
        short.acquire().await.unwrap(),
    );
    assert_eq!(short.pool_status().size, 2);
    let closed = eventually(|| short.pool_status().size == 0).await;
    assert!(
        closed,
        "idle past the timeout, closed: {:?}",
        short.pool_status()
    );
    sqlx::query("SELECT 1").execute(&short).await.unwrap();
}

#[tokio::test]
async fn a_commit_after_a_failed_statement_is_an_error_and_commits_nothing() {
    let t = TestDb::empty().await.unwrap();
    sqlx::query("CREATE TABLE notes (n INT)")
        .execute(t.db())
        .await
        .unwrap();
    let db = db_with(
        &t,
        Settings {
            pool_size: 1,
            ..Settings::default()
        },
    )
    .await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO notes VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    // The caller ignores this error; PostgreSQL does not.
    let _ = sqlx::query("SELECT 1/0").execute(&mut *tx).await;
    let err = tx.commit().await.unwrap_err();
    assert!(matches!(err, Error::TransactionAborted), "{err}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, 0, "nothing was committed");
    // The connection serves the next transaction.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO notes VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(count, 1);
}

#[tokio::test]
async fn session_changes_by_raw_sql_never_reach_later_calls() {
    let t = TestDb::empty().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE notes (n INT); CREATE ROLE visitor NOLOGIN; \
         GRANT SELECT ON notes TO visitor",
    )
    .execute(t.db())
    .await
    .unwrap();
    // One connection, so every call below meets the same session.
    let db = db_with(
        &t,
        Settings {
            pool_size: 1,
            ..Settings::default()
        },
    )
    .await;
    let who = |db: Db| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT current_user || ' ' || current_setting('search_path')",
        )
        .fetch_one(&db)
        .await
        .unwrap()
    };
    let me = who(db.clone()).await;

    // A raw BEGIN through `&db`: the next call must not run inside it.
    sqlx::query("BEGIN").execute(&db).await.unwrap();
    sqlx::query("INSERT INTO notes VALUES (1)")
        .execute(&db)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM notes")
        .fetch_one(t.db())
        .await
        .unwrap();
    assert_eq!(
        seen, 1,
        "the insert committed, seen from another connection"
    );

    // SET ROLE on a checked-out connection ends with it.
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET ROLE visitor")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET search_path = nowhere")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_eq!(who(db.clone()).await, me);

    // So does a SET through `&db`, and one inside a committed transaction.
    sqlx::query("SET search_path = nowhere")
        .execute(&db)
        .await
        .unwrap();
    assert_eq!(who(db.clone()).await, me);
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET ROLE visitor")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(who(db.clone()).await, me);
    let listening: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_listening_channels()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(listening, 0);
}
