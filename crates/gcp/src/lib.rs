//! Google Cloud REST clients written against Google's discovery documents.
//!
//! # Layers
//! - [`auth`]: [`TokenSource`] (our trait) with [`ServiceAccountKeySource`] (a key JSON held
//!   in memory), [`AmbientTokenSource`] (Google's discovery order: `--credentials-file`,
//!   `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's ADC file, the metadata server; every file type
//!   Google's libraries accept; impersonation; the quota project) and [`StaticTokenSource`].
//! - [`gcloud`]: [`gcloud_config()`] reads the active gcloud configuration's project and
//!   `run/region`.
//! - [`http`]: [`GcpHttp`] (one reqwest client, [`Endpoints`], a token source and a
//!   [`RetryPolicy`]); [`Call`] describes one request; [`OptionalExt::optional`] turns
//!   not-found into `None`.
//! - [`error`]: [`GcpError`], parsed from Google's error envelope.
//! - [`retry`]: [`RetryPolicy`], the pure retry decisions, and [`retry::retry_while`] for
//!   eventual consistency after our own writes (e.g. 403 actAs after a grant).
//! - [`operations`]: [`Operation`] and polling with a caller-given deadline.
//! - [`policy`]: [`Policy`], `add_member` / `remove_member` / `has_member`, and
//!   [`policy::read_modify_write`] over a [`PolicyTarget`] (project, service account, secret,
//!   repository, worker pool), whose `get`/`set` are every API's getIamPolicy/setIamPolicy.
//!
//! # Clients (async fns taking `&GcpHttp`; `get_*` return `Option`, deletes return whether
//! something was deleted or the operation)
//! - [`iam`]: service accounts get/create/patch/delete/list, `wait_until_visible` (N reads in
//!   a row after a create); keys list/get/create/delete
//!   ([`iam::create_key`] returns the key JSON as a `SecretString`); SA get/setIamPolicy.
//! - [`resourcemanager`]: project get; get/setIamPolicy (version 3, `updateMask`);
//!   testIamPermissions.
//! - [`serviceusage`]: get/batchGet/is_enabled; enable, batchEnable, `enable_all` (waits).
//! - [`secretmanager`]: secret get/create/delete; addVersion; list versions; access latest
//!   (a `SecretString`); get/setIamPolicy.
//! - [`run_v2`]: services, jobs and worker pools get/create/patch(allowMissing)/delete (one
//!   implementation over [`run_v2::Resource`]); jobs list/run; executions
//!   get/list/delete/cancel; operations get/wait.
//! - [`run_v1`]: namespaces jobs create/get/replace/list/delete/run; executions
//!   get/delete/cancel (regional host).
//! - [`logging`]: Cloud Logging `entries:list`; [`logging::execution_tail`], the last lines a
//!   Cloud Run job execution printed.
//! - [`run_builds`]: Cloud Run v2 source builds: `:uploadSource` (multipart media upload of a
//!   `.tar.gz`) and `builds:submit` (a Docker build pushed to Artifact Registry).
//! - [`cloudbuild`]: the submitted build's operation get / wait (progress callback, deadline)
//!   and builds get.
//! - [`artifactregistry`]: docker repositories get/create/delete (operations), get/setIamPolicy,
//!   docker images get/list.
//! - [`run_jobs`]: one Cloud Run jobs facade over v1 and v2 for the embedded worker's flow-run
//!   jobs ([`run_jobs::Jobs`], typed [`run_jobs::JobView`] / [`run_jobs::ExecutionView`]).
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

pub mod artifactregistry;
pub mod auth;
pub mod cloudbuild;
pub mod error;
pub mod gcloud;
pub mod http;
pub mod iam;
pub mod logging;
pub mod operations;
pub mod policy;
pub mod resourcemanager;
pub mod retry;
pub mod run_builds;
pub mod run_jobs;
pub mod run_v1;
pub mod run_v2;
pub mod secretmanager;
pub mod serviceusage;
#[cfg(test)]
mod test_support;

pub use auth::{
    AmbientTokenSource, CredentialInfo, CredentialKind, DiscoverOptions, ServiceAccountKeySource,
    StaticTokenSource, TokenSource,
};
pub use error::GcpError;
pub use gcloud::{GcloudConfig, Setting, gcloud_config};
pub use http::{Api, Call, Endpoints, GcpHttp, OptionalExt};
pub use operations::{Operation, PollBackoff};
pub use policy::{Binding, Expr, Policy, PolicyTarget, RmwOptions, RmwOutcome};
pub use retry::RetryPolicy;

/// Installs ring as rustls' process-wide crypto provider (reqwest is built without one).
/// Idempotent; safe to call from several places and threads.
pub fn init_crypto() {
    // One provider install for the Google and Prefect clients alike (the HTTP layer's).
    bootstrap_http::init_crypto();
}
