//! What Mandrake spent and how its tools did, as typed aggregates: no SQL
//! written by hand.

use mandrake_storage::chrono::{DateTime, Utc};
use mandrake_storage::sqlx::PgExecutor;
use mandrake_storage::uuid::Uuid;
use mandrake_storage::{Bucket, Measure, Record, Result};

use crate::{Message, ToolResult};

/// The messages one model wrote in one time bucket, and their tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelUsage {
    /// The bucket's start (UTC).
    pub bucket: DateTime<Utc>,
    /// The model ([`crate::Model`]'s id).
    pub model_id: Uuid,
    /// Messages it wrote.
    pub messages: i64,
    /// Tokens it read for them.
    pub tokens_in: i64,
    /// Tokens it wrote.
    pub tokens_out: i64,
}

/// Tokens and messages per model per `bucket` since `since`, by bucket then
/// model; messages no model wrote are left out.
///
/// ```no_run
/// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
/// use mandrake_storage::{Bucket, chrono::{Duration, Utc}};
/// let month = mandrake_types::usage_by_model(db, Utc::now() - Duration::days(30), Bucket::Day).await?;
/// # Ok(()) }
/// ```
pub async fn usage_by_model<'e, E: PgExecutor<'e>>(
    executor: E,
    since: DateTime<Utc>,
    bucket: Bucket,
) -> Result<Vec<ModelUsage>> {
    let by_a_model = Message::CREATED_AT
        .ge(since)
        .and(Message::MODEL_ID.is_not_null());
    let rows = Message::repo()
        .aggregate(executor, by_a_model)
        .group_by(Message::CREATED_AT.bucket(bucket))
        .group_by(Message::MODEL_ID)
        .count()
        .sum(Message::TOKENS_IN)
        .sum(Message::TOKENS_OUT)
        .fetch()
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(bucket, model_id, messages, tokens_in, tokens_out)| {
            Some(ModelUsage {
                bucket,
                model_id: model_id?,
                messages,
                // A group has rows, and the columns are NOT NULL: never None.
                tokens_in: tokens_in.unwrap_or_default(),
                tokens_out: tokens_out.unwrap_or_default(),
            })
        })
        .collect())
}

/// How one tool did: calls, failures and durations.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolStats {
    /// The tool.
    pub tool_name: String,
    /// Times it was called.
    pub calls: i64,
    /// Calls that ended in an error.
    pub errors: i64,
    /// `errors / calls`.
    pub error_rate: f64,
    /// The median duration, in milliseconds (interpolated).
    pub p50_ms: f64,
    /// The 95th percentile duration, in milliseconds (interpolated).
    pub p95_ms: f64,
}

/// Per tool since `since`: calls, error rate, p50 and p95 duration; the
/// most called first.
pub async fn tool_stats<'e, E: PgExecutor<'e>>(
    executor: E,
    since: DateTime<Utc>,
) -> Result<Vec<ToolStats>> {
    let rows = ToolResult::repo()
        .aggregate(executor, ToolResult::CREATED_AT.ge(since))
        .group_by(ToolResult::TOOL_NAME)
        .count()
        .count_where(ToolResult::ERROR.is_not_null())
        .percentile(ToolResult::DURATION_MS, 0.5)
        .percentile(ToolResult::DURATION_MS, 0.95)
        .order_by(Measure::count().desc())
        .order_by(ToolResult::TOOL_NAME.asc())
        .fetch()
        .await?;
    Ok(rows
        .into_iter()
        .map(|(tool_name, calls, errors, p50, p95)| ToolStats {
            tool_name,
            calls,
            errors,
            error_rate: errors as f64 / calls as f64,
            // A group has rows, and duration_ms is NOT NULL: never None.
            p50_ms: p50.unwrap_or_default(),
            p95_ms: p95.unwrap_or_default(),
        })
        .collect())
}
