//! One Cloud Run jobs facade over both APIs, for the embedded worker's flow-run jobs: Prefect's
//! `cloud-run-v2` pools use Cloud Run Admin v2 ([`crate::run_v2`]), `cloud-run` pools v1
//! ([`crate::run_v1`], regional host). Callers see one set of typed views ([`JobView`],
//! [`ExecutionView`]) and never a URL or a method id.
//!
//! A job body rendered from a Prefect base job template passes through the typed models
//! untouched: every field the models do not name is kept in their `extra` maps.

use std::collections::BTreeMap;
use std::time::Duration;

use bootstrap_ids::{ProjectId, Region, RunJobName};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::GcpError;
use crate::http::GcpHttp;
use crate::operations::Operation;
use crate::{run_v1, run_v2};

/// How long a deletion waits for one execution's delete operation before going on with the
/// job (prefect-gcp's `JobV2.delete` sleeps 3 s per execution for the same reason: the job
/// delete is refused while an execution is still being deleted).
const EXECUTION_DELETE_DEADLINE: Duration = Duration::from_secs(30);

/// Which Cloud Run API holds the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobsApi {
    /// Cloud Run Admin v2 (`run.projects.locations.jobs.*`); writes return operations.
    V2,
    /// Cloud Run Admin v1 (`run.namespaces.jobs.*`) on `{region}-run.googleapis.com`.
    V1,
}

/// Whether a job can be run yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Ready to run.
    Ready,
    /// Still being set up.
    Pending,
    /// Setup failed (e.g. the image does not exist); the message says why.
    Failed(String),
}

/// What a caller needs to know about a job.
#[derive(Debug, Clone)]
pub struct JobView {
    /// Short job name.
    pub name: String,
    /// Readiness.
    pub readiness: Readiness,
    /// The newest execution: its name (full for v2, short for v1) and creation time.
    pub latest_execution: Option<(String, Option<DateTime<Utc>>)>,
    /// The job's labels.
    pub labels: BTreeMap<String, String>,
}

/// What a caller needs to know about an execution.
#[derive(Debug, Clone)]
pub struct ExecutionView {
    /// Finished (successfully or not).
    pub done: bool,
    /// Finished successfully.
    pub succeeded: bool,
    /// The `Completed` condition's message, when it has one.
    pub message: Option<String>,
    /// Where its logs are.
    pub log_uri: Option<String>,
    /// When it finished (`completionTime`), if it did.
    pub completed_at: Option<DateTime<Utc>>,
}

/// The label prefect-gcp and the embedded worker put on every flow-run job of a work pool:
/// Prefect's `prefect.io/work-pool-name` sanitised for GCP (lowercase, `[a-z0-9_-]`, at most 63
/// characters; prefect-gcp `utilities.py` `_sanitize_label`). The worker writes it through its
/// own label code (`bootstrap_worker::config::sanitize_labels`, which a worker test holds to
/// this function); `destroy` and `worker --sweep` find the pool's jobs by it.
pub const POOL_LABEL: &str = "prefect-io-work-pool-name";

/// The value of [`POOL_LABEL`] on the jobs of `pool`.
pub fn pool_label_value(pool: &str) -> String {
    pool.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

/// Cloud Run's limit on jobs per project and region: "Maximum number of jobs: 1000"
/// (<https://cloud.google.com/run/quotas#cloud_run_jobs_limits>, "Cloud Run jobs limits"). A
/// region at the limit refuses new jobs, which is how leftover flow-run jobs block new runs
/// (PrefectHQ/prefect#16007, #14525).
pub const JOBS_PER_REGION_LIMIT: usize = 1000;

/// From this many jobs in a region on, the worker warns that the limit is near.
pub const JOBS_NEAR_LIMIT: usize = 900;

/// The answer to [`Jobs::create`].
#[derive(Debug, Clone)]
pub enum Created {
    /// Created now. For v2 the create operation, whose `error` is where Google reports a
    /// failure found after the request was accepted (the job may then never appear).
    New(Option<Box<Operation>>),
    /// The job existed already (ours, from an earlier attempt).
    Existing,
}

/// The jobs of one project and region, in one API.
#[derive(Debug, Clone)]
pub struct Jobs {
    http: GcpHttp,
    api: JobsApi,
    project: ProjectId,
    region: Region,
}

fn parse_time(v: Option<&str>) -> Option<DateTime<Utc>> {
    v.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn text(v: Option<&str>) -> Option<String> {
    v.filter(|s| !s.is_empty()).map(str::to_string)
}

fn failed(message: Option<&str>, reason: Option<&str>) -> Readiness {
    Readiness::Failed(
        text(message)
            .or_else(|| text(reason))
            .unwrap_or_else(|| "the job could not be set up".into()),
    )
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, body: &Value) -> Result<T, GcpError> {
    serde_json::from_value(body.clone()).map_err(|e| GcpError::Decode {
        method: format!("the {what} job body"),
        source: e,
    })
}

fn short(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The view of a v2 job (`terminalCondition` of type `Ready`).
pub fn view_v2(job: &str, j: &run_v2::Job) -> JobView {
    let tc = j.terminal_condition.as_ref();
    let ready = tc.is_some_and(|c| c.kind.as_deref() == Some("Ready"));
    let readiness = match (ready, tc.and_then(|c| c.state.as_deref())) {
        (true, Some("CONDITION_SUCCEEDED")) => Readiness::Ready,
        (true, Some("CONDITION_FAILED")) => failed(
            tc.and_then(|c| c.message.as_deref()),
            tc.and_then(|c| c.reason.as_deref()),
        ),
        _ => Readiness::Pending,
    };
    let latest = j.latest_created_execution.as_ref();
    JobView {
        name: job.to_string(),
        readiness,
        latest_execution: text(latest.and_then(|l| l.name.as_deref()))
            .map(|n| (n, parse_time(latest.and_then(|l| l.create_time.as_deref())))),
        labels: j.labels.clone(),
    }
}

/// The view of a v1 job (`status.conditions[type=Ready].status`).
pub fn view_v1(job: &str, j: &run_v1::Job) -> JobView {
    let status = j.status.as_ref();
    let ready = status.and_then(|s| s.conditions.iter().find(|c| c.kind == "Ready"));
    let readiness = match ready.and_then(|c| c.status.as_deref()) {
        Some("True") => Readiness::Ready,
        Some("False") => failed(
            ready.and_then(|c| c.message.as_deref()),
            ready.and_then(|c| c.reason.as_deref()),
        ),
        _ => Readiness::Pending,
    };
    // `latestCreatedExecution` is an `ExecutionReference` kept as JSON by the v1 model.
    let latest = status.and_then(|s| s.latest_created_execution.as_ref());
    let field = |k: &str| latest.and_then(|l| l.get(k)).and_then(Value::as_str);
    JobView {
        name: job.to_string(),
        readiness,
        latest_execution: text(field("name")).map(|n| (n, parse_time(field("creationTimestamp")))),
        labels: j.metadata.labels.clone(),
    }
}

fn execution_v2(e: &run_v2::Execution) -> ExecutionView {
    let completed = e.completed_condition();
    ExecutionView {
        done: e.completion_time.is_some(),
        succeeded: completed.and_then(|c| c.state.as_deref()) == Some("CONDITION_SUCCEEDED"),
        message: text(completed.and_then(|c| c.message.as_deref())),
        log_uri: text(e.log_uri.as_deref()),
        completed_at: parse_time(e.completion_time.as_deref()),
    }
}

fn execution_v1(e: &run_v1::Execution) -> ExecutionView {
    let completed = e.completed();
    let status = e.status.as_ref();
    ExecutionView {
        done: status.is_some_and(|s| s.completion_time.is_some()),
        succeeded: e.succeeded(),
        message: text(completed.and_then(|c| c.message.as_deref())),
        log_uri: text(status.and_then(|s| s.log_uri.as_deref())),
        completed_at: parse_time(status.and_then(|s| s.completion_time.as_deref())),
    }
}

impl Jobs {
    /// The jobs of `project` / `region` in `api`.
    pub fn new(http: GcpHttp, api: JobsApi, project: ProjectId, region: Region) -> Self {
        Self {
            http,
            api,
            project,
            region,
        }
    }

    /// The project.
    pub fn project(&self) -> &ProjectId {
        &self.project
    }

    /// The region.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Creates the job from a rendered body (v2: a `Job`; v1: a `Job` with `metadata.name`).
    /// An existing job is [`Created::Existing`], not an error.
    pub async fn create(&self, job: &RunJobName, body: &Value) -> Result<Created, GcpError> {
        let answer = match self.api {
            JobsApi::V2 => {
                let spec: run_v2::Job = decode("v2", body)?;
                run_v2::create(&self.http, &self.project, &self.region, job, &spec, false)
                    .await
                    .map(|op| Created::New(Some(Box::new(op))))
            }
            JobsApi::V1 => {
                let spec: run_v1::Job = decode("v1", body)?;
                run_v1::create_job(&self.http, &self.region, &self.project, &spec)
                    .await
                    .map(|_| Created::New(None))
            }
        };
        match answer {
            Err(e) if e.is_already_exists() => Ok(Created::Existing),
            other => other,
        }
    }

    /// How a v2 create operation ended, reading it again while it runs: `None` while it
    /// runs, else success or Google's reason for the failure (the operation's `error`).
    pub async fn create_outcome(
        &self,
        op: &Operation,
    ) -> Result<Option<Result<(), GcpError>>, GcpError> {
        let op = if op.done || op.name.is_empty() {
            op.clone()
        } else {
            run_v2::get_operation(&self.http, &op.name).await?
        };
        Ok(op.outcome().map(|r| r.map(drop)))
    }

    /// Reads a job; `None` when it does not exist.
    pub async fn job(&self, job: &RunJobName) -> Result<Option<JobView>, GcpError> {
        Ok(match self.api {
            JobsApi::V2 => run_v2::get_job(&self.http, &self.project, &self.region, job)
                .await?
                .map(|j| view_v2(job.as_str(), &j)),
            JobsApi::V1 => run_v1::get_job(&self.http, &self.region, &self.project, job)
                .await?
                .map(|j| view_v1(job.as_str(), &j)),
        })
    }

    /// Starts an execution and returns its name (v2: full, v1: short). Not retried once
    /// sent: a repeat would start a second execution (the caller re-reads the job instead).
    pub async fn run(&self, job: &RunJobName) -> Result<String, GcpError> {
        let name = match self.api {
            JobsApi::V2 => {
                let request = run_v2::RunJobRequest::default();
                let op =
                    run_v2::run_job(&self.http, &self.project, &self.region, job, &request).await?;
                // The operation's metadata is the Execution; only its name is needed.
                op.metadata
                    .as_ref()
                    .and_then(|m| m.get("name"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
            JobsApi::V1 => {
                run_v1::run_job(&self.http, &self.region, &self.project, job, None)
                    .await?
                    .metadata
                    .name
            }
        };
        text(name.as_deref())
            .ok_or_else(|| GcpError::Config("the run call's answer names no execution".into()))
    }

    /// Reads an execution by the name [`Jobs::run`] or a [`JobView`] gave; `None` when it
    /// does not exist.
    pub async fn execution(&self, execution: &str) -> Result<Option<ExecutionView>, GcpError> {
        Ok(match self.api {
            JobsApi::V2 => run_v2::get_execution(&self.http, execution)
                .await?
                .map(|e| execution_v2(&e)),
            JobsApi::V1 => {
                run_v1::get_execution(&self.http, &self.region, &self.project, execution)
                    .await?
                    .map(|e| execution_v1(&e))
            }
        })
    }

    /// Cancels a running execution (harmless when it already finished or is gone).
    pub async fn cancel(&self, execution: &str) -> Result<(), GcpError> {
        let answer = match self.api {
            JobsApi::V2 => run_v2::cancel_execution(&self.http, execution)
                .await
                .map(drop),
            JobsApi::V1 => {
                run_v1::cancel_execution(&self.http, &self.region, &self.project, execution)
                    .await
                    .map(drop)
            }
        };
        match answer {
            Err(e) if e.is_not_found() => Ok(()),
            // Cancelling a finished execution is refused; it is what we wanted anyway.
            Err(e) if matches!(e.http_code(), Some(400 | 409)) => Ok(()),
            other => other,
        }
    }

    /// Deletes the job; already gone is fine. v2 deletes its executions first (every page)
    /// and waits for each delete operation, as prefect-gcp's `JobV2.delete` does, so that the
    /// job delete is not refused while one is still going.
    pub async fn delete(&self, job: &RunJobName) -> Result<(), GcpError> {
        match self.api {
            JobsApi::V2 => {
                let executions =
                    match run_v2::list_executions(&self.http, &self.project, &self.region, job)
                        .await
                    {
                        Ok(list) => list,
                        Err(e) if e.is_not_found() => return Ok(()),
                        Err(e) => return Err(e),
                    };
                for e in executions.iter().filter(|e| !e.name.is_empty()) {
                    if let Some(op) = run_v2::delete_execution(&self.http, &e.name).await? {
                        match run_v2::wait_operation(&self.http, op, EXECUTION_DELETE_DEADLINE)
                            .await
                        {
                            Ok(_) => {}
                            Err(e) if e.is_not_found() => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                run_v2::delete_job(&self.http, &self.project, &self.region, job).await?;
            }
            JobsApi::V1 => {
                run_v1::delete_job(&self.http, &self.region, &self.project, job).await?;
            }
        }
        Ok(())
    }

    /// The last `lines` lines `execution` of `job` printed, from Cloud Logging (oldest first).
    pub async fn log_tail(
        &self,
        job: &str,
        execution: &str,
        lines: u32,
    ) -> Result<Vec<crate::logging::LogLine>, GcpError> {
        crate::logging::execution_tail(
            &self.http,
            &self.project,
            &self.region,
            job,
            execution,
            lines,
        )
        .await
    }

    /// Every job of the project and region, every page (each API's own paging: v2
    /// `pageToken`, v1 `continue`), e.g. to count them against [`JOBS_PER_REGION_LIMIT`].
    pub async fn all_jobs(&self) -> Result<Vec<JobView>, GcpError> {
        Ok(match self.api {
            JobsApi::V2 => run_v2::list_jobs(&self.http, &self.project, &self.region)
                .await?
                .iter()
                .filter_map(|j| Some(view_v2(short(j.name.as_deref()?), j)))
                .collect(),
            JobsApi::V1 => run_v1::list_jobs(&self.http, &self.region, &self.project, None)
                .await?
                .iter()
                .filter_map(|j| Some(view_v1(short(j.metadata.name.as_deref()?), j)))
                .collect(),
        })
    }

    /// The jobs carrying `label = value`, every page (v1 filters on the server with a label
    /// selector; v2 has no server-side label filter, so the list is filtered here).
    pub async fn jobs_labelled(&self, label: &str, value: &str) -> Result<Vec<JobView>, GcpError> {
        let views: Vec<JobView> = match self.api {
            JobsApi::V2 => run_v2::list_jobs(&self.http, &self.project, &self.region)
                .await?
                .iter()
                .filter_map(|j| Some(view_v2(short(j.name.as_deref()?), j)))
                .collect(),
            JobsApi::V1 => {
                let selector = format!("{label}={value}");
                run_v1::list_jobs(&self.http, &self.region, &self.project, Some(&selector))
                    .await?
                    .iter()
                    .filter_map(|j| Some(view_v1(short(j.metadata.name.as_deref()?), j)))
                    .collect()
            }
        };
        Ok(views
            .into_iter()
            .filter(|j| j.labels.get(label).map(String::as_str) == Some(value))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pool_label_values_are_gcp_label_values() {
        assert_eq!(pool_label_value("my-cloud-run-pool"), "my-cloud-run-pool");
        assert_eq!(pool_label_value("My Pool.v2"), "my-pool-v2");
        assert_eq!(pool_label_value(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn v2_views_read_conditions() {
        let j: run_v2::Job = serde_json::from_value(json!({
            "terminalCondition": {"type": "Ready", "state": "CONDITION_FAILED", "reason": "CONTAINER_MISSING", "message": "Image 'x' not found."},
            "latestCreatedExecution": {"name": "projects/p/locations/r/jobs/j/executions/j-abc", "createTime": "2026-01-01T00:00:00Z"},
            "labels": {"a": "b"}
        }))
        .unwrap();
        let v = view_v2("j", &j);
        assert_eq!(
            v.readiness,
            Readiness::Failed("Image 'x' not found.".into())
        );
        let (name, created) = v.latest_execution.expect("latest");
        assert!(name.ends_with("j-abc") && created.is_some());
        assert_eq!(v.labels.get("a").map(String::as_str), Some("b"));
        let ready: run_v2::Job = serde_json::from_value(
            json!({"terminalCondition": {"type": "Ready", "state": "CONDITION_SUCCEEDED"}}),
        )
        .unwrap();
        assert_eq!(view_v2("j", &ready).readiness, Readiness::Ready);
        assert_eq!(
            view_v2("j", &run_v2::Job::default()).readiness,
            Readiness::Pending
        );
    }

    #[test]
    fn v1_views_read_conditions() {
        let j: run_v1::Job = serde_json::from_value(json!({"metadata": {"labels": {"x": "y"}}, "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "latestCreatedExecution": {"name": "j-xyz", "creationTimestamp": "2026-01-01T00:00:00Z"}
        }}))
        .unwrap();
        let v = view_v1("j", &j);
        assert_eq!(v.readiness, Readiness::Ready);
        assert_eq!(v.latest_execution.map(|l| l.0), Some("j-xyz".into()));
        assert_eq!(v.labels.get("x").map(String::as_str), Some("y"));
        let j: run_v1::Job = serde_json::from_value(json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "ContainerMissing"}]}})).unwrap();
        assert_eq!(
            view_v1("j", &j).readiness,
            Readiness::Failed("ContainerMissing".into())
        );
    }

    #[test]
    fn execution_views_read_completion() {
        let e: run_v2::Execution = serde_json::from_value(json!({
            "name": "projects/p/locations/r/jobs/j/executions/e",
            "completionTime": "2026-01-01T00:00:00Z",
            "conditions": [{"type": "Completed", "state": "CONDITION_FAILED", "message": "Task failed"}],
            "logUri": "https://console/logs"
        }))
        .unwrap();
        let v = execution_v2(&e);
        assert!(v.done && !v.succeeded);
        assert_eq!(v.message.as_deref(), Some("Task failed"));
        assert_eq!(v.log_uri.as_deref(), Some("https://console/logs"));
        let e: run_v1::Execution = serde_json::from_value(json!({
            "metadata": {"name": "e"},
            "status": {"completionTime": "2026-01-01T00:00:00Z", "conditions": [{"type": "Completed", "status": "True"}]}
        }))
        .unwrap();
        let v = execution_v1(&e);
        assert!(v.done && v.succeeded);
        let running: run_v1::Execution =
            serde_json::from_value(json!({"metadata": {"name": "e"}})).unwrap();
        assert!(!execution_v1(&running).done);
    }
}
