//! `new-migration` and `check`: compare the schema the types describe with
//! the one the migrations build, on scratch databases, and write a migration
//! only after it is proven.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection};

use crate::ddl::{create_schema, quote_ident};
use crate::diff::{Plan, diff};
use crate::error::{Error, Result};
use crate::introspect::inspect;
use crate::migrate::{MigrateOptions, Migrations, migrate};
use crate::schema::{DatabaseSchema, TableSchema};

/// Scratch databases on one server, dropped by [`Scratch::drop_all`].
struct Scratch {
    server: PgConnectOptions,
    names: Vec<String>,
}

static SCRATCH: AtomicU32 = AtomicU32::new(0);

impl Scratch {
    fn new(server_url: &str) -> Result<Scratch> {
        let server = PgConnectOptions::from_str(server_url)
            .map_err(|e| Error::Config(format!("bad database URL: {e}")))?;
        Ok(Scratch {
            server,
            names: Vec::new(),
        })
    }

    async fn admin(&self) -> Result<PgConnection> {
        Ok(PgConnection::connect_with(&self.server).await?)
    }

    /// A new empty database; returns its URL.
    async fn create(&mut self, label: &str) -> Result<String> {
        let n = SCRATCH.fetch_add(1, Ordering::Relaxed);
        let name = format!("mandrake_scratch_{}_{n}_{label}", std::process::id());
        let mut admin = self.admin().await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {}",
                quote_ident(&name)
            )))
            .await?;
        self.names.push(name.clone());
        Ok(self
            .server
            .clone()
            .database(&name)
            .to_url_lossy()
            .to_string())
    }

    async fn drop_all(self) {
        let Ok(mut admin) = self.admin().await else {
            return;
        };
        for name in &self.names {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
            let _ = admin.execute(sqlx::AssertSqlSafe(sql)).await;
        }
    }
}

async fn inspect_url(url: &str) -> Result<DatabaseSchema> {
    let mut conn = crate::db::connect_one(url).await?;
    let schema = inspect(&mut conn).await;
    let _ = conn.close().await;
    schema
}

async fn run_script(url: &str, sql: &str) -> Result<()> {
    let mut conn = crate::db::connect_one(url).await?;
    let mut tx = conn.begin().await?;
    tx.execute(sqlx::AssertSqlSafe(sql.to_owned())).await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

/// The two schemas a migration goes between, each read back from a real database.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// What replaying the migrations folder builds.
    pub current: DatabaseSchema,
    /// What the record types describe (with their rename hints).
    pub desired: DatabaseSchema,
}

impl Comparison {
    /// The plan from `current` to `desired`.
    pub fn plan(&self) -> Result<Plan> {
        diff(&self.current, &self.desired)
    }
}

async fn compare_on(
    scratch: &mut Scratch,
    migrations: &Migrations,
    tables: &[&TableSchema],
) -> Result<Comparison> {
    let replayed = scratch.create("replay").await?;
    migrate(&replayed, migrations, &MigrateOptions::default()).await?;
    let current = inspect_url(&replayed).await?;
    let typed = scratch.create("types").await?;
    run_script(&typed, &create_schema(tables)).await?;
    let mut desired = inspect_url(&typed).await?;
    // The catalog does not know rename hints: take them from the types.
    for table in &mut desired.tables {
        let Some(source) = tables.iter().find(|t| t.name == table.name) else {
            continue;
        };
        table.renamed_from = source.renamed_from.clone();
        for column in &mut table.columns {
            column.renamed_from = source
                .column(&column.name)
                .and_then(|c| c.renamed_from.clone());
        }
    }
    Ok(Comparison { current, desired })
}

/// Reads both schemas: the migrations replayed into one scratch database,
/// the types' DDL applied to another.
pub async fn compare(
    server_url: &str,
    migrations: &Migrations,
    tables: &[&TableSchema],
) -> Result<Comparison> {
    check_references(tables)?;
    let mut scratch = Scratch::new(server_url)?;
    let result = compare_on(&mut scratch, migrations, tables).await;
    scratch.drop_all().await;
    result
}

/// Every `references = "…"` names a registered table.
fn check_references(tables: &[&TableSchema]) -> Result<()> {
    for table in tables {
        for fk in &table.foreign_keys {
            if !tables.iter().any(|t| t.name == fk.references) {
                return Err(Error::Schema(format!(
                    "{}.{} references table {:?}, which no registered record type describes",
                    table.name, fk.column, fk.references
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
) -> Result<Plan> {
    compare(server_url, migrations, tables).await?.plan()
}

/// What `new_migration` did.
#[derive(Debug, Clone)]
pub struct NewMigration {
    /// The changes found, each with its up and down SQL.
    pub plan: Plan,
    /// The up and down files written; `None` when there was nothing to do.
    pub files: Option<(PathBuf, PathBuf)>,
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
                return Err(Error::Migration(format!(
                    "{what} {value:?} is not a duration such as 5s, 500ms or 10min"
                )));
            }
        }
        Ok(())
    }

    /// The lines a generated file starts with.
    fn sql(&self) -> String {
        format!(
            "SET LOCAL lock_timeout = '{}';\nSET LOCAL statement_timeout = '{}';\n\n",
            self.lock, self.statement
        )
    }
}

/// Writes `<version>_<name>.up.sql` and `.down.sql` into `dir` for the
/// difference between the migrations there and `tables`, after proving on a
/// scratch database that up builds exactly the types' schema, down restores
/// exactly the previous one, and up applies again. Each file sets the
/// default [`Timeouts`].
pub async fn new_migration(
    server_url: &str,
    dir: &Path,
    tables: &[&TableSchema],
    name: &str,
    allow_destructive: bool,
) -> Result<NewMigration> {
    let timeouts = Timeouts::default();
    new_migration_with(server_url, dir, tables, name, allow_destructive, &timeouts).await
}

/// [`new_migration`] with the files' own [`Timeouts`].
pub async fn new_migration_with(
    server_url: &str,
    dir: &Path,
    tables: &[&TableSchema],
    name: &str,
    allow_destructive: bool,
    timeouts: &Timeouts,
) -> Result<NewMigration> {
    let name = migration_name(name)?;
    timeouts.check()?;
    check_references(tables)?;
    let migrations = Migrations::from_dir(dir)?;
    let mut scratch = Scratch::new(server_url)?;
    let result = plan_and_verify(
        &mut scratch,
        &migrations,
        tables,
        allow_destructive,
        timeouts,
    )
    .await;
    scratch.drop_all().await;
    let plan = result?;
    if plan.is_empty() {
        return Ok(NewMigration { plan, files: None });
    }
    let version = next_version(&migrations);
    let header = header(&plan, &name);
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::Migration(format!("cannot create {}: {e}", dir.display())))?;
    let up = dir.join(format!("{version}_{name}.up.sql"));
    let down = dir.join(format!("{version}_{name}.down.sql"));
    let (up_sql, down_sql) = scripts(&plan, timeouts);
    write_pair(
        (&up, format!("{header}\n{}", up_sql.trim_end()) + "\n"),
        (
            &down,
            format!(
                "{}\n{}",
                header.replace("-- Changes", "-- Reverts"),
                down_sql.trim_end()
            ) + "\n",
        ),
    )?;
    Ok(NewMigration {
        plan,
        files: Some((up, down)),
    })
}

/// The bodies of the up and down files: their timeouts, then the plan.
/// These exact texts are what the scratch database proves.
fn scripts(plan: &Plan, timeouts: &Timeouts) -> (String, String) {
    let limits = timeouts.sql();
    (
        format!("{limits}{}", plan.up_sql()),
        format!("{limits}{}", plan.down_sql()),
    )
}

async fn plan_and_verify(
    scratch: &mut Scratch,
    migrations: &Migrations,
    tables: &[&TableSchema],
    allow_destructive: bool,
    timeouts: &Timeouts,
) -> Result<Plan> {
    let comparison = compare_on(scratch, migrations, tables).await?;
    let plan = comparison.plan()?;
    if plan.is_empty() {
        return Ok(plan);
    }
    let destructive: Vec<&str> = plan.destructive().map(|s| s.description.as_str()).collect();
    if !destructive.is_empty() && !allow_destructive {
        return Err(Error::Migration(format!(
            "refusing destructive changes without --allow-destructive: {}",
            destructive.join("; ")
        )));
    }
    let proving = scratch.create("verify").await?;
    migrate(&proving, migrations, &MigrateOptions::default()).await?;
    let (up, down) = scripts(&plan, timeouts);
    let step = |what: &'static str, e: Error| {
        Error::Migration(format!("verification failed: {what}: {e}"))
    };
    run_script(&proving, &up)
        .await
        .map_err(|e| step("up did not apply", e))?;
    same(
        &inspect_url(&proving).await?,
        &comparison.desired,
        "up does not build the types' schema",
    )?;
    run_script(&proving, &down)
        .await
        .map_err(|e| step("down did not apply", e))?;
    same(
        &inspect_url(&proving).await?,
        &comparison.current,
        "down does not restore the previous schema",
    )?;
    run_script(&proving, &up)
        .await
        .map_err(|e| step("up did not apply a second time", e))?;
    Ok(plan)
}

/// Fails with the remaining differences when `actual` is not `expected`.
fn same(actual: &DatabaseSchema, expected: &DatabaseSchema, what: &str) -> Result<()> {
    if actual.normalized() == expected.normalized() {
        return Ok(());
    }
    let left: Vec<String> = diff(actual, expected)
        .map(|p| p.steps.into_iter().map(|s| s.description).collect())
        .unwrap_or_default();
    Err(Error::Migration(format!(
        "verification failed: {what}; still to do: {}; nothing was written",
        if left.is_empty() {
            "(differences in detail only)".into()
        } else {
            left.join("; ")
        }
    )))
}

fn header(plan: &Plan, name: &str) -> String {
    let mut text = format!(
        "-- {name}: generated by `cargo xtask new-migration`, verified on a scratch database.\n-- Changes:\n"
    );
    for step in &plan.steps {
        let mark = if step.destructive {
            " (DESTRUCTIVE)"
        } else {
            ""
        };
        text.push_str(&format!("--   {}{mark}\n", step.description));
    }
    text
}

/// snake_case letters, digits and underscores only.
/// Writes both files or neither: an up file without its down would be applied
/// by `migrate` and could never be rolled back.
fn write_pair(up: (&Path, String), down: (&Path, String)) -> Result<()> {
    let temp = |path: &Path| path.with_extension("sql.partial");
    let failed = |path: &Path, e: std::io::Error| {
        Error::Migration(format!("cannot write {}: {e}", path.display()))
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
        return Err(Error::Migration(format!(
            "{name:?} is not a usable migration name"
        )));
    }
    if clean.len() > MAX_NAME {
        return Err(Error::Migration(format!(
            "the migration name is {} characters long; at most {MAX_NAME} fit in a file name",
            clean.len()
        )));
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
