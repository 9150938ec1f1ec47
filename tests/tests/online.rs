//! The proof that matters for `new-migration --online`: on a table of
//! 1,000,000 rows under a writer loop, a migration that adds an index, a
//! foreign key and a NOT NULL lets the writes go on; the same migration as
//! planned blocks them for its whole build. The slowest write of each is
//! printed (`cargo test -p mandrake-tests --test online -- --nocapture`) and
//! recorded in docs/BENCHMARKS.md; the test asserts no absolute time (the
//! machines are shared), only that writes kept completing and that none
//! waited for the online migration to end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use mandrake_cli::scaffold::{NewMigrationOptions, new_migration, new_migration_with};
use mandrake_storage::migrate::{MigrateOptions, Migrations, RollbackTarget, migrate, rollback};
use mandrake_storage::schema::Renames;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Db, Record, Settings};
use mandrake_tests::MigrationDir;
use uuid::Uuid;

mod v1 {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "folders")]
    pub struct Folder {
        pub id: Uuid,
        pub name: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

mod v2 {
    use super::*;

    /// An index, a foreign key and a NOT NULL more than v1.
    #[derive(Record, Clone)]
    #[record(table = "notes", index(folder_id, rank))]
    pub struct Note {
        pub id: Uuid,
        #[record(references = "folders", on_delete = "cascade")]
        pub folder_id: Uuid,
        pub body: String,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

const ROWS: i64 = 1_000_000;
const WRITERS: usize = 4;

/// The slowest write while `migration` ran, and how long it ran.
struct Run {
    slowest: Duration,
    writes: usize,
    took: Duration,
}

/// Applies the pending `migrations` under the writes and prints what they
/// saw, after `label`.
async fn migrate_under_writes(db: &Db, url: &str, migrations: &Migrations, label: &str) -> Run {
    let run = under_writes(db, async {
        migrate(url, migrations, &MigrateOptions::default())
            .await
            .unwrap();
    })
    .await;
    println!(
        "{label}: {} writes during a {:.1} s migration, the slowest {:.0} ms",
        run.writes,
        run.took.as_secs_f64(),
        run.slowest.as_secs_f64() * 1000.0
    );
    run
}

/// Runs `migration` while `WRITERS` tasks insert and update notes, each
/// write timed; returns the slowest write that overlapped the migration.
async fn under_writes<F: std::future::Future<Output = ()>>(db: &Db, migration: F) -> Run {
    let folder: Uuid = sqlx::query_scalar("SELECT id FROM folders LIMIT 1")
        .fetch_one(db)
        .await
        .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM notes LIMIT 1000")
        .fetch_all(db)
        .await
        .unwrap();
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (db, ids, stop) = (db.clone(), ids.clone(), stop.clone());
            tokio::spawn(async move {
                let mut timings = Vec::new();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if n.is_multiple_of(2) {
                        sqlx::query(
                            "INSERT INTO notes (id, folder_id, body, rank) VALUES ($1, $2, 'live', $3)",
                        )
                        .bind(Uuid::now_v7())
                        .bind(folder)
                        .bind((w * 1_000_000 + n) as i32)
                        .execute(&db)
                        .await
                        .unwrap();
                    } else {
                        sqlx::query("UPDATE notes SET rank = rank + 1 WHERE id = $1")
                            .bind(ids[(w * 7 + n) % ids.len()])
                            .execute(&db)
                            .await
                            .unwrap();
                    }
                    timings.push((started, started.elapsed()));
                    n += 1;
                }
                timings
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    migration.await;
    let took = began.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    let mut writes = 0;
    for writer in writers {
        for (started, took_write) in writer.await.unwrap() {
            // A write that overlapped the migration.
            if started + took_write >= began && started <= began + took {
                slowest = slowest.max(took_write);
                writes += 1;
            }
        }
    }
    Run {
        slowest,
        writes,
        took,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_migration_of_a_million_rows_lets_the_writes_go_on() {
    let t = TestDb::empty().await.unwrap();
    let url = t.url();
    let dir = MigrationDir::new(&[]);
    let v1 = [v1::Folder::schema(), v1::Note::schema()];
    let v2 = [v1::Folder::schema(), v2::Note::schema()];
    new_migration(&url, dir.path(), &v1, &Renames::NONE, "start", false)
        .await
        .unwrap();
    let migrations = || Migrations::from_dir(dir.path()).unwrap();
    migrate(&url, &migrations(), &MigrateOptions::default())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO folders (id, name) VALUES (gen_random_uuid(), 'inbox');
         INSERT INTO notes (id, folder_id, body, rank)
         SELECT gen_random_uuid(), (SELECT id FROM folders), 'note ' || g, g
         FROM generate_series(1, {ROWS}) g;
         ANALYZE notes;"
    )))
    .execute(t.db())
    .await
    .unwrap();
    let writers = Db::connect_url(
        &url,
        &Settings {
            pool_size: WRITERS as u32,
            ..Settings::default()
        },
    )
    .await
    .unwrap();

    // Online: three migrations, applied while the writers run.
    let online = NewMigrationOptions {
        online: true,
        ..NewMigrationOptions::default()
    };
    let made = new_migration_with(&url, dir.path(), &v2, &Renames::NONE, "harden", &online)
        .await
        .unwrap();
    assert_eq!(made.files.len(), 3);
    let run = migrate_under_writes(&writers, &url, &migrations(), "online").await;
    assert!(run.writes > 100, "writes went on: {}", run.writes);
    assert!(
        run.slowest < run.took,
        "a write waited {:?}, through the whole {:?} online migration",
        run.slowest,
        run.took
    );

    // As planned: back to v1, the same change in one file, under the same writes.
    rollback(
        &url,
        &migrations(),
        RollbackTarget::Steps(3),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    for (up, down) in &made.files {
        std::fs::remove_file(up).unwrap();
        std::fs::remove_file(down).unwrap();
    }
    let plain = new_migration(&url, dir.path(), &v2, &Renames::NONE, "harden", false)
        .await
        .unwrap();
    assert_eq!(plain.files.len(), 1);
    migrate_under_writes(&writers, &url, &migrations(), "as planned").await;
}
