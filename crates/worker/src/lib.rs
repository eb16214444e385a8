//! The embedded Prefect worker: takes flow runs from a work pool and runs each one as a Cloud Run
//! job (pool types `cloud-run-v2` and `cloud-run`), following the protocol of Prefect's own
//! worker and prefect-gcp's Cloud Run workers.
//!
//! - [`template`] and [`refs`]: the job configuration from the pool's base job template, the
//!   deployment's and the run's job variables, blocks and variables (pure, unit-tested);
//! - [`config`]: the Cloud Run job body, job name and labels for one run (pure);
//! - [`cloudrun`]: the Cloud Run API of a pool type, over `bootstrap_gcp::run_jobs` (the one
//!   Cloud Run jobs client);
//! - [`runtime`]: the loop ([`run`]); `submit`: one run from claim to cleanup, as a pure
//!   `reconcile::decide` carried out by `driver::drive`; `cache`: reads shared by the runs of a
//!   poll cycle; [`claim`]: the claim marker; `health`.

mod cache;
pub mod claim;
pub mod cloudrun;
pub mod config;
mod driver;
mod health;
pub mod identity;
pub mod idle;
pub mod naming;
pub mod outcome;
mod reconcile;
pub mod refs;
pub mod runtime;
pub mod settings;
mod submit;
pub mod sweep;
mod tail;
pub mod template;

pub use runtime::{WorkerOptions, run};
