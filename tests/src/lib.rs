//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use mandrake_storage::sqlx::types::Json;
use mandrake_storage::{Db, Record};
use mandrake_types::{Conversation, NewConversation};

/// A temporary folder of migration files, removed on drop.
pub struct MigrationDir {
    path: PathBuf,
}

impl MigrationDir {
    /// A folder holding `files` (`(file name, contents)`).
    pub fn new(files: &[(&str, &str)]) -> MigrationDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mandrake-migrations-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        let dir = MigrationDir { path };
        for (name, sql) in files {
            dir.write(name, sql);
        }
        dir
    }

    pub fn write(&self, name: &str, sql: &str) {
        std::fs::write(self.path.join(name), sql).unwrap();
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.path.join(name)).unwrap();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MigrationDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The user-visible schema of a database as sorted text lines: tables,
/// columns, constraints, indexes and triggers (sqlx's bookkeeping excluded).
pub async fn catalog(db: &Db) -> Vec<String> {
    let sql = r#"
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relname <> '_sqlx_migrations'
UNION ALL
SELECT 'constraint ' || c.relname || ' ' || con.conname || ' ' || pg_get_constraintdef(con.oid)
FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname <> '_sqlx_migrations'
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relname <> '_sqlx_migrations'
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal
UNION ALL
SELECT 'function ' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
"#;
    let mut lines: Vec<String> = sqlx::query_scalar(sql).fetch_all(db).await.unwrap();
    lines.sort();
    lines
}

/// A new conversation with this title and empty metadata.
pub async fn conversation(db: &Db, title: &str) -> Conversation {
    Conversation::repo()
        .create(
            db,
            NewConversation {
                title: Some(title.into()),
                metadata: Json(serde_json::json!({})),
            },
        )
        .await
        .unwrap()
}

/// Whether this role can use `pg_stat_statements` on this server: PyPI's
/// PostgreSQL 18 ships without it, and an owner that is not a superuser
/// (`MANDRAKE_TEST_TLS`) may not create it where it is not yet installed.
/// A test that needs it says it is skipped when not.
pub async fn pg_stat_statements_usable(db: &Db) -> bool {
    let usable: bool = mandrake_storage::sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extension_versions v \
         WHERE v.name = 'pg_stat_statements' AND (v.installed OR v.trusted \
           OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)))",
    )
    .fetch_one(db)
    .await
    .unwrap();
    if !usable {
        eprintln!("skipped: this role cannot use pg_stat_statements on this server");
    }
    usable
}
