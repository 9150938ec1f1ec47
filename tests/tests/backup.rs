//! Backups on real PostgreSQL: a pg_dump archive brings every row back,
//! `--force` replaces the live database only when the restore succeeded,
//! `verify` tells a good archive from a damaged one, and point-in-time
//! recovery of a cluster stops at the instant asked for.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use mandrake_storage::backup::{self, RestoreTarget};
use mandrake_storage::migrate::Migrations;
use mandrake_storage::testing::{TestDb, throwaway_cluster};
use mandrake_storage::{BackupError, Db, Error, Record, Settings, connect_one};
use mandrake_tests::conversation;
use mandrake_types::*;
use uuid::Uuid;

type Row = (Uuid, Uuid, String, DateTime<Utc>, DateTime<Utc>);

async fn messages_of(url: &str) -> Vec<Row> {
    let mut conn = connect_one(url).await.unwrap();
    sqlx::query_as(
        "SELECT id, conversation_id, content, created_at, updated_at FROM messages ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

async fn write_messages(db: &Db, conversation_id: Uuid, n: usize, label: &str) {
    let rows = (0..n)
        .map(|i| NewMessage {
            conversation_id,
            role: Role::User,
            content: format!("{label} {i}"),
            model_id: None,
            tokens_in: 0,
            tokens_out: 0,
            parent_id: None,
        })
        .collect();
    Message::repo().create_many(db, rows).await.unwrap();
}

fn scratch_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mandrake-backups-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn migrations() -> Migrations {
    let root = mandrake_storage::cluster::workspace_root().unwrap();
    Migrations::from_dir(root.join("migrations")).unwrap()
}

#[tokio::test]
async fn a_restore_brings_back_every_row_with_its_ids_and_timestamps() {
    let t = TestDb::migrated().await.unwrap();
    let (a, b) = (
        conversation(t.db(), "a").await,
        conversation(t.db(), "b").await,
    );
    write_messages(t.db(), a.id, 10_000, "a").await;
    write_messages(t.db(), b.id, 10, "b").await;
    let before = messages_of(&t.url()).await;
    assert_eq!(before.len(), 10_010);

    let file = scratch_file("rows.dump");
    let made = backup::backup(&t.url(), &file, |_| {}).await.unwrap();
    assert!(made.bytes > 0);
    assert!(made.tables.iter().any(|t| t == "messages"), "{made:?}");

    Conversation::repo().delete(t.db(), a.id).await.unwrap();
    assert_eq!(messages_of(&t.url()).await.len(), 10);

    let restored = backup::restore(&t.url(), &file, &RestoreTarget::New)
        .await
        .unwrap();
    assert_ne!(restored.database, t.name());
    assert_eq!(messages_of(&restored.url).await, before);
    assert_eq!(
        messages_of(&t.url()).await.len(),
        10,
        "the live database is left alone"
    );
}

#[tokio::test]
async fn force_replaces_the_live_database_and_a_damaged_file_changes_nothing() {
    let t = TestDb::migrated().await.unwrap();
    let c = conversation(t.db(), "kept").await;
    write_messages(t.db(), c.id, 100, "kept").await;
    let file = scratch_file("force.dump");
    backup::backup(&t.url(), &file, |_| {}).await.unwrap();
    let backed_up = messages_of(&t.url()).await;

    // After the backup: more rows, which the forced restore takes away.
    write_messages(t.db(), c.id, 5, "later").await;
    let live = messages_of(&t.url()).await;

    // A truncated copy: refused, and the live database is exactly as it was.
    let bytes = std::fs::read(&file).unwrap();
    let damaged = scratch_file("damaged.dump");
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let target = RestoreTarget::Replace(t.name().to_owned());
    let err = backup::restore(&t.url(), &damaged, &target)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Backup(_)), "{err}");
    assert_eq!(messages_of(&t.url()).await, live);

    // The real thing: the pool's sessions are ended, the name now holds the backup.
    let restored = backup::restore(&t.url(), &file, &target).await.unwrap();
    assert_eq!(restored.database, t.name());
    assert_eq!(messages_of(&t.url()).await, backed_up);
    let kept = restored.replaced.expect("the replaced database is kept");
    let mut conn = connect_one(&t.url()).await.unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&kept)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(exists, "{kept} is kept");
}

#[tokio::test]
async fn a_restore_target_name_postgres_would_cut_is_refused() {
    let t = TestDb::migrated().await.unwrap();
    let long = "x".repeat(64);
    for target in [
        RestoreTarget::Named(long.clone()),
        RestoreTarget::Replace(long.clone()),
    ] {
        let err = backup::restore(&t.url(), &scratch_file("none.dump"), &target)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Backup(BackupError::NameTooLong { name }) if *name == long),
            "{err}"
        );
        assert!(err.to_string().contains("at most 63 bytes"), "{err}");
    }
}

#[tokio::test]
async fn verify_passes_a_good_archive_and_refuses_a_truncated_one() {
    let t = TestDb::migrated().await.unwrap();
    let c = conversation(t.db(), "v").await;
    write_messages(t.db(), c.id, 42, "v").await;
    let file = scratch_file("verify.dump");
    backup::backup(&t.url(), &file, |_| {}).await.unwrap();

    let report = backup::verify(&t.url(), &file, &migrations())
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    assert!(
        report.tables.contains(&("messages".into(), 42)),
        "{report:?}"
    );
    assert!(report.migrated_to.is_some());

    let bytes = std::fs::read(&file).unwrap();
    let truncated = scratch_file("verify-truncated.dump");
    std::fs::write(&truncated, &bytes[..bytes.len() - 200]).unwrap();
    let err = backup::verify(&t.url(), &truncated, &migrations())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("verify-truncated.dump"), "{err}");

    // A database the migrations did not build is a problem, not a pass.
    let other = TestDb::with_tables(&[Conversation::schema()])
        .await
        .unwrap();
    let plain = scratch_file("plain.dump");
    backup::backup(&other.url(), &plain, |_| {}).await.unwrap();
    let report = backup::verify(&t.url(), &plain, &migrations())
        .await
        .unwrap();
    assert!(!report.ok());
    assert!(
        report.problems[0].contains("no migration history"),
        "{report:?}"
    );
}

#[tokio::test]
async fn point_in_time_recovery_stops_at_the_instant_asked_for() {
    let cluster = throwaway_cluster().unwrap();
    cluster.start().unwrap();
    cluster.set_archiving(true).await.unwrap();
    assert!(cluster.archiving().await.unwrap().on);
    let url = cluster.ensure_database("app").await.unwrap();
    mandrake_storage::migrate::migrate(&url, &migrations(), &Default::default())
        .await
        .unwrap();
    let db = Db::connect_url(&url, &Settings::default()).await.unwrap();
    let c = conversation(&db, "pitr").await;
    let base = cluster.base_backup().unwrap();

    write_messages(&db, c.id, 50, "A").await;
    // The instant to recover to, by the server's clock.
    let instant: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    write_messages(&db, c.id, 50, "B").await;
    db.close().await;

    // A time before the base backup cannot be reached: refused, nothing made.
    let err = cluster
        .recover(&base, "2020-01-01 00:00:00+00")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("before the base backup"), "{err}");
    let copy = cluster.recover(&base, &instant.to_rfc3339()).await.unwrap();
    let contents: Vec<String> = {
        let mut conn = connect_one(&copy.url("app")).await.unwrap();
        sqlx::query_scalar("SELECT content FROM messages")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(contents.len(), 50, "A is back, B is not");
    assert!(contents.iter().all(|c| c.starts_with("A ")));
    // The original still has both.
    assert_eq!(messages_of(&url).await.len(), 100);

    // --force: the copy becomes the cluster, the old data is kept aside.
    let kept = cluster.replace_with(&copy).unwrap();
    assert!(kept.join("PG_VERSION").exists());
    assert!(!copy.root().exists());
    assert_eq!(messages_of(&url).await.len(), 50);
    cluster.stop().unwrap();
}
