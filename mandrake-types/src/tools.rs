//! MCP tool servers and the log of tool calls.

use std::collections::BTreeMap;

use mandrake_storage::chrono::{DateTime, Utc};
use mandrake_storage::sqlx::PgExecutor;
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::uuid::Uuid;
use mandrake_storage::{ListOptions, Measure, Page, Record, Result};

/// How to start an MCP server.
#[derive(Record, Clone)]
pub struct ToolConfig {
    /// The primary key (a UUIDv7, time-ordered).
    pub id: Uuid,
    #[record(unique)]
    /// A unique name for the server.
    pub server_name: String,
    /// The program that starts it.
    pub command: String,
    #[record(default = "'[]'::jsonb")]
    /// Its arguments.
    pub args: Json<Vec<String>>,
    #[record(default = "'{}'::jsonb")]
    /// Environment variables it gets.
    pub env: Json<BTreeMap<String, String>>,
    /// Tools that run without asking the user.
    #[record(default = "'[]'::jsonb")]
    pub auto_approve: Json<Vec<String>>,
    #[record(default = "false")]
    /// Whether it is left out.
    pub disabled: bool,
    /// When the row was stored.
    pub created_at: DateTime<Utc>,
    /// When the row last changed (kept by the database).
    pub updated_at: DateTime<Utc>,
}

impl ToolConfig {
    /// The config of one server.
    pub async fn by_server_name<'e, E: PgExecutor<'e>>(
        executor: E,
        server_name: &str,
    ) -> Result<Option<ToolConfig>> {
        let filter = ToolConfig::SERVER_NAME.eq(server_name);
        let page = ToolConfig::repo()
            .list(executor, filter, ListOptions::new().limit(1))
            .await?;
        Ok(page.items.into_iter().next())
    }

    /// The servers to start, by name.
    pub async fn enabled<'e, E: PgExecutor<'e>>(executor: E) -> Result<Vec<ToolConfig>> {
        let filter = ToolConfig::DISABLED.eq(false);
        let by_name = ListOptions::new().order_by(ToolConfig::SERVER_NAME.asc());
        let page = ToolConfig::repo().list(executor, filter, by_name).await?;
        Ok(page.items)
    }
}

/// One tool invocation: what went in, what came out, how long it took.
#[derive(Record, Clone)]
/// Indexed for "results of this conversation, newest first" (`created_at`, then `id`).
#[record(index(conversation_id, created_at, id))]
pub struct ToolResult {
    /// The primary key (a UUIDv7, time-ordered).
    pub id: Uuid,
    #[record(references = "conversations", on_delete = "set null")]
    /// The conversation it belongs to.
    pub conversation_id: Option<Uuid>,
    #[record(references = "messages", on_delete = "set null")]
    /// The message that asked for it.
    pub message_id: Option<Uuid>,
    #[record(references = "tool_configs", on_delete = "set null")]
    /// The server configuration used.
    pub tool_config_id: Option<Uuid>,
    /// The server that ran it.
    pub server: String,
    /// The tool called.
    pub tool_name: String,
    /// The arguments it got.
    pub input: Json<serde_json::Value>,
    /// What it returned.
    pub output: Option<Json<serde_json::Value>>,
    /// What went wrong, if anything.
    pub error: Option<String>,
    /// How long it ran.
    pub duration_ms: i64,
    /// When the row was stored.
    pub created_at: DateTime<Utc>,
    /// When the row last changed (kept by the database).
    pub updated_at: DateTime<Utc>,
}

impl ToolResult {
    /// Records a tool call.
    pub async fn log<'e, E: PgExecutor<'e>>(
        executor: E,
        call: NewToolResult,
    ) -> Result<ToolResult> {
        ToolResult::repo().create(executor, call).await
    }

    /// The tool results of a conversation, newest first.
    pub async fn of_conversation<'e, E: PgExecutor<'e>>(
        executor: E,
        conversation_id: Uuid,
        options: ListOptions<ToolResult>,
    ) -> Result<Page<ToolResult>> {
        let newest_first = options.order_by(ToolResult::CREATED_AT.desc());
        ToolResult::list_by_conversation_id(executor, conversation_id, newest_first).await
    }

    /// How often each tool was called since `since`, most used first.
    pub async fn usage_by_tool<'e, E: PgExecutor<'e>>(
        executor: E,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, i64)>> {
        ToolResult::repo()
            .aggregate(executor, ToolResult::CREATED_AT.ge(since))
            .group_by(ToolResult::TOOL_NAME)
            .count()
            .order_by(Measure::count().desc())
            .order_by(ToolResult::TOOL_NAME.asc())
            .fetch()
            .await
    }
}
