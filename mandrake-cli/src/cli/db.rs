//! The `db …` commands: the embedded cluster, `db top`, backups, restores
//! and point-in-time recovery.

use std::process::ExitCode;

use mandrake_storage::Result;
use mandrake_storage::cluster::{Cluster, DEFAULT_DATABASE};
use mandrake_storage::migrate::Migrations;
use mandrake_storage::schema::TableSchema;

use super::args::{ArchivingAction, BackupArgs, DbCommand, RestoreArgs};
use super::{Context, blocking};

/// `db top [--limit N] [--reset]`: the costliest statements, each with its
/// table and repository operation.
pub(super) async fn top(
    ctx: &Context,
    tables: &[&TableSchema],
    limit: i64,
    reset: bool,
    full: bool,
) -> Result<ExitCode> {
    let url = ctx.url().await?;
    if reset {
        crate::stats::reset(&url).await?;
        println!("statement statistics reset");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = crate::stats::top(&url, tables, limit).await?;
    print!("{}", crate::stats::render(&rows, full));
    Ok(ExitCode::SUCCESS)
}

/// `db status`: the embedded cluster (without `DATABASE_URL`), then the
/// change feed's slots on the database, each with its lag.
pub(super) async fn status(ctx: &Context) -> Result<ExitCode> {
    let running = if std::env::var_os("DATABASE_URL").is_none() && ctx.url.is_none() {
        let cluster = Cluster::default_for_workspace()?;
        let status = cluster.status()?;
        let state = match status.pid {
            Some(pid) if status.running => format!("running (pid {pid})"),
            _ => "stopped".to_owned(),
        };
        println!("state:  {state}");
        println!("data:   {}", status.root.display());
        println!("socket: {}", cluster.socket_dir().display());
        println!("url:    {}", cluster.url(DEFAULT_DATABASE));
        status.running
    } else {
        true
    };
    if !running {
        return Ok(ExitCode::SUCCESS);
    }
    let mut conn = mandrake_storage::connect_one(&ctx.url().await?).await?;
    let version = mandrake_storage::admin::server_version(&mut conn).await?;
    println!("server: PostgreSQL {version}");
    let slots = mandrake_storage::feed_slots(&mut conn).await?;
    if slots.is_empty() {
        println!("change feed: no replication slots");
        return Ok(ExitCode::SUCCESS);
    }
    println!("change feed slots:");
    println!(
        "  {:<40} {:<9} {:<10} {:>12} {:>10}  oldest pending",
        "slot", "kind", "state", "lag bytes", "wal"
    );
    let now = chrono::Utc::now();
    for slot in slots {
        let kind = if slot.durable { "consumer" } else { "live" };
        let state = match (slot.active, slot.live) {
            (true, _) => "reading",
            (false, true) => "running",
            (false, false) => "idle",
        };
        let pending = match slot.oldest_pending {
            Some(at) => format!("{at} ({} s ago)", (now - at).num_seconds()),
            None => "-".to_owned(),
        };
        println!(
            "  {:<40} {kind:<9} {state:<10} {:>12} {:>10}  {pending}",
            slot.name, slot.lag_bytes, slot.wal_status
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn db_command(cmd: DbCommand) -> Result<()> {
    let cluster = Cluster::default_for_workspace()?;
    match cmd {
        DbCommand::Start => {
            let was_running = cluster.status()?.running;
            let url = start(&cluster).await?;
            let verb = if was_running {
                "already running"
            } else {
                "started"
            };
            println!("cluster {verb} at {}\n{url}", cluster.root().display());
        }
        DbCommand::Stop => {
            blocking({
                let c = cluster.clone();
                move || c.stop()
            })
            .await?;
            println!("cluster stopped ({})", cluster.root().display());
        }
        DbCommand::Url => {
            // Only the URL goes to stdout, so `psql "$(cargo xtask db url)"` works.
            println!("{}", cluster.url(DEFAULT_DATABASE));
            if !cluster.status()?.running {
                eprintln!("the cluster is stopped: `cargo xtask db start` starts it");
            }
        }
        DbCommand::Top { .. }
        | DbCommand::Verify { .. }
        | DbCommand::Status
        | DbCommand::DropConsumer { .. } => {
            unreachable!("handled with the database commands")
        }
        DbCommand::Backup(_) => {
            let dir = cluster.base_backup()?;
            println!(
                "base backup in {}\nrecover with `cargo xtask db restore --base {} --to-time \
                 \"<timestamp>\"` (instants after it need `cargo xtask db archiving on`)",
                dir.display(),
                dir.display()
            );
        }
        DbCommand::Restore(args) => {
            let (Some(base), Some(to_time)) = (args.base, args.to_time) else {
                unreachable!("clap requires both")
            };
            let copy = cluster.recover(&base, &to_time).await?;
            if args.force {
                let kept = cluster.replace_with(&copy)?;
                println!(
                    "the embedded cluster is now as it was at {to_time}; its old data is kept \
                     in {}\nWAL archiving is off on it: `cargo xtask db archiving on` turns it on",
                    kept.display()
                );
            } else {
                println!(
                    "recovered a copy as it was at {to_time}, running beside the embedded \
                     cluster in {root}\n{}\nstop and delete it with `MANDRAKE_DATA_DIR={root} \
                     cargo xtask db destroy`; --force makes the recovery the embedded cluster",
                    copy.url(DEFAULT_DATABASE),
                    root = copy.root().display(),
                );
            }
        }
        DbCommand::Archiving { action } => {
            if action != ArchivingAction::Status {
                cluster.set_archiving(action == ArchivingAction::On).await?;
            }
            let status = cluster.archiving().await?;
            println!(
                "archiving: {}\nfolder:    {}\narchived:  {} segment(s){}\nfailed:    {}",
                if status.on { "on" } else { "off" },
                status.dir.display(),
                status.archived,
                status
                    .last_archived
                    .map(|s| format!(", newest {s}"))
                    .unwrap_or_default(),
                status.failed
            );
        }
        DbCommand::Destroy => {
            blocking({
                let c = cluster.clone();
                move || c.destroy()
            })
            .await?;
            println!("cluster destroyed ({})", cluster.root().display());
        }
    }
    Ok(())
}

pub(super) async fn backup_command(url: &str, args: BackupArgs) -> Result<ExitCode> {
    if args.keep == Some(0) {
        return Err(mandrake_storage::BackupError::KeepZero.into());
    }
    let database = database_name(url)?;
    let dir = mandrake_storage::backup::default_dir()?;
    let out = args
        .out
        .unwrap_or_else(|| mandrake_storage::backup::default_path(&dir, &database));
    let made = mandrake_storage::backup::backup(url, &out, |line| eprintln!("{line}")).await?;
    println!(
        "wrote {} ({:.1} MiB in {:.1} s)\ntables: {}",
        made.path.display(),
        made.bytes as f64 / (1024.0 * 1024.0),
        made.duration.as_secs_f64(),
        made.tables.join(", ")
    );
    if let Some(keep) = args.keep {
        let folder = made.path.parent().unwrap_or(&dir);
        for old in mandrake_storage::backup::prune(folder, &database, keep, Some(&made.path))? {
            println!("deleted {}", old.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn restore_command(url: &str, args: RestoreArgs) -> Result<ExitCode> {
    use mandrake_storage::backup::RestoreTarget;
    let file = args.file.expect("clap requires FILE without --base");
    let target = match (args.into, args.force) {
        (None, false) => RestoreTarget::New,
        (Some(name), false) => RestoreTarget::Named(name),
        (Some(name), true) => RestoreTarget::Replace(name),
        (None, true) => RestoreTarget::Replace(database_name(url)?),
    };
    let restored = mandrake_storage::backup::restore(url, &file, &target).await?;
    match restored.replaced {
        Some(kept) => println!(
            "database {} now holds {}; its previous contents are kept as database {kept} \
             (drop it when you no longer need it)",
            restored.database,
            file.display()
        ),
        None => println!("{}", restored_message(&file, &restored)),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `db restore` says of a copy: where it is, and the `DATABASE_URL` to
/// use, without the password (it stays out of the terminal and its scrollback).
fn restored_message(
    file: &std::path::Path,
    restored: &mandrake_storage::backup::Restored,
) -> String {
    let shown = mandrake_storage::url::redact_url(&restored.url);
    let hint = if shown == restored.url {
        ""
    } else {
        " (with your password in place of ***)"
    };
    format!(
        "restored {} into database {}\npoint the app at it: DATABASE_URL='{shown}'{hint}",
        file.display(),
        restored.database,
    )
}

pub(super) async fn verify_command(
    url: &str,
    file: &std::path::Path,
    migrations: &Migrations,
) -> Result<ExitCode> {
    let report = mandrake_storage::backup::verify(url, file, migrations).await?;
    for (table, rows) in &report.tables {
        println!("{rows:>10}  {table}");
    }
    if let Some(version) = report.migrated_to {
        println!("migrated to {version}");
    }
    if !report.pending.is_empty() {
        println!(
            "newer migrations, applied by `migrate` after a restore: {}",
            report.pending.join(", ")
        );
    }
    if report.ok() {
        println!(
            "ok: {} restores, with the schema its migrations build",
            file.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    Ok(ExitCode::FAILURE)
}

fn database_name(url: &str) -> Result<String> {
    let options = mandrake_storage::admin::connect_options(url)?;
    Ok(options.get_database().unwrap_or("postgres").to_owned())
}

/// Starts the cluster if needed and makes sure the default database exists.
async fn start(cluster: &Cluster) -> Result<String> {
    blocking({
        let c = cluster.clone();
        move || c.start()
    })
    .await?;
    cluster.ensure_database(DEFAULT_DATABASE).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restored_url_is_shown_without_its_password() {
        let restored = mandrake_storage::backup::Restored {
            database: "app_restored_1".into(),
            url: "postgres://app:S3cretPass@db:5432/app_restored_1".into(),
            replaced: None,
        };
        let text = restored_message(std::path::Path::new("a.dump"), &restored);
        assert!(!text.contains("S3cretPass"), "{text}");
        assert!(
            text.contains("DATABASE_URL='postgres://app:***@db:5432/app_restored_1'"),
            "{text}"
        );
    }
}
