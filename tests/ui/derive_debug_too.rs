// The derive implements Debug (secret fields redacted): deriving it too is E0119.
use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record, Clone, Debug)]
pub struct Key {
    pub id: Uuid,
    #[record(secret)]
    pub api_key: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
