//! `cargo xtask db top`: the costliest statements of a database, from
//! pg_stat_statements, each matched to its table and repository operation.

use mandrake_storage::testing::TestDb;
use mandrake_storage::{Filter, ListOptions, Record};
use mandrake_types::{Conversation, Message, NewConversation, NewMessage, Role};

#[tokio::test]
async fn top_names_the_table_and_operation_of_each_statement() {
    if std::env::var("DATABASE_URL").is_ok() {
        return; // a given server may not load pg_stat_statements
    }
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let url = t.url();
    if !mandrake_tests::pg_stat_statements_usable(db).await {
        return;
    }
    mandrake_cli::stats::reset(&url).await.unwrap();
    let conversation = Conversation::repo()
        .create(
            db,
            NewConversation {
                title: None,
                metadata: sqlx::types::Json(serde_json::json!({})),
            },
        )
        .await
        .unwrap();
    for n in 0..5 {
        let new = NewMessage {
            conversation_id: conversation.id,
            role: Role::User,
            content: format!("message {n}"),
            model_id: None,
            tokens_in: 0,
            tokens_out: 0,
            parent_id: None,
        };
        let m = Message::repo().create(db, new).await.unwrap();
        Message::repo().get(db, m.id).await.unwrap();
    }
    Message::repo()
        .list(db, Filter::all(), ListOptions::new().limit(2))
        .await
        .unwrap();

    let tables = mandrake_types::tables();
    let rows = mandrake_cli::stats::top(&url, &tables, 50).await.unwrap();
    let calls = |table: &str, op: &str| {
        rows.iter()
            .filter(|r| {
                r.origin
                    .as_ref()
                    .is_some_and(|(t, o)| t == table && *o == op)
            })
            .map(|r| r.calls)
            .sum::<i64>()
    };
    assert_eq!(calls("messages", "create"), 5, "{rows:#?}");
    assert_eq!(calls("messages", "get"), 5, "{rows:#?}");
    assert_eq!(calls("messages", "list"), 1, "{rows:#?}");
    assert_eq!(calls("conversations", "create"), 1, "{rows:#?}");
    assert!(rows.iter().all(|r| r.total_ms >= 0.0 && r.mean_ms >= 0.0));

    mandrake_cli::stats::reset(&url).await.unwrap();
    let after = mandrake_cli::stats::top(&url, &tables, 50).await.unwrap();
    assert!(
        after.iter().all(|r| r.origin.is_none()),
        "reset forgets them: {after:#?}"
    );
}
