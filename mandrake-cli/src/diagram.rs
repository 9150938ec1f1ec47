//! The schema as a Mermaid ER diagram, for docs that render it.

use std::fmt::Write;

use mandrake_storage::schema::TableSchema;

/// An `erDiagram` of `tables`: every column with its type (`PK`, `FK`, `UK`
/// marked, nullable ones commented), and a relationship per foreign key.
///
/// ```
/// use mandrake_storage::{ColumnDef, TableSchema};
/// let t = TableSchema::new("notes").with_column(ColumnDef::new("id", "UUID")).with_primary_key(&["id"]);
/// assert!(mandrake_cli::diagram::mermaid(&[&t]).contains("    notes {\n        uuid id PK\n"));
/// ```
pub fn mermaid(tables: &[&TableSchema]) -> String {
    let mut out = String::from("erDiagram\n");
    for table in tables {
        let _ = writeln!(out, "    {} {{", table.name);
        for column in &table.columns {
            let mut keys = Vec::new();
            if table.primary_key.contains(&column.name) {
                keys.push("PK");
            }
            if table
                .foreign_keys
                .iter()
                .any(|fk| fk.columns.contains(&column.name))
            {
                keys.push("FK");
            }
            if table
                .uniques
                .iter()
                .any(|u| u.columns == [column.name.clone()])
            {
                keys.push("UK");
            }
            let keys = if keys.is_empty() {
                String::new()
            } else {
                format!(" {}", keys.join(", "))
            };
            let note = if column.nullable { " \"nullable\"" } else { "" };
            let _ = writeln!(
                out,
                "        {} {}{keys}{note}",
                type_word(&column.sql_type),
                column.name
            );
        }
        let _ = writeln!(out, "    }}");
    }
    for table in tables {
        for fk in &table.foreign_keys {
            let nullable = fk
                .columns
                .iter()
                .any(|c| table.column(c).is_some_and(|c| c.nullable));
            let parent_side = if nullable { "|o" } else { "||" };
            let _ = writeln!(
                out,
                "    {} {parent_side}--o{{ {} : \"{}\"",
                fk.references,
                table.name,
                fk.columns.join(", ")
            );
        }
    }
    out
}

/// Mermaid attribute types are one word: `DOUBLE PRECISION` → `double_precision`,
/// `TEXT[]` → `text_array`.
fn type_word(sql_type: &str) -> String {
    let word = sql_type.trim().to_lowercase().replace("[]", "_array");
    word.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect::<String>()
        .trim_matches('_')
        .to_owned()
}

/// The diagram inside a ```` ```mermaid ```` block of `markdown`, if any.
pub fn embedded_in(markdown: &str) -> Option<&str> {
    let start = markdown.find("```mermaid\n")? + "```mermaid\n".len();
    let end = markdown[start..].find("```")? + start;
    Some(&markdown[start..end])
}

/// `markdown` with the diagram of its ```` ```mermaid ```` block replaced by
/// `diagram`, if it has such a block.
pub fn replace_in(markdown: &str, diagram: &str) -> Option<String> {
    let start = markdown.find("```mermaid\n")? + "```mermaid\n".len();
    let end = markdown[start..].find("```")? + start;
    Some(format!(
        "{}{diagram}{}",
        &markdown[..start],
        &markdown[end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mandrake_storage::schema::{ColumnDef, OnDelete};

    #[test]
    fn keys_nullability_and_relationships_are_drawn() {
        let parent = TableSchema::new("groups")
            .with_column(ColumnDef::new("id", "UUID"))
            .with_primary_key(&["id"]);
        let child = TableSchema::new("items")
            .with_column(ColumnDef::new("id", "UUID"))
            .with_column(ColumnDef::new("group_id", "UUID").nullable(true))
            .with_column(ColumnDef::new("score", "DOUBLE PRECISION"))
            .with_column(ColumnDef::new("tags", "TEXT[]"))
            .with_primary_key(&["id"])
            .with_foreign_key("group_id", "groups", OnDelete::SetNull);
        let text = mermaid(&[&parent, &child]);
        assert!(
            text.contains("        uuid group_id FK \"nullable\"\n"),
            "{text}"
        );
        assert!(text.contains("        double_precision score\n"), "{text}");
        assert!(text.contains("        text_array tags\n"), "{text}");
        assert!(
            text.contains("    groups |o--o{ items : \"group_id\"\n"),
            "{text}"
        );
        let doc = format!("# Schema\n\n```mermaid\n{text}```\n");
        assert_eq!(embedded_in(&doc), Some(text.as_str()));
        assert_eq!(embedded_in("no diagram"), None);
        let redrawn = replace_in(&doc, "erDiagram\n").unwrap();
        assert_eq!(redrawn, "# Schema\n\n```mermaid\nerDiagram\n```\n");
        assert_eq!(replace_in("no diagram", "x"), None);
    }
}
