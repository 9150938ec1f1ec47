use mandrake_storage::{Db, Record};

include!("common/records.rs");

// A value of the wrong type for the column.
async fn count(db: &Db) -> mandrake_storage::Result<i64> {
    Note::repo().count(db, Note::STARS.eq("five")).await
}

fn main() {}
