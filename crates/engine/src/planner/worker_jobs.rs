//! The Cloud Run jobs the worker made for the plan's work pool: `destroy` deletes them, as one
//! step with a count (the plan names every job, so apply makes no choice of its own).
//!
//! They are found by the pool label every flow-run job carries
//! ([`bootstrap_gcp::run_jobs::POOL_LABEL`]); jobs kept with `keep_job: true` and those a
//! crashed worker left behind would otherwise stay until Cloud Run's 1000-jobs-per-region
//! limit refuses new runs (PrefectHQ/prefect#16007, #14525).

use bootstrap_gcp::run_jobs::{POOL_LABEL, pool_label_value};

use super::super::plan::{Action, JobsApi, Op, Step, WorkerJob};
use super::{Builder, addr};

/// One delete step for every observed worker job of the pool, after the worker service is gone
/// (a running worker would make new ones) and after the pool (no new runs reach it).
pub(super) fn destroy_worker_jobs(b: &mut Builder) {
    let jobs: Vec<WorkerJob> = b
        .observed
        .worker_jobs
        .iter()
        .flat_map(|w| {
            w.names.iter().map(|n| WorkerJob {
                region: w.region.clone(),
                name: n.clone(),
            })
        })
        .collect();
    if jobs.is_empty() {
        return;
    }
    let pool = b.spec.work_pool.name.to_string();
    let api = b
        .observed
        .worker_jobs
        .first()
        .map_or(JobsApi::V2, |w| w.api);
    let mut candidates = vec![addr::work_pool(b.spec)];
    if let Some(worker) = &b.spec.worker {
        candidates.push(addr::service(worker.service.as_str()));
    }
    let depends_on = b.deps(&candidates);
    b.push(Step {
        depends_on,
        ..Step::new(
            addr::worker_jobs(b.spec),
            Action::Delete,
            Op::DeleteWorkerJobs {
                label: format!("{POOL_LABEL}={}", pool_label_value(&pool)),
                pool,
                api,
                jobs,
            },
        )
    });
}
