//! `new-migration` end to end on real PostgreSQL: for each kind of change,
//! types v1 → migration, types v2 → `new-migration` → the files exist,
//! `migrate` brings a v1 database to exactly the v2 catalog, `rollback`
//! brings it back to exactly v1, and a second `new-migration` writes nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mandrake_cli::scaffold::{
    NewMigration, NewMigrationOptions, Timeouts, check, new_migration, new_migration_with,
};
use mandrake_storage::migrate::{MigrateOptions, Migrations, RollbackTarget, migrate, rollback};
use mandrake_storage::schema::Renames;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{DatabaseSchema, Error, Record, RecordEnum, TableSchema, connect_one};
use mandrake_tests::MigrationDir;
use uuid::Uuid;

/// A migrations folder and a database kept at its newest migration.
struct Lab {
    dir: MigrationDir,
    db: TestDb,
}

async fn read_schema(db: &TestDb) -> DatabaseSchema {
    let mut conn = connect_one(&db.url()).await.unwrap();
    mandrake_storage::schema::introspect::inspect(&mut conn)
        .await
        .unwrap()
        .normalized()
}

/// The catalog that `tables` produce when created directly.
async fn expected(tables: &[&TableSchema]) -> DatabaseSchema {
    read_schema(&TestDb::with_tables(tables).await.unwrap()).await
}

impl Lab {
    async fn new(v1: &[&TableSchema]) -> Lab {
        let lab = Lab {
            dir: MigrationDir::new(&[]),
            db: TestDb::empty().await.unwrap(),
        };
        let first = lab.generate(v1, false).await.unwrap();
        assert_eq!(first.files.len(), 1);
        lab.migrate().await;
        lab
    }

    async fn generate(
        &self,
        tables: &[&TableSchema],
        allow_destructive: bool,
    ) -> mandrake_storage::Result<NewMigration> {
        self.generate_renaming(tables, &Renames::NONE, allow_destructive)
            .await
    }

    async fn generate_renaming(
        &self,
        tables: &[&TableSchema],
        renames: &Renames,
        allow_destructive: bool,
    ) -> mandrake_storage::Result<NewMigration> {
        new_migration(
            &self.db.url(),
            self.dir.path(),
            tables,
            renames,
            "change",
            allow_destructive,
        )
        .await
    }

    /// The `--online` sequence for `tables`, named `harden`.
    async fn generate_online(&self, tables: &[&TableSchema]) -> NewMigration {
        let options = NewMigrationOptions {
            online: true,
            ..NewMigrationOptions::default()
        };
        new_migration_with(
            &self.db.url(),
            self.dir.path(),
            tables,
            &Renames::NONE,
            "harden",
            &options,
        )
        .await
        .unwrap()
    }

    fn migrations(&self) -> Migrations {
        Migrations::from_dir(self.dir.path()).unwrap()
    }

    async fn migrate(&self) {
        migrate(
            &self.db.url(),
            &self.migrations(),
            &MigrateOptions::default(),
        )
        .await
        .unwrap();
    }

    async fn rollback(&self) {
        rollback(
            &self.db.url(),
            &self.migrations(),
            RollbackTarget::Steps(1),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A version after every migration in the folder, for a hand-written one.
    fn next_version(&self) -> i64 {
        let last = self.files().last().cloned().unwrap_or_default();
        last.split('_').next().unwrap().parse::<i64>().unwrap() + 1
    }

    /// v1 → v2 → v1 → v2 with every check of the module docs; returns the
    /// up and down SQL for further assertions.
    async fn evolve(
        &self,
        v1: &[&TableSchema],
        v2: &[&TableSchema],
        allow_destructive: bool,
    ) -> (String, String) {
        self.evolve_renaming(v1, v2, &Renames::NONE, allow_destructive)
            .await
    }

    /// [`Lab::evolve`] with rename hints from v1 to v2.
    async fn evolve_renaming(
        &self,
        v1: &[&TableSchema],
        v2: &[&TableSchema],
        renames: &Renames,
        allow_destructive: bool,
    ) -> (String, String) {
        let before = self.files().len();
        let made = self
            .generate_renaming(v2, renames, allow_destructive)
            .await
            .unwrap();
        assert_eq!(made.files.len(), 1, "a migration is written");
        let (up, down) = made.files[0].clone();
        assert_eq!(self.files().len(), before + 2);
        self.migrate().await;
        assert_eq!(
            read_schema(&self.db).await,
            expected(v2).await,
            "migrate builds exactly v2"
        );
        self.rollback().await;
        assert_eq!(
            read_schema(&self.db).await,
            expected(v1).await,
            "rollback restores exactly v1"
        );
        self.migrate().await;
        let again = self
            .generate_renaming(v2, renames, allow_destructive)
            .await
            .unwrap();
        assert!(again.files.is_empty(), "a second run writes nothing");
        assert_eq!(self.files().len(), before + 2);
        let plan = check(&self.db.url(), &self.migrations(), v2, renames)
            .await
            .unwrap();
        assert!(plan.is_empty(), "check passes: {plan:?}");
        (
            std::fs::read_to_string(up).unwrap(),
            std::fs::read_to_string(down).unwrap(),
        )
    }

    async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(self.db.db())
            .await
            .unwrap();
    }

    async fn text(&self, sql: &str) -> Vec<String> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(self.db.db())
            .await
            .unwrap()
    }
}

fn expect_refused(result: mandrake_storage::Result<NewMigration>, needle: &str) {
    match result {
        Err(e @ (Error::Migration(_) | Error::Schema(_))) => {
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}")
        }
        other => panic!("expected a refusal with {needle:?}, got {other:?}"),
    }
}

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
        pub title: String,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

fn v1() -> Vec<&'static TableSchema> {
    vec![v1::Folder::schema(), v1::Note::schema()]
}

async fn seeded() -> Lab {
    let lab = Lab::new(&v1()).await;
    lab.exec(
        "INSERT INTO folders (id, name) VALUES ('00000000-0000-7000-8000-000000000001', 'inbox');
         INSERT INTO notes (id, folder_id, title, body, rank)
         VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'hello', 'world', 7);",
    )
    .await;
    lab
}

mod create_table {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "tags")]
    pub struct Tag {
        pub id: Uuid,
        #[record(references = "notes", on_delete = "cascade")]
        pub note_id: Uuid,
        pub label: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn create_and_drop_table() {
    let lab = seeded().await;
    let v2 = [
        v1::Folder::schema(),
        v1::Note::schema(),
        create_table::Tag::schema(),
    ];
    let (up, down) = lab.evolve(&v1(), &v2, false).await;
    assert!(
        up.contains("SET LOCAL lock_timeout = '5s';\nSET LOCAL statement_timeout = '10min';"),
        "{up}"
    );
    assert!(down.contains("SET LOCAL lock_timeout = '5s';"), "{down}");
    assert!(up.contains("CREATE TABLE \"tags\""), "{up}");
    assert!(
        up.contains("CREATE TRIGGER set_timestamp BEFORE UPDATE ON \"tags\""),
        "{up}"
    );
    assert!(down.contains("DROP TABLE \"tags\""));
    // Dropping it again is destructive.
    expect_refused(lab.generate(&v1(), false).await, "--allow-destructive");
    let (up, down) = lab.evolve(&v2, &v1(), true).await;
    assert!(up.contains("-- DESTRUCTIVE: drop table tags"), "{up}");
    assert!(
        down.contains("-- NOTE: re-creates table tags; its rows are not restored"),
        "{down}"
    );
    assert_eq!(
        lab.text("SELECT title FROM notes").await,
        ["hello"],
        "untouched data survives"
    );
}

mod add_columns {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub title: String,
        pub body: Option<String>,
        pub rank: i32,
        pub summary: Option<String>,
        #[record(default = "'draft'")]
        pub status: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Required {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub title: String,
        pub body: Option<String>,
        pub rank: i32,
        pub author: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn add_nullable_and_defaulted_columns_refuse_required_ones() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), add_columns::Note::schema()];
    let (up, down) = lab.evolve(&v1(), &v2, false).await;
    assert!(up.contains("ADD COLUMN \"summary\" text;"), "{up}");
    assert!(
        up.contains("ADD COLUMN \"status\" text NOT NULL DEFAULT 'draft'::text;"),
        "{up}"
    );
    assert!(down.contains("DROP COLUMN \"status\""));
    assert_eq!(lab.text("SELECT status FROM notes").await, ["draft"]);
    assert_eq!(lab.text("SELECT body FROM notes").await, ["world"]);
    let required = [v1::Folder::schema(), add_columns::Required::schema()];
    expect_refused(lab.generate(&required, false).await, "without a default");
    expect_refused(lab.generate(&required, true).await, "#[record(default");
}

#[tokio::test]
async fn drop_column_is_destructive() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), add_columns::Note::schema()];
    lab.evolve(&v1(), &v2, false).await;
    expect_refused(
        lab.generate(&v1(), false).await,
        "drop column notes.summary",
    );
    let (up, down) = lab.evolve(&v2, &v1(), true).await;
    assert!(
        up.contains("-- DESTRUCTIVE: drop column notes.status"),
        "{up}"
    );
    assert!(down.contains("its values are not restored"), "{down}");
    assert_eq!(lab.text("SELECT title FROM notes").await, ["hello"]);
}

mod renames {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        #[record(renamed_from = "title")]
        pub heading: String,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "directories", renamed_from = "folders")]
    pub struct Directory {
        pub id: Uuid,
        #[record(unique)]
        pub name: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn rename_column_keeps_its_data() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), renames::Note::schema()];
    let (up, _) = lab
        .evolve_renaming(&v1(), &v2, &renames::Note::renames(), false)
        .await;
    assert!(
        up.contains("RENAME COLUMN \"title\" TO \"heading\""),
        "{up}"
    );
    assert!(!up.contains("DROP COLUMN"), "never drop + add: {up}");
    assert_eq!(lab.text("SELECT heading FROM notes").await, ["hello"]);
}

#[tokio::test]
async fn rename_table_keeps_its_data_and_renames_its_constraints() {
    let lab = seeded().await;
    let v2 = [renames::Directory::schema(), v1::Note::schema()];
    let (up, _) = lab
        .evolve_renaming(&v1(), &v2, &renames::Directory::renames(), false)
        .await;
    assert!(
        up.contains("ALTER TABLE \"folders\" RENAME TO \"directories\""),
        "{up}"
    );
    assert!(
        up.contains("RENAME CONSTRAINT \"folders_pkey\" TO \"directories_pkey\""),
        "{up}"
    );
    assert!(!up.contains("DROP TABLE"), "{up}");
    assert_eq!(lab.text("SELECT name FROM directories").await, ["inbox"]);
}

mod types {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Wider {
        pub id: Uuid,
        pub folder_id: Uuid,
        #[record(sql_type = "VARCHAR(200)")]
        pub title: String,
        #[record(default = "'(empty)'")]
        pub body: String,
        pub rank: i64,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn type_nullability_and_default_changes_use_alter() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), types::Wider::schema()];
    // text → varchar(200) can cut values: destructive.
    expect_refused(lab.generate(&v2, false).await, "change type of notes.title");
    let (up, down) = lab.evolve(&v1(), &v2, true).await;
    assert!(
        up.contains("ALTER COLUMN \"rank\" TYPE bigint USING \"rank\"::bigint"),
        "{up}"
    );
    assert!(up.contains("ALTER COLUMN \"body\" SET NOT NULL"), "{up}");
    assert!(
        up.contains("ALTER COLUMN \"body\" SET DEFAULT '(empty)'::text"),
        "{up}"
    );
    assert!(
        down.contains("ALTER COLUMN \"body\" DROP NOT NULL"),
        "{down}"
    );
    assert!(!up.contains("DROP COLUMN"), "never drop + add: {up}");
    assert_eq!(
        lab.text("SELECT rank::text FROM notes").await,
        ["7"],
        "data survives the type change"
    );
}

mod constraints {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes", unique(folder_id, title), index(folder_id, rank))]
    pub struct Note {
        pub id: Uuid,
        #[record(references = "folders", on_delete = "cascade")]
        pub folder_id: Uuid,
        pub title: String,
        #[record(index)]
        pub body: Option<String>,
        #[record(unique)]
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes", unique(folder_id, title), index(folder_id, rank))]
    pub struct Restrict {
        pub id: Uuid,
        #[record(references = "folders", on_delete = "restrict")]
        pub folder_id: Uuid,
        pub title: String,
        #[record(index)]
        pub body: Option<String>,
        #[record(unique)]
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn unique_index_and_foreign_key_changes() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), constraints::Note::schema()];
    let (up, down) = lab.evolve(&v1(), &v2, false).await;
    assert!(
        up.contains(
            "ADD CONSTRAINT \"notes_folder_id_title_key\" UNIQUE (\"folder_id\", \"title\")"
        ),
        "{up}"
    );
    assert!(
        up.contains("ADD CONSTRAINT \"notes_rank_key\" UNIQUE (\"rank\")"),
        "{up}"
    );
    assert!(
        up.contains("CREATE INDEX \"notes_folder_id_rank_idx\""),
        "{up}"
    );
    assert!(up.contains("CREATE INDEX \"notes_body_idx\""), "{up}");
    assert!(
        up.contains("FOREIGN KEY (\"folder_id\") REFERENCES \"folders\"(\"id\") ON DELETE CASCADE"),
        "{up}"
    );
    assert!(
        down.contains("DROP CONSTRAINT \"notes_folder_id_fkey\""),
        "{down}"
    );
    // on_delete changes: the key is replaced.
    let v3 = [v1::Folder::schema(), constraints::Restrict::schema()];
    let (up, _) = lab.evolve(&v2, &v3, false).await;
    assert!(up.contains("ON DELETE RESTRICT"), "{up}");
    // And everything added can go again.
    lab.evolve(&v3, &v1(), false).await;
}

#[derive(RecordEnum, Clone, Copy, Debug, PartialEq)]
pub enum ColorV1 {
    Red,
    Green,
}

#[derive(RecordEnum, Clone, Copy, Debug, PartialEq)]
pub enum ColorV2 {
    Red,
    Blue,
    Green,
}

mod enums {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "paints")]
    pub struct PaintV1 {
        pub id: Uuid,
        pub color: ColorV1,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "paints")]
    pub struct Renamed {
        pub id: Uuid,
        #[record(renamed_from = "color")]
        pub shade: ColorV1,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "paints")]
    pub struct PaintV2 {
        pub id: Uuid,
        pub color: ColorV2,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn enum_variants_rewrite_the_check() {
    let v1 = [enums::PaintV1::schema()];
    let v2 = [enums::PaintV2::schema()];
    let lab = Lab::new(&v1).await;
    lab.exec("INSERT INTO paints (id, color) VALUES (gen_random_uuid(), 'red')")
        .await;
    let (up, _) = lab.evolve(&v1, &v2, false).await;
    assert!(
        up.contains("DROP CONSTRAINT \"paints_color_check\""),
        "{up}"
    );
    assert!(up.contains("'blue'::text"), "{up}");
    lab.exec("INSERT INTO paints (id, color) VALUES (gen_random_uuid(), 'blue')")
        .await;
    // Removing a variant that rows still use stops the migration with
    // their count, and changes nothing.
    lab.generate(&v1, false).await.unwrap();
    let err = migrate(&lab.db.url(), &lab.migrations(), &MigrateOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot add check paints_color_check on paints: 1 row(s) break"),
        "{err}"
    );
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
    lab.exec("DELETE FROM paints WHERE color = 'blue'").await;
    lab.migrate().await;
    assert_eq!(read_schema(&lab.db).await, expected(&v1).await);
}

#[tokio::test]
async fn renaming_an_enum_column_renames_its_check_both_ways() {
    let v1 = [enums::PaintV1::schema()];
    let v2 = [enums::Renamed::schema()];
    let lab = Lab::new(&v1).await;
    lab.exec("INSERT INTO paints (id, color) VALUES (gen_random_uuid(), 'red')")
        .await;
    let hints = enums::Renamed::renames();
    let (up, down) = lab.evolve_renaming(&v1, &v2, &hints, false).await;
    assert!(up.contains(r#"RENAME COLUMN "color" TO "shade""#), "{up}");
    assert!(
        up.contains(r#"RENAME CONSTRAINT "paints_color_check" TO "paints_shade_check""#),
        "{up}"
    );
    assert!(!down.contains("ADD CONSTRAINT"), "{down}");
    assert_eq!(lab.text("SELECT shade FROM paints").await, ["red"]);
}

mod normalized {
    use super::*;

    /// Spellings PostgreSQL rewrites: they must not show up as changes.
    #[derive(Record, Clone)]
    #[record(table = "settings")]
    pub struct Setting {
        pub id: Uuid,
        #[record(sql_type = "varchar(40)", default = "'x'")]
        pub key: String,
        #[record(default = "'{\"a\": [1, 2]}'")]
        pub value: serde_json::Value,
        #[record(default = "CURRENT_TIMESTAMP")]
        pub seen_at: DateTime<Utc>,
        #[record(default = "gen_random_uuid()")]
        pub token: Uuid,
        pub level: ColorV1,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn normalized_spellings_produce_no_diff() {
    let tables = [normalized::Setting::schema()];
    let lab = Lab::new(&tables).await;
    let again = lab.generate(&tables, false).await.unwrap();
    assert!(again.files.is_empty(), "{:?}", again.plan);
    assert!(
        check(&lab.db.url(), &lab.migrations(), &tables, &Renames::NONE)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(read_schema(&lab.db).await, expected(&tables).await);
}

#[tokio::test]
async fn check_lists_what_is_missing() {
    let lab = Lab::new(&v1()).await;
    let v2 = [v1::Folder::schema(), add_columns::Note::schema()];
    let plan = check(&lab.db.url(), &lab.migrations(), &v2, &Renames::NONE)
        .await
        .unwrap();
    let steps: Vec<&str> = plan.steps.iter().map(|s| s.description.as_str()).collect();
    assert_eq!(
        steps,
        ["add column notes.summary", "add column notes.status"]
    );
}

mod dangling {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "orphans")]
    pub struct Orphan {
        pub id: Uuid,
        #[record(references = "nowhere")]
        pub parent_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn references_to_an_unregistered_table_are_refused() {
    let lab = Lab::new(&v1()).await;
    let tables = [dangling::Orphan::schema()];
    expect_refused(
        lab.generate(&tables, false).await,
        "references table \"nowhere\"",
    );
    assert_eq!(lab.files().len(), 2, "nothing was written");
}

mod notify {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes", notify)]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub title: String,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    /// Now with a foreign key, which the notifications carry.
    #[derive(Record, Clone)]
    #[record(table = "notes", notify)]
    pub struct Keyed {
        pub id: Uuid,
        #[record(references = "folders")]
        pub folder_id: Uuid,
        pub title: String,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn notify_puts_the_table_in_the_publication_and_takes_it_out() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), notify::Note::schema()];
    let (up, down) = lab.evolve(&v1(), &v2, false).await;
    assert!(
        up.contains(
            "CREATE PUBLICATION mandrake_feed WITH (publish = 'insert, update, delete, truncate');"
        ),
        "{up}"
    );
    assert!(
        up.contains(
            "ALTER TABLE \"notes\" REPLICA IDENTITY FULL;\n\
             ALTER PUBLICATION mandrake_feed ADD TABLE \"notes\";"
        ),
        "{up}"
    );
    assert!(
        down.contains("DROP PUBLICATION IF EXISTS mandrake_feed;"),
        "{down}"
    );
    // A new foreign key is nothing to the feed, which carries every column.
    let v3 = [v1::Folder::schema(), notify::Keyed::schema()];
    let (up, _) = lab.evolve(&v2, &v3, false).await;
    assert!(!up.contains("PUBLICATION"), "{up}");

    // A table taken out of the feed by hand, or logging less than whole
    // rows, is drift that check names.
    let quiet = format!("{}_quiet.up.sql", lab.next_version());
    lab.dir
        .write(&quiet, "ALTER TABLE notes REPLICA IDENTITY DEFAULT;\n");
    let plan = check(&lab.db.url(), &lab.migrations(), &v3, &Renames::NONE)
        .await
        .unwrap();
    let said: Vec<&str> = plan.steps.iter().map(|s| s.description.as_str()).collect();
    assert!(
        said.iter().any(|s| s.contains("change feed of notes")),
        "{said:?}"
    );
    lab.dir.remove(&quiet);

    // And off again: out of the publication, which goes too.
    let (up, _) = lab.evolve(&v3, &v1(), false).await;
    assert!(
        up.contains("ALTER PUBLICATION mandrake_feed DROP TABLE \"notes\";"),
        "{up}"
    );
    assert!(
        up.contains("DROP PUBLICATION IF EXISTS mandrake_feed;"),
        "{up}"
    );
}

mod data_aware {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Filled {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub title: String,
        #[record(default = "'(empty)'")]
        pub body: String,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Required {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub title: String,
        pub body: String,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Untitled {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub title: Option<String>,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "flags")]
    pub struct BoolFlag {
        pub id: Uuid,
        #[record(default = "false")]
        pub pinned: bool,
        #[record(sql_type = "NUMERIC(10,2)")]
        pub price: f64,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "flags")]
    pub struct IntFlag {
        pub id: Uuid,
        #[record(default = "0")]
        pub pinned: i32,
        #[record(sql_type = "NUMERIC(12,2)")]
        pub price: f64,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    /// Two composite indexes whose generated names share their first 63 bytes.
    // Clippy takes the two `index(..)` lists, which share columns, for a
    // repeated attribute.
    #[allow(clippy::duplicated_attributes)]
    #[derive(Record, Clone)]
    #[record(
        table = "archived_conversation_messages",
        index(conversation_identifier, participant_identifier, first_variant),
        index(conversation_identifier, participant_identifier, second_variant)
    )]
    pub struct LongNames {
        pub id: Uuid,
        pub conversation_identifier: Uuid,
        pub participant_identifier: Uuid,
        pub first_variant: i32,
        pub second_variant: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

const NULL_BODY: &str = "INSERT INTO notes (id, folder_id, title, body, rank) VALUES \
    ('00000000-0000-7000-8000-000000000003', '00000000-0000-7000-8000-000000000001', 'empty', NULL, 1);";

#[tokio::test]
async fn a_required_column_takes_its_default_where_rows_hold_null() {
    let lab = seeded().await;
    lab.exec(NULL_BODY).await;
    let v2 = [v1::Folder::schema(), data_aware::Filled::schema()];
    let (up, _) = lab.evolve(&v1(), &v2, false).await;
    assert!(
        up.contains(r#"UPDATE "notes" SET "body" = '(empty)'::text WHERE "body" IS NULL;"#),
        "{up}"
    );
    assert_eq!(
        lab.text("SELECT body FROM notes ORDER BY title").await,
        ["(empty)", "world"]
    );
}

#[tokio::test]
async fn a_required_column_without_default_stops_with_the_rows_to_fix_and_changes_nothing() {
    let lab = seeded().await;
    lab.exec(NULL_BODY).await;
    let v2 = [v1::Folder::schema(), data_aware::Required::schema()];
    lab.generate(&v2, false).await.unwrap();
    let err = migrate(&lab.db.url(), &lab.migrations(), &MigrateOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot make notes.body NOT NULL: 1 row(s) hold NULL"),
        "{err}"
    );
    assert_eq!(
        read_schema(&lab.db).await,
        expected(&v1()).await,
        "rolled back whole"
    );

    // The same check guards a down file: NULL titles block going back.
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), data_aware::Untitled::schema()];
    lab.evolve(&v1(), &v2, false).await;
    lab.exec("UPDATE notes SET title = NULL").await;
    let err = rollback(
        &lab.db.url(),
        &lab.migrations(),
        RollbackTarget::Steps(1),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot make notes.title NOT NULL: 1 row(s) hold NULL"),
        "{err}"
    );
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
}

#[tokio::test]
async fn a_default_that_cannot_be_cast_is_dropped_around_the_type_change() {
    let v1 = [data_aware::BoolFlag::schema()];
    let lab = Lab::new(&v1).await;
    lab.exec(
        "INSERT INTO flags (id, pinned, price) VALUES ('00000000-0000-7000-8000-000000000009', true, 12.5)",
    )
    .await;
    let v2 = [data_aware::IntFlag::schema()];
    // boolean → integer loses nothing PostgreSQL can cast back, but is not
    // a widening: it needs the flag; NUMERIC(10,2) → (12,2) alone would not.
    let (up, down) = lab.evolve(&v1, &v2, true).await;
    let drop = up
        .find(r#"ALTER COLUMN "pinned" DROP DEFAULT;"#)
        .expect(&up);
    let retype = up.find(r#"ALTER COLUMN "pinned" TYPE integer"#).expect(&up);
    let set = up
        .find(r#"ALTER COLUMN "pinned" SET DEFAULT 0;"#)
        .expect(&up);
    assert!(drop < retype && retype < set, "{up}");
    assert!(
        !up.contains("DESTRUCTIVE: change type of flags.price"),
        "{up}"
    );
    assert!(
        down.contains(r#"ALTER COLUMN "pinned" SET DEFAULT false;"#),
        "{down}"
    );
    assert_eq!(lab.text("SELECT pinned::text FROM flags").await, ["1"]);
}

#[tokio::test]
async fn numeric_precision_can_grow_without_the_flag() {
    let mut widened = data_aware::BoolFlag::schema().clone();
    widened.columns[2].sql_type = "NUMERIC(12,2)".into();
    let v1 = [data_aware::BoolFlag::schema()];
    let lab = Lab::new(&v1).await;
    let (up, _) = lab.evolve(&v1, &[&widened], false).await;
    assert!(up.contains("TYPE numeric(12,2)"), "{up}");
}

#[tokio::test]
async fn composite_indexes_with_long_names_do_not_collide() {
    let v1 = [data_aware::LongNames::schema()];
    let names: Vec<&str> = v1[0].indexes.iter().map(|i| i.name.as_str()).collect();
    assert_ne!(names[0], names[1]);
    let lab = Lab::new(&v1).await;
    assert_eq!(read_schema(&lab.db).await, expected(&v1).await);
}

#[tokio::test]
async fn a_migration_waiting_for_a_lock_gives_up_after_its_lock_timeout() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), data_aware::Untitled::schema()];
    let with_lock = |lock: &str| NewMigrationOptions {
        timeouts: Timeouts {
            lock: lock.into(),
            ..Timeouts::default()
        },
        ..NewMigrationOptions::default()
    };
    for bad in ["5 seconds", "s", "-1s"] {
        let made = new_migration_with(
            &lab.db.url(),
            lab.dir.path(),
            &v2,
            &Renames::NONE,
            "x",
            &with_lock(bad),
        )
        .await;
        expect_refused(made, "is not a duration");
    }
    new_migration_with(
        &lab.db.url(),
        lab.dir.path(),
        &v2,
        &Renames::NONE,
        "untitled",
        &with_lock("300ms"),
    )
    .await
    .unwrap();

    // A long transaction that read the table holds a lock the ALTER needs.
    let mut reader = connect_one(&lab.db.url()).await.unwrap();
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM notes;")
        .execute(&mut reader)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = migrate(&lab.db.url(), &lab.migrations(), &MigrateOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lock timeout"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        read_schema(&lab.db).await,
        expected(&v1()).await,
        "nothing changed"
    );

    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    lab.migrate().await;
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
}

#[tokio::test]
async fn dropping_a_referenced_table_writes_a_down_that_applies_with_rows_left() {
    let v1 = [v1::Folder::schema(), constraints::Note::schema()];
    let lab = Lab::new(&v1).await;
    lab.exec(
        "INSERT INTO folders (id, name) VALUES ('00000000-0000-7000-8000-000000000001', 'inbox');
         INSERT INTO notes (id, folder_id, title, body, rank)
         VALUES ('00000000-0000-7000-8000-000000000002', '00000000-0000-7000-8000-000000000001', 'hello', 'world', 7);",
    )
    .await;
    let v2 = [v1::Note::schema()];
    let (_, down) = lab.evolve(&v1, &v2, true).await;
    assert!(down.contains("ON DELETE CASCADE NOT VALID;"), "{down}");
    assert!(
        down.contains("-- NOTE: re-adds notes_folder_id_fkey NOT VALID"),
        "{down}"
    );
    assert_eq!(lab.text("SELECT title FROM notes").await, ["hello"]);
}

mod chained {
    use super::*;

    /// title → body while body → summary, the first listed first.
    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        #[record(renamed_from = "title")]
        pub body: String,
        #[record(renamed_from = "body")]
        pub summary: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn chained_renames_keep_every_value_whatever_the_field_order() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), chained::Note::schema()];
    let (up, _) = lab
        .evolve_renaming(&v1(), &v2, &chained::Note::renames(), false)
        .await;
    assert!(!up.contains("DROP COLUMN"), "{up}");
    assert_eq!(
        lab.text("SELECT body || '/' || summary FROM notes").await,
        ["hello/world"]
    );
}

mod online {
    use super::*;

    /// v1's notes with a foreign key, an index, a unique title and a
    /// required body.
    #[derive(Record, Clone)]
    #[record(table = "notes", index(folder_id, rank))]
    pub struct Note {
        pub id: Uuid,
        #[record(references = "folders", on_delete = "cascade")]
        pub folder_id: Uuid,
        #[record(unique)]
        pub title: String,
        pub body: String,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn online_writes_a_lint_clean_sequence_that_applies_and_rolls_back() {
    let lab = seeded().await;
    let v2 = [v1::Folder::schema(), online::Note::schema()];
    let made = lab.generate_online(&v2).await;
    let names: Vec<String> = made
        .files
        .iter()
        .map(|(up, _)| up.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names[1].ends_with("_harden_index_1.up.sql"), "{names:?}");
    assert!(names[2].ends_with("_harden_index_2.up.sql"), "{names:?}");
    assert!(names[3].ends_with("_harden_validate.up.sql"), "{names:?}");
    let text = |path: &std::path::Path| std::fs::read_to_string(path).unwrap();
    let indexes = text(&made.files[1].0) + &text(&made.files[2].0);
    assert!(indexes.starts_with("-- no-transaction\n"), "{indexes}");
    for built in [
        r#"CREATE INDEX CONCURRENTLY "notes_folder_id_rank_idx""#,
        r#"CREATE UNIQUE INDEX CONCURRENTLY "notes_title_key""#,
    ] {
        assert!(indexes.contains(built), "{indexes}");
    }
    assert!(text(&made.files[0].0).contains("NOT VALID;"));
    assert!(
        text(&made.files[3].0)
            .contains(r#"ADD CONSTRAINT "notes_title_key" UNIQUE USING INDEX "notes_title_key";"#)
    );
    // squawk finds nothing in any of them.
    let paths: Vec<std::path::PathBuf> = made
        .files
        .iter()
        .flat_map(|(up, down)| [up.clone(), down.clone()])
        .collect();
    let findings = mandrake_cli::lint::lint_paths(&paths).unwrap();
    assert!(findings.is_empty(), "{findings:#?}");

    lab.migrate().await;
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
    rollback(
        &lab.db.url(),
        &lab.migrations(),
        RollbackTarget::Steps(4),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(read_schema(&lab.db).await, expected(&v1()).await);
    lab.migrate().await;
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
    assert_eq!(lab.text("SELECT title FROM notes").await, ["hello"]);
}

/// A seeded handful of random schema pairs (`cargo xtask fuzz-diff --cases N`
/// runs many): each change is written, proven up, down and up again, and a
/// second run finds nothing left.
#[tokio::test]
async fn random_schema_pairs_migrate_both_ways() {
    let t = TestDb::empty().await.unwrap();
    for seed in 1000..1008 {
        match mandrake_cli::fuzz::run_case(&t.url(), seed).await {
            Ok(mandrake_cli::fuzz::Ran::Passed) => {}
            // PyPI's PostgreSQL 18 has no citext.
            Ok(mandrake_cli::fuzz::Ran::Skipped { extension }) => {
                eprintln!("case {seed} skipped: this server has no extension {extension}")
            }
            Err(err) => panic!("case {seed}: {err}\n{}", mandrake_cli::fuzz::describe(seed)),
        }
    }
}

mod narrow {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        #[record(sql_type = "VARCHAR(5)")]
        pub title: String,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn a_narrowing_type_change_stops_on_values_that_do_not_fit() {
    let lab = seeded().await;
    lab.exec(
        "INSERT INTO notes (id, folder_id, title, body, rank) VALUES \
         ('00000000-0000-7000-8000-000000000004', '00000000-0000-7000-8000-000000000001', 'far too long', NULL, 2);",
    )
    .await;
    let v2 = [v1::Folder::schema(), narrow::Note::schema()];
    lab.generate(&v2, true).await.unwrap();
    let err = migrate(&lab.db.url(), &lab.migrations(), &MigrateOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot change notes.title to character varying(5): 1 row(s) do not fit"),
        "{err}"
    );
    assert_eq!(read_schema(&lab.db).await, expected(&v1()).await);
    lab.exec("DELETE FROM notes WHERE rank = 2").await;
    lab.migrate().await;
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
}

/// A failed `CREATE INDEX CONCURRENTLY` leaves its index INVALID. The
/// file's one statement (sqlx's migrator needs one) has no `IF NOT EXISTS`:
/// the run stops on the leftover, rather than skip it and report an index no
/// query can use; once it is dropped and the file resolved, it is built.
#[tokio::test]
async fn an_invalid_index_a_failed_run_left_stops_the_build_until_dropped() {
    let lab = seeded().await;
    lab.exec(
        "INSERT INTO notes (id, folder_id, title, body, rank) VALUES \
         ('00000000-0000-7000-8000-000000000005', '00000000-0000-7000-8000-000000000001', 'twin', NULL, 7);",
    )
    .await;
    let v2 = [v1::Folder::schema(), online::Note::schema()];
    lab.exec("UPDATE notes SET body = 'b' WHERE body IS NULL")
        .await;
    let made = lab.generate_online(&v2).await;
    // Here a unique one that fails on the two notes sharing (folder, rank).
    let failed = sqlx::raw_sql(
        "CREATE UNIQUE INDEX CONCURRENTLY notes_folder_id_rank_idx ON notes (folder_id, rank)",
    )
    .execute(lab.db.db())
    .await;
    assert!(failed.is_err());
    let stopped = migrate(&lab.db.url(), &lab.migrations(), &MigrateOptions::default()).await;
    let (up, _) = made
        .files
        .iter()
        .find(|(up, _)| {
            std::fs::read_to_string(up)
                .unwrap()
                .contains("CREATE INDEX CONCURRENTLY \"notes_folder_id_rank_idx\"")
        })
        .unwrap();
    let stem = up
        .file_name()
        .unwrap()
        .to_string_lossy()
        .replace(".up.sql", "");
    match stopped {
        Err(Error::Migration(mandrake_storage::MigrationError::Failed {
            name, message, ..
        })) => {
            assert_eq!(name, stem);
            assert!(message.contains("already exists"), "{message}");
        }
        other => panic!("expected the index file to fail, got {other:?}"),
    }
    let version = mandrake_cli::lint::version_of(up).unwrap();
    lab.exec("DROP INDEX CONCURRENTLY notes_folder_id_rank_idx")
        .await;
    assert!(
        mandrake_storage::migrate::resolve(&lab.db.url(), version)
            .await
            .unwrap()
    );
    lab.migrate().await;
    let state = lab
        .text(
            "SELECT indisvalid::text || '/' || indisunique::text FROM pg_index \
             WHERE indexrelid = 'notes_folder_id_rank_idx'::regclass",
        )
        .await;
    assert_eq!(state, ["true/false"], "built as planned");
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
}

mod search_ready {
    use super::*;

    pub mod v1 {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "notes")]
        pub struct Note {
            pub id: Uuid,
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// v1 and a nullable column: an unrelated change.
    pub mod v1b {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "notes")]
        pub struct Note {
            pub id: Uuid,
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            pub title: Option<String>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// A column the database computes.
    pub mod generated {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "notes")]
        pub struct Note {
            pub id: Uuid,
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            #[record(generated = "length(body)")]
            pub body_length: i32,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// The same column computed another way, and indexed.
    pub mod regenerated {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "notes", index(body_length))]
        pub struct Note {
            pub id: Uuid,
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            #[record(generated = "length(body) * 2")]
            pub body_length: i32,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// Two checks of the user's own.
    pub mod checked {
        use super::*;

        #[derive(Record, Clone)]
        #[record(
            table = "notes",
            check = "length(body) > 0",
            check = "email LIKE '%@%'"
        )]
        pub struct Note {
            pub id: Uuid,
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// Search-ready: a trigram index, a partial unique index (soft
    /// delete), an expression index (case-insensitive email), a covering one.
    pub mod v2 {
        use super::*;

        #[derive(Record, Clone)]
        #[record(
            table = "notes",
            extension = "pg_trgm",
            index(body, using = "gin", ops = "gin_trgm_ops"),
            unique(email, where = "deleted_at IS NULL"),
            index(expr = "lower(email)"),
            index(created_at, include(email))
        )]
        pub struct Note {
            pub id: Uuid,
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }
}

#[tokio::test]
async fn indexes_of_every_kind_are_declared_migrated_and_rolled_back() {
    let v1 = [search_ready::v1::Note::schema()];
    let v2 = [search_ready::v2::Note::schema()];
    let lab = Lab::new(&v1).await;
    let (up, down) = lab.evolve(&v1, &v2, false).await;
    for part in [
        r#"CREATE EXTENSION IF NOT EXISTS "pg_trgm";"#,
        "USING gin (body gin_trgm_ops)",
        "CREATE UNIQUE INDEX",
        "WHERE (deleted_at IS NULL)",
        "(lower(email))",
        "INCLUDE (",
    ] {
        assert!(up.contains(part), "{part} in\n{up}");
    }
    assert!(down.contains("DROP INDEX"), "{down}");
    // The trigram index serves a substring search (`contains_text`'s ILIKE).
    let mut tx = lab.db.db().begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN SELECT * FROM notes WHERE body ILIKE '%needle%'")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    assert!(
        plan.iter().any(|l| l.contains("Index Scan on notes_body_")),
        "{plan:#?}"
    );
    // The partial unique index lets a deleted row's email come back.
    lab.exec(
        "INSERT INTO notes (body, email, deleted_at) VALUES ('a', 'x@y', now()); \
         INSERT INTO notes (body, email) VALUES ('b', 'x@y')",
    )
    .await;
    let again = sqlx::raw_sql("INSERT INTO notes (body, email) VALUES ('c', 'x@y')")
        .execute(lab.db.db())
        .await;
    assert!(
        again.is_err(),
        "a second live row with that email is refused"
    );
}

#[tokio::test]
async fn hand_written_sql_objects_are_left_alone() {
    let v1 = [search_ready::v1::Note::schema()];
    let lab = Lab::new(&v1).await;
    let first: i64 = lab.files()[0].split('_').next().unwrap().parse().unwrap();
    lab.dir.write(
        &format!("{}_by_hand.up.sql", first + 1),
        "CREATE EXTENSION IF NOT EXISTS pg_trgm;\n\
         CREATE INDEX notes_body_trgm ON notes USING gin (body gin_trgm_ops);\n\
         ALTER TABLE notes ADD CONSTRAINT notes_body_short CHECK (length(body) < 10000);\n",
    );
    lab.migrate().await;
    let comparison =
        mandrake_cli::scaffold::compare(&lab.db.url(), &lab.migrations(), &v1, &Renames::NONE)
            .await
            .unwrap();
    assert!(comparison.plan().unwrap().is_empty(), "check passes");
    let mut unmanaged = comparison.unmanaged.clone();
    unmanaged.sort();
    assert_eq!(
        unmanaged,
        [
            ("notes".to_owned(), "notes_body_short".to_owned()),
            ("notes".to_owned(), "notes_body_trgm".to_owned()),
            (
                mandrake_cli::scaffold::DATABASE.to_owned(),
                "extension pg_trgm".to_owned()
            ),
        ]
    );
    // An unrelated change is planned and proven with them in place.
    let v1b = [search_ready::v1b::Note::schema()];
    let made = lab.generate(&v1b, false).await.unwrap();
    assert_eq!(made.files.len(), 1);
    let up = std::fs::read_to_string(&made.files[0].0).unwrap();
    assert!(
        !up.contains("notes_body_trgm") && !up.contains("notes_body_short"),
        "{up}"
    );
    lab.migrate().await;
    let left = lab
        .text(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'notes' \
             AND indexname = 'notes_body_trgm'",
        )
        .await;
    assert_eq!(left, ["notes_body_trgm"]);
    let plan = check(&lab.db.url(), &lab.migrations(), &v1b, &Renames::NONE)
        .await
        .unwrap();
    assert!(plan.is_empty(), "{plan:?}");
}

#[tokio::test]
async fn removing_a_declared_index_from_a_record_drops_it() {
    let v1 = [search_ready::v1::Note::schema()];
    let v2 = [search_ready::v2::Note::schema()];
    let lab = Lab::new(&v2).await;
    // The extension the types made goes too: destructive, so not unasked.
    expect_refused(lab.generate(&v1, false).await, "drop extension pg_trgm");
    let made = lab.generate(&v1, true).await.unwrap();
    assert_eq!(made.files.len(), 1);
    let up = std::fs::read_to_string(&made.files[0].0).unwrap();
    assert_eq!(up.matches("DROP INDEX").count(), 4, "{up}");
    assert!(
        up.contains(r#"DROP EXTENSION IF EXISTS "pg_trgm";"#),
        "{up}"
    );
    let down = std::fs::read_to_string(&made.files[0].1).unwrap();
    assert!(
        down.contains(r#"CREATE EXTENSION IF NOT EXISTS "pg_trgm";"#),
        "{down}"
    );
    // The downs rebuild each index exactly as the catalog printed it.
    assert!(down.contains("USING gin (body gin_trgm_ops)"), "{down}");
    assert!(down.contains("WHERE (deleted_at IS NULL)"), "{down}");
}

#[tokio::test]
async fn checks_of_the_users_own_are_declared_guarded_and_rolled_back() {
    let v1 = [search_ready::v1::Note::schema()];
    let checked = [search_ready::checked::Note::schema()];
    let lab = Lab::new(&v1).await;
    let (up, down) = lab.evolve(&v1, &checked, false).await;
    assert_eq!(up.matches("ADD CONSTRAINT").count(), 2, "{up}");
    assert_eq!(down.matches("DROP CONSTRAINT").count(), 2, "{down}");
    // A row that breaks a new check stops the migration before it adds it.
    lab.rollback().await;
    lab.exec("INSERT INTO notes (body, email) VALUES ('', 'x@y')")
        .await;
    let err = migrate(&lab.db.url(), &lab.migrations(), &MigrateOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 row(s) break"), "{err}");
}

#[tokio::test]
async fn generated_columns_are_computed_read_back_and_never_written() {
    use search_ready::generated::{NewNote, Note};
    let v1 = [search_ready::v1::Note::schema()];
    let generated = [Note::schema()];
    let lab = Lab::new(&v1).await;
    let (up, _) = lab.evolve(&v1, &generated, false).await;
    assert!(
        up.contains("GENERATED ALWAYS AS (length(body)) STORED"),
        "{up}"
    );
    let note = Note::repo()
        .create(
            lab.db.db(),
            NewNote {
                body: "hello".into(),
                email: "a@b".into(),
                deleted_at: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(note.body_length, 5, "computed by the database, read back");
    let patch = search_ready::generated::NotePatch {
        body: Some("hi".into()),
        ..Default::default()
    };
    let note = Note::repo()
        .update(lab.db.db(), note.id, patch)
        .await
        .unwrap();
    assert_eq!(note.body_length, 2);
    // Another expression: the column is made again (nothing is lost, so no
    // --allow-destructive), its index with it.
    let regenerated = [search_ready::regenerated::Note::schema()];
    let made = lab.generate(&regenerated, false).await.unwrap();
    assert_eq!(made.files.len(), 1);
    lab.migrate().await;
    let lengths: Vec<String> = lab.text("SELECT body_length::text FROM notes").await;
    assert_eq!(lengths, ["4"]);
    // Gone for good: what reads it breaks, as for any column.
    let refused = lab.generate(&v1, false).await;
    match refused {
        Err(err) => assert!(
            err.to_string().contains("--allow-destructive")
                && err.to_string().contains("body_length"),
            "{err}"
        ),
        Ok(made) => panic!("dropped without --allow-destructive: {:?}", made.files),
    }
    assert_eq!(lab.generate(&v1, true).await.unwrap().files.len(), 1);
}

mod keyed {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "owners")]
    pub struct Owner {
        pub id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "pets", index(shelter_id, created_at))]
    pub struct Pet {
        pub id: Uuid,
        #[record(references = "owners", on_delete = "cascade")]
        pub owner_id: Uuid,
        #[record(references = "owners", on_delete = "cascade")]
        pub shelter_id: Uuid,
        #[record(references = "owners", on_delete = "cascade", index = false)]
        pub vet_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[test]
fn every_foreign_key_gets_an_index_unless_one_starts_with_it_or_it_says_no() {
    let indexed: Vec<Vec<String>> = keyed::Pet::schema()
        .indexes
        .iter()
        .map(|i| i.columns.clone())
        .collect();
    assert_eq!(
        indexed,
        [
            vec!["shelter_id".to_owned(), "created_at".to_owned()],
            vec!["owner_id".to_owned()]
        ]
    );
}

mod tenants {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "workspaces")]
    pub struct Workspace {
        pub id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "users", unique(workspace_id, id))]
    pub struct User {
        pub id: Uuid,
        #[record(references = "workspaces", on_delete = "cascade")]
        pub workspace_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub mod loose {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "chats")]
        pub struct Chat {
            pub id: Uuid,
            #[record(references = "workspaces", on_delete = "cascade")]
            pub workspace_id: Uuid,
            pub user_id: Uuid,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    pub mod kept {
        use super::*;

        #[derive(Record, Clone)]
        #[record(
            table = "chats",
            foreign_key(
                workspace_id,
                user_id,
                references = "users(workspace_id, id)",
                on_delete = "cascade"
            )
        )]
        pub struct Chat {
            pub id: Uuid,
            #[record(references = "workspaces", on_delete = "cascade")]
            pub workspace_id: Uuid,
            pub user_id: Uuid,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// `users.workspace_id` renamed: the composite key that points at it
    /// follows.
    pub mod renamed {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "users", unique(team_id, id))]
        pub struct User {
            pub id: Uuid,
            #[record(
                references = "workspaces",
                on_delete = "cascade",
                renamed_from = "workspace_id"
            )]
            pub team_id: Uuid,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }

        #[derive(Record, Clone)]
        #[record(
            table = "chats",
            foreign_key(
                workspace_id,
                user_id,
                references = "users(team_id, id)",
                on_delete = "cascade"
            )
        )]
        pub struct Chat {
            pub id: Uuid,
            #[record(references = "workspaces", on_delete = "cascade")]
            pub workspace_id: Uuid,
            pub user_id: Uuid,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// A key to columns that are no key of the table they name.
    pub mod unkeyed {
        use super::*;

        #[derive(Record, Clone)]
        #[record(
            table = "chats",
            foreign_key(workspace_id, user_id, references = "users(workspace_id, created_at)")
        )]
        pub struct Chat {
            pub id: Uuid,
            pub workspace_id: Uuid,
            pub user_id: DateTime<Utc>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }
}

#[tokio::test]
async fn a_foreign_key_over_two_columns_keeps_a_child_in_its_parents_workspace() {
    use tenants::*;
    let v1 = [Workspace::schema(), User::schema(), loose::Chat::schema()];
    let v2 = [Workspace::schema(), User::schema(), kept::Chat::schema()];
    let lab = Lab::new(&v1).await;
    let (up, down) = lab.evolve(&v1, &v2, false).await;
    assert!(
        up.contains(r#"FOREIGN KEY ("workspace_id", "user_id") REFERENCES "users"("workspace_id","id") ON DELETE CASCADE"#),
        "{up}"
    );
    assert!(down.contains("DROP CONSTRAINT"), "{down}");
    // Its columns got an index of their own.
    let indexes = lab
        .text("SELECT indexdef::text FROM pg_indexes WHERE tablename = 'chats' ORDER BY 1")
        .await;
    assert!(
        indexes
            .iter()
            .any(|d| d.contains("(workspace_id, user_id)")),
        "{indexes:#?}"
    );
    lab.exec(
        "INSERT INTO workspaces (id) VALUES ('00000000-0000-0000-0000-00000000000a'), \
         ('00000000-0000-0000-0000-00000000000b'); \
         INSERT INTO users (id, workspace_id) VALUES \
         ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a')",
    )
    .await;
    // A chat of workspace B owned by a user of workspace A: refused.
    let crossing = sqlx::raw_sql(
        "INSERT INTO chats (workspace_id, user_id) VALUES \
         ('00000000-0000-0000-0000-00000000000b', '00000000-0000-0000-0000-0000000000a1')",
    )
    .execute(lab.db.db())
    .await
    .unwrap_err();
    assert_eq!(
        crossing
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("23503")
    );
    lab.exec(
        "INSERT INTO chats (workspace_id, user_id) VALUES \
         ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-0000000000a1')",
    )
    .await;
    // A key to columns that are no key of that table is refused with the fix.
    let unkeyed = [Workspace::schema(), User::schema(), unkeyed::Chat::schema()];
    expect_refused(
        lab.generate(&unkeyed, true).await,
        "neither its primary key nor one of its unique keys",
    );
}

/// #24's done-when in one schema: a GIN trigram index, a partial unique
/// index, an expression index, a composite foreign key, a check and a
/// generated column, on a chat's `messages`.
mod wide {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "members", unique(workspace_id, id))]
    pub struct Member {
        pub id: Uuid,
        pub workspace_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub mod v1 {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "messages")]
        pub struct Message {
            pub id: Uuid,
            pub workspace_id: Uuid,
            pub member_id: Uuid,
            pub content: String,
            pub email: String,
            pub tokens_in: i32,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    pub mod v2 {
        use super::*;

        #[derive(Record, Clone)]
        #[record(
            table = "messages",
            extension = "pg_trgm",
            index(content, using = "gin", ops = "gin_trgm_ops"),
            unique(email, where = "deleted_at IS NULL"),
            index(expr = "lower(email)"),
            foreign_key(
                workspace_id,
                member_id,
                references = "members(workspace_id, id)",
                on_delete = "cascade"
            ),
            check = "tokens_in >= 0"
        )]
        pub struct Message {
            pub id: Uuid,
            pub workspace_id: Uuid,
            pub member_id: Uuid,
            pub content: String,
            pub email: String,
            pub tokens_in: i32,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
            // Last: a column a migration adds comes after the others.
            #[record(generated = "length(content)")]
            pub content_length: i32,
        }
    }
}

/// `pg_dump --schema-only` of `url`, without the migrations table, the
/// comments and the `\restrict` lines, whose key is random per dump.
fn dump_schema(url: &str) -> String {
    // The server's own pg_dump when MANDRAKE_PG_BIN names its binaries: an
    // older pg_dump refuses a newer server.
    let pg_dump = std::env::var_os("MANDRAKE_PG_BIN")
        .map(|dir| std::path::PathBuf::from(dir).join("pg_dump"))
        .unwrap_or_else(|| "pg_dump".into());
    let out = std::process::Command::new(pg_dump)
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--exclude-table",
            mandrake_storage::migrate::TABLE,
            "--dbname",
            // libpq knows no `statement-cache-capacity`.
            url.split('?').next().unwrap(),
        ])
        .output()
        .expect("pg_dump runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("--") && !l.starts_with('\\') && !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn the_wider_model_migrates_to_what_pg_dump_sees_in_the_types_and_contains_text_uses_its_index()
 {
    use wide::*;
    let v1 = [Member::schema(), v1::Message::schema()];
    let v2 = [Member::schema(), v2::Message::schema()];
    let lab = Lab::new(&v1).await;
    // Migrate, rollback to exactly v1, migrate again, check passes.
    lab.evolve(&v1, &v2, false).await;
    // An outside differ: pg_dump of the migrated database and of one built
    // straight from the types' SQL.
    let typed = TestDb::with_tables(&v2).await.unwrap();
    let (migrated, declared) = (dump_schema(&lab.db.url()), dump_schema(&typed.url()));
    assert!(
        migrated.contains("USING gin (content public.gin_trgm_ops)"),
        "{migrated}"
    );
    assert_eq!(migrated, declared, "pg_dump sees the same schema");
    // The typed substring search is served by the trigram index.
    lab.exec(
        "INSERT INTO members (id, workspace_id) VALUES \
         ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-00000000000a'); \
         INSERT INTO messages (workspace_id, member_id, content, email, tokens_in) \
         SELECT '00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-0000000000a1', \
                'message ' || md5(i::text), i || '@example.com', i \
         FROM generate_series(1, 20000) AS i; ANALYZE messages",
    )
    .await;
    let plan = v2::Message::repo()
        .explain(
            lab.db.db(),
            v2::Message::CONTENT.contains_text("deadbeef"),
            mandrake_storage::ListOptions::new().limit(20),
        )
        .await
        .unwrap();
    assert!(
        plan.iter()
            .any(|l| l.contains("Bitmap Index Scan on messages_content_")),
        "{plan:#?}"
    );
}

#[tokio::test]
async fn renaming_a_referenced_column_keeps_the_composite_keys_that_point_at_it() {
    use tenants::*;
    let v1 = [Workspace::schema(), User::schema(), kept::Chat::schema()];
    let v2 = [
        Workspace::schema(),
        renamed::User::schema(),
        renamed::Chat::schema(),
    ];
    let lab = Lab::new(&v1).await;
    let (up, _) = lab
        .evolve_renaming(&v1, &v2, &renamed::User::renames(), false)
        .await;
    assert!(
        up.contains(r#"RENAME COLUMN "workspace_id" TO "team_id""#),
        "{up}"
    );
    assert!(
        !up.contains(r#"DROP CONSTRAINT "chats_workspace_id_user_id_fkey""#),
        "the key is kept, not dropped and made again: {up}"
    );
}

/// Full-text search declared, reconfigured and removed.
mod searched {
    use super::*;

    pub mod simple {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "notes")]
        pub struct Note {
            pub id: Uuid,
            #[record(search)]
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    pub mod english {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "notes")]
        pub struct Note {
            pub id: Uuid,
            #[record(search = "english")]
            pub body: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }

    /// `english`, with the searched column renamed.
    pub mod renamed {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "notes")]
        pub struct Note {
            pub id: Uuid,
            #[record(search = "english", renamed_from = "body")]
            pub text: String,
            pub email: String,
            pub deleted_at: Option<DateTime<Utc>>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }
}

/// A searched column renamed: its search vector is renamed with it (the
/// catalog already rewrote its expression), nothing dropped or rebuilt, and
/// the down renames both back. `--online` refuses it with what to do: the
/// vector is generated from the column, and an expand/contract cannot
/// carry a generated column over.
#[tokio::test]
async fn a_searched_column_is_renamed_with_its_search_vector() {
    use searched::{english, renamed};
    let v1 = [english::Note::schema()];
    let v2 = [renamed::Note::schema()];
    let lab = Lab::new(&v1).await;
    let online = new_migration_with(
        &lab.db.url(),
        lab.dir.path(),
        &v2,
        &renamed::Note::renames(),
        "rename",
        &NewMigrationOptions {
            online: true,
            ..NewMigrationOptions::default()
        },
    )
    .await;
    match online {
        Err(err) => assert!(
            err.to_string()
                .contains("generated column body_search uses it")
                && err.to_string().contains("without --online"),
            "{err}"
        ),
        Ok(made) => panic!("planned online: {:?}", made.files),
    }
    let (up, down) = lab
        .evolve_renaming(&v1, &v2, &renamed::Note::renames(), false)
        .await;
    assert!(up.contains(r#"RENAME COLUMN "body" TO "text""#), "{up}");
    assert!(
        up.contains(r#"RENAME COLUMN "body_search" TO "text_search""#),
        "{up}"
    );
    assert!(!up.contains("DROP COLUMN"), "nothing rebuilt: {up}");
    assert!(
        down.contains(r#"RENAME COLUMN "text_search" TO "body_search""#),
        "{down}"
    );
}

#[tokio::test]
async fn search_columns_are_added_reconfigured_and_dropped_with_their_indexes() {
    let v1 = [search_ready::v1::Note::schema()];
    let simple = [searched::simple::Note::schema()];
    let english = [searched::english::Note::schema()];
    let lab = Lab::new(&v1).await;
    lab.exec("INSERT INTO notes (body, email) VALUES ('Running dogs', 'a@b')")
        .await;
    let (up, _) = lab.evolve(&v1, &simple, false).await;
    assert!(up.contains(r#"ADD COLUMN "body_search" tsvector"#), "{up}");
    assert!(up.contains("USING gin (body_search)"), "{up}");
    // Another configuration: the vector is computed anew, the index rebuilt.
    let (up, _) = lab.evolve(&simple, &english, false).await;
    assert!(up.contains("'english'::regconfig"), "{up}");
    let found = searched::english::Note::repo()
        .count(
            lab.db.db(),
            searched::english::Note::BODY.matches("run dog"),
        )
        .await
        .unwrap();
    assert_eq!(found, 1, "english stems: run finds Running");
    // Removing `search` drops both. The vector is derived, but an old
    // binary's search reads it: like any dropped column, it asks first.
    let refused = lab.generate(&v1, false).await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("--allow-destructive")),
        "dropped without asking"
    );
    let (up, down) = lab.evolve(&english, &v1, true).await;
    assert!(up.contains(r#"DROP COLUMN "body_search""#), "{up}");
    assert!(down.contains("USING gin (body_search)"), "{down}");
}

/// Tenant scoping declared on existing tables.
mod scoped {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "chats")]
    pub struct Chat {
        pub id: Uuid,
        #[record(tenant, references = "workspaces", on_delete = "cascade")]
        pub workspace_id: Uuid,
        pub user_id: Uuid,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "lines")]
    pub struct Line {
        pub id: Uuid,
        #[record(tenant)]
        pub workspace_id: Uuid,
        #[record(references = "chats", on_delete = "cascade")]
        pub chat_id: Uuid,
        #[record(references = "chats", on_delete = "set null")]
        pub quoted_chat_id: Option<Uuid>,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub mod plain {
        use super::*;

        #[derive(Record, Clone)]
        #[record(table = "lines")]
        pub struct Line {
            pub id: Uuid,
            pub workspace_id: Uuid,
            #[record(references = "chats", on_delete = "cascade")]
            pub chat_id: Uuid,
            #[record(references = "chats", on_delete = "set null")]
            pub quoted_chat_id: Option<Uuid>,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }
}

#[tokio::test]
async fn tenant_policies_are_migrated_proven_and_checked() {
    use tenants::*;
    let v1 = [
        Workspace::schema(),
        loose::Chat::schema(),
        scoped::plain::Line::schema(),
    ];
    let v2 = [
        Workspace::schema(),
        scoped::Chat::schema(),
        scoped::Line::schema(),
    ];
    let lab = Lab::new(&v1).await;
    let (up, down) = lab.evolve(&v1, &v2, false).await;
    for part in [
        r#"ALTER TABLE "chats" ENABLE ROW LEVEL SECURITY;"#,
        r#"CREATE POLICY "lines_tenant" ON "lines""#,
        // The key to a tenant-scoped parent carries the tenant.
        r#"FOREIGN KEY ("workspace_id", "chat_id") REFERENCES "chats"("workspace_id","id")"#,
        // SET NULL on such a key empties the parent's id, never the tenant.
        r#"REFERENCES "chats"("workspace_id","id") ON DELETE SET NULL ("quoted_chat_id")"#,
    ] {
        assert!(up.contains(part), "{part} in\n{up}");
    }
    assert!(down.contains("DISABLE ROW LEVEL SECURITY"), "{down}");
    // The owner is left out of row security (it runs the lookups).
    assert!(!up.contains("FORCE"), "{up}");
    lab.exec(
        "INSERT INTO workspaces (id) VALUES ('00000000-0000-0000-0000-00000000000a'); \
         INSERT INTO chats (id, workspace_id, user_id) VALUES \
         ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-00000000000a', gen_random_uuid()), \
         ('00000000-0000-0000-0000-0000000000c2', '00000000-0000-0000-0000-00000000000a', gen_random_uuid()); \
         INSERT INTO lines (workspace_id, chat_id, quoted_chat_id) VALUES \
         ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-0000000000c1', \
          '00000000-0000-0000-0000-0000000000c2'); \
         DELETE FROM chats WHERE id = '00000000-0000-0000-0000-0000000000c2'",
    )
    .await;
    let kept = lab
        .text(
            "SELECT workspace_id::text || ' ' || coalesce(quoted_chat_id::text, 'null') FROM lines",
        )
        .await;
    assert_eq!(kept, ["00000000-0000-0000-0000-00000000000a null"]);
    // A hand-written migration that edits the policy: drift, which check
    // names; one that adds a policy of the user's own is left alone.
    lab.dir.write(
        &format!("{}_loosen.up.sql", lab.next_version()),
        "ALTER POLICY chats_tenant ON chats USING (true);\n\
         CREATE POLICY audit_reads ON chats FOR SELECT USING (true);\n",
    );
    let plan = check(&lab.db.url(), &lab.migrations(), &v2, &Renames::NONE)
        .await
        .unwrap();
    let said: Vec<&str> = plan.steps.iter().map(|s| s.description.as_str()).collect();
    assert!(
        said.iter()
            .any(|s| s.contains("policy chats_tenant on chats")),
        "{said:?}"
    );
    assert!(!said.iter().any(|s| s.contains("audit_reads")), "{said:?}");
}

mod lookups {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "memos")]
    pub struct Memo {
        pub id: Uuid,
        #[record(tenant)]
        pub workspace_id: Uuid,
        pub body: String,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    pub mod searched {
        use super::*;

        #[derive(Record, Clone)]
        #[record(
            table = "memos",
            extension = "pg_trgm",
            index(body, using = "gin", ops = "gin_trgm_ops")
        )]
        pub struct Memo {
            pub id: Uuid,
            #[record(tenant)]
            pub workspace_id: Uuid,
            #[record(search = "english")]
            pub body: String,
            pub created_at: DateTime<Utc>,
            pub updated_at: DateTime<Utc>,
        }
    }
}

/// A tenant-scoped table given a search field and a trigram index gets
/// their lookups, proven up and down; `check` reads them back (no drift),
/// names one edited by hand, and lifts the `FORCE` of tables made before.
#[tokio::test]
async fn tenant_lookups_are_migrated_proven_and_checked() {
    let v1 = [tenants::Workspace::schema(), lookups::Memo::schema()];
    let v2 = [
        tenants::Workspace::schema(),
        lookups::searched::Memo::schema(),
    ];
    let lab = Lab::new(&v1).await;
    let (up, down) = lab.evolve(&v1, &v2, false).await;
    for part in [
        r#"CREATE FUNCTION "public"."memos_body_matches"(query tsquery) RETURNS SETOF uuid"#,
        r#"CREATE FUNCTION "public"."memos_body_like"(pattern text, ignore_case boolean)"#,
        "SECURITY DEFINER SET search_path = pg_catalog, pg_temp",
    ] {
        assert!(up.contains(part), "{part} in\n{up}");
    }
    for part in [
        r#"DROP FUNCTION "public"."memos_body_matches"(tsquery);"#,
        r#"DROP FUNCTION "public"."memos_body_like"(text, boolean);"#,
    ] {
        assert!(down.contains(part), "{part} in\n{down}");
    }
    let steps = |plan: mandrake_cli::diff::Plan| -> Vec<String> {
        plan.steps.into_iter().map(|s| s.description).collect()
    };
    let plan = check(&lab.db.url(), &lab.migrations(), &v2, &Renames::NONE)
        .await
        .unwrap();
    assert!(plan.steps.is_empty(), "{:?}", steps(plan));
    // A lookup dropped by hand, and the table forced as before: both named.
    // Row security of the user's own on another table is left alone.
    lab.dir.write(
        &format!("{}_by_hand.up.sql", lab.next_version()),
        "DROP FUNCTION memos_body_like(text, boolean);\n\
         ALTER TABLE memos FORCE ROW LEVEL SECURITY;\n\
         ALTER TABLE workspaces ENABLE ROW LEVEL SECURITY;\n\
         ALTER TABLE workspaces FORCE ROW LEVEL SECURITY;\n",
    );
    let plan = check(&lab.db.url(), &lab.migrations(), &v2, &Renames::NONE)
        .await
        .unwrap();
    let said = steps(plan);
    for step in [
        "tenant lookup memos_body_like on memos.body",
        "row level security forced on the owner of memos",
    ] {
        assert!(said.iter().any(|s| s.contains(step)), "{step} in {said:?}");
    }
    assert!(!said.iter().any(|s| s.contains("workspaces")), "{said:?}");
}

#[tokio::test]
async fn tenant_policies_go_online_too() {
    use tenants::*;
    let v1 = [Workspace::schema(), loose::Chat::schema()];
    let v2 = [Workspace::schema(), scoped::Chat::schema()];
    let lab = Lab::new(&v1).await;
    let made = lab.generate_online(&v2).await;
    assert!(!made.files.is_empty());
    lab.migrate().await;
    assert_eq!(read_schema(&lab.db).await, expected(&v2).await);
}

/// A trigram index without the extension that brings its operator class.
mod without_extension {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes", index(body, using = "gin", ops = "gin_trgm_ops"))]
    pub struct Note {
        pub id: Uuid,
        pub body: String,
        pub email: String,
        pub deleted_at: Option<DateTime<Utc>>,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

#[tokio::test]
async fn an_operator_class_without_its_extension_says_which_to_declare() {
    let v1 = [search_ready::v1::Note::schema()];
    let lab = Lab::new(&v1).await;
    let v2 = [without_extension::Note::schema()];
    expect_refused(
        lab.generate(&v2, false).await,
        r#"add #[record(extension = "pg_trgm")]"#,
    );
    let checked = check(&lab.db.url(), &lab.migrations(), &v2, &Renames::NONE).await;
    let err = checked.expect_err("check refuses it too");
    assert!(err.to_string().contains("pg_trgm"), "{err}");
}

/// The tools' cache is rebuilt, never trusted, when it fails a check: a
/// replay file edited by hand, and a template database whose comment no
/// longer names the folder (here with a table dropped inside it, which a
/// proof on it would notice).
#[tokio::test]
async fn a_corrupt_or_stale_cache_is_rebuilt_never_trusted() {
    use mandrake_cli::cache::Cache;
    use mandrake_cli::scaffold::{compare, compare_cached};
    let lab = Lab::new(&v1()).await;
    let url = lab.db.url();
    let cache_dir = MigrationDir::new(&[]);
    let cache = Cache::at(cache_dir.path().join("cache"));
    let migrations = lab.migrations();
    let cold = compare(&url, &migrations, &v1(), &Renames::NONE)
        .await
        .unwrap();
    let filled = compare_cached(&url, &migrations, &v1(), &Renames::NONE, &cache)
        .await
        .unwrap();
    assert_eq!(filled, cold);
    assert!(cache.holds(&url, &migrations, &v1()).await.unwrap());

    let replay_file = std::fs::read_dir(cache_dir.path().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "json")
                && p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("replay-")
        })
        .unwrap();
    let text = std::fs::read_to_string(&replay_file).unwrap();
    std::fs::write(&replay_file, text.replace("\"notes\"", "\"xotes\"")).unwrap();
    assert!(
        !cache.holds(&url, &migrations, &v1()).await.unwrap(),
        "not trusted"
    );
    let again = compare_cached(&url, &migrations, &v1(), &Renames::NONE, &cache)
        .await
        .unwrap();
    assert_eq!(again, cold, "replayed again");
    assert!(
        cache.holds(&url, &migrations, &v1()).await.unwrap(),
        "rebuilt"
    );

    let template = std::fs::read_to_string(cache_dir.path().join("cache/template")).unwrap();
    let inside = mandrake_storage::url::with_database(&url, &template);
    let mut conn = connect_one(&inside).await.unwrap();
    sqlx::raw_sql("DROP TABLE notes")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    lab.exec(&format!("COMMENT ON DATABASE {template} IS 'stale'"))
        .await;
    let options = NewMigrationOptions {
        cache: cache.clone(),
        ..NewMigrationOptions::default()
    };
    let v2 = [v1::Folder::schema(), online::Note::schema()];
    let made = new_migration_with(
        &url,
        lab.dir.path(),
        &v2,
        &Renames::NONE,
        "harden",
        &options,
    )
    .await
    .expect("proven on a replay of its own, not on the stale copy");
    assert!(!made.files.is_empty());
    cache.drop_template(&url).await;
}

/// Two runs that miss the cache at once (an editor's check on save, and
/// one in a terminal) take turns on its template database: both answer as
/// a cold run.
#[tokio::test]
async fn two_runs_missing_the_cache_at_once_both_answer() {
    use mandrake_cli::cache::Cache;
    use mandrake_cli::scaffold::{compare, compare_cached};
    let lab = Lab::new(&v1()).await;
    let url = lab.db.url();
    let cache_dir = MigrationDir::new(&[]);
    let cache = Cache::at(cache_dir.path().join("cache"));
    let migrations = lab.migrations();
    let (tables, none) = (v1(), Renames::NONE);
    let run = || compare_cached(&url, &migrations, &tables, &none, &cache);
    let (a, b, c) = tokio::join!(run(), run(), run());
    let cold = compare(&url, &migrations, &v1(), &Renames::NONE)
        .await
        .unwrap();
    for answer in [a, b, c] {
        assert_eq!(answer.unwrap(), cold);
    }
    cache.drop_template(&url).await;
}

mod compressed {
    use super::*;

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Note {
        pub id: Uuid,
        pub folder_id: Uuid,
        pub title: String,
        #[record(compression = "lz4")]
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    #[derive(Record, Clone)]
    #[record(table = "notes")]
    pub struct Pglz {
        pub id: Uuid,
        pub folder_id: Uuid,
        #[record(compression = "pglz")]
        pub title: String,
        pub body: Option<String>,
        pub rank: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }
}

const ATTCOMPRESSION: &str = "SELECT attname || '=' || attcompression::text FROM pg_attribute \
     WHERE attrelid = 'notes'::regclass AND attname IN ('title', 'body') ORDER BY attname";

/// `#[record(compression = "…")]` is the column's TOAST method in the
/// catalog (`pg_attribute.attcompression`), set and reset by generated
/// migrations that rewrite nothing: values stored before keep theirs.
#[tokio::test]
async fn compression_per_field_is_a_generated_migration() {
    let lab = seeded().await;
    assert_eq!(
        lab.text(ATTCOMPRESSION).await,
        ["body=", "title="],
        "the server's default"
    );
    let pglz = [v1::Folder::schema(), compressed::Pglz::schema()];
    let (up, down) = lab.evolve(&v1(), &pglz, false).await;
    assert!(
        up.contains(r#"ALTER TABLE "notes" ALTER COLUMN "title" SET COMPRESSION pglz;"#),
        "{up}"
    );
    assert!(
        down.contains(r#"ALTER TABLE "notes" ALTER COLUMN "title" SET COMPRESSION default;"#),
        "{down}"
    );
    assert_eq!(lab.text(ATTCOMPRESSION).await, ["body=", "title=p"]);
    assert_eq!(
        lab.text("SELECT title FROM notes").await,
        ["hello"],
        "the row stored before reads as it was"
    );
    // A large value written now is compressed with it.
    lab.exec("UPDATE notes SET title = repeat('mandrake ', 100000)")
        .await;
    assert_eq!(
        lab.text("SELECT pg_column_compression(title) FROM notes")
            .await,
        ["pglz"]
    );
    // lz4 is a build option of the server: where it is there, one method
    // for another on another column in one migration; where it is not
    // (PyPI's PostgreSQL 18), the proof refuses the migration, naming it.
    let lz4 = [v1::Folder::schema(), compressed::Note::schema()];
    let mut conn = connect_one(&lab.db.url()).await.unwrap();
    let has_lz4 = sqlx::query("SET default_toast_compression = lz4")
        .execute(&mut conn)
        .await
        .is_ok();
    if has_lz4 {
        let (up, _) = lab.evolve(&pglz, &lz4, false).await;
        assert!(up.contains(r#""body" SET COMPRESSION lz4"#), "{up}");
        assert!(up.contains(r#""title" SET COMPRESSION default"#), "{up}");
        assert_eq!(lab.text(ATTCOMPRESSION).await, ["body=l", "title="]);
    } else {
        let before = lab.files().len();
        match lab.generate(&lz4, false).await {
            Err(err) => assert!(
                err.sqlstate().as_deref() == Some("0A000")
                    && err.to_string().contains("lz4 not supported"),
                "{err}"
            ),
            Ok(made) => panic!("lz4 on a server without it was written: {:?}", made.files),
        }
        assert_eq!(lab.files().len(), before, "nothing is written");
    }
    // A table created with a method has it from the start.
    let created = TestDb::with_tables(&[compressed::Pglz::schema()])
        .await
        .unwrap();
    let mut conn = connect_one(&created.url()).await.unwrap();
    let method: String = sqlx::query_scalar(
        "SELECT attcompression::text FROM pg_attribute WHERE attrelid = 'notes'::regclass AND attname = 'title'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(method, "p");
}
