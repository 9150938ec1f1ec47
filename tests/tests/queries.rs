//! Typed queries against real PostgreSQL: every operator (with NULL
//! semantics and nesting), multi-column keyset pages, bulk writes, typed
//! upserts and batched loads.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Filter, ListOptions, Order, Record, RecordEnum};
use serde_json::json;
use uuid::Uuid;

#[derive(RecordEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Alpha,
    Beta,
    Gamma,
}

#[derive(Record, Clone)]
pub struct Group {
    pub id: Uuid,
    #[record(unique)]
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
#[record(unique(group_id, code))]
pub struct Item {
    pub id: Uuid,
    #[record(references = "groups", on_delete = "cascade")]
    pub group_id: Uuid,
    pub code: String,
    pub name: String,
    pub rank: i32,
    pub score: Option<f64>,
    pub note: Option<String>,
    pub kind: Kind,
    pub data: Json<serde_json::Value>,
    #[record(version)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

async fn setup() -> (TestDb, Group) {
    let t = TestDb::with_tables(&[Group::schema(), Item::schema()])
        .await
        .unwrap();
    let g = group(&t, "main").await;
    (t, g)
}

async fn group(t: &TestDb, name: &str) -> Group {
    Group::repo()
        .create(t.db(), NewGroup { name: name.into() })
        .await
        .unwrap()
}

fn item(group_id: Uuid, n: usize) -> NewItem {
    NewItem {
        group_id,
        code: format!("c{n}"),
        name: format!("item {n}"),
        rank: (n % 10) as i32,
        score: (!n.is_multiple_of(3)).then_some(n as f64 / 2.0),
        note: None,
        kind: [Kind::Alpha, Kind::Beta, Kind::Gamma][n % 3],
        data: Json(
            json!({ "n": n, "tags": if n.is_multiple_of(2) { vec!["even"] } else { vec!["odd"] } }),
        ),
    }
}

#[tokio::test]
async fn every_operator_with_null_semantics_and_nesting() {
    let (t, g) = setup().await;
    let db = t.db();
    let mut rows: Vec<NewItem> = (0..6).map(|n| item(g.id, n)).collect();
    rows[0].note = Some("100% pure".into());
    rows[1].note = Some("100 percent".into());
    rows[2].note = Some("under_score".into());
    rows[3].note = Some("UNDERxSCORE".into());
    rows[4].note = Some(r"back\slash".into());
    // rows[5].note stays NULL; scores: n=0 and n=3 are NULL.
    Item::repo().create_many(db, rows).await.unwrap();
    let count = |f: Filter<Item>| async move { Item::repo().count(db, f).await.unwrap() };

    assert_eq!(count(Item::RANK.eq(2)).await, 1);
    assert_eq!(count(Item::RANK.ne(2)).await, 5);
    assert_eq!(count(Item::RANK.lt(2)).await, 2);
    assert_eq!(count(Item::RANK.le(2)).await, 3);
    assert_eq!(count(Item::RANK.gt(2)).await, 3);
    assert_eq!(count(Item::RANK.ge(2)).await, 4);
    assert_eq!(count(Item::RANK.between(1, 3)).await, 3);
    assert_eq!(count(Item::KIND.eq(Kind::Beta)).await, 2);
    assert_eq!(count(Item::KIND.is_in([Kind::Alpha, Kind::Gamma])).await, 4);
    assert_eq!(
        count(Item::RANK.is_in(Vec::<i32>::new())).await,
        0,
        "empty IN: no row"
    );
    assert_eq!(
        count(Item::RANK.not_in(Vec::<i32>::new())).await,
        6,
        "empty NOT IN: all"
    );
    assert_eq!(count(Item::RANK.not_in([0, 1])).await, 4);

    // NULLs: `eq` on an Option column takes the inner type; `ne` and
    // `not_in` keep the NULL rows.
    assert_eq!(count(Item::SCORE.is_null()).await, 2);
    assert_eq!(count(Item::SCORE.is_not_null()).await, 4);
    assert_eq!(count(Item::SCORE.eq(0.5)).await, 1);
    assert_eq!(
        count(Item::SCORE.ne(0.5)).await,
        5,
        "NULL scores are kept by ne"
    );
    assert_eq!(count(Item::SCORE.gt(1.0)).await, 2, "NULL is not greater");
    assert_eq!(
        count(Item::SCORE.not_in([0.5, 1.0])).await,
        4,
        "NULLs kept by not_in"
    );
    assert_eq!(count(Item::NOTE.ne("100% pure")).await, 5);

    // Text: LIKE wildcards, and literal matching of user input.
    assert_eq!(count(Item::NOTE.like("100%")).await, 2);
    assert_eq!(
        count(Item::NOTE.like("under%")).await,
        1,
        "LIKE is case-sensitive"
    );
    assert_eq!(count(Item::NOTE.ilike("under%")).await, 2);
    assert_eq!(
        count(Item::NOTE.contains_text("100%")).await,
        1,
        "% is literal"
    );
    assert_eq!(
        count(Item::NOTE.contains_text("der_sc")).await,
        1,
        "_ is literal"
    );
    assert_eq!(
        count(Item::NOTE.contains_text(r"k\s")).await,
        1,
        r"\ is literal"
    );
    assert_eq!(count(Item::NOTE.starts_with("100")).await, 2);
    assert_eq!(
        count(Item::NOTE.starts_with("under")).await,
        2,
        "ignoring case"
    );
    assert_eq!(
        count(Item::NOTE.starts_with("under_")).await,
        1,
        "_ is literal"
    );
    assert_eq!(
        count(Item::NAME.contains_text("ITEM")).await,
        6,
        "case-insensitive"
    );

    // JSON containment.
    assert_eq!(
        count(Item::DATA.json_contains(json!({ "tags": ["even"] }))).await,
        3
    );
    assert_eq!(count(Item::DATA.json_contains(json!({ "n": 4 }))).await, 1);

    // Composition, nested, with parentheses where they matter.
    let either = Item::RANK.eq(1).or(Item::RANK.eq(2));
    assert_eq!(count(either.and(Item::KIND.eq(Kind::Gamma))).await, 1);
    let nested = Item::RANK.lt(3).and(
        Item::SCORE
            .is_null()
            .or(Item::NOTE.contains_text("percent")),
    );
    assert_eq!(count(nested).await, 2);
    assert_eq!(count(Item::RANK.lt(3).not()).await, 3);
    assert_eq!(count(!Item::RANK.lt(3).or(Item::RANK.gt(4))).await, 2);
    assert_eq!(count(Filter::all()).await, 6);
    assert_eq!(count(Filter::all().and(Item::RANK.eq(5))).await, 1);
    assert!(Item::repo().exists(db, Item::CODE.eq("c5")).await.unwrap());
    assert!(!Item::repo().exists(db, Item::CODE.eq("c6")).await.unwrap());
}

/// Pages of `size` through everything `order` lists, checked against one
/// unpaged listing in the same order.
async fn page_through(t: &TestDb, options: fn() -> ListOptions<Item>, size: u32) {
    let db = t.db();
    let all = Item::repo()
        .list(db, Filter::all(), options())
        .await
        .unwrap();
    assert!(all.next.is_none());
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = Item::repo()
            .list(db, Filter::all(), options().limit(size).after_opt(cursor))
            .await
            .unwrap();
        paged.extend(page.items.iter().map(|i| i.id));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<Uuid> = all.items.iter().map(|i| i.id).collect();
    assert_eq!(paged.len(), expected.len());
    assert_eq!(paged, expected, "every row once, in order");
}

#[tokio::test]
async fn a_thousand_rows_page_back_exactly_once_in_three_orders() {
    let (t, g) = setup().await;
    let rows: Vec<NewItem> = (0..1000).map(|n| item(g.id, n)).collect();
    // One statement: every row shares created_at, so ties are everywhere.
    Item::repo().create_many(t.db(), rows).await.unwrap();
    // Mixed directions with ties in the first column.
    page_through(
        &t,
        || {
            ListOptions::new()
                .order_by(Item::RANK.desc())
                .then_by(Item::NAME.asc())
        },
        37,
    )
    .await;
    // A nullable column (NULLs last), descending.
    page_through(&t, || ListOptions::new().order_by(Item::SCORE.desc()), 41).await;
    // Ties only broken by id: equal created_at, mixed with an enum column.
    page_through(
        &t,
        || {
            ListOptions::new()
                .order_by(Item::KIND.asc())
                .then_by(Item::CREATED_AT.desc())
        },
        50,
    )
    .await;

    let scores = Item::repo()
        .list(
            t.db(),
            Filter::all(),
            ListOptions::new().order_by(Item::SCORE.asc()),
        )
        .await
        .unwrap();
    let first_null = scores.items.iter().position(|i| i.score.is_none()).unwrap();
    assert!(
        scores.items[first_null..].iter().all(|i| i.score.is_none()),
        "NULLs last"
    );
    // Offset pages, in the same order.
    let offset = Item::repo()
        .list(
            t.db(),
            Filter::all(),
            ListOptions::new()
                .order_by(Item::SCORE.asc())
                .offset(10)
                .limit(5),
        )
        .await
        .unwrap();
    let ids = |items: &[Item]| items.iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(ids(&offset.items), ids(&scores.items[10..15]));
}

#[tokio::test]
async fn is_in_with_ten_thousand_ids_and_get_many_in_order() {
    let (t, g) = setup().await;
    let db = t.db();
    let stored = Item::repo()
        .create_many(db, (0..10_000).map(|n| item(g.id, n)).collect())
        .await
        .unwrap();
    let ids: Vec<Uuid> = stored.iter().map(|i| i.id).collect();
    assert_eq!(
        Item::repo()
            .count(db, Item::ID.is_in(ids.clone()))
            .await
            .unwrap(),
        10_000
    );
    let half: Vec<Uuid> = ids.iter().step_by(2).copied().collect();
    assert_eq!(
        Item::repo()
            .count(db, Item::ID.is_in(half.clone()))
            .await
            .unwrap(),
        5_000
    );
    assert_eq!(
        Item::repo().count(db, Item::ID.not_in(half)).await.unwrap(),
        5_000
    );
    let mut wanted: Vec<Uuid> = ids.iter().rev().copied().collect();
    wanted.insert(17, Uuid::now_v7()); // no such row: left out
    let got = Item::repo().get_many(db, &wanted).await.unwrap();
    assert_eq!(got.len(), 10_000);
    assert!(
        got.iter().map(|i| i.id).eq(ids.iter().rev().copied()),
        "in the order asked"
    );
}

#[tokio::test]
async fn update_where_and_delete_where_report_their_rows() {
    let (t, g) = setup().await;
    let db = t.db();
    Item::repo()
        .create_many(db, (0..100).map(|n| item(g.id, n)).collect())
        .await
        .unwrap();
    let patch = ItemPatch {
        note: Some(Some("bulk".into())),
        ..Default::default()
    };
    let changed = Item::repo()
        .update_where(db, Item::RANK.lt(3), patch)
        .await
        .unwrap();
    assert_eq!(changed, 30);
    let bulk = Item::repo()
        .list(db, Item::NOTE.eq("bulk"), ListOptions::new())
        .await
        .unwrap();
    assert_eq!(bulk.items.len(), 30);
    assert!(
        bulk.items.iter().all(|i| i.version == 2),
        "each row's version moved"
    );
    assert_eq!(
        Item::repo().count(db, Item::VERSION.eq(1)).await.unwrap(),
        70
    );
    let nothing = Item::repo()
        .update_where(db, Filter::all(), ItemPatch::default())
        .await
        .unwrap();
    assert_eq!(nothing, 0, "an empty patch changes nothing");
    assert_eq!(
        Item::repo().count(db, Item::VERSION.eq(1)).await.unwrap(),
        70
    );
    let none = Item::repo()
        .update_where(
            db,
            Item::RANK.gt(100),
            ItemPatch {
                rank: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(none, 0);

    let deleted = Item::repo()
        .delete_where(db, Item::NOTE.eq("bulk").or(Item::RANK.eq(9)))
        .await
        .unwrap();
    assert_eq!(deleted, 40);
    assert_eq!(Item::repo().count(db, Filter::all()).await.unwrap(), 60);
}

#[tokio::test]
async fn upsert_many_of_ten_thousand_with_half_conflicting() {
    let (t, g) = setup().await;
    let db = t.db();
    let existing = Item::repo()
        .create_many(db, (0..5_000).map(|n| item(g.id, n * 2)).collect())
        .await
        .unwrap();
    let by_code: std::collections::HashMap<String, Uuid> =
        existing.iter().map(|i| (i.code.clone(), i.id)).collect();
    // Codes 0..10_000 in a shuffled-looking order: the even ones exist.
    let order: Vec<usize> = (0..10_000).map(|i| (i * 7919) % 10_000).collect();
    let rows: Vec<NewItem> = order
        .iter()
        .map(|&n| NewItem {
            name: format!("upserted {n}"),
            ..item(g.id, n)
        })
        .collect();
    let stored = Item::repo()
        .upsert_many(db, rows, Item::ON_GROUP_ID_CODE)
        .await
        .unwrap();
    assert_eq!(stored.len(), 10_000);
    for (n, row) in order.iter().zip(&stored) {
        assert_eq!(row.code, format!("c{n}"), "input order");
        assert_eq!(row.name, format!("upserted {n}"));
        match by_code.get(&row.code) {
            Some(id) => {
                assert_eq!(row.id, *id, "a conflicting row keeps its id");
                assert_eq!(row.version, 2, "and its version moves");
            }
            None => assert_eq!(row.version, 1),
        }
    }
    assert_eq!(Item::repo().count(db, Filter::all()).await.unwrap(), 10_000);
    assert!(
        Item::repo()
            .upsert_many(db, Vec::new(), Item::ON_GROUP_ID_CODE)
            .await
            .unwrap()
            .is_empty()
    );

    let fresh = Item::repo()
        .insert_or_ignore(db, item(g.id, 20_000), Item::ON_GROUP_ID_CODE)
        .await
        .unwrap();
    assert!(fresh.is_some());
    let ignored = Item::repo()
        .insert_or_ignore(db, item(g.id, 20_000), Item::ON_GROUP_ID_CODE)
        .await
        .unwrap();
    assert!(ignored.is_none());
    let named = Group::repo()
        .upsert(
            db,
            NewGroup {
                name: "main".into(),
            },
            Group::ON_NAME,
        )
        .await
        .unwrap();
    assert_eq!(named.id, g.id);
}

#[tokio::test]
async fn load_by_limits_per_parent_and_count_by_groups() {
    let (t, a) = setup().await;
    let db = t.db();
    let b = group(&t, "b").await;
    let empty = group(&t, "empty").await;
    Item::repo()
        .create_many(db, (0..5).map(|n| item(a.id, n)).collect())
        .await
        .unwrap();
    Item::repo()
        .create_many(db, (10..12).map(|n| item(b.id, n)).collect())
        .await
        .unwrap();
    let top_two = ListOptions::new().order_by(Item::RANK.desc()).limit(2);
    let groups = Item::repo()
        .load_by(db, Item::GROUP_ID, &[a.id, b.id, empty.id], top_two)
        .await
        .unwrap();
    assert_eq!(groups.len(), 2, "no entry for a parent without rows");
    let ranks = |id: Uuid| groups[&id].iter().map(|i| i.rank).collect::<Vec<_>>();
    assert_eq!(
        ranks(a.id),
        vec![4, 3],
        "the limit applies per parent, in order"
    );
    assert_eq!(ranks(b.id), vec![1, 0]);
    let all = Item::repo()
        .load_by(db, Item::GROUP_ID, &[a.id], ListOptions::new())
        .await
        .unwrap();
    assert_eq!(all[&a.id].len(), 5);

    let kinds = Item::repo()
        .count_by(db, Filter::all(), Item::KIND)
        .await
        .unwrap();
    // Most frequent first, ties by value.
    assert_eq!(
        kinds,
        vec![(Kind::Beta, 3), (Kind::Alpha, 2), (Kind::Gamma, 2)]
    );
    let in_a = Item::repo()
        .count_by(db, Item::GROUP_ID.eq(a.id), Item::SCORE)
        .await
        .unwrap();
    assert_eq!(
        in_a,
        vec![(None, 2), (Some(0.5), 1), (Some(1.0), 1), (Some(2.0), 1)],
        "NULL is a group of its own"
    );
}

#[tokio::test]
async fn raw_sql_decodes_records_and_joins_use_the_public_column_lists() {
    let (t, g) = setup().await;
    let db = t.db();
    let stored = Item::repo().create(db, item(g.id, 1)).await.unwrap();
    let sql = format!("SELECT {} FROM items i", Item::columns("i"));
    let items: Vec<Item> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(items[0].id, stored.id);
    let sql = format!(
        "SELECT {}, {} FROM items i JOIN groups g ON g.id = i.group_id",
        Item::columns("i"),
        Group::columns("g")
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_one(db)
        .await
        .unwrap();
    let width = Item::schema().columns.len();
    let (i, grp) = (
        Item::decode(&row, 0).unwrap(),
        Group::decode(&row, width).unwrap(),
    );
    assert_eq!((i.id, grp.id), (stored.id, g.id));
    let unique: HashSet<&str> = [Item::RANK.name(), Item::CODE.name()].into();
    assert_eq!(unique.len(), 2);
    let _: Order<Item> = Item::RANK.asc();
}

/// A tool call log whose output a GIN `jsonb_path_ops` index serves.
#[derive(Record, Clone)]
#[record(table = "calls", index(output, using = "gin", ops = "jsonb_path_ops"))]
pub struct Call {
    pub id: Uuid,
    pub output: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `json_contains` (`@>`) finds its rows through a GIN `jsonb_path_ops`
/// index declared on the record: the index is in the catalog, the plan
/// uses it, and the rows are those hand-written SQL finds.
#[tokio::test]
async fn json_contains_is_served_by_a_jsonb_path_ops_index() {
    let t = TestDb::with_tables(&[Call::schema()]).await.unwrap();
    sqlx::raw_sql(
        "INSERT INTO calls (id, output) \
         SELECT gen_random_uuid(), jsonb_build_object('status', CASE WHEN i % 1000 = 0 THEN 'failed' ELSE 'ok' END, \
                'exit_code', i % 7, 'files', jsonb_build_array('a' || i)) \
         FROM generate_series(1, 20000) AS i",
    )
    .execute(t.db())
    .await
    .unwrap();
    // VACUUM moves the GIN index's pending entries into the index proper,
    // which the planner's estimate counts on (alone: not in a transaction).
    sqlx::raw_sql("VACUUM ANALYZE calls")
        .execute(t.db())
        .await
        .unwrap();
    let definition: String = sqlx::query_scalar(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'calls'::regclass AND NOT indisprimary",
    )
    .fetch_one(t.db())
    .await
    .unwrap();
    assert!(
        definition.contains("USING gin (output jsonb_path_ops)"),
        "{definition}"
    );
    let failed = || Call::OUTPUT.json_contains(json!({ "status": "failed" }));
    let plan = Call::repo()
        .explain(t.db(), failed(), ListOptions::new().limit(50))
        .await
        .unwrap();
    assert!(
        plan.iter()
            .any(|l| l.contains("Bitmap Index Scan on calls_output_")),
        "{plan:#?}"
    );
    let page = Call::repo()
        .list(t.db(), failed(), ListOptions::new())
        .await
        .unwrap();
    let by_hand: i64 =
        sqlx::query_scalar("SELECT count(*) FROM calls WHERE output @> '{\"status\": \"failed\"}'")
            .fetch_one(t.db())
            .await
            .unwrap();
    assert_eq!(page.items.len() as i64, by_hand);
    assert_eq!(by_hand, 20);
    assert!(page.items.iter().all(|c| c.output.0["status"] == "failed"));
}

/// Filters on values inside a JSON column, by a path of keys, find what
/// hand-written `->>` SQL finds; a path's expression index serves them.
#[tokio::test]
async fn json_path_filters_match_hand_written_sql_and_use_a_path_index() {
    let t = TestDb::with_tables(&[Call::schema()]).await.unwrap();
    let outputs = [
        json!({ "status": "ok", "exit_code": 0, "args": { "path": "README.md" }, "ms": 1.5, "cached": true }),
        json!({ "status": "failed", "exit_code": 2, "args": { "path": "src/readme.MD" }, "ms": 30.0 }),
        json!({ "status": "failed", "exit_code": 0, "args": { "path": "Cargo.toml" }, "cached": false }),
        json!({ "status": "ok", "args": { "path": "it's 100%" } }),
        json!({ "status": null, "exit_code": 127 }),
    ];
    for output in &outputs {
        let new = NewCall {
            output: Json(output.clone()),
        };
        Call::repo().create(t.db(), new).await.unwrap();
    }
    let ours = |filter: Filter<Call>| {
        let db = t.db();
        async move {
            let page = Call::repo()
                .list(db, filter, ListOptions::new())
                .await
                .unwrap();
            let mut found: Vec<String> =
                page.items.iter().map(|c| c.output.0.to_string()).collect();
            found.sort();
            found
        }
    };
    let by_hand = |condition: &'static str| {
        let db = t.db();
        async move {
            let rows: Vec<(Json<serde_json::Value>,)> = sqlx::query_as(sqlx::AssertSqlSafe(
                format!("SELECT output FROM calls WHERE {condition}"),
            ))
            .fetch_all(db)
            .await
            .unwrap();
            let mut found: Vec<String> = rows.iter().map(|(o,)| o.0.to_string()).collect();
            found.sort();
            found
        }
    };
    let cases: Vec<(Filter<Call>, &'static str, usize)> = vec![
        (
            Call::OUTPUT.at("status").eq("failed"),
            "output->>'status' = 'failed'",
            2,
        ),
        (
            Call::OUTPUT.at("status").ne("failed"),
            "output->>'status' IS DISTINCT FROM 'failed'",
            3,
        ),
        (
            Call::OUTPUT.at("status").is_null(),
            "output->>'status' IS NULL",
            1,
        ),
        (
            Call::OUTPUT.at_i64("exit_code").ne(0),
            "(output->>'exit_code')::bigint IS DISTINCT FROM 0",
            3,
        ),
        (
            Call::OUTPUT.at_i64("exit_code").ge(2),
            "(output->>'exit_code')::bigint >= 2",
            2,
        ),
        (
            Call::OUTPUT.at_i64("exit_code").is_in([0, 127]),
            "(output->>'exit_code')::bigint IN (0, 127)",
            3,
        ),
        (
            Call::OUTPUT.at_f64("ms").gt(2.0),
            "(output->>'ms')::float8 > 2",
            1,
        ),
        (
            Call::OUTPUT.at_bool("cached").eq(true),
            "(output->>'cached')::boolean",
            1,
        ),
        (
            Call::OUTPUT
                .at("args")
                .at("path")
                .ends_with_text("readme.md"),
            "output->'args'->>'path' ILIKE '%readme.md'",
            2,
        ),
        (
            Call::OUTPUT.at("args").at("path").contains_text("100%"),
            "output->'args'->>'path' LIKE '%100\\%%'",
            1,
        ),
        (
            Call::OUTPUT.at("args").at("path").is_not_null(),
            "output->'args'->>'path' IS NOT NULL",
            4,
        ),
        (
            Call::OUTPUT
                .at("status")
                .eq("failed")
                .and(Call::OUTPUT.at_i64("exit_code").eq(0)),
            "output->>'status' = 'failed' AND (output->>'exit_code')::bigint = 0",
            1,
        ),
    ];
    for (filter, condition, n) in cases {
        let found = ours(filter).await;
        assert_eq!(found, by_hand(condition).await, "{condition}");
        assert_eq!(found.len(), n, "{condition}");
    }
    // A key holding a quote is a literal, never SQL.
    let odd = Call::OUTPUT.at("it's").eq("x' OR true --");
    assert!(ours(odd).await.is_empty());

    // An expression index on the path serves the filter.
    sqlx::raw_sql(
        "CREATE INDEX calls_status ON calls ((output ->> 'status')); \
         INSERT INTO calls (id, output) SELECT gen_random_uuid(), jsonb_build_object('status', 'ok') \
         FROM generate_series(1, 20000); ANALYZE calls",
    )
    .execute(t.db())
    .await
    .unwrap();
    let plan = Call::repo()
        .explain(
            t.db(),
            Call::OUTPUT.at("status").eq("failed"),
            ListOptions::new(),
        )
        .await
        .unwrap();
    assert!(plan.iter().any(|l| l.contains("calls_status")), "{plan:#?}");
}
