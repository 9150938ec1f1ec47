//! The struct as plain data: names, types and typed attributes.

use syn::{Data, DeriveInput, Fields, Ident, Type, Visibility};

use crate::attr::{ContainerAttrs, FieldAttrs};
use crate::ctxt::Ctxt;
use crate::symbol::*;

pub struct Container<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub attrs: ContainerAttrs,
    pub table: String,
    pub fields: Vec<Field<'a>>,
}

pub struct Field<'a> {
    pub ident: &'a Ident,
    pub vis: &'a Visibility,
    pub ty: &'a Type,
    pub attrs: FieldAttrs,
    /// The field's own `///` docs, repeated on the generated input types.
    pub docs: Vec<&'a syn::Attribute>,
    /// The column name (`rename`, else the field name).
    pub column: String,
    pub role: Role,
}

/// What a field is to the table.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Id,
    CreatedAt,
    UpdatedAt,
    Version,
    Skipped,
    /// Computed by the database (`generated = "…"`): read, never written.
    Generated,
    /// An ordinary column: inserted by `create`, changed by a patch.
    Data,
}

impl<'a> Container<'a> {
    /// Parses a struct with named fields; anything else is reported and `None`.
    pub fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Container<'a>> {
        let fields = match &input.data {
            Data::Struct(data) => match &data.fields {
                Fields::Named(named) => &named.named,
                _ => {
                    cx.error_spanned_by(
                        &input.ident,
                        "#[derive(Record)] needs a struct with named fields; tuple and unit \
                         structs have no column names",
                    );
                    return None;
                }
            },
            Data::Enum(_) => {
                cx.error_spanned_by(
                    &input.ident,
                    "#[derive(Record)] works on structs; for an enum column use \
                     #[derive(RecordEnum)]",
                );
                return None;
            }
            Data::Union(_) => {
                cx.error_spanned_by(&input.ident, "#[derive(Record)] works on structs only");
                return None;
            }
        };
        let attrs = ContainerAttrs::parse(cx, &input.attrs);
        let table = attrs
            .table
            .as_ref()
            .map(|t| t.value())
            .unwrap_or_else(|| plural(&snake_case(&input.ident.to_string())));
        let fields = fields
            .iter()
            .filter_map(|f| {
                let ident = f.ident.as_ref()?;
                let attrs = FieldAttrs::parse(cx, &f.attrs);
                let name = ident.to_string();
                let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
                let role = if attrs.skip.is_some() {
                    Role::Skipped
                } else if attrs.generated.is_some() {
                    Role::Generated
                } else if attrs.version.is_some() {
                    Role::Version
                } else {
                    match name.as_str() {
                        ID => Role::Id,
                        CREATED_AT => Role::CreatedAt,
                        UPDATED_AT => Role::UpdatedAt,
                        _ => Role::Data,
                    }
                };
                let column = attrs.rename.as_ref().map(|r| r.value()).unwrap_or(name);
                Some(Field {
                    ident,
                    vis: &f.vis,
                    ty: &f.ty,
                    attrs,
                    docs: f
                        .attrs
                        .iter()
                        .filter(|a| a.path().is_ident("doc"))
                        .collect(),
                    column,
                    role,
                })
            })
            .collect();
        Some(Container {
            ident: &input.ident,
            vis: &input.vis,
            attrs,
            table,
            fields,
        })
    }

    /// Fields that are columns, in declaration order.
    pub fn columns(&self) -> impl Iterator<Item = &Field<'a>> {
        self.fields.iter().filter(|f| f.role != Role::Skipped)
    }

    pub fn field(&self, role: Role) -> Option<&Field<'a>> {
        self.fields.iter().find(|f| f.role == role)
    }

    /// The unique constraints, each as its fields: single-field `unique`s in
    /// field order, then the plain `unique(..)` lists (a partial one, or one
    /// on an expression, is a unique index, not a constraint). The schema's `uniques` and
    /// the `UniqueKey` indexes both follow this one order.
    pub fn unique_keys(&self) -> Vec<Vec<&Field<'a>>> {
        let field_of = |name: &Ident| {
            let name = name.to_string();
            let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
            self.columns()
                .find(|f| f.column == name || *f.ident == name)
        };
        let mut keys: Vec<Vec<&Field<'a>>> = self
            .columns()
            .filter(|f| f.attrs.unique.is_some())
            .map(|f| vec![f])
            .collect();
        keys.extend(
            self.attrs
                .uniques
                .iter()
                .filter(|u| u.is_plain())
                .map(|u| u.columns.iter().filter_map(field_of).collect()),
        );
        keys
    }

    /// The partial unique indexes on plain b-tree columns
    /// (`unique(a, b, where = "..")`), each as its fields: upsert keys after
    /// [`Container::unique_keys`], as the runtime numbers them.
    pub fn partial_unique_keys(&self) -> Vec<Vec<&Field<'a>>> {
        self.attrs
            .uniques
            .iter()
            .filter(|u| {
                u.predicate.is_some()
                    && u.using.as_ref().is_none_or(|m| m.value() == "btree")
                    && u.ops.is_none()
                    && u.expr.is_none()
                    && u.include.is_empty()
                    && !u.columns.is_empty()
            })
            .map(|u| {
                u.columns
                    .iter()
                    .filter_map(|name| {
                        let name = name.to_string();
                        let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
                        self.columns()
                            .find(|f| f.column == name || *f.ident == name)
                    })
                    .collect()
            })
            .collect()
    }
}

impl Field<'_> {
    /// `Option<T>` → `Some(T)`.
    pub fn option_inner(&self) -> Option<&Type> {
        option_inner(self.ty)
    }
}

pub fn option_inner(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Option" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(inner) => Some(inner),
        _ => None,
    }
}

/// The last path segment's name: `uuid::Uuid` → `Uuid`.
pub fn type_name(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(path) => path.path.segments.last().map(|s| s.ident.to_string()),
        _ => None,
    }
}

/// `ToolConfig` → `tool_config`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, ch) in name.char_indices() {
        if ch.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(ch.to_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// English plural of a snake_case name: `tool_config` → `tool_configs`,
/// `address` → `addresses`, `category` → `categories`.
pub fn plural(name: &str) -> String {
    let vowel_before_y = name
        .strip_suffix('y')
        .and_then(|stem| stem.chars().last())
        .is_some_and(|c| "aeiou".contains(c));
    if name.ends_with('y') && !vowel_before_y {
        format!("{}ies", &name[..name.len() - 1])
    } else if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|s| name.ends_with(s))
    {
        format!("{name}es")
    } else {
        format!("{name}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_snake_case_plurals() {
        let table = |s: &str| plural(&snake_case(s));
        assert_eq!(table("ToolConfig"), "tool_configs");
        assert_eq!(table("Message"), "messages");
        assert_eq!(table("Address"), "addresses");
        assert_eq!(table("Category"), "categories");
        assert_eq!(table("Key"), "keys");
    }
}
