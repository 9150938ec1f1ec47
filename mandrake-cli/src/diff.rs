//! The difference between two schemas as an ordered list of typed changes;
//! [`SchemaChange`] renders each one, and its inverse, to SQL.

use mandrake_storage::schema::ddl::{dependency_order, quote_ident};
use mandrake_storage::schema::{
    Check, ColumnDef, DatabaseSchema, ForeignKey, Index, Renames, TableSchema, Unique,
};
use mandrake_storage::schema::{Function, Object, SchemaChange};
use mandrake_storage::{Error, Result};

/// One change with the SQL that makes it and the SQL that undoes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The change.
    pub change: SchemaChange,
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
}

impl From<SchemaChange> for Step {
    fn from(change: SchemaChange) -> Step {
        Step {
            description: change.description(),
            up: change.up(),
            down: change.inverse().map(|c| c.up()).unwrap_or_default(),
            destructive: change.is_destructive(),
            down_note: change.down_note(),
            change,
        }
    }
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

/// Buckets in the order their changes run; see [`diff`].
#[derive(Default)]
struct Phases {
    create_function: Vec<SchemaChange>,
    renames: Vec<SchemaChange>,
    drop_foreign_keys: Vec<SchemaChange>,
    drop_constraints: Vec<SchemaChange>,
    create_tables: Vec<SchemaChange>,
    add_columns: Vec<SchemaChange>,
    alter_columns: Vec<SchemaChange>,
    drop_columns: Vec<SchemaChange>,
    drop_tables: Vec<SchemaChange>,
    add_constraints: Vec<SchemaChange>,
    add_foreign_keys: Vec<SchemaChange>,
    drop_function: Vec<SchemaChange>,
}

impl Phases {
    fn into_changes(self) -> Vec<SchemaChange> {
        [
            self.create_function,
            self.renames,
            self.drop_foreign_keys,
            // A dropped table may hold the only key to a unique constraint
            // that goes too: the table first (and in a down, the
            // constraint back before the table that points at it).
            self.drop_tables,
            self.drop_constraints,
            self.create_tables,
            self.add_columns,
            self.alter_columns,
            self.drop_columns,
            self.add_constraints,
            self.add_foreign_keys,
            self.drop_function,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Plans the way from `from` (what the migrations build) to `to` (what the
/// types describe), each change rendered with its SQL: see [`changes`].
pub fn diff(from: &DatabaseSchema, to: &DatabaseSchema, hints: &Renames) -> Result<Plan> {
    let changes = changes(from, to, hints)?;
    let steps = changes
        .iter()
        .map(|change| {
            let mut step = Step::from(change.clone());
            if comes_back_computed(change, &changes) {
                step.destructive = false;
            }
            step
        })
        .collect();
    Ok(Plan { steps })
}

/// Whether `change` drops a generated column that `changes` add again under
/// its name (a new expression): nothing is lost, its values are computed
/// anew. Dropping one for good is destructive, as for any column: what
/// reads it breaks.
fn comes_back_computed(change: &SchemaChange, changes: &[SchemaChange]) -> bool {
    let SchemaChange::Drop(Object::Column { table, column }) = change else {
        return false;
    };
    column.generated.is_some()
        && changes.iter().any(|c| {
            matches!(c, SchemaChange::Add(Object::Column { table: t, column: added })
                if t == table && added.name == column.name)
        })
}

/// The typed changes from `from` to `to`, in an order where dependencies
/// hold. Renames come only from `hints`, which name tables and columns as
/// `to` does; a hint already carried out (its old name gone, its new one
/// there) is passed over. A NOT NULL column without a default cannot be
/// added to an existing table (it may hold rows): that is an error with
/// advice.
///
/// ```
/// use mandrake_cli::diff::changes;
/// use mandrake_storage::schema::SchemaChange;
/// use mandrake_storage::schema::{ColumnDef, DatabaseSchema, Renames, TableSchema};
///
/// let notes = |column: &str| DatabaseSchema {
///     tables: vec![TableSchema::new("notes").with_column(ColumnDef::new(column, "text"))],
///     ..DatabaseSchema::default()
/// };
/// let hints = Renames::default().column("notes", "title", "heading");
/// let plan = changes(&notes("title"), &notes("heading"), &hints).unwrap();
/// assert_eq!(plan, [SchemaChange::RenameColumn {
///     table: "notes".into(), from: "title".into(), to: "heading".into(),
/// }]);
/// ```
pub fn changes(
    from: &DatabaseSchema,
    to: &DatabaseSchema,
    hints: &Renames,
) -> Result<Vec<SchemaChange>> {
    let mut phases = Phases::default();
    let mut from = from.clone();

    // Extensions first (an index's operator class may need one), and one
    // the types no longer name last, after what used it. (The comparison
    // leaves out the extensions the user made: only the types' are here.)
    for extension in to
        .extensions
        .iter()
        .filter(|e| !from.extensions.contains(e))
    {
        phases
            .create_function
            .push(SchemaChange::Add(Object::Extension(extension.clone())));
    }
    for extension in from
        .extensions
        .iter()
        .filter(|e| !to.extensions.contains(e))
    {
        phases
            .drop_function
            .push(SchemaChange::Drop(Object::Extension(extension.clone())));
    }

    for (function, had, has) in [
        (
            Function::Timestamp,
            from.timestamp_function,
            to.timestamp_function,
        ),
        (Function::Notify, from.notify_function, to.notify_function),
    ] {
        if has && !had {
            phases
                .create_function
                .push(SchemaChange::Add(Object::Function(function)));
        }
        if had && !has {
            phases
                .drop_function
                .push(SchemaChange::Drop(Object::Function(function)));
        }
    }

    // The feed's publication: before the tables join it, after they leave.
    match (from.feed_publication, to.feed_publication) {
        (false, true) => phases
            .create_function
            .push(SchemaChange::Add(Object::Publication)),
        (true, false) => phases
            .drop_function
            .push(SchemaChange::Drop(Object::Publication)),
        // A publication made before it published TRUNCATE.
        (true, true) if from.feed_publishes_all != to.feed_publishes_all => {
            phases.create_function.push(match to.feed_publishes_all {
                true => SchemaChange::Add(Object::PublicationOptions),
                false => SchemaChange::Drop(Object::PublicationOptions),
            })
        }
        _ => {}
    }

    plan_renames(&mut from, to, hints, &mut phases)?;

    // Tables that appear and disappear.
    let created: Vec<&TableSchema> = to
        .tables
        .iter()
        .filter(|t| from.table(&t.name).is_none())
        .collect();
    for table in dependency_order(&created) {
        phases
            .create_tables
            .push(SchemaChange::Add(Object::Table(table.clone())));
    }
    let dropped: Vec<&TableSchema> = from
        .tables
        .iter()
        .filter(|t| to.table(&t.name).is_none())
        .collect();
    for table in dependency_order(&dropped).into_iter().rev() {
        phases
            .drop_tables
            .push(SchemaChange::Drop(Object::Table(table.clone())));
    }

    for new in &to.tables {
        if let Some(old) = from.table(&new.name) {
            diff_columns(old, new, &mut phases)?;
            diff_constraints(old, new, to, &mut phases);
        }
    }
    Ok(phases.into_changes())
}

/// Renames from `hints`, applied to `from` so the rest of the diff compares
/// like with like.
fn plan_renames(
    from: &mut DatabaseSchema,
    to: &DatabaseSchema,
    hints: &Renames,
    phases: &mut Phases,
) -> Result<()> {
    for table in &to.tables {
        let Some(old) = hints.table_from(&table.name) else {
            continue;
        };
        if from.table(&table.name).is_some() || from.table(old).is_none() {
            continue;
        }
        phases.renames.push(SchemaChange::RenameTable {
            from: old.to_owned(),
            to: table.name.clone(),
        });
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
            let Some(old) = hints
                .column_from(&table.name, &column.name)
                .filter(|old| *old != column.name)
            else {
                continue;
            };
            if let Some((_, first)) = pending.iter().find(|(o, _)| o == old) {
                return Err(Error::Schema(format!(
                    "{}: column {old} cannot be renamed to both {first} and {}",
                    table.name, column.name
                )));
            }
            match (
                current.column(old).is_some(),
                current.column(&column.name).is_some(),
            ) {
                // Renamed: either by this plan, or by an earlier migration.
                (true, _) => pending.push((old.to_owned(), column.name.clone())),
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
        let mut done: Vec<(String, String)> = Vec::new();
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
                    done.push((old, temporary.clone()));
                    pending.push((temporary, new));
                    continue;
                }
            };
            push_column_rename(phases, &table.name, &old, &new);
            rename_column(current, &old, &new);
            done.push((old, new));
        }
        // The keys that point at the renamed columns follow them, as
        // PostgreSQL's own do.
        for (old, new) in done {
            for fk in from.tables.iter_mut().flat_map(|t| &mut t.foreign_keys) {
                if fk.references == table.name {
                    fk.referenced
                        .iter_mut()
                        .filter(|c| **c == old)
                        .for_each(|c| c.clone_from(&new));
                }
            }
        }
    }
    Ok(())
}

fn push_column_rename(phases: &mut Phases, table: &str, old: &str, new: &str) {
    phases.renames.push(SchemaChange::RenameColumn {
        table: table.to_owned(),
        from: old.to_owned(),
        to: new.to_owned(),
    });
}

fn rename_column(table: &mut TableSchema, old: &str, new: &str) {
    let rename = |c: &mut String| {
        if c == old {
            *c = new.to_owned();
        }
    };
    for c in &mut table.columns {
        rename(&mut c.name);
        // As in CHECKs below: the catalog rewrites a generation expression.
        c.generated = c
            .generated
            .as_ref()
            .map(|g| rename_in_expression(g, old, new));
    }
    table.primary_key.iter_mut().for_each(rename);
    for u in &mut table.uniques {
        u.columns.iter_mut().for_each(rename);
    }
    for i in &mut table.indexes {
        i.columns.iter_mut().for_each(rename);
        i.include.iter_mut().for_each(rename);
        i.key = rename_in_expression(&i.key, old, new);
        i.predicate = i
            .predicate
            .as_ref()
            .map(|p| rename_in_expression(p, old, new));
    }
    for fk in &mut table.foreign_keys {
        fk.columns.iter_mut().for_each(rename);
    }
    // PostgreSQL renames the column inside CHECK expressions too (an enum
    // column's check): so must the schema the rest of the diff compares.
    for check in &mut table.checks {
        check.expression = rename_in_expression(&check.expression, old, new);
    }
}

/// `expression` (as PostgreSQL prints it) with the identifier `old` renamed
/// to `new`; string literals and type names after `::` are left alone.
pub(crate) fn rename_in_expression(expression: &str, old: &str, new: &str) -> String {
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
        // After `::` a word names a type (`'mandrake.tenant'::text`), never a column.
        let type_name = out.trim_end().ends_with("::");
        out.push_str(if word == old_printed && !type_name {
            &new_printed
        } else {
            word
        });
        rest = &rest[word_len..];
    }
    out
}

fn diff_columns(old: &TableSchema, new: &TableSchema, phases: &mut Phases) -> Result<()> {
    let table = &new.name;
    for column in &new.columns {
        let Some(before) = old.column(&column.name) else {
            if !column.nullable && column.default.is_none() && column.generated.is_none() {
                return Err(Error::Schema(format!(
                    "cannot add NOT NULL column {}.{} without a default: the table may hold rows. \
                     Give it `#[record(default = \"<sql>\")]`, or add it as an `Option` first, \
                     fill it, then make it required in a later migration",
                    new.name, column.name
                )));
            }
            phases.add_columns.push(SchemaChange::Add(Object::Column {
                table: table.clone(),
                column: column.clone(),
            }));
            continue;
        };
        if before.generated != column.generated {
            // PostgreSQL cannot change a generation expression in place, nor
            // make a column generated: the column is made again, its values
            // computed anew (a computed column loses nothing).
            phases
                .alter_columns
                .push(SchemaChange::Drop(Object::Column {
                    table: table.clone(),
                    column: before.clone(),
                }));
            phases.alter_columns.push(SchemaChange::Add(Object::Column {
                table: table.clone(),
                column: column.clone(),
            }));
            // Its indexes go with it: dropped first, built again after.
            let mentions = |text: &str| rename_in_expression(text, &column.name, "\u{1}") != text;
            let object = |index: &Index| Object::Index {
                table: table.clone(),
                index: index.clone(),
                online: false,
            };
            for index in old.indexes.iter().filter(|i| mentions(&i.key)) {
                phases
                    .drop_constraints
                    .push(SchemaChange::Drop(object(index)));
                if let Some(kept) = new.indexes.iter().find(|n| n.same_as(index)) {
                    phases.add_constraints.push(SchemaChange::Add(object(kept)));
                }
            }
            continue;
        }
        alter_column(table, before, column, phases);
    }
    for column in &old.columns {
        if new.column(&column.name).is_none() {
            phases.drop_columns.push(SchemaChange::Drop(Object::Column {
                table: table.clone(),
                column: column.clone(),
            }));
        }
    }
    Ok(())
}

fn alter_column(table: &str, before: &ColumnDef, after: &ColumnDef, phases: &mut Phases) {
    let (table, column) = (table.to_owned(), after.name.clone());
    // NULLs take the default of the side where the column is required, so
    // that side's type must be in place when they do: a column made
    // optional is made so first (its down, the fill, then runs last), and
    // one made required last.
    let set_required = |required: bool, fill: &Option<String>| SchemaChange::SetRequired {
        table: table.clone(),
        column: column.clone(),
        required,
        fill: fill.clone(),
    };
    if !before.nullable && after.nullable {
        phases
            .alter_columns
            .push(set_required(false, &before.default));
    }
    let retyped = before.sql_type != after.sql_type;
    // The old default may not cast to the new type (`false` to an integer):
    // it goes before the type changes, and the new one is set after.
    if retyped && before.default.is_some() {
        phases.alter_columns.push(SchemaChange::SetDefault {
            table: table.clone(),
            column: column.clone(),
            from: before.default.clone(),
            to: None,
        });
    }
    // A type change resets the compression to the server's default: the old
    // one is reset first (so a down puts it back after the type), and the
    // new one is set after.
    let set_compression =
        |from: &Option<String>, to: &Option<String>| SchemaChange::SetCompression {
            table: table.clone(),
            column: column.clone(),
            from: from.clone(),
            to: to.clone(),
        };
    if retyped && before.compression.is_some() {
        phases
            .alter_columns
            .push(set_compression(&before.compression, &None));
    }
    if retyped {
        phases.alter_columns.push(SchemaChange::AlterType {
            table: table.clone(),
            column: column.clone(),
            from: before.sql_type.clone(),
            to: after.sql_type.clone(),
        });
    }
    let before_default = if retyped {
        None
    } else {
        before.default.clone()
    };
    if before_default != after.default {
        phases.alter_columns.push(SchemaChange::SetDefault {
            table: table.clone(),
            column: column.clone(),
            from: before_default,
            to: after.default.clone(),
        });
    }
    let before_compression = if retyped {
        None
    } else {
        before.compression.clone()
    };
    if before_compression != after.compression {
        phases
            .alter_columns
            .push(set_compression(&before_compression, &after.compression));
    }
    if before.nullable && !after.nullable {
        phases
            .alter_columns
            .push(set_required(true, &after.default));
    }
}

/// Items of `old` and `new` paired by what they do (`same`): those only in
/// `new`, those only in `old`, and the pairs whose names differ.
struct Matched<'a, T> {
    added: Vec<&'a T>,
    dropped: Vec<&'a T>,
    renamed: Vec<(&'a T, &'a T)>,
}

fn matched<'a, T>(
    old: &'a [T],
    new: &'a [T],
    same: impl Fn(&T, &T) -> bool,
    name: impl Fn(&T) -> &str,
) -> Matched<'a, T> {
    let mut out = Matched {
        added: Vec::new(),
        dropped: old
            .iter()
            .filter(|o| !new.iter().any(|n| same(o, n)))
            .collect(),
        renamed: Vec::new(),
    };
    for n in new {
        match old.iter().find(|o| same(o, n)) {
            Some(o) if name(o) != name(n) => out.renamed.push((o, n)),
            Some(_) => {}
            None => out.added.push(n),
        }
    }
    out
}

/// Unique constraints, indexes, foreign keys, checks and the triggers:
/// matched by what they do; a match under another name is renamed.
fn diff_constraints(
    old: &TableSchema,
    new: &TableSchema,
    to: &DatabaseSchema,
    phases: &mut Phases,
) {
    let table = || new.name.clone();
    let rename_constraint = |from: &str, to: &str| SchemaChange::RenameConstraint {
        table: table(),
        from: from.to_owned(),
        to: to.to_owned(),
    };

    let uniques = matched(
        &old.uniques,
        &new.uniques,
        |a, b| a.columns == b.columns,
        |u| &u.name,
    );
    let unique = |unique: &Unique| Object::Unique {
        table: table(),
        unique: unique.clone(),
    };
    let indexes = matched(&old.indexes, &new.indexes, Index::same_as, |i| &i.name);
    let index = |index: &Index| Object::Index {
        table: table(),
        index: index.clone(),
        online: false,
    };
    let same_fk = |a: &ForeignKey, b: &ForeignKey| {
        (&a.columns, &a.references, &a.referenced, a.on_delete)
            == (&b.columns, &b.references, &b.referenced, b.on_delete)
    };
    let keys = matched(&old.foreign_keys, &new.foreign_keys, same_fk, |k| &k.name);
    let checks = matched(
        &old.checks,
        &new.checks,
        |a, b| a.expression == b.expression,
        |c| &c.name,
    );
    let check = |check: &Check| Object::Check {
        table: table(),
        check: check.clone(),
        not_valid: false,
    };

    for (o, n) in uniques.renamed {
        phases.renames.push(rename_constraint(&o.name, &n.name));
    }
    for (o, n) in indexes.renamed {
        phases.renames.push(SchemaChange::RenameIndex {
            from: o.name.clone(),
            to: n.name.clone(),
        });
    }
    for (o, n) in keys.renamed {
        phases.renames.push(rename_constraint(&o.name, &n.name));
    }
    for (o, n) in checks.renamed {
        phases.renames.push(rename_constraint(&o.name, &n.name));
    }
    let adds = (uniques.added.into_iter().map(unique))
        .chain(indexes.added.into_iter().map(index))
        .chain(checks.added.into_iter().map(check));
    phases.add_constraints.extend(adds.map(SchemaChange::Add));
    let drops = (uniques.dropped.into_iter().map(unique))
        .chain(indexes.dropped.into_iter().map(index))
        .chain(checks.dropped.into_iter().map(check));
    phases
        .drop_constraints
        .extend(drops.map(SchemaChange::Drop));
    for key in keys.added {
        phases
            .add_foreign_keys
            .push(SchemaChange::Add(Object::ForeignKey {
                table: table(),
                key: key.clone(),
                not_valid: false,
            }));
    }
    for key in keys.dropped {
        // Its table goes too: the down re-adds it NOT VALID (see Object::ForeignKey).
        phases
            .drop_foreign_keys
            .push(SchemaChange::Drop(Object::ForeignKey {
                table: table(),
                key: key.clone(),
                not_valid: to.table(&key.references).is_none(),
            }));
    }
    diff_keys_and_triggers(old, new, phases);
}

/// The primary key, the timestamp trigger and the notify triggers.
fn diff_keys_and_triggers(old: &TableSchema, new: &TableSchema, phases: &mut Phases) {
    let table = || new.name.clone();
    if new.primary_key != old.primary_key {
        phases
            .drop_constraints
            .push(SchemaChange::Drop(Object::PrimaryKey {
                table: table(),
                name: old.primary_key_name.clone(),
                columns: old.primary_key.clone(),
            }));
        phases
            .add_constraints
            .push(SchemaChange::Add(Object::PrimaryKey {
                table: table(),
                name: new.primary_key_name.clone(),
                columns: new.primary_key.clone(),
            }));
    } else if new.primary_key_name != old.primary_key_name {
        phases.renames.push(SchemaChange::RenameConstraint {
            table: table(),
            from: old.primary_key_name.clone(),
            to: new.primary_key_name.clone(),
        });
    }
    let trigger = || Object::TimestampTrigger { table: table() };
    match (old.timestamp_trigger, new.timestamp_trigger) {
        (false, true) => phases.add_constraints.push(SchemaChange::Add(trigger())),
        (true, false) => phases.drop_constraints.push(SchemaChange::Drop(trigger())),
        _ => {}
    }
    // A changed payload (a foreign key added, dropped or renamed) is a drop
    // and a create.
    if new.notify_triggers != old.notify_triggers {
        let triggers = |columns: &Vec<String>| Object::NotifyTriggers {
            table: table(),
            columns: columns.clone(),
        };
        if let Some(columns) = &old.notify_triggers {
            phases
                .drop_constraints
                .push(SchemaChange::Drop(triggers(columns)));
        }
        if let Some(columns) = &new.notify_triggers {
            phases
                .add_constraints
                .push(SchemaChange::Add(triggers(columns)));
        }
    }
    let feed = || Object::FeedTable { table: table() };
    match (old.feed, new.feed) {
        (false, true) => phases.add_constraints.push(SchemaChange::Add(feed())),
        (true, false) => phases.drop_constraints.push(SchemaChange::Drop(feed())),
        _ => {}
    }
    diff_row_security(old, new, phases);
}

/// Row security, the policies and the lookups: a changed policy or lookup
/// is a drop and a create.
fn diff_row_security(old: &TableSchema, new: &TableSchema, phases: &mut Phases) {
    let table = || new.name.clone();
    diff_parts(&old.policies, &new.policies, phases, |policy| {
        Object::Policy {
            table: table(),
            policy,
        }
    });
    let secured = || Object::RowSecurity { table: table() };
    match (old.row_security, new.row_security) {
        (false, true) => phases.add_constraints.push(SchemaChange::Add(secured())),
        (true, false) => phases.drop_constraints.push(SchemaChange::Drop(secured())),
        _ => {}
    }
    if old.row_security_forced && !new.row_security_forced {
        phases
            .drop_constraints
            .push(SchemaChange::Drop(Object::ForcedRowSecurity {
                table: table(),
            }));
    }
    diff_parts(&old.lookups, &new.lookups, phases, |lookup| {
        Object::Lookup {
            table: table(),
            lookup,
        }
    });
}

/// Drops each of `old` that `new` lacks and adds each of `new` that `old`
/// lacks, as the `object` each is.
fn diff_parts<P: PartialEq + Clone>(
    old: &[P],
    new: &[P],
    phases: &mut Phases,
    object: impl Fn(P) -> Object,
) {
    for part in old.iter().filter(|p| !new.contains(p)) {
        phases
            .drop_constraints
            .push(SchemaChange::Drop(object(part.clone())));
    }
    for part in new.iter().filter(|p| !old.contains(p)) {
        phases
            .add_constraints
            .push(SchemaChange::Add(object(part.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandrake_storage::schema::ddl::{fill_nulls, widens};

    /// `providers` with these columns, and the renames that lead to them.
    fn schema(columns: &[(&str, Option<&str>)]) -> (DatabaseSchema, Renames) {
        let mut table = TableSchema::new("providers").with_column(ColumnDef::new("id", "uuid"));
        let mut hints = Renames::default();
        for (name, old) in columns {
            table = table.with_column(ColumnDef::new(name, "text").nullable(true));
            if let Some(old) = old {
                hints = hints.column("providers", old, name);
            }
        }
        let schema = DatabaseSchema {
            tables: vec![table],
            timestamp_function: false,
            notify_function: false,
            feed_publication: false,
            feed_publishes_all: false,
            extensions: Vec::new(),
        };
        (schema, hints)
    }

    fn diff_of(
        (from, _): &(DatabaseSchema, Renames),
        (to, hints): &(DatabaseSchema, Renames),
    ) -> Result<Plan> {
        diff(from, to, hints)
    }

    fn described(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.description.as_str()).collect()
    }

    /// A type change takes the old default off and puts the new one on:
    /// `check` lists them as two different lines.
    #[test]
    fn a_retyped_column_with_a_default_is_listed_without_a_repeated_line() {
        let reactions = |ty: &str| {
            let mut schema = schema(&[]).0;
            schema.tables[0] = TableSchema::new("reactions")
                .with_column(ColumnDef::new("id", "uuid"))
                .with_column(ColumnDef::new("count", ty).default("0"));
            schema
        };
        let plan = diff(&reactions("integer"), &reactions("bigint"), &Renames::NONE).unwrap();
        assert_eq!(
            described(&plan),
            [
                "drop default of reactions.count",
                "change type of reactions.count from integer to bigint",
                "set default of reactions.count"
            ]
        );
    }

    /// One table, `notes`, before and after an edit: the changes the diff
    /// finds, in order.
    #[test]
    fn each_kind_of_edit_is_one_change() {
        use mandrake_storage::schema::OnDelete;
        let base = || {
            TableSchema::new("notes")
                .with_column(ColumnDef::new("id", "uuid"))
                .with_column(ColumnDef::new("folder_id", "uuid"))
                .with_column(ColumnDef::new("title", "text"))
                .with_column(ColumnDef::new("body", "text").nullable(true))
                .with_primary_key(&["id"])
        };
        let folders = TableSchema::new("folders").with_column(ColumnDef::new("id", "uuid"));
        let db = |t: TableSchema| DatabaseSchema {
            tables: vec![folders.clone(), t],
            timestamp_function: false,
            notify_function: false,
            feed_publication: false,
            feed_publishes_all: false,
            extensions: Vec::new(),
        };
        let edit = |f: &dyn Fn(TableSchema) -> TableSchema| db(f(base()));
        let column = |t: &mut TableSchema, name: &str| -> usize {
            t.columns.iter().position(|c| c.name == name).unwrap()
        };
        type Edit = Box<dyn Fn(TableSchema) -> TableSchema>;
        let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
            ("nothing", Box::new(|t| t), vec![]),
            (
                "add a nullable column",
                Box::new(|t| t.with_column(ColumnDef::new("tags", "text").nullable(true))),
                vec!["add column notes.tags"],
            ),
            (
                "drop a column",
                Box::new(move |mut t| {
                    let i = column(&mut t, "body");
                    t.columns.remove(i);
                    t
                }),
                vec!["drop column notes.body"],
            ),
            (
                "make a column required",
                Box::new(move |mut t| {
                    let i = column(&mut t, "body");
                    t.columns[i].nullable = false;
                    t
                }),
                vec!["require a value in notes.body"],
            ),
            (
                "set a default",
                Box::new(move |mut t| {
                    let i = column(&mut t, "title");
                    t.columns[i].default = Some("'x'".into());
                    t
                }),
                vec!["set default of notes.title"],
            ),
            (
                "add an index",
                Box::new(|t| t.with_index(&["title"])),
                vec!["add index (title) on notes"],
            ),
            (
                "add a unique key",
                Box::new(|t| t.with_unique(&["title"])),
                vec!["add unique (title) on notes"],
            ),
            (
                "add a foreign key",
                Box::new(|t| t.with_foreign_key("folder_id", "folders", OnDelete::Cascade)),
                vec!["add foreign key notes.folder_id → folders (on delete cascade)"],
            ),
            (
                "add an enum check",
                Box::new(|t| t.with_allowed_values("title", &["a", "b"])),
                vec!["add check notes_title_check on notes"],
            ),
            (
                "add the timestamp trigger",
                Box::new(|t| t.with_timestamp_trigger()),
                vec!["create trigger set_timestamp on notes"],
            ),
            (
                "rename a column",
                Box::new(move |mut t| {
                    let i = column(&mut t, "body");
                    t.columns[i].name = "text".into();
                    t
                }),
                vec!["rename column notes.body to text"],
            ),
            (
                "turn notifications on",
                Box::new(|t| {
                    t.with_foreign_key("folder_id", "folders", OnDelete::Cascade)
                        .with_notify()
                }),
                vec![
                    "create publication mandrake_feed",
                    "add change feed of notes",
                    "add foreign key notes.folder_id → folders (on delete cascade)",
                ],
            ),
        ];
        // One hint for every case: it counts only where `to` has notes.text.
        let hints = Renames::default().column("notes", "body", "text");
        for (what, f, expected) in cases {
            let mut to = edit(&*f);
            to.feed_publication = to.tables.iter().any(|t| t.feed);
            to.feed_publishes_all = to.feed_publication;
            let plan = diff(&db(base()), &to, &hints).unwrap();
            assert_eq!(described(&plan), expected, "{what}");
        }
    }

    #[test]
    fn a_table_on_the_notify_triggers_moves_to_the_publication() {
        let notes = || {
            TableSchema::new("notes")
                .with_column(ColumnDef::new("id", "uuid"))
                .with_primary_key(&["id"])
        };
        let mut old = notes();
        old.notify_triggers = Some(Vec::new());
        let from = DatabaseSchema {
            tables: vec![old],
            notify_function: true,
            ..DatabaseSchema::default()
        };
        let to = DatabaseSchema::from_tables(&[&notes().with_notify()]);
        let plan = diff(&from, &to, &Renames::default()).unwrap();
        assert_eq!(
            described(&plan),
            [
                "create function trigger_set_timestamp()",
                "create publication mandrake_feed",
                "drop notify triggers on notes",
                "add change feed of notes",
                "drop function trigger_notify_change()",
            ]
        );
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
            let plan = diff_of(&from, &to).unwrap();
            assert_eq!(
                described(&plan),
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
        let plan = diff_of(&from, &to).unwrap();
        assert_eq!(
            described(&plan),
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
        let err = diff_of(&from, &schema(&[("title", Some("nmae"))])).unwrap_err();
        assert!(
            err.to_string()
                .contains("renamed_from = \"nmae\" names no column"),
            "{err}"
        );
        // Renamed by an earlier migration: the hint stays in the code, harmless.
        let done = schema(&[("title", Some("name"))]);
        let plan = diff_of(&schema(&[("title", None)]), &done).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_hint_to_itself_is_nothing_and_one_column_has_one_new_name() {
        let from = schema(&[("name", None), ("body", None)]);
        let same = diff_of(&from, &schema(&[("name", Some("name")), ("body", None)])).unwrap();
        assert!(same.is_empty(), "{same:?}");
        let twice = schema(&[("title", Some("name")), ("heading", Some("name"))]);
        let err = diff_of(&from, &twice).unwrap_err().to_string();
        assert!(
            err.contains("column name cannot be renamed to both title and heading"),
            "{err}"
        );
    }

    /// Found by `fuzz-diff` (case 568): the down filled NULLs with `false`
    /// while the column was still an integer.
    #[test]
    fn each_fill_runs_in_the_type_of_its_side() {
        let table = |c: ColumnDef| DatabaseSchema {
            tables: vec![TableSchema::new("t").with_column(c)],
            ..DatabaseSchema::default()
        };
        let from = table(ColumnDef::new("c", "boolean").default("false"));
        let to = table(ColumnDef::new("c", "integer").nullable(true).default("0"));
        for (plan, fill, retype) in [
            (
                diff(&from, &to, &Renames::NONE).unwrap().down_sql(),
                "= false",
                "TYPE boolean",
            ),
            (
                diff(&to, &from, &Renames::NONE).unwrap().up_sql(),
                "= false",
                "TYPE boolean",
            ),
        ] {
            let (fill, retype) = (plan.find(fill).unwrap(), plan.find(retype).unwrap());
            assert!(retype < fill, "{plan}");
        }
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
            feed_publication: false,
            feed_publishes_all: false,
            extensions: Vec::new(),
        };
        let to = DatabaseSchema {
            tables: vec![table.with_column(ColumnDef::new("x", "text"))],
            timestamp_function: false,
            notify_function: false,
            feed_publication: false,
            feed_publishes_all: false,
            extensions: Vec::new(),
        };
        let err = diff(&from, &to, &Renames::NONE).unwrap_err().to_string();
        assert!(err.contains("without a default"), "{err}");
    }
}
