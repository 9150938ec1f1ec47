use mandrake_storage::{Db, Record};

include!("common/records.rs");

// A NOT NULL column cannot be NULL, so it has no is_null.
async fn count(db: &Db) -> mandrake_storage::Result<i64> {
    Note::repo().count(db, Note::TITLE.is_null()).await
}

fn main() {}
