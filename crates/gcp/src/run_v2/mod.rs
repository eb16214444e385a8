//! Cloud Run Admin API v2 (`run.googleapis.com`, discovery document `run.v2.json`): services,
//! jobs, executions, worker pools and their long-running operations.

mod types;
mod worker_pools;

use std::time::Duration;

use bootstrap_ids::{ProjectId, Region, RunJobName, RunServiceName};
use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use types::*;
pub use worker_pools::*;

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, list_all, resource_path, seg};
use crate::operations::{self, Operation};

fn location(project: &ProjectId, region: &Region) -> String {
    format!(
        "v2/projects/{}/locations/{}",
        seg(project.as_str()),
        seg(region.as_str())
    )
}

fn service_path(project: &ProjectId, region: &Region, service: &RunServiceName) -> String {
    format!(
        "{}/services/{}",
        location(project, region),
        seg(service.as_str())
    )
}

fn job_path(project: &ProjectId, region: &Region, job: &RunJobName) -> String {
    format!("{}/jobs/{}", location(project, region), seg(job.as_str()))
}

/// The full resource name of a service, as the API writes it.
pub fn service_name(project: &ProjectId, region: &Region, service: &RunServiceName) -> String {
    format!("projects/{project}/locations/{region}/services/{service}")
}

/// The full resource name of a job, as the API writes it.
pub fn job_name(project: &ProjectId, region: &Region, job: &RunJobName) -> String {
    format!("projects/{project}/locations/{region}/jobs/{job}")
}

/// Checks that `name` is an execution name (`projects/../locations/../jobs/../executions/..`).
fn execution_path(name: &str) -> Result<String, GcpError> {
    let parts: Vec<&str> = name.split('/').collect();
    let shape_ok = parts.len() == 8
        && parts[0] == "projects"
        && parts[2] == "locations"
        && parts[4] == "jobs"
        && parts[6] == "executions";
    if !shape_ok {
        return Err(GcpError::Config(format!(
            "`{name}` is not a Cloud Run execution name (projects/P/locations/R/jobs/J/executions/E)"
        )));
    }
    Ok(format!("v2/{}", resource_path(name)?))
}

// ---- services ----

/// Reads a service; `None` if it does not exist.
pub async fn get_service(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    service: &RunServiceName,
) -> Result<Option<Service>, GcpError> {
    let call = Call::new(
        "run.projects.locations.services.get",
        Method::GET,
        Api::RunV2,
        service_path(project, region, service),
    );
    http.send(call).await.optional()
}

/// Lists the services of a region.
pub async fn list_services(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
) -> Result<Vec<Service>, GcpError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        #[serde(default)]
        services: Vec<Service>,
        next_page_token: Option<String>,
    }
    let call = Call::new(
        "run.projects.locations.services.list",
        Method::GET,
        Api::RunV2,
        format!("{}/services", location(project, region)),
    )
    .query("pageSize", "100");
    list_all(http, call, "pageToken", |p: Page| {
        (p.services, p.next_page_token)
    })
    .await
}

/// Starts creating a service (`serviceId` = `service`). An existing one gives
/// [`GcpError::AlreadyExists`]; prefer [`patch_service`] with `allow_missing` to converge.
pub async fn create_service(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    service: &RunServiceName,
    spec: &Service,
    validate_only: bool,
) -> Result<Operation, GcpError> {
    let mut body = spec.clone();
    body.name = None;
    let mut call = Call::new(
        "run.projects.locations.services.create",
        Method::POST,
        Api::RunV2,
        format!("{}/services", location(project, region)),
    )
    .query("serviceId", service.as_str())
    .body(to_body(&body)?);
    if validate_only {
        call = call.query("validateOnly", "true").idempotent();
    }
    http.send(call).await
}

/// Starts replacing a service's spec; with `allow_missing` it creates the service if absent,
/// which makes it the converging write after a half-failed create. Idempotent: it states the
/// whole desired spec.
pub async fn patch_service(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    service: &RunServiceName,
    spec: &Service,
    allow_missing: bool,
    validate_only: bool,
) -> Result<Operation, GcpError> {
    let mut body = spec.clone();
    body.name = Some(service_name(project, region, service));
    let mut call = Call::new(
        "run.projects.locations.services.patch",
        Method::PATCH,
        Api::RunV2,
        service_path(project, region, service),
    )
    .body(to_body(&body)?)
    .idempotent()
    .retry_conflicts();
    if allow_missing {
        call = call.query("allowMissing", "true");
    }
    if validate_only {
        call = call.query("validateOnly", "true");
    }
    http.send(call).await
}

/// Starts deleting a service; `None` if it was already gone.
pub async fn delete_service(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    service: &RunServiceName,
) -> Result<Option<Operation>, GcpError> {
    let call = Call::new(
        "run.projects.locations.services.delete",
        Method::DELETE,
        Api::RunV2,
        service_path(project, region, service),
    )
    .retry_conflicts();
    http.send(call).await.optional()
}

// ---- jobs ----

/// Starts creating a job (`jobId` = `job`). An existing one gives
/// [`GcpError::AlreadyExists`]: a resubmission should then [`get_job`] and reuse it.
pub async fn create_job(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    job: &RunJobName,
    spec: &Job,
) -> Result<Operation, GcpError> {
    let mut body = spec.clone();
    body.name = None;
    let call = Call::new(
        "run.projects.locations.jobs.create",
        Method::POST,
        Api::RunV2,
        format!("{}/jobs", location(project, region)),
    )
    .query("jobId", job.as_str())
    .body(to_body(&body)?)
    // A repeated create is harmless: the second one answers ALREADY_EXISTS, which the caller
    // adopts (get_job) instead of failing.
    .idempotent();
    http.send(call).await
}

/// Reads a job; `None` if it does not exist.
pub async fn get_job(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    job: &RunJobName,
) -> Result<Option<Job>, GcpError> {
    let call = Call::new(
        "run.projects.locations.jobs.get",
        Method::GET,
        Api::RunV2,
        job_path(project, region, job),
    );
    http.send(call).await.optional()
}

/// Lists the jobs of a region.
pub async fn list_jobs(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
) -> Result<Vec<Job>, GcpError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        #[serde(default)]
        jobs: Vec<Job>,
        next_page_token: Option<String>,
    }
    let call = Call::new(
        "run.projects.locations.jobs.list",
        Method::GET,
        Api::RunV2,
        format!("{}/jobs", location(project, region)),
    )
    .query("pageSize", "100");
    list_all(http, call, "pageToken", |p: Page| {
        (p.jobs, p.next_page_token)
    })
    .await
}

/// Starts deleting a job; `None` if it was already gone.
pub async fn delete_job(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    job: &RunJobName,
) -> Result<Option<Operation>, GcpError> {
    let call = Call::new(
        "run.projects.locations.jobs.delete",
        Method::DELETE,
        Api::RunV2,
        job_path(project, region, job),
    )
    .retry_conflicts();
    http.send(call).await.optional()
}

/// Starts an execution. The operation's metadata is the [`Execution`] (see
/// [`Operation::metadata_as`]). Not retried once the server may have acted: a repeat would
/// start a second execution.
pub async fn run_job(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    job: &RunJobName,
    request: &RunJobRequest,
) -> Result<Operation, GcpError> {
    let call = Call::new(
        "run.projects.locations.jobs.run",
        Method::POST,
        Api::RunV2,
        format!("{}:run", job_path(project, region, job)),
    )
    .body(to_body(request)?);
    http.send(call).await
}

// ---- executions ----

/// Reads an execution by its full name; `None` if it does not exist.
pub async fn get_execution(http: &GcpHttp, name: &str) -> Result<Option<Execution>, GcpError> {
    let call = Call::new(
        "run.projects.locations.jobs.executions.get",
        Method::GET,
        Api::RunV2,
        execution_path(name)?,
    );
    http.send(call).await.optional()
}

/// Lists a job's executions.
pub async fn list_executions(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    job: &RunJobName,
) -> Result<Vec<Execution>, GcpError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Page {
        #[serde(default)]
        executions: Vec<Execution>,
        next_page_token: Option<String>,
    }
    let call = Call::new(
        "run.projects.locations.jobs.executions.list",
        Method::GET,
        Api::RunV2,
        format!("{}/executions", job_path(project, region, job)),
    )
    .query("pageSize", "100");
    list_all(http, call, "pageToken", |p: Page| {
        (p.executions, p.next_page_token)
    })
    .await
}

/// Starts deleting an execution; `None` if it was already gone.
pub async fn delete_execution(http: &GcpHttp, name: &str) -> Result<Option<Operation>, GcpError> {
    let call = Call::new(
        "run.projects.locations.jobs.executions.delete",
        Method::DELETE,
        Api::RunV2,
        execution_path(name)?,
    );
    http.send(call).await.optional()
}

/// Starts cancelling a running execution (repeating a cancel is harmless).
pub async fn cancel_execution(http: &GcpHttp, name: &str) -> Result<Operation, GcpError> {
    let call = Call::new(
        "run.projects.locations.jobs.executions.cancel",
        Method::POST,
        Api::RunV2,
        format!("{}:cancel", execution_path(name)?),
    )
    .body(serde_json::json!({}))
    .idempotent();
    http.send(call).await
}

// ---- operations ----

/// Reads a Cloud Run operation by name (`projects/P/locations/R/operations/O`).
pub async fn get_operation(http: &GcpHttp, name: &str) -> Result<Operation, GcpError> {
    operations::get(http, Api::RunV2, "v2", name).await
}

/// Polls a Cloud Run operation until done or `deadline`; returns its response (for service
/// and job writes, the resource).
pub async fn wait_operation(
    http: &GcpHttp,
    op: Operation,
    deadline: Duration,
) -> Result<Value, GcpError> {
    operations::wait(http, Api::RunV2, "v2", op, deadline).await
}

/// [`wait_operation`], decoding the response (e.g. as [`Service`] or [`Job`]).
pub async fn wait_operation_as<T: DeserializeOwned>(
    http: &GcpHttp,
    op: Operation,
    deadline: Duration,
) -> Result<T, GcpError> {
    operations::wait_as(http, Api::RunV2, "v2", op, deadline).await
}

fn to_body<T: serde::Serialize>(value: &T) -> Result<Value, GcpError> {
    serde_json::to_value(value)
        .map_err(|e| GcpError::Config(format!("cannot encode a request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let p = ProjectId::parse("my-project").unwrap();
        let r = Region::parse("us-central1").unwrap();
        let s = RunServiceName::parse("prefect-worker").unwrap();
        assert_eq!(
            service_path(&p, &r, &s),
            "v2/projects/my-project/locations/us-central1/services/prefect-worker"
        );
        assert_eq!(
            service_name(&p, &r, &s),
            "projects/my-project/locations/us-central1/services/prefect-worker"
        );
        assert_eq!(
            execution_path("projects/p/locations/r/jobs/j/executions/e-1").unwrap(),
            "v2/projects/p/locations/r/jobs/j/executions/e-1"
        );
        assert!(execution_path("projects/p/locations/r/jobs/j").is_err());
        assert!(execution_path("projects/p/locations/r/jobs/../executions/e").is_err());
    }
}
