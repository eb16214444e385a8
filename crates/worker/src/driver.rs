//! The thin driver of one run: read what [`decide`] needs, decide, carry the decision out, and
//! hand every failed step to [`error_policy`]. Every wait is a [`Decision::Watch`] (bounded
//! backoff, cut short by a signal); every read and write goes through [`RunEnv`] and
//! [`RunInfra`], so tests drive it with fakes under a paused clock.

use std::future::Future;

use bootstrap_gcp::GcpError;
use bootstrap_gcp::operations::Operation;
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

use super::cloudrun::{Created, ExecutionView, JobView, RunJobs};
use super::reconcile::{
    Decision, End, Error, JobStep, Requeue, RunView, Signal, decide, error_policy,
};

/// The Cloud Run calls the driver makes for one run's job ([`RunJobs`] in production).
pub(crate) trait RunInfra: Sync {
    fn create(
        &self,
        job: &str,
        body: &Value,
    ) -> impl Future<Output = Result<Created, GcpError>> + Send;
    fn create_outcome(
        &self,
        op: &Operation,
    ) -> impl Future<Output = Result<Option<Result<(), GcpError>>, GcpError>> + Send;
    fn job(&self, job: &str) -> impl Future<Output = Result<Option<JobView>, GcpError>> + Send;
    fn run(&self, job: &str) -> impl Future<Output = Result<String, GcpError>> + Send;
    fn execution(
        &self,
        execution: &str,
    ) -> impl Future<Output = Result<Option<ExecutionView>, GcpError>> + Send;
    fn cancel(&self, execution: &str) -> impl Future<Output = Result<(), GcpError>> + Send;
}

impl RunInfra for RunJobs {
    async fn create(&self, job: &str, body: &Value) -> Result<Created, GcpError> {
        RunJobs::create(self, job, body).await
    }
    async fn create_outcome(
        &self,
        op: &Operation,
    ) -> Result<Option<Result<(), GcpError>>, GcpError> {
        RunJobs::create_outcome(self, op).await
    }
    async fn job(&self, job: &str) -> Result<Option<JobView>, GcpError> {
        RunJobs::job(self, job).await
    }
    async fn run(&self, job: &str) -> Result<String, GcpError> {
        RunJobs::run(self, job).await
    }
    async fn execution(&self, execution: &str) -> Result<Option<ExecutionView>, GcpError> {
        RunJobs::execution(self, execution).await
    }
    async fn cancel(&self, execution: &str) -> Result<(), GcpError> {
        RunJobs::cancel(self, execution).await
    }
}

/// A run's job as configured: its name and the body to create.
pub(crate) trait JobSpec {
    fn job_name(&self) -> &str;
    fn body(&self) -> &Value;
}

impl JobSpec for super::config::JobConfig {
    fn job_name(&self) -> &str {
        &self.job_name
    }
    fn body(&self) -> &Value {
        &self.body
    }
}

/// The Prefect side of one run, and where its Cloud Run client comes from.
pub(crate) trait RunEnv: Sync {
    type Infra: RunInfra + Send;
    type Config: JobSpec + Send;
    /// Claims the run (PENDING under the claim marker); when, or `None` when it is not ours.
    fn claim(&self) -> impl Future<Output = Option<DateTime<Utc>>> + Send;
    /// After a claim: the "submitting" log line and the submitted event.
    fn submitting(&self);
    /// The job configuration and the Cloud Run client of its project, region and credentials.
    fn configure(&self) -> impl Future<Output = Result<(Self::Config, Self::Infra), Error>> + Send;
    /// Records the job as the run's `infrastructure_pid` (failures are logged, not fatal).
    fn record_pid(&self, job: &str) -> impl Future<Output = ()> + Send;
    /// A worker log line on the run (20 info, 40 error).
    fn log(&self, level: i64, message: String);
}

/// How a drive ended.
pub(crate) struct Driven<I, C> {
    /// `None`: detached, or never claimed.
    pub(crate) end: Option<End>,
    /// The job this task created or adopted, with its client.
    pub(crate) created: Option<(I, C)>,
}

/// A GCP error with its causes, as the run's message shows it.
fn chain(e: GcpError) -> String {
    let e = anyhow::Error::new(e);
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// Waits `d`, or less when a signal arrives.
async fn pause(d: std::time::Duration, rx: &mut watch::Receiver<Signal>) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        changed = rx.changed() => {
            // The runtime dropped the sender: nobody will signal; just wait.
            if changed.is_err() {
                tokio::time::sleep(d).await;
            }
        }
    }
}

/// Drives `run` to its end. `slot` (a submission slot) is released once an execution runs.
pub(crate) async fn drive<E: RunEnv>(
    env: &E,
    mut run: RunView,
    cancel: &mut watch::Receiver<Signal>,
    mut slot: Option<OwnedSemaphorePermit>,
) -> Driven<E::Infra, E::Config> {
    let mut created: Option<(E::Infra, E::Config)> = None;
    let mut create_op: Option<Box<Operation>> = None;
    let mut next: Option<Decision> = None;
    loop {
        let decision = match next.take() {
            Some(d) => d,
            None => {
                run.signal = *cancel.borrow();
                match observe(&mut run, created.as_ref().map(|c| &c.0), &mut create_op).await {
                    Ok((job, exec)) => decide(&run, job.as_ref(), exec.as_ref(), Instant::now()),
                    Err(e) => requeue(error_policy(&e, &run, Instant::now())),
                }
            }
        };
        let step: Result<(), Error> = match decision {
            Decision::Claim => match env.claim().await {
                Some(at) => {
                    run.claimed_at = Some(at);
                    env.submitting();
                    Ok(())
                }
                None => {
                    return Driven { end: None, created };
                }
            },
            Decision::CreateJob => match create(env, &mut run, &mut create_op).await {
                Ok(c) => {
                    created = Some(c);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Decision::StartExecution => match created.as_ref() {
                Some((infra, _)) => start(env, &mut run, infra).await.map(|()| {
                    // Submitted: watching costs the Prefect server nothing; let the next run in.
                    slot.take();
                }),
                // decide() starts only a job this task created; never reached.
                None => Err(Error::Submit("no job to start".into())),
            },
            Decision::AdoptExecution(name) => {
                env.log(
                    20,
                    format!("Adopting execution {name} started by an earlier attempt"),
                );
                env.record_pid(&run.job_name).await;
                started(env, &mut run, name);
                // Submitted: watching costs the Prefect server nothing; let the next run in.
                slot.take();
                Ok(())
            }
            Decision::Watch { requeue_after } => {
                run.waits = run.waits.saturating_add(1);
                pause(requeue_after, cancel).await;
                Ok(())
            }
            Decision::CancelExecution(name) => {
                let cancelled = match created.as_ref() {
                    Some((infra, _)) => infra.cancel(&name).await.map_err(|e| e.to_string()),
                    // An execution runs only in a job this task created; never reached.
                    None => Err("no job".to_string()),
                };
                match cancelled {
                    Ok(()) => {
                        next = Some(Decision::Finish(End::Cancelled));
                        Ok(())
                    }
                    Err(e) => Err(Error::Cancel(format!(
                        "Could not cancel execution {name}: {e}"
                    ))),
                }
            }
            Decision::Finish(end) => {
                return Driven {
                    end: Some(end),
                    created,
                };
            }
            Decision::Detach => {
                return Driven { end: None, created };
            }
        };
        if let Err(e) = step {
            let policy = error_policy(&e, &run, Instant::now());
            if policy == Requeue::Detach {
                tracing::warn!(flow_run = %run.id, error = ?e, "the Prefect API is still unavailable; leaving the run PENDING for a later pass");
            }
            next = Some(requeue(policy));
        }
    }
}

/// The error policy's answer as the next decision.
fn requeue(r: Requeue) -> Decision {
    match r {
        Requeue::After(requeue_after) => Decision::Watch { requeue_after },
        Requeue::Finish(end) => Decision::Finish(end),
        Requeue::Detach => Decision::Detach,
    }
}

/// Reads what the next decision depends on: the execution while one runs, else the job while
/// it is being set up (and the create operation while the job is not ready). Nothing is read
/// while a signal is pending: the decision follows from the signal alone.
async fn observe<I: RunInfra>(
    run: &mut RunView,
    infra: Option<&I>,
    create_op: &mut Option<Box<Operation>>,
) -> Result<(Option<JobView>, Option<ExecutionView>), Error> {
    let Some(infra) = infra else {
        return Ok((None, None));
    };
    if run.signal != Signal::None || run.claimed_at.is_none() {
        return Ok((None, None));
    }
    if let Some(execution) = &run.execution {
        return match infra.execution(execution).await {
            Ok(e) => {
                run.failing_since = None;
                Ok((None, e))
            }
            Err(e) => {
                run.failing_since.get_or_insert_with(Instant::now);
                tracing::warn!(job = run.job_name, error = %e, "cannot read the execution; still watching");
                Err(Error::ReadExecution(e.to_string()))
            }
        };
    }
    if !matches!(run.job, JobStep::Created { .. }) {
        return Ok((None, None));
    }
    let view = infra
        .job(&run.job_name)
        .await
        .map_err(|e| Error::Submit(chain(e)))?;
    let ready = matches!(&view, Some(v) if v.readiness == super::cloudrun::Readiness::Ready);
    // v2: Google reports a failure found after accepting the create in the operation's
    // `error` (the job may then never appear); it is read while the job is not ready, so the
    // run fails with Google's reason rather than "not ready within N s" (wire audit row 9).
    if !ready && let Some(op) = create_op.as_deref() {
        match infra.create_outcome(op).await {
            Ok(Some(Err(e))) => run.create_error = Some(e.to_string()),
            Ok(Some(Ok(()))) => *create_op = None,
            // Still running, or unreadable for now: the job's own state decides.
            Ok(None) | Err(_) => {}
        }
    }
    Ok((view, None))
}

/// Builds the configuration and creates the job (or finds it from an earlier attempt).
async fn create<E: RunEnv>(
    env: &E,
    run: &mut RunView,
    create_op: &mut Option<Box<Operation>>,
) -> Result<(E::Infra, E::Config), Error> {
    let (cfg, infra) = match env.configure().await {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, Error::Configure { outage: true, .. }) {
                run.outage_since.get_or_insert_with(Instant::now);
            }
            return Err(e);
        }
    };
    run.outage_since = None;
    run.waits = 0;
    let job = cfg.job_name().to_string();
    let answer = infra
        .create(&job, cfg.body())
        .await
        .map_err(|e| Error::Submit(chain(e)))?;
    let fresh = match answer {
        Created::New(op) => {
            *create_op = op;
            true
        }
        Created::Existing => {
            if let Some(other) = owned_by_other_run(&infra, &job, run.id).await {
                // A verbatim v1 name: prefect-gcp's create fails here too (409); never adopt it.
                return Err(Error::Submit(format!(
                    "Cloud Run job {job} already exists and belongs to flow run {other}; \
                     a fixed `name` job variable lets only one run at a time use it"
                )));
            }
            env.log(
                20,
                format!("Job {job} already exists (an earlier attempt); adopting it"),
            );
            false
        }
    };
    run.job_name = job;
    run.job = JobStep::Created {
        fresh,
        ready_by: Instant::now() + run.ready_deadline,
    };
    Ok((infra, cfg))
}

/// What cancelling a run that another process started found in Cloud Run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// No such job (or a job of another run): nothing of this run's is running.
    NoJob,
    /// The job exists but shows no execution.
    NoExecution,
    /// This execution was cancelled (or had already ended).
    Cancelled(String),
}

/// Cancels the latest execution of a run that another process started. The job is the run's
/// `infrastructure_pid` when recorded, else `derived`, the name the run's own configuration
/// gives it: the submitting worker starts the execution and records the pid at the same time
/// (see [`start`]), so a worker that dies right then leaves a RUNNING run with a job and an
/// execution but no pid. A derived name is only trusted for a job made for `run` (a fixed v1
/// name may belong to another run). Errors are the caller's to retry on its next pass.
pub(crate) async fn stop_started_elsewhere<I: RunInfra>(
    infra: &I,
    recorded: Option<&str>,
    derived: &str,
    run: uuid::Uuid,
) -> Result<Stopped, GcpError> {
    let job = recorded.filter(|p| !p.is_empty()).unwrap_or(derived);
    let Some(view) = infra.job(job).await? else {
        return Ok(Stopped::NoJob);
    };
    let owner = view.labels.get("prefect-io-flow-run-id");
    if job == derived && owner.is_some_and(|o| *o != run.to_string()) {
        return Ok(Stopped::NoJob);
    }
    match view.latest_execution {
        None => Ok(Stopped::NoExecution),
        Some((execution, _)) => {
            infra.cancel(&execution).await?;
            Ok(Stopped::Cancelled(execution))
        }
    }
}

/// The other flow run an existing job was made for (its `prefect-io-flow-run-id` label), if
/// it is not `id`'s. Job names derived from the run id never meet this; a fixed v1 name can.
async fn owned_by_other_run<I: RunInfra>(infra: &I, job: &str, id: uuid::Uuid) -> Option<String> {
    let view = infra.job(job).await.ok().flatten()?;
    let owner = view.labels.get("prefect-io-flow-run-id")?.as_str();
    (owner != id.to_string()).then(|| owner.to_string())
}

/// Starts an execution and, at the same time, records the job as the run's
/// `infrastructure_pid`: the two calls go to different servers, so the submission takes one
/// round trip less (the job exists already, so the pid is right whether or not the run starts).
async fn start<E: RunEnv>(env: &E, run: &mut RunView, infra: &E::Infra) -> Result<(), Error> {
    let job = run.job_name.clone();
    let (answer, ()) = tokio::join!(infra.run(&job), env.record_pid(&job));
    let name = match answer {
        Ok(name) => name,
        Err(e) => {
            // The run may have started even though the answer was lost: look before failing.
            let again = infra
                .job(&job)
                .await
                .ok()
                .flatten()
                .and_then(|v| v.latest_execution);
            let claimed_at = run.claimed_at.unwrap_or_else(Utc::now);
            let skew = chrono::Duration::from_std(super::reconcile::CLAIM_SKEW).unwrap_or_default();
            match again {
                Some((name, Some(t))) if t >= claimed_at - skew => name,
                _ => return Err(Error::Submit(chain(e))),
            }
        }
    };
    started(env, run, name);
    Ok(())
}

fn started<E: RunEnv>(env: &E, run: &mut RunView, execution: String) {
    env.log(
        20,
        format!(
            "Started Cloud Run job {}, execution {execution}",
            run.job_name
        ),
    );
    run.execution = Some(execution);
    run.waits = 0;
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::Semaphore;
    use uuid::Uuid;

    use super::*;
    use crate::cloudrun::Readiness;
    use crate::reconcile::Done;

    /// What the fake Cloud Run answers, in order (the last answer repeats), and what it was
    /// asked.
    #[derive(Default)]
    struct Script {
        existing: bool,
        owner: Option<String>,
        jobs: VecDeque<Option<Readiness>>,
        executions: VecDeque<Result<Option<(bool, bool)>, ()>>,
        run_fails: bool,
        cancel_fails: bool,
        /// The latest execution a job read shows (name, seconds after the claim).
        latest: Option<(String, i64)>,
        claimed_at: Option<DateTime<Utc>>,
        calls: Vec<String>,
        /// Free submission slots seen at the first execution read.
        slots_at_watch: Option<usize>,
        slots: Option<Arc<Semaphore>>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<Script>>);

    impl Fake {
        fn with(&self, f: impl FnOnce(&mut Script)) {
            f(&mut self.0.lock().expect("script"));
        }
        fn calls(&self) -> Vec<String> {
            self.0.lock().expect("script").calls.clone()
        }
        fn count(&self, call: &str) -> usize {
            self.calls().iter().filter(|c| c.as_str() == call).count()
        }
        fn call(&self, c: impl Into<String>) {
            self.with(|s| s.calls.push(c.into()));
        }
    }

    fn next<T: Clone>(q: &mut VecDeque<T>) -> Option<T> {
        if q.len() > 1 {
            q.pop_front()
        } else {
            q.front().cloned()
        }
    }

    fn gcp_error() -> GcpError {
        GcpError::Config("injected".into())
    }

    impl RunInfra for Fake {
        async fn create(&self, job: &str, _: &Value) -> Result<Created, GcpError> {
            self.call(format!("create {job}"));
            let existing = self.0.lock().expect("script").existing;
            Ok(if existing {
                Created::Existing
            } else {
                Created::New(None)
            })
        }
        async fn create_outcome(
            &self,
            _: &Operation,
        ) -> Result<Option<Result<(), GcpError>>, GcpError> {
            Ok(None)
        }
        async fn job(&self, job: &str) -> Result<Option<JobView>, GcpError> {
            self.call("job");
            let mut s = self.0.lock().expect("script");
            let readiness = next(&mut s.jobs).flatten();
            let latest = s.latest.clone().map(|(name, after)| {
                let at = s.claimed_at.unwrap_or_else(Utc::now) + chrono::Duration::seconds(after);
                (name, Some(at))
            });
            let labels = s
                .owner
                .iter()
                .map(|o| ("prefect-io-flow-run-id".to_string(), o.clone()))
                .collect::<BTreeMap<_, _>>();
            Ok(readiness.map(|readiness| JobView {
                name: job.to_string(),
                readiness,
                latest_execution: latest,
                labels,
            }))
        }
        async fn run(&self, _: &str) -> Result<String, GcpError> {
            self.call("run");
            let mut s = self.0.lock().expect("script");
            if s.run_fails {
                // The answer is lost, but the execution did start.
                s.latest = Some(("exec-lost-answer".into(), 1));
                Err(gcp_error())
            } else {
                Ok("exec-1".into())
            }
        }
        async fn execution(&self, name: &str) -> Result<Option<ExecutionView>, GcpError> {
            self.call(format!("execution {name}"));
            let mut s = self.0.lock().expect("script");
            if s.slots_at_watch.is_none() {
                s.slots_at_watch = s.slots.as_ref().map(|p| p.available_permits());
            }
            match next(&mut s.executions).unwrap_or(Ok(None)) {
                Ok(e) => Ok(e.map(|(done, succeeded)| ExecutionView {
                    done,
                    succeeded,
                    message: None,
                    log_uri: None,
                    completed_at: None,
                })),
                Err(()) => Err(gcp_error()),
            }
        }
        async fn cancel(&self, name: &str) -> Result<(), GcpError> {
            self.call(format!("cancel {name}"));
            if self.0.lock().expect("script").cancel_fails {
                return Err(gcp_error());
            }
            Ok(())
        }
    }

    struct Cfg(Value);

    impl JobSpec for Cfg {
        fn job_name(&self) -> &str {
            "job-1"
        }
        fn body(&self) -> &Value {
            &self.0
        }
    }

    struct Env {
        fake: Fake,
        /// Configuration answers in order (the last repeats): `None` builds, `Some` fails.
        configure: Mutex<VecDeque<Option<Error>>>,
        logs: Mutex<Vec<String>>,
    }

    fn outage() -> Option<Error> {
        Some(Error::Configure {
            message: "connection refused".into(),
            outage: true,
        })
    }

    impl Env {
        fn new(fake: &Fake) -> Self {
            Self {
                fake: fake.clone(),
                configure: Mutex::new(VecDeque::from([None])),
                logs: Mutex::new(Vec::new()),
            }
        }
    }

    impl RunEnv for Env {
        type Infra = Fake;
        type Config = Cfg;
        async fn claim(&self) -> Option<DateTime<Utc>> {
            self.fake.call("claim");
            let at = Utc::now();
            self.fake.with(|s| s.claimed_at = Some(at));
            Some(at)
        }
        fn submitting(&self) {}
        async fn configure(&self) -> Result<(Cfg, Fake), Error> {
            self.fake.call("configure");
            let answer = {
                let mut q = self.configure.lock().expect("configure");
                if q.len() > 1 {
                    q.pop_front().flatten()
                } else {
                    match q.front() {
                        Some(Some(Error::Configure { message, outage })) => {
                            Some(Error::Configure {
                                message: message.clone(),
                                outage: *outage,
                            })
                        }
                        _ => None,
                    }
                }
            };
            match answer {
                Some(e) => Err(e),
                None => Ok((Cfg(Value::Null), self.fake.clone())),
            }
        }
        async fn record_pid(&self, job: &str) {
            self.fake.call(format!("record_pid {job}"));
        }
        fn log(&self, _: i64, message: String) {
            self.logs.lock().expect("logs").push(message);
        }
    }

    fn view() -> RunView {
        RunView::new(
            Uuid::nil(),
            None,
            Duration::from_secs(600),
            Duration::from_secs(30 * 60),
        )
    }

    async fn drive_env(env: &Env, rx: &mut watch::Receiver<Signal>) -> Option<End> {
        drive(env, view(), rx, None).await.end
    }

    /// The whole life of a run against a fake Cloud Run, under a paused clock: each wait is
    /// the backoff decide() chose (250 + 500 ms for readiness, 500 + 750 ms while running),
    /// and the submission slot is free again before the watch begins.
    #[tokio::test(start_paused = true)]
    async fn a_run_goes_from_claim_to_a_finished_execution_on_the_backoff_schedule() {
        let fake = Fake::default();
        let slots = Arc::new(Semaphore::new(1));
        fake.with(|s| {
            s.jobs = VecDeque::from([None, Some(Readiness::Pending), Some(Readiness::Ready)]);
            s.executions = VecDeque::from([
                Ok(Some((false, false))),
                Ok(Some((false, false))),
                Ok(Some((true, true))),
            ]);
            s.slots = Some(slots.clone());
        });
        let env = Env::new(&fake);
        let (_tx, mut rx) = watch::channel(Signal::None);
        let slot = slots.clone().try_acquire_owned().expect("slot");
        let started = Instant::now();
        let driven = drive(&env, view(), &mut rx, Some(slot)).await;
        assert_eq!(started.elapsed(), Duration::from_millis(2000));
        assert_eq!(
            driven.end,
            Some(End::Finished(Done {
                execution: "exec-1".into(),
                succeeded: Some(true),
                message: None,
                log_uri: None,
            }))
        );
        assert!(driven.created.is_some());
        assert_eq!(
            fake.calls(),
            [
                "claim",
                "configure",
                "create job-1",
                "job",
                "job",
                "job",
                "run",
                "record_pid job-1",
                "execution exec-1",
                "execution exec-1",
                "execution exec-1",
            ]
        );
        assert_eq!(fake.0.lock().expect("script").slots_at_watch, Some(1));
        let logs = env.logs.lock().expect("logs").clone();
        assert_eq!(logs, ["Started Cloud Run job job-1, execution exec-1"]);
    }

    /// Issue #17 item 3, now with the default 30-minute window on a paused clock: when every
    /// read of the execution fails, the watch keeps going for the whole window (at most one
    /// read per 10 s) and ends as lost contact, never as a failure that CRASHES the run.
    #[tokio::test(start_paused = true)]
    async fn prolonged_api_errors_end_as_lost_contact_after_the_window() {
        let fake = Fake::default();
        fake.with(|s| {
            s.jobs = VecDeque::from([Some(Readiness::Ready)]);
            s.executions = VecDeque::from([Err(())]);
        });
        let env = Env::new(&fake);
        let (_tx, mut rx) = watch::channel(Signal::None);
        let started = Instant::now();
        let end = drive_env(&env, &mut rx).await;
        let waited = started.elapsed();
        match end {
            Some(End::LostContact(msg)) => {
                assert!(
                    msg.starts_with("Lost connection to flow run infrastructure"),
                    "{msg}"
                );
                assert!(msg.contains("the job is kept"), "{msg}");
            }
            other => panic!("not a lost contact: {other:?}"),
        }
        let window = Duration::from_secs(30 * 60);
        assert!(waited >= window, "gave up after {waited:?}");
        assert!(waited < window + Duration::from_secs(11), "{waited:?}");
        let reads = fake.count("execution exec-1");
        assert!((180..=200).contains(&reads), "{reads} reads");
    }

    /// A cancel signal while the execution runs cancels it, and the run ends cancelled.
    #[tokio::test(start_paused = true)]
    async fn a_cancel_signal_while_watching_cancels_the_execution() {
        let fake = Fake::default();
        fake.with(|s| {
            s.jobs = VecDeque::from([Some(Readiness::Ready)]);
            s.executions = VecDeque::from([Ok(Some((false, false)))]);
        });
        let env = Env::new(&fake);
        let (tx, mut rx) = watch::channel(Signal::None);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let _ = tx.send(Signal::Cancel);
            // Keep the sender alive: a dropped sender is "nobody will signal".
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let started = Instant::now();
        assert_eq!(drive_env(&env, &mut rx).await, Some(End::Cancelled));
        // The wait in progress is cut short by the signal.
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(fake.count("cancel exec-1"), 1);
    }

    /// A job whose latest execution runs, made for `run`.
    fn running_job(run: Uuid) -> Fake {
        let fake = Fake::default();
        fake.with(|s| {
            s.jobs = VecDeque::from([Some(Readiness::Ready)]);
            s.latest = Some(("exec-1".into(), 1));
            s.owner = Some(run.to_string());
        });
        fake
    }

    /// Regression (flaky `worker::hygiene::cancelling_a_run_whose_deployment_overrides_the_region_stops_it`):
    /// the submitting worker starts the execution and records `infrastructure_pid` at the same
    /// time, so when it dies right then the run is RUNNING with no pid. A missing pid is not
    /// "never submitted": the job the run's configuration names is looked up and its execution
    /// cancelled (the old code marked the run CANCELLED and left the execution running).
    #[tokio::test(start_paused = true)]
    async fn a_run_without_a_recorded_pid_has_its_execution_cancelled() {
        let run = Uuid::new_v4();
        for recorded in [None, Some("")] {
            let fake = running_job(run);
            let stopped = stop_started_elsewhere(&fake, recorded, "job-1", run).await;
            assert_eq!(
                stopped.expect("stopped"),
                Stopped::Cancelled("exec-1".into())
            );
            assert_eq!(fake.calls(), vec!["job", "cancel exec-1"], "{recorded:?}");
        }
    }

    /// A recorded pid is the job; the derived name is a fallback only.
    #[tokio::test(start_paused = true)]
    async fn a_recorded_pid_is_cancelled_even_if_labelled_otherwise() {
        let run = Uuid::new_v4();
        let fake = running_job(run);
        fake.with(|s| s.owner = Some(Uuid::new_v4().to_string()));
        let stopped = stop_started_elsewhere(&fake, Some("job-recorded"), "job-1", run).await;
        assert_eq!(
            stopped.expect("stopped"),
            Stopped::Cancelled("exec-1".into())
        );
    }

    /// A derived name that holds another run's job (a fixed v1 name) is not this run's: its
    /// execution is left alone.
    #[tokio::test(start_paused = true)]
    async fn a_derived_job_of_another_run_is_left_alone() {
        let run = Uuid::new_v4();
        let fake = running_job(run);
        fake.with(|s| s.owner = Some(Uuid::new_v4().to_string()));
        let stopped = stop_started_elsewhere(&fake, None, "job-1", run).await;
        assert_eq!(stopped.expect("stopped"), Stopped::NoJob);
        assert!(!fake.calls().iter().any(|c| c.starts_with("cancel")));
    }

    /// No job, or a job that never started an execution: nothing to cancel.
    #[tokio::test(start_paused = true)]
    async fn nothing_started_means_nothing_to_cancel() {
        let run = Uuid::new_v4();
        let fake = Fake::default();
        fake.with(|s| s.jobs = VecDeque::from([None]));
        let stopped = stop_started_elsewhere(&fake, None, "job-1", run).await;
        assert_eq!(stopped.expect("stopped"), Stopped::NoJob);
        let fake = running_job(run);
        fake.with(|s| s.latest = None);
        let stopped = stop_started_elsewhere(&fake, None, "job-1", run).await;
        assert_eq!(stopped.expect("stopped"), Stopped::NoExecution);
        assert!(!fake.calls().iter().any(|c| c.starts_with("cancel")));
    }

    /// A failed cancel is an error (the run stays CANCELLING for the next pass), never
    /// "stopped".
    #[tokio::test(start_paused = true)]
    async fn a_failed_cancel_is_not_a_stop() {
        let run = Uuid::new_v4();
        let fake = running_job(run);
        fake.with(|s| s.cancel_fails = true);
        assert!(
            stop_started_elsewhere(&fake, None, "job-1", run)
                .await
                .is_err()
        );
    }

    /// Shutting down while the job is set up detaches: no execution is started, nothing is
    /// cancelled, and the run is left for a later pass (the job kept).
    #[tokio::test(start_paused = true)]
    async fn a_shutdown_while_the_job_is_set_up_detaches() {
        let fake = Fake::default();
        fake.with(|s| s.jobs = VecDeque::from([Some(Readiness::Pending)]));
        let env = Env::new(&fake);
        let (tx, mut rx) = watch::channel(Signal::None);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = tx.send(Signal::Shutdown);
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        let driven = drive(&env, view(), &mut rx, None).await;
        assert_eq!(driven.end, None);
        assert!(driven.created.is_some(), "the job stays");
        assert_eq!(fake.count("run"), 0);
        assert!(!fake.calls().iter().any(|c| c.starts_with("cancel")));
    }

    /// A job that never becomes ready fails the submission at the readiness deadline.
    #[tokio::test(start_paused = true)]
    async fn a_job_never_ready_fails_at_the_deadline() {
        let fake = Fake::default();
        fake.with(|s| s.jobs = VecDeque::from([Some(Readiness::Pending)]));
        let env = Env::new(&fake);
        let (_tx, mut rx) = watch::channel(Signal::None);
        let started = Instant::now();
        assert_eq!(
            drive_env(&env, &mut rx).await,
            Some(End::SubmitFailed(
                "Cloud Run job job-1 was not ready within 600 s".into()
            ))
        );
        let waited = started.elapsed();
        assert!(
            waited > Duration::from_secs(590) && waited <= Duration::from_secs(600),
            "{waited:?}"
        );
    }

    /// An unavailable Prefect API is waited out with backoff: a short outage delays the run,
    /// a long one leaves it PENDING for a later pass after two minutes.
    #[tokio::test(start_paused = true)]
    async fn a_prefect_outage_is_waited_out_then_left_for_a_later_pass() {
        let fake = Fake::default();
        fake.with(|s| {
            s.jobs = VecDeque::from([Some(Readiness::Ready)]);
            s.executions = VecDeque::from([Ok(Some((true, true)))]);
        });
        let env = Env::new(&fake);
        *env.configure.lock().expect("configure") = VecDeque::from([outage(), outage(), None]);
        let (_tx, mut rx) = watch::channel(Signal::None);
        let started = Instant::now();
        let end = drive_env(&env, &mut rx).await;
        assert!(matches!(end, Some(End::Finished(_))), "{end:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(500 + 1000));
        assert_eq!(fake.count("configure"), 3);

        let fake = Fake::default();
        let env = Env::new(&fake);
        *env.configure.lock().expect("configure") = VecDeque::from([outage()]);
        let started = Instant::now();
        assert_eq!(drive_env(&env, &mut rx).await, None);
        let waited = started.elapsed();
        assert!(
            waited > Duration::from_secs(100) && waited <= Duration::from_secs(120),
            "{waited:?}"
        );
        assert!(fake.count("configure") < 25, "bounded");
    }

    /// A configuration the run itself got wrong fails at once, without retries.
    #[tokio::test(start_paused = true)]
    async fn a_bad_configuration_fails_the_submission_at_once() {
        let fake = Fake::default();
        let env = Env::new(&fake);
        *env.configure.lock().expect("configure") = VecDeque::from([Some(Error::Configure {
            message: "bad job variables".into(),
            outage: false,
        })]);
        let (_tx, mut rx) = watch::channel(Signal::None);
        assert_eq!(
            drive_env(&env, &mut rx).await,
            Some(End::SubmitFailed("bad job variables".into()))
        );
        assert_eq!(fake.count("configure"), 1);
    }

    /// `:run` whose answer was lost: the execution it started is found on the job and
    /// watched, not a second one started and not a failure.
    #[tokio::test(start_paused = true)]
    async fn a_lost_run_answer_finds_the_execution_it_started() {
        let fake = Fake::default();
        fake.with(|s| {
            s.jobs = VecDeque::from([Some(Readiness::Ready)]);
            s.executions = VecDeque::from([Ok(Some((true, true)))]);
            s.run_fails = true;
        });
        let env = Env::new(&fake);
        let (_tx, mut rx) = watch::channel(Signal::None);
        let end = drive_env(&env, &mut rx).await;
        assert!(
            matches!(&end, Some(End::Finished(d)) if d.execution == "exec-lost-answer"),
            "{end:?}"
        );
        assert_eq!(fake.count("run"), 1);
    }

    /// A job left by an earlier attempt of this claim is adopted with its execution; a job of
    /// another run (a fixed v1 name) is never adopted.
    #[tokio::test(start_paused = true)]
    async fn existing_jobs_are_adopted_only_when_they_are_this_runs() {
        let fake = Fake::default();
        fake.with(|s| {
            s.existing = true;
            s.owner = Some(Uuid::nil().to_string());
            s.jobs = VecDeque::from([Some(Readiness::Ready)]);
            s.latest = Some(("exec-earlier".into(), 2));
            s.executions = VecDeque::from([Ok(Some((true, false)))]);
        });
        let env = Env::new(&fake);
        let (_tx, mut rx) = watch::channel(Signal::None);
        let end = drive_env(&env, &mut rx).await;
        assert!(
            matches!(&end, Some(End::Finished(d)) if d.execution == "exec-earlier" && d.succeeded == Some(false)),
            "{end:?}"
        );
        assert_eq!(fake.count("run"), 0, "no second execution");
        assert_eq!(fake.count("record_pid job-1"), 1);
        let logs = env.logs.lock().expect("logs").clone();
        assert_eq!(
            logs,
            [
                "Job job-1 already exists (an earlier attempt); adopting it",
                "Adopting execution exec-earlier started by an earlier attempt",
                "Started Cloud Run job job-1, execution exec-earlier",
            ]
        );

        let fake = Fake::default();
        fake.with(|s| {
            s.existing = true;
            s.owner = Some("someone-else".into());
            s.jobs = VecDeque::from([Some(Readiness::Ready)]);
        });
        let env = Env::new(&fake);
        match drive_env(&env, &mut rx).await {
            Some(End::SubmitFailed(msg)) => {
                assert!(msg.contains("belongs to flow run someone-else"), "{msg}")
            }
            other => panic!("adopted another run's job: {other:?}"),
        }
    }
}
