//! Model providers and their models.

use std::sync::OnceLock;

use mandrake_storage::chrono::{DateTime, Utc};
use mandrake_storage::sqlx::PgExecutor;
use mandrake_storage::uuid::Uuid;
use mandrake_storage::{Record, RecordEnum, Result};

/// The API a provider speaks.
#[derive(RecordEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Anthropic,
    Openai,
    Ollama,
    Xai,
    Gemini,
    Deepseek,
}

/// An LLM provider account.
#[derive(Record, Clone)]
pub struct Provider {
    pub id: Uuid,
    #[record(unique)]
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    #[record(secret)]
    pub api_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A model offered by a provider.
#[derive(Record, Clone)]
#[record(unique(provider_id, model_id))]
pub struct Model {
    pub id: Uuid,
    #[record(references = "providers", on_delete = "cascade")]
    pub provider_id: Uuid,
    /// The provider's name for the model, e.g. `claude-sonnet-4`.
    pub model_id: String,
    #[record(default = "true")]
    pub enabled: bool,
    pub context_window: i32,
    pub max_tokens: i32,
    pub temperature: Option<f64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Model {
    /// Every enabled model with its provider, by provider name then model
    /// id, in one query.
    pub async fn enabled_with_provider<'e, E: PgExecutor<'e>>(
        executor: E,
    ) -> Result<Vec<(Model, Provider)>> {
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "SELECT {}, {} FROM models m JOIN providers p ON p.id = m.provider_id \
                 WHERE m.enabled ORDER BY p.name, m.model_id",
                Model::columns("m"),
                Provider::columns("p"),
            )
        });
        let width = Model::schema().columns.len();
        let rows = mandrake_storage::sqlx::query(sql.as_str())
            .fetch_all(executor)
            .await?;
        rows.iter()
            .map(|row| Ok((Model::decode(row, 0)?, Provider::decode(row, width)?)))
            .collect()
    }
}
