//! Optimistic locking on real PostgreSQL: every write path moves the version,
//! and no write can skip the check by accident.

use chrono::{DateTime, Utc};
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Error, Record};
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Counter {
    pub id: Uuid,
    #[record(unique)]
    pub name: String,
    pub value: i64,
    pub note: Option<String>,
    #[record(version)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

async fn setup() -> (TestDb, Counter) {
    let t = TestDb::with_tables(&[Counter::schema()]).await.unwrap();
    let c = Counter::repo()
        .create(
            t.db(),
            NewCounter {
                name: "hits".into(),
                value: 0,
                note: None,
            },
        )
        .await
        .unwrap();
    (t, c)
}

fn set_value(value: i64) -> CounterPatch {
    CounterPatch {
        value: Some(value),
        ..Default::default()
    }
}

#[tokio::test]
async fn upsert_moves_the_version_so_a_stale_update_is_a_conflict() {
    let (t, c) = setup().await;
    let db = t.db();
    assert_eq!(c.version, 1);
    let upserted = Counter::repo()
        .upsert(
            db,
            NewCounter {
                name: "hits".into(),
                value: 42,
                note: None,
            },
            Counter::ON_NAME,
        )
        .await
        .unwrap();
    assert_eq!(upserted.id, c.id);
    assert_eq!(upserted.version, 2, "the upsert's update branch is a write");
    let stale = Counter::repo()
        .update(db, c.id, set_value(7).expect_version(c.version))
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::Conflict { .. }), "{stale}");
    let now = Counter::repo().get(db, c.id).await.unwrap();
    assert_eq!(now.value, 42, "the upsert's value survives");
}

#[tokio::test]
async fn an_empty_patch_changes_nothing_but_still_checks() {
    let (t, c) = setup().await;
    let db = t.db();
    let same = Counter::repo()
        .update(db, c.id, CounterPatch::default().expect_version(c.version))
        .await
        .unwrap();
    assert_eq!(same.version, c.version, "no version bump");
    assert_eq!(same.updated_at, c.updated_at, "no updated_at bump");
    let moved = Counter::repo()
        .update(db, c.id, set_value(1).expect_version(c.version))
        .await
        .unwrap();
    assert_eq!(moved.version, 2);
    let stale = Counter::repo()
        .update(db, c.id, CounterPatch::default().expect_version(1))
        .await
        .unwrap_err();
    assert!(matches!(stale, Error::Conflict { .. }), "{stale}");
    let missing = Counter::repo()
        .update(
            db,
            Uuid::now_v7(),
            CounterPatch::default().expect_version(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing}");
}

#[tokio::test]
async fn update_unchecked_is_the_explicit_way_past_the_check_and_still_bumps() {
    let (t, c) = setup().await;
    let db = t.db();
    Counter::repo()
        .update(db, c.id, set_value(1).expect_version(1))
        .await
        .unwrap();
    let forced = Counter::repo()
        .update_unchecked(db, c.id, set_value(5))
        .await
        .unwrap();
    assert_eq!(forced.value, 5);
    assert_eq!(forced.version, 3);
    let cleared = Counter::repo()
        .update_unchecked(
            db,
            c.id,
            CounterPatch {
                note: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(cleared.version, 4);
}

#[tokio::test]
async fn a_hundred_concurrent_read_modify_writes_lose_nothing() {
    let (t, c) = setup().await;
    let conflicts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let db = t.db().clone();
        let conflicts = conflicts.clone();
        tasks.spawn(async move {
            loop {
                let now = Counter::repo().get(&db, c.id).await?;
                let update = set_value(now.value + 1).expect_version(now.version);
                match Counter::repo().update(&db, c.id, update).await {
                    Ok(_) => return Ok::<_, Error>(()),
                    Err(Error::Conflict { .. }) => {
                        conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(other) => return Err(other),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let last = Counter::repo().get(t.db(), c.id).await.unwrap();
    assert_eq!(last.value, 100);
    assert_eq!(last.version, 101);
    println!(
        "{} conflicts retried",
        conflicts.load(std::sync::atomic::Ordering::Relaxed)
    );
}
