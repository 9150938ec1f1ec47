//! The change feed of `#[record(notify)]` tables on real PostgreSQL, decoded
//! from the WAL: every committed change once, in commit order, nothing from
//! a rollback, filtered on any column, a `Gap` after a lost connection, and
//! durable consumers that resume after their process is killed.

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
        parent_id: None,
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

/// How many decoding streams (temporary slots) read this database.
async fn decoders(db: &Db) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_replication_slots \
         WHERE database = current_database() AND slot_name LIKE 'mandrake\\_feed\\_%'",
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
async fn a_terminated_decoder_yields_an_error_then_a_gap_and_goes_on() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "live").await;
    let mut changes = Message::subscribe(db, Filter::all()).await.unwrap();
    assert_eq!(decoders(db).await, 1);

    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND backend_type = 'walsender' \
         AND query LIKE 'START_REPLICATION%') k",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(terminated, 1);
    let err = tokio::time::timeout(Duration::from_secs(10), changes.next())
        .await
        .expect("the interruption within 10 s")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, mandrake_storage::Error::FeedInterrupted(_)),
        "{err}"
    );
    let gap = next(&mut changes).await;
    assert!(matches!(gap, Change::Gap), "expected Gap, got {gap:?}");

    let after = post(db, c.id, "after the gap").await;
    assert_eq!(inserted(next(&mut changes).await).id, after.id);
}

#[tokio::test]
async fn subscriptions_share_one_decoder_that_ends_with_the_last_of_them() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "shared").await;
    let mut first = Message::subscribe(db, Filter::all()).await.unwrap();
    let second = Message::subscribe(db, Message::CONVERSATION_ID.eq(c.id))
        .await
        .unwrap();
    assert_eq!(decoders(db).await, 1);
    drop(second);
    let m = post(db, c.id, "still heard").await;
    assert_eq!(inserted(next(&mut first).await).id, m.id);
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while decoders(db).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "still decoding");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_filter_on_any_column_applies_to_the_row_as_committed() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "any column").await;
    let mut wanted = Message::subscribe(db, Message::CONTENT.eq("wanted"))
        .await
        .unwrap();
    post(db, c.id, "other").await;
    let m = post(db, c.id, "wanted").await;
    let got = inserted(next(&mut wanted).await);
    assert_eq!((got.id, got.content.as_str()), (m.id, "wanted"));
}

#[tokio::test]
async fn a_table_outside_the_publication_is_refused_instead_of_staying_silent() {
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
async fn waiting_changes_are_decoded_in_batches() {
    if std::env::var("DATABASE_URL").is_ok() {
        return; // a given server may not load pg_stat_statements
    }
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    if !mandrake_tests::pg_stat_statements_usable(db).await {
        return;
    }
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
    // The decoding statements this database ran (a fresh database: its counts start at 0).
    let fetches: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND query LIKE '%jsonb_populate_record%'",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert!(
        (1..=500).contains(&fetches),
        "5,000 changes took {fetches} decoding statements"
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

/// The contents a durable consumer's process printed, one line each.
fn printed(lines: &std::sync::mpsc::Receiver<String>, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("the consumer printed {i} of {count} changes"))
        })
        .collect()
}

/// Runs [`durable_consumer_process`] as a process of its own on `url`; its
/// printed contents arrive on the receiver.
fn consumer(url: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "durable_consumer_process",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("MANDRAKE_TEST_CONSUMER_URL", url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(content) = line.strip_prefix("consumed ") {
                let _ = send.send(content.to_owned());
            }
        }
    });
    (child, receive)
}

/// The durable consumer of the test below, in a process of its own:
/// acknowledges each change, then prints it. Run only by that test.
#[tokio::test]
#[ignore = "the child process of a_killed_durable_consumer_gets_every_change_once_after_a_restart"]
async fn durable_consumer_process() {
    let url = std::env::var("MANDRAKE_TEST_CONSUMER_URL").unwrap();
    let settings = mandrake_storage::Settings {
        pool_size: 2,
        ..Default::default()
    };
    let db = Db::connect_url(&url, &settings).await.unwrap();
    let mut changes = Message::subscribe_durable(&db, "killed", Filter::all())
        .await
        .unwrap();
    println!("consumed ready");
    loop {
        let change = changes.recv().await.unwrap();
        changes.ack().await.unwrap();
        match change {
            Change::Inserted(m) => println!("consumed {}", m.content),
            other => println!("consumed unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_killed_durable_consumer_gets_every_change_once_after_a_restart() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "durable").await;
    let (mut child, lines) = consumer(&t.url());
    assert_eq!(printed(&lines, 1), ["ready"]);
    for i in 0..10 {
        post(db, c.id, &format!("before {i}")).await;
    }
    let before: Vec<String> = (0..10).map(|i| format!("before {i}")).collect();
    assert_eq!(printed(&lines, 10), before);
    child.kill().unwrap();
    child.wait().unwrap();

    // 1,000 changes while it is down, in 100 transactions.
    let mut committed = Vec::new();
    for batch in 0..100 {
        let rows: Vec<NewMessage> = (0..10)
            .map(|i| message(c.id, &format!("while down {}", batch * 10 + i)))
            .collect();
        committed.extend(rows.iter().map(|m| m.content.clone()));
        Message::repo().create_many(db, rows).await.unwrap();
    }

    let (mut child, lines) = consumer(&t.url());
    assert_eq!(printed(&lines, 1), ["ready"]);
    let got = printed(&lines, 1000);
    let last = post(db, c.id, "after").await;
    assert_eq!(printed(&lines, 1), [last.content]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(got, committed, "all 1,000 in commit order, none twice");

    // The slot stays until it is dropped.
    let slots: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'mandrake_killed'",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(slots, 1);
    // Once the killed process's backend has noticed and let the slot go.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(err) = sqlx::query("SELECT pg_drop_replication_slot('mandrake_killed')")
        .execute(db)
        .await
    {
        assert!(tokio::time::Instant::now() < deadline, "{err}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_durable_consumer_that_did_not_ack_gets_the_changes_again() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "redelivered").await;
    let mut changes = Message::subscribe_durable(db, "forgetful", Filter::all())
        .await
        .unwrap();
    let (a, b) = (post(db, c.id, "a").await, post(db, c.id, "b").await);
    let first = |change: Change<Message>| inserted(change).id;
    assert_eq!(first(changes.recv().await.unwrap()), a.id);
    changes.ack().await.unwrap();
    assert_eq!(first(changes.recv().await.unwrap()), b.id);
    drop(changes);
    let mut again = Message::subscribe_durable(db, "forgetful", Filter::all())
        .await
        .unwrap();
    assert_eq!(
        first(again.recv().await.unwrap()),
        b.id,
        "b was not acknowledged"
    );
    drop(again);
    // What `db status` shows of it: b pending, committed when it was.
    let mut conn = mandrake_storage::connect_one(&t.url()).await.unwrap();
    let slots = mandrake_storage::feed_slots(&mut conn).await.unwrap();
    let slot = slots
        .iter()
        .find(|s| s.name == "mandrake_forgetful")
        .unwrap();
    assert!(slot.durable && slot.lag_bytes > 0, "{slot:?}");
    let pending = slot.oldest_pending.expect("b is pending");
    assert!((pending - b.created_at).num_seconds().abs() < 5, "{slot:?}");
    mandrake_storage::drop_consumer(&mut conn, "forgetful")
        .await
        .unwrap();
    let slots = mandrake_storage::feed_slots(&mut conn).await.unwrap();
    assert!(!slots.iter().any(|s| s.name == "mandrake_forgetful"));
    let bad = Message::subscribe_durable(db, "No Spaces", Filter::all()).await;
    assert!(matches!(bad, Err(mandrake_storage::Error::Config(_))));
}

#[tokio::test]
async fn a_server_without_logical_wal_is_refused_at_once_naming_the_setting() {
    if std::env::var("DATABASE_URL").is_ok() {
        return; // the test restarts a server of its own
    }
    let cluster = mandrake_storage::testing::throwaway_cluster().unwrap();
    cluster.start().unwrap();
    let admin = mandrake_storage::connect_one(&cluster.url("postgres"))
        .await
        .unwrap();
    sqlx::query("ALTER SYSTEM SET wal_level = replica")
        .execute(&mut { admin })
        .await
        .unwrap();
    cluster.stop().unwrap();
    cluster.start().unwrap();
    let url = cluster.url("postgres");
    let dir = mandrake_storage::cluster::workspace_root()
        .unwrap()
        .join("migrations");
    let migrations = mandrake_storage::migrate::Migrations::from_dir(dir).unwrap();
    mandrake_storage::migrate::migrate(&url, &migrations, &Default::default())
        .await
        .unwrap();
    let db = Db::connect_url(&url, &Default::default()).await.unwrap();
    let err = Message::subscribe(&db, Filter::all()).await.unwrap_err();
    assert!(
        matches!(&err, mandrake_storage::Error::WalLevel { current } if current == "replica"),
        "{err}"
    );
    assert!(err.to_string().contains("rds.logical_replication"), "{err}");
    let err = Message::subscribe_durable(&db, "never", Filter::all())
        .await
        .unwrap_err();
    assert!(
        matches!(err, mandrake_storage::Error::WalLevel { .. }),
        "{err}"
    );
    cluster.destroy().unwrap();
}

#[tokio::test]
async fn the_applications_role_may_not_read_slots_and_is_told_what_to_do() {
    let t = TestDb::migrated().await.unwrap();
    t.app_db().await.unwrap(); // makes the role
    let options = t
        .connect_options()
        .username(mandrake_storage::testing::APP_ROLE);
    let app = Db::connect_options(options, &Default::default())
        .await
        .unwrap();
    let err = Message::subscribe(&app, Filter::all()).await.unwrap_err();
    assert!(
        matches!(&err, mandrake_storage::Error::FeedRole { role } if role == "mandrake_app"),
        "{err}"
    );
    assert!(err.to_string().contains("MANDRAKE_FEED_URL"), "{err}");
}

#[tokio::test]
async fn a_consumer_whose_slot_the_server_gave_up_gets_an_error_then_a_gap_and_goes_on() {
    if std::env::var("DATABASE_URL").is_ok() {
        return; // the test changes a server setting of its own cluster
    }
    let cluster = mandrake_storage::testing::throwaway_cluster().unwrap();
    cluster.start().unwrap();
    let url = cluster.url("postgres");
    let dir = mandrake_storage::cluster::workspace_root()
        .unwrap()
        .join("migrations");
    let migrations = mandrake_storage::migrate::Migrations::from_dir(dir).unwrap();
    mandrake_storage::migrate::migrate(&url, &migrations, &Default::default())
        .await
        .unwrap();
    let db = Db::connect_url(&url, &Default::default()).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sql).execute(&db).await.unwrap();
    }
    let c = conversation(&db, "behind").await;
    let mut changes = Message::subscribe_durable(&db, "slow", Filter::all())
        .await
        .unwrap();
    // Far more WAL than the slot may hold, then checkpoints: the server
    // gives the slot up.
    let big = "x".repeat(2000);
    for _ in 0..20 {
        let rows: Vec<NewMessage> = (0..1000).map(|_| message(c.id, &big)).collect();
        Message::repo().create_many(&db, rows).await.unwrap();
    }
    let lost = async {
        loop {
            for sql in ["SELECT pg_switch_wal()", "CHECKPOINT"] {
                sqlx::query(sql).execute(&db).await.unwrap();
            }
            let status: String = sqlx::query_scalar(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'mandrake_slow'",
            )
            .fetch_one(&db)
            .await
            .unwrap();
            if status == "lost" {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), lost)
        .await
        .expect("the server gives the slot up");
    let err = changes.recv().await.unwrap_err();
    assert!(
        matches!(&err, mandrake_storage::Error::SlotLost { slot } if slot == "mandrake_slow"),
        "{err}"
    );
    assert!(matches!(changes.recv().await.unwrap(), Change::Gap));
    let after = post(&db, c.id, "after the loss").await;
    assert_eq!(inserted(changes.recv().await.unwrap()).id, after.id);
    cluster.destroy().unwrap();
}

mod computed {
    use super::*;
    use chrono::{DateTime, Utc};

    /// A feed table with a generated column, which PostgreSQL does not
    /// publish: the feed computes it. Also the table before a deploy added
    /// `extra` (see `after`).
    #[derive(Record, Clone)]
    #[record(table = "notes", notify)]
    pub struct Note {
        pub id: Uuid,
        pub body: String,
        #[record(generated = "length(body)")]
        pub body_length: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    /// After it: a NOT NULL column with a default.
    pub mod after {
        use super::*;
        #[derive(Record, Clone)]
        #[record(table = "notes", notify)]
        pub struct Note {
            pub id: Uuid,
            pub body: String,
            #[record(generated = "length(body)")]
            pub body_length: i32,
            #[record(default = "'x'")]
            pub extra: String,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    async fn next_note<T: Record + std::fmt::Debug>(changes: &mut Subscription<T>) -> Change<T> {
        tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("a change within 10 s")
            .expect("the stream goes on")
            .expect("no error")
    }

    #[tokio::test]
    async fn a_generated_column_arrives_computed_and_can_be_filtered_on() {
        let t = TestDb::with_tables(&[Note::schema()]).await.unwrap();
        let db = t.db();
        let mut all = Note::subscribe(db, Filter::all()).await.unwrap();
        let mut long = Note::subscribe(db, Note::BODY_LENGTH.gt(3)).await.unwrap();
        let new = |body: &str| NewNote { body: body.into() };
        let short = Note::repo().create(db, new("hi")).await.unwrap();
        let longer = Note::repo().create(db, new("hello")).await.unwrap();
        Note::repo()
            .update(
                db,
                short.id,
                NotePatch {
                    body: Some("a longer one".into()),
                },
            )
            .await
            .unwrap();
        match next_note(&mut all).await {
            Change::Inserted(n) => assert_eq!((n.id, n.body_length), (short.id, 2)),
            other => panic!("{other:?}"),
        }
        match next_note(&mut all).await {
            Change::Inserted(n) => assert_eq!((n.id, n.body_length), (longer.id, 5)),
            other => panic!("{other:?}"),
        }
        match next_note(&mut all).await {
            Change::Updated(n) => assert_eq!((n.id, n.body_length), (short.id, 12)),
            other => panic!("{other:?}"),
        }
        match next_note(&mut long).await {
            Change::Inserted(n) => assert_eq!(n.id, longer.id),
            other => panic!("{other:?}"),
        }
        match next_note(&mut long).await {
            Change::Updated(n) => assert_eq!((n.id, n.body_length), (short.id, 12)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_durable_consumer_reads_changes_written_before_a_column_was_added() {
        let t = TestDb::with_tables(&[Note::schema()]).await.unwrap();
        let db = t.db();
        let old = Note::subscribe_durable(db, "deploy", Filter::all())
            .await
            .unwrap();
        let written = Note::repo()
            .create(db, NewNote { body: "old".into() })
            .await
            .unwrap();
        drop(old);
        // The deploy: the column comes, and the new binary's consumer resumes.
        sqlx::raw_sql("ALTER TABLE notes ADD COLUMN extra text NOT NULL DEFAULT 'x'")
            .execute(db)
            .await
            .unwrap();
        let mut new = after::Note::subscribe_durable(db, "deploy", Filter::all())
            .await
            .unwrap();
        match new.recv().await.unwrap() {
            Change::Inserted(n) => {
                assert_eq!(
                    (n.id, n.extra.as_str(), n.body_length),
                    (written.id, "x", 3)
                )
            }
            other => panic!("{other:?}"),
        }
        new.ack().await.unwrap();
        let made = after::Note::repo()
            .create(
                db,
                after::NewNote {
                    body: "new".into(),
                    extra: "given".into(),
                },
            )
            .await
            .unwrap();
        match new.recv().await.unwrap() {
            Change::Inserted(n) => assert_eq!((n.id, n.extra.as_str()), (made.id, "given")),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn one_durable_name_has_one_live_consumer_which_status_shows_and_drop_refuses() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "single").await;
    let mut first = Message::subscribe_durable(db, "single", Filter::all())
        .await
        .unwrap();
    match Message::subscribe_durable(db, "single", Filter::all()).await {
        Err(mandrake_storage::Error::ConsumerBusy { name, holder }) => {
            assert_eq!(name, "single");
            assert!(holder.unwrap().contains("backend pid"));
        }
        other => panic!("expected ConsumerBusy, got {other:?}"),
    }
    // Between its reads it shows as live, and cannot be dropped.
    let m = post(db, c.id, "one").await;
    assert_eq!(inserted(first.recv().await.unwrap()).id, m.id);
    first.ack().await.unwrap();
    let mut conn = mandrake_storage::connect_one(&t.url()).await.unwrap();
    let slots = mandrake_storage::feed_slots(&mut conn).await.unwrap();
    let slot = slots.iter().find(|s| s.name == "mandrake_single").unwrap();
    assert!(slot.live, "{slot:?}");
    assert!(matches!(
        mandrake_storage::drop_consumer(&mut conn, "single").await,
        Err(mandrake_storage::Error::ConsumerBusy { .. })
    ));
    // Once it is gone, another takes the name and goes on from its ack.
    drop(first);
    let second = post(db, c.id, "two").await;
    let mut next_one = Message::subscribe_durable(db, "single", Filter::all())
        .await
        .unwrap();
    assert_eq!(inserted(next_one.recv().await.unwrap()).id, second.id);
    drop(next_one);
    // Its backend ends once the server sees the connection closed.
    let mut live = true;
    for _ in 0..50 {
        let slots = mandrake_storage::feed_slots(&mut conn).await.unwrap();
        live = slots.iter().any(|s| s.name == "mandrake_single" && s.live);
        if !live {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!live, "the consumer's session is gone");
    mandrake_storage::drop_consumer(&mut conn, "single")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_truncate_reaches_live_and_durable_consumers_as_a_gap() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let c = conversation(db, "emptied").await;
    let mut live = Message::subscribe(db, Filter::all()).await.unwrap();
    let mut durable = Message::subscribe_durable(db, "emptied", Filter::all())
        .await
        .unwrap();
    let before = post(db, c.id, "before").await;
    sqlx::raw_sql("TRUNCATE messages CASCADE")
        .execute(db)
        .await
        .unwrap();
    let after = post(db, c.id, "after").await;
    assert_eq!(inserted(next(&mut live).await).id, before.id);
    assert!(matches!(next(&mut live).await, Change::Gap));
    assert_eq!(inserted(next(&mut live).await).id, after.id);
    assert_eq!(inserted(durable.recv().await.unwrap()).id, before.id);
    assert!(matches!(durable.recv().await.unwrap(), Change::Gap));
    assert_eq!(inserted(durable.recv().await.unwrap()).id, after.id);
}
