//! The same operations written with each library.

use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, Utc};
use futures_util::future::join_all;
use mandrake_storage::sqlx::postgres::{PgConnectOptions, PgPoolCopyExt, PgRow};
use mandrake_storage::sqlx::{self, Row};
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
    Sqlx,
    TokioPostgres,
    SeaOrm,
    Copy,
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
        if self == Op::FilteredPage {
            // The typed-query target: ours against the same SQL by hand.
            return vec![Lib::Ours, Lib::Sqlx];
        }
        let mut libs = vec![Lib::Ours, Lib::Sqlx, Lib::TokioPostgres, Lib::SeaOrm];
        if self.is_bulk() {
            libs.push(Lib::Copy);
        }
        libs
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

const COLUMNS: &str = "id, conversation_id, role, content, created_at, updated_at";

impl PgStatements {
    pub async fn prepare(client: &tokio_postgres::Client) -> Result<PgStatements, BoxError> {
        Ok(PgStatements {
            insert: client
                .prepare(&format!(
                    "INSERT INTO messages (id, conversation_id, role, content) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
                ))
                .await?,
            insert_many: client
                .prepare(&format!(
                    "INSERT INTO messages (id, conversation_id, role, content) \
                     SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[]) RETURNING {COLUMNS}"
                ))
                .await?,
            get: client.prepare(&format!("SELECT {COLUMNS} FROM messages WHERE id = $1")).await?,
            first_page: client
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM messages WHERE conversation_id = $1 ORDER BY created_at, id LIMIT 51"
                ))
                .await?,
            next_page: client
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM messages WHERE conversation_id = $1 AND (created_at, id) > ($2, $3) \
                     ORDER BY created_at, id LIMIT 51"
                ))
                .await?,
            update: client
                .prepare(&format!("UPDATE messages SET content = $2 WHERE id = $1 RETURNING {COLUMNS}"))
                .await?,
            delete: client.prepare("DELETE FROM messages WHERE id = $1").await?,
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
            created_at: row.try_get(4)?,
            updated_at: row.try_get(5)?,
        })
    }

    fn from_pg(row: &tokio_postgres::Row) -> Result<Plain, tokio_postgres::Error> {
        Ok(Plain {
            id: row.try_get(0)?,
            conversation_id: row.try_get(1)?,
            role: row.try_get(2)?,
            content: row.try_get(3)?,
            created_at: row.try_get(4)?,
            updated_at: row.try_get(5)?,
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
        Lib::Ours => {
            Message::repo()
                .create(
                    &env.db,
                    NewMessage {
                        conversation_id: conversation,
                        role: Role::User,
                        content,
                    },
                )
                .await?;
        }
        Lib::Sqlx => {
            let row = sqlx::query(SQLX_INSERT)
                .bind(Uuid::now_v7())
                .bind(conversation)
                .bind("user")
                .bind(content)
                .fetch_one(&env.pool)
                .await?;
            Plain::from_sqlx(&row)?;
        }
        Lib::TokioPostgres => {
            let id = Uuid::now_v7();
            let row = env.pg[task]
                .query_one(
                    &env.pg_statements[task].insert,
                    &[&id, &conversation, &"user", &content],
                )
                .await?;
            Plain::from_pg(&row)?;
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
        Lib::Copy => unreachable!("COPY only loads in bulk"),
    }
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
    match lib {
        Lib::Ours => {
            let new = (0..rows)
                .map(|n| NewMessage {
                    conversation_id: conversation,
                    role: Role::User,
                    content: content(n),
                })
                .collect();
            Message::repo().create_many(&env.db, new).await?;
        }
        Lib::Sqlx => {
            let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
            let stored = sqlx::query(SQLX_INSERT_MANY)
                .bind(ids)
                .bind(vec![conversation; rows])
                .bind(vec!["user"; rows])
                .bind((0..rows).map(content).collect::<Vec<_>>())
                .fetch_all(&env.pool)
                .await?;
            for row in &stored {
                Plain::from_sqlx(row)?;
            }
        }
        Lib::TokioPostgres => {
            let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
            let conversations = vec![conversation; rows];
            let roles = vec!["user"; rows];
            let contents: Vec<String> = (0..rows).map(content).collect();
            let stored = env.pg[task]
                .query(
                    &env.pg_statements[task].insert_many,
                    &[&ids, &conversations, &roles, &contents],
                )
                .await?;
            for row in &stored {
                Plain::from_pg(row)?;
            }
        }
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

async fn get(env: &Env, lib: Lib, task: usize, id: Uuid) -> Result<(), BoxError> {
    match lib {
        Lib::Ours => {
            Message::repo().get(&env.db, id).await?;
        }
        Lib::Sqlx => {
            let row = sqlx::query(SQLX_GET).bind(id).fetch_one(&env.pool).await?;
            Plain::from_sqlx(&row)?;
        }
        Lib::TokioPostgres => {
            let row = env.pg[task]
                .query_one(&env.pg_statements[task].get, &[&id])
                .await?;
            Plain::from_pg(&row)?;
        }
        Lib::SeaOrm => {
            entity::Entity::find_by_id(id)
                .one(&env.sea)
                .await?
                .ok_or("missing")?;
        }
        Lib::Copy => unreachable!(),
    }
    Ok(())
}

/// The statements our repository runs for these calls, written out the way
/// a sqlx user would (they are the text `Repo` builds, byte for byte).
const SQLX_INSERT: &str = r#"INSERT INTO "messages" ("id", "conversation_id", "role", "content") VALUES ($1, $2, $3, $4) RETURNING "id", "conversation_id", "role", "content", "created_at", "updated_at""#;
const SQLX_INSERT_MANY: &str = r#"INSERT INTO "messages" ("id", "conversation_id", "role", "content") SELECT c0::UUID, c1::UUID, c2::TEXT, c3::TEXT FROM UNNEST($1::UUID[], $2::UUID[], $3::TEXT[], $4::TEXT[]) AS u(c0, c1, c2, c3) RETURNING "id", "conversation_id", "role", "content", "created_at", "updated_at""#;
const SQLX_GET: &str = r#"SELECT "id", "conversation_id", "role", "content", "created_at", "updated_at" FROM "messages" WHERE "id" = $1"#;
const SQLX_UPDATE: &str = r#"UPDATE "messages" SET "conversation_id" = CASE WHEN $2::BOOLEAN THEN $3::UUID ELSE "conversation_id" END, "role" = CASE WHEN $4::BOOLEAN THEN $5::TEXT ELSE "role" END, "content" = CASE WHEN $6::BOOLEAN THEN $7::TEXT ELSE "content" END WHERE "id" = $1 RETURNING "id", "conversation_id", "role", "content", "created_at", "updated_at""#;
const SQLX_DELETE: &str = r#"DELETE FROM "messages" WHERE "id" = $1"#;
const SQLX_FILTERED_PAGE: &str = r#"SELECT "id", "conversation_id", "role", "content", "created_at", "updated_at", "created_at"::TEXT AS __k0, "id"::TEXT AS __k1 FROM "messages" WHERE ("conversation_id" = $1 AND "role" = ANY($2) AND "created_at" > $3) ORDER BY "created_at" DESC, "id" DESC LIMIT $4"#;

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
        Lib::Sqlx => {
            let rows = sqlx::query(SQLX_FILTERED_PAGE)
                .bind(env.paged)
                .bind(vec!["user", "assistant"])
                .bind(since)
                .bind(51i64)
                .fetch_all(&env.pool)
                .await?;
            let items: Vec<Plain> = rows
                .iter()
                .take(50)
                .map(Plain::from_sqlx)
                .collect::<Result<_, _>>()?;
            if rows.len() > 50 {
                // What a cursor for the next page needs.
                let _: (String, String) = (rows[49].try_get(6)?, rows[49].try_get(7)?);
            }
            items.len()
        }
        _ => unreachable!("only ours and sqlx run the filtered page"),
    };
    if items != 50 {
        return Err(format!("the filtered page has {items} rows, not 50").into());
    }
    Ok(())
}

/// The position of one task walking the paged conversation; it starts over
/// at the end.
#[derive(Default)]
struct PageState {
    ours: Option<Cursor>,
    text: Option<(String, String)>,
    typed: Option<(DateTime<Utc>, Uuid)>,
    sea: Option<(DateTime<FixedOffset>, Uuid)>,
}

/// The statements our repository runs for a page (see `Repo::list`), written out.
const SQLX_FIRST_PAGE: &str = r#"SELECT "id", "conversation_id", "role", "content", "created_at", "updated_at", "created_at"::TEXT AS __k0, "id"::TEXT AS __k1 FROM "messages" WHERE "conversation_id" = $1 ORDER BY "created_at" ASC, "id" ASC LIMIT $2"#;
const SQLX_NEXT_PAGE: &str = r#"SELECT "id", "conversation_id", "role", "content", "created_at", "updated_at", "created_at"::TEXT AS __k0, "id"::TEXT AS __k1 FROM "messages" WHERE "conversation_id" = $1 AND ("created_at", "id") > ($2::TIMESTAMPTZ, $3::UUID) ORDER BY "created_at" ASC, "id" ASC LIMIT $4"#;

impl PageState {
    async fn next(&mut self, env: &Env, lib: Lib, task: usize) -> Result<(), BoxError> {
        match lib {
            Lib::Ours => {
                let page =
                    Message::page_of_conversation(&env.db, env.paged, 50, self.ours.take()).await?;
                self.ours = page.next;
            }
            Lib::Sqlx => {
                let rows = match self.text.take() {
                    None => {
                        sqlx::query(SQLX_FIRST_PAGE)
                            .bind(env.paged)
                            .bind(51i64)
                            .fetch_all(&env.pool)
                            .await?
                    }
                    Some((at, id)) => {
                        sqlx::query(SQLX_NEXT_PAGE)
                            .bind(env.paged)
                            .bind(at)
                            .bind(id)
                            .bind(51i64)
                            .fetch_all(&env.pool)
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
                    self.text = Some((last.try_get(6)?, last.try_get(7)?));
                }
            }
            Lib::TokioPostgres => {
                let (client, st) = (&env.pg[task], &env.pg_statements[task]);
                let rows = match self.typed.take() {
                    None => client.query(&st.first_page, &[&env.paged]).await?,
                    Some((at, id)) => client.query(&st.next_page, &[&env.paged, &at, &id]).await?,
                };
                let items: Vec<Plain> = rows
                    .iter()
                    .take(50)
                    .map(Plain::from_pg)
                    .collect::<Result<_, _>>()?;
                if rows.len() > 50 {
                    self.typed = Some((items[49].created_at, items[49].id));
                }
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
            Lib::Copy => unreachable!(),
        }
        Ok(())
    }
}

async fn update(env: &Env, lib: Lib, task: usize, id: Uuid, i: usize) -> Result<(), BoxError> {
    let content = format!("edited by {task} at {i}");
    match lib {
        Lib::Ours => {
            Message::repo()
                .update(
                    &env.db,
                    id,
                    MessagePatch {
                        content: Some(content),
                        ..Default::default()
                    },
                )
                .await?;
        }
        Lib::Sqlx => {
            // The generated statement: a (set?, value) pair per column.
            let row = sqlx::query(SQLX_UPDATE)
                .bind(id)
                .bind(false)
                .bind(None::<Uuid>)
                .bind(false)
                .bind(None::<String>)
                .bind(true)
                .bind(Some(content))
                .fetch_one(&env.pool)
                .await?;
            Plain::from_sqlx(&row)?;
        }
        Lib::TokioPostgres => {
            let row = env.pg[task]
                .query_one(&env.pg_statements[task].update, &[&id, &content])
                .await?;
            Plain::from_pg(&row)?;
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
        Lib::Copy => unreachable!(),
    }
    Ok(())
}

async fn delete(env: &Env, lib: Lib, task: usize, id: Uuid) -> Result<(), BoxError> {
    match lib {
        Lib::Ours => {
            Message::repo().delete(&env.db, id).await?;
        }
        Lib::Sqlx => {
            sqlx::query(SQLX_DELETE).bind(id).execute(&env.pool).await?;
        }
        Lib::TokioPostgres => {
            env.pg[task]
                .execute(&env.pg_statements[task].delete, &[&id])
                .await?;
        }
        Lib::SeaOrm => {
            entity::Entity::delete_by_id(id).exec(&env.sea).await?;
        }
        Lib::Copy => unreachable!(),
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
        "sqlx" => Lib::Sqlx,
        "tokio-postgres" => Lib::TokioPostgres,
        "sea-orm" => Lib::SeaOrm,
        "copy" => Lib::Copy,
        other => return Err(format!("unknown contender {other}").into()),
    };
    let env = crate::setup(url, 1).await?;
    let conversation = fresh_conversation(&env).await?;
    std::fs::write("/proc/self/clear_refs", "5")?;
    let (before, _) = rss();
    create_many(&env, lib, 0, conversation, rows, 0).await?;
    let (_, peak) = rss();
    clean_up(&env, Op::CreateMany100k).await?;
    Ok(peak.saturating_sub(before))
}
