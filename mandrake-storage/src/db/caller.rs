//! Who wrote the SQL a pooled connection runs: this crate's typed calls, or
//! the caller (raw sqlx through `&Db`).
//!
//! Caller-written SQL may change the session it runs in by any route (a
//! `SET`, `set_config` under any spelling, a function that calls it, a
//! temporary table, an advisory lock), so its connection is reset before it
//! serves anyone else. The typed calls never do: they run inside [`ours`],
//! and only they skip the reset. Which is which follows from where the
//! statement came from, never from its text.

use std::future::Future;

tokio::task_local! {
    static OURS: ();
}

/// Runs `call`, a typed call of this crate, so that the statements it sends
/// through `&Db` are known not to change their session.
pub(crate) async fn ours<F: Future>(call: F) -> F::Output {
    OURS.scope((), call).await
}

/// Whether the statement being sent comes from a typed call ([`ours`]).
pub(crate) fn sql_is_ours() -> bool {
    OURS.try_with(|_| ()).is_ok()
}
