//! Full-text and substring search on real PostgreSQL: `matches`, ranked
//! `search` with snippets, and the indexes that serve them.

use chrono::{DateTime, Utc};
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Filter, ListOptions, Record, SearchOptions};
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(
    table = "posts",
    extension = "pg_trgm",
    index(body, using = "gin", ops = "gin_trgm_ops")
)]
pub struct Post {
    pub id: Uuid,
    pub board: String,
    #[record(search = "english")]
    pub title: Option<String>,
    #[record(search = "english")]
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

async fn posts(rows: &[(&str, Option<&str>, &str)]) -> TestDb {
    let db = TestDb::with_tables(&[Post::schema()]).await.unwrap();
    for (board, title, body) in rows {
        Post::repo()
            .create(
                db.db(),
                NewPost {
                    board: board.to_string(),
                    title: title.map(str::to_owned),
                    body: body.to_string(),
                },
            )
            .await
            .unwrap();
    }
    db
}

fn bodies(posts: Vec<Post>) -> Vec<String> {
    let mut bodies: Vec<String> = posts.into_iter().map(|p| p.body).collect();
    bodies.sort();
    bodies
}

async fn matching(db: &TestDb, filter: Filter<Post>) -> Vec<String> {
    bodies(
        Post::repo()
            .list(db.db(), filter, ListOptions::new())
            .await
            .unwrap()
            .items,
    )
}

#[tokio::test]
async fn matches_reads_a_query_as_a_search_box_does() {
    let db = posts(&[
        ("a", None, "The connection pool was exhausted"),
        ("a", None, "A pool of connections"),
        ("b", Some("Pools"), "Swimming in the sea"),
        ("b", None, "PgBouncer sits in front of the pool"),
    ])
    .await;
    // Words, stemmed by the configuration: "pools" finds "pool".
    assert_eq!(
        matching(&db, Post::BODY.matches("pools")).await,
        [
            "A pool of connections",
            "PgBouncer sits in front of the pool",
            "The connection pool was exhausted"
        ]
    );
    // A quoted phrase keeps its order.
    assert_eq!(
        matching(&db, Post::BODY.matches(r#""connection pool""#)).await,
        ["The connection pool was exhausted"]
    );
    // `-word` excludes; `or` allows either.
    assert_eq!(
        matching(&db, Post::BODY.matches("pool -pgbouncer")).await,
        ["A pool of connections", "The connection pool was exhausted"]
    );
    assert_eq!(
        matching(&db, Post::BODY.matches("swimming or exhausted")).await,
        ["Swimming in the sea", "The connection pool was exhausted"]
    );
    // Only stop words or punctuation: nothing, and no error.
    assert!(
        matching(&db, Post::BODY.matches("the of a"))
            .await
            .is_empty()
    );
    assert!(
        matching(&db, Post::BODY.matches("!!! ..."))
            .await
            .is_empty()
    );
    // A NULL field matches nothing and is not an error; `not` keeps it.
    assert_eq!(
        matching(&db, Post::TITLE.matches("pool")).await,
        ["Swimming in the sea"]
    );
    assert_eq!(
        matching(&db, Post::TITLE.matches("pool").not()).await.len(),
        3
    );
    // Combined with other filters.
    assert_eq!(
        matching(
            &db,
            Post::BODY
                .matches("pool")
                .and(Post::BOARD.eq("b"))
                .or(Post::BODY.matches("sea"))
        )
        .await,
        ["PgBouncer sits in front of the pool", "Swimming in the sea"]
    );
    assert_eq!(
        Post::repo()
            .count(db.db(), Post::BODY.matches("pool"))
            .await
            .unwrap(),
        3
    );
}

#[tokio::test]
async fn search_ranks_marks_snippets_and_pages() {
    let db = posts(&[
        ("a", None, "pool"),
        ("a", None, "The pool, the pool, and again the pool"),
        ("a", Some("About the pool"), "Nothing in the body about it"),
        ("b", None, "A pool far away in another board"),
        ("a", None, "Nothing here"),
    ])
    .await;
    let hits = Post::repo()
        .search(
            db.db(),
            Post::BODY,
            "pool",
            Post::BOARD.eq("a"),
            SearchOptions::new(),
        )
        .await
        .unwrap();
    let found: Vec<&str> = hits.iter().map(|h| h.record.body.as_str()).collect();
    // Best first: three mentions outrank one; the other board is filtered out.
    assert_eq!(found, ["The pool, the pool, and again the pool", "pool"]);
    assert!(hits[0].rank > hits[1].rank, "{hits:#?}");
    assert!(
        hits[0].snippet.contains("<b>pool</b>"),
        "{}",
        hits[0].snippet
    );
    // Markers are options; a marker with a comma and a quote survives.
    let marked = Post::repo()
        .search(
            db.db(),
            Post::BODY,
            "away",
            Filter::all(),
            SearchOptions::new().markers("[\"", "\",]"),
        )
        .await
        .unwrap();
    // (`ts_headline` starts the fragment at a word that is no stop word.)
    assert_eq!(marked[0].snippet, "pool far [\"away\",] in another board");
    // Pages: limit and offset.
    let repo = Post::repo();
    let page = |offset| {
        repo.search(
            db.db(),
            Post::BODY,
            "pool",
            Filter::all(),
            SearchOptions::new().limit(2).offset(offset),
        )
    };
    let (first, second) = (page(0).await.unwrap(), page(2).await.unwrap());
    assert_eq!((first.len(), second.len()), (2, 1));
    assert!(first[1].rank >= second[0].rank);
    // Stop words only: no hits, no error.
    assert!(
        Post::repo()
            .search(
                db.db(),
                Post::BODY,
                "the",
                Filter::all(),
                SearchOptions::new()
            )
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_search_over_two_fields_finds_either_and_weighs_the_first_more() {
    let db = posts(&[
        ("a", Some("Lighthouse keeping"), "A story about the sea"),
        ("a", None, "A lighthouse on the cape"),
        ("a", Some("Cape Cod"), "Nothing to see"),
    ])
    .await;
    let hits = Post::repo()
        .search(
            db.db(),
            (Post::TITLE, Post::BODY),
            "lighthouse",
            Filter::all(),
            SearchOptions::new(),
        )
        .await
        .unwrap();
    let found: Vec<&str> = hits.iter().map(|h| h.record.body.as_str()).collect();
    // In the title (weight 1.0) outranks in the body (0.4).
    assert_eq!(found, ["A story about the sea", "A lighthouse on the cape"]);
    // Each snippet comes from the field that matched.
    assert_eq!(hits[0].snippet, "<b>Lighthouse</b> keeping");
    assert_eq!(hits[1].snippet, "<b>lighthouse</b> on the cape");
}

#[tokio::test]
async fn equal_ranks_come_newest_first() {
    let db = posts(&[("a", None, "same words"), ("a", None, "same words")]).await;
    let all = Post::repo()
        .list(
            db.db(),
            Filter::all(),
            ListOptions::new().order_by(Post::CREATED_AT.desc()),
        )
        .await
        .unwrap()
        .items;
    let hits = Post::repo()
        .search(
            db.db(),
            Post::BODY,
            "words",
            Filter::all(),
            SearchOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(hits[0].rank, hits[1].rank);
    let ids: Vec<Uuid> = hits.iter().map(|h| h.record.id).collect();
    assert_eq!(ids, all.iter().map(|p| p.id).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_vector_is_the_databases_and_each_kind_of_search_uses_its_index() {
    let db = posts(&[]).await;
    // The vector columns exist, generated, with GIN indexes; the record
    // never reads or writes them.
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'posts' ORDER BY indexname",
    )
    .fetch_all(db.db())
    .await
    .unwrap();
    for part in [
        "USING gin (body_search)",
        "USING gin (title_search)",
        "gin_trgm_ops",
    ] {
        assert!(
            indexes.iter().any(|d| d.contains(part)),
            "{part}: {indexes:#?}"
        );
    }
    sqlx::raw_sql(
        "INSERT INTO posts (board, title, body) \
         SELECT 'a', CASE WHEN i % 3 = 0 THEN NULL ELSE 'title ' || i END, \
                'post number ' || i || ' about ' || md5(i::text) \
         FROM generate_series(1, 20000) AS i",
    )
    .execute(db.db())
    .await
    .unwrap();
    // As autovacuum would: a GIN index's pending list, full after a bulk
    // insert, makes the planner price the index as a scan of it.
    sqlx::raw_sql("VACUUM ANALYZE posts")
        .execute(db.db())
        .await
        .unwrap();
    let plan = |filter: Filter<Post>| async {
        Post::repo()
            .explain(db.db(), filter, ListOptions::new().limit(20))
            .await
            .unwrap()
            .join("\n")
    };
    let uses = |plan: &str, index: &str| plan.contains(&format!("Index Scan on {index}"));
    let full_text = plan(Post::BODY.matches("deadbeef")).await;
    assert!(uses(&full_text, "posts_body_search_"), "{full_text}");
    for substring in [
        Post::BODY.contains_text("deadbeef"),
        Post::BODY.like("%deadbeef%"),
        Post::BODY.ilike("%DeadBeef%"),
        Post::BODY.starts_with("post number 1234 about"),
    ] {
        let plan = plan(substring).await;
        assert!(uses(&plan, "posts_body_"), "{plan}");
        assert!(!plan.contains("Seq Scan"), "{plan}");
    }
}

#[tokio::test]
async fn a_search_query_past_the_limit_is_refused_before_the_server_sees_it() {
    use mandrake_storage::{Error, MAX_SEARCH_QUERY_CHARS};
    let db = posts(&[("a", None, "pool party")]).await;
    let words = |chars: usize| {
        let mut q = String::from("pool");
        while q.len() < chars {
            q.push_str(&format!(" w{}", q.len()));
        }
        q.truncate(chars);
        q
    };
    let huge = words(1_000_000);
    let refused = |result: mandrake_storage::Result<Vec<String>>| match result {
        Err(Error::InvalidValue { column, .. }) => assert_eq!(column, "body"),
        other => panic!("expected InvalidValue on body, got {other:?}"),
    };
    refused(
        Post::repo()
            .list(db.db(), Post::BODY.matches(&huge), ListOptions::new())
            .await
            .map(|p| bodies(p.items)),
    );
    refused(
        Post::repo()
            .search(
                db.db(),
                Post::BODY,
                &huge,
                Filter::all(),
                SearchOptions::new(),
            )
            .await
            .map(|h| h.into_iter().map(|h| h.record.body).collect()),
    );
    // At the limit the server answers (the words are all required: no hit).
    let longest = words(MAX_SEARCH_QUERY_CHARS);
    assert!(matching(&db, Post::BODY.matches(&longest)).await.is_empty());
    let hits = Post::repo()
        .search(
            db.db(),
            Post::BODY,
            &longest,
            Filter::all(),
            SearchOptions::new(),
        )
        .await
        .unwrap();
    assert!(hits.is_empty());
}
