//! The proof that matters for `new-migration --online`: on a table of
//! 1,000,000 rows under a writer loop, a migration that adds an index, a
//! foreign key and a NOT NULL lets the writes go on; the same migration as
//! planned blocks them for its whole build. The slowest write of each is
//! printed (`cargo test -p mandrake-tests --test online -- --nocapture`) and
//! recorded in docs/BENCHMARKS.md; the test asserts no absolute time (the
//! machines are shared), only that writes kept completing and that none
//! waited for the online migration to end.

use std::collections::HashMap;
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

/// The next binaries after v1: `body` renamed `content`, then `rank` an
/// `i64`: each an expand/contract with `--online`.
mod v3 {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Renamed {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub content: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub content: Option<String>,
        pub rank: i64,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

const ROWS: i64 = 1_000_000;
const WRITERS: usize = 4;

/// What a binary writes, in turn: an insert (`$1` id, `$2` folder, `$3`
/// rank, the text `'live'`) and an update of one of 1,000 older rows (`$1`).
#[derive(Clone, Copy)]
struct Writes {
    insert: &'static str,
    update: &'static str,
}

/// v1's writes.
const OLD_WRITES: Writes = Writes {
    insert: "INSERT INTO notes (id, folder_id, body, rank) VALUES ($1, $2, 'live', $3)",
    update: "UPDATE notes SET rank = rank + 1 WHERE id = $1",
};

/// v3's writes.
const NEW_WRITES: Writes = Writes {
    insert: "INSERT INTO notes (id, folder_id, content, rank) VALUES ($1, $2, 'live', $3)",
    update: "UPDATE notes SET rank = rank + 1 WHERE id = $1",
};

/// What the writes saw while a migration ran.
#[derive(Default)]
struct Run {
    /// The slowest write that overlapped the migration.
    slowest: Duration,
    /// Writes that overlapped it.
    writes: usize,
    /// How long the migration ran.
    took: Duration,
    /// Writes that failed (any time), and the first error.
    failed: usize,
    first_error: Option<String>,
    /// Successful updates per row, and successful inserts.
    updated: HashMap<Uuid, i64>,
    inserted: usize,
}

impl Run {
    fn print(&self, label: &str) {
        println!(
            "{label}: {} writes during a {:.2} s migration, the slowest {:.0} ms, {} failed{}",
            self.writes,
            self.took.as_secs_f64(),
            self.slowest.as_secs_f64() * 1000.0,
            self.failed,
            self.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
    }
}

/// Applies the pending `migrations` under v1's writes and prints what they
/// saw, after `label`.
async fn migrate_under_writes(db: &Db, url: &str, migrations: &Migrations, label: &str) -> Run {
    let run = under_writes(db, OLD_WRITES, async {
        migrate(url, migrations, &MigrateOptions::default())
            .await
            .unwrap();
    })
    .await;
    run.print(label);
    run
}

/// Runs `migration` while `WRITERS` tasks write `writes`, each write
/// timed.
async fn under_writes<F: std::future::Future<Output = ()>>(
    db: &Db,
    writes: Writes,
    migration: F,
) -> Run {
    let folder: Uuid = sqlx::query_scalar("SELECT id FROM folders LIMIT 1")
        .fetch_one(db)
        .await
        .unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM notes ORDER BY rank LIMIT 1000")
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
                let mut run = Run::default();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let id = ids[(w * 7 + n) % ids.len()];
                    let insert = n.is_multiple_of(2);
                    let done = if insert {
                        sqlx::query(writes.insert)
                            .bind(Uuid::now_v7())
                            .bind(folder)
                            .bind((w * 1_000_000 + n) as i32 + 2_000_000)
                            .execute(&db)
                            .await
                    } else {
                        sqlx::query(writes.update).bind(id).execute(&db).await
                    };
                    timings.push((started, started.elapsed()));
                    match done {
                        Ok(_) if insert => run.inserted += 1,
                        Ok(_) => *run.updated.entry(id).or_default() += 1,
                        Err(err) => {
                            run.failed += 1;
                            run.first_error.get_or_insert(err.to_string());
                        }
                    }
                    n += 1;
                }
                (timings, run)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    migration.await;
    let took = began.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Run {
        took,
        ..Run::default()
    };
    for writer in writers {
        let (timings, run) = writer.await.unwrap();
        for (started, took_write) in timings {
            // A write that overlapped the migration.
            if started + took_write >= began && started <= began + took {
                all.slowest = all.slowest.max(took_write);
                all.writes += 1;
            }
        }
        all.failed += run.failed;
        if all.first_error.is_none() {
            all.first_error = run.first_error;
        }
        all.inserted += run.inserted;
        for (id, n) in run.updated {
            *all.updated.entry(id).or_default() += n;
        }
    }
    all
}

/// A database at v1 with `ROWS` notes (rank n, body 'note n'), its
/// migrations folder, and a pool for the writers.
async fn million_notes() -> (TestDb, MigrationDir, Db) {
    let t = TestDb::empty().await.unwrap();
    let url = t.url();
    let dir = MigrationDir::new(&[]);
    let v1 = [v1::Folder::schema(), v1::Note::schema()];
    new_migration(&url, dir.path(), &v1, &Renames::NONE, "start", false)
        .await
        .unwrap();
    migrate(
        &url,
        &Migrations::from_dir(dir.path()).unwrap(),
        &MigrateOptions::default(),
    )
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
    (t, dir, writers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn online_migration_of_a_million_rows_lets_the_writes_go_on() {
    let (t, dir, writers) = million_notes().await;
    let url = t.url();
    let v2 = [v1::Folder::schema(), v2::Note::schema()];
    let migrations = || Migrations::from_dir(dir.path()).unwrap();

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
    assert_eq!(run.failed, 0, "{:?}", run.first_error);
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

/// Issue #29's measurement: a rename (`body` → `content`), then `integer →
/// bigint` (`rank`), each its own `--online` migration (expand, backfill,
/// then the contract), on a million rows under four writers: through each
/// `migrate` the binary before the change writes, through each `migrate
/// --complete` the one after it. Then the same two changes as plain
/// migrations on a fresh million, under the same writers. Prints the
/// slowest write, the failed writes and the file times of each; asserts
/// that the online ones failed no write and left every value right.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expand_and_contract_of_a_million_rows_under_four_writers() {
    let renamed = [v1::Folder::schema(), v3::Renamed::schema()];
    let widened = [v1::Folder::schema(), v3::Note::schema()];
    let renames = Renames::default().column("notes", "body", "content");
    let online = NewMigrationOptions {
        online: true,
        ..NewMigrationOptions::default()
    };
    let (t, dir, writers) = million_notes().await;
    let url = t.url();
    let migrations = || Migrations::from_dir(dir.path()).unwrap();
    let mut runs = Vec::new();
    for (name, types, hints, before, after) in [
        ("rename", &renamed, &renames, OLD_WRITES, NEW_WRITES),
        ("widen", &widened, &Renames::NONE, NEW_WRITES, NEW_WRITES),
    ] {
        let made = new_migration_with(&url, dir.path(), types, hints, name, &online)
            .await
            .unwrap();
        assert_eq!(made.files.len(), 3);
        let expanded = under_writes(&writers, before, async {
            migrate(&url, &migrations(), &MigrateOptions::default())
                .await
                .unwrap();
        })
        .await;
        expanded.print(&format!("{name}: expand + backfill (migrate)"));
        let contracted = under_writes(&writers, after, async {
            migrate(&url, &migrations(), &MigrateOptions::complete())
                .await
                .unwrap();
        })
        .await;
        contracted.print(&format!("{name}: contract (migrate --complete)"));
        print_file_times(t.db(), name).await;
        for run in [&expanded, &contracted] {
            assert_eq!(run.failed, 0, "{:?}", run.first_error);
            assert!(run.writes > 0);
        }
        runs.extend([expanded, contracted]);
    }
    // Every row's value is right: the untouched rows as generated, the
    // updated ones by their count of updates, the inserted ones all there.
    let mut updated: HashMap<Uuid, i64> = HashMap::new();
    for (id, n) in runs.iter().flat_map(|r| &r.updated) {
        *updated.entry(*id).or_default() += n;
    }
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notes WHERE content <> 'live' AND content <> 'note ' || rank \
         AND id <> ALL($1)",
    )
    .bind(updated.keys().copied().collect::<Vec<_>>())
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    for (id, n) in &updated {
        let (rank, content): (i64, String) =
            sqlx::query_as("SELECT rank, content FROM notes WHERE id = $1")
                .bind(id)
                .fetch_one(t.db())
                .await
                .unwrap();
        let original: i64 = content.trim_start_matches("note ").parse().unwrap();
        assert_eq!(rank, original + n, "{id}");
    }
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE content = 'live'")
        .fetch_one(t.db())
        .await
        .unwrap();
    assert_eq!(
        live as usize,
        runs.iter().map(|r| r.inserted).sum::<usize>()
    );
    drop(t);

    // As planned: each change one file (RENAME COLUMN; ALTER COLUMN … TYPE
    // bigint) under the same writers.
    let (t, dir, writers) = million_notes().await;
    let url = t.url();
    let plain = NewMigrationOptions::default();
    for (name, types, hints, writes) in [
        ("rename", &renamed, &renames, OLD_WRITES),
        ("widen", &widened, &Renames::NONE, NEW_WRITES),
    ] {
        let made = new_migration_with(&url, dir.path(), types, hints, name, &plain)
            .await
            .unwrap();
        assert_eq!(made.files.len(), 1);
        let run = under_writes(&writers, writes, async {
            migrate(&url, &migrations_in(&dir), &MigrateOptions::default())
                .await
                .unwrap();
        })
        .await;
        run.print(&format!("{name}: as planned"));
        print_file_times(t.db(), name).await;
    }
}

fn migrations_in(dir: &MigrationDir) -> Migrations {
    Migrations::from_dir(dir.path()).unwrap()
}

/// How long each migration named `name…` ran (a transactional one holds its
/// locks that long), as the runner recorded it.
async fn print_file_times(db: &Db, name: &str) {
    let times: Vec<(String, i64)> = sqlx::query_as(
        "SELECT description, execution_time FROM _sqlx_migrations \
         WHERE description LIKE $1 ORDER BY version",
    )
    .bind(format!("{name}%"))
    .fetch_all(db)
    .await
    .unwrap();
    for (file, nanos) in times {
        println!("  {file}: {:.1} ms", nanos as f64 / 1e6);
    }
}

/// Why a generated `-- no-transaction` index file may run without a
/// `lock_timeout` (it is one statement, with no room for a `SET`): while
/// `CREATE INDEX CONCURRENTLY` waits behind a long transaction, the app's
/// reads and writes of the table go on; what queues behind it is only
/// other schema changes.
#[tokio::test]
async fn a_waiting_concurrent_index_build_holds_up_no_read_or_write() {
    let t = TestDb::empty().await.unwrap();
    let url = t.url();
    let connect = || mandrake_storage::connect_one(&url);
    sqlx::raw_sql("CREATE TABLE notes (id uuid PRIMARY KEY, body text)")
        .execute(t.db())
        .await
        .unwrap();
    let mut long = connect().await.unwrap();
    // An app's transaction that wrote and has not committed yet.
    sqlx::raw_sql("BEGIN; INSERT INTO notes VALUES ('00000000-0000-7000-8000-0000000000ff', 'x');")
        .execute(&mut long)
        .await
        .unwrap();
    let mut builder = connect().await.unwrap();
    let build = tokio::spawn(async move {
        sqlx::raw_sql("CREATE INDEX CONCURRENTLY notes_body_idx ON notes (body)")
            .execute(&mut builder)
            .await
            .map(|_| ())
    });
    let mut app = connect().await.unwrap();
    let waiting = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock')",
        )
        .fetch_one(t.db())
        .await
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiting().await {
        assert!(Instant::now() < deadline, "the build never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The app, with a lock timeout that would fail any wait.
    sqlx::raw_sql(
        "SET lock_timeout = '200ms'; \
         INSERT INTO notes VALUES ('00000000-0000-7000-8000-000000000001', 'a'); \
         UPDATE notes SET body = 'b'; SELECT * FROM notes; DELETE FROM notes;",
    )
    .execute(&mut app)
    .await
    .expect("reads and writes go on while the build waits");
    assert!(waiting().await, "the build still waits");
    let blocked = sqlx::raw_sql("SET lock_timeout = '200ms'; ALTER TABLE notes ADD COLUMN c int")
        .execute(&mut app)
        .await;
    assert!(blocked.is_err(), "a schema change does wait behind it");
    sqlx::raw_sql("COMMIT").execute(&mut long).await.unwrap();
    build.await.unwrap().unwrap();
}
