//! Model providers and their models.

use mandrake_storage::chrono::{DateTime, Utc};
use mandrake_storage::sqlx::PgExecutor;
use mandrake_storage::uuid::Uuid;
use mandrake_storage::{Record, RecordEnum, Result};

/// The API a provider speaks.
#[derive(RecordEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// Anthropic's API.
    Anthropic,
    /// OpenAI's API.
    Openai,
    /// A local Ollama server.
    Ollama,
    /// xAI's API.
    Xai,
    /// Google's Gemini API.
    Gemini,
    /// DeepSeek's API.
    Deepseek,
}

/// An LLM provider account.
#[derive(Record, Clone)]
pub struct Provider {
    /// The primary key (a UUIDv7, time-ordered).
    pub id: Uuid,
    #[record(unique)]
    /// A unique name for the account.
    pub name: String,
    /// The API it speaks.
    pub kind: ProviderKind,
    /// A different endpoint than the API's default.
    pub base_url: Option<String>,
    #[record(secret)]
    /// The secret key (redacted in Debug output).
    pub api_key: Option<String>,
    /// When the row was stored.
    pub created_at: DateTime<Utc>,
    /// When the row last changed (kept by the database).
    pub updated_at: DateTime<Utc>,
}

/// A model offered by a provider.
#[derive(Record, Clone)]
#[record(unique(provider_id, model_id))]
pub struct Model {
    /// The primary key (a UUIDv7, time-ordered).
    pub id: Uuid,
    #[record(references = "providers", on_delete = "cascade")]
    /// The provider offering it.
    pub provider_id: Uuid,
    /// The provider's name for the model, e.g. `claude-sonnet-4`.
    pub model_id: String,
    #[record(default = "true")]
    /// Whether the app offers it.
    pub enabled: bool,
    /// How many tokens it reads at most.
    pub context_window: i32,
    /// How many tokens it writes at most.
    pub max_tokens: i32,
    /// Sampling temperature; the provider's default when absent.
    pub temperature: Option<f64>,
    /// When the row was stored.
    pub created_at: DateTime<Utc>,
    /// When the row last changed (kept by the database).
    pub updated_at: DateTime<Utc>,
}

impl Model {
    /// Every enabled model with its provider, by provider name then model
    /// id, in one query (a typed join).
    pub async fn enabled_with_provider<'e, E: PgExecutor<'e>>(
        executor: E,
    ) -> Result<Vec<(Model, Provider)>> {
        Model::repo()
            .join(executor, Model::PROVIDER_ID, Provider::ID)
            .filter(Model::ENABLED.eq(true))
            .order_by_joined(Provider::NAME.asc())
            .order_by(Model::MODEL_ID.asc())
            .fetch()
            .await
    }
}
