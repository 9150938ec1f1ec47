use mandrake_storage::{Db, Record};

include!("common/records.rs");

// An upsert key of another record.
async fn save(db: &Db) -> mandrake_storage::Result<Note> {
    let new = NewNote { title: "t".into(), stars: 1 };
    Note::repo().upsert(db, new, Tag::ON_NAME).await
}

fn main() {}
