use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record)]
pub struct Note(Uuid, DateTime<Utc>, DateTime<Utc>);

fn main() {}
