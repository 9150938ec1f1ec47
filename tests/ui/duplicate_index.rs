use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(
    index(body, using = "gin", ops = "gin_trgm_ops"),
    index(body, using = "gin", ops = "gin_trgm_ops"),
    index(rank),
    index(body, using = "gin", ops = "gin_trgm_ops", where = "rank > 0")
)]
pub struct Note {
    pub id: Uuid,
    pub body: String,
    #[record(index)]
    pub rank: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
