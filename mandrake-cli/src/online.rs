//! How a plan becomes migration files. As planned, one file; with
//! `--online`, files that never hold a long lock on a busy table:
//!
//! 1. each index the plan drops, dropped `CONCURRENTLY` in a
//!    `-- no-transaction` file of its own, before anything else: the plan
//!    may drop its column, and the down must rebuild it once the column is
//!    back;
//! 2. the plan in one transaction, with every foreign key and CHECK added
//!    `NOT VALID` (no scan under lock) and each new NOT NULL as a
//!    `CHECK (c IS NOT NULL) NOT VALID`;
//! 3. each new index created `CONCURRENTLY` in a file of its own, one
//!    statement (a build that fails leaves an INVALID index, which stops the
//!    next run until it is dropped); a unique constraint's index is built
//!    the same way;
//! 4. the validations, in one transaction: `VALIDATE CONSTRAINT` takes a lock
//!    that lets reads and writes go on, `SET NOT NULL` then finds the
//!    validated check and skips its scan, and each unique constraint takes
//!    over its ready index (`USING INDEX`); a foreign key to such a new
//!    unique key is added here, after it;
//! 5. a column rename or a type change that rewrites the table as
//!    expand, backfill and contract ([`crate::expand`]), the contract last.

use crate::diff::{Plan, Step, rename_in_expression};
use crate::expand::{self, ColumnMove};
use mandrake_storage::Result;
use mandrake_storage::schema::ddl::not_null_check;
use mandrake_storage::schema::{DatabaseSchema, Index, Object, SchemaChange};

/// One migration, before it has a version.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationFile {
    /// Appended to the migration's name (`_index_1`); empty for the main file.
    pub suffix: String,
    /// Runs outside a transaction (`-- no-transaction`).
    pub no_transaction: bool,
    /// Runs again from the start after an interruption (`-- resumable`); its
    /// one statement runs as long as the table is long, so it has no
    /// statement timeout.
    pub resumable: bool,
    /// Waits for `migrate --complete` (`-- contract`).
    pub contract: bool,
    /// What it does, a line a step.
    pub steps: Vec<String>,
    /// The up SQL, after the timeouts.
    pub up: String,
    /// The down SQL, after the timeouts.
    pub down: String,
}

impl MigrationFile {
    fn of(plan: Plan, suffix: &str) -> MigrationFile {
        MigrationFile {
            suffix: suffix.into(),
            steps: plan.steps.iter().map(|s| s.description.clone()).collect(),
            up: plan.up_sql(),
            down: plan.down_sql(),
            ..MigrationFile::default()
        }
    }
}

/// How [`files`] lays a plan out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout<'a> {
    /// One file, as planned.
    Planned,
    /// The online sequence. A backfill's batches each wait at most
    /// `lock_timeout` (`5s`) for a row an app's transaction holds.
    Online {
        /// In PostgreSQL's units.
        lock_timeout: &'a str,
    },
}

/// The online layout with the default lock timeout, for tests.
#[cfg(test)]
pub(crate) const ONLINE: Layout<'static> = Layout::Online { lock_timeout: "5s" };

/// The files for `plan`, from `current` to `desired`: one as planned, or
/// the online sequence, where a column rename or a rewriting type change is
/// an expand/contract ([`crate::expand`]). Every statement of the other
/// files is a [`SchemaChange`], so a step's change always describes its SQL.
///
/// A `-- no-transaction` file holds exactly one statement: sqlx's migrator
/// (`sqlx migrate run`, `sqlx::migrate!`) sends such a file as one query,
/// and PostgreSQL runs the statements of one query as one implicit
/// transaction, where `CONCURRENTLY` and a backfill's `COMMIT`s fail.
pub fn files(
    plan: &Plan,
    current: &DatabaseSchema,
    desired: &DatabaseSchema,
    layout: Layout,
) -> Result<Vec<MigrationFile>> {
    let Layout::Online { lock_timeout } = layout else {
        return Ok(vec![MigrationFile::of(plan.clone(), "")]);
    };
    let changes: Vec<SchemaChange> = plan.steps.iter().map(|s| s.change.clone()).collect();
    let moves = expand::moves(&changes, current, desired)?;
    let mut drops = Vec::new();
    let mut main = Plan::default();
    let mut indexes = Vec::new();
    let mut validate = Plan::default();
    for step in &plan.steps {
        match &step.change {
            change if expand::carried(change, &moves) => {}
            SchemaChange::Add(Object::Index { table, index, .. }) => {
                indexes.push(index_file(SchemaChange::Add(Object::Index {
                    table: table.clone(),
                    index: index.clone(),
                    online: true,
                })))
            }
            SchemaChange::Drop(Object::Index { table, index, .. }) => {
                // Its down runs after the main file's, under the old names.
                let (table, index) = before_renames(plan, table, index);
                drops.push(index_file(SchemaChange::Drop(Object::Index {
                    table,
                    index,
                    online: true,
                })));
            }
            SchemaChange::Add(Object::Unique { table, unique }) => {
                indexes.push(index_file(SchemaChange::Add(Object::UniqueIndex {
                    table: table.clone(),
                    unique: unique.clone(),
                })));
                validate.steps.push(Step::from(SchemaChange::AttachUnique {
                    table: table.clone(),
                    unique: unique.clone(),
                }));
            }
            SchemaChange::Add(Object::ForeignKey { table, key, .. }) => {
                // A key to a unique key this plan adds waits until that
                // key has taken over its index, in the validations.
                let add = Step::from(SchemaChange::Add(Object::ForeignKey {
                    table: table.clone(),
                    key: key.clone(),
                    not_valid: true,
                }));
                if adds_unique(plan, &key.references, &key.referenced) {
                    validate.steps.push(add);
                } else {
                    main.steps.push(add);
                }
                validate.steps.push(Step::from(SchemaChange::Validate {
                    table: table.clone(),
                    constraint: key.name.clone(),
                }));
            }
            SchemaChange::Add(Object::Check { table, check, .. }) => {
                main.steps.push(Step::from(SchemaChange::Add(Object::Check {
                    table: table.clone(),
                    check: check.clone(),
                    not_valid: true,
                })));
                validate.steps.push(Step::from(SchemaChange::Validate {
                    table: table.clone(),
                    constraint: check.name.clone(),
                }));
            }
            SchemaChange::SetRequired {
                table,
                column,
                required: true,
                fill,
            } => {
                let check = not_null_check(table, column);
                main.steps
                    .push(Step::from(SchemaChange::Add(Object::NotNullCheck {
                        table: table.clone(),
                        column: column.clone(),
                        check: check.clone(),
                        fill: fill.clone(),
                    })));
                validate
                    .steps
                    .push(Step::from(SchemaChange::SetRequiredChecked {
                        table: table.clone(),
                        column: column.clone(),
                        check,
                    }));
            }
            change => main.steps.push(match expand::before_moves(change, &moves) {
                Some(change) => Step::from(change),
                None => step.clone(),
            }),
        }
    }
    let mut out = Vec::new();
    for (n, mut file) in drops.into_iter().enumerate() {
        file.suffix = format!("_drop_index_{}", n + 1);
        out.push(file);
    }
    if !main.is_empty() {
        out.push(MigrationFile::of(main, ""));
    }
    for (n, mut file) in indexes.into_iter().enumerate() {
        file.suffix = format!("_index_{}", n + 1);
        out.push(file);
    }
    if !validate.is_empty() {
        out.push(MigrationFile::of(validate, "_validate"));
    }
    if !moves.is_empty() {
        // The contract last: `migrate` stops before it and what follows it.
        out.extend(expand_contract(&moves, lock_timeout));
    }
    Ok(out)
}

/// The three files of expand/contract `moves`, in the order they run.
fn expand_contract(moves: &[ColumnMove], lock_timeout: &str) -> Vec<MigrationFile> {
    let file =
        |suffix: &str, steps: Vec<String>, up: Vec<String>, down: Vec<String>| MigrationFile {
            suffix: suffix.into(),
            steps,
            up: up.join("\n"),
            down: down.join("\n"),
            ..MigrationFile::default()
        };
    let each = |f: fn(&ColumnMove) -> String| moves.iter().map(f).collect::<Vec<_>>();
    let reversed = |f: fn(&ColumnMove) -> String| moves.iter().rev().map(f).collect::<Vec<_>>();
    let steps = |verb: &str| {
        moves
            .iter()
            .map(|m| format!("{verb} {}", m.describe()))
            .collect::<Vec<_>>()
    };
    let expand = file(
        "_expand",
        steps("expand: a column and its sync trigger for"),
        each(ColumnMove::expand_up),
        reversed(ColumnMove::expand_down),
    );
    let mut backfill = file(
        "_backfill",
        steps("backfill, in batches:"),
        vec![expand::backfill_up(moves, lock_timeout)],
        vec!["-- Nothing to undo: the copies go with the expand's column.".into()],
    );
    backfill.no_transaction = true;
    backfill.resumable = true;
    let mut contract = file(
        "_contract",
        steps("contract: drop the old column and the trigger of"),
        each(ColumnMove::contract_up),
        reversed(ColumnMove::contract_down),
    );
    contract.contract = true;
    // The indexes of the new column, built once the backfill filled it.
    let mut indexes = Vec::new();
    for m in moves {
        let table = || m.table.clone();
        let built = m.indexes.iter().map(|i| Object::Index {
            table: table(),
            index: i.built.clone(),
            online: true,
        });
        let unique = m.uniques.iter().map(|u| Object::UniqueIndex {
            table: table(),
            unique: u.built.clone(),
        });
        indexes.extend(
            built
                .chain(unique)
                .map(|o| index_file(SchemaChange::Add(o))),
        );
    }
    for (n, file) in indexes.iter_mut().enumerate() {
        file.suffix = format!("_expand_index_{}", n + 1);
    }
    let mut files = vec![expand, backfill];
    files.extend(indexes);
    files.push(contract);
    files
}

/// Whether `plan` adds a unique constraint on exactly `columns` of `table`.
fn adds_unique(plan: &Plan, table: &str, columns: &[String]) -> bool {
    plan.steps.iter().any(|s| {
        matches!(&s.change, SchemaChange::Add(Object::Unique { table: t, unique })
            if t == table && unique.columns == columns)
    })
}

/// `table` and `index` under the names they had before `plan`'s renames.
fn before_renames(plan: &Plan, table: &str, index: &Index) -> (String, Index) {
    let (mut table, mut index) = (table.to_owned(), index.clone());
    for step in plan.steps.iter().rev() {
        match &step.change {
            SchemaChange::RenameColumn { table: t, from, to } if *t == table => {
                for column in index.columns.iter_mut().chain(&mut index.include) {
                    if column == to {
                        *column = from.clone();
                    }
                }
                index.key = rename_in_expression(&index.key, to, from);
                index.predicate = index
                    .predicate
                    .as_ref()
                    .map(|p| rename_in_expression(p, to, from));
            }
            SchemaChange::RenameTable { from, to } if *to == table => table = from.clone(),
            _ => {}
        }
    }
    (table, index)
}

/// A `-- no-transaction` file of its own for one concurrent index change.
fn index_file(change: SchemaChange) -> MigrationFile {
    let step = Step::from(change);
    MigrationFile {
        no_transaction: true,
        steps: vec![step.description],
        up: step.up,
        down: step.down,
        ..MigrationFile::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::diff;
    use mandrake_storage::schema::{ColumnDef, DatabaseSchema, OnDelete, Renames, TableSchema};

    fn schema(tables: Vec<TableSchema>) -> DatabaseSchema {
        DatabaseSchema {
            tables,
            timestamp_function: false,
            notify_function: false,
            feed_publication: false,
            feed_publishes_all: false,
            extensions: Vec::new(),
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
        let plan = diff(&from, &to, &Renames::NONE).unwrap();
        let files = files(&plan, &from, &to, ONLINE).unwrap();
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
                .contains(r#"CREATE INDEX CONCURRENTLY "notes_folder_id_idx""#)
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
        assert_eq!(
            super::files(&plan, &from, &to, Layout::Planned)
                .unwrap()
                .len(),
            1
        );
    }

    /// Found by `fuzz-diff --online` (cases 31, 57, …): the index of a
    /// dropped column was rebuilt by a down that ran before the column was
    /// back.
    #[test]
    fn dropped_indexes_go_first_and_come_back_under_the_old_names() {
        let from = schema(vec![
            notes().with_index(&["body"]).with_index(&["folder_id"]),
        ]);
        let cards = TableSchema::new("cards")
            .with_column(ColumnDef::new("id", "uuid"))
            .with_column(ColumnDef::new("parent_id", "uuid"));
        let hints =
            Renames::default()
                .table("notes", "cards")
                .column("cards", "folder_id", "parent_id");
        let to = schema(vec![cards]);
        let plan = diff(&from, &to, &hints).unwrap();
        let files = files(&plan, &from, &to, ONLINE).unwrap();
        let suffixes: Vec<&str> = files.iter().map(|f| f.suffix.as_str()).collect();
        assert_eq!(suffixes, ["_drop_index_1", "_drop_index_2", ""]);
        let downs: Vec<&str> = files[..2].iter().map(|f| f.down.as_str()).collect();
        assert!(
            downs.iter().all(|d| d.contains(r#"ON "notes" ("#)),
            "{downs:?}"
        );
        assert!(downs.iter().any(|d| d.contains(r#"("body")"#)), "{downs:?}");
        assert!(
            downs.iter().any(|d| d.contains(r#"("folder_id")"#)),
            "{downs:?}"
        );
        assert!(
            files[2].up.contains(r#"DROP COLUMN "body""#),
            "{}",
            files[2].up
        );
    }

    #[test]
    fn a_unique_constraint_takes_over_an_index_built_concurrently() {
        let from = schema(vec![notes()]);
        let to = schema(vec![notes().with_unique(&["body"])]);
        let plan = diff(&from, &to, &Renames::NONE).unwrap();
        let files = files(&plan, &from, &to, ONLINE).unwrap();
        let suffixes: Vec<&str> = files.iter().map(|f| f.suffix.as_str()).collect();
        assert_eq!(suffixes, ["_index_1", "_validate"]);
        assert!(files[0].no_transaction);
        assert!(
            files[0].up.ends_with(
                "\nCREATE UNIQUE INDEX CONCURRENTLY \"notes_body_key\" ON \"notes\" (\"body\");"
            ),
            "one statement, after a comment for squawk: {}",
            files[0].up
        );
        assert_eq!(
            files[1].up.trim_end(),
            r#"ALTER TABLE "notes" ADD CONSTRAINT "notes_body_key" UNIQUE USING INDEX "notes_body_key";"#
        );
        assert_eq!(
            files[1].down.trim_end(),
            r#"ALTER TABLE "notes" DROP CONSTRAINT IF EXISTS "notes_body_key";"#
        );
    }

    #[test]
    fn a_foreign_key_to_a_new_unique_key_is_added_after_it_takes_over_its_index() {
        let folders = TableSchema::new("folders")
            .with_column(ColumnDef::new("id", "uuid"))
            .with_column(ColumnDef::new("k", "uuid"));
        let from = schema(vec![folders.clone(), notes()]);
        let to = schema(vec![
            folders.with_unique(&["id", "k"]),
            notes()
                .with_column(ColumnDef::new("k", "uuid").nullable(true))
                .with_composite_foreign_key(
                    &["folder_id", "k"],
                    "folders",
                    &["id", "k"],
                    OnDelete::Cascade,
                ),
        ]);
        let plan = diff(&from, &to, &Renames::NONE).unwrap();
        let files = files(&plan, &from, &to, ONLINE).unwrap();
        let validate = &files.last().unwrap().up;
        let attach = validate.find("UNIQUE USING INDEX").expect(validate);
        let key = validate.find("FOREIGN KEY").expect(validate);
        assert!(attach < key, "{validate}");
        assert!(
            !files
                .iter()
                .any(|f| f.suffix.is_empty() && f.up.contains("FOREIGN KEY"))
        );
    }
}
