//! Client CPU per page call, the layer `cargo xtask bench`'s page cell
//! cannot separate from the server's: `page_cpu URL N [TASKS]` walks a
//! conversation of 1,000 messages 50 at a time, N calls spread over TASKS
//! tasks (1), and prints this process's CPU time (user + system, from
//! /proc/self/stat) and the wall time per call. Run two builds alternately
//! against one server to compare them.
use std::time::Instant;

use mandrake_storage::{Db, Record, Settings};
use mandrake_types::{Conversation, Message, NewConversation, NewMessage, Role};

/// User and system CPU of this process, in clock ticks (1/100 s).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `calls` pages of the conversation, each from where the last ended.
async fn walk(db: Db, conversation: uuid::Uuid, calls: usize) {
    let mut cursor = None;
    for _ in 0..calls {
        let page = Message::page_of_conversation(&db, conversation, 50, cursor.take())
            .await
            .unwrap();
        cursor = page.next;
    }
}

async fn walk_all(db: &Db, conversation: uuid::Uuid, calls: usize, tasks: usize) {
    let handles: Vec<_> = (0..tasks)
        .map(|_| tokio::spawn(walk(db.clone(), conversation, calls / tasks)))
        .collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let url = &args[1];
    let calls: usize = args[2].parse().unwrap();
    let tasks: usize = args.get(3).map_or(1, |t| t.parse().unwrap());
    let db = Db::connect_url(url, &Settings::default()).await.unwrap();
    let metadata = sqlx::types::Json(serde_json::json!({}));
    let conversation = Conversation::repo()
        .create(
            &db,
            NewConversation {
                title: None,
                metadata,
            },
        )
        .await
        .unwrap();
    let rows = (0..1000)
        .map(|i| NewMessage {
            conversation_id: conversation.id,
            role: Role::User,
            content: format!("message {i} with some words in it to decode"),
            model_id: None,
            tokens_in: 0,
            tokens_out: 0,
            parent_id: None,
        })
        .collect();
    Message::repo().create_many(&db, rows).await.unwrap();
    walk_all(&db, conversation.id, 2000, tasks).await;
    let (ticks, started) = (cpu_ticks(), Instant::now());
    walk_all(&db, conversation.id, calls, tasks).await;
    let (cpu, wall) = (cpu_ticks() - ticks, started.elapsed());
    println!(
        "{tasks} task(s): {:.1} µs CPU per call, {:.1} µs wall per call ({calls} calls)",
        cpu as f64 * 10_000.0 / calls as f64,
        wall.as_secs_f64() * 1e6 / calls as f64
    );
}
