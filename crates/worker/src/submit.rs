//! One flow run, from claim to cleanup: claim (PENDING, read `status`), build the job
//! configuration, create or adopt the Cloud Run job, run or adopt its execution, watch it with
//! backoff, report CRASHED when the infrastructure failed, delete the job unless `keep_job`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bootstrap_gcp::{GcpHttp, ServiceAccountKeySource, TokenSource};
use bootstrap_prefect::{
    Deployment, FlowRun, PrefectClient, PrefectError, SetStateStatus, StateCreate, StateType,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use super::claim::ClaimMarker;
use super::cloudrun::RunJobs;
use super::config::{self, GcpCredentials, JobConfig, PoolKind, RunContext};
use super::driver::{Driven, RunEnv, drive};
use super::outcome;
pub(crate) use super::reconcile::Signal;
use super::reconcile::{Done, End, Error, RunView, closing};
use super::refs::{self, Lookup};
use super::runtime::{Ctx, Waiting};
use super::template;

pub use super::config::CLEANUP_LABEL;
/// Label naming the pool (as prefect-gcp sanitises `prefect.io/work-pool-name`).
pub const POOL_LABEL: &str = "prefect-io-work-pool-name";

/// Resolves `$ref` and placeholders against the Prefect API (through the ctx reads).
pub(super) struct PrefectLookup<'a>(pub(super) &'a Ctx);

impl Lookup for PrefectLookup<'_> {
    async fn block_by_id(&self, id: &str) -> Result<Option<Value>, String> {
        let id = Uuid::parse_str(id).map_err(|_| format!("`{id}` is not a block document id"))?;
        let data = self
            .0
            .reads
            .block_by_id(&self.0.client, id)
            .await
            .map_err(|e| e.to_string())?;
        Ok(data.map(|d| d.into_exposed()))
    }
    async fn block_by_name(&self, slug: &str, name: &str) -> Result<Option<Value>, String> {
        let data = self
            .0
            .reads
            .block_by_name(&self.0.client, slug, name)
            .await
            .map_err(|e| e.to_string())?;
        Ok(data.map(|d| d.into_exposed()))
    }
    async fn variable(&self, name: &str) -> Result<Option<Value>, String> {
        self.0
            .reads
            .variable(&self.0.client, name)
            .await
            .map_err(|e| e.to_string())
    }
}

/// How a claimed run is entered: freshly claimed now, or adopted after a restart.
pub(crate) enum Claim {
    /// Propose PENDING first.
    New,
    /// Already PENDING by this worker since this time.
    Adopted(DateTime<Utc>),
}

/// Proposes a state; logs and swallows errors (the caller has nothing better to do).
pub(crate) async fn propose(
    client: &PrefectClient,
    id: Uuid,
    t: StateType,
    msg: &str,
    force: bool,
) -> Option<SetStateStatus> {
    let state = StateCreate {
        state_type: t,
        name: None,
        message: Some(msg.to_string()),
    };
    match client.set_flow_run_state(id, &state, force).await {
        Ok(r) => Some(r.status),
        Err(e) => {
            tracing::warn!(flow_run = %id, state = t.as_str(), error = %e, "could not set the flow run's state");
            None
        }
    }
}

/// Claims a run taken from a poll: PENDING under this worker's [`ClaimMarker`], unless its
/// deployment is gone (then CANCELLED). `None` when the run is not this worker's to run. The
/// deployment read here is the run's one read of it (`seen`), see [`SubmitEnv::deployment`].
async fn claim_new(
    ctx: &Ctx,
    run: &FlowRun,
    seen: &OnceLock<Option<Deployment>>,
) -> Option<DateTime<Utc>> {
    let client = &ctx.client;
    let id = run.id;
    if let Some(dep) = run.deployment_id {
        let read = ctx.reads.deployment(client, dep).await;
        if let Ok(d) = &read {
            let _ = seen.set(d.clone());
        }
        match read {
            Ok(None) => {
                propose(
                    client,
                    id,
                    StateType::Cancelled,
                    "The deployment of this run no longer exists.",
                    true,
                )
                .await;
                return None;
            }
            Ok(Some(_)) => {}
            Err(e) => {
                tracing::warn!(flow_run = %id, error = %e, "could not read the deployment; will retry on the next poll");
                return None;
            }
        }
    }
    let claim = ClaimMarker::for_worker(&ctx.opts.name);
    let state = StateCreate {
        state_type: StateType::Pending,
        name: None,
        message: Some(claim.message().to_string()),
    };
    match client.set_flow_run_state(id, &state, false).await {
        // Only ACCEPT claims the run; 201 with ABORT means another worker won.
        Ok(r) if r.status == SetStateStatus::Accept => {
            let ours = r.state.as_ref().and_then(|s| s.id);
            if !still_ours(client, id, ours).await {
                return None;
            }
            Some(r.state.and_then(|s| s.timestamp).unwrap_or_else(Utc::now))
        }
        Ok(r) => {
            tracing::debug!(flow_run = %id, status = ?r.status, reason = r.reason().unwrap_or(""), "not claimed");
            None
        }
        Err(e) => {
            tracing::warn!(flow_run = %id, error = %e, "could not claim the run");
            None
        }
    }
}

/// One run's Prefect side and Cloud Run clients, for the driver.
struct SubmitEnv<'a> {
    ctx: &'a Arc<Ctx>,
    run: &'a FlowRun,
    /// The id of the submitted event (the executed event follows it).
    submitted: OnceLock<Uuid>,
    /// The run's deployment as read for this run (`None` inside: it has none, or it is gone).
    deployment: OnceLock<Option<Deployment>>,
}

impl SubmitEnv<'_> {
    /// The run's deployment, read once per run: the claim reads it (as Prefect's worker does
    /// before proposing PENDING, `base.py` `_submit_run`), and the job configuration, the
    /// submitted and the executed events use that read. Prefect's worker reads it a second time
    /// for the configuration, milliseconds later; one read per run still sees a deployment
    /// changed before the run was claimed (the reason reads are not shared between runs,
    /// [`super::cache::DEPLOYMENT_TTL`]), and saves the server a request per run in a burst
    /// (three, with the events'). An adopted run, not claimed by this process, reads it here.
    async fn deployment(&self) -> Result<Option<Deployment>, PrefectError> {
        if let Some(d) = self.deployment.get() {
            return Ok(d.clone());
        }
        let d = match self.run.deployment_id {
            Some(id) => self.ctx.reads.deployment(&self.ctx.client, id).await?,
            None => None,
        };
        let _ = self.deployment.set(d.clone());
        Ok(d)
    }
}

impl RunEnv for SubmitEnv<'_> {
    type Infra = RunJobs;
    type Config = JobConfig;

    async fn claim(&self) -> Option<DateTime<Utc>> {
        claim_new(self.ctx, self.run, &self.deployment).await
    }

    fn submitting(&self) {
        let id = self.run.id;
        self.ctx.log(
            id,
            20,
            format!("Worker '{}' submitting flow run '{id}'", self.ctx.opts.name),
        );
        let _ = self
            .submitted
            .set(announce(self.ctx, self.run, self.deployment.get().cloned()));
    }

    async fn configure(&self) -> Result<(JobConfig, RunJobs), Error> {
        // The job body carries the cleanup label already (config::prepare, within the label cap).
        let built = match self.deployment().await {
            Ok(deployment) => build(self.ctx, self.run, deployment).await,
            Err(e) => Err(anyhow::Error::new(e)),
        };
        let cfg = match built {
            Ok(cfg) => cfg,
            Err(e) => {
                // Block and variable lookups report errors as text, so a failure while the
                // server's `/health` fails counts as an outage too.
                let outage = prefect_outage(&e) || self.ctx.client.health().await.is_err();
                let message = chain(&e);
                if outage {
                    tracing::info!(flow_run = %self.run.id, error = %message, "the Prefect API is unavailable; will retry");
                }
                return Err(Error::Configure { message, outage });
            }
        };
        let jobs = jobs_for(self.ctx, &cfg)
            .await
            .map_err(|e| Error::Submit(chain(&e)))?;
        Ok((cfg, jobs))
    }

    async fn record_pid(&self, job: &str) {
        record_pid(self.ctx, self.run.id, job).await;
    }

    fn log(&self, level: i64, message: String) {
        self.ctx.log(self.run.id, level, message);
    }
}

/// Handles one run to its end. Never panics; every failure ends in a state proposal. True when
/// this task saw the run's infrastructure to an end (so the run must not be adopted again even
/// if its flow never reported a state); false when it did not claim it or left it PENDING.
pub(crate) async fn handle(
    ctx: Arc<Ctx>,
    submit_slots: Arc<tokio::sync::Semaphore>,
    run: FlowRun,
    claim: Claim,
    mut cancel: watch::Receiver<Signal>,
    waiting: Waiting,
) -> bool {
    let id = run.id;
    let client = &ctx.client;
    // Wait for a submission slot before claiming, so a run this worker cannot start soon stays
    // SCHEDULED for another worker; any signal (shutdown, cancel) ends the wait.
    let slot = tokio::select! {
        slot = submit_slots.acquire_owned() => match slot {
            Ok(slot) => slot,
            Err(_) => return false, // closed: never happens, the runtime keeps the semaphore
        },
        _ = cancel.changed() => return false,
    };
    drop(waiting);
    let claimed_at = match claim {
        Claim::Adopted(t) => Some(t),
        Claim::New => None,
    };
    let env = SubmitEnv {
        ctx: &ctx,
        run: &run,
        submitted: OnceLock::new(),
        deployment: OnceLock::new(),
    };
    if claimed_at.is_some() {
        env.submitting();
    }
    let view = RunView::new(
        id,
        claimed_at,
        ctx.opts.ready_deadline,
        ctx.opts.lost_contact_window,
    );
    let Driven { end, created } = drive(&env, view, &mut cancel, Some(slot)).await;
    let close = closing(end.as_ref());
    let job = created.as_ref().map(|(_, c)| (c.kind, c.job_name.clone()));
    match end {
        // Not ours, shutting down, or Prefect unavailable: the job keeps running, a later pass
        // adopts the run.
        None => return false,
        Some(End::Finished(done)) => {
            let code = report_finished(&ctx, &run, job.as_ref(), &done).await;
            // Prefect 3.9's `prefect flow-run execute` reports a flow that does not even load
            // (a syntax error) as a FAILED/CRASHED run and exits 0: its execution succeeds, and
            // the traceback is only in the container's output. Copy it then too.
            let failed_inside = done.succeeded == Some(true)
                && matches!(
                    client.flow_run(id).await,
                    Ok(Some(r)) if matches!(r.state_type(), StateType::Failed | StateType::Crashed)
                );
            if (done.succeeded == Some(false) || failed_inside)
                && let Some((jobs, cfg)) = &created
            {
                copy_container_tail(&ctx, run.id, jobs, &cfg.job_name, &done.execution).await;
            }
            if let Some((_, job)) = &job
                && let Some(submitted) = env.submitted.get()
            {
                report_executed(
                    &ctx,
                    &run,
                    job,
                    code,
                    *submitted,
                    env.deployment.get().cloned(),
                );
            }
        }
        // prefect-gcp: the run's state is left to the flow ("Lost connection to flow run
        // infrastructure"), and so is the job: the execution may still be running and succeed.
        Some(End::LostContact(msg)) => ctx.log(id, 40, msg),
        Some(End::Cancelled) => {
            propose(
                client,
                id,
                StateType::Cancelled,
                "Cancelled: the Cloud Run execution was cancelled by the worker.",
                true,
            )
            .await;
            ctx.log(
                id,
                20,
                "Cancelled the flow run's Cloud Run execution".into(),
            );
        }
        Some(End::FailedAfterStart(msg)) => {
            crash_unless_final(client, id, &msg).await;
            ctx.log(id, 40, msg);
        }
        Some(End::SubmitFailed(msg)) => {
            let msg = format!("Failed to submit flow run to infrastructure: {msg}");
            propose(client, id, StateType::Crashed, &msg, false).await;
            ctx.log(id, 40, msg);
        }
    }
    if close.delete_job
        && let Some((jobs, cfg)) = created
        && !cfg.keep_job
        && let Err(e) = jobs.delete(&cfg.job_name).await
    {
        tracing::warn!(job = cfg.job_name, error = %e, "could not delete the job; the next start cleans it up");
    }
    close.seen_to_end
}

/// How long a claim settles before it is checked.
const CLAIM_SETTLE: Duration = Duration::from_millis(300);

/// After an ACCEPTed claim: true when no other worker's state follows the last SCHEDULED.
///
/// A SQLite-backed server can ACCEPT two concurrent PENDING proposals (measured by
/// `tests/it/worker/protocol.rs`: the slower request read SCHEDULED before the faster one
/// committed, and its PENDING landed last, even after the winner's CRASHED). So a claim stands
/// only if, once settled, the history since SCHEDULED holds nothing but ours; the late writer
/// always sees the early one. If both step back, the worker whose PENDING is current adopts the
/// run at its next reconcile pass (see [`adoptable`]).
async fn still_ours(client: &PrefectClient, id: Uuid, ours: Option<Uuid>) -> bool {
    let Some(ours) = ours else {
        return true;
    };
    tokio::time::sleep(CLAIM_SETTLE).await;
    match client.flow_run_states(id).await {
        Ok(states) => {
            let start = states
                .iter()
                .rposition(|s| s.state_type == StateType::Scheduled)
                .map_or(0, |i| i + 1);
            let contested = states[start..].iter().any(|s| s.id != Some(ours));
            if contested {
                tracing::info!(flow_run = %id, "another worker claimed the run too; stepping back");
                restore_if_overwritten(client, id, ours, &states[start..]).await;
            }
            !contested
        }
        // Cannot tell: carry on; the deterministic job name still prevents a second job.
        Err(_) => true,
    }
}

/// Our late PENDING may have been written over the winner's progress (RUNNING, CRASHED, ...):
/// put the winner's latest state back.
async fn restore_if_overwritten(
    client: &PrefectClient,
    id: Uuid,
    ours: Uuid,
    since_scheduled: &[bootstrap_prefect::State],
) {
    let Some(latest) = since_scheduled
        .iter()
        .rev()
        .find(|s| s.id != Some(ours) && s.state_type != StateType::Pending)
    else {
        return; // only claims: whoever's PENDING is current adopts the run
    };
    let current = client
        .flow_run(id)
        .await
        .ok()
        .flatten()
        .and_then(|r| r.state)
        .and_then(|s| s.id);
    if current != Some(ours) {
        return;
    }
    let state = StateCreate {
        state_type: latest.state_type,
        name: latest.name.clone(),
        message: latest.message.clone(),
    };
    if let Err(e) = client.set_flow_run_state(id, &state, true).await {
        tracing::warn!(flow_run = %id, error = %e, "could not restore the state our late claim overwrote");
    }
}

/// Whether a run PENDING under this worker's claim (`state_id`) may be adopted: nothing but
/// other claims happened after ours (no run, no final state written by someone else).
pub(crate) async fn adoptable(client: &PrefectClient, id: Uuid, state_id: Option<Uuid>) -> bool {
    let Some(ours) = state_id else {
        return false;
    };
    let Ok(states) = client.flow_run_states(id).await else {
        return false;
    };
    let Some(pos) = states.iter().position(|s| s.id == Some(ours)) else {
        return false;
    };
    states[pos + 1..]
        .iter()
        .all(|s| s.state_type == StateType::Pending)
}

/// Proposes CRASHED unless the run already reached a final state by itself.
async fn crash_unless_final(client: &PrefectClient, id: Uuid, msg: &str) {
    match client.flow_run(id).await {
        Ok(Some(r)) if r.state_type().is_terminal() => {}
        _ => {
            propose(client, id, StateType::Crashed, msg, false).await;
        }
    }
}

fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// The run's job configuration, from its `deployment` (as read for this run).
async fn build(
    ctx: &Ctx,
    run: &FlowRun,
    deployment: Option<Deployment>,
) -> anyhow::Result<JobConfig> {
    let client = &ctx.client;
    let pool = ctx
        .reads
        .work_pool(client, &ctx.opts.pool)
        .await?
        .ok_or_else(|| anyhow!("work pool `{}` not found", ctx.opts.pool))?;
    let kind = PoolKind::from_pool_type(&pool.pool_type).ok_or_else(|| {
        anyhow!(
            "work pool type `{}` is not a Cloud Run type",
            pool.pool_type
        )
    })?;
    let flow = ctx.reads.flow(client, run.flow_id).await?;
    let dep_vars = deployment
        .as_ref()
        .map(|d| d.job_variables.clone())
        .unwrap_or_default();
    let vars = template::merge_job_variables(&dep_vars, run.job_variables.as_ref());
    let rendered = template::render_job_configuration(&pool.base_job_template, &vars, &|k| {
        std::env::var(k).ok()
    })
    .map_err(|e| anyhow!(e))?;
    let resolved = refs::resolve(Value::Object(rendered), &PrefectLookup(ctx))
        .await
        .map_err(|e| anyhow!(e))?;
    let Value::Object(resolved) = resolved else {
        return Err(anyhow!("the job configuration is not an object"));
    };
    let ctx = RunContext {
        flow_run: run,
        flow: flow.as_ref(),
        deployment: deployment.as_ref(),
        pool: &pool,
        worker_name: &ctx.opts.name,
        worker_env: ctx.worker_env.clone(),
    };
    config::prepare(kind, resolved, &ctx).map_err(|e| anyhow!(e))
}

/// Whether an error chain holds a Prefect API error that says nothing about the request itself:
/// the server was unreachable, overloaded (429) or failing (5xx).
pub(crate) fn prefect_outage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<PrefectError>() {
        Some(PrefectError::Unreachable { .. }) => true,
        Some(PrefectError::Http { status, .. }) => {
            status.is_server_error() || status.as_u16() == 429
        }
        _ => false,
    })
}

/// A run's own job configuration (its deployment's and its own job variables: region,
/// credentials), for cancelling it as prefect-gcp's `kill_infrastructure` does with the run's
/// configuration (prefect `base.py` `_cancel_run`), not the pool's defaults. It also names the
/// run's job (deterministically, see [`crate::naming`]), which finds the job when the
/// submitting worker died before recording it as `infrastructure_pid`.
pub(crate) async fn config_of_run(ctx: &Ctx, run: &FlowRun) -> anyhow::Result<JobConfig> {
    let deployment = match run.deployment_id {
        Some(d) => ctx.reads.deployment(&ctx.client, d).await?,
        None => None,
    };
    build(ctx, run, deployment).await
}

/// The Cloud Run client for a configuration's credentials, reused across runs.
pub(crate) async fn jobs_for(ctx: &Ctx, cfg: &JobConfig) -> anyhow::Result<RunJobs> {
    let creds = &cfg.credentials;
    ctx.jobs
        .get_or_make(
            cfg.kind,
            &cfg.region,
            creds.project.as_deref(),
            creds.service_account_info.as_ref(),
            || make_jobs(ctx, cfg),
        )
        .await
}

async fn make_jobs(ctx: &Ctx, cfg: &JobConfig) -> anyhow::Result<RunJobs> {
    let tokens: Arc<dyn TokenSource> = match &cfg.credentials.service_account_info {
        Some(key) => Arc::new(
            ServiceAccountKeySource::from_json(key)
                .context("the credentials block's service account key")?,
        ),
        None => ctx.ambient_tokens().await?,
    };
    let project = project_of(&cfg.credentials, tokens.as_ref())?;
    let http = GcpHttp::new(
        ctx.opts.endpoints.clone(),
        tokens,
        bootstrap_gcp::RetryPolicy::default(),
    )?;
    Ok(RunJobs::new(http, cfg.kind, &project, &cfg.region)?)
}

fn project_of(creds: &GcpCredentials, tokens: &dyn TokenSource) -> anyhow::Result<String> {
    creds
        .project
        .clone()
        .or_else(|| tokens.project_hint())
        .or_else(|| std::env::var("GOOGLE_CLOUD_PROJECT").ok().filter(|p| !p.is_empty()))
        .ok_or_else(|| anyhow!("no GCP project: set `project` in the pool's credentials block or GOOGLE_CLOUD_PROJECT"))
}

/// Gives the run this worker's labels and emits `prefect.worker.submitted-flow-run`, as
/// Prefect's worker does, off the submission's path (both are bookkeeping: a failure is logged,
/// never the run's). Returns the event's id, which the executed event follows. `deployment`:
/// the run's, when already read for this run.
fn announce(ctx: &Arc<Ctx>, run: &FlowRun, deployment: Option<Option<Deployment>>) -> Uuid {
    let ctx = ctx.clone();
    let run = run.clone();
    let id = Uuid::new_v4();
    tokio::spawn(async move {
        let Some((kind, pool, related)) = related_of(&ctx, &run, deployment).await else {
            return;
        };
        let labels = outcome::worker_labels(&ctx.opts.name, kind, &pool);
        if let Err(e) = ctx.client.update_flow_run_labels(run.id, &labels).await {
            tracing::warn!(flow_run = %run.id, error = %e, "could not label the flow run");
        }
        let resource = outcome::worker_resource(&ctx.opts.name, kind);
        let (_, mut ev) =
            outcome::event("prefect.worker.submitted-flow-run", resource, related, None);
        ev["id"] = serde_json::json!(id.to_string());
        ctx.emit(ev);
    });
    id
}

/// `prefect.worker.started` / `.stopped` (related: the pool), bounded to 1 s so that neither
/// startup nor the SIGTERM exit waits on it; the event's id.
pub(crate) async fn worker_event(
    ctx: &Ctx,
    kind: PoolKind,
    pool: &bootstrap_prefect::WorkPool,
    name: &str,
    follows: Option<Uuid>,
) -> Uuid {
    let resource = outcome::worker_resource(&ctx.opts.name, kind);
    let related = vec![serde_json::json!({
        "prefect.resource.id": format!("prefect.work-pool.{}", pool.id),
        "prefect.resource.role": "work-pool",
        "prefect.resource.name": pool.name,
    })];
    let (id, ev) = outcome::event(name, resource, related, follows);
    // Sent at once, not batched: `stopped` is the last thing the worker does before it exits.
    let sent = tokio::time::timeout(Duration::from_secs(1), ctx.client.emit_events(&[ev])).await;
    if let Ok(Err(e)) = sent {
        tracing::debug!(error = %e, "could not emit {name}");
    }
    id
}

/// The pool kind, pool and related resources of a run (from the ctx reads; the deployment as
/// read for this run when `known`).
async fn related_of(
    ctx: &Ctx,
    run: &FlowRun,
    known: Option<Option<Deployment>>,
) -> Option<(PoolKind, bootstrap_prefect::WorkPool, Vec<Value>)> {
    let client = &ctx.client;
    let pool = ctx.reads.work_pool(client, &ctx.opts.pool).await.ok()??;
    let kind = PoolKind::from_pool_type(&pool.pool_type)?;
    let deployment = match (known, run.deployment_id) {
        (Some(d), _) => d,
        (None, Some(d)) => ctx.reads.deployment(client, d).await.ok().flatten(),
        (None, None) => None,
    };
    let flow = ctx.reads.flow(client, run.flow_id).await.ok().flatten();
    let related = outcome::run_related(
        run,
        flow.as_ref(),
        deployment.as_ref().map(|d| (d.id, d.name.as_str())),
        &pool,
    );
    Some((kind, pool, related))
}

/// `prefect.worker.executed-flow-run`, with the job and status code on the flow run.
fn report_executed(
    ctx: &Arc<Ctx>,
    run: &FlowRun,
    job: &str,
    code: i64,
    follows: Uuid,
    deployment: Option<Option<Deployment>>,
) {
    let ctx = ctx.clone();
    let run = run.clone();
    let job = job.to_string();
    tokio::spawn(async move {
        let Some((kind, _, related)) = related_of(&ctx, &run, deployment).await else {
            return;
        };
        let resource = outcome::worker_resource(&ctx.opts.name, kind);
        let related = outcome::with_result(related, &job, code);
        let (_, ev) = outcome::event(
            "prefect.worker.executed-flow-run",
            resource,
            related,
            Some(follows),
        );
        ctx.emit(ev);
    });
}

/// The log lines and state prefect-gcp gives a finished execution; returns its status code
/// (0 succeeded, 1 failed, -1 deleted while watched).
async fn report_finished(
    ctx: &Ctx,
    run: &FlowRun,
    job: Option<&(PoolKind, String)>,
    done: &Done,
) -> i64 {
    let (kind, job) = match job {
        Some((k, j)) => (*k, j.as_str()),
        None => (PoolKind::V2, ""),
    };
    let code = match done.succeeded {
        Some(true) => 0,
        Some(false) => outcome::FAILED,
        None => outcome::DELETED,
    };
    match done.succeeded {
        Some(ok) => ctx.log(
            run.id,
            if ok { 20 } else { 40 },
            outcome::finished_line(kind, job, ok, done.message.as_deref()),
        ),
        None => ctx.log(
            run.id,
            20,
            format!("Cloud Run job {job}'s execution was deleted. The flow run will be marked based on its current state."),
        ),
    }
    if let Some(uri) = &done.log_uri {
        ctx.log(run.id, 20, outcome::logs_line(uri));
    }
    if code != 0 {
        let (msg, resolution) = outcome::crashed_message(code);
        crash_unless_final(&ctx.client, run.id, &msg).await;
        ctx.log(run.id, 20, resolution.to_string());
    }
    code
}

/// Copies the last lines a failed execution printed from Cloud Logging into the run's logs
/// (bounded and redacted, `tail`); a failed read says why in the run's logs instead.
async fn copy_container_tail(ctx: &Ctx, id: Uuid, jobs: &RunJobs, job: &str, execution: &str) {
    match super::tail::read(jobs, job, execution).await {
        Ok(lines) => {
            if let Some(m) = super::tail::message(job, execution, &lines, &ctx.worker_env) {
                ctx.log(id, 40, m);
            }
        }
        Err(e) => ctx.log(
            id,
            30,
            format!(
                "Could not read the container output of execution {execution} from Cloud                  Logging (the worker's identity needs logging.logEntries.list, e.g.                  roles/logging.viewer): {e}"
            ),
        ),
    }
}

/// Records the job as the run's `infrastructure_pid` (how a later worker finds it to cancel).
async fn record_pid(ctx: &Ctx, id: Uuid, job: &str) {
    if let Err(e) = ctx.client.set_flow_run_infrastructure_pid(id, job).await {
        tracing::warn!(flow_run = %id, error = %e, "could not record infrastructure_pid");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A Prefect API that counts deployment reads and refuses every claim (ABORT).
    async fn fake_prefect(deployment: Uuid, flow: Uuid) -> (PrefectClient, Arc<AtomicUsize>) {
        use axum::routing::{get, post};
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let app = axum::Router::new()
            .route(
                "/api/deployments/{id}",
                get(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move {
                        axum::Json(serde_json::json!({
                            "id": deployment, "name": "d", "flow_id": flow,
                            "job_variables": {"image": "i"}
                        }))
                    }
                }),
            )
            .route(
                "/api/flow_runs/{id}/set_state",
                post(|| async {
                    axum::Json(serde_json::json!({
                        "status": "ABORT", "details": {"reason": "taken"}
                    }))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = bootstrap_prefect::PrefectConfig {
            api_url: url.parse().unwrap(),
            url_source: bootstrap_prefect::Source::Explicit,
            api_key: None,
            auth_string: None,
            retries: Default::default(),
        };
        (PrefectClient::new(config).unwrap(), reads)
    }

    fn run_of(deployment: Uuid, flow: Uuid) -> FlowRun {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::new_v4(), "name": "r", "flow_id": flow, "deployment_id": deployment
        }))
        .unwrap()
    }

    /// A run's deployment is read once (issue #20: three more reads per run in a burst), by the
    /// claim, and the configuration and events use that read; an adopted run (no claim) reads
    /// it at its first use.
    #[tokio::test]
    async fn a_run_reads_its_deployment_once() {
        let (deployment, flow) = (Uuid::new_v4(), Uuid::new_v4());
        let (client, reads) = fake_prefect(deployment, flow).await;
        let ctx = super::super::runtime::detached(
            client,
            super::super::WorkerOptions::new("p", "w", Default::default()),
        );
        let run = run_of(deployment, flow);
        let claimed = SubmitEnv {
            ctx: &ctx,
            run: &run,
            submitted: OnceLock::new(),
            deployment: OnceLock::new(),
        };
        assert!(claimed.claim().await.is_none(), "the fake refuses claims");
        assert_eq!(reads.load(Ordering::SeqCst), 1, "the claim reads it");
        let d = claimed.deployment().await.unwrap().unwrap();
        assert_eq!(
            (d.id, d.job_variables["image"].as_str()),
            (deployment, Some("i"))
        );
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "later uses take the claim's read"
        );

        let adopted = SubmitEnv {
            ctx: &ctx,
            run: &run,
            submitted: OnceLock::new(),
            deployment: OnceLock::new(),
        };
        assert!(adopted.deployment().await.unwrap().is_some());
        assert!(adopted.deployment().await.unwrap().is_some());
        assert_eq!(
            reads.load(Ordering::SeqCst),
            2,
            "an adopted run reads it once"
        );
    }

    /// Regression (tests/it/worker/e2e.rs `server_restart_loses_no_run`): a run being submitted
    /// while the Prefect server restarted was marked CRASHED ("cannot reach the Prefect API").
    #[test]
    fn outages_are_told_apart_from_bad_configurations() {
        let down = anyhow::Error::new(PrefectError::Unreachable {
            url: "http://127.0.0.1:9/api".into(),
            reason: "connection refused".into(),
        })
        .context("reading the work pool");
        assert!(prefect_outage(&down));
        let busy = anyhow::Error::new(PrefectError::Http {
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            method: "GET".into(),
            path: "/work_pools/p".into(),
            body: String::new(),
        });
        assert!(prefect_outage(&busy));
        let invalid = anyhow::Error::new(PrefectError::Unprocessable {
            detail: "bad job variables".into(),
        });
        assert!(!prefect_outage(&invalid));
        assert!(!prefect_outage(&anyhow!(
            "the job configuration is not an object"
        )));
    }
}
