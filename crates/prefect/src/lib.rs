//! A Prefect REST API client for Prefect Cloud and self-hosted servers.
//!
//! - [`PrefectConfig`] resolves the API URL and credentials (plan > environment > profile);
//! - [`PrefectClient`] makes the calls, with timeouts, bounded retries (429, 502, 503 — the
//!   latter is what a SQLite-backed server answers under load — and refused connections) and
//!   one-line [`PrefectError`]s;
//! - [`models`] holds the typed objects; secrets read back from the server come wrapped in
//!   [`SecretValue`], which never prints.

pub mod api;
mod client;
pub mod config;
mod error;
pub mod models;
pub mod wake;

pub use api::{Automation, AutomationSpec, EventFilter, EventStream, pick_block_schema};
pub use client::{Jitter, PrefectClient, RetryPolicy, prefect_default};
pub use config::{
    ActiveProfile, ClientRetrySettings, CloudWorkspace, ConfigOverrides, PrefectConfig, Source,
    active_profile,
};
pub use error::PrefectError;
pub use models::*;
