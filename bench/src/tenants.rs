//! `cargo xtask bench -- --tenants`: what tenant isolation costs. `get` and
//! a page of `list` through a tenant handle on a tenant-scoped table, side
//! by side with the same calls on the same table without row security, both
//! as the application's role (a superuser would skip row security), 1 and
//! 8 tasks, interleaved in rounds.

use std::time::{Duration, Instant};

use mandrake_storage::sqlx::{self, ConnectOptions, Executor};
use mandrake_storage::{Db, Filter, ListOptions, Record, Settings};
use uuid::Uuid;

/// A tenant-scoped table.
#[derive(Record, Clone)]
#[record(table = "bench_scoped")]
pub struct Scoped {
    pub id: Uuid,
    #[record(tenant)]
    pub workspace_id: Uuid,
    pub body: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The same table without row security.
#[derive(Record, Clone)]
#[record(table = "bench_plain")]
pub struct Plain {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub body: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The bench's own tables, left out of the checks of Mandrake's schema.
pub fn is_bench_table(name: &str) -> bool {
    name.starts_with("bench_")
}

const ROWS: usize = 10_000;
const CALLS: usize = 200;
const ROUNDS: usize = 10;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Get,
    Page,
}

/// One call of `op` on either table.
async fn call(db: &Db, scoped: bool, op: Op, id: Uuid) {
    match (op, scoped) {
        (Op::Get, true) => drop(Scoped::repo().get(db, id).await.unwrap()),
        (Op::Get, false) => drop(Plain::repo().get(db, id).await.unwrap()),
        (Op::Page, true) => {
            let p = Scoped::repo()
                .list(db, Filter::all(), ListOptions::new().limit(50))
                .await
                .unwrap();
            assert_eq!(p.items.len(), 50);
        }
        (Op::Page, false) => {
            let p = Plain::repo()
                .list(db, Filter::all(), ListOptions::new().limit(50))
                .await
                .unwrap();
            assert_eq!(p.items.len(), 50);
        }
    }
}

/// `tasks` tasks, each alternating a call without row security and one
/// through the tenant handle, `CALLS` of each; the time each side spent.
async fn side_by_side(
    plain: &Db,
    tenant: &Db,
    op: Op,
    ids: (&[Uuid], &[Uuid]),
    tasks: usize,
) -> (Duration, Duration) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (plain, tenant) = (plain.clone(), tenant.clone());
        let (plain_ids, ids) = (ids.0.to_vec(), ids.1.to_vec());
        handles.push(tokio::spawn(async move {
            let (mut without, mut with) = (Duration::ZERO, Duration::ZERO);
            for n in 0..CALLS {
                let k = (t * 7919 + n * 104_729) % ids.len();
                // Alternate who goes first, so warm caches favour neither.
                for scoped in [n % 2 == 0, n % 2 == 1] {
                    let started = Instant::now();
                    if scoped {
                        call(&tenant, true, op, ids[k]).await;
                        with += started.elapsed();
                    } else {
                        call(&plain, false, op, plain_ids[k]).await;
                        without += started.elapsed();
                    }
                }
            }
            (without, with)
        }));
    }
    let (mut without, mut with) = (Duration::ZERO, Duration::ZERO);
    for h in handles {
        let (a, b) = h.await.unwrap();
        without += a;
        with += b;
    }
    (without, with)
}

/// Runs the tenant cells on the (migrated) database at `url` as its owner,
/// and prints the report.
pub async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let owner = Db::connect_url(url, &Settings::default()).await?;
    let sql = mandrake_storage::schema::ddl::create_schema(&[Scoped::schema(), Plain::schema()]);
    owner.execute(sqlx::AssertSqlSafe(sql)).await?;
    let workspace = Uuid::now_v7();
    let other = Uuid::now_v7();
    // Two tenants' rows in each table: the scoped reads must pass the policy.
    for table in ["bench_scoped", "bench_plain"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (id, workspace_id, body) \
             SELECT gen_random_uuid(), CASE WHEN i % 2 = 0 THEN '{workspace}'::uuid ELSE '{other}'::uuid END, \
                    'note ' || i FROM generate_series(1, {}) AS i; ANALYZE {table}",
            2 * ROWS
        )))
        .execute(&owner)
        .await?;
    }
    let mut conn = mandrake_storage::connect_one(url).await?;
    mandrake_storage::admin::ensure_app_role(&mut conn).await?;
    let options =
        mandrake_storage::admin::connect_options(url)?.username(mandrake_storage::admin::APP_ROLE);
    let app = Db::connect_options(options.clone(), &Settings::default()).await?;
    let tenant = Db::connect_options(options.clone(), &Settings::default())
        .await?
        .tenant(workspace);
    let ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM bench_scoped WHERE workspace_id = '{workspace}'"
    )))
    .fetch_all(&owner)
    .await?;
    let plain_ids: Vec<Uuid> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM bench_plain WHERE workspace_id = '{workspace}'"
    )))
    .fetch_all(&owner)
    .await?;
    println!(
        "as {} ({}), {ROWS} rows of the tenant among {} per table, {CALLS} calls per task per turn, {ROUNDS} rounds\n",
        mandrake_storage::admin::APP_ROLE,
        options.to_url_lossy().scheme(),
        2 * ROWS
    );
    println!(
        "| call | tasks | without row security (calls/s) | tenant handle (calls/s) | tenant ÷ without |"
    );
    println!("|---|---:|---:|---:|---:|");
    for tasks in [1usize, 8] {
        for op in [Op::Get, Op::Page] {
            let (mut plain, mut scoped) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..ROUNDS {
                let (a, b) = side_by_side(&app, &tenant, op, (&plain_ids, &ids), tasks).await;
                plain += a;
                scoped += b;
            }
            // Each task's time per call: calls/s per task, times the tasks.
            let rate =
                |d: Duration| (ROUNDS * tasks * CALLS) as f64 / d.as_secs_f64() * tasks as f64;
            println!(
                "| {op:?} | {tasks} | {:.0} | {:.0} | {:.2}× |",
                rate(plain),
                rate(scoped),
                rate(scoped) / rate(plain)
            );
        }
    }
    Ok(())
}
