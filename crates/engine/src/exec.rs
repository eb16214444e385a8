//! Carrying out one step. Every function is idempotent: it reads before it writes where the
//! API has no idempotent write, so that running an interrupted apply again converges.
//! Returns whether anything was changed.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bootstrap_gcp::policy::{self, PolicyTarget, RmwOptions};
use bootstrap_gcp::{GcpError, artifactregistry, iam, run_v2, secretmanager, serviceusage};
use bootstrap_prefect::{
    BlockDocumentCreate, DeploymentSpec, PrefectError, SecretValue, WorkPoolCreate, WorkPoolUpdate,
    pick_block_schema,
};
use bootstrap_spec::ids::*;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::apply::Outputs;
use super::context::Context;
use super::plan::{Address, Deferred, Op, Plan, Step};
use super::planner::template;

/// How long a Cloud Run or Service Usage operation may take before apply gives up on it.
pub(crate) const OPERATION_DEADLINE: Duration = Duration::from_secs(600);
/// How long to keep retrying a freshly granted permission that has not propagated yet:
/// "typically 2 minutes, but could potentially take 7 minutes or longer"
/// (cloud.google.com/iam/docs/access-change-propagation).
pub(crate) const GRANT_PROPAGATION: Duration = Duration::from_secs(420);
/// How long a service account created in this run may read as "does not exist" to IAM (the
/// same documented bound).
const NEW_ACCOUNT_GRACE: Duration = Duration::from_secs(420);
/// How long a call to an API this apply just enabled may still answer SERVICE_DISABLED
/// (Google's own text: "If you enabled this API recently, wait a few minutes for the action
/// to propagate to our systems and retry").
const API_PROPAGATION: Duration = Duration::from_secs(300);
const GCP_CREDENTIALS: &str = "gcp-credentials";

/// APIs this process has enabled (by an `EnableApis` step): only their SERVICE_DISABLED
/// answers are waited out; any other disabled API fails at once.
static JUST_ENABLED: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

fn just_enabled(service: &str) -> bool {
    JUST_ENABLED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(service)
}

/// The API of a SERVICE_DISABLED error anywhere in the chain.
fn disabled_service(e: &anyhow::Error) -> Option<String> {
    e.chain().find_map(|c| match c.downcast_ref::<GcpError>() {
        Some(GcpError::ServiceDisabled { service, .. }) => Some(service.clone()),
        _ => None,
    })
}

/// Carries out `step`; a step that hits SERVICE_DISABLED for an API this apply enabled a
/// moment ago is redone (steps are idempotent) with backoff until [`API_PROPAGATION`].
pub async fn run(
    ctx: &Context,
    plan: &Plan,
    step: &Step,
    outputs: &Mutex<Outputs>,
) -> Result<bool> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_secs(2);
    loop {
        match run_once(ctx, plan, step, outputs).await {
            Err(e)
                if disabled_service(&e).is_some_and(|s| just_enabled(&s))
                    && started.elapsed() + delay < API_PROPAGATION =>
            {
                let service = disabled_service(&e).unwrap_or_default();
                tracing::warn!(
                    "waiting for {service}, enabled by this apply, to be usable (Google: a few \
                     minutes; up to {}s)",
                    API_PROPAGATION.as_secs()
                );
                let jitter = Duration::from_millis(rand::random::<u64>() % 500);
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(Duration::from_secs(20));
            }
            other => return other,
        }
    }
}

/// What every op's function may use: the clients, the plan's header (the project and region of
/// every Google resource), this apply's outputs, and the step's address (under which a step
/// records what it made for later steps).
struct StepEnv<'a> {
    ctx: &'a Context,
    project: &'a ProjectId,
    region: &'a Region,
    outputs: &'a Mutex<Outputs>,
    address: &'a Address,
}

impl StepEnv<'_> {
    fn http(&self) -> &bootstrap_gcp::GcpHttp {
        &self.ctx.gcp
    }

    /// Whether this apply granted IAM roles so far (denials they will lift are retried).
    async fn granted(&self) -> bool {
        self.outputs.lock().await.granted
    }

    /// Records that this apply changed an IAM policy.
    async fn record_grant(&self, changed: bool) {
        if changed {
            self.outputs.lock().await.granted = true;
        }
    }

    /// The secret an earlier step of this apply made (a key file, the waker's secret).
    async fn secret_from(&self, address: &Address, what: &str) -> Result<SecretString> {
        self.outputs
            .lock()
            .await
            .keys
            .get(address)
            .cloned()
            .ok_or_else(|| anyhow!("the {what} from {address} is not available"))
    }

    async fn keep_secret(&self, secret: SecretString) {
        self.outputs
            .lock()
            .await
            .keys
            .insert(self.address.clone(), secret);
    }

    async fn keep_id(&self, id: BlockId) {
        self.outputs
            .lock()
            .await
            .ids
            .insert(self.address.clone(), id);
    }
}

/// Everything a step needs is in the plan: the header's project and region, and the step's op.
/// One function per op; this only hands each its fields.
async fn run_once(
    ctx: &Context,
    plan: &Plan,
    step: &Step,
    outputs: &Mutex<Outputs>,
) -> Result<bool> {
    let env = &StepEnv {
        ctx,
        project: &plan.project,
        region: &plan.region,
        outputs,
        address: &step.address,
    };
    match &step.op {
        Op::EnableApis { services } => enable_apis(env, services).await,
        Op::CreateServiceAccount {
            account_id,
            email,
            display_name,
            description,
        } => create_service_account(env, account_id, email, display_name, description).await,
        Op::PatchServiceAccount {
            email,
            display_name,
            description,
        } => patch_service_account(env, email, display_name, description).await,
        Op::DeleteServiceAccount { email } => delete_service_account(env, email).await,
        Op::EditProjectPolicy {
            add,
            remove,
            new_accounts,
        } => edit_project_policy(env, add, remove, new_accounts).await,
        Op::EditServiceAccountPolicy { email, add, remove } => {
            edit_service_account_policy(env, email, add, remove).await
        }
        Op::CreateKey { email } => create_key(env, email).await,
        Op::DeleteKey { email, key_id, .. } => delete_key(env, email, key_id).await,
        Op::PutSecret {
            secret_id,
            create,
            add_version,
            labels,
        } => put_secret(env, secret_id, *create, *add_version, labels).await,
        Op::GrantSecretAccess { secret_id, member } => {
            grant_secret_access(env, secret_id, member).await
        }
        Op::DeleteSecret { secret_id } => delete_secret(env, secret_id).await,
        Op::UpsertService { name, body } => upsert_service(env, name, body).await,
        Op::DeleteService { name } => delete_service(env, name).await,
        Op::UpsertWorkerPool {
            name,
            body,
            count_only,
            wait_online,
            work_pool,
        } => upsert_worker_pool(env, name, body, *count_only, *wait_online, work_pool).await,
        Op::DeleteWorkerPool { name } => {
            super::exec_pool::delete(ctx, (env.project, env.region), name).await
        }
        Op::PutWakerSecret {
            secret_id,
            create,
            labels,
        } => put_waker_secret(env, secret_id, *create, labels).await,
        Op::EditWorkerPoolPolicy { pool, add, remove } => {
            edit_worker_pool_policy(env, pool, add, remove).await
        }
        Op::UpsertWakerBlock {
            name,
            existing_id,
            service,
            secret_from,
        } => upsert_waker_block(env, name, *existing_id, service, secret_from).await,
        Op::UpsertAutomation {
            name,
            kind,
            work_pool,
            existing_id,
            block,
        } => upsert_automation(env, name, *kind, work_pool, *existing_id, block).await,
        Op::DeleteAutomation { id, name } => delete_automation(env, *id, name).await,
        Op::UpsertBlock {
            name,
            existing_id,
            project,
            key_from,
            keyless,
        } => {
            upsert_block(
                env,
                name,
                *existing_id,
                project,
                key_from.as_ref(),
                *keyless,
            )
            .await
        }
        Op::DeleteBlock { id, name } => delete_block(env, *id, name).await,
        Op::CreateWorkPool { pool, credentials } => {
            create_work_pool(env, pool, credentials.as_ref()).await
        }
        Op::UpdateWorkPool {
            name,
            update,
            credentials,
        } => update_work_pool(env, name, update, credentials.as_ref()).await,
        Op::ReplaceWorkPool { pool, credentials } => {
            replace_work_pool(env, pool, credentials.as_ref()).await
        }
        Op::DeleteWorkPool { name } => delete_work_pool(env, name).await,
        Op::CreateRepository {
            repository,
            region,
            labels,
        } => create_repository(env, repository, region, labels).await,
        Op::EditRepositoryPolicy {
            repository,
            add,
            remove,
        } => edit_repository_policy(env, repository, add, remove).await,
        Op::DeleteRepository { repository } => delete_repository(env, repository).await,
        Op::BuildImage {
            image,
            digest,
            build,
            service_account,
            ..
        } => build_image(env, build, image, digest, service_account.as_deref()).await,
        Op::UpsertDeployment {
            flow,
            name,
            body,
            flow_id,
        } => upsert_deployment(env, flow, name, body, *flow_id).await,
        Op::DeleteDeployment { id, flow, name } => delete_deployment(env, *id, flow, name).await,
        Op::DeleteWorkerJobs { api, jobs, .. } => delete_worker_jobs(env, *api, jobs).await,
    }
}

// ---- Google: APIs, service accounts, IAM, keys, secrets ----

async fn enable_apis(env: &StepEnv<'_>, services: &[String]) -> Result<bool> {
    serviceusage::enable_all(env.http(), env.project, services, OPERATION_DEADLINE)
        .await
        .with_context(|| format!("enabling {}", services.join(", ")))?;
    JUST_ENABLED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(services.iter().cloned());
    Ok(true)
}

async fn create_service_account(
    env: &StepEnv<'_>,
    account_id: &AccountId,
    email: &ServiceAccountEmail,
    display_name: &str,
    description: &str,
) -> Result<bool> {
    let http = env.http();
    match iam::create_service_account(
        http,
        env.project,
        account_id,
        Some(display_name),
        Some(description),
    )
    .await
    {
        Ok(_) => {}
        // Created by a concurrent apply, or by an earlier one that died: adopt it.
        Err(e) if e.is_already_exists() => {
            iam::patch_service_account(
                http,
                env.project,
                email,
                Some(display_name),
                Some(description),
            )
            .await?;
        }
        Err(e) => return Err(e.into()),
    }
    wait_until_visible(env.ctx, env.project, email).await?;
    Ok(true)
}

async fn patch_service_account(
    env: &StepEnv<'_>,
    email: &ServiceAccountEmail,
    display_name: &str,
    description: &str,
) -> Result<bool> {
    iam::patch_service_account(
        env.http(),
        env.project,
        email,
        Some(display_name),
        Some(description),
    )
    .await?;
    Ok(true)
}

async fn delete_service_account(env: &StepEnv<'_>, email: &ServiceAccountEmail) -> Result<bool> {
    Ok(iam::delete_service_account(env.http(), env.project, email).await?)
}

async fn edit_project_policy(
    env: &StepEnv<'_>,
    add: &[(String, String)],
    remove: &[(String, String)],
    new_accounts: &[String],
) -> Result<bool> {
    let opts = RmwOptions {
        member_grace: (!new_accounts.is_empty()).then_some(NEW_ACCOUNT_GRACE),
        ..RmwOptions::default()
    };
    let out = policy::read_modify_write(
        env.http(),
        &PolicyTarget::Project(env.project.clone()),
        opts,
        |p| edit(p, add, remove),
    )
    .await
    .context("editing the project IAM policy")?;
    env.record_grant(out.changed).await;
    Ok(out.changed)
}

/// One read-modify-write of a resource's own IAM policy, whose members may have been created
/// moments ago in this apply.
async fn edit_own_policy(
    env: &StepEnv<'_>,
    target: &PolicyTarget,
    add: &[(String, String)],
    remove: &[(String, String)],
) -> Result<bool> {
    let opts = RmwOptions {
        member_grace: Some(NEW_ACCOUNT_GRACE),
        ..RmwOptions::default()
    };
    let out = policy::read_modify_write(env.http(), target, opts, |p| edit(p, add, remove)).await?;
    Ok(out.changed)
}

async fn edit_service_account_policy(
    env: &StepEnv<'_>,
    email: &ServiceAccountEmail,
    add: &[(String, String)],
    remove: &[(String, String)],
) -> Result<bool> {
    let target = PolicyTarget::ServiceAccount {
        project: env.project.clone(),
        email: email.clone(),
    };
    let changed = edit_own_policy(env, &target, add, remove).await?;
    env.record_grant(changed).await;
    Ok(changed)
}

async fn create_key(env: &StepEnv<'_>, email: &ServiceAccountEmail) -> Result<bool> {
    let created = create_key_safely(env.http(), env.project, email)
        .await
        .map_err(|e| {
            if e.is_key_creation_forbidden() {
                anyhow!(e).context(
                    "an organization policy forbids service account keys \
                     (constraints/iam.disableServiceAccountKeyCreation); set `service_account.key: none` \
                     to run keyless: the worker then uses the identity attached to its Cloud Run service",
                )
            } else {
                anyhow!(e)
            }
        })?;
    env.keep_secret(created.json).await;
    Ok(true)
}

async fn delete_key(env: &StepEnv<'_>, email: &ServiceAccountEmail, key_id: &str) -> Result<bool> {
    Ok(iam::delete_key(env.http(), env.project, email, key_id).await?)
}

async fn put_secret(
    env: &StepEnv<'_>,
    id: &SecretId,
    create: bool,
    add_version: bool,
    labels: &serde_json::Map<String, Value>,
) -> Result<bool> {
    let http = env.http();
    let key = env
        .ctx
        .api_key()
        .ok_or_else(|| anyhow!("no Prefect API key to store"))?;
    if create {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        match secretmanager::create_secret(http, env.project, id, &labels).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if add_version {
        secretmanager::add_version(http, env.project, id, key).await?;
    }
    Ok(true)
}

async fn grant_secret_access(env: &StepEnv<'_>, secret: &SecretId, member: &str) -> Result<bool> {
    let target = PolicyTarget::Secret {
        project: env.project.clone(),
        secret: secret.clone(),
    };
    let add = [(
        "roles/secretmanager.secretAccessor".to_string(),
        member.to_owned(),
    )];
    let changed = edit_own_policy(env, &target, &add, &[]).await?;
    env.record_grant(changed).await;
    Ok(changed)
}

async fn delete_secret(env: &StepEnv<'_>, id: &SecretId) -> Result<bool> {
    Ok(secretmanager::delete_secret(env.http(), env.project, id).await?)
}

// ---- Cloud Run ----

async fn delete_service(env: &StepEnv<'_>, name: &RunServiceName) -> Result<bool> {
    match run_v2::delete_service(env.http(), env.project, env.region, name).await? {
        None => Ok(false),
        Some(op) => {
            run_v2::wait_operation(env.http(), op, OPERATION_DEADLINE).await?;
            Ok(true)
        }
    }
}

async fn upsert_worker_pool(
    env: &StepEnv<'_>,
    name: &RunWorkerPoolName,
    body: &run_v2::WorkerPool,
    count_only: bool,
    wait_online: bool,
    work_pool: &PrefectName,
) -> Result<bool> {
    let change = super::exec_pool::Change {
        count_only,
        wait_online,
        granted: env.granted().await,
    };
    super::exec_pool::upsert(
        env.ctx,
        (env.project, env.region),
        work_pool,
        name,
        body,
        change,
    )
    .await?;
    Ok(true)
}

async fn edit_worker_pool_policy(
    env: &StepEnv<'_>,
    pool: &RunWorkerPoolName,
    add: &[(String, String)],
    remove: &[(String, String)],
) -> Result<bool> {
    let target = PolicyTarget::WorkerPool {
        project: env.project.clone(),
        region: env.region.clone(),
        pool: pool.clone(),
    };
    let changed = edit_own_policy(env, &target, add, remove).await?;
    env.record_grant(changed).await;
    Ok(changed)
}

// ---- scale to zero: the waker's secret, its Webhook block and the automations ----

async fn put_waker_secret(
    env: &StepEnv<'_>,
    id: &SecretId,
    create: bool,
    labels: &serde_json::Map<String, Value>,
) -> Result<bool> {
    let secret = super::wake::put_secret(env.ctx, env.project, id, create, labels).await?;
    // Kept in memory for the block step of this apply only.
    env.keep_secret(secret).await;
    Ok(true)
}

async fn upsert_waker_block(
    env: &StepEnv<'_>,
    name: &BlockName,
    existing_id: Option<BlockId>,
    service: &RunServiceName,
    secret_from: &Address,
) -> Result<bool> {
    let secret = env.secret_from(secret_from, "shared secret").await?;
    let id = super::wake::upsert_block(
        env.ctx,
        (env.project, env.region),
        name,
        existing_id,
        service,
        &secret,
    )
    .await?;
    env.keep_id(id).await;
    Ok(true)
}

async fn upsert_automation(
    env: &StepEnv<'_>,
    name: &str,
    kind: super::wake::AutomationKind,
    work_pool: &PrefectName,
    existing_id: Option<AutomationId>,
    block: &Deferred<BlockId>,
) -> Result<bool> {
    let block_id = resolve(block, env.outputs).await?;
    super::wake::upsert_automation(env.ctx, name, work_pool, kind, existing_id, block_id).await?;
    Ok(true)
}

async fn delete_automation(env: &StepEnv<'_>, id: AutomationId, name: &str) -> Result<bool> {
    env.ctx
        .prefect
        .delete_automation(id.uuid())
        .await
        .with_context(|| format!("deleting automation {name}"))
}

// ---- Prefect: the credentials block, the work pool, deployments ----

async fn upsert_block(
    env: &StepEnv<'_>,
    name: &BlockName,
    existing_id: Option<BlockId>,
    project: &ProjectId,
    key_from: Option<&Address>,
    keyless: bool,
) -> Result<bool> {
    let key = match key_from {
        Some(address) => Some(env.secret_from(address, "key").await?),
        None => None,
    };
    let id = write_credentials_block(env.ctx, name, existing_id, project, key, keyless).await?;
    env.keep_id(id).await;
    Ok(true)
}

async fn delete_block(env: &StepEnv<'_>, id: BlockId, name: &BlockName) -> Result<bool> {
    env.ctx
        .prefect
        .delete_block_document(id.uuid())
        .await
        .with_context(|| format!("deleting block {name}"))
}

async fn create_work_pool(
    env: &StepEnv<'_>,
    pool: &WorkPoolCreate,
    credentials: Option<&Deferred<BlockId>>,
) -> Result<bool> {
    let mut pool = pool.clone();
    fill_credentials(&mut pool.base_job_template, credentials, env.outputs).await?;
    create_pool(env.ctx, &pool).await
}

async fn update_work_pool(
    env: &StepEnv<'_>,
    name: &PrefectName,
    update: &WorkPoolUpdate,
    credentials: Option<&Deferred<BlockId>>,
) -> Result<bool> {
    let mut update = update.clone();
    fill_credentials(&mut update.base_job_template, credentials, env.outputs).await?;
    update_pool(env.ctx, name.as_str(), &update).await
}

async fn replace_work_pool(
    env: &StepEnv<'_>,
    pool: &WorkPoolCreate,
    credentials: Option<&Deferred<BlockId>>,
) -> Result<bool> {
    let mut pool = pool.clone();
    fill_credentials(&mut pool.base_job_template, credentials, env.outputs).await?;
    // The type cannot change in place (the planner saw another one): delete, then
    // create; a pool already deleted by an interrupted run is fine.
    env.ctx.prefect.delete_work_pool(&pool.name).await?;
    create_pool(env.ctx, &pool).await
}

async fn delete_work_pool(env: &StepEnv<'_>, name: &PrefectName) -> Result<bool> {
    Ok(env.ctx.prefect.delete_work_pool(name.as_str()).await?)
}

async fn upsert_deployment(
    env: &StepEnv<'_>,
    flow: &PrefectName,
    name: &PrefectName,
    spec: &DeploymentSpec,
    flow_id: Option<FlowId>,
) -> Result<bool> {
    let prefect = &env.ctx.prefect;
    let observed = flow_id.map(FlowId::uuid);
    if let Some(id) = observed {
        match prefect.upsert_deployment(id, name.as_str(), spec).await {
            Ok(_) => return Ok(true),
            // The flow was deleted since observe read it: upsert it as below.
            Err(e) if e.is_not_found() => {
                tracing::warn!("flow {flow} ({id}) is gone; creating it again");
            }
            Err(e) => return Err(e.into()),
        }
    }
    let id = shared_flow(env.ctx, env.outputs, flow.as_str(), observed.is_some()).await?;
    prefect.upsert_deployment(id, name.as_str(), spec).await?;
    Ok(true)
}

async fn delete_deployment(
    env: &StepEnv<'_>,
    id: DeploymentId,
    flow: &str,
    name: &str,
) -> Result<bool> {
    env.ctx
        .prefect
        .delete_deployment(id.uuid())
        .await
        .with_context(|| format!("deleting deployment {flow}/{name}"))
}

// ---- image builds ----

async fn edit_repository_policy(
    env: &StepEnv<'_>,
    repository: &str,
    add: &[(String, String)],
    remove: &[(String, String)],
) -> Result<bool> {
    let target = PolicyTarget::ArtifactRepository {
        project: env.project.clone(),
        region: env.region.clone(),
        repository: repository.to_owned(),
    };
    edit_own_policy(env, &target, add, remove)
        .await
        .with_context(|| format!("editing the IAM policy of repository {repository}"))
}

async fn delete_repository(env: &StepEnv<'_>, repository: &str) -> Result<bool> {
    let http = env.http();
    match artifactregistry::delete_repository(http, env.project, env.region, repository).await? {
        None => Ok(false),
        Some(op) => {
            artifactregistry::wait(http, op, OPERATION_DEADLINE).await?;
            Ok(true)
        }
    }
}

async fn build_image(
    env: &StepEnv<'_>,
    build: &bootstrap_spec::build::Build,
    image: &str,
    digest: &str,
    service_account: Option<&str>,
) -> Result<bool> {
    crate::builds::run(
        env.ctx,
        (env.project, env.region),
        build,
        image,
        digest,
        service_account,
    )
    .await?;
    Ok(true)
}

/// How many worker jobs are deleted at once (each v2 delete is a few calls: list executions,
/// delete each, delete the job).
const WORKER_JOB_DELETES_IN_FLIGHT: usize = 4;

/// Deletes the listed flow-run jobs (v2: their executions first, through the one Cloud Run
/// jobs client); a job already gone is fine.
async fn delete_worker_jobs(
    env: &StepEnv<'_>,
    api: super::plan::JobsApi,
    jobs: &[super::plan::WorkerJob],
) -> Result<bool> {
    let (http, project) = (env.http(), env.project);
    use bootstrap_gcp::run_jobs::Jobs;
    use futures::stream::{StreamExt as _, TryStreamExt as _};
    let deletes = jobs.iter().map(|j| async move {
        Jobs::new(http.clone(), api.into(), project.clone(), j.region.clone())
            .delete(&j.name)
            .await
            .with_context(|| format!("deleting Cloud Run job {} in {}", j.name, j.region))
    });
    futures::stream::iter(deletes)
        .buffer_unordered(WORKER_JOB_DELETES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(!jobs.is_empty())
}

/// The id of flow `name`, upserted once per apply however many deployment steps of it run
/// (they run concurrently; the others wait for the first one's answer). `again`: the id this
/// apply was given is stale, so the flow is upserted even if another step already did.
async fn shared_flow(
    ctx: &Context,
    outputs: &Mutex<Outputs>,
    name: &str,
    again: bool,
) -> Result<uuid::Uuid> {
    if again {
        return Ok(ctx.prefect.upsert_flow(name, &[]).await?.id);
    }
    let cell = outputs
        .lock()
        .await
        .flows
        .entry(name.to_string())
        .or_default()
        .clone();
    let id = cell
        .get_or_try_init(|| async { ctx.prefect.upsert_flow(name, &[]).await.map(|f| f.id) })
        .await?;
    Ok(*id)
}

/// Whether a failed write may still have been carried out by the server: the answer was lost
/// (dropped connection, timeout) or was a 500/502/504, which Google may send after acting.
fn may_have_acted(e: &GcpError) -> bool {
    matches!(e, GcpError::Network { .. } | GcpError::Timeout { .. })
        || matches!(e.http_code(), Some(500 | 502 | 504))
}

/// Creates a key without leaving unusable ones behind. Key creation is not idempotent and the
/// private half comes only in the answer, so the HTTP layer does not repeat it. When an attempt
/// fails in a way that may have reached the server, any key that appeared since the attempt
/// began can never be used: it is deleted and creation is tried again, a bounded number of
/// times with jittered backoff. (Found by the reliability suite: one dropped connection on
/// `keys.create` used to fail the whole apply.)
async fn create_key_safely(
    http: &bootstrap_gcp::GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
) -> Result<iam::CreatedKey, GcpError> {
    let policy = bootstrap_gcp::RetryPolicy {
        max_attempts: 4,
        ..bootstrap_gcp::RetryPolicy::default()
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let before: Vec<String> = iam::list_keys(http, project, email, true)
            .await?
            .iter()
            .map(|k| k.key_id().to_string())
            .collect();
        let err = match iam::create_key(http, project, email).await {
            Ok(created) => return Ok(created),
            Err(e) if attempt < policy.max_attempts && may_have_acted(&e) => e,
            Err(e) => return Err(e),
        };
        tracing::warn!("creating a key of {email} may have half succeeded ({err}); retrying");
        for k in iam::list_keys(http, project, email, true).await? {
            if !before.iter().any(|id| id == k.key_id()) {
                iam::delete_key(http, project, email, k.key_id()).await?;
            }
        }
        let delay = policy.delay(attempt - 1, None, &mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

/// Creates the repository unless it exists (a repeated create answers 409 ALREADY_EXISTS).
async fn create_repository(
    env: &StepEnv<'_>,
    repository: &str,
    region: &Region,
    labels: &serde_json::Map<String, Value>,
) -> Result<bool> {
    let (http, project) = (env.http(), env.project);
    if artifactregistry::get_repository(http, project, region, repository)
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let labels: BTreeMap<String, String> = labels
        .iter()
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect();
    let description = "Images built by bootstrap from plan-file build: sections";
    let op = match artifactregistry::create_repository(
        http,
        project,
        region,
        repository,
        description,
        &labels,
    )
    .await
    {
        Err(e) if e.is_already_exists() => return Ok(false),
        other => {
            other.with_context(|| format!("creating Artifact Registry repository {repository}"))?
        }
    };
    artifactregistry::wait(http, op, OPERATION_DEADLINE)
        .await
        .with_context(|| format!("waiting for repository {repository}"))?;
    Ok(true)
}

/// Adds and removes exactly the given (role, member) pairs; other members are never touched.
fn edit(p: &mut policy::Policy, add: &[(String, String)], remove: &[(String, String)]) -> bool {
    let mut changed = false;
    for (role, member) in add {
        changed |= policy::add_member(p, role, member);
    }
    for (role, member) in remove {
        changed |= policy::remove_member(p, role, member);
    }
    changed
}

/// A new service account is not visible everywhere at once: wait for three reads in a row that
/// see it (as Terraform's Google provider does), within a deadline.
async fn wait_until_visible(
    ctx: &Context,
    project: &ProjectId,
    email: &ServiceAccountEmail,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + NEW_ACCOUNT_GRACE;
    let mut seen = 0;
    let mut delay = Duration::from_millis(200);
    let mut announced = false;
    let mut permission_checked = false;
    while seen < 3 {
        match iam::get_service_account(&ctx.gcp, project, email).await {
            Ok(Some(_)) => seen += 1,
            Ok(None) => seen = 0,
            // Google answers a not-yet-visible account with the same 403 as a real denial
            // ("... denied (or it may not exist)"); ask once whether the caller holds the
            // permission at all, and fail at once if it does not (wire-audit #17).
            Err(e @ GcpError::PermissionDenied { .. }) => {
                seen = 0;
                if !permission_checked {
                    permission_checked = true;
                    let wanted = ["iam.serviceAccounts.get".to_owned()];
                    let held = bootstrap_gcp::resourcemanager::test_iam_permissions(
                        &ctx.gcp, project, &wanted,
                    )
                    .await?;
                    if !held.iter().any(|p| p == "iam.serviceAccounts.get") {
                        return Err(anyhow!(e)).context(format!(
                            "reading the new service account {email}: the credentials lack \
                             iam.serviceAccounts.get on project {project} (a real denial, not \
                             propagation; grant roles/iam.serviceAccountAdmin)"
                        ));
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
        if seen == 0 && !announced {
            announced = true;
            tracing::warn!(
                "waiting for the new service account {email} to be visible to IAM (Google \
                 documents up to 7 minutes; giving up after {}s)",
                NEW_ACCOUNT_GRACE.as_secs()
            );
        }
        if seen >= 3 {
            break;
        }
        if tokio::time::Instant::now() + delay > deadline {
            bail!(
                "service account {email} was created but is still not visible after {NEW_ACCOUNT_GRACE:?}"
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3 / 2).min(Duration::from_secs(3));
    }
    Ok(())
}

async fn upsert_service(
    env: &StepEnv<'_>,
    service: &RunServiceName,
    wanted: &run_v2::Service,
) -> Result<bool> {
    let (ctx, project, region) = (env.ctx, env.project, env.region);
    let granted = env.granted().await;
    let name = service;
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_secs(2);
    loop {
        // PATCH with allowMissing converges both a missing and a half-created service.
        let result = async {
            let op = run_v2::patch_service(&ctx.gcp, project, region, service, wanted, true, false)
                .await?;
            run_v2::wait_operation(&ctx.gcp, op, OPERATION_DEADLINE).await
        }
        .await;
        match result {
            Ok(_) => return Ok(true),
            // Our own grants of a moment ago may not have reached Cloud Run yet.
            Err(e)
                if granted
                    && not_yet_propagated(&e)
                    && started.elapsed() + delay < GRANT_PROPAGATION =>
            {
                tracing::warn!(
                    "waiting for this apply's IAM grants to reach Cloud Run (Google documents \
                     up to 7 minutes; giving up after {}s): {e}",
                    GRANT_PROPAGATION.as_secs()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(20));
            }
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("deploying Cloud Run service {name} in {region}"));
            }
        }
    }
}

/// A denial that this apply's own grants of a moment ago will lift: `actAs` on the service
/// account, or the revision's account not yet able to read the API-key secret (the create
/// operation then fails with "Permission denied on secret").
pub(crate) fn not_yet_propagated(e: &GcpError) -> bool {
    e.is_act_as_denied()
        || e.message()
            .is_some_and(|m| m.contains("Permission denied on secret"))
}

/// Creates or updates the `gcp-credentials` block (with the new key, or without one when
/// keyless) and returns its id.
async fn write_credentials_block(
    ctx: &Context,
    name: &BlockName,
    existing_id: Option<BlockId>,
    project: &ProjectId,
    key: Option<secrecy::SecretString>,
    keyless: bool,
) -> Result<BlockId> {
    let client = &ctx.prefect;
    let info = match &key {
        // Parsed in memory and handed straight to the Prefect API.
        Some(k) => Some(
            serde_json::from_str::<Value>(k.expose_secret()).context("the new key is not JSON")?,
        ),
        None => None,
    };
    let mut data = json!({"project": project.as_str()});
    if let Some(info) = info {
        data["service_account_info"] = info;
    }
    let block_type = client
        .block_type_by_slug(GCP_CREDENTIALS)
        .await?
        .ok_or_else(|| anyhow!("the Prefect server has no `gcp-credentials` block type (install prefect-gcp on the server, or run `prefect block register -m prefect_gcp`)"))?;
    let schemas = client.block_schemas_for_type(block_type.id).await?;
    let schema = pick_block_schema(&schemas, None).ok_or_else(|| {
        anyhow!("the Prefect server has no schema for the `gcp-credentials` block type")
    })?;
    match existing_id.map(BlockId::uuid) {
        Some(id) => {
            // Keyless: replace the data so that a stale key is removed; otherwise merge.
            client
                .update_block_document(
                    id,
                    &SecretValue::new(data),
                    Some(schema.id),
                    !keyless && key.is_none(),
                )
                .await?;
            Ok(id.into())
        }
        None => {
            let doc = BlockDocumentCreate {
                name: name.to_string(),
                block_type_id: block_type.id,
                block_schema_id: schema.id,
                data: SecretValue::new(data.clone()),
            };
            match client.create_block_document(&doc).await {
                Ok(d) => Ok(d.id.into()),
                Err(PrefectError::Conflict { .. }) => {
                    // Created concurrently: take it over.
                    let live = client
                        .block_document_by_name(GCP_CREDENTIALS, name.as_str())
                        .await?
                        .ok_or_else(|| anyhow!("block {name} exists but cannot be read"))?;
                    client
                        .update_block_document(
                            live.id,
                            &SecretValue::new(data),
                            Some(schema.id),
                            key.is_none(),
                        )
                        .await?;
                    Ok(live.id.into())
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Fills the credentials block ref into a pool's template when the block was created earlier
/// in this apply: the one place a deferred block id is resolved.
async fn fill_credentials(
    template: &mut Option<Value>,
    credentials: Option<&Deferred<BlockId>>,
    outputs: &Mutex<Outputs>,
) -> Result<()> {
    if let (Some(t), Some(d @ Deferred::Step { .. })) = (template.as_mut(), credentials) {
        template::set_credentials(t, resolve(d, outputs).await?);
    }
    Ok(())
}

/// A block id the plan knew, or the id the block step earlier in this apply produced.
async fn resolve(id: &Deferred<BlockId>, outputs: &Mutex<Outputs>) -> Result<BlockId> {
    match id {
        Deferred::Known { value } => Ok(*value),
        Deferred::Step { address } => outputs
            .lock()
            .await
            .ids
            .get(address)
            .copied()
            .ok_or_else(|| anyhow!("the block id from {address} is not available")),
    }
}

/// Creates the pool; one made meanwhile (a concurrent apply, or an earlier one that died after
/// its create) is updated to the same fields instead.
async fn create_pool(ctx: &Context, pool: &WorkPoolCreate) -> Result<bool> {
    match ctx.prefect.create_work_pool(pool).await {
        Ok(_) => Ok(true),
        Err(PrefectError::Conflict { .. }) => {
            let update = WorkPoolUpdate {
                description: pool.description.clone(),
                base_job_template: pool.base_job_template.clone(),
                is_paused: None,
                concurrency_limit: pool.concurrency_limit,
            };
            update_pool(ctx, &pool.name, &update).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Updates the pool in place. One deleted since the plan was made is an error: the plan no
/// longer fits, and the executor does not decide again (a new plan creates it).
async fn update_pool(ctx: &Context, name: &str, update: &WorkPoolUpdate) -> Result<bool> {
    match ctx.prefect.update_work_pool(name, update).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Err(anyhow!(e)).with_context(|| {
            format!("work pool {name} was deleted since the plan was made; run apply again")
        }),
        Err(e) => Err(e.into()),
    }
}
