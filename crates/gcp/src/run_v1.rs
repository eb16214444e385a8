//! Cloud Run Admin API v1 (Knative style, discovery document `run.v1.json`), for Prefect's
//! `cloud-run` pool type: jobs and executions in namespace = project, on the regional host
//! `{region}-run.googleapis.com`. Writes are synchronous (no operations).

use std::collections::BTreeMap;

use bootstrap_ids::{ProjectId, Region, RunJobName};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, list_all, seg};

/// `ObjectMeta` (the fields the tool uses; the rest kept).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GoogleCloudRunV1Condition`: `status` is `"True"`, `"False"` or `"Unknown"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A v1 resource as the Knative-style API sends it: `apiVersion`, `kind`, `metadata`, a `spec`
/// kept as JSON (a job's is built from Prefect's job template) and a typed `status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<S>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A v1 job (`Job`).
pub type Job = Resource<JobStatus>;

/// `JobStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_execution: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Job {
    /// The `Ready` condition's status (`"True"` once the job can run).
    pub fn ready(&self) -> Option<&str> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.kind == "Ready")?
            .status
            .as_deref()
    }
}

/// A v1 execution (`Execution`).
pub type Execution = Resource<ExecutionStatus>;

/// `ExecutionStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_uri: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Execution {
    /// The `Completed` condition, which says whether and how the execution ended.
    pub fn completed(&self) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.kind == "Completed")
    }

    /// Finished: `Completed` is `True` (succeeded) or `False` (failed or cancelled).
    pub fn is_finished(&self) -> bool {
        self.completed()
            .is_some_and(|c| matches!(c.status.as_deref(), Some("True" | "False")))
    }

    /// Succeeded: `Completed` is `True`.
    pub fn succeeded(&self) -> bool {
        self.completed()
            .is_some_and(|c| c.status.as_deref() == Some("True"))
    }
}

fn namespace(project: &ProjectId) -> String {
    format!(
        "apis/run.googleapis.com/v1/namespaces/{}",
        seg(project.as_str())
    )
}

/// The two collections of a namespace the tool uses. Every call names its method by
/// run.v1.json's id (`run.namespaces.jobs.get`, ...), as the call log and errors show it, and
/// goes to the region's host.
#[derive(Clone, Copy)]
enum Collection {
    Jobs,
    Executions,
}

impl Collection {
    fn segment(self) -> &'static str {
        match self {
            Self::Jobs => "jobs",
            Self::Executions => "executions",
        }
    }

    /// `{namespace}/{collection}`, or `{namespace}/{collection}/{name}` for one item.
    fn path(self, project: &ProjectId, name: Option<&str>) -> String {
        let collection = format!("{}/{}", namespace(project), self.segment());
        match name {
            Some(name) => format!("{collection}/{}", seg(name)),
            None => collection,
        }
    }

    /// A call of `run.namespaces.<collection>.<verb>` to `path`.
    fn call(self, verb: &str, method: Method, region: &Region, path: String) -> Call {
        let name = format!("run.namespaces.{}.{verb}", self.segment());
        Call::new(name, method, Api::RunV1(region.clone()), path)
    }

    /// `None` if it does not exist.
    async fn get<T: serde::de::DeserializeOwned>(
        self,
        http: &GcpHttp,
        region: &Region,
        project: &ProjectId,
        name: &str,
    ) -> Result<Option<T>, GcpError> {
        let path = self.path(project, Some(name));
        http.send(self.call("get", Method::GET, region, path))
            .await
            .optional()
    }

    /// `false` if it was already gone.
    async fn delete(
        self,
        http: &GcpHttp,
        region: &Region,
        project: &ProjectId,
        name: &str,
    ) -> Result<bool, GcpError> {
        let call = self.call(
            "delete",
            Method::DELETE,
            region,
            self.path(project, Some(name)),
        );
        Ok(http.send::<Value>(call).await.optional()?.is_some())
    }
}

/// Creates a job (`metadata.name` names it). An existing one gives
/// [`GcpError::AlreadyExists`].
pub async fn create_job(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    job: &Job,
) -> Result<Job, GcpError> {
    let jobs = Collection::Jobs;
    let call = jobs
        .call("create", Method::POST, region, jobs.path(project, None))
        .body(to_body(job)?)
        // A repeated create is harmless: the second one answers ALREADY_EXISTS (409).
        .idempotent();
    http.send(call).await
}

/// Reads a job; `None` if it does not exist.
pub async fn get_job(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    name: &RunJobName,
) -> Result<Option<Job>, GcpError> {
    Collection::Jobs
        .get(http, region, project, name.as_str())
        .await
}

/// Replaces a job's definition.
pub async fn replace_job(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    name: &RunJobName,
    job: &Job,
) -> Result<Job, GcpError> {
    let jobs = Collection::Jobs;
    let path = jobs.path(project, Some(name.as_str()));
    let call = jobs.call("replaceJob", Method::PUT, region, path);
    http.send(call.body(to_body(job)?)).await
}

/// Lists jobs, optionally filtered by a label selector such as `prefect.io/pool=my-pool`.
pub async fn list_jobs(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    label_selector: Option<&str>,
) -> Result<Vec<Job>, GcpError> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        items: Vec<Job>,
        #[serde(default)]
        metadata: Option<ListMeta>,
    }
    #[derive(Deserialize)]
    struct ListMeta {
        #[serde(rename = "continue")]
        next: Option<String>,
    }
    let jobs = Collection::Jobs;
    let mut call = jobs.call("list", Method::GET, region, jobs.path(project, None));
    if let Some(sel) = label_selector {
        call = call.query("labelSelector", sel);
    }
    list_all(http, call, "continue", |p: Page| {
        Ok((p.items, p.metadata.and_then(|m| m.next)))
    })
    .await
}

/// Deletes a job; `false` if it was already gone.
pub async fn delete_job(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    name: &RunJobName,
) -> Result<bool, GcpError> {
    Collection::Jobs
        .delete(http, region, project, name.as_str())
        .await
}

/// Starts an execution of the job and returns it. `overrides` is a `RunJobRequest.overrides`
/// value. Not retried once the server may have acted (a repeat would start a second one).
pub async fn run_job(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    name: &RunJobName,
    overrides: Option<Value>,
) -> Result<Execution, GcpError> {
    let jobs = Collection::Jobs;
    let path = format!("{}:run", jobs.path(project, Some(name.as_str())));
    let body = match overrides {
        Some(o) => json!({ "overrides": o }),
        None => json!({}),
    };
    http.send(jobs.call("run", Method::POST, region, path).body(body))
        .await
}

/// Reads an execution by its short name (`metadata.name`); `None` if it does not exist.
pub async fn get_execution(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    name: &str,
) -> Result<Option<Execution>, GcpError> {
    Collection::Executions
        .get(http, region, project, name)
        .await
}

/// Deletes an execution; `false` if it was already gone.
pub async fn delete_execution(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    name: &str,
) -> Result<bool, GcpError> {
    Collection::Executions
        .delete(http, region, project, name)
        .await
}

/// Cancels a running execution (repeating a cancel is harmless).
pub async fn cancel_execution(
    http: &GcpHttp,
    region: &Region,
    project: &ProjectId,
    name: &str,
) -> Result<Execution, GcpError> {
    let executions = Collection::Executions;
    let path = format!("{}:cancel", executions.path(project, Some(name)));
    let call = executions.call("cancel", Method::POST, region, path);
    http.send(call.body(json!({})).idempotent()).await
}

fn to_body<T: Serialize>(value: &T) -> Result<Value, GcpError> {
    serde_json::to_value(value)
        .map_err(|e| GcpError::Config(format!("cannot encode a request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_completion() {
        let e: Execution = serde_json::from_value(json!({
            "apiVersion": "run.googleapis.com/v1", "kind": "Execution",
            "metadata": {"name": "job-x-abc", "namespace": "123", "labels": {"run.googleapis.com/job": "job-x"}},
            "status": {"conditions": [
                {"type": "Started", "status": "True"},
                {"type": "Completed", "status": "False", "message": "Task failed"}
            ], "failedCount": 1}
        }))
        .unwrap();
        assert!(e.is_finished());
        assert!(!e.succeeded());
        assert_eq!(
            e.completed().unwrap().message.as_deref(),
            Some("Task failed")
        );
        let running: Execution = serde_json::from_value(json!({
            "metadata": {"name": "e"},
            "status": {"conditions": [{"type": "Completed", "status": "Unknown"}]}
        }))
        .unwrap();
        assert!(!running.is_finished());
    }

    #[test]
    fn calls_name_run_v1_methods_on_the_regional_host() {
        let p = ProjectId::parse("my-project").unwrap();
        let r = Region::parse("europe-west1").unwrap();
        let executions = Collection::Executions;
        let path = executions.path(&p, Some("e-1"));
        let call = executions.call("cancel", Method::POST, &r, path);
        assert_eq!(call.name, "run.namespaces.executions.cancel");
        assert_eq!(call.api, Api::RunV1(r));
        assert_eq!(
            call.path,
            "apis/run.googleapis.com/v1/namespaces/my-project/executions/e-1"
        );
        assert_eq!(
            Collection::Jobs.path(&p, None),
            "apis/run.googleapis.com/v1/namespaces/my-project/jobs"
        );
    }

    #[test]
    fn job_round_trips() {
        let wire = json!({
            "apiVersion": "run.googleapis.com/v1", "kind": "Job",
            "metadata": {"name": "j", "annotations": {"run.googleapis.com/launch-stage": "BETA"}, "selfLink": "/x"},
            "spec": {"template": {"spec": {"template": {"spec": {"containers": [{"image": "i"}]}}}}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}], "executionCount": 2}
        });
        let job: Job = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(job.ready(), Some("True"));
        assert_eq!(serde_json::to_value(&job).unwrap(), wire);
    }
}
