//! Tenant isolation that the database enforces, tried as an attacker would:
//! with tenants A and B, every operation through B's handle on A's rows
//! finds, changes and deletes nothing, and works on B's own. The
//! application connects as a role without BYPASSRLS (`TestDb::app_db`).
//! The last tests take the policy and the composite key away and show the
//! same attacks then succeed: the suite depends on them.

use chrono::{DateTime, Utc};
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Db, Error, Filter, ListOptions, Record};
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(table = "workspaces")]
pub struct Workspace {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
#[record(table = "chats")]
pub struct Chat {
    pub id: Uuid,
    #[record(tenant, references = "workspaces", on_delete = "cascade")]
    pub workspace_id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
#[record(table = "posts", notify)]
pub struct Post {
    pub id: Uuid,
    #[record(tenant)]
    pub workspace_id: Uuid,
    #[record(references = "chats", on_delete = "cascade")]
    pub chat_id: Uuid,
    #[record(unique)]
    pub slug: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Two workspaces, each with a chat and a post, written through its own
/// tenant handle on the application's role.
struct World {
    test: TestDb,
    app: Db,
    a: Db,
    b: Db,
    tenant_b: Uuid,
    chat_a: Chat,
    post_a: Post,
    post_b: Post,
}

async fn world() -> World {
    let test = TestDb::with_tables(&[Workspace::schema(), Chat::schema(), Post::schema()])
        .await
        .unwrap();
    let workspace = |name: &str| NewWorkspace { name: name.into() };
    let (wa, wb) = (
        Workspace::repo()
            .create(test.db(), workspace("A"))
            .await
            .unwrap(),
        Workspace::repo()
            .create(test.db(), workspace("B"))
            .await
            .unwrap(),
    );
    let app = test.app_db().await.unwrap();
    let (a, b) = (app.tenant(wa.id), app.tenant(wb.id));
    // The tenant key left out (`None`): the handle fills it.
    let chat = |db: &Db| {
        let db = db.clone();
        async move {
            Chat::repo()
                .create(
                    &db,
                    NewChat {
                        workspace_id: None,
                        title: "chat".into(),
                    },
                )
                .await
                .unwrap()
        }
    };
    let (chat_a, chat_b) = (chat(&a).await, chat(&b).await);
    assert_eq!((chat_a.workspace_id, chat_b.workspace_id), (wa.id, wb.id));
    let post = |db: &Db, chat: &Chat, slug: &str| {
        let (db, new) = (db.clone(), new_post(None, chat.id, slug));
        async move { Post::repo().create(&db, new).await.unwrap() }
    };
    let post_a = post(&a, &chat_a, "a-post").await;
    let post_b = post(&b, &chat_b, "b-post").await;
    assert_eq!((post_a.workspace_id, post_b.workspace_id), (wa.id, wb.id));
    World {
        test,
        app,
        a,
        b,
        tenant_b: wb.id,
        chat_a,
        post_a,
        post_b,
    }
}

/// A post; `workspace: None` leaves the tenant to the handle.
fn new_post(workspace: Option<Uuid>, chat: Uuid, slug: &str) -> NewPost {
    NewPost {
        workspace_id: workspace,
        chat_id: chat,
        slug: slug.into(),
        body: format!("body of {slug}"),
    }
}

fn patch() -> PostPatch {
    PostPatch {
        body: Some("overwritten".into()),
        ..Default::default()
    }
}

/// A's post as A sees it: unchanged by whatever B tried.
async fn a_post_is_intact(w: &World) {
    let seen = Post::repo().get(&w.a, w.post_a.id).await.unwrap();
    assert_eq!(seen.body, w.post_a.body);
    assert_eq!(seen.updated_at, w.post_a.updated_at);
}

fn refused(result: mandrake_storage::Result<impl std::fmt::Debug>) {
    match result {
        Err(Error::TenantRefused { table }) => assert_eq!(table, "posts"),
        other => panic!("expected TenantRefused on posts, got {other:?}"),
    }
}

#[tokio::test]
async fn reads_through_another_tenant_find_nothing_and_find_their_own() {
    let w = world().await;
    let repo = Post::repo();
    assert!(matches!(
        repo.get(&w.b, w.post_a.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(repo.find(&w.b, w.post_a.id).await.unwrap().is_none());
    let both = [w.post_a.id, w.post_b.id];
    let many = repo.get_many(&w.b, &both).await.unwrap();
    assert_eq!(many.iter().map(|p| p.id).collect::<Vec<_>>(), [w.post_b.id]);
    let page = repo
        .list(&w.b, Filter::all(), ListOptions::new())
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        [w.post_b.id]
    );
    assert_eq!(repo.count(&w.b, Filter::all()).await.unwrap(), 1);
    assert!(!repo.exists(&w.b, Post::ID.eq(w.post_a.id)).await.unwrap());
    assert!(repo.exists(&w.b, Post::ID.eq(w.post_b.id)).await.unwrap());
    let loaded = repo
        .load_by(
            &w.b,
            Post::CHAT_ID,
            &[w.chat_a.id, w.post_b.chat_id],
            ListOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(loaded.contains_key(&w.post_b.chat_id));
    // Raw SQL through the handle is held to the same rows.
    let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM posts")
        .fetch_all(&w.b)
        .await
        .unwrap();
    assert_eq!(ids, [w.post_b.id]);
    // Without a tenant: nothing at all (fail closed).
    assert_eq!(repo.count(&w.app, Filter::all()).await.unwrap(), 0);
    assert_eq!(Chat::repo().count(&w.app, Filter::all()).await.unwrap(), 0);
}

#[tokio::test]
async fn writes_through_another_tenant_change_nothing_and_change_their_own() {
    let w = world().await;
    let repo = Post::repo();
    assert!(matches!(
        repo.update(&w.b, w.post_a.id, patch()).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(
        repo.update_where(&w.b, Post::ID.eq(w.post_a.id), patch())
            .await
            .unwrap(),
        0
    );
    assert!(!repo.delete(&w.b, w.post_a.id).await.unwrap());
    let raw = sqlx::query("UPDATE posts SET body = 'raw'")
        .execute(&w.b)
        .await
        .unwrap();
    assert_eq!(raw.rows_affected(), 1, "B's own row only");
    // The same calls on B's own rows work.
    let mine = repo.update(&w.b, w.post_b.id, patch()).await.unwrap();
    assert_eq!(mine.body, "overwritten");
    // An upsert onto A's key cannot take A's row over.
    let taking = new_post(Some(w.tenant_b), w.post_b.chat_id, &w.post_a.slug);
    refused(repo.upsert(&w.b, taking, Post::ON_SLUG).await);
    let taking = new_post(None, w.post_b.chat_id, &w.post_a.slug);
    refused(repo.upsert_many(&w.b, vec![taking], Post::ON_SLUG).await);
    let taking = new_post(None, w.post_b.chat_id, &w.post_a.slug);
    assert!(
        repo.insert_or_ignore(&w.b, taking, Post::ON_SLUG)
            .await
            .unwrap()
            .is_none()
    );
    let own = new_post(None, w.post_b.chat_id, &w.post_b.slug);
    let upserted = repo.upsert(&w.b, own, Post::ON_SLUG).await.unwrap();
    assert_eq!(upserted.id, w.post_b.id);
    let own = new_post(None, w.post_b.chat_id, &w.post_b.slug);
    let upserted = repo
        .upsert_many(&w.b, vec![own], Post::ON_SLUG)
        .await
        .unwrap();
    assert_eq!(upserted[0].id, w.post_b.id);
    // Deleting everything deletes B's own.
    assert_eq!(repo.delete_where(&w.b, Filter::all()).await.unwrap(), 1);
    let raw = sqlx::query("DELETE FROM posts")
        .execute(&w.b)
        .await
        .unwrap();
    assert_eq!(raw.rows_affected(), 0);
    a_post_is_intact(&w).await;
}

#[tokio::test]
async fn forged_tenants_and_cross_tenant_parents_are_refused() {
    let w = world().await;
    let repo = Post::repo();
    // B creating a row that names A: refused by the policy, typed.
    let forged = new_post(Some(w.post_a.workspace_id), w.chat_a.id, "forged");
    refused(repo.create(&w.b, forged).await);
    let forged = new_post(Some(w.post_a.workspace_id), w.chat_a.id, "forged-many");
    refused(repo.create_many(&w.b, vec![forged]).await);
    // B's row pointing at A's chat: the key over the tenant refuses it.
    let crossing = new_post(Some(w.tenant_b), w.chat_a.id, "crossing");
    assert!(matches!(
        repo.create(&w.b, crossing).await,
        Err(Error::ForeignKeyViolation { .. })
    ));
    // Moving B's row into A by a patch: refused.
    let raw = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE posts SET workspace_id = '{}'",
        w.post_a.workspace_id
    )))
    .execute(&w.b)
    .await;
    assert!(matches!(
        raw.map_err(Error::from),
        Err(Error::TenantRefused { .. })
    ));
    // Without a tenant, a write is refused with the typed error, whether
    // it names a tenant or leaves it to the handle.
    refused(
        repo.create(
            &w.app,
            new_post(Some(w.tenant_b), w.post_b.chat_id, "untenanted"),
        )
        .await,
    );
    refused(
        repo.create(&w.app, new_post(None, w.post_b.chat_id, "untenanted"))
            .await,
    );
    // A batch through the handle: the tenant filled in every row.
    let batch = (0..3)
        .map(|i| new_post(None, w.post_b.chat_id, &format!("batch-{i}")))
        .collect();
    let made = repo.create_many(&w.b, batch).await.unwrap();
    assert!(made.iter().all(|p| p.workspace_id == w.tenant_b));
    a_post_is_intact(&w).await;
    assert_eq!(repo.count(&w.a, Filter::all()).await.unwrap(), 1);
    assert_eq!(repo.count(&w.b, Filter::all()).await.unwrap(), 4);
}

#[tokio::test]
async fn the_tenant_holds_for_a_transaction_and_never_outlives_it() {
    let w = world().await;
    let mut tx = w.b.begin().await.unwrap();
    let seen: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM posts")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, [w.post_b.id]);
    Post::repo()
        .update(&mut *tx, w.post_b.id, patch())
        .await
        .unwrap();
    assert!(
        Post::repo()
            .find(&mut *tx, w.post_a.id)
            .await
            .unwrap()
            .is_none()
    );
    // A's handle midway runs on a connection of its own: it sees A's rows,
    // and B's transaction goes on seeing B's only.
    let repo = Post::repo();
    let a_seen = repo.list(&w.a, Filter::all(), ListOptions::new());
    let a_seen = a_seen.await.unwrap().items;
    assert_eq!(
        a_seen.iter().map(|p| p.id).collect::<Vec<_>>(),
        [w.post_a.id]
    );
    assert_eq!(
        Post::repo().count(&mut *tx, Filter::all()).await.unwrap(),
        1
    );
    tx.commit().await.unwrap();
    // Every connection of the pool, after: no tenant left behind.
    for _ in 0..10 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
            .fetch_one(&w.app)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
    // A's handle and B's handle on the same pool, interleaved.
    let repo = Post::repo();
    for _ in 0..5 {
        let (ra, rb) = tokio::join!(
            repo.count(&w.a, Filter::all()),
            repo.count(&w.b, Filter::all())
        );
        assert_eq!((ra.unwrap(), rb.unwrap()), (1, 1));
    }
}

#[tokio::test]
async fn one_connection_serving_tenants_in_turn_never_carries_one_over() {
    let w = world().await;
    // A pool of one direct connection: every handle below gets the same
    // session, which holds the tenant between statements.
    let options = w
        .test
        .connect_options()
        .username(mandrake_storage::testing::APP_ROLE);
    let settings = mandrake_storage::Settings {
        pool_size: 1,
        min_idle: 0,
        ..Default::default()
    };
    let one = Db::connect_options(options, &settings).await.unwrap();
    let (a, b) = (one.tenant(w.post_a.workspace_id), one.tenant(w.tenant_b));
    let count = |db: Db| async move {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
            .fetch_one(&db)
            .await
            .unwrap();
        n
    };
    for _ in 0..3 {
        assert_eq!(count(b.clone()).await, 1);
        assert_eq!(count(one.clone()).await, 0, "no tenant after B");
        assert_eq!(count(a.clone()).await, 1);
        assert_eq!(count(b.clone()).await, 1);
    }
    // A checked-out connection holds its handle's tenant, or none.
    let mut conn = b.acquire().await.unwrap();
    let seen: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM posts")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert_eq!(seen, [w.post_b.id]);
    drop(conn);
    let mut conn = one.acquire().await.unwrap();
    let seen: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM posts")
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert!(seen.is_empty());
    drop(conn);
    // Raw SQL through B's handle that sets a tenant for the session: the
    // session is reset before its next use, by B or by anyone.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT set_config('mandrake.tenant', '{}', false)",
        w.post_a.workspace_id
    )))
    .execute(&b)
    .await
    .unwrap();
    let ids = |db: Db| async move {
        let ids: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM posts")
            .fetch_all(&db)
            .await
            .unwrap();
        ids
    };
    assert_eq!(ids(b.clone()).await, [w.post_b.id]);
    assert!(ids(one.clone()).await.is_empty());
}

#[tokio::test]
async fn a_tenants_change_feed_carries_only_its_own_changes() {
    use futures_util::StreamExt;
    use mandrake_storage::Change;
    let w = world().await;
    let mut feed = Post::subscribe(&w.b, Filter::all()).await.unwrap();
    // A's insert, update and delete, then B's insert: B hears only its own.
    let a_new = Post::repo()
        .create(
            &w.a,
            new_post(Some(w.post_a.workspace_id), w.chat_a.id, "a-2"),
        )
        .await
        .unwrap();
    Post::repo().update(&w.a, a_new.id, patch()).await.unwrap();
    Post::repo().delete(&w.a, w.post_a.id).await.unwrap();
    let b_new = Post::repo()
        .create(&w.b, new_post(None, w.post_b.chat_id, "b-2"))
        .await
        .unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .expect("B's own insert arrives")
        .unwrap()
        .unwrap();
    match first {
        Change::Inserted(post) => assert_eq!(post.id, b_new.id),
        other => panic!("B heard another tenant's change: {other:?}"),
    }
}

#[tokio::test]
async fn without_the_policy_or_the_composite_key_the_same_attacks_succeed() {
    let w = world().await;
    // The suite's assertions hold because of the schema: remove the
    // policy (as the owner), and B reads and changes A's row.
    sqlx::raw_sql("ALTER TABLE posts DISABLE ROW LEVEL SECURITY")
        .execute(w.test.db())
        .await
        .unwrap();
    assert_eq!(Post::repo().count(&w.b, Filter::all()).await.unwrap(), 2);
    let stolen = Post::repo()
        .update(&w.b, w.post_a.id, patch())
        .await
        .unwrap();
    assert_eq!(stolen.body, "overwritten");
    // Remove the key over the tenant, and B's row can point at A's chat.
    let key: String = sqlx::query_scalar(
        "SELECT conname::text FROM pg_constraint WHERE conrelid = 'posts'::regclass AND contype = 'f'",
    )
    .fetch_one(w.test.db())
    .await
    .unwrap();
    assert_eq!(key, "posts_workspace_id_chat_id_fkey");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE posts DROP CONSTRAINT {key}"
    )))
    .execute(w.test.db())
    .await
    .unwrap();
    Post::repo()
        .create(&w.b, new_post(Some(w.tenant_b), w.chat_a.id, "crossing"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_superuser_sees_every_tenant_which_is_why_the_app_is_not_one() {
    let w = world().await;
    // `TestDb::db()` connects as the cluster's superuser: row security
    // does not hold for it (a warning says so at connect).
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(w.test.db())
        .await
        .unwrap();
    assert_eq!(n, 2);
    let role: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&w.app)
        .await
        .unwrap();
    assert_eq!(role, mandrake_storage::testing::APP_ROLE);
    // Nor is there a tenant to fill a key left out: the column says so.
    let untenanted = new_post(None, w.post_b.chat_id, "untenanted");
    match Post::repo().create(w.test.db(), untenanted).await {
        Err(Error::NotNullViolation { column }) => assert_eq!(column, "workspace_id"),
        other => panic!("expected NotNullViolation on workspace_id, got {other:?}"),
    }
}
