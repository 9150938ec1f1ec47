use chrono::{DateTime, Utc};
use mandrake_storage::Record;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Money(i64);

#[derive(Record)]
pub struct Note {
    pub id: Uuid,
    pub price: Money,
    /// A second unsupported field gets an error of its own.
    pub refund: Option<Money>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn main() {}
