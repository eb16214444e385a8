//! The `bootstrap` plan file: parse (YAML, positions kept) -> render templates -> validate,
//! giving a [`Spec`] or every error found, each with file:line:column and a hint.
//!
//! Templates: any string value of the plan's own sections may use `{{ env.NAME }}`,
//! `{{ env.NAME | default(value="x") }}` and values of sections above it, in this order:
//! `gcp` (`gcp.project`, `gcp.region`), `service_account` (`.name`, `.email`),
//! `credentials_block` (`.name`), `work_pool` (`.name`, `.type`), `prefect` (`.api_url`),
//! `worker` (`.service`), then `deployments`. Free-form objects passed to Prefect
//! (`parameters`, `job_variables`, `pull_steps`, `schedules`, `base_job_template`) are not
//! rendered: Prefect has its own `{{ }}` templating there.

pub mod build;
pub mod checks;
pub mod context;
pub mod diag;
pub mod ids;
mod load;
pub mod model;
mod node;
pub mod prefect_yaml;
mod reader;
mod scale_to_zero;
mod sections;
mod template;
pub mod worker_image;

pub use checks::{Field, check_field};
pub use diag::{Diagnostic, Diagnostics, Pos};
pub use load::{load, load_bytes, load_str, load_str_on, load_with};
pub use model::*;
pub use node::MAX_PLAN_BYTES;
pub use sections::{DEFAULT_ROLES, GCLOUD_PROJECT, GCLOUD_REGION, TOP_KEYS, VERSION};
