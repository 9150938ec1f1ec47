//! `cargo xtask bench -- --analytics`: the typed aggregates on a million
//! messages and 100,000 tool calls, each beside hand-written sqlx sending
//! the same SQL, and a page of messages filtered across a relation (one
//! statement) beside the two-call form (the parents' ids, then `is_in`).

use std::time::{Duration, Instant};

use mandrake_storage::chrono::{DateTime, Utc};
use mandrake_storage::sqlx::{self, PgPool};
use mandrake_storage::{Bucket, Db, DryRun, ListOptions, Record};
use mandrake_types::{Conversation, Message, tool_stats, usage_by_model};
use uuid::Uuid;

const CONVERSATIONS: usize = 1_000;
const MODELS: usize = 4;
const TOOLS: usize = 12;
const DAYS: i64 = 30;

/// Loads the rows with `COPY` (the tables' own indexes kept up), spread
/// over the last `DAYS` days; conversation `n` is titled `team-{n % 100}`.
async fn load(
    pool: &PgPool,
    messages: usize,
    calls: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let provider: Uuid = sqlx::query_scalar(
        "INSERT INTO providers (name, kind) VALUES ('bench', 'anthropic') RETURNING id",
    )
    .fetch_one(pool)
    .await?;
    let mut models = Vec::new();
    for m in 0..MODELS {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO models (provider_id, model_id, context_window, max_tokens) \
             VALUES ($1, $2, 200000, 8192) RETURNING id",
        )
        .bind(provider)
        .bind(format!("model-{m}"))
        .fetch_one(pool)
        .await?;
        models.push(id);
    }
    let conversations: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO conversations (title) SELECT 'team-' || (n % 100) FROM generate_series(0, $1 - 1) n RETURNING id",
    )
    .bind(CONVERSATIONS as i64)
    .fetch_all(pool)
    .await?;
    let now = Utc::now();
    let at =
        |i: usize, n: usize| now - chrono::Duration::seconds((DAYS * 86_400) * i as i64 / n as i64);
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(
            "COPY messages (id, conversation_id, role, content, model_id, tokens_in, tokens_out, created_at) FROM STDIN",
        )
        .await?;
    let mut chunk = String::new();
    for i in 0..messages {
        let conversation = conversations[i % CONVERSATIONS];
        let (role, model) = if i % 2 == 0 {
            ("user", r"\N".to_owned())
        } else {
            ("assistant", models[i % MODELS].to_string())
        };
        chunk.push_str(&format!(
            "{}\t{conversation}\t{role}\tmessage {i}\t{model}\t{}\t{}\t{}\n",
            Uuid::now_v7(),
            (i * 7) % 4000,
            (i * 13) % 900,
            at(i, messages).to_rfc3339()
        ));
        if chunk.len() > 1 << 20 {
            copy.send(std::mem::take(&mut chunk).into_bytes()).await?;
        }
    }
    copy.send(std::mem::take(&mut chunk).into_bytes()).await?;
    copy.finish().await?;
    let mut copy = conn
        .copy_in_raw(
            "COPY tool_results (id, conversation_id, server, tool_name, input, error, duration_ms, created_at) FROM STDIN",
        )
        .await?;
    for i in 0..calls {
        let error = if i % 20 == 0 { "boom" } else { r"\N" };
        chunk.push_str(&format!(
            "{}\t{}\tfiles\ttool-{}\t{{}}\t{error}\t{}\t{}\n",
            Uuid::now_v7(),
            conversations[i % CONVERSATIONS],
            i % TOOLS,
            5 + (i * 31) % 2000,
            at(i, calls).to_rfc3339()
        ));
        if chunk.len() > 1 << 20 {
            copy.send(std::mem::take(&mut chunk).into_bytes()).await?;
        }
    }
    copy.send(chunk.into_bytes()).await?;
    copy.finish().await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut *conn).await?;
    Ok(())
}

/// What `tool_stats` sends, written out.
const TOOL_STATS: &str = r#"SELECT "tool_name" AS "tool_name", count(*) AS "count", count(*) FILTER (WHERE "error" IS NOT NULL) AS "count_where", percentile_cont($1::double precision) WITHIN GROUP (ORDER BY "duration_ms") AS "p50_duration_ms", percentile_cont($2::double precision) WITHIN GROUP (ORDER BY "duration_ms") AS "p95_duration_ms" FROM "public"."tool_results" WHERE "created_at" >= $3 GROUP BY 1 ORDER BY count(*) DESC NULLS LAST, "tool_name" ASC NULLS LAST"#;

/// What `usage_by_model` sends, written out.
const USAGE_BY_MODEL: &str = r#"SELECT date_trunc('day', "created_at", 'UTC') AS "created_at", "model_id" AS "model_id", count(*) AS "count", sum("tokens_in")::bigint AS "sum_tokens_in", sum("tokens_out")::bigint AS "sum_tokens_out" FROM "public"."messages" WHERE ("created_at" >= $1 AND "model_id" IS NOT NULL) GROUP BY 1, 2 ORDER BY 1, 2"#;

/// Runs of each side left out of its median.
const WARM_UP: usize = 6;

/// p50 of `samples`.
fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Times `ours` and `theirs` alternately, `runs` times each, and prints
/// both medians and their ratio.
async fn pair<A, B, FA, FB>(
    label: &str,
    runs: usize,
    mut ours: A,
    mut theirs: B,
) -> Result<(), Box<dyn std::error::Error>>
where
    A: FnMut() -> FA,
    B: FnMut() -> FB,
    FA: std::future::Future<Output = Result<usize, Box<dyn std::error::Error>>>,
    FB: std::future::Future<Output = Result<usize, Box<dyn std::error::Error>>>,
{
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let (mut rows_a, mut rows_b) = (0, 0);
    for _ in 0..runs {
        let started = Instant::now();
        rows_a = ours().await?;
        a.push(started.elapsed());
        let started = Instant::now();
        rows_b = theirs().await?;
        b.push(started.elapsed());
    }
    assert_eq!(rows_a, rows_b, "{label}: both sides return the same rows");
    // The first runs are warm-up: after five, each connection's prepared
    // statement goes to PostgreSQL's generic plan, which for these
    // aggregates differs from the custom one by up to 1.7× (measured with
    // psql's EXECUTE): both sides are timed past that switch.
    let warm = WARM_UP.min(runs / 2);
    let (a, b) = (median(&mut a[warm..]), median(&mut b[warm..]));
    println!(
        "| {label} | {rows_a} | {:.2} ms | {:.2} ms | {:.2}× |",
        a.as_secs_f64() * 1000.0,
        b.as_secs_f64() * 1000.0,
        a.as_secs_f64() / b.as_secs_f64()
    );
    Ok(())
}

pub async fn run(
    url: &str,
    messages: usize,
    calls: usize,
    runs: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    // One connection a side, so that both prepare each statement once and
    // plan it alike (see `pair`).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let settings = mandrake_storage::Settings {
        pool_size: 1,
        min_idle: 0,
        ..Default::default()
    };
    let db = Db::connect_url(url, &settings).await?;
    let started = Instant::now();
    load(&pool, messages, calls).await?;
    println!(
        "loaded {messages} messages and {calls} tool calls over {DAYS} days in {:.1} s; median of {runs} runs each, alternating\n",
        started.elapsed().as_secs_f64()
    );
    println!("| call | rows | typed | hand-written / two calls | ratio |");
    println!("|---|---:|---:|---:|---:|");
    let since = Utc::now() - chrono::Duration::days(DAYS + 1);
    // The hand-written side sends what the typed calls send, checked here.
    let dry = DryRun::new();
    let _ = tool_stats(&dry, since).await;
    let _ = usage_by_model(&dry, since, Bucket::Day).await;
    assert_eq!(dry.statements(), [TOOL_STATS, USAGE_BY_MODEL]);
    pair(
        "tool stats (calls, errors, p50, p95 per tool)",
        runs,
        || async { Ok(tool_stats(&db, since).await?.len()) },
        || async {
            type Row = (String, i64, i64, Option<f64>, Option<f64>);
            let rows: Vec<Row> = sqlx::query_as(TOOL_STATS)
                .bind(0.5f64)
                .bind(0.95f64)
                .bind(since)
                .fetch_all(&pool)
                .await?;
            Ok(rows.len())
        },
    )
    .await?;
    pair(
        "tokens per model per day",
        runs,
        || async { Ok(usage_by_model(&db, since, Bucket::Day).await?.len()) },
        || async {
            type Row = (DateTime<Utc>, Option<Uuid>, i64, Option<i64>, Option<i64>);
            let rows: Vec<Row> = sqlx::query_as(USAGE_BY_MODEL)
                .bind(since)
                .fetch_all(&pool)
                .await?;
            Ok(rows.len())
        },
    )
    .await?;
    let newest = || {
        ListOptions::new()
            .order_by(Message::CREATED_AT.desc())
            .limit(50)
    };
    pair(
        "page of 50 messages of team-7's conversations",
        runs,
        || async {
            let team = Conversation::TITLE.eq("team-7");
            let filter = Message::CONVERSATION_ID.is_in_query(Conversation::ID, team);
            Ok(Message::repo()
                .list(&db, filter, newest())
                .await?
                .items
                .len())
        },
        || async {
            let team = Conversation::TITLE.eq("team-7");
            let all = ListOptions::new().limit(CONVERSATIONS as u32);
            let ids: Vec<Uuid> = Conversation::repo()
                .list(&db, team, all)
                .await?
                .items
                .iter()
                .map(|c| c.id)
                .collect();
            let filter = Message::CONVERSATION_ID.is_in(ids);
            Ok(Message::repo()
                .list(&db, filter, newest())
                .await?
                .items
                .len())
        },
    )
    .await?;
    Ok(())
}
