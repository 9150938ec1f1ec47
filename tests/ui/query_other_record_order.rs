use mandrake_storage::{ListOptions, Record};

include!("common/records.rs");

// An order built from another record's column.
fn newest() -> ListOptions<Note> {
    ListOptions::new().order_by(Tag::CREATED_AT.desc())
}

fn main() {}
