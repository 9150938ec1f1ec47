//! A first tour of Mandrake's storage. Run `cargo xtask migrate` once, then
//! `cargo run --example quickstart`: with no DATABASE_URL set it uses the
//! embedded PostgreSQL under `.mandrake/`.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::{Change, Db, Error, Record, RecordEnum};
use mandrake_types::*;

#[tokio::main]
async fn main() -> mandrake_storage::Result<()> {
    let db = Db::connect().await?;
    // The application's own role, not the tables' owner or a superuser:
    // row security holds for it (`cargo xtask migrate` runs as the owner).
    let role: String = mandrake_storage::sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&db)
        .await?;
    println!("connected as {role}");

    // A provider and one of its models; the API key stays out of logs.
    let provider = Provider::repo()
        .upsert(
            &db,
            NewProvider {
                name: "anthropic".into(),
                kind: ProviderKind::Anthropic,
                base_url: None,
                api_key: Some("sk-example".into()),
            },
            Provider::ON_NAME,
        )
        .await?;
    println!("provider: {provider:?}");
    let model = Model::repo()
        .upsert(
            &db,
            NewModel {
                provider_id: provider.id,
                model_id: "claude-sonnet-4".into(),
                enabled: true,
                context_window: 200_000,
                max_tokens: 8192,
                temperature: Some(0.7),
            },
            Model::ON_PROVIDER_ID_MODEL_ID,
        )
        .await?;
    println!(
        "model: {} ({} tokens of context)",
        model.model_id, model.context_window
    );

    // A conversation, then its messages written in one transaction.
    let conversation = Conversation::repo()
        .create(
            &db,
            NewConversation {
                title: Some("Quickstart".into()),
                metadata: Json(serde_json::json!({})),
            },
        )
        .await?;

    // Every message of the conversation as it commits (Message is
    // `#[record(notify)]`: decoded from the WAL). Behind PgBouncer the feed
    // reads on the server's own URL, MANDRAKE_FEED_URL (as a role WITH
    // REPLICATION); without it, it is refused at once.
    let filter = Message::CONVERSATION_ID.eq(conversation.id);
    let mut live = match Message::subscribe(&db, filter).await {
        Ok(live) => Some(live),
        Err(err @ Error::NeedsSession { .. }) => {
            println!("live changes skipped: {err}");
            None
        }
        Err(err) => return Err(err),
    };

    // Each message follows the one before it (`parent_id`), so edits can
    // branch off later.
    let mut tx = db.begin().await?;
    let mut messages: Vec<Message> = Vec::new();
    for (role, content) in [
        (Role::System, "You are helpful."),
        (Role::User, "List my files."),
        (Role::Assistant, "Calling the files tool."),
    ] {
        let message = Message::repo()
            .create(
                &mut *tx,
                NewMessage {
                    conversation_id: conversation.id,
                    role,
                    content: content.into(),
                    model_id: None,
                    tokens_in: 0,
                    tokens_out: 0,
                    parent_id: messages.last().map(|m| m.id),
                },
            )
            .await?;
        messages.push(message);
    }
    tx.commit().await?;
    println!(
        "conversation {} with {} messages",
        conversation.id,
        messages.len()
    );
    if let Some(live) = &mut live {
        for _ in 0..messages.len() {
            if let Some(Change::Inserted(m)) = live.next().await.transpose()? {
                println!("live: {:?} wrote {:?}", m.role, m.content);
            }
        }
    }

    // Ranked full-text search over what was just written: English stemming
    // ("file" finds "files"), the matched words marked in each snippet.
    for hit in search_messages(&db, "file tool", Some(conversation.id), 5).await? {
        println!("search \"file tool\": {:.3} {}", hit.rank, hit.snippet);
    }

    // Editing the second message starts a branch beside the first: the
    // edit follows the same parent, and the reply follows the edit. Each
    // branch's context is its path from the first message, one statement.
    let mut tip = messages[0].id;
    for (role, content) in [
        (Role::User, "List my files, newest first."),
        (Role::Assistant, "Calling the files tool, sorted by date."),
    ] {
        let new = NewMessage {
            conversation_id: conversation.id,
            role,
            content: content.into(),
            model_id: None,
            tokens_in: 0,
            tokens_out: 0,
            parent_id: Some(tip),
        };
        tip = Message::repo().create(&db, new).await?.id;
    }
    for (branch, leaf) in [("first", messages[2].id), ("edited", tip)] {
        let context = Conversation::context(&db, leaf).await?;
        let path: Vec<&str> = context.iter().map(|m| m.content.as_str()).collect();
        println!("{branch} branch: {}", path.join(" → "));
    }
    let branches = Message::repo()
        .descendants(&db, Message::PARENT_ID, messages[0].id)
        .await?;
    println!(
        "{} messages under the first, in both branches",
        branches.len()
    );

    // An MCP server and one logged tool call.
    let files = ToolConfig::repo()
        .upsert(
            &db,
            NewToolConfig {
                server_name: "files".into(),
                command: "mcp-server-files".into(),
                args: Json(vec!["--root".into(), ".".into()]),
                env: Json(BTreeMap::new()),
                auto_approve: Json(vec!["list".into()]),
                disabled: false,
            },
            ToolConfig::ON_SERVER_NAME,
        )
        .await?;
    let call = ToolResult::log(
        &db,
        NewToolResult {
            conversation_id: Some(conversation.id),
            message_id: Some(messages[2].id),
            tool_config_id: Some(files.id),
            server: files.server_name.clone(),
            tool_name: "list".into(),
            input: Json(serde_json::json!({ "path": "." })),
            output: Some(Json(serde_json::json!(["Cargo.toml", "README.md"]))),
            error: None,
            duration_ms: 4,
        },
    )
    .await?;
    println!(
        "logged tool call {} to {} in {} ms",
        call.tool_name, call.server, call.duration_ms
    );

    // What the model would see next: the edited branch.
    for message in Conversation::context(&db, tip).await? {
        println!("  {:<9} {}", message.role.as_str(), message.content);
    }
    let models = Model::enabled_with_provider(&db).await?;
    println!("{} enabled model(s) ready", models.len());
    Ok(())
}
