//! What GCP and Prefect hold now, reduced to what the planner needs. Filled by `observe`, read by
//! the pure planner. "Absent" is `None`, never an error.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// The label (Run, Secret Manager) and the marker (Prefect descriptions) of what the tool created.
pub const MARKER_LABEL: (&str, &str) = ("managed-by", "bootstrap");
pub const MARKER_TEXT: &str = "managed by bootstrap";

#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Enabled state of each API the plan needs.
    pub apis: BTreeMap<String, bool>,
    pub service_account: Option<ServiceAccount>,
    /// role -> members of the project policy (unconditional bindings only).
    pub project_bindings: BTreeMap<String, BTreeSet<String>>,
    /// role -> members of the service account's own policy.
    pub sa_bindings: BTreeMap<String, BTreeSet<String>>,
    /// User-managed keys of the service account.
    pub keys: Vec<Key>,
    pub block: Option<Block>,
    pub secret: Option<Secret>,
    /// The worker's Cloud Run service as the API returns it (v2 JSON).
    pub service: Option<Value>,
    /// The worker's Cloud Run worker pool as the API returns it (v2 JSON).
    pub worker_pool: Option<Value>,
    pub work_pool: Option<WorkPool>,
    /// The server's default base job template for the plan's pool type.
    pub default_template: Option<Value>,
    /// By "flow/deployment".
    pub deployments: BTreeMap<String, Deployment>,
    /// Cloud Run jobs the worker made for the plan's pool (found by their pool label), in
    /// every region the plan and the pool's template name; regions without any are left out.
    pub worker_jobs: Vec<WorkerJobs>,
    /// The images the plan builds (`build:`), one per distinct source.
    pub images: Vec<BuiltImage>,
    /// Artifact Registry repositories the builds push to; `None`: absent.
    pub repositories: BTreeMap<String, Option<Repository>>,
    /// The wake path of `worker.scale_to_zero` (`None` for plans without it).
    pub wake: Option<crate::wake::Observed>,
}

/// The flow-run jobs of the plan's work pool in one region.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerJobs {
    pub region: bootstrap_spec::ids::Region,
    /// The Cloud Run API the pool type uses: `v2` (`cloud-run-v2`) or `v1` (`cloud-run`).
    pub api: crate::plan::JobsApi,
    /// Short job names, sorted.
    pub names: Vec<bootstrap_spec::ids::RunJobName>,
}

/// One image built from a folder: its source digest (read from disk) and whether the
/// repository already holds an image with that tag.
#[derive(Debug, Clone, PartialEq)]
pub struct BuiltImage {
    pub build: bootstrap_spec::build::Build,
    /// Keys (`flow/name`) of the deployments that run it.
    pub deployments: Vec<String>,
    pub digest: String,
    /// `src-<digest prefix>`.
    pub tag: String,
    /// Files in the uploaded source (the Dockerfile included).
    pub files: usize,
    /// An image `build.image_name:tag` is in the repository.
    pub present: bool,
    /// The `src-` tag of the newest image of this name, if any (what runs now).
    pub previous_tag: Option<String>,
    /// The email of the account the build runs as (it needs push rights on the repository).
    pub build_account: String,
}

impl BuiltImage {
    /// `<image_name>:<tag>`.
    pub fn image_ref(&self) -> String {
        format!("{}:{}", self.build.image_name, self.tag)
    }
}

/// An Artifact Registry repository.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Repository {
    pub format: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// Members with `roles/artifactregistry.reader` on it (unconditional bindings).
    pub readers: BTreeSet<String>,
    /// Members with `roles/artifactregistry.writer` on it (unconditional bindings).
    pub writers: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceAccount {
    pub email: String,
    pub display_name: String,
    pub description: String,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    /// `projects/-/serviceAccounts/<email>/keys/<id>`.
    pub name: String,
    pub key_id: String,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub id: bootstrap_spec::ids::BlockId,
    pub project: Option<String>,
    /// `service_account_info.private_key_id` (read with secrets, only the id is kept).
    pub private_key_id: Option<String>,
    pub client_email: Option<String>,
    pub has_service_account_info: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Secret {
    pub labels: BTreeMap<String, String>,
    /// Whether the latest enabled version holds the plan's API key (`None`: no version).
    pub latest_matches: Option<bool>,
    /// Members with `roles/secretmanager.secretAccessor` on the secret.
    pub accessors: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkPool {
    pub id: String,
    pub pool_type: String,
    pub description: Option<String>,
    pub base_job_template: Value,
    pub concurrency_limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub id: bootstrap_spec::ids::DeploymentId,
    pub flow: String,
    /// The id of its flow (`flow`), as the batch read returned it.
    pub flow_id: bootstrap_spec::ids::FlowId,
    pub name: String,
    /// The fields the plan owns, as the server returns them.
    pub fields: serde_json::Map<String, Value>,
}
