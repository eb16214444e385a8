//! Reading and writing the worker's Cloud Run worker pool, and the wait for its worker to be
//! ONLINE in Prefect that makes the move from the worker service safe.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use bootstrap_gcp::{GcpError, run_v2};
use bootstrap_spec::ids::{PrefectName, ProjectId, Region, RunWorkerPoolName};
use bootstrap_spec::{Spec, WorkerKind};
use rand::Rng as _;
use serde_json::Value;

use super::context::Context;
use super::exec::{GRANT_PROPAGATION, OPERATION_DEADLINE, not_yet_propagated};

/// How long a new pool's worker may take to come ONLINE: the guide's Python worker installs
/// prefect-gcp at start (`--install-policy always`), which takes tens of seconds.
pub const ONLINE_DEADLINE: Duration = Duration::from_secs(300);

/// How an upsert is carried out (from the planned op).
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub count_only: bool,
    pub wait_online: bool,
    /// This apply granted IAM roles: denials they will lift are retried for a while.
    pub granted: bool,
}

/// The worker pool of a `kind: worker-pool` plan, `None` when absent or for other plans.
pub async fn observe(ctx: &Context, spec: &Spec) -> Result<Option<Value>> {
    let Some(worker) = spec
        .worker
        .as_ref()
        .filter(|w| w.kind == WorkerKind::WorkerPool)
    else {
        return Ok(None);
    };
    let pool = worker.pool_name();
    let live =
        match run_v2::get_worker_pool(&ctx.gcp, &spec.gcp.project, &spec.gcp.region, &pool).await {
            Err(GcpError::ServiceDisabled { .. }) => None,
            other => other.with_context(|| {
                format!(
                    "reading Cloud Run worker pool {pool} in {}",
                    spec.gcp.region
                )
            })?,
        };
    live.map(|p| serde_json::to_value(p).context("re-encoding the worker pool"))
        .transpose()
}

/// Creates or updates the pool (PATCH, `allowMissing`), waits for its operation, and with
/// `wait_online` for a new worker of the work pool to be ONLINE.
pub async fn upsert(
    ctx: &Context,
    (project, region): (&ProjectId, &Region),
    work_pool: &PrefectName,
    pool: &RunWorkerPoolName,
    wanted: &run_v2::WorkerPool,
    change: Change,
) -> Result<()> {
    let (name, work_pool) = (pool, work_pool.as_str());
    let before = if change.wait_online {
        online_workers(ctx, work_pool)
            .await
            .with_context(|| format!("reading the workers of work pool {work_pool}"))?
    } else {
        BTreeSet::new()
    };
    let update = if change.count_only {
        run_v2::PoolUpdate::InstanceCount
    } else {
        run_v2::PoolUpdate::Whole
    };
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_secs(2);
    loop {
        let result = async {
            let op =
                run_v2::patch_worker_pool(&ctx.gcp, project, region, pool, wanted, update, true)
                    .await?;
            run_v2::wait_worker_pool(&ctx.gcp, op, OPERATION_DEADLINE).await
        }
        .await;
        match result {
            Ok(_) => break,
            // Our own grants of a moment ago may not have reached Cloud Run yet.
            Err(e)
                if change.granted
                    && not_yet_propagated(&e)
                    && started.elapsed() + delay < GRANT_PROPAGATION =>
            {
                tracing::warn!(
                    "waiting for this apply's IAM grants to reach Cloud Run (giving up after \
                     {}s): {e}",
                    GRANT_PROPAGATION.as_secs()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(20));
            }
            Err(e) => {
                return Err(anyhow!(e)).with_context(|| {
                    format!("deploying Cloud Run worker pool {name} in {region}")
                });
            }
        }
    }
    if change.wait_online {
        let worker = wait_new_online(ctx, work_pool, &before, ONLINE_DEADLINE)
            .await
            .with_context(|| {
                format!(
                    "waiting for worker pool {name}'s worker to be ONLINE in work pool {work_pool}"
                )
            })?;
        tracing::info!("worker {worker} of worker pool {name} is ONLINE in work pool {work_pool}");
    }
    Ok(())
}

/// Deletes the pool and waits until its instances are gone; `false` if it was already gone.
pub async fn delete(
    ctx: &Context,
    (project, region): (&ProjectId, &Region),
    name: &RunWorkerPoolName,
) -> Result<bool> {
    match run_v2::delete_worker_pool(&ctx.gcp, project, region, name)
        .await
        .with_context(|| format!("deleting Cloud Run worker pool {name}"))?
    {
        None => Ok(false),
        Some(op) => {
            run_v2::wait_operation(&ctx.gcp, op, OPERATION_DEADLINE)
                .await
                .with_context(|| format!("deleting Cloud Run worker pool {name}"))?;
            Ok(true)
        }
    }
}

/// Names of the work pool's workers whose status is ONLINE.
pub async fn online_workers(ctx: &Context, work_pool: &str) -> Result<BTreeSet<String>> {
    let workers = ctx.prefect.workers(work_pool).await?;
    Ok(online_names(&workers))
}

fn online_names(workers: &[Value]) -> BTreeSet<String> {
    workers
        .iter()
        .filter(|w| w.get("status").and_then(Value::as_str) == Some("ONLINE"))
        .filter_map(|w| w.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Polls the work pool's workers (backoff with jitter, bounded by `deadline`) until one that
/// was not ONLINE before is ONLINE; returns its name.
async fn wait_new_online(
    ctx: &Context,
    work_pool: &str,
    before: &BTreeSet<String>,
    deadline: Duration,
) -> Result<String> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match online_workers(ctx, work_pool).await {
            Ok(now) => {
                if let Some(new) = now.difference(before).next() {
                    return Ok(new.clone());
                }
            }
            Err(e) => tracing::warn!("reading the workers of work pool {work_pool}: {e:#}"),
        }
        if started.elapsed() >= deadline {
            bail!(
                "no new worker came ONLINE within {}s (the worker service, if any, was kept); \
                 see the pool's logs: `gcloud beta run worker-pools logs read` or the sandbox's \
                 /_sandbox/logs",
                deadline.as_secs()
            );
        }
        let jitter = rand::rng().random_range(0..=delay.as_millis() as u64 / 2);
        tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_online_workers_count() {
        let workers = serde_json::json!([
            {"name": "a", "status": "ONLINE"},
            {"name": "b", "status": "OFFLINE"},
            {"name": "c"}
        ]);
        let names = online_names(workers.as_array().unwrap());
        assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["a".to_owned()]);
    }
}
