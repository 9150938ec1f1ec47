//! Emits the `Record` impl, the `New…` and `…Patch` types, a redacting
//! `Debug` and `list_by_<fk>` methods. Everything substantial is generic code
//! in mandrake-storage; this only wires fields to it.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr};

use crate::ast::{Container, Field, Role};
use crate::attr::OnDelete;
use crate::check::{self, resolve_column};
use crate::ctxt::Ctxt;

pub fn expand(input: &DeriveInput) -> Result<TokenStream, Vec<syn::Error>> {
    let cx = Ctxt::new();
    let cont = Container::from_ast(&cx, input);
    if let Some(cont) = &cont {
        check::check(&cx, input, cont);
    }
    cx.check()?;
    Ok(emit(&cont.expect("reported when missing")))
}

fn emit(cont: &Container) -> TokenStream {
    let ms = quote!(::mandrake_storage);
    let ident = cont.ident;
    let new_ident = format_ident!("New{}", ident);
    let patch_ident = format_ident!("{}Patch", ident);
    let data: Vec<&Field> = cont
        .fields
        .iter()
        .filter(|f| f.role == Role::Data)
        .collect();
    let inputs = input_structs(cont, &data, &new_ident, &patch_ident);
    let aliases = type_aliases(cont);
    let record = record_impl(cont, &data, &new_ident, &patch_ident);
    let debug = debug_impls(cont, &new_ident, &patch_ident, &data);
    let constants = constants(cont);
    let list_by = list_by_methods(cont);
    quote! {
        #inputs

        const _: () = {
            use #ms::sqlx::Arguments as _;
            #aliases
            #record

            impl<'r> #ms::sqlx::FromRow<'r, #ms::sqlx::postgres::PgRow> for #ident {
                fn from_row(row: &'r #ms::sqlx::postgres::PgRow) -> ::core::result::Result<Self, #ms::sqlx::Error> {
                    <Self as #ms::Record>::decode(row, 0)
                }
            }

            #ms::__private::inventory::submit! {
                #ms::__private::Registration::of::<#ident>()
            }

            #constants
            #debug
            #list_by
        };
    }
}

/// `New<Name>` and `<Name>Patch`: the record's data fields, with their docs.
fn input_structs(
    cont: &Container,
    data: &[&Field],
    new_ident: &syn::Ident,
    patch_ident: &syn::Ident,
) -> TokenStream {
    let (ident, vis) = (cont.ident, cont.vis);
    let data_idents: Vec<_> = data.iter().map(|f| f.ident).collect();
    // Generated fields carry the field's docs, or say which column they set.
    let data_docs: Vec<TokenStream> = data
        .iter()
        .map(|f| {
            if f.docs.is_empty() {
                let doc = format!("The `{}` column.", f.column);
                quote!(#[doc = #doc])
            } else {
                let docs = &f.docs;
                quote!(#(#docs)*)
            }
        })
        .collect();
    let data_types: Vec<_> = data.iter().map(|f| f.ty).collect();
    // The tenant key is optional on the way in: `None` takes the tenant of
    // the handle that writes it (`db.tenant(id)`).
    let new_types = data.iter().map(|f| {
        let ty = f.ty;
        if f.attrs.tenant.is_some() {
            quote!(::core::option::Option<#ty>)
        } else {
            quote!(#ty)
        }
    });
    let new_docs = data.iter().zip(&data_docs).map(|(f, docs)| {
        if f.attrs.tenant.is_some() {
            quote! {
                #docs
                #[doc = ""]
                #[doc = "The tenant key: `None` takes the tenant of the handle that writes the row (`db.tenant(id)`); a value naming another tenant is refused (`Error::TenantRefused`)."]
            }
        } else {
            docs.clone()
        }
    });
    let data_vis: Vec<_> = data.iter().map(|f| f.vis).collect();
    let new_doc = format!(
        "Input of `{ident}::repo().create`: every column of `{ident}` but the id, timestamps and version."
    );
    let patch_doc = format!(
        "The columns to change in a `{ident}`: `Some` for each column to change (`Some(None)` sets a nullable column to NULL)."
    );
    quote! {
        #[doc = #new_doc]
        #[derive(Clone)]
        #vis struct #new_ident {
            #( #new_docs #data_vis #data_idents: #new_types, )*
        }

        #[doc = #patch_doc]
        #[derive(Clone, Default)]
        #vis struct #patch_ident {
            #( #data_docs #data_vis #data_idents: ::core::option::Option<#data_types>, )*
        }
    }
}

/// One type alias per field (see `column_alias`).
fn type_aliases(cont: &Container) -> TokenStream {
    // Every use of a field's type goes through one alias per field, bound by
    // `ColumnType`: an unsupported type is then reported once, at the field,
    // and its other uses are an error type the compiler does not repeat.
    let aliases = cont.columns().filter(|f| f.attrs.sql_type.is_none()).map(|f| {
        let (name, ty) = (column_alias(f), f.ty);
        quote_spanned!(ty.span()=> #[allow(non_camel_case_types)] type #name = <#ty as ::mandrake_storage::__private::ColumnTypeOf>::Type;)
    });
    quote!(#(#aliases)*)
}

/// `impl Record`: the schema, the statements, decoding and binding.
fn record_impl(
    cont: &Container,
    data: &[&Field],
    new_ident: &syn::Ident,
    patch_ident: &syn::Ident,
) -> TokenStream {
    let ms = quote!(::mandrake_storage);
    let (ident, vis) = (cont.ident, cont.vis);
    let version = cont.field(Role::Version);
    let schema = schema_expr(cont);
    let insert_cols = data.iter().map(|f| &f.column);
    let field_count = cont.columns().count();
    let patch_cols = data.iter().map(|f| &f.column);
    let version_col = match version {
        Some(v) => {
            let c = &v.column;
            quote!(::core::option::Option::Some(#c))
        }
        None => quote!(::core::option::Option::None),
    };
    // A versioned table's `update` takes the patch with the version the
    // caller read, so the check cannot be forgotten.
    let (update_type, split_update, expect_version) = match version {
        Some(v) => {
            let vty = v.ty;
            let doc = format!(
                "This patch, applied only while the row is still at `version` (else \
                 `Error::Conflict`): the input of `{ident}::repo().update`."
            );
            (
                quote!(#ms::Versioned<#patch_ident>),
                quote!((update.patch, ::core::option::Option::Some(update.version))),
                quote! {
                    impl #patch_ident {
                        #[doc = #doc]
                        #vis fn expect_version(self, version: #vty) -> #ms::Versioned<#patch_ident> {
                            #ms::Versioned { patch: self, version: ::core::convert::From::from(version) }
                        }
                    }
                },
            )
        }
        None => (
            quote!(#patch_ident),
            quote!((update, ::core::option::Option::None)),
            quote!(),
        ),
    };

    let decode = decode_fn(cont);
    let binds = bind_fns(data, new_ident, patch_ident);
    let renames = renames_fn(cont);
    // `tenant` on `id`: the tenant root, whose rows are made by `create_tenant`.
    let tenant_root = cont
        .columns()
        .any(|f| f.attrs.tenant.is_some() && f.column == crate::symbol::ID)
        .then(|| quote!(impl #ms::TenantRoot for #ident {}));
    quote! {
    impl #ms::Record for #ident {
        type New = #new_ident;
        type Patch = #patch_ident;
        type Update = #update_type;

        const WIDTH: usize = #field_count;

        fn schema() -> &'static #ms::TableSchema {
            static SCHEMA: ::std::sync::OnceLock<#ms::TableSchema> = ::std::sync::OnceLock::new();
            SCHEMA.get_or_init(|| #schema)
        }
        #renames

        fn id(&self) -> #ms::uuid::Uuid {
            self.id
        }

        fn statements() -> &'static #ms::__private::Statements {
            static STATEMENTS: ::std::sync::OnceLock<#ms::__private::Statements> = ::std::sync::OnceLock::new();
            STATEMENTS.get_or_init(|| #ms::__private::Statements::new(
                <Self as #ms::Record>::schema(),
                #ms::__private::Layout {
                    insert: &[#(#insert_cols),*],
                    patch: &[#(#patch_cols),*],
                    version: #version_col,
                    fields: <Self as #ms::Record>::WIDTH,
                },
            ))
        }

        #decode
        #binds

        fn split_update(update: #update_type) -> (#patch_ident, ::core::option::Option<i64>) {
            #split_update
        }

    }

        #expect_version
        #tenant_root
    }
}

/// `Record::decode`: each stored field from its column, in order.
fn decode_fn(cont: &Container) -> TokenStream {
    let ms = quote!(::mandrake_storage);
    let alias = column_alias;
    let mut column_index = 0usize;
    let decode_fields = cont.fields.iter().map(|f| {
        let (name, ty) = (f.ident, f.ty);
        if f.role == Role::Skipped {
            return quote!(#name: ::core::default::Default::default());
        }
        let i = column_index;
        column_index += 1;
        match &f.attrs.sql_type {
            Some(_) => quote!(#name: #ms::sqlx::Row::try_get(row, offset + #i)?),
            None => {
                let alias = alias(f);
                quote_spanned!(ty.span()=> #name: ::mandrake_storage::__private::decode_column::<#alias>(row, offset + #i)?)
            }
        }
    });
    quote! {
        fn decode(row: &#ms::sqlx::postgres::PgRow, offset: usize) -> ::core::result::Result<Self, #ms::sqlx::Error> {
            ::core::result::Result::Ok(Self { #(#decode_fields,)* })
        }
    }
}

/// `Record::bind_new`, `bind_new_batch` and `bind_patch`: every use of a
/// field type spanned at it (see `type_aliases`).
fn bind_fns(data: &[&Field], new_ident: &syn::Ident, patch_ident: &syn::Ident) -> TokenStream {
    let ms = quote!(::mandrake_storage);
    let alias = column_alias;
    // The type a `New…` field holds (see `input_structs`).
    let new_alias = |f: &Field| {
        let alias = alias(f);
        if f.attrs.tenant.is_some() {
            quote_spanned!(f.ty.span()=> ::core::option::Option<#alias>)
        } else {
            quote!(#alias)
        }
    };
    let bind_new = data.iter().map(|f| {
        let (name, ty) = (f.ident, f.ty);
        match &f.attrs.sql_type {
            Some(_) => quote!(__args.add(new.#name)?;),
            None => {
                let alias = new_alias(f);
                {
                    let col = &f.column;
                    let value = value_ident(f);
                    quote_spanned!(ty.span()=> let #value = new.#name; ::mandrake_storage::__private::bind_column::<#alias>(__args, #value, #col)?;)
                }
            }
        }
    });
    let bind_patch = data.iter().map(|f| {
        let (name, ty) = (f.ident, f.ty);
        let value = match &f.attrs.sql_type {
            Some(_) => quote!(__args.add(patch.#name)?;),
            None => {
                let alias = alias(f);
                {
                    let col = &f.column;
                    let value = value_ident(f);
                    quote_spanned!(ty.span()=> let #value = patch.#name; ::mandrake_storage::__private::bind_column::<::core::option::Option<#alias>>(__args, #value, #col)?;)
                }
            }
        };
        quote! {
            __set += usize::from(patch.#name.is_some());
            __args.add(patch.#name.is_some())?;
            #value
        }
    });

    let batch_vars: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, f)| format_ident!("__c{}", i, span = f.ty.span()))
        .collect();
    // Spanned at the field type, like every use of it (see `aliases`).
    let batch_decl = data.iter().zip(&batch_vars).map(|(f, v)| {
        let ty = f.ty;
        match &f.attrs.sql_type {
            Some(_) => quote!(let mut #v = ::std::vec::Vec::with_capacity(rows.len());),
            None => {
                let alias = new_alias(f);
                quote_spanned!(ty.span()=> let mut #v = ::mandrake_storage::__private::cells::<#alias>(rows.len());)
            }
        }
    });
    let batch_bind = data.iter().zip(&batch_vars).map(|(f, v)| {
        let ty = f.ty;
        quote_spanned!(ty.span()=> __args.add(#v)?;)
    });
    let batch_push = data.iter().zip(&batch_vars).map(|(f, v)| {
        let (name, ty) = (f.ident, f.ty);
        match &f.attrs.sql_type {
            Some(_) => quote!(#v.push(__row.#name);),
            None => {
                let alias = new_alias(f);
                {
                    let col = &f.column;
                    let value = value_ident(f);
                    quote_spanned!(ty.span()=> let #value = __row.#name; ::mandrake_storage::__private::push_cell::<#alias>(&mut #v, #value, #col)?;)
                }
            }
        }
    });
    quote! {
        fn bind_new(
            new: #new_ident,
            id: #ms::uuid::Uuid,
            __args: &mut #ms::sqlx::postgres::PgArguments,
        ) -> ::core::result::Result<(), #ms::sqlx::error::BoxDynError> {
            __args.add(id)?;
            #( #bind_new )*
            ::core::result::Result::Ok(())
        }

        fn bind_new_batch(
            rows: ::std::vec::Vec<#new_ident>,
            ids: ::std::vec::Vec<#ms::uuid::Uuid>,
            __args: &mut #ms::sqlx::postgres::PgArguments,
        ) -> ::core::result::Result<(), #ms::sqlx::error::BoxDynError> {
            #( #batch_decl )*
            for __row in rows {
                #( #batch_push )*
            }
            __args.add(ids)?;
            #( #batch_bind )*
            ::core::result::Result::Ok(())
        }

        fn bind_patch(
            patch: #patch_ident,
            __args: &mut #ms::sqlx::postgres::PgArguments,
        ) -> ::core::result::Result<usize, #ms::sqlx::error::BoxDynError> {
            let mut __set = 0usize;
            #( #bind_patch )*
            ::core::result::Result::Ok(__set)
        }
    }
}

/// A local holding a field's value, named at the field type's span so that a
/// type error in its use is reported there, like every other (see `aliases`).
fn value_ident(f: &Field) -> syn::Ident {
    format_ident!("__value_{}", f.ident, span = f.ty.span())
}

/// The name of the alias of a field's type (see `aliases` in `emit`).
fn column_alias(f: &Field) -> syn::Ident {
    format_ident!("__Column_{}", f.ident, span = f.ty.span())
}

/// `Record::renames` for a record with `renamed_from` hints (the trait's
/// default, none, otherwise), and `Record::SECRET_COLUMNS` for one with
/// `secret` fields.
fn renames_fn(cont: &Container) -> TokenStream {
    let table = &cont.table;
    let mut hints: Vec<TokenStream> = Vec::new();
    if let Some(old) = &cont.attrs.renamed_from {
        hints.push(quote!(.table(#old, #table)));
    }
    for f in cont.columns() {
        if let Some(old) = &f.attrs.renamed_from {
            let col = &f.column;
            hints.push(quote!(.column(#table, #old, #col)));
            // Its search vector follows it: PostgreSQL has rewritten the
            // vector's expression on the rename, so nothing is rebuilt.
            if f.attrs.search.is_some() {
                let vector = quote!(::mandrake_storage::schema::search_vector);
                hints.push(quote!(.column(#table, &#vector(#old), &#vector(#col))));
            }
        }
    }
    let secret: Vec<&String> = cont
        .columns()
        .filter(|f| f.attrs.secret.is_some())
        .map(|f| &f.column)
        .collect();
    let secret = if secret.is_empty() {
        TokenStream::new()
    } else {
        quote!(const SECRET_COLUMNS: &'static [&'static str] = &[#( #secret ),*];)
    };
    if hints.is_empty() {
        return secret;
    }
    quote! {
        #secret
        fn renames() -> ::mandrake_storage::schema::Renames {
            ::mandrake_storage::schema::Renames::default() #( #hints )*
        }
    }
}

/// The `TableSchema` builder chain.
fn schema_expr(cont: &Container) -> TokenStream {
    let ms = quote!(::mandrake_storage);
    let table = &cont.table;
    let mut chain = quote!(#ms::TableSchema::new(#table));
    for f in cont.columns() {
        let col = &f.column;
        let ty = f.ty;
        let (sql_type, nullable) = match &f.attrs.sql_type {
            Some(lit) => {
                let nullable = f.option_inner().is_some();
                (quote!(#lit), quote!(#nullable))
            }
            None => {
                let alias = column_alias(f);
                (
                    quote_spanned!(ty.span()=> ::mandrake_storage::__private::column_sql_type::<#alias>()),
                    quote_spanned!(ty.span()=> ::mandrake_storage::__private::column_nullable::<#alias>()),
                )
            }
        };
        let implied_default = match f.role {
            Role::Id => Some("gen_random_uuid()"),
            Role::CreatedAt | Role::UpdatedAt => Some("now()"),
            Role::Version => Some("1"),
            _ => None,
        };
        let default = f
            .attrs
            .default
            .as_ref()
            .map(LitStr::value)
            .or(implied_default.map(str::to_owned))
            .map(|d| quote!(.default(#d)));
        let generated = f.attrs.generated.as_ref().map(|g| quote!(.generated(#g)));
        // Only a type stored out of line can be compressed: the compiler
        // says so at the field, unless its SQL type is given by hand.
        let compression = f.attrs.compression.as_ref().map(|method| {
            let check = f.attrs.sql_type.is_none().then(|| {
                let alias = column_alias(f);
                quote_spanned!(ty.span()=> ::mandrake_storage::__private::compressible::<#alias>();)
            });
            quote!(.compression({ #check #method }))
        });
        chain = quote! {
            #chain.with_column(#ms::ColumnDef::new(#col, #sql_type).nullable(#nullable) #default #generated #compression)
        };
        if f.attrs.sql_type.is_none() {
            let alias = column_alias(f);
            let values = quote_spanned!(ty.span()=> ::mandrake_storage::__private::column_values::<#alias>());
            chain = quote!(#chain.with_allowed_values(#col, #values));
        }
    }
    for f in cont.columns() {
        if let Some(search) = &f.attrs.search {
            let (col, config) = (&f.column, search.config());
            chain = quote!(#chain.with_search(#col, #config));
        }
    }
    chain = quote!(#chain.with_primary_key(&["id"]));
    for f in cont.columns() {
        let col = &f.column;
        if f.attrs.index.is_some() {
            chain = quote!(#chain.with_index(&[#col]));
        }
        if let Some(references) = &f.attrs.references {
            let on_delete = match f.attrs.on_delete.as_ref().and_then(|(_, v)| *v) {
                None => quote!(NoAction),
                Some(OnDelete::Cascade) => quote!(Cascade),
                Some(OnDelete::SetNull) => quote!(SetNull),
                Some(OnDelete::Restrict) => quote!(Restrict),
            };
            chain = quote!(#chain.with_foreign_key(#col, #references, #ms::OnDelete::#on_delete));
        }
    }
    for key in cont.unique_keys() {
        let cols = key.iter().map(|f| &f.column);
        chain = quote!(#chain.with_unique(&[#(#cols),*]));
    }
    let table = &cont.table;
    let unique_indexes = cont.attrs.uniques.iter().filter(|u| !u.is_plain());
    for index in cont.attrs.indexes.iter().chain(unique_indexes) {
        let cols: Vec<String> = index
            .columns
            .iter()
            .filter_map(|i| resolve_column(cont, &i.to_string()))
            .collect();
        if index.keyword == "index" && index.is_plain() {
            chain = quote!(#chain.with_index(&[#(#cols),*]));
            continue;
        }
        let mut def = match &index.expr {
            Some(expr) => quote!(#ms::schema::Index::on_expression(#table, #expr)),
            None => quote!(#ms::schema::Index::on(#table, &[#(#cols),*])),
        };
        if let Some(method) = &index.using {
            def = quote!(#def.using(#method));
        }
        if let Some(ops) = &index.ops {
            def = quote!(#def.ops(#ops));
        }
        if let Some(predicate) = &index.predicate {
            def = quote!(#def.filter(#predicate));
        }
        if !index.include.is_empty() {
            let include = index
                .include
                .iter()
                .filter_map(|i| resolve_column(cont, &i.to_string()));
            def = quote!(#def.include(&[#(#include),*]));
        }
        if index.keyword == "unique" {
            def = quote!(#def.unique());
        }
        chain = quote!(#chain.with_index_def(#def));
    }
    if let Some(f) = cont.columns().find(|f| f.attrs.tenant.is_some()) {
        let col = &f.column;
        chain = quote!(#chain.with_tenant(#col));
    }
    for key in &cont.attrs.foreign_keys {
        let Some((target, referenced)) = key.target() else {
            continue;
        };
        let cols = key
            .columns
            .iter()
            .filter_map(|i| resolve_column(cont, &i.to_string()));
        let on_delete = match key.on_delete.as_ref().and_then(|(_, v)| *v) {
            None => quote!(NoAction),
            Some(OnDelete::Cascade) => quote!(Cascade),
            Some(OnDelete::SetNull) => quote!(SetNull),
            Some(OnDelete::Restrict) => quote!(Restrict),
        };
        chain = quote! {
            #chain.with_composite_foreign_key(&[#(#cols),*], #target, &[#(#referenced),*], #ms::OnDelete::#on_delete)
        };
    }
    let unindexed = cont
        .columns()
        .filter(|f| f.attrs.no_index.is_some())
        .map(|f| &f.column);
    chain = quote!(#chain.with_foreign_key_indexes(&[#(#unindexed),*]));
    for condition in &cont.attrs.checks {
        chain = quote!(#chain.with_check(#condition));
    }
    for extension in &cont.attrs.extensions {
        chain = quote!(#chain.with_extension(#extension));
    }
    if cont.attrs.notify.is_some() {
        chain = quote!(#chain.with_notify());
    }
    quote!(#chain.with_timestamp_trigger())
}

/// `Debug` for the record and its input types, with `secret` fields redacted.
fn debug_impls(
    cont: &Container,
    new_ident: &syn::Ident,
    patch_ident: &syn::Ident,
    data: &[&Field],
) -> TokenStream {
    let one = |name: &syn::Ident, fields: &[&Field]| {
        let shown = fields.iter().map(|f| {
            let (field, label) = (f.ident, f.ident.to_string());
            if f.attrs.secret.is_some() {
                quote!(.field(#label, &"<redacted>"))
            } else {
                quote!(.field(#label, &self.#field))
            }
        });
        let label = name.to_string();
        quote! {
            impl ::core::fmt::Debug for #name {
                fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    f.debug_struct(#label) #(#shown)* .finish()
                }
            }
        }
    };
    let all: Vec<&Field> = cont.fields.iter().collect();
    let record = one(cont.ident, &all);
    let new = one(new_ident, data);
    let patch = one(patch_ident, data);
    quote!(#record #new #patch)
}

/// `FIELD: Column<Self, Type>` for every stored field, and
/// `ON_<FIELDS>: UniqueKey<Self>` for every unique constraint, in the order
/// `schema_expr` adds them.
fn constants(cont: &Container) -> TokenStream {
    let ms = quote!(::mandrake_storage);
    let (ident, vis) = (cont.ident, cont.vis);
    let upper = |i: &syn::Ident| {
        let name = i.to_string();
        name.strip_prefix("r#").unwrap_or(&name).to_uppercase()
    };
    let columns = cont.columns().enumerate().map(|(i, f)| {
        let (col, ty) = (&f.column, f.ty);
        let name = format_ident!("{}", upper(f.ident), span = f.ident.span());
        match &f.attrs.search {
            None => {
                let doc = format!("The `{col}` column: filters and orders on it.");
                quote! {
                    #[doc = #doc]
                    #vis const #name: #ms::Column<#ident, #ty> = #ms::Column::new(#col, #i);
                }
            }
            Some(search) => {
                let config = search.config();
                let doc = format!(
                    "The `{col}` column: filters and orders on it; full-text search \
                     (`{config}`) with `matches` and `repo().search`."
                );
                quote! {
                    #[doc = #doc]
                    #vis const #name: #ms::Column<#ident, #ty, #ms::Search> =
                        #ms::Column::searchable(#col, #i, #config);
                }
            }
        }
    });
    let partial = cont.partial_unique_keys();
    let uniques = cont
        .unique_keys()
        .into_iter()
        .map(|fields| (fields, ""))
        .chain(
            partial
                .into_iter()
                .map(|fields| (fields, " (partial: among the rows its condition holds for)")),
        )
        .enumerate()
        .map(|(i, (fields, partial))| {
            let names: Vec<String> = fields.iter().map(|f| upper(f.ident)).collect();
            let name = format_ident!("ON_{}", names.join("_"));
            let doc = format!(
                "The unique key on `{}`{partial}: an upsert's conflict target.",
                names.join(", ").to_lowercase()
            );
            quote! {
                #[doc = #doc]
                #vis const #name: #ms::UniqueKey<#ident> = #ms::UniqueKey::new(#i);
            }
        });
    let tenant_scoped = cont.columns().any(|f| f.attrs.tenant.is_some());
    let all_tenants = (cont.attrs.notify.is_some() && tenant_scoped).then(|| {
        quote! {
            /// **Trusted code only.** Every tenant's changes to this table,
            /// each with its tenant: see
            /// [`mandrake_storage::Subscription::all_tenants`].
            #vis async fn subscribe_all_tenants(
                db: &#ms::Db,
                filter: #ms::Filter<#ident>,
            ) -> #ms::Result<#ms::Subscription<#ident, #ms::TenantChange<#ident>>> {
                #ms::Subscription::all_tenants(db, filter).await
            }
        }
    });
    let subscribe = cont.attrs.notify.as_ref().map(|_| {
        quote! {
            #all_tenants

            /// The changes to this table as they commit, from the moment this
            /// returns: see [`mandrake_storage::Subscription`].
            #vis async fn subscribe(
                db: &#ms::Db,
                filter: #ms::Filter<#ident>,
            ) -> #ms::Result<#ms::Subscription<#ident>> {
                #ms::Subscription::start(db, filter).await
            }

            /// The changes to this table since consumer `name` last
            /// acknowledged, across restarts: see
            /// [`mandrake_storage::DurableSubscription`].
            #vis async fn subscribe_durable(
                db: &#ms::Db,
                name: &str,
                filter: #ms::Filter<#ident>,
            ) -> #ms::Result<#ms::DurableSubscription<#ident>> {
                #ms::DurableSubscription::start(db, name, filter).await
            }
        }
    });
    quote! {
        impl #ident {
            #(#columns)*
            #(#uniques)*
            #subscribe
        }
    }
}

/// `list_by_<field>` for every foreign key.
fn list_by_methods(cont: &Container) -> TokenStream {
    let ms = quote!(::mandrake_storage);
    let ident = cont.ident;
    let vis = cont.vis;
    let methods = cont
        .columns()
        .filter(|f| f.attrs.references.is_some())
        .map(|f| {
            let method = format_ident!("list_by_{}", f.ident);
            let (param, col) = (f.ident, &f.column);
            let name = f.ident.to_string();
            let constant = format_ident!(
                "{}",
                name.strip_prefix("r#").unwrap_or(&name).to_uppercase()
            );
            let doc = format!("The rows whose `{col}` is `{param}`, a page at a time.");
            quote! {
                #[doc = #doc]
                #vis async fn #method<'e, E: #ms::sqlx::PgExecutor<'e>>(
                    executor: E,
                    #param: #ms::uuid::Uuid,
                    options: #ms::ListOptions<Self>,
                ) -> #ms::Result<#ms::Page<Self>> {
                    <Self as #ms::Record>::repo()
                        .list(executor, Self::#constant.eq(#param), options)
                        .await
                }
            }
        })
        .collect::<Vec<_>>();
    if methods.is_empty() {
        return quote!();
    }
    quote! {
        impl #ident {
            #(#methods)*
        }
    }
}
