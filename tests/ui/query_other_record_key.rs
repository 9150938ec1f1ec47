use chrono::{DateTime, Utc};
use mandrake_storage::{Db, Record};
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

// An upsert key of another record.
async fn save(db: &Db) -> mandrake_storage::Result<Note> {
    let new = NewNote { title: "t".into(), stars: 1 };
    Note::repo().upsert(db, new, Tag::ON_NAME).await
}

fn main() {}
