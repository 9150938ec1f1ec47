//! Tree walks: the path to a row and the subtree under it, one statement
//! each, on real PostgreSQL.

use chrono::{DateTime, Duration, Utc};
use mandrake_storage::testing::TestDb;
use mandrake_storage::{DryRun, Error, Record};
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(table = "nodes")]
pub struct Node {
    pub id: Uuid,
    #[record(references = "nodes", on_delete = "cascade")]
    pub parent_id: Option<Uuid>,
    pub label: String,
    /// A key, but to another table: no tree.
    pub owner_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Inserts `(id, parent, label)` rows in one statement, the n-th created
/// `n` milliseconds after the first.
async fn insert(t: &TestDb, rows: &[(Uuid, Option<Uuid>, String)]) {
    let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let ids: Vec<Uuid> = rows.iter().map(|r| r.0).collect();
    let parents: Vec<Option<Uuid>> = rows.iter().map(|r| r.1).collect();
    let labels: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
    let times: Vec<DateTime<Utc>> = (0..rows.len())
        .map(|n| start + Duration::milliseconds(n as i64))
        .collect();
    sqlx::query(
        "INSERT INTO nodes (id, parent_id, label, created_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[])",
    )
    .bind(ids)
    .bind(parents)
    .bind(labels)
    .bind(times)
    .execute(t.db())
    .await
    .unwrap();
}

fn labels(nodes: &[Node]) -> Vec<&str> {
    nodes.iter().map(|n| n.label.as_str()).collect()
}

#[tokio::test]
async fn ancestors_of_a_branch_1000_deep_root_first_in_one_statement() {
    let t = TestDb::with_tables(&[Node::schema()]).await.unwrap();
    let ids: Vec<Uuid> = (0..1000).map(|_| Uuid::now_v7()).collect();
    let rows: Vec<_> = (0..1000)
        .map(|n| (ids[n], n.checked_sub(1).map(|p| ids[p]), format!("n{n}")))
        .collect();
    insert(&t, &rows).await;
    let path = Node::repo()
        .ancestors(t.db(), Node::PARENT_ID, ids[999])
        .await
        .unwrap();
    assert_eq!(path.len(), 1000);
    assert_eq!(path[0].id, ids[0], "the root first");
    assert_eq!(path[999].id, ids[999], "the row last");
    assert!(path.windows(2).all(|w| w[1].parent_id == Some(w[0].id)));
    let root = Node::repo()
        .ancestors(t.db(), Node::PARENT_ID, ids[0])
        .await
        .unwrap();
    assert_eq!(labels(&root), ["n0"]);
    let none = Node::repo()
        .ancestors(t.db(), Node::PARENT_ID, Uuid::now_v7())
        .await
        .unwrap();
    assert!(none.is_empty());
    // One statement, whatever the depth.
    let dry = DryRun::new();
    let _ = Node::repo()
        .ancestors(&dry, Node::PARENT_ID, ids[999])
        .await;
    assert_eq!(dry.statements().len(), 1);
    assert!(dry.statements()[0].starts_with("WITH RECURSIVE"));
}

#[tokio::test]
async fn descendants_depth_first_siblings_oldest_first_and_10000_wide() {
    let t = TestDb::with_tables(&[Node::schema()]).await.unwrap();
    let id = |_: u8| Uuid::now_v7();
    let (root, a, b, a1, a2, b1) = (id(0), id(1), id(2), id(3), id(4), id(5));
    // Inserted out of tree order: b before a1, and b1 before a2.
    insert(
        &t,
        &[
            (root, None, "root".into()),
            (a, Some(root), "a".into()),
            (b, Some(root), "b".into()),
            (a1, Some(a), "a1".into()),
            (b1, Some(b), "b1".into()),
            (a2, Some(a), "a2".into()),
        ],
    )
    .await;
    let tree = Node::repo()
        .descendants(t.db(), Node::PARENT_ID, root)
        .await
        .unwrap();
    assert_eq!(labels(&tree), ["a", "a1", "a2", "b", "b1"]);
    let under_a = Node::repo()
        .descendants(t.db(), Node::PARENT_ID, a)
        .await
        .unwrap();
    assert_eq!(labels(&under_a), ["a1", "a2"]);
    assert!(
        Node::repo()
            .descendants(t.db(), Node::PARENT_ID, b1)
            .await
            .unwrap()
            .is_empty()
    );

    let wide = Uuid::now_v7();
    let mut rows = vec![(wide, None, "wide".to_owned())];
    rows.extend((0..10_000).map(|n| (Uuid::now_v7(), Some(wide), format!("c{n}"))));
    insert(&t, &rows).await;
    let children = Node::repo()
        .descendants(t.db(), Node::PARENT_ID, wide)
        .await
        .unwrap();
    assert_eq!(children.len(), 10_000);
    assert!(
        children
            .windows(2)
            .all(|w| w[0].created_at < w[1].created_at),
        "oldest first"
    );
}

/// A cycle written by raw SQL ends the walk: it never loops.
#[tokio::test]
async fn a_cycle_in_the_data_ends_the_walk() {
    let t = TestDb::with_tables(&[Node::schema()]).await.unwrap();
    let (x, y, z) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    insert(
        &t,
        &[
            (x, None, "x".into()),
            (y, Some(x), "y".into()),
            (z, Some(y), "z".into()),
        ],
    )
    .await;
    sqlx::query("UPDATE nodes SET parent_id = $1 WHERE id = $2")
        .bind(z)
        .bind(x)
        .execute(t.db())
        .await
        .unwrap();
    let up = Node::repo()
        .ancestors(t.db(), Node::PARENT_ID, z)
        .await
        .unwrap();
    assert_eq!(
        labels(&up),
        ["x", "y", "z"],
        "up to the row before z comes round"
    );
    let down = Node::repo()
        .descendants(t.db(), Node::PARENT_ID, x)
        .await
        .unwrap();
    assert_eq!(labels(&down), ["y", "z"]);
    // A row that is its own parent.
    sqlx::query("UPDATE nodes SET parent_id = id WHERE id = $1")
        .bind(y)
        .execute(t.db())
        .await
        .unwrap();
    let own = Node::repo()
        .ancestors(t.db(), Node::PARENT_ID, y)
        .await
        .unwrap();
    assert_eq!(labels(&own), ["y"]);
    // Under y: z, then x (x's parent is z), and not y again.
    let under = Node::repo()
        .descendants(t.db(), Node::PARENT_ID, y)
        .await
        .unwrap();
    assert_eq!(labels(&under), ["z", "x"]);
}

/// A walk along a column that is no key to the table's own id is refused
/// before anything is sent.
#[tokio::test]
async fn a_walk_along_another_column_is_refused() {
    let t = TestDb::with_tables(&[Node::schema()]).await.unwrap();
    let refused = Node::repo()
        .ancestors(t.db(), Node::OWNER_ID, Uuid::now_v7())
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::NotATree {
                table: "nodes",
                column: "owner_id"
            })
        ),
        "{refused:?}"
    );
    let refused = Node::repo()
        .descendants(t.db(), Node::OWNER_ID, Uuid::now_v7())
        .await;
    assert!(matches!(refused, Err(Error::NotATree { .. })));
}

/// Every shape a cycle can take above a row: a tail of `tail` rows leading
/// into a loop of `cycle` rows. The path up stops right before the first
/// row that would come round again, whatever the sizes.
#[tokio::test]
async fn ancestors_end_every_cycle_shape_where_it_comes_round() {
    let t = TestDb::with_tables(&[Node::schema()]).await.unwrap();
    for tail in 0..6usize {
        for cycle in 1..10usize {
            let ids: Vec<Uuid> = (0..tail + cycle).map(|_| Uuid::now_v7()).collect();
            // ids[0] is the start; each row's parent is the next, and the
            // last row's parent is the first of the loop.
            let rows: Vec<(Uuid, Option<Uuid>, String)> = (0..ids.len())
                .map(|i| (ids[i], None, format!("{tail}/{cycle}/{i}")))
                .collect();
            insert(&t, &rows).await;
            for i in 0..ids.len() {
                let parent = ids.get(i + 1).copied().unwrap_or(ids[tail]);
                sqlx::query("UPDATE nodes SET parent_id = $1 WHERE id = $2")
                    .bind(parent)
                    .bind(ids[i])
                    .execute(t.db())
                    .await
                    .unwrap();
            }
            let up = Node::repo()
                .ancestors(t.db(), Node::PARENT_ID, ids[0])
                .await
                .unwrap();
            let expected: Vec<Uuid> = ids.iter().rev().copied().collect();
            let got: Vec<Uuid> = up.iter().map(|n| n.id).collect();
            assert_eq!(got, expected, "a tail of {tail} into a loop of {cycle}");
        }
    }
}
