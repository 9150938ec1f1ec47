//! `cargo xtask bench`: our repository side by side with hand-written sqlx
//! (the same SQL: the zero-overhead line), tokio-postgres with prepared
//! statements (the driver limit), SeaORM 2 (what users pick instead), and
//! `COPY FROM STDIN` for bulk loads. Every contender does the same work on
//! the same server in the same run, interleaved in rounds, so machine noise
//! hits them all alike; compare the ratios, not the absolute numbers.

mod analytics;
mod contenders;
mod feed;
mod relations;
mod report;
mod search;
mod tenant_search;
mod tenants;

use std::str::FromStr;
use std::time::{Duration, Instant};

use clap::Parser;
use mandrake_storage::migrate::{MigrateOptions, Migrations, migrate};
use mandrake_storage::sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use mandrake_storage::sqlx::{self, ConnectOptions, Connection, Executor, PgPool};
use mandrake_storage::{Db, Record, Settings};
use mandrake_types::{Conversation, Message, NewConversation, NewMessage, Role};
use uuid::Uuid;

use contenders::{Lib, Op};
use report::{Sample, Table};

#[derive(Debug, Parser)]
#[command(about = "Benchmark mandrake-storage against its peers")]
struct Args {
    /// A shorter run (under two minutes).
    #[arg(long)]
    quick: bool,
    /// Run only operations whose label contains this text (e.g. "get").
    #[arg(long, value_name = "TEXT")]
    only: Option<String>,
    /// Rounds to run (default: 12 with --quick, else 48).
    #[arg(long)]
    rounds: Option<usize>,
    /// Also write every cell (operation, tasks, contender, ops/s, p50, p99)
    /// to this file as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Run the search benchmark instead: ranked full-text and substring
    /// search on a bulk-loaded messages table.
    #[arg(long)]
    search: bool,
    /// Messages the search benchmark loads.
    #[arg(long, default_value_t = 1_000_000)]
    search_rows: usize,
    /// Runs of each search query (p50/p99 over them).
    #[arg(long, default_value_t = 50)]
    search_runs: usize,
    /// Run the tenant benchmark instead: get and page through a tenant
    /// handle against the same calls without row security.
    #[arg(long)]
    tenants: bool,
    /// Run the relations benchmark instead: a typed join page and a tree
    /// walk beside the same statements by hand.
    #[arg(long)]
    relations: bool,
    /// Run the analytics benchmark instead: the typed aggregates beside
    /// hand-written sqlx, and a relation-filter page beside two calls.
    #[arg(long)]
    analytics: bool,
    /// Run the change-feed benchmark instead: writes with and without a
    /// subscriber, and the delay from commit to event.
    #[arg(long)]
    feed: bool,
    /// Rounds of the change-feed benchmark's write cells.
    #[arg(long, default_value_t = 6)]
    feed_rounds: usize,
    /// Messages the analytics benchmark loads.
    #[arg(long, default_value_t = 1_000_000)]
    analytics_messages: usize,
    /// Tool calls the analytics benchmark loads.
    #[arg(long, default_value_t = 100_000)]
    analytics_calls: usize,
    /// Runs of each analytics call (the median is reported).
    #[arg(long, default_value_t = 20)]
    analytics_runs: usize,
    /// Internal: measure one contender's peak memory in this process.
    #[arg(long, hide = true, value_name = "URL")]
    memory_of: Option<String>,
    #[arg(long, hide = true, requires = "memory_of")]
    lib: Option<String>,
    #[arg(long, hide = true, default_value_t = 100_000)]
    rows: usize,
}

/// How much work each measurement does.
struct Scale {
    /// Each round gives every contender a short turn at every operation, so
    /// the turns interleave finely and drift in machine load hits all alike.
    rounds: usize,
    /// Calls of a single-row operation per task in one turn.
    single: usize,
    /// Calls of `create_many` of 1,000 rows per task in one turn.
    batches: usize,
    /// Rows of the large bulk insert (one call per turn).
    bulk_rows: usize,
    /// The large bulk insert takes a turn every this many rounds.
    bulk_every: usize,
    /// Rows written one `create` at a time for the loop baseline.
    loop_rows: usize,
}

/// The pool size every pooled contender gets: sqlx's, SeaORM's and our
/// default, given to deadpool-postgres too.
const POOL_SIZE: usize = 10;

/// Everything one mode (1 task or 8, on each library's default pool) uses.
pub struct Env {
    pub pool: PgPool,
    pub pg_pool: deadpool_postgres::Pool,
    pub db: Db,
    /// A second `Db` for hand-written sqlx ("sqlx, our pool"): SQL the
    /// caller writes has its connection reset before the next use, a cost
    /// that line pays and must not leave on the typed calls' connections.
    pub raw_db: Db,
    pub sea: sea_orm::DatabaseConnection,
    pub pg: Vec<tokio_postgres::Client>,
    pub pg_statements: Vec<contenders::PgStatements>,
    /// Messages that get and update pick from.
    pub ids: Vec<Uuid>,
    /// The conversation whose messages are paged.
    pub paged: Uuid,
    /// Before its messages: the filtered page's `created_at > since`.
    pub paged_since: chrono::DateTime<chrono::Utc>,
    pub tasks: usize,
    /// Our repository through PgBouncer in transaction mode, when the
    /// embedded cluster is used and pgbouncer is installed.
    pub pgbouncer_db: Option<Db>,
}

impl Env {
    /// The `Db` that `lib` (ours, directly or through PgBouncer) runs on.
    pub fn ours(&self, lib: Lib) -> &Db {
        match (lib, &self.pgbouncer_db) {
            (Lib::OursPgBouncer, Some(db)) => db,
            _ => &self.db,
        }
    }
}

/// A PgBouncer in front of the embedded cluster, for the cost of the mode;
/// `None` (said on stderr) on `DATABASE_URL` or without pgbouncer.
fn start_pgbouncer() -> Option<std::path::PathBuf> {
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!("note: DATABASE_URL is set: no PgBouncer column");
        return None;
    }
    let cluster = mandrake_storage::cluster::Cluster::default_for_workspace().ok()?;
    match mandrake_storage::testing::start_pgbouncer(&cluster) {
        Ok(dir) => Some(dir),
        Err(err) => {
            eprintln!("note: no PgBouncer column: {err}");
            None
        }
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(err) = run(args).await {
        eprintln!("error: {err}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let (Some(url), Some(lib)) = (&args.memory_of, &args.lib) {
        let bytes = contenders::peak_memory_here(url, lib, args.rows).await?;
        println!("{bytes}");
        return Ok(());
    }
    let scale = if args.quick {
        Scale {
            rounds: 12,
            single: 50,
            batches: 1,
            bulk_rows: 100_000,
            bulk_every: 6,
            loop_rows: 1_000,
        }
    } else {
        Scale {
            rounds: 48,
            single: 50,
            batches: 1,
            bulk_rows: 100_000,
            bulk_every: 8,
            loop_rows: 3_000,
        }
    };
    let scale = Scale {
        rounds: args.rounds.unwrap_or(scale.rounds),
        ..scale
    };
    let started = Instant::now();
    let server = Settings::from_env()?.resolve_url().await?;
    let name = format!("mandrake_bench_{}", std::process::id());
    let admin = PgConnectOptions::from_str(&server)?;
    let mut conn = sqlx::PgConnection::connect_with(&admin).await?;
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    let url = admin.clone().database(&name).to_url_lossy().to_string();
    let result = if args.search {
        search_bench(&url, args.search_rows, args.search_runs).await
    } else if args.analytics {
        analytics_bench(&url, &args).await
    } else if args.feed {
        feed_bench(&url, args.feed_rounds).await
    } else if args.tenants {
        tenants::run(&url).await.map(|()| None)
    } else if args.relations {
        relations::run(&url).await.map(|()| None)
    } else {
        bench(&url, &scale, args.only.as_deref()).await
    };
    drop(conn);
    let mut conn = sqlx::PgConnection::connect_with(&admin).await?;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .await?;
    let Some(mut table) = result? else {
        return Ok(());
    };
    table
        .timings
        .push(("whole benchmark".into(), started.elapsed()));
    println!("{}", table.render(args.quick));
    if let Some(path) = &args.json {
        std::fs::write(path, table.json())?;
        println!("every cell written to {}", path.display());
    }
    Ok(())
}

/// The search benchmark on the migrated database at `url` (it prints its
/// own report).
async fn search_bench(
    url: &str,
    rows: usize,
    runs: usize,
) -> Result<Option<Table>, Box<dyn std::error::Error>> {
    let root = mandrake_storage::cluster::workspace_root()?;
    let migrations = Migrations::from_dir(root.join("migrations"))?;
    migrate(url, &migrations, &MigrateOptions::default()).await?;
    search::run(url, rows, runs).await?;
    Ok(None)
}

/// The change-feed benchmark on the migrated database at `url` (it prints
/// its own report).
async fn feed_bench(url: &str, rounds: usize) -> Result<Option<Table>, Box<dyn std::error::Error>> {
    let root = mandrake_storage::cluster::workspace_root()?;
    let migrations = Migrations::from_dir(root.join("migrations"))?;
    migrate(url, &migrations, &MigrateOptions::default()).await?;
    feed::run(url, rounds).await.map_err(|e| e.to_string())?;
    Ok(None)
}

/// The analytics benchmark on the migrated database at `url` (it prints
/// its own report).
async fn analytics_bench(
    url: &str,
    args: &Args,
) -> Result<Option<Table>, Box<dyn std::error::Error>> {
    let root = mandrake_storage::cluster::workspace_root()?;
    let migrations = Migrations::from_dir(root.join("migrations"))?;
    migrate(url, &migrations, &MigrateOptions::default()).await?;
    analytics::run(
        url,
        args.analytics_messages,
        args.analytics_calls,
        args.analytics_runs,
    )
    .await?;
    Ok(None)
}

async fn bench(
    url: &str,
    scale: &Scale,
    only: Option<&str>,
) -> Result<Option<Table>, Box<dyn std::error::Error>> {
    let root = mandrake_storage::cluster::workspace_root()?;
    let migrations = Migrations::from_dir(root.join("migrations"))?;
    migrate(url, &migrations, &MigrateOptions::default()).await?;
    let mut table = Table::default();
    let pgbouncer = start_pgbouncer();

    for tasks in [1usize, 8] {
        let env = setup(url, tasks, pgbouncer.as_deref()).await?;
        let mut ops = vec![
            Op::CreateOne,
            Op::Get,
            Op::Page,
            Op::FilteredPage,
            Op::Update,
            Op::Delete,
            Op::CreateMany1k,
        ];
        if tasks == 1 {
            ops.push(Op::CreateMany100k);
        }
        ops.retain(|op| only.is_none_or(|text| op.label().contains(text)));
        for round in 0..scale.rounds {
            for op in &ops {
                if *op == Op::CreateMany100k && round % scale.bulk_every != 0 {
                    continue;
                }
                let mut libs = op.contenders();
                libs.retain(|lib| *lib != Lib::OursPgBouncer || env.pgbouncer_db.is_some());
                // Rotate who goes first, so warm caches favour no one.
                for k in 0..libs.len() {
                    let lib = libs[(k + round) % libs.len()];
                    let iterations = match op {
                        Op::CreateMany100k => 1,
                        Op::CreateMany1k => scale.batches,
                        _ => scale.single,
                    };
                    let rows = match op {
                        Op::CreateMany100k => scale.bulk_rows,
                        Op::CreateMany1k => 1_000,
                        _ => 1,
                    };
                    let sample = measure(&env, lib, *op, iterations, rows).await?;
                    table.add(*op, tasks, lib, sample);
                }
            }
        }
        if tasks == 1 && only.is_none_or(|text| "change feed".contains(text)) {
            table.feed = feed_delays(&env, scale.loop_rows / 5).await?;
        }
        if tasks == 1 && only.is_none() {
            table.loop_rows_per_sec = Some(loop_baseline(&env, scale.loop_rows).await?);
            table.memory = peak_memory(url, scale.bulk_rows)?;
        }
        env.pool.close().await;
    }
    if only.is_none() {
        table.timings.extend(migration_timings(url).await?);
    }
    Ok(Some(table))
}

/// Every library with the pool it gives a user by default (10 connections
/// for each), one raw tokio-postgres client per task, and the rows to read.
async fn setup(
    url: &str,
    tasks: usize,
    pgbouncer: Option<&std::path::Path>,
) -> Result<Env, Box<dyn std::error::Error>> {
    let options = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new().connect_with(options.clone()).await?;
    let db = Db::connect_url(url, &Settings::default()).await?;
    let raw_db = Db::connect_url(url, &Settings::default()).await?;
    let pgbouncer_db = match pgbouncer {
        Some(dir) => {
            let through = options
                .clone()
                .socket(dir)
                .port(mandrake_storage::testing::PGBOUNCER_PORT);
            let settings = Settings {
                pgbouncer: true,
                ..Settings::default()
            };
            Some(Db::connect_options(through, &settings).await?)
        }
        None => None,
    };
    let sea = sea_orm::Database::connect(url).await?;
    let pg_pool = contenders::tokio_postgres_pool(&options, POOL_SIZE)?;
    let mut pg = Vec::new();
    let mut pg_statements = Vec::new();
    for _ in 0..tasks {
        let client = contenders::connect_tokio_postgres(&options).await?;
        pg_statements.push(contenders::PgStatements::prepare(&client).await?);
        pg.push(client);
    }
    let paged_since = chrono::Utc::now() - chrono::Duration::seconds(1);
    let paged = Conversation::repo()
        .create(
            &db,
            NewConversation {
                title: Some("paged".into()),
                metadata: sqlx::types::Json(serde_json::json!({})),
            },
        )
        .await?
        .id;
    let rows: Vec<NewMessage> = (0..10_000)
        .map(|n| NewMessage {
            conversation_id: paged,
            role: Role::User,
            content: format!("message {n}"),
            model_id: None,
            tokens_in: 0,
            tokens_out: 0,
            parent_id: None,
        })
        .collect();
    let ids = Message::repo()
        .create_many(&db, rows)
        .await?
        .into_iter()
        .map(|m| m.id)
        .collect();
    sqlx::query("ANALYZE").execute(&pool).await?;
    let env = Env {
        pool,
        pg_pool,
        db,
        raw_db,
        sea,
        pg,
        pg_statements,
        ids,
        paged,
        paged_since,
        tasks,
        pgbouncer_db,
    };
    contenders::check_same_sql(&env).await?;
    Ok(env)
}

/// Runs `iterations` of `op` with `lib`, split over the mode's tasks.
async fn measure(
    env: &Env,
    lib: Lib,
    op: Op,
    iterations: usize,
    rows: usize,
) -> Result<Sample, Box<dyn std::error::Error>> {
    let prepared = contenders::prepare(env, lib, op, iterations * env.tasks.max(1), rows).await?;
    let started = Instant::now();
    let latencies = contenders::run(env, lib, op, prepared, iterations, rows).await?;
    let wall = started.elapsed();
    contenders::clean_up(env, op).await?;
    Ok(Sample {
        ops: latencies.len(),
        rows_per_op: rows,
        wall,
        latencies,
    })
}

/// Peak memory of each contender's bulk insert, each in a fresh process of
/// its own so that no allocator state carries over.
fn peak_memory(url: &str, rows: usize) -> Result<Vec<(String, u64)>, Box<dyn std::error::Error>> {
    let mut out = Vec::new();
    for lib in ["ours", "sqlx", "tokio-postgres", "sea-orm", "copy"] {
        let child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--memory-of",
                url,
                "--lib",
                lib,
                "--rows",
                &rows.to_string(),
            ])
            .output()?;
        if !child.status.success() {
            return Err(format!(
                "memory run of {lib} failed: {}",
                String::from_utf8_lossy(&child.stderr)
            )
            .into());
        }
        out.push((
            lib.to_owned(),
            String::from_utf8_lossy(&child.stdout).trim().parse()?,
        ));
    }
    Ok(out)
}

/// `create` in a loop, one row at a time: what `create_many` replaces.
async fn loop_baseline(env: &Env, rows: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let conversation = contenders::fresh_conversation(env).await?;
    let started = Instant::now();
    for n in 0..rows {
        Message::repo()
            .create(
                &env.db,
                NewMessage {
                    conversation_id: conversation,
                    role: Role::User,
                    content: format!("row {n}"),
                    model_id: None,
                    tokens_in: 0,
                    tokens_out: 0,
                    parent_id: None,
                },
            )
            .await?;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    Conversation::repo().delete(&env.db, conversation).await?;
    Ok(rate)
}

/// The delay from a committed insert to its event in a subscriber: the
/// subscriber stamps each arrival, the writer each acknowledged commit; an
/// event that arrives before the acknowledgement counts as no delay.
async fn feed_delays(env: &Env, rows: usize) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    use futures_util::StreamExt;
    use mandrake_storage::Change;
    let conversation = contenders::fresh_conversation(env).await?;
    let mut changes =
        Message::subscribe(&env.db, Message::CONVERSATION_ID.eq(conversation)).await?;
    let subscriber = tokio::spawn(async move {
        let mut arrivals = std::collections::HashMap::new();
        while arrivals.len() < rows {
            match changes.next().await {
                Some(Ok(Change::Inserted(m))) => {
                    arrivals.insert(m.id, Instant::now());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(arrivals)
    });
    let mut commits = Vec::with_capacity(rows);
    for n in 0..rows {
        let m = Message::repo()
            .create(
                &env.db,
                NewMessage {
                    conversation_id: conversation,
                    role: Role::User,
                    content: format!("live {n}"),
                    model_id: None,
                    tokens_in: 0,
                    tokens_out: 0,
                    parent_id: None,
                },
            )
            .await?;
        commits.push((m.id, Instant::now()));
    }
    let arrivals = subscriber.await??;
    Conversation::repo().delete(&env.db, conversation).await?;
    Ok(commits
        .into_iter()
        .map(|(id, acked)| arrivals[&id].saturating_duration_since(acked))
        .collect())
}

/// `check` and `new-migration` on the six tables, as the xtask runs them
/// (in process: without cargo's own start-up).
async fn migration_timings(
    url: &str,
) -> Result<Vec<(String, Duration)>, Box<dyn std::error::Error>> {
    use mandrake_cli::scaffold::{check, new_migration};
    let mut tables = mandrake_types::tables();
    tables.retain(|t| !tenants::is_bench_table(&t.name));
    let root = mandrake_storage::cluster::workspace_root()?;
    let migrations = Migrations::from_dir(root.join("migrations"))?;
    let mut out = Vec::new();
    let started = Instant::now();
    let renames = mandrake_storage::registered_renames();
    let plan = check(url, &migrations, &tables, &renames).await?;
    out.push((
        "check (six tables, 2 scratch databases)".into(),
        started.elapsed(),
    ));
    assert!(plan.is_empty(), "migrations and types disagree");
    let dir =
        std::env::temp_dir().join(format!("mandrake-bench-migrations-{}", std::process::id()));
    let started = Instant::now();
    let made = new_migration(url, &dir, &tables, &renames, "initial", false).await?;
    out.push((
        "new-migration (six tables from nothing, 3 scratch databases, verified)".into(),
        started.elapsed(),
    ));
    assert!(!made.files.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}
