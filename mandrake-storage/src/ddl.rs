//! Renders SQL from the schema model: the one place DDL text is made.

use crate::schema::{ColumnDef, ForeignKey, Index, TableSchema, Unique};

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
/// named in the trigger's arguments>}` on the channel `mandrake_<table>`.
/// The payload holds ids only, so it stays far below NOTIFY's 8000-byte
/// limit whatever the row holds; PostgreSQL delivers it at commit, in commit
/// order, and never for a transaction that rolled back.
///
/// The triggers run once per statement over its transition table
/// (`changed_rows`), not once per row: a 100,000-row insert pays a third of
/// what a row trigger costs it.
pub const NOTIFY_FUNCTION: &str = "CREATE OR REPLACE FUNCTION trigger_notify_change()
RETURNS TRIGGER AS $$
DECLARE
  keys TEXT := '';
BEGIN
  FOR i IN 0 .. TG_NARGS - 1 LOOP
    keys := keys || format(', %L, %I', TG_ARGV[i], TG_ARGV[i]);
  END LOOP;
  EXECUTE format(
    'SELECT pg_notify(%L, json_build_object(''op'', %L, ''id'', id%s)::text) FROM changed_rows',
    'mandrake_' || TG_TABLE_NAME, lower(TG_OP), keys);
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;";

/// Drops the notification trigger function.
pub const DROP_NOTIFY_FUNCTION: &str = "DROP FUNCTION IF EXISTS trigger_notify_change();";

/// Quotes an identifier: `order` → `"order"`, `a"b` → `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal: `it's` → `'it''s'`.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `"a", "b"`
pub fn ident_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n))
        .collect::<Vec<_>>()
        .join(", ")
}

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
/// transition table each reads.
pub const NOTIFY_TRIGGERS: [(&str, &str, &str); 3] = [
    ("notify_insert", "INSERT", "NEW"),
    ("notify_update", "UPDATE", "NEW"),
    ("notify_delete", "DELETE", "OLD"),
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
                "CREATE TRIGGER {name} AFTER {event} ON {table} REFERENCING {rows} TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION trigger_notify_change({args});"
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
    let mut sql = String::from(TIMESTAMP_FUNCTION);
    if tables.iter().any(|t| t.notify.is_some()) {
        sql.push_str("\n\n");
        sql.push_str(NOTIFY_FUNCTION);
    }
    for table in dependency_order(tables) {
        sql.push_str("\n\n");
        sql.push_str(&create_table(table));
    }
    sql.push('\n');
    sql
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
