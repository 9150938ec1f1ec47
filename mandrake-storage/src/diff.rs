//! The difference between two schemas as an ordered plan of reversible steps.

use crate::ddl::{
    DROP_NOTIFY_FUNCTION, DROP_TIMESTAMP_FUNCTION, NOTIFY_FUNCTION, TIMESTAMP_FUNCTION,
    column_definition, create_index, create_notify_triggers, create_table, create_trigger,
    dependency_order, drop_notify_triggers, drop_trigger, foreign_key_definition, ident_list,
    quote_ident, quote_literal, unique_definition,
};
use crate::error::{Error, Result};
use crate::schema::{ColumnDef, DatabaseSchema, TableSchema};

/// One change, with the SQL that makes it and the SQL that undoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step does, in words (`add column messages.tags`).
    pub description: String,
    /// The SQL that makes the change.
    pub up: String,
    /// The SQL that undoes it.
    pub down: String,
    /// Loses data when applied (drop table or column, narrowing type change).
    pub destructive: bool,
    /// Said in a comment above the down SQL (e.g. data it cannot restore).
    pub down_note: Option<String>,
    /// What the step does, where `--online` renders it its own way.
    pub kind: Kind,
}

/// The steps `new-migration --online` renders without a long lock; every
/// other step is [`Kind::Other`] and runs as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Runs as planned.
    Other,
    /// `CREATE INDEX`: online, `CONCURRENTLY` in a file of its own.
    AddIndex {
        /// The table.
        table: String,
        /// The index.
        index: crate::schema::Index,
    },
    /// `DROP INDEX`: online, `CONCURRENTLY` in a file of its own.
    DropIndex {
        /// The table.
        table: String,
        /// The index.
        index: crate::schema::Index,
    },
    /// A foreign key or CHECK: online, added `NOT VALID`, validated later.
    AddConstraint {
        /// The table.
        table: String,
        /// The constraint.
        name: String,
    },
    /// `SET NOT NULL`: online, through a validated `CHECK (c IS NOT NULL)`.
    SetNotNull {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// What runs first: the backfill from the default, or the check for NULLs.
        fill: String,
    },
}

/// The steps from one schema to another, in an order where dependencies
/// hold; `down` runs them backwards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes, in the order they run.
    pub steps: Vec<Step>,
}

impl Plan {
    /// True when the schemas already agree.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps that can lose data (refused without `--allow-destructive`).
    pub fn destructive(&self) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(|s| s.destructive)
    }

    /// The up script: every step in order, destructive ones marked.
    pub fn up_sql(&self) -> String {
        let mut sql = String::new();
        for step in &self.steps {
            if step.destructive {
                sql.push_str(&format!(
                    "-- DESTRUCTIVE: {} (data is lost)\n",
                    step.description
                ));
            }
            sql.push_str(&step.up);
            sql.push_str("\n\n");
        }
        sql
    }

    /// The down script: the inverse steps, last first.
    pub fn down_sql(&self) -> String {
        let mut sql = String::new();
        for step in self.steps.iter().rev() {
            if let Some(note) = &step.down_note {
                sql.push_str(&format!("-- NOTE: {note}\n"));
            }
            sql.push_str(&step.down);
            sql.push_str("\n\n");
        }
        sql
    }
}

/// Buckets in the order their steps run; see [`diff`].
#[derive(Default)]
struct Phases {
    create_function: Vec<Step>,
    renames: Vec<Step>,
    drop_foreign_keys: Vec<Step>,
    drop_constraints: Vec<Step>,
    create_tables: Vec<Step>,
    add_columns: Vec<Step>,
    alter_columns: Vec<Step>,
    drop_columns: Vec<Step>,
    drop_tables: Vec<Step>,
    add_constraints: Vec<Step>,
    add_foreign_keys: Vec<Step>,
    drop_function: Vec<Step>,
}

impl Phases {
    fn into_plan(self) -> Plan {
        let steps = [
            self.create_function,
            self.renames,
            self.drop_foreign_keys,
            self.drop_constraints,
            self.create_tables,
            self.add_columns,
            self.alter_columns,
            self.drop_columns,
            self.drop_tables,
            self.add_constraints,
            self.add_foreign_keys,
            self.drop_function,
        ]
        .into_iter()
        .flatten()
        .collect();
        Plan { steps }
    }
}

fn step(description: String, up: String, down: String) -> Step {
    Step {
        description,
        up,
        down,
        destructive: false,
        down_note: None,
        kind: Kind::Other,
    }
}

/// Plans the way from `from` (what the migrations build) to `to` (what the
/// types describe). Renames come only from `renamed_from` hints in `to`.
/// A NOT NULL column without a default cannot be added to an existing table
/// (it may hold rows): that is an error with advice.
pub fn diff(from: &DatabaseSchema, to: &DatabaseSchema) -> Result<Plan> {
    let mut phases = Phases::default();
    let mut from = from.clone();

    if to.timestamp_function && !from.timestamp_function {
        phases.create_function.push(step(
            "create function trigger_set_timestamp()".into(),
            TIMESTAMP_FUNCTION.into(),
            DROP_TIMESTAMP_FUNCTION.into(),
        ));
    }
    if !to.timestamp_function && from.timestamp_function {
        phases.drop_function.push(step(
            "drop function trigger_set_timestamp()".into(),
            DROP_TIMESTAMP_FUNCTION.into(),
            TIMESTAMP_FUNCTION.into(),
        ));
    }
    if to.notify_function && !from.notify_function {
        phases.create_function.push(step(
            "create function trigger_notify_change()".into(),
            NOTIFY_FUNCTION.into(),
            DROP_NOTIFY_FUNCTION.into(),
        ));
    }
    if !to.notify_function && from.notify_function {
        phases.drop_function.push(step(
            "drop function trigger_notify_change()".into(),
            DROP_NOTIFY_FUNCTION.into(),
            NOTIFY_FUNCTION.into(),
        ));
    }

    plan_renames(&mut from, to, &mut phases)?;

    // Tables that appear and disappear.
    let created: Vec<&TableSchema> = to
        .tables
        .iter()
        .filter(|t| from.table(&t.name).is_none())
        .collect();
    for table in dependency_order(&created) {
        phases.create_tables.push(step(
            format!("create table {}", table.name),
            create_table(table),
            format!("DROP TABLE {};", quote_ident(&table.name)),
        ));
    }
    let dropped: Vec<&TableSchema> = from
        .tables
        .iter()
        .filter(|t| to.table(&t.name).is_none())
        .collect();
    for table in dependency_order(&dropped).into_iter().rev() {
        phases.drop_tables.push(Step {
            destructive: true,
            down_note: Some(format!(
                "re-creates table {}; its rows are not restored",
                table.name
            )),
            ..step(
                format!("drop table {}", table.name),
                format!("DROP TABLE {};", quote_ident(&table.name)),
                create_table(table),
            )
        });
    }

    for new in &to.tables {
        if let Some(old) = from.table(&new.name) {
            diff_columns(old, new, &mut phases)?;
            diff_constraints(old, new, to, &mut phases);
        }
    }
    Ok(phases.into_plan())
}

/// Renames from `renamed_from`, applied to `from` so the rest of the diff
/// compares like with like.
fn plan_renames(from: &mut DatabaseSchema, to: &DatabaseSchema, phases: &mut Phases) -> Result<()> {
    for table in &to.tables {
        let Some(old) = &table.renamed_from else {
            continue;
        };
        if from.table(&table.name).is_some() || from.table(old).is_none() {
            continue;
        }
        phases.renames.push(step(
            format!("rename table {old} to {}", table.name),
            format!(
                "ALTER TABLE {} RENAME TO {};",
                quote_ident(old),
                quote_ident(&table.name)
            ),
            format!(
                "ALTER TABLE {} RENAME TO {};",
                quote_ident(&table.name),
                quote_ident(old)
            ),
        ));
        for t in &mut from.tables {
            if t.name == *old {
                t.name = table.name.clone();
            }
            for fk in &mut t.foreign_keys {
                if fk.references == *old {
                    fk.references = table.name.clone();
                }
            }
        }
    }
    for table in &to.tables {
        let Some(current) = from.tables.iter_mut().find(|t| t.name == table.name) else {
            continue;
        };
        let mut pending: Vec<(String, String)> = Vec::new();
        for column in &table.columns {
            let Some(old) = &column.renamed_from else {
                continue;
            };
            match (
                current.column(old).is_some(),
                current.column(&column.name).is_some(),
            ) {
                // Renamed: either by this plan, or by an earlier migration.
                (true, _) => pending.push((old.clone(), column.name.clone())),
                (false, true) => {}
                (false, false) => {
                    return Err(Error::Schema(format!(
                        "{}.{}: renamed_from = {old:?} names no column of {} (its columns: {})",
                        table.name,
                        column.name,
                        table.name,
                        current
                            .columns
                            .iter()
                            .map(|c| c.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        // A hint whose target exists and is not renamed away was carried
        // out by an earlier migration (the old name has been reused since).
        loop {
            let sources: Vec<String> = pending.iter().map(|(old, _)| old.clone()).collect();
            let before = pending.len();
            pending.retain(|(_, new)| current.column(new).is_none() || sources.contains(new));
            if pending.len() == before {
                break;
            }
        }
        // A rename into a name another rename frees (a → b while b → c)
        // waits for that one, whatever the field order; a cycle (a ↔ b)
        // goes through a temporary name.
        while !pending.is_empty() {
            let ready = pending
                .iter()
                .position(|(_, new)| current.column(new).is_none());
            let (old, new) = match ready {
                Some(i) => pending.remove(i),
                None => {
                    let (old, new) = pending.remove(0);
                    let temporary = format!("{old}__renaming");
                    push_column_rename(phases, &table.name, &old, &temporary);
                    rename_column(current, &old, &temporary);
                    pending.push((temporary, new));
                    continue;
                }
            };
            push_column_rename(phases, &table.name, &old, &new);
            rename_column(current, &old, &new);
        }
    }
    Ok(())
}

fn push_column_rename(phases: &mut Phases, table: &str, old: &str, new: &str) {
    let t = quote_ident(table);
    phases.renames.push(step(
        format!("rename column {table}.{old} to {new}"),
        format!(
            "ALTER TABLE {t} RENAME COLUMN {} TO {};",
            quote_ident(old),
            quote_ident(new)
        ),
        format!(
            "ALTER TABLE {t} RENAME COLUMN {} TO {};",
            quote_ident(new),
            quote_ident(old)
        ),
    ));
}

fn rename_column(table: &mut TableSchema, old: &str, new: &str) {
    let rename = |c: &mut String| {
        if c == old {
            *c = new.to_owned();
        }
    };
    for c in &mut table.columns {
        rename(&mut c.name);
    }
    table.primary_key.iter_mut().for_each(rename);
    for u in &mut table.uniques {
        u.columns.iter_mut().for_each(rename);
    }
    for i in &mut table.indexes {
        i.columns.iter_mut().for_each(rename);
    }
    for fk in &mut table.foreign_keys {
        rename(&mut fk.column);
    }
    // PostgreSQL renames the column inside CHECK expressions too (an enum
    // column's check): so must the schema the rest of the diff compares.
    for check in &mut table.checks {
        check.expression = rename_in_expression(&check.expression, old, new);
    }
}

/// `expression` (as PostgreSQL prints it) with the identifier `old` renamed
/// to `new`; string literals are left alone.
fn rename_in_expression(expression: &str, old: &str, new: &str) -> String {
    let simple = |name: &str| {
        name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let printed = |name: &str| {
        if simple(name) {
            name.to_owned()
        } else {
            quote_ident(name)
        }
    };
    let (old_printed, new_printed) = (printed(old), printed(new));
    let mut out = String::with_capacity(expression.len());
    let mut rest = expression;
    while !rest.is_empty() {
        if let Some(literal) = rest.strip_prefix('\'') {
            // A literal runs to the next lone quote ('' is a quote inside it).
            let mut end = 0;
            let bytes = literal.as_bytes();
            while end < bytes.len() {
                if bytes[end] == b'\'' {
                    if bytes.get(end + 1) == Some(&b'\'') {
                        end += 2;
                        continue;
                    }
                    break;
                }
                end += 1;
            }
            let end = (end + 1).min(literal.len());
            out.push('\'');
            out.push_str(&literal[..end]);
            rest = &literal[end..];
            continue;
        }
        let word_len = if let Some(quoted) = rest.strip_prefix('"') {
            quoted.find('"').map_or(rest.len(), |i| i + 2)
        } else {
            rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())
        };
        if word_len == 0 {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let word = &rest[..word_len];
        out.push_str(if word == old_printed {
            &new_printed
        } else {
            word
        });
        rest = &rest[word_len..];
    }
    out
}

/// Type changes that keep every value: no `--allow-destructive` needed.
fn widens(from: &str, to: &str) -> bool {
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

fn diff_columns(old: &TableSchema, new: &TableSchema, phases: &mut Phases) -> Result<()> {
    let t = quote_ident(&new.name);
    for column in &new.columns {
        let c = quote_ident(&column.name);
        let Some(before) = old.column(&column.name) else {
            if !column.nullable && column.default.is_none() {
                return Err(Error::Schema(format!(
                    "cannot add NOT NULL column {}.{} without a default: the table may hold rows. \
                     Give it `#[record(default = \"<sql>\")]`, or add it as an `Option` first, \
                     fill it, then make it required in a later migration",
                    new.name, column.name
                )));
            }
            phases.add_columns.push(step(
                format!("add column {}.{}", new.name, column.name),
                format!("ALTER TABLE {t} ADD COLUMN {};", column_definition(column)),
                format!("ALTER TABLE {t} DROP COLUMN {c};"),
            ));
            continue;
        };
        alter_column(&new.name, before, column, phases);
    }
    for column in &old.columns {
        if new.column(&column.name).is_none() {
            let c = quote_ident(&column.name);
            let mut note = format!(
                "re-adds column {}.{}; its values are not restored",
                old.name, column.name
            );
            if !column.nullable && column.default.is_none() {
                note.push_str(" (NOT NULL without a default: fails on a table with rows)");
            }
            phases.drop_columns.push(Step {
                destructive: true,
                down_note: Some(note),
                ..step(
                    format!("drop column {}.{}", old.name, column.name),
                    format!("ALTER TABLE {t} DROP COLUMN {c};"),
                    format!("ALTER TABLE {t} ADD COLUMN {};", column_definition(column)),
                )
            });
        }
    }
    Ok(())
}

fn alter_column(table: &str, before: &ColumnDef, after: &ColumnDef, phases: &mut Phases) {
    let alter = format!(
        "ALTER TABLE {} ALTER COLUMN {}",
        quote_ident(table),
        quote_ident(&after.name)
    );
    let path = format!("{table}.{}", after.name);
    let retyped = before.sql_type != after.sql_type;
    // The old default may not cast to the new type (`false` to an integer):
    // it goes before the type changes, and the new one is set after.
    if retyped && let Some(old_default) = &before.default {
        phases.alter_columns.push(step(
            format!("drop default of {path} before its type changes"),
            format!("{alter} DROP DEFAULT;"),
            format!("{alter} SET DEFAULT {old_default};"),
        ));
    }
    if retyped {
        let to_new = retype(
            table,
            &after.name,
            &before.sql_type,
            &after.sql_type,
            &alter,
        );
        let to_old = retype(
            table,
            &after.name,
            &after.sql_type,
            &before.sql_type,
            &alter,
        );
        let narrowing = !widens(&before.sql_type, &after.sql_type);
        phases.alter_columns.push(Step {
            destructive: narrowing,
            down_note: (!widens(&after.sql_type, &before.sql_type)).then(|| {
                format!(
                    "converting {path} back to {} may fail or lose precision",
                    before.sql_type
                )
            }),
            ..step(
                format!(
                    "change type of {path} from {} to {}",
                    before.sql_type, after.sql_type
                ),
                to_new,
                to_old,
            )
        });
    }
    let before_default = if retyped { &None } else { &before.default };
    if *before_default != after.default {
        let set = |d: &Option<String>| match d {
            Some(expr) => format!("{alter} SET DEFAULT {expr};"),
            None => format!("{alter} DROP DEFAULT;"),
        };
        phases.alter_columns.push(step(
            format!("change default of {path}"),
            set(&after.default),
            set(before_default),
        ));
    }
    if before.nullable != after.nullable {
        let set = |nullable: bool, default: &Option<String>| {
            if nullable {
                format!("{alter} DROP NOT NULL;")
            } else {
                format!(
                    "{}\n{alter} SET NOT NULL;",
                    fill_nulls(table, &after.name, default.as_deref())
                )
            }
        };
        let what = if after.nullable {
            "allow NULL in"
        } else {
            "require a value in"
        };
        let kind = match after.nullable {
            true => Kind::Other,
            false => Kind::SetNotNull {
                table: table.to_owned(),
                column: after.name.clone(),
                fill: fill_nulls(table, &after.name, after.default.as_deref()),
            },
        };
        phases.alter_columns.push(Step {
            kind,
            ..step(
                format!("{what} {path}"),
                set(after.nullable, &after.default),
                set(before.nullable, &before.default),
            )
        });
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
fn check_rows(table: &str, check: &crate::schema::Check) -> String {
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
fn fill_nulls(table: &str, column: &str, default: Option<&str>) -> String {
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

/// `ALTER … TYPE`, after a guard naming the rows that would not fit when
/// the type narrows.
fn retype(table: &str, column: &str, from: &str, to: &str, alter: &str) -> String {
    let change = format!("{alter} TYPE {to} USING {}::{to};", quote_ident(column));
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

/// Unique constraints, indexes, foreign keys, checks and the trigger:
/// matched by what they do; a match under another name is renamed.
fn diff_constraints(
    old: &TableSchema,
    new: &TableSchema,
    to: &DatabaseSchema,
    phases: &mut Phases,
) {
    let t = quote_ident(&new.name);
    let table = &new.name;
    let rename_constraint = |from: &str, to: &str| {
        step(
            format!("rename constraint {from} to {to} on {table}"),
            format!(
                "ALTER TABLE {t} RENAME CONSTRAINT {} TO {};",
                quote_ident(from),
                quote_ident(to)
            ),
            format!(
                "ALTER TABLE {t} RENAME CONSTRAINT {} TO {};",
                quote_ident(to),
                quote_ident(from)
            ),
        )
    };
    let drop_constraint =
        |name: &str| format!("ALTER TABLE {t} DROP CONSTRAINT {};", quote_ident(name));

    for u in &new.uniques {
        match old.uniques.iter().find(|o| o.columns == u.columns) {
            Some(o) if o.name != u.name => phases.renames.push(rename_constraint(&o.name, &u.name)),
            Some(_) => {}
            None => phases.add_constraints.push(step(
                format!("add unique ({}) on {table}", u.columns.join(", ")),
                format!("ALTER TABLE {t} ADD {};", unique_definition(u)),
                drop_constraint(&u.name),
            )),
        }
    }
    for u in &old.uniques {
        if !new.uniques.iter().any(|n| n.columns == u.columns) {
            phases.drop_constraints.push(step(
                format!("drop unique ({}) on {table}", u.columns.join(", ")),
                drop_constraint(&u.name),
                format!("ALTER TABLE {t} ADD {};", unique_definition(u)),
            ));
        }
    }

    for i in &new.indexes {
        match old.indexes.iter().find(|o| o.columns == i.columns) {
            Some(o) if o.name != i.name => phases.renames.push(step(
                format!("rename index {} to {}", o.name, i.name),
                format!(
                    "ALTER INDEX {} RENAME TO {};",
                    quote_ident(&o.name),
                    quote_ident(&i.name)
                ),
                format!(
                    "ALTER INDEX {} RENAME TO {};",
                    quote_ident(&i.name),
                    quote_ident(&o.name)
                ),
            )),
            Some(_) => {}
            None => phases.add_constraints.push(Step {
                kind: Kind::AddIndex {
                    table: table.clone(),
                    index: i.clone(),
                },
                ..step(
                    format!("add index ({}) on {table}", i.columns.join(", ")),
                    create_index(table, i),
                    format!("DROP INDEX {};", quote_ident(&i.name)),
                )
            }),
        }
    }
    for i in &old.indexes {
        if !new.indexes.iter().any(|n| n.columns == i.columns) {
            phases.drop_constraints.push(Step {
                kind: Kind::DropIndex {
                    table: table.clone(),
                    index: i.clone(),
                },
                ..step(
                    format!("drop index ({}) on {table}", i.columns.join(", ")),
                    format!("DROP INDEX {};", quote_ident(&i.name)),
                    create_index(table, i),
                )
            });
        }
    }

    let same_fk = |a: &crate::schema::ForeignKey, b: &crate::schema::ForeignKey| {
        a.column == b.column && a.references == b.references && a.on_delete == b.on_delete
    };
    for fk in &new.foreign_keys {
        match old.foreign_keys.iter().find(|o| same_fk(o, fk)) {
            Some(o) if o.name != fk.name => {
                phases.renames.push(rename_constraint(&o.name, &fk.name))
            }
            Some(_) => {}
            None => phases.add_foreign_keys.push(Step {
                kind: Kind::AddConstraint {
                    table: table.clone(),
                    name: fk.name.clone(),
                },
                ..step(
                    format!(
                        "add foreign key {table}.{} → {} (on delete {})",
                        fk.column,
                        fk.references,
                        fk.on_delete.sql().to_lowercase()
                    ),
                    format!("ALTER TABLE {t} ADD {};", foreign_key_definition(fk)),
                    drop_constraint(&fk.name),
                )
            }),
        }
    }
    for fk in &old.foreign_keys {
        if !new.foreign_keys.iter().any(|n| same_fk(n, fk)) {
            // When the referenced table goes too, the down file re-creates
            // it empty: the rows here would break the key, so it comes back
            // NOT VALID (checked for new rows only).
            let gone = to.table(&fk.references).is_none();
            let re_add = format!(
                "ALTER TABLE {t} ADD {}{};",
                foreign_key_definition(fk),
                if gone { " NOT VALID" } else { "" }
            );
            phases.drop_foreign_keys.push(Step {
                down_note: gone.then(|| {
                    format!(
                        "re-adds {} NOT VALID: {} comes back empty, so existing rows of {table} \
                         may point at nothing",
                        fk.name, fk.references
                    )
                }),
                ..step(
                    format!("drop foreign key {table}.{} → {}", fk.column, fk.references),
                    drop_constraint(&fk.name),
                    re_add,
                )
            });
        }
    }

    // The table holds rows: a check they break (an enum variant still in
    // use) stops the file first, saying which and how many.
    let check_sql = |c: &crate::schema::Check| {
        format!(
            "{}\nALTER TABLE {t} ADD CONSTRAINT {} CHECK ({});",
            check_rows(table, c),
            quote_ident(&c.name),
            c.expression
        )
    };
    for c in &new.checks {
        match old.checks.iter().find(|o| o.expression == c.expression) {
            Some(o) if o.name != c.name => phases.renames.push(rename_constraint(&o.name, &c.name)),
            Some(_) => {}
            None => phases.add_constraints.push(Step {
                kind: Kind::AddConstraint {
                    table: table.clone(),
                    name: c.name.clone(),
                },
                ..step(
                    format!("add check {} on {table}", c.name),
                    check_sql(c),
                    drop_constraint(&c.name),
                )
            }),
        }
    }
    for c in &old.checks {
        if !new.checks.iter().any(|n| n.expression == c.expression) {
            phases.drop_constraints.push(step(
                format!("drop check {} on {table}", c.name),
                drop_constraint(&c.name),
                check_sql(c),
            ));
        }
    }

    if new.primary_key != old.primary_key {
        let (old_pk, new_pk) = (
            quote_ident(&old.primary_key_name),
            quote_ident(&new.primary_key_name),
        );
        phases.drop_constraints.push(step(
            format!("drop primary key of {table}"),
            format!("ALTER TABLE {t} DROP CONSTRAINT {old_pk};"),
            format!(
                "ALTER TABLE {t} ADD CONSTRAINT {old_pk} PRIMARY KEY ({});",
                ident_list(&old.primary_key)
            ),
        ));
        phases.add_constraints.push(step(
            format!("add primary key of {table}"),
            format!(
                "ALTER TABLE {t} ADD CONSTRAINT {new_pk} PRIMARY KEY ({});",
                ident_list(&new.primary_key)
            ),
            format!("ALTER TABLE {t} DROP CONSTRAINT {new_pk};"),
        ));
    } else if new.primary_key_name != old.primary_key_name {
        phases.renames.push(rename_constraint(
            &old.primary_key_name,
            &new.primary_key_name,
        ));
    }

    if new.timestamp_trigger && !old.timestamp_trigger {
        phases.add_constraints.push(step(
            format!("create trigger set_timestamp on {table}"),
            create_trigger(table),
            drop_trigger(table),
        ));
    }
    if !new.timestamp_trigger && old.timestamp_trigger {
        phases.drop_constraints.push(step(
            format!("drop trigger set_timestamp on {table}"),
            drop_trigger(table),
            create_trigger(table),
        ));
    }

    // A changed payload (a foreign key added, dropped or renamed) is a drop
    // and a create.
    if new.notify != old.notify {
        if let Some(columns) = &old.notify {
            phases.drop_constraints.push(step(
                format!("drop notify triggers on {table}"),
                drop_notify_triggers(table),
                create_notify_triggers(table, columns),
            ));
        }
        if let Some(columns) = &new.notify {
            phases.add_constraints.push(step(
                format!("create notify triggers on {table}"),
                create_notify_triggers(table, columns),
                drop_notify_triggers(table),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(columns: &[(&str, Option<&str>)]) -> DatabaseSchema {
        let mut table = TableSchema::new("providers").with_column(ColumnDef::new("id", "uuid"));
        for (name, old) in columns {
            let mut c = ColumnDef::new(name, "text").nullable(true);
            if let Some(old) = old {
                c = c.renamed_from(old);
            }
            table = table.with_column(c);
        }
        DatabaseSchema {
            tables: vec![table],
            timestamp_function: false,
            notify_function: false,
        }
    }

    fn renames(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.description.as_str()).collect()
    }

    #[test]
    fn chained_renames_do_not_depend_on_field_order() {
        let from = schema(&[("api_key", None), ("base_url", None)]);
        for to in [
            schema(&[
                ("base_url", Some("api_key")),
                ("endpoint", Some("base_url")),
            ]),
            schema(&[
                ("endpoint", Some("base_url")),
                ("base_url", Some("api_key")),
            ]),
        ] {
            let plan = diff(&from, &to).unwrap();
            assert_eq!(
                renames(&plan),
                [
                    "rename column providers.base_url to endpoint",
                    "rename column providers.api_key to base_url"
                ]
            );
        }
    }

    #[test]
    fn a_swap_goes_through_a_temporary_name() {
        let from = schema(&[("a", None), ("b", None)]);
        let to = schema(&[("b", Some("a")), ("a", Some("b"))]);
        let plan = diff(&from, &to).unwrap();
        assert_eq!(
            renames(&plan),
            [
                "rename column providers.a to a__renaming",
                "rename column providers.b to a",
                "rename column providers.a__renaming to b"
            ]
        );
    }

    #[test]
    fn a_hint_naming_no_column_is_an_error_and_a_done_one_is_quiet() {
        let from = schema(&[("name", None)]);
        let err = diff(&from, &schema(&[("title", Some("nmae"))])).unwrap_err();
        assert!(
            err.to_string()
                .contains("renamed_from = \"nmae\" names no column"),
            "{err}"
        );
        // Renamed by an earlier migration: the hint stays in the code, harmless.
        let done = schema(&[("title", Some("name"))]);
        let plan = diff(&schema(&[("title", None)]), &done).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn renames_reach_check_expressions_but_not_literals() {
        assert_eq!(
            rename_in_expression(
                "(color = ANY (ARRAY['color'::text, 'it''s'::text]))",
                "color",
                "shade"
            ),
            "(shade = ANY (ARRAY['color'::text, 'it''s'::text]))"
        );
        assert_eq!(
            rename_in_expression("(\"Color\" > 0) AND (colors > 1)", "Color", "hue"),
            "(hue > 0) AND (colors > 1)"
        );
    }

    #[test]
    fn numeric_widens_when_no_digit_is_lost() {
        assert!(widens("numeric(10,2)", "numeric(12,2)"));
        assert!(widens("numeric(10,2)", "numeric(12,4)"));
        assert!(widens("numeric(10,2)", "numeric"));
        assert!(!widens("numeric(12,2)", "numeric(10,2)"));
        assert!(!widens("numeric(10,4)", "numeric(10,2)"));
        assert!(!widens("numeric(10,2)", "numeric(11,4)"));
    }

    #[test]
    fn not_null_fills_from_the_default_or_checks_first() {
        let with = fill_nulls("t", "c", Some("'x'"));
        assert_eq!(with, r#"UPDATE "t" SET "c" = 'x' WHERE "c" IS NULL;"#);
        let without = fill_nulls("t", "c", None);
        assert!(
            without.contains(
                "RAISE EXCEPTION 'cannot make t.c NOT NULL: % row(s) hold NULL', offending"
            ),
            "{without}"
        );
    }

    #[test]
    fn widening_needs_no_flag_narrowing_does() {
        assert!(widens("integer", "bigint"));
        assert!(widens("character varying(20)", "character varying(40)"));
        assert!(widens("character varying(20)", "text"));
        assert!(!widens("bigint", "integer"));
        assert!(!widens("text", "character varying(10)"));
        assert!(!widens("text", "integer"));
    }

    #[test]
    fn not_null_without_default_is_refused_on_existing_tables() {
        let table = TableSchema::new("t").with_column(ColumnDef::new("id", "uuid"));
        let from = DatabaseSchema {
            tables: vec![table.clone()],
            timestamp_function: false,
            notify_function: false,
        };
        let to = DatabaseSchema {
            tables: vec![table.with_column(ColumnDef::new("x", "text"))],
            timestamp_function: false,
            notify_function: false,
        };
        let err = diff(&from, &to).unwrap_err().to_string();
        assert!(err.contains("without a default"), "{err}");
    }
}
