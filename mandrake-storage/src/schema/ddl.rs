//! Renders SQL from the schema model: the one place DDL text is made.

use crate::schema::{Check, ColumnDef, ForeignKey, Index, TableSchema, Unique};

/// The shared trigger function that every table's `set_timestamp` trigger calls.
pub const TIMESTAMP_FUNCTION: &str = "CREATE OR REPLACE FUNCTION trigger_set_timestamp()
RETURNS TRIGGER AS $$
BEGIN
  NEW.updated_at = now();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;";

/// Drops the shared trigger function.
pub const DROP_TIMESTAMP_FUNCTION: &str = "DROP FUNCTION IF EXISTS trigger_set_timestamp();";

/// The shared trigger function of `#[record(notify)]` tables: after each
/// statement it sends, for every row it changed, `{"op", "id", <each column
/// named in the trigger's arguments>}` on the channel `mandrake_<table>`; an
/// update adds `"old"` with those columns' values before it, so a subscriber
/// whose filter the row leaves still hears of it. The payload holds ids only,
/// so it stays far below NOTIFY's 8000-byte limit whatever the row holds;
/// PostgreSQL delivers it at commit, in commit order, and never for a
/// transaction that rolled back.
///
/// The triggers run once per statement over its transition tables
/// (`changed_rows`, and `old_rows` for updates), not once per row: a
/// 100,000-row insert pays a third of what a row trigger costs it.
pub const NOTIFY_FUNCTION: &str = "CREATE OR REPLACE FUNCTION trigger_notify_change()
RETURNS TRIGGER AS $$
DECLARE
  keys TEXT := '';
  old_keys TEXT := '';
BEGIN
  FOR i IN 0 .. TG_NARGS - 1 LOOP
    keys := keys || format(', %L, n.%I', TG_ARGV[i], TG_ARGV[i]);
    old_keys := old_keys || format(', %L, o.%I', TG_ARGV[i], TG_ARGV[i]);
  END LOOP;
  IF TG_OP = 'UPDATE' AND TG_NARGS > 0 THEN
    EXECUTE format(
      'SELECT pg_notify(%L, json_build_object(''op'', ''update'', ''id'', n.id%s, ''old'', json_build_object(%s))::text) FROM changed_rows n JOIN old_rows o ON o.id = n.id',
      'mandrake_' || TG_TABLE_NAME, keys, substr(old_keys, 3));
  ELSE
    EXECUTE format(
      'SELECT pg_notify(%L, json_build_object(''op'', %L, ''id'', n.id%s)::text) FROM changed_rows n',
      'mandrake_' || TG_TABLE_NAME, lower(TG_OP), keys);
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;";

/// Drops the notification trigger function.
pub const DROP_NOTIFY_FUNCTION: &str = "DROP FUNCTION IF EXISTS trigger_notify_change();";

pub use crate::sql::{ident_list, quote_ident, quote_literal};

/// The column as it stands in `CREATE TABLE` or `ADD COLUMN`.
pub fn column_definition(column: &ColumnDef) -> String {
    let mut sql = format!("{} {}", quote_ident(&column.name), column.sql_type);
    if !column.nullable {
        sql.push_str(" NOT NULL");
    }
    if let Some(default) = &column.default {
        sql.push_str(" DEFAULT ");
        sql.push_str(default);
    }
    sql
}

/// The `CONSTRAINT … UNIQUE (…)` clause of a table definition.
pub fn unique_definition(unique: &Unique) -> String {
    format!(
        "CONSTRAINT {} UNIQUE ({})",
        quote_ident(&unique.name),
        ident_list(&unique.columns)
    )
}

/// The `CONSTRAINT … FOREIGN KEY … REFERENCES …` clause of a table definition.
pub fn foreign_key_definition(fk: &ForeignKey) -> String {
    format!(
        "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}(\"id\") ON DELETE {}",
        quote_ident(&fk.name),
        quote_ident(&fk.column),
        quote_ident(&fk.references),
        fk.on_delete.sql()
    )
}

/// `CREATE INDEX` for `index` on `table`.
pub fn create_index(table: &str, index: &Index) -> String {
    format!(
        "CREATE INDEX {} ON {} ({});",
        quote_ident(&index.name),
        quote_ident(table),
        ident_list(&index.columns)
    )
}

/// The `set_timestamp` trigger that keeps `updated_at` current on `table`.
pub fn create_trigger(table: &str) -> String {
    format!(
        "CREATE TRIGGER set_timestamp BEFORE UPDATE ON {} FOR EACH ROW EXECUTE FUNCTION trigger_set_timestamp();",
        quote_ident(table)
    )
}

/// Drops the `set_timestamp` trigger of `table`.
pub fn drop_trigger(table: &str) -> String {
    format!(
        "DROP TRIGGER IF EXISTS set_timestamp ON {};",
        quote_ident(table)
    )
}

/// The triggers of a `#[record(notify)]` table, one per event (PostgreSQL
/// gives a trigger with a transition table one event only), and the
/// transition tables each reads.
pub const NOTIFY_TRIGGERS: [(&str, &str, &str); 3] = [
    ("notify_insert", "INSERT", "NEW TABLE AS changed_rows"),
    (
        "notify_update",
        "UPDATE",
        "OLD TABLE AS old_rows NEW TABLE AS changed_rows",
    ),
    ("notify_delete", "DELETE", "OLD TABLE AS changed_rows"),
];

/// The notification triggers of a `#[record(notify)]` table; `columns` go
/// into the payload besides `op` and `id`.
pub fn create_notify_triggers(table: &str, columns: &[String]) -> String {
    let args: Vec<String> = columns.iter().map(|c| quote_literal(c)).collect();
    let args = args.join(", ");
    let table = quote_ident(table);
    NOTIFY_TRIGGERS
        .iter()
        .map(|(name, event, rows)| {
            format!(
                "CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {rows} FOR EACH STATEMENT EXECUTE FUNCTION trigger_notify_change({args});"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Drops the notification triggers of `table`.
pub fn drop_notify_triggers(table: &str) -> String {
    let table = quote_ident(table);
    NOTIFY_TRIGGERS
        .iter()
        .map(|(name, _, _)| format!("DROP TRIGGER IF EXISTS {name} ON {table};"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `CREATE TABLE` with its constraints, then its indexes and trigger.
/// Foreign keys are included: create tables in [`dependency_order`].
pub fn create_table(table: &TableSchema) -> String {
    let mut parts: Vec<String> = table.columns.iter().map(column_definition).collect();
    if !table.primary_key.is_empty() {
        parts.push(format!(
            "CONSTRAINT {} PRIMARY KEY ({})",
            quote_ident(&table.primary_key_name),
            ident_list(&table.primary_key)
        ));
    }
    parts.extend(table.uniques.iter().map(unique_definition));
    parts.extend(table.foreign_keys.iter().map(foreign_key_definition));
    parts.extend(table.checks.iter().map(|c| {
        format!(
            "CONSTRAINT {} CHECK ({})",
            quote_ident(&c.name),
            c.expression
        )
    }));
    let mut sql = format!(
        "CREATE TABLE {} (\n  {}\n);",
        quote_ident(&table.name),
        parts.join(",\n  ")
    );
    for index in &table.indexes {
        sql.push('\n');
        sql.push_str(&create_index(&table.name, index));
    }
    if table.timestamp_trigger {
        sql.push('\n');
        sql.push_str(&create_trigger(&table.name));
    }
    if let Some(columns) = &table.notify {
        sql.push('\n');
        sql.push_str(&create_notify_triggers(&table.name, columns));
    }
    sql
}

/// Tables ordered so that every referenced table comes before the tables that
/// reference it (ties keep name order, so the output is deterministic).
pub fn dependency_order<'a>(tables: &[&'a TableSchema]) -> Vec<&'a TableSchema> {
    let mut pending: Vec<&TableSchema> = tables.to_vec();
    pending.sort_by(|a, b| a.name.cmp(&b.name));
    let mut ordered: Vec<&TableSchema> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let ready = pending.iter().position(|t| {
            t.foreign_keys.iter().all(|fk| {
                fk.references == t.name
                    || ordered.iter().any(|o| o.name == fk.references)
                    || !pending.iter().any(|p| p.name == fk.references)
            })
        });
        // A reference cycle: take the first table; its keys still resolve in one script.
        ordered.push(pending.remove(ready.unwrap_or(0)));
    }
    ordered
}

/// The whole schema as one script: the trigger functions, then every table
/// in dependency order. This is what `cargo xtask schema` prints.
pub fn create_schema(tables: &[&TableSchema]) -> String {
    let mut changes = vec![Change::CreateFunction(Function::Timestamp)];
    if tables.iter().any(|t| t.notify.is_some()) {
        changes.push(Change::CreateFunction(Function::Notify));
    }
    changes.extend(
        dependency_order(tables)
            .into_iter()
            .map(|t| Change::CreateTable(t.clone())),
    );
    let parts: Vec<String> = changes.iter().map(Change::up).collect();
    parts.join("\n\n") + "\n"
}

/// A shared trigger function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `trigger_set_timestamp()`, behind every `set_timestamp` trigger.
    Timestamp,
    /// `trigger_notify_change()`, behind the notify triggers.
    Notify,
}

/// One change between two schemas: what the diff finds, and what the
/// planner ([`Change::up`], [`Change::inverse`]) renders to SQL, the only
/// place DDL text is made. Every change has an inverse, which is its down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Creates a shared trigger function.
    CreateFunction(Function),
    /// Drops a shared trigger function.
    DropFunction(Function),
    /// Renames a table.
    RenameTable {
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// Renames a column.
    RenameColumn {
        /// Its table.
        table: String,
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// Renames a constraint.
    RenameConstraint {
        /// Its table.
        table: String,
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// Renames an index.
    RenameIndex {
        /// The old name.
        from: String,
        /// The new name.
        to: String,
    },
    /// Creates a table with its constraints, indexes and triggers.
    CreateTable(TableSchema),
    /// Drops a table (destructive: its rows go).
    DropTable(TableSchema),
    /// Adds a column.
    AddColumn {
        /// Its table.
        table: String,
        /// The column.
        column: ColumnDef,
    },
    /// Drops a column (destructive: its values go).
    DropColumn {
        /// Its table.
        table: String,
        /// The column.
        column: ColumnDef,
    },
    /// Changes a column's type, first stopping on rows that would not fit.
    AlterType {
        /// Its table.
        table: String,
        /// The column.
        column: String,
        /// The type it has.
        from: String,
        /// The type it gets.
        to: String,
    },
    /// Sets or drops a column's default.
    SetDefault {
        /// Its table.
        table: String,
        /// The column.
        column: String,
        /// The default it has.
        from: Option<String>,
        /// The default it gets.
        to: Option<String>,
    },
    /// Makes a column required (NULLs take `fill` first, or the migration
    /// stops on them) or optional.
    SetRequired {
        /// Its table.
        table: String,
        /// The column.
        column: String,
        /// NOT NULL after the change.
        required: bool,
        /// What fills NULLs when the column becomes required (its default then).
        fill: Option<String>,
    },
    /// Adds a unique constraint.
    AddUnique {
        /// Its table.
        table: String,
        /// The constraint.
        unique: Unique,
    },
    /// Drops a unique constraint.
    DropUnique {
        /// Its table.
        table: String,
        /// The constraint.
        unique: Unique,
    },
    /// Creates an index.
    AddIndex {
        /// Its table.
        table: String,
        /// The index.
        index: Index,
    },
    /// Drops an index.
    DropIndex {
        /// Its table.
        table: String,
        /// The index.
        index: Index,
    },
    /// Adds a foreign key; `not_valid` leaves the rows already there unchecked.
    AddForeignKey {
        /// Its table.
        table: String,
        /// The key.
        key: ForeignKey,
        /// Added NOT VALID.
        not_valid: bool,
    },
    /// Drops a foreign key; when the table it references goes too
    /// (`target_gone`), the down re-adds it NOT VALID, as that table comes
    /// back empty.
    DropForeignKey {
        /// Its table.
        table: String,
        /// The key.
        key: ForeignKey,
        /// The referenced table is dropped as well.
        target_gone: bool,
    },
    /// Adds a CHECK, first stopping on rows that break it; `not_valid`
    /// leaves the validation for later.
    AddCheck {
        /// Its table.
        table: String,
        /// The check.
        check: Check,
        /// Added NOT VALID.
        not_valid: bool,
    },
    /// Drops a CHECK.
    DropCheck {
        /// Its table.
        table: String,
        /// The check.
        check: Check,
    },
    /// Adds a primary key.
    AddPrimaryKey {
        /// Its table.
        table: String,
        /// The constraint's name.
        name: String,
        /// Its columns.
        columns: Vec<String>,
    },
    /// Drops a primary key.
    DropPrimaryKey {
        /// Its table.
        table: String,
        /// The constraint's name.
        name: String,
        /// Its columns.
        columns: Vec<String>,
    },
    /// Creates the `set_timestamp` trigger.
    AddTimestampTrigger {
        /// Its table.
        table: String,
    },
    /// Drops the `set_timestamp` trigger.
    DropTimestampTrigger {
        /// Its table.
        table: String,
    },
    /// Creates the notify triggers, whose payload carries `columns`.
    AddNotifyTriggers {
        /// Its table.
        table: String,
        /// The payload's columns.
        columns: Vec<String>,
    },
    /// Drops the notify triggers.
    DropNotifyTriggers {
        /// Its table.
        table: String,
        /// The payload's columns (for the down).
        columns: Vec<String>,
    },
}

impl Change {
    /// The change that undoes this one: its down.
    pub fn inverse(&self) -> Change {
        use Change::*;
        let swap =
            |table: &String, from: &String, to: &String| (table.clone(), to.clone(), from.clone());
        match self {
            CreateFunction(f) => DropFunction(*f),
            DropFunction(f) => CreateFunction(*f),
            RenameTable { from, to } => RenameTable {
                from: to.clone(),
                to: from.clone(),
            },
            RenameColumn { table, from, to } => {
                let (table, from, to) = swap(table, from, to);
                RenameColumn { table, from, to }
            }
            RenameConstraint { table, from, to } => {
                let (table, from, to) = swap(table, from, to);
                RenameConstraint { table, from, to }
            }
            RenameIndex { from, to } => RenameIndex {
                from: to.clone(),
                to: from.clone(),
            },
            CreateTable(t) => DropTable(t.clone()),
            DropTable(t) => CreateTable(t.clone()),
            AddColumn { table, column } => DropColumn {
                table: table.clone(),
                column: column.clone(),
            },
            DropColumn { table, column } => AddColumn {
                table: table.clone(),
                column: column.clone(),
            },
            AlterType {
                table,
                column,
                from,
                to,
            } => AlterType {
                table: table.clone(),
                column: column.clone(),
                from: to.clone(),
                to: from.clone(),
            },
            SetDefault {
                table,
                column,
                from,
                to,
            } => SetDefault {
                table: table.clone(),
                column: column.clone(),
                from: to.clone(),
                to: from.clone(),
            },
            SetRequired {
                table,
                column,
                required,
                fill,
            } => SetRequired {
                table: table.clone(),
                column: column.clone(),
                required: !required,
                fill: fill.clone(),
            },
            AddUnique { table, unique } => DropUnique {
                table: table.clone(),
                unique: unique.clone(),
            },
            DropUnique { table, unique } => AddUnique {
                table: table.clone(),
                unique: unique.clone(),
            },
            AddIndex { table, index } => DropIndex {
                table: table.clone(),
                index: index.clone(),
            },
            DropIndex { table, index } => AddIndex {
                table: table.clone(),
                index: index.clone(),
            },
            AddForeignKey { table, key, .. } => DropForeignKey {
                table: table.clone(),
                key: key.clone(),
                target_gone: false,
            },
            DropForeignKey {
                table,
                key,
                target_gone,
            } => AddForeignKey {
                table: table.clone(),
                key: key.clone(),
                not_valid: *target_gone,
            },
            AddCheck { table, check, .. } => DropCheck {
                table: table.clone(),
                check: check.clone(),
            },
            DropCheck { table, check } => AddCheck {
                table: table.clone(),
                check: check.clone(),
                not_valid: false,
            },
            AddPrimaryKey {
                table,
                name,
                columns,
            } => DropPrimaryKey {
                table: table.clone(),
                name: name.clone(),
                columns: columns.clone(),
            },
            DropPrimaryKey {
                table,
                name,
                columns,
            } => AddPrimaryKey {
                table: table.clone(),
                name: name.clone(),
                columns: columns.clone(),
            },
            AddTimestampTrigger { table } => DropTimestampTrigger {
                table: table.clone(),
            },
            DropTimestampTrigger { table } => AddTimestampTrigger {
                table: table.clone(),
            },
            AddNotifyTriggers { table, columns } => DropNotifyTriggers {
                table: table.clone(),
                columns: columns.clone(),
            },
            DropNotifyTriggers { table, columns } => AddNotifyTriggers {
                table: table.clone(),
                columns: columns.clone(),
            },
        }
    }

    /// The SQL that makes the change.
    pub fn up(&self) -> String {
        use Change::*;
        let alter = |table: &str| format!("ALTER TABLE {}", quote_ident(table));
        match self {
            CreateFunction(Function::Timestamp) => TIMESTAMP_FUNCTION.into(),
            CreateFunction(Function::Notify) => NOTIFY_FUNCTION.into(),
            DropFunction(Function::Timestamp) => DROP_TIMESTAMP_FUNCTION.into(),
            DropFunction(Function::Notify) => DROP_NOTIFY_FUNCTION.into(),
            RenameTable { from, to } => format!("{} RENAME TO {};", alter(from), quote_ident(to)),
            RenameColumn { table, from, to } => format!(
                "{} RENAME COLUMN {} TO {};",
                alter(table),
                quote_ident(from),
                quote_ident(to)
            ),
            RenameConstraint { table, from, to } => format!(
                "{} RENAME CONSTRAINT {} TO {};",
                alter(table),
                quote_ident(from),
                quote_ident(to)
            ),
            RenameIndex { from, to } => {
                format!(
                    "ALTER INDEX {} RENAME TO {};",
                    quote_ident(from),
                    quote_ident(to)
                )
            }
            CreateTable(t) => create_table(t),
            DropTable(t) => format!("DROP TABLE {};", quote_ident(&t.name)),
            AddColumn { table, column } => {
                format!("{} ADD COLUMN {};", alter(table), column_definition(column))
            }
            DropColumn { table, column } => {
                format!(
                    "{} DROP COLUMN {};",
                    alter(table),
                    quote_ident(&column.name)
                )
            }
            AlterType {
                table,
                column,
                from,
                to,
            } => retype(table, column, from, to),
            SetDefault {
                table, column, to, ..
            } => {
                let alter = format!("{} ALTER COLUMN {}", alter(table), quote_ident(column));
                match to {
                    Some(expr) => format!("{alter} SET DEFAULT {expr};"),
                    None => format!("{alter} DROP DEFAULT;"),
                }
            }
            SetRequired {
                table,
                column,
                required,
                fill,
            } => {
                let alter_column = format!("{} ALTER COLUMN {}", alter(table), quote_ident(column));
                if *required {
                    format!(
                        "{}\n{alter_column} SET NOT NULL;",
                        fill_nulls(table, column, fill.as_deref())
                    )
                } else {
                    format!("{alter_column} DROP NOT NULL;")
                }
            }
            AddUnique { table, unique } => {
                format!("{} ADD {};", alter(table), unique_definition(unique))
            }
            DropUnique { table, unique } => drop_constraint(table, &unique.name),
            AddIndex { table, index } => create_index(table, index),
            DropIndex { index, .. } => format!("DROP INDEX {};", quote_ident(&index.name)),
            AddForeignKey {
                table,
                key,
                not_valid,
            } => format!(
                "{} ADD {}{};",
                alter(table),
                foreign_key_definition(key),
                if *not_valid { " NOT VALID" } else { "" }
            ),
            DropForeignKey { table, key, .. } => drop_constraint(table, &key.name),
            AddCheck {
                table,
                check,
                not_valid,
            } => format!(
                "{}\n{} ADD CONSTRAINT {} CHECK ({}){};",
                check_rows(table, check),
                alter(table),
                quote_ident(&check.name),
                check.expression,
                if *not_valid { " NOT VALID" } else { "" }
            ),
            DropCheck { table, check } => drop_constraint(table, &check.name),
            AddPrimaryKey {
                table,
                name,
                columns,
            } => format!(
                "{} ADD CONSTRAINT {} PRIMARY KEY ({});",
                alter(table),
                quote_ident(name),
                ident_list(columns)
            ),
            DropPrimaryKey { table, name, .. } => drop_constraint(table, name),
            AddTimestampTrigger { table } => create_trigger(table),
            DropTimestampTrigger { table } => drop_trigger(table),
            AddNotifyTriggers { table, columns } => create_notify_triggers(table, columns),
            DropNotifyTriggers { table, .. } => drop_notify_triggers(table),
        }
    }

    /// What the change does, in words (`add column messages.tags`).
    pub fn description(&self) -> String {
        use Change::*;
        let function = |f: &Function| match f {
            Function::Timestamp => "trigger_set_timestamp()",
            Function::Notify => "trigger_notify_change()",
        };
        match self {
            CreateFunction(f) => format!("create function {}", function(f)),
            DropFunction(f) => format!("drop function {}", function(f)),
            RenameTable { from, to } => format!("rename table {from} to {to}"),
            RenameColumn { table, from, to } => format!("rename column {table}.{from} to {to}"),
            RenameConstraint { table, from, to } => {
                format!("rename constraint {from} to {to} on {table}")
            }
            RenameIndex { from, to } => format!("rename index {from} to {to}"),
            CreateTable(t) => format!("create table {}", t.name),
            DropTable(t) => format!("drop table {}", t.name),
            AddColumn { table, column } => format!("add column {table}.{}", column.name),
            DropColumn { table, column } => format!("drop column {table}.{}", column.name),
            AlterType {
                table,
                column,
                from,
                to,
            } => {
                format!("change type of {table}.{column} from {from} to {to}")
            }
            SetDefault { table, column, .. } => format!("change default of {table}.{column}"),
            SetRequired {
                table,
                column,
                required: true,
                ..
            } => {
                format!("require a value in {table}.{column}")
            }
            SetRequired { table, column, .. } => format!("allow NULL in {table}.{column}"),
            AddUnique { table, unique } => {
                format!("add unique ({}) on {table}", unique.columns.join(", "))
            }
            DropUnique { table, unique } => {
                format!("drop unique ({}) on {table}", unique.columns.join(", "))
            }
            AddIndex { table, index } => {
                format!("add index ({}) on {table}", index.columns.join(", "))
            }
            DropIndex { table, index } => {
                format!("drop index ({}) on {table}", index.columns.join(", "))
            }
            AddForeignKey { table, key, .. } => format!(
                "add foreign key {table}.{} → {} (on delete {})",
                key.column,
                key.references,
                key.on_delete.sql().to_lowercase()
            ),
            DropForeignKey { table, key, .. } => {
                format!(
                    "drop foreign key {table}.{} → {}",
                    key.column, key.references
                )
            }
            AddCheck { table, check, .. } => format!("add check {} on {table}", check.name),
            DropCheck { table, check } => format!("drop check {} on {table}", check.name),
            AddPrimaryKey { table, .. } => format!("add primary key of {table}"),
            DropPrimaryKey { table, .. } => format!("drop primary key of {table}"),
            AddTimestampTrigger { table } => format!("create trigger set_timestamp on {table}"),
            DropTimestampTrigger { table } => format!("drop trigger set_timestamp on {table}"),
            AddNotifyTriggers { table, .. } => format!("create notify triggers on {table}"),
            DropNotifyTriggers { table, .. } => format!("drop notify triggers on {table}"),
        }
    }

    /// Whether applying it can lose data: dropping a table or a column, or a
    /// type change that narrows (refused without `--allow-destructive`).
    pub fn is_destructive(&self) -> bool {
        match self {
            Change::DropTable(_) | Change::DropColumn { .. } => true,
            Change::AlterType { from, to, .. } => !widens(from, to),
            _ => false,
        }
    }

    /// What its down cannot give back, said above the down SQL.
    pub fn down_note(&self) -> Option<String> {
        match self {
            Change::DropTable(t) => Some(format!(
                "re-creates table {}; its rows are not restored",
                t.name
            )),
            Change::DropColumn { table, column } => {
                let mut note = format!(
                    "re-adds column {table}.{}; its values are not restored",
                    column.name
                );
                if !column.nullable && column.default.is_none() {
                    note.push_str(" (NOT NULL without a default: fails on a table with rows)");
                }
                Some(note)
            }
            Change::AlterType {
                table,
                column,
                from,
                to,
            } => (!widens(to, from)).then(|| {
                format!("converting {table}.{column} back to {from} may fail or lose precision")
            }),
            Change::DropForeignKey {
                table,
                key,
                target_gone: true,
            } => Some(format!(
                "re-adds {} NOT VALID: {} comes back empty, so existing rows of {table} may \
                 point at nothing",
                key.name, key.references
            )),
            _ => None,
        }
    }
}

/// `CREATE INDEX CONCURRENTLY`, after dropping an INVALID copy a failed run
/// left behind (outside a transaction, like every `CONCURRENTLY`).
pub fn create_index_concurrently(table: &str, index: &Index) -> String {
    concurrent_index(table, &index.name, &index.columns, "INDEX")
}

/// The unique index a unique constraint then takes over
/// ([`add_unique_using_index`]), built like [`create_index_concurrently`].
pub fn create_unique_index_concurrently(table: &str, unique: &Unique) -> String {
    concurrent_index(table, &unique.name, &unique.columns, "UNIQUE INDEX")
}

fn concurrent_index(table: &str, name: &str, columns: &[String], kind: &str) -> String {
    let name = quote_ident(name);
    format!(
        "DROP INDEX CONCURRENTLY IF EXISTS {name};\n\
         CREATE {kind} CONCURRENTLY IF NOT EXISTS {name} ON {} ({});",
        quote_ident(table),
        ident_list(columns)
    )
}

/// `DROP INDEX CONCURRENTLY` (outside a transaction).
pub fn drop_index_concurrently(name: &str) -> String {
    format!("DROP INDEX CONCURRENTLY IF EXISTS {};", quote_ident(name))
}

/// Makes the unique index of the same name a unique constraint: a brief
/// lock, and no scan, since the index already holds every row.
pub fn add_unique_using_index(table: &str, unique: &Unique) -> String {
    let name = quote_ident(&unique.name);
    format!(
        "ALTER TABLE {} ADD CONSTRAINT {name} UNIQUE USING INDEX {name};",
        quote_ident(table)
    )
}

/// Checks the rows a NOT VALID constraint skipped, under a lock that lets
/// reads and writes go on.
pub fn validate_constraint(table: &str, name: &str) -> String {
    format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {};",
        quote_ident(table),
        quote_ident(name)
    )
}

/// The CHECK that stands in for NOT NULL while it is validated online.
pub fn not_null_check(table: &str, column: &str) -> Check {
    Check {
        name: crate::schema::identifier(format!("{table}_{column}_not_null")),
        expression: format!("{} IS NOT NULL", quote_ident(column)),
    }
}

/// `SET NOT NULL` once `check` ([`not_null_check`]) is validated, which lets
/// it skip its scan; the check is dropped after.
pub fn set_not_null_checked(table: &str, column: &str, check: &Check) -> String {
    let t = quote_ident(table);
    format!(
        "ALTER TABLE {t} ALTER COLUMN {} SET NOT NULL;\n\
         -- The validated check let SET NOT NULL skip its scan; it is no longer needed.\n\
         -- squawk-ignore ban-drop-constraint\n\
         ALTER TABLE {t} DROP CONSTRAINT {};",
        quote_ident(column),
        quote_ident(&check.name)
    )
}

/// Drops a constraint that may be gone already (a stand-in check that
/// its validation dropped).
pub fn drop_constraint_if_exists(table: &str, name: &str) -> String {
    format!(
        "ALTER TABLE {} DROP CONSTRAINT IF EXISTS {};",
        quote_ident(table),
        quote_ident(name)
    )
}

fn drop_constraint(table: &str, name: &str) -> String {
    format!(
        "ALTER TABLE {} DROP CONSTRAINT {};",
        quote_ident(table),
        quote_ident(name)
    )
}

/// Type changes that keep every value: no `--allow-destructive` needed.
pub fn widens(from: &str, to: &str) -> bool {
    const ORDER: &[&[&str]] = &[
        &["smallint", "integer", "bigint", "numeric"],
        &["real", "double precision"],
    ];
    if to == "text" && !from.ends_with("[]") {
        return true;
    }
    for chain in ORDER {
        let pos = |t: &str| chain.iter().position(|c| *c == t);
        if let (Some(a), Some(b)) = (pos(from), pos(to)) {
            return a < b;
        }
    }
    // numeric(p, s) keeps every value in numeric(p2, s2) with as many
    // digits before the point and as many after.
    let numeric = |t: &str| -> Option<(u32, u32)> {
        let inner = t.strip_prefix("numeric(")?.strip_suffix(')')?;
        let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
        Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
    };
    match (numeric(from), numeric(to), to) {
        (Some(_), None, "numeric") => return true,
        (Some((p1, s1)), Some((p2, s2)), _) => return s2 >= s1 && p2 - s2 >= p1 - s1,
        _ => {}
    }
    let varchar_len = |t: &str| {
        t.strip_prefix("character varying(")
            .and_then(|s| s.strip_suffix(')'))
            .and_then(|n| n.parse::<u32>().ok())
    };
    match (varchar_len(from), to) {
        (Some(_), "character varying") => true,
        (Some(a), t) => varchar_len(t).is_some_and(|b| b >= a),
        _ => false,
    }
}

/// A block that stops the migration when rows of `table` match `rows`
/// (a SQL condition), with their count in `message` (its `%`) and what to do
/// in `hint`: the data-aware guard before a step that would fail on them.
fn guard(table: &str, rows: &str, message: &str, hint: &str) -> String {
    format!(
        "DO $$\nDECLARE offending bigint;\nBEGIN\n  SELECT count(*) INTO offending FROM {} WHERE {rows};\n  IF offending > 0 THEN\n    RAISE EXCEPTION {}, offending USING HINT = {};\n  END IF;\nEND $$;",
        quote_ident(table),
        quote_literal(message),
        quote_literal(hint)
    )
}

/// A check that stops a migration, before `check` is added, when rows break it.
fn check_rows(table: &str, check: &Check) -> String {
    let rows = format!("NOT ({})", check.expression);
    guard(
        table,
        &rows,
        // RAISE reads `%` as a placeholder.
        &format!(
            "cannot add check {} on {table}: % row(s) break {}",
            check.name,
            check.expression.replace('%', "%%")
        ),
        &format!(
            "change or delete those rows first (SELECT * FROM {} WHERE {rows})",
            quote_ident(table)
        ),
    )
}

/// What runs before `SET NOT NULL` on a table that may hold NULLs: with a
/// default, the NULLs take it; without one, a check that stops the
/// migration with the table, the column, how many rows and what to do,
/// instead of PostgreSQL's bare "contains null values".
pub fn fill_nulls(table: &str, column: &str, default: Option<&str>) -> String {
    let (t, c) = (quote_ident(table), quote_ident(column));
    if let Some(default) = default {
        return format!("UPDATE {t} SET {c} = {default} WHERE {c} IS NULL;");
    }
    guard(
        table,
        &format!("{c} IS NULL"),
        &format!("cannot make {table}.{column} NOT NULL: % row(s) hold NULL"),
        &format!(
            "fill them first (UPDATE {t} SET {c} = ... WHERE {c} IS NULL), or give the field a \
             default (#[record(default = \"...\")]), which fills them"
        ),
    )
}

/// The rows of `column` (of type `from`) whose values the narrower type
/// `to` cannot hold, as a SQL condition, where that can be said:
/// `varchar(n)`, and from a number the smaller integers and `numeric(p, s)`.
fn misfits(column: &str, from: &str, to: &str) -> Option<String> {
    let c = quote_ident(column);
    if let Some(n) = to
        .strip_prefix("character varying(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return Some(format!("length({c}::text) > {n}"));
    }
    let number = ["smallint", "integer", "bigint", "real", "double precision"].contains(&from)
        || from.starts_with("numeric");
    if !number {
        return None;
    }
    if let Some(inner) = to
        .strip_prefix("numeric(")
        .and_then(|s| s.strip_suffix(')'))
    {
        let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
        let (p, s): (u32, u32) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
        return Some(format!("abs({c}) >= 1e{}", p.saturating_sub(s)));
    }
    let (lo, hi) = match to {
        "smallint" => (-32_768i64, 32_767i64),
        "integer" => (-2_147_483_648, 2_147_483_647),
        _ => return None,
    };
    Some(format!("{c} NOT BETWEEN {lo} AND {hi}"))
}

/// How a value of `column` becomes `to`: a cast, except where PostgreSQL
/// has none (boolean and the integers other than `integer`).
fn converted(column: &str, from: &str, to: &str) -> String {
    let c = quote_ident(column);
    let number =
        |t: &str| ["smallint", "integer", "bigint"].contains(&t) || t.starts_with("numeric");
    if from == "boolean" && number(to) {
        format!("{c}::integer::{to}")
    } else if to == "boolean" && number(from) {
        format!("{c} <> 0")
    } else {
        format!("{c}::{to}")
    }
}

/// `ALTER … TYPE`, after a guard naming the rows that would not fit when
/// the type narrows.
fn retype(table: &str, column: &str, from: &str, to: &str) -> String {
    let change = format!(
        "ALTER TABLE {} ALTER COLUMN {} TYPE {to} USING {};",
        quote_ident(table),
        quote_ident(column),
        converted(column, from, to)
    );
    match misfits(column, from, to).filter(|_| !widens(from, to)) {
        Some(rows) => format!(
            "{}\n{change}",
            guard(
                table,
                &rows,
                &format!("cannot change {table}.{column} to {to}: % row(s) do not fit"),
                &format!(
                    "change or delete them first (SELECT * FROM {} WHERE {rows})",
                    quote_ident(table)
                ),
            )
        ),
        None => change,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::OnDelete;

    fn sample() -> TableSchema {
        TableSchema::new("messages")
            .with_column(ColumnDef::new("id", "UUID").default("gen_random_uuid()"))
            .with_column(ColumnDef::new("order", "TEXT").nullable(true))
            .with_primary_key(&["id"])
            .with_foreign_key("conversation_id", "conversations", OnDelete::Cascade)
            .with_index(&["order"])
            .with_timestamp_trigger()
    }

    #[test]
    fn create_table_quotes_reserved_words() {
        let sql = create_table(&sample());
        assert!(sql.contains("\"order\" TEXT,"), "{sql}");
        assert!(sql.contains("\"id\" UUID NOT NULL DEFAULT gen_random_uuid()"));
        assert!(sql.contains("REFERENCES \"conversations\"(\"id\") ON DELETE CASCADE"));
        assert!(sql.contains("CREATE TRIGGER set_timestamp BEFORE UPDATE ON \"messages\""));
    }

    /// Every kind of change: its SQL, and that its inverse undoes it (the
    /// inverse of the inverse is the change itself).
    #[test]
    fn every_change_renders_and_inverts() {
        use crate::schema::{Check, OnDelete};
        let t = || "notes".to_string();
        let index = Index {
            name: "notes_a_idx".into(),
            columns: vec!["a".into()],
        };
        let unique = Unique {
            name: "notes_a_key".into(),
            columns: vec!["a".into()],
        };
        let key = ForeignKey {
            name: "notes_f_fkey".into(),
            column: "f".into(),
            references: "folders".into(),
            on_delete: OnDelete::Cascade,
        };
        let check = Check {
            name: "notes_a_check".into(),
            expression: "(a > 0)".into(),
        };
        let column = ColumnDef::new("a", "integer").default("0");
        let cases: Vec<(Change, &str)> = vec![
            (
                Change::CreateFunction(Function::Timestamp),
                "CREATE OR REPLACE FUNCTION trigger_set_timestamp()",
            ),
            (
                Change::DropFunction(Function::Notify),
                "DROP FUNCTION IF EXISTS trigger_notify_change();",
            ),
            (
                Change::RenameTable {
                    from: "a".into(),
                    to: "b".into(),
                },
                r#"ALTER TABLE "a" RENAME TO "b";"#,
            ),
            (
                Change::RenameColumn {
                    table: t(),
                    from: "a".into(),
                    to: "b".into(),
                },
                r#"RENAME COLUMN "a" TO "b";"#,
            ),
            (
                Change::RenameConstraint {
                    table: t(),
                    from: "x".into(),
                    to: "y".into(),
                },
                r#"RENAME CONSTRAINT "x" TO "y";"#,
            ),
            (
                Change::RenameIndex {
                    from: "x".into(),
                    to: "y".into(),
                },
                r#"ALTER INDEX "x" RENAME TO "y";"#,
            ),
            (Change::CreateTable(sample()), r#"CREATE TABLE "messages""#),
            (Change::DropTable(sample()), r#"DROP TABLE "messages";"#),
            (
                Change::AddColumn {
                    table: t(),
                    column: column.clone(),
                },
                r#"ADD COLUMN "a" integer NOT NULL DEFAULT 0;"#,
            ),
            (
                Change::DropColumn {
                    table: t(),
                    column: column.clone(),
                },
                r#"DROP COLUMN "a";"#,
            ),
            (
                Change::AlterType {
                    table: t(),
                    column: "a".into(),
                    from: "integer".into(),
                    to: "bigint".into(),
                },
                r#"TYPE bigint USING "a"::bigint;"#,
            ),
            (
                Change::AlterType {
                    table: t(),
                    column: "a".into(),
                    from: "bigint".into(),
                    to: "integer".into(),
                },
                "NOT BETWEEN -2147483648 AND 2147483647",
            ),
            (
                Change::AlterType {
                    table: t(),
                    column: "a".into(),
                    from: "boolean".into(),
                    to: "bigint".into(),
                },
                r#"USING "a"::integer::bigint;"#,
            ),
            (
                Change::AlterType {
                    table: t(),
                    column: "a".into(),
                    from: "bigint".into(),
                    to: "boolean".into(),
                },
                r#"USING "a" <> 0;"#,
            ),
            (
                Change::SetDefault {
                    table: t(),
                    column: "a".into(),
                    from: None,
                    to: Some("1".into()),
                },
                "SET DEFAULT 1;",
            ),
            (
                Change::SetDefault {
                    table: t(),
                    column: "a".into(),
                    from: Some("1".into()),
                    to: None,
                },
                "DROP DEFAULT;",
            ),
            (
                Change::SetRequired {
                    table: t(),
                    column: "a".into(),
                    required: true,
                    fill: Some("0".into()),
                },
                r#"UPDATE "notes" SET "a" = 0 WHERE "a" IS NULL;"#,
            ),
            (
                Change::SetRequired {
                    table: t(),
                    column: "a".into(),
                    required: true,
                    fill: None,
                },
                "row(s) hold NULL",
            ),
            (
                Change::SetRequired {
                    table: t(),
                    column: "a".into(),
                    required: false,
                    fill: None,
                },
                "DROP NOT NULL;",
            ),
            (
                Change::AddUnique {
                    table: t(),
                    unique: unique.clone(),
                },
                r#"ADD CONSTRAINT "notes_a_key" UNIQUE ("a");"#,
            ),
            (
                Change::DropUnique {
                    table: t(),
                    unique: unique.clone(),
                },
                r#"DROP CONSTRAINT "notes_a_key";"#,
            ),
            (
                Change::AddIndex {
                    table: t(),
                    index: index.clone(),
                },
                r#"CREATE INDEX "notes_a_idx" ON "notes" ("a");"#,
            ),
            (
                Change::DropIndex {
                    table: t(),
                    index: index.clone(),
                },
                r#"DROP INDEX "notes_a_idx";"#,
            ),
            (
                Change::AddForeignKey {
                    table: t(),
                    key: key.clone(),
                    not_valid: false,
                },
                "ON DELETE CASCADE;",
            ),
            (
                Change::AddForeignKey {
                    table: t(),
                    key: key.clone(),
                    not_valid: true,
                },
                "ON DELETE CASCADE NOT VALID;",
            ),
            (
                Change::DropForeignKey {
                    table: t(),
                    key: key.clone(),
                    target_gone: true,
                },
                r#"DROP CONSTRAINT "notes_f_fkey";"#,
            ),
            (
                Change::AddCheck {
                    table: t(),
                    check: check.clone(),
                    not_valid: false,
                },
                r#"CHECK ((a > 0));"#,
            ),
            (
                Change::DropCheck {
                    table: t(),
                    check: check.clone(),
                },
                r#"DROP CONSTRAINT "notes_a_check";"#,
            ),
            (
                Change::AddPrimaryKey {
                    table: t(),
                    name: "notes_pkey".into(),
                    columns: vec!["id".into()],
                },
                r#"PRIMARY KEY ("id");"#,
            ),
            (
                Change::DropPrimaryKey {
                    table: t(),
                    name: "notes_pkey".into(),
                    columns: vec!["id".into()],
                },
                r#"DROP CONSTRAINT "notes_pkey";"#,
            ),
            (
                Change::AddTimestampTrigger { table: t() },
                "CREATE TRIGGER set_timestamp BEFORE UPDATE",
            ),
            (
                Change::DropTimestampTrigger { table: t() },
                "DROP TRIGGER IF EXISTS set_timestamp",
            ),
            (
                Change::AddNotifyTriggers {
                    table: t(),
                    columns: vec!["f".into()],
                },
                "trigger_notify_change('f');",
            ),
            (
                Change::DropNotifyTriggers {
                    table: t(),
                    columns: vec![],
                },
                "DROP TRIGGER IF EXISTS notify_delete",
            ),
        ];
        for (change, sql) in cases {
            assert!(
                change.up().contains(sql),
                "{change:?} renders {}",
                change.up()
            );
            let back = change.inverse();
            match &change {
                // A dropped key whose table goes comes back NOT VALID, and
                // that one's inverse is a plain drop.
                Change::DropForeignKey {
                    target_gone: true, ..
                } => {
                    assert!(back.up().ends_with("NOT VALID;"), "{}", back.up())
                }
                Change::AddForeignKey {
                    not_valid: true, ..
                }
                | Change::AddCheck {
                    not_valid: true, ..
                } => {}
                _ => assert_eq!(back.inverse(), change, "the inverse of the inverse"),
            }
            assert!(!change.description().is_empty());
        }
    }

    #[test]
    fn destruction_and_notes_follow_the_change() {
        let t = || "notes".to_string();
        let narrowing = Change::AlterType {
            table: t(),
            column: "a".into(),
            from: "bigint".into(),
            to: "integer".into(),
        };
        assert!(narrowing.is_destructive());
        assert!(
            narrowing.down_note().is_none(),
            "integer back to bigint widens"
        );
        let widening = narrowing.inverse();
        assert!(!widening.is_destructive());
        assert!(
            widening
                .down_note()
                .unwrap()
                .contains("may fail or lose precision")
        );
        assert!(Change::DropTable(sample()).is_destructive());
        assert!(
            Change::DropTable(sample())
                .down_note()
                .unwrap()
                .contains("rows are not restored")
        );
        let column = ColumnDef::new("a", "text");
        let drop = Change::DropColumn { table: t(), column };
        assert!(drop.is_destructive());
        assert!(
            drop.down_note()
                .unwrap()
                .contains("fails on a table with rows")
        );
    }

    #[test]
    fn referenced_tables_come_first() {
        let messages = sample();
        let conversations = TableSchema::new("conversations");
        let order = dependency_order(&[&messages, &conversations]);
        assert_eq!(order[0].name, "conversations");
    }

    #[test]
    fn quoting_escapes_quotes() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
