use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
#[record(index())]
pub struct Note {
    pub id: Uuid,
    pub title: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record)]
#[record(unique())]
pub struct Tag {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
