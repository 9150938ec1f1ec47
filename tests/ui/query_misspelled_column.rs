use mandrake_storage::{Db, Record};

include!("common/records.rs");

// A misspelled column is no constant at all.
async fn count(db: &Db) -> mandrake_storage::Result<i64> {
    Note::repo().count(db, Note::TITEL.eq("x")).await
}

fn main() {}
