use chrono::{DateTime, Utc};
use mandrake_storage::{Bucket, Db, Filter, Record};
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Call {
    pub id: Uuid,
    pub tool: String,
    pub duration_ms: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
pub struct Other {
    pub id: Uuid,
    pub n: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn misuse(db: &Db) {
    // A sum and a percentile need a number, a bucket a timestamp.
    let _ = Call::repo().aggregate(db, Filter::all()).sum(Call::TOOL);
    let _ = Call::repo()
        .aggregate(db, Filter::all())
        .percentile(Call::TOOL, 0.5);
    let _ = Call::TOOL.bucket(Bucket::Day);
    // Another record's column.
    let _ = Call::repo().aggregate(db, Filter::all()).group_by(Other::N);
    // Keys come before measures.
    let _ = Call::repo()
        .aggregate(db, Filter::all())
        .count()
        .group_by(Call::TOOL);
    // A relation between columns of different types.
    let _ = Call::ID.referenced_by(Other::N, Filter::all());
}

fn main() {
    let _ = misuse;
}
