use chrono::{DateTime, Utc};
use mandrake_storage::{ListOptions, Record};
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Note {
    pub id: Uuid,
    pub title: String,
    pub stars: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
pub struct Tag {
    pub id: Uuid,
    #[record(unique)]
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// An order built from another record's column.
fn newest() -> ListOptions<Note> {
    ListOptions::new().order_by(Tag::CREATED_AT.desc())
}

fn main() {}
