//! Point-in-time recovery of the embedded cluster: WAL archiving into
//! `<cluster>/wal`, base backups with `pg_basebackup`, and recovery of a copy
//! to an instant (`recovery_target_time`), started beside the original.
//!
//! ```no_run
//! # async fn demo() -> mandrake_storage::Result<()> {
//! use mandrake_storage::cluster::Cluster;
//! let cluster = Cluster::default_for_workspace()?;
//! cluster.set_archiving(true).await?;
//! let base = cluster.base_backup()?;
//! // … later, after a mistake at 12:00:
//! let copy = cluster.recover(&base, "2026-11-27 11:59:00+00").await?;
//! println!("inspect it at {}", copy.url("mandrake"));
//! # Ok(()) }
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, Executor};

use crate::cluster::Cluster;
use crate::error::{BackupError, Error, Result};
use crate::sql::quote_literal;

/// What [`Cluster::archiving`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archiving {
    /// Whether the server archives its WAL.
    pub on: bool,
    /// Where the WAL goes.
    pub dir: PathBuf,
    /// WAL segments archived since the server started.
    pub archived: i64,
    /// The newest archived segment.
    pub last_archived: Option<String>,
    /// Failed attempts since the server started.
    pub failed: i64,
}

impl Cluster {
    /// Where archived WAL goes: `wal/` in the cluster's folder (`.mandrake/wal`).
    pub fn wal_dir(&self) -> PathBuf {
        self.root().join("wal")
    }

    /// Turns WAL archiving on or off (the server restarts: archiving is read
    /// at start). Base backups and the archive together allow recovery to
    /// any instant after the base backup.
    pub async fn set_archiving(&self, on: bool) -> Result<()> {
        self.start()?;
        self.prepare_dir(&self.wal_dir())?;
        let wal = shell_quote(&self.wal_dir());
        // Never overwrite a segment already archived.
        let command = format!("test ! -f {wal}/%f && cp %p {wal}/%f");
        let mut conn = crate::admin::connect_one(&self.url("postgres")).await?;
        let mode = if on { "on" } else { "off" };
        conn.execute(sqlx::AssertSqlSafe(format!(
            "ALTER SYSTEM SET archive_mode = {mode}"
        )))
        .await?;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "ALTER SYSTEM SET archive_command = {}",
            quote_literal(&command)
        )))
        .await?;
        conn.close().await?;
        self.stop()?;
        self.start()
    }

    /// Whether WAL is archived, and how it goes.
    pub async fn archiving(&self) -> Result<Archiving> {
        let mut conn = crate::admin::connect_one(&self.url("postgres")).await?;
        let mode: String = sqlx::query_scalar("SHOW archive_mode")
            .fetch_one(&mut conn)
            .await?;
        let (archived, last_archived, failed): (i64, Option<String>, i64) = sqlx::query_as(
            "SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver",
        )
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok(Archiving {
            on: mode != "off",
            dir: self.wal_dir(),
            archived,
            last_archived,
            failed,
        })
    }

    /// Takes a base backup (`pg_basebackup`, with the WAL it needs) into
    /// `base/<UTC timestamp>` in the cluster's folder and returns that
    /// folder. Recovery to a later instant needs archiving on.
    pub fn base_backup(&self) -> Result<PathBuf> {
        let parent = self.root().join("base");
        self.prepare_dir(&parent)?;
        let dir = parent.join(stamp());
        self.pg_basebackup(&dir, &[])?;
        Ok(dir)
    }

    /// `pg_basebackup` of this running cluster into `dir`, with the WAL it
    /// needs and the `extra` flags; a failed one leaves nothing in `dir`.
    fn pg_basebackup(&self, dir: &Path, extra: &[&str]) -> Result<()> {
        let out = self.run(
            Command::new(self.server_tool("pg_basebackup"))
                .arg("--pgdata")
                .arg(dir)
                .args(["--wal-method=stream", "--checkpoint=fast", "--no-password"])
                .args(extra)
                .arg(format!("--dbname={}", self.url("postgres"))),
        )?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(dir);
            return Err(Error::Backup(BackupError::Failed(format!(
                "pg_basebackup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))));
        }
        Ok(())
    }

    /// Recovers a copy of the cluster from the base backup `base` and the
    /// archived WAL up to `to_time` (a timestamp PostgreSQL reads, e.g.
    /// `2026-11-27 12:00:00+00`), and starts it as a separate cluster in
    /// `recovered/<UTC timestamp>`; the original keeps running untouched.
    /// Connect with the copy's [`Cluster::url`].
    pub async fn recover(&self, base: &Path, to_time: &str) -> Result<Cluster> {
        // The tools run in the cluster's folder: a relative path would miss.
        let base = &std::path::absolute(base).map_err(|e| io("bad base backup path", e))?;
        if !base.join("PG_VERSION").is_file() {
            return Err(Error::Backup(BackupError::Failed(format!(
                "{} is not a base backup (no PG_VERSION)",
                base.display()
            ))));
        }
        self.refuse_target_before(base, to_time).await?;
        // The newest changes are still in the current WAL segment: archive it.
        if self.status()?.running {
            self.flush_wal(to_time).await?;
        }
        let root = self.root().join("recovered").join(stamp());
        self.prepare_dir(&root)?;
        let data = root.join("data");
        let out = self.run(Command::new("cp").arg("-a").arg(base).arg(&data))?;
        if !out.status.success() {
            return Err(Error::Backup(BackupError::Failed(format!(
                "cannot copy {}: {}",
                base.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))));
        }
        let copy = Cluster::new(&root, false)?;
        let wal = shell_quote(&self.wal_dir());
        // postgresql.auto.conf is read last, so these win over the original's settings.
        self.append_owned(
            &data.join("postgresql.auto.conf"),
            &format!(
                "\n# mandrake-storage: a point-in-time copy\n\
                 unix_socket_directories = {}\n\
                 archive_mode = off\n\
                 restore_command = {}\n\
                 recovery_target_time = {}\n\
                 recovery_target_action = 'promote'\n",
                quote_literal(&copy.socket_dir().to_string_lossy()),
                quote_literal(&format!("cp {wal}/%f %p")),
                quote_literal(to_time),
            ),
        )?;
        self.append_owned(&data.join("recovery.signal"), "")?;
        let started = match copy.start() {
            Ok(()) => copy.wait_for_promotion().await,
            Err(err) => Err(err),
        };
        if let Err(err) = started {
            // Keep nothing half-made; the error carries the server log's tail.
            let _ = copy.destroy();
            return Err(err);
        }
        Ok(copy)
    }

    /// Refuses a target time before `base` was taken: PostgreSQL cannot go
    /// back past its base backup, and would stop at the first consistent
    /// point, the backup's own contents, reported as the state at `to_time`.
    async fn refuse_target_before(&self, base: &Path, to_time: &str) -> Result<()> {
        let label = std::fs::read_to_string(base.join("backup_label"))
            .map_err(|e| io("cannot read the base backup's backup_label", e))?;
        let Some(started) = label
            .lines()
            .find_map(|l| l.strip_prefix("START TIME:"))
            .map(str::trim)
        else {
            return Err(Error::Backup(BackupError::Failed(format!(
                "{} has no START TIME in its backup_label",
                base.display()
            ))));
        };
        if !self.status()?.running {
            // `recover` starts from a running cluster (it archives the
            // current WAL first); without one the copy's own start says.
            return Ok(());
        }
        // PostgreSQL reads both times, the way recovery_target_time is read.
        let mut conn = crate::admin::connect_one(&self.url("postgres")).await?;
        let before: bool = sqlx::query_scalar("SELECT $1::timestamptz < $2::timestamptz")
            .bind(to_time)
            .bind(started)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| {
                Error::Backup(BackupError::Failed(format!(
                    "--to-time {to_time:?} is not a time: {e}"
                )))
            })?;
        if before {
            return Err(BackupError::TargetBeforeBase {
                to_time: to_time.to_owned(),
                started: started.to_owned(),
                base: base.display().to_string(),
            }
            .into());
        }
        Ok(())
    }

    /// Makes the recovered `copy` this cluster's data (both servers are
    /// stopped, this one restarts on the copy's data). The old data directory
    /// is kept beside it, as `data.before-recovery-<timestamp>`, and returned.
    /// Archiving is off on the recovered data; turn it on again to keep
    /// point-in-time recovery.
    pub fn replace_with(&self, copy: &Cluster) -> Result<PathBuf> {
        copy.stop()?;
        self.stop()?;
        let kept = self
            .root()
            .join(format!("data.before-recovery-{}", stamp()));
        let data = self.root().join("data");
        fs::rename(&data, &kept).map_err(|e| io("cannot move the old data aside", e))?;
        if let Err(e) = fs::rename(copy.root().join("data"), &data) {
            let _ = fs::rename(&kept, &data);
            return Err(io("cannot move the recovered data in", e));
        }
        self.append_owned(
            &data.join("postgresql.auto.conf"),
            &format!(
                "\n# mandrake-storage: the embedded cluster again\nunix_socket_directories = {}\n",
                quote_literal(&self.socket_dir().to_string_lossy())
            ),
        )?;
        let _ = fs::remove_dir_all(copy.root());
        self.start()?;
        Ok(kept)
    }

    /// Builds a streaming replica of this (running) cluster in `root`
    /// (`pg_basebackup -R`: it follows the primary over a replication
    /// connection), starts it and returns it. Connect with its
    /// [`Cluster::url`]; it serves reads only.
    pub fn start_replica(&self, root: &Path) -> Result<Cluster> {
        let replica = Cluster::new(root, self.is_ephemeral())?;
        self.prepare_dir(replica.root())?;
        let data = replica.root().join("data");
        self.pg_basebackup(&data, &["--write-recovery-conf"])?;
        self.append_owned(
            &data.join("postgresql.auto.conf"),
            &format!(
                "\n# mandrake-storage: a streaming replica\nunix_socket_directories = {}\n\
                 archive_mode = off\n",
                quote_literal(&replica.socket_dir().to_string_lossy())
            ),
        )?;
        replica.start()?;
        Ok(replica)
    }

    /// Switches to a new WAL segment and waits until the finished one is
    /// archived. Recovery stops at `to_time` only on seeing a commit after
    /// it, so one is written first (an empty transaction with an id);
    /// `to_time` in the future is refused.
    async fn flush_wal(&self, to_time: &str) -> Result<()> {
        let mut conn = crate::admin::connect_one(&self.url("postgres")).await?;
        let future: bool = sqlx::query_scalar("SELECT $1::text::timestamptz > now()")
            .bind(to_time)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| {
                Error::Backup(BackupError::Failed(format!(
                    "{to_time:?} is not a timestamp: {e}"
                )))
            })?;
        if future {
            return Err(Error::Backup(BackupError::Failed(format!(
                "{to_time} is in the future"
            ))));
        }
        let mode: String = sqlx::query_scalar("SHOW archive_mode")
            .fetch_one(&mut conn)
            .await?;
        if mode == "off" {
            return Ok(());
        }
        conn.execute("SELECT txid_current()").await?;
        let segment: String = sqlx::query_scalar("SELECT pg_walfile_name(pg_switch_wal())")
            .fetch_one(&mut conn)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.wal_dir().join(&segment).exists() {
            if Instant::now() > deadline {
                return Err(Error::Backup(BackupError::Failed(format!(
                    "WAL segment {segment} was not archived within 60 s: see `cargo xtask db \
                     archiving status` and the server log"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        conn.close().await?;
        Ok(())
    }

    async fn wait_for_promotion(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut conn = crate::admin::connect_one(&self.url("postgres")).await?;
            let recovering: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            if !recovering {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Backup(BackupError::Failed(format!(
                    "the copy at {} is still recovering after 120 s",
                    self.root().display()
                ))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Appends `text` to `path`, the file owned by the server's user.
    fn append_owned(&self, path: &Path, text: &str) -> Result<()> {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io(&format!("cannot open {}", path.display()), e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io(&format!("cannot write {}", path.display()), e))?;
        self.hand_over(path)
    }
}

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// `'path'` for sh, with `'` escaped.
fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

fn io(context: &str, err: std::io::Error) -> Error {
    Error::Backup(BackupError::Failed(format!("{context}: {err}")))
}
