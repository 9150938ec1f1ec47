use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
pub struct Note {
    pub id: Uuid,
    pub title: Option<Option<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
