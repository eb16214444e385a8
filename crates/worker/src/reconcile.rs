//! One flow run as a reconcile function (kube-rs's controller is the model): what the worker
//! remembers of the run and what it last read of the run's Cloud Run job and execution go in,
//! the next thing to do comes out. [`decide`] and [`error_policy`] are pure; the driver
//! (`driver.rs`) reads, decides, carries the decision out and reads again.
//!
//! A run goes: [`Decision::Claim`] (PENDING under this worker's [`super::claim::ClaimMarker`]),
//! [`Decision::CreateJob`] (the job configuration and the job), a wait until the job is ready,
//! [`Decision::StartExecution`] or [`Decision::AdoptExecution`] (one started for this claim by
//! an earlier process), a watch of the execution, and [`Decision::Finish`] with how the run
//! ended (the driver proposes the state, writes the logs and deletes the job) or
//! [`Decision::Detach`] (the job keeps running; a later pass adopts the run).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use uuid::Uuid;

use super::cloudrun::{ExecutionView, JobView, Readiness};

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

/// Where the run's job stands, as far as this task knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobStep {
    /// Not created (or adopted) yet by this task.
    NotCreated,
    /// Created by this task (`fresh`) or found from an earlier attempt; it must be ready by
    /// `ready_by`.
    Created { fresh: bool, ready_by: Instant },
}

/// What the task remembers of its run between passes.
#[derive(Debug, Clone)]
pub(crate) struct RunView {
    pub(crate) id: Uuid,
    /// The job's name (known once the configuration is built).
    pub(crate) job_name: String,
    /// When this worker's claim was written; `None` until claimed.
    pub(crate) claimed_at: Option<DateTime<Utc>>,
    pub(crate) job: JobStep,
    /// Why Google refused the job after accepting its create (the v2 operation's `error`).
    pub(crate) create_error: Option<String>,
    /// The execution this task started or adopted.
    pub(crate) execution: Option<String>,
    /// What the runtime asks.
    pub(crate) signal: Signal,
    /// Passes in the current step that ended in a wait (each backoff grows from it).
    pub(crate) waits: u32,
    /// Since when the Prefect API has been unavailable while building the configuration.
    pub(crate) outage_since: Option<Instant>,
    /// Since when every read of the execution has failed.
    pub(crate) failing_since: Option<Instant>,
    /// Longest wait for the job to become ready (for the message when it is exceeded).
    pub(crate) ready_deadline: Duration,
    /// How long the watch keeps going while every read of the execution fails.
    pub(crate) lost_contact_window: Duration,
}

impl RunView {
    /// A run just taken from a poll (`claimed_at: None`) or adopted (`Some`).
    pub(crate) fn new(
        id: Uuid,
        claimed_at: Option<DateTime<Utc>>,
        ready_deadline: Duration,
        lost_contact_window: Duration,
    ) -> Self {
        Self {
            id,
            job_name: String::new(),
            claimed_at,
            job: JobStep::NotCreated,
            create_error: None,
            execution: None,
            signal: Signal::None,
            waits: 0,
            outage_since: None,
            failing_since: None,
            ready_deadline,
            lost_contact_window,
        }
    }
}

/// An execution that ended, as watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Done {
    /// The execution's name.
    pub(crate) execution: String,
    /// `None`: the execution was deleted while watched.
    pub(crate) succeeded: Option<bool>,
    pub(crate) message: Option<String>,
    pub(crate) log_uri: Option<String>,
}

/// How a run's task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The execution finished (or was deleted while watched).
    Finished(Done),
    /// The Cloud Run API did not answer for the lost-contact window
    /// ([`super::runtime::WorkerOptions::lost_contact_window`], 30 minutes by default):
    /// prefect-gcp leaves the run's state to the flow and keeps the job.
    LostContact(String),
    /// The run was cancelled (its execution cancelled, or none started).
    Cancelled,
    /// The submission failed before an execution ran: CRASHED.
    SubmitFailed(String),
    /// Failed after the execution started (it could not be cancelled): CRASHED unless final.
    FailedAfterStart(String),
}

/// The next thing to do for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Propose PENDING under this worker's claim marker.
    Claim,
    /// Build the job configuration and create the job (or find it from an earlier attempt).
    CreateJob,
    /// Start an execution of the ready job.
    StartExecution,
    /// Take over this execution, started for the current claim by an earlier attempt.
    AdoptExecution(String),
    /// Read again after this long.
    Watch { requeue_after: Duration },
    /// Cancel this execution; the run ends cancelled.
    CancelExecution(String),
    /// The run's task ends so: propose its state, log, delete the job (per [`closing`]).
    Finish(End),
    /// Leave everything as it is (shutting down, or Prefect unavailable): the job keeps
    /// running and the run stays PENDING under the claim, for a later pass to adopt.
    Detach,
}

/// An execution created up to this long before the claim still belongs to it (clock skew
/// between Google and the Prefect server).
pub(crate) const CLAIM_SKEW: Duration = Duration::from_secs(5);

/// Longest a submission waits for an unavailable Prefect API before leaving the run PENDING
/// under its claim, for the reconcile pass to adopt later.
pub(crate) const PREFECT_OUTAGE_WAIT: Duration = Duration::from_secs(120);

/// Wait number `n` while the Prefect API is unavailable: 500 ms doubling, at most 8 s.
pub(crate) fn outage_backoff(n: u32) -> Duration {
    (Duration::from_millis(500) * 2u32.saturating_pow(n.min(8))).min(Duration::from_secs(8))
}

/// Wait number `n` for the job to become ready: 250 ms doubling, at most 5 s.
pub(crate) fn ready_backoff(n: u32) -> Duration {
    (Duration::from_millis(250) * 2u32.saturating_pow(n.min(8))).min(Duration::from_secs(5))
}

/// Wait number `n` between reads of a running execution: 500 ms growing by half, at most 10 s
/// (watching costs the Prefect server nothing, and Cloud Run's read quota is generous).
pub(crate) fn watch_backoff(n: u32) -> Duration {
    Duration::from_millis(500)
        .mul_f64(1.5f64.powi(i32::try_from(n.min(16)).unwrap_or(16)))
        .min(Duration::from_secs(10))
}

/// The execution of `job` that belongs to the claim made at `claimed_at`, if any.
fn claimed_execution(job: &JobView, claimed_at: DateTime<Utc>) -> Option<&str> {
    let skew = chrono::Duration::from_std(CLAIM_SKEW).unwrap_or_default();
    match &job.latest_execution {
        Some((name, Some(t))) if *t >= claimed_at - skew => Some(name),
        _ => None,
    }
}

/// The next step for `run`, from what was last read of its job (`None`: not read, or it does
/// not exist) and of its execution. Pure: every read and every write is the driver's.
pub(crate) fn decide(
    run: &RunView,
    job: Option<&JobView>,
    execution: Option<&ExecutionView>,
    now: Instant,
) -> Decision {
    let Some(claimed_at) = run.claimed_at else {
        // Nothing is ours yet: a signal just means not to start.
        return match run.signal {
            Signal::None => Decision::Claim,
            Signal::Cancel | Signal::Shutdown => Decision::Detach,
        };
    };
    match run.signal {
        // Shutting down: the job (if any) keeps running; a restart adopts the run.
        Signal::Shutdown => return Decision::Detach,
        Signal::Cancel => {
            return match &run.execution {
                Some(name) => Decision::CancelExecution(name.clone()),
                None => Decision::Finish(End::Cancelled),
            };
        }
        Signal::None => {}
    }
    if let Some(name) = &run.execution {
        return match execution {
            Some(e) if e.done => Decision::Finish(End::Finished(Done {
                execution: name.clone(),
                succeeded: Some(e.succeeded),
                message: e.message.clone(),
                log_uri: e.log_uri.clone(),
            })),
            Some(_) => Decision::Watch {
                requeue_after: watch_backoff(run.waits),
            },
            None => Decision::Finish(End::Finished(Done {
                execution: name.clone(),
                succeeded: None,
                message: None,
                log_uri: None,
            })),
        };
    }
    let JobStep::Created { fresh, ready_by } = run.job else {
        return Decision::CreateJob;
    };
    let name = &run.job_name;
    match job {
        Some(v) if v.readiness == Readiness::Ready => {
            return match claimed_execution(v, claimed_at) {
                Some(exec) => Decision::AdoptExecution(exec.to_string()),
                None => Decision::StartExecution,
            };
        }
        Some(v) => {
            if let Readiness::Failed(msg) = &v.readiness {
                return Decision::Finish(End::SubmitFailed(format!(
                    "Cloud Run job {name} could not be set up: {msg}"
                )));
            }
        }
        // A job this task did not create, or one that should long have appeared, is gone.
        None if !fresh || now > ready_by => {
            return Decision::Finish(End::SubmitFailed(format!(
                "Cloud Run job {name} vanished while being set up"
            )));
        }
        None => {}
    }
    if let Some(e) = &run.create_error {
        return Decision::Finish(End::SubmitFailed(format!(
            "Cloud Run could not create job {name}: {e}"
        )));
    }
    let requeue_after = ready_backoff(run.waits);
    if now + requeue_after > ready_by {
        return Decision::Finish(End::SubmitFailed(format!(
            "Cloud Run job {name} was not ready within {} s",
            run.ready_deadline.as_secs()
        )));
    }
    Decision::Watch { requeue_after }
}

/// A failed step of the driver.
#[derive(Debug)]
pub(crate) enum Error {
    /// Building the job configuration failed; `outage`: because the Prefect API was
    /// unavailable (unreachable, 429, 5xx, or its `/health` failing), not because of the run.
    Configure { message: String, outage: bool },
    /// Creating, reading or starting the job failed (already retried by the Cloud Run client).
    Submit(String),
    /// Reading the execution failed (already retried by the Cloud Run client).
    ReadExecution(String),
    /// Cancelling the execution failed.
    Cancel(String),
}

/// What to do after a failed step: the error-side twin of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Requeue {
    /// Try the step again after this long.
    After(Duration),
    /// Give up: the run ends so.
    Finish(End),
    /// Give up for now and leave the run PENDING under the claim (a later pass adopts it).
    Detach,
}

/// How a failed step is handled (instead of "retry on the next poll", implicit). Outages of the
/// Prefect API are waited out for [`PREFECT_OUTAGE_WAIT`], then the run is left for a later
/// pass; a configuration the run itself got wrong ends the run as a failed submission; reads
/// of a started execution are retried for the whole lost-contact window, after which the run
/// is left to report its own state (prefect-gcp: "Lost connection to flow run
/// infrastructure").
pub(crate) fn error_policy(err: &Error, run: &RunView, now: Instant) -> Requeue {
    match err {
        Error::Configure {
            message,
            outage: false,
        } => Requeue::Finish(End::SubmitFailed(message.clone())),
        Error::Configure { outage: true, .. } => {
            let since = run.outage_since.unwrap_or(now);
            let delay = outage_backoff(run.waits);
            if now + delay > since + PREFECT_OUTAGE_WAIT {
                Requeue::Detach
            } else {
                Requeue::After(delay)
            }
        }
        Error::Submit(message) => Requeue::Finish(End::SubmitFailed(message.clone())),
        Error::ReadExecution(message) => {
            let since = run.failing_since.unwrap_or(now);
            let window = run.lost_contact_window;
            if now.duration_since(since) >= window {
                let execution = run.execution.as_deref().unwrap_or("?");
                Requeue::Finish(End::LostContact(format!(
                    "Lost connection to flow run infrastructure: Cloud Run did not answer \
                     about execution {execution} of job {} for {} minutes ({message}); the \
                     flow run's final state is left to the execution, and the job is kept",
                    run.job_name,
                    window.as_secs().div_ceil(60)
                )))
            } else {
                Requeue::After(watch_backoff(run.waits))
            }
        }
        Error::Cancel(message) => Requeue::Finish(End::FailedAfterStart(message.clone())),
    }
}

/// What the driver does once a run's task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    /// Delete the job (unless the configuration keeps it).
    pub(crate) delete_job: bool,
    /// The task saw the run's infrastructure to an end: never adopt the run again, even if
    /// its flow never reported a state.
    pub(crate) seen_to_end: bool,
}

/// What follows an end (or a detach: `None`). A lost contact keeps the job, like prefect-gcp:
/// the execution may still be running and succeed.
pub(crate) fn closing(end: Option<&End>) -> Closing {
    match end {
        None | Some(End::LostContact(_)) => Closing {
            delete_job: false,
            seen_to_end: false,
        },
        Some(_) => Closing {
            delete_job: true,
            seen_to_end: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const READY: Duration = Duration::from_secs(600);
    const WINDOW: Duration = Duration::from_secs(1800);

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().expect("timestamp")
    }

    fn claimed() -> RunView {
        let mut v = RunView::new(Uuid::nil(), Some(t("2026-01-01T10:00:00Z")), READY, WINDOW);
        v.job_name = "job-1".into();
        v
    }

    fn created(now: Instant, fresh: bool) -> RunView {
        RunView {
            job: JobStep::Created {
                fresh,
                ready_by: now + READY,
            },
            ..claimed()
        }
    }

    fn watching() -> RunView {
        RunView {
            execution: Some("exec-1".into()),
            ..created(Instant::now(), true)
        }
    }

    fn job(readiness: Readiness, latest: Option<(&str, Option<&str>)>) -> JobView {
        JobView {
            name: "job-1".into(),
            readiness,
            latest_execution: latest.map(|(n, at)| (n.to_string(), at.map(t))),
            labels: BTreeMap::new(),
        }
    }

    fn exec(done: bool, succeeded: bool) -> ExecutionView {
        ExecutionView {
            done,
            succeeded,
            message: Some("m".into()),
            log_uri: Some("https://logs".into()),
            completed_at: None,
        }
    }

    fn failed(msg: &str) -> Decision {
        Decision::Finish(End::SubmitFailed(msg.into()))
    }

    /// What the case says, the run, the job and execution read, and the decision wanted.
    type Case = (
        &'static str,
        RunView,
        Option<JobView>,
        Option<ExecutionView>,
        Decision,
    );

    #[test]
    fn decide_table() {
        let now = Instant::now();
        let ready = job(Readiness::Ready, None);
        let pending = job(Readiness::Pending, None);
        let with = |signal| RunView {
            signal,
            ..created(now, true)
        };
        let unclaimed = RunView::new(Uuid::nil(), None, READY, WINDOW);
        let past_deadline = RunView {
            job: JobStep::Created {
                fresh: true,
                ready_by: now + Duration::from_millis(100),
            },
            ..claimed()
        };
        let cases: Vec<Case> = vec![
            (
                "a new run is claimed first",
                unclaimed.clone(),
                None,
                None,
                Decision::Claim,
            ),
            (
                "a signal before the claim leaves the run alone",
                RunView {
                    signal: Signal::Cancel,
                    ..unclaimed
                },
                None,
                None,
                Decision::Detach,
            ),
            (
                "a claimed run gets its job",
                claimed(),
                None,
                None,
                Decision::CreateJob,
            ),
            (
                "a fresh job not visible yet is waited for",
                created(now, true),
                None,
                None,
                Decision::Watch {
                    requeue_after: Duration::from_millis(250),
                },
            ),
            (
                "an adopted job that is gone vanished",
                created(now, false),
                None,
                None,
                failed("Cloud Run job job-1 vanished while being set up"),
            ),
            (
                "a pending job is waited for",
                created(now, true),
                Some(pending.clone()),
                None,
                Decision::Watch {
                    requeue_after: Duration::from_millis(250),
                },
            ),
            (
                "the wait grows with each pass, up to 5 s",
                RunView {
                    waits: 9,
                    ..created(now, true)
                },
                Some(pending.clone()),
                None,
                Decision::Watch {
                    requeue_after: Duration::from_secs(5),
                },
            ),
            (
                "a job whose setup failed fails the submission with Google's reason",
                created(now, true),
                Some(job(Readiness::Failed("image not found".into()), None)),
                None,
                failed("Cloud Run job job-1 could not be set up: image not found"),
            ),
            (
                "a refused create operation fails the submission",
                RunView {
                    create_error: Some("quota".into()),
                    ..created(now, true)
                },
                Some(pending.clone()),
                None,
                failed("Cloud Run could not create job job-1: quota"),
            ),
            (
                "a wait past the readiness deadline fails the submission",
                past_deadline,
                Some(pending),
                None,
                failed("Cloud Run job job-1 was not ready within 600 s"),
            ),
            (
                "a ready job without an execution of this claim is started",
                created(now, true),
                Some(job(
                    Readiness::Ready,
                    Some(("old", Some("2026-01-01T09:00:00Z"))),
                )),
                None,
                Decision::StartExecution,
            ),
            (
                "an execution of this claim (within the clock skew) is adopted",
                created(now, false),
                Some(job(
                    Readiness::Ready,
                    Some(("mine", Some("2026-01-01T09:59:57Z"))),
                )),
                None,
                Decision::AdoptExecution("mine".into()),
            ),
            (
                "an execution with no creation time is not adopted",
                created(now, false),
                Some(job(Readiness::Ready, Some(("unknown", None)))),
                None,
                Decision::StartExecution,
            ),
            (
                "a running execution is watched",
                watching(),
                None,
                Some(exec(false, false)),
                Decision::Watch {
                    requeue_after: Duration::from_millis(500),
                },
            ),
            (
                "the watch slows down, up to 10 s",
                RunView {
                    waits: 30,
                    ..watching()
                },
                None,
                Some(exec(false, false)),
                Decision::Watch {
                    requeue_after: Duration::from_secs(10),
                },
            ),
            (
                "a finished execution finishes the run",
                watching(),
                None,
                Some(exec(true, false)),
                Decision::Finish(End::Finished(Done {
                    execution: "exec-1".into(),
                    succeeded: Some(false),
                    message: Some("m".into()),
                    log_uri: Some("https://logs".into()),
                })),
            ),
            (
                "a deleted execution finishes the run with no verdict",
                watching(),
                None,
                None,
                Decision::Finish(End::Finished(Done {
                    execution: "exec-1".into(),
                    succeeded: None,
                    message: None,
                    log_uri: None,
                })),
            ),
            (
                "cancel before an execution ends the run cancelled",
                with(Signal::Cancel),
                Some(ready.clone()),
                None,
                Decision::Finish(End::Cancelled),
            ),
            (
                "cancel while watching cancels the execution",
                RunView {
                    signal: Signal::Cancel,
                    ..watching()
                },
                None,
                Some(exec(true, true)),
                Decision::CancelExecution("exec-1".into()),
            ),
            (
                "shutdown leaves the job running",
                with(Signal::Shutdown),
                Some(ready),
                None,
                Decision::Detach,
            ),
            (
                "shutdown while watching leaves the execution running",
                RunView {
                    signal: Signal::Shutdown,
                    ..watching()
                },
                None,
                Some(exec(false, false)),
                Decision::Detach,
            ),
        ];
        for (what, run, job, execution, want) in cases {
            assert_eq!(
                decide(&run, job.as_ref(), execution.as_ref(), now),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn error_policy_table() {
        let now = Instant::now();
        let bad = Error::Configure {
            message: "bad job variables".into(),
            outage: false,
        };
        let down = Error::Configure {
            message: "connection refused".into(),
            outage: true,
        };
        let run = claimed();
        assert_eq!(
            error_policy(&bad, &run, now),
            Requeue::Finish(End::SubmitFailed("bad job variables".into()))
        );
        assert_eq!(
            error_policy(&down, &run, now),
            Requeue::After(Duration::from_millis(500))
        );
        let long_down = RunView {
            outage_since: Some(now),
            waits: 3,
            ..claimed()
        };
        assert_eq!(
            error_policy(&down, &long_down, now + Duration::from_secs(60)),
            Requeue::After(Duration::from_secs(4))
        );
        assert_eq!(
            error_policy(&down, &long_down, now + Duration::from_secs(117)),
            Requeue::Detach,
            "an outage longer than two minutes leaves the run for a later pass"
        );
        assert_eq!(
            error_policy(&Error::Submit("409".into()), &run, now),
            Requeue::Finish(End::SubmitFailed("409".into()))
        );
        assert_eq!(
            error_policy(&Error::Cancel("x".into()), &run, now),
            Requeue::Finish(End::FailedAfterStart("x".into()))
        );
        let read = Error::ReadExecution("503".into());
        let failing = RunView {
            failing_since: Some(now),
            ..watching()
        };
        assert_eq!(
            error_policy(&read, &failing, now + WINDOW - Duration::from_secs(1)),
            Requeue::After(Duration::from_millis(500))
        );
        match error_policy(&read, &failing, now + WINDOW) {
            Requeue::Finish(End::LostContact(msg)) => {
                assert!(
                    msg.starts_with("Lost connection to flow run infrastructure"),
                    "{msg}"
                );
                assert!(
                    msg.contains("exec-1") && msg.contains("30 minutes"),
                    "{msg}"
                );
            }
            other => panic!("not a lost contact: {other:?}"),
        }
    }

    #[test]
    fn only_a_lost_contact_or_a_detach_keeps_the_job_and_the_run_adoptable() {
        let keep = Closing {
            delete_job: false,
            seen_to_end: false,
        };
        assert_eq!(closing(None), keep);
        assert_eq!(closing(Some(&End::LostContact("x".into()))), keep);
        for end in [
            End::Cancelled,
            End::SubmitFailed("x".into()),
            End::FailedAfterStart("x".into()),
        ] {
            assert_eq!(
                closing(Some(&end)),
                Closing {
                    delete_job: true,
                    seen_to_end: true
                }
            );
        }
    }

    #[test]
    fn backoffs_grow_and_stay_bounded() {
        assert_eq!(ready_backoff(0), Duration::from_millis(250));
        assert_eq!(ready_backoff(1), Duration::from_millis(500));
        assert_eq!(ready_backoff(u32::MAX), Duration::from_secs(5));
        assert_eq!(outage_backoff(0), Duration::from_millis(500));
        assert_eq!(outage_backoff(u32::MAX), Duration::from_secs(8));
        assert_eq!(watch_backoff(1), Duration::from_millis(750));
        assert_eq!(watch_backoff(u32::MAX), Duration::from_secs(10));
    }
}
