//! The worker loop: a reconcile loop whose passes are idempotent.
//!
//! - heartbeat every 30 s;
//! - poll `get_scheduled_flow_runs` (prefetch 10 s) every `poll_interval` ±20 %, and at once
//!   when the event stream announces a run scheduled into the pool;
//! - each run in its own task, bounded by `limit`; claims are settled by the server (PENDING);
//! - cancellation from `prefect.flow-run.Cancelling` events and a slow poll of CANCELLING runs;
//! - runs left PENDING by an earlier process of this worker (same name) are adopted;
//! - at start, finished jobs of the pool left behind by a crash are deleted;
//! - on shutdown: no new runs, running jobs are left to finish, exit within a few seconds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use bootstrap_gcp::{AmbientTokenSource, Endpoints, GcpHttp, TokenSource};
use bootstrap_prefect::{EventFilter, FlowRun, FlowRunQuery, LogCreate, PrefectClient, StateType};
use chrono::Utc;
use rand::Rng as _;
use secrecy::SecretString;
use tokio::sync::{Notify, OnceCell, Semaphore, mpsc, watch};
use uuid::Uuid;

use super::cache::{JobsCache, Reads};
use super::claim::ClaimMarker;
use super::cloudrun::RunJobs;
use super::config::{GcpCredentials, PoolKind, sanitize_labels};
use super::driver::{Stopped, stop_started_elsewhere};
use super::refs::Lookup;
use super::submit::{self, CLEANUP_LABEL, Claim, POOL_LABEL, Signal};

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The work pool.
    pub pool: String,
    /// Only these queues (all when empty).
    pub queues: Vec<String>,
    /// The worker's name (a restarted worker with the same name adopts its PENDING runs).
    pub name: String,
    /// At most this many runs at once.
    pub limit: Option<usize>,
    /// Time between polls.
    pub poll_interval: Duration,
    /// Time between heartbeats.
    pub heartbeat_interval: Duration,
    /// Runs scheduled up to this far ahead are taken.
    pub prefetch: Duration,
    /// Longest wait for a job to become ready.
    pub ready_deadline: Duration,
    /// Slow poll of CANCELLING runs and orphaned PENDING runs.
    pub reconcile_interval: Duration,
    /// Where Google APIs are.
    pub endpoints: Endpoints,
    /// Subscribe to the event stream for immediate pickup.
    pub use_events: bool,
    /// How long a run's watch keeps trying while every read of its execution fails, before
    /// it leaves the run's state to the execution and keeps the job (prefect-gcp's "Lost
    /// connection to flow run infrastructure"); 30 minutes.
    pub lost_contact_window: Duration,
    /// Scale the worker's own Cloud Run worker pool to 0 when idle (`worker.scale_to_zero`).
    pub scale_down: Option<super::idle::ScaleDown>,
}

impl WorkerOptions {
    /// Defaults for a pool and worker name.
    pub fn new(pool: &str, name: &str, endpoints: Endpoints) -> Self {
        Self {
            pool: pool.to_string(),
            queues: Vec::new(),
            name: name.to_string(),
            limit: None,
            poll_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(30),
            prefetch: Duration::from_secs(10),
            ready_deadline: Duration::from_secs(600),
            reconcile_interval: Duration::from_secs(30),
            endpoints,
            use_events: true,
            lost_contact_window: Duration::from_secs(30 * 60),
            scale_down: None,
        }
    }
}

/// The worker's state, in two parts: what a run needs to be carried out ([`Ctx`]) and which
/// runs are being carried out ([`Scheduler`]).
pub(crate) struct Shared {
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) sched: Scheduler,
    /// The work pool's id: a run of another pool is never this worker's to cancel.
    pub(crate) pool_id: Uuid,
}

/// What runs are carried out with: clients, caches and options. Run tasks hold only this.
pub(crate) struct Ctx {
    pub(crate) client: PrefectClient,
    pub(crate) opts: WorkerOptions,
    /// The worker's own Prefect settings handed to every container.
    pub(crate) worker_env: Vec<(String, SecretString)>,
    outbox: Outbox,
    ambient: OnceCell<Arc<dyn TokenSource>>,
    /// Prefect reads shared by the runs of a poll cycle.
    pub(crate) reads: Reads,
    /// Cloud Run clients (and their tokens) by credentials.
    pub(crate) jobs: JobsCache,
}

/// Worker log lines and per-run events, shipped in batches by [`ship_logs`] and
/// [`ship_events`].
pub(crate) struct Outbox {
    logs: mpsc::UnboundedSender<LogCreate>,
    events: mpsc::UnboundedSender<serde_json::Value>,
}

/// Which runs are being handled, which were seen to an end, and how many more may start.
pub(crate) struct Scheduler {
    in_flight: Mutex<HashMap<Uuid, watch::Sender<Signal>>>,
    /// Runs this process saw to an end, newest last: never adopted again, even when their flow
    /// never reported a state (a run left PENDING after its execution ended would otherwise be
    /// run again by every reconcile pass).
    finished: Mutex<(HashSet<Uuid>, VecDeque<Uuid>)>,
    /// `--limit`: runs at once.
    permits: Option<Arc<Semaphore>>,
    /// Runs between claim and a started execution (see [`SUBMIT_SLOTS`]).
    pub(crate) submit_slots: Arc<Semaphore>,
    /// Runs taken from a poll that wait for a submission slot, not yet claimed.
    waiting: AtomicUsize,
    last_poll_ok: Mutex<Instant>,
    poll_now: Notify,
    /// Run a reconcile pass now: the event stream (re)connected, and a run may have moved to
    /// CANCELLING while it was down.
    reconcile_now: Notify,
    /// Runs whose cancel (of an execution this process did not start) is under way: an event
    /// and a reconcile pass for the same run start one cancel, not two.
    cancelling: Mutex<HashSet<Uuid>>,
    /// Cancels under way at once (see [`CANCEL_SLOTS`]).
    cancel_slots: Arc<Semaphore>,
    stopping: watch::Sender<bool>,
    /// Scale to zero: this worker set its pool's count to 0 and claims no new run (see
    /// [`super::idle::watch`]).
    dormant: Arc<AtomicBool>,
}

/// At most this many runs are being submitted (claim, job configuration, job creation, up to
/// the started execution) at once; the rest of a poll's page waits unclaimed. Submitting a whole
/// page at once made every run wait for all the others' Prefect calls on a busy server (the
/// first execution of 500 queued runs started after 13 s); a bounded pipeline starts the first
/// ones at once and leaves unclaimed runs to other workers of the pool.
pub(crate) const SUBMIT_SLOTS: usize = 64;

/// At most this many cancels of executions this process did not start run at once. Each is a
/// few Prefect and Cloud Run calls that may retry for up to their deadlines; they run beside
/// the event stream and the reconcile pass, not inside them (a cancel awaited in the event loop
/// held up every Scheduled event behind it, and a pass with many CANCELLING runs took them one
/// at a time).
const CANCEL_SLOTS: usize = 8;

/// How many finished runs are remembered (a few hundred KB at most).
const FINISHED_KEPT: usize = 4096;

/// Runs asked for per poll (Prefect's server caps a page at 200 by default).
const PAGE: u32 = 200;

/// Counts a run as waiting for a submission slot until dropped.
pub(crate) struct Waiting(Arc<Shared>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.sched.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ctx {
    /// Ships a worker log line for a flow run (batched) and logs it locally.
    pub(crate) fn log(&self, flow_run: Uuid, level: i64, message: String) {
        if level >= 40 {
            tracing::warn!(flow_run = %flow_run, "{message}");
        } else {
            tracing::info!(flow_run = %flow_run, "{message}");
        }
        let _ = self.outbox.logs.send(LogCreate {
            name: "prefect.flow_runs.worker".into(),
            level,
            message,
            timestamp: Utc::now(),
            flow_run_id: Some(flow_run),
        });
    }

    /// Queues an event for the next batch (see [`ship_events`]).
    pub(crate) fn emit(&self, event: serde_json::Value) {
        let _ = self.outbox.events.send(event);
    }

    /// The ambient identity (ADC / attached service account), discovered once.
    pub(crate) async fn ambient_tokens(&self) -> anyhow::Result<Arc<dyn TokenSource>> {
        let t = self
            .ambient
            .get_or_try_init(|| async {
                let t = AmbientTokenSource::discover().await?;
                Ok::<_, bootstrap_gcp::GcpError>(Arc::new(t) as Arc<dyn TokenSource>)
            })
            .await?;
        Ok(t.clone())
    }
}

impl Shared {
    /// Seconds since the last successful poll.
    pub(crate) fn since_last_poll(&self) -> Duration {
        self.sched
            .last_poll_ok
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or(Duration::MAX)
    }

    fn stopping(&self) -> bool {
        *self.sched.stopping.borrow() || self.sched.dormant.load(Ordering::SeqCst)
    }

    /// Starts a task for `run` unless one is running or the limit is reached.
    fn start(self: &Arc<Self>, run: FlowRun, claim: Claim) {
        if self.stopping() {
            return;
        }
        let permit = match &self.sched.permits {
            Some(p) => match p.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                // At the limit: the run stays SCHEDULED for a later poll or another worker.
                Err(_) => return,
            },
            None => None,
        };
        let rx = {
            let Ok(mut map) = self.sched.in_flight.lock() else {
                return;
            };
            if map.contains_key(&run.id) {
                return;
            }
            let (tx, rx) = watch::channel(Signal::None);
            map.insert(run.id, tx);
            rx
        };
        self.sched.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(self.clone());
        let shared = self.clone();
        tokio::spawn(async move {
            let id = run.id;
            let finished = submit::handle(
                shared.ctx.clone(),
                shared.sched.submit_slots.clone(),
                run,
                claim,
                rx,
                waiting,
            )
            .await;
            if finished {
                shared.remember_finished(id);
            }
            if let Ok(mut map) = shared.sched.in_flight.lock() {
                map.remove(&id);
            }
            drop(permit);
        });
    }

    fn remember_finished(&self, id: Uuid) {
        if let Ok(mut f) = self.sched.finished.lock() {
            let (set, order) = &mut *f;
            if set.insert(id) {
                order.push_back(id);
            }
            while order.len() > FINISHED_KEPT {
                if let Some(old) = order.pop_front() {
                    set.remove(&old);
                }
            }
        }
    }

    fn finished_here(&self, id: Uuid) -> bool {
        self.sched
            .finished
            .lock()
            .map(|f| f.0.contains(&id))
            .unwrap_or(false)
    }

    fn signal(&self, id: Uuid, s: Signal) -> bool {
        match self.sched.in_flight.lock() {
            Ok(map) => map.get(&id).map(|tx| tx.send(s).is_ok()).unwrap_or(false),
            Err(_) => false,
        }
    }

    fn in_flight_count(&self) -> usize {
        self.sched.in_flight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// `base` ± 20 %.
fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Runs the worker until `shutdown` resolves. Returns after in-flight submissions were told to
/// stop (within a few seconds); running Cloud Run jobs keep running.
pub async fn run(
    client: PrefectClient,
    opts: WorkerOptions,
    health_port: Option<u16>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let pool = client
        .work_pool(&opts.pool)
        .await
        .context("reading the work pool")?
        .ok_or_else(|| {
            anyhow!(
                "work pool `{}` does not exist; create it first (`bootstrap apply`)",
                opts.pool
            )
        })?;
    let kind = PoolKind::from_pool_type(&pool.pool_type).ok_or_else(|| {
        anyhow!(
            "work pool `{}` has type `{}`; this worker runs `cloud-run-v2` and `cloud-run` pools",
            pool.name,
            pool.pool_type
        )
    })?;
    let cfg = client.config();
    // Every Prefect setting of the worker reaches the jobs, as Prefect's base worker does.
    let worker_env = super::settings::forwarded(
        std::env::vars(),
        super::settings::ApiSettings {
            url: Some(SecretString::from(cfg.api_url.to_string())),
            key: cfg.api_key.clone(),
            auth_string: cfg.auth_string.clone(),
        },
    );
    let (log_tx, log_rx) = mpsc::unbounded_channel();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let (stop_tx, _) = watch::channel(false);
    let shared = Arc::new(Shared {
        sched: Scheduler::new(opts.limit, stop_tx),
        ctx: Arc::new(Ctx::new(
            client.clone(),
            opts,
            worker_env,
            Outbox {
                logs: log_tx,
                events: event_tx,
            },
        )),
        pool_id: pool.id,
    });
    tracing::info!(worker = shared.ctx.opts.name, pool = pool.name, kind = ?kind, "worker started");
    let started =
        submit::worker_event(&shared.ctx, kind, &pool, "prefect.worker.started", None).await;
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(ship_logs(client.clone(), log_rx));
    tasks.spawn(ship_events(client.clone(), event_rx));
    tasks.spawn(heartbeat_loop(shared.clone()));
    tasks.spawn(poll_loop(shared.clone()));
    tasks.spawn(reconcile_loop(shared.clone()));
    if shared.ctx.opts.use_events {
        tasks.spawn(event_loop(shared.clone(), pool.id));
    }
    tasks.spawn(cleanup_leftovers(
        shared.clone(),
        kind,
        pool.base_job_template.clone(),
    ));
    if let Some(down) = shared.ctx.opts.scale_down.clone() {
        let work = Arc::new(super::idle::PrefectWork {
            client: client.clone(),
            pool: pool.name.clone(),
        });
        let mine = shared.clone();
        let dormant = shared.sched.dormant.clone();
        tasks.spawn(super::idle::watch(
            down,
            work,
            move || mine.in_flight_count() + mine.sched.waiting.load(Ordering::SeqCst),
            dormant,
        ));
    }
    if let Some(port) = health_port {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("cannot listen on port {port} for /health"))?;
        tasks.spawn(super::health::serve(listener, shared.clone()));
    }
    shutdown.await;
    tracing::info!("stopping: no new runs; running jobs are left to finish");
    let _ = shared.sched.stopping.send(true);
    if let Ok(map) = shared.sched.in_flight.lock() {
        for tx in map.values() {
            let _ = tx.send(Signal::Shutdown);
        }
    }
    // Give tasks a moment to record what they did (states, logs), then leave.
    let deadline = Instant::now() + Duration::from_secs(3);
    while shared.in_flight_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    submit::worker_event(
        &shared.ctx,
        kind,
        &pool,
        "prefect.worker.stopped",
        Some(started),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the last log and event batches
    tasks.abort_all();
    Ok(())
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let secs = shared.ctx.opts.heartbeat_interval.as_secs().max(1);
    loop {
        if let Err(e) = shared
            .ctx
            .client
            .worker_heartbeat(&shared.ctx.opts.pool, &shared.ctx.opts.name, secs)
            .await
        {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        tokio::time::sleep(shared.ctx.opts.heartbeat_interval).await;
    }
}

async fn poll_loop(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        let before =
            Utc::now() + chrono::Duration::from_std(shared.ctx.opts.prefetch).unwrap_or_default();
        match shared
            .ctx
            .client
            .get_scheduled_flow_runs(
                &shared.ctx.opts.pool,
                &shared.ctx.opts.queues,
                before,
                Some(PAGE),
            )
            .await
        {
            Ok(runs) => {
                failures = 0;
                if let Ok(mut t) = shared.sched.last_poll_ok.lock() {
                    *t = Instant::now();
                }
                let full = runs.len() >= PAGE as usize;
                for r in runs {
                    shared.start(r.flow_run, Claim::New);
                }
                // A full page means more runs are due: ask again as soon as the pipeline has
                // room, not a poll interval later.
                if full && wait_for_room(&shared).await {
                    continue;
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "polling for scheduled runs failed");
            }
        }
        // After errors wait longer (x2 per failure, up to 4x), as Prefect's worker does.
        let wait = jittered(shared.ctx.opts.poll_interval * 2u32.pow(failures.min(2)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.sched.poll_now.notified() => {}
        }
    }
}

/// Waits (up to a poll interval) until fewer runs wait for a submission slot than there are
/// slots, so the next page keeps the pipeline full. False when the worker is at its `--limit`
/// or stopping (then the regular poll interval applies).
async fn wait_for_room(shared: &Arc<Shared>) -> bool {
    let deadline = Instant::now() + shared.ctx.opts.poll_interval;
    loop {
        if shared.stopping() {
            return false;
        }
        let at_limit = shared
            .sched
            .permits
            .as_ref()
            .is_some_and(|p| p.available_permits() == 0);
        if at_limit {
            return false;
        }
        if shared.sched.waiting.load(Ordering::SeqCst) < SUBMIT_SLOTS {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Subscribes to Scheduled and Cancelling events of the pool; reconnects with backoff.
async fn event_loop(shared: Arc<Shared>, pool_id: Uuid) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut filter = EventFilter::live();
        filter.event_names = vec![
            "prefect.flow-run.Scheduled".into(),
            "prefect.flow-run.Cancelling".into(),
        ];
        filter.related_ids = vec![format!("prefect.work-pool.{pool_id}")];
        match shared
            .ctx
            .client
            .subscribe_events(&filter, false, Duration::from_secs(10))
            .await
        {
            Ok(mut stream) => {
                backoff = Duration::from_millis(500);
                // The stream may have missed events while down (or before it was first up):
                // poll once now, and look for CANCELLING runs once now rather than a reconcile
                // interval later (a cancel made while a worker was starting waited up to 36 s).
                shared.sched.poll_now.notify_one();
                shared.sched.reconcile_now.notify_one();
                loop {
                    match stream.next().await {
                        Ok(Some(ev)) => match event_action(&ev, pool_id) {
                            Some(EventAction::Poll) => shared.sched.poll_now.notify_one(),
                            Some(EventAction::Cancel(id)) => spawn_cancel(&shared, id),
                            None => {}
                        },
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "event stream dropped");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot subscribe to events; polling only"),
        }
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// What an event of the stream asks of this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventAction {
    /// A run was scheduled: poll now.
    Poll,
    /// A run moved to CANCELLING.
    Cancel(Uuid),
}

/// The action for one streamed event, `None` for events of other pools. The subscription asks
/// for this pool's events only (`related.id`), but Prefect 3.9.1's stream filters live events
/// with each filter's in-memory `includes`, and its `EventRelatedFilter` defines none (only
/// `build_where_clauses`, for queries: `prefect/server/events/filters.py`), so the stream
/// delivers every pool's Scheduled and Cancelling events: without this check, every worker on a
/// server polled for every run scheduled anywhere and read every cancelled run.
fn event_action(ev: &bootstrap_prefect::Event, pool_id: Uuid) -> Option<EventAction> {
    if !ev.is_related_to(&format!("prefect.work-pool.{pool_id}")) {
        return None;
    }
    match ev.event.as_str() {
        "prefect.flow-run.Scheduled" => Some(EventAction::Poll),
        "prefect.flow-run.Cancelling" => ev.flow_run_id().map(EventAction::Cancel),
        _ => None,
    }
}

/// A run moved to CANCELLING: signal its task at once, or start [`cancel_run`] beside the
/// caller, unless one for this run is under way.
fn spawn_cancel(shared: &Arc<Shared>, id: Uuid) {
    if shared.signal(id, Signal::Cancel) {
        return;
    }
    let Some(guard) = CancelGuard::take(shared, id) else {
        return;
    };
    tokio::spawn(async move {
        let Ok(_slot) = guard.0.sched.cancel_slots.clone().acquire_owned().await else {
            return;
        };
        cancel_run(&guard.0, id).await;
    });
}

/// Marks a run's cancel as under way until dropped (the task ended or panicked).
struct CancelGuard(Arc<Shared>, Uuid);

impl CancelGuard {
    /// The mark for `id`, or `None` when a cancel of it is already under way.
    fn take(shared: &Arc<Shared>, id: Uuid) -> Option<Self> {
        let mut set = shared.sched.cancelling.lock().ok()?;
        set.insert(id).then(|| CancelGuard(shared.clone(), id))
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut set) = self.0.sched.cancelling.lock() {
            set.remove(&self.1);
        }
    }
}

/// A run moved to CANCELLING with no task here (an earlier process ran it; [`spawn_cancel`]
/// signals a task of this process): cancel its execution directly. CANCELLED only once its execution is cancelled or none is found: a
/// failed lookup or cancel leaves the run CANCELLING for the next pass (events and the
/// reconcile loop call this again, every `reconcile_interval` ± 20 % at most).
async fn cancel_run(shared: &Arc<Shared>, id: Uuid) {
    let Ok(Some(run)) = shared.ctx.client.flow_run(id).await else {
        return;
    };
    if run.state_type() != StateType::Cancelling {
        return;
    }
    // Only runs of this worker's pool: another pool's job lives in another project or region,
    // where a lookup finds nothing, and "no job" would mark a run CANCELLED while its
    // execution runs on (regression: a worker of another pool on the same server did so).
    // prefect-gcp's worker likewise cancels only the runs its pool's filter returns.
    if run.work_pool_id != Some(shared.pool_id) {
        tracing::debug!(flow_run = %id, pool = ?run.work_pool_id, "a CANCELLING run of another pool; not ours to stop");
        return;
    }
    let recorded = run.infrastructure_pid.as_deref().filter(|p| !p.is_empty());
    // The job lives where the run's own configuration put it (a deployment may override region
    // or credentials), as prefect-gcp's `kill_infrastructure` uses the run's configuration.
    // Without a recorded pid the job may still exist: the submitting worker records the pid
    // while it starts the execution, and may die in between (a RUNNING run, no pid). The
    // configuration names the job, so look it up rather than trust a missing pid.
    let cfg = match submit::config_of_run(&shared.ctx, &run).await {
        Ok(cfg) => cfg,
        // No configuration can be built from it, so no job was ever made from it.
        Err(e) if recorded.is_none() && !submit::prefect_outage(&e) => {
            tracing::info!(flow_run = %id, error = %e, "no job configuration; nothing to stop");
            submit::propose(
                &shared.ctx.client,
                id,
                StateType::Cancelled,
                "Cancelled before it started.",
                true,
            )
            .await;
            return;
        }
        Err(e) => {
            tracing::warn!(flow_run = %id, error = %e, "cannot build the run's job configuration to cancel it; will retry");
            return;
        }
    };
    let jobs = match submit::jobs_for(&shared.ctx, &cfg).await {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!(flow_run = %id, error = %e, "cannot reach Cloud Run to cancel; will retry");
            return;
        }
    };
    let job = recorded.unwrap_or(&cfg.job_name);
    tracing::info!(flow_run = %id, job, recorded = recorded.is_some(), "cancelling a run this process did not start");
    let message = match stop_started_elsewhere(&jobs, recorded, &cfg.job_name, id).await {
        Ok(Stopped::Cancelled(execution)) => {
            tracing::info!(flow_run = %id, execution, "cancelled the execution");
            "Cancelled: the Cloud Run execution was cancelled by the worker."
        }
        Ok(Stopped::NoJob) if recorded.is_some() => {
            "Cancelled: its Cloud Run job no longer exists."
        }
        Ok(Stopped::NoExecution | Stopped::NoJob) => "Cancelled before it started.",
        Err(e) => {
            tracing::warn!(flow_run = %id, job, error = %e, "could not cancel the execution; will retry");
            return;
        }
    };
    submit::propose(&shared.ctx.client, id, StateType::Cancelled, message, true).await;
}

impl Ctx {
    /// What runs are carried out with (the loop and `worker --sweep` share it).
    fn new(
        client: PrefectClient,
        opts: WorkerOptions,
        worker_env: Vec<(String, SecretString)>,
        outbox: Outbox,
    ) -> Self {
        Ctx {
            client,
            opts,
            worker_env,
            outbox,
            ambient: OnceCell::new(),
            reads: Reads::default(),
            jobs: JobsCache::default(),
        }
    }
}

impl Scheduler {
    /// Nothing in flight; at most `limit` runs at once.
    fn new(limit: Option<usize>, stop_tx: watch::Sender<bool>) -> Self {
        Scheduler {
            in_flight: Mutex::new(HashMap::new()),
            finished: Mutex::new((HashSet::new(), VecDeque::new())),
            permits: limit.map(|n| Arc::new(Semaphore::new(n.max(1)))),
            submit_slots: Arc::new(Semaphore::new(SUBMIT_SLOTS)),
            waiting: AtomicUsize::new(0),
            last_poll_ok: Mutex::new(Instant::now()),
            poll_now: Notify::new(),
            reconcile_now: Notify::new(),
            cancelling: Mutex::new(HashSet::new()),
            cancel_slots: Arc::new(Semaphore::new(CANCEL_SLOTS)),
            stopping: stop_tx,
            dormant: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A [`Ctx`] for one-off work outside the loop (`worker --sweep`): nothing is scheduled, worker
/// log lines go nowhere.
pub(crate) fn detached(client: PrefectClient, opts: WorkerOptions) -> Arc<Ctx> {
    let outbox = Outbox {
        logs: mpsc::unbounded_channel().0,
        events: mpsc::unbounded_channel().0,
    };
    Arc::new(Ctx::new(client, opts, Vec::new(), outbox))
}

/// A jobs client from the pool's default credentials and region (startup cleanup of leftovers,
/// `worker --sweep`).
pub(crate) async fn pool_jobs(
    shared: &Ctx,
    kind: PoolKind,
    template: &serde_json::Value,
) -> anyhow::Result<RunJobs> {
    let props = template.pointer("/variables/properties");
    let region = props
        .and_then(|p| p.pointer("/region/default"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("us-central1")
        .to_string();
    // The default credentials may be a `$ref`: resolve it like a job configuration would be.
    let creds_value = props
        .and_then(|p| p.pointer("/credentials/default"))
        .cloned()
        .unwrap_or_default();
    let creds_value = super::refs::resolve(creds_value, &LookupById(shared))
        .await
        .map_err(|e| anyhow!(e))?;
    let creds: GcpCredentials =
        super::config::credentials_from(&creds_value).map_err(|e| anyhow!(e))?;
    let tokens: Arc<dyn TokenSource> = match &creds.service_account_info {
        Some(key) => Arc::new(bootstrap_gcp::ServiceAccountKeySource::from_json(key)?),
        None => shared.ambient_tokens().await?,
    };
    let project = creds
        .project
        .clone()
        .or_else(|| tokens.project_hint())
        .ok_or_else(|| anyhow!("no GCP project known for the pool"))?;
    let http = GcpHttp::new(
        shared.opts.endpoints.clone(),
        tokens,
        bootstrap_gcp::RetryPolicy::default(),
    )?;
    Ok(RunJobs::new(http, kind, &project, &region)?)
}

/// Only `$ref`s: a pool's default credentials name their block by id.
struct LookupById<'a>(&'a Ctx);

impl Lookup for LookupById<'_> {
    async fn block_by_id(&self, id: &str) -> Result<Option<serde_json::Value>, String> {
        super::submit::PrefectLookup(self.0).block_by_id(id).await
    }
    async fn block_by_name(&self, _: &str, _: &str) -> Result<Option<serde_json::Value>, String> {
        Ok(None)
    }
    async fn variable(&self, _: &str) -> Result<Option<serde_json::Value>, String> {
        Ok(None)
    }
}

/// Slow pass: CANCELLING runs of the pool (in case an event was missed) and PENDING runs this
/// worker claimed in an earlier life.
async fn reconcile_loop(shared: Arc<Shared>) {
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(jittered(shared.ctx.opts.reconcile_interval)) => {}
                _ = shared.sched.reconcile_now.notified() => {}
            }
        }
        first = false;
        let query = FlowRunQuery {
            states: vec![StateType::Cancelling, StateType::Pending],
            work_pool_names: vec![shared.ctx.opts.pool.clone()],
            limit: Some(200),
            ..Default::default()
        };
        let Ok(runs) = shared.ctx.client.filter_flow_runs(&query).await else {
            continue;
        };
        let mine = ClaimMarker::for_worker(&shared.ctx.opts.name);
        for run in runs {
            match run.state_type() {
                StateType::Cancelling => spawn_cancel(&shared, run.id),
                StateType::Pending => {
                    let state = run.state.as_ref();
                    let in_flight = shared
                        .sched
                        .in_flight
                        .lock()
                        .map(|m| m.contains_key(&run.id))
                        .unwrap_or(true);
                    if !in_flight
                        && !shared.finished_here(run.id)
                        && mine.marks(state.and_then(|s| s.message.as_deref()))
                        && submit::adoptable(&shared.ctx.client, run.id, state.and_then(|s| s.id))
                            .await
                    {
                        let since = state.and_then(|s| s.timestamp).unwrap_or_else(Utc::now);
                        shared.start(run, Claim::Adopted(since));
                    }
                }
                _ => {}
            }
        }
    }
}

/// Deletes finished jobs of this pool that a crashed worker left behind (only jobs marked for
/// cleanup: `keep_job` ones are not).
async fn cleanup_leftovers(shared: Arc<Shared>, kind: PoolKind, template: serde_json::Value) {
    let jobs = match pool_jobs(&shared.ctx, kind, &template).await {
        Ok(j) => j,
        Err(e) => {
            tracing::debug!(error = %e, "no cleanup of leftover jobs");
            return;
        }
    };
    let pool_label = sanitize_labels(&serde_json::Map::from_iter([(
        "prefect.io/work-pool-name".to_string(),
        serde_json::Value::String(shared.ctx.opts.pool.clone()),
    )]));
    let Some(value) = pool_label
        .get(POOL_LABEL)
        .and_then(serde_json::Value::as_str)
    else {
        return;
    };
    let Ok(list) = jobs.jobs_labelled(POOL_LABEL, value).await else {
        return;
    };
    tokio::spawn(job_limit_watch(jobs.clone()));
    for job in list {
        if job.labels.get(CLEANUP_LABEL).map(String::as_str) != Some("true") {
            continue;
        }
        let finished = match &job.latest_execution {
            Some((exec, _)) => {
                matches!(jobs.execution(exec).await, Ok(Some(e)) if e.done)
                    || matches!(jobs.execution(exec).await, Ok(None))
            }
            None => false,
        };
        if finished {
            tracing::info!(job = job.name, "deleting a finished job left behind");
            if let Err(e) = jobs.delete(&job.name).await {
                tracing::warn!(job = job.name, error = %e, "could not delete");
            }
        }
    }
}

/// How often the worker counts the jobs of its pool's default region.
const JOB_LIMIT_CHECK: Duration = Duration::from_secs(15 * 60);

/// Warns once (per process) when the pool's default region nears Cloud Run's job limit
/// ([`super::sweep::near_limit_warning`]); counts the region's jobs at start and every
/// [`JOB_LIMIT_CHECK`]. A failed count is tried again at the next check.
async fn job_limit_watch(jobs: RunJobs) {
    loop {
        if let Ok(all) = jobs.all_jobs().await
            && let Some(warning) = super::sweep::near_limit_warning(jobs.region(), all.len())
        {
            tracing::warn!("{warning}");
            return;
        }
        tokio::time::sleep(jittered(JOB_LIMIT_CHECK)).await;
    }
}

/// Ships worker log lines in batches (see [`batches`]).
async fn ship_logs(client: PrefectClient, rx: mpsc::UnboundedReceiver<LogCreate>) {
    batches(rx, "log lines", |batch| {
        let client = client.clone();
        async move { client.create_logs(&batch).await }
    })
    .await
}

/// Ships the per-run events (`submitted-flow-run`, `executed-flow-run`) in batches, one
/// `POST /events` each (see [`batches`]): an event sent alone cost the server 5.8-11.4 ms of
/// CPU, one in a batch 3.9-4.4 ms (BENCHMARKS.md, the per-call table), about 14 ms a run, on a
/// server whose one core bounds a burst's runs per second. An event is at most 250 ms late, as a
/// log line is; Prefect orders a run's events by their `follows` link, not their arrival.
async fn ship_events(client: PrefectClient, rx: mpsc::UnboundedReceiver<serde_json::Value>) {
    batches(rx, "worker events", |batch| {
        let client = client.clone();
        async move { client.emit_events(&batch).await }
    })
    .await
}

/// Hands `send` what `rx` brings, in batches: a batch starts with the next item and takes
/// whatever else arrives within 250 ms of it, up to 200 (Prefect's own log batches are sent on a
/// short interval likewise). A batch that cannot be sent is logged (`what` it held) and dropped:
/// these are bookkeeping, never a run's outcome.
async fn batches<T, F, Fut, E>(mut rx: mpsc::UnboundedReceiver<T>, what: &str, mut send: F)
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < BATCH_MAX {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(item)) => batch.push(item),
                _ => break,
            }
        }
        let n = batch.len();
        if let Err(e) = send(batch).await {
            tracing::debug!(error = %e, "could not ship {n} {what}");
        }
    }
}

/// How late a log line or event may be shipped, and how many go in one request.
const BATCH_WINDOW: Duration = Duration::from_millis(250);
const BATCH_MAX: usize = 200;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, run: Uuid, pool: Uuid) -> bootstrap_prefect::Event {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::new_v4(),
            "occurred": "2026-12-06T12:00:00Z",
            "event": name,
            "resource": {"prefect.resource.id": format!("prefect.flow-run.{run}")},
            "related": [
                {"prefect.resource.id": format!("prefect.flow.{}", Uuid::nil()), "prefect.resource.role": "flow"},
                {"prefect.resource.id": format!("prefect.work-pool.{pool}"), "prefect.resource.role": "work-pool"},
            ],
        }))
        .expect("an event")
    }

    #[test]
    fn events_of_this_pool_poll_or_cancel() {
        let (run, pool) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(
            event_action(&event("prefect.flow-run.Scheduled", run, pool), pool),
            Some(EventAction::Poll)
        );
        assert_eq!(
            event_action(&event("prefect.flow-run.Cancelling", run, pool), pool),
            Some(EventAction::Cancel(run))
        );
        assert_eq!(
            event_action(&event("prefect.flow-run.Running", run, pool), pool),
            None
        );
    }

    /// Regression: Prefect 3.9.1's stream delivers other pools' events despite the `related`
    /// filter; a worker acted on them (a GET per foreign Cancelling run, a poll per foreign
    /// Scheduled run).
    #[test]
    fn events_of_another_pool_are_ignored() {
        let (run, ours, theirs) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        for name in ["prefect.flow-run.Scheduled", "prefect.flow-run.Cancelling"] {
            assert_eq!(
                event_action(&event(name, run, theirs), ours),
                None,
                "{name}"
            );
        }
    }

    /// A worker over a fake Prefect API whose run reads wait until `gate` opens (counted in
    /// `reads`), and answer a RUNNING run (nothing for the cancel to do after its read).
    async fn slow_reads_worker(gate: Arc<Notify>, reads: Arc<AtomicUsize>) -> Arc<Shared> {
        let app = axum::Router::new().route(
            "/api/flow_runs/{id}",
            axum::routing::get(move |axum::extract::Path(id): axum::extract::Path<Uuid>| {
                let (gate, reads) = (gate.clone(), reads.clone());
                async move {
                    reads.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    axum::Json(serde_json::json!({
                        "id": id, "name": "r", "flow_id": Uuid::nil(),
                        "state": {"type": "RUNNING", "name": "Running"}
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = PrefectClient::new(bootstrap_prefect::PrefectConfig {
            api_url: url.parse().unwrap(),
            url_source: bootstrap_prefect::Source::Explicit,
            api_key: None,
            auth_string: None,
            retries: Default::default(),
        })
        .unwrap();
        let opts = WorkerOptions::new("pool", "w", Endpoints::google());
        Arc::new(Shared {
            ctx: detached(client, opts),
            sched: Scheduler::new(None, watch::channel(false).0),
            pool_id: Uuid::new_v4(),
        })
    }

    /// Regression: the event loop awaited each cancel of a run started elsewhere (Prefect and
    /// Cloud Run calls, with their retries), so every event behind it waited, and a reconcile
    /// pass cancelled its runs one at a time. Now a cancel runs beside its caller, at most one
    /// per run at a time.
    #[tokio::test]
    async fn cancels_run_beside_the_caller_once_per_run() {
        let (gate, reads) = (Arc::new(Notify::new()), Arc::new(AtomicUsize::new(0)));
        let shared = slow_reads_worker(gate.clone(), reads.clone()).await;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // Each call returns while its run's read hangs; the second for `a` starts nothing.
        for id in [a, a, b] {
            tokio::time::timeout(Duration::from_secs(1), async { spawn_cancel(&shared, id) })
                .await
                .expect("spawn_cancel returns at once");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while reads.load(Ordering::SeqCst) < 2 {
            assert!(
                Instant::now() < deadline,
                "the two cancels never read their runs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2, "one read per run");
        assert_eq!(shared.sched.cancelling.lock().unwrap().len(), 2);

        // Once they end, the marks are gone and a later cancel of `a` runs again.
        while !shared.sched.cancelling.lock().unwrap().is_empty() {
            assert!(Instant::now() < deadline, "the cancels never ended");
            gate.notify_waiters();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        spawn_cancel(&shared, a);
        while reads.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "a later cancel of the same run never ran"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate.notify_waiters();
    }

    /// What arrives within 250 ms of a batch's first item ships with it, at most 200 at a time;
    /// what comes later starts the next batch.
    #[tokio::test(start_paused = true)]
    async fn batches_take_what_arrives_within_the_window_up_to_the_cap() {
        let (tx, rx) = mpsc::unbounded_channel();
        let sent = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let seen = sent.clone();
        let shipper = tokio::spawn(batches(rx, "numbers", move |batch| {
            seen.lock().unwrap().push(batch);
            async { Ok::<(), std::convert::Infallible>(()) }
        }));
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.send(3).unwrap(); // within the first batch's window
        tokio::time::sleep(Duration::from_millis(400)).await;
        tx.send(4).unwrap(); // after it: a batch of its own
        tokio::time::sleep(Duration::from_millis(400)).await;
        for i in 0..450 {
            tx.send(100 + i).unwrap();
        }
        drop(tx);
        shipper.await.unwrap();
        let sent = sent.lock().unwrap();
        let sizes: Vec<usize> = sent.iter().map(Vec::len).collect();
        assert_eq!(sizes, [4, 1, 200, 200, 50]);
        assert_eq!(sent[0], [0, 1, 2, 3]);
        assert_eq!(sent[1], [4]);
    }
}
