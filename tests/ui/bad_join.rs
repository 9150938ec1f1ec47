// A join pairs keys of one type: a rank (i32) with an id (Uuid) does not compile.
use chrono::{DateTime, Utc};
use mandrake_storage::{Db, Record};
use uuid::Uuid;

#[derive(Record, Clone)]
pub struct Team {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Record, Clone)]
pub struct Player {
    pub id: Uuid,
    pub rank: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

async fn pairs(db: &Db) {
    let _ = Player::repo().join(db, Player::RANK, Team::ID).fetch().await;
}

fn main() {}
