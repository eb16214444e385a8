//! The resources of `worker.scale_to_zero`'s wake path (README, "Scale to zero"): their names,
//! what observe reads of them, and how apply writes them. The planner is
//! `planner::wake`; the Prefect bodies are `bootstrap_prefect::wake`'s.
//!
//! - the waker's service account, which holds `roles/run.developer` on the one worker pool (the
//!   pool's own IAM policy) and `roles/secretmanager.secretAccessor` on its secret (and on the
//!   API-key secret when there is one);
//! - the shared secret in Secret Manager (`<pool>-waker-secret`), made in memory by apply;
//! - the waker, a request-billed Cloud Run service running `bootstrap waker`;
//! - the Webhook block that calls it, holding its URL and the secret;
//! - the wake and sweep automations.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context as _, Result, anyhow};
use base64::Engine as _;
use bootstrap_gcp::{GcpError, iam, run_v2, secretmanager};
use bootstrap_prefect::wake::{WEBHOOK_BLOCK_TYPE, webhook_block_data};
use bootstrap_prefect::{
    Automation, AutomationSpec, BlockDocumentCreate, PrefectError, pick_block_schema,
};
use bootstrap_spec::ids::{
    AccountId, AutomationId, BlockId, BlockName, PrefectName, ProjectId, Region, RunServiceName,
    RunWorkerPoolName, SecretId, ServiceAccountEmail,
};
use bootstrap_spec::{Spec, WorkerKind};
use secrecy::{ExposeSecret as _, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::context::Context;
use super::observed::MARKER_TEXT;

/// The role the waker holds on its worker pool. Cloud Run's predefined roles that contain
/// `run.workerpools.update` (and `.get`, which the waker needs to read the count) are
/// `roles/run.admin`, `roles/run.developer` and `roles/run.sourceDeveloper`; of these only
/// `run.developer` cannot also change the pool's IAM policy or deploy from source
/// (<https://cloud.google.com/run/docs/reference/iam/roles>). Granted on the pool's own
/// policy (`workerPools.setIamPolicy`, run.v2.json), it holds on that one pool only.
pub const POOL_ROLE: &str = "roles/run.developer";

/// The port the waker listens on in its container (Cloud Run's default `PORT`).
pub const WAKER_PORT: u16 = 8080;

/// The names of the wake path's resources for one plan, each of its own type: they are
/// derived from names the plan file checked, in forms valid by construction (see [`names`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The Cloud Run worker pool (short name).
    pub pool: RunWorkerPoolName,
    /// `projects/P/locations/R/workerPools/N`.
    pub pool_full: String,
    /// The Prefect work pool.
    pub work_pool: PrefectName,
    /// The waker's account id (`<pool, ≤24>-waker`: ids are 6-30 characters).
    pub account_id: AccountId,
    pub email: ServiceAccountEmail,
    /// The waker's Cloud Run service (`<pool, ≤43>-waker`: ids are under 50 characters).
    pub service: RunServiceName,
    /// The Secret Manager secret holding the shared secret.
    pub secret: SecretId,
    /// The Webhook block (Prefect block names: lowercase letters, digits, dashes).
    pub block: BlockName,
    /// The wake automation.
    pub wake: String,
    /// The sweep automation.
    pub sweep: String,
}

/// `s` cut to `max` characters, without a trailing dash.
fn cut(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

/// A name derived from checked ones. Every form below is valid for any valid worker pool and
/// work pool name (a pool name is a DNS label of 1-49 characters starting with a letter, so
/// `<pool, cut>-waker` is 7-30 characters for an account and at most 49 for a service; the
/// block's slug keeps only lowercase letters, digits and dashes); `names_fit_googles_limits`
/// checks the edges.
fn derived<T>(what: &str, value: String, parse: impl Fn(String) -> Result<T, String>) -> T {
    match parse(value.clone()) {
        Ok(v) => v,
        Err(e) => unreachable!("the waker's {what} `{value}` is valid by construction: {e}"),
    }
}

/// The names, for a `kind: worker-pool` plan with `scale_to_zero`; `None` otherwise.
pub fn names(spec: &Spec) -> Option<Names> {
    let worker = spec.worker.as_ref()?;
    if worker.kind != WorkerKind::WorkerPool || worker.scale_to_zero.is_none() {
        return None;
    }
    let pool = worker.pool_name();
    let account_id = derived(
        "account id",
        format!("{}-waker", cut(pool.as_str(), 24)),
        AccountId::parse,
    );
    let email = ServiceAccountEmail::for_account(&account_id, &spec.gcp.project);
    let work_pool = spec.work_pool.name.clone();
    let slug: String = work_pool
        .as_str()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    Some(Names {
        pool_full: format!(
            "projects/{}/locations/{}/workerPools/{pool}",
            spec.gcp.project, spec.gcp.region
        ),
        account_id,
        email,
        service: derived(
            "service",
            format!("{}-waker", cut(pool.as_str(), 43)),
            RunServiceName::parse,
        ),
        secret: derived("secret", format!("{pool}-waker-secret"), SecretId::parse),
        block: derived(
            "block",
            format!("{}-waker", cut(&slug, 80)),
            BlockName::parse,
        ),
        wake: format!("{work_pool}-wake"),
        sweep: format!("{work_pool}-sweep"),
        pool: pool.clone(),
        work_pool,
    })
}

impl Names {
    pub fn member(&self) -> String {
        self.email.member()
    }
}

/// Which of the two automations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutomationKind {
    Wake,
    Sweep,
}

/// The automation's body with the Webhook block `block_id`.
pub fn automation_spec(
    names: &Names,
    kind: AutomationKind,
    block_id: uuid::Uuid,
) -> AutomationSpec {
    let name = match kind {
        AutomationKind::Wake => &names.wake,
        AutomationKind::Sweep => &names.sweep,
    };
    automation_body(name, names.work_pool.as_str(), kind, block_id)
}

/// The same from the automation's own name and work pool (what apply's op carries).
pub fn automation_body(
    name: &str,
    work_pool: &str,
    kind: AutomationKind,
    block_id: uuid::Uuid,
) -> AutomationSpec {
    use bootstrap_prefect::wake::{SWEEP_WITHIN_SECONDS, sweep_automation, wake_automation};
    match kind {
        AutomationKind::Wake => wake_automation(name, work_pool, block_id),
        AutomationKind::Sweep => sweep_automation(name, work_pool, block_id, SWEEP_WITHIN_SECONDS),
    }
}

/// What observe found of the wake path.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The waker's account exists.
    pub account: bool,
    /// Its description (ours carry [`MARKER_TEXT`]).
    pub account_description: String,
    /// Members holding [`POOL_ROLE`] on the worker pool's own policy (empty without a pool).
    pub pool_role_members: BTreeSet<String>,
    pub secret: Option<Secret>,
    /// The waker service as the API returns it (v2 JSON).
    pub service: Option<Value>,
    pub block: Option<Block>,
    /// Automations by name (every one of that name, oldest first).
    pub automations: BTreeMap<String, Vec<Automation>>,
}

/// The shared secret in Secret Manager.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Secret {
    pub labels: BTreeMap<String, String>,
    /// It has an enabled version.
    pub has_version: bool,
    /// Members with `roles/secretmanager.secretAccessor` on it.
    pub accessors: BTreeSet<String>,
}

/// The Webhook block. Only facts are kept: the URL and whether its bearer token is the
/// secret's latest version (compared in memory; neither value is kept).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub id: BlockId,
    pub url: Option<String>,
    pub secret_matches: bool,
}

fn absent_if_disabled<T>(r: Result<Option<T>, GcpError>) -> Result<Option<T>, GcpError> {
    match r {
        Err(GcpError::ServiceDisabled { .. }) => Ok(None),
        other => other,
    }
}

/// Reads the wake path's resources (`None` for plans without `scale_to_zero`). `pool_exists`:
/// the worker pool's policy is read only when the pool is there.
pub async fn observe(ctx: &Context, spec: &Spec, pool_exists: bool) -> Result<Option<Observed>> {
    let Some(n) = names(spec) else {
        return Ok(None);
    };
    let project = &spec.gcp.project;
    let (email, secret_id, service) = (&n.email, &n.secret, &n.service);
    let account = async {
        absent_if_disabled(iam::get_service_account(&ctx.gcp, project, email).await)
            .with_context(|| format!("reading service account {}", n.email))
    };
    let pool_policy = async {
        if !pool_exists {
            return Ok(BTreeSet::new());
        }
        let policy =
            run_v2::get_worker_pool_iam_policy(&ctx.gcp, project, &spec.gcp.region, &n.pool)
                .await
                .with_context(|| format!("reading the IAM policy of worker pool {}", n.pool))?;
        Ok::<_, anyhow::Error>(
            policy
                .bindings
                .iter()
                .filter(|b| b.condition.is_none() && b.role == POOL_ROLE)
                .flat_map(|b| b.members.iter().cloned())
                .collect(),
        )
    };
    let secret = async {
        let Some(s) =
            absent_if_disabled(secretmanager::get_secret(&ctx.gcp, project, secret_id).await)
                .with_context(|| format!("reading secret {}", n.secret))?
        else {
            return Ok::<_, anyhow::Error>((None, None));
        };
        let (latest, policy) = tokio::try_join!(
            async {
                secretmanager::access_latest(&ctx.gcp, project, secret_id)
                    .await
                    .with_context(|| format!("reading the latest version of secret {}", n.secret))
            },
            async {
                secretmanager::get_iam_policy(&ctx.gcp, project, secret_id)
                    .await
                    .with_context(|| format!("reading the IAM policy of secret {}", n.secret))
            },
        )?;
        let accessors = policy
            .bindings
            .iter()
            .filter(|b| b.condition.is_none() && b.role == "roles/secretmanager.secretAccessor")
            .flat_map(|b| b.members.iter().cloned())
            .collect();
        Ok((
            Some(Secret {
                labels: s.labels.clone(),
                has_version: latest.is_some(),
                accessors,
            }),
            latest,
        ))
    };
    let svc = async {
        let s = absent_if_disabled(
            run_v2::get_service(&ctx.gcp, project, &spec.gcp.region, service).await,
        )
        .with_context(|| format!("reading Cloud Run service {}", n.service))?;
        s.map(|s| serde_json::to_value(s).context("re-encoding the service"))
            .transpose()
    };
    let block = async {
        ctx.prefect
            .block_document_by_name_with_secrets(WEBHOOK_BLOCK_TYPE, n.block.as_str())
            .await
            .with_context(|| format!("reading Prefect block webhook/{}", n.block))
    };
    let automations = async {
        let (wake, sweep) = tokio::try_join!(
            ctx.prefect.automations_by_name(&n.wake),
            ctx.prefect.automations_by_name(&n.sweep)
        )
        .context("reading the scale-to-zero automations")?;
        Ok::<_, anyhow::Error>(BTreeMap::from([
            (n.wake.clone(), wake),
            (n.sweep.clone(), sweep),
        ]))
    };
    let (account, pool_role_members, (secret, latest), service, block, automations) =
        tokio::try_join!(account, pool_policy, secret, svc, block, automations)?;
    // Compared in memory; neither the secret nor the block's header is kept.
    let block = block.map(|b| {
        let data = b.data.expose();
        let bearer = data
            .pointer("/headers/Authorization")
            .and_then(Value::as_str);
        let secret_matches = match (&latest, bearer) {
            (Some(s), Some(h)) => h.strip_prefix("Bearer ") == Some(s.expose_secret()),
            _ => false,
        };
        Block {
            id: b.id.into(),
            url: data.get("url").and_then(Value::as_str).map(str::to_owned),
            secret_matches,
        }
    });
    Ok(Some(Observed {
        account: account.is_some(),
        account_description: account.and_then(|a| a.description).unwrap_or_default(),
        pool_role_members,
        secret,
        service,
        block,
        automations,
    }))
}

/// A new shared secret: 32 random bytes, base64url. Made in memory; it goes to Secret Manager
/// and to the Webhook block, and nowhere else.
pub fn new_secret() -> SecretString {
    let bytes: [u8; 32] = rand::random();
    SecretString::from(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Writes a new version of the shared secret (creating the secret first if asked) and returns
/// the value for the block step.
pub async fn put_secret(
    ctx: &Context,
    project: &ProjectId,
    id: &SecretId,
    create: bool,
    labels: &serde_json::Map<String, Value>,
) -> Result<SecretString> {
    if create {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        match secretmanager::create_secret(&ctx.gcp, project, id, &labels).await {
            Ok(_) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => {
                return Err(anyhow!(e)).with_context(|| format!("creating secret {id}"));
            }
        }
    }
    let secret = new_secret();
    secretmanager::add_version(&ctx.gcp, project, id, &secret)
        .await
        .with_context(|| format!("adding a version to secret {id}"))?;
    Ok(secret)
}

/// Creates or replaces the Webhook block: `POST <waker uri>/wake` with the shared secret.
/// The URL is read from the waker service now (it exists: this step depends on it).
pub async fn upsert_block(
    ctx: &Context,
    (project, region): (&ProjectId, &Region),
    name: &BlockName,
    existing_id: Option<BlockId>,
    service: &RunServiceName,
    secret: &SecretString,
) -> Result<BlockId> {
    let live = run_v2::get_service(&ctx.gcp, project, region, service)
        .await
        .with_context(|| format!("reading Cloud Run service {service}"))?
        .ok_or_else(|| anyhow!("Cloud Run service {service} is gone; run apply again"))?;
    let uri = live
        .uri
        .ok_or_else(|| anyhow!("Cloud Run service {service} has no URL yet"))?;
    let data = webhook_block_data(&format!("{}/wake", uri.trim_end_matches('/')), secret);
    let client = &ctx.prefect;
    let block_type = client
        .block_type_by_slug(WEBHOOK_BLOCK_TYPE)
        .await?
        .ok_or_else(|| anyhow!("the Prefect server has no `webhook` block type"))?;
    let schemas = client.block_schemas_for_type(block_type.id).await?;
    let schema = pick_block_schema(&schemas, None)
        .ok_or_else(|| anyhow!("the Prefect server has no schema for the `webhook` block type"))?;
    let id = match existing_id.map(BlockId::uuid) {
        Some(id) => {
            client
                .update_block_document(id, &data, Some(schema.id), false)
                .await?;
            id
        }
        None => {
            let doc = BlockDocumentCreate {
                name: name.to_string(),
                block_type_id: block_type.id,
                block_schema_id: schema.id,
                data: data.clone(),
            };
            match client.create_block_document(&doc).await {
                Ok(d) => d.id,
                Err(PrefectError::Conflict { .. }) => {
                    // Made by a concurrent apply: take it over with this secret.
                    let live = client
                        .block_document_by_name(WEBHOOK_BLOCK_TYPE, name.as_str())
                        .await?
                        .ok_or_else(|| anyhow!("block {name} exists but cannot be read"))?;
                    client
                        .update_block_document(live.id, &data, Some(schema.id), false)
                        .await?;
                    live.id
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok(id.into())
}

/// Creates or replaces one automation.
pub async fn upsert_automation(
    ctx: &Context,
    name: &str,
    work_pool: &PrefectName,
    kind: AutomationKind,
    existing_id: Option<AutomationId>,
    block_id: BlockId,
) -> Result<()> {
    let body = automation_body(name, work_pool.as_str(), kind, block_id.uuid());
    match existing_id {
        Some(id) => {
            ctx.prefect.update_automation(id.uuid(), &body).await?;
        }
        None => {
            ctx.prefect.create_automation(&body).await?;
        }
    }
    Ok(())
}

/// Whether a live automation was made by this tool (its description says so).
pub fn is_ours(a: &Automation) -> bool {
    a.description.contains("made by bootstrap")
}

/// Whether the waker's account was made by this tool.
pub fn account_is_ours(o: &Observed) -> bool {
    o.account_description.contains(MARKER_TEXT)
}
