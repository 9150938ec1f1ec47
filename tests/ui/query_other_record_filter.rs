use mandrake_storage::{Db, Record};

include!("common/records.rs");

// A filter built from another record's column.
async fn count(db: &Db) -> mandrake_storage::Result<i64> {
    Note::repo().count(db, Tag::NAME.eq("x")).await
}

fn main() {}
