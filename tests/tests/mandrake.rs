//! Mandrake's tables and queries against real PostgreSQL, on a database built
//! by the repository's own migrations.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use mandrake_storage::sqlx::types::Json;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{Db, Error, Filter, Isolation, ListOptions, Record};
use mandrake_types::*;
use uuid::Uuid;

async fn provider(db: &Db, name: &str) -> Provider {
    Provider::repo()
        .create(
            db,
            NewProvider {
                name: name.into(),
                kind: ProviderKind::Anthropic,
                base_url: None,
                api_key: Some("sk-very-secret".into()),
            },
        )
        .await
        .unwrap()
}

fn model(provider_id: Uuid, model_id: &str) -> NewModel {
    NewModel {
        provider_id,
        model_id: model_id.into(),
        enabled: true,
        context_window: 200_000,
        max_tokens: 8192,
        temperature: Some(0.7),
    }
}

async fn conversation(db: &Db) -> Conversation {
    Conversation::repo()
        .create(
            db,
            NewConversation {
                title: Some("hello".into()),
                metadata: Json(serde_json::json!({ "pinned": true })),
            },
        )
        .await
        .unwrap()
}

fn message(conversation_id: Uuid, n: usize) -> NewMessage {
    NewMessage {
        conversation_id,
        role: if n.is_multiple_of(2) {
            Role::User
        } else {
            Role::Assistant
        },
        content: format!("message {n}"),
        model_id: None,
        tokens_in: 0,
        tokens_out: 0,
        parent_id: None,
    }
}

fn tool_call(
    conversation_id: Option<Uuid>,
    message_id: Option<Uuid>,
    config: Option<Uuid>,
) -> NewToolResult {
    NewToolResult {
        conversation_id,
        message_id,
        tool_config_id: config,
        server: "files".into(),
        tool_name: "read".into(),
        input: Json(serde_json::json!({ "path": "/tmp/x" })),
        output: Some(Json(serde_json::json!({ "ok": true }))),
        error: None,
        duration_ms: 12,
    }
}

#[tokio::test]
async fn every_table_round_trips() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let conv = conversation(db).await;
    assert_eq!(
        Conversation::repo()
            .get(db, conv.id)
            .await
            .unwrap()
            .metadata
            .0["pinned"],
        true
    );
    let msg = Message::repo()
        .create(db, message(conv.id, 0))
        .await
        .unwrap();
    assert_eq!(
        Message::repo().get(db, msg.id).await.unwrap().role,
        Role::User
    );
    let p = provider(db, "anthropic").await;
    assert_eq!(
        Provider::repo()
            .get(db, p.id)
            .await
            .unwrap()
            .api_key
            .as_deref(),
        Some("sk-very-secret")
    );
    let m = Model::repo()
        .create(db, model(p.id, "claude"))
        .await
        .unwrap();
    assert_eq!(
        Model::repo().get(db, m.id).await.unwrap().temperature,
        Some(0.7)
    );
    let cfg = ToolConfig::repo()
        .create(
            db,
            NewToolConfig {
                server_name: "files".into(),
                command: "mcp-files".into(),
                args: Json(vec!["--root".into(), "/".into()]),
                env: Json(BTreeMap::from([("TOKEN".into(), "x".into())])),
                auto_approve: Json(vec!["read".into()]),
                disabled: false,
            },
        )
        .await
        .unwrap();
    let got = ToolConfig::repo().get(db, cfg.id).await.unwrap();
    assert_eq!(got.args.0, vec!["--root", "/"]);
    assert_eq!(got.env.0["TOKEN"], "x");
    let r = ToolResult::log(db, tool_call(Some(conv.id), Some(msg.id), Some(cfg.id)))
        .await
        .unwrap();
    let got = ToolResult::repo().get(db, r.id).await.unwrap();
    assert_eq!(got.output.unwrap().0["ok"], true);
    assert_eq!(got.duration_ms, 12);
}

#[tokio::test]
async fn deleting_a_conversation_removes_messages_and_unlinks_tool_results() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let conv = conversation(db).await;
    let msg = Message::repo()
        .create(db, message(conv.id, 0))
        .await
        .unwrap();
    let r = ToolResult::log(db, tool_call(Some(conv.id), Some(msg.id), None))
        .await
        .unwrap();
    assert!(Conversation::repo().delete(db, conv.id).await.unwrap());
    assert!(Message::repo().find(db, msg.id).await.unwrap().is_none());
    let kept = ToolResult::repo().get(db, r.id).await.unwrap();
    assert_eq!(kept.conversation_id, None);
    assert_eq!(kept.message_id, None);
    assert_eq!(kept.tool_name, "read", "the log entry itself stays");
}

/// The conversation's first message, then `n` more, each following the
/// one before.
async fn chain(db: &Db, conversation_id: Uuid, from: Option<Uuid>, n: usize) -> Vec<Message> {
    let mut chain: Vec<Message> = Vec::new();
    for i in 0..n {
        let new = NewMessage {
            parent_id: chain.last().map(|m| m.id).or(from),
            ..message(conversation_id, i)
        };
        chain.push(Message::repo().create(db, new).await.unwrap());
    }
    chain
}

#[tokio::test]
async fn an_edit_starts_a_branch_and_each_branch_is_its_own_context() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let conv = conversation(db).await;
    let first = chain(db, conv.id, None, 4).await;
    // Edit the second message: a sibling of it, and a reply under the edit.
    let edited = chain(db, conv.id, Some(first[0].id), 2).await;
    let ids = |messages: &[Message]| messages.iter().map(|m| m.id).collect::<Vec<_>>();

    let context = Conversation::context(db, first[3].id).await.unwrap();
    assert_eq!(ids(&context), ids(&first), "root first, the leaf last");
    let context = Conversation::context(db, edited[1].id).await.unwrap();
    let mut branch = vec![first[0].id];
    branch.extend(ids(&edited));
    assert_eq!(ids(&context), branch);
    assert!(
        Conversation::context(db, Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );

    // Both branches hang under the first message, each right after its
    // parent, the older branch first.
    let under = Message::repo()
        .descendants(db, Message::PARENT_ID, first[0].id)
        .await
        .unwrap();
    let mut expected = ids(&first[1..]);
    expected.extend(ids(&edited));
    assert_eq!(ids(&under), expected);

    // Deleting the edit deletes its branch (the key cascades), nothing else.
    assert!(Message::repo().delete(db, edited[0].id).await.unwrap());
    assert!(
        Message::repo()
            .find(db, edited[1].id)
            .await
            .unwrap()
            .is_none()
    );
    let context = Conversation::context(db, first[3].id).await.unwrap();
    assert_eq!(context.len(), 4);
    // A parent in another table's ids is refused by the key.
    let stray = NewMessage {
        parent_id: Some(conv.id),
        ..message(conv.id, 9)
    };
    let err = Message::repo().create(db, stray).await.unwrap_err();
    assert!(
        matches!(&err, mandrake_storage::Error::ForeignKeyViolation { constraint } if constraint == "messages_parent_id_fkey"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_duplicate_model_names_its_constraint() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let p = provider(db, "anthropic").await;
    Model::repo()
        .create(db, model(p.id, "claude"))
        .await
        .unwrap();
    match Model::repo().create(db, model(p.id, "claude")).await {
        Err(Error::UniqueViolation { constraint }) => {
            assert_eq!(constraint, "models_provider_id_model_id_key")
        }
        other => panic!("expected a unique violation, got {:?}", other.err()),
    }
    let other = provider(db, "second").await;
    Model::repo()
        .create(db, model(other.id, "claude"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_api_key_never_shows_in_debug_output() {
    let t = TestDb::migrated().await.unwrap();
    let p = provider(t.db(), "anthropic").await;
    let new = NewProvider {
        name: "x".into(),
        kind: ProviderKind::Openai,
        base_url: None,
        api_key: Some("sk-very-secret".into()),
    };
    let patch = ProviderPatch {
        api_key: Some(Some("sk-very-secret".into())),
        ..Default::default()
    };
    for shown in [
        format!("{p:?}"),
        format!("{new:?}"),
        format!("{patch:?}"),
        format!("{p:#?}"),
    ] {
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    assert!(
        format!("{p:?}").contains("anthropic"),
        "other fields still show"
    );
}

#[tokio::test]
async fn conflicting_serializable_transactions_both_commit_through_retry() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db().clone();
    let conv = conversation(&db).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    // Each transaction counts the messages, then adds one saying how many it
    // saw: a write skew that SERIALIZABLE refuses for one of the two.
    let run = |label: &'static str| {
        let (db, barrier, attempts) = (db.clone(), barrier.clone(), attempts.clone());
        tokio::spawn(async move {
            db.transaction(Isolation::Serializable, |tx| {
                let (barrier, attempts) = (barrier.clone(), attempts.clone());
                Box::pin(async move {
                    let first = attempts.fetch_add(1, Ordering::SeqCst) < 2;
                    let seen = Message::repo()
                        .count(&mut *tx, Message::CONVERSATION_ID.eq(conv.id))
                        .await?;
                    if first {
                        barrier.wait().await;
                    }
                    let content = format!("{label} saw {seen}");
                    Message::repo()
                        .create(
                            &mut *tx,
                            NewMessage {
                                conversation_id: conv.id,
                                role: Role::User,
                                content,
                                model_id: None,
                                tokens_in: 0,
                                tokens_out: 0,
                                parent_id: None,
                            },
                        )
                        .await?;
                    Ok(seen)
                })
            })
            .await
        })
    };
    let (a, b) = (run("a"), run("b"));
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    let mut seen = [a, b];
    seen.sort();
    assert_eq!(seen, [0, 1], "the retried one saw the other's row");
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "one transaction was retried"
    );
    assert_eq!(Message::repo().count(&db, Filter::all()).await.unwrap(), 2);
}

#[tokio::test]
async fn a_failed_transaction_rolls_back_and_is_not_retried() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let conv = conversation(db).await;
    let attempts = AtomicU32::new(0);
    let result: mandrake_storage::Result<()> = db
        .transaction(Isolation::ReadCommitted, |tx| {
            attempts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Message::repo()
                    .create(&mut *tx, message(conv.id, 0))
                    .await?;
                Err(Error::Schema("the caller changed its mind".into()))
            })
        })
        .await;
    assert!(matches!(result, Err(Error::Schema(_))));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(Message::repo().count(db, Filter::all()).await.unwrap(), 0);
}

#[tokio::test]
async fn a_thousand_messages_page_back_once_each_in_order() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let conv = conversation(db).await;
    let other = conversation(db).await;
    let written = Message::repo()
        .create_many(db, (0..1000).map(|n| message(conv.id, n)).collect())
        .await
        .unwrap();
    Message::repo()
        .create(db, message(other.id, 0))
        .await
        .unwrap();
    let mut read = Vec::new();
    let mut cursor = None;
    loop {
        let page = Message::page_of_conversation(db, conv.id, 64, cursor)
            .await
            .unwrap();
        read.extend(page.items);
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let written: Vec<Uuid> = written.iter().map(|m| m.id).collect();
    let read: Vec<Uuid> = read.iter().map(|m| m.id).collect();
    assert_eq!(read, written, "every message once, in the order written");

    let window = Message::context_window(db, conv.id, 5).await.unwrap();
    let contents: Vec<&str> = window.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(
        contents,
        [
            "message 995",
            "message 996",
            "message 997",
            "message 998",
            "message 999"
        ]
    );
}

#[tokio::test]
async fn the_chat_app_queries() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let b = provider(db, "b-provider").await;
    let a = provider(db, "a-provider").await;
    Model::repo().create(db, model(b.id, "m1")).await.unwrap();
    Model::repo().create(db, model(a.id, "m2")).await.unwrap();
    Model::repo()
        .create(
            db,
            NewModel {
                enabled: false,
                ..model(a.id, "off")
            },
        )
        .await
        .unwrap();
    let pairs = Model::enabled_with_provider(db).await.unwrap();
    let names: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(m, p)| (p.name.as_str(), m.model_id.as_str()))
        .collect();
    assert_eq!(names, [("a-provider", "m2"), ("b-provider", "m1")]);
    assert_eq!(pairs[0].1.id, a.id);

    for (name, disabled) in [("zeta", false), ("alpha", false), ("off", true)] {
        ToolConfig::repo()
            .create(
                db,
                NewToolConfig {
                    server_name: name.into(),
                    command: "run".into(),
                    args: Json(vec![]),
                    env: Json(BTreeMap::new()),
                    auto_approve: Json(vec![]),
                    disabled,
                },
            )
            .await
            .unwrap();
    }
    let enabled: Vec<String> = ToolConfig::enabled(db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.server_name)
        .collect();
    assert_eq!(enabled, ["alpha", "zeta"]);
    assert_eq!(
        ToolConfig::by_server_name(db, "off")
            .await
            .unwrap()
            .unwrap()
            .command,
        "run"
    );
    assert!(
        ToolConfig::by_server_name(db, "nope")
            .await
            .unwrap()
            .is_none()
    );

    let conv = conversation(db).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            ToolResult::log(db, tool_call(Some(conv.id), None, None))
                .await
                .unwrap()
                .id,
        );
    }
    ToolResult::log(db, tool_call(None, None, None))
        .await
        .unwrap();
    let newest_first = ToolResult::of_conversation(db, conv.id, ListOptions::new())
        .await
        .unwrap();
    let got: Vec<Uuid> = newest_first.items.iter().map(|r| r.id).collect();
    ids.reverse();
    assert_eq!(got, ids);
}

#[tokio::test]
async fn a_panicking_transaction_rolls_back() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db().clone();
    let conv = conversation(&db).await;
    let task = tokio::spawn({
        let db = db.clone();
        async move {
            db.transaction(Isolation::ReadCommitted, |tx| {
                Box::pin(async move {
                    Message::repo()
                        .create(&mut *tx, message(conv.id, 0))
                        .await?;
                    panic!("the work panics halfway");
                    #[allow(unreachable_code)]
                    Ok(())
                })
            })
            .await
        }
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(Message::repo().count(&db, Filter::all()).await.unwrap(), 0);
}

#[tokio::test]
async fn sidebar_search_and_usage_queries() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let quiet = conversation(db).await;
    let chatty = conversation(db).await;
    let empty = conversation(db).await;
    for n in 0..5 {
        Message::repo()
            .create(db, message(quiet.id, n))
            .await
            .unwrap();
    }
    let texts = [
        "Use 100% of the budget",
        "use 100 percent",
        "snake_case names",
        "SnakeXcase",
    ];
    let mut last = None;
    for text in texts {
        let m = Message::repo()
            .create(
                db,
                NewMessage {
                    content: text.into(),
                    ..message(chatty.id, 0)
                },
            )
            .await
            .unwrap();
        last = Some(m);
    }

    // The sidebar: newest activity first, then each one's last message.
    Conversation::repo()
        .update(
            db,
            quiet.id,
            ConversationPatch {
                title: Some(Some("renamed".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let recent = Conversation::recent(db, 2, None).await.unwrap();
    assert_eq!(
        recent.items[0].id, quiet.id,
        "the one just updated is first"
    );
    let rest = Conversation::recent(db, 2, recent.next).await.unwrap();
    assert_eq!(recent.items.len() + rest.items.len(), 3);
    assert!(rest.next.is_none());
    let previews = Conversation::last_messages(db, &[quiet.id, chatty.id, empty.id])
        .await
        .unwrap();
    assert_eq!(
        previews.len(),
        2,
        "no preview for a conversation without messages"
    );
    assert_eq!(previews[&chatty.id].id, last.unwrap().id);
    assert_eq!(previews[&quiet.id].content, "message 4");

    // Search: case-insensitive, literal, in one conversation or all.
    let found = |m: Vec<Message>| m.into_iter().map(|m| m.content).collect::<Vec<_>>();
    let hits = Message::search(db, None, "100%", 10).await.unwrap();
    assert_eq!(found(hits), ["Use 100% of the budget"]);
    let hits = Message::search(db, Some(chatty.id), "snake_", 10)
        .await
        .unwrap();
    assert_eq!(found(hits), ["snake_case names"], "_ matches only itself");
    let hits = Message::search(db, Some(chatty.id), "USE 100", 10)
        .await
        .unwrap();
    assert_eq!(
        found(hits),
        ["use 100 percent", "Use 100% of the budget"],
        "newest first"
    );
    assert!(
        Message::search(db, Some(quiet.id), "budget", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        Message::search(db, None, "message", 3).await.unwrap().len(),
        3
    );

    // Tool usage since a moment: most used first.
    let before = chrono::Utc::now();
    for (tool, times) in [("read", 3), ("write", 1), ("grep", 2)] {
        for _ in 0..times {
            let call = NewToolResult {
                tool_name: tool.into(),
                ..tool_call(Some(chatty.id), None, None)
            };
            ToolResult::log(db, call).await.unwrap();
        }
    }
    let usage = ToolResult::usage_by_tool(db, before).await.unwrap();
    assert_eq!(
        usage,
        [
            ("read".to_owned(), 3),
            ("grep".to_owned(), 2),
            ("write".to_owned(), 1)
        ]
    );
    let later = ToolResult::usage_by_tool(db, chrono::Utc::now())
        .await
        .unwrap();
    assert!(later.is_empty());
}

#[tokio::test]
async fn a_list_is_never_ordered_by_a_secret_column() {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    provider(db, "first").await;
    provider(db, "second").await;
    // Its page cursor would carry the API keys, readable in base64.
    let by_key = ListOptions::new()
        .order_by(Provider::API_KEY.asc())
        .limit(1);
    let err = Provider::repo()
        .list(db, Filter::all(), by_key)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Schema(m) if m.contains("providers.api_key is secret")),
        "{err}"
    );
    // Nor a join's pages, on either side.
    let err = Model::repo()
        .join(db, Model::PROVIDER_ID, Provider::ID)
        .order_by_joined(Provider::API_KEY.desc())
        .limit(1)
        .page()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Schema(m) if m.contains("providers.api_key is secret")),
        "{err}"
    );
    // Any other order pages as before.
    let by_name = ListOptions::new().order_by(Provider::NAME.asc()).limit(1);
    let page = Provider::repo()
        .list(db, Filter::all(), by_name)
        .await
        .unwrap();
    assert_eq!(page.items[0].name, "first");
    assert!(page.next.is_some());
}

#[test]
fn serde_json_comes_with_the_library() {
    // An application writes JSON columns without a dependency of its own.
    let metadata: Json<mandrake_storage::serde_json::Value> =
        Json(mandrake_storage::serde_json::json!({ "pinned": true }));
    assert_eq!(metadata.0["pinned"], true);
}
