//! The Cloud Run calls of a flow-run job, for both pool types, over `bootstrap_gcp::GcpHttp`
//! (retries, backoff, `Retry-After`). Bodies stay JSON values: the job body is rendered from
//! the pool's template and may carry fields no typed model here knows.
//!
//! v2 (`cloud-run-v2`): `v2/projects/{p}/locations/{r}/jobs...`, writes return operations.
//! v1 (`cloud-run`): `apis/run.googleapis.com/v1/namespaces/{p}/jobs...` on the regional host.

use bootstrap_gcp::http::seg;
use bootstrap_gcp::{Api, Call, GcpError, GcpHttp, OptionalExt as _};
use bootstrap_ids::Region;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use super::config::PoolKind;

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

/// What the worker needs to know about a job.
#[derive(Debug, Clone)]
pub struct JobView {
    /// Short job name.
    pub name: String,
    /// Readiness.
    pub readiness: Readiness,
    /// The newest execution: its name (full for v2, short for v1) and creation time.
    pub latest_execution: Option<(String, Option<DateTime<Utc>>)>,
    /// The job's labels.
    pub labels: serde_json::Map<String, Value>,
}

/// What the worker needs to know about an execution.
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
}

/// The jobs API of one project and region, for one pool type.
#[derive(Debug, Clone)]
pub struct RunJobs {
    http: GcpHttp,
    kind: PoolKind,
    project: String,
    region: String,
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn condition<'a>(conditions: Option<&'a Value>, kind: &str) -> Option<&'a Value> {
    conditions?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

impl RunJobs {
    /// A client for `project` / `region`.
    pub fn new(
        http: GcpHttp,
        kind: PoolKind,
        project: &str,
        region: &str,
    ) -> Result<Self, GcpError> {
        // Validated here so that a bad region from a template fails before any call.
        Region::parse(region)
            .map_err(|e| GcpError::Config(format!("invalid region `{region}`: {e}")))?;
        Ok(Self {
            http,
            kind,
            project: project.to_string(),
            region: region.to_string(),
        })
    }

    /// The project.
    pub fn project(&self) -> &str {
        &self.project
    }

    fn api(&self) -> Result<Api, GcpError> {
        Ok(match self.kind {
            PoolKind::V2 => Api::RunV2,
            PoolKind::V1 => Api::RunV1(
                Region::parse(&self.region)
                    .map_err(|e| GcpError::Config(format!("invalid region: {e}")))?,
            ),
        })
    }

    fn jobs_path(&self) -> String {
        match self.kind {
            PoolKind::V2 => format!(
                "v2/projects/{}/locations/{}/jobs",
                seg(&self.project),
                seg(&self.region)
            ),
            PoolKind::V1 => format!(
                "apis/run.googleapis.com/v1/namespaces/{}/jobs",
                seg(&self.project)
            ),
        }
    }

    fn execution_path(&self, execution: &str) -> Result<String, GcpError> {
        match self.kind {
            PoolKind::V2 => Ok(format!(
                "v2/{}",
                bootstrap_gcp::http::resource_path(execution)?
            )),
            PoolKind::V1 => Ok(format!(
                "apis/run.googleapis.com/v1/namespaces/{}/executions/{}",
                seg(&self.project),
                seg(execution)
            )),
        }
    }

    /// Creates the job; `false` when it already exists (ours, from an earlier attempt).
    pub async fn create(&self, job: &str, body: &Value) -> Result<bool, GcpError> {
        let call = match self.kind {
            PoolKind::V2 => Call::new(
                "run.projects.locations.jobs.create",
                Method::POST,
                self.api()?,
                self.jobs_path(),
            )
            .query("jobId", job),
            PoolKind::V1 => Call::new(
                "run.namespaces.jobs.create",
                Method::POST,
                self.api()?,
                self.jobs_path(),
            ),
        }
        .body(body.clone())
        // A repeated create is harmless: the second one answers ALREADY_EXISTS, which we adopt.
        .idempotent();
        match self.http.send::<Value>(call).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_already_exists() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a job; `None` when it does not exist.
    pub async fn job(&self, job: &str) -> Result<Option<JobView>, GcpError> {
        let call = Call::new(
            "run.jobs.get",
            Method::GET,
            self.api()?,
            format!("{}/{}", self.jobs_path(), seg(job)),
        );
        let Some(v) = self.http.send::<Value>(call).await.optional()? else {
            return Ok(None);
        };
        Ok(Some(self.view(job, &v)))
    }

    fn view(&self, job: &str, v: &Value) -> JobView {
        match self.kind {
            PoolKind::V2 => {
                let tc = v.get("terminalCondition");
                let state = tc.and_then(|c| c.get("state")).and_then(Value::as_str);
                let is_ready =
                    tc.and_then(|c| c.get("type")).and_then(Value::as_str) == Some("Ready");
                let readiness = match (is_ready, state) {
                    (true, Some("CONDITION_SUCCEEDED")) => Readiness::Ready,
                    (true, Some("CONDITION_FAILED")) => Readiness::Failed(
                        text(tc.and_then(|c| c.get("message")))
                            .or_else(|| text(tc.and_then(|c| c.get("reason"))))
                            .unwrap_or_else(|| "the job could not be set up".into()),
                    ),
                    _ => Readiness::Pending,
                };
                let latest = v.get("latestCreatedExecution");
                JobView {
                    name: job.to_string(),
                    readiness,
                    latest_execution: text(latest.and_then(|l| l.get("name")))
                        .map(|n| (n, parse_time(latest.and_then(|l| l.get("createTime"))))),
                    labels: v
                        .get("labels")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                }
            }
            PoolKind::V1 => {
                let ready = condition(v.pointer("/status/conditions"), "Ready");
                let readiness = match ready.and_then(|c| c.get("status")).and_then(Value::as_str) {
                    Some("True") => Readiness::Ready,
                    Some("False") => Readiness::Failed(
                        text(ready.and_then(|c| c.get("message")))
                            .or_else(|| text(ready.and_then(|c| c.get("reason"))))
                            .unwrap_or_else(|| "the job could not be set up".into()),
                    ),
                    _ => Readiness::Pending,
                };
                let latest = v.pointer("/status/latestCreatedExecution");
                JobView {
                    name: job.to_string(),
                    readiness,
                    latest_execution: text(latest.and_then(|l| l.get("name"))).map(|n| {
                        (
                            n,
                            parse_time(latest.and_then(|l| l.get("creationTimestamp"))),
                        )
                    }),
                    labels: v
                        .pointer("/metadata/labels")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default(),
                }
            }
        }
    }

    /// Starts an execution and returns its name. Not retried once sent: a repeat would start a
    /// second execution (the caller re-reads the job instead).
    pub async fn run(&self, job: &str) -> Result<String, GcpError> {
        let path = format!("{}/{}:run", self.jobs_path(), seg(job));
        let call = Call::new("run.jobs.run", Method::POST, self.api()?, path).body(json!({}));
        let v: Value = self.http.send(call).await?;
        let name = match self.kind {
            // An operation whose metadata is the Execution.
            PoolKind::V2 => text(v.pointer("/metadata/name")),
            // The Execution itself.
            PoolKind::V1 => text(v.pointer("/metadata/name")),
        };
        name.ok_or_else(|| GcpError::Config("the run call's answer names no execution".into()))
    }

    /// Reads an execution; `None` when it does not exist.
    pub async fn execution(&self, execution: &str) -> Result<Option<ExecutionView>, GcpError> {
        let call = Call::new(
            "run.executions.get",
            Method::GET,
            self.api()?,
            self.execution_path(execution)?,
        );
        let Some(v) = self.http.send::<Value>(call).await.optional()? else {
            return Ok(None);
        };
        Ok(Some(match self.kind {
            PoolKind::V2 => {
                let c = condition(v.get("conditions"), "Completed");
                ExecutionView {
                    done: v.get("completionTime").is_some_and(|t| !t.is_null()),
                    succeeded: c.and_then(|c| c.get("state")).and_then(Value::as_str)
                        == Some("CONDITION_SUCCEEDED"),
                    message: text(c.and_then(|c| c.get("message"))),
                    log_uri: text(v.get("logUri")),
                }
            }
            PoolKind::V1 => {
                let c = condition(v.pointer("/status/conditions"), "Completed");
                ExecutionView {
                    done: v
                        .pointer("/status/completionTime")
                        .is_some_and(|t| !t.is_null()),
                    succeeded: c.and_then(|c| c.get("status")).and_then(Value::as_str)
                        == Some("True"),
                    message: text(c.and_then(|c| c.get("message"))),
                    log_uri: text(v.pointer("/status/logUri")),
                }
            }
        }))
    }

    /// Cancels a running execution (harmless when it already finished).
    pub async fn cancel(&self, execution: &str) -> Result<(), GcpError> {
        let path = format!("{}:cancel", self.execution_path(execution)?);
        let call = Call::new("run.executions.cancel", Method::POST, self.api()?, path)
            .body(json!({}))
            .idempotent();
        match self.http.send::<Value>(call).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            // Cancelling a finished execution is refused; it is what we wanted anyway.
            Err(e) if e.http_code() == Some(400) || e.http_code() == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes the job (v2: its executions first, as prefect-gcp does). Already gone is fine.
    pub async fn delete(&self, job: &str) -> Result<(), GcpError> {
        if self.kind == PoolKind::V2 {
            let path = format!("{}/{}/executions", self.jobs_path(), seg(job));
            let call = Call::new("run.jobs.executions.list", Method::GET, self.api()?, path);
            if let Some(list) = self.http.send::<Value>(call).await.optional()? {
                for e in list
                    .get("executions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(name) = text(e.get("name")) {
                        let call = Call::new(
                            "run.executions.delete",
                            Method::DELETE,
                            self.api()?,
                            self.execution_path(&name)?,
                        );
                        self.http.send::<Value>(call).await.optional()?;
                    }
                }
            }
        }
        let call = Call::new(
            "run.jobs.delete",
            Method::DELETE,
            self.api()?,
            format!("{}/{}", self.jobs_path(), seg(job)),
        )
        .retry_conflicts();
        self.http.send::<Value>(call).await.optional()?;
        Ok(())
    }

    /// Jobs carrying `label = value` (first page of up to 500; enough for a cleanup pass).
    pub async fn jobs_labelled(&self, label: &str, value: &str) -> Result<Vec<JobView>, GcpError> {
        let call = Call::new("run.jobs.list", Method::GET, self.api()?, self.jobs_path());
        let call = match self.kind {
            PoolKind::V2 => call.query("pageSize", "500"),
            PoolKind::V1 => call
                .query("labelSelector", format!("{label}={value}"))
                .query("limit", "500"),
        };
        let v: Value = self.http.send(call).await?;
        let items = match self.kind {
            PoolKind::V2 => v.get("jobs"),
            PoolKind::V1 => v.get("items"),
        };
        Ok(items
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|j| {
                let full = match self.kind {
                    PoolKind::V2 => text(j.get("name"))?,
                    PoolKind::V1 => text(j.pointer("/metadata/name"))?,
                };
                let short = full.rsplit('/').next().unwrap_or(&full).to_string();
                Some(self.view(&short, j))
            })
            .filter(|j| j.labels.get(label).and_then(Value::as_str) == Some(value))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn jobs(kind: PoolKind) -> RunJobs {
        let tokens = Arc::new(bootstrap_gcp::StaticTokenSource::new(
            "t".to_string().into(),
            None,
        ));
        let http = GcpHttp::new(
            bootstrap_gcp::Endpoints::with_base("http://127.0.0.1:9").expect("endpoint"),
            tokens,
            bootstrap_gcp::RetryPolicy::default(),
        )
        .expect("http");
        RunJobs::new(http, kind, "p", "europe-west1").expect("jobs")
    }

    #[test]
    fn v2_views_read_conditions() {
        let j = jobs(PoolKind::V2);
        let v = j.view("j", &json!({
            "terminalCondition": {"type": "Ready", "state": "CONDITION_FAILED", "reason": "CONTAINER_MISSING", "message": "Image 'x' not found."},
            "latestCreatedExecution": {"name": "projects/p/locations/r/jobs/j/executions/j-abc", "createTime": "2026-01-01T00:00:00Z"},
            "labels": {"a": "b"}
        }));
        assert_eq!(
            v.readiness,
            Readiness::Failed("Image 'x' not found.".into())
        );
        let (name, created) = v.latest_execution.expect("latest");
        assert!(name.ends_with("j-abc") && created.is_some());
        let v = j.view(
            "j",
            &json!({"terminalCondition": {"type": "Ready", "state": "CONDITION_SUCCEEDED"}}),
        );
        assert_eq!(v.readiness, Readiness::Ready);
        assert_eq!(j.view("j", &json!({})).readiness, Readiness::Pending);
    }

    #[test]
    fn v1_views_read_conditions() {
        let j = jobs(PoolKind::V1);
        let v = j.view("j", &json!({"metadata": {"labels": {"x": "y"}}, "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "latestCreatedExecution": {"name": "j-xyz", "creationTimestamp": "2026-01-01T00:00:00Z"}
        }}));
        assert_eq!(v.readiness, Readiness::Ready);
        assert_eq!(v.latest_execution.map(|l| l.0), Some("j-xyz".into()));
        assert_eq!(v.labels.get("x"), Some(&json!("y")));
        let v = j.view("j", &json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "ContainerMissing"}]}}));
        assert_eq!(v.readiness, Readiness::Failed("ContainerMissing".into()));
    }

    #[test]
    fn paths_follow_the_discovery_documents() {
        let v2 = jobs(PoolKind::V2);
        assert_eq!(v2.jobs_path(), "v2/projects/p/locations/europe-west1/jobs");
        assert_eq!(
            v2.execution_path("projects/p/locations/r/jobs/j/executions/e")
                .expect("path"),
            "v2/projects/p/locations/r/jobs/j/executions/e"
        );
        assert!(v2.execution_path("../x").is_err());
        let v1 = jobs(PoolKind::V1);
        assert_eq!(
            v1.jobs_path(),
            "apis/run.googleapis.com/v1/namespaces/p/jobs"
        );
        assert_eq!(
            v1.execution_path("e/x").expect("path"),
            "apis/run.googleapis.com/v1/namespaces/p/executions/e%2Fx"
        );
        assert!(RunJobs::new(v1.http.clone(), PoolKind::V1, "p", "not a region").is_err());
    }
}
