use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Chat {
    pub id: Uuid,
    #[record(tenant)]
    pub workspace_id: Option<Uuid>,
    #[record(tenant)]
    pub team: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
