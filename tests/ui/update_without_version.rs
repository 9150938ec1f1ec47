use chrono::{DateTime, Utc};
use mandrake_storage::{Db, Record};
use uuid::Uuid;

#[derive(Record)]
pub struct Note {
    pub id: Uuid,
    pub title: String,
    #[record(version)]
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// On a versioned table, `update` needs the version the caller read.
async fn rename(db: &Db, id: Uuid) -> mandrake_storage::Result<Note> {
    let patch = NotePatch { title: Some("new".into()) };
    Note::repo().update(db, id, patch).await
}

fn main() {}
