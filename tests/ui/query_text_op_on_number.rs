use mandrake_storage::{Db, Record};

include!("common/records.rs");

// Text search on a number column.
async fn count(db: &Db) -> mandrake_storage::Result<i64> {
    Note::repo().count(db, Note::STARS.contains_text("5")).await
}

fn main() {}
