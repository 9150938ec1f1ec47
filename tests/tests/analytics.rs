//! Analytics without raw SQL, against real PostgreSQL: typed aggregates
//! checked against hand-written SQL on the same rows, relation filters,
//! `touch` and `import`, the SQL of a call, and `#[derive(FromRow)]`.

use chrono::{DateTime, Duration, TimeZone, Utc};
use mandrake_storage::sqlx::types::Json;
use mandrake_storage::testing::TestDb;
use mandrake_storage::{
    Bucket, DryRun, Error, Filter, FromRow, ListOptions, Measure, Record, sqlx,
};
use mandrake_types::*;
use uuid::Uuid;

/// Two models, one conversation, 30 days of messages (3 a day, one of them
/// a user's, with no model) and of tool calls (some failed), every row
/// imported with its own time.
struct History {
    t: TestDb,
    models: [Uuid; 2],
    conversation: Conversation,
    quiet: Conversation,
    since: DateTime<Utc>,
}

fn day(n: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 1, 9, 30, 0).unwrap() + Duration::days(n)
}

async fn history() -> History {
    let t = TestDb::migrated().await.unwrap();
    let db = t.db();
    let provider = Provider::repo()
        .create(
            db,
            NewProvider {
                name: "anthropic".into(),
                kind: ProviderKind::Anthropic,
                base_url: None,
                api_key: None,
            },
        )
        .await
        .unwrap();
    let mut models = [Uuid::nil(); 2];
    for (i, name) in ["small", "large"].iter().enumerate() {
        let new = NewModel {
            provider_id: provider.id,
            model_id: (*name).into(),
            enabled: true,
            context_window: 200_000,
            max_tokens: 8192,
            temperature: None,
        };
        models[i] = Model::repo().create(db, new).await.unwrap().id;
    }
    let conversation = |title: &str| NewConversation {
        title: Some(title.into()),
        metadata: Json(serde_json::json!({})),
    };
    let chat = Conversation::repo()
        .create(db, conversation("busy"))
        .await
        .unwrap();
    let quiet = Conversation::repo()
        .create(db, conversation("quiet"))
        .await
        .unwrap();
    for n in 0..30 {
        for k in 0..3i32 {
            let model_id = (k > 0).then(|| models[(n as usize + k as usize) % 2]);
            let new = NewMessage {
                conversation_id: chat.id,
                role: if k == 0 { Role::User } else { Role::Assistant },
                content: format!("day {n} message {k}"),
                model_id,
                tokens_in: if k == 0 { 0 } else { 100 * k + n as i32 },
                tokens_out: if k == 0 { 0 } else { 7 * k + n as i32 },
                parent_id: None,
            };
            let at = day(n) + Duration::hours(i64::from(k) * 5);
            Message::repo().import(db, new, at).await.unwrap();
        }
        for (tool, failing) in [("read_file", n % 7 == 0), ("search", n % 3 == 0)] {
            let call = NewToolResult {
                conversation_id: Some(chat.id),
                message_id: None,
                tool_config_id: None,
                server: "files".into(),
                tool_name: tool.into(),
                input: Json(serde_json::json!({ "n": n })),
                output: None,
                error: failing.then(|| "boom".into()),
                duration_ms: 10 + (n * n) % 97,
            };
            ToolResult::repo().import(db, call, day(n)).await.unwrap();
        }
    }
    History {
        t,
        models,
        conversation: chat,
        quiet,
        since: day(0),
    }
}

#[tokio::test]
async fn tokens_per_model_per_day_and_tool_stats_match_hand_written_sql() {
    let h = history().await;
    let db = h.t.db();
    let usage = usage_by_model(db, h.since, Bucket::Day).await.unwrap();
    type Usage = (DateTime<Utc>, Uuid, i64, i64, i64);
    let expected: Vec<Usage> = sqlx::query_as(
        "SELECT date_trunc('day', created_at, 'UTC'), model_id, count(*), \
                sum(tokens_in)::bigint, sum(tokens_out)::bigint \
         FROM messages WHERE created_at >= $1 AND model_id IS NOT NULL \
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(h.since)
    .fetch_all(db)
    .await
    .unwrap();
    let got: Vec<Usage> = usage
        .iter()
        .map(|u| (u.bucket, u.model_id, u.messages, u.tokens_in, u.tokens_out))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(usage.len(), 60, "two models on each of 30 days");
    assert!(usage.iter().all(|u| h.models.contains(&u.model_id)));
    assert_eq!(usage.iter().map(|u| u.messages).sum::<i64>(), 60);

    let stats = tool_stats(db, h.since).await.unwrap();
    type Stat = (String, i64, i64, f64, f64);
    let expected: Vec<Stat> = sqlx::query_as(
        "SELECT tool_name, count(*), count(*) FILTER (WHERE error IS NOT NULL), \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms), \
                percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms) \
         FROM tool_results WHERE created_at >= $1 GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .bind(h.since)
    .fetch_all(db)
    .await
    .unwrap();
    let got: Vec<Stat> = stats
        .iter()
        .map(|s| (s.tool_name.clone(), s.calls, s.errors, s.p50_ms, s.p95_ms))
        .collect();
    assert_eq!(got, expected);
    let search = stats.iter().find(|s| s.tool_name == "search").unwrap();
    assert_eq!((search.calls, search.errors), (30, 10));
    assert!((search.error_rate - 1.0 / 3.0).abs() < 1e-12);
    // The usage by tool moved onto the same builder.
    let by_tool = ToolResult::usage_by_tool(db, h.since).await.unwrap();
    assert_eq!(
        by_tool,
        [("read_file".to_owned(), 30), ("search".to_owned(), 30)]
    );
}

/// A week, its models, and its output tokens' sum, input tokens' average,
/// output tokens' min and max.
type Weekly = (
    DateTime<Utc>,
    i64,
    Option<i64>,
    Option<f64>,
    Option<i32>,
    Option<i32>,
);

#[tokio::test]
async fn keys_measures_having_order_and_limit_are_typed_and_compose() {
    let h = history().await;
    let db = h.t.db();
    // Busiest days by output tokens, in a time zone of their own.
    let rows: Vec<Weekly> = Message::repo()
        .aggregate(db, Message::MODEL_ID.is_not_null())
        .group_by(
            Message::CREATED_AT
                .bucket(Bucket::Week)
                .in_time_zone("America/New_York"),
        )
        .count_distinct(Message::MODEL_ID)
        .sum(Message::TOKENS_OUT)
        .avg(Message::TOKENS_IN)
        .min(Message::TOKENS_OUT)
        .max(Message::TOKENS_OUT)
        .having(Measure::<Message, i64>::count().ge(10))
        .order_by(Measure::sum(Message::TOKENS_OUT).desc())
        .limit(2)
        .fetch()
        .await
        .unwrap();
    let expected: Vec<Weekly> =
        sqlx::query_as(
            "SELECT date_trunc('week', created_at, 'America/New_York'), count(DISTINCT model_id), \
                    sum(tokens_out)::bigint, avg(tokens_in)::float8, min(tokens_out), max(tokens_out) \
             FROM messages WHERE model_id IS NOT NULL GROUP BY 1 HAVING count(*) >= 10 \
             ORDER BY 3 DESC LIMIT 2",
        )
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(rows, expected);
    assert_eq!(rows.len(), 2);
    // New York's weeks start at 04:00 or 05:00 UTC, never at midnight.
    assert!(rows.iter().all(|r| r.0.format("%H").to_string() != "00"));

    // Into a struct of the row's own names.
    #[derive(FromRow, Debug, PartialEq)]
    struct PerTool {
        tool_name: String,
        count: i64,
        count_where: i64,
        p95_duration_ms: Option<f64>,
    }
    let builder = ToolResult::repo()
        .aggregate(db, Filter::all())
        .group_by(ToolResult::TOOL_NAME)
        .count()
        .count_where(ToolResult::ERROR.is_not_null())
        .percentile(ToolResult::DURATION_MS, 0.95);
    let sql = builder.to_sql();
    assert!(sql.contains(r#"AS "p95_duration_ms""#), "{sql}");
    let per_tool: Vec<PerTool> = builder.fetch_as().await.unwrap();
    assert_eq!(per_tool.len(), 2);
    assert_eq!(per_tool[0].tool_name, "read_file");
    assert_eq!((per_tool[0].count, per_tool[0].count_where), (30, 5));
}

#[tokio::test]
async fn empty_groups_nulls_and_overflow_behave_as_in_sql() {
    let h = history().await;
    let db = h.t.db();
    // No row at all, no keys: one row, counts 0, every other measure NULL.
    let nothing = Message::repo()
        .aggregate(db, Message::CONTENT.eq("no such message"))
        .count()
        .sum(Message::TOKENS_IN)
        .avg(Message::TOKENS_IN)
        .max(Message::CREATED_AT)
        .percentile(Message::TOKENS_IN, 0.5)
        .fetch()
        .await
        .unwrap();
    assert_eq!(nothing, [(0, None, None, None, None)]);
    // Grouped, an empty filter gives no groups.
    let groups = Message::repo()
        .aggregate(db, Message::CONTENT.eq("no such message"))
        .group_by(Message::ROLE)
        .count()
        .fetch()
        .await
        .unwrap();
    assert!(groups.is_empty());
    // NULL keys form a group of their own; NULLs are not counted as values.
    let by_model = Message::repo()
        .aggregate(db, Filter::all())
        .group_by(Message::MODEL_ID)
        .count()
        .count_distinct(Message::MODEL_ID)
        .order_by(Message::MODEL_ID.asc())
        .fetch()
        .await
        .unwrap();
    assert_eq!(by_model.len(), 3);
    assert_eq!(by_model[2], (None, 30, 0), "the users' messages, no model");
    // A sum past i64 is an error, not a wrap.
    sqlx::raw_sql("UPDATE tool_results SET duration_ms = 9223372036854775807")
        .execute(db)
        .await
        .unwrap();
    let overflow = ToolResult::repo()
        .aggregate(db, Filter::all())
        .sum(ToolResult::DURATION_MS)
        .fetch()
        .await;
    match overflow {
        Err(Error::Database(e)) => assert!(e.to_string().contains("out of range"), "{e}"),
        other => panic!("expected an out-of-range error, got {other:?}"),
    }
}

#[tokio::test]
async fn filters_across_relations_are_one_statement_and_compose() {
    let h = history().await;
    let db = h.t.db();
    // Messages of conversations titled "busy": one call instead of two.
    let busy = Conversation::TITLE.eq("busy");
    let filter = Message::CONVERSATION_ID.is_in_query(Conversation::ID, busy);
    let dry = DryRun::new();
    let _ = Message::repo().count(&dry, filter).await;
    assert_eq!(
        dry.statements(),
        [
            r#"SELECT count(*) FROM "public"."messages" WHERE "conversation_id" = ANY(ARRAY(SELECT "id" FROM "public"."conversations" WHERE "title" = $1))"#
        ]
    );
    let busy = Conversation::TITLE.eq("busy");
    let by_users = Message::CONVERSATION_ID
        .is_in_query(Conversation::ID, busy)
        .and(Message::ROLE.eq(Role::User));
    assert_eq!(Message::repo().count(db, by_users).await.unwrap(), 30);
    // Conversations that have a failed tool call (a nullable key counts
    // as its inner type), and those that do not.
    let failing = Conversation::ID
        .referenced_by(ToolResult::CONVERSATION_ID, ToolResult::ERROR.is_not_null());
    let page = Conversation::repo()
        .list(db, failing, ListOptions::new())
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [h.conversation.id]
    );
    let clean = Conversation::ID
        .referenced_by(ToolResult::CONVERSATION_ID, ToolResult::ERROR.is_not_null())
        .not();
    let page = Conversation::repo()
        .list(db, clean, ListOptions::new())
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        [h.quiet.id]
    );
    // Values inside and outside number in order.
    let mixed = Message::ROLE
        .eq(Role::Assistant)
        .and(
            Message::CONVERSATION_ID.is_in_query(
                Conversation::ID,
                Conversation::TITLE
                    .eq("busy")
                    .or(Conversation::TITLE.eq("other")),
            ),
        )
        .and(Message::TOKENS_OUT.gt(30));
    let expected: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM messages WHERE role = 'assistant' AND tokens_out > 30",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(Message::repo().count(db, mixed).await.unwrap(), expected);
}

#[tokio::test]
async fn touch_moves_updated_at_and_import_keeps_its_times() {
    let h = history().await;
    let db = h.t.db();
    let first = Message::repo()
        .list(
            db,
            Filter::all(),
            ListOptions::new()
                .order_by(Message::CREATED_AT.asc())
                .limit(1),
        )
        .await
        .unwrap()
        .items
        .remove(0);
    assert_eq!(first.created_at, day(0));
    assert_eq!(first.updated_at, day(0), "import gives both times");
    let touched = Message::repo().touch(db, first.id).await.unwrap();
    assert!(touched.updated_at > Utc::now() - Duration::minutes(1));
    assert_eq!(touched.created_at, first.created_at);
    assert_eq!(touched.content, first.content);
    let recent = Conversation::repo().touch(db, h.quiet.id).await.unwrap();
    let newest = Conversation::recent(db, 1, None).await.unwrap().items;
    assert_eq!(newest[0].id, recent.id);
    assert!(matches!(
        Message::repo().touch(db, Uuid::now_v7()).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn raw_sql_reads_into_a_struct_deriving_from_row() {
    let h = history().await;
    #[derive(FromRow, Debug)]
    struct TitleCount {
        title: Option<String>,
        messages: i64,
    }
    let rows: Vec<TitleCount> = sqlx::query_as(
        "SELECT c.title, count(m.id) AS messages FROM conversations c \
         LEFT JOIN messages m ON m.conversation_id = c.id GROUP BY c.id ORDER BY 2 DESC",
    )
    .fetch_all(h.t.db())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].title.as_deref(), rows[0].messages),
        (Some("busy"), 90)
    );
    assert_eq!(rows[1].messages, 0);
}

#[tokio::test]
async fn a_percentile_fraction_is_bound_and_one_outside_0_to_1_is_refused() {
    let h = history().await;
    let db = h.t.db();
    let agg = |p: f64| {
        ToolResult::repo()
            .aggregate(db, Filter::all())
            .percentile(ToolResult::DURATION_MS, p)
    };
    // The fraction is a parameter, never text in the statement.
    let sql = agg(0.95).to_sql();
    assert!(
        sql.contains("percentile_cont($1::double precision)"),
        "{sql}"
    );
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.5, -0.1] {
        match agg(bad).fetch().await {
            Err(Error::InvalidValue { column, .. }) => assert_eq!(column, "duration_ms"),
            other => panic!("{bad}: expected InvalidValue, got {other:?}"),
        }
    }
    let median: Vec<(Option<f64>,)> = agg(0.5).fetch().await.unwrap();
    let expected: f64 = sqlx::query_scalar(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_ms) FROM tool_results",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(median, [(Some(expected),)]);
}

/// A model, then the p95, sum, min, max and mean of the expressions.
type Shape = (
    Uuid,
    Option<f64>,
    Option<i64>,
    Option<i32>,
    Option<i32>,
    Option<f64>,
);

/// Measures of a computed number, not only of a column: the 95th
/// percentile of a message's length, its tokens in and out together, the
/// shortest and longest, against the same SQL by hand; the row names
/// follow the expression.
#[tokio::test]
async fn measures_take_expressions_over_columns() {
    use mandrake_storage::Measure;
    let h = history().await;
    let db = h.t.db();
    let length = Message::CONTENT.char_length();
    let tokens = Message::TOKENS_IN.plus(Message::TOKENS_OUT);
    let got: Vec<Shape> = Message::repo()
        .aggregate(db, Message::MODEL_ID.is_not_null())
        .group_by(Message::MODEL_ID)
        .percentile(length.clone(), 0.95)
        .sum(tokens.clone())
        .min(length.clone())
        .max(length.clone())
        .avg(
            Message::TOKENS_OUT
                .times(Message::TOKENS_OUT)
                .minus(Message::TOKENS_IN),
        )
        .order_by(Message::MODEL_ID.asc())
        .fetch()
        .await
        .unwrap()
        .into_iter()
        .map(|(model, p95, sum, min, max, avg)| (model.unwrap(), p95, sum, min, max, avg))
        .collect();
    let expected: Vec<Shape> = sqlx::query_as(
        "SELECT model_id, percentile_cont(0.95) WITHIN GROUP (ORDER BY char_length(content)), \
                    sum(tokens_in + tokens_out)::bigint, min(char_length(content)), \
                    max(char_length(content)), \
                    avg(tokens_out * tokens_out - tokens_in)::double precision \
             FROM messages WHERE model_id IS NOT NULL GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(db)
    .await
    .unwrap();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 2);
    // Names a row reads them under (`fetch_as`): p95_length_content, ….
    let sql = Message::repo()
        .aggregate(db, mandrake_storage::Filter::all())
        .measure(Measure::percentile(length, 0.95))
        .measure(Measure::sum(tokens))
        .to_sql();
    assert!(sql.contains(r#"AS "p95_length_content""#), "{sql}");
    assert!(
        sql.contains(r#"AS "sum_tokens_in_plus_tokens_out""#),
        "{sql}"
    );
}
