//! The validated plan: what the rest of the tool works from. Every name here has been checked,
//! every template rendered, every default filled in. Secrets are `SecretString`s, which print
//! as `[REDACTED]` and never serialize.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::ids::*;

/// A checked plan file (version 1).
#[derive(Debug, Clone, Serialize)]
pub struct Spec {
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub gcp: Gcp,
    pub service_account: ServiceAccount,
    pub prefect: Prefect,
    pub credentials_block: CredentialsBlock,
    pub work_pool: WorkPool,
    /// The always-on worker service; `None` when the plan has no `worker:` section.
    pub worker: Option<Worker>,
    pub deployments: Vec<Deployment>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gcp {
    pub project: ProjectId,
    pub region: Region,
    /// APIs to enable; when the plan gives none, the ones the plan needs.
    pub apis: Vec<ApiService>,
    /// The project billed for quota of user-credential calls (`x-goog-user-project`); none
    /// unless the plan names one.
    pub quota_project: Option<ProjectId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyMode {
    /// A user-managed JSON key, stored in the Prefect credentials block (as the guide does).
    Json,
    /// No key: the worker uses the identity attached to its Cloud Run service.
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceAccount {
    pub account_id: AccountId,
    /// `<account_id>@<project>.iam.gserviceaccount.com`, derived.
    pub email: ServiceAccountEmail,
    pub display_name: String,
    pub description: String,
    /// Roles granted on the project (or, with `least_privilege`, `roles/iam.serviceAccountUser`
    /// on the account itself instead of on the project).
    pub roles: Vec<Role>,
    pub key: KeyMode,
    pub least_privilege: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Prefect {
    /// `None` means: take it from `PREFECT_API_URL` or the active Prefect profile at run time.
    pub api_url: Option<String>,
    #[serde(skip)]
    pub api_key: Option<SecretString>,
    /// Self-hosted servers with basic auth (`PREFECT_API_AUTH_STRING`, `user:password`).
    #[serde(skip)]
    pub auth_string: Option<SecretString>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CredentialsBlock {
    pub name: BlockName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PoolType {
    /// `cloud-run`: jobs through the Run v1 (Knative) API, as the guide.
    #[serde(rename = "cloud-run")]
    CloudRun,
    /// `cloud-run-v2`: jobs through the Run v2 API.
    #[serde(rename = "cloud-run-v2")]
    CloudRunV2,
}

impl PoolType {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolType::CloudRun => "cloud-run",
            PoolType::CloudRunV2 => "cloud-run-v2",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkPool {
    pub name: PrefectName,
    #[serde(rename = "type")]
    pub pool_type: PoolType,
    pub description: Option<String>,
    /// Further defaults for the base job template's variables (cpu, memory, timeout ...).
    pub job_variables: Map<String, Value>,
    /// A whole base job template to start from instead of the server's default for the type.
    pub base_job_template: Option<Value>,
    pub concurrency_limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerRuntime {
    /// Prefect's own Python worker (`prefect worker start`), as the guide.
    Python,
    /// This tool's embedded worker (`bootstrap worker`).
    Embedded,
}

/// What runs the worker on Cloud Run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerKind {
    /// An always-on Cloud Run service (`--min-instances 1 --no-cpu-throttling`), as the guide.
    Service,
    /// A Cloud Run worker pool: no URL, no port, `instances` always-on instances.
    WorkerPool,
}

impl WorkerKind {
    /// The plan-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Service => "service",
            WorkerKind::WorkerPool => "worker-pool",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Worker {
    pub service: RunServiceName,
    /// The image; when `build` is set, its name without the tag (the tag is the binary's
    /// digest, known after observe; the planner puts the tagged reference in).
    pub image: ImageRef,
    /// `worker.image` left out with `runtime: embedded`: the image is built from the running
    /// `bootstrap` binary (see [`crate::worker_image`]).
    pub build: Option<crate::build::Build>,
    pub runtime: WorkerRuntime,
    pub min_instances: u32,
    pub max_instances: Option<u32>,
    pub cpu_throttling: bool,
    pub allow_unauthenticated: bool,
    pub cpu: String,
    pub memory: String,
    /// The Secret Manager secret that holds the Prefect API key for the service.
    pub api_key_secret: SecretId,
    /// Service (default) or worker pool; a pool is named `service` too.
    pub kind: WorkerKind,
    /// A worker pool's `scaling.manualInstanceCount` (default 1; 0 stops it).
    pub instances: u32,
    /// `worker.scale_to_zero`: the pool sits at 0 instances while idle (worker pools only).
    pub scale_to_zero: Option<ScaleToZero>,
}

impl Worker {
    /// The worker pool's id: `service`, whose rules (a DNS label under 50 characters) are a
    /// worker pool id's too.
    pub fn pool_name(&self) -> RunWorkerPoolName {
        RunWorkerPoolName::from(&self.service)
    }
}

/// `worker.scale_to_zero`: the worker sets its pool's instance count to 0 after `idle` with no
/// scheduled, pending or running runs; the waker sets it back to 1 when a run arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScaleToZero {
    /// How long the work pool must have nothing to do before the worker scales down.
    #[serde(rename = "idle_seconds", serialize_with = "as_seconds")]
    pub idle: std::time::Duration,
}

fn as_seconds<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    pub name: PrefectName,
    pub flow: PrefectName,
    /// `path/to/file.py:function`.
    pub entrypoint: String,
    pub image: Option<ImageRef>,
    /// The image is built from a folder (`build:`); then `image` is `None`.
    pub build: Option<crate::build::Build>,
    pub parameters: Map<String, Value>,
    pub work_queue: PrefectName,
    pub tags: Vec<String>,
    pub description: Option<String>,
    pub job_variables: Map<String, Value>,
    pub pull_steps: Vec<Value>,
    /// Prefect schedule objects (`{"cron": ...}`, `{"interval": ...}`), passed through.
    pub schedules: Vec<Value>,
}
