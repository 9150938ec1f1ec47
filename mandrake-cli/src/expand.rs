//! Expand/contract: how `--online` changes a column that running binaries
//! use, with no long lock and without breaking the binary still deployed.
//!
//! A column rename, or a type change PostgreSQL would rewrite the table for
//! (`integer` → `bigint`, `text` → `jsonb`), becomes these migrations:
//!
//! 1. *expand* (`_expand`): the new column (the rename's new name, or
//!    `c__new` for a type change), nullable and without a default, a NOT
//!    NULL stand-in check `NOT VALID` when it is required, its foreign keys
//!    `NOT VALID` (validated after the backfill), and a trigger that
//!    fills it on every write of the old column. A rename's trigger also fills
//!    the old column from the new one, so a binary using either name reads
//!    and writes the same values. Its down drops what it added: every write
//!    reached the old column too, so nothing is lost.
//! 2. *backfill* (`_backfill`, `-- no-transaction`, `-- resumable`): copies
//!    the existing rows in primary-key order, one short transaction a batch,
//!    with a pause between batches. Rows already copied are skipped, so a run
//!    killed midway runs again on the next `migrate` and goes on. It leaves
//!    `updated_at` as it was, and validates the stand-in check (a lock that
//!    lets writes go on).
//! 3. *indexes* (`_expand_index_N`, one a file, `-- no-transaction`): each
//!    index and unique key the types want on the column, built
//!    `CONCURRENTLY` on the new column under a name of its own.
//! 4. *contract* (`_contract`, `-- contract`: waits for `migrate
//!    --complete`): one short transaction under `lock_timeout` sets NOT NULL
//!    through the validated check, drops the trigger and the old column (its
//!    indexes go with it), gives a type change's column its name, sets the
//!    default, and gives the new indexes and keys their names (a unique key
//!    takes over its index).
//!
//! The switch to the new type is part of the contract, not of `migrate`: an
//! old binary's `i32` cannot read a `bigint` column, while the new binary's
//! `i64` reads and writes the `integer` one (`ColumnType::decode_at`). So the
//! new binary is deployed in the window after `migrate`, and `migrate
//! --complete` follows it.

use crate::diff::rename_in_expression;
use mandrake_storage::schema::ddl::{
    cast, create_index, not_null_check, quote_ident, quote_literal, retypes_in_place,
    set_not_null_checked,
};
use mandrake_storage::schema::{
    Check, ColumnDef, DatabaseSchema, ForeignKey, Index, Object, SchemaChange, TableSchema, Unique,
};
use mandrake_storage::{Error, MigrationError, Result};

/// Rows a backfill batch copies in one transaction.
const BATCH: u32 = 5_000;
/// The pause after each batch, in seconds: room for the application's writes.
const PAUSE: &str = "0.01";

/// One column changed by expand/contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMove {
    /// Its table.
    pub table: String,
    /// The column as it is.
    pub old: ColumnDef,
    /// The column as the types want it, under its final name.
    pub new: ColumnDef,
    /// The table's primary key column and its type: the backfill's order.
    key: (String, String),
    /// The table's `updated_at` trigger, which the backfill must not move.
    timestamps: bool,
    /// The indexes and unique keys the types want on the column: each built
    /// on the added column under a name of its own after the backfill, and
    /// given its name in the contract.
    pub indexes: Vec<Rebuilt<Index>>,
    /// The unique keys likewise; the contract attaches each to its index.
    pub uniques: Vec<Rebuilt<Unique>>,
    /// The foreign keys likewise: added `NOT VALID` on the new column in the
    /// expand (its values are copies of keys the old one's key checked),
    /// validated after the backfill, renamed in the contract.
    pub keys: Vec<Rebuilt<ForeignKey>>,
    /// The indexes, unique keys and foreign keys on the old column now,
    /// which its drop takes along and a rollback of the contract builds
    /// again.
    old_indexes: Vec<Index>,
    old_uniques: Vec<Unique>,
    old_keys: Vec<ForeignKey>,
}

/// An index or unique key as the types want it, and the same on the
/// expand's column under a name of its own, built before the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt<T> {
    /// As the types want it.
    pub wanted: T,
    /// Built on the expand's column first.
    pub built: T,
}

impl ColumnMove {
    /// The column the expand adds: the rename's new name, or a name of its
    /// own for a type change, which takes the old name in the contract.
    fn added(&self) -> String {
        if self.old.name == self.new.name {
            format!("{}__new", self.new.name)
        } else {
            self.new.name.clone()
        }
    }

    fn function(&self) -> String {
        short(format!("{}_sync_{}", self.table, self.added()))
    }

    /// Sorts after `set_timestamp` (triggers fire in name order), so that in
    /// a backfill it can put back the `updated_at` that one moved.
    fn trigger(&self) -> String {
        short(format!("sync_{}", self.added()))
    }

    fn check(&self) -> Option<Check> {
        (!self.new.nullable).then(|| not_null_check(&self.table, &self.added()))
    }

    /// The old column's value as the new type (`NEW."rank"::bigint`).
    fn forward(&self, row: &str) -> String {
        let value = format!("{row}{}", quote_ident(&self.old.name));
        cast(&value, &self.old.sql_type, &self.new.sql_type)
    }

    /// The new column's value as the old type, for a rename's way back.
    fn backward(&self, row: &str) -> String {
        let value = format!("{row}{}", quote_ident(&self.added()));
        cast(&value, &self.new.sql_type, &self.old.sql_type)
    }

    pub(crate) fn describe(&self) -> String {
        if self.old.name == self.new.name {
            format!(
                "{}.{} from {} to {}",
                self.table, self.new.name, self.old.sql_type, self.new.sql_type
            )
        } else {
            format!("{}.{} to {}", self.table, self.old.name, self.new.name)
        }
    }

    /// The sync trigger's function and the trigger.
    fn sync_sql(&self) -> String {
        let (old, added) = (quote_ident(&self.old.name), quote_ident(&self.added()));
        let renamed = self.old.name != self.new.name;
        // The backfill's writes keep the row's updated_at (set_timestamp,
        // which fired first, moved it).
        let mut body = if self.timestamps {
            "  IF TG_OP = 'UPDATE' AND current_setting('mandrake.backfill', true) = 'on' THEN\n    \
             NEW.updated_at := OLD.updated_at;\n  END IF;\n"
                .to_owned()
        } else {
            String::new()
        };
        body.push_str("  IF TG_OP = 'INSERT' THEN\n");
        if renamed {
            body.push_str(&format!(
                "    IF NEW.{added} IS NULL THEN\n      NEW.{added} := {};\n    ELSE\n      NEW.{old} := {};\n    END IF;\n",
                self.forward("NEW."),
                self.backward("NEW.")
            ));
        } else {
            body.push_str(&format!("    NEW.{added} := {};\n", self.forward("NEW.")));
        }
        body.push_str(&format!(
            "  ELSIF NEW.{old} IS DISTINCT FROM OLD.{old} THEN\n    NEW.{added} := {};\n",
            self.forward("NEW.")
        ));
        if renamed {
            body.push_str(&format!(
                "  ELSIF NEW.{added} IS DISTINCT FROM OLD.{added} THEN\n    NEW.{old} := {};\n",
                self.backward("NEW.")
            ));
        }
        // A row the backfill has not reached yet, written by a statement
        // that leaves this column alone: copied now, or the stand-in NOT
        // NULL check would refuse the write.
        body.push_str(&format!(
            "  ELSIF NEW.{added} IS NULL THEN\n    NEW.{added} := {};\n",
            self.forward("NEW.")
        ));
        body.push_str("  END IF;\n  RETURN NEW;\n");
        let function = quote_ident(&self.function());
        format!(
            "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n{body}END $$;\n\
             CREATE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION {function}();",
            quote_ident(&self.trigger()),
            quote_ident(&self.table),
        )
    }

    fn drop_sync_sql(&self) -> String {
        format!(
            "DROP TRIGGER {} ON {};\n\
             -- squawk-ignore ban-drop-function -- only its trigger, dropped above, called it\n\
             DROP FUNCTION {}();",
            quote_ident(&self.trigger()),
            quote_ident(&self.table),
            quote_ident(&self.function())
        )
    }

    fn alter(&self) -> String {
        format!("ALTER TABLE {}", quote_ident(&self.table))
    }

    /// A column of this table, nullable, without a default unless given,
    /// compressed as `like` is.
    fn column(&self, name: &str, like: &ColumnDef, default: Option<String>) -> Object {
        Object::Column {
            table: self.table.clone(),
            column: ColumnDef {
                default,
                compression: like.compression.clone(),
                ..ColumnDef::new(name, &like.sql_type).nullable(true)
            },
        }
    }

    /// The rename of column `from` to `to`, said to lint as meant (`why`).
    fn rename_column(&self, from: &str, to: &str, why: &str) -> String {
        let rename = SchemaChange::RenameColumn {
            table: self.table.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
        };
        format!(
            "-- squawk-ignore renaming-column -- {why}\n{}\n",
            rename.up()
        )
    }

    /// `SET DEFAULT` of the new column, or `DROP DEFAULT` (`None`).
    fn set_default(&self, to: Option<String>) -> String {
        let change = SchemaChange::SetDefault {
            table: self.table.clone(),
            column: self.new.name.clone(),
            from: None,
            to,
        };
        format!("{}\n", change.up())
    }

    pub(crate) fn expand_up(&self) -> String {
        let add = SchemaChange::Add(self.column(&self.added(), &self.new, None));
        let mut sql = format!("{}\n", add.up());
        if let Some(check) = self.check() {
            sql.push_str(&format!(
                "{} ADD CONSTRAINT {} CHECK ({}) NOT VALID;\n",
                self.alter(),
                quote_ident(&check.name),
                check.expression
            ));
        }
        for key in &self.keys {
            let add = SchemaChange::Add(Object::ForeignKey {
                table: self.table.clone(),
                key: key.built.clone(),
                not_valid: true,
            });
            sql.push_str(&add.up());
            sql.push('\n');
        }
        sql + &self.sync_sql()
    }

    pub(crate) fn expand_down(&self) -> String {
        let drop = SchemaChange::Drop(self.column(&self.added(), &self.new, None));
        format!(
            "{}\n-- squawk-ignore ban-drop-column -- the expand's own column: every write reached {} too\n{}",
            self.drop_sync_sql(),
            self.old.name,
            drop.up()
        )
    }

    /// A block of the backfill's statement that copies the rows in batches
    /// of primary-key order; a row whose copy is right already is not
    /// written again, which makes a rerun go on where a killed run stopped.
    fn backfill_block(&self, settings: &str) -> String {
        let table = quote_ident(&self.table);
        let (key, key_type) = (quote_ident(&self.key.0), &self.key.1);
        let added = quote_ident(&self.added());
        let batch = |after: &str| {
            format!(
                "SELECT array_agg({key} ORDER BY {key}) INTO ids FROM (\n          \
                 SELECT {key} FROM {table}{after} ORDER BY {key} LIMIT {BATCH}\n        ) AS batch;"
            )
        };
        // Counts first: PostgreSQL keeps 63 bytes of an application_name.
        let label = quote_literal(&format!("{}.{}", self.table, self.added()));
        format!(
            "  DECLARE\n    ids {key_type}[];\n    done bigint := 0;\n    \
             total bigint := (SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = {}::regclass);\n  \
             BEGIN\n    LOOP\n{settings}      IF done = 0 THEN\n        {}\n      ELSE\n        {}\n      END IF;\n      \
             EXIT WHEN ids IS NULL;\n      \
             PERFORM set_config('mandrake.backfill', 'on', true);\n      \
             UPDATE {table} SET {added} = {forward} WHERE {key} = ANY(ids) AND {added} IS DISTINCT FROM {forward};\n      \
             COMMIT;\n      \
             done := done + cardinality(ids);\n      \
             -- Progress, for `cargo xtask migrate` to show (pg_stat_activity).\n      \
             PERFORM set_config('application_name', format('mandrake backfill %s/%s %s', done, total, {label}), false);\n      \
             PERFORM pg_sleep({PAUSE});\n    END LOOP;\n  END;\n",
            quote_literal(&quote_ident(&self.table)),
            batch(""),
            batch(&format!(" WHERE {key} > ids[cardinality(ids)]")),
            forward = self.forward(""),
        )
    }

    /// The constraints the backfill validates once the rows are copied.
    fn validations(&self) -> Vec<String> {
        let checked = self.check().map(|c| c.name);
        checked
            .iter()
            .chain(self.keys.iter().map(|k| &k.built.name))
            .map(|name| format!("{} VALIDATE CONSTRAINT {}", self.alter(), quote_ident(name)))
            .collect()
    }

    pub(crate) fn contract_up(&self) -> String {
        let added = self.added();
        let mut sql = String::new();
        if let Some(check) = self.check() {
            sql.push_str(&format!(
                "-- squawk-ignore adding-not-nullable-field -- the backfill validated {}: no scan\n",
                check.name
            ));
            sql.push_str(&set_not_null_checked(&self.table, &added, &check));
            sql.push('\n');
        }
        sql.push_str(&self.drop_sync_sql());
        let drop = SchemaChange::Drop(self.column(&self.old.name, &self.old, None));
        sql.push_str(&format!(
            "\n-- squawk-ignore ban-drop-column -- {} is kept in {added} since the expand; no binary reads it now\n{}\n",
            self.old.name,
            drop.up()
        ));
        if added != self.new.name {
            sql.push_str(&self.rename_column(
                &added,
                &self.new.name,
                "the expand's column takes the name of the one dropped above",
            ));
        }
        if self.new.default.is_some() {
            sql.push_str(&self.set_default(self.new.default.clone()));
        }
        // The old column's own went with it; the ones built on the new
        // column take their names.
        for index in &self.indexes {
            sql.push_str(&rename_index(
                &index.built.name,
                &index.wanted.name,
                "the index built on the new column takes its name",
            ));
        }
        for unique in &self.uniques {
            sql.push_str(&format!(
                "{} ADD CONSTRAINT {} UNIQUE USING INDEX {};\n",
                self.alter(),
                quote_ident(&unique.wanted.name),
                quote_ident(&unique.built.name)
            ));
        }
        for key in &self.keys {
            sql.push_str(&self.rename_constraint(&key.built.name, &key.wanted.name));
        }
        sql
    }

    /// A foreign key built on the new column takes its name, or gives it
    /// back; no client names a constraint.
    fn rename_constraint(&self, from: &str, to: &str) -> String {
        let rename = SchemaChange::RenameConstraint {
            table: self.table.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
        };
        format!(
            "-- squawk-ignore renaming-object -- the key of the new column\n{}\n",
            rename.up()
        )
    }

    /// Back to the window: the old column again, filled from the new one,
    /// and the trigger.
    pub(crate) fn contract_down(&self) -> String {
        let added = quote_ident(&self.added());
        let old = quote_ident(&self.old.name);
        let mut sql = String::new();
        for unique in &self.uniques {
            let drop = SchemaChange::Drop(Object::Unique {
                table: self.table.clone(),
                unique: unique.wanted.clone(),
            });
            sql.push_str(&format!("{}\n", drop.up()));
        }
        for index in &self.indexes {
            sql.push_str(&rename_index(
                &index.wanted.name,
                &index.built.name,
                "back to the name it was built under",
            ));
        }
        for key in &self.keys {
            sql.push_str(&self.rename_constraint(&key.wanted.name, &key.built.name));
        }
        if self.new.default.is_some() {
            sql.push_str(&self.set_default(None));
        }
        if self.added() != self.new.name {
            sql.push_str(&self.rename_column(
                &self.new.name,
                &self.added(),
                "the name goes back to the old column, added below",
            ));
        }
        let add =
            SchemaChange::Add(self.column(&self.old.name, &self.old, self.old.default.clone()));
        // The trigger first: in backfill mode it keeps each row's updated_at.
        sql.push_str(&format!(
            "{}\n{}\n\
             SELECT set_config('mandrake.backfill', 'on', true);\n\
             UPDATE {} SET {old} = {};\n\
             SELECT set_config('mandrake.backfill', '', true);\n",
            add.up(),
            self.sync_sql(),
            quote_ident(&self.table),
            self.backward("")
        ));
        // A rollback of the contract brings the old column back whole: its
        // NOT NULL and the check scan the table under this lock.
        if !self.old.nullable {
            sql.push_str(&format!(
                "-- squawk-ignore adding-not-nullable-field -- the old column back whole\n\
                 {} ALTER COLUMN {old} SET NOT NULL;",
                self.alter()
            ));
        }
        if let Some(check) = self.check() {
            sql.push_str(&format!(
                "\n{} ALTER COLUMN {added} DROP NOT NULL;\n\
                 -- squawk-ignore constraint-missing-not-valid -- validated, as the backfill left it\n\
                 {} ADD CONSTRAINT {} CHECK ({});",
                self.alter(),
                self.alter(),
                quote_ident(&check.name),
                check.expression
            ));
        }
        // The indexes as they were before the contract: on the new column
        // under their own names, and the old column's.
        let unique_index = |u: &Unique| Index {
            name: u.name.clone(),
            unique: true,
            ..Index::on(
                &self.table,
                &u.columns.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        };
        let indexes = self.uniques.iter().map(|u| unique_index(&u.built));
        for index in indexes.chain(self.old_indexes.iter().cloned()) {
            sql.push_str(&format!(
                "\n-- squawk-ignore require-concurrent-index-creation -- a rollback of the contract\n{}",
                create_index(&self.table, &index)
            ));
        }
        for unique in &self.old_uniques {
            let add = SchemaChange::Add(Object::Unique {
                table: self.table.clone(),
                unique: unique.clone(),
            });
            sql.push_str(&format!(
                "\n-- squawk-ignore disallowed-unique-constraint, constraint-missing-not-valid -- a rollback of the contract\n{}",
                add.up()
            ));
        }
        for key in &self.old_keys {
            let add = SchemaChange::Add(Object::ForeignKey {
                table: self.table.clone(),
                key: key.clone(),
                not_valid: false,
            });
            sql.push_str(&format!(
                "\n-- squawk-ignore adding-foreign-key-constraint, constraint-missing-not-valid -- a rollback of the contract\n{}",
                add.up()
            ));
        }
        sql
    }
}

/// Whether `expression` names `column`, as PostgreSQL prints it (`rank`)
/// or as the builders write it (`"rank"`).
fn mentions(expression: &str, column: &str) -> bool {
    rename_in_expression(expression, column, "\u{1}") != expression
        || expression.contains(&quote_ident(column))
}

/// Whether `index` is over `column` (a key column, an included one, or in
/// its expression or condition).
fn index_uses(index: &Index, column: &str) -> bool {
    let mentioned = |expression: &str| mentions(expression, column);
    index
        .columns
        .iter()
        .chain(&index.include)
        .any(|c| c == column)
        || mentioned(&index.key)
        || index.predicate.as_deref().is_some_and(mentioned)
}

/// `index` over `to` instead of `from`, named `name`.
fn index_over(index: &Index, from: &str, to: &str, name: String) -> Index {
    let swap = |c: &String| if c == from { to.to_owned() } else { c.clone() };
    // As PostgreSQL prints it (`rank`), or as the builders write it (`"rank"`).
    let rename =
        |e: &str| rename_in_expression(e, from, to).replace(&quote_ident(from), &quote_ident(to));
    Index {
        name,
        columns: index.columns.iter().map(swap).collect(),
        include: index.include.iter().map(swap).collect(),
        key: rename(&index.key),
        predicate: index.predicate.as_deref().map(rename),
        ..index.clone()
    }
}

/// `ALTER INDEX … RENAME`, said to lint as meant (`why`): no client names
/// an index.
fn rename_index(from: &str, to: &str, why: &str) -> String {
    let rename = SchemaChange::RenameIndex {
        from: from.to_owned(),
        to: to.to_owned(),
    };
    format!(
        "-- squawk-ignore renaming-object -- {why}\n{}\n",
        rename.up()
    )
}

/// `name` within PostgreSQL's 63 bytes, as the schema names its own objects.
fn short(name: String) -> String {
    mandrake_storage::schema::identifier(name)
}

/// The columns `plan` renames or retypes in a way that needs
/// expand/contract, found in `current` (before) and `desired` (after).
/// Refused, with what to do instead, where the plan or the column asks for
/// more than a column move (an index on it, a table rename on the way).
pub(crate) fn moves(
    plan: &[SchemaChange],
    current: &DatabaseSchema,
    desired: &DatabaseSchema,
) -> Result<Vec<ColumnMove>> {
    // A column of a table the migration renames goes with it: the old
    // binaries lose the table's name anyway.
    let renamed_tables: Vec<&str> = plan
        .iter()
        .filter_map(|c| match c {
            SchemaChange::RenameTable { to, .. } => Some(to.as_str()),
            _ => None,
        })
        .collect();
    // (table, old name, new name)
    let mut found: Vec<(String, String, String)> = Vec::new();
    for change in plan {
        match change {
            SchemaChange::RenameColumn { table, from, to }
                if !renamed_tables.contains(&table.as_str()) =>
            {
                found.push((table.clone(), from.clone(), to.clone()))
            }
            SchemaChange::AlterType {
                table,
                column,
                from,
                to,
            } if !retypes_in_place(from, to) => {
                let renamed = found.iter().any(|(t, _, new)| t == table && new == column);
                if !renamed {
                    found.push((table.clone(), column.clone(), column.clone()));
                }
            }
            _ => {}
        }
    }
    let mut moves = Vec::new();
    for (table, old, new) in found {
        moves.push(column_move(plan, current, desired, &table, &old, &new)?);
    }
    Ok(moves)
}

fn column_move(
    plan: &[SchemaChange],
    current: &DatabaseSchema,
    desired: &DatabaseSchema,
    table: &str,
    old: &str,
    new: &str,
) -> Result<ColumnMove> {
    let what = if old == new {
        format!("the type change of {table}.{new}")
    } else {
        format!("the rename of {table}.{old} to {new}")
    };
    let refusal = |why: String| {
        Error::Migration(MigrationError::Other(format!(
            "--online cannot plan {what}: {why}; make that change in a migration of its own, \
             or run without --online (one ALTER under an ACCESS EXCLUSIVE lock)"
        )))
    };
    let refuse = |why: String| Err(refusal(why));
    let (Some(before), Some(after)) = (current.table(table), desired.table(table)) else {
        return refuse(format!(
            "table {table} is created or renamed by the same migration"
        ));
    };
    let (Some(old_column), Some(new_column)) = (before.column(old), after.column(new)) else {
        return refuse("the column is not in both schemas".into());
    };
    if old_column.generated.is_some() || new_column.generated.is_some() {
        return refuse("it is a generated column".into());
    }
    if let [key] = before.primary_key.as_slice() {
        if key == old {
            return refuse("it is the primary key".into());
        }
    } else {
        return refuse(format!(
            "{table} has no one-column primary key to copy in order of"
        ));
    }
    for (table, schema, name) in [(before, current, old), (after, desired, new)] {
        if let Some(user) = used_by(table, schema, name) {
            return refuse(format!("{user} uses it"));
        }
    }
    for change in plan {
        let touched = match change {
            SchemaChange::SetRequired {
                table: t, column, ..
            } => t == table && column == new,
            _ => false,
        };
        if touched {
            return refuse(format!(
                "the migration also changes whether {new} is required"
            ));
        }
    }
    let added = if old == new {
        format!("{new}__new")
    } else {
        new.to_owned()
    };
    // Another column this migration moves would be in the way of an index
    // over both.
    let moved_too = |index_columns: &[String], this: &str| {
        plan.iter().any(|c| match c {
            SchemaChange::RenameColumn { table: t, to, .. }
            | SchemaChange::AlterType {
                table: t,
                column: to,
                ..
            } => t == table && to != this && index_columns.contains(to),
            _ => false,
        })
    };
    let mut indexes = Vec::new();
    for index in after.indexes.iter().filter(|i| index_uses(i, new)) {
        if moved_too(&index.columns, new) {
            return refuse(format!(
                "index {} is over another column it moves",
                index.name
            ));
        }
        let name = short(format!("{}__new", index.name));
        indexes.push(Rebuilt {
            wanted: index.clone(),
            built: index_over(index, new, &added, name),
        });
    }
    // A key's columns with the added column in place of the moved one.
    let on_added = |what: &str, name: &str, columns: &[String]| {
        if moved_too(columns, new) {
            return Err(refusal(format!(
                "{what} {name} is over another column it moves"
            )));
        }
        let swap = |c: &String| if c == new { added.clone() } else { c.clone() };
        Ok(columns.iter().map(swap).collect::<Vec<_>>())
    };
    let over_new = |columns: &[String]| columns.iter().any(|c| c == new);
    let mut uniques = Vec::new();
    for unique in after.uniques.iter().filter(|u| over_new(&u.columns)) {
        uniques.push(Rebuilt {
            wanted: unique.clone(),
            built: Unique {
                name: short(format!("{}__new", unique.name)),
                columns: on_added("unique key", &unique.name, &unique.columns)?,
            },
        });
    }
    let mut keys = Vec::new();
    for key in after.foreign_keys.iter().filter(|k| over_new(&k.columns)) {
        keys.push(Rebuilt {
            wanted: key.clone(),
            built: ForeignKey {
                name: short(format!("{}__new", key.name)),
                columns: on_added("foreign key", &key.name, &key.columns)?,
                ..key.clone()
            },
        });
    }
    // The old column's indexes and keys that its drop takes along, and its
    // rollback brings back. One over a column the same migration drops is
    // left to the main file, which drops it first and brings it back after
    // the column.
    let over = |columns: &[String]| {
        columns.iter().any(|c| c == old)
            && columns
                .iter()
                .all(|c| c == old || (after.column(c).is_some() && before.column(c).is_some()))
    };
    // Brought back by the contract's down, which runs before the main
    // file's: a referenced table the migration renames has its new name.
    let renamed = |name: &str| {
        plan.iter()
            .find_map(|c| match c {
                SchemaChange::RenameTable { from, to } if from == name => Some(to.clone()),
                _ => None,
            })
            .unwrap_or_else(|| name.to_owned())
    };
    let old_keys = before
        .foreign_keys
        .iter()
        .filter(|k| over(&k.columns))
        .map(|k| ForeignKey {
            references: renamed(&k.references),
            ..k.clone()
        })
        .collect();
    let old_indexes = before
        .indexes
        .iter()
        .filter(|i| index_uses(i, old) && (i.columns.is_empty() || over(&i.columns)))
        .cloned()
        .collect();
    let old_uniques = before
        .uniques
        .iter()
        .filter(|u| over(&u.columns))
        .cloned()
        .collect();
    let key = before.primary_key[0].clone();
    let key_type = before
        .column(&key)
        .map(|c| c.sql_type.clone())
        .unwrap_or_else(|| "uuid".into());
    Ok(ColumnMove {
        table: table.to_owned(),
        old: old_column.clone(),
        new: new_column.clone(),
        key: (key, key_type),
        timestamps: before.timestamp_trigger && before.column("updated_at").is_some(),
        indexes,
        uniques,
        keys,
        old_indexes,
        old_uniques,
        old_keys,
    })
}

/// The backfill of `moves`: one `DO` statement, since sqlx's migrator runs a
/// `-- no-transaction` file as one query. It commits a batch at a time, so
/// each batch sets its own limits (`set_config(.., true)` ends with its
/// transaction, and never reaches the session): `lock_timeout` for a row an
/// app's transaction holds, and `row_security` off, since row security would
/// hide rows from the copy (with it off, a role it applies to fails at once).
/// Then it validates the stand-in checks and keys, a lock that lets writes
/// go on; a rerun validates a valid constraint again, harmlessly.
pub(crate) fn backfill_up(moves: &[ColumnMove], lock_timeout: &str) -> String {
    let settings = format!(
        "      PERFORM set_config('lock_timeout', {}, true);\n      \
         PERFORM set_config('row_security', 'off', true);\n",
        quote_literal(lock_timeout)
    );
    let mut sql =
        "DO $$\nDECLARE\n  named text := current_setting('application_name');\nBEGIN\n".to_owned();
    for m in moves {
        sql.push_str(&m.backfill_block(&settings));
    }
    let validations: Vec<String> = moves.iter().flat_map(ColumnMove::validations).collect();
    if !validations.is_empty() {
        sql.push_str(&settings.replace("      ", "  "));
        for validation in validations {
            sql.push_str(&format!("  EXECUTE {};\n", quote_literal(&validation)));
        }
    }
    sql.push_str("  PERFORM set_config('application_name', named, false);\nEND $$;");
    sql
}

/// What in `table` (or a key of another table of `schema`) names `column`
/// that a column move does not carry over (it rebuilds indexes, unique and
/// foreign keys, not checks, policies or expressions, nor a key of another
/// table that points at it).
fn used_by(table: &TableSchema, schema: &DatabaseSchema, column: &str) -> Option<String> {
    let named = |columns: &[String]| columns.iter().any(|c| c == column);
    let mentioned = |expression: &str| mentions(expression, column);
    if table.tenant.as_deref() == Some(column) {
        return Some("the tenant key".into());
    }
    if let Some(c) = table.checks.iter().find(|c| mentioned(&c.expression)) {
        return Some(format!("check {}", c.name));
    }
    if let Some(p) = table
        .policies
        .iter()
        .find(|p| mentioned(&p.using) || mentioned(&p.check))
    {
        return Some(format!("policy {}", p.name));
    }
    if let Some(g) = table
        .columns
        .iter()
        .find(|c| c.generated.as_deref().is_some_and(mentioned))
    {
        return Some(format!("generated column {}", g.name));
    }
    schema
        .tables
        .iter()
        .flat_map(|t| t.foreign_keys.iter().map(move |k| (t, k)))
        .find(|(_, k)| k.references == table.name && named(&k.referenced))
        .map(|(t, k)| format!("foreign key {} of {}", k.name, t.name))
}

/// `change`, a drop the main file makes before the expand, under the names
/// the renamed columns still have then (the plan wrote it after its renames).
pub(crate) fn before_moves(change: &SchemaChange, moves: &[ColumnMove]) -> Option<SchemaChange> {
    let old_names = |table: &str, columns: &[String]| -> Vec<String> {
        columns
            .iter()
            .map(|c| {
                moves
                    .iter()
                    .find(|m| m.table == table && m.new.name == *c && m.old.name != *c)
                    .map_or_else(|| c.clone(), |m| m.old.name.clone())
            })
            .collect()
    };
    match change {
        SchemaChange::Drop(Object::ForeignKey {
            table,
            key,
            not_valid,
        }) => {
            let columns = old_names(table, &key.columns);
            (columns != key.columns).then(|| {
                SchemaChange::Drop(Object::ForeignKey {
                    table: table.clone(),
                    key: ForeignKey {
                        columns,
                        ..key.clone()
                    },
                    not_valid: *not_valid,
                })
            })
        }
        SchemaChange::Drop(Object::Unique { table, unique }) => {
            let columns = old_names(table, &unique.columns);
            (columns != unique.columns).then(|| {
                SchemaChange::Drop(Object::Unique {
                    table: table.clone(),
                    unique: Unique {
                        columns,
                        ..unique.clone()
                    },
                })
            })
        }
        _ => None,
    }
}

/// Whether `change` is carried out by `moves` (and leaves the main file).
pub(crate) fn carried(change: &SchemaChange, moves: &[ColumnMove]) -> bool {
    let moved = |table: &str, column: &str| {
        moves
            .iter()
            .any(|m| m.table == table && (m.new.name == column || m.old.name == column))
    };
    // The indexes and unique keys on a moved column, before or after.
    let index = |name: &str| {
        moves.iter().any(|m| {
            m.indexes.iter().any(|i| i.wanted.name == name)
                || m.uniques.iter().any(|u| u.wanted.name == name)
                || m.keys.iter().any(|k| k.wanted.name == name)
                || m.old_indexes.iter().any(|i| i.name == name)
                || m.old_uniques.iter().any(|u| u.name == name)
                || m.old_keys.iter().any(|k| k.name == name)
        })
    };
    match change {
        SchemaChange::RenameColumn { table, to, .. } => moved(table, to),
        SchemaChange::AlterType { table, column, .. }
        | SchemaChange::SetDefault { table, column, .. }
        | SchemaChange::SetCompression { table, column, .. } => moved(table, column),
        SchemaChange::Add(Object::Index { index: i, .. })
        | SchemaChange::Drop(Object::Index { index: i, .. }) => index(&i.name),
        SchemaChange::Add(Object::Unique { unique: u, .. })
        | SchemaChange::Drop(Object::Unique { unique: u, .. }) => index(&u.name),
        SchemaChange::Add(Object::ForeignKey { key, .. })
        | SchemaChange::Drop(Object::ForeignKey { key, .. }) => index(&key.name),
        SchemaChange::RenameIndex { from, to }
        | SchemaChange::RenameConstraint { from, to, .. } => index(from) || index(to),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::diff::diff;
    use crate::online;
    use mandrake_storage::schema::{ColumnDef, DatabaseSchema, Renames, TableSchema};

    fn schema(table: TableSchema) -> DatabaseSchema {
        DatabaseSchema {
            tables: vec![table],
            timestamp_function: true,
            notify_function: false,
            feed_publication: false,
            feed_publishes_all: false,
            extensions: Vec::new(),
        }
    }

    fn notes(rank: &str, model: &str) -> TableSchema {
        TableSchema::new("notes")
            .with_column(ColumnDef::new("id", "uuid"))
            .with_column(ColumnDef::new("rank", rank).default("0"))
            .with_column(ColumnDef::new(model, "text").nullable(true))
            .with_primary_key(&["id"])
    }

    #[test]
    fn a_rewriting_type_change_is_expanded_and_an_in_place_one_is_not() {
        let from = schema(notes("integer", "model"));
        let to = schema(notes("bigint", "model"));
        let plan = diff(&from, &to, &Renames::NONE).unwrap();
        let files = online::files(&plan, &from, &to, online::ONLINE).unwrap();
        let suffixes: Vec<&str> = files.iter().map(|f| f.suffix.as_str()).collect();
        assert_eq!(suffixes, ["_expand", "_backfill", "_contract"]);
        assert!(files[1].no_transaction && files[1].resumable && files[2].contract);
        assert!(files[0].up.contains(r#"ADD COLUMN "rank__new" bigint;"#));
        assert!(
            files[0]
                .up
                .contains(r#"CHECK ("rank__new" IS NOT NULL) NOT VALID"#)
        );
        assert!(
            files[2]
                .up
                .contains(r#"RENAME COLUMN "rank__new" TO "rank""#)
        );
        assert!(
            files[2]
                .up
                .contains(r#"ALTER COLUMN "rank" SET DEFAULT 0;"#)
        );
        assert!(!files.iter().any(|f| f.up.contains("TYPE bigint")));

        let from = schema(notes("numeric(10,2)", "model"));
        let to = schema(notes("numeric(12,2)", "model"));
        let plan = diff(&from, &to, &Renames::NONE).unwrap();
        let files = online::files(&plan, &from, &to, online::ONLINE).unwrap();
        assert_eq!(files.len(), 1);
        assert!(
            files[0].up.contains("TYPE numeric(12,2)"),
            "{}",
            files[0].up
        );
    }

    /// The tenant policy reads `current_setting('mandrake.tenant'::text)`:
    /// `text` there is a type, not a column, so a column may be renamed to it.
    #[test]
    fn a_rename_to_a_type_name_the_tenant_policy_casts_to_is_planned() {
        let scoped = |model: &str| {
            let mut t = notes("integer", model)
                .with_column(ColumnDef::new("workspace_id", "uuid"))
                .with_tenant("workspace_id");
            // As the catalog prints it, which the migrations' side is read from.
            let printed = "(workspace_id = (current_setting('mandrake.tenant'::text, true))::uuid)";
            t.policies[0].using = printed.into();
            t.policies[0].check = printed.into();
            t
        };
        let (from, to) = (schema(scoped("model")), schema(scoped("text")));
        let renames = Renames::default().column("notes", "model", "text");
        let plan = diff(&from, &to, &renames).unwrap();
        let files = online::files(&plan, &from, &to, online::ONLINE).unwrap();
        assert!(files.iter().any(|f| f.contract), "expand/contract");
        assert!(
            files
                .iter()
                .any(|f| f.up.contains(r#"ADD COLUMN "text" text"#)),
            "{files:?}"
        );
    }

    #[test]
    fn an_index_on_the_column_is_built_again_on_the_new_one() {
        let from = schema(notes("integer", "model").with_index(&["rank"]));
        let to = schema(notes("bigint", "model").with_index(&["rank"]));
        let plan = diff(&from, &to, &Renames::NONE).unwrap();
        let files = online::files(&plan, &from, &to, online::ONLINE).unwrap();
        let suffixes: Vec<&str> = files.iter().map(|f| f.suffix.as_str()).collect();
        assert_eq!(
            suffixes,
            ["_expand", "_backfill", "_expand_index_1", "_contract"]
        );
        assert!(
            files[2].up.contains(
                r#"CREATE INDEX CONCURRENTLY "notes_rank_idx__new" ON "notes" ("rank__new")"#
            ),
            "{}",
            files[2].up
        );
        assert!(
            files[3]
                .up
                .contains(r#"ALTER INDEX "notes_rank_idx__new" RENAME TO "notes_rank_idx";"#)
        );
        // A rollback of the contract builds the old column's index again.
        assert!(
            files[3]
                .down
                .contains(r#"CREATE INDEX "notes_rank_idx" ON "notes" ("rank");"#),
            "{}",
            files[3].down
        );
    }

    #[test]
    fn a_column_a_check_uses_is_refused_with_what_to_do() {
        let from = schema(notes("integer", "model").with_check("rank > 0"));
        let to = schema(notes("bigint", "model").with_check("rank > 0"));
        let plan = diff(&from, &to, &Renames::NONE).unwrap();
        let err = online::files(&plan, &from, &to, online::ONLINE)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--online cannot plan the type change of notes.rank")
                && err.contains("uses it")
                && err.contains("in a migration of its own"),
            "{err}"
        );
        // Without --online it is the one ALTER, as before.
        assert_eq!(
            online::files(&plan, &from, &to, online::Layout::Planned)
                .unwrap()
                .len(),
            1
        );
    }

    /// Found by `fuzz-diff` (case 71): the old column's composite key over a
    /// column the migration drops stays in the main file, under the old
    /// names, so its down brings it back after that column.
    #[test]
    fn a_key_over_a_dropped_column_is_dropped_first_under_the_old_names() {
        use mandrake_storage::schema::OnDelete;
        let folders = TableSchema::new("folders")
            .with_column(ColumnDef::new("id", "uuid"))
            .with_column(ColumnDef::new("k", "uuid").nullable(true))
            .with_primary_key(&["id"])
            .with_unique(&["id", "k"]);
        let notes = |key: &str| {
            let k = format!("{key}_k");
            TableSchema::new("notes")
                .with_column(ColumnDef::new("id", "uuid"))
                .with_column(ColumnDef::new(key, "uuid"))
                .with_column(ColumnDef::new(&k, "uuid").nullable(true))
                .with_primary_key(&["id"])
                .with_composite_foreign_key(&[key, &k], "folders", &["id", "k"], OnDelete::Cascade)
        };
        let both = |notes: TableSchema| DatabaseSchema {
            tables: vec![folders.clone(), notes],
            ..schema(TableSchema::new("x"))
        };
        let (from, to) = (both(notes("folder_id")), both(notes("parent_id")));
        let renames = Renames::default().column("notes", "folder_id", "parent_id");
        let plan = diff(&from, &to, &renames).unwrap();
        let files = online::files(&plan, &from, &to, online::ONLINE).unwrap();
        let main = files
            .iter()
            .find(|f| f.suffix.is_empty())
            .expect("a main file");
        assert!(
            main.up
                .contains(r#"DROP CONSTRAINT "notes_folder_id_folder_id_k_fkey""#),
            "{}",
            main.up
        );
        assert!(
            main.down
                .contains(r#"FOREIGN KEY ("folder_id", "folder_id_k")"#),
            "{}",
            main.down
        );
        let contract = files.last().unwrap();
        assert!(contract.contract);
        assert!(!contract.down.contains("folder_id_k"), "{}", contract.down);
    }

    /// Found by `fuzz-diff` (case 187): the contract's down brings the old
    /// column's key back before the main file's down renames its table back,
    /// so it names the table as the migration left it.
    #[test]
    fn the_old_key_comes_back_to_its_table_under_the_migrations_name() {
        use mandrake_storage::schema::OnDelete;
        let folders = |name: &str| {
            TableSchema::new(name)
                .with_column(ColumnDef::new("id", "uuid"))
                .with_primary_key(&["id"])
        };
        let notes = TableSchema::new("notes")
            .with_column(ColumnDef::new("id", "uuid"))
            .with_column(ColumnDef::new("folder_id", "uuid"))
            .with_primary_key(&["id"])
            .with_foreign_key("folder_id", "folders", OnDelete::Cascade);
        let renamed = TableSchema::new("notes")
            .with_column(ColumnDef::new("id", "uuid"))
            .with_column(ColumnDef::new("parent_id", "uuid"))
            .with_primary_key(&["id"]);
        let two = |a: TableSchema, b: TableSchema| DatabaseSchema {
            tables: vec![a, b],
            ..schema(TableSchema::new("x"))
        };
        let from = two(folders("folders"), notes);
        let to = two(folders("boxes"), renamed);
        let renames =
            Renames::default()
                .table("folders", "boxes")
                .column("notes", "folder_id", "parent_id");
        let plan = diff(&from, &to, &renames).unwrap();
        let files = online::files(&plan, &from, &to, online::ONLINE).unwrap();
        let contract = files.last().unwrap();
        assert!(
            contract.down.contains(r#"REFERENCES "boxes"("id")"#),
            "{}",
            contract.down
        );
    }

    /// Each refusal README lists names what stands in the way.
    #[test]
    fn what_cannot_be_moved_is_refused_naming_why() {
        use mandrake_storage::schema::OnDelete;
        let plain = || notes("integer", "model");
        let widened = || notes("bigint", "model");
        let with = |t: TableSchema, extra: Option<TableSchema>| DatabaseSchema {
            tables: std::iter::once(t).chain(extra).collect(),
            ..schema(TableSchema::new("x"))
        };
        let pointing = |column: &str| {
            TableSchema::new("pins")
                .with_column(ColumnDef::new("id", "uuid"))
                .with_column(ColumnDef::new("note_rank", "integer"))
                .with_primary_key(&["id"])
                .with_composite_foreign_key(&["note_rank"], "notes", &[column], OnDelete::Cascade)
        };
        let generated =
            |t: TableSchema| t.with_column(ColumnDef::new("g", "bigint").generated("rank * 2"));
        let required = |mut t: TableSchema| {
            t.columns[2].nullable = false;
            t
        };
        let renames = Renames::default().column("notes", "model", "model_name");
        let none = Renames::NONE;
        let cases: Vec<(DatabaseSchema, DatabaseSchema, &Renames, &str)> = vec![
            (
                with(plain().with_unique(&["rank"]), Some(pointing("rank"))),
                with(widened().with_unique(&["rank"]), Some(pointing("rank"))),
                &none,
                "foreign key pins_note_rank_fkey of pins uses it",
            ),
            (
                with(generated(plain()), None),
                with(generated(widened()), None),
                &none,
                "generated column g uses it",
            ),
            (
                with(plain(), None),
                with(required(notes("integer", "model_name")), None),
                &renames,
                "also changes whether model_name is required",
            ),
            (
                with(plain(), None),
                with(
                    TableSchema::new("notes")
                        .with_column(ColumnDef::new("id", "bigint"))
                        .with_column(ColumnDef::new("rank", "integer").default("0"))
                        .with_column(ColumnDef::new("model", "text").nullable(true))
                        .with_primary_key(&["id"]),
                    None,
                ),
                &none,
                "it is the primary key",
            ),
        ];
        for (from, to, hints, why) in cases {
            let plan = diff(&from, &to, hints).unwrap();
            let err = online::files(&plan, &from, &to, online::ONLINE)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("--online cannot plan") && err.contains(why),
                "{why}: {err}"
            );
        }
    }
}
