#![deny(missing_docs)]
//! Mandrake's tables: an LLM chat app that calls MCP tools.
//!
//! Each table is a `#[derive(Record)]` struct; the queries a chat app needs
//! beyond plain CRUD are methods on them. [`tables`] lists them for the
//! xtask (`cargo xtask schema | check | new-migration`).

mod analytics;
mod chat;
mod llm;
mod tools;

pub use analytics::{ModelUsage, ToolStats, tool_stats, usage_by_model};
pub use chat::{
    Conversation, ConversationPatch, Message, MessagePatch, NewConversation, NewMessage, Role,
    search_messages,
};
pub use llm::{Model, ModelPatch, NewModel, NewProvider, Provider, ProviderKind, ProviderPatch};
pub use tools::{
    NewToolConfig, NewToolResult, ToolConfig, ToolConfigPatch, ToolResult, ToolResultPatch,
};

use mandrake_storage::TableSchema;

/// Every registered table, for the migration tools: the derive registers
/// each record, so there is no list to keep. Calling this also links this
/// crate (and its registrations) into the program.
pub fn tables() -> Vec<&'static TableSchema> {
    mandrake_storage::registered_tables()
}
