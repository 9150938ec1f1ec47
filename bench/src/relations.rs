//! `cargo xtask bench -- --relations`: typed joins and tree walks beside
//! the same statements written by hand, on one connection each, and the
//! ancestors of a deep branch beside one `get` per level.
//!
//! - A join page: 50 players with their teams (10,000 players, 100 teams),
//!   filtered on the player, ordered by id.
//! - The ancestors of a branch 200 deep: one `WITH RECURSIVE` statement.
//!
//! Calls alternate between the contenders, which go first in turn; the
//! report gives each side's median.

use std::time::{Duration, Instant};

use mandrake_storage::sqlx::{self, Executor, PgConnection};
use mandrake_storage::{Db, Record, Settings};
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(table = "bench_teams")]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Record, Clone)]
#[record(table = "bench_players")]
pub struct Player {
    pub id: Uuid,
    #[record(references = "bench_teams", on_delete = "cascade")]
    pub team_id: Uuid,
    pub name: String,
    pub rank: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Record, Clone)]
#[record(table = "bench_nodes")]
pub struct Node {
    pub id: Uuid,
    #[record(references = "bench_nodes", on_delete = "cascade")]
    pub parent_id: Option<Uuid>,
    pub label: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

const RUNS: usize = 400;
const DEPTH: usize = 200;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The page of 50 by hand: the join as one would write it.
async fn page_by_hand(db: &mut PgConnection, sql: &str) -> Vec<(Player, Team)> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(10)
        .fetch_all(&mut *db)
        .await
        .unwrap();
    rows.iter()
        .map(|r| {
            (
                Player::decode(r, 0).unwrap(),
                Team::decode(r, Player::WIDTH).unwrap(),
            )
        })
        .collect()
}

async fn ancestors_by_hand(db: &mut PgConnection, sql: &str, leaf: Uuid) -> Vec<Node> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(leaf)
        .fetch_all(&mut *db)
        .await
        .unwrap();
    rows.iter().map(|r| Node::decode(r, 0).unwrap()).collect()
}

async fn ours_page(conn: &mut PgConnection) -> Vec<(Player, Team)> {
    Player::repo()
        .join(conn, Player::TEAM_ID, Team::ID)
        .filter(Player::RANK.gt(10))
        .order_by(Player::ID.asc())
        .limit(50)
        .fetch()
        .await
        .unwrap()
}

/// Runs the cells on the database at `url` and prints the report.
pub async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings {
        pool_size: 1,
        ..Settings::default()
    };
    let db = Db::connect_url(url, &settings).await?;
    let ddl = mandrake_storage::schema::ddl::create_schema(&[
        Team::schema(),
        Player::schema(),
        Node::schema(),
    ]);
    db.execute(sqlx::AssertSqlSafe(ddl)).await?;
    sqlx::raw_sql(
        "INSERT INTO bench_teams (id, name) SELECT gen_random_uuid(), 'team ' || i \
         FROM generate_series(1, 100) AS i; \
         INSERT INTO bench_players (id, team_id, name, rank) \
         SELECT gen_random_uuid(), (SELECT id FROM bench_teams ORDER BY name OFFSET i % 100 LIMIT 1), \
                'player ' || i, i % 50 FROM generate_series(1, 10000) AS i; \
         ANALYZE bench_teams; ANALYZE bench_players",
    )
    .execute(&db)
    .await?;
    let ids: Vec<Uuid> = (0..DEPTH).map(|_| Uuid::now_v7()).collect();
    let parents: Vec<Option<Uuid>> = (0..DEPTH)
        .map(|n| n.checked_sub(1).map(|p| ids[p]))
        .collect();
    sqlx::query(
        "INSERT INTO bench_nodes (id, parent_id, label) \
         SELECT id, parent, 'n' FROM UNNEST($1::uuid[], $2::uuid[]) AS u(id, parent)",
    )
    .bind(&ids)
    .bind(&parents)
    .execute(&db)
    .await?;
    sqlx::raw_sql("ANALYZE bench_nodes").execute(&db).await?;
    let leaf = ids[DEPTH - 1];

    let page_sql = format!(
        "SELECT {}, {} FROM bench_players p JOIN bench_teams t ON p.team_id = t.id \
         WHERE p.rank > $1 ORDER BY p.id, t.id LIMIT 50",
        Player::columns("p"),
        Team::columns("t")
    );
    let up_sql = format!(
        "WITH RECURSIVE up AS (SELECT n.*, 0 AS depth FROM bench_nodes n WHERE n.id = $1 \
         UNION ALL SELECT n.*, up.depth + 1 FROM up JOIN bench_nodes n ON n.id = up.parent_id) \
         SELECT {} FROM up ORDER BY depth DESC",
        Node::columns("up")
    );
    // Both contenders on one plain connection: SQL written through a `Db`
    // pays a session reset that the typed calls do not.
    let mut conn = mandrake_storage::connect_one(url).await?;
    let conn = &mut conn;
    assert_eq!(ours_page(conn).await.len(), 50);
    assert_eq!(page_by_hand(conn, &page_sql).await.len(), 50);

    let (mut ours, mut hand) = (Vec::new(), Vec::new());
    let (mut up_ours, mut up_hand, mut gets) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..RUNS {
        for first in [n % 2 == 0, n % 2 == 1] {
            let started = Instant::now();
            if first {
                ours_page(conn).await;
                ours.push(started.elapsed());
            } else {
                page_by_hand(conn, &page_sql).await;
                hand.push(started.elapsed());
            }
        }
        for first in [n % 2 == 0, n % 2 == 1] {
            let started = Instant::now();
            if first {
                let path = Node::repo()
                    .ancestors(&mut *conn, Node::PARENT_ID, leaf)
                    .await
                    .unwrap();
                assert_eq!(path.len(), DEPTH);
                up_ours.push(started.elapsed());
            } else {
                let path = ancestors_by_hand(conn, &up_sql, leaf).await;
                assert_eq!(path.len(), DEPTH);
                up_hand.push(started.elapsed());
            }
        }
        if n % 10 == 0 {
            // One `get` a level, walking up: what a loop in the app costs.
            let started = Instant::now();
            let mut at = Some(leaf);
            let mut seen = 0;
            while let Some(id) = at {
                at = Node::repo().get(&mut *conn, id).await?.parent_id;
                seen += 1;
            }
            assert_eq!(seen, DEPTH);
            gets.push(started.elapsed());
        }
    }
    let (ours, hand) = (median(ours), median(hand));
    let (up_ours, up_hand, gets) = (median(up_ours), median(up_hand), median(gets));
    println!("one plain connection for both, medians of {RUNS} calls each, alternating\n");
    println!("| call | ours | by hand | ours ÷ by hand (time) |");
    println!("|---|---:|---:|---:|");
    println!(
        "| join page of 50 (10,000 players, 100 teams) | {} | {} | {:.3} |",
        ms(ours),
        ms(hand),
        ours.as_secs_f64() / hand.as_secs_f64()
    );
    println!(
        "| ancestors of a branch {DEPTH} deep | {} | {} | {:.3} |",
        ms(up_ours),
        ms(up_hand),
        up_ours.as_secs_f64() / up_hand.as_secs_f64()
    );
    println!(
        "| the same branch, one `get` a level ({} calls) | {} | | {:.1}× the time of `ancestors` |",
        DEPTH,
        ms(gets),
        gets.as_secs_f64() / up_ours.as_secs_f64()
    );
    Ok(())
}
