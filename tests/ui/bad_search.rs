use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Note {
    pub id: Uuid,
    #[record(search)]
    pub stars: i32,
    #[record(search = "english; DROP TABLE notes")]
    pub body: String,
    #[record(search, secret)]
    pub password: String,
    #[record(search)]
    pub title: String,
    pub title_search: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
#[record(table = "plain_notes")]
pub struct PlainNote {
    pub id: Uuid,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {
    // Only a field with `#[record(search)]` has `matches`.
    let _ = PlainNote::BODY.matches("pool");
}
