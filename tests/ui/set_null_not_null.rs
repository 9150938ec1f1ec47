use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
pub struct Note {
    pub id: Uuid,
    #[record(references = "folders", on_delete = "set null")]
    pub folder_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
