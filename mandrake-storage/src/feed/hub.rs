//! One decoding stream per [`Db`], shared by all its subscriptions: a task
//! reads a temporary slot (gone with its connection) and broadcasts each
//! batch of committed transactions; each subscription picks its table's
//! changes out of it. The task ends when the last subscription is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use futures_core::Stream;
use futures_util::stream;
use sqlx::PgConnection;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::broadcast;

use super::pgoutput::{Committed, Decoder};
use super::{Change, Decode, IDLE_POLL, backoff, committed, connect, read_slot};
use crate::db::{Db, Feeds};
use crate::error::{Error, Result};
use crate::record::Record;

/// What the decoding task sends its subscribers.
pub(crate) enum Item {
    /// Transactions as they committed, in commit order.
    Batch(Vec<Committed>),
    /// The decoding connection failed; a `Gap` follows when it is back.
    Interrupted(String),
    /// Decoding resumed on a new slot: changes in between are missing.
    Gap,
}

type Sender = broadcast::Sender<Arc<Item>>;

/// Batches a subscriber may fall behind before it gets a `Gap`.
const CAPACITY: usize = 4096;
/// The most changes one read of the slot returns (it stops at the end of
/// a transaction past this).
const MAX_CHANGES: usize = 10_000;

/// A receiver of `db`'s decoding stream, started if none runs.
pub(crate) async fn subscribe(db: &Db) -> Result<broadcast::Receiver<Arc<Item>>> {
    let feeds = db.feeds();
    let mut hub = feeds.hub.lock().await;
    if let Some(sender) = hub.as_ref().and_then(|h| h.downcast_ref::<Sender>()) {
        return Ok(sender.subscribe());
    }
    let options = feeds.options(db)?;
    let (conn, slot) = open(&options).await?;
    let (sender, receiver) = broadcast::channel(CAPACITY);
    tokio::spawn(run(
        Arc::downgrade(feeds),
        options,
        conn,
        slot,
        sender.clone(),
    ));
    *hub = Some(Box::new(sender));
    Ok(receiver)
}

/// A checked connection and a temporary slot on it: from here on, every
/// commit is decoded.
async fn open(options: &PgConnectOptions) -> Result<(PgConnection, String)> {
    let mut conn = connect(options).await?;
    let slot = format!("mandrake_feed_{}", uuid::Uuid::new_v4().simple());
    sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput', true)")
        .bind(&slot)
        .execute(&mut conn)
        .await?;
    Ok((conn, slot))
}

/// The decoding task: reads the slot, sends what committed, and after a
/// failure sends `Interrupted`, reconnects on a new slot and sends `Gap`.
async fn run(
    feeds: Weak<Feeds>,
    options: PgConnectOptions,
    mut conn: PgConnection,
    mut slot: String,
    sender: Sender,
) {
    let mut decoder = Decoder::default();
    loop {
        if sender.receiver_count() == 0 {
            let Some(feeds) = feeds.upgrade() else { return };
            let mut hub = feeds.hub.lock().await;
            // Checked again under the lock: a subscribe may have just joined.
            if sender.receiver_count() == 0 {
                *hub = None;
                return;
            }
        }
        let read = match read_slot(&mut conn, &slot, true, MAX_CHANGES).await {
            Ok(messages) => committed(&mut decoder, &messages),
            Err(err) => Err(err.into()),
        };
        match read {
            Ok(batch) if batch.is_empty() => tokio::time::sleep(IDLE_POLL).await,
            Ok(batch) => {
                let _ = sender.send(Arc::new(Item::Batch(batch)));
            }
            Err(err) => {
                tracing::warn!(target: "mandrake_storage", error = %err, "change feed interrupted");
                let _ = sender.send(Arc::new(Item::Interrupted(err.to_string())));
                let mut failures = 0;
                while sender.receiver_count() > 0 {
                    failures += 1;
                    tokio::time::sleep(backoff(failures)).await;
                    match open(&options).await {
                        Ok((c, s)) => {
                            (conn, slot, decoder) = (c, s, Decoder::default());
                            let _ = sender.send(Arc::new(Item::Gap));
                            break;
                        }
                        Err(err) => tracing::warn!(target: "mandrake_storage", error = %err,
                            "change feed cannot reconnect yet"),
                    }
                }
            }
        }
    }
}

/// A subscription's stream: its table's changes out of each batch.
pub(super) fn stream<T: Record>(
    receiver: broadcast::Receiver<Arc<Item>>,
    decode: Decode<T>,
) -> impl Stream<Item = Result<Change<T>>> + Send + 'static {
    let state = (receiver, decode, VecDeque::new());
    stream::unfold(state, |(mut receiver, decode, mut pending)| async move {
        loop {
            if let Some(change) = pending.pop_front() {
                return Some((Ok(change), (receiver, decode, pending)));
            }
            let item = match receiver.recv().await {
                Ok(item) => item,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(target: "mandrake_storage", missed,
                        "a change feed subscriber fell behind; changes were skipped");
                    return Some((Ok(Change::Gap), (receiver, decode, pending)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            let outcome = match &*item {
                Item::Batch(batch) => {
                    let refs: Vec<&Committed> = batch.iter().collect();
                    match decode.changes(&refs, |_| None, |c| c).await {
                        Ok(changes) => {
                            pending.extend(changes);
                            continue;
                        }
                        // This batch is lost to this subscriber: say so, and that it is a gap.
                        Err(err) => {
                            pending.push_back(Change::Gap);
                            Err(err)
                        }
                    }
                }
                Item::Interrupted(err) => Err(Error::FeedInterrupted(err.clone())),
                Item::Gap => Ok(Change::Gap),
            };
            return Some((outcome, (receiver, decode, pending)));
        }
    })
}
