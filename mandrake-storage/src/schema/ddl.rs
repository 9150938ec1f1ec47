//! Renders SQL from the schema model: the one place DDL text is made.

use crate::schema::{
    Check, ColumnDef, ForeignKey, Index, Lookup, LookupKind, OnDelete, TableSchema, Unique,
};

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
    if let Some(method) = &column.compression {
        sql.push_str(" COMPRESSION ");
        sql.push_str(method);
    }
    if !column.nullable {
        sql.push_str(" NOT NULL");
    }
    if let Some(default) = &column.default {
        sql.push_str(" DEFAULT ");
        sql.push_str(default);
    }
    if let Some(expression) = &column.generated {
        sql.push_str(&format!(" GENERATED ALWAYS AS ({expression}) STORED"));
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
    let action = match fk.on_delete {
        OnDelete::SetNullKeepTenant => format!("SET NULL ({})", ident_list(&fk.columns[1..])),
        other => other.sql().to_owned(),
    };
    format!(
        "CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}({}) ON DELETE {action}",
        quote_ident(&fk.name),
        ident_list(&fk.columns),
        quote_ident(&fk.references),
        ident_list(&fk.referenced).replace(", ", ","),
    )
}

/// `CREATE INDEX` for `index` on `table`.
pub fn create_index(table: &str, index: &Index) -> String {
    format!("{};", index_statement(table, index, ""))
}

/// `CREATE [UNIQUE] INDEX <how><name> ON <table> [USING m] (<key>) [INCLUDE
/// (…)] [WHERE …]`; b-tree, the default, is left unsaid.
fn index_statement(table: &str, index: &Index, how: &str) -> String {
    let mut sql = format!(
        "CREATE {}INDEX {how}{} ON {}",
        if index.unique { "UNIQUE " } else { "" },
        quote_ident(&index.name),
        quote_ident(table)
    );
    if index.method != "btree" {
        sql.push_str(&format!(" USING {}", index.method));
    }
    sql.push_str(&format!(" ({})", index.key));
    if !index.include.is_empty() {
        sql.push_str(&format!(" INCLUDE ({})", ident_list(&index.include)));
    }
    if let Some(predicate) = &index.predicate {
        sql.push_str(&format!(" WHERE {predicate}"));
    }
    sql
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

/// On PostgreSQL 18 and later the feed's publication publishes stored
/// generated columns: with `REPLICA IDENTITY FULL`, 18 refuses every
/// `UPDATE` and `DELETE` of a table whose generated column it does not
/// publish (42P10). Earlier versions have no such option and publish none
/// (the feed computes them).
macro_rules! publish_generated_columns {
    () => {
        "DO $$ BEGIN IF current_setting('server_version_num')::int >= 180000 THEN \
         EXECUTE 'ALTER PUBLICATION mandrake_feed SET (publish_generated_columns = stored)'; \
         END IF; END $$;"
    };
}

/// The feed's publication, made empty; [`publish`] adds each table. A
/// `TRUNCATE` is published too (a consumer hears of it as a gap), and on
/// PostgreSQL 18 the stored generated columns.
pub const CREATE_PUBLICATION: &str = concat!(
    "CREATE PUBLICATION mandrake_feed WITH (publish = 'insert, update, delete, truncate');\n",
    publish_generated_columns!()
);

/// The publication of a database made before it published `TRUNCATE` (and
/// on 18 generated columns), brought up to date.
pub const PUBLISH_OPTIONS: &str = concat!(
    "ALTER PUBLICATION mandrake_feed SET (publish = 'insert, update, delete, truncate');\n",
    publish_generated_columns!()
);

/// [`PUBLISH_OPTIONS`] undone: generated columns stay published (taking
/// them out would break every update on 18).
pub const PUBLISH_OPTIONS_BEFORE: &str =
    "ALTER PUBLICATION mandrake_feed SET (publish = 'insert, update, delete');";

/// Drops the feed's publication.
pub const DROP_PUBLICATION: &str = "DROP PUBLICATION IF EXISTS mandrake_feed;";

/// Puts `table` in the feed: the whole old row logged with each update and
/// delete (so a subscriber's filter sees what a row was, and a value
/// TOAST kept unchanged is known), and the table in the publication.
pub fn publish(table: &str) -> String {
    let table = quote_ident(table);
    format!(
        "ALTER TABLE {table} REPLICA IDENTITY FULL;\n\
         ALTER PUBLICATION mandrake_feed ADD TABLE {table};"
    )
}

/// Takes `table` out of the feed ([`publish`] undone).
pub fn unpublish(table: &str) -> String {
    let table = quote_ident(table);
    format!(
        "ALTER PUBLICATION mandrake_feed DROP TABLE {table};\n\
         ALTER TABLE {table} REPLICA IDENTITY DEFAULT;"
    )
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
    if let Some(columns) = &table.notify_triggers {
        sql.push('\n');
        sql.push_str(&create_notify_triggers(&table.name, columns));
    }
    if table.feed {
        sql.push('\n');
        sql.push_str(&publish(&table.name));
    }
    if table.row_security {
        sql.push('\n');
        sql.push_str(&enable_row_security(&table.name));
    }
    for policy in &table.policies {
        sql.push('\n');
        sql.push_str(&create_policy(&table.name, policy));
    }
    for lookup in &table.lookups {
        sql.push('\n');
        sql.push_str(&create_lookup(&table.name, lookup));
    }
    sql
}

/// Row security on for every role but the tables' owner, which runs the
/// migrations and the lookups ([`crate::schema::Lookup`]) and is trusted
/// as a superuser is: a tenant handle on it is refused
/// ([`crate::Error::RowSecurityBypassed`]).
pub fn enable_row_security(table: &str) -> String {
    format!(
        "ALTER TABLE {} ENABLE ROW LEVEL SECURITY;",
        quote_ident(table)
    )
}

/// Row security off.
pub fn disable_row_security(table: &str) -> String {
    format!(
        "ALTER TABLE {} DISABLE ROW LEVEL SECURITY;",
        quote_ident(table)
    )
}

/// Row security held to the owner too (`FORCE`), as tenant-scoped tables
/// were made before the lookups.
pub fn force_row_security(table: &str) -> String {
    format!(
        "ALTER TABLE {} FORCE ROW LEVEL SECURITY;",
        quote_ident(table)
    )
}

/// The owner left out of row security again.
pub fn unforce_row_security(table: &str) -> String {
    format!(
        "ALTER TABLE {} NO FORCE ROW LEVEL SECURITY;",
        quote_ident(table)
    )
}

/// The function of a [`Lookup`]: the ids of the current tenant's rows of
/// `table` that match, found through the column's index. It runs as the
/// owner, whom row security leaves out, so it keeps to the tenant itself;
/// the matches are found first (`MATERIALIZED`) so that the planner never
/// prefers the tenant column's index, which holds a tenant's every row.
/// Without a tenant, only a session whose role reads every row anyway
/// gets every match. `search_path` is pinned, as a `SECURITY DEFINER`
/// function's must be. Its comment says what it is, for introspection.
pub fn create_lookup(table: &str, lookup: &Lookup) -> String {
    let t = crate::sql::quote_table(table);
    let column = quote_ident(&lookup.column);
    let matching = |condition: String| {
        format!(
            "RETURN QUERY WITH hits AS MATERIALIZED (SELECT \"id\", {tenant} AS tenant FROM {t} \
             WHERE {condition}) SELECT hits.\"id\" FROM hits \
             WHERE current_tenant IS NULL OR hits.tenant = current_tenant;",
            tenant = quote_ident(&lookup.tenant),
        )
    };
    let (arguments, body) = match lookup.kind {
        LookupKind::Matches => (
            "query tsquery",
            matching(format!(
                "{} @@ query",
                quote_ident(&crate::schema::search_vector(&lookup.column))
            )),
        ),
        LookupKind::Like => (
            "pattern text, ignore_case boolean",
            format!(
                "IF ignore_case THEN\n    {}\n  ELSE\n    {}\n  END IF;",
                matching(format!("{column} ILIKE pattern")),
                matching(format!("{column} LIKE pattern"))
            ),
        ),
    };
    let comment = serde_json::json!({ "mandrake_lookup": { "table": table, "lookup": lookup } });
    format!(
        "CREATE FUNCTION {name}({arguments}) RETURNS SETOF uuid\n\
         LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$\n\
         DECLARE\n  current_tenant uuid := NULLIF(current_setting({setting}, true), '')::uuid;\n\
         BEGIN\n  \
         IF current_tenant IS NULL AND NOT EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = \
         session_user AND (r.rolsuper OR r.rolbypassrls OR pg_has_role(session_user, \
         (SELECT c.relowner FROM pg_class c WHERE c.oid = {table_oid}::regclass), 'USAGE'))) THEN\n    \
         RETURN;\n  END IF;\n  {body}\nEND\n$$;\n\
         COMMENT ON FUNCTION {name}({arguments}) IS {comment};",
        name = lookup_function(lookup),
        setting = quote_literal(crate::schema::TENANT_SETTING),
        table_oid = quote_literal(&t),
        comment = quote_literal(&comment.to_string()),
    )
}

/// Drops a [`Lookup`]'s function.
pub fn drop_lookup(lookup: &Lookup) -> String {
    let arguments = match lookup.kind {
        LookupKind::Matches => "tsquery",
        LookupKind::Like => "text, boolean",
    };
    format!("DROP FUNCTION {}({arguments});", lookup_function(lookup))
}

/// A [`Lookup`]'s function, schema-qualified as the tables are.
pub fn lookup_function(lookup: &Lookup) -> String {
    crate::sql::quote_table(&lookup.name)
}

/// `CREATE POLICY` for every command and role.
pub fn create_policy(table: &str, policy: &crate::schema::Policy) -> String {
    format!(
        "CREATE POLICY {} ON {} USING ({}) WITH CHECK ({});",
        quote_ident(&policy.name),
        quote_ident(table),
        policy.using,
        policy.check
    )
}

/// `DROP POLICY`.
pub fn drop_policy(table: &str, name: &str) -> String {
    format!(
        "DROP POLICY {} ON {};",
        quote_ident(name),
        quote_ident(table)
    )
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
/// in dependency order, a tenant-scoped table's keys to another carrying
/// the tenant ([`crate::schema::with_tenant_keys`]). This is what
/// `cargo xtask schema` prints.
pub fn create_schema(tables: &[&TableSchema]) -> String {
    let keyed = crate::schema::with_tenant_keys(tables);
    let tables: Vec<&TableSchema> = keyed.iter().collect();
    let tables = tables.as_slice();
    let mut parts: Vec<String> = crate::schema::extensions_of(tables)
        .iter()
        .map(|e| create_extension(e))
        .collect();
    parts.push(TIMESTAMP_FUNCTION.to_owned());
    if tables.iter().any(|t| t.notify_triggers.is_some()) {
        parts.push(NOTIFY_FUNCTION.to_owned());
    }
    if tables.iter().any(|t| t.feed) {
        parts.push(CREATE_PUBLICATION.to_owned());
    }
    parts.extend(dependency_order(tables).into_iter().map(create_table));
    parts.join("\n\n") + "\n"
}

/// `CREATE EXTENSION IF NOT EXISTS`: an extension another part of the
/// database (or the user) made already is fine.
pub fn create_extension(name: &str) -> String {
    // Checked first, so that a managed service's owner (not a superuser)
    // learns which extension and where its service allows it, instead of
    // the server's bare "permission denied to create extension".
    let literal = quote_literal(name);
    format!(
        "DO $$ BEGIN\n  \
         IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = {literal})\n    \
         AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)\n    \
         AND NOT EXISTS (SELECT 1 FROM pg_available_extension_versions \
         WHERE name = {literal} AND trusted) THEN\n    \
         RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',\n      \
         MESSAGE = format('extension %s is not trusted, and role %s is not a superuser', \
         {literal}, current_user),\n      \
         HINT = {hint};\n  \
         END IF;\nEND $$;\nCREATE EXTENSION IF NOT EXISTS {};",
        quote_ident(name),
        hint = quote_literal(
            "a superuser must create it once (CREATE EXTENSION); on RDS and Aurora the master \
             user (rds_superuser) can, on Azure allow-list it in the server parameter \
             azure.extensions, on Neon and Supabase only the extensions they list can be made"
        ),
    )
}

/// `CREATE INDEX CONCURRENTLY`, alone: a `-- no-transaction` file holds
/// one statement, since sqlx's migrator sends such a file as one query,
/// which PostgreSQL runs as one implicit transaction.
///
/// No `IF NOT EXISTS`: a build that fails leaves its index INVALID, and a
/// rerun must stop on it ("already exists") rather than skip it and report
/// success with an index no query can use.
pub fn create_index_concurrently(table: &str, index: &Index) -> String {
    format!(
        "{ROBUST_INDEX}\n{};",
        index_statement(table, index, "CONCURRENTLY ")
    )
}

/// The unique index a unique constraint then takes over
/// ([`add_unique_using_index`]), built like [`create_index_concurrently`].
pub fn create_unique_index_concurrently(table: &str, unique: &Unique) -> String {
    format!(
        "{ROBUST_INDEX}\nCREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({});",
        quote_ident(&unique.name),
        quote_ident(table),
        ident_list(&unique.columns)
    )
}

/// Why a concurrent build has no `IF NOT EXISTS`, for squawk, which asks for it.
const ROBUST_INDEX: &str = "-- squawk-ignore prefer-robust-stmts -- a failed build leaves an \
     INVALID index: a rerun must stop on it, not skip it";

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

pub(crate) fn drop_constraint(table: &str, name: &str) -> String {
    format!(
        "ALTER TABLE {} DROP CONSTRAINT {};",
        quote_ident(table),
        quote_ident(name)
    )
}

/// The precision and scale of `numeric(p, s)` (`numeric(p)` has scale 0);
/// `None` for any other type, unbounded `numeric` too.
fn numeric_digits(t: &str) -> Option<(u32, u32)> {
    let inner = t.strip_prefix("numeric(")?.strip_suffix(')')?;
    let (p, s) = inner.split_once(',').unwrap_or((inner, "0"));
    Some((p.trim().parse().ok()?, s.trim().parse().ok()?))
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
    match (numeric_digits(from), numeric_digits(to), to) {
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

/// Type changes PostgreSQL makes in the catalog alone, with neither a
/// rewrite nor a scan under its lock: a longer or unbounded `varchar`, a
/// `varchar` to `text`, a `numeric` with more digits and the same scale.
pub fn retypes_in_place(from: &str, to: &str) -> bool {
    let varchar = |t: &str| t == "text" || t.starts_with("character varying");
    if varchar(from) && (to == "text" || to == "character varying") {
        return true;
    }
    match (numeric_digits(from), numeric_digits(to)) {
        (Some(_), None) => to == "numeric",
        (Some((p1, s1)), Some((p2, s2))) => s1 == s2 && p2 >= p1,
        _ => from.starts_with("character varying(") && widens(from, to),
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
pub(crate) fn check_rows(table: &str, check: &Check) -> String {
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
    if let Some((p, s)) = numeric_digits(to) {
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
    cast(&quote_ident(column), from, to)
}

/// `value` (an SQL expression of type `from`) as a `to`, as a type change
/// converts it: `flag::integer::bigint`, `n <> 0` for a boolean.
pub fn cast(value: &str, from: &str, to: &str) -> String {
    let c = value;
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
pub(crate) fn retype(table: &str, column: &str, from: &str, to: &str) -> String {
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
