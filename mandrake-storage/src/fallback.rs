//! Where [`crate::Db::connect`] goes without `DATABASE_URL`: the embedded
//! cluster when the `embedded` feature is on, else a `Config` error. The one
//! seam between the runtime and the cluster: nothing else of the runtime
//! names it.

use crate::config::Settings;
use crate::error::Result;

impl Settings {
    /// The URL to connect to: `DATABASE_URL`; without it, the embedded
    /// cluster (started if needed) when the `embedded` feature is on, else
    /// a `Config` error naming the variable. A production binary that lost
    /// its variable stops instead of running on an empty database.
    pub async fn resolve_url(&self) -> Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => embedded_url().await,
        }
    }

    /// The URL the application connects to: `DATABASE_URL`; without it,
    /// the embedded cluster as the application's own role
    /// ([`crate::admin::APP_ROLE`]: no superuser, no `BYPASSRLS`), while
    /// the tools ([`Settings::resolve_url`]) connect as the tables' owner.
    pub async fn resolve_app_url(&self) -> Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => embedded_app_url().await,
        }
    }
}

#[cfg(all(feature = "embedded", unix))]
use crate::cluster::{embedded_app_url, embedded_url};

#[cfg(not(all(feature = "embedded", unix)))]
async fn embedded_app_url() -> Result<String> {
    embedded_url().await
}

#[cfg(not(all(feature = "embedded", unix)))]
async fn embedded_url() -> Result<String> {
    Err(crate::Error::Config(
        "DATABASE_URL is not set: set it to the server to use (the embedded development \
         cluster needs mandrake-storage's `embedded` feature)"
            .into(),
    ))
}
