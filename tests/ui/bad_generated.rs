use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Note {
    pub id: Uuid,
    pub body: String,
    #[record(generated = "")]
    pub empty: i32,
    #[record(generated = "length(body)", default = "0")]
    pub both: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}

#[derive(Record, Clone)]
#[record(table = "others")]
pub struct Other {
    pub id: Uuid,
    #[record(index = false)]
    pub plain: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
