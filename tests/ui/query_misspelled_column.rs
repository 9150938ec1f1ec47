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

// A misspelled column is no constant at all.
async fn count(db: &Db) -> mandrake_storage::Result<i64> {
    Note::repo().count(db, Note::TITEL.eq("x")).await
}

fn main() {}
