//! Expand/contract (`new-migration --online`, issue #29): a type change
//! (`integer` → `bigint`) and a rename planned as expand, a resumable
//! backfill and a contract that waits for `migrate --complete`, with the old
//! and the new binary's record types both reading and writing in between.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mandrake_cli::lint::lint_paths;
use mandrake_cli::scaffold::{
    NewMigration, NewMigrationOptions, new_migration, new_migration_with,
};
use mandrake_storage::migrate::{MigrateOptions, Migrations, RollbackTarget, migrate, rollback};
use mandrake_storage::schema::Renames;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Db, Error, Filter, Record, Settings};
use mandrake_tests::MigrationDir;
use uuid::Uuid;

/// The binary deployed now.
mod old {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes", index(rank))]
    pub struct Note {
        pub id: Uuid,
        pub rank: i32,
        #[record(unique)]
        pub model: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

/// The next binary: `rank` is an `i64`, `model` is `model_name`.
mod new {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes", index(rank))]
    pub struct Note {
        pub id: Uuid,
        pub rank: i64,
        #[record(unique)]
        pub model_name: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

/// `new-migration --online` from the old schema to the new one, written
/// into `dir`.
async fn to_new_schema(url: &str, dir: &MigrationDir) -> NewMigration {
    let options = NewMigrationOptions {
        online: true,
        ..NewMigrationOptions::default()
    };
    new_migration_with(
        url,
        dir.path(),
        &[new::Note::schema()],
        &Renames::default().column("notes", "model", "model_name"),
        "rank_and_model",
        &options,
    )
    .await
    .unwrap()
}

/// A pool of its own: each binary is a process with its own connections
/// (and statement caches).
async fn binary(url: &str) -> Db {
    Db::connect_url(url, &Settings::default()).await.unwrap()
}

/// `rollback --steps n` on the migrations in `dir`.
async fn roll_back(
    url: &str,
    dir: &MigrationDir,
    n: usize,
) -> mandrake_storage::Result<mandrake_storage::migrate::Report> {
    let all = Migrations::from_dir(dir.path()).unwrap();
    rollback(url, &all, RollbackTarget::Steps(n), Duration::from_secs(30)).await
}

/// A database at the old schema with `rows` notes (rank = n, model = "m{n}"),
/// and the migrations folder that built it.
async fn at_old_schema(rows: i64) -> (TestDb, MigrationDir) {
    let t = TestDb::empty().await.unwrap();
    let dir = MigrationDir::new(&[]);
    new_migration(
        &t.url(),
        dir.path(),
        &[old::Note::schema()],
        &Renames::NONE,
        "start",
        false,
    )
    .await
    .unwrap();
    let all = Migrations::from_dir(dir.path()).unwrap();
    migrate(&t.url(), &all, &MigrateOptions::default())
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO notes (id, rank, model, updated_at)
         SELECT gen_random_uuid(), g, 'm' || g, '2020-01-01T00:00:00Z'
         FROM generate_series(1, {rows}) g;
         ANALYZE notes;"
    )))
    .execute(t.db())
    .await
    .unwrap();
    (t, dir)
}

#[tokio::test]
async fn old_and_new_binaries_read_and_write_between_expand_and_contract() {
    let (t, dir) = at_old_schema(12_000).await;
    let url = t.url();
    let made = to_new_schema(&url, &dir).await;
    let names: Vec<String> = made
        .files
        .iter()
        .map(|(up, _)| up.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // The index on rank and the unique key on model are built again on the
    // new columns, between the backfill and the contract.
    let suffixes = [
        "_expand",
        "_backfill",
        "_expand_index_1",
        "_expand_index_2",
        "_contract",
    ];
    assert_eq!(names.len(), suffixes.len(), "{names:?}");
    for (file, suffix) in names.iter().zip(suffixes) {
        assert!(file.ends_with(&format!("{suffix}.up.sql")), "{names:?}");
    }
    let mut written: Vec<_> = made.files.iter().map(|(up, _)| up.clone()).collect();
    written.extend(made.files.iter().map(|(_, down)| down.clone()));
    let findings = lint_paths(&written).unwrap();
    assert!(findings.is_empty(), "lint: {findings:?}");
    let all = || Migrations::from_dir(dir.path()).unwrap();

    // `migrate` expands, backfills and builds the indexes, and waits before
    // the contract.
    let report = migrate(&url, &all(), &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!(report.applied.len(), 4, "{report:?}");
    assert!(
        report
            .waiting
            .as_ref()
            .is_some_and(|(_, n)| n.ends_with("_contract")),
        "{report:?}"
    );

    let (before, after) = (binary(&url).await, binary(&url).await);
    let old_repo = old::Note::repo();
    let new_repo = new::Note::repo();
    // Every old row reads the same through both types, and the backfill left
    // updated_at alone.
    let first: Uuid = sqlx::query_scalar("SELECT id FROM notes WHERE rank = 7")
        .fetch_one(t.db())
        .await
        .unwrap();
    let seen = new_repo.get(&after, first).await.unwrap();
    assert_eq!((seen.rank, seen.model_name.as_str()), (7, "m7"));
    assert_eq!(seen.updated_at.to_rfc3339(), "2020-01-01T00:00:00+00:00");
    let differing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notes WHERE rank__new IS DISTINCT FROM rank::bigint \
         OR model_name IS DISTINCT FROM model",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(differing, 0);

    // Each binary writes; the other reads it.
    let by_old = old_repo
        .create(
            &before,
            old::NewNote {
                rank: 1_000_001,
                model: "written by old".into(),
            },
        )
        .await
        .unwrap();
    let by_new = new_repo
        .create(
            &after,
            new::NewNote {
                rank: 2_000_002,
                model_name: "written by new".into(),
            },
        )
        .await
        .unwrap();
    let read = new_repo.get(&after, by_old.id).await.unwrap();
    assert_eq!(
        (read.rank, read.model_name.as_str()),
        (1_000_001, "written by old")
    );
    let read = old_repo.get(&before, by_new.id).await.unwrap();
    assert_eq!(
        (read.rank, read.model.as_str()),
        (2_000_002, "written by new")
    );
    let patch = old::NotePatch {
        model: Some("renamed by old".into()),
        rank: Some(11),
    };
    old_repo.update(&before, by_new.id, patch).await.unwrap();
    let patch = new::NotePatch {
        model_name: Some("renamed by new".into()),
        rank: Some(22),
    };
    new_repo.update(&after, by_old.id, patch).await.unwrap();
    let read = new_repo.get(&after, by_new.id).await.unwrap();
    assert_eq!(
        (read.rank, read.model_name.as_str()),
        (11, "renamed by old")
    );
    let read = old_repo.get(&before, by_old.id).await.unwrap();
    assert_eq!((read.rank, read.model.as_str()), (22, "renamed by new"));
    let filtered = new_repo
        .count(&after, new::Note::MODEL_NAME.eq("renamed by old"))
        .await
        .unwrap();
    assert_eq!(filtered, 1);

    // Rolling the expand back loses nothing written in the window: the old
    // column had every write.
    roll_back(&url, &dir, 4).await.unwrap();
    let read = old_repo.get(&before, by_old.id).await.unwrap();
    assert_eq!((read.rank, read.model.as_str()), (22, "renamed by new"));
    let read = old_repo.get(&before, by_new.id).await.unwrap();
    assert_eq!((read.rank, read.model.as_str()), (11, "renamed by old"));
    assert_eq!(
        old_repo.count(&before, Filter::all()).await.unwrap(),
        12_002
    );
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'sync_%') \
              + (SELECT count(*) FROM pg_proc WHERE proname LIKE 'notes_sync_%')",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(leftovers, 0);

    // Again, then the contract once the new binary is the only one.
    migrate(&url, &all(), &MigrateOptions::default())
        .await
        .unwrap();
    let read = new_repo.get(&after, by_old.id).await.unwrap();
    assert_eq!(read.rank, 22);
    let report = migrate(&url, &all(), &MigrateOptions::complete())
        .await
        .unwrap();
    assert_eq!(report.applied.len(), 1, "{report:?}");
    // A rollback of the contract gives the old binary its columns back,
    // every value in them, and moves no row's updated_at; then again.
    roll_back(&url, &dir, 1).await.unwrap();
    let read = old_repo.get(&before, by_new.id).await.unwrap();
    assert_eq!((read.rank, read.model.as_str()), (11, "renamed by old"));
    let read = old_repo.get(&before, first).await.unwrap();
    assert_eq!((read.rank, read.model.as_str()), (7, "m7"));
    assert_eq!(read.updated_at.to_rfc3339(), "2020-01-01T00:00:00+00:00");
    migrate(&url, &all(), &MigrateOptions::complete())
        .await
        .unwrap();
    // The new binary's connections prepared their statements against the
    // integer column; they go on against the bigint one.
    let read = new_repo.get(&after, by_new.id).await.unwrap();
    assert_eq!(
        (read.rank, read.model_name.as_str()),
        (11, "renamed by old")
    );
    let big = new_repo
        .create(
            &after,
            new::NewNote {
                rank: i64::from(i32::MAX) + 1,
                model_name: "past i32".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(big.rank, i64::from(i32::MAX) + 1);
    // Now a rollback of the contract would lose that value: it stops, and
    // changes nothing.
    let err = roll_back(&url, &dir, 1).await.unwrap_err();
    assert!(err.to_string().contains("integer out of range"), "{err}");
    assert_eq!(new_repo.get(&after, big.id).await.unwrap().rank, big.rank);
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notes WHERE id <> ALL($1) AND rank <= 12000 \
         AND model_name <> 'm' || rank",
    )
    .bind([by_old.id, by_new.id])
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name || ' ' || data_type FROM information_schema.columns \
         WHERE table_name = 'notes' ORDER BY column_name",
    )
    .fetch_all(t.db())
    .await
    .unwrap();
    assert_eq!(
        columns,
        [
            "created_at timestamp with time zone",
            "id uuid",
            "model_name text",
            "rank bigint",
            "updated_at timestamp with time zone"
        ]
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'notes' ORDER BY indexname",
    )
    .fetch_all(t.db())
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "CREATE UNIQUE INDEX notes_model_name_key ON public.notes USING btree (model_name)",
            "CREATE UNIQUE INDEX notes_pkey ON public.notes USING btree (id)",
            "CREATE INDEX notes_rank_idx ON public.notes USING btree (rank)",
        ]
    );
    // The unique key holds on the new column.
    let twice = new_repo
        .create(
            &after,
            new::NewNote {
                rank: 1,
                model_name: "past i32".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        twice.to_string().contains("notes_model_name_key"),
        "{twice}"
    );
}

#[tokio::test]
async fn a_killed_backfill_resumes_on_the_next_migrate() {
    let (t, dir) = at_old_schema(200_000).await;
    let url = t.url();
    to_new_schema(&url, &dir).await;
    let all = || Migrations::from_dir(dir.path()).unwrap();
    let running = tokio::spawn({
        let (url, all) = (url.clone(), all());
        async move { migrate(&url, &all, &MigrateOptions::default()).await }
    });
    // Kill it once it has copied some batches, as `kill -9` of its session would.
    let mut admin = mandrake_storage::connect_one(&url).await.unwrap();
    let mut killed: i64 = 0;
    for _ in 0..600 {
        let progress: Option<String> = sqlx::query_scalar(
            "SELECT application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'mandrake backfill%'",
        )
        .fetch_optional(&mut admin)
        .await
        .unwrap();
        // Past its second batch.
        let done = progress
            .as_deref()
            .and_then(|p| p.strip_prefix("mandrake backfill "))
            .and_then(|p| p.split('/').next())
            .and_then(|n| n.parse::<i64>().ok());
        if done.is_some_and(|n| n > 10_000) {
            killed = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name LIKE 'mandrake backfill%'",
            )
            .fetch_one(&mut admin)
            .await
            .unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(killed, 1, "the backfill was seen running");
    let err = running.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Migration(_) | Error::Database(_)),
        "{err}"
    );
    let (done, early_xmin): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM notes WHERE rank__new IS NOT NULL), \
                (SELECT xmin::text FROM notes WHERE rank__new IS NOT NULL ORDER BY id LIMIT 1)",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(
        done > 0 && done < 200_000,
        "killed midway: {done} rows done"
    );

    // The next migrate runs the backfill again; it goes on where it was.
    let report = migrate(&url, &all(), &MigrateOptions::default())
        .await
        .unwrap();
    assert!(report.waiting.is_some(), "{report:?}");
    let (left, xmin): (i64, String) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM notes WHERE rank__new IS DISTINCT FROM rank::bigint \
                 OR model_name IS DISTINCT FROM model), \
                (SELECT xmin::text FROM notes WHERE rank__new IS NOT NULL ORDER BY id LIMIT 1)",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(left, 0);
    assert_eq!(
        xmin, early_xmin,
        "a row copied before the kill was not written again"
    );
    migrate(&url, &all(), &MigrateOptions::complete())
        .await
        .unwrap();
    let wrong: i64 =
        sqlx::query_scalar("SELECT count(*) FROM notes WHERE model_name <> 'm' || rank")
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(wrong, 0);
}

/// A foreign key column renamed online: the key comes to the new column
/// `NOT VALID` in the expand, is validated after the backfill, and takes its
/// name in the contract; both columns refuse a parent that is not there.
mod keyed {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "folders")]
    pub struct Folder {
        pub id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Before {
        pub id: Uuid,
        #[record(references = "folders", on_delete = "cascade")]
        pub folder_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct After {
        pub id: Uuid,
        #[record(references = "folders", on_delete = "cascade")]
        pub parent_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn a_foreign_key_column_keeps_its_key_through_an_online_rename() {
    let t = TestDb::empty().await.unwrap();
    let url = t.url();
    let dir = MigrationDir::new(&[]);
    let all = || Migrations::from_dir(dir.path()).unwrap();
    let before = [keyed::Folder::schema(), keyed::Before::schema()];
    new_migration(&url, dir.path(), &before, &Renames::NONE, "start", false)
        .await
        .unwrap();
    migrate(&url, &all(), &MigrateOptions::default())
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO folders (id) SELECT gen_random_uuid() FROM generate_series(1, 10);
         INSERT INTO notes (id, folder_id)
         SELECT gen_random_uuid(), (SELECT id FROM folders ORDER BY id OFFSET g % 10 LIMIT 1)
         FROM generate_series(1, 1000) g;",
    )
    .execute(t.db())
    .await
    .unwrap();
    let options = NewMigrationOptions {
        online: true,
        ..NewMigrationOptions::default()
    };
    let after = [keyed::Folder::schema(), keyed::After::schema()];
    let renames = Renames::default().column("notes", "folder_id", "parent_id");
    let made = new_migration_with(&url, dir.path(), &after, &renames, "reparent", &options)
        .await
        .unwrap();
    let mut written: Vec<_> = made.files.iter().map(|(up, _)| up.clone()).collect();
    written.extend(made.files.iter().map(|(_, down)| down.clone()));
    assert_eq!(lint_paths(&written).unwrap(), []);
    migrate(&url, &all(), &MigrateOptions::default())
        .await
        .unwrap();
    let keys = || async {
        sqlx::query_as::<_, (String, bool)>(
            "SELECT conname::text, convalidated FROM pg_constraint \
             WHERE conrelid = 'notes'::regclass AND contype = 'f' ORDER BY conname",
        )
        .fetch_all(t.db())
        .await
        .unwrap()
    };
    assert_eq!(
        keys().await,
        [
            ("notes_folder_id_fkey".to_owned(), true),
            ("notes_parent_id_fkey__new".to_owned(), true)
        ]
    );
    // In the window the new binary's write of a missing parent is refused.
    let next = binary(&url).await;
    let orphan = keyed::After::repo()
        .create(
            &next,
            keyed::NewAfter {
                parent_id: Uuid::now_v7(),
            },
        )
        .await
        .unwrap_err();
    assert!(orphan.to_string().contains("fkey"), "{orphan}");
    migrate(&url, &all(), &MigrateOptions::complete())
        .await
        .unwrap();
    assert_eq!(keys().await, [("notes_parent_id_fkey".to_owned(), true)]);
    let orphan = keyed::After::repo()
        .create(
            &next,
            keyed::NewAfter {
                parent_id: Uuid::now_v7(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        orphan.to_string().contains("notes_parent_id_fkey"),
        "{orphan}"
    );
    let wrong: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notes n LEFT JOIN folders f ON f.id = n.parent_id WHERE f.id IS NULL",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    assert_eq!(
        keyed::After::repo()
            .count(&next, Filter::all())
            .await
            .unwrap(),
        1000
    );
}

/// Waits (up to 12 s) until a backfill of this database is running, and
/// returns a connection to it.
async fn backfill_running(url: &str) -> sqlx::PgConnection {
    let mut admin = mandrake_storage::connect_one(url).await.unwrap();
    for _ in 0..600 {
        let running: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name LIKE 'mandrake backfill%')",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if running {
            return admin;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no backfill was seen running");
}

#[tokio::test]
async fn a_second_migrate_during_a_backfill_waits_its_turn_and_is_refused_in_time() {
    let (t, dir) = at_old_schema(200_000).await;
    let url = t.url();
    to_new_schema(&url, &dir).await;
    let all = || Migrations::from_dir(dir.path()).unwrap();
    let first = tokio::spawn({
        let (url, all) = (url.clone(), all());
        async move { migrate(&url, &all, &MigrateOptions::default()).await }
    });
    let _admin = backfill_running(&url).await;
    // The second run meets the first one's lock, and says who holds it.
    let options = MigrateOptions {
        lock_timeout: Duration::from_millis(500),
        ..MigrateOptions::default()
    };
    match migrate(&url, &all(), &options).await {
        Err(Error::Migration(mandrake_storage::MigrationError::LockTimeout { holder, .. })) => {
            assert!(holder.is_some())
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    let report = first.await.unwrap().unwrap();
    assert!(report.waiting.is_some(), "{report:?}");
    // After it, a second run finds nothing to do but the contract's wait.
    let again = migrate(&url, &all(), &MigrateOptions::default())
        .await
        .unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM notes WHERE rank__new IS DISTINCT FROM rank::bigint",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_rollback_during_the_backfill_waits_for_it_and_leaves_the_old_schema() {
    let (t, dir) = at_old_schema(200_000).await;
    let url = t.url();
    to_new_schema(&url, &dir).await;
    let all = Migrations::from_dir(dir.path()).unwrap();
    let running = tokio::spawn({
        let (url, all) = (url.clone(), all.clone());
        async move { migrate(&url, &all, &MigrateOptions::default()).await }
    });
    let _admin = backfill_running(&url).await;
    // The rollback takes the same lock: it runs once the backfill is done,
    // and undoes the expand, its backfill and the index builds.
    let rolled = roll_back(&url, &dir, 4).await.unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(rolled.reverted.len(), 4, "{rolled:?}");
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'notes'::regclass \
         AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .fetch_all(t.db())
    .await
    .unwrap();
    assert_eq!(columns, ["id", "rank", "model", "created_at", "updated_at"]);
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'notes'::regclass AND tgname LIKE 'sync_%'",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert_eq!(triggers, 0);
    let old = binary(&url).await;
    assert_eq!(
        old::Note::repo().count(&old, Filter::all()).await.unwrap(),
        200_000
    );
}

#[tokio::test]
async fn the_old_binary_after_the_contract_is_told_the_schema_moved_on() {
    let (t, dir) = at_old_schema(100).await;
    let url = t.url();
    to_new_schema(&url, &dir).await;
    let all = Migrations::from_dir(dir.path()).unwrap();
    migrate(&url, &all, &MigrateOptions::complete())
        .await
        .unwrap();
    let old = binary(&url).await;
    let write = old::Note::repo()
        .create(
            &old,
            old::NewNote {
                rank: 1,
                model: "late".into(),
            },
        )
        .await;
    match write {
        Err(Error::SchemaMoved { table, column }) => {
            assert_eq!(
                (table.as_str(), column.as_deref()),
                ("notes", Some("model"))
            )
        }
        other => panic!("expected SchemaMoved, got {other:?}"),
    }
    // Nothing was written; the new binary reads every row.
    let new = binary(&url).await;
    assert_eq!(
        new::Note::repo().count(&new, Filter::all()).await.unwrap(),
        100
    );
}

#[tokio::test]
async fn a_backfill_by_a_role_row_security_holds_fails_loudly_and_copies_nothing() {
    use sqlx::ConnectOptions;
    let (t, dir) = at_old_schema(1_000).await;
    let url = t.url();
    // The table is tenant-scoped, its owner a role row security holds
    // (FORCE): without a tenant it sees no row.
    sqlx::raw_sql(
        "ALTER TABLE notes ADD COLUMN workspace_id uuid NOT NULL DEFAULT gen_random_uuid(); \
         ALTER TABLE notes ENABLE ROW LEVEL SECURITY; ALTER TABLE notes FORCE ROW LEVEL SECURITY; \
         CREATE POLICY notes_tenant ON notes USING (workspace_id = \
           (SELECT NULLIF(current_setting('mandrake.tenant', true), '')::uuid)); \
         CREATE ROLE backfill_owner LOGIN NOSUPERUSER NOBYPASSRLS; \
         GRANT ALL ON SCHEMA public TO backfill_owner; \
         ALTER TABLE notes OWNER TO backfill_owner; \
         ALTER TABLE _sqlx_migrations OWNER TO backfill_owner; \
         ALTER FUNCTION trigger_set_timestamp() OWNER TO backfill_owner",
    )
    .execute(t.db())
    .await
    .unwrap();
    to_new_schema(&url, &dir).await;
    let owner_url = t
        .connect_options()
        .username("backfill_owner")
        .to_url_lossy()
        .to_string();
    let all = Migrations::from_dir(dir.path()).unwrap();
    let err = migrate(&owner_url, &all, &MigrateOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("row-level security"), "{text}");
    let copied: i64 = sqlx::query_scalar("SELECT count(*) FROM notes WHERE rank__new IS NOT NULL")
        .fetch_one(t.db())
        .await
        .unwrap();
    assert_eq!(copied, 0);
}
