use chrono::{DateTime, Utc};
use mandrake_storage::{Db, Filter, Record};
use uuid::Uuid;

#[derive(Record)]
pub struct Note {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

async fn changes(db: &Db) {
    // Only a `#[record(notify)]` table has a change feed.
    let _ = Note::subscribe(db, Filter::all()).await;
}

fn main() {}
