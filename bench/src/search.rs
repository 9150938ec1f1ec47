//! `cargo xtask bench -- --search`: search on a million messages. Ranked
//! full-text search (a rare word, a common word, a two-word phrase) and
//! substring search (`contains_text` with the trigram index, and without it
//! for scale), each beside hand-written SQL that the same plan serves; then
//! the disk each index takes and what the search column and indexes cost a
//! bulk write.

use std::time::{Duration, Instant};

use mandrake_storage::sqlx::{self, Connection, PgPool, Row};
use mandrake_storage::{Db, ListOptions, Record};
use mandrake_types::{Message, search_messages};
use uuid::Uuid;

/// Vocabulary size: a few thousand words, drawn with a Zipf-like spread.
const VOCABULARY: usize = 4_000;
/// Words per message.
const WORDS: usize = 12;

/// A deterministic generator (xorshift64*).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform float in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word rank in 0..n with P(r) ∝ 1/(r+1) (log-uniform: Zipf, s = 1).
    fn zipf(&mut self, n: usize) -> usize {
        ((n as f64).powf(self.unit()) as usize - 1).min(n - 1)
    }
}

/// Pronounceable made-up words (`kovaru`), none an English stop word, all
/// distinct: the English stemmer leaves their stems apart too.
fn vocabulary() -> Vec<String> {
    const ONSETS: [&str; 16] = [
        "b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "sh", "tr",
    ];
    const VOWELS: [&str; 5] = ["a", "e", "i", "o", "u"];
    let syllables: Vec<String> = ONSETS
        .iter()
        .flat_map(|o| VOWELS.iter().map(move |v| format!("{o}{v}")))
        .collect();
    let mut words = Vec::with_capacity(VOCABULARY);
    'out: for a in &syllables {
        for b in &syllables {
            for c in &syllables {
                words.push(format!("{a}{b}{c}x"));
                if words.len() == VOCABULARY {
                    break 'out;
                }
            }
        }
    }
    words
}

pub(crate) fn message_text(rng: &mut Rng, words: &[String]) -> String {
    (0..WORDS)
        .map(|_| words[rng.zipf(words.len())].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Bulk-loads `rows` messages in one conversation with `COPY`: the tables'
/// own generated column and indexes are kept up as they would be.
async fn load(
    pool: &PgPool,
    rows: usize,
    words: &[String],
) -> Result<Duration, Box<dyn std::error::Error>> {
    let conversation: Uuid =
        sqlx::query_scalar("INSERT INTO conversations (title) VALUES ('search') RETURNING id")
            .fetch_one(pool)
            .await?;
    let started = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let lines = (0..rows).map(|_| {
        let text = message_text(&mut rng, words);
        format!("{}\t{conversation}\tuser\t{text}\n", Uuid::now_v7())
    });
    copy_in(pool, "messages (id, conversation_id, role, content)", lines).await?;
    Ok(started.elapsed())
}

/// `COPY <target> FROM STDIN` of `lines` (text format, each ending in a
/// newline), sent a megabyte at a time; then `VACUUM ANALYZE` as autovacuum
/// would before anyone searches: GIN indexes take new rows into a pending
/// list that every search would otherwise scan.
pub(crate) async fn copy_in(
    pool: &PgPool,
    target: &str,
    lines: impl Iterator<Item = String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(&format!("COPY {target} FROM STDIN"))
        .await?;
    let mut chunk = String::new();
    for line in lines {
        chunk.push_str(&line);
        if chunk.len() > 1 << 20 {
            copy.send(std::mem::take(&mut chunk).into_bytes()).await?;
        }
    }
    copy.send(chunk.into_bytes()).await?;
    copy.finish().await?;
    let table = target.split(' ').next().unwrap_or(target);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// p50 and p99 of `samples`.
fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The hand-written form of `search_messages(db, q, None, 20)`: the SQL a
/// reader would write for ranked hits with a snippet, through the same
/// index.
const HAND_SEARCH: &str = "SELECT id, conversation_id, role, content, created_at, updated_at, rank, \
     ts_headline('english'::regconfig, content, q, 'MaxWords=35, MinWords=15, MaxFragments=1') \
     FROM (SELECT m.id, m.conversation_id, m.role, m.content, m.created_at, m.updated_at, \
     ts_rank(content_search, q) AS rank, q FROM messages m, \
     websearch_to_tsquery('english'::regconfig, $1) AS q \
     WHERE content_search @@ q ORDER BY rank DESC, created_at DESC, id DESC LIMIT 20) AS hits \
     ORDER BY rank DESC, created_at DESC, id DESC";

/// The hand-written form of `list(CONTENT.contains_text(s), limit 20)`:
/// a list's default order is `created_at, id`, and the limit is bound, one
/// more than asked (it tells whether a page follows).
const HAND_CONTAINS: &str = "SELECT id, conversation_id, role, content, created_at, updated_at \
     FROM messages WHERE content ILIKE $1 ORDER BY created_at, id LIMIT $2";

/// One measured pair: ours and the hand-written SQL, interleaved.
pub(crate) struct Pair {
    label: String,
    ours: Vec<Duration>,
    hand: Vec<Duration>,
    hits: usize,
}

pub(crate) type Outcome = Result<usize, Box<dyn std::error::Error>>;

/// `runs` times ours then the hand-written SQL, each timed; the hits are
/// ours of the last run.
pub(crate) async fn pair(
    label: String,
    runs: usize,
    ours: impl AsyncFn() -> Outcome,
    hand: impl AsyncFn() -> Outcome,
) -> Result<Pair, Box<dyn std::error::Error>> {
    let mut pair = Pair {
        label,
        ours: Vec::new(),
        hand: Vec::new(),
        hits: 0,
    };
    for _ in 0..runs {
        let started = Instant::now();
        pair.hits = ours().await?;
        pair.ours.push(started.elapsed());
        let started = Instant::now();
        hand().await?;
        pair.hand.push(started.elapsed());
    }
    Ok(pair)
}

/// `search_messages` for `query` beside [`HAND_SEARCH`].
async fn search_pair(
    db: &Db,
    pool: &PgPool,
    label: String,
    query: &str,
    runs: usize,
) -> Result<Pair, Box<dyn std::error::Error>> {
    pair(
        label,
        runs,
        async || Ok(search_messages(db, query, None, 20).await?.len()),
        async || {
            let rows = sqlx::query(HAND_SEARCH).bind(query).fetch_all(pool).await?;
            Ok(rows.len())
        },
    )
    .await
}

/// `contains_text(text)`, a page of 20, beside [`HAND_CONTAINS`].
async fn contains_pair(
    db: &Db,
    pool: &PgPool,
    label: String,
    text: &str,
    runs: usize,
) -> Result<Pair, Box<dyn std::error::Error>> {
    pair(
        label,
        runs,
        async || {
            let filter = Message::CONTENT.contains_text(text);
            let page = Message::repo()
                .list(db, filter, ListOptions::new().limit(20))
                .await?;
            Ok(page.items.len())
        },
        async || {
            let rows = sqlx::query(HAND_CONTAINS)
                .bind(format!("%{text}%"))
                .bind(21i64)
                .fetch_all(pool)
                .await?;
            Ok(rows.len())
        },
    )
    .await
}

/// `contains_text` with the trigram index dropped inside a transaction that
/// is rolled back: the same table, as if the index had never been made.
async fn contains_unindexed(
    pool: &PgPool,
    text: &str,
    runs: usize,
) -> Result<Pair, Box<dyn std::error::Error>> {
    let trigram: String = sqlx::query_scalar(
        "SELECT indexrelid::regclass::text FROM pg_index \
         WHERE indrelid = 'messages'::regclass AND pg_get_indexdef(indexrelid) LIKE '%gin_trgm_ops%'",
    )
    .fetch_one(pool)
    .await?;
    let mut pair = Pair {
        label: "contains_text, rare substring, no trigram index".into(),
        ours: Vec::new(),
        hand: Vec::new(),
        hits: 0,
    };
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    // A cached generic plan may choose differently from one made for the
    // values: both sides get the plan made for theirs.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP INDEX {trigram}; SET LOCAL plan_cache_mode = force_custom_plan"
    )))
    .execute(&mut *tx)
    .await?;
    // What each side's plan is: the scan nodes of EXPLAIN ANALYZE.
    let scans = |plan: Vec<String>| {
        plan.into_iter()
            .filter(|l| l.contains("Scan") || l.contains("Execution Time"))
            .map(|l| l.trim().to_owned())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let explained: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN ANALYZE {HAND_CONTAINS}"
    )))
    .bind(format!("%{text}%"))
    .bind(21i64)
    .fetch_all(&mut *tx)
    .await?;
    println!("hand-written, no trigram index: {}", scans(explained));
    for _ in 0..runs {
        let started = Instant::now();
        let page = Message::repo()
            .list(
                &mut *tx,
                Message::CONTENT.contains_text(text),
                ListOptions::new().limit(20),
            )
            .await?;
        pair.ours.push(started.elapsed());
        pair.hits = page.items.len();
        let started = Instant::now();
        sqlx::query(HAND_CONTAINS)
            .bind(format!("%{text}%"))
            .bind(21i64)
            .fetch_all(&mut *tx)
            .await?;
        pair.hand.push(started.elapsed());
    }
    let plan = Message::repo()
        .explain(
            &mut *tx,
            Message::CONTENT.contains_text(text),
            ListOptions::new().limit(20),
        )
        .await?;
    println!("ours, no trigram index (EXPLAIN, not run): {}", scans(plan));
    tx.rollback().await?;
    Ok(pair)
}

/// Each index of `messages` and its size; the search vectors' share of the
/// table.
async fn sizes(pool: &PgPool) -> Result<Vec<(String, i64)>, Box<dyn std::error::Error>> {
    let rows = sqlx::query(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index \
         WHERE indrelid = 'messages'::regclass \
         UNION ALL SELECT 'table messages (heap + TOAST)', pg_table_size('messages') \
         UNION ALL SELECT 'of which content_search', sum(pg_column_size(content_search))::bigint FROM messages \
         UNION ALL SELECT 'of which content', sum(pg_column_size(content))::bigint FROM messages \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_, sqlx::Error>>()?)
}

/// `create_many`'s statement (`INSERT … SELECT FROM UNNEST`, 1,000 rows)
/// into three tables that differ only in what a write keeps up: no search,
/// the search vector and its GIN index, and the trigram index too. Rounds
/// interleave them; returns rows/s of each.
async fn write_costs(
    pool: &PgPool,
    words: &[String],
    rounds: usize,
) -> Result<Vec<(String, f64)>, Box<dyn std::error::Error>> {
    let tables = [
        ("plain text", "bench_plain", ""),
        (
            "+ search vector and its GIN index",
            "bench_fts",
            ", body_search tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, body)) STORED",
        ),
        (
            "+ trigram index too (Mandrake's messages)",
            "bench_both",
            ", body_search tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, body)) STORED",
        ),
    ];
    for (_, name, vector) in &tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} (id uuid PRIMARY KEY, body text NOT NULL, \
             created_at timestamptz NOT NULL DEFAULT now(){vector})"
        )))
        .execute(pool)
        .await?;
    }
    sqlx::raw_sql(
        "CREATE INDEX ON bench_fts USING gin (body_search); \
         CREATE INDEX ON bench_both USING gin (body_search); \
         CREATE INDEX ON bench_both USING gin (body gin_trgm_ops)",
    )
    .execute(pool)
    .await?;
    let mut rng = Rng(7);
    let mut spent = vec![Duration::ZERO; tables.len()];
    let mut written = 0usize;
    for round in 0..rounds {
        let bodies: Vec<String> = (0..1_000).map(|_| message_text(&mut rng, words)).collect();
        for k in 0..tables.len() {
            let i = (k + round) % tables.len();
            let ids: Vec<Uuid> = (0..bodies.len()).map(|_| Uuid::now_v7()).collect();
            let started = Instant::now();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {} (id, body) SELECT * FROM UNNEST($1::uuid[], $2::text[])",
                tables[i].1
            )))
            .bind(ids)
            .bind(&bodies)
            .execute(pool)
            .await?;
            spent[i] += started.elapsed();
        }
        written += bodies.len();
    }
    for (_, name, _) in &tables {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE {name}")))
            .execute(pool)
            .await?;
    }
    Ok(tables
        .iter()
        .zip(spent)
        .map(|((label, _, _), t)| (label.to_string(), written as f64 / t.as_secs_f64()))
        .collect())
}

/// Runs the whole search benchmark on the (migrated, empty) database at
/// `url` and prints its report.
pub async fn run(url: &str, rows: usize, runs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let pool = PgPool::connect(url).await?;
    let db = Db::connect_url(url, &mandrake_storage::Settings::default()).await?;
    let words = vocabulary();
    let loaded = load(&pool, rows, &words).await?;
    println!(
        "loaded {rows} messages ({WORDS} words each, {VOCABULARY}-word vocabulary, Zipf-like) in {:.1} s",
        loaded.as_secs_f64()
    );
    // The rarest word the draw reaches (rank VOCABULARY - 2).
    let rare = &words[VOCABULARY - 2];
    let common = &words[0];
    // A phrase that occurs: two words side by side in some message.
    let phrase = format!("\"{} {}\"", words[40], words[41]);
    let mut pairs = vec![
        search_pair(
            &db,
            &pool,
            format!("search, rare word ({rare})"),
            rare,
            runs,
        )
        .await?,
        search_pair(
            &db,
            &pool,
            format!("search, phrase ({phrase})"),
            &phrase,
            runs,
        )
        .await?,
        search_pair(
            &db,
            &pool,
            format!("search, common word ({common})"),
            common,
            runs.min(10),
        )
        .await?,
        contains_pair(
            &db,
            &pool,
            format!("contains_text, rare substring ({rare})"),
            rare,
            runs,
        )
        .await?,
    ];
    pairs.push(contains_unindexed(&pool, rare, runs.min(10)).await?);
    pairs.extend(crate::tenant_search::pairs(url, &pool, rows, &words, rare, runs).await?);
    let matching: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE content_search @@ websearch_to_tsquery('english'::regconfig, $1)",
    )
    .bind(rare)
    .fetch_one(&pool)
    .await?;
    println!(
        "\n{rare} is in {matching} messages; phrase and common word counts below are of the page (limit 20)\n"
    );
    println!(
        "| query | hits | ours p50 | ours p99 | hand-written p50 | hand-written p99 | ours ÷ hand (p50) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for pair in &mut pairs {
        let (o50, o99) = percentiles(&mut pair.ours);
        let (h50, h99) = percentiles(&mut pair.hand);
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2}× |",
            pair.label,
            pair.hits,
            ms(o50),
            ms(o99),
            ms(h50),
            ms(h99),
            o50.as_secs_f64() / h50.as_secs_f64()
        );
    }
    println!("\n| index or part | size |\n|---|---:|");
    for (name, bytes) in sizes(&pool).await? {
        println!("| {name} | {:.1} MB |", bytes as f64 / 1e6);
    }
    println!("\n| create_many's INSERT of 1,000 rows into | rows/s |\n|---|---:|");
    for (label, rate) in write_costs(&pool, &words, runs.max(20)).await? {
        println!("| {label} | {rate:.0} |");
    }
    Ok(())
}
