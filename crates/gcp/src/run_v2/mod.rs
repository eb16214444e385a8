//! Cloud Run Admin API v2 (`run.googleapis.com`, discovery document `run.v2.json`): services,
//! jobs, executions, worker pools and their long-running operations.

mod types;
mod worker_pools;

use std::time::Duration;

use bootstrap_ids::{ProjectId, Region, RunJobName, RunServiceName};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use types::*;
pub use worker_pools::*;

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, list_pages, resource_path, seg};
use crate::operations::{self, Operation};

fn location(project: &ProjectId, region: &Region) -> String {
    format!(
        "v2/projects/{}/locations/{}",
        seg(project.as_str()),
        seg(region.as_str())
    )
}

/// A top-level Cloud Run v2 resource: a [`Service`], a [`Job`] or a [`WorkerPool`]. They sit
/// in a collection under `projects/{p}/locations/{r}` and have the same get, create, patch and
/// delete RPCs (run.v2.json, method ids `run.projects.locations.<collection>.<verb>`); only the
/// collection and the query parameter that names a new one differ, and those are this trait's
/// constants. One implementation of each RPC below serves all three.
pub trait Resource: Serialize + DeserializeOwned + Clone {
    /// The collection's path segment (`services`, `jobs`, `workerPools`).
    const COLLECTION: &'static str;
    /// The create call's id parameter (`serviceId`, `jobId`, `workerPoolId`).
    const ID_PARAM: &'static str;
    /// Sets the body's `name` (the full resource name; a create must leave it out).
    fn set_name(&mut self, name: Option<String>);
}

/// The id type that names one kind of [`Resource`] (`RunServiceName` names a [`Service`]), so
/// that `get(http, project, region, &service)` knows what it reads.
pub trait ResourceId: AsRef<str> + std::fmt::Display {
    type Resource: Resource;
}

/// Implements [`Resource`] for a type declared with `run_v2_resource!` and [`ResourceId`] for
/// its id type.
macro_rules! run_v2_kind {
    ($resource:ty, $id:ty, $collection:literal, $id_param:literal) => {
        impl $crate::run_v2::Resource for $resource {
            const COLLECTION: &'static str = $collection;
            const ID_PARAM: &'static str = $id_param;
            fn set_name(&mut self, name: Option<String>) {
                self.name = name;
            }
        }
        impl $crate::run_v2::ResourceId for $id {
            type Resource = $resource;
        }
    };
}
pub(crate) use run_v2_kind;

run_v2_kind!(Service, RunServiceName, "services", "serviceId");
run_v2_kind!(Job, RunJobName, "jobs", "jobId");

/// A call of run.v2.json's `run.projects.locations.<collection>.<verb>` (the method id the
/// call log and errors name) to `path`.
fn rpc(collection: &str, verb: &str, method: Method, path: String) -> Call {
    let name = format!("run.projects.locations.{collection}.{verb}");
    Call::new(name, method, Api::RunV2, path)
}

fn collection_path<R: Resource>(project: &ProjectId, region: &Region) -> String {
    format!("{}/{}", location(project, region), R::COLLECTION)
}

pub(crate) fn resource_path_of<I: ResourceId>(
    project: &ProjectId,
    region: &Region,
    id: &I,
) -> String {
    format!(
        "{}/{}",
        collection_path::<I::Resource>(project, region),
        seg(id.as_ref())
    )
}

fn job_path(project: &ProjectId, region: &Region, job: &RunJobName) -> String {
    resource_path_of(project, region, job)
}

/// The full resource name (`projects/{p}/locations/{r}/<collection>/{id}`), as the API
/// writes it.
pub fn full_name<I: ResourceId>(project: &ProjectId, region: &Region, id: &I) -> String {
    let collection = I::Resource::COLLECTION;
    format!("projects/{project}/locations/{region}/{collection}/{id}")
}

/// The full resource name of a service, as the API writes it.
pub fn service_name(project: &ProjectId, region: &Region, service: &RunServiceName) -> String {
    full_name(project, region, service)
}

/// The full resource name of a job, as the API writes it.
pub fn job_name(project: &ProjectId, region: &Region, job: &RunJobName) -> String {
    full_name(project, region, job)
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

// ---- services, jobs and worker pools ----

// The names callers know them by: `get_service(http, project, region, &service)` is
// `get::<RunServiceName>`.
pub use self::{
    create as create_service, create as create_worker_pool, delete as delete_job,
    delete as delete_service, delete as delete_worker_pool, get as get_job, get as get_service,
    get as get_worker_pool,
};

/// Reads a service, job or worker pool; `None` if it does not exist.
pub async fn get<I: ResourceId>(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    id: &I,
) -> Result<Option<I::Resource>, GcpError> {
    let call = rpc(
        I::Resource::COLLECTION,
        "get",
        Method::GET,
        resource_path_of(project, region, id),
    );
    http.send(call).await.optional()
}

/// Starts creating a service, job or worker pool named `id`. An existing one gives
/// [`GcpError::AlreadyExists`]: a job's caller then reads and reuses it ([`get`]); for a
/// service or a pool prefer [`patch`] with `allow_missing`, which converges. That is also why
/// a repeated create is harmless, and so retried: the repeat answers ALREADY_EXISTS.
pub async fn create<I: ResourceId>(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    id: &I,
    spec: &I::Resource,
    validate_only: bool,
) -> Result<Operation, GcpError> {
    let mut body = spec.clone();
    body.set_name(None);
    let mut call = rpc(
        I::Resource::COLLECTION,
        "create",
        Method::POST,
        collection_path::<I::Resource>(project, region),
    )
    .query(I::Resource::ID_PARAM, id.as_ref())
    .body(to_body(&body)?)
    .idempotent();
    if validate_only {
        call = call.query("validateOnly", "true");
    }
    http.send(call).await
}

/// How a [`patch`] writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Patch {
    /// `updateMask`: only these fields; `None` writes the whole spec.
    pub update_mask: Option<&'static str>,
    /// `allowMissing`: create the resource if absent (the converging write after a
    /// half-failed create).
    pub allow_missing: bool,
    /// `validateOnly`: check the request, change nothing.
    pub validate_only: bool,
}

/// Starts replacing a service's, job's or worker pool's spec. Idempotent: it states the
/// desired fields.
pub async fn patch<I: ResourceId>(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    id: &I,
    spec: &I::Resource,
    how: Patch,
) -> Result<Operation, GcpError> {
    let mut body = spec.clone();
    body.set_name(Some(full_name(project, region, id)));
    let mut call = rpc(
        I::Resource::COLLECTION,
        "patch",
        Method::PATCH,
        resource_path_of(project, region, id),
    )
    .body(to_body(&body)?)
    .idempotent()
    .retry_conflicts();
    if let Some(mask) = how.update_mask {
        call = call.query("updateMask", mask);
    }
    if how.allow_missing {
        call = call.query("allowMissing", "true");
    }
    if how.validate_only {
        call = call.query("validateOnly", "true");
    }
    http.send(call).await
}

/// Starts deleting a service, job or worker pool; `None` if it was already gone.
pub async fn delete<I: ResourceId>(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    id: &I,
) -> Result<Option<Operation>, GcpError> {
    let call = rpc(
        I::Resource::COLLECTION,
        "delete",
        Method::DELETE,
        resource_path_of(project, region, id),
    )
    .retry_conflicts();
    http.send(call).await.optional()
}

/// Starts replacing a service's spec; with `allow_missing` it creates the service if absent.
pub async fn patch_service(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    service: &RunServiceName,
    spec: &Service,
    allow_missing: bool,
    validate_only: bool,
) -> Result<Operation, GcpError> {
    let how = Patch {
        update_mask: None,
        allow_missing,
        validate_only,
    };
    patch(http, project, region, service, spec, how).await
}

/// Lists the jobs of a region.
pub async fn list_jobs(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
) -> Result<Vec<Job>, GcpError> {
    let call = rpc(
        "jobs",
        "list",
        Method::GET,
        collection_path::<Job>(project, region),
    )
    .query("pageSize", "100");
    list_pages(http, call, "jobs").await
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
    let call = rpc(
        "jobs",
        "run",
        Method::POST,
        format!("{}:run", job_path(project, region, job)),
    )
    .body(to_body(request)?);
    http.send(call).await
}

// ---- executions ----

/// Reads an execution by its full name; `None` if it does not exist.
pub async fn get_execution(http: &GcpHttp, name: &str) -> Result<Option<Execution>, GcpError> {
    let call = rpc("jobs.executions", "get", Method::GET, execution_path(name)?);
    http.send(call).await.optional()
}

/// Lists a job's executions.
pub async fn list_executions(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    job: &RunJobName,
) -> Result<Vec<Execution>, GcpError> {
    let call = rpc(
        "jobs.executions",
        "list",
        Method::GET,
        format!("{}/executions", job_path(project, region, job)),
    )
    .query("pageSize", "100");
    list_pages(http, call, "executions").await
}

/// Starts deleting an execution; `None` if it was already gone.
pub async fn delete_execution(http: &GcpHttp, name: &str) -> Result<Option<Operation>, GcpError> {
    let call = rpc(
        "jobs.executions",
        "delete",
        Method::DELETE,
        execution_path(name)?,
    );
    http.send(call).await.optional()
}

/// Starts cancelling a running execution (repeating a cancel is harmless).
pub async fn cancel_execution(http: &GcpHttp, name: &str) -> Result<Operation, GcpError> {
    let call = rpc(
        "jobs.executions",
        "cancel",
        Method::POST,
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
    use bootstrap_ids::RunWorkerPoolName;

    #[test]
    fn names_and_paths() {
        let p = ProjectId::parse("my-project").unwrap();
        let r = Region::parse("us-central1").unwrap();
        let s = RunServiceName::parse("prefect-worker").unwrap();
        assert_eq!(
            resource_path_of(&p, &r, &s),
            "v2/projects/my-project/locations/us-central1/services/prefect-worker"
        );
        assert_eq!(
            service_name(&p, &r, &s),
            "projects/my-project/locations/us-central1/services/prefect-worker"
        );
        // Each kind: its collection, its create id parameter, run.v2.json's method ids.
        let pool = RunWorkerPoolName::from(&s);
        assert_eq!(
            full_name(&p, &r, &pool),
            "projects/my-project/locations/us-central1/workerPools/prefect-worker"
        );
        assert_eq!(
            collection_path::<Job>(&p, &r),
            "v2/projects/my-project/locations/us-central1/jobs"
        );
        let call = rpc(
            WorkerPool::COLLECTION,
            "patch",
            Method::PATCH,
            String::new(),
        );
        assert_eq!(call.name, "run.projects.locations.workerPools.patch");
        assert_eq!(
            [Service::ID_PARAM, Job::ID_PARAM, WorkerPool::ID_PARAM],
            ["serviceId", "jobId", "workerPoolId"]
        );
        assert_eq!(
            execution_path("projects/p/locations/r/jobs/j/executions/e-1").unwrap(),
            "v2/projects/p/locations/r/jobs/j/executions/e-1"
        );
        assert!(execution_path("projects/p/locations/r/jobs/j").is_err());
        assert!(execution_path("projects/p/locations/r/jobs/../executions/e").is_err());
    }
}
