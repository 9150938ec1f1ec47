//! `embed_migrations!("dir")`: the folder's `.sql` files as `include_str!`s.

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;
use syn::LitStr;

pub fn expand(dir: &LitStr) -> syn::Result<TokenStream> {
    let base = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let path = PathBuf::from(base).join(dir.value());
    let entries = std::fs::read_dir(&path)
        .map_err(|e| syn::Error::new(dir.span(), format!("cannot read {}: {e}", path.display())))?;
    let mut files: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let full = e.path().canonicalize().ok()?;
            name.ends_with(".sql")
                .then(|| (name, full.to_string_lossy().into_owned()))
        })
        .collect();
    files.sort();
    let names = files.iter().map(|(n, _)| n);
    let paths = files.iter().map(|(_, p)| p);
    Ok(quote! {
        ::mandrake_storage::migrate::Migrations::from_sources(&[
            #( (#names, include_str!(#paths)), )*
        ])
    })
}
