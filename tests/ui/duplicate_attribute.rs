use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
#[record(table = "notes")]
#[record(table = "memos")]
pub struct Note {
    pub id: Uuid,
    #[record(rename = "a", rename = "b")]
    pub title: String,
    #[record(unique)]
    #[record(unique)]
    pub slug: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
