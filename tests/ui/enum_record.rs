use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
pub enum Note {
    Draft,
    Published,
}

fn main() {}
