//! Reads a database's schema back from pg_catalog into the schema model.
//!
//! Both sides of a diff are read with these same queries, so PostgreSQL
//! itself normalizes what people write differently: `varchar` and
//! `character varying`, casts in defaults, `IN (…)` and `= ANY (ARRAY[…])`.

use std::collections::BTreeMap;

use sqlx::{PgConnection, Row};

use crate::error::Result;
use crate::schema::{
    Check, ColumnDef, DatabaseSchema, ForeignKey, Index, Lookup, OnDelete, Policy, TableSchema,
    Unique,
};

/// The `public` schema of the database at `url`, read on a connection of its
/// own (see [`inspect`]).
pub async fn inspect_url(url: &str) -> Result<DatabaseSchema> {
    use sqlx::Connection;
    let mut conn = crate::admin::connect_one(url).await?;
    let schema = inspect(&mut conn).await;
    let _ = conn.close().await;
    schema
}

/// The `public` schema of the connected database, without sqlx's bookkeeping table.
pub async fn inspect(conn: &mut PgConnection) -> Result<DatabaseSchema> {
    let mut tables: BTreeMap<String, TableSchema> = BTreeMap::new();

    read_columns(conn, &mut tables).await?;
    read_constraints(conn, &mut tables).await?;
    read_indexes(conn, &mut tables).await?;
    read_triggers(conn, &mut tables).await?;
    read_row_security(conn, &mut tables).await?;
    let function_exists = |name: &'static str| {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'public' AND p.proname = $1)",
        )
        .bind(name)
    };
    let timestamp_function = function_exists("trigger_set_timestamp")
        .fetch_one(&mut *conn)
        .await?;
    let notify_function = function_exists("trigger_notify_change")
        .fetch_one(&mut *conn)
        .await?;

    // `pubgencols` exists from PostgreSQL 18 on: read through JSON, it is
    // absent (NULL) before, where no generated column can be published.
    let publication: Option<bool> = sqlx::query_scalar(
        "SELECT p.pubtruncate AND COALESCE(to_jsonb(p) ->> 'pubgencols', 's') = 's' \
         FROM pg_publication p WHERE p.pubname = $1",
    )
    .bind(crate::schema::FEED_PUBLICATION)
    .fetch_optional(&mut *conn)
    .await?;

    let extensions = sqlx::query_scalar(
        "SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(DatabaseSchema {
        extensions,
        tables: tables.into_values().collect(),
        timestamp_function,
        notify_function,
        feed_publication: publication.is_some(),
        feed_publishes_all: publication == Some(true),
    })
}

/// Every column of every table, in order (and so every table).
async fn read_columns(
    conn: &mut PgConnection,
    tables: &mut BTreeMap<String, TableSchema>,
) -> Result<()> {
    let columns = sqlx::query(
        "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                pg_get_expr(d.adbin, d.adrelid), a.attgenerated = 's', \
                CASE a.attcompression WHEN 'l' THEN 'lz4' WHEN 'p' THEN 'pglz' END \
         FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations' \
         ORDER BY c.relname, a.attnum",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in columns {
        let table: String = row.try_get(0)?;
        let expression: Option<String> = row.try_get(4)?;
        let generated: bool = row.try_get(5)?;
        let entry = tables
            .entry(table.clone())
            .or_insert_with(|| TableSchema::new(&table));
        entry.columns.push(ColumnDef {
            name: row.try_get(1)?,
            sql_type: row.try_get(2)?,
            nullable: !row.try_get::<bool, _>(3)?,
            // A generated column's expression is stored where a default is.
            default: if generated { None } else { expression.clone() },
            generated: if generated { expression } else { None },
            compression: row.try_get(6)?,
        });
    }
    Ok(())
}

/// Primary keys, unique constraints, foreign keys and checks.
async fn read_constraints(
    conn: &mut PgConnection,
    tables: &mut BTreeMap<String, TableSchema>,
) -> Result<()> {
    let constraints = sqlx::query(
        "SELECT c.relname, con.conname, con.contype::text, \
                ARRAY(SELECT a.attname::text FROM unnest(con.conkey) WITH ORDINALITY k(num, ord) \
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num \
                      ORDER BY k.ord), \
                ref.relname, con.confdeltype::text, pg_get_constraintdef(con.oid), \
                ARRAY(SELECT a.attname::text FROM unnest(con.confkey) WITH ORDINALITY k(num, ord) \
                      JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num \
                      ORDER BY k.ord), \
                ARRAY(SELECT a.attname::text \
                      FROM jsonb_array_elements_text(coalesce(nullif(to_jsonb(con) -> 'confdelsetcols', 'null'), '[]')) k(num) \
                      JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num::int2) \
         FROM pg_constraint con \
         JOIN pg_class c ON c.oid = con.conrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_class ref ON ref.oid = con.confrelid \
         WHERE n.nspname = 'public' AND c.relname <> '_sqlx_migrations' \
         ORDER BY c.relname, con.conname",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in constraints {
        let table: String = row.try_get(0)?;
        let Some(t) = tables.get_mut(&table) else {
            continue;
        };
        let name: String = row.try_get(1)?;
        let kind: String = row.try_get(2)?;
        let cols: Vec<String> = row.try_get(3)?;
        match kind.as_str() {
            "p" => {
                t.primary_key = cols;
                t.primary_key_name = name;
            }
            "u" => t.uniques.push(Unique {
                name,
                columns: cols,
            }),
            "f" => {
                // PostgreSQL 15's `SET NULL (columns)`, read through to_jsonb
                // so that older servers (without the column) answer too.
                let set_null: Vec<String> = row.try_get(8)?;
                let keeps_tenant = !set_null.is_empty() && set_null == cols[1..];
                t.foreign_keys.push(ForeignKey {
                    name,
                    references: row.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                    referenced: row.try_get(7)?,
                    on_delete: match row.try_get::<String, _>(5)?.as_str() {
                        "c" => OnDelete::Cascade,
                        "n" if keeps_tenant => OnDelete::SetNullKeepTenant,
                        "n" => OnDelete::SetNull,
                        "r" => OnDelete::Restrict,
                        _ => OnDelete::NoAction,
                    },
                    columns: cols,
                })
            }
            "c" => {
                let def: String = row.try_get(6)?;
                t.checks.push(Check {
                    name,
                    expression: check_expression(&def),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Indexes but those behind a primary key or unique constraint, in
/// PostgreSQL's printed form (`pg_get_indexdef`), taken apart.
async fn read_indexes(
    conn: &mut PgConnection,
    tables: &mut BTreeMap<String, TableSchema>,
) -> Result<()> {
    let indexes = sqlx::query(
        "SELECT c.relname::text, ic.relname::text, i.indisunique, am.amname::text, \
                pg_get_indexdef(i.indexrelid), pg_get_expr(i.indpred, i.indrelid) \
         FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indrelid \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_am am ON am.oid = ic.relam \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relname <> '_sqlx_migrations' \
           AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conindid = i.indexrelid) \
         ORDER BY c.relname, ic.relname",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in indexes {
        let table: String = row.try_get(0)?;
        let definition: String = row.try_get(4)?;
        let method: String = row.try_get(3)?;
        let (key, include) = index_parts(&definition, &method);
        if let Some(t) = tables.get_mut(&table) {
            t.indexes.push(Index {
                name: row.try_get(1)?,
                columns: key_columns(&key),
                unique: row.try_get(2)?,
                method,
                key,
                include,
                predicate: row.try_get(5)?,
            });
        }
    }
    Ok(())
}

/// From `CREATE INDEX … USING gin (content gin_trgm_ops) INCLUDE (a, b) WHERE …`:
/// the key inside the parentheses after the method, and the included columns.
fn index_parts(definition: &str, method: &str) -> (String, Vec<String>) {
    let using = format!(" USING {method} (");
    let Some(start) = definition.find(&using).map(|i| i + using.len()) else {
        return (String::new(), Vec::new());
    };
    let end = closing_paren(definition, start);
    let key = definition[start..end].to_owned();
    let rest = &definition[end + 1..];
    let include = rest
        .strip_prefix(" INCLUDE (")
        .map(|r| &r[..closing_paren(r, 0)])
        .map(|list| {
            list.split(", ")
                .map(|c| c.trim_matches('"').to_owned())
                .collect()
        })
        .unwrap_or_default();
    (key, include)
}

/// The index of the `)` closing the `(` just before `from`.
fn closing_paren(text: &str, from: usize) -> usize {
    let mut depth = 1;
    let mut quoted = false;
    for (i, c) in text[from..].char_indices() {
        match c {
            '\'' | '"' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return from + i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

/// The plain columns a key starts with: `a, b text_pattern_ops, lower(c)`
/// gives `a, b`; an expression ends them.
fn key_columns(key: &str) -> Vec<String> {
    let mut columns = Vec::new();
    for element in key.split(", ") {
        let first = element.split(' ').next().unwrap_or("");
        let plain = first.trim_matches('"');
        let identifier = !plain.is_empty()
            && !first.contains('(')
            && plain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || first.starts_with('"'));
        if !identifier {
            break;
        }
        columns.push(plain.to_owned());
    }
    columns
}

/// The `set_timestamp` and old notify triggers, and which tables are in the feed.
async fn read_triggers(
    conn: &mut PgConnection,
    tables: &mut BTreeMap<String, TableSchema>,
) -> Result<()> {
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_trigger tg \
         JOIN pg_class c ON c.oid = tg.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_proc p ON p.oid = tg.tgfoid \
         WHERE n.nspname = 'public' AND NOT tg.tgisinternal \
           AND tg.tgname = 'set_timestamp' AND p.proname = 'trigger_set_timestamp'",
    )
    .fetch_all(&mut *conn)
    .await?;
    for table in triggers {
        if let Some(t) = tables.get_mut(&table) {
            t.timestamp_trigger = true;
        }
    }

    // A table notifies when it has all three triggers with one payload; the
    // arguments are stored as NUL-terminated strings.
    let notify_triggers = sqlx::query(
        "SELECT c.relname::text, (array_agg(tg.tgargs))[1] FROM pg_trigger tg \
         JOIN pg_class c ON c.oid = tg.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_proc p ON p.oid = tg.tgfoid \
         WHERE n.nspname = 'public' AND NOT tg.tgisinternal \
           AND tg.tgname IN ('notify_insert', 'notify_update', 'notify_delete') \
           AND p.proname = 'trigger_notify_change' \
         GROUP BY c.relname HAVING count(*) = 3 AND count(DISTINCT tg.tgargs) = 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in notify_triggers {
        let table: String = row.try_get(0)?;
        let args: Vec<u8> = row.try_get(1)?;
        if let Some(t) = tables.get_mut(&table) {
            t.notify_triggers = Some(
                args.split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            );
        }
    }

    // In the feed: published, and logging whole old rows (a table published
    // without them is not what the feed decodes, so not in it).
    let published: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_publication_tables pt \
         JOIN pg_namespace n ON n.nspname = pt.schemaname \
         JOIN pg_class c ON c.relname = pt.tablename AND c.relnamespace = n.oid \
         WHERE pt.pubname = $1 AND pt.schemaname = 'public' AND c.relreplident = 'f'",
    )
    .bind(crate::schema::FEED_PUBLICATION)
    .fetch_all(&mut *conn)
    .await?;
    for table in published {
        if let Some(t) = tables.get_mut(&table) {
            t.feed = true;
        }
    }
    Ok(())
}

/// Row security (enabled, and whether forced on the owner), the policies,
/// their conditions as PostgreSQL prints them, and the lookups.
async fn read_row_security(
    conn: &mut PgConnection,
    tables: &mut BTreeMap<String, TableSchema>,
) -> Result<()> {
    let secured: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, c.relforcerowsecurity FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relrowsecurity",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (table, forced) in secured {
        if let Some(t) = tables.get_mut(&table) {
            t.row_security = true;
            t.row_security_forced = forced;
        }
    }
    read_lookups(conn, tables).await?;
    let policies = sqlx::query(
        "SELECT c.relname::text, p.polname::text, \
                COALESCE(pg_get_expr(p.polqual, p.polrelid), ''), \
                COALESCE(pg_get_expr(p.polwithcheck, p.polrelid), '') \
         FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'public' ORDER BY 1, 2",
    )
    .fetch_all(&mut *conn)
    .await?;
    for row in policies {
        let table: String = row.try_get(0)?;
        if let Some(t) = tables.get_mut(&table) {
            t.policies.push(Policy {
                name: row.try_get(1)?,
                using: row.try_get(2)?,
                check: row.try_get(3)?,
            });
        }
    }
    Ok(())
}

/// The lookup functions, known by the comment [`super::ddl::create_lookup`]
/// gives them, which says what each is.
async fn read_lookups(
    conn: &mut PgConnection,
    tables: &mut BTreeMap<String, TableSchema>,
) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Comment {
        mandrake_lookup: Described,
    }
    #[derive(serde::Deserialize)]
    struct Described {
        table: String,
        lookup: Lookup,
    }
    let comments: Vec<String> = sqlx::query_scalar(
        "SELECT d.description FROM pg_proc p JOIN pg_description d \
           ON d.objoid = p.oid AND d.classoid = 'pg_proc'::regclass \
         WHERE p.pronamespace = 'public'::regnamespace AND p.prosecdef \
           AND d.description LIKE '{\"mandrake_lookup\":%' ORDER BY p.proname",
    )
    .fetch_all(&mut *conn)
    .await?;
    for comment in comments {
        let Ok(Comment {
            mandrake_lookup: Described { table, lookup },
        }) = serde_json::from_str(&comment)
        else {
            continue;
        };
        if let Some(t) = tables.get_mut(&table) {
            t.lookups.push(lookup);
        }
    }
    Ok(())
}

/// `CHECK ((a > 0))` → `(a > 0)`: what goes inside `CHECK ( … )`.
fn check_expression(def: &str) -> String {
    let inner = def.strip_prefix("CHECK ").unwrap_or(def);
    let inner = inner.strip_suffix(" NOT VALID").unwrap_or(inner);
    inner
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(inner)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_expression_drops_the_keyword_and_outer_parens() {
        assert_eq!(
            check_expression("CHECK ((role = ANY (ARRAY['a'::text])))"),
            "(role = ANY (ARRAY['a'::text]))"
        );
    }
}
