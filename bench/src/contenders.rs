//! The same operations written with each library.

use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use futures_util::future::join_all;
use mandrake_storage::sqlx::postgres::{PgConnectOptions, PgPoolCopyExt, PgRow};
use mandrake_storage::sqlx::{self, PgExecutor, Row};
use mandrake_storage::{Cursor, ListOptions, Record};
use mandrake_types::{Conversation, Message, MessagePatch, NewConversation, NewMessage, Role};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set, Unchanged};
use uuid::Uuid;

use crate::Env;

type BoxError = Box<dyn std::error::Error>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    CreateOne,
    Get,
    Page,
    FilteredPage,
    Update,
    Delete,
    CreateMany1k,
    CreateMany100k,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lib {
    Ours,
    /// Ours, `import_many`: the bulk insert that keeps given times.
    OursImport,
    /// Ours through PgBouncer in transaction mode (`pgbouncer: true`): the
    /// cost of the mode.
    OursPgBouncer,
    /// Hand-written sqlx with our SQL on a pool of ours (a second `Db`).
    /// Since round 4 it also pays what SQL the caller writes pays: a reset
    /// of its connection's session before the next use, a round trip.
    SqlxSame,
    /// Hand-written sqlx with our SQL on a default `PgPool`: what a sqlx
    /// user gets.
    Sqlx,
    /// tokio-postgres through deadpool-postgres: the pooled driver.
    TokioPgPool,
    /// One tokio-postgres client per task, no pool: the limit.
    TokioPostgres,
    SeaOrm,
    Copy,
}

impl Lib {
    pub fn label(self) -> &'static str {
        match self {
            Lib::Ours => "ours",
            Lib::OursImport => "ours import_many",
            Lib::OursPgBouncer => "ours via PgBouncer",
            Lib::SqlxSame => "sqlx, our pool",
            Lib::Sqlx => "sqlx PgPool",
            Lib::TokioPgPool => "tokio-pg pooled",
            Lib::TokioPostgres => "tokio-pg raw",
            Lib::SeaOrm => "SeaORM",
            Lib::Copy => "COPY",
        }
    }
}

impl Op {
    pub fn label(self) -> &'static str {
        match self {
            Op::CreateOne => "create one row",
            Op::Get => "get by id",
            Op::Page => "page of 50 messages (keyset)",
            Op::FilteredPage => "filtered page (eq, is_in, gt; newest 50)",
            Op::Update => "partial update",
            Op::Delete => "delete",
            Op::CreateMany1k => "create_many 1,000 rows",
            Op::CreateMany100k => "create_many 100,000 rows",
        }
    }

    pub fn is_bulk(self) -> bool {
        matches!(self, Op::CreateMany1k | Op::CreateMany100k)
    }

    pub fn contenders(self) -> Vec<Lib> {
        use Lib::*;
        match self {
            // The typed-query target: ours against the same SQL by hand.
            Op::FilteredPage => vec![Ours, SqlxSame, Sqlx],
            op if op.is_bulk() => vec![
                Ours,
                OursImport,
                SqlxSame,
                Sqlx,
                TokioPostgres,
                SeaOrm,
                Copy,
            ],
            _ => vec![
                Ours,
                OursPgBouncer,
                SqlxSame,
                Sqlx,
                TokioPgPool,
                TokioPostgres,
                SeaOrm,
            ],
        }
    }
}

/// tokio-postgres' prepared statements, one set per client.
pub struct PgStatements {
    insert: tokio_postgres::Statement,
    insert_many: tokio_postgres::Statement,
    get: tokio_postgres::Statement,
    first_page: tokio_postgres::Statement,
    next_page: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    delete: tokio_postgres::Statement,
}

const PG_INSERT: &str = "INSERT INTO messages (id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     RETURNING id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id, created_at, updated_at";
const PG_INSERT_MANY: &str = "INSERT INTO messages (id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id) \
     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::int4[], $7::int4[], $8::uuid[]) \
     RETURNING id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id, created_at, updated_at";
const PG_GET: &str = "SELECT id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id, created_at, updated_at FROM messages WHERE id = $1";
const PG_FIRST_PAGE: &str = "SELECT id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id, created_at, updated_at \
     FROM messages WHERE conversation_id = $1 ORDER BY created_at, id LIMIT 51";
const PG_NEXT_PAGE: &str = "SELECT id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id, created_at, updated_at \
     FROM messages WHERE conversation_id = $1 AND (created_at, id) > ($2, $3) ORDER BY created_at, id LIMIT 51";
const PG_UPDATE: &str = "UPDATE messages SET content = $2 WHERE id = $1 \
     RETURNING id, conversation_id, role, content, model_id, tokens_in, tokens_out, parent_id, created_at, updated_at";
const PG_DELETE: &str = "DELETE FROM messages WHERE id = $1";

impl PgStatements {
    pub async fn prepare(client: &tokio_postgres::Client) -> Result<PgStatements, BoxError> {
        Ok(PgStatements {
            insert: client.prepare(PG_INSERT).await?,
            insert_many: client.prepare(PG_INSERT_MANY).await?,
            get: client.prepare(PG_GET).await?,
            first_page: client.prepare(PG_FIRST_PAGE).await?,
            next_page: client.prepare(PG_NEXT_PAGE).await?,
            update: client.prepare(PG_UPDATE).await?,
            delete: client.prepare(PG_DELETE).await?,
        })
    }
}

/// A message as hand-written code reads it.
#[allow(dead_code)]
struct Plain {
    id: Uuid,
    conversation_id: Uuid,
    role: String,
    content: String,
    model_id: Option<Uuid>,
    tokens_in: i32,
    tokens_out: i32,
    parent_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Plain {
    fn from_sqlx(row: &PgRow) -> Result<Plain, sqlx::Error> {
        Ok(Plain {
            id: row.try_get(0)?,
            conversation_id: row.try_get(1)?,
            role: row.try_get(2)?,
            content: row.try_get(3)?,
            model_id: row.try_get(4)?,
            tokens_in: row.try_get(5)?,
            tokens_out: row.try_get(6)?,
            parent_id: row.try_get(7)?,
            created_at: row.try_get(8)?,
            updated_at: row.try_get(9)?,
        })
    }

    fn from_pg(row: &tokio_postgres::Row) -> Result<Plain, tokio_postgres::Error> {
        Ok(Plain {
            id: row.try_get(0)?,
            conversation_id: row.try_get(1)?,
            role: row.try_get(2)?,
            content: row.try_get(3)?,
            model_id: row.try_get(4)?,
            tokens_in: row.try_get(5)?,
            tokens_out: row.try_get(6)?,
            parent_id: row.try_get(7)?,
            created_at: row.try_get(8)?,
            updated_at: row.try_get(9)?,
        })
    }
}

/// SeaORM's entity for the same table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub conversation_id: Uuid,
        pub role: String,
        pub content: String,
        pub model_id: Option<Uuid>,
        pub tokens_in: i32,
        pub tokens_out: i32,
        pub parent_id: Option<Uuid>,
        pub created_at: DateTimeWithTimeZone,
        pub updated_at: DateTimeWithTimeZone,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub async fn connect_tokio_postgres(
    options: &PgConnectOptions,
) -> Result<tokio_postgres::Client, BoxError> {
    let mut config = tokio_postgres::Config::new();
    config.user(options.get_username()).port(options.get_port());
    if let Some(db) = options.get_database() {
        config.dbname(db);
    }
    match options.get_socket() {
        Some(dir) => config.host_path(dir),
        None => config.host(options.get_host()),
    };
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// deadpool-postgres with `size` connections, statements cached per
/// connection, recycled without a round trip (its fast mode).
pub fn tokio_postgres_pool(
    options: &PgConnectOptions,
    size: usize,
) -> Result<deadpool_postgres::Pool, BoxError> {
    let mut config = tokio_postgres::Config::new();
    config.user(options.get_username()).port(options.get_port());
    if let Some(db) = options.get_database() {
        config.dbname(db);
    }
    match options.get_socket() {
        Some(dir) => config.host_path(dir),
        None => config.host(options.get_host()),
    };
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(size)
        .build()?)
}

pub async fn fresh_conversation(env: &Env) -> Result<Uuid, BoxError> {
    let new = NewConversation {
        title: None,
        metadata: sqlx::types::Json(serde_json::json!({})),
    };
    Ok(Conversation::repo().create(&env.db, new).await?.id)
}

/// What an operation needs ready before the clock starts.
pub enum Prepared {
    Conversation(Uuid),
    /// Row ids per task, for delete.
    Ids(Vec<Vec<Uuid>>),
    Nothing,
}

pub async fn prepare(
    env: &Env,
    _lib: Lib,
    op: Op,
    total: usize,
    _rows: usize,
) -> Result<Prepared, BoxError> {
    Ok(match op {
        Op::CreateOne | Op::CreateMany1k | Op::CreateMany100k => {
            Prepared::Conversation(fresh_conversation(env).await?)
        }
        Op::Delete => {
            let conversation = fresh_conversation(env).await?;
            let rows = (0..total)
                .map(|n| NewMessage {
                    conversation_id: conversation,
                    role: Role::User,
                    content: format!("doomed {n}"),
                    model_id: None,
                    tokens_in: 0,
                    tokens_out: 0,
                    parent_id: None,
                })
                .collect();
            let ids: Vec<Uuid> = Message::repo()
                .create_many(&env.db, rows)
                .await?
                .into_iter()
                .map(|m| m.id)
                .collect();
            Prepared::Ids(
                ids.chunks(total.div_ceil(env.tasks))
                    .map(|c| c.to_vec())
                    .collect(),
            )
        }
        Op::Get | Op::Page | Op::FilteredPage | Op::Update => Prepared::Nothing,
    })
}

/// Removes what the create operations wrote, so every round starts alike.
pub async fn clean_up(env: &Env, op: Op) -> Result<(), BoxError> {
    if matches!(
        op,
        Op::CreateOne | Op::CreateMany1k | Op::CreateMany100k | Op::Delete
    ) {
        sqlx::query("DELETE FROM conversations WHERE id <> $1")
            .bind(env.paged)
            .execute(&env.pool)
            .await?;
    }
    Ok(())
}

/// Runs `iterations` calls on each of the mode's tasks; returns each call's latency.
pub async fn run(
    env: &Env,
    lib: Lib,
    op: Op,
    prepared: Prepared,
    iterations: usize,
    rows: usize,
) -> Result<Vec<Duration>, BoxError> {
    let ids = match &prepared {
        Prepared::Ids(ids) => ids.clone(),
        _ => vec![Vec::new(); env.tasks],
    };
    let conversation = match prepared {
        Prepared::Conversation(c) => c,
        _ => Uuid::nil(),
    };
    let tasks = (0..env.tasks).map(|task| {
        let doomed = ids.get(task).cloned().unwrap_or_default();
        async move {
            let mut latencies = Vec::with_capacity(iterations);
            let mut page = PageState::default();
            for i in 0..iterations {
                let started = Instant::now();
                let pick = env.ids[(task * 7919 + i * 104_729) % env.ids.len()];
                match op {
                    Op::CreateOne => create_one(env, lib, task, conversation, i).await?,
                    Op::CreateMany1k | Op::CreateMany100k => {
                        create_many(env, lib, task, conversation, rows, i).await?
                    }
                    Op::Get => get(env, lib, task, pick).await?,
                    Op::Page => page.next(env, lib, task).await?,
                    Op::FilteredPage => filtered_page(env, lib).await?,
                    Op::Update => update(env, lib, task, pick, i).await?,
                    Op::Delete => {
                        delete(
                            env,
                            lib,
                            task,
                            *doomed.get(i).ok_or("no row left to delete")?,
                        )
                        .await?
                    }
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, BoxError>(latencies)
        }
    });
    let mut all = Vec::new();
    for result in join_all(tasks).await {
        all.extend(result?);
    }
    Ok(all)
}

async fn create_one(
    env: &Env,
    lib: Lib,
    task: usize,
    conversation: Uuid,
    i: usize,
) -> Result<(), BoxError> {
    let content = format!("task {task} message {i}");
    match lib {
        Lib::Ours | Lib::OursPgBouncer => {
            Message::repo()
                .create(
                    env.ours(lib),
                    NewMessage {
                        conversation_id: conversation,
                        role: Role::User,
                        content,
                        model_id: None,
                        tokens_in: 0,
                        tokens_out: 0,
                        parent_id: None,
                    },
                )
                .await?;
        }
        Lib::SqlxSame => sqlx_create_one(&env.raw_db, conversation, content).await?,
        Lib::Sqlx => sqlx_create_one(&env.pool, conversation, content).await?,
        Lib::TokioPostgres => {
            let st = &env.pg_statements[task].insert;
            pg_create_one(&env.pg[task], st, conversation, content).await?
        }
        Lib::TokioPgPool => {
            let client = env.pg_pool.get().await?;
            let st = client.prepare_cached(PG_INSERT).await?;
            pg_create_one(&client, &st, conversation, content).await?
        }
        Lib::SeaOrm => {
            entity::ActiveModel {
                id: Set(Uuid::now_v7()),
                conversation_id: Set(conversation),
                role: Set("user".into()),
                content: Set(content),
                ..Default::default()
            }
            .insert(&env.sea)
            .await?;
        }
        Lib::Copy | Lib::OursImport => unreachable!("a bulk load only"),
    }
    Ok(())
}

async fn sqlx_create_one<'e>(
    executor: impl PgExecutor<'e>,
    conversation: Uuid,
    content: String,
) -> Result<(), BoxError> {
    let row = sqlx::query(SQLX_INSERT)
        .bind(Uuid::now_v7())
        .bind(conversation)
        .bind("user")
        .bind(content)
        .bind(None::<Uuid>)
        .bind(0i32)
        .bind(0i32)
        .bind(None::<Uuid>)
        .fetch_one(executor)
        .await?;
    Plain::from_sqlx(&row)?;
    Ok(())
}

async fn pg_create_one(
    client: &tokio_postgres::Client,
    st: &tokio_postgres::Statement,
    conversation: Uuid,
    content: String,
) -> Result<(), BoxError> {
    let id = Uuid::now_v7();
    let row = client
        .query_one(
            st,
            &[
                &id,
                &conversation,
                &"user",
                &content,
                &None::<Uuid>,
                &0i32,
                &0i32,
                &None::<Uuid>,
            ],
        )
        .await?;
    Plain::from_pg(&row)?;
    Ok(())
}

async fn create_many(
    env: &Env,
    lib: Lib,
    task: usize,
    conversation: Uuid,
    rows: usize,
    call: usize,
) -> Result<(), BoxError> {
    let content = |n: usize| format!("task {task} call {call} row {n}");
    let message = |n: usize| NewMessage {
        conversation_id: conversation,
        role: Role::User,
        content: content(n),
        model_id: None,
        tokens_in: 0,
        tokens_out: 0,
        parent_id: None,
    };
    match lib {
        Lib::Ours | Lib::OursPgBouncer => {
            let new = (0..rows).map(message).collect();
            Message::repo().create_many(env.ours(lib), new).await?;
        }
        Lib::OursImport => {
            // History: a row a second, ending now.
            let now = chrono::Utc::now();
            let at = |n: usize| now - chrono::Duration::seconds((rows - n) as i64);
            let new = (0..rows).map(|n| (message(n), at(n))).collect();
            Message::repo().import_many(&env.db, new).await?;
        }
        Lib::SqlxSame => {
            sqlx_create_many(&env.raw_db, conversation, (0..rows).map(content).collect()).await?
        }
        Lib::Sqlx => {
            sqlx_create_many(&env.pool, conversation, (0..rows).map(content).collect()).await?
        }
        Lib::TokioPostgres => {
            let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
            let conversations = vec![conversation; rows];
            let roles = vec!["user"; rows];
            let contents: Vec<String> = (0..rows).map(content).collect();
            let (models, zeros) = (vec![None::<Uuid>; rows], vec![0i32; rows]);
            let stored = env.pg[task]
                .query(
                    &env.pg_statements[task].insert_many,
                    &[
                        &ids,
                        &conversations,
                        &roles,
                        &contents,
                        &models,
                        &zeros,
                        &zeros,
                        &models,
                    ],
                )
                .await?;
            for row in &stored {
                Plain::from_pg(row)?;
            }
        }
        Lib::TokioPgPool => unreachable!("bulk loads compare the raw client"),
        Lib::SeaOrm => {
            // One statement takes at most 65,535 parameters: 10,000 rows of six.
            for chunk in (0..rows).collect::<Vec<_>>().chunks(10_000) {
                let models = chunk.iter().map(|n| entity::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    conversation_id: Set(conversation),
                    role: Set("user".into()),
                    content: Set(content(*n)),
                    ..Default::default()
                });
                entity::Entity::insert_many(models)
                    .exec_with_returning(&env.sea)
                    .await?;
            }
        }
        Lib::Copy => {
            let mut text = String::with_capacity(rows * 96);
            for n in 0..rows {
                text.push_str(&format!(
                    "{}\t{conversation}\tuser\t{}\n",
                    Uuid::now_v7(),
                    content(n)
                ));
            }
            let mut copy = env
                .pool
                .copy_in_raw("COPY messages (id, conversation_id, role, content) FROM STDIN")
                .await?;
            copy.send(text.into_bytes()).await?;
            copy.finish().await?;
        }
    }
    Ok(())
}

async fn sqlx_create_many<'e>(
    executor: impl PgExecutor<'e>,
    conversation: Uuid,
    contents: Vec<String>,
) -> Result<(), BoxError> {
    let rows = contents.len();
    let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
    let stored = sqlx::query(SQLX_INSERT_MANY)
        .bind(ids)
        .bind(vec![conversation; rows])
        .bind(vec!["user"; rows])
        .bind(contents)
        .bind(vec![None::<Uuid>; rows])
        .bind(vec![0i32; rows])
        .bind(vec![0i32; rows])
        .bind(vec![None::<Uuid>; rows])
        .fetch_all(executor)
        .await?;
    for row in &stored {
        Plain::from_sqlx(row)?;
    }
    Ok(())
}

async fn get(env: &Env, lib: Lib, task: usize, id: Uuid) -> Result<(), BoxError> {
    match lib {
        Lib::Ours | Lib::OursPgBouncer => {
            Message::repo().get(env.ours(lib), id).await?;
        }
        Lib::SqlxSame => sqlx_get(&env.raw_db, id).await?,
        Lib::Sqlx => sqlx_get(&env.pool, id).await?,
        Lib::TokioPostgres => pg_get(&env.pg[task], &env.pg_statements[task].get, id).await?,
        Lib::TokioPgPool => {
            let client = env.pg_pool.get().await?;
            let st = client.prepare_cached(PG_GET).await?;
            pg_get(&client, &st, id).await?
        }
        Lib::SeaOrm => {
            entity::Entity::find_by_id(id)
                .one(&env.sea)
                .await?
                .ok_or("missing")?;
        }
        Lib::Copy | Lib::OursImport => unreachable!(),
    }
    Ok(())
}

async fn sqlx_get<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<(), BoxError> {
    let row = sqlx::query(SQLX_GET).bind(id).fetch_one(executor).await?;
    Plain::from_sqlx(&row)?;
    Ok(())
}

async fn pg_get(
    client: &tokio_postgres::Client,
    st: &tokio_postgres::Statement,
    id: Uuid,
) -> Result<(), BoxError> {
    let row = client.query_one(st, &[&id]).await?;
    Plain::from_pg(&row)?;
    Ok(())
}

/// The statements our repository runs for these calls, written out the way
/// a sqlx user would (they are the text `Repo` builds, byte for byte).
const SQLX_INSERT: &str = r#"INSERT INTO "public"."messages" ("id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id") VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING "id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id", "created_at", "updated_at""#;
const SQLX_INSERT_MANY: &str = r#"INSERT INTO "public"."messages" ("id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id") SELECT c0::UUID, c1::UUID, c2::TEXT, c3::TEXT, c4::UUID, c5::INTEGER, c6::INTEGER, c7::UUID FROM UNNEST($1::UUID[], $2::UUID[], $3::TEXT[], $4::TEXT[], $5::UUID[], $6::INTEGER[], $7::INTEGER[], $8::UUID[]) AS u(c0, c1, c2, c3, c4, c5, c6, c7) RETURNING "id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id", "created_at", "updated_at""#;
const SQLX_GET: &str = r#"SELECT "id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id", "created_at", "updated_at" FROM "public"."messages" WHERE "id" = $1"#;
const SQLX_UPDATE: &str = r#"UPDATE "public"."messages" SET "conversation_id" = CASE WHEN $2::BOOLEAN THEN $3::UUID ELSE "conversation_id" END, "role" = CASE WHEN $4::BOOLEAN THEN $5::TEXT ELSE "role" END, "content" = CASE WHEN $6::BOOLEAN THEN $7::TEXT ELSE "content" END, "model_id" = CASE WHEN $8::BOOLEAN THEN $9::UUID ELSE "model_id" END, "tokens_in" = CASE WHEN $10::BOOLEAN THEN $11::INTEGER ELSE "tokens_in" END, "tokens_out" = CASE WHEN $12::BOOLEAN THEN $13::INTEGER ELSE "tokens_out" END, "parent_id" = CASE WHEN $14::BOOLEAN THEN $15::UUID ELSE "parent_id" END WHERE "id" = $1 RETURNING "id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id", "created_at", "updated_at""#;
const SQLX_DELETE: &str = r#"DELETE FROM "public"."messages" WHERE "id" = $1"#;
const SQLX_FIRST_PAGE: &str = r#"SELECT "id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id", "created_at", "updated_at" FROM "public"."messages" WHERE "conversation_id" = $1 ORDER BY "created_at" ASC, "id" ASC LIMIT $2"#;
const SQLX_NEXT_PAGE: &str = r#"SELECT "id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id", "created_at", "updated_at" FROM "public"."messages" WHERE "conversation_id" = $1 AND ("created_at", "id") > ($2::TIMESTAMPTZ, $3::UUID) ORDER BY "created_at" ASC, "id" ASC LIMIT $4"#;
const SQLX_FILTERED_PAGE: &str = r#"SELECT "id", "conversation_id", "role", "content", "model_id", "tokens_in", "tokens_out", "parent_id", "created_at", "updated_at" FROM "public"."messages" WHERE ("conversation_id" = $1 AND "role" = ANY($2) AND "created_at" > $3) ORDER BY "created_at" DESC, "id" DESC LIMIT $4"#;

/// Conversation `eq` AND role `is_in` AND `created_at` `gt`, newest 50.
async fn filtered_page(env: &Env, lib: Lib) -> Result<(), BoxError> {
    let since = env.paged_since;
    let items = match lib {
        Lib::Ours => {
            let filter = Message::CONVERSATION_ID
                .eq(env.paged)
                .and(Message::ROLE.is_in([Role::User, Role::Assistant]))
                .and(Message::CREATED_AT.gt(since));
            let newest = ListOptions::new()
                .order_by(Message::CREATED_AT.desc())
                .limit(50);
            Message::repo()
                .list(&env.db, filter, newest)
                .await?
                .items
                .len()
        }
        Lib::SqlxSame => sqlx_filtered_page(&env.raw_db, env.paged, since).await?,
        Lib::Sqlx => sqlx_filtered_page(&env.pool, env.paged, since).await?,
        _ => unreachable!("only ours and sqlx run the filtered page"),
    };
    if items != 50 {
        return Err(format!("the filtered page has {items} rows, not 50").into());
    }
    Ok(())
}

async fn sqlx_filtered_page<'e>(
    executor: impl PgExecutor<'e>,
    conversation: Uuid,
    since: DateTime<Utc>,
) -> Result<usize, BoxError> {
    let rows = sqlx::query(SQLX_FILTERED_PAGE)
        .bind(conversation)
        .bind(vec!["user", "assistant"])
        .bind(since)
        .bind(51i64)
        .fetch_all(executor)
        .await?;
    let items: Vec<Plain> = rows
        .iter()
        .take(50)
        .map(Plain::from_sqlx)
        .collect::<Result<_, _>>()?;
    if rows.len() > 50 {
        // What a cursor for the next page needs.
        let _: (DateTime<Utc>, Uuid) = (rows[49].try_get(7)?, rows[49].try_get(0)?);
    }
    Ok(items.len())
}

/// The position of one task walking the paged conversation; it starts over
/// at the end.
#[derive(Default)]
struct PageState {
    ours: Option<Cursor>,
    sqlx_same: Option<(DateTime<Utc>, Uuid)>,
    sqlx: Option<(DateTime<Utc>, Uuid)>,
    pg_pooled: Option<(DateTime<Utc>, Uuid)>,
    pg: Option<(DateTime<Utc>, Uuid)>,
    sea: Option<(DateTime<FixedOffset>, Uuid)>,
}

impl PageState {
    async fn next(&mut self, env: &Env, lib: Lib, task: usize) -> Result<(), BoxError> {
        match lib {
            Lib::Ours | Lib::OursPgBouncer => {
                let page =
                    Message::page_of_conversation(env.ours(lib), env.paged, 50, self.ours.take())
                        .await?;
                self.ours = page.next;
            }
            Lib::SqlxSame => {
                self.sqlx_same = sqlx_page(&env.raw_db, env.paged, self.sqlx_same.take()).await?
            }
            Lib::Sqlx => self.sqlx = sqlx_page(&env.pool, env.paged, self.sqlx.take()).await?,
            Lib::TokioPostgres => {
                let (client, st) = (&env.pg[task], &env.pg_statements[task]);
                self.pg = pg_page(
                    client,
                    (&st.first_page, &st.next_page),
                    env.paged,
                    self.pg.take(),
                )
                .await?;
            }
            Lib::TokioPgPool => {
                let client = env.pg_pool.get().await?;
                let first = client.prepare_cached(PG_FIRST_PAGE).await?;
                let next = client.prepare_cached(PG_NEXT_PAGE).await?;
                self.pg_pooled =
                    pg_page(&client, (&first, &next), env.paged, self.pg_pooled.take()).await?;
            }
            Lib::SeaOrm => {
                use entity::Column;
                let mut cursor = entity::Entity::find()
                    .filter(Column::ConversationId.eq(env.paged))
                    .cursor_by((Column::CreatedAt, Column::Id));
                if let Some(after) = self.sea.take() {
                    cursor.after(after);
                }
                let items = cursor.first(51).all(&env.sea).await?;
                if items.len() > 50 {
                    self.sea = Some((items[49].created_at, items[49].id));
                }
            }
            Lib::Copy | Lib::OursImport => unreachable!(),
        }
        Ok(())
    }
}

/// One page by hand with sqlx; returns the position after it, if any.
async fn sqlx_page<'e>(
    executor: impl PgExecutor<'e>,
    conversation: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Option<(DateTime<Utc>, Uuid)>, BoxError> {
    let rows = match after {
        None => {
            sqlx::query(SQLX_FIRST_PAGE)
                .bind(conversation)
                .bind(51i64)
                .fetch_all(executor)
                .await?
        }
        Some((at, id)) => {
            sqlx::query(SQLX_NEXT_PAGE)
                .bind(conversation)
                .bind(at)
                .bind(id)
                .bind(51i64)
                .fetch_all(executor)
                .await?
        }
    };
    let _items: Vec<Plain> = rows
        .iter()
        .take(50)
        .map(Plain::from_sqlx)
        .collect::<Result<_, _>>()?;
    if rows.len() > 50 {
        let last = &rows[49];
        return Ok(Some((last.try_get(7)?, last.try_get(0)?)));
    }
    Ok(None)
}

/// One page with tokio-postgres; returns the position after it, if any.
async fn pg_page(
    client: &tokio_postgres::Client,
    (first, next): (&tokio_postgres::Statement, &tokio_postgres::Statement),
    conversation: Uuid,
    after: Option<(DateTime<Utc>, Uuid)>,
) -> Result<Option<(DateTime<Utc>, Uuid)>, BoxError> {
    let rows = match after {
        None => client.query(first, &[&conversation]).await?,
        Some((at, id)) => client.query(next, &[&conversation, &at, &id]).await?,
    };
    let items: Vec<Plain> = rows
        .iter()
        .take(50)
        .map(Plain::from_pg)
        .collect::<Result<_, _>>()?;
    Ok((rows.len() > 50).then(|| (items[49].created_at, items[49].id)))
}

async fn update(env: &Env, lib: Lib, task: usize, id: Uuid, i: usize) -> Result<(), BoxError> {
    let content = format!("edited by {task} at {i}");
    match lib {
        Lib::Ours | Lib::OursPgBouncer => {
            Message::repo()
                .update(
                    env.ours(lib),
                    id,
                    MessagePatch {
                        content: Some(content),
                        ..Default::default()
                    },
                )
                .await?;
        }
        Lib::SqlxSame => sqlx_update(&env.raw_db, id, content).await?,
        Lib::Sqlx => sqlx_update(&env.pool, id, content).await?,
        Lib::TokioPostgres => {
            pg_update(&env.pg[task], &env.pg_statements[task].update, id, content).await?
        }
        Lib::TokioPgPool => {
            let client = env.pg_pool.get().await?;
            let st = client.prepare_cached(PG_UPDATE).await?;
            pg_update(&client, &st, id, content).await?
        }
        Lib::SeaOrm => {
            entity::ActiveModel {
                id: Unchanged(id),
                content: Set(content),
                ..Default::default()
            }
            .update(&env.sea)
            .await?;
        }
        Lib::Copy | Lib::OursImport => unreachable!(),
    }
    Ok(())
}

async fn sqlx_update<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    content: String,
) -> Result<(), BoxError> {
    // The generated statement: a (set?, value) pair per column.
    let row = sqlx::query(SQLX_UPDATE)
        .bind(id)
        .bind(false)
        .bind(None::<Uuid>)
        .bind(false)
        .bind(None::<String>)
        .bind(true)
        .bind(Some(content))
        .bind(false)
        .bind(None::<Uuid>)
        .bind(false)
        .bind(None::<i32>)
        .bind(false)
        .bind(None::<i32>)
        .bind(false)
        .bind(None::<Uuid>)
        .fetch_one(executor)
        .await?;
    Plain::from_sqlx(&row)?;
    Ok(())
}

async fn pg_update(
    client: &tokio_postgres::Client,
    st: &tokio_postgres::Statement,
    id: Uuid,
    content: String,
) -> Result<(), BoxError> {
    let row = client.query_one(st, &[&id, &content]).await?;
    Plain::from_pg(&row)?;
    Ok(())
}

async fn delete(env: &Env, lib: Lib, task: usize, id: Uuid) -> Result<(), BoxError> {
    match lib {
        Lib::Ours | Lib::OursPgBouncer => {
            Message::repo().delete(env.ours(lib), id).await?;
        }
        Lib::SqlxSame => {
            sqlx::query(SQLX_DELETE)
                .bind(id)
                .execute(&env.raw_db)
                .await?;
        }
        Lib::Sqlx => {
            sqlx::query(SQLX_DELETE).bind(id).execute(&env.pool).await?;
        }
        Lib::TokioPostgres => {
            env.pg[task]
                .execute(&env.pg_statements[task].delete, &[&id])
                .await?;
        }
        Lib::TokioPgPool => {
            let client = env.pg_pool.get().await?;
            let st = client.prepare_cached(PG_DELETE).await?;
            client.execute(&st, &[&id]).await?;
        }
        Lib::SeaOrm => {
            entity::Entity::delete_by_id(id).exec(&env.sea).await?;
        }
        Lib::Copy | Lib::OursImport => unreachable!(),
    }
    Ok(())
}

/// `(VmRSS, VmHWM)` of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Peak RSS growth of this process while `lib` loads `rows` rows once
/// (inputs built by the contender count; the benchmark's setup does not).
/// Writing 5 to `clear_refs` resets the peak after setup.
pub async fn peak_memory_here(url: &str, lib: &str, rows: usize) -> Result<u64, BoxError> {
    let lib = match lib {
        "ours" => Lib::Ours,
        "ours-import" => Lib::OursImport,
        "sqlx" => Lib::Sqlx,
        "sqlx-our-pool" => Lib::SqlxSame,
        "tokio-postgres" => Lib::TokioPostgres,
        "sea-orm" => Lib::SeaOrm,
        "copy" => Lib::Copy,
        other => return Err(format!("unknown contender {other}").into()),
    };
    let env = crate::setup(url, 1, None).await?;
    let conversation = fresh_conversation(&env).await?;
    std::fs::write("/proc/self/clear_refs", "5")?;
    let (before, _) = rss();
    create_many(&env, lib, 0, conversation, rows, 0).await?;
    let (_, peak) = rss();
    clean_up(&env, Op::CreateMany100k).await?;
    Ok(peak.saturating_sub(before))
}

/// Refuses to measure when the hand-written statements are not the ones our
/// repository sends for the same calls (a column added to `Message` and not
/// here would make "sqlx, our pool" read less than ours).
pub async fn check_same_sql(env: &Env) -> Result<(), BoxError> {
    let dry = mandrake_storage::DryRun::new();
    let conversation = env.paged;
    let new = || NewMessage {
        conversation_id: conversation,
        role: Role::User,
        content: String::new(),
        model_id: None,
        tokens_in: 0,
        tokens_out: 0,
        parent_id: None,
    };
    let _ = Message::repo().create(&dry, new()).await;
    let _ = Message::repo().create_many(&dry, vec![new()]).await;
    let _ = Message::repo().get(&dry, conversation).await;
    let patch = MessagePatch {
        content: Some(String::new()),
        ..Default::default()
    };
    let _ = Message::repo().update(&dry, conversation, patch).await;
    let _ = Message::repo().delete(&dry, conversation).await;
    let _ = Message::page_of_conversation(&dry, conversation, 50, None).await;
    let first = Message::page_of_conversation(&env.db, conversation, 50, None).await?;
    let _ = Message::page_of_conversation(&dry, conversation, 50, first.next).await;
    let filter = Message::CONVERSATION_ID
        .eq(conversation)
        .and(Message::ROLE.is_in([Role::User, Role::Assistant]))
        .and(Message::CREATED_AT.gt(env.paged_since));
    let newest = ListOptions::new()
        .order_by(Message::CREATED_AT.desc())
        .limit(50);
    let _ = Message::repo().list(&dry, filter, newest).await;
    let hand = [
        SQLX_INSERT,
        SQLX_INSERT_MANY,
        SQLX_GET,
        SQLX_UPDATE,
        SQLX_DELETE,
        SQLX_FIRST_PAGE,
        SQLX_NEXT_PAGE,
        SQLX_FILTERED_PAGE,
    ];
    let ours = dry.statements();
    let differ: Vec<String> = ours
        .iter()
        .zip(hand)
        .filter(|(ours, hand)| ours != hand)
        .map(|(ours, hand)| format!(" ours: {ours}\n hand: {hand}"))
        .collect();
    if !differ.is_empty() || ours.len() != hand.len() {
        return Err(format!(
            "the hand-written SQL is not what our calls send ({} statements against {}):\n{}",
            ours.len(),
            hand.len(),
            differ.join("\n")
        )
        .into());
    }
    Ok(())
}
