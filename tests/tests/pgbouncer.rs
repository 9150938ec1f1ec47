//! Through a real PgBouncer in transaction mode (Debian's 1.18, which keeps
//! no prepared statement across server connections): the repository works
//! from many tasks at once, transactions hold, the statement timeout still
//! applies, and the migration runner refuses. The repository and Mandrake
//! suites run through it too, with `MANDRAKE_TEST_PGBOUNCER=1` (`.ci/run`).

use std::time::Duration;

use futures_util::StreamExt;
use mandrake_storage::migrate::{MigrateOptions, Migrations, migrate};
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Db, Error, Record, Settings};
use mandrake_types::*;
use sqlx::{Connection, Row};

async fn through_pgbouncer(t: &TestDb, statement_timeout: Option<Duration>) -> Db {
    let settings = Settings {
        pool_size: 4,
        pgbouncer: true,
        statement_timeout,
        ..Settings::default()
    };
    Db::connect_options(t.through_pgbouncer().unwrap(), &settings)
        .await
        .unwrap()
}

/// Transactions PgBouncer has carried for database `name`.
async fn transactions_carried(t: &TestDb) -> i64 {
    let mut console = sqlx::PgConnection::connect_with(&t.pgbouncer_console().unwrap())
        .await
        .unwrap();
    let rows = sqlx::raw_sql("SHOW STATS")
        .fetch_all(&mut console)
        .await
        .unwrap();
    rows.iter()
        .filter(|r| r.get::<String, _>("database") == t.name())
        // NUMERIC, in the text format of a simple query.
        .map(|r| {
            r.try_get_unchecked::<String, _>("total_xact_count")
                .unwrap()
                .parse::<i64>()
                .unwrap()
        })
        .sum()
}

#[tokio::test]
async fn the_repository_works_through_pgbouncer_in_transaction_mode() {
    let t = TestDb::migrated().await.unwrap();
    let db = through_pgbouncer(&t, Some(Duration::from_millis(300))).await;
    let conversation = Conversation::repo()
        .create(
            &db,
            NewConversation {
                title: Some("pooled".into()),
                metadata: Json(serde_json::json!({})),
            },
        )
        .await
        .unwrap();

    // 8 tasks on 4 client connections, which PgBouncer spreads over its
    // server connections transaction by transaction.
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let m = Message::repo()
                        .create(
                            &db,
                            NewMessage {
                                conversation_id: conversation.id,
                                role: Role::User,
                                content: format!("{task}.{i}"),
                                model_id: None,
                                tokens_in: 0,
                                tokens_out: 0,
                                parent_id: None,
                            },
                        )
                        .await?;
                    let read = Message::repo().get(&db, m.id).await?;
                    assert_eq!(read.content, m.content);
                    let mut tx = db.begin().await?;
                    let patch = MessagePatch {
                        content: Some(format!("{task}.{i} edited")),
                        ..Default::default()
                    };
                    Message::repo().update(&mut *tx, m.id, patch).await?;
                    tx.commit().await?;
                    // A transaction dropped half-way leaves nothing behind
                    // that a later one could trip over.
                    if i % 5 == 0 {
                        let mut abandoned = db.begin().await?;
                        Message::repo().get(&mut *abandoned, m.id).await?;
                    }
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let edited = Message::repo()
        .count(&db, Message::CONTENT.like("% edited"))
        .await
        .unwrap();
    assert_eq!(edited, 200);
    assert!(
        transactions_carried(&t).await >= 600,
        "the calls went through PgBouncer"
    );

    // The statement timeout travels as SET LOCAL, in and out of transactions.
    let slow = sqlx::query("SELECT pg_sleep(2)").execute(&db).await;
    let code = |r: Result<_, sqlx::Error>| match r {
        Err(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        _ => None,
    };
    assert_eq!(
        code(slow).as_deref(),
        Some("57014"),
        "canceled by the timeout"
    );
    let mut tx = db.begin().await.unwrap();
    let slow = sqlx::query("SELECT pg_sleep(2)").execute(&mut *tx).await;
    assert_eq!(code(slow).as_deref(), Some("57014"));
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn the_migration_runner_refuses_a_pgbouncer_url() {
    let t = TestDb::empty().await.unwrap();
    let root = mandrake_storage::cluster::workspace_root().unwrap();
    let migrations = Migrations::from_dir(root.join("migrations")).unwrap();
    let url = format!("{}&pgbouncer=true", t.url());
    let err = migrate(&url, &migrations, &MigrateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Migration(m) if m.to_string().contains("direct URL")),
        "{err}"
    );
    // Nothing ran.
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            .fetch_one(t.db())
            .await
            .unwrap();
    assert_eq!(tables, 0);
}

/// `n` messages created from three other clients of the same PgBouncer:
/// every call must succeed (a LISTEN left on a pooled server connection
/// made them fail with "unexpected message: NotificationResponse" although
/// their rows committed).
async fn create_from_other_clients(t: &TestDb, conversation: uuid::Uuid, n: usize) {
    let clients = [
        through_pgbouncer(t, None).await,
        through_pgbouncer(t, None).await,
        through_pgbouncer(t, None).await,
    ];
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(c, db)| {
            tokio::spawn(async move {
                for i in (c..n).step_by(3) {
                    Message::repo()
                        .create(
                            &db,
                            NewMessage {
                                conversation_id: conversation,
                                role: Role::User,
                                content: format!("{i}"),
                                model_id: None,
                                tokens_in: 0,
                                tokens_out: 0,
                                parent_id: None,
                            },
                        )
                        .await
                        .map_err(|e| format!("create {i} from client {c}: {e}"))?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_feed_behind_pgbouncer_without_a_direct_url_is_refused_at_once() {
    let t = TestDb::migrated().await.unwrap();
    let db = through_pgbouncer(&t, None).await;
    let err = Message::subscribe(&db, mandrake_storage::Filter::all())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NeedsSession { .. }), "{err}");
    assert!(err.to_string().contains("MANDRAKE_DIRECT_URL"), "{err}");
    let c = mandrake_tests::conversation(&db, "refused feed").await;
    create_from_other_clients(&t, c.id, 200).await;
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND query LIKE 'LISTEN%'",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(listening, 0, "no LISTEN anywhere");
}

#[tokio::test]
async fn four_feeds_behind_pgbouncer_read_on_the_feed_url_and_disturb_no_client() {
    let t = TestDb::migrated().await.unwrap();
    // Four applications, as four quickstarts would be: each a pool through
    // PgBouncer, its feed reading slots on the server itself.
    let settings = Settings {
        pool_size: 2,
        pgbouncer: true,
        feed_url: Some(t.url()),
        ..Settings::default()
    };
    let mut apps = Vec::new();
    for _ in 0..4 {
        let db = Db::connect_options(t.through_pgbouncer().unwrap(), &settings)
            .await
            .unwrap();
        apps.push(db);
    }
    let c = mandrake_tests::conversation(&apps[0], "live behind pgbouncer").await;
    let mut feeds = Vec::new();
    for db in &apps {
        let live = Message::subscribe(db, Message::CONVERSATION_ID.eq(c.id))
            .await
            .unwrap();
        feeds.push(live);
    }
    create_from_other_clients(&t, c.id, 200).await;
    for live in &mut feeds {
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 200 {
            let change = tokio::time::timeout(Duration::from_secs(10), live.next())
                .await
                .expect("a change within 10 s")
                .unwrap()
                .unwrap();
            match change {
                mandrake_storage::Change::Inserted(m) => {
                    seen.insert(m.content);
                }
                other => panic!("expected Inserted, got {other:?}"),
            }
        }
    }
}
