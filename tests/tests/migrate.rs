//! The migration runner against real PostgreSQL.

use std::time::Duration;

use mandrake_storage::migrate::{
    MigrateOptions, Migrations, Report, RollbackTarget, State, lock_key, migrate, rollback, status,
};
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Error, connect_one};
use mandrake_tests::{MigrationDir, catalog};

const V1_UP: &str = "CREATE TABLE authors (id UUID PRIMARY KEY, name TEXT NOT NULL);\n";
const V1_DOWN: &str = "DROP TABLE authors;\n";
const V2_UP: &str = "CREATE TABLE posts (id UUID PRIMARY KEY, author_id UUID REFERENCES authors(id) ON DELETE CASCADE, body TEXT);\nCREATE INDEX posts_author_idx ON posts (author_id);\n";
const V2_DOWN: &str = "DROP TABLE posts;\n";
const V3_UP: &str = "ALTER TABLE authors ADD COLUMN email TEXT UNIQUE;\n";
const V3_DOWN: &str = "ALTER TABLE authors DROP COLUMN email;\n";

fn three() -> MigrationDir {
    MigrationDir::new(&[
        ("1_authors.up.sql", V1_UP),
        ("1_authors.down.sql", V1_DOWN),
        ("2_posts.up.sql", V2_UP),
        ("2_posts.down.sql", V2_DOWN),
        ("3_email.up.sql", V3_UP),
        ("3_email.down.sql", V3_DOWN),
    ])
}

fn opts() -> MigrateOptions {
    MigrateOptions::default()
}

fn load(dir: &MigrationDir) -> Migrations {
    Migrations::from_dir(dir.path()).unwrap()
}

/// Ends the sessions of this database running a statement `LIKE pattern`,
/// as a `kill -9` of their process would; returns how many.
async fn terminate(admin: &mut sqlx::PgConnection, pattern: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE $1 AND pid <> pg_backend_pid()",
    )
    .bind(pattern)
    .fetch_one(admin)
    .await
    .unwrap()
}

fn expect_migration_error<T: std::fmt::Debug>(result: mandrake_storage::Result<T>, needle: &str) {
    match result {
        Err(Error::Migration(msg)) => {
            assert!(msg.to_string().contains(needle), "{msg} lacks {needle:?}")
        }
        other => panic!("expected a migration error with {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn migrate_rollback_migrate_gives_the_same_catalog() {
    let t = TestDb::empty().await.unwrap();
    let dir = three();
    let m = load(&dir);
    let report = migrate(&t.url(), &m, &opts()).await.unwrap();
    assert_eq!(report.applied.len(), 3);
    assert_eq!(report.applied[0].1, "1_authors");
    let first = catalog(t.db()).await;
    assert!(
        first.iter().any(|l| l.contains("authors_email_key")),
        "{first:#?}"
    );
    let again = migrate(&t.url(), &m, &opts()).await.unwrap();
    assert!(again.applied.is_empty(), "nothing applies twice");

    let back = rollback(&t.url(), &m, RollbackTarget::To(0), Duration::from_secs(5))
        .await
        .unwrap();
    let reverted: Vec<i64> = back.reverted.iter().map(|(v, _)| *v).collect();
    assert_eq!(reverted, vec![3, 2, 1], "newest first");
    assert!(catalog(t.db()).await.is_empty());
    migrate(&t.url(), &m, &opts()).await.unwrap();
    assert_eq!(catalog(t.db()).await, first);

    let one = rollback(
        &t.url(),
        &m,
        RollbackTarget::Steps(1),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(one.reverted[0].0, 3);
    let rows = status(&t.url(), &m).await.unwrap();
    let states: Vec<State> = rows.iter().map(|r| r.state).collect();
    assert_eq!(states, vec![State::Applied, State::Applied, State::Pending]);
    assert!(rows[0].applied_at.is_some() && rows[0].duration.is_some());
}

#[tokio::test]
async fn to_and_dry_run() {
    let t = TestDb::empty().await.unwrap();
    let dir = three();
    let m = load(&dir);
    let dry = MigrateOptions {
        dry_run: true,
        ..opts()
    };
    assert_eq!(migrate(&t.url(), &m, &dry).await.unwrap().applied.len(), 3);
    assert!(
        catalog(t.db()).await.is_empty(),
        "a dry run changes nothing"
    );
    let to_two = MigrateOptions {
        to: Some(2),
        ..opts()
    };
    assert_eq!(
        migrate(&t.url(), &m, &to_two).await.unwrap().applied.len(),
        2
    );
    let states: Vec<State> = status(&t.url(), &m)
        .await
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, vec![State::Applied, State::Applied, State::Pending]);
}

#[tokio::test]
async fn a_failing_migration_leaves_no_trace_and_stops_the_run() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[
        ("1_authors.up.sql", V1_UP),
        (
            "2_broken.up.sql",
            "CREATE TABLE half (id INT);\nINSERT INTO nowhere VALUES (1);\n",
        ),
        ("3_email.up.sql", V3_UP),
    ]);
    let m = load(&dir);
    let err = migrate(&t.url(), &m, &opts()).await;
    expect_migration_error(err, "2_broken failed at line 2");
    let err = migrate(&t.url(), &m, &opts())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("relation \"nowhere\" does not exist"), "{err}");
    let tables: Vec<String> = catalog(t.db()).await;
    assert!(
        !tables.iter().any(|l| l.contains("half")),
        "the failed file left {tables:#?}"
    );
    assert!(
        !tables.iter().any(|l| l.contains("email")),
        "nothing after the failure ran"
    );
    let states: Vec<State> = status(&t.url(), &m)
        .await
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, vec![State::Applied, State::Pending, State::Pending]);

    // The lock is free again: another session takes it at once, and a fixed
    // file applies.
    let mut other = connect_one(&t.url()).await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(t.name()))
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(free, "no session still holds the migration lock");
    drop(other);
    dir.write("2_broken.up.sql", "CREATE TABLE half (id INT);\n");
    let report = migrate(&t.url(), &load(&dir), &opts()).await.unwrap();
    assert_eq!(report.applied.len(), 2);
}

#[tokio::test]
async fn a_failed_no_transaction_file_is_recorded_and_blocks_until_resolved() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[
        ("1_authors.up.sql", V1_UP),
        (
            "2_index.up.sql",
            "-- no-transaction\nCREATE INDEX CONCURRENTLY authors_name_idx ON authors (nme);\n",
        ),
    ]);
    let m = load(&dir);
    expect_migration_error(migrate(&t.url(), &m, &opts()).await, "2_index failed");
    let rows = status(&t.url(), &m).await.unwrap();
    assert_eq!(rows[1].state, State::Failed);
    expect_migration_error(
        migrate(&t.url(), &m, &opts()).await,
        "cargo xtask resolve 2",
    );
    dir.write(
        "2_index.up.sql",
        "-- no-transaction\nCREATE INDEX CONCURRENTLY authors_name_idx ON authors (name);\n",
    );
    assert!(
        mandrake_storage::migrate::resolve(&t.url(), 2)
            .await
            .unwrap()
    );
    let report = migrate(&t.url(), &load(&dir), &opts()).await.unwrap();
    assert_eq!(report.applied.len(), 1);
    assert!(
        catalog(t.db())
            .await
            .iter()
            .any(|l| l.contains("authors_name_idx"))
    );
}

#[tokio::test]
async fn eight_concurrent_runs_apply_each_migration_once() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[
        (
            "1_log.up.sql",
            "CREATE TABLE log (version INT);\nINSERT INTO log VALUES (1);\n",
        ),
        (
            "2_slow.up.sql",
            "SELECT pg_sleep(0.3);\nINSERT INTO log VALUES (2);\n",
        ),
        ("3_more.up.sql", "INSERT INTO log VALUES (3);\n"),
    ]);
    let m = load(&dir);
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let (url, m) = (t.url(), m.clone());
            tokio::spawn(async move { migrate(&url, &m, &opts()).await })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        let report = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("no run hangs")
            .unwrap()
            .unwrap();
        applied += report.applied.len();
    }
    assert_eq!(applied, 3, "each migration applied by exactly one run");
    let log: Vec<i32> = sqlx::query_scalar("SELECT version FROM log ORDER BY version")
        .fetch_all(t.db())
        .await
        .unwrap();
    assert_eq!(log, vec![1, 2, 3]);
}

#[tokio::test]
async fn a_waiter_times_out_and_names_the_holder() {
    let t = TestDb::empty().await.unwrap();
    let dir = three();
    let mut holder = connect_one(&t.url()).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut holder)
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key(t.name()))
        .execute(&mut holder)
        .await
        .unwrap();
    let short = MigrateOptions {
        lock_timeout: Duration::from_millis(500),
        ..opts()
    };
    let started = std::time::Instant::now();
    let err = migrate(&t.url(), &load(&dir), &short).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "gave up in time"
    );
    expect_migration_error(err, &format!("backend pid {pid}"));
    assert!(catalog(t.db()).await.is_empty());
}

#[tokio::test]
async fn a_cancelled_run_releases_the_lock_and_leaves_nothing() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[(
        "1_slow.up.sql",
        "CREATE TABLE slow (id INT);\nSELECT pg_sleep(3);\n",
    )]);
    let (url, m) = (t.url(), load(&dir));
    let run = tokio::spawn(async move { migrate(&url, &m, &MigrateOptions::default()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.abort();
    let patient = MigrateOptions {
        lock_timeout: Duration::from_secs(20),
        ..opts()
    };
    let report = migrate(&t.url(), &load(&dir), &patient).await.unwrap();
    assert_eq!(report.applied.len(), 1, "the cancelled run applied nothing");
}

#[tokio::test]
async fn tampering_and_gaps_are_refused_by_name() {
    let t = TestDb::empty().await.unwrap();
    let dir = three();
    migrate(
        &t.url(),
        &load(&dir),
        &MigrateOptions {
            to: Some(2),
            ..opts()
        },
    )
    .await
    .unwrap();

    dir.write(
        "1_authors.up.sql",
        "CREATE TABLE authors (id UUID PRIMARY KEY);\n",
    );
    expect_migration_error(
        migrate(&t.url(), &load(&dir), &opts()).await,
        "1_authors was applied but its file has changed",
    );
    assert_eq!(
        status(&t.url(), &load(&dir)).await.unwrap()[0].state,
        State::Changed
    );
    dir.write("1_authors.up.sql", V1_UP);

    dir.remove("2_posts.up.sql");
    expect_migration_error(
        Migrations::from_dir(dir.path()),
        "2_posts.down.sql has no up file",
    );
    dir.remove("2_posts.down.sql");
    expect_migration_error(
        migrate(&t.url(), &load(&dir), &opts()).await,
        "2_posts was applied but its file is missing",
    );
    assert_eq!(
        status(&t.url(), &load(&dir)).await.unwrap()[1].state,
        State::MissingFile
    );
    dir.write("2_posts.up.sql", V2_UP);
    dir.write("2_posts.down.sql", V2_DOWN);

    migrate(&t.url(), &load(&dir), &opts()).await.unwrap();
    dir.write("0_early.up.sql", "SELECT 1;\n");
    expect_migration_error(migrate(&t.url(), &load(&dir), &opts()).await, "0_early");
    let late = MigrateOptions {
        allow_out_of_order: true,
        ..opts()
    };
    assert_eq!(
        migrate(&t.url(), &load(&dir), &late)
            .await
            .unwrap()
            .applied
            .len(),
        1
    );

    dir.remove("2_posts.down.sql");
    let before = catalog(t.db()).await;
    expect_migration_error(
        rollback(
            &t.url(),
            &load(&dir),
            RollbackTarget::To(1),
            Duration::from_secs(5),
        )
        .await,
        "no down file for 2_posts",
    );
    assert_eq!(
        catalog(t.db()).await,
        before,
        "refused before doing anything"
    );
}

#[tokio::test]
async fn plain_sqlx_and_this_runner_agree() {
    let dir = three();
    // Applied by sqlx's own Migrator: our status sees it all applied.
    let t = TestDb::empty().await.unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    migrator
        .run(&mut *t.db().acquire().await.unwrap())
        .await
        .unwrap();
    let rows = status(&t.url(), &load(&dir)).await.unwrap();
    assert!(rows.iter().all(|r| r.state == State::Applied), "{rows:?}");
    assert!(
        migrate(&t.url(), &load(&dir), &opts())
            .await
            .unwrap()
            .applied
            .is_empty()
    );
    // Applied by us: sqlx's Migrator finds nothing to do and no mismatch.
    let u = TestDb::empty().await.unwrap();
    migrate(&u.url(), &load(&dir), &opts()).await.unwrap();
    migrator
        .run(&mut *u.db().acquire().await.unwrap())
        .await
        .unwrap();
    assert_eq!(catalog(u.db()).await, catalog(t.db()).await);
}

#[tokio::test]
async fn embedded_migrations_match_the_folder() {
    let t = TestDb::empty().await.unwrap();
    let embedded = mandrake_storage::embed_migrations!("fixtures/migrations").unwrap();
    assert_eq!(
        migrate(&t.url(), &embedded, &opts())
            .await
            .unwrap()
            .applied
            .len(),
        1
    );
    let from_dir =
        Migrations::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/migrations")).unwrap();
    let rows = status(&t.url(), &from_dir).await.unwrap();
    assert_eq!(rows[0].state, State::Applied, "same checksums as the files");
    rollback(
        &t.url(),
        &embedded,
        RollbackTarget::Steps(1),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(catalog(t.db()).await.is_empty());
}

#[tokio::test]
async fn an_unknown_target_is_refused_and_changes_nothing() {
    let t = TestDb::empty().await.unwrap();
    let dir = three();
    let m = load(&dir);
    migrate(&t.url(), &m, &opts()).await.unwrap();
    let before = catalog(t.db()).await;
    // A mistyped version must not mean "everything newer than 2026".
    let err = rollback(
        &t.url(),
        &m,
        RollbackTarget::To(2026),
        Duration::from_secs(5),
    )
    .await;
    expect_migration_error(err, "applied versions are: 1, 2, 3");
    assert_eq!(catalog(t.db()).await, before, "nothing was rolled back");
    let rows = status(&t.url(), &m).await.unwrap();
    assert!(rows.iter().all(|r| r.state == State::Applied));

    let fresh = TestDb::empty().await.unwrap();
    let to_unknown = MigrateOptions {
        to: Some(4),
        ..opts()
    };
    let err = migrate(&fresh.url(), &m, &to_unknown).await;
    expect_migration_error(err, "--to 4 names no migration; the versions are: 1, 2, 3");
    assert!(catalog(fresh.db()).await.is_empty(), "nothing was applied");
}

#[tokio::test]
async fn a_folder_with_ambiguous_files_is_refused_before_anything_runs() {
    let dir = MigrationDir::new(&[
        ("20270106000000_a.up.sql", "CREATE TABLE a (id INT);\n"),
        ("20270106000000_b.up.sql", "CREATE TABLE b (id INT);\n"),
        ("20270107000000_c.down.sql", "DROP TABLE c;\n"),
        ("README.md", "notes\n"),
        (".gitkeep", ""),
    ]);
    let err = || Migrations::from_dir(dir.path()).map(|_| ());
    expect_migration_error(err(), "3 problem(s)");
    expect_migration_error(
        err(),
        "version 20270106000000 has 2 up files (20270106000000_a.up.sql, 20270106000000_b.up.sql)",
    );
    expect_migration_error(err(), "20270107000000_c.down.sql has no up file");
    expect_migration_error(err(), "README.md is not a migration");
    // The embedded form is held to the same rules.
    let err = Migrations::from_sources(&[("1_a.up.sql", "SELECT 1;"), ("1_a.sql", "SELECT 2;")]);
    expect_migration_error(err.map(|_| ()), "version 1 has 2 up files");
}

#[tokio::test]
async fn an_interrupted_no_transaction_file_is_unknown_until_resolved() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[(
        "1_half.up.sql",
        "-- no-transaction\nCREATE TABLE half (id INT);\nCOMMIT;\nSELECT pg_sleep(30);\n",
    )]);
    let (url, m) = (t.url(), load(&dir));
    let run = tokio::spawn(async move { migrate(&url, &m, &MigrateOptions::default()).await });
    // Wait until the first statement has taken effect, then kill the
    // migrator's session the way a `kill -9` of the process would end it.
    let mut admin = connect_one(&t.url()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if terminate(&mut admin, "%pg_sleep(30)%").await > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(run.await.unwrap().is_err());
    let m = load(&dir);
    let rows = status(&t.url(), &m).await.unwrap();
    assert_eq!(rows[0].state, State::Unknown, "{rows:?}");
    expect_migration_error(migrate(&t.url(), &m, &opts()).await, "state is unknown");
    expect_migration_error(
        migrate(&t.url(), &m, &opts()).await,
        "cargo xtask resolve 1",
    );
    assert!(
        catalog(t.db()).await.iter().any(|l| l.contains("half")),
        "the half-run file did create its table"
    );
    assert!(
        mandrake_storage::migrate::resolve(&t.url(), 1)
            .await
            .unwrap()
    );
    sqlx::query("DROP TABLE half")
        .execute(t.db())
        .await
        .unwrap();
    dir.write(
        "1_half.up.sql",
        "-- no-transaction\nCREATE TABLE half (id INT);\n",
    );
    let report = migrate(&t.url(), &load(&dir), &opts()).await.unwrap();
    assert_eq!(report.applied.len(), 1);
    let rows = status(&t.url(), &load(&dir)).await.unwrap();
    assert_eq!(rows[0].state, State::Applied);
}

#[tokio::test]
async fn a_name_too_long_for_a_file_name_writes_nothing() {
    let dir = MigrationDir::new(&[]);
    let long = "x".repeat(250);
    let made = mandrake_cli::scaffold::new_migration(
        "postgres://unused",
        dir.path(),
        &[],
        &mandrake_storage::schema::Renames::NONE,
        &long,
        false,
    )
    .await;
    expect_migration_error(made.map(|_| ()), "at most 200 fit in a file name");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no half pair"
    );
}

/// Waits (up to 20 s) until a statement containing `needle` runs.
async fn wait_for_statement(url: &str, needle: &str) {
    let mut admin = connect_one(url).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let running: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND state = 'active' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid())",
        )
        .bind(needle)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if running {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle} never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_running_no_transaction_file_is_running_and_cannot_be_resolved() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[(
        "1_slow.up.sql",
        "-- no-transaction\nCREATE TABLE slow (id INT);\nSELECT pg_sleep(4);\nINSERT INTO slow VALUES (1);\n",
    )]);
    let (url, m) = (t.url(), load(&dir));
    let run = tokio::spawn(async move { migrate(&url, &m, &MigrateOptions::default()).await });
    wait_for_statement(&t.url(), "pg_sleep(4)").await;
    let m = load(&dir);
    let rows = status(&t.url(), &m).await.unwrap();
    assert_eq!(rows[0].state, State::Running, "{rows:?}");
    expect_migration_error(
        mandrake_storage::migrate::resolve(&t.url(), 1).await,
        "a migration is running now",
    );
    run.await.unwrap().unwrap();
    assert_eq!(status(&t.url(), &m).await.unwrap()[0].state, State::Applied);
    // Nothing runs twice.
    assert!(
        migrate(&t.url(), &m, &opts())
            .await
            .unwrap()
            .applied
            .is_empty()
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM slow")
        .fetch_one(t.db())
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_run_whose_history_row_vanished_is_an_error() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[(
        "1_slow.up.sql",
        "-- no-transaction\nCREATE TABLE slow (id INT);\nSELECT pg_sleep(1);\n",
    )]);
    let (url, m) = (t.url(), load(&dir));
    let run = tokio::spawn(async move { migrate(&url, &m, &MigrateOptions::default()).await });
    wait_for_statement(&t.url(), "pg_sleep(1)").await;
    // What a `resolve` without the lock did: forget the running file.
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 1")
        .execute(t.db())
        .await
        .unwrap();
    expect_migration_error(run.await.unwrap(), "history row was removed");
}

#[tokio::test]
async fn a_no_transaction_files_settings_end_with_it() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[
        (
            "1_quick.up.sql",
            "-- no-transaction\nSET statement_timeout = '100ms';\nSET lock_timeout = '100ms';\nCREATE TABLE a (id INT);\n",
        ),
        (
            "2_slow.up.sql",
            "SELECT pg_sleep(0.5);\nCREATE TABLE b (id INT);\n",
        ),
    ]);
    let report = migrate(&t.url(), &load(&dir), &opts()).await.unwrap();
    assert_eq!(report.applied.len(), 2);
}

#[tokio::test]
async fn a_failure_in_a_no_transaction_file_names_its_line_in_the_file() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[(
        "1_bad.up.sql",
        "-- no-transaction\nCREATE TABLE a (id INT);\n\nSELECT *\n  FROM missing;\n",
    )]);
    expect_migration_error(
        migrate(&t.url(), &load(&dir), &opts()).await,
        "1_bad failed at line 5",
    );
}

#[tokio::test]
async fn rolling_back_more_steps_than_applied_is_refused() {
    let t = TestDb::empty().await.unwrap();
    let dir = three();
    let m = load(&dir);
    migrate(&t.url(), &m, &opts()).await.unwrap();
    let before = catalog(t.db()).await;
    expect_migration_error(
        rollback(
            &t.url(),
            &m,
            RollbackTarget::Steps(99999),
            Duration::from_secs(5),
        )
        .await,
        "only 3 migration(s) are applied",
    );
    assert_eq!(catalog(t.db()).await, before, "nothing was rolled back");
    let all = rollback(
        &t.url(),
        &m,
        RollbackTarget::Steps(3),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(all.reverted.len(), 3);
}

#[tokio::test]
async fn an_up_file_without_a_statement_is_applied_with_a_warning() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[
        ("1_empty.up.sql", ""),
        ("2_comments.up.sql", "-- to do\n/* later */\n"),
        ("3_real.up.sql", "CREATE TABLE a (id INT);\n"),
    ]);
    let report = migrate(&t.url(), &load(&dir), &opts()).await.unwrap();
    assert_eq!(report.applied.len(), 3);
    assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
    assert!(report.warnings[0].contains("1_empty.up.sql has no statement"));
    assert!(report.warnings[1].contains("2_comments.up.sql has no statement"));
}

#[tokio::test]
async fn migration_errors_are_typed_for_a_caller_to_match() {
    use mandrake_storage::MigrationError as M;
    let t = TestDb::empty().await.unwrap();
    let kind = |r: mandrake_storage::Result<Report>| match r {
        Err(Error::Migration(e)) => e,
        other => panic!("expected a migration error, got {other:?}"),
    };
    let dir = three();
    let m = load(&dir);
    let to_nowhere = MigrateOptions {
        to: Some(42),
        ..opts()
    };
    assert!(matches!(
        kind(migrate(&t.url(), &m, &to_nowhere).await),
        M::VersionMissing {
            version: 42,
            applied: false,
            ..
        }
    ));
    migrate(&t.url(), &m, &opts()).await.unwrap();
    assert!(matches!(
        kind(
            rollback(
                &t.url(),
                &m,
                RollbackTarget::Steps(4),
                Duration::from_secs(5)
            )
            .await
        ),
        M::TooManySteps {
            steps: 4,
            applied: 3
        }
    ));
    // A file changed after it was applied.
    dir.write("2_posts.up.sql", "SELECT 2;\n");
    assert!(matches!(
        kind(migrate(&t.url(), &load(&dir), &opts()).await),
        M::ChecksumMismatch { .. }
    ));
    dir.write("2_posts.up.sql", V2_UP);
    // An older file arrives after a newer one was applied.
    dir.write("0_early.up.sql", "SELECT 1;\n");
    assert!(matches!(
        kind(migrate(&t.url(), &load(&dir), &opts()).await),
        M::OutOfOrder { newest: 3, .. }
    ));
    dir.remove("0_early.up.sql");
    // Another migrator holds the lock.
    let mut holder = connect_one(&t.url()).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(lock_key(t.name()))
        .execute(&mut holder)
        .await
        .unwrap();
    let impatient = MigrateOptions {
        lock_timeout: Duration::from_millis(100),
        ..opts()
    };
    assert!(matches!(
        kind(migrate(&t.url(), &load(&dir), &impatient).await),
        M::LockTimeout {
            holder: Some(_),
            ..
        }
    ));
    drop(holder);
    let folder = MigrationDir::new(&[("notes.txt", "")]);
    assert!(matches!(
        Migrations::from_dir(folder.path()).map(|_| ()),
        Err(Error::Migration(M::AmbiguousFolder { .. }))
    ));
}

/// An expand/contract change by hand: the new column, then a contract that
/// drops the old one, then an unrelated later migration.
fn expand_contract() -> MigrationDir {
    MigrationDir::new(&[
        ("1_authors.up.sql", V1_UP),
        ("1_authors.down.sql", V1_DOWN),
        (
            "2_full_name.up.sql",
            "ALTER TABLE authors ADD COLUMN full_name TEXT;\n",
        ),
        (
            "2_full_name.down.sql",
            "ALTER TABLE authors DROP COLUMN full_name;\n",
        ),
        (
            "3_full_name_contract.up.sql",
            "-- contract\n-- the old binaries still read name\nALTER TABLE authors DROP COLUMN name;\n",
        ),
        (
            "3_full_name_contract.down.sql",
            "ALTER TABLE authors ADD COLUMN name TEXT;\n",
        ),
        ("4_email.up.sql", V3_UP),
        ("4_email.down.sql", V3_DOWN),
    ])
}

/// A new clone's database: nothing ran on it, so no older binary runs on
/// it either, and the folder's old contracts apply without `--complete`.
#[tokio::test]
async fn a_fresh_database_applies_old_contracts_without_waiting() {
    let t = TestDb::empty().await.unwrap();
    let dir = expand_contract();
    let report = migrate(&t.url(), &load(&dir), &opts()).await.unwrap();
    let applied: Vec<i64> = report.applied.iter().map(|(v, _)| *v).collect();
    assert_eq!(applied, [1, 2, 3, 4]);
    assert_eq!(report.waiting, None);
}

#[tokio::test]
async fn a_contract_waits_for_complete_and_so_does_what_follows_it() {
    let t = TestDb::empty().await.unwrap();
    let dir = expand_contract();
    let m = load(&dir);
    // A database in service: it ran 1 before the expand was written.
    let deployed = MigrateOptions {
        to: Some(1),
        ..opts()
    };
    migrate(&t.url(), &m, &deployed).await.unwrap();
    let report = migrate(&t.url(), &m, &opts()).await.unwrap();
    let applied: Vec<i64> = report.applied.iter().map(|(v, _)| *v).collect();
    assert_eq!(applied, [2]);
    assert_eq!(
        report.waiting,
        Some((3, "3_full_name_contract".to_string()))
    );
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_name = 'authors' ORDER BY ordinal_position",
    )
    .fetch_all(t.db())
    .await
    .unwrap();
    assert_eq!(columns, ["id", "name", "full_name"], "the old column stays");
    let rows = status(&t.url(), &m).await.unwrap();
    let states: Vec<State> = rows.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            State::Applied,
            State::Applied,
            State::Waiting,
            State::Pending
        ]
    );
    assert_eq!(
        rows[2].state.to_string(),
        "expanded, waiting for --complete"
    );

    // Running again changes nothing; --complete applies the contract and the rest.
    let again = migrate(&t.url(), &m, &opts()).await.unwrap();
    assert!(
        again.applied.is_empty() && again.waiting.is_some(),
        "{again:?}"
    );
    let complete = MigrateOptions {
        complete: true,
        ..opts()
    };
    let done = migrate(&t.url(), &m, &complete).await.unwrap();
    let applied: Vec<i64> = done.applied.iter().map(|(v, _)| *v).collect();
    assert_eq!(applied, [3, 4]);
    assert_eq!(done.waiting, None);
    let states: Vec<State> = status(&t.url(), &m)
        .await
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, [State::Applied; 4]);

    // Rolling the contract back puts the old column back (empty: its
    // values went with the drop), and the gate holds again.
    rollback(&t.url(), &m, RollbackTarget::To(2), Duration::from_secs(5))
        .await
        .unwrap();
    let again = migrate(&t.url(), &m, &opts()).await.unwrap();
    assert_eq!(
        again.waiting.map(|(v, _)| v),
        Some(3),
        "the contract waits again"
    );
}

#[test]
fn a_contract_says_so_in_its_leading_comments_only() {
    use mandrake_storage::migrate::is_contract;
    assert!(is_contract("-- contract\nALTER TABLE t DROP COLUMN c;"));
    assert!(is_contract(
        "-- generated by `cargo xtask new-migration`\n\n-- contract\nDROP TRIGGER x ON t;"
    ));
    assert!(!is_contract("ALTER TABLE t DROP COLUMN c;\n-- contract\n"));
    assert!(!is_contract(
        "-- contracts table\nCREATE TABLE contracts ();"
    ));
}

/// A backfill by hand, as an expand/contract change writes one: batches by
/// primary key, each committed, each skipping rows already done.
const BACKFILL: &str = "-- no-transaction\n-- resumable\n\
DO $$\n\
DECLARE done uuid := '00000000-0000-0000-0000-000000000000'; upto uuid;\n\
BEGIN\n\
  LOOP\n\
    upto := (SELECT id FROM (SELECT id FROM usage WHERE id > done ORDER BY id LIMIT 500) b \
             ORDER BY id DESC LIMIT 1);\n\
    EXIT WHEN upto IS NULL;\n\
    UPDATE usage SET wide = tokens WHERE id > done AND id <= upto AND wide IS DISTINCT FROM tokens;\n\
    COMMIT;\n\
    PERFORM pg_sleep(0.02);\n\
    done := upto;\n\
  END LOOP;\n\
END $$;\n";

#[tokio::test]
async fn a_killed_resumable_backfill_resumes_on_the_next_migrate() {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[
        (
            "1_usage.up.sql",
            "CREATE TABLE usage (id UUID PRIMARY KEY, tokens INTEGER NOT NULL);\n\
             INSERT INTO usage SELECT gen_random_uuid(), g FROM generate_series(1, 20000) g;\n",
        ),
        (
            "2_expand.up.sql",
            "ALTER TABLE usage ADD COLUMN wide BIGINT;\n",
        ),
        ("3_backfill.up.sql", BACKFILL),
    ]);
    let (url, m) = (t.url(), load(&dir));
    let run = tokio::spawn(async move { migrate(&url, &m, &opts()).await });
    // Once some batches are in, kill the migrator's session as `kill -9`
    // of the process would end it.
    let mut admin = connect_one(&t.url()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(wide) FROM usage")
            .fetch_one(&mut admin)
            .await
            .unwrap_or(0);
        if done >= 2000 {
            assert_eq!(terminate(&mut admin, "%DO $$%").await, 1);
            break;
        }
        if run.is_finished() {
            panic!("the run ended first: {:?}", run.await.unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "no batch committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(run.await.unwrap().is_err());
    let (done, first): (i64, String) = sqlx::query_as(
        "SELECT count(wide), (SELECT xmin::text FROM usage WHERE wide IS NOT NULL ORDER BY id LIMIT 1) \
         FROM usage",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(done > 0 && done < 20000, "killed midway: {done} rows done");

    // No `resolve`: the file says it may run again, and status says so.
    let m = load(&dir);
    let rows = status(&t.url(), &m).await.unwrap();
    assert_eq!(rows[2].state, State::Pending, "{rows:?}");
    let report = migrate(&t.url(), &m, &opts()).await.unwrap();
    let applied: Vec<i64> = report.applied.iter().map(|(v, _)| *v).collect();
    assert_eq!(applied, [3]);
    let (missing, still): (i64, String) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE wide IS DISTINCT FROM tokens), \
         (SELECT xmin::text FROM usage WHERE wide IS NOT NULL ORDER BY id LIMIT 1) FROM usage",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(missing, 0, "every row backfilled");
    assert_eq!(
        still, first,
        "a row done before the kill was not written again"
    );
    let states: Vec<State> = status(&t.url(), &m)
        .await
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(states, [State::Applied; 3]);
}

#[tokio::test]
async fn the_applications_role_reads_the_migration_history_and_cannot_change_it() {
    let t = mandrake_storage::testing::TestDb::migrated().await.unwrap();
    let app = t.app_db().await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&app)
        .await
        .unwrap();
    assert!(applied > 0);
    for write in [
        "UPDATE _sqlx_migrations SET checksum = '\\x00'",
        "DELETE FROM _sqlx_migrations",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (1, 'x', true, '\\x00', 0)",
        "TRUNCATE _sqlx_migrations",
    ] {
        let refused = sqlx::query(write).execute(&app).await.unwrap_err();
        let code = refused.as_database_error().and_then(|e| e.code());
        assert_eq!(code.as_deref(), Some("42501"), "{write}");
    }
    let still: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(t.db())
        .await
        .unwrap();
    assert_eq!(still, applied);
}

/// The workspace's `migrations/` as most sqlx apps apply migrations, with
/// `sqlx::migrate!()` at startup: sqlx sends a `-- no-transaction` file as
/// one query, so each holds one statement. It builds what our runner
/// builds, and sqlx's own revert takes it all back.
#[tokio::test]
async fn sqlx_migrate_applies_and_reverts_the_whole_folder() {
    let migrator = sqlx::migrate!("../migrations");
    assert!(
        migrator.iter().any(|m| m.no_tx),
        "the folder has no-transaction files"
    );
    let theirs = TestDb::empty().await.unwrap();
    let mut conn = theirs.db().acquire().await.unwrap();
    migrator.run(&mut *conn).await.unwrap();
    let ours = TestDb::empty().await.unwrap();
    let folder =
        Migrations::from_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations")).unwrap();
    migrate(&ours.url(), &folder, &MigrateOptions::complete())
        .await
        .unwrap();
    let inspect = mandrake_storage::schema::introspect::inspect_url;
    assert_eq!(
        inspect(&theirs.url()).await.unwrap(),
        inspect(&ours.url()).await.unwrap()
    );
    let rows = status(&theirs.url(), &folder).await.unwrap();
    assert!(rows.iter().all(|r| r.state == State::Applied), "{rows:?}");
    migrator.undo(&mut *conn, 0).await.unwrap();
    assert!(catalog(theirs.db()).await.is_empty());
}
