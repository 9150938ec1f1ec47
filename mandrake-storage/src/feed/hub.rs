//! One decoding stream per [`Db`], shared by all its subscriptions: a task
//! reads a temporary slot (gone with its connection), on a WAL stream where
//! it can, and broadcasts each batch of committed transactions; each
//! subscription picks its table's changes out of it. The task ends when the
//! last subscription is dropped.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_core::Stream;
use futures_util::stream;
use sqlx::Connection;
use sqlx::postgres::PgConnectOptions;
use tokio::sync::broadcast;

use super::pgoutput::{Committed, Decoder};
use super::wal_stream::{Replicated, WalStream};
use super::{Change, Decode, FeedEvent, backoff, connect};
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
/// How long a stream read waits for data before the task looks whether
/// anyone still listens (dropping the last subscription ends it this soon).
const QUIET: Duration = Duration::from_millis(250);
/// The most transactions in one batch off a stream.
const MAX_TRANSACTIONS: usize = 1_000;

/// A receiver of `db`'s decoding stream, started if none runs.
pub(crate) async fn subscribe(db: &Db) -> Result<broadcast::Receiver<Arc<Item>>> {
    let feeds = db.feeds();
    let mut hub = feeds.hub.lock().await;
    if let Some(sender) = hub.as_ref().and_then(|h| h.downcast_ref::<Sender>()) {
        return Ok(sender.subscribe());
    }
    let options = feeds.options(db)?;
    let source = Source::open(&options).await?;
    let (sender, receiver) = broadcast::channel(CAPACITY);
    tokio::spawn(run(Arc::downgrade(feeds), options, source, sender.clone()));
    *hub = Some(Box::new(sender));
    Ok(receiver)
}

/// Where the decoding task reads: a WAL stream (over TLS where `sslmode`
/// asks) from a temporary slot, gone with its connection.
struct Source {
    stream: WalStream,
    /// The end of the last transaction read, and when it was confirmed.
    read_to: u64,
    confirmed: Instant,
}

impl Source {
    /// A checked connection and a temporary slot: from here on, every
    /// commit is decoded.
    async fn open(options: &PgConnectOptions) -> Result<Source> {
        // Checked on an ordinary connection first: what it refuses says why.
        let conn = connect(options).await?;
        let slot = format!("mandrake_feed_{}", uuid::Uuid::new_v4().simple());
        let _ = conn.close().await;
        let mut stream = WalStream::connect(options).await?;
        stream
            .command(&format!(
                "CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')"
            ))
            .await?;
        stream.start(&slot).await?;
        Ok(Source {
            stream,
            read_to: 0,
            confirmed: Instant::now(),
        })
    }

    /// The transactions that committed since the last read: what has
    /// arrived once the network has no more for now (empty after `QUIET`).
    async fn read(&mut self, decoder: &mut Decoder) -> Result<Vec<Committed>> {
        let mut batch = Vec::new();
        loop {
            let next = tokio::time::timeout(QUIET, self.stream.next()).await;
            match next {
                Ok(Ok(Replicated::Data(message))) => {
                    let done = decoder.read(&message).map_err(Error::FeedInterrupted)?;
                    if let Some(tx) = done {
                        self.read_to = tx.end_lsn;
                        if !tx.events.is_empty() {
                            batch.push(tx);
                        }
                    }
                }
                Ok(Ok(Replicated::KeepaliveReply)) => {
                    self.stream.confirm(self.read_to).await?;
                    self.confirmed = Instant::now();
                }
                Ok(Ok(Replicated::Keepalive)) => {}
                Ok(Err(err)) => return Err(err),
                Err(_) => return Ok(batch),
            }
            let whole = batch.len() >= MAX_TRANSACTIONS || !self.stream.has_buffered();
            if !batch.is_empty() && whole {
                // What is read is taken: the slot may move on (at most ten
                // times a second, one small message each).
                if self.confirmed.elapsed() > Duration::from_millis(100) {
                    self.stream.confirm(self.read_to).await?;
                    self.confirmed = Instant::now();
                }
                return Ok(batch);
            }
        }
    }
}

/// The decoding task: reads, sends what committed, and after a failure
/// sends `Interrupted`, reconnects on a new slot and sends `Gap`.
async fn run(feeds: Weak<Feeds>, options: PgConnectOptions, mut source: Source, sender: Sender) {
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
        match source.read(&mut decoder).await {
            Ok(batch) if batch.is_empty() => {}
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
                    match Source::open(&options).await {
                        Ok(fresh) => {
                            (source, decoder) = (fresh, Decoder::default());
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

/// A subscription's stream: its table's changes out of each batch. The
/// batches waiting when it turns to them are decoded together, in one
/// statement: under steady writes a subscriber runs one query per round of
/// work, not one per commit.
pub(super) fn stream<T: Record, E: FeedEvent<T>>(
    receiver: broadcast::Receiver<Arc<Item>>,
    decode: Decode<T>,
) -> impl Stream<Item = Result<E>> + Send + 'static {
    let state = Reader {
        receiver,
        decode,
        pending: VecDeque::new(),
        held: None,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(next) = state.pending.pop_front() {
                return Some((next, state));
            }
            let item = match state.held.take() {
                Some(item) => item,
                None => match state.receiver.recv().await {
                    Ok(item) => item,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        state.lagged(missed);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            match &*item {
                Item::Batch(_) => state.decode_waiting(item).await,
                Item::Interrupted(err) => {
                    let err = Error::FeedInterrupted(err.clone());
                    state.pending.push_back(Err(err));
                }
                Item::Gap => state
                    .pending
                    .push_back(Ok(E::from_change(None, Change::Gap))),
            }
        }
    })
}

/// How long a subscriber lets batches gather before it decodes: one
/// statement then serves every commit of that while.
const GATHER: Duration = Duration::from_millis(2);
/// The most batches decoded in one statement.
const MAX_COALESCED: usize = 64;

struct Reader<T, E> {
    receiver: broadcast::Receiver<Arc<Item>>,
    decode: Decode<T>,
    pending: VecDeque<Result<E>>,
    /// An item taken while gathering batches that is not one.
    held: Option<Arc<Item>>,
}

impl<T: Record, E: FeedEvent<T>> Reader<T, E> {
    fn lagged(&mut self, missed: u64) {
        tracing::warn!(target: "mandrake_storage", missed,
            "a change feed subscriber fell behind; changes were skipped");
        self.pending
            .push_back(Ok(E::from_change(None, Change::Gap)));
    }

    /// Decodes `first` with the batches that have arrived behind it.
    async fn decode_waiting(&mut self, first: Arc<Item>) {
        let mut batches = vec![first];
        let mut missed = None;
        tokio::time::sleep(GATHER).await;
        while batches.len() < MAX_COALESCED {
            match self.receiver.try_recv() {
                Ok(item) if matches!(&*item, Item::Batch(_)) => batches.push(item),
                Ok(item) => {
                    self.held = Some(item);
                    break;
                }
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    missed = Some(n);
                    break;
                }
                Err(_) => break,
            }
        }
        let committed: Vec<&Committed> = batches
            .iter()
            .flat_map(|item| match &**item {
                Item::Batch(batch) => batch.as_slice(),
                _ => &[],
            })
            .collect();
        let changes = self.decode.changes(
            &committed,
            |_| None,
            |tenant, change| Ok(E::from_change(tenant, change)),
        );
        match changes.await {
            Ok(changes) => self.pending.extend(changes),
            // These batches are lost to this subscriber: say so, and that it is a gap.
            Err(err) => {
                self.pending.push_back(Err(err));
                self.pending
                    .push_back(Ok(E::from_change(None, Change::Gap)));
            }
        }
        if let Some(n) = missed {
            self.lagged(n);
        }
    }
}
