//! `cargo xtask bench -- --feed`: what the change feed (decoded from the
//! WAL) costs the writers of `messages`, and how soon it delivers.
//!
//! - 8 tasks creating messages, and a streamed reply (500 updates of one
//!   message, the text growing), each with a subscriber attached and with
//!   no feed at all, alternating round by round;
//! - the streamed reply once more with the table logging only keys
//!   (`REPLICA IDENTITY DEFAULT`): what logging whole old rows costs;
//! - the delay from each commit to its event at 1,000 commits/s, and with
//!   1, 10 and 100 subscriptions sharing the process's decoding stream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mandrake_storage::{Change, Db, Record, Settings, Subscription};
use mandrake_types::{Conversation, Message, MessagePatch, NewConversation, NewMessage, Role};
use uuid::Uuid;

use crate::report::percentile;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn message(conversation_id: Uuid, content: String) -> NewMessage {
    NewMessage {
        conversation_id,
        role: Role::Assistant,
        content,
        model_id: None,
        tokens_in: 0,
        tokens_out: 0,
        parent_id: None,
    }
}

async fn conversation(db: &Db) -> Result<Uuid, BoxError> {
    let c = Conversation::repo()
        .create(
            db,
            NewConversation {
                title: Some("feed bench".into()),
                metadata: mandrake_storage::sqlx::types::Json(serde_json::json!({})),
            },
        )
        .await?;
    Ok(c.id)
}

/// Waits until `count` inserts and updates have arrived.
async fn drain(feed: &mut Subscription<Message>, count: usize) -> Result<(), BoxError> {
    let mut seen = 0;
    while seen < count {
        let change = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .map_err(|_| format!("{seen} of {count} changes arrived"))?
            .ok_or("the feed ended")??;
        if matches!(change, Change::Inserted(_) | Change::Updated(_)) {
            seen += 1;
        }
    }
    Ok(())
}

/// Seconds 8 tasks take to create `per_task` messages each.
async fn creates(db: &Db, conversation: Uuid, per_task: usize) -> Result<f64, BoxError> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    Message::repo()
                        .create(&db, message(conversation, format!("{t}.{i}")))
                        .await?;
                }
                Ok::<_, mandrake_storage::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds 500 updates of one message take, its text growing a token each.
async fn streamed_reply(db: &Db, conversation: Uuid) -> Result<f64, BoxError> {
    let m = Message::repo()
        .create(db, message(conversation, String::new()))
        .await?;
    let mut text = String::new();
    let started = Instant::now();
    for i in 0..500 {
        text.push_str(&format!(" token{i}"));
        let patch = MessagePatch {
            content: Some(text.clone()),
            ..Default::default()
        };
        Message::repo().update(db, m.id, patch).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Commits at `rate` a second for `seconds` (8 writers, paced), with
/// `subscribers` subscriptions on `db`: the delay from each commit's
/// acknowledgement to its event in each subscriber, and the rate reached.
async fn delays(
    db: &Db,
    rate: u64,
    seconds: u64,
    subscribers: usize,
) -> Result<(Vec<Duration>, f64), BoxError> {
    let conversation = conversation(db).await?;
    let total = (rate * seconds) as usize;
    let mut listeners = Vec::new();
    for _ in 0..subscribers {
        let mut feed = Message::subscribe(db, Message::CONVERSATION_ID.eq(conversation)).await?;
        listeners.push(tokio::spawn(async move {
            let mut arrivals = HashMap::with_capacity(total);
            while arrivals.len() < total {
                match tokio::time::timeout(Duration::from_secs(60), feed.next()).await {
                    Ok(Some(Ok(Change::Inserted(m)))) => {
                        arrivals.insert(m.id, Instant::now());
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(e))) => return Err(BoxError::from(e)),
                    Ok(None) | Err(_) => return Err("the feed stopped".into()),
                }
            }
            Ok(arrivals)
        }));
    }
    let started = Instant::now();
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let db = db.clone();
            tokio::spawn(async move {
                let period = Duration::from_micros(8_000_000 / rate);
                let first = tokio::time::Instant::now() + period * w as u32 / 8;
                let mut tick = tokio::time::interval_at(first, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut acked = Vec::new();
                for i in 0..total / 8 {
                    tick.tick().await;
                    let m = Message::repo()
                        .create(&db, message(conversation, format!("{w}.{i}")))
                        .await?;
                    acked.push((m.id, Instant::now()));
                }
                Ok::<_, BoxError>(acked)
            })
        })
        .collect();
    let mut acked = Vec::with_capacity(total);
    for writer in writers {
        acked.extend(writer.await??);
    }
    let reached = acked.len() as f64 / started.elapsed().as_secs_f64();
    let mut out = Vec::with_capacity(acked.len() * subscribers);
    for listener in listeners {
        let arrivals = listener.await??;
        out.extend(
            acked
                .iter()
                .map(|(id, at)| arrivals[id].saturating_duration_since(*at)),
        );
    }
    Ok((out, reached))
}

/// Who reads the WAL while the writers write.
#[derive(Clone, Copy, PartialEq)]
enum Reader {
    /// No feed at all.
    Nobody,
    /// A subscription of ours.
    Subscriber,
    /// PostgreSQL's own client of the same stream, writing to /dev/null:
    /// what a walsender costs the writers whoever reads it.
    PgRecvlogical,
}

/// `pg_recvlogical` streaming a slot of its own from `url`'s database
/// until dropped; `None` when the program is not installed.
struct Recvlogical {
    child: std::process::Child,
    url: String,
}

impl Recvlogical {
    const SLOT: &str = "bench_recvlogical";

    fn start(url: &str) -> Option<Recvlogical> {
        // libpq refuses sqlx's own URL parameters.
        let url = url
            .split('&')
            .filter(|p| !p.starts_with("statement-cache"))
            .collect::<Vec<_>>()
            .join("&");
        let run = |args: &[&str]| {
            let mut command = std::process::Command::new("pg_recvlogical");
            command.args(["-d", &url, "-S", Self::SLOT]).args(args);
            command
        };
        run(&["--create-slot", "-P", "pgoutput"])
            .status()
            .ok()?
            .success()
            .then_some(())?;
        let child = run(&[
            "--start",
            "-o",
            "proto_version=1",
            "-o",
            "publication_names=mandrake_feed",
            "-f",
            "/dev/null",
        ])
        .spawn()
        .ok()?;
        Some(Recvlogical { child, url })
    }
}

impl Drop for Recvlogical {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its walsender lets the slot go a moment after the client is gone.
        for _ in 0..50 {
            let dropped = std::process::Command::new("pg_recvlogical")
                .args(["-d", &self.url, "-S", Self::SLOT, "--drop-slot"])
                .stderr(std::process::Stdio::null())
                .status();
            if dropped.is_ok_and(|s| s.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until no slot reads this database (a feed's walsender ends a
/// moment after its last subscription), so that it can be dropped.
async fn no_slots_left(db: &Db) -> Result<(), BoxError> {
    for _ in 0..100 {
        let slots: i64 = mandrake_storage::sqlx::query_scalar(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
        )
        .fetch_one(db)
        .await?;
        if slots == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("a slot is still in use".into())
}

pub async fn run(url: &str, rounds: usize) -> Result<(), BoxError> {
    let settings = Settings {
        pool_size: 10,
        ..Default::default()
    };
    let db = Db::connect_url(url, &settings).await?;
    let conversation = conversation(&db).await?;
    let identity = |full: bool| {
        let db = db.clone();
        async move {
            let sql = if full {
                "ALTER TABLE messages REPLICA IDENTITY FULL"
            } else {
                "ALTER TABLE messages REPLICA IDENTITY DEFAULT"
            };
            mandrake_storage::sqlx::query(sql).execute(&db).await
        }
    };

    const PER_TASK: usize = 250;
    let has_recvlogical = std::process::Command::new("pg_recvlogical")
        .arg("--version")
        .output()
        .is_ok();
    let mut readers = vec![Reader::Nobody, Reader::Subscriber];
    if has_recvlogical {
        readers.push(Reader::PgRecvlogical);
    }
    // Seconds spent creating and streaming, per reader.
    let mut create = vec![0.0; readers.len()];
    let mut reply = vec![0.0; readers.len()];
    let mut reply_keys = 0.0;
    for round in 0..rounds {
        // Who goes first rotates, so that warm caches favour no one.
        for k in 0..readers.len() {
            let side = (k + round) % readers.len();
            let mut feed = None;
            let mut recvlogical = None;
            match readers[side] {
                Reader::Nobody => {}
                Reader::Subscriber => {
                    let filter = Message::CONVERSATION_ID.eq(conversation);
                    feed = Some(Message::subscribe(&db, filter).await?);
                }
                Reader::PgRecvlogical => {
                    recvlogical = Some(Recvlogical::start(url).ok_or("pg_recvlogical failed")?);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            create[side] += creates(&db, conversation, PER_TASK).await?;
            reply[side] += streamed_reply(&db, conversation).await?;
            if let Some(feed) = &mut feed {
                // 8 × PER_TASK inserts, then the reply's insert and 500 updates.
                drain(feed, 8 * PER_TASK + 501).await?;
            }
            drop((feed, recvlogical));
            no_slots_left(&db).await?;
        }
        identity(false).await?;
        reply_keys += streamed_reply(&db, conversation).await?;
        identity(true).await?;
    }
    let calls = (rounds * 8 * PER_TASK) as f64;
    let updates = (rounds * 500) as f64;
    println!("{rounds} rounds, rotating; messages logs whole old rows (REPLICA IDENTITY FULL)\n");
    let recv_head = if has_recvlogical {
        " pg_recvlogical attached | ÷ no feed |"
    } else {
        ""
    };
    println!("| writes | no feed | our subscriber attached | ÷ no feed |{recv_head}");
    println!(
        "|---|---:|---:|---:|{}",
        if has_recvlogical { "---:|---:|" } else { "" }
    );
    for (label, work, secs) in [
        ("create one message, 8 tasks (calls/s)", calls, &create),
        (
            "streamed reply: 500 updates of one message (updates/s)",
            updates,
            &reply,
        ),
    ] {
        let mut line = format!("| {label} | {:.0} |", work / secs[0]);
        for side in &secs[1..] {
            line.push_str(&format!(" {:.0} | {:.2}× |", work / side, secs[0] / side));
        }
        println!("{line}");
    }
    let reply_bare = reply[0];
    println!(
        "\nstreamed reply, no feed, REPLICA IDENTITY DEFAULT (keys only): {:.0} updates/s \
         (FULL ÷ DEFAULT = {:.2}×)\n",
        updates / reply_keys,
        reply_keys / reply_bare
    );

    println!("| commit to event | rate asked | rate reached | subscribers | p50 ms | p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (rate, subscribers) in [(1000, 1), (200, 1), (200, 10), (200, 100)] {
        let (d, reached) = delays(&db, rate, 5, subscribers).await?;
        let ms = |p| percentile(&d, p).as_secs_f64() * 1e3;
        let (p50, p99) = (ms(0.5), ms(0.99));
        println!("| | {rate}/s | {reached:.0}/s | {subscribers} | {p50:.2} | {p99:.2} |");
    }
    Conversation::repo().delete(&db, conversation).await?;
    no_slots_left(&db).await
}
