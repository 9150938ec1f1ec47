use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(
    foreign_key(workspace_id, user_id),
    foreign_key(workspace_id, user_id, references = "users"),
    foreign_key(workspace_id, user_id, references = "users(id)"),
    foreign_key(workspace_id, nobody, references = "users(workspace_id, id)"),
    foreign_key(workspace_id, user_id, references = "users(workspace_id, id)", on_delete = "explode")
)]
pub struct Chat {
    pub id: Uuid,
    pub workspace_id: Uuid,
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
