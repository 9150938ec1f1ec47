//! The command line's conventions: exit 0 when the command did its job, 1
//! when it found what it checks for, 2 on an error; a global
//! `--database-url`.

use std::process::ExitCode;

use clap::Parser;
use mandrake_cli::{Cli, run_blocking};
use mandrake_storage::sqlx::ConnectOptions;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Record, TableSchema};
use mandrake_tests::MigrationDir;

#[derive(Record, Clone)]
pub struct Widget {
    pub id: uuid::Uuid,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

fn run(args: &[&str], tables: &[&TableSchema]) -> ExitCode {
    let cli = Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
        .expect("valid arguments");
    run_blocking(cli, tables)
}

#[test]
fn exit_codes_and_a_global_database_url() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let t = runtime.block_on(TestDb::empty()).unwrap();
    let url = t.url();
    let dir = MigrationDir::new(&[("1_widgets.up.sql", "CREATE TABLE things (id INT);\n")]);
    let dir = dir.path().to_str().unwrap().to_owned();
    let with = |rest: &[&str]| {
        let mut args = vec!["--database-url", &url, "--migrations", &dir];
        args.extend_from_slice(rest);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let call = |rest: &[&str], tables: &[&TableSchema]| {
        let args = with(rest);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>(), tables)
    };
    assert_eq!(call(&["status"], &[]), ExitCode::SUCCESS, "status reports");
    assert_eq!(
        call(&["status", "--exit-code"], &[]),
        ExitCode::from(1),
        "pending"
    );
    assert_eq!(call(&["migrate"], &[]), ExitCode::SUCCESS);
    assert_eq!(
        call(&["status", "--exit-code"], &[]),
        ExitCode::SUCCESS,
        "all applied"
    );
    // `lint`: a hand-written ALTER without timeouts is a finding (1),
    // unless its migration is accepted as older than the linter (0).
    let risky = MigrationDir::new(&[("5_alter.up.sql", "ALTER TABLE things ADD COLUMN x text;\n")]);
    let risky = risky.path().to_str().unwrap();
    assert_eq!(run(&["lint", risky], &[]), ExitCode::from(1));
    let accepted = ["lint", risky, "--accept-before", "6"];
    assert_eq!(run(&accepted, &[]), ExitCode::SUCCESS);
    // `check` finds drift: the type's table is in no migration.
    assert_eq!(call(&["check"], &[Widget::schema()]), ExitCode::from(1));
    // Backups: verify exits 0 on a sound archive, 1 when its history does
    // not match the migrations, 2 on a damaged file.
    let file = std::env::temp_dir().join(format!("mandrake-cli-{}.dump", std::process::id()));
    let file = file.to_str().unwrap();
    assert_eq!(
        call(&["db", "backup", "--out", file], &[]),
        ExitCode::SUCCESS
    );
    assert_eq!(call(&["db", "verify", file], &[]), ExitCode::SUCCESS);
    // --keep 0 would delete the backup it makes: refused before it dumps.
    let unkept = format!("{file}.unkept");
    assert_eq!(
        call(&["db", "backup", "--out", &unkept, "--keep", "0"], &[]),
        ExitCode::from(2)
    );
    assert!(!std::path::Path::new(&unkept).exists());
    let other = MigrationDir::new(&[("2_other.up.sql", "CREATE TABLE other (id INT);\n")]);
    let other_dir = other.path().to_str().unwrap();
    let mismatched = [
        "--database-url",
        &url,
        "--migrations",
        other_dir,
        "db",
        "verify",
        file,
    ];
    assert_eq!(run(&mismatched, &[]), ExitCode::from(1));
    let bytes = std::fs::read(file).unwrap();
    std::fs::write(file, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(call(&["db", "verify", file], &[]), ExitCode::from(2));
    std::fs::remove_file(file).unwrap();
    // An error is 2: an unreachable server, a folder sqlx would misread.
    let refused = [
        "--database-url",
        "postgres://postgres@127.0.0.1:1/none",
        "--migrations",
        &dir,
        "status",
    ];
    assert_eq!(run(&refused, &[]), ExitCode::from(2));
    let bad = MigrationDir::new(&[("notes.txt", "not a migration")]);
    let bad_dir = bad.path().to_str().unwrap();
    assert_eq!(
        run(
            &["--database-url", &url, "--migrations", bad_dir, "migrate"],
            &[]
        ),
        ExitCode::from(2)
    );
}

#[test]
fn migrate_complete_applies_the_contract_that_migrate_left_waiting() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let t = runtime.block_on(TestDb::empty()).unwrap();
    let url = t.url();
    let dir = MigrationDir::new(&[
        (
            "1_things.up.sql",
            "CREATE TABLE things (id INT, old INT);\n",
        ),
        (
            "2_things_contract.up.sql",
            "-- contract\nALTER TABLE things DROP COLUMN old;\n",
        ),
    ]);
    let dir = dir.path().to_str().unwrap();
    let call = |rest: &[&str]| {
        let mut args = vec!["--database-url", &url, "--migrations", dir];
        args.extend_from_slice(rest);
        run(&args, &[])
    };
    // In service before the contract was written; on a fresh database it
    // would not wait.
    assert_eq!(call(&["migrate", "--to", "1"]), ExitCode::SUCCESS);
    assert_eq!(call(&["migrate"]), ExitCode::SUCCESS);
    assert_eq!(
        call(&["status", "--exit-code"]),
        ExitCode::from(1),
        "waiting"
    );
    assert_eq!(call(&["migrate", "--complete"]), ExitCode::SUCCESS);
    assert_eq!(call(&["status", "--exit-code"]), ExitCode::SUCCESS);
}

/// A role without the rights the tools need is refused before anything is
/// done, with the right named: scratch databases need `CREATEDB`, making
/// the application's role `CREATEROLE`. `new-migration` on such a role
/// exits 2 and writes nothing.
#[tokio::test]
async fn a_role_without_createdb_or_createrole_is_refused_naming_the_right() {
    use mandrake_storage::{Error, Right};
    let t = TestDb::empty().await.unwrap();
    sqlx::raw_sql(
        "DO $$ BEGIN CREATE ROLE tools_without_rights LOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    .execute(t.db())
    .await
    .unwrap();
    let options = t.connect_options().username("tools_without_rights");
    let url = options.to_url_lossy().to_string();
    let mut scratch = mandrake_storage::admin::Scratch::new(&url);
    match scratch.create("refused").await {
        Err(Error::MissingRight { role, right }) => {
            assert_eq!(
                (role.as_str(), right),
                ("tools_without_rights", Right::CreateDb)
            );
        }
        other => panic!("expected MissingRight CREATEDB, got {other:?}"),
    }
    let mut conn = mandrake_storage::connect_one(&url).await.unwrap();
    match mandrake_storage::admin::require(&mut conn, Right::CreateRole).await {
        Err(Error::MissingRight { right, .. }) => assert_eq!(right, Right::CreateRole),
        other => panic!("expected MissingRight CREATEROLE, got {other:?}"),
    }
    let message = Error::MissingRight {
        role: "r".into(),
        right: Right::CreateDb,
    }
    .to_string();
    assert!(message.contains("MANDRAKE_DEV_URL"), "{message}");
    let dir = MigrationDir::new(&[]);
    let path = dir.path().to_str().unwrap().to_owned();
    let code = tokio::task::spawn_blocking(move || {
        let args = ["--database-url", &url, "--migrations", &path];
        run(
            &[&args[..], &["new-migration", "widgets"]].concat(),
            &[Widget::schema()],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, ExitCode::from(2));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

/// A migration's extension that the role may not create (not trusted, not
/// a superuser) is refused before `CREATE EXTENSION`, naming the extension,
/// the right (insufficient_privilege) and where managed services allow it;
/// a trusted one (`pg_trgm`) is made by the same role.
#[tokio::test]
async fn an_extension_the_role_may_not_create_is_refused_naming_it() {
    let t = TestDb::empty().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DO $$ BEGIN CREATE ROLE extension_maker LOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         GRANT CREATE ON DATABASE {} TO extension_maker",
        t.name()
    )))
    .execute(t.db())
    .await
    .unwrap();
    let options = t.connect_options().username("extension_maker");
    let mut conn = mandrake_storage::connect_one(options.to_url_lossy().as_ref())
        .await
        .unwrap();
    let untrusted = mandrake_storage::schema::ddl::create_extension("pageinspect");
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(untrusted))
        .execute(&mut conn)
        .await
        .unwrap_err();
    let db = err.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some("42501"));
    assert!(
        db.message()
            .contains("extension pageinspect is not trusted, and role extension_maker"),
        "{}",
        db.message()
    );
    let trusted = mandrake_storage::schema::ddl::create_extension("pg_trgm");
    sqlx::raw_sql(sqlx::AssertSqlSafe(trusted))
        .execute(&mut conn)
        .await
        .unwrap();
}
