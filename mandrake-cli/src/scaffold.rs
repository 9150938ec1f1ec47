//! `new-migration` and `check`: compare the schema the types describe with
//! the one the migrations build, on scratch databases, and write a migration
//! only after it is proven.

use std::path::{Path, PathBuf};

use sqlx::{Connection, Executor};

use crate::cache::{Cache, Key, Kind};
use crate::diff::{Plan, diff};
use crate::online::Layout;
use mandrake_storage::admin::Scratch;
use mandrake_storage::migrate::{MigrateOptions, Migrations, RollbackTarget, migrate, rollback};
use mandrake_storage::schema::ddl::{create_schema, quote_ident, quote_literal};
use mandrake_storage::schema::introspect::inspect_url;
use mandrake_storage::schema::{DatabaseSchema, Renames, TableSchema};
use mandrake_storage::{Error, MigrationError, Result};

async fn run_script(url: &str, sql: &str) -> Result<()> {
    let mut conn = mandrake_storage::admin::connect_one(url).await?;
    let mut tx = conn.begin().await?;
    tx.execute(sqlx::AssertSqlSafe(sql.to_owned())).await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

/// The extensions that bring operator classes a record may name.
const OPERATOR_CLASSES: &[(&str, &str)] = &[
    ("_trgm_ops", "pg_trgm"),
    ("gin_hstore_ops", "hstore"),
    ("gist_hstore_ops", "hstore"),
    ("gist_ltree_ops", "ltree"),
];

/// The types' own schema failing to build on an operator class or function
/// that no declared extension brings: the same error, saying which
/// extension to declare (where it is one we know) and where.
fn missing_extension(err: Error, tables: &[&TableSchema]) -> Error {
    let Some(code) = err.sqlstate() else {
        return err;
    };
    if code != "42704" && code != "42883" {
        return err;
    }
    let text = err.to_string();
    let declared = mandrake_storage::schema::extensions_of(tables);
    let known = OPERATOR_CLASSES
        .iter()
        .find(|(suffix, extension)| {
            text.contains(suffix) && !declared.iter().any(|d| d == extension)
        })
        .map(|(_, extension)| *extension);
    let advice = match known {
        Some(extension) => format!(
            "it comes with the extension {extension}: add #[record(extension = \"{extension}\")] \
             to the record whose index uses it"
        ),
        None => "if it comes with an extension, name it with #[record(extension = \"…\")] on \
                 the record that uses it"
            .to_owned(),
    };
    Error::Schema(format!(
        "the types' schema does not build: {text}; {advice}"
    ))
}

/// The two schemas a migration goes between, each read back from a real database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    /// What replaying the migrations folder builds, less the user's objects.
    pub current: DatabaseSchema,
    /// What the record types describe.
    pub desired: DatabaseSchema,
    /// The record types' rename hints.
    pub renames: Renames,
    /// Indexes and constraints of the database that no record declares and
    /// no generated migration made, as `(table, name)`: written by hand, they
    /// belong to the user, and the comparison leaves them out.
    pub unmanaged: Vec<(String, String)>,
}

impl Comparison {
    /// The plan from `current` to `desired`.
    pub fn plan(&self) -> Result<Plan> {
        diff(&self.current, &self.desired, &self.renames)
    }
}

/// What the cache knows of a replay: the server's version, and the key
/// of the folder's replay (its template database holds the folder).
struct Replay {
    version: String,
    key: Key,
}

/// The comparison, and the replay when the cache is on.
async fn compare_on(
    scratch: &mut Scratch,
    migrations: &Migrations,
    tables: &[&TableSchema],
    renames: &Renames,
    cache: &Cache,
) -> Result<(Comparison, Option<Replay>)> {
    // The scratch server's version is part of every cache key: another
    // server may read the same SQL back otherwise.
    let version = match cache.is_on() {
        true => Some(mandrake_storage::admin::server_version_at(&scratch.url("postgres")).await?),
        false => None,
    };
    let (current, key) = replayed(scratch, migrations, cache, version.as_deref()).await?;
    let desired = typed(scratch, tables, cache, version.as_deref()).await?;
    let replay = version
        .zip(key)
        .map(|(version, key)| Replay { version, key });
    let unmanaged = user_objects(&current, &desired, migrations);
    let comparison = Comparison {
        current: without(&current, &unmanaged),
        desired,
        renames: renames.clone(),
        unmanaged,
    };
    Ok((comparison, replay))
}

/// What the migrations build: from the cache, else replayed, into the
/// cache's template database when the cache is on.
async fn replayed(
    scratch: &mut Scratch,
    migrations: &Migrations,
    cache: &Cache,
    version: Option<&str>,
) -> Result<(DatabaseSchema, Option<Key>)> {
    let Some(version) = version else {
        let url = scratch.create("replay").await?;
        migrate(&url, migrations, &MigrateOptions::complete()).await?;
        return Ok((inspect_url(&url).await?, None));
    };
    let key = Key::replay(version, migrations);
    if let Some(schema) = cache.schema(Kind::Replay, &key) {
        return Ok((schema, Some(key)));
    }
    let mut admin = locked(scratch, cache).await?;
    // Another run may have replayed it while this one waited.
    if let Some(schema) = cache.schema(Kind::Replay, &key) {
        return Ok((schema, Some(key)));
    }
    let url = replay_template(&mut admin, scratch, migrations, cache, &key).await?;
    let schema = inspect_url(&url).await?;
    cache.keep(Kind::Replay, &key, &schema);
    let _ = admin.close().await;
    Ok((schema, Some(key)))
}

/// A connection to the scratch server holding `cache`'s advisory lock
/// (released when it closes): two runs that remake or replace the cache's
/// template database at once take turns instead of dropping each other's.
async fn locked(scratch: &Scratch, cache: &Cache) -> Result<sqlx::PgConnection> {
    let mut admin = mandrake_storage::admin::server_connection(&scratch.url("postgres")).await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(cache.lock_id())
        .execute(&mut admin)
        .await?;
    Ok(admin)
}

/// Replays `migrations` into the template database of `key`, made anew
/// (the one this cache made before is dropped), and marks it complete with
/// the key as its comment; returns its URL. `admin` holds the cache's lock.
async fn replay_template(
    admin: &mut sqlx::PgConnection,
    scratch: &Scratch,
    migrations: &Migrations,
    cache: &Cache,
    key: &Key,
) -> Result<String> {
    use mandrake_storage::Right;
    use mandrake_storage::admin::{create_database_from, drop_database, require};
    let name = cache.database(key);
    require(admin, Right::CreateDb).await?;
    if let Some(old) = cache.template() {
        drop_database(admin, &old).await;
    }
    drop_database(admin, &name).await;
    create_database_from(admin, &name, None).await?;
    cache.set_template(&name);
    let url = scratch.url(&name);
    migrate(&url, migrations, &MigrateOptions::complete()).await?;
    mark_complete(admin, &name, key).await?;
    Ok(url)
}

/// Marks the template database `name` complete for `key` (its comment),
/// which [`copy_of_template`] checks before it copies it.
async fn mark_complete(admin: &mut sqlx::PgConnection, name: &str, key: &Key) -> Result<()> {
    let comment = format!(
        "COMMENT ON DATABASE {} IS {}",
        quote_ident(name),
        quote_literal(key.as_str())
    );
    admin.execute(sqlx::AssertSqlSafe(comment)).await?;
    Ok(())
}

/// A copy of the template database of `key`, when it is there and its
/// comment says it is complete for `key`; `None` sends the proof to a
/// replay of its own.
async fn copy_of_template(scratch: &mut Scratch, cache: &Cache, key: &Key) -> Option<String> {
    let name = cache.database(key);
    let mut admin = mandrake_storage::admin::server_connection(&scratch.url("postgres"))
        .await
        .ok()?;
    let comment: Option<String> = sqlx::query_scalar(
        "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
    )
    .bind(&name)
    .fetch_optional(&mut admin)
    .await
    .ok()
    .flatten();
    let _ = admin.close().await;
    if comment.as_deref() != Some(key.as_str()) {
        return None;
    }
    scratch.create_from("verify", &name).await.ok()
}

/// Keeps the proving database at `url`, which holds the folder as it is
/// about to be written (its files applied, rolled back and applied again),
/// as the cache's template for the folder's new `key`, with its schema: the
/// next run need not replay. Best effort: a failure leaves the cache as it
/// was, which only costs time.
async fn promote(scratch: &Scratch, cache: &Cache, url: &str, key: &Key) {
    use mandrake_storage::admin::{connect_options, drop_database};
    let Ok(schema) = inspect_url(url).await else {
        return;
    };
    let Ok(options) = connect_options(url) else {
        return;
    };
    let Some(proving) = options.get_database().map(str::to_owned) else {
        return;
    };
    let Ok(mut admin) = locked(scratch, cache).await else {
        return;
    };
    if let Some(old) = cache.template() {
        drop_database(&mut admin, &old).await;
    }
    let name = cache.database(key);
    drop_database(&mut admin, &name).await;
    let renamed = format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(&proving),
        quote_ident(&name)
    );
    if admin.execute(sqlx::AssertSqlSafe(renamed)).await.is_ok() {
        cache.set_template(&name);
        if mark_complete(&mut admin, &name, key).await.is_ok() {
            cache.keep(Kind::Replay, key, &schema);
        }
    }
    let _ = admin.close().await;
}

/// What the types' DDL builds: from the cache, else applied to a scratch
/// database and read back.
async fn typed(
    scratch: &mut Scratch,
    tables: &[&TableSchema],
    cache: &Cache,
    version: Option<&str>,
) -> Result<DatabaseSchema> {
    let ddl = create_schema(tables);
    let key = version.map(|v| Key::types(v, &ddl));
    if let Some(schema) = key.as_ref().and_then(|k| cache.schema(Kind::Types, k)) {
        return Ok(schema);
    }
    let url = scratch.create("types").await?;
    run_script(&url, &ddl)
        .await
        .map_err(|err| missing_extension(err, tables))?;
    let schema = inspect_url(&url).await?;
    if let Some(key) = &key {
        cache.keep(Kind::Types, key, &schema);
    }
    Ok(schema)
}

/// The indexes, constraints and policies of `current` that `desired` does
/// not name and no generated migration made: the user's own SQL objects. An
/// object a generated migration made is the types', so removing it from a
/// record still drops it. Row security that the user turned on (no
/// generated migration did) is theirs too, named [`ROW_SECURITY`], and so
/// is an extension no generated migration created (on [`DATABASE`]).
fn user_objects(
    current: &DatabaseSchema,
    desired: &DatabaseSchema,
    migrations: &Migrations,
) -> Vec<(String, String)> {
    let generated: String = migrations.generated_up_sql().collect();
    let made_by_us = |name: &str| generated.contains(&format!("\"{name}\""));
    let mut out = Vec::new();
    for table in &current.tables {
        let declared = desired.table(&table.name);
        let named = |name: &str| {
            declared.is_some_and(|t| {
                t.indexes.iter().any(|i| i.name == name)
                    || t.checks.iter().any(|c| c.name == name)
                    || t.uniques.iter().any(|u| u.name == name)
                    || t.foreign_keys.iter().any(|k| k.name == name)
                    || t.policies.iter().any(|p| p.name == name)
            })
        };
        let names = (table.indexes.iter().map(|i| &i.name))
            .chain(table.checks.iter().map(|c| &c.name))
            .chain(table.uniques.iter().map(|u| &u.name))
            .chain(table.foreign_keys.iter().map(|k| &k.name))
            .chain(table.policies.iter().map(|p| &p.name));
        for name in names {
            if !named(name) && !made_by_us(name) {
                out.push((table.name.clone(), name.clone()));
            }
        }
        let secured_by_us = generated.contains(&format!(
            "{} ENABLE ROW LEVEL SECURITY",
            mandrake_storage::schema::ddl::quote_ident(&table.name)
        ));
        if table.row_security && !declared.is_some_and(|t| t.row_security) && !secured_by_us {
            out.push((table.name.clone(), ROW_SECURITY.to_owned()));
        }
    }
    for extension in &current.extensions {
        let created_by_us = generated.contains(&format!(
            "CREATE EXTENSION IF NOT EXISTS {}",
            mandrake_storage::schema::ddl::quote_ident(extension)
        ));
        if !desired.extensions.contains(extension) && !created_by_us {
            out.push((DATABASE.to_owned(), format!("extension {extension}")));
        }
    }
    out
}

/// Where [`Comparison::unmanaged`] puts an extension: on the database.
pub const DATABASE: &str = "the database";

/// How [`Comparison::unmanaged`] names row security the user turned on.
pub const ROW_SECURITY: &str = "row level security";

/// `schema` without the objects `unmanaged` names.
fn without(schema: &DatabaseSchema, unmanaged: &[(String, String)]) -> DatabaseSchema {
    let mut schema = schema.clone();
    for table in &mut schema.tables {
        let keep = |name: &String| !unmanaged.iter().any(|(t, n)| *t == table.name && n == name);
        table.indexes.retain(|i| keep(&i.name));
        table.checks.retain(|c| keep(&c.name));
        table.uniques.retain(|u| keep(&u.name));
        table.foreign_keys.retain(|k| keep(&k.name));
        table.policies.retain(|p| keep(&p.name));
        if !keep(&ROW_SECURITY.to_owned()) {
            table.row_security = false;
            table.row_security_forced = false;
        }
    }
    schema.extensions.retain(|e| {
        let named = format!("extension {e}");
        !unmanaged.iter().any(|(t, n)| t == DATABASE && *n == named)
    });
    schema
}

/// Reads both schemas: the migrations replayed into one scratch database,
/// the types' DDL applied to another.
pub async fn compare(
    server_url: &str,
    migrations: &Migrations,
    tables: &[&TableSchema],
    renames: &Renames,
) -> Result<Comparison> {
    compare_cached(server_url, migrations, tables, renames, &Cache::off()).await
}

/// [`compare`] through `cache`: a folder and types seen before are read
/// from it, not built again; the answer is the same.
pub async fn compare_cached(
    server_url: &str,
    migrations: &Migrations,
    tables: &[&TableSchema],
    renames: &Renames,
    cache: &Cache,
) -> Result<Comparison> {
    check_references(tables)?;
    let mut scratch = Scratch::new(server_url);
    let result = compare_on(&mut scratch, migrations, tables, renames, cache).await;
    scratch.drop_all().await;
    result.map(|(comparison, _)| comparison)
}

/// Every `references = "…"` names a registered table, and the columns a
/// key references are that table's primary key or one of its unique keys.
fn check_references(tables: &[&TableSchema]) -> Result<()> {
    for table in tables {
        for fk in &table.foreign_keys {
            let Some(target) = tables.iter().find(|t| t.name == fk.references) else {
                return Err(Error::Schema(format!(
                    "{}.{} references table {:?}, which no registered record type describes",
                    table.name,
                    fk.columns.join(", "),
                    fk.references
                )));
            };
            let key = |columns: &[String]| columns == fk.referenced.as_slice();
            if !key(&target.primary_key) && !target.uniques.iter().any(|u| key(&u.columns)) {
                return Err(Error::Schema(format!(
                    "foreign key {}.{} references ({}) of {}, which is neither its primary key \
                     nor one of its unique keys: add `unique({})` to that record",
                    table.name,
                    fk.describe(),
                    fk.referenced.join(", "),
                    fk.references,
                    fk.referenced.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// The steps by which the migrations fall short of the types (empty: in step).
pub async fn check(
    server_url: &str,
    migrations: &Migrations,
    tables: &[&TableSchema],
    renames: &Renames,
) -> Result<Plan> {
    compare(server_url, migrations, tables, renames)
        .await?
        .plan()
}

/// What `new_migration` did.
#[derive(Debug, Clone)]
pub struct NewMigration {
    /// The changes found, each with its up and down SQL.
    pub plan: Plan,
    /// The up and down files written, in the order they apply; none when
    /// there was nothing to do.
    pub files: Vec<(PathBuf, PathBuf)>,
}

/// The limits every generated file sets for itself (`SET LOCAL`, so only
/// for its own transaction), in PostgreSQL's units (`5s`, `500ms`, `10min`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// How long a statement waits for a lock before the migration fails
    /// (default `5s`): a migration queued behind a long transaction would
    /// otherwise queue every later query of the app behind itself.
    pub lock: String,
    /// How long one statement may run (default `10min`).
    pub statement: String,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            lock: "5s".into(),
            statement: "10min".into(),
        }
    }
}

impl Timeouts {
    /// Refuses a value PostgreSQL would not read as a duration.
    fn check(&self) -> Result<()> {
        for (what, value) in [
            ("--lock-timeout", &self.lock),
            ("--statement-timeout", &self.statement),
        ] {
            let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            let unit = &value[digits.len()..];
            let known = ["", "ms", "s", "min", "h"].contains(&unit);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !known {
                return Err(Error::Migration(MigrationError::Other(format!(
                    "{what} {value:?} is not a duration such as 5s, 500ms or 10min"
                ))));
            }
        }
        Ok(())
    }

    /// The lines a generated file starts with, for its own transaction.
    /// A `-- no-transaction` file has none: it holds one statement, as
    /// sqlx's migrator needs (see [`crate::online`]), and that statement
    /// either takes no lock that the app's reads and writes wait behind (a
    /// `CONCURRENTLY` index build or drop) or sets its limits itself, a
    /// transaction at a time (a backfill).
    fn sql(&self, no_transaction: bool) -> String {
        if no_transaction {
            return String::new();
        }
        format!(
            "SET LOCAL lock_timeout = '{}';\nSET LOCAL statement_timeout = '{}';\n\n",
            self.lock, self.statement
        )
    }
}

/// How `new-migration` writes its files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewMigrationOptions {
    /// Allow dropping tables or columns and narrowing type changes.
    pub allow_destructive: bool,
    /// The limits each file sets for itself.
    pub timeouts: Timeouts,
    /// Files that never hold a long lock on a busy table (see [`crate::online`]).
    pub online: bool,
    /// Where the schemas read back are kept ([`Cache::off`] by default;
    /// the CLI uses the workspace's unless `--no-cache`).
    pub cache: Cache,
}

/// Writes `<version>_<name>.up.sql` and `.down.sql` into `dir` for the
/// difference between the migrations there and `tables`, renaming what
/// `renames` says was renamed, after proving on a scratch database, through
/// the migration runner, that up builds exactly the types' schema, down
/// restores exactly the previous one, and up applies again. Each file sets
/// the default [`Timeouts`].
pub async fn new_migration(
    server_url: &str,
    dir: &Path,
    tables: &[&TableSchema],
    renames: &Renames,
    name: &str,
    allow_destructive: bool,
) -> Result<NewMigration> {
    let options = NewMigrationOptions {
        allow_destructive,
        ..NewMigrationOptions::default()
    };
    new_migration_with(server_url, dir, tables, renames, name, &options).await
}

/// [`new_migration`] with its [`NewMigrationOptions`]; `--online` may write
/// several migrations, applied in order.
pub async fn new_migration_with(
    server_url: &str,
    dir: &Path,
    tables: &[&TableSchema],
    renames: &Renames,
    name: &str,
    options: &NewMigrationOptions,
) -> Result<NewMigration> {
    let name = migration_name(name)?;
    options.timeouts.check()?;
    check_references(tables)?;
    let migrations = Migrations::from_dir(dir)?;
    let mut scratch = Scratch::new(server_url);
    let result = plan_and_verify(
        &mut scratch,
        dir,
        &migrations,
        tables,
        renames,
        &name,
        options,
    )
    .await;
    scratch.drop_all().await;
    let (plan, files) = result?;
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Migration(MigrationError::Other(format!(
            "cannot create {}: {e}",
            dir.display()
        )))
    })?;
    let files = write_files(dir, &files)?;
    Ok(NewMigration { plan, files })
}

/// A migration file pair, named and with its full text.
struct Rendered {
    up: (String, String),
    down: (String, String),
}

/// The plan's files (from `current` to `desired`) with versions, headers
/// and timeouts.
fn render(
    plan: &Plan,
    (current, desired): (&DatabaseSchema, &DatabaseSchema),
    migrations: &Migrations,
    name: &str,
    options: &NewMigrationOptions,
) -> Result<Vec<Rendered>> {
    let version = next_version(migrations);
    let layout = if options.online {
        Layout::Online {
            lock_timeout: &options.timeouts.lock,
        }
    } else {
        Layout::Planned
    };
    let files = crate::online::files(plan, current, desired, layout)?;
    Ok(files
        .into_iter()
        .enumerate()
        .map(|(k, file)| {
            let stem = format!("{}_{name}{}", version + k as i64, file.suffix);
            let head = |verb: &str| {
                let mut text = String::new();
                for (marked, marker) in [
                    (file.no_transaction, "-- no-transaction\n"),
                    (file.resumable, "-- resumable\n"),
                    (file.contract, "-- contract\n"),
                ] {
                    if marked {
                        text.push_str(marker);
                    }
                }
                text.push_str(&format!(
                    "-- {name}: generated by `cargo xtask new-migration`, verified on a scratch database.\n-- {verb}:\n"
                ));
                for step in &file.steps {
                    text.push_str(&format!("--   {step}\n"));
                }
                text.push('\n');
                text.push_str(&options.timeouts.sql(file.no_transaction));
                text
            };
            let body = |sql: &str| format!("{}\n", sql.trim_end());
            Rendered {
                up: (
                    format!("{stem}.up.sql"),
                    head("Changes") + &body(&file.up),
                ),
                down: (
                    format!("{stem}.down.sql"),
                    head("Reverts") + &body(&file.down),
                ),
            }
        })
        .collect())
}

async fn plan_and_verify(
    scratch: &mut Scratch,
    dir: &Path,
    migrations: &Migrations,
    tables: &[&TableSchema],
    renames: &Renames,
    name: &str,
    options: &NewMigrationOptions,
) -> Result<(Plan, Vec<Rendered>)> {
    let (comparison, replay) =
        compare_on(scratch, migrations, tables, renames, &options.cache).await?;
    let plan = comparison.plan()?;
    if plan.is_empty() {
        return Ok((plan, Vec::new()));
    }
    let destructive: Vec<&str> = plan.destructive().map(|s| s.description.as_str()).collect();
    if !destructive.is_empty() && !options.allow_destructive {
        return Err(Error::Migration(MigrationError::Other(format!(
            "refusing destructive changes without --allow-destructive: {}",
            destructive.join("; ")
        ))));
    }
    let schemas = (&comparison.current, &comparison.desired);
    let files = render(&plan, schemas, migrations, name, options)?;
    // The folder as it will be, in a scratch copy, run by the real runner.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let copy = std::env::temp_dir().join(format!("mandrake-verify-{}-{stamp}", std::process::id()));
    let proven = async {
        write_copy(dir, &copy, &files)?;
        let all = Migrations::from_dir(&copy)?;
        // A copy of the folder as replayed, when the cache has it: then
        // only the new files run here, and the proof is the same.
        let copied = match &replay {
            Some(replay) => copy_of_template(scratch, &options.cache, &replay.key).await,
            None => None,
        };
        let proving = match copied {
            Some(url) => url,
            None => scratch.create("verify").await?,
        };
        let step = |what: &'static str, e: Error| {
            Error::Migration(MigrationError::Other(format!(
                "verification failed: {what}: {e}"
            )))
        };
        migrate(&proving, &all, &MigrateOptions::complete())
            .await
            .map_err(|e| step("up did not apply", e))?;
        let read = || async {
            let schema = mandrake_storage::schema::introspect::inspect_url(&proving).await?;
            Ok::<_, Error>(without(&schema, &comparison.unmanaged))
        };
        // Extensions the types do not name are the user's (the diff never
        // drops one): only the declared ones are compared.
        let mut built = read().await?;
        built
            .extensions
            .retain(|e| comparison.desired.extensions.contains(e));
        same(
            &built,
            &comparison.desired,
            "up does not build the types' schema",
        )?;
        let back = RollbackTarget::Steps(files.len());
        rollback(&proving, &all, back, std::time::Duration::from_secs(30))
            .await
            .map_err(|e| step("down did not apply", e))?;
        same(
            &read().await?,
            &comparison.current,
            "down does not restore the previous schema",
        )?;
        migrate(&proving, &all, &MigrateOptions::complete())
            .await
            .map_err(|e| step("up did not apply a second time", e))?;
        if let Some(replay) = &replay {
            let key = Key::replay(&replay.version, &all);
            promote(scratch, &options.cache, &proving, &key).await;
        }
        Ok::<_, Error>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&copy);
    proven?;
    Ok((plan, files))
}

/// `dir`'s migration files and `files` in `copy`.
fn write_copy(dir: &Path, copy: &Path, files: &[Rendered]) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::Migration(MigrationError::Other(format!(
            "cannot write a scratch copy: {e}"
        )))
    };
    std::fs::create_dir_all(copy).map_err(failed)?;
    if dir.exists() {
        for entry in std::fs::read_dir(dir).map_err(failed)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "sql") {
                std::fs::copy(&path, copy.join(entry.file_name())).map_err(failed)?;
            }
        }
    }
    for file in files {
        for (name, text) in [&file.up, &file.down] {
            std::fs::write(copy.join(name), text).map_err(failed)?;
        }
    }
    Ok(())
}

/// Writes every pair, or none: a half-written sequence would be applied
/// half.
fn write_files(dir: &Path, files: &[Rendered]) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut written = Vec::new();
    for file in files {
        let (up, down) = (dir.join(&file.up.0), dir.join(&file.down.0));
        if let Err(err) = write_pair((&up, file.up.1.clone()), (&down, file.down.1.clone())) {
            for (up, down) in &written {
                let _ = std::fs::remove_file(up);
                let _ = std::fs::remove_file(down);
            }
            return Err(err);
        }
        written.push((up, down));
    }
    Ok(written)
}

/// Fails with the remaining differences when `actual` is not `expected`.
fn same(actual: &DatabaseSchema, expected: &DatabaseSchema, what: &str) -> Result<()> {
    if actual.normalized() == expected.normalized() {
        return Ok(());
    }
    let left: Vec<String> = diff(actual, expected, &Renames::NONE)
        .map(|p| p.steps.into_iter().map(|s| s.description).collect())
        .unwrap_or_default();
    Err(Error::Migration(MigrationError::Other(format!(
        "verification failed: {what}; still to do: {}; nothing was written",
        if left.is_empty() {
            detail(&actual.normalized(), &expected.normalized())
        } else {
            left.join("; ")
        }
    ))))
}

/// Where two schemas the diff finds nothing between still differ: the first
/// table (or the database-wide part) that does, both ways.
fn detail(actual: &DatabaseSchema, expected: &DatabaseSchema) -> String {
    let differing = actual
        .tables
        .iter()
        .zip(&expected.tables)
        .find(|(a, e)| a != e);
    match differing {
        Some((a, e)) => format!(
            "table {} differs in detail: built {a:?}, wanted {e:?}",
            a.name
        ),
        None => format!(
            "differs in detail: built extensions {:?}, functions {}/{}, publication {} \
             (truncate {}); wanted {:?}, {}/{}, {} ({})",
            actual.extensions,
            actual.timestamp_function,
            actual.notify_function,
            actual.feed_publication,
            actual.feed_publishes_all,
            expected.extensions,
            expected.timestamp_function,
            expected.notify_function,
            expected.feed_publication,
            expected.feed_publishes_all
        ),
    }
}

/// snake_case letters, digits and underscores only.
/// Writes both files or neither: an up file without its down would be applied
/// by `migrate` and could never be rolled back.
fn write_pair(up: (&Path, String), down: (&Path, String)) -> Result<()> {
    let temp = |path: &Path| path.with_extension("sql.partial");
    let failed = |path: &Path, e: std::io::Error| {
        Error::Migration(MigrationError::Other(format!(
            "cannot write {}: {e}",
            path.display()
        )))
    };
    let result = (|| {
        std::fs::write(temp(up.0), &up.1).map_err(|e| failed(up.0, e))?;
        std::fs::write(temp(down.0), &down.1).map_err(|e| failed(down.0, e))?;
        std::fs::rename(temp(down.0), down.0).map_err(|e| failed(down.0, e))?;
        std::fs::rename(temp(up.0), up.0).map_err(|e| failed(up.0, e))
    })();
    if result.is_err() {
        for path in [up.0, down.0] {
            let _ = std::fs::remove_file(temp(path));
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// The longest migration name: `<14 digits>_<name>.down.sql` must fit in the
/// 255 bytes a file name may have on common file systems.
const MAX_NAME: usize = 200;

fn migration_name(name: &str) -> Result<String> {
    let clean: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let clean = clean.trim_matches('_').to_owned();
    if clean.is_empty() {
        return Err(Error::Migration(MigrationError::Other(format!(
            "{name:?} is not a usable migration name"
        ))));
    }
    if clean.len() > MAX_NAME {
        return Err(Error::Migration(MigrationError::Other(format!(
            "the migration name is {} characters long; at most {MAX_NAME} fit in a file name",
            clean.len()
        ))));
    }
    Ok(clean)
}

/// The current UTC time as `YYYYMMDDHHMMSS`, moved past every existing version.
fn next_version(migrations: &Migrations) -> i64 {
    let now: i64 = chrono::Utc::now()
        .format("%Y%m%d%H%M%S")
        .to_string()
        .parse()
        .unwrap_or(0);
    match migrations.versions().max() {
        Some(newest) if newest >= now => newest + 1,
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_file_friendly() {
        assert_eq!(migration_name("Add tags!").unwrap(), "add_tags");
        assert!(migration_name("  ").is_err());
    }
}
