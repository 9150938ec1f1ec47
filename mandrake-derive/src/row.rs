//! `#[derive(FromRow)]`: sqlx's `FromRow` for a result struct, through
//! `mandrake_storage::sqlx`, so an application needs no sqlx dependency of
//! its own. Named fields read the column of their name; tuple fields read by
//! position.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Data, DeriveInput, Fields, Index};

pub fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new_spanned(
            &input.ident,
            "FromRow reads a row into a struct: use it on a struct",
        ));
    };
    let ms = quote!(::mandrake_storage);
    let get = quote!(#ms::sqlx::Row::try_get);
    let body = match &data.fields {
        Fields::Named(fields) => {
            let reads = fields.named.iter().map(|f| {
                let ident = f.ident.as_ref().expect("named");
                let name = ident.to_string();
                let name = name.strip_prefix("r#").unwrap_or(&name);
                quote!(#ident: #get(row, #name)?)
            });
            quote!(Self { #(#reads,)* })
        }
        Fields::Unnamed(fields) => {
            let reads = (0..fields.unnamed.len()).map(|i| {
                let index = Index::from(i);
                quote!(#get(row, #index)?)
            });
            quote!(Self(#(#reads,)*))
        }
        Fields::Unit => quote!(Self),
    };
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics #ms::sqlx::FromRow<'_, #ms::sqlx::postgres::PgRow> for #ident #ty_generics #where_clause {
            fn from_row(row: &#ms::sqlx::postgres::PgRow) -> ::core::result::Result<Self, #ms::sqlx::Error> {
                ::core::result::Result::Ok(#body)
            }
        }
    })
}
