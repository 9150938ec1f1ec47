//! Validation of the parsed struct, separate from parsing. Each misuse is
//! reported at the span that has to change, with what to do about it.

use std::collections::HashMap;

use syn::DeriveInput;

use crate::ast::{Container, Role, option_inner, type_name};
use crate::attr::OnDelete;
use crate::ctxt::Ctxt;
use crate::symbol::*;

pub fn check(cx: &Ctxt, input: &DeriveInput, cont: &Container) {
    check_generics(cx, input);
    check_required_fields(cx, cont);
    check_field_attrs(cx, cont);
    check_duplicate_columns(cx, cont);
    check_column_lists(cx, cont);
    check_duplicate_indexes(cx, cont);
    for f in &cont.fields {
        if let Some(off) = &f.attrs.no_index
            && f.attrs.references.is_none()
        {
            cx.error_spanned_by(
                off,
                "`index = false` turns off a foreign key's own index: this field has no `references`",
            );
        }
        if let Some(expression) = &f.attrs.generated {
            if expression.value().trim().is_empty() {
                cx.error_spanned_by(expression, "an empty `generated` expression");
            }
            let conflict = [
                (f.attrs.default.is_some(), "default"),
                (f.attrs.version.is_some(), "version"),
                (f.attrs.references.is_some(), "references"),
                (f.attrs.skip.is_some(), "skip"),
            ];
            if let Some((_, other)) = conflict.iter().find(|(set, _)| *set) {
                cx.error_spanned_by(
                    expression,
                    format!(
                        "a generated column cannot also be `{other}`: the database computes it"
                    ),
                );
            }
            if [ID, CREATED_AT, UPDATED_AT].contains(&f.column.as_str()) {
                cx.error_spanned_by(expression, format!("`{}` cannot be generated", f.column));
            }
        }
    }
    check_search(cx, cont);
    check_tenant(cx, cont);
    for key in &cont.attrs.foreign_keys {
        for ident in &key.columns {
            if resolve_column(cont, &ident.to_string()).is_none() {
                cx.error_spanned_by(ident, format!("no column `{ident}` in this struct"));
            }
        }
        match (&key.references, key.target()) {
            (None, _) => cx.error_spanned_by(
                &key.keyword,
                "`foreign_key(..)` needs `references = \"<table>(<columns>)\"`",
            ),
            (Some(lit), None) => cx.error_spanned_by(
                lit,
                "`references` must name a table and its key columns: \"users(workspace_id, id)\"",
            ),
            (Some(lit), Some((_, referenced))) if referenced.len() != key.columns.len() => cx
                .error_spanned_by(
                    lit,
                    format!(
                        "{} column(s) reference {} column(s): name as many on both sides",
                        key.columns.len(),
                        referenced.len()
                    ),
                ),
            _ => {}
        }
        if let Some((lit, None)) = &key.on_delete {
            cx.error_spanned_by(
                lit,
                "`on_delete` must be \"cascade\", \"set null\" or \"restrict\"",
            );
        }
    }
    for condition in &cont.attrs.checks {
        if condition.value().trim().is_empty() {
            cx.error_spanned_by(condition, "an empty `check` condition");
        }
    }
    check_renames(cx, cont);
}

/// Each earlier name leads to one column, and not to the column itself
/// (a hint to itself would rename back and forth on every `new-migration`).
fn check_renames(cx: &Ctxt, cont: &Container) {
    if let Some(old) = &cont.attrs.renamed_from
        && old.value() == cont.table
    {
        cx.error_spanned_by(
            old,
            format!("`renamed_from` names the table's own name `{}`", cont.table),
        );
    }
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for field in &cont.fields {
        let Some(old) = &field.attrs.renamed_from else {
            continue;
        };
        if field.role == Role::Skipped {
            cx.error_spanned_by(old, "`renamed_from` on a `skip` field: it has no column");
        } else if old.value() == field.column {
            cx.error_spanned_by(
                old,
                format!(
                    "`renamed_from` names the column's own name `{}`: remove it, or name the \
                     column it had before",
                    field.column
                ),
            );
        } else if let Some(first) = seen.insert(old.value(), field.ident) {
            cx.error_spanned_by(
                old,
                format!(
                    "column `{}` is already renamed to field `{first}`: a column has one new name",
                    old.value()
                ),
            );
        }
    }
}

fn check_generics(cx: &Ctxt, input: &DeriveInput) {
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "#[derive(Record)] does not support generic structs: a table has one fixed set of \
             column types",
        );
    }
}

fn check_required_fields(cx: &Ctxt, cont: &Container) {
    match cont.field(Role::Id) {
        None => cx.error_spanned_by(
            cont.ident,
            "#[derive(Record)] needs an `id: Uuid` field (the primary key)",
        ),
        Some(id) => {
            if type_name(id.ty).as_deref() != Some("Uuid") {
                cx.error_spanned_by(id.ty, "the `id` field must be a `Uuid`");
            }
            if id.attrs.rename.is_some() {
                cx.error_spanned_by(id.ident, "the `id` column cannot be renamed");
            }
        }
    }
    for (role, name) in [(Role::CreatedAt, CREATED_AT), (Role::UpdatedAt, UPDATED_AT)] {
        match cont.field(role) {
            None => cx.error_spanned_by(
                cont.ident,
                format!(
                    "#[derive(Record)] needs a `{name}: DateTime<Utc>` field (maintained by the \
                     database)"
                ),
            ),
            Some(f) if type_name(f.ty).as_deref() != Some("DateTime") => cx.error_spanned_by(
                f.ty,
                format!("the `{name}` field must be a `DateTime<Utc>`"),
            ),
            Some(f) if f.attrs.rename.is_some() => {
                cx.error_spanned_by(f.ident, format!("the `{name}` column cannot be renamed"))
            }
            Some(_) => {}
        }
    }
}

fn check_field_attrs(cx: &Ctxt, cont: &Container) {
    let mut versions = 0;
    for field in &cont.fields {
        let attrs = &field.attrs;
        let base_type = option_inner(field.ty).unwrap_or(field.ty);
        if option_inner(base_type).is_some() && field.role != Role::Skipped {
            cx.error_spanned_by(
                field.ty,
                "`Option<Option<T>>` cannot be a column: a column is NULL or it is not, so use \
                 `Option<T>`",
            );
        }
        if let Some(references) = &attrs.references {
            if type_name(base_type).as_deref() != Some("Uuid") {
                cx.error_spanned_by(
                    field.ty,
                    "`references` needs a `Uuid` or `Option<Uuid>` field: it points at the \
                     referenced table's `id`",
                );
            }
            if references.value().trim().is_empty() {
                cx.error_spanned_by(references, "`references` needs a table name");
            }
        }
        if let Some((lit, value)) = &attrs.on_delete {
            if attrs.references.is_none() {
                cx.error_spanned_by(
                    lit,
                    "`on_delete` needs `references = \"<table>\"` on the same field",
                );
            }
            if value.is_none() {
                cx.error_spanned_by(
                    lit,
                    "`on_delete` must be \"cascade\", \"set null\" or \"restrict\"",
                );
            }
            if *value == Some(OnDelete::SetNull) && option_inner(field.ty).is_none() {
                cx.error_spanned_by(
                    lit,
                    "`on_delete = \"set null\"` needs a nullable column: make the field \
                     `Option<Uuid>`",
                );
            }
        }
        if let Some(version) = &attrs.version {
            versions += 1;
            if versions > 1 {
                cx.error_spanned_by(version, "only one field can be the `version`");
            }
            let name = type_name(field.ty);
            if !matches!(name.as_deref(), Some("i16" | "i32" | "i64")) {
                cx.error_spanned_by(
                    field.ty,
                    "a `version` field must be an integer (`i16`, `i32` or `i64`)",
                );
            }
        }
        if let Some(skip) = &attrs.skip {
            let other = attrs.rename.is_some()
                || attrs.unique.is_some()
                || attrs.index.is_some()
                || attrs.references.is_some()
                || attrs.default.is_some()
                || attrs.sql_type.is_some()
                || attrs.version.is_some();
            if other {
                cx.error_spanned_by(
                    skip,
                    "a `skip` field is not a column: drop the other attributes",
                );
            }
            if matches!(field.role, Role::Id)
                || [ID, CREATED_AT, UPDATED_AT].contains(&field.column.as_str())
            {
                cx.error_spanned_by(
                    skip,
                    "`id`, `created_at` and `updated_at` cannot be skipped",
                );
            }
        }
    }
}

fn check_duplicate_columns(cx: &Ctxt, cont: &Container) {
    let mut seen: HashMap<&str, &syn::Ident> = HashMap::new();
    for field in cont.columns() {
        if let Some(first) = seen.insert(field.column.as_str(), field.ident) {
            cx.error_spanned_by(
                field.ident,
                format!(
                    "column `{}` is already used by field `{first}`: give one of them \
                     `#[record(rename = \"...\")]`",
                    field.column
                ),
            );
        }
    }
}

/// `index(..)` / `unique(..)` name fields or columns of this struct, a known
/// access method, a non-empty expression instead of columns, and an operator
/// class only for columns; only b-tree indexes can be unique.
fn check_column_lists(cx: &Ctxt, cont: &Container) {
    for index in cont.attrs.indexes.iter().chain(&cont.attrs.uniques) {
        for ident in index.columns.iter().chain(&index.include) {
            if resolve_column(cont, &ident.to_string()).is_none() {
                cx.error_spanned_by(
                    ident,
                    format!("no column `{ident}` in this struct to index"),
                );
            }
        }
        if let Some(method) = &index.using {
            let known = ["btree", "gin", "gist", "brin", "hash"];
            if !known.contains(&method.value().as_str()) {
                cx.error_spanned_by(
                    method,
                    format!(
                        "unknown index method `{}`; expected one of: {}",
                        method.value(),
                        known.join(", ")
                    ),
                );
            } else if index.keyword == "unique" && method.value() != "btree" {
                cx.error_spanned_by(method, "only a btree index can be unique");
            }
        }
        if let Some(expr) = &index.expr {
            if expr.value().trim().is_empty() {
                cx.error_spanned_by(expr, "an index on an empty expression");
            } else if !index.columns.is_empty() {
                cx.error_spanned_by(expr, "an index has columns or `expr`, not both");
            }
        }
        if let Some(ops) = &index.ops
            && index.columns.is_empty()
        {
            cx.error_spanned_by(
                ops,
                "`ops` is the operator class of the index's columns: name them",
            );
        }
        if let Some(predicate) = &index.predicate
            && predicate.value().trim().is_empty()
        {
            cx.error_spanned_by(predicate, "an empty `where` condition");
        }
    }
}

/// The same index declared twice would be made twice under one name, and
/// fail only when a migration runs: the second declaration is the error.
fn check_duplicate_indexes(cx: &Ctxt, cont: &Container) {
    let columns = |idents: &[syn::Ident]| -> Vec<String> {
        idents
            .iter()
            .map(|i| resolve_column(cont, &i.to_string()).unwrap_or_else(|| i.to_string()))
            .collect()
    };
    let text = |s: &Option<syn::LitStr>| s.as_ref().map(|s| s.value().trim().to_owned());
    // What makes two indexes the same: a plain field's index is `index(field)`.
    let signature = |keyword: &str, cols: Vec<String>, rest: [Option<String>; 4], include| {
        format!("{keyword} {cols:?} {rest:?} {include:?}")
    };
    let plain = || [Some("btree".to_owned()), None, None, None];
    let mut seen: HashMap<String, &'static str> = HashMap::new();
    for f in cont.columns().filter(|f| f.attrs.index.is_some()) {
        let key = signature("index", vec![f.column.clone()], plain(), Vec::new());
        seen.insert(key, "`#[record(index)]` on its field");
    }
    for index in cont.attrs.indexes.iter().chain(&cont.attrs.uniques) {
        let method = text(&index.using).or_else(|| Some("btree".into()));
        let rest = [
            method,
            text(&index.ops),
            text(&index.predicate),
            text(&index.expr),
        ];
        let key = signature(
            &index.keyword.to_string(),
            columns(&index.columns),
            rest,
            columns(&index.include),
        );
        if let Some(first) = seen.insert(key, "an earlier declaration") {
            cx.error_spanned_by(
                &index.keyword,
                format!(
                    "this {} is declared twice (see {first}): it would be made twice under one \
                     name; remove one",
                    index.keyword
                ),
            );
        }
    }
}

/// A field name or column name → the column name.
pub fn resolve_column(cont: &Container, name: &str) -> Option<String> {
    let name = name.strip_prefix("r#").unwrap_or(name);
    cont.columns()
        .find(|f| f.column == name || *f.ident == name)
        .map(|f| f.column.clone())
}

/// `search`: on a text field, a configuration that is a name, never on a
/// secret (its words would be readable in the vector), and its vector's
/// name (`<column>_search`) free.
fn check_search(cx: &Ctxt, cont: &Container) {
    for f in &cont.fields {
        let Some(search) = &f.attrs.search else {
            continue;
        };
        let text = option_inner(f.ty).unwrap_or(f.ty);
        if type_name(text).as_deref() != Some("String") || f.attrs.sql_type.is_some() {
            cx.error_spanned_by(
                &search.keyword,
                "`search` works on a text field (`String` or `Option<String>`)",
            );
        }
        if let Some(config) = &search.config {
            let name = config.value();
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !valid {
                cx.error_spanned_by(
                    config,
                    "`search = \"…\"` names a text search configuration: `simple`, `english`, …",
                );
            }
        }
        let conflict = [
            (
                f.attrs.secret.is_some(),
                "secret: its words would be readable in the search vector",
            ),
            (
                f.attrs.skip.is_some(),
                "skip: a skipped field has no column",
            ),
        ];
        if let Some((_, why)) = conflict.iter().find(|(set, _)| *set) {
            cx.error_spanned_by(
                &search.keyword,
                format!("`search` cannot be on a field that is {why}"),
            );
        }
        let vector = format!("{}_search", f.column);
        if cont.columns().any(|other| other.column == vector) {
            cx.error_spanned_by(
                &search.keyword,
                format!("`search` adds the column `{vector}`, which this struct already has"),
            );
        }
    }
}

/// `tenant`: one field, a required `Uuid` the record stores; on `id`, the
/// record is the tenant root.
fn check_tenant(cx: &Ctxt, cont: &Container) {
    let tenants: Vec<_> = cont
        .fields
        .iter()
        .filter(|f| f.attrs.tenant.is_some())
        .collect();
    for f in &tenants {
        let keyword = f.attrs.tenant.as_ref().expect("filtered");
        if type_name(f.ty).as_deref() != Some("Uuid") {
            cx.error_spanned_by(
                keyword,
                "`tenant` is the tenant key: a `Uuid` field (not optional: every row has a tenant)",
            );
        }
        let conflict = [
            (f.attrs.skip.is_some(), "skip"),
            (f.attrs.generated.is_some(), "generated"),
            (f.attrs.version.is_some(), "version"),
        ];
        if let Some((_, other)) = conflict.iter().find(|(set, _)| *set) {
            cx.error_spanned_by(keyword, format!("the tenant key cannot also be `{other}`"));
        }
        // On `id` it marks the tenant root (its own row is the tenant).
        if [CREATED_AT, UPDATED_AT].contains(&f.column.as_str()) {
            cx.error_spanned_by(keyword, format!("`{}` cannot be the tenant key", f.column));
        }
    }
    if let [_, second, ..] = tenants.as_slice() {
        cx.error_spanned_by(
            second.attrs.tenant.as_ref().expect("filtered"),
            "a record has one tenant key: `tenant` is on another field already",
        );
    }
}
