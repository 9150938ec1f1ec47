//! SQL text primitives: quoting identifiers and literals. Every SQL text the
//! crate builds quotes through these; values themselves are always bound.

/// Quotes an identifier: `order` → `"order"`, `a"b` → `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The schema the records' tables live in (the migrations create them
/// there; introspection reads it).
pub const SCHEMA: &str = "public";

/// A record's table as the statements the crate builds name it: with its
/// schema, `"public"."notes"`, so that a temporary table of the same name,
/// which PostgreSQL would look up first, never stands in for it.
pub fn quote_table(name: &str) -> String {
    format!("{}.{}", quote_ident(SCHEMA), quote_ident(name))
}

/// Quotes a string literal: `it's` → `'it''s'`.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `"a", "b"`
pub fn ident_list(names: &[impl AsRef<str>]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The SQL of the value at `keys` in `column` (already quoted):
/// `(column -> 'a' ->> 'b')`, cast if asked. Each key is a string literal,
/// its quotes doubled.
pub(crate) fn path_sql(column: &str, keys: &[String], cast: Option<&str>) -> String {
    let mut sql = format!("({column}");
    for (n, key) in keys.iter().enumerate() {
        let arrow = if n + 1 == keys.len() { "->>" } else { "->" };
        sql.push_str(&format!(" {arrow} {}", quote_literal(key)));
    }
    sql.push(')');
    match cast {
        Some(cast) => format!("{sql}::{cast}"),
        None => sql,
    }
}

#[cfg(test)]
mod tests {
    use super::path_sql;

    #[test]
    fn path_keys_are_literals_with_their_quotes_doubled() {
        let keys = ["args".to_owned(), "it's".to_owned()];
        assert_eq!(
            path_sql("\"input\"", &keys, Some("bigint")),
            "(\"input\" -> 'args' ->> 'it''s')::bigint"
        );
        assert_eq!(
            path_sql("\"o\"", &["s".to_owned()], None),
            "(\"o\" ->> 's')"
        );
    }
}
