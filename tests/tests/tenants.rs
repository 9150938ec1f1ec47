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
    /// The tenant root: each workspace is a tenant.
    #[record(tenant)]
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
    workspace_b: Workspace,
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
        workspace_b: wb.clone(),
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
    // An upsert on A's key names a row of B's own: unique keys hold
    // within a tenant, so A's row is neither taken over nor seen.
    let taking = new_post(Some(w.tenant_b), w.post_b.chat_id, &w.post_a.slug);
    let own = repo.upsert(&w.b, taking, Post::ON_SLUG).await.unwrap();
    assert_eq!(
        (own.workspace_id, own.slug.as_str()),
        (w.tenant_b, w.post_a.slug.as_str())
    );
    assert_ne!(own.id, w.post_a.id);
    let again = new_post(None, w.post_b.chat_id, &w.post_a.slug);
    let upserted = repo
        .upsert_many(&w.b, vec![again], Post::ON_SLUG)
        .await
        .unwrap();
    assert_eq!(upserted[0].id, own.id);
    let again = new_post(None, w.post_b.chat_id, &w.post_a.slug);
    assert!(
        repo.insert_or_ignore(&w.b, again, Post::ON_SLUG)
            .await
            .unwrap()
            .is_none()
    );
    repo.delete(&w.b, own.id).await.unwrap();
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

/// A pool of `size` direct connections as the application's role, that
/// checks an idle connection only after an hour (so a dead one is met by a
/// statement, not by the checkout's ping).
async fn app_pool(w: &World, size: u32) -> Db {
    let options = w
        .test
        .connect_options()
        .username(mandrake_storage::testing::APP_ROLE);
    let settings = mandrake_storage::Settings {
        pool_size: size,
        min_idle: 0,
        validate_after: std::time::Duration::from_secs(3600),
        ..Default::default()
    };
    Db::connect_options(options, &settings).await.unwrap()
}

async fn count_posts(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_committed_transaction_leaves_its_tenant_its_own_rows() {
    let w = world().await;
    let pool = app_pool(&w, 5).await;
    let b = pool.tenant(w.tenant_b);
    for round in 0..20 {
        let mut tx = b.begin().await.unwrap();
        Post::repo()
            .update(&mut *tx, w.post_b.id, patch())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // The same connection, next: still B's.
        assert_eq!(
            Post::repo().count(&b, Filter::all()).await.unwrap(),
            1 + round,
            "round {round}"
        );
        Post::repo()
            .create(&b, new_post(None, w.post_b.chat_id, &format!("r{round}")))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn no_spelling_of_set_config_leaves_a_tenant_behind() {
    let w = world().await;
    let one = app_pool(&w, 1).await;
    let tenant_a = w.post_a.workspace_id;
    // An SQL function that sets the tenant for the session, made by the owner.
    sqlx::raw_sql(
        "CREATE FUNCTION be_tenant(t text) RETURNS text LANGUAGE sql \
         AS $$ SELECT set_config('mandrake.tenant', t, false) $$; \
         GRANT EXECUTE ON FUNCTION be_tenant(text) TO PUBLIC",
    )
    .execute(w.test.db())
    .await
    .unwrap();
    let sneaky = [
        format!(r#"SELECT U&"set\005fconfig"('mandrake.tenant', '{tenant_a}', false)"#),
        format!("SELECT be_tenant('{tenant_a}')"),
        format!("select /* */ SET_CONFIG ('mandrake.tenant', '{tenant_a}', false)"),
    ];
    for sql in sneaky {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&one)
            .await
            .unwrap();
        // The next caller, without a tenant or as B, on that very session.
        assert_eq!(count_posts(&one).await, 0, "{sql}");
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&one.tenant(w.tenant_b))
            .await
            .unwrap();
        assert_eq!(
            Post::repo().count(&one, Filter::all()).await.unwrap(),
            0,
            "typed, after {sql}"
        );
        let b_sees = Post::repo()
            .list(&one.tenant(w.tenant_b), Filter::all(), ListOptions::new())
            .await
            .unwrap();
        assert_eq!(b_sees.items.len(), 1);
        assert_eq!(b_sees.items[0].id, w.post_b.id);
    }
}

#[tokio::test]
async fn an_advisory_lock_does_not_outlive_its_caller() {
    let w = world().await;
    let one = app_pool(&w, 1).await;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242)")
        .fetch_one(&one)
        .await
        .unwrap();
    assert!(taken);
    // The next caller of that connection (a typed call) gets it reset.
    Post::repo().count(&w.b, Filter::all()).await.unwrap();
    Post::repo().count(&one, Filter::all()).await.unwrap();
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(4242)")
        .fetch_one(w.test.db())
        .await
        .unwrap();
    assert!(free, "the lock went with its caller");
}

#[tokio::test]
async fn a_temporary_table_never_stands_in_for_a_records_table() {
    let w = world().await;
    let one = app_pool(&w, 1).await;
    let (a, b) = (one.tenant(w.post_a.workspace_id), one.tenant(w.tenant_b));
    // A plants a temporary `posts` on the only connection, with a row.
    sqlx::raw_sql(
        "CREATE TEMP TABLE posts (LIKE public.posts INCLUDING ALL); \
         INSERT INTO posts SELECT * FROM public.posts",
    )
    .execute(&a)
    .await
    .unwrap();
    // B on that connection: its create goes to the real table, its list
    // reads the real one.
    let made = Post::repo()
        .create(&b, new_post(None, w.post_b.chat_id, "b-real"))
        .await
        .unwrap();
    let seen = Post::repo()
        .list(&b, Filter::all(), ListOptions::new())
        .await
        .unwrap();
    let mut ids: Vec<Uuid> = seen.items.iter().map(|p| p.id).collect();
    ids.sort();
    let mut want = vec![w.post_b.id, made.id];
    want.sort();
    assert_eq!(ids, want);
    // Inside one transaction, where no reset comes between: typed calls
    // still name the real table.
    let mut tx = b.begin().await.unwrap();
    sqlx::raw_sql("CREATE TEMP TABLE posts (LIKE public.posts INCLUDING ALL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        Post::repo().count(&mut *tx, Filter::all()).await.unwrap(),
        2
    );
    let third = Post::repo()
        .create(&mut *tx, new_post(None, w.post_b.chat_id, "b-tx"))
        .await
        .unwrap();
    assert!(
        Post::repo()
            .find(&mut *tx, third.id)
            .await
            .unwrap()
            .is_some()
    );
    let temp: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_temp.posts")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(temp, 0);
    tx.commit().await.unwrap();
    assert_eq!(Post::repo().count(&b, Filter::all()).await.unwrap(), 3);
}

#[tokio::test]
async fn a_read_run_again_after_the_server_ended_its_connection_keeps_its_tenant() {
    use futures_util::TryStreamExt;
    let w = world().await;
    let application = "tenant_read_again";
    let options = w
        .test
        .connect_options()
        .username(mandrake_storage::testing::APP_ROLE)
        .application_name(application);
    let settings = mandrake_storage::Settings {
        pool_size: 1,
        min_idle: 0,
        validate_after: std::time::Duration::from_secs(3600),
        ..Default::default()
    };
    let b = Db::connect_options(options, &settings)
        .await
        .unwrap()
        .tenant(w.tenant_b);
    // The pooled connection's backend ends, found from outside: a typed call
    // left it as it was, so nothing checks it before the read meets it.
    let end_the_session = || async {
        Post::repo().count(&b, Filter::all()).await.unwrap();
        let pid: i32 = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 \
             ORDER BY backend_start DESC LIMIT 1",
        )
        .bind(application)
        .fetch_one(w.test.db())
        .await
        .unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(w.test.db())
            .await
            .unwrap();
        // The backend is gone before the next statement is sent.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    end_the_session().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&b)
        .await
        .unwrap();
    assert_eq!(n, 1);
    end_the_session().await;
    let streamed: Vec<Uuid> = sqlx::query_scalar::<_, Uuid>("SELECT id FROM posts")
        .fetch(&b)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(streamed, [w.post_b.id]);
}

#[tokio::test]
async fn behind_pgbouncer_a_tenant_handle_checks_out_no_connection() {
    let w = world().await;
    let settings = mandrake_storage::Settings {
        pgbouncer: true,
        pool_size: 2,
        ..Default::default()
    };
    let options = w
        .test
        .through_pgbouncer()
        .unwrap()
        .username(mandrake_storage::testing::APP_ROLE);
    let bouncer = Db::connect_options(options, &settings).await.unwrap();
    let b = bouncer.tenant(w.tenant_b);
    assert!(matches!(
        b.acquire().await,
        Err(Error::TenantNeedsTransaction)
    ));
    // Its transaction holds the tenant instead.
    let mut tx = b.begin().await.unwrap();
    assert_eq!(
        Post::repo().count(&mut *tx, Filter::all()).await.unwrap(),
        1
    );
    tx.rollback().await.unwrap();
    // A plain checkout, after B's statements, sees no tenant's rows.
    let mut conn = bouncer.acquire().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM posts")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_tenant_handle_on_a_role_that_bypasses_row_security_is_refused() {
    let w = world().await;
    // `TestDb::db()` is the cluster's superuser.
    let superuser = w.test.db();
    match Post::repo()
        .count(&superuser.tenant(w.tenant_b), Filter::all())
        .await
    {
        Err(Error::RowSecurityBypassed { role }) => assert!(!role.is_empty()),
        other => panic!("expected RowSecurityBypassed, got {other:?}"),
    }
    assert!(matches!(
        superuser.tenant(w.tenant_b).begin().await,
        Err(Error::RowSecurityBypassed { .. })
    ));
    // Said explicitly, trusted code gets it, and sees every tenant's rows.
    let meant = superuser.bypassing_row_security().tenant(w.tenant_b);
    assert_eq!(Post::repo().count(&meant, Filter::all()).await.unwrap(), 2);
    // The application's role is held to its tenant as before.
    assert_eq!(Post::repo().count(&w.b, Filter::all()).await.unwrap(), 1);
}

#[tokio::test]
async fn a_tenant_reads_and_writes_only_its_own_root_row() {
    let w = world().await;
    let ws = Workspace::repo();
    let (a_id, b_id) = (w.post_a.workspace_id, w.tenant_b);
    // A sees its own workspace and nobody else's.
    let seen = ws
        .list(&w.a, Filter::all(), ListOptions::new())
        .await
        .unwrap();
    assert_eq!(seen.items.iter().map(|x| x.id).collect::<Vec<_>>(), [a_id]);
    assert!(matches!(
        ws.get(&w.a, b_id).await,
        Err(Error::NotFound { .. })
    ));
    // A can neither rename nor delete B, and B's chats and posts stay.
    let rename = WorkspacePatch {
        name: Some("taken".into()),
    };
    assert!(matches!(
        ws.update(&w.a, b_id, rename.clone()).await,
        Err(Error::NotFound { .. })
    ));
    assert!(!ws.delete(&w.a, b_id).await.unwrap());
    assert_eq!(
        ws.delete_where(&w.a, Workspace::ID.eq(b_id)).await.unwrap(),
        0
    );
    let raw = sqlx::query("DELETE FROM workspaces")
        .execute(&w.a)
        .await
        .unwrap();
    assert_eq!(raw.rows_affected(), 1, "A's own workspace only");
    assert_eq!(ws.get(&w.b, b_id).await.unwrap().name, w.workspace_b.name);
    assert_eq!(Post::repo().count(&w.b, Filter::all()).await.unwrap(), 1);
    assert_eq!(Chat::repo().count(&w.b, Filter::all()).await.unwrap(), 1);
    // B renames its own.
    assert_eq!(ws.update(&w.b, b_id, rename).await.unwrap().name, "taken");
    // Without a tenant: no workspace at all.
    assert_eq!(ws.count(&w.app, Filter::all()).await.unwrap(), 0);
    // A plain create is refused everywhere; a tenant is made explicitly.
    let new = || NewWorkspace { name: "C".into() };
    assert!(matches!(
        ws.create(&w.a, new()).await,
        Err(Error::TenantRefused { .. })
    ));
    assert!(matches!(
        ws.create(&w.app, new()).await,
        Err(Error::TenantRefused { .. })
    ));
    let c = ws.create_tenant(&w.app, new()).await.unwrap();
    assert_eq!(ws.get(&w.app.tenant(c.id), c.id).await.unwrap().name, "C");
    assert!(ws.find(&w.b, c.id).await.unwrap().is_none());
    // Its children live in it, by the same keys.
    let chat = Chat::repo()
        .create(
            &w.app.tenant(c.id),
            NewChat {
                workspace_id: None,
                title: "first".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(chat.workspace_id, c.id);
}

#[tokio::test]
async fn a_unique_key_holds_within_a_tenant_and_tells_nothing_of_another() {
    let w = world().await;
    let repo = Post::repo();
    // B takes the slug A uses: no UniqueViolation, which would tell B it exists.
    let mine = repo
        .create(&w.b, new_post(None, w.post_b.chat_id, &w.post_a.slug))
        .await
        .unwrap();
    assert_eq!(mine.slug, w.post_a.slug);
    // Within B it is unique, by a key that leads with the tenant.
    match repo
        .create(&w.b, new_post(None, w.post_b.chat_id, &w.post_a.slug))
        .await
    {
        Err(Error::UniqueViolation { constraint }) => {
            assert_eq!(constraint, "posts_workspace_id_slug_key")
        }
        other => panic!("expected UniqueViolation, got {other:?}"),
    }
    let key: String = sqlx::query_scalar(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE conname = 'posts_workspace_id_slug_key'",
    )
    .fetch_one(w.test.db())
    .await
    .unwrap();
    assert_eq!(key, "UNIQUE (workspace_id, slug)");
    a_post_is_intact(&w).await;
    // EXPLAIN's estimates count every tenant's rows: refused.
    match repo
        .explain(
            &w.b,
            Post::SLUG.eq(w.post_a.slug.clone()),
            ListOptions::new(),
        )
        .await
    {
        Err(Error::ExplainRefused { table }) => assert_eq!(table, "posts"),
        other => panic!("expected ExplainRefused, got {other:?}"),
    }
}

/// The next event of a subscription to posts, or a panic after 10 s.
async fn next_change<E>(feed: &mut mandrake_storage::Subscription<Post, E>) -> E {
    use futures_util::StreamExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .expect("a change within 10 s")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_row_moved_to_another_tenant_is_deleted_for_the_one_it_left() {
    use mandrake_storage::Change;
    let w = world().await;
    let mut a_feed = Post::subscribe(&w.a, Filter::all()).await.unwrap();
    let mut b_feed = Post::subscribe(&w.b, Filter::all()).await.unwrap();
    // An operator moves A's post into B, and writes B's text into it.
    sqlx::query("UPDATE posts SET workspace_id = $1, chat_id = $2, body = 'B only' WHERE id = $3")
        .bind(w.tenant_b)
        .bind(w.post_b.chat_id)
        .bind(w.post_a.id)
        .execute(w.test.db())
        .await
        .unwrap();
    match next_change(&mut a_feed).await {
        Change::Deleted(id) => assert_eq!(id, w.post_a.id),
        other => panic!("A heard B's content: {other:?}"),
    }
    match next_change(&mut b_feed).await {
        Change::Updated(post) => assert_eq!((post.id, post.body.as_str()), (w.post_a.id, "B only")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn trusted_code_hears_every_tenants_changes_each_with_its_tenant() {
    use mandrake_storage::{Change, TenantChange};
    let w = world().await;
    // On the application's handle without a tenant: nothing of a
    // tenant-scoped table through `subscribe`, everything through this.
    let mut all = Post::subscribe_all_tenants(&w.app, Filter::all())
        .await
        .unwrap();
    let tenant_a = w.post_a.workspace_id;
    let a_new = Post::repo()
        .create(&w.a, new_post(None, w.chat_a.id, "a-all"))
        .await
        .unwrap();
    Post::repo().delete(&w.b, w.post_b.id).await.unwrap();
    match next_change(&mut all).await {
        TenantChange {
            tenant,
            change: Change::Inserted(post),
        } => assert_eq!((tenant, post.id), (Some(tenant_a), a_new.id)),
        other => panic!("{other:?}"),
    }
    match next_change(&mut all).await {
        TenantChange {
            tenant,
            change: Change::Deleted(id),
        } => assert_eq!((tenant, id), (Some(w.tenant_b), w.post_b.id)),
        other => panic!("{other:?}"),
    }
}

/// A tenant-scoped record in the change feed, with a search field and a
/// trigram index: lookups, which the feed must not use.
#[derive(Record, Clone)]
#[record(
    table = "memos",
    notify,
    extension = "pg_trgm",
    index(body, using = "gin", ops = "gin_trgm_ops")
)]
pub struct Memo {
    pub id: Uuid,
    #[record(tenant)]
    pub workspace_id: Uuid,
    #[record(search = "english")]
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Workspaces A and B, each with memos about zebrafish among others, and
/// their tenant handles on the application's role.
async fn memos() -> (TestDb, Db, Db, Db) {
    let test = TestDb::with_tables(&[Workspace::schema(), Memo::schema()])
        .await
        .unwrap();
    let app = test.app_db().await.unwrap();
    let mut handles = Vec::new();
    for name in ["A", "B"] {
        let workspace = Workspace::repo()
            .create(test.db(), NewWorkspace { name: name.into() })
            .await
            .unwrap();
        let tenant = app.tenant(workspace.id);
        let mut bodies = vec![format!("zebrafish seen by {name}")];
        bodies.extend((0..40).map(|i| format!("note {i} of {name} about nothing")));
        let rows = bodies
            .into_iter()
            .map(|body| NewMemo {
                workspace_id: None,
                body,
            })
            .collect();
        Memo::repo().create_many(&tenant, rows).await.unwrap();
        handles.push(tenant);
    }
    let b = handles.pop().unwrap();
    let a = handles.pop().unwrap();
    (test, app, a, b)
}

/// Finding 2: through a tenant handle, full-text search and substring
/// filters are served by the field's GIN index and the trigram index.
/// Under row security PostgreSQL would not use either (their operators are
/// not leakproof); the lookups find the tenant's matches through them. The
/// indexes' scans are counted for this transaction, with sequential scans
/// off so that none can stand in.
#[tokio::test]
async fn a_tenants_search_and_substring_filters_are_served_by_their_indexes() {
    let (test, app, _a, b) = memos().await;
    let mut tx = b.begin().await.unwrap();
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await
        .unwrap();
    let options = mandrake_storage::SearchOptions::new();
    let hits = Memo::repo()
        .search(&mut *tx, Memo::BODY, "zebrafish", Filter::all(), options)
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].record.body, "zebrafish seen by B");
    let page = Memo::repo()
        .list(
            &mut *tx,
            Memo::BODY.contains_text("ebrafis"),
            ListOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].body, "zebrafish seen by B");
    let matching = Memo::BODY.matches("zebrafish");
    assert_eq!(Memo::repo().count(&mut *tx, matching).await.unwrap(), 1);
    // Not matching is not narrowed (no index serves a NOT), and still right.
    let others = Memo::BODY.contains_text("ebrafis").not();
    assert_eq!(Memo::repo().count(&mut *tx, others).await.unwrap(), 40);
    let scans: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.relname::text, pg_stat_get_xact_numscans(c.oid) FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam \
         WHERE i.indrelid = 'public.memos'::regclass AND am.amname = 'gin' ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(scans.len(), 2, "{scans:?}");
    assert!(scans.iter().all(|(_, n)| *n >= 1), "{scans:?}");
    // EXPLAIN through the handle, of the statement the typed call sends:
    // the lookup's ids are computed once (an InitPlan) and narrow the rows.
    let dry = mandrake_storage::DryRun::new();
    let filter = Memo::BODY.contains_text("ebrafis");
    let _ = Memo::repo().list(&dry, filter, ListOptions::new()).await;
    let explain = format!("EXPLAIN (VERBOSE) {}", dry.statements()[0]);
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .bind("%ebrafis%")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    let plan = plan.join("\n");
    // 15 prints `(memos.id = ANY ($0))`, 17 and later `(InitPlan 1).col1`.
    assert!(plan.contains("InitPlan 1"), "{plan}");
    assert!(
        plan.contains("memos_body_like('%ebrafis%'::text, true)"),
        "{plan}"
    );
    assert!(plan.contains("(memos.id = ANY ("), "{plan}");
    tx.rollback().await.unwrap();
    // Without a tenant the application's role finds nothing, through the
    // typed call and through the lookup called by hand; the superuser, who
    // reads every row anyway, finds both tenants' memos.
    let found = |db: Db| async move {
        Memo::repo()
            .count(&db, Memo::BODY.matches("zebrafish"))
            .await
            .unwrap()
    };
    assert_eq!(found(app.clone()).await, 0);
    assert_eq!(found(b.clone()).await, 1);
    assert_eq!(found(test.db().clone()).await, 2);
    let by_hand = "SELECT count(*) FROM public.memos_body_matches(to_tsquery('zebrafish'))";
    let n: i64 = sqlx::query_scalar(by_hand).fetch_one(&app).await.unwrap();
    assert_eq!(n, 0);
    let n: i64 = sqlx::query_scalar(by_hand).fetch_one(&b).await.unwrap();
    assert_eq!(n, 1);
}

/// The tables' owner is left out of row security (it runs the migrations
/// and the lookups), so a tenant handle on it is refused as one on a
/// superuser is, unless trusted code says it means it; also when the role
/// came to own the table after its pool connected.
#[tokio::test]
async fn a_tenant_handle_on_the_tables_owner_is_refused() {
    let (test, _app, _a, b) = memos().await;
    sqlx::raw_sql(
        "DO $$ BEGIN CREATE ROLE memo_owner LOGIN; \
         EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
         GRANT memo_owner TO CURRENT_USER; GRANT CREATE ON SCHEMA public TO memo_owner",
    )
    .execute(test.db())
    .await
    .unwrap();
    // The pool connects while the role owns nothing, as an application
    // that runs its migrations after connecting would.
    let options = test.connect_options().username("memo_owner");
    let owner = Db::connect_options(options, &Default::default())
        .await
        .unwrap();
    sqlx::raw_sql("ALTER TABLE memos OWNER TO memo_owner")
        .execute(test.db())
        .await
        .unwrap();
    let tenant = b.current_tenant().unwrap();
    match Memo::repo()
        .count(&owner.tenant(tenant), Filter::all())
        .await
    {
        Err(Error::RowSecurityBypassed { role }) => assert_eq!(role, "memo_owner"),
        other => panic!("expected RowSecurityBypassed, got {other:?}"),
    }
    // Meant, it reads every tenant's memos, as the owner does.
    let meant = owner.bypassing_row_security();
    let n = Memo::repo().count(&meant, Filter::all()).await.unwrap();
    assert_eq!(n, 82);
}

/// A tenant's feed filters each change by the row as the change wrote it,
/// never through a lookup, which finds the table as it is now: an insert
/// whose text the same transaction then changed still arrives.
#[tokio::test]
async fn a_tenants_feed_filters_each_change_as_written_not_through_a_lookup() {
    use futures_util::StreamExt;
    use mandrake_storage::Change;
    let (_test, _app, _a, b) = memos().await;
    let filter = Memo::BODY
        .contains_text("zebra")
        .or(Memo::BODY.matches("zebra"));
    let mut feed = Memo::subscribe(&b, filter).await.unwrap();
    let mut tx = b.begin().await.unwrap();
    let new = NewMemo {
        workspace_id: None,
        body: "a zebra passed".into(),
    };
    let memo = Memo::repo().create(&mut *tx, new).await.unwrap();
    let patch = MemoPatch {
        body: Some("nothing to see".into()),
        ..Default::default()
    };
    Memo::repo().update(&mut *tx, memo.id, patch).await.unwrap();
    tx.commit().await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), feed.next())
        .await
        .expect("the insert arrives")
        .unwrap()
        .unwrap();
    match first {
        Change::Inserted(m) => assert_eq!(m.body, "a zebra passed"),
        other => panic!("expected the insert as written, got {other:?}"),
    }
}

/// A join through a tenant handle reads both sides as that tenant: B's
/// posts with their chats, never A's, and no tenant at all reads nothing.
#[tokio::test]
async fn a_join_through_a_tenant_handle_holds_on_both_sides() {
    let w = world().await;
    let pairs = Post::repo()
        .join(&w.b, Post::CHAT_ID, Chat::ID)
        .fetch()
        .await
        .unwrap();
    let seen: Vec<(Uuid, Uuid)> = pairs.iter().map(|(p, c)| (p.id, c.id)).collect();
    assert_eq!(seen, [(w.post_b.id, w.post_b.chat_id)]);
    // A's chat, seen from B's side of a left join: not there.
    let left = Chat::repo()
        .left_join(&w.b, Chat::ID, Post::CHAT_ID)
        .fetch()
        .await
        .unwrap();
    assert!(left.iter().all(|(c, _)| c.workspace_id == w.tenant_b));
    assert!(left.iter().all(|(c, _)| c.id != w.chat_a.id));
    let none = Post::repo()
        .join(&w.app, Post::CHAT_ID, Chat::ID)
        .fetch()
        .await
        .unwrap();
    assert!(none.is_empty(), "without a tenant: nothing (fail closed)");
}

/// Where features meet on a tenant-scoped table with the feed, a search
/// column and a trigram index: a join filtered by a full-text match, and
/// history imported in bulk, through tenant handles.
#[tokio::test]
async fn joins_and_bulk_imports_through_a_tenant_handle_on_a_searched_table_in_the_feed() {
    let (test, _app, a, b) = memos().await;
    let found = Memo::repo()
        .join(&b, Memo::WORKSPACE_ID, Workspace::ID)
        .filter(Memo::BODY.matches("zebrafish"))
        .fetch()
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "B's match only, not A's");
    let (memo, workspace) = &found[0];
    assert_eq!(memo.workspace_id, workspace.id);
    assert_eq!(workspace.name, "B");

    let old = DateTime::parse_from_rfc3339("2024-05-06T07:08:09Z")
        .unwrap()
        .with_timezone(&Utc);
    let rows = vec![
        (
            NewMemo {
                workspace_id: None,
                body: "an imported okapi".into(),
            },
            old,
        ),
        (
            NewMemo {
                workspace_id: None,
                body: "another okapi".into(),
            },
            old + chrono::Duration::seconds(1),
        ),
    ];
    let imported = Memo::repo().import_many(&b, rows).await.unwrap();
    assert!(imported.iter().all(|m| m.workspace_id == workspace.id));
    assert_eq!(imported[0].created_at, old);
    let search = |db: &Db| {
        let db = db.clone();
        async move {
            Memo::repo()
                .count(&db, Memo::BODY.matches("okapi"))
                .await
                .unwrap()
        }
    };
    assert_eq!(search(&b).await, 2, "the tenant's search finds them");
    assert_eq!(search(&a).await, 0, "the other tenant's does not");
    drop(test);
}

/// A tenant-scoped tree.
#[derive(Record, Clone)]
#[record(table = "folders")]
pub struct Folder {
    pub id: Uuid,
    #[record(tenant)]
    pub workspace_id: Uuid,
    #[record(references = "folders", on_delete = "cascade")]
    pub parent_id: Option<Uuid>,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A tenant-scoped tree: its parent key is `(tenant, parent)`, so no row
/// hangs under another tenant's (even the owner's raw SQL is refused), and a
/// walk through a tenant handle reads that tenant's rows only.
#[tokio::test]
async fn a_tree_walk_through_a_tenant_handle_stays_in_the_tenant() {
    let test = TestDb::with_tables(&[Workspace::schema(), Folder::schema()])
        .await
        .unwrap();
    let app = test.app_db().await.unwrap();
    let mut tenants = Vec::new();
    for name in ["A", "B"] {
        let w = Workspace::repo()
            .create(test.db(), NewWorkspace { name: name.into() })
            .await
            .unwrap();
        tenants.push(app.tenant(w.id));
    }
    let folder = |db: &Db, parent: Option<Uuid>, name: &str| {
        let (db, name) = (db.clone(), name.to_owned());
        async move {
            Folder::repo()
                .create(
                    &db,
                    NewFolder {
                        workspace_id: None,
                        parent_id: parent,
                        name,
                    },
                )
                .await
                .unwrap()
        }
    };
    let (a, b) = (&tenants[0], &tenants[1]);
    let a_root = folder(a, None, "a-root").await;
    let b_root = folder(b, None, "b-root").await;
    let b_child = folder(b, Some(b_root.id), "b-child").await;
    let crossed = sqlx::query("UPDATE folders SET parent_id = $1 WHERE id = $2")
        .bind(a_root.id)
        .bind(b_root.id)
        .execute(test.db())
        .await
        .map_err(mandrake_storage::Error::from);
    assert!(
        matches!(crossed, Err(Error::ForeignKeyViolation { .. })),
        "{crossed:?}"
    );
    let path = Folder::repo()
        .ancestors(b, Folder::PARENT_ID, b_child.id)
        .await
        .unwrap();
    let names: Vec<&str> = path.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["b-root", "b-child"]);
    let seen_by_a = Folder::repo()
        .ancestors(a, Folder::PARENT_ID, b_child.id)
        .await
        .unwrap();
    assert!(seen_by_a.is_empty(), "B's folders are not A's to see");
    let under = Folder::repo()
        .descendants(a, Folder::PARENT_ID, b_root.id)
        .await
        .unwrap();
    assert!(under.is_empty());
    let own = Folder::repo()
        .descendants(b, Folder::PARENT_ID, b_root.id)
        .await
        .unwrap();
    assert_eq!(own.len(), 1);
    assert_eq!(a_root.parent_id, None);
}
