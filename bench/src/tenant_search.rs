//! Part of `cargo xtask bench -- --search`: search through a tenant handle.
//! A tenant-scoped table of messages in 10 tenants (as many rows as the
//! search benchmark's), its full-text field and trigram index served to a
//! tenant through their lookups ([`mandrake_storage::Lookup`]); each cell
//! beside the same typed call as the tables' owner, whom row security
//! leaves out (it finds every tenant's matches, not one's).

use std::time::Instant;

use mandrake_storage::sqlx::{self, Executor, PgPool};
use mandrake_storage::{Db, Filter, ListOptions, Record, SearchOptions, Settings};
use uuid::Uuid;

use crate::search::{Outcome, Pair, message_text, pair};

/// Messages of 10 tenants, searched and filtered by substring.
#[derive(Record, Clone)]
#[record(
    table = "bench_tenant_messages",
    extension = "pg_trgm",
    index(content, using = "gin", ops = "gin_trgm_ops")
)]
pub struct TenantMessage {
    pub id: Uuid,
    #[record(tenant)]
    pub workspace_id: Uuid,
    #[record(search = "english")]
    pub content: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

const TENANTS: usize = 10;

/// Makes the table, loads `rows` messages spread over the tenants with
/// `COPY`, and returns the tenants.
async fn load(
    pool: &PgPool,
    rows: usize,
    words: &[String],
) -> Result<Vec<Uuid>, Box<dyn std::error::Error>> {
    let sql = mandrake_storage::schema::ddl::create_schema(&[TenantMessage::schema()]);
    pool.execute(sqlx::AssertSqlSafe(sql)).await?;
    let tenants: Vec<Uuid> = (0..TENANTS).map(|_| Uuid::now_v7()).collect();
    // Another seed than the shared table's: the same words, other messages.
    let mut rng = crate::search::Rng(0x5851_F42D_4C95_7F2D);
    let lines = (0..rows).map(|n| {
        let text = message_text(&mut rng, words);
        format!("{}\t{}\t{text}\n", Uuid::now_v7(), tenants[n % TENANTS])
    });
    let target = "bench_tenant_messages (id, workspace_id, content)";
    crate::search::copy_in(pool, target, lines).await?;
    Ok(tenants)
}

/// The search of `query` through `db`, a page of 20 hits.
async fn search(db: &Db, query: &str) -> Outcome {
    let hits = TenantMessage::repo()
        .search(
            db,
            TenantMessage::CONTENT,
            query,
            Filter::all(),
            SearchOptions::new().limit(20),
        )
        .await?;
    Ok(hits.len())
}

/// `contains_text(text)` through `db`, a page of 20.
async fn contains(db: &Db, text: &str) -> Outcome {
    let page = TenantMessage::repo()
        .list(
            db,
            TenantMessage::CONTENT.contains_text(text),
            ListOptions::new().limit(20),
        )
        .await?;
    Ok(page.items.len())
}

/// The tenant cells: a rare word and a rare substring, through a tenant
/// handle on the application's role (first in each pair) and as the owner.
pub async fn pairs(
    url: &str,
    pool: &PgPool,
    rows: usize,
    words: &[String],
    rare: &str,
    runs: usize,
) -> Result<Vec<Pair>, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let tenants = load(pool, rows, words).await?;
    println!(
        "loaded {rows} tenant-scoped messages in {TENANTS} tenants in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let owner = Db::connect_url(url, &Settings::default()).await?;
    let mut conn = pool.acquire().await?;
    mandrake_storage::admin::ensure_app_role(&mut conn).await?;
    let options =
        mandrake_storage::admin::connect_options(url)?.username(mandrake_storage::admin::APP_ROLE);
    let app = Db::connect_options(options, &Settings::default()).await?;
    let tenant = app.tenant(tenants[TENANTS / 2]);
    let matching: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM bench_tenant_messages WHERE workspace_id = $1 \
         AND content_search @@ websearch_to_tsquery('english'::regconfig, $2)",
    )
    .bind(tenants[TENANTS / 2])
    .bind(rare)
    .fetch_one(pool)
    .await?;
    println!(
        "{rare} is in {matching} of the tenant's {} messages; the owner's calls find every \
         tenant's",
        rows / TENANTS
    );
    Ok(vec![
        pair(
            format!("tenant search, rare word ({rare}) ÷ as the owner"),
            runs,
            async || search(&tenant, rare).await,
            async || search(&owner, rare).await,
        )
        .await?,
        pair(
            format!("tenant contains_text, rare substring ({rare}) ÷ as the owner"),
            runs,
            async || contains(&tenant, rare).await,
            async || contains(&owner, rare).await,
        )
        .await?,
    ])
}
