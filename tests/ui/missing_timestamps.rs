use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
pub struct Note {
    pub id: Uuid,
    pub body: String,
}

fn main() {}
