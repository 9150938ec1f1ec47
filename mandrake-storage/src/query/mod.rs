//! Typed queries: filters built from a record's column constants, and the
//! orders, pages and keyset cursors of a listing, and full-text search. Each turns into SQL text
//! that depends only on its shape, with every value bound.

pub(crate) mod aggregate;
pub(crate) mod filter;
pub(crate) mod join;
pub(crate) mod json;
pub(crate) mod list;
pub(crate) mod search;
