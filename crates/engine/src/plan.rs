//! The plan: a complete, serializable value. `apply` carries it out step by step and makes no
//! decisions of its own (the planner left none).

use bootstrap_prefect::{DeploymentSpec, WorkPoolCreate, WorkPoolUpdate};
use bootstrap_spec::ids::{
    AccountId, AutomationId, BlockId, BlockName, DeploymentId, FlowId, PrefectName, ProjectId,
    Region, RunJobName, RunServiceName, RunWorkerPoolName, SecretId, ServiceAccountEmail,
};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// Where a resource lives, printed as e.g. `gcp.service_account["prefect-service-account"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Address(pub String);

impl Address {
    pub fn new(kind: &str, name: &str) -> Self {
        Address(format!("{kind}[\"{name}\"]"))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a step does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
}

impl Action {
    /// Create what is absent, update what exists.
    pub fn upsert(exists: bool) -> Self {
        if exists { Self::Update } else { Self::Create }
    }
}

/// Whether `plan` is converging on the plan file or tearing it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Apply,
    Destroy,
}

/// One field that changes. Values of sensitive fields are never carried: only the fact of change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub path: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub old: Option<Value>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub new: Option<Value>,
    /// The value is a secret (shown as `(sensitive)`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
    /// The new value is known only during apply (e.g. the id of a block created earlier in it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub known_after_apply: bool,
}

/// A field that is there is `Some`, even when it is `null` (an old value that was null): a
/// plan read back from JSON equals the plan that was written.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl FieldChange {
    pub fn set(path: impl Into<String>, old: Option<Value>, new: Option<Value>) -> Self {
        FieldChange {
            path: path.into(),
            old,
            new,
            sensitive: false,
            known_after_apply: false,
        }
    }

    pub fn sensitive(path: impl Into<String>) -> Self {
        FieldChange {
            path: path.into(),
            old: None,
            new: None,
            sensitive: true,
            known_after_apply: false,
        }
    }

    pub fn after_apply(path: impl Into<String>, old: Option<Value>) -> Self {
        FieldChange {
            path: path.into(),
            old,
            new: None,
            sensitive: false,
            known_after_apply: true,
        }
    }
}

/// A value an operation needs that exists only once an earlier step of the same apply ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum Deferred<T> {
    Known {
        value: T,
    },
    /// The output of the step at this address.
    Step {
        address: Address,
    },
}

/// What a step does, with everything needed to do it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    EnableApis {
        services: Vec<String>,
    },
    CreateServiceAccount {
        account_id: AccountId,
        email: ServiceAccountEmail,
        display_name: String,
        description: String,
    },
    PatchServiceAccount {
        email: ServiceAccountEmail,
        display_name: String,
        description: String,
    },
    DeleteServiceAccount {
        email: ServiceAccountEmail,
    },
    /// One read-modify-write of the project policy: add and remove exactly these (role, member).
    EditProjectPolicy {
        add: Vec<(String, String)>,
        remove: Vec<(String, String)>,
        /// Members that were created in this apply (retry "does not exist" for them).
        new_accounts: Vec<String>,
    },
    /// The same on a service account's own policy (least privilege).
    EditServiceAccountPolicy {
        email: ServiceAccountEmail,
        add: Vec<(String, String)>,
        remove: Vec<(String, String)>,
    },
    /// Create a user-managed key; its private key stays in memory for the block step.
    CreateKey {
        email: ServiceAccountEmail,
    },
    DeleteKey {
        name: String,
        /// The account the key belongs to.
        email: ServiceAccountEmail,
        key_id: String,
    },
    /// Create the secret (if `create`) and add a version holding the Prefect API key.
    PutSecret {
        secret_id: SecretId,
        create: bool,
        add_version: bool,
        labels: serde_json::Map<String, Value>,
    },
    GrantSecretAccess {
        secret_id: SecretId,
        member: String,
    },
    DeleteSecret {
        secret_id: SecretId,
    },
    /// Create or replace the worker's Cloud Run service (PATCH with allowMissing=true).
    UpsertService {
        name: RunServiceName,
        /// Built by the planner; exec sends it as it is.
        body: Box<bootstrap_gcp::run_v2::Service>,
    },
    DeleteService {
        name: RunServiceName,
    },
    /// Create or update the worker's Cloud Run worker pool (PATCH with allowMissing=true);
    /// `count_only` sends `updateMask=scaling.manualInstanceCount` (an in-place resize);
    /// `wait_online` waits until a new worker of the work pool is ONLINE in Prefect (the move
    /// from the service, whose delete depends on this step).
    UpsertWorkerPool {
        name: RunWorkerPoolName,
        /// Built by the planner; exec sends it as it is.
        body: Box<bootstrap_gcp::run_v2::WorkerPool>,
        count_only: bool,
        wait_online: bool,
        /// The Prefect work pool whose workers `wait_online` watches.
        work_pool: PrefectName,
    },
    DeleteWorkerPool {
        name: RunWorkerPoolName,
    },
    UpsertBlock {
        name: BlockName,
        existing_id: Option<BlockId>,
        project: ProjectId,
        /// The key to store: from the key step of this apply, or none (keyless / unchanged key).
        key_from: Option<Address>,
        /// Keyless: store no service_account_info (and remove a stale one).
        keyless: bool,
    },
    DeleteBlock {
        id: BlockId,
        name: BlockName,
    },
    /// Create the work pool. The template's `credentials.default` holds the block ref,
    /// deferred when the block is created in the same apply (filled in by
    /// `template::set_credentials`).
    CreateWorkPool {
        pool: WorkPoolCreate,
        credentials: Option<Deferred<BlockId>>,
    },
    /// Update the work pool in place (the whole template, description, limit).
    UpdateWorkPool {
        name: PrefectName,
        update: WorkPoolUpdate,
        credentials: Option<Deferred<BlockId>>,
    },
    /// Delete the work pool and create it again: a pool's type cannot change.
    ReplaceWorkPool {
        pool: WorkPoolCreate,
        credentials: Option<Deferred<BlockId>>,
    },
    DeleteWorkPool {
        name: PrefectName,
    },
    UpsertDeployment {
        flow: PrefectName,
        name: PrefectName,
        /// The request, in the server's field names.
        body: Box<DeploymentSpec>,
        /// The flow's id when observe saw it (on a live deployment of the same flow): the
        /// flow upsert is then left out, so a change to one deployment sends one write.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow_id: Option<FlowId>,
    },
    DeleteDeployment {
        id: DeploymentId,
        flow: String,
        name: String,
    },
    /// Delete the Cloud Run jobs (and their executions) the worker made for the pool.
    DeleteWorkerJobs {
        pool: String,
        /// `key=value` of the pool label they were found by.
        label: String,
        /// `v2` or `v1`: the Cloud Run API of the pool type.
        api: JobsApi,
        jobs: Vec<WorkerJob>,
    },
    /// Create a docker repository in Artifact Registry (with the marker label).
    CreateRepository {
        repository: String,
        region: Region,
        labels: serde_json::Map<String, Value>,
    },
    /// One read-modify-write of a repository's own IAM policy.
    EditRepositoryPolicy {
        repository: String,
        add: Vec<(String, String)>,
        remove: Vec<(String, String)>,
    },
    DeleteRepository {
        repository: String,
    },
    /// Upload the source and build `image` remotely (Cloud Run `builds:submit`); `digest` is
    /// the source the plan saw, checked again before the upload.
    BuildImage {
        image: String,
        digest: String,
        files: usize,
        build: bootstrap_spec::build::Build,
        /// The account the build runs as (Cloud Build's default, granted push rights first and
        /// checked again before the build).
        #[serde(default)]
        service_account: Option<String>,
    },
    /// Scale to zero: create the waker's secret (if `create`) and add a version holding a new
    /// shared secret, made in memory and kept for the block step (`crate::wake`).
    PutWakerSecret {
        secret_id: SecretId,
        create: bool,
        labels: serde_json::Map<String, Value>,
    },
    /// One read-modify-write of a Cloud Run worker pool's own IAM policy.
    EditWorkerPoolPolicy {
        pool: RunWorkerPoolName,
        add: Vec<(String, String)>,
        remove: Vec<(String, String)>,
    },
    /// The Webhook block calling the waker service `service` at its URL, with the shared
    /// secret of the step at `secret_from`.
    UpsertWakerBlock {
        name: BlockName,
        existing_id: Option<BlockId>,
        service: RunServiceName,
        secret_from: Address,
    },
    /// The wake or the sweep automation, calling the Webhook block `block`.
    UpsertAutomation {
        name: String,
        kind: super::wake::AutomationKind,
        /// The Prefect work pool the automation watches.
        work_pool: PrefectName,
        existing_id: Option<AutomationId>,
        block: Deferred<BlockId>,
    },
    DeleteAutomation {
        id: AutomationId,
        name: String,
    },
}

/// One flow-run job of [`Op::DeleteWorkerJobs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerJob {
    pub region: Region,
    pub name: RunJobName,
}

/// The Cloud Run API that holds a pool type's flow-run jobs (`v2` for `cloud-run-v2`, `v1`
/// for `cloud-run`), in the plan's JSON as those two strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobsApi {
    V1,
    V2,
}

impl From<JobsApi> for bootstrap_gcp::run_jobs::JobsApi {
    fn from(api: JobsApi) -> Self {
        match api {
            JobsApi::V1 => bootstrap_gcp::run_jobs::JobsApi::V1,
            JobsApi::V2 => bootstrap_gcp::run_jobs::JobsApi::V2,
        }
    }
}

impl Op {
    /// A write to the Prefect API (blocks, pools, deployments), as opposed to Google's.
    pub fn is_prefect(&self) -> bool {
        matches!(
            self,
            Op::UpsertBlock { .. }
                | Op::DeleteBlock { .. }
                | Op::CreateWorkPool { .. }
                | Op::UpdateWorkPool { .. }
                | Op::ReplaceWorkPool { .. }
                | Op::DeleteWorkPool { .. }
                | Op::UpsertDeployment { .. }
                | Op::DeleteDeployment { .. }
                | Op::UpsertWakerBlock { .. }
                | Op::UpsertAutomation { .. }
                | Op::DeleteAutomation { .. }
        )
    }
}

/// One change to one resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub address: Address,
    pub action: Action,
    /// A pre-existing resource the tool did not create (no marker) that the plan takes over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// Why, in a few words, when it is not obvious from the changes (drift, orphan, rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub changes: Vec<FieldChange>,
    /// Steps that must finish first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Address>,
    pub op: Op,
}

impl Step {
    /// A step on a resource the plan made or makes: not adopted, no reason given, no field
    /// changes shown and nothing to wait for; a struct update (`Step { changes, ..Step::new(..) }`)
    /// says otherwise.
    pub fn new(address: Address, action: Action, op: Op) -> Self {
        Self {
            address,
            action,
            adopted: false,
            reason: None,
            changes: Vec::new(),
            depends_on: Vec::new(),
            op,
        }
    }
}

/// The whole plan: the steps in an order that respects `depends_on`, and what is already right.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub format_version: u32,
    pub mode: Mode,
    /// The project and region of every Google resource of the plan: the executor reads them
    /// here, never from the plan file.
    pub project: ProjectId,
    pub region: Region,
    pub steps: Vec<Step>,
    /// Resources that already match the plan.
    pub unchanged: Vec<Address>,
    /// Resources that exist and are the plan's but that the tool did not create (kept by destroy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adopted: Vec<Address>,
    /// The worker's estimated monthly cost at list prices (apply plans with a worker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<super::cost::CostEstimate>,
}

impl Plan {
    pub fn has_changes(&self) -> bool {
        !self.steps.is_empty()
    }

    pub fn count(&self, action: Action) -> usize {
        self.steps.iter().filter(|s| s.action == action).count()
    }
}

/// The plan format `plan --out` writes and `apply SAVED_PLAN` reads.
pub const FORMAT_VERSION: u32 = 1;

/// A plan saved by `plan --out`, read back for `apply SAVED_PLAN`.
///
/// There is no state file, so a saved plan cannot be checked against a serial the way
/// Terraform's is. It is checked against the world instead: apply observes again and plans
/// again, and carries the saved plan out only when the new plan is the very same value (the
/// same steps, ops, ids and bodies, and the same resources unchanged). Anything that changed in
/// GCP, in Prefect or in the plan file since the plan was made, and that matters to it, makes
/// the two differ and the saved plan is refused as stale.
pub fn read_saved(text: &str) -> Result<Plan, String> {
    let raw: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let version = raw.get("format_version").and_then(Value::as_u64);
    if version != Some(u64::from(FORMAT_VERSION)) {
        return Err(format!(
            "format_version {} is not {FORMAT_VERSION}, the one this bootstrap reads",
            version.map_or_else(|| "(none)".to_owned(), |v| v.to_string())
        ));
    }
    serde_json::from_value(raw)
        .map_err(|e| format!("not a plan saved by `bootstrap plan --out`: {e}"))
}

/// How the plan made now differs from a saved one, one line per difference (empty: the same).
pub fn differences(saved: &Plan, now: &Plan) -> Vec<String> {
    let mut out = Vec::new();
    if saved.mode != now.mode {
        out.push(format!("mode: saved {:?}, now {:?}", saved.mode, now.mode));
    }
    if saved.project != now.project || saved.region != now.region {
        out.push(format!(
            "target: saved {}/{}, now {}/{}",
            saved.project, saved.region, now.project, now.region
        ));
    }
    let json = |s: &Step| serde_json::to_value(s).unwrap_or(Value::Null);
    let saved_steps: std::collections::BTreeMap<&Address, Value> =
        saved.steps.iter().map(|s| (&s.address, json(s))).collect();
    let now_steps: std::collections::BTreeMap<&Address, Value> =
        now.steps.iter().map(|s| (&s.address, json(s))).collect();
    for (address, step) in &saved_steps {
        match now_steps.get(address) {
            None => out.push(format!("{address}: planned, but no longer needed")),
            Some(n) if n != step => {
                out.push(format!("{address}: would now be planned differently"))
            }
            Some(_) => {}
        }
    }
    for address in now_steps.keys().filter(|a| !saved_steps.contains_key(*a)) {
        out.push(format!(
            "{address}: now needs a change the saved plan does not have"
        ));
    }
    let set = |v: &[Address]| v.iter().cloned().collect::<std::collections::BTreeSet<_>>();
    let (su, nu) = (set(&saved.unchanged), set(&now.unchanged));
    for a in su.symmetric_difference(&nu) {
        if !saved_steps.contains_key(a) && !now_steps.contains_key(a) {
            out.push(format!(
                "{a}: was {}",
                if su.contains(a) {
                    "unchanged, now gone"
                } else {
                    "absent, now unchanged"
                }
            ));
        }
    }
    if set(&saved.adopted) != set(&now.adopted) {
        out.push("the resources taken over (adopted) changed".to_owned());
    }
    if saved.cost != now.cost {
        out.push("the cost estimate changed".to_owned());
    }
    out
}
