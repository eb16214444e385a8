//! `bootstrap worker --sweep`: delete the finished flow-run jobs of a pool and exit, and the
//! running worker's warning when a region nears Cloud Run's job limit.
//!
//! The worker deletes a run's job when the run ends unless `keep_job` is set, and at start the
//! finished jobs a crashed worker left behind (those carrying [`CLEANUP_LABEL`]). Jobs kept with
//! `keep_job: true` stay: Cloud Run refuses new jobs in a region that holds 1000
//! ([`JOBS_PER_REGION_LIMIT`]), which is how leftovers block every new run
//! (PrefectHQ/prefect#16007, #14525). The sweep deletes every job of the pool (found by its pool
//! label) whose latest execution finished longer ago than a bound, kept or not; running jobs
//! and jobs whose latest execution is younger than the bound are left alone.

use std::time::Duration;

use anyhow::{Context as _, anyhow};
use bootstrap_gcp::run_jobs::{
    JOBS_NEAR_LIMIT, JOBS_PER_REGION_LIMIT, POOL_LABEL, pool_label_value,
};
use bootstrap_prefect::PrefectClient;
use chrono::{DateTime, Utc};

use super::cloudrun::{JobView, RunJobs};
use super::config::{CLEANUP_LABEL, PoolKind};
use super::runtime::{self, WorkerOptions};

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// The region swept.
    pub region: String,
    /// Jobs deleted.
    pub deleted: Vec<String>,
    /// Jobs of the pool kept: running, never run, or finished less than the bound ago.
    pub kept: usize,
    /// Every job of the region (the pool's and others'), against the 1000-job limit.
    pub region_jobs: usize,
}

/// Whether a job's latest execution finished before `cutoff` (a job that never ran, or whose
/// execution is still running or unknown, is not finished).
fn finished_before(finished_at: Option<DateTime<Utc>>, cutoff: DateTime<Utc>) -> bool {
    finished_at.is_some_and(|t| t <= cutoff)
}

/// The warning for a region holding `count` jobs, once it nears the limit.
pub fn near_limit_warning(region: &str, count: usize) -> Option<String> {
    (count >= JOBS_NEAR_LIMIT).then(|| {
        format!(
            "region {region} holds {count} Cloud Run jobs; Cloud Run allows {JOBS_PER_REGION_LIMIT} \
             per region (https://cloud.google.com/run/quotas#cloud_run_jobs_limits) and refuses \
             new runs beyond that: delete finished jobs with `bootstrap worker --sweep`"
        )
    })
}

/// Deletes the pool's flow-run jobs whose latest execution finished at least `older_than` ago,
/// in the region of the pool's default job template, with the pool's default credentials.
pub async fn sweep(
    client: PrefectClient,
    opts: WorkerOptions,
    older_than: Duration,
) -> anyhow::Result<Swept> {
    let pool = client
        .work_pool(&opts.pool)
        .await
        .context("reading the work pool")?
        .ok_or_else(|| anyhow!("work pool `{}` does not exist", opts.pool))?;
    let kind = PoolKind::from_pool_type(&pool.pool_type).ok_or_else(|| {
        anyhow!(
            "work pool `{}` has type `{}`; only `cloud-run-v2` and `cloud-run` pools have Cloud Run jobs",
            pool.name,
            pool.pool_type
        )
    })?;
    let pool_name = opts.pool.clone();
    let ctx = runtime::detached(client, opts);
    let jobs = runtime::pool_jobs(&ctx, kind, &pool.base_job_template)
        .await
        .context("connecting to Cloud Run with the pool's default credentials and region")?;
    let cutoff = Utc::now()
        - chrono::Duration::from_std(older_than).context("--sweep-older-than is too large")?;
    sweep_jobs(&jobs, &pool_name, cutoff).await
}

async fn sweep_jobs(jobs: &RunJobs, pool: &str, cutoff: DateTime<Utc>) -> anyhow::Result<Swept> {
    let listed = jobs
        .jobs_labelled(POOL_LABEL, &pool_label_value(pool))
        .await
        .with_context(|| format!("listing the jobs of pool `{pool}` in {}", jobs.region()))?;
    let mut out = Swept {
        region: jobs.region().to_string(),
        ..Swept::default()
    };
    for job in listed {
        if finished_before(latest_finish(jobs, &job).await?, cutoff) {
            jobs.delete(&job.name)
                .await
                .with_context(|| format!("deleting job {}", job.name))?;
            tracing::info!(
                job = job.name,
                kept_by_keep_job = !job.labels.contains_key(CLEANUP_LABEL),
                "deleted a finished flow-run job"
            );
            out.deleted.push(job.name);
        } else {
            out.kept += 1;
        }
    }
    out.region_jobs = jobs
        .all_jobs()
        .await
        .with_context(|| format!("counting the jobs in {}", jobs.region()))?
        .len();
    Ok(out)
}

/// When the job's latest execution finished (`None`: never ran, still running, or gone).
async fn latest_finish(jobs: &RunJobs, job: &JobView) -> anyhow::Result<Option<DateTime<Utc>>> {
    let Some((execution, _)) = &job.latest_execution else {
        return Ok(None);
    };
    let view = jobs
        .execution(execution)
        .await
        .with_context(|| format!("reading execution {execution}"))?;
    Ok(view.filter(|v| v.done).and_then(|v| v.completed_at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_executions_finished_before_the_cutoff_are_swept() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        assert!(finished_before(Some(now - hour * 2), now - hour));
        assert!(!finished_before(Some(now), now - hour));
        assert!(!finished_before(None, now - hour), "running or never run");
    }

    #[test]
    fn the_warning_starts_near_the_limit_and_cites_the_quota() {
        assert!(near_limit_warning("us-central1", JOBS_NEAR_LIMIT - 1).is_none());
        let w = near_limit_warning("us-central1", 950).expect("warning");
        assert!(
            w.contains("950") && w.contains("1000") && w.contains("run/quotas"),
            "{w}"
        );
    }

    #[test]
    fn the_pool_label_is_the_one_the_worker_writes() {
        for pool in ["my-cloud-run-pool", "My Pool.v2", &"x".repeat(90)] {
            let written = super::super::config::sanitize_labels(&serde_json::Map::from_iter([(
                "prefect.io/work-pool-name".to_string(),
                serde_json::Value::String(pool.to_string()),
            )]));
            assert_eq!(
                written.get(POOL_LABEL).and_then(|v| v.as_str()),
                Some(pool_label_value(pool).as_str()),
                "{pool}"
            );
        }
    }
}
