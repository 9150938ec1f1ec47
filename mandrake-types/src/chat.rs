//! Conversations and their messages.

use mandrake_storage::chrono::{DateTime, Utc};
use mandrake_storage::sqlx::PgExecutor;
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::uuid::Uuid;
use mandrake_storage::{Cursor, Filter, ListOptions, Page, Record, RecordEnum, Result};

/// A chat with a model.
#[derive(Record, Clone)]
pub struct Conversation {
    pub id: Uuid,
    pub title: Option<String>,
    #[record(default = "'{}'::jsonb")]
    pub metadata: Json<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Who wrote a message.
#[derive(RecordEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    System,
    Tool,
}

/// One message of a conversation.
#[derive(Record, Clone)]
/// Indexed for keyset pages in `(created_at, id)` order within a conversation.
#[record(index(conversation_id, created_at, id))]
pub struct Message {
    pub id: Uuid,
    #[record(references = "conversations", on_delete = "cascade")]
    pub conversation_id: Uuid,
    pub role: Role,
    pub content: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
            .order_by("created_at")
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
            .order_by("created_at")
            .descending()
            .limit(n);
        let filter = Filter::new().eq("conversation_id", conversation_id);
        let mut page = Message::repo().list(executor, filter, newest_first).await?;
        page.items.reverse();
        Ok(page.items)
    }
}
