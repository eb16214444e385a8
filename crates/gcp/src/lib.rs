//! Google Cloud REST clients written against Google's discovery documents.
//!
//! # Layers
//! - [`auth`]: [`TokenSource`] (our trait) with [`ServiceAccountKeySource`] (a key JSON held
//!   in memory), [`AmbientTokenSource`] (gcloud conventions: `GOOGLE_APPLICATION_CREDENTIALS`,
//!   ADC file, metadata server, gcloud CLI) and [`StaticTokenSource`].
//! - [`gcloud`]: [`gcloud_config()`] reads the active gcloud configuration's project and
//!   `run/region`.
//! - [`http`]: [`GcpHttp`] (one reqwest client, [`Endpoints`], a token source and a
//!   [`RetryPolicy`]); [`Call`] describes one request; [`OptionalExt::optional`] turns
//!   not-found into `None`.
//! - [`error`]: [`GcpError`], parsed from Google's error envelope.
//! - [`retry`]: [`RetryPolicy`] and the pure retry decisions.
//! - [`operations`]: [`Operation`] and polling with a caller-given deadline.
//!
//! # Quick start
//! ```no_run
//! # async fn demo() -> Result<(), bootstrap_gcp::GcpError> {
//! use std::sync::Arc;
//! use bootstrap_gcp::{AmbientTokenSource, Endpoints, GcpHttp, RetryPolicy};
//! let tokens = Arc::new(AmbientTokenSource::discover().await?);
//! let http = GcpHttp::new(Endpoints::from_env()?, tokens, RetryPolicy::default())?;
//! # let _ = http; Ok(()) }
//! ```

pub mod auth;
pub mod error;
pub mod gcloud;
pub mod http;
pub mod iam;
pub mod operations;
pub mod policy;
pub mod resourcemanager;
pub mod retry;
pub mod run_v2;
pub mod secretmanager;

pub use auth::{AmbientTokenSource, ServiceAccountKeySource, StaticTokenSource, TokenSource};
pub use error::GcpError;
pub use gcloud::{GcloudConfig, Setting, gcloud_config};
pub use http::{Api, Call, Endpoints, GcpHttp, OptionalExt};
pub use operations::{Operation, PollBackoff};
pub use policy::{Binding, Expr, Policy, PolicyTarget, RmwOptions, RmwOutcome};
pub use retry::RetryPolicy;

/// Installs ring as rustls' process-wide crypto provider (reqwest is built without one).
/// Idempotent; safe to call from several places and threads.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which serves just as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
