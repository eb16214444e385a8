//! The Cloud Run jobs of flow runs: which Cloud Run API a pool type uses, and the names the
//! worker holds as strings (from templates and `infrastructure_pid`) checked into typed ids.
//! The requests themselves (paths, method ids, paging, operations) are `bootstrap_gcp`'s
//! [`bootstrap_gcp::run_jobs`], the one Cloud Run jobs client of the workspace.

use bootstrap_gcp::operations::Operation;
use bootstrap_gcp::run_jobs::{Jobs, JobsApi};
use bootstrap_gcp::{GcpError, GcpHttp};
use bootstrap_ids::{ProjectId, Region, RunJobName};
use serde_json::Value;

pub use bootstrap_gcp::run_jobs::{Created, ExecutionView, JobView, Readiness};

use super::config::PoolKind;

/// The Cloud Run API of a pool type: `cloud-run-v2` is Cloud Run Admin v2, `cloud-run` v1.
pub fn api(kind: PoolKind) -> JobsApi {
    match kind {
        PoolKind::V2 => JobsApi::V2,
        PoolKind::V1 => JobsApi::V1,
    }
}

/// The jobs API of one project and region, for one pool type.
#[derive(Debug, Clone)]
pub struct RunJobs {
    jobs: Jobs,
}

/// `None` for a name Cloud Run cannot hold: no such job can exist.
fn job_name(job: &str) -> Option<RunJobName> {
    RunJobName::parse(job).ok()
}

fn invalid_job(job: &str) -> GcpError {
    let why = RunJobName::parse(job).err().unwrap_or_default();
    GcpError::Config(format!("invalid Cloud Run job name `{job}`: {why}"))
}

impl RunJobs {
    /// A client for `project` / `region`. The region is checked for its form only (issue
    /// #17): a region Google does not serve is Google's own 404, reported on the run.
    pub fn new(
        http: GcpHttp,
        kind: PoolKind,
        project: &str,
        region: &str,
    ) -> Result<Self, GcpError> {
        let project = ProjectId::parse(project)
            .map_err(|e| GcpError::Config(format!("invalid project `{project}`: {e}")))?;
        // Validated here so that a bad region from a template fails before any call.
        let region = Region::parse(region)
            .map_err(|e| GcpError::Config(format!("invalid region `{region}`: {e}")))?;
        Ok(Self {
            jobs: Jobs::new(http, api(kind), project, region),
        })
    }

    /// The project.
    pub fn project(&self) -> &str {
        self.jobs.project().as_str()
    }

    /// Creates the job; [`Created::Existing`] when it already exists (ours, from an earlier
    /// attempt).
    pub async fn create(&self, job: &str, body: &Value) -> Result<Created, GcpError> {
        let name = job_name(job).ok_or_else(|| invalid_job(job))?;
        self.jobs.create(&name, body).await
    }

    /// How the create operation ended: `None` while it runs.
    pub async fn create_outcome(
        &self,
        op: &Operation,
    ) -> Result<Option<Result<(), GcpError>>, GcpError> {
        self.jobs.create_outcome(op).await
    }

    /// Reads a job; `None` when it does not exist.
    pub async fn job(&self, job: &str) -> Result<Option<JobView>, GcpError> {
        match job_name(job) {
            Some(name) => self.jobs.job(&name).await,
            None => Ok(None),
        }
    }

    /// Starts an execution and returns its name (not retried once sent).
    pub async fn run(&self, job: &str) -> Result<String, GcpError> {
        let name = job_name(job).ok_or_else(|| invalid_job(job))?;
        self.jobs.run(&name).await
    }

    /// Reads an execution; `None` when it does not exist.
    pub async fn execution(&self, execution: &str) -> Result<Option<ExecutionView>, GcpError> {
        self.jobs.execution(execution).await
    }

    /// Cancels a running execution (harmless when it already finished).
    pub async fn cancel(&self, execution: &str) -> Result<(), GcpError> {
        self.jobs.cancel(execution).await
    }

    /// Deletes the job and (v2) its executions. Already gone is fine.
    pub async fn delete(&self, job: &str) -> Result<(), GcpError> {
        match job_name(job) {
            Some(name) => self.jobs.delete(&name).await,
            None => Ok(()),
        }
    }

    /// The last `lines` lines an execution printed, from Cloud Logging (oldest first).
    pub async fn log_tail(
        &self,
        job: &str,
        execution: &str,
        lines: u32,
    ) -> Result<Vec<bootstrap_gcp::logging::LogLine>, GcpError> {
        self.jobs.log_tail(job, execution, lines).await
    }

    /// The region.
    pub fn region(&self) -> &str {
        self.jobs.region().as_str()
    }

    /// Every job of the project and region, every page.
    pub async fn all_jobs(&self) -> Result<Vec<JobView>, GcpError> {
        self.jobs.all_jobs().await
    }

    /// Jobs carrying `label = value`, every page.
    pub async fn jobs_labelled(&self, label: &str, value: &str) -> Result<Vec<JobView>, GcpError> {
        self.jobs.jobs_labelled(label, value).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn http() -> GcpHttp {
        let tokens = Arc::new(bootstrap_gcp::StaticTokenSource::new(
            "t".to_string().into(),
            None,
        ));
        GcpHttp::new(
            bootstrap_gcp::Endpoints::with_base("http://127.0.0.1:9").expect("endpoint"),
            tokens,
            bootstrap_gcp::RetryPolicy::default(),
        )
        .expect("http")
    }

    #[test]
    fn regions_are_checked_by_form_only() {
        // A region this tool has never heard of is Google's to refuse (issue #17).
        assert!(RunJobs::new(http(), PoolKind::V2, "my-project", "mars-north7").is_ok());
        let err = RunJobs::new(http(), PoolKind::V1, "my-project", "not a region").unwrap_err();
        assert!(
            err.to_string().contains("invalid region `not a region`"),
            "{err}"
        );
        assert!(RunJobs::new(http(), PoolKind::V2, "x", "us-central1").is_err());
    }

    #[tokio::test]
    async fn a_name_cloud_run_cannot_hold_is_no_job() {
        let jobs = RunJobs::new(http(), PoolKind::V2, "my-project", "us-central1").expect("jobs");
        // No request is sent (the endpoint is closed): such a job cannot exist.
        assert!(jobs.job("Not_A_Job").await.expect("read").is_none());
        jobs.delete("Not_A_Job").await.expect("delete");
        let err = jobs.run("Not_A_Job").await.unwrap_err();
        assert!(
            err.to_string().contains("invalid Cloud Run job name"),
            "{err}"
        );
    }
}
