//! Transactions on a pooled connection: rolled back when dropped, never
//! reported as committed when they were not, and leaving no session state
//! behind.

use sqlx::postgres::PgTransactionManager;
use sqlx::{Executor, PgConnection};
use sqlx_core::transaction::TransactionManager;

use super::pool::{DEALLOCATE_AND_RESET, PoolConnection, RESET_SESSION};
use crate::error::{Error, Result};

/// A transaction on a connection of the pool: `&mut *tx` is an executor.
/// Dropped without [`Transaction::commit`] (an early return, a cancelled
/// future, a panic), it rolls back: the rollback is sent before the
/// connection is used again, and a connection still inside a transaction
/// after that is closed rather than reused.
pub struct Transaction {
    pub(super) conn: Option<PoolConnection>,
    /// Through PgBouncer: the statements sqlx prepared by name inside the
    /// transaction are on a server connection this client will not see
    /// again, so they are deallocated before it ends.
    pub(super) pgbouncer: bool,
}

impl Transaction {
    /// Commits the transaction.
    ///
    /// A transaction that an earlier failed statement aborted is not
    /// committed (PostgreSQL would answer `COMMIT` with `ROLLBACK`, which
    /// sqlx reports as success): it is rolled back and this returns
    /// [`Error::TransactionAborted`]. Session settings changed inside the
    /// transaction (`SET`, `SET ROLE`) are reset, so they never reach the
    /// next user of the connection.
    pub async fn commit(mut self) -> Result<()> {
        let mut conn = self.conn.take().expect("open until commit or rollback");
        // Any statement fails in an aborted transaction: the reset is the
        // probe. Through PgBouncer the statements sqlx named in the
        // transaction go too (see `Transaction`).
        let reset = if self.pgbouncer {
            DEALLOCATE_AND_RESET
        } else {
            RESET_SESSION
        };
        if let Err(err) = conn.reset_session(reset).await {
            let aborted = err
                .as_database_error()
                .is_some_and(|e| e.code().as_deref() == Some("25P02"));
            self.conn = Some(conn);
            let _ = self.roll_back().await;
            return Err(if aborted {
                Error::TransactionAborted
            } else {
                err.into()
            });
        }
        Ok(PgTransactionManager::commit(&mut conn).await?)
    }

    /// Rolls the transaction back.
    pub async fn rollback(mut self) -> Result<()> {
        self.roll_back().await
    }

    async fn roll_back(&mut self) -> Result<()> {
        let mut conn = self.conn.take().expect("open until commit or rollback");
        if self.pgbouncer && conn.execute("DEALLOCATE ALL").await.is_err() {
            // An aborted transaction refuses even that: closing the
            // connection makes PgBouncer close its server connection, which
            // ends the transaction and its statements.
            conn.discard();
            return Ok(());
        }
        // A session advisory lock taken inside survives the rollback: the
        // session is reset before the connection serves anyone else.
        conn.mark_session_touched();
        Ok(PgTransactionManager::rollback(&mut conn).await?)
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Transaction {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_ref().expect("open until commit or rollback")
    }
}

impl std::ops::DerefMut for Transaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_mut().expect("open until commit or rollback")
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        match self.conn.take() {
            // Closed: PgBouncer then closes its server connection too, and
            // with it the transaction and the statements made in it.
            Some(conn) if self.pgbouncer => conn.discard(),
            Some(mut conn) => {
                // Queued here, flushed by the pool before the connection is
                // reused, and reset then (see `roll_back`).
                PgTransactionManager::start_rollback(&mut conn);
                conn.mark_session_touched();
                self.conn = Some(conn);
            }
            None => {}
        }
    }
}
