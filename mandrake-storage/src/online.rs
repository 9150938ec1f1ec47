//! How a plan becomes migration files. As planned, one file; with
//! `--online`, files that never hold a long lock on a busy table:
//!
//! 1. the plan in one transaction, with every foreign key and CHECK added
//!    `NOT VALID` (no scan under lock) and each new NOT NULL as a
//!    `CHECK (c IS NOT NULL) NOT VALID`;
//! 2. each index created or dropped `CONCURRENTLY`, in a `-- no-transaction`
//!    file of its own, which first drops an INVALID index a failed run left;
//! 3. the validations, in one transaction: `VALIDATE CONSTRAINT` takes a lock
//!    that lets reads and writes go on, and `SET NOT NULL` then finds the
//!    validated check and skips its scan.

use crate::ddl::{ident_list, quote_ident};
use crate::diff::{Kind, Plan, Step};
use crate::schema::Index;

/// One migration, before it has a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationFile {
    /// Appended to the migration's name (`_index_1`); empty for the main file.
    pub suffix: String,
    /// Runs outside a transaction (`-- no-transaction`).
    pub no_transaction: bool,
    /// What it does, a line a step.
    pub steps: Vec<String>,
    /// The up SQL, after the timeouts.
    pub up: String,
    /// The down SQL, after the timeouts.
    pub down: String,
}

/// The files for `plan`: one as planned, or the online sequence.
pub fn files(plan: &Plan, online: bool) -> Vec<MigrationFile> {
    let describe = |steps: &[Step]| steps.iter().map(|s| s.description.clone()).collect();
    if !online {
        return vec![MigrationFile {
            suffix: String::new(),
            no_transaction: false,
            steps: describe(&plan.steps),
            up: plan.up_sql(),
            down: plan.down_sql(),
        }];
    }
    let mut main = Vec::new();
    let mut indexes = Vec::new();
    let mut validate = Plan::default();
    for step in &plan.steps {
        match &step.kind {
            Kind::Other => main.push(step.clone()),
            Kind::AddIndex { table, index } => indexes.push(index_file(
                step,
                create_concurrently(table, index),
                drop_concurrently(index),
            )),
            Kind::DropIndex { table, index } => indexes.push(index_file(
                step,
                drop_concurrently(index),
                create_concurrently(table, index),
            )),
            Kind::AddConstraint { table, name } => {
                main.push(Step {
                    up: not_valid(&step.up),
                    ..step.clone()
                });
                validate.steps.push(Step {
                    description: format!("validate {name} on {table}"),
                    up: format!(
                        "ALTER TABLE {} VALIDATE CONSTRAINT {};",
                        quote_ident(table),
                        quote_ident(name)
                    ),
                    down: String::new(),
                    down_note: None,
                    ..step.clone()
                });
            }
            Kind::SetNotNull {
                table,
                column,
                fill,
            } => {
                let (t, c) = (quote_ident(table), quote_ident(column));
                let check = crate::schema::identifier(format!("{table}_{column}_not_null"));
                let check = quote_ident(&check);
                main.push(Step {
                    description: format!("check {table}.{column} IS NOT NULL, not yet validated"),
                    up: format!(
                        "{fill}\nALTER TABLE {t} ADD CONSTRAINT {check} CHECK ({c} IS NOT NULL) NOT VALID;"
                    ),
                    down: format!("ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {check};"),
                    ..step.clone()
                });
                validate.steps.push(Step {
                    up: format!(
                        "ALTER TABLE {t} VALIDATE CONSTRAINT {check};\n\
                         ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL;\n\
                         -- The validated check let SET NOT NULL skip its scan; it is no longer needed.\n\
                         -- squawk-ignore ban-drop-constraint\n\
                         ALTER TABLE {t} DROP CONSTRAINT {check};"
                    ),
                    ..step.clone()
                });
            }
        }
    }
    let mut out = Vec::new();
    if !main.is_empty() {
        let main = Plan { steps: main };
        out.push(MigrationFile {
            suffix: String::new(),
            no_transaction: false,
            steps: describe(&main.steps),
            up: main.up_sql(),
            down: main.down_sql(),
        });
    }
    for (n, mut file) in indexes.into_iter().enumerate() {
        file.suffix = format!("_index_{}", n + 1);
        out.push(file);
    }
    if !validate.steps.is_empty() {
        out.push(MigrationFile {
            suffix: "_validate".into(),
            no_transaction: false,
            steps: describe(&validate.steps),
            up: validate.up_sql(),
            down: validate.down_sql(),
        });
    }
    out
}

fn index_file(step: &Step, up: String, down: String) -> MigrationFile {
    MigrationFile {
        suffix: String::new(),
        no_transaction: true,
        steps: vec![step.description.clone()],
        up,
        down,
    }
}

/// Creates `index` without blocking writes; an INVALID copy a failed run
/// left behind is dropped first.
fn create_concurrently(table: &str, index: &Index) -> String {
    let name = quote_ident(&index.name);
    format!(
        "DROP INDEX CONCURRENTLY IF EXISTS {name};\n\
         CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {} ({});\n",
        quote_ident(table),
        ident_list(&index.columns)
    )
}

fn drop_concurrently(index: &Index) -> String {
    format!(
        "DROP INDEX CONCURRENTLY IF EXISTS {};\n",
        quote_ident(&index.name)
    )
}

/// `… ADD CONSTRAINT …;` → `… ADD CONSTRAINT … NOT VALID;` (the last statement).
fn not_valid(up: &str) -> String {
    let up = up.trim_end();
    match up.strip_suffix(';') {
        Some(statement) => format!("{statement} NOT VALID;"),
        None => format!("{up} NOT VALID"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;
    use crate::schema::{ColumnDef, DatabaseSchema, OnDelete, TableSchema};

    fn schema(tables: Vec<TableSchema>) -> DatabaseSchema {
        DatabaseSchema {
            tables,
            timestamp_function: false,
            notify_function: false,
        }
    }

    fn notes() -> TableSchema {
        TableSchema::new("notes")
            .with_column(ColumnDef::new("id", "uuid"))
            .with_column(ColumnDef::new("folder_id", "uuid"))
            .with_column(ColumnDef::new("body", "text").nullable(true))
    }

    #[test]
    fn online_splits_indexes_and_validations_out() {
        let folders = TableSchema::new("folders").with_column(ColumnDef::new("id", "uuid"));
        let from = schema(vec![folders.clone(), notes()]);
        let mut to_notes = notes().with_index(&["folder_id"]).with_foreign_key(
            "folder_id",
            "folders",
            OnDelete::Cascade,
        );
        to_notes.columns[2].nullable = false;
        let to = schema(vec![folders, to_notes]);
        let plan = diff(&from, &to).unwrap();
        let files = files(&plan, true);
        let suffixes: Vec<&str> = files.iter().map(|f| f.suffix.as_str()).collect();
        assert_eq!(suffixes, ["", "_index_1", "_validate"]);
        assert!(
            files[0].up.contains("ON DELETE CASCADE NOT VALID;"),
            "{}",
            files[0].up
        );
        assert!(
            files[0]
                .up
                .contains(r#"CHECK ("body" IS NOT NULL) NOT VALID;"#),
            "{}",
            files[0].up
        );
        assert!(files[1].no_transaction);
        assert!(
            files[1]
                .up
                .contains(r#"CREATE INDEX CONCURRENTLY IF NOT EXISTS "notes_folder_id_idx""#)
        );
        assert!(
            files[1]
                .down
                .contains(r#"DROP INDEX CONCURRENTLY IF EXISTS "notes_folder_id_idx""#)
        );
        assert!(
            files[2]
                .up
                .contains(r#"VALIDATE CONSTRAINT "notes_folder_id_fkey""#)
        );
        assert!(files[2].up.contains(r#"ALTER COLUMN "body" SET NOT NULL"#));
        assert!(
            files[2]
                .down
                .contains(r#"ALTER COLUMN "body" DROP NOT NULL"#)
        );
        // As planned, it is all one file.
        assert_eq!(super::files(&plan, false).len(), 1);
    }
}
