//! Query analysis: which repository calls cost the most, from PostgreSQL's
//! `pg_stat_statements`, each statement matched to its table and operation.

use sqlx::Row;

use mandrake_storage::admin::connect_one;
use mandrake_storage::schema::TableSchema;
use mandrake_storage::{Error, Result};

/// One statement's totals since the last reset.
#[derive(Debug, Clone, PartialEq)]
pub struct TopRow {
    /// The statement as PostgreSQL recorded it (values are `$n`).
    pub query: String,
    /// Times it ran.
    pub calls: i64,
    /// Time spent in it, all calls together, in milliseconds.
    pub total_ms: f64,
    /// The mean time of a call, in milliseconds.
    pub mean_ms: f64,
    /// Rows it returned or changed, all calls together.
    pub rows: i64,
    /// The table and repository operation it belongs to, when it is one of
    /// the statements the repository builds.
    pub origin: Option<(String, &'static str)>,
}

/// `rows` as `db top` prints them: a header, then a line a statement with
/// its text cut to 70 characters, or with `full` the whole statement on an
/// indented line of its own under its numbers.
pub fn render(rows: &[TopRow], full: bool) -> String {
    let mut out = format!(
        "{:>8} {:>11} {:>9} {:>9}  {:<28} statement\n",
        "calls", "total ms", "mean ms", "rows", "table.operation"
    );
    for row in rows {
        let origin = row
            .origin
            .as_ref()
            .map(|(table, op)| format!("{table}.{op}"))
            .unwrap_or_else(|| "-".into());
        let mut query: String = row.query.split_whitespace().collect::<Vec<_>>().join(" ");
        let numbers = format!(
            "{:>8} {:>11.1} {:>9.3} {:>9}",
            row.calls, row.total_ms, row.mean_ms, row.rows
        );
        if full {
            out.push_str(&format!("{numbers}  {origin}\n    {query}\n\n"));
            continue;
        }
        if query.chars().count() > 70 {
            query = query.chars().take(69).collect::<String>() + "…";
        }
        out.push_str(&format!("{numbers}  {origin:<28} {query}\n"));
    }
    out
}

const HOW_TO_ENABLE: &str = "pg_stat_statements is not enabled on this server: add \
     `shared_preload_libraries = 'pg_stat_statements'` to postgresql.conf, restart the server, \
     and run `CREATE EXTENSION pg_stat_statements` in the database (the embedded cluster does \
     all of this itself)";

/// The `limit` statements of the database at `url` that took the most time.
/// Creates the extension when the server has the library loaded.
pub async fn top(url: &str, tables: &[&TableSchema], limit: i64) -> Result<Vec<TopRow>> {
    let mut conn = connect_one(url).await?;
    ensure_extension(&mut conn).await?;
    let rows = sqlx::query(
        "SELECT query, calls, total_exec_time, mean_exec_time, rows FROM pg_stat_statements \
         WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY total_exec_time DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut conn)
    .await?;
    rows.iter()
        .map(|r| {
            let query: String = r.try_get(0)?;
            Ok(TopRow {
                origin: classify(&query, tables),
                query,
                calls: r.try_get(1)?,
                total_ms: r.try_get(2)?,
                mean_ms: r.try_get(3)?,
                rows: r.try_get(4)?,
            })
        })
        .collect()
}

/// Forgets the statistics of the whole server.
pub async fn reset(url: &str) -> Result<()> {
    let mut conn = connect_one(url).await?;
    ensure_extension(&mut conn).await?;
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(&mut conn)
        .await?;
    Ok(())
}

async fn ensure_extension(conn: &mut sqlx::PgConnection) -> Result<()> {
    let loaded: bool = sqlx::query_scalar(
        "SELECT 'pg_stat_statements' = ANY(string_to_array(current_setting('shared_preload_libraries'), ', '))",
    )
    .fetch_one(&mut *conn)
    .await?;
    if !loaded {
        return Err(Error::Config(HOW_TO_ENABLE.into()));
    }
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::Config(format!("{HOW_TO_ENABLE} ({e})")))?;
    Ok(())
}

/// The table and repository operation a statement text belongs to, read from
/// the forms `Repo` builds them in.
pub fn classify(sql: &str, tables: &[&TableSchema]) -> Option<(String, &'static str)> {
    let table = tables
        .iter()
        .map(|t| &t.name)
        .find(|name| {
            let quoted = mandrake_storage::schema::quote_table(name);
            ["FROM ", "INTO ", "UPDATE "]
                .iter()
                .any(|kw| sql.contains(&format!("{kw}{quoted}")))
        })?
        .clone();
    let s = sql.trim_start();
    let op = if s.starts_with("INSERT") {
        match (
            s.contains("UNNEST"),
            s.contains("ON CONFLICT"),
            s.contains("DO NOTHING"),
        ) {
            (_, true, true) => "insert_or_ignore",
            (true, true, _) => "upsert_many",
            (false, true, _) => "upsert",
            (true, false, _) => "create_many",
            (false, false, _) => "create",
        }
    } else if s.starts_with("WITH input") {
        "upsert_many"
    } else if s.starts_with("WITH updated AS (UPDATE") {
        "update"
    } else if s.starts_with("UPDATE") {
        if s.contains(r#"WHERE "id" = $1 RETURNING"#) {
            "update"
        } else {
            "update_where"
        }
    } else if s.starts_with("DELETE") {
        if s.ends_with(r#"WHERE "id" = $1"#) {
            "delete"
        } else {
            "delete_where"
        }
    } else if s.starts_with("SELECT count(*)") {
        "count"
    } else if s.starts_with("SELECT EXISTS") {
        "exists"
    } else if s.starts_with("SELECT x.*, p.parent") {
        "load_by"
    } else if s.contains(r#"WHERE "id" = ANY($1)"#) {
        "get_many"
    } else if s.contains("count(*) FROM") {
        "count_by"
    } else if s.ends_with(r#"WHERE "id" = $1"#)
        || s.contains(r#"WHERE "id" = $1"#) && !s.contains("ORDER BY")
    {
        "get"
    } else if s.starts_with("SELECT") {
        "list"
    } else {
        return None;
    };
    Some((table, op))
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_cuts_statements_unless_full() {
        let long = format!(
            "SELECT {} FROM \"public\".\"messages\"\n  WHERE \"id\" = $1",
            "\"content\", ".repeat(12)
        );
        let rows = [super::TopRow {
            query: long.clone(),
            calls: 3,
            total_ms: 1.5,
            mean_ms: 0.5,
            rows: 3,
            origin: Some(("messages".into(), "get")),
        }];
        let cut = super::render(&rows, false);
        let line = cut.lines().nth(1).unwrap();
        assert!(
            line.contains("messages.get") && line.ends_with('…'),
            "{cut}"
        );
        assert!(!cut.contains("WHERE"), "{cut}");
        let whole = super::render(&rows, true);
        let flat = long.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(whole.contains(&format!("\n    {flat}\n")), "{whole}");
    }

    use super::*;
    use mandrake_storage::schema::ColumnDef;

    #[test]
    fn statements_are_matched_to_their_operation() {
        let t = TableSchema::new("notes").with_column(ColumnDef::new("id", "UUID"));
        let tables = [&t];
        let op = |sql: &str| classify(sql, &tables).map(|(_, op)| op);
        assert_eq!(
            op(r#"INSERT INTO "public"."notes" ("id") VALUES ($1) RETURNING "id""#),
            Some("create")
        );
        assert_eq!(
            op(
                r#"INSERT INTO "public"."notes" ("id") SELECT c0::UUID FROM UNNEST($1::UUID[]) AS u(c0) RETURNING "id""#
            ),
            Some("create_many")
        );
        assert_eq!(
            op(
                r#"INSERT INTO "public"."notes" ("id") VALUES ($1) ON CONFLICT ("id") DO NOTHING RETURNING "id""#
            ),
            Some("insert_or_ignore")
        );
        assert_eq!(
            op(r#"SELECT "id" FROM "public"."notes" WHERE "id" = $1"#),
            Some("get")
        );
        assert_eq!(
            op(r#"SELECT "id" FROM "public"."notes" WHERE "id" = ANY($1)"#),
            Some("get_many")
        );
        assert_eq!(
            op(r#"SELECT "id" FROM "public"."notes" WHERE "id" > $1 ORDER BY "id" ASC LIMIT $2"#),
            Some("list")
        );
        assert_eq!(
            op(r#"SELECT count(*) FROM "public"."notes""#),
            Some("count")
        );
        assert_eq!(
            op(r#"DELETE FROM "public"."notes" WHERE "id" = $1"#),
            Some("delete")
        );
        assert_eq!(
            op(r#"DELETE FROM "public"."notes" WHERE "id" IS NULL"#),
            Some("delete_where")
        );
        assert_eq!(op("SELECT 1"), None);
        assert_eq!(op(r#"SELECT * FROM "public"."other""#), None);
    }
}
