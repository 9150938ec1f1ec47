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
