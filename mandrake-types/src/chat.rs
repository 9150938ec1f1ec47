//! Conversations and their messages.

use std::collections::HashMap;

use mandrake_storage::chrono::{DateTime, Utc};
use mandrake_storage::sqlx::PgExecutor;
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::uuid::Uuid;
use mandrake_storage::{
    Cursor, Filter, Hit, ListOptions, Page, Record, RecordEnum, Result, SearchOptions,
};

/// A chat with a model.
#[derive(Record, Clone)]
pub struct Conversation {
    /// The primary key (a UUIDv7, time-ordered).
    pub id: Uuid,
    /// The title shown in the sidebar, if any.
    pub title: Option<String>,
    #[record(default = "'{}'::jsonb")]
    /// Free-form settings of the conversation (JSONB).
    pub metadata: Json<serde_json::Value>,
    /// When the row was stored.
    pub created_at: DateTime<Utc>,
    /// When the row last changed (kept by the database).
    pub updated_at: DateTime<Utc>,
}

/// Who wrote a message.
#[derive(RecordEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The person using the app.
    User,
    /// The model.
    Assistant,
    /// Instructions to the model.
    System,
    /// The result of a tool call.
    Tool,
}

/// One message of a conversation.
#[derive(Record, Clone)]
/// Indexed for keyset pages in `(created_at, id)` order within a conversation
/// and for the branches under a message; every change is announced, for
/// `Message::subscribe`. Its text is searchable two ways: ranked full-text search ([`search_messages`]) and
/// substring search served by a trigram index ([`Message::search`]).
#[record(
    index(conversation_id, created_at, id),
    index(parent_id),
    notify,
    extension = "pg_trgm",
    index(content, using = "gin", ops = "gin_trgm_ops"),
    check = "tokens_in >= 0",
    check = "tokens_out >= 0"
)]
pub struct Message {
    /// The primary key (a UUIDv7, time-ordered).
    pub id: Uuid,
    #[record(references = "conversations", on_delete = "cascade")]
    /// The conversation it belongs to.
    pub conversation_id: Uuid,
    /// Who wrote it.
    pub role: Role,
    /// The text (full-text search in English).
    #[record(search = "english")]
    pub content: String,
    /// The model that wrote it (an assistant's message), if one did.
    #[record(references = "models", on_delete = "set null")]
    pub model_id: Option<Uuid>,
    /// Tokens the model read to write it (the prompt), as the provider
    /// reported them; 0 for a message no model wrote.
    #[record(default = "0")]
    pub tokens_in: i32,
    /// Tokens the model wrote.
    #[record(default = "0")]
    pub tokens_out: i32,
    /// The message it follows in its branch (`None` for a conversation's
    /// first): editing a message or regenerating a reply starts a new
    /// branch from the same parent. Deleting a message deletes the
    /// branches under it.
    #[record(references = "messages", on_delete = "cascade")]
    pub parent_id: Option<Uuid>,
    /// When the row was stored.
    pub created_at: DateTime<Utc>,
    /// When the row last changed (kept by the database).
    pub updated_at: DateTime<Utc>,
}

impl Conversation {
    /// The most recently active conversations (newest `updated_at` first),
    /// `limit` at a time; pass the previous page's `next` to continue.
    pub async fn recent<'e, E: PgExecutor<'e>>(
        executor: E,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<Conversation>> {
        let options = ListOptions::new()
            .order_by(Conversation::UPDATED_AT.desc())
            .limit(limit)
            .after_opt(after);
        Conversation::repo()
            .list(executor, Filter::all(), options)
            .await
    }

    /// The branch that ends at the message `leaf`: each message from the
    /// conversation's first down to `leaf`, along `parent_id` (one
    /// statement). Editing a message or regenerating a reply starts a
    /// sibling branch; this is the context a model is sent for `leaf`.
    /// Empty when there is no message `leaf`.
    ///
    /// ```no_run
    /// # use mandrake_types::Conversation;
    /// # async fn demo(db: &mandrake_storage::Db, leaf: mandrake_storage::uuid::Uuid) -> mandrake_storage::Result<()> {
    /// for message in Conversation::context(db, leaf).await? {
    ///     println!("{:?}: {}", message.role, message.content);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn context<'e, E: PgExecutor<'e>>(executor: E, leaf: Uuid) -> Result<Vec<Message>> {
        Message::repo()
            .ancestors(executor, Message::PARENT_ID, leaf)
            .await
    }

    /// The newest message of each of these conversations, in one statement
    /// (a sidebar's previews). Conversations without messages are absent.
    pub async fn last_messages<'e, E: PgExecutor<'e>>(
        executor: E,
        ids: &[Uuid],
    ) -> Result<HashMap<Uuid, Message>> {
        let newest = ListOptions::new()
            .order_by(Message::CREATED_AT.desc())
            .limit(1);
        let groups = Message::repo()
            .load_by(executor, Message::CONVERSATION_ID, ids, newest)
            .await?;
        Ok(groups
            .into_iter()
            .filter_map(|(id, mut messages)| messages.pop().map(|m| (id, m)))
            .collect())
    }
}

impl Message {
    /// The messages of a conversation, oldest first, `limit` at a time; pass
    /// the previous page's `next` to continue.
    pub async fn page_of_conversation<'e, E: PgExecutor<'e>>(
        executor: E,
        conversation_id: Uuid,
        limit: u32,
        after: Option<Cursor>,
    ) -> Result<Page<Message>> {
        let options = ListOptions::new()
            .order_by(Message::CREATED_AT.asc())
            .limit(limit)
            .after_opt(after);
        Message::list_by_conversation_id(executor, conversation_id, options).await
    }

    /// The last `n` messages of a conversation, oldest first: the context
    /// window sent to a model.
    pub async fn context_window<'e, E: PgExecutor<'e>>(
        executor: E,
        conversation_id: Uuid,
        n: u32,
    ) -> Result<Vec<Message>> {
        let newest_first = ListOptions::new()
            .order_by(Message::CREATED_AT.desc())
            .limit(n);
        let filter = Message::CONVERSATION_ID.eq(conversation_id);
        let mut page = Message::repo().list(executor, filter, newest_first).await?;
        page.items.reverse();
        Ok(page.items)
    }

    /// Messages containing `text` (case-insensitive, matched literally:
    /// `%` and `_` are plain characters), newest first, in one conversation
    /// or in all of them. The trigram index on `content` serves it.
    pub async fn search<'e, E: PgExecutor<'e>>(
        executor: E,
        conversation: Option<Uuid>,
        text: &str,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let mut filter = Message::CONTENT.contains_text(text);
        if let Some(id) = conversation {
            filter = filter.and(Message::CONVERSATION_ID.eq(id));
        }
        let newest_first = ListOptions::new()
            .order_by(Message::CREATED_AT.desc())
            .limit(limit);
        Ok(Message::repo()
            .list(executor, filter, newest_first)
            .await?
            .items)
    }
}

/// Ranked full-text search over messages (English stemming; a query reads
/// as a search box's: `"exact phrase"`, `or`, `-word`), in one
/// conversation or in all: the best `limit` hits, each with a snippet
/// marking the matched words in `<b>…</b>`.
///
/// ```no_run
/// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
/// for hit in mandrake_types::search_messages(db, "files tool", None, 10).await? {
///     println!("{:.3} {}", hit.rank, hit.snippet);
/// }
/// # Ok(()) }
/// ```
pub async fn search_messages<'e, E: PgExecutor<'e>>(
    executor: E,
    query: &str,
    conversation: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Hit<Message>>> {
    let filter = match conversation {
        Some(id) => Message::CONVERSATION_ID.eq(id),
        None => Filter::all(),
    };
    Message::repo()
        .search(
            executor,
            Message::CONTENT,
            query,
            filter,
            SearchOptions::new().limit(limit),
        )
        .await
}
