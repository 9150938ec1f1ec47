//! Typed `#[record(...)]` attributes.

use syn::meta::ParseNestedMeta;
use syn::{Attribute, Ident, LitStr, Token};

use crate::ctxt::Ctxt;
use crate::symbol::*;

/// `on_delete` values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum OnDelete {
    Cascade,
    SetNull,
    Restrict,
}

/// Struct-level attributes.
#[derive(Default)]
pub struct ContainerAttrs {
    pub table: Option<LitStr>,
    pub renamed_from: Option<LitStr>,
    pub indexes: Vec<IndexAttr>,
    pub uniques: Vec<IndexAttr>,
    pub notify: Option<Ident>,
    pub extensions: Vec<LitStr>,
    pub checks: Vec<LitStr>,
    pub foreign_keys: Vec<ForeignKeyAttr>,
}

/// A struct-level `foreign_key(a, b, references = "users(a, id)", on_delete = "…")`.
pub struct ForeignKeyAttr {
    pub keyword: Ident,
    pub columns: Vec<Ident>,
    pub references: Option<LitStr>,
    pub on_delete: Option<(LitStr, Option<OnDelete>)>,
}

impl ForeignKeyAttr {
    /// `users(workspace_id, id)` → `("users", ["workspace_id", "id"])`.
    pub fn target(&self) -> Option<(String, Vec<String>)> {
        let text = self.references.as_ref()?.value();
        let (table, rest) = text.split_once('(')?;
        let columns = rest.strip_suffix(')')?;
        let columns: Vec<String> = columns.split(',').map(|c| c.trim().to_owned()).collect();
        let table = table.trim();
        (!table.is_empty() && columns.iter().all(|c| !c.is_empty()))
            .then(|| (table.to_owned(), columns))
    }
}

fn on_delete_value(lit: LitStr) -> (LitStr, Option<OnDelete>) {
    let value = match lit.value().to_lowercase().as_str() {
        "cascade" => Some(OnDelete::Cascade),
        "set null" => Some(OnDelete::SetNull),
        "restrict" => Some(OnDelete::Restrict),
        _ => None,
    };
    (lit, value)
}

/// The inside of `foreign_key(..)`.
fn foreign_key_attr(meta: &ParseNestedMeta) -> syn::Result<ForeignKeyAttr> {
    use syn::ext::IdentExt;
    let content;
    syn::parenthesized!(content in meta.input);
    let mut out = ForeignKeyAttr {
        keyword: path_ident(meta),
        columns: Vec::new(),
        references: None,
        on_delete: None,
    };
    while !content.is_empty() {
        let name = Ident::parse_any(&content)?;
        if content.peek(Token![=]) {
            content.parse::<Token![=]>()?;
            let value: LitStr = content.parse()?;
            match name.to_string().as_str() {
                "references" => out.references = Some(value),
                "on_delete" => out.on_delete = Some(on_delete_value(value)),
                other => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "unknown foreign key setting `{other}`; expected references, on_delete"
                        ),
                    ));
                }
            }
        } else {
            out.columns.push(name);
        }
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
        }
    }
    Ok(out)
}

/// A struct-level `index(..)` or `unique(..)`: columns, or `expr = "…"`,
/// with `using`, `ops`, `where` and `include(..)`.
pub struct IndexAttr {
    /// `index` or `unique`, where errors about the whole point.
    pub keyword: Ident,
    pub columns: Vec<Ident>,
    pub using: Option<LitStr>,
    pub ops: Option<LitStr>,
    pub predicate: Option<LitStr>,
    pub expr: Option<LitStr>,
    pub include: Vec<Ident>,
}

impl IndexAttr {
    /// Columns only, b-tree: for `unique`, a unique constraint (an upsert
    /// key); anything else is an index (a unique one for `unique`).
    pub fn is_plain(&self) -> bool {
        self.using.as_ref().is_none_or(|m| m.value() == "btree")
            && self.ops.is_none()
            && self.predicate.is_none()
            && self.expr.is_none()
            && self.include.is_empty()
    }
}

/// Field-level attributes.
#[derive(Default)]
pub struct FieldAttrs {
    pub rename: Option<LitStr>,
    pub unique: Option<Ident>,
    pub index: Option<Ident>,
    /// `index = false`: no index of its own for a foreign key.
    pub no_index: Option<Ident>,
    pub references: Option<LitStr>,
    pub on_delete: Option<(LitStr, Option<OnDelete>)>,
    pub default: Option<LitStr>,
    pub sql_type: Option<LitStr>,
    pub renamed_from: Option<LitStr>,
    pub skip: Option<Ident>,
    pub secret: Option<Ident>,
    pub version: Option<Ident>,
    pub generated: Option<LitStr>,
    /// `search` or `search = "english"`: full-text search on this field.
    pub search: Option<SearchAttr>,
    /// `tenant`: the tenant key of a tenant-scoped record.
    pub tenant: Option<Ident>,
    /// `compression = "lz4"`: how PostgreSQL compresses its large values.
    pub compression: Option<LitStr>,
}

/// A field's `search`: the keyword (for errors) and its configuration.
#[derive(Clone)]
pub struct SearchAttr {
    pub keyword: Ident,
    pub config: Option<LitStr>,
}

impl SearchAttr {
    /// The text search configuration: `simple` unless one is named.
    pub fn config(&self) -> String {
        self.config
            .as_ref()
            .map_or_else(|| "simple".to_owned(), LitStr::value)
    }
}

fn record_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs.iter().filter(|a| a.path().is_ident(RECORD))
}

fn string(meta: &ParseNestedMeta) -> syn::Result<LitStr> {
    meta.value()?.parse()
}

/// `(a, b, using = "gin", ops = "…", where = "…", expr = "…", include(c))`
/// after `index` / `unique`; neither a column nor an expression is an error.
fn index_attr(meta: &ParseNestedMeta) -> syn::Result<IndexAttr> {
    use syn::ext::IdentExt;
    let content;
    syn::parenthesized!(content in meta.input);
    let mut out = IndexAttr {
        keyword: path_ident(meta),
        columns: Vec::new(),
        using: None,
        ops: None,
        predicate: None,
        expr: None,
        include: Vec::new(),
    };
    while !content.is_empty() {
        let name = Ident::parse_any(&content)?;
        if content.peek(Token![=]) {
            content.parse::<Token![=]>()?;
            let value: LitStr = content.parse()?;
            let slot = match name.to_string().as_str() {
                "using" => &mut out.using,
                "ops" => &mut out.ops,
                "where" => &mut out.predicate,
                "expr" => &mut out.expr,
                other => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!(
                            "unknown index setting `{other}`; expected using, ops, where, expr, \
                             include(..)"
                        ),
                    ));
                }
            };
            if slot.is_some() {
                return Err(syn::Error::new(name.span(), format!("duplicate `{name}`")));
            }
            *slot = Some(value);
        } else if name == "include" && content.peek(syn::token::Paren) {
            let inner;
            syn::parenthesized!(inner in content);
            let idents = inner.parse_terminated(Ident::parse_any_ident, Token![,])?;
            out.include.extend(idents);
        } else {
            out.columns.push(name);
        }
        if !content.is_empty() {
            content.parse::<Token![,]>()?;
        }
    }
    if out.columns.is_empty() && out.expr.is_none() {
        let attr = path_ident(meta);
        return Err(meta.error(format!("`{attr}(..)` needs at least one column")));
    }
    Ok(out)
}

fn path_ident(meta: &ParseNestedMeta) -> Ident {
    meta.path
        .get_ident()
        .cloned()
        .unwrap_or_else(|| Ident::new("record", proc_macro2::Span::call_site()))
}

/// Stores an attribute's value, refusing a second one: with two, which one
/// wins would be a silent guess.
fn set_once<T>(slot: &mut Option<T>, meta: &ParseNestedMeta, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error(format!("duplicate record attribute `{}`", path_ident(meta))));
    }
    *slot = Some(value);
    Ok(())
}

trait ParseAnyIdent {
    fn parse_any_ident(input: syn::parse::ParseStream) -> syn::Result<Ident>;
}

impl ParseAnyIdent for Ident {
    // Column names may be keywords (`type`, `order`).
    fn parse_any_ident(input: syn::parse::ParseStream) -> syn::Result<Ident> {
        use syn::ext::IdentExt;
        Ident::parse_any(input)
    }
}

fn unknown(meta: &ParseNestedMeta, known: &str) -> syn::Error {
    let name = meta
        .path
        .get_ident()
        .map(|i| i.to_string())
        .unwrap_or_else(|| "this".into());
    meta.error(format!(
        "unknown record attribute `{name}`; expected one of: {known}"
    ))
}

impl ContainerAttrs {
    pub fn parse(cx: &Ctxt, attrs: &[Attribute]) -> ContainerAttrs {
        let mut out = ContainerAttrs::default();
        for attr in record_attrs(attrs) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident(TABLE) {
                    set_once(&mut out.table, &meta, string(&meta)?)?;
                } else if meta.path.is_ident(RENAMED_FROM) {
                    set_once(&mut out.renamed_from, &meta, string(&meta)?)?;
                } else if meta.path.is_ident(INDEX) {
                    out.indexes.push(index_attr(&meta)?);
                } else if meta.path.is_ident(UNIQUE) {
                    out.uniques.push(index_attr(&meta)?);
                } else if meta.path.is_ident(FOREIGN_KEY) {
                    out.foreign_keys.push(foreign_key_attr(&meta)?);
                } else if meta.path.is_ident(CHECK) {
                    out.checks.push(string(&meta)?);
                } else if meta.path.is_ident(EXTENSION) {
                    out.extensions.push(string(&meta)?);
                } else if meta.path.is_ident(NOTIFY) {
                    set_once(&mut out.notify, &meta, path_ident(&meta))?;
                } else {
                    return Err(unknown(
                        &meta,
                        "table, index(..), unique(..), foreign_key(..), check, extension, renamed_from, \
                         notify",
                    ));
                }
                Ok(())
            });
            if let Err(err) = result {
                cx.syn_error(err);
            }
        }
        out
    }
}

impl FieldAttrs {
    pub fn parse(cx: &Ctxt, attrs: &[Attribute]) -> FieldAttrs {
        let mut out = FieldAttrs::default();
        for attr in record_attrs(attrs) {
            let result = attr.parse_nested_meta(|meta| {
                let path = &meta.path;
                if path.is_ident(RENAME) {
                    set_once(&mut out.rename, &meta, string(&meta)?)?;
                } else if path.is_ident(UNIQUE) {
                    set_once(&mut out.unique, &meta, path_ident(&meta))?;
                } else if path.is_ident(INDEX) {
                    let wanted = if meta.input.peek(Token![=]) {
                        meta.value()?.parse::<syn::LitBool>()?.value
                    } else {
                        true
                    };
                    let slot = if wanted {
                        &mut out.index
                    } else {
                        &mut out.no_index
                    };
                    set_once(slot, &meta, path_ident(&meta))?;
                } else if path.is_ident(REFERENCES) {
                    set_once(&mut out.references, &meta, string(&meta)?)?;
                } else if path.is_ident(ON_DELETE) {
                    let lit = string(&meta)?;
                    let value = match lit.value().to_lowercase().as_str() {
                        "cascade" => Some(OnDelete::Cascade),
                        "set null" => Some(OnDelete::SetNull),
                        "restrict" => Some(OnDelete::Restrict),
                        _ => None,
                    };
                    set_once(&mut out.on_delete, &meta, (lit, value))?;
                } else if path.is_ident(DEFAULT) {
                    set_once(&mut out.default, &meta, string(&meta)?)?;
                } else if path.is_ident(SQL_TYPE) {
                    set_once(&mut out.sql_type, &meta, string(&meta)?)?;
                } else if path.is_ident(RENAMED_FROM) {
                    set_once(&mut out.renamed_from, &meta, string(&meta)?)?;
                } else if path.is_ident(SKIP) {
                    set_once(&mut out.skip, &meta, path_ident(&meta))?;
                } else if path.is_ident(SECRET) {
                    set_once(&mut out.secret, &meta, path_ident(&meta))?;
                } else if path.is_ident(VERSION) {
                    set_once(&mut out.version, &meta, path_ident(&meta))?;
                } else if path.is_ident(GENERATED) {
                    set_once(&mut out.generated, &meta, string(&meta)?)?;
                } else if path.is_ident(SEARCH) {
                    let config = if meta.input.peek(Token![=]) {
                        Some(string(&meta)?)
                    } else {
                        None
                    };
                    let search = SearchAttr {
                        keyword: path_ident(&meta),
                        config,
                    };
                    set_once(&mut out.search, &meta, search)?;
                } else if path.is_ident(TENANT) {
                    set_once(&mut out.tenant, &meta, path_ident(&meta))?;
                } else if path.is_ident(COMPRESSION) {
                    let lit = string(&meta)?;
                    if !["lz4", "pglz"].contains(&lit.value().as_str()) {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`compression` is \"lz4\" or \"pglz\" (PostgreSQL's TOAST methods)",
                        ));
                    }
                    set_once(&mut out.compression, &meta, lit)?;
                } else {
                    return Err(unknown(
                        &meta,
                        "rename, unique, index, references, on_delete, default, sql_type, \
                         renamed_from, skip, secret, version, generated, search, tenant, \
                         compression",
                    ));
                }
                Ok(())
            });
            if let Err(err) = result {
                cx.syn_error(err);
            }
        }
        out
    }
}

/// `#[record(rename = "...")]` on an enum variant.
pub fn variant_rename(cx: &Ctxt, attrs: &[Attribute]) -> Option<LitStr> {
    let mut rename = None;
    for attr in record_attrs(attrs) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident(RENAME) {
                set_once(&mut rename, &meta, string(&meta)?)
            } else {
                Err(unknown(&meta, "rename"))
            }
        });
        if let Err(err) = result {
            cx.syn_error(err);
        }
    }
    rename
}
