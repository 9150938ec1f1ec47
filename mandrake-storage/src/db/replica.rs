//! Read replicas: [`Db::read`] spreads reads over the streaming replicas that
//! are up and close enough behind the primary; `&Db` and every transaction
//! stay on the primary.
//!
//! A task checks every replica five times a second: whether it answers, and
//! how far its replay is behind the primary's WAL, in time. A replica that is
//! down or lags more than [`Settings::replica_max_lag`] is skipped until a
//! later check finds it back; a read that finds its replica unreachable runs
//! on the primary instead, without an error.

use super::caller::ours;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{Db, Fallback, Member, Replicas};
use crate::admin::connect_options;
use crate::config::Settings;
use crate::db::pool::is_broken;
use crate::error::Result;

/// How often the replicas are checked.
const CHECK_EVERY: Duration = Duration::from_millis(200);

impl Fallback {
    /// The primary, when `err` says the replica cannot be reached (which
    /// takes it out of rotation until the next check finds it back).
    pub(crate) fn take_over(&self, err: &sqlx::Error) -> Option<Db> {
        let unreachable = is_broken(err) || matches!(err, sqlx::Error::Io(_));
        if !unreachable {
            return None;
        }
        self.usable.store(false, Ordering::Relaxed);
        self.primary.upgrade()
    }
}

/// A position in the primary's WAL after a write: [`Db::read_after`] reads
/// from a replica only once it has replayed this far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WriteToken(i64);

impl Replicas {
    pub(crate) fn start(primary: &Db, settings: &Settings) -> Result<Arc<Replicas>> {
        let replica_settings = Settings {
            replica_urls: Vec::new(),
            min_idle: 0,
            ..settings.clone()
        };
        let members = settings
            .replica_urls
            .iter()
            .map(|url| {
                let usable = Arc::new(AtomicBool::new(false));
                let fallback = Arc::new(Fallback {
                    primary: primary.downgrade(),
                    usable: usable.clone(),
                });
                // Not connected yet: a replica that is down must not stop the app.
                let db =
                    Db::build(connect_options(url)?, &replica_settings)?.with_primary(fallback);
                Ok(Member {
                    db,
                    usable,
                    replayed: AtomicI64::new(0),
                    refused: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let replicas = Arc::new(Replicas {
            members,
            next: AtomicUsize::new(0),
            max_lag: settings.replica_max_lag,
        });
        let watched = Arc::downgrade(&replicas);
        let weak = primary.downgrade();
        tokio::spawn(async move {
            let mut primary_positions = VecDeque::new();
            let mut tick = tokio::time::interval(CHECK_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (Some(replicas), Some(primary)) = (watched.upgrade(), weak.upgrade()) else {
                    return;
                };
                replicas.check(&primary, &mut primary_positions).await;
            }
        });
        Ok(replicas)
    }

    /// One round of checks: the primary's WAL position now, then each
    /// replica's replay position, turned into a lag in time through the
    /// positions the primary had at earlier checks.
    async fn check(&self, primary: &Db, positions: &mut VecDeque<(i64, Instant)>) {
        let Ok(cluster) = cluster_id(primary).await else {
            // Without the primary's identity no replica can be vouched for.
            for member in &self.members {
                member.usable.store(false, Ordering::Relaxed);
            }
            return;
        };
        if let Ok(now) = written(primary).await {
            positions.push_back((now, Instant::now()));
        }
        let keep = (self.max_lag.as_millis() / CHECK_EVERY.as_millis()) as usize + 2;
        while positions.len() > keep {
            positions.pop_front();
        }
        for member in &self.members {
            let replica =
                tokio::time::timeout(Duration::from_secs(1), replica_state(&member.db)).await;
            let usable = match replica {
                // Not in recovery (a primary, or promoted), or a replica of
                // another cluster: its WAL positions say nothing about ours.
                Ok(Ok(state)) if !state.in_recovery || state.cluster != cluster => {
                    if !member.refused.swap(true, Ordering::Relaxed) {
                        tracing::warn!(target: "mandrake_storage",
                            in_recovery = state.in_recovery,
                            "a server in MANDRAKE_REPLICA_URLS is not a streaming replica of \
                             this primary (another cluster, or not in recovery): not used");
                    }
                    false
                }
                Ok(Ok(state)) => {
                    member.refused.store(false, Ordering::Relaxed);
                    let replayed = state.replayed;
                    member.replayed.store(replayed, Ordering::Relaxed);
                    // The oldest primary position it has not replayed yet:
                    // it is behind by the time since then.
                    let behind_since = positions
                        .iter()
                        .find(|(position, _)| *position > replayed)
                        .map(|(_, seen)| seen.elapsed());
                    behind_since.is_none_or(|lag| lag <= self.max_lag)
                }
                _ => false,
            };
            member.usable.store(usable, Ordering::Relaxed);
        }
    }

    fn pick(&self) -> Option<&Member> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.members[(start + k) % n])
            .find(|m| m.usable.load(Ordering::Relaxed))
    }
}

/// The primary's WAL position, in bytes: where its next record goes.
async fn written(db: &Db) -> Result<i64> {
    Ok(ours(
        sqlx::query_scalar("SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8")
            .fetch_one(db),
    )
    .await?)
}

/// The cluster a server belongs to: `initdb` picks the system identifier, and
/// `pg_basebackup` copies it to every streaming replica.
async fn cluster_id(db: &Db) -> Result<i64> {
    Ok(
        ours(sqlx::query_scalar("SELECT system_identifier FROM pg_control_system()").fetch_one(db))
            .await?,
    )
}

/// What a replica check reads.
struct ReplicaState {
    in_recovery: bool,
    cluster: i64,
    /// How far it has replayed the primary's WAL, in bytes (-1 when not in recovery).
    replayed: i64,
}

async fn replica_state(db: &Db) -> Result<ReplicaState> {
    let (in_recovery, cluster, replayed) = ours(
        sqlx::query_as(
            "SELECT pg_is_in_recovery(), system_identifier, \
             COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8, -1) FROM pg_control_system()",
        )
        .fetch_one(db),
    )
    .await?;
    Ok(ReplicaState {
        in_recovery,
        cluster,
        replayed,
    })
}

/// How far a replica has replayed the primary's WAL, in bytes.
async fn replayed(db: &Db) -> Result<i64> {
    Ok(ours(
        sqlx::query_scalar("SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8, -1)")
            .fetch_one(db),
    )
    .await?)
}

impl Db {
    /// Where a read may go: a replica that is up and within the lag limit
    /// (round robin), else this primary. Writes and transactions belong on
    /// `&Db` itself. A tenant handle ([`Db::tenant`]) reads from the primary:
    /// its tenant does not travel to the replicas' pools, and a replica read
    /// without it would find no rows.
    ///
    /// ```no_run
    /// # use mandrake_storage::Record;
    /// # #[derive(Record, Clone)]
    /// # pub struct Note { pub id: uuid::Uuid, pub body: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db, id: uuid::Uuid) -> mandrake_storage::Result<()> {
    /// let note = Note::repo().get(db.read(), id).await?; // may be a moment old
    /// # Ok(()) }
    /// ```
    pub fn read(&self) -> &Db {
        self.replicas
            .as_ref()
            .filter(|_| self.tenant.is_none())
            .and_then(|r| r.pick())
            .map_or(self, |m| &m.db)
    }

    /// The primary's WAL position now: taken after a write commits, it lets
    /// [`Db::read_after`] read that write back from a replica.
    pub async fn write_token(&self) -> Result<WriteToken> {
        Ok(WriteToken(written(self).await?))
    }

    /// Like [`Db::read`], but only a replica that has replayed up to `token`
    /// (read your own writes): it waits up to the lag limit for one to get
    /// there, then falls back to the primary; with no usable replica, it
    /// returns the primary at once.
    ///
    /// ```no_run
    /// # use mandrake_storage::Record;
    /// # #[derive(Record, Clone)]
    /// # pub struct Note { pub id: uuid::Uuid, pub body: String,
    /// #   pub created_at: chrono::DateTime<chrono::Utc>, pub updated_at: chrono::DateTime<chrono::Utc> }
    /// # async fn demo(db: &mandrake_storage::Db) -> mandrake_storage::Result<()> {
    /// let note = Note::repo().create(db, NewNote { body: "hi".into() }).await?;
    /// let token = db.write_token().await?;
    /// let again = Note::repo().get(db.read_after(token).await, note.id).await?; // never NotFound
    /// # Ok(()) }
    /// ```
    pub async fn read_after(&self, token: WriteToken) -> &Db {
        let Some(replicas) = self.replicas.as_ref().filter(|_| self.tenant.is_none()) else {
            return self;
        };
        let deadline = Instant::now() + replicas.max_lag;
        loop {
            if !replicas
                .members
                .iter()
                .any(|m| m.usable.load(Ordering::Relaxed))
            {
                return self;
            }
            for member in &replicas.members {
                if !member.usable.load(Ordering::Relaxed) {
                    continue;
                }
                if member.replayed.load(Ordering::Relaxed) >= token.0 {
                    return &member.db;
                }
                if let Ok(replayed) = replayed(&member.db).await {
                    member.replayed.fetch_max(replayed, Ordering::Relaxed);
                    if replayed >= token.0 {
                        return &member.db;
                    }
                }
            }
            if Instant::now() >= deadline {
                return self;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// How many replicas [`Db::read`] may use right now.
    pub fn usable_replicas(&self) -> usize {
        self.replicas.as_ref().map_or(0, |r| {
            r.members
                .iter()
                .filter(|m| m.usable.load(Ordering::Relaxed))
                .count()
        })
    }
}
