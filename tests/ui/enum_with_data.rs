use mandrake_storage::RecordEnum;

#[derive(RecordEnum)]
pub enum Role {
    User,
    Named(String),
}

fn main() {}
