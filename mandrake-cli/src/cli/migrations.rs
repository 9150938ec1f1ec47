//! The commands on the migrations folder: migrate, rollback, status, resolve,
//! check, new-migration, lint, fuzz-diff.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use mandrake_storage::migrate::{self, MigrateOptions, Migrations, RollbackTarget};
use mandrake_storage::schema::TableSchema;
use mandrake_storage::{Error, MigrationError, Result};

use super::Context;
use super::args::{MigrateArgs, RollbackArgs};
use crate::scaffold;

/// The schema diagram `check` keeps current, when the workspace has it.
const SCHEMA_DOC: &str = "docs/SCHEMA.md";

/// `migrate [--to V] [--dry-run] [--allow-out-of-order]`.
pub(super) async fn migrate(ctx: &Context, args: MigrateArgs) -> Result<ExitCode> {
    let migrations = Migrations::from_dir(&ctx.dir)?;
    let options = MigrateOptions {
        to: args.to,
        complete: args.complete,
        dry_run: args.dry_run,
        allow_out_of_order: args.allow_out_of_order,
        lock_timeout: Duration::from_secs(args.lock_timeout),
    };
    let url = ctx.url().await?;
    let report = {
        let run = migrate::migrate(&url, &migrations, &options);
        if std::io::stderr().is_terminal() && !args.dry_run {
            let drawn = std::cell::Cell::new(false);
            let report = tokio::select! {
                report = run => report,
                _ = show_backfills(&url, &drawn) => unreachable!("shows until the run ends"),
            };
            if drawn.get() {
                eprintln!();
            }
            report
        } else {
            run.await
        }
    }?;
    let verb = if args.dry_run {
        "would apply"
    } else {
        "applied"
    };
    for (_, name) in &report.applied {
        println!("{verb} {name}");
    }
    if let Some((_, name)) = &report.waiting {
        println!(
            "waiting: {name} is a contract (it drops what the old binaries still use); \
             run `cargo xtask migrate --complete` once every running binary is the new one"
        );
    } else if report.applied.is_empty() {
        println!("nothing to apply: the database is up to date");
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Draws the progress of a running backfill (an expand/contract's, which
/// reports it in its `application_name`) on the terminal, once a second,
/// until dropped; `drawn` says whether it drew.
async fn show_backfills(url: &str, drawn: &std::cell::Cell<bool>) {
    let Ok(mut conn) = mandrake_storage::connect_one(url).await else {
        return std::future::pending().await;
    };
    let mut first: Option<(std::time::Instant, i64)> = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let seen: Option<String> = sqlx::query_scalar(
            "SELECT application_name FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name LIKE 'mandrake backfill %' LIMIT 1",
        )
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten();
        let Some((label, done, total)) = seen.as_deref().and_then(parse_progress) else {
            continue;
        };
        let (since, start) = *first.get_or_insert((std::time::Instant::now(), done));
        eprint!(
            "\r{}",
            progress_line(label, done, total, done - start, since.elapsed())
        );
        drawn.set(true);
    }
}

/// `mandrake backfill 5000/1000000 notes.rank__new` taken apart: the
/// table and column, the rows done, the rows there are (an estimate).
fn parse_progress(name: &str) -> Option<(&str, i64, i64)> {
    let rest = name.strip_prefix("mandrake backfill ")?;
    let (counts, label) = rest.split_once(' ')?;
    let (done, total) = counts.split_once('/')?;
    Some((label, done.parse().ok()?, total.parse().ok()?))
}

/// A progress bar with an estimate of the time left, from the rows done
/// (`recent`) in `elapsed` since the bar first showed.
fn progress_line(label: &str, done: i64, total: i64, recent: i64, elapsed: Duration) -> String {
    const WIDTH: i64 = 30;
    let total = total.max(done).max(1);
    let filled = (done * WIDTH / total) as usize;
    let bar = format!(
        "{}{}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    );
    let left = match elapsed.as_secs_f64() {
        secs if recent > 0 && secs > 0.0 => {
            let rate = recent as f64 / secs;
            format!("about {:.0} s left", (total - done) as f64 / rate)
        }
        _ => "estimating".into(),
    };
    format!(
        "backfill {label} [{bar}] {done} of {total} rows ({}%), {left}   ",
        done * 100 / total
    )
}

/// `rollback [--steps N | --to V]`.
pub(super) async fn rollback(ctx: &Context, args: RollbackArgs) -> Result<ExitCode> {
    let migrations = Migrations::from_dir(&ctx.dir)?;
    let target = match (args.steps, args.to) {
        (_, Some(v)) => RollbackTarget::To(v),
        (steps, None) => RollbackTarget::Steps(steps.unwrap_or(1)),
    };
    let timeout = Duration::from_secs(args.lock_timeout);
    let report = migrate::rollback(&ctx.url().await?, &migrations, target, timeout).await?;
    for (_, name) in &report.reverted {
        println!("reverted {name}");
    }
    if report.reverted.is_empty() {
        println!("nothing to roll back");
    }
    Ok(ExitCode::SUCCESS)
}

/// `status [--exit-code]`: every version with its state; exit 1 with `--exit-code`
/// while one is pending, failed, unknown or running.
pub(super) async fn status(ctx: &Context, exit_code: bool) -> Result<ExitCode> {
    let migrations = Migrations::from_dir(&ctx.dir)?;
    let url = ctx.url().await?;
    let mut conn = mandrake_storage::connect_one(&url).await?;
    let version = mandrake_storage::admin::server_version(&mut conn).await?;
    drop(conn);
    println!("server: PostgreSQL {version}");
    let rows = migrate::status(&url, &migrations).await?;
    let unfinished = rows.iter().any(|r| {
        matches!(
            r.state,
            migrate::State::Pending
                | migrate::State::Failed
                | migrate::State::Unknown
                | migrate::State::Running
                | migrate::State::Waiting
        )
    });
    if rows.is_empty() {
        println!("no migrations in {}", ctx.dir.display());
    }
    let stuck: Vec<i64> = rows
        .iter()
        .filter(|r| matches!(r.state, migrate::State::Failed | migrate::State::Unknown))
        .map(|r| r.version)
        .collect();
    let running: Vec<i64> = rows
        .iter()
        .filter(|r| r.state == migrate::State::Running)
        .map(|r| r.version)
        .collect();
    let width = rows
        .iter()
        .map(|r| r.state.to_string().len())
        .max()
        .unwrap_or(0);
    for row in rows {
        let at = row
            .applied_at
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "-".into());
        let took = row
            .duration
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1000.0))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<width$} {:<23} {:>10}  {}",
            row.state.to_string(),
            at,
            took,
            row.name
        );
    }
    for version in &running {
        println!(
            "\n{version} is running now (outside a transaction); `cargo xtask status` \
             again once it ends"
        );
    }
    for version in stuck {
        println!(
            "\n{version} ran outside a transaction and did not finish: check what it \
             changed, repair by hand, then `cargo xtask resolve {version}`"
        );
    }
    if exit_code && unfinished {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `resolve V`: forgets a failed or interrupted no-transaction migration.
pub(super) async fn resolve(ctx: &Context, version: i64) -> Result<ExitCode> {
    if migrate::resolve(&ctx.url().await?, version).await? {
        println!("forgot failed migration {version}; `cargo xtask migrate` applies it again");
    } else {
        return Err(Error::Migration(MigrationError::Other(format!(
            "no failed migration {version} is recorded"
        ))));
    }
    Ok(ExitCode::SUCCESS)
}

/// `fuzz-diff --cases N --seed S`.
pub(super) async fn fuzz_diff(ctx: &Context, cases: u64, seed: u64) -> Result<ExitCode> {
    let url = ctx.scratch_url().await?;
    let (mut failed, mut skipped) = (0, 0);
    for (seed, outcome) in crate::fuzz::fuzz(&url, seed, cases).await {
        match outcome {
            Err(err) => {
                failed += 1;
                println!("case {seed} failed: {err}\n{}", crate::fuzz::describe(seed));
            }
            Ok(crate::fuzz::Ran::Skipped { extension }) => {
                skipped += 1;
                println!("case {seed} skipped: the server has no extension {extension}");
            }
            Ok(crate::fuzz::Ran::Passed) => {}
        }
    }
    println!(
        "{} of {cases} cases passed, {skipped} skipped",
        cases - failed - skipped
    );
    if failed > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `lint [FILE…] [--accept-before V]`: squawk's rules; exit 1 on a finding.
pub(super) fn lint(
    ctx: &Context,
    files: Vec<PathBuf>,
    accept_before: Option<i64>,
) -> Result<ExitCode> {
    let files = if files.is_empty() {
        vec![ctx.dir.clone()]
    } else {
        files
    };
    let findings = crate::lint::lint_paths(&files)?;
    let accepted = |f: &crate::lint::Finding| {
        accept_before
            .zip(crate::lint::version_of(&f.file))
            .is_some_and(|(before, version)| version < before)
    };
    let (old, new): (Vec<_>, Vec<_>) = findings.iter().partition(|f| accepted(f));
    for finding in &new {
        println!("{finding}");
    }
    if !old.is_empty() {
        println!(
            "{} finding(s) in migrations before {} accepted",
            old.len(),
            accept_before.unwrap_or_default()
        );
    }
    if !new.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    println!("ok: no lint findings");
    Ok(ExitCode::SUCCESS)
}

/// `check`: exit 1 when the migrations do not build the types' schema, or
/// docs/SCHEMA.md is stale; pending migrations are linted as warnings.
pub(super) async fn check(
    ctx: &Context,
    tables: &[&TableSchema],
    cache: &crate::cache::Cache,
) -> Result<ExitCode> {
    let migrations = Migrations::from_dir(&ctx.dir)?;
    let url = ctx.url().await?;
    let pending: Vec<PathBuf> = migrate::status(&url, &migrations)
        .await?
        .into_iter()
        .filter(|r| r.state == migrate::State::Pending)
        .flat_map(|r| ["up", "down"].map(|kind| ctx.dir.join(format!("{}.{kind}.sql", r.name))))
        .filter(|p| p.exists())
        .collect();
    for finding in crate::lint::lint_paths(&pending)? {
        println!("warning: {finding}");
    }
    let renames = mandrake_storage::registered_renames();
    let scratch = ctx.scratch_url().await?;
    let comparison =
        scaffold::compare_cached(&scratch, &migrations, tables, &renames, cache).await?;
    for (table, name) in &comparison.unmanaged {
        println!("not managed by the types (left alone): {name} on {table}");
    }
    let plan = comparison.plan()?;
    if !plan.is_empty() {
        println!(
            "the migrations in {} do not build the types' schema:",
            ctx.dir.display()
        );
        for step in &plan.steps {
            println!("  - {}", step.description);
        }
        println!("run `cargo xtask new-migration <name>` to write the missing migration");
        return Ok(ExitCode::FAILURE);
    }
    println!("ok: the migrations build exactly the types' schema");
    if let Some(stale) = stale_schema_doc(tables)? {
        println!("{stale}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `new-migration NAME`: the difference between the types and the migrations,
/// proven on scratch databases, then written (and the diagram redrawn).
pub(super) async fn new_migration(
    ctx: &Context,
    tables: &[&TableSchema],
    name: String,
    options: scaffold::NewMigrationOptions,
) -> Result<ExitCode> {
    let url = ctx.scratch_url().await?;
    let renames = mandrake_storage::registered_renames();
    let made =
        scaffold::new_migration_with(&url, &ctx.dir, tables, &renames, &name, &options).await?;
    if made.files.is_empty() {
        println!("the schema is up to date: no migration written");
    }
    for step in &made.plan.steps {
        let mark = if step.destructive {
            " (DESTRUCTIVE)"
        } else {
            ""
        };
        println!("  {}{mark}", step.description);
    }
    if !made.files.is_empty() {
        println!("verified and wrote");
    }
    for (up, down) in &made.files {
        println!("  {}\n  {}", up.display(), down.display());
    }
    if let Some(doc) = redraw_schema_doc(tables)? {
        println!("redrew the diagram in {}", doc.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Redraws the diagram of `docs/SCHEMA.md`, if it exists and is stale, so
/// a schema change and its diagram land together; returns its path then.
fn redraw_schema_doc(tables: &[&TableSchema]) -> Result<Option<PathBuf>> {
    let path = mandrake_storage::cluster::workspace_root()?.join(SCHEMA_DOC);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let current = crate::diagram::mermaid(tables);
    match crate::diagram::replace_in(&text, &current) {
        Some(redrawn) if redrawn != text => {
            std::fs::write(&path, redrawn)
                .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))?;
            Ok(Some(path))
        }
        _ => Ok(None),
    }
}

/// Why `docs/SCHEMA.md` no longer shows the registered types, if it exists
/// and does not.
fn stale_schema_doc(tables: &[&TableSchema]) -> Result<Option<String>> {
    let path = mandrake_storage::cluster::workspace_root()?.join(SCHEMA_DOC);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let current = crate::diagram::mermaid(tables);
    if crate::diagram::embedded_in(&text) == Some(current.as_str()) {
        return Ok(None);
    }
    Ok(Some(format!(
        "{} is stale: `cargo xtask new-migration` redraws it (or replace its ```mermaid \
         block with the output of `cargo xtask schema --format mermaid`)",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backfill_shows_a_bar_and_the_time_left() {
        let name = "mandrake backfill 250000/1000000 notes.rank__new";
        let (label, done, total) = parse_progress(name).unwrap();
        assert_eq!(
            (label, done, total),
            ("notes.rank__new", 250_000, 1_000_000)
        );
        let line = progress_line(label, done, total, 200_000, Duration::from_secs(10));
        assert_eq!(
            line.trim_end(),
            "backfill notes.rank__new [#######.......................] \
             250000 of 1000000 rows (25%), about 38 s left"
        );
        assert!(progress_line(label, 0, 0, 0, Duration::ZERO).contains("estimating"));
        assert_eq!(parse_progress("psql"), None);
    }
}
