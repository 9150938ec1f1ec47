//! `cargo xtask lint`: migration files checked by squawk's rules (the
//! `squawk-linter` crate, squawk's own library), for what locks a busy table
//! or fails on real data.

use std::path::{Path, PathBuf};

use squawk_linter::{Linter, Rule};
use squawk_syntax::SourceFile;
use squawk_syntax::ast::{self, AstNode};

use mandrake_storage::{Error, MigrationError, Result};

/// One rule a file breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file.
    pub file: PathBuf,
    /// The line the offending statement starts on (1-based).
    pub line: usize,
    /// The rule's name, as squawk spells it (`require-concurrent-index-creation`).
    pub rule: String,
    /// What is wrong.
    pub message: String,
    /// What to do instead, when squawk says.
    pub help: Option<String>,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.rule,
            self.message
        )?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// The rule a `-- no-transaction` file of more than one statement breaks.
pub const ONE_STATEMENT: &str = "no-transaction-one-statement";

/// Lints `sql`, the text of `file`. Files run inside a transaction unless
/// their first line is `-- no-transaction`, as the runner does; besides
/// squawk's default rules, every file must set its lock and statement
/// timeouts (as generated files do), and a `-- no-transaction` file must
/// hold one statement ([`ONE_STATEMENT`]).
///
/// sqlx's migrator sends a `-- no-transaction` file as one query, which
/// PostgreSQL runs as one implicit transaction, where `CONCURRENTLY` and a
/// procedure's `COMMIT` fail. So such a file has no room for `SET`s: its
/// timeouts are required only when its statement takes a lock the app's
/// reads and writes would queue behind.
pub fn lint_sql(file: &Path, sql: &str) -> Vec<Finding> {
    // Column types are the record's choice, not the migration's; and a down
    // file drops what its up file made: that is its job.
    let mut exclude = vec![
        Rule::PreferBigintOverInt,
        Rule::PreferBigintOverSmallint,
        Rule::PreferIdentity,
        Rule::PreferTextField,
    ];
    let down = file.to_string_lossy().ends_with(".down.sql");
    if down {
        exclude.extend([
            Rule::BanDropTable,
            Rule::BanDropColumn,
            Rule::BanDropFunction,
            Rule::BanDropConstraint,
            Rule::BanDropNotNull,
            Rule::BanDropExtension,
        ]);
    }
    let no_transaction = sql.lines().next().map(str::trim) == Some("-- no-transaction");
    let parsed = SourceFile::parse(sql);
    let statements: Vec<ast::Stmt> = parsed.tree().stmts().collect();
    if no_transaction && statements.iter().all(queues_nothing) {
        exclude.push(Rule::RequireTimeoutSettings);
    }
    let mut linter = Linter::with_rules(&[Rule::RequireTimeoutSettings], &exclude);
    linter.settings.assume_in_transaction = !no_transaction;
    let line = |start: usize| sql[..start.min(sql.len())].matches('\n').count() + 1;
    let mut findings: Vec<Finding> = linter
        .lint(&parsed, sql)
        .into_iter()
        .map(|v| Finding {
            file: file.to_owned(),
            line: line(usize::from(v.text_range.start())),
            rule: v.code.to_string(),
            message: v.message,
            help: v.help,
        })
        .collect();
    if no_transaction && let Some(second) = statements.get(1) {
        findings.push(Finding {
            file: file.to_owned(),
            line: line(usize::from(second.syntax().text_range().start())),
            rule: ONE_STATEMENT.into(),
            message: format!(
                "a -- no-transaction file of {} statements: sqlx's migrator (`sqlx migrate run`, \
                 `sqlx::migrate!`) sends it as one query, which PostgreSQL runs as one \
                 transaction, where CONCURRENTLY and COMMIT fail",
                statements.len()
            ),
            help: Some(
                "one statement a file: split it into files of their own, in order; a SET cannot \
                 precede the statement (a DO block may set_config(.., true) per transaction)"
                    .into(),
            ),
        });
    }
    findings
}

/// Whether `statement`, run outside a transaction, takes no lock that the
/// app's reads and writes wait behind (`CONCURRENTLY` takes SHARE UPDATE
/// EXCLUSIVE), or is a `DO` block, which sets its own limits inside.
fn queues_nothing(statement: &ast::Stmt) -> bool {
    match statement {
        ast::Stmt::CreateIndex(s) => s.concurrently_token().is_some(),
        ast::Stmt::DropIndex(s) => s.concurrently_token().is_some(),
        ast::Stmt::Reindex(s) => s.is_concurrently(),
        ast::Stmt::Do(_) => true,
        _ => false,
    }
}

/// Lints every `.sql` file among `paths` (a folder stands for the `.sql`
/// files in it), in name order.
pub fn lint_paths(paths: &[PathBuf]) -> Result<Vec<Finding>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| {
                Error::Migration(MigrationError::Other(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            })?;
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "sql")),
            );
        } else {
            files.push(path.clone());
        }
    }
    files.sort();
    let mut findings = Vec::new();
    for file in files {
        let sql = std::fs::read_to_string(&file).map_err(|e| {
            Error::Migration(MigrationError::Other(format!(
                "cannot read {}: {e}",
                file.display()
            )))
        })?;
        findings.extend(lint_sql(&file, &sql));
    }
    Ok(findings)
}

/// The version a migration file's name starts with.
pub fn version_of(file: &Path) -> Option<i64> {
    let name = file.file_name()?.to_str()?;
    name.split('_').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_index_is_found_with_its_line() {
        let sql = "SET LOCAL lock_timeout = '5s';\nSET LOCAL statement_timeout = '1min';\n\nCREATE INDEX i ON t (a);\n";
        let found = lint_sql(Path::new("1_x.up.sql"), sql);
        let rules: Vec<&str> = found.iter().map(|f| f.rule.as_str()).collect();
        assert!(
            rules.contains(&"require-concurrent-index-creation"),
            "{found:?}"
        );
        assert!(found.iter().all(|f| f.line == 4), "{found:?}");
    }

    #[test]
    fn timeouts_are_required() {
        let found = lint_sql(
            Path::new("1_x.up.sql"),
            "ALTER TABLE t ADD COLUMN c text;\n",
        );
        assert!(
            found.iter().any(|f| f.rule.contains("timeout")),
            "{found:?}"
        );
        assert_eq!(
            version_of(Path::new("dir/20261127_x.up.sql")),
            Some(20261127)
        );
    }

    #[test]
    fn a_no_transaction_file_holds_one_statement() {
        let two = "-- no-transaction\nSET lock_timeout = '5s';\n\
                   CREATE INDEX CONCURRENTLY i ON t (a);\n";
        let found = lint_sql(Path::new("1_x.up.sql"), two);
        let split: Vec<&Finding> = found.iter().filter(|f| f.rule == ONE_STATEMENT).collect();
        assert_eq!(split.len(), 1, "{found:?}");
        assert_eq!(split[0].line, 3, "points at the second statement");
        let one = "-- no-transaction\n-- a comment\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\n";
        let found = lint_sql(Path::new("1_x.up.sql"), one);
        assert!(
            found.is_empty(),
            "a concurrent build queues no app query behind it: {found:?}"
        );
        // Outside a transaction, a blocking statement still needs its timeouts.
        let blocking = "-- no-transaction\nALTER TABLE t ADD COLUMN c text;\n";
        let found = lint_sql(Path::new("1_x.up.sql"), blocking);
        assert!(
            found.iter().any(|f| f.rule.contains("timeout")),
            "{found:?}"
        );
    }
}
