//! The developer's loop at scale: `check` and `new-migration` through the
//! command line's own code (`mandrake_cli::run`, what `cargo xtask` runs,
//! less the process start), on an app of N generated record types. Each
//! table has a name, a rank with a default and an index, a note, a key to
//! the table before it, and the timestamps with their trigger.
//!
//! Each run changes the types (a nullable column on one table), then times:
//! `check` after the change, `new-migration` for it, `check` with nothing
//! changed, `new-migration` with nothing to do, and `check --no-cache` (the
//! cold run). Between runs it applies the new migration to the app's
//! database, as a developer does. Prints the median of each step.
//!
//! ```sh
//! cargo run --release -p mandrake-bench --example tools_loop -- "$(cargo xtask db url)" 100 5
//! ```

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mandrake_cli::Cli;
use mandrake_storage::schema::{ColumnDef, OnDelete, TableSchema};

type BoxError = Box<dyn std::error::Error>;

/// `n` tables, with a nullable `extra_<r>` column on table `r % n` for each
/// earlier change `r`.
fn tables(n: usize, changes: usize) -> Vec<TableSchema> {
    (0..n)
        .map(|i| {
            let name = format!("things_{i:03}");
            let mut t = TableSchema::new(&name)
                .with_column(ColumnDef::new("id", "uuid"))
                .with_column(ColumnDef::new("name", "text"))
                .with_column(ColumnDef::new("rank", "integer").default("0"))
                .with_column(ColumnDef::new("note", "text").nullable(true));
            if i > 0 {
                t = t.with_column(ColumnDef::new("parent_id", "uuid").nullable(true));
            }
            for r in (0..changes).filter(|r| r % n == i) {
                t = t.with_column(ColumnDef::new(&format!("extra_{r}"), "text").nullable(true));
            }
            t = t
                .with_column(ColumnDef::new("created_at", "timestamptz").default("now()"))
                .with_column(ColumnDef::new("updated_at", "timestamptz").default("now()"))
                .with_primary_key(&["id"])
                .with_index(&["rank"])
                .with_timestamp_trigger();
            if i > 0 {
                let parent = format!("things_{:03}", i - 1);
                t = t.with_foreign_key("parent_id", &parent, OnDelete::SetNull);
            }
            t
        })
        .collect()
}

/// Runs `cargo xtask <args>` in-process against `url` and `dir`; its time.
async fn time(url: &str, dir: &Path, tables: &[TableSchema], args: &[&str]) -> Duration {
    let dir = dir.to_string_lossy();
    let mut argv = vec!["xtask", "--database-url", url, "--migrations", &dir];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).expect("valid arguments");
    let tables: Vec<&TableSchema> = tables.iter().collect();
    let started = Instant::now();
    let code = mandrake_cli::run(cli, &tables).await;
    let took = started.elapsed();
    match code {
        Ok(code) if code == ExitCode::SUCCESS || code == ExitCode::from(1) => took,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn median(mut times: Vec<Duration>) -> String {
    times.sort();
    let mid = times[times.len() / 2];
    format!("{:.0} ms", mid.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args.first().ok_or("usage: tools_loop URL [TYPES] [RUNS]")?;
    let n: usize = args.get(1).map_or(Ok(100), |a| a.parse())?;
    let runs: usize = args.get(2).map_or(Ok(5), |a| a.parse())?;
    // The app's own database, and a migrations folder of its own.
    let app = format!("tools_loop_{}", std::process::id());
    let mut admin = mandrake_storage::admin::server_connection(server).await?;
    mandrake_storage::admin::create_database_from(&mut admin, &app, None).await?;
    let url = mandrake_storage::url::with_database(server, &app);
    // A workspace of its own (a `Cargo.lock` marks it): its cache, and no
    // `docs/SCHEMA.md` of ours to redraw.
    let root = std::env::temp_dir().join(&app);
    let dir = root.join("migrations");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(root.join("Cargo.lock"), "")?;
    std::env::set_current_dir(&root)?;

    let first = time(&url, &dir, &tables(n, 0), &["new-migration", "initial"]).await;
    time(&url, &dir, &tables(n, 0), &["migrate"]).await;
    let mut steps: [(&str, Vec<Duration>); 5] = [
        ("check after one change to the types", Vec::new()),
        ("new-migration with one change", Vec::new()),
        ("check with nothing changed", Vec::new()),
        ("new-migration with nothing to do", Vec::new()),
        ("check --no-cache (cold)", Vec::new()),
    ];
    for run in 1..=runs {
        let types = tables(n, run);
        let name = format!("change_{run}");
        steps[0].1.push(time(&url, &dir, &types, &["check"]).await);
        steps[1]
            .1
            .push(time(&url, &dir, &types, &["new-migration", &name]).await);
        time(&url, &dir, &types, &["migrate"]).await;
        steps[2].1.push(time(&url, &dir, &types, &["check"]).await);
        steps[3]
            .1
            .push(time(&url, &dir, &types, &["new-migration", "noop"]).await);
        steps[4]
            .1
            .push(time(&url, &dir, &types, &["check", "--no-cache"]).await);
    }
    eprintln!("\n{n} record types, median of {runs} runs:");
    eprintln!(
        "  first new-migration (cold, writes {n} tables): {:.0} ms",
        first.as_secs_f64() * 1000.0
    );
    for (label, times) in steps {
        eprintln!("  {label}: {}", median(times));
    }
    mandrake_storage::admin::drop_database(&mut admin, &app).await;
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
