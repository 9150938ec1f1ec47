//! Typed joins on real PostgreSQL: pairs of records in one statement.

use chrono::{DateTime, Utc};
use mandrake_storage::testing::TestDb;
use mandrake_storage::{DryRun, Record};
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(table = "teams")]
pub struct Team {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
#[record(table = "players")]
pub struct Player {
    pub id: Uuid,
    #[record(references = "teams", on_delete = "set null")]
    pub team_id: Option<Uuid>,
    pub name: String,
    pub rank: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Teams `red` and `blue` and `gray` (no player); players, one without a team.
async fn league() -> (TestDb, Vec<Team>) {
    let t = TestDb::with_tables(&[Team::schema(), Player::schema()])
        .await
        .unwrap();
    let mut teams = Vec::new();
    for name in ["red", "blue", "gray"] {
        let team = Team::repo()
            .create(t.db(), NewTeam { name: name.into() })
            .await
            .unwrap();
        teams.push(team);
    }
    let player = |team: Option<usize>, name: &str, rank| NewPlayer {
        team_id: team.map(|i| teams[i].id),
        name: name.into(),
        rank,
    };
    let players = vec![
        player(Some(0), "ann", 3),
        player(Some(0), "bob", 1),
        player(Some(1), "cat", 2),
        player(Some(1), "dan", 2),
        player(None, "eve", 5),
    ];
    Player::repo().create_many(t.db(), players).await.unwrap();
    (t, teams)
}

fn names(rows: &[(Player, Team)]) -> Vec<(&str, &str)> {
    rows.iter()
        .map(|(p, t)| (p.name.as_str(), t.name.as_str()))
        .collect()
}

#[tokio::test]
async fn an_inner_join_with_filters_and_orders_on_both_sides_matches_hand_written_sql() {
    let (t, _) = league().await;
    let rows: Vec<(Player, Team)> = Player::repo()
        .join(t.db(), Player::TEAM_ID, Team::ID)
        .filter(Player::RANK.le(3))
        .filter_joined(Team::NAME.ne("gray"))
        .order_by_joined(Team::NAME.asc())
        .order_by(Player::RANK.desc())
        .fetch()
        .await
        .unwrap();
    assert_eq!(
        names(&rows),
        [
            ("cat", "blue"),
            ("dan", "blue"),
            ("ann", "red"),
            ("bob", "red")
        ]
    );
    let by_hand: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.name, t.name FROM players p JOIN teams t ON p.team_id = t.id \
         WHERE p.rank <= 3 AND t.name <> 'gray' ORDER BY t.name, p.rank DESC, p.id",
    )
    .fetch_all(t.db())
    .await
    .unwrap();
    let ours: Vec<(String, String)> = rows
        .iter()
        .map(|(p, t)| (p.name.clone(), t.name.clone()))
        .collect();
    assert_eq!(ours, by_hand);
    for (player, team) in &rows {
        assert_eq!(
            player.team_id,
            Some(team.id),
            "each pair is joined on the keys"
        );
    }
    // Equal sort values (cat and dan, both rank 2 in blue) and a limit: the
    // ids break the tie, so the cut is stable.
    let first = Player::repo()
        .join(t.db(), Player::TEAM_ID, Team::ID)
        .order_by(Player::RANK.asc())
        .limit(2)
        .fetch()
        .await
        .unwrap();
    let tied: Vec<&Player> = rows
        .iter()
        .map(|(p, _)| p)
        .filter(|p| p.rank == 2)
        .collect();
    let lower = tied.iter().min_by_key(|p| p.id).unwrap();
    assert_eq!(first[0].0.name, "bob");
    assert_eq!(first[1].0.id, lower.id);
}

#[tokio::test]
async fn a_left_join_keeps_rows_without_a_match_as_none() {
    let (t, _) = league().await;
    let rows: Vec<(Player, Option<Team>)> = Player::repo()
        .left_join(t.db(), Player::TEAM_ID, Team::ID)
        .order_by(Player::NAME.asc())
        .fetch()
        .await
        .unwrap();
    let seen: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|(p, t)| (p.name.as_str(), t.as_ref().map(|t| t.name.as_str())))
        .collect();
    assert_eq!(
        seen,
        [
            ("ann", Some("red")),
            ("bob", Some("red")),
            ("cat", Some("blue")),
            ("dan", Some("blue")),
            ("eve", None)
        ]
    );
    // A filter on the joined side: a team that fails it reads as None.
    let rows = Player::repo()
        .left_join(t.db(), Player::TEAM_ID, Team::ID)
        .filter_joined(Team::NAME.eq("red"))
        .order_by(Player::NAME.asc())
        .fetch()
        .await
        .unwrap();
    let teams: Vec<Option<&str>> = rows
        .iter()
        .map(|(_, t)| t.as_ref().map(|t| t.name.as_str()))
        .collect();
    assert_eq!(teams, [Some("red"), Some("red"), None, None, None]);
    // The other way round: a team without players still comes, with None.
    let teams = Team::repo()
        .left_join(t.db(), Team::ID, Player::TEAM_ID)
        .filter(Team::NAME.eq("gray"))
        .fetch()
        .await
        .unwrap();
    assert_eq!(teams.len(), 1);
    assert!(teams[0].1.is_none());
}

#[tokio::test]
async fn a_join_is_one_statement() {
    let dry = DryRun::new();
    let _ = Player::repo()
        .join(&dry, Player::TEAM_ID, Team::ID)
        .filter(Player::RANK.gt(1))
        .filter_joined(Team::NAME.ne("x"))
        .limit(10)
        .fetch()
        .await;
    let statements = dry.statements();
    assert_eq!(statements.len(), 1);
    let sql = &statements[0];
    assert!(
        sql.contains(r#"FROM (SELECT * FROM "public"."players" WHERE "rank" > $1) AS "l" JOIN (SELECT * FROM "public"."teams" WHERE "name" <> $2) AS "r" ON "l"."team_id" = "r"."id""#),
        "{sql}"
    );
    assert!(
        sql.ends_with("LIMIT 10"),
        "a literal, so a generic plan serves it: {sql}"
    );
}

/// Every pair of a join read page by page, `size` at a time.
async fn all_pages<'a, Out: mandrake_storage::JoinedSide<Team>>(
    size: u32,
    join: impl Fn() -> mandrake_storage::Join<Player, Team, &'a mandrake_storage::Db, Out>,
) -> Vec<(Player, Out)> {
    let (mut all, mut next, mut pages) = (Vec::new(), None, 0);
    loop {
        let page = join().limit(size).after_opt(next).page().await.unwrap();
        assert!(page.items.len() <= size as usize);
        pages += 1;
        all.extend(page.items);
        next = page.next;
        if next.is_none() {
            break;
        }
    }
    assert!(pages < 20, "the pages end");
    all
}

#[tokio::test]
async fn keyset_pages_of_a_join_resume_exactly_across_equal_sort_values() {
    let (t, teams) = league().await;
    // More ties: three players of rank 2 in blue, in the order the ids give.
    Player::repo()
        .create(
            t.db(),
            NewPlayer {
                team_id: Some(teams[1].id),
                name: "fay".into(),
                rank: 2,
            },
        )
        .await
        .unwrap();
    let inner = || {
        Player::repo()
            .join(t.db(), Player::TEAM_ID, Team::ID)
            .order_by_joined(Team::NAME.asc())
            .order_by(Player::RANK.desc())
    };
    let inner_ids: Vec<Uuid> = inner()
        .fetch()
        .await
        .unwrap()
        .iter()
        .map(|(p, _)| p.id)
        .collect();
    assert_eq!(inner_ids.len(), 5);
    for size in [1, 2, 3, 5, 6] {
        let paged: Vec<Uuid> = all_pages(size, inner)
            .await
            .iter()
            .map(|(p, _)| p.id)
            .collect();
        assert_eq!(paged, inner_ids, "pages of {size}");
    }
    // A left join ordered by the joined side: eve's team is NULL and sorts
    // last; a descending order on a nullable column mixes with the ids.
    let left = || {
        Player::repo()
            .left_join(t.db(), Player::TEAM_ID, Team::ID)
            .order_by_joined(Team::NAME.desc())
            .order_by(Player::RANK.asc())
    };
    let whole: Vec<Uuid> = left()
        .fetch()
        .await
        .unwrap()
        .iter()
        .map(|(p, _)| p.id)
        .collect();
    assert_eq!(whole.len(), 6);
    for size in [1, 2, 4] {
        let paged = all_pages(size, left).await;
        let ids: Vec<Uuid> = paged.iter().map(|(p, _)| p.id).collect();
        assert_eq!(ids, whole, "left pages of {size}");
        assert!(paged.last().unwrap().1.is_none(), "no team sorts last");
    }
    // A player added before the cursor's position (rank 9 leads blue, the
    // first team) does not shift the next page: it resumes after the pair it
    // stopped at.
    let first = inner().limit(2).page().await.unwrap();
    Player::repo()
        .create(
            t.db(),
            NewPlayer {
                team_id: Some(teams[1].id),
                name: "gil".into(),
                rank: 9,
            },
        )
        .await
        .unwrap();
    let second = inner()
        .limit(2)
        .after(first.next.clone().unwrap())
        .page()
        .await
        .unwrap();
    let second: Vec<Uuid> = second.items.iter().map(|(p, _)| p.id).collect();
    assert_eq!(second, inner_ids[2..4]);
    // A cursor of another order, or of a list, is refused by name.
    let other = Player::repo()
        .join(t.db(), Player::TEAM_ID, Team::ID)
        .order_by(Player::NAME.asc())
        .after(first.next.unwrap())
        .page()
        .await;
    assert!(
        matches!(other, Err(mandrake_storage::Error::InvalidCursor(_))),
        "{other:?}"
    );
    let listed = Player::repo()
        .list(
            t.db(),
            mandrake_storage::Filter::all(),
            mandrake_storage::ListOptions::new().limit(1),
        )
        .await
        .unwrap();
    let foreign = inner().after(listed.next.unwrap()).page().await;
    assert!(matches!(
        foreign,
        Err(mandrake_storage::Error::InvalidCursor(_))
    ));
}

#[derive(Record, Clone)]
#[record(table = "posts")]
pub struct Post {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
#[record(table = "labels")]
pub struct Label {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The link table of a many-to-many: one row per (post, label), with an
/// attribute of its own.
#[derive(Record, Clone)]
#[record(table = "post_labels", unique(post_id, label_id), index(label_id))]
pub struct PostLabel {
    pub id: Uuid,
    #[record(references = "posts", on_delete = "cascade")]
    pub post_id: Uuid,
    #[record(references = "labels", on_delete = "cascade")]
    pub label_id: Uuid,
    pub added_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[tokio::test]
async fn many_to_many_reads_both_ways_in_one_statement_each() {
    use mandrake_storage::{Filter, ListOptions};
    let t = TestDb::with_tables(&[Post::schema(), Label::schema(), PostLabel::schema()])
        .await
        .unwrap();
    let mut posts = Vec::new();
    for title in ["p0", "p1", "p2"] {
        let new = NewPost {
            title: title.into(),
        };
        posts.push(Post::repo().create(t.db(), new).await.unwrap());
    }
    let mut labels = Vec::new();
    for name in ["bug", "docs", "easy", "ui"] {
        let new = NewLabel { name: name.into() };
        labels.push(Label::repo().create(t.db(), new).await.unwrap());
    }
    // p0: ui, bug, easy (in that order); p1: bug; p2: none.
    for (post, label, by) in [(0, 3, "ann"), (0, 0, "bob"), (0, 2, "ann"), (1, 0, "cat")] {
        let link = NewPostLabel {
            post_id: posts[post].id,
            label_id: labels[label].id,
            added_by: by.into(),
        };
        PostLabel::repo().create(t.db(), link).await.unwrap();
    }
    let names = |page: &[Label]| page.iter().map(|l| l.name.clone()).collect::<Vec<_>>();
    let titles = |page: &[Post]| page.iter().map(|p| p.title.clone()).collect::<Vec<_>>();

    // The labels of a post, filtered, ordered, a page at a time.
    let labels_of =
        |post: Uuid| Label::ID.is_in_query(PostLabel::LABEL_ID, PostLabel::POST_ID.eq(post));
    let by_name = ListOptions::new().order_by(Label::NAME.asc());
    let first = Label::repo()
        .list(t.db(), labels_of(posts[0].id), by_name.clone().limit(2))
        .await
        .unwrap();
    assert_eq!(names(&first.items), ["bug", "easy"]);
    let rest = Label::repo()
        .list(
            t.db(),
            labels_of(posts[0].id),
            by_name.clone().limit(2).after(first.next.unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(names(&rest.items), ["ui"]);
    assert!(rest.next.is_none());
    let filtered = Label::repo()
        .list(
            t.db(),
            labels_of(posts[0].id).and(Label::NAME.ne("bug")),
            by_name.clone(),
        )
        .await
        .unwrap();
    assert_eq!(names(&filtered.items), ["easy", "ui"]);
    assert_eq!(
        Label::repo()
            .count(t.db(), labels_of(posts[2].id))
            .await
            .unwrap(),
        0
    );
    let by_hand: Vec<(String,)> = sqlx::query_as(
        "SELECT l.name FROM labels l JOIN post_labels pl ON pl.label_id = l.id \
         WHERE pl.post_id = $1 ORDER BY l.name",
    )
    .bind(posts[0].id)
    .fetch_all(t.db())
    .await
    .unwrap();
    let by_hand: Vec<String> = by_hand.into_iter().map(|(n,)| n).collect();
    assert_eq!(
        names(&first.items)
            .into_iter()
            .chain(names(&rest.items))
            .collect::<Vec<_>>(),
        by_hand
    );

    // The other way: the posts with a label, and with two labels at once.
    let with = |label: usize| {
        Post::ID.is_in_query(PostLabel::POST_ID, PostLabel::LABEL_ID.eq(labels[label].id))
    };
    let by_title = ListOptions::new().order_by(Post::TITLE.asc());
    let bugs = Post::repo()
        .list(t.db(), with(0), by_title.clone())
        .await
        .unwrap();
    assert_eq!(titles(&bugs.items), ["p0", "p1"]);
    let easy_bugs = Post::repo()
        .list(t.db(), with(0).and(with(2)), by_title.clone())
        .await
        .unwrap();
    assert_eq!(titles(&easy_bugs.items), ["p0"]);
    let one = Post::repo()
        .list(t.db(), with(0), by_title.clone().limit(1))
        .await
        .unwrap();
    assert_eq!(titles(&one.items), ["p0"]);
    let unlabeled = Post::repo()
        .list(
            t.db(),
            Filter::not(Post::ID.referenced_by(PostLabel::POST_ID, Filter::all())),
            by_title,
        )
        .await
        .unwrap();
    assert_eq!(titles(&unlabeled.items), ["p2"]);

    // With the link's own columns: the labels of a post in the order they
    // were added, each with its link row.
    let added: Vec<(PostLabel, Label)> = PostLabel::repo()
        .join(t.db(), PostLabel::LABEL_ID, Label::ID)
        .filter(PostLabel::POST_ID.eq(posts[0].id))
        .order_by(PostLabel::CREATED_AT.asc())
        .fetch()
        .await
        .unwrap();
    let seen: Vec<(&str, &str)> = added
        .iter()
        .map(|(link, label)| (link.added_by.as_str(), label.name.as_str()))
        .collect();
    assert_eq!(seen, [("ann", "ui"), ("bob", "bug"), ("ann", "easy")]);

    // Each read is one statement.
    let dry = DryRun::new();
    let _ = Label::repo()
        .list(&dry, labels_of(posts[0].id), by_name)
        .await;
    assert_eq!(dry.statements().len(), 1);
    assert!(
        dry.statements()[0].contains(
            r#"= ANY(ARRAY(SELECT "label_id" FROM "public"."post_labels" WHERE "post_id" = $1))"#
        ),
        "{}",
        dry.statements()[0]
    );
}
