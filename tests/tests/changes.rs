//! The change feed of `#[record(notify)]` tables on real PostgreSQL: every
//! committed change once, in commit order, nothing from a rollback, filtered
//! by parent, and a `Gap` after a lost connection.

use std::time::Duration;

use futures_util::StreamExt;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Change, Db, Filter, Record, Subscription};
use mandrake_tests::conversation;
use mandrake_types::*;
use uuid::Uuid;

fn message(conversation_id: Uuid, content: &str) -> NewMessage {
    NewMessage {
        conversation_id,
        role: Role::User,
        content: content.into(),
        model_id: None,
        tokens_in: 0,
        tokens_out: 0,
    }
}

/// A user message in `conversation_id`, created.
async fn post(db: &Db, conversation_id: Uuid, content: &str) -> Message {
    Message::repo()
        .create(db, message(conversation_id, content))
        .await
        .unwrap()
}

/// The next change, or a panic after 10 s.
async fn next(changes: &mut Subscription<Message>) -> Change<Message> {
    tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("a change within 10 s")
        .expect("the stream goes on")
        .expect("no error")
}

fn inserted(change: Change<Message>) -> Message {
    match change {
        Change::Inserted(m) => m,
        other => panic!("expected Inserted, got {other:?}"),
    }
}

fn deleted(change: Change<Message>) -> Uuid {
    match change {
        Change::Deleted(id) => id,
        other => panic!("expected Deleted, got {other:?}"),
    }
}

/// How many backends LISTEN on the messages channel.
async fn listeners(db: &Db) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND query = 'LISTEN \"mandrake_messages\"'",
    )
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_thousand_inserts_in_a_hundred_transactions_arrive_once_each_in_commit_order() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "live").await;
    let mut changes = Message::subscribe(db, Filter::all()).await.unwrap();

    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for batch in 0..100 {
                let mut tx = db.begin().await.unwrap();
                let rows: Vec<NewMessage> = (0..10)
                    .map(|i| message(c.id, &format!("{batch}.{i}")))
                    .collect();
                let made = Message::repo().create_many(&mut *tx, rows).await.unwrap();
                tx.commit().await.unwrap();
                ids.extend(made.iter().map(|m| m.id));
            }
            ids
        })
    };
    let mut received = Vec::new();
    while received.len() < 1000 {
        received.push(inserted(next(&mut changes).await));
    }
    let written = writer.await.unwrap();
    let ids: Vec<Uuid> = received.iter().map(|m| m.id).collect();
    assert_eq!(ids, written, "each message once, in commit order");
    assert_eq!(received[999].content, "99.9");

    // Nothing more is waiting: a marker written now is the next change.
    let marker = post(db, c.id, "marker").await;
    assert_eq!(inserted(next(&mut changes).await).id, marker.id);
}

#[tokio::test]
async fn a_rolled_back_transaction_sends_nothing() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "live").await;
    let mut changes = Message::subscribe(db, Filter::all()).await.unwrap();

    let mut tx = db.begin().await.unwrap();
    for i in 0..5 {
        Message::repo()
            .create(&mut *tx, message(c.id, &format!("never {i}")))
            .await
            .unwrap();
    }
    tx.rollback().await.unwrap();
    let marker = post(db, c.id, "marker").await;
    assert_eq!(inserted(next(&mut changes).await).id, marker.id);
}

#[tokio::test]
async fn a_filter_on_one_conversation_never_sees_another() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let (a, b) = (
        conversation(db, "live").await,
        conversation(db, "live").await,
    );
    let mut changes = Message::subscribe(db, Message::CONVERSATION_ID.eq(a.id))
        .await
        .unwrap();

    let mut expected = Vec::new();
    for i in 0..20 {
        let to_b = post(db, b.id, &format!("b{i}")).await;
        Message::repo().delete(db, to_b.id).await.unwrap();
        if i % 2 == 0 {
            let to_a = post(db, a.id, &format!("a{i}")).await;
            expected.push(to_a.id);
        }
    }
    for id in expected {
        let m = inserted(next(&mut changes).await);
        assert_eq!((m.id, m.conversation_id), (id, a.id));
    }
    // A last change to B, then one to A: only A's arrives.
    post(db, b.id, "b last").await;
    let last = post(db, a.id, "a last").await;
    assert_eq!(inserted(next(&mut changes).await).id, last.id);
}

#[tokio::test]
async fn updates_and_deletes_arrive_even_for_a_megabyte_row() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "live").await;
    let mut changes = Message::subscribe(db, Filter::all()).await.unwrap();

    let big = "x".repeat(1 << 20);
    let m = post(db, c.id, &big).await;
    assert_eq!(inserted(next(&mut changes).await).content.len(), 1 << 20);

    let patch = MessagePatch {
        content: Some(format!("{big}y")),
        ..Default::default()
    };
    Message::repo().update(db, m.id, patch).await.unwrap();
    match next(&mut changes).await {
        Change::Updated(updated) => assert!(updated.content.ends_with('y')),
        other => panic!("expected Updated, got {other:?}"),
    }

    Message::repo().delete(db, m.id).await.unwrap();
    assert_eq!(deleted(next(&mut changes).await), m.id);

    // Deleting the conversation cascades to its messages: each is announced.
    let kept = post(db, c.id, "kept").await;
    assert_eq!(inserted(next(&mut changes).await).id, kept.id);
    Conversation::repo().delete(db, c.id).await.unwrap();
    assert_eq!(deleted(next(&mut changes).await), kept.id);
}

#[tokio::test]
async fn a_terminated_listener_yields_a_gap_and_goes_on() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "live").await;
    let mut changes = Message::subscribe(db, Filter::all()).await.unwrap();
    assert_eq!(listeners(db).await, 1);

    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query = 'LISTEN \"mandrake_messages\"') k",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(terminated, 1);
    let gap = next(&mut changes).await;
    assert!(matches!(gap, Change::Gap), "expected Gap, got {gap:?}");

    let after = post(db, c.id, "after the gap").await;
    assert_eq!(inserted(next(&mut changes).await).id, after.id);
}

#[tokio::test]
async fn dropping_the_stream_ends_the_listen() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let changes = Message::subscribe(db, Filter::all()).await.unwrap();
    assert_eq!(listeners(db).await, 1);
    drop(changes);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listeners(db).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_filter_on_a_column_the_notifications_do_not_carry_is_refused() {
    let t = TestDb::migrated().await.unwrap();
    let err = Message::subscribe(t.db(), Message::CONTENT.eq("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, mandrake_storage::Error::Schema(m) if m.contains("not on content")),
        "{err}"
    );
}

#[tokio::test]
async fn a_database_without_the_trigger_is_refused_instead_of_staying_silent() {
    let t = TestDb::with_tables(&[Conversation::schema()])
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE messages (id UUID PRIMARY KEY, conversation_id UUID NOT NULL, \
         role TEXT NOT NULL, content TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL, \
         updated_at TIMESTAMPTZ NOT NULL)",
    )
    .execute(t.db())
    .await
    .unwrap();
    let err = Message::subscribe(t.db(), Filter::all()).await.unwrap_err();
    assert!(
        matches!(&err, mandrake_storage::Error::Schema(m) if m.contains("cargo xtask migrate")),
        "{err}"
    );
}

#[tokio::test]
async fn waiting_notifications_are_fetched_in_batches() {
    if std::env::var("DATABASE_URL").is_ok() {
        return; // a given server may not load pg_stat_statements
    }
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(db)
        .await
        .unwrap();
    let c = conversation(db, "bulk").await;
    let mut changes = Message::subscribe(db, Filter::all()).await.unwrap();
    let rows: Vec<NewMessage> = (0..5000).map(|i| message(c.id, &format!("{i}"))).collect();
    Message::repo().create_many(db, rows).await.unwrap();
    for _ in 0..5000 {
        inserted(next(&mut changes).await);
    }
    // The fetches this database ran (a fresh database: its counts start at 0).
    let fetches: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND query LIKE '%jsonb_to_recordset%'",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert!(
        (1..=500).contains(&fetches),
        "5,000 notifications took {fetches} fetches"
    );
}

#[tokio::test]
async fn a_row_moving_out_of_the_filter_reaches_the_subscriber_it_leaves() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let (a, b) = (conversation(db, "A").await, conversation(db, "B").await);
    let m = post(db, a.id, "moving").await;
    let mut of_a = Message::subscribe(db, Message::CONVERSATION_ID.eq(a.id))
        .await
        .unwrap();
    let mut of_b = Message::subscribe(db, Message::CONVERSATION_ID.eq(b.id))
        .await
        .unwrap();
    let patch = MessagePatch {
        conversation_id: Some(b.id),
        ..Default::default()
    };
    Message::repo().update(db, m.id, patch).await.unwrap();
    for changes in [&mut of_a, &mut of_b] {
        match next(changes).await {
            Change::Updated(moved) => {
                assert_eq!((moved.id, moved.conversation_id), (m.id, b.id));
            }
            other => panic!("expected Updated, got {other:?}"),
        }
    }
    // A subscriber of neither hears nothing: the next change of A is A's.
    let marker = post(db, a.id, "marker").await;
    assert_eq!(inserted(next(&mut of_a).await).id, marker.id);
}
