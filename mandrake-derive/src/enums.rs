//! Emits `RecordEnum`, `ColumnType` and the sqlx encode/decode impls for a
//! fieldless enum stored as TEXT.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields};

use crate::ast::snake_case;
use crate::attr::variant_rename;
use crate::ctxt::Ctxt;

pub fn expand(input: &DeriveInput) -> Result<TokenStream, Vec<syn::Error>> {
    let cx = Ctxt::new();
    let mut variants = Vec::new();
    match &input.data {
        Data::Enum(data) => {
            for v in &data.variants {
                if !matches!(v.fields, Fields::Unit) {
                    cx.error_spanned_by(
                        &v.ident,
                        "#[derive(RecordEnum)] variants cannot carry data: the column stores a name",
                    );
                }
                let stored = variant_rename(&cx, &v.attrs)
                    .map(|r| r.value())
                    .unwrap_or_else(|| snake_case(&v.ident.to_string()));
                variants.push((&v.ident, stored));
            }
            if data.variants.is_empty() {
                cx.error_spanned_by(
                    &input.ident,
                    "#[derive(RecordEnum)] needs at least one variant",
                );
            }
        }
        _ => cx.error_spanned_by(&input.ident, "#[derive(RecordEnum)] works on enums only"),
    }
    if !input.generics.params.is_empty() {
        cx.error_spanned_by(
            &input.generics,
            "#[derive(RecordEnum)] does not support generics",
        );
    }
    cx.check()?;

    let ms = quote!(::mandrake_storage);
    let ident = &input.ident;
    let names: Vec<_> = variants.iter().map(|(v, _)| *v).collect();
    let values: Vec<_> = variants.iter().map(|(_, s)| s).collect();
    Ok(quote! {
        const _: () = {
            use #ms::sqlx::{Postgres, postgres::{PgTypeInfo, PgValueRef, PgArgumentBuffer}};
            use #ms::sqlx::error::BoxDynError;

            impl #ms::RecordEnum for #ident {
                const VALUES: &'static [&'static str] = &[#(#values),*];
                fn as_str(&self) -> &'static str {
                    match self { #(Self::#names => #values,)* }
                }
                fn parse(value: &str) -> ::core::option::Option<Self> {
                    match value {
                        #(#values => ::core::option::Option::Some(Self::#names),)*
                        _ => ::core::option::Option::None,
                    }
                }
            }

            impl #ms::ColumnType for #ident {
                const SQL_TYPE: &'static str = "TEXT";
                const VALUES: &'static [&'static str] = <Self as #ms::RecordEnum>::VALUES;
                type Cell = Self;
                type Scalar = Self;
                fn into_cell(self) -> ::core::option::Option<Self> {
                    ::core::option::Option::Some(self)
                }
            }

            impl #ms::sqlx::Type<Postgres> for #ident {
                fn type_info() -> PgTypeInfo {
                    #ms::__private::enum_support::type_info()
                }
                fn compatible(ty: &PgTypeInfo) -> bool {
                    #ms::__private::enum_support::compatible(ty)
                }
            }

            impl #ms::sqlx::postgres::PgHasArrayType for #ident {
                fn array_type_info() -> PgTypeInfo {
                    #ms::__private::enum_support::array_type_info()
                }
            }

            impl<'q> #ms::sqlx::Encode<'q, Postgres> for #ident {
                fn encode_by_ref(
                    &self,
                    buf: &mut PgArgumentBuffer,
                ) -> ::core::result::Result<#ms::sqlx::encode::IsNull, BoxDynError> {
                    #ms::__private::enum_support::encode(self, buf)
                }
            }

            impl<'r> #ms::sqlx::Decode<'r, Postgres> for #ident {
                fn decode(value: PgValueRef<'r>) -> ::core::result::Result<Self, BoxDynError> {
                    #ms::__private::enum_support::decode(value)
                }
            }
        };
    })
}
