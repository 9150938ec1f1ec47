//! The tools' cache, so that `check` and `new-migration` cost what a change
//! costs, not what the history costs. Two schemas are kept, each read back
//! from a real database once and then stored as JSON under
//! `.mandrake/cache/`:
//!
//! - what the migrations folder builds, keyed by the server's version and
//!   every up file's version and checksum; the database it was replayed
//!   into stays on the scratch server as the template the proofs copy
//!   (`CREATE DATABASE … TEMPLATE`), so a proof applies only the new files;
//! - what the types' DDL builds, keyed by the server's version and the DDL.
//!
//! A file holds its key and a SHA-256 of its contents: one that is stale,
//! cut short or edited fails a check, is removed and built again, never
//! trusted. A template database carries its key as its comment and is used
//! only when the comment matches. `--no-cache` ([`Cache::off`]) replays on
//! throwaway databases as before.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use mandrake_storage::migrate::Migrations;
use mandrake_storage::schema::DatabaseSchema;

/// Changed whenever what a cached schema means changes (what introspection
/// reads, how the key is made): files of another format are never read.
const FORMAT: &str = "mandrake-cache-2";

/// How many files of each kind stay: enough to switch branches and back.
const KEEP: usize = 8;

/// Where the tools keep what they have read back, or nowhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cache {
    dir: Option<PathBuf>,
}

/// What a cached schema was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The migrations folder, replayed.
    Replay,
    /// The types' DDL, applied.
    Types,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Replay => "replay",
            Kind::Types => "types",
        }
    }
}

/// A cache key: the SHA-256, in hex, of what the entry was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key(String);

impl Key {
    /// The key of `parts`, each length-prefixed so that no two lists of
    /// parts make the same bytes.
    fn of(parts: &[&[u8]]) -> Key {
        let mut hash = Sha256::new();
        for part in [FORMAT.as_bytes(), env!("CARGO_PKG_VERSION").as_bytes()]
            .iter()
            .chain(parts)
        {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
        Key(hex(&hash.finalize()))
    }

    /// The key of what `migrations` build on a server of `server_version`.
    pub(crate) fn replay(server_version: &str, migrations: &Migrations) -> Key {
        let mut parts: Vec<Vec<u8>> = vec![server_version.as_bytes().to_vec()];
        for (version, checksum) in migrations.checksums() {
            parts.push(version.to_le_bytes().to_vec());
            parts.push(checksum.to_vec());
        }
        Key::of(&parts.iter().map(Vec::as_slice).collect::<Vec<_>>())
    }

    /// The key of what the types' `ddl` builds on a server of `server_version`.
    pub(crate) fn types(server_version: &str, ddl: &str) -> Key {
        Key::of(&[server_version.as_bytes(), ddl.as_bytes()])
    }

    /// The key as text, for a template database's comment.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cache {
    /// No cache: every run replays the folder and applies the types' DDL
    /// on throwaway databases (`--no-cache`).
    pub fn off() -> Cache {
        Cache { dir: None }
    }

    /// A cache in `dir` (made when first written).
    pub fn at(dir: impl Into<PathBuf>) -> Cache {
        Cache {
            dir: Some(dir.into()),
        }
    }

    /// The cache of the migrations folder `folder`, in the workspace's
    /// `.mandrake/cache/` (beside `Cargo.lock`): a folder of its own for
    /// each migrations folder, so that two never share a template.
    pub fn for_folder(folder: &Path) -> mandrake_storage::Result<Cache> {
        let root = mandrake_storage::cluster::workspace_root()?;
        let folder = folder.canonicalize().unwrap_or_else(|_| folder.to_owned());
        let id = hex(&Sha256::digest(folder.to_string_lossy().as_bytes()));
        let caches = root.join(".mandrake").join("cache");
        forget_unused(&caches);
        Ok(Cache::at(caches.join(&id[..16])))
    }

    /// The template database a replay under `key` is kept in: named for
    /// this cache and the key (PostgreSQL keeps 63 bytes of a name).
    pub(crate) fn database(&self, key: &Key) -> String {
        let dir = self.dir.as_deref().unwrap_or(Path::new(""));
        let id = Key::of(&[dir.to_string_lossy().as_bytes(), key.0.as_bytes()]);
        format!("mandrake_cache_{}", &id.0[..32])
    }

    /// Whether it keeps anything.
    pub fn is_on(&self) -> bool {
        self.dir.is_some()
    }

    fn path(&self, kind: Kind, key: &Key) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        Some(dir.join(format!("{}-{}.json", kind.prefix(), &key.0)))
    }

    /// The schema kept under `key`, if its file is there, whole and
    /// unchanged. A file that fails a check is removed.
    pub(crate) fn schema(&self, kind: Kind, key: &Key) -> Option<DatabaseSchema> {
        let path = self.path(kind, key)?;
        let text = std::fs::read_to_string(&path).ok()?;
        let read = || {
            let (stored_key, rest) = text.split_once('\n')?;
            let (digest, body) = rest.split_once('\n')?;
            if stored_key != key.0 || digest != hex(&Sha256::digest(body.as_bytes())) {
                return None;
            }
            serde_json::from_str(body).ok()
        };
        let schema = read();
        if schema.is_none() {
            let _ = std::fs::remove_file(&path);
        }
        schema
    }

    /// Keeps `schema` under `key`. A cache that cannot be written only
    /// costs time, so a failure is not an error.
    pub(crate) fn keep(&self, kind: Kind, key: &Key, schema: &DatabaseSchema) {
        let (Some(dir), Some(path)) = (&self.dir, self.path(kind, key)) else {
            return;
        };
        let Ok(body) = serde_json::to_string(schema) else {
            return;
        };
        let digest = hex(&Sha256::digest(body.as_bytes()));
        let text = format!("{}\n{digest}\n{body}", key.0);
        // Written whole under another name, then renamed: a reader never
        // sees half a file.
        let partial = path.with_extension(format!("{}.partial", std::process::id()));
        if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&partial, text).is_ok() {
            let _ = std::fs::rename(&partial, &path);
        }
        prune(dir, kind);
    }

    /// The advisory lock this cache takes on the scratch server while it
    /// remakes or replaces its template database, so that two runs take
    /// turns: a number from its folder.
    pub(crate) fn lock_id(&self) -> i64 {
        let dir = self.dir.as_deref().unwrap_or(Path::new(""));
        let hash = Sha256::digest(dir.to_string_lossy().as_bytes());
        i64::from_le_bytes(hash[..8].try_into().expect("8 bytes"))
    }

    /// The template database this cache last replayed into, by its file
    /// (`template`), so that the next replay drops it: each cache
    /// keeps one, and never touches another cache's.
    pub(crate) fn template(&self) -> Option<String> {
        let dir = self.dir.as_ref()?;
        std::fs::read_to_string(dir.join("template"))
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| name.starts_with("mandrake_cache_"))
    }

    /// Whether both schemas for `migrations` and `tables` on the server of
    /// `url` are kept: the next comparison reads them, replays nothing.
    pub async fn holds(
        &self,
        url: &str,
        migrations: &Migrations,
        tables: &[&mandrake_storage::TableSchema],
    ) -> mandrake_storage::Result<bool> {
        let version = mandrake_storage::admin::server_version_at(url).await?;
        let ddl = mandrake_storage::schema::ddl::create_schema(tables);
        Ok(self
            .schema(Kind::Replay, &Key::replay(&version, migrations))
            .is_some()
            && self
                .schema(Kind::Types, &Key::types(&version, &ddl))
                .is_some())
    }

    /// Drops this cache's template database on the server of `url`, if it
    /// made one (for throwaway caches: fuzz cases, tests).
    pub async fn drop_template(&self, url: &str) {
        if let Some(name) = self.template()
            && let Ok(mut admin) = mandrake_storage::admin::server_connection(url).await
        {
            mandrake_storage::admin::drop_database(&mut admin, &name).await;
        }
    }

    /// Remembers `name` as this cache's template database.
    pub(crate) fn set_template(&self, name: &str) {
        if let Some(dir) = &self.dir
            && std::fs::create_dir_all(dir).is_ok()
        {
            let _ = std::fs::write(dir.join("template"), name);
        }
    }
}

/// Removes the caches in `caches` unused for a week: those of migrations
/// folders long gone (a test's temporary one, an old checkout).
fn forget_unused(caches: &Path) {
    let week = std::time::Duration::from_secs(7 * 24 * 3600);
    let Ok(entries) = std::fs::read_dir(caches) else {
        return;
    };
    for entry in entries.flatten() {
        let idle = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|at| at.elapsed().ok());
        if idle.is_some_and(|idle| idle > week) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Leaves the newest [`KEEP`] files of `kind` in `dir`.
fn prune(dir: &Path, kind: Kind) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!("{}-", kind.prefix());
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(KEEP);
    for (_, path) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_fails_a_check_is_removed_and_not_read() {
        let dir = std::env::temp_dir().join(format!("mandrake-cache-test-{}", std::process::id()));
        let cache = Cache::at(&dir);
        let key = Key::types("15.8", "CREATE TABLE t ();");
        let schema = DatabaseSchema {
            timestamp_function: true,
            ..DatabaseSchema::default()
        };
        cache.keep(Kind::Types, &key, &schema);
        assert_eq!(cache.schema(Kind::Types, &key), Some(schema.clone()));
        // Another server or other DDL: another key, nothing found.
        let other = Key::types("18.3", "CREATE TABLE t ();");
        assert_ne!(other, key);
        assert_eq!(cache.schema(Kind::Types, &other), None);
        // Edited: still valid JSON, but the checksum no longer matches.
        let path = cache.path(Kind::Types, &key).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("true", "false")).unwrap();
        assert_eq!(cache.schema(Kind::Types, &key), None);
        assert!(!path.exists(), "removed");
        // Cut short.
        cache.keep(Kind::Types, &key, &schema);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert_eq!(cache.schema(Kind::Types, &key), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_part_their_inputs() {
        assert_ne!(Key::of(&[b"ab", b"c"]), Key::of(&[b"a", b"bc"]));
        let key = Key::of(&[b"x"]);
        let (a, b) = (Cache::at("/a"), Cache::at("/b"));
        assert_ne!(a.database(&key), b.database(&key), "a template each");
        assert_eq!(a.database(&key).len(), "mandrake_cache_".len() + 32);
    }
}
