//! Reads from a real streaming replica (`pg_basebackup -R` of a throwaway
//! cluster): `db.read()` goes to the replica once it is up and close behind,
//! `read_after` sees the caller's own write, and a replica that stops or
//! lags sends reads to the primary without an error.

use std::time::{Duration, Instant};

use mandrake_storage::cluster::Cluster;
use mandrake_storage::migrate::{Migrations, migrate};
use mandrake_storage::testing::throwaway_cluster;
use mandrake_storage::{Db, Record, Settings, connect_one};
use mandrake_tests::conversation;
use mandrake_types::*;

/// Stops the replica however the test ends.
struct Stopped(Cluster);
impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.destroy();
    }
}

/// Whether this read was served by a replica.
async fn on_replica(db: &Db) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(db)
        .await
        .unwrap()
}

/// Waits (up to 15 s) until `db.read()` goes where `replica` says.
async fn reads_go_to(db: &Db, replica: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while on_replica(db.read()).await != replica {
        assert!(
            Instant::now() < deadline,
            "reads never went to the replica={replica}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn reads_go_to_a_live_replica_and_fall_back_to_the_primary() {
    let primary = throwaway_cluster().unwrap();
    primary.start().unwrap();
    let url = primary.ensure_database("app").await.unwrap();
    let root = mandrake_storage::cluster::workspace_root().unwrap();
    let migrations = Migrations::from_dir(root.join("migrations")).unwrap();
    migrate(&url, &migrations, &Default::default())
        .await
        .unwrap();
    let replica = Stopped(
        primary
            .start_replica(&primary.root().join("replica"))
            .unwrap(),
    );

    let settings = Settings {
        replica_urls: vec![replica.0.url("app")],
        replica_max_lag: Duration::from_millis(500),
        ..Settings::default()
    };
    let db = Db::connect_url(&url, &settings).await.unwrap();
    assert!(!on_replica(&db).await, "&Db is the primary");
    reads_go_to(&db, true).await;
    assert_eq!(db.usable_replicas(), 1);
    // A tenant's reads stay on the primary, where its tenant is set.
    let tenant = db.bypassing_row_security().tenant(uuid::Uuid::new_v4());
    assert!(!on_replica(tenant.read()).await);
    let token = db.write_token().await.unwrap();
    assert!(!on_replica(tenant.read_after(token).await).await);

    // Read your own write: never NotFound, from the replica once replayed.
    for n in 0..20 {
        let c = conversation(&db, &format!("mine {n}")).await;
        let token = db.write_token().await.unwrap();
        let reader = db.read_after(token).await;
        let again = Conversation::repo().get(reader, c.id).await.unwrap();
        assert_eq!(again.title, c.title);
    }
    let token = db.write_token().await.unwrap();
    assert!(on_replica(db.read_after(token).await).await);

    // A replica whose replay is paused falls behind and is skipped.
    let mut direct = connect_one(&replica.0.url("app")).await.unwrap();
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&mut direct)
        .await
        .unwrap();
    conversation(&db, "while paused").await;
    reads_go_to(&db, false).await;
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&mut direct)
        .await
        .unwrap();
    drop(direct);
    reads_go_to(&db, true).await;

    // A stopped replica: every read still answers, from the primary.
    replica.0.stop().unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let count = Conversation::repo()
            .count(db.read(), mandrake_storage::Filter::all())
            .await;
        assert!(
            count.unwrap() >= 21,
            "a read failed while the replica was down"
        );
        let page = Conversation::recent(db.read(), 5, None).await;
        assert_eq!(
            page.unwrap().items.len(),
            5,
            "a page failed while the replica was down"
        );
    }
    assert!(!on_replica(db.read()).await);
    assert_eq!(db.usable_replicas(), 0);

    // Back up: it is used again.
    replica.0.start().unwrap();
    reads_go_to(&db, true).await;
    primary.stop().unwrap();
}

#[tokio::test]
async fn servers_that_are_not_replicas_of_this_primary_are_never_read() {
    let root = mandrake_storage::cluster::workspace_root().unwrap();
    let migrations = Migrations::from_dir(root.join("migrations")).unwrap();
    let primary = throwaway_cluster().unwrap();
    primary.start().unwrap();
    let url = primary.ensure_database("app").await.unwrap();
    migrate(&url, &migrations, &Default::default())
        .await
        .unwrap();
    // Another cluster with more rows, whose WAL is far ahead of ours, and
    // a streaming replica of it.
    let other = throwaway_cluster().unwrap();
    other.start().unwrap();
    let other_url = other.ensure_database("app").await.unwrap();
    migrate(&other_url, &migrations, &Default::default())
        .await
        .unwrap();
    let other_db = Db::connect_url(&other_url, &Settings::default())
        .await
        .unwrap();
    for n in 0..101 {
        conversation(&other_db, &format!("other {n}")).await;
    }
    for _ in 0..3 {
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&other_db)
            .await
            .unwrap();
        conversation(&other_db, "more WAL").await;
    }
    let foreign = Stopped(other.start_replica(&other.root().join("replica")).unwrap());

    let settings = Settings {
        // A replica of another cluster, and a server in no recovery at all.
        replica_urls: vec![foreign.0.url("app"), other_url.clone()],
        replica_max_lag: Duration::from_secs(5),
        ..Settings::default()
    };
    let db = Db::connect_url(&url, &settings).await.unwrap();
    for n in 0..3 {
        conversation(&db, &format!("ours {n}")).await;
    }
    // From the first read on, for a second and a half: only our rows.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let count = Conversation::repo()
            .count(db.read(), mandrake_storage::Filter::all())
            .await
            .unwrap();
        assert_eq!(count, 3, "a read was answered by another cluster");
        assert_eq!(db.usable_replicas(), 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // With no usable replica, read_after is the primary at once, not after
    // the 5 s lag limit.
    let token = db.write_token().await.unwrap();
    let asked = Instant::now();
    let reader = db.read_after(token).await;
    assert!(
        asked.elapsed() < Duration::from_millis(2500),
        "read_after waited {:?}",
        asked.elapsed()
    );
    assert!(!on_replica(reader).await);
    let count = Conversation::repo()
        .count(reader, mandrake_storage::Filter::all())
        .await
        .unwrap();
    assert_eq!(count, 3);
    other_db.close().await;
    other.stop().unwrap();
    primary.stop().unwrap();
}
