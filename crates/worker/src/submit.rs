//! One flow run, from claim to cleanup: claim (PENDING, read `status`), build the job
//! configuration, create or adopt the Cloud Run job, run or adopt its execution, watch it with
//! backoff, report CRASHED when the infrastructure failed, delete the job unless `keep_job`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bootstrap_gcp::{GcpHttp, ServiceAccountKeySource, TokenSource};
use bootstrap_prefect::{
    FlowRun, PrefectClient, PrefectError, SetStateStatus, StateCreate, StateType,
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, watch};
use uuid::Uuid;

use super::claim::ClaimMarker;
use super::cloudrun::{Created, Readiness, RunJobs};
use super::config::{self, GcpCredentials, JobConfig, PoolKind, RunContext};
use super::outcome;
use super::refs::{self, Lookup};
use super::runtime::{Shared, Waiting};
use super::template;

pub use super::config::CLEANUP_LABEL;
/// Label naming the pool (as prefect-gcp sanitises `prefect.io/work-pool-name`).
pub const POOL_LABEL: &str = "prefect-io-work-pool-name";

/// Resolves `$ref` and placeholders against the Prefect API (through the shared reads).
struct PrefectLookup<'a>(&'a Shared);

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

/// Handles one run to its end. Never panics; every failure ends in a state proposal. True when
/// this task saw the run's infrastructure to an end (so the run must not be adopted again even
/// if its flow never reported a state); false when it did not claim it or left it PENDING.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    run: FlowRun,
    claim: Claim,
    mut cancel: watch::Receiver<Signal>,
    waiting: Waiting,
) -> bool {
    let id = run.id;
    let client = &shared.client;
    // Wait for a submission slot before claiming, so a run this worker cannot start soon stays
    // SCHEDULED for another worker; any signal (shutdown, cancel) ends the wait.
    let slot = tokio::select! {
        slot = shared.submit_slots.clone().acquire_owned() => match slot {
            Ok(slot) => slot,
            Err(_) => return false, // closed: never happens, the runtime keeps the semaphore
        },
        _ = cancel.changed() => return false,
    };
    drop(waiting);
    let claimed_at = match claim {
        Claim::Adopted(t) => t,
        Claim::New => {
            if let Some(dep) = run.deployment_id {
                match shared.reads.deployment(client, dep).await {
                    Ok(None) => {
                        propose(
                            client,
                            id,
                            StateType::Cancelled,
                            "The deployment of this run no longer exists.",
                            true,
                        )
                        .await;
                        return false;
                    }
                    Ok(Some(_)) => {}
                    Err(e) => {
                        tracing::warn!(flow_run = %id, error = %e, "could not read the deployment; will retry on the next poll");
                        return false;
                    }
                }
            }
            let claim = ClaimMarker::for_worker(&shared.opts.name);
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
                        return false;
                    }
                    r.state.and_then(|s| s.timestamp).unwrap_or_else(Utc::now)
                }
                Ok(r) => {
                    tracing::debug!(flow_run = %id, status = ?r.status, reason = r.reason().unwrap_or(""), "not claimed");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(flow_run = %id, error = %e, "could not claim the run");
                    return false;
                }
            }
        }
    };
    shared.log(
        id,
        20,
        format!("Worker '{}' submitting flow run '{id}'", shared.opts.name),
    );
    let submitted = announce(&shared, &run);
    let mut created: Option<(RunJobs, JobConfig)> = None;
    let outcome = submit_and_watch(&shared, &run, claimed_at, cancel, slot, &mut created).await;
    let job = created.as_ref().map(|(_, c)| (c.kind, c.job_name.clone()));
    match outcome {
        Ok(End::Finished(done)) => {
            let code = report_finished(&shared, &run, job.as_ref(), &done).await;
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
                copy_container_tail(&shared, run.id, jobs, &cfg.job_name, &done.execution).await;
            }
            if let Some((_, job)) = &job {
                report_executed(&shared, &run, job, code, submitted);
            }
        }
        // prefect-gcp: the run's state is left to the flow ("Lost connection to flow run
        // infrastructure"), and so is the job: the execution may still be running and succeed.
        Ok(End::LostContact(msg)) => {
            shared.log(id, 40, msg);
            return false;
        }
        Ok(End::Cancelled) => {
            propose(
                client,
                id,
                StateType::Cancelled,
                "Cancelled: the Cloud Run execution was cancelled by the worker.",
                true,
            )
            .await;
            shared.log(
                id,
                20,
                "Cancelled the flow run's Cloud Run execution".into(),
            );
        }
        Err(Failure::AfterStart(msg)) => {
            crash_unless_final(client, id, &msg).await;
            shared.log(id, 40, msg);
        }
        // Shutting down or Prefect unavailable: the job keeps running, a later pass adopts it.
        Ok(End::Detached) => return false,
        Err(Failure::Submit(msg)) => {
            let msg = format!("Failed to submit flow run to infrastructure: {msg}");
            propose(client, id, StateType::Crashed, &msg, false).await;
            shared.log(id, 40, msg);
        }
    }
    if let Some((jobs, cfg)) = created
        && !cfg.keep_job
        && let Err(e) = jobs.delete(&cfg.job_name).await
    {
        tracing::warn!(job = cfg.job_name, error = %e, "could not delete the job; the next start cleans it up");
    }
    true
}

/// How long a claim settles before it is checked.
const CLAIM_SETTLE: Duration = Duration::from_millis(300);

/// After an ACCEPTed claim: true when no other worker's state follows the last SCHEDULED.
///
/// A SQLite-backed server can ACCEPT two concurrent PENDING proposals (measured by
/// `tests/worker_protocol.rs`: the slower request read SCHEDULED before the faster one
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

/// An execution that ended, as watched.
struct Done {
    /// The execution's name.
    execution: String,
    /// `None`: the execution was deleted while watched.
    succeeded: Option<bool>,
    message: Option<String>,
    log_uri: Option<String>,
}

enum End {
    Finished(Done),
    /// The Cloud Run API did not answer for the lost-contact window
    /// ([`super::runtime::WorkerOptions::lost_contact_window`], 30 minutes by default).
    LostContact(String),
    Cancelled,
    Detached,
}

enum Failure {
    Submit(String),
    AfterStart(String),
}

fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

async fn build(shared: &Shared, run: &FlowRun) -> anyhow::Result<JobConfig> {
    let client = &shared.client;
    let pool = shared
        .reads
        .work_pool(client, &shared.opts.pool)
        .await?
        .ok_or_else(|| anyhow!("work pool `{}` not found", shared.opts.pool))?;
    let kind = PoolKind::from_pool_type(&pool.pool_type).ok_or_else(|| {
        anyhow!(
            "work pool type `{}` is not a Cloud Run type",
            pool.pool_type
        )
    })?;
    let deployment = match run.deployment_id {
        Some(d) => shared.reads.deployment(client, d).await?,
        None => None,
    };
    let flow = shared.reads.flow(client, run.flow_id).await?;
    let dep_vars = deployment
        .as_ref()
        .map(|d| d.job_variables.clone())
        .unwrap_or_default();
    let vars = template::merge_job_variables(&dep_vars, run.job_variables.as_ref());
    let rendered = template::render_job_configuration(&pool.base_job_template, &vars, &|k| {
        std::env::var(k).ok()
    })
    .map_err(|e| anyhow!(e))?;
    let resolved = refs::resolve(Value::Object(rendered), &PrefectLookup(shared))
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
        worker_name: &shared.opts.name,
        worker_env: shared.worker_env.clone(),
    };
    config::prepare(kind, resolved, &ctx).map_err(|e| anyhow!(e))
}

/// Longest a submission waits for an unavailable Prefect API before leaving the run PENDING
/// under its claim, for the reconcile pass to adopt later.
const PREFECT_OUTAGE_WAIT: Duration = Duration::from_secs(120);

/// Whether an error chain holds a Prefect API error that says nothing about the request itself:
/// the server was unreachable, overloaded (429) or failing (5xx).
fn prefect_outage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| match c.downcast_ref::<PrefectError>() {
        Some(PrefectError::Unreachable { .. }) => true,
        Some(PrefectError::Http { status, .. }) => {
            status.is_server_error() || status.as_u16() == 429
        }
        _ => false,
    })
}

/// Builds the job configuration, waiting out an unavailable Prefect API (a restart, an
/// overload) with backoff, so that an outage does not crash the runs being submitted. Block and
/// variable lookups report errors as text, so a failure while the server's `/health` fails
/// counts as an outage too. `Err` is how the submission ends instead.
async fn build_patiently(
    shared: &Shared,
    run: &FlowRun,
    cancel: &mut watch::Receiver<Signal>,
) -> Result<JobConfig, Result<End, Failure>> {
    let deadline = tokio::time::Instant::now() + PREFECT_OUTAGE_WAIT;
    let mut delay = Duration::from_millis(500);
    loop {
        let e = match build(shared, run).await {
            Ok(cfg) => return Ok(cfg),
            Err(e) => e,
        };
        if !prefect_outage(&e) && shared.client.health().await.is_ok() {
            return Err(Err(Failure::Submit(chain(&e))));
        }
        if tokio::time::Instant::now() + delay > deadline {
            tracing::warn!(flow_run = %run.id, error = %chain(&e), "the Prefect API is still unavailable; leaving the run PENDING for a later pass");
            return Err(Ok(End::Detached));
        }
        tracing::info!(flow_run = %run.id, error = %chain(&e), "the Prefect API is unavailable; will retry");
        match pause(delay, cancel).await {
            Signal::Cancel => return Err(Ok(End::Cancelled)),
            Signal::Shutdown => return Err(Ok(End::Detached)),
            Signal::None => {}
        }
        delay = (delay * 2).min(Duration::from_secs(8));
    }
}

/// The Cloud Run client for a run's own job configuration (its deployment's and its own job
/// variables: region, credentials), as prefect-gcp's `kill_infrastructure` uses the run's
/// configuration (prefect `base.py` `_cancel_run`), not the pool's defaults.
pub(crate) async fn jobs_of_run(shared: &Shared, run: &FlowRun) -> anyhow::Result<RunJobs> {
    let cfg = build(shared, run).await?;
    jobs_for(shared, &cfg).await
}

/// The Cloud Run client for a configuration's credentials, reused across runs.
async fn jobs_for(shared: &Shared, cfg: &JobConfig) -> anyhow::Result<RunJobs> {
    let creds = &cfg.credentials;
    shared
        .jobs
        .get_or_make(
            cfg.kind,
            &cfg.region,
            creds.project.as_deref(),
            creds.service_account_info.as_ref(),
            || make_jobs(shared, cfg),
        )
        .await
}

async fn make_jobs(shared: &Shared, cfg: &JobConfig) -> anyhow::Result<RunJobs> {
    let tokens: Arc<dyn TokenSource> = match &cfg.credentials.service_account_info {
        Some(key) => Arc::new(
            ServiceAccountKeySource::from_json(key)
                .context("the credentials block's service account key")?,
        ),
        None => shared.ambient_tokens().await?,
    };
    let project = project_of(&cfg.credentials, tokens.as_ref())?;
    let http = GcpHttp::new(
        shared.opts.endpoints.clone(),
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

/// What the runtime asks of a run's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Carry on.
    None,
    /// The run is CANCELLING: cancel its execution.
    Cancel,
    /// The worker is stopping: leave the job running and return.
    Shutdown,
}

/// Waits `d`, or less when a signal arrives; returns the signal in force.
async fn pause(d: Duration, rx: &mut watch::Receiver<Signal>) -> Signal {
    tokio::select! {
        _ = tokio::time::sleep(d) => *rx.borrow(),
        changed = rx.changed() => match changed {
            Ok(()) => *rx.borrow(),
            // The runtime dropped the sender: nobody will signal; just wait.
            Err(_) => {
                tokio::time::sleep(d).await;
                Signal::None
            }
        },
    }
}

async fn submit_and_watch(
    shared: &Shared,
    run: &FlowRun,
    claimed_at: DateTime<Utc>,
    mut cancel: watch::Receiver<Signal>,
    slot: OwnedSemaphorePermit,
    created: &mut Option<(RunJobs, JobConfig)>,
) -> Result<End, Failure> {
    let fail = |e: anyhow::Error| Failure::Submit(chain(&e));
    // The job body carries the cleanup label already (config::prepare, within the label cap).
    let cfg = match build_patiently(shared, run, &mut cancel).await {
        Ok(cfg) => cfg,
        Err(end) => return end,
    };
    let jobs = jobs_for(shared, &cfg).await.map_err(fail)?;
    let job = cfg.job_name.clone();
    let created_now = jobs
        .create(&job, &cfg.body)
        .await
        .map_err(|e| fail(e.into()))?;
    let fresh = matches!(created_now, Created::New(_));
    // v2: Google reports a failure found after accepting the create in the operation's
    // `error` (the job may then never appear); it is read while the job is not ready, so the
    // run fails with Google's reason rather than "not ready within N s" (wire audit row 9).
    let mut create_op = match created_now {
        Created::New(op) => op,
        Created::Existing => None,
    };
    if !fresh {
        if let Some(other) = owned_by_other_run(&jobs, &job, run.id).await {
            // A verbatim v1 name: prefect-gcp's create fails here too (409); never adopt it.
            return Err(Failure::Submit(format!(
                "Cloud Run job {job} already exists and belongs to flow run {other}; \
                 a fixed `name` job variable lets only one run at a time use it"
            )));
        }
        shared.log(
            run.id,
            20,
            format!("Job {job} already exists (an earlier attempt); adopting it"),
        );
    }
    *created = Some((jobs.clone(), cfg));
    // Wait for the job to be ready: backoff from 250 ms to 5 s, bounded by the deadline.
    let deadline = tokio::time::Instant::now() + shared.opts.ready_deadline;
    let mut delay = Duration::from_millis(250);
    let view = loop {
        let view = jobs.job(&job).await.map_err(|e| fail(e.into()))?;
        match view {
            Some(v) if v.readiness == Readiness::Ready => break v,
            Some(v) => {
                if let Readiness::Failed(msg) = &v.readiness {
                    return Err(Failure::Submit(format!(
                        "Cloud Run job {job} could not be set up: {msg}"
                    )));
                }
            }
            None if !fresh || tokio::time::Instant::now() > deadline => {
                return Err(Failure::Submit(format!(
                    "Cloud Run job {job} vanished while being set up"
                )));
            }
            None => {}
        }
        if let Some(op) = &create_op {
            match jobs.create_outcome(op).await {
                Ok(Some(Err(e))) => {
                    return Err(Failure::Submit(format!(
                        "Cloud Run could not create job {job}: {e}"
                    )));
                }
                Ok(Some(Ok(()))) => create_op = None,
                // Still running, or unreadable for now: the job's own state decides.
                Ok(None) | Err(_) => {}
            }
        }
        if tokio::time::Instant::now() + delay > deadline {
            return Err(Failure::Submit(format!(
                "Cloud Run job {job} was not ready within {} s",
                shared.opts.ready_deadline.as_secs()
            )));
        }
        match pause(delay, &mut cancel).await {
            Signal::Cancel => return Ok(End::Cancelled),
            // Still PENDING: a restart of this worker adopts the run and finds the job.
            Signal::Shutdown => return Ok(End::Detached),
            Signal::None => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    };
    // Reuse an execution started for this claim (a restart after `:run`), else start one.
    let skew = chrono::Duration::seconds(5);
    let recorded_with_run =
        !matches!(&view.latest_execution, Some((_, Some(t))) if *t >= claimed_at - skew);
    let execution = match view.latest_execution {
        Some((name, Some(t))) if t >= claimed_at - skew => {
            shared.log(
                run.id,
                20,
                format!("Adopting execution {name} started by an earlier attempt"),
            );
            name
        }
        _ => match run_recording_pid(shared, run.id, &jobs, &job).await {
            Ok(name) => name,
            Err(e) => {
                // The run may have started even though the answer was lost: look before failing.
                let again = jobs
                    .job(&job)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| v.latest_execution);
                match again {
                    Some((name, Some(t))) if t >= claimed_at - skew => name,
                    _ => return Err(fail(e.into())),
                }
            }
        },
    };
    if !recorded_with_run {
        record_pid(shared, run.id, &job).await;
    }
    shared.log(
        run.id,
        20,
        format!("Started Cloud Run job {job}, execution {execution}"),
    );
    // Submitted: watching costs the Prefect server nothing; let the next run in.
    drop(slot);
    let window = shared.opts.lost_contact_window;
    watch_execution(&jobs, &job, &execution, &mut cancel, window).await
}

/// Gives the run this worker's labels and emits `prefect.worker.submitted-flow-run`, as
/// Prefect's worker does, off the submission's path (both are bookkeeping: a failure is logged,
/// never the run's). Returns the event's id, which the executed event follows.
fn announce(shared: &Arc<Shared>, run: &FlowRun) -> Uuid {
    let shared = shared.clone();
    let run = run.clone();
    let id = Uuid::new_v4();
    tokio::spawn(async move {
        let Some((kind, pool, related)) = related_of(&shared, &run).await else {
            return;
        };
        let labels = outcome::worker_labels(&shared.opts.name, kind, &pool);
        if let Err(e) = shared.client.update_flow_run_labels(run.id, &labels).await {
            tracing::warn!(flow_run = %run.id, error = %e, "could not label the flow run");
        }
        let resource = outcome::worker_resource(&shared.opts.name, kind);
        let (_, mut ev) =
            outcome::event("prefect.worker.submitted-flow-run", resource, related, None);
        ev["id"] = serde_json::json!(id.to_string());
        emit(&shared, ev).await;
    });
    id
}

/// `prefect.worker.started` / `.stopped` (related: the pool), bounded to 1 s so that neither
/// startup nor the SIGTERM exit waits on it; the event's id.
pub(crate) async fn worker_event(
    shared: &Shared,
    kind: PoolKind,
    pool: &bootstrap_prefect::WorkPool,
    name: &str,
    follows: Option<Uuid>,
) -> Uuid {
    let resource = outcome::worker_resource(&shared.opts.name, kind);
    let related = vec![serde_json::json!({
        "prefect.resource.id": format!("prefect.work-pool.{}", pool.id),
        "prefect.resource.role": "work-pool",
        "prefect.resource.name": pool.name,
    })];
    let (id, ev) = outcome::event(name, resource, related, follows);
    let _ = tokio::time::timeout(Duration::from_secs(1), emit(shared, ev)).await;
    id
}

async fn emit(shared: &Shared, event: Value) {
    if let Err(e) = shared.client.emit_events(&[event]).await {
        tracing::debug!(error = %e, "could not emit a worker event");
    }
}

/// The pool kind, pool and related resources of a run (from the shared reads).
async fn related_of(
    shared: &Shared,
    run: &FlowRun,
) -> Option<(PoolKind, bootstrap_prefect::WorkPool, Vec<Value>)> {
    let client = &shared.client;
    let pool = shared
        .reads
        .work_pool(client, &shared.opts.pool)
        .await
        .ok()??;
    let kind = PoolKind::from_pool_type(&pool.pool_type)?;
    let deployment = match run.deployment_id {
        Some(d) => shared.reads.deployment(client, d).await.ok().flatten(),
        None => None,
    };
    let flow = shared.reads.flow(client, run.flow_id).await.ok().flatten();
    let related = outcome::run_related(
        run,
        flow.as_ref(),
        deployment.as_ref().map(|d| (d.id, d.name.as_str())),
        &pool,
    );
    Some((kind, pool, related))
}

/// `prefect.worker.executed-flow-run`, with the job and status code on the flow run.
fn report_executed(shared: &Arc<Shared>, run: &FlowRun, job: &str, code: i64, follows: Uuid) {
    let shared = shared.clone();
    let run = run.clone();
    let job = job.to_string();
    tokio::spawn(async move {
        let Some((kind, _, related)) = related_of(&shared, &run).await else {
            return;
        };
        let resource = outcome::worker_resource(&shared.opts.name, kind);
        let related = outcome::with_result(related, &job, code);
        let (_, ev) = outcome::event(
            "prefect.worker.executed-flow-run",
            resource,
            related,
            Some(follows),
        );
        emit(&shared, ev).await;
    });
}

/// The log lines and state prefect-gcp gives a finished execution; returns its status code
/// (0 succeeded, 1 failed, -1 deleted while watched).
async fn report_finished(
    shared: &Shared,
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
        Some(ok) => shared.log(
            run.id,
            if ok { 20 } else { 40 },
            outcome::finished_line(kind, job, ok, done.message.as_deref()),
        ),
        None => shared.log(
            run.id,
            20,
            format!("Cloud Run job {job}'s execution was deleted. The flow run will be marked based on its current state."),
        ),
    }
    if let Some(uri) = &done.log_uri {
        shared.log(run.id, 20, outcome::logs_line(uri));
    }
    if code != 0 {
        let (msg, resolution) = outcome::crashed_message(code);
        crash_unless_final(&shared.client, run.id, &msg).await;
        shared.log(run.id, 20, resolution.to_string());
    }
    code
}

/// Copies the last lines a failed execution printed from Cloud Logging into the run's logs
/// (bounded and redacted, `tail`); a failed read says why in the run's logs instead.
async fn copy_container_tail(
    shared: &Shared,
    id: Uuid,
    jobs: &RunJobs,
    job: &str,
    execution: &str,
) {
    match super::tail::read(jobs, job, execution).await {
        Ok(lines) => {
            if let Some(m) = super::tail::message(job, execution, &lines, &shared.worker_env) {
                shared.log(id, 40, m);
            }
        }
        Err(e) => shared.log(
            id,
            30,
            format!(
                "Could not read the container output of execution {execution} from Cloud                  Logging (the worker's identity needs logging.logEntries.list, e.g.                  roles/logging.viewer): {e}"
            ),
        ),
    }
}

/// The other flow run an existing job was made for (its `prefect-io-flow-run-id` label), if
/// it is not `id`'s. Job names derived from the run id never meet this; a fixed v1 name can.
async fn owned_by_other_run(jobs: &RunJobs, job: &str, id: Uuid) -> Option<String> {
    let view = jobs.job(job).await.ok().flatten()?;
    let owner = view.labels.get("prefect-io-flow-run-id")?.as_str();
    (owner != id.to_string()).then(|| owner.to_string())
}

/// Records the job as the run's `infrastructure_pid` (how a later worker finds it to cancel).
async fn record_pid(shared: &Shared, id: Uuid, job: &str) {
    if let Err(e) = shared.client.set_flow_run_infrastructure_pid(id, job).await {
        tracing::warn!(flow_run = %id, error = %e, "could not record infrastructure_pid");
    }
}

/// Starts an execution and, at the same time, records the job as the run's
/// `infrastructure_pid`: the two calls go to different servers, so the submission takes one
/// round trip less (the job exists already, so the pid is right whether or not the run starts).
async fn run_recording_pid(
    shared: &Shared,
    id: Uuid,
    jobs: &RunJobs,
    job: &str,
) -> Result<String, bootstrap_gcp::GcpError> {
    let (started, ()) = tokio::join!(jobs.run(job), record_pid(shared, id, job));
    started
}

/// How long the watch keeps trying while every read of the execution fails (each read is
/// itself retried by GcpHttp): `window` ([`super::runtime::WorkerOptions::lost_contact_window`]).
/// The execution may be running all along; after this the run is left to report its own
/// state, and the job is kept.
async fn watch_execution(
    jobs: &RunJobs,
    job: &str,
    execution: &str,
    cancel: &mut watch::Receiver<Signal>,
    window: Duration,
) -> Result<End, Failure> {
    let mut delay = Duration::from_millis(500);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        match jobs.execution(execution).await {
            Ok(Some(e)) if e.done => {
                return Ok(End::Finished(Done {
                    execution: execution.to_string(),
                    succeeded: Some(e.succeeded),
                    message: e.message,
                    log_uri: e.log_uri,
                }));
            }
            Ok(Some(_)) => failing_since = None,
            Ok(None) => {
                return Ok(End::Finished(Done {
                    execution: execution.to_string(),
                    succeeded: None,
                    message: None,
                    log_uri: None,
                }));
            }
            Err(e) => {
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= window {
                    return Ok(End::LostContact(format!(
                        "Lost connection to flow run infrastructure: Cloud Run did not answer \
                         about execution {execution} of job {job} for {} minutes ({e}); the \
                         flow run's final state is left to the execution, and the job is kept",
                        window.as_secs().div_ceil(60)
                    )));
                }
                tracing::warn!(job, error = %e, "cannot read the execution; still watching");
            }
        }
        match pause(delay, cancel).await {
            Signal::Shutdown => return Ok(End::Detached),
            Signal::Cancel => {
                jobs.cancel(execution).await.map_err(|e| {
                    Failure::AfterStart(format!("Could not cancel execution {execution}: {e}"))
                })?;
                return Ok(End::Cancelled);
            }
            Signal::None => {}
        }
        delay = delay.mul_f64(1.5).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue #17 item 3: when every read of the execution fails (here: nothing listens), the
    /// watch keeps going for the whole lost-contact window and then ends as lost contact, the
    /// run's state left to the execution, never as a failure that CRASHES the run. A small
    /// window stands in for the default 30 minutes.
    #[tokio::test]
    async fn prolonged_api_errors_end_as_lost_contact_after_the_window() {
        let window = Duration::from_secs(3);
        let tokens = std::sync::Arc::new(bootstrap_gcp::StaticTokenSource::new(
            "t".to_string().into(),
            None,
        ));
        let http = bootstrap_gcp::GcpHttp::new(
            bootstrap_gcp::Endpoints::with_base("http://127.0.0.1:9").expect("endpoint"),
            tokens,
            bootstrap_gcp::RetryPolicy {
                max_attempts: 1,
                ..bootstrap_gcp::RetryPolicy::default()
            },
        )
        .expect("http");
        let jobs = RunJobs::new(http, PoolKind::V2, "my-project", "us-central1").expect("jobs");
        let (_tx, mut rx) = watch::channel(Signal::None);
        let started = tokio::time::Instant::now();
        let end = watch_execution(
            &jobs,
            "job-1",
            "projects/my-project/locations/us-central1/jobs/job-1/executions/job-1-abc",
            &mut rx,
            window,
        )
        .await;
        let waited = started.elapsed();
        match end {
            Ok(End::LostContact(msg)) => {
                assert!(
                    msg.starts_with("Lost connection to flow run infrastructure"),
                    "{msg}"
                );
                assert!(msg.contains("the job is kept"), "{msg}");
            }
            Ok(_) => panic!("the watch ended otherwise than lost contact"),
            Err(_) => panic!("API errors failed the watch (a CRASHED run)"),
        }
        assert!(waited >= window, "gave up after {waited:?}");
        assert!(waited < window * 5, "bounded: {waited:?}");
    }

    /// Regression (tests/worker_e2e.rs `server_restart_loses_no_run`): a run being submitted
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
