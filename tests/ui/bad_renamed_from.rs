use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
#[record(table = "notes", renamed_from = "notes")]
pub struct Note {
    pub id: Uuid,
    #[record(renamed_from = "title")]
    pub title: String,
    #[record(renamed_from = "body")]
    pub summary: String,
    #[record(renamed_from = "body")]
    pub text: String,
    #[record(skip, renamed_from = "draft")]
    pub draft: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
