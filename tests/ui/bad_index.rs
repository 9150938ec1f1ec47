use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record, Clone)]
#[record(
    index(body, using = "fulltext"),
    index(expr = " "),
    index(body, expr = "lower(body)"),
    index(expr = "lower(body)", ops = "text_pattern_ops"),
    index(body, include(nothing)),
    unique(body, using = "gin"),
    index(body, shape = "round")
)]
pub struct Note {
    pub id: Uuid,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}

#[derive(Record, Clone)]
#[record(table = "others", check = " ")]
pub struct Other {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
