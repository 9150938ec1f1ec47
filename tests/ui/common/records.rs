// The records of the typed-query cases (`include!`d: each case is its own crate).
use chrono::{DateTime, Utc};
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
