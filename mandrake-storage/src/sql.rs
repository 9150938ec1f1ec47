//! SQL text primitives: quoting identifiers and literals. Every SQL text the
//! crate builds quotes through these; values themselves are always bound.

/// Quotes an identifier: `order` → `"order"`, `a"b` → `"a""b"`.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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
