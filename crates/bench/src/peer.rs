//! The embedded worker against its real peer (issues #14 item 6, #20 item 3): prefect-gcp's own
//! Cloud Run worker (`prefect worker start -t cloud-run-v2`, prefect-gcp from the venv,
//! unpatched) and `bootstrap worker`, one after the other on the same pool (made by `bootstrap
//! apply` of the guide with that pool type), the same deployment, the same number of queued
//! runs, in one run of the bench. And the Prefect server's own ceiling for the calls one run
//! needs, so that each worker's throughput can be read as a fraction of what the server allows.
//!
//! prefect-gcp calls `https://run.googleapis.com` (hard-coded in
//! `prefect_gcp/workers/cloud_run_v2.py`, `_get_client`) and Google's OAuth endpoint; it runs
//! inside a network namespace the sandbox made (`POST /_sandbox/netns`, as
//! tests/it/worker/prefect_gcp.rs does), where Google's host names are the sandbox over TLS with
//! its CA trusted. `bootstrap worker` reaches the same sandbox through `BOOTSTRAP_GCP_ENDPOINT`.
//! Each worker runs with its own defaults (prefect-gcp polls every 10 s and prefetches 10 s
//! ahead, PREFECT_WORKER_QUERY_SECONDS / PREFECT_WORKER_PREFETCH_SECONDS); nothing is tuned.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use crate::env::Env;
use crate::worker::{self, Kind, Netns, WorkerFigures};

/// The pool type both workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolType {
    /// `cloud-run-v2` (Cloud Run Admin v2).
    V2,
    /// `cloud-run` (Cloud Run Admin v1, the guide's).
    V1,
}

impl PoolType {
    /// Prefect's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            PoolType::V2 => "cloud-run-v2",
            PoolType::V1 => "cloud-run",
        }
    }
}

/// How many runs of what, and how long to wait.
pub struct Counts {
    /// Pickups timed one by one.
    pub pickups: usize,
    /// Runs queued for each worker's burst.
    pub runs: usize,
    /// Requests in flight tried for the server's ceiling.
    pub ceiling_levels: Vec<usize>,
    /// The longest a burst may run.
    pub deadline: Duration,
    /// Runs per concurrency level of the server ceiling.
    pub ceiling_runs: usize,
}

/// One level of the ceiling measurement.
#[derive(Debug, Clone, Serialize)]
pub struct CeilingLevel {
    /// Requests in flight.
    pub in_flight: usize,
    /// Runs claimed.
    pub runs: usize,
    /// Wall time for all of them, seconds.
    pub seconds: f64,
    /// runs / seconds.
    pub runs_per_second: f64,
    /// The server's CPU seconds per run at this level (when the harness knows its session):
    /// next to a burst's, it shows how much of the server a worker's other calls take.
    pub server_cpu_seconds_per_run: Option<f64>,
}

/// The Prefect server's own ceiling for the calls one run needs, sent by the harness with no
/// worker in between: one `POST /work_pools/{pool}/get_scheduled_flow_runs` per 200 runs (the
/// poll), and per run `POST /flow_runs/{id}/set_state` PENDING (the claim) and `PATCH
/// /flow_runs/{id}` with the infrastructure id. These are what Prefect's worker protocol
/// requires of any worker (`prefect/workers/base.py`: `_get_scheduled_flow_runs`,
/// `_propose_pending_state`, `update_flow_run(infrastructure_pid=...)`); a worker also reads
/// the deployment, flow and block, posts logs and events, which the ceiling leaves out, so no
/// worker can reach it.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// Each concurrency level tried.
    pub levels: Vec<CeilingLevel>,
    /// The best of them, runs/s.
    pub runs_per_second: f64,
}

/// Both workers on one pool type, and the server's ceiling there.
#[derive(Debug, Clone, Serialize)]
pub struct Pair {
    /// `cloud-run-v2` or `cloud-run`.
    pub pool_type: String,
    /// The server's ceiling (`None` when it could not be measured; the workers still are).
    pub ceiling: Option<Ceiling>,
    /// Why the ceiling is missing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ceiling_error: Option<String>,
    /// The server's CPU per call of a run (measured on the v2 pool only: the calls are the
    /// same for both pool types).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls: Option<crate::calls::CallCosts>,
    /// Why the per-call costs are missing (on the v2 pool).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calls_error: Option<String>,
}

/// The guide's plan without its worker service, with this pool type and names of its own.
pub fn plan_text(guide: &str, pool: PoolType, suffix: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in guide.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '#', '-']);
        if top_level {
            skipping = line.starts_with("worker:");
        }
        if skipping {
            continue;
        }
        let line = if line.trim_start().starts_with("type: cloud-run") {
            format!("  type: {}", pool.name())
        } else {
            line.to_string()
        };
        out.push(line);
    }
    let t = pool.name();
    out.join("\n")
        .replace(
            "name: gcp-credentials",
            &format!("name: bench-{t}-creds-{suffix}"),
        )
        .replace(
            "name: my-cloud-run-pool",
            &format!("name: bench-{t}-{suffix}"),
        )
        .replace(
            "name: gcp-weather-deploy",
            &format!("name: bench-{t}-deploy-{suffix}"),
        )
        + "\n"
}

/// `bootstrap apply` of the pair's plan; a failed apply is run again (it continues where it
/// stopped) up to 3 times with backoff, since a loaded SQLite server answers 503 now and then.
async fn apply(env: &Env, file: &str) -> Result<()> {
    let mut last = String::new();
    for attempt in 1..=3u32 {
        let mut cmd = tokio::process::Command::from(env.bootstrap_cmd(&[
            "apply",
            "-f",
            file,
            "--auto-approve",
        ]));
        let out = tokio::time::timeout(Duration::from_secs(600), cmd.output())
            .await
            .map_err(|_| anyhow!("bootstrap apply -f {file} did not finish within 600 s"))??;
        if out.status.success() {
            return Ok(());
        }
        last = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("    (bootstrap apply failed, try {attempt} of 3; running it again)");
        let jitter = rand::random_range(0.0..1.0);
        tokio::time::sleep(Duration::from_secs_f64(2f64.powi(attempt as i32) + jitter)).await;
    }
    bail!("bootstrap apply -f {file} failed 3 times; last output:\n{last}")
}

/// The Prefect server's port (forwarded into the namespace).
fn port_of(url: &str) -> Result<u16> {
    url.rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("no port in the Prefect URL {url}"))
}

/// Measures the server's ceiling on `pool` (no worker may be polling it).
pub async fn ceiling(
    env: &Env,
    pool: &str,
    deployment: Uuid,
    per_level: usize,
    in_flight_levels: &[usize],
) -> Result<Ceiling> {
    use futures::stream::{StreamExt as _, TryStreamExt as _};
    let mut levels = Vec::new();
    for &in_flight in in_flight_levels {
        let mut runs = Vec::with_capacity(per_level);
        let measured = async {
            for _ in 0..per_level {
                runs.push(worker::create_run(env, deployment).await?);
            }
            let t = Instant::now();
            let before = env.sessions.map(crate::cpu::Snapshot::take);
            for _ in 0..per_level.div_ceil(200) {
                env.prefect(
                    Method::POST,
                    &format!("/work_pools/{pool}/get_scheduled_flow_runs"),
                    Some(&json!({"work_queue_names": ["default"], "limit": 200})),
                )
                .await?;
            }
            futures::stream::iter(runs.iter().map(|r| async move {
                env.prefect(
                    Method::POST,
                    &format!("/flow_runs/{r}/set_state"),
                    Some(&json!({"state": {"type": "PENDING", "name": "Pending"}})),
                )
                .await?;
                env.prefect(
                    Method::PATCH,
                    &format!("/flow_runs/{r}"),
                    Some(&json!({"infrastructure_pid": format!("bench-ceiling-{r}")})),
                )
                .await?;
                Ok::<_, anyhow::Error>(())
            }))
            .buffer_unordered(in_flight)
            .try_collect::<Vec<_>>()
            .await?;
            let seconds = t.elapsed().as_secs_f64();
            let server = env.sessions.zip(before).map(|(s, before)| {
                before
                    .split_to(
                        &crate::cpu::Snapshot::take(s),
                        seconds,
                        crate::cpu::cores(),
                        0.0,
                    )
                    .server_seconds
            });
            Ok::<_, anyhow::Error>((seconds, server))
        }
        .await;
        // Scheduled leftovers would be taken by the workers measured next.
        worker::delete_runs(env, &runs).await;
        let (seconds, server) = measured?;
        levels.push(CeilingLevel {
            in_flight,
            runs: per_level,
            seconds,
            runs_per_second: per_level as f64 / seconds,
            server_cpu_seconds_per_run: server.map(|s| s / per_level as f64),
        });
    }
    let best = levels.iter().map(|l| l.runs_per_second).fold(0.0, f64::max);
    Ok(Ceiling {
        levels,
        runs_per_second: best,
    })
}

/// One worker on the pair's pool: idle, pickups, then a burst of queued runs.
#[allow(clippy::too_many_arguments)]
async fn one(
    env: &Env,
    kind: Kind,
    label: &str,
    pool: &str,
    deployment: Uuid,
    name: &str,
    counts: &Counts,
    netns: Option<&Netns>,
) -> Result<WorkerFigures> {
    // Python's RSS settles later than ours (imports after the first heartbeat).
    let settle = if kind == Kind::Bootstrap { 5 } else { 8 };
    let protocol = worker::Protocol {
        settle: Duration::from_secs(settle),
        pickups: counts.pickups,
        burst_runs: counts.runs,
        burst_deadline: counts.deadline,
        stop_grace: Duration::from_secs(10),
        started: "reached a running execution",
    };
    let mut figures =
        worker::measure(env, kind, label, pool, name, deployment, &protocol, netns).await?;
    if let Some(burst) = figures.throughput.as_ref().filter(|b| b.timed_out) {
        let note = format!(
            "the burst deadline ({} s) ended it: {}/{} executions started",
            counts.deadline.as_secs(),
            burst.started,
            burst.queued
        );
        figures.notes.push(note);
    }
    Ok(figures)
}

/// Applies the pair's plan, measures the server's ceiling, then `bootstrap worker` and
/// prefect-gcp's worker one after the other. Each worker is a section of its own in `out`
/// (one failing does not lose the other's figures).
pub async fn pair(
    env: &Env,
    pool_type: PoolType,
    suffix: &str,
    counts: &Counts,
    out: &mut Vec<(String, f64, Result<WorkerFigures>)>,
) -> Result<Pair> {
    // No added latency: the workers' own cost is measured; Cloud Run job creation is quick on
    // Google too (the sandbox's operation time stands in for it). Consistency delays off.
    env.set_faults("op_delay=500ms").await?;
    env.set_settings(json!({"saVisibilityMs": 0, "grantDelayMs": 0}))
        .await?;
    let guide = std::fs::read_to_string(env.root.join("plans/guide.yaml"))
        .context("reading plans/guide.yaml")?;
    let t = pool_type.name();
    let file = env.work.join(format!("peer-{t}.yaml"));
    std::fs::write(&file, plan_text(&guide, pool_type, suffix))
        .with_context(|| format!("writing {}", file.display()))?;
    apply(env, &file.to_string_lossy()).await?;
    let pool = format!("bench-{t}-{suffix}");
    let deployment =
        worker::deployment_id(env, "fetch-weather", &format!("bench-{t}-deploy-{suffix}")).await?;

    let (ceiling, ceiling_error) = match ceiling(
        env,
        &pool,
        deployment,
        counts.ceiling_runs,
        &counts.ceiling_levels,
    )
    .await
    {
        Ok(c) => (Some(c), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    let (calls, calls_error) = match pool_type {
        PoolType::V2 => {
            match crate::calls::measure_all(env, &pool, deployment, counts.ceiling_runs.max(50))
                .await
            {
                Ok(c) => (Some(c), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        }
        PoolType::V1 => (None, None),
    };

    eprintln!("    bootstrap worker on the {t} pool");
    let started = Instant::now();
    let ours = one(
        env,
        Kind::Bootstrap,
        &format!("bootstrap worker ({t})"),
        &pool,
        deployment,
        &format!("bench-rs-{t}-{suffix}"),
        counts,
        None,
    )
    .await;
    out.push((
        format!("bootstrap worker ({t})"),
        started.elapsed().as_secs_f64(),
        ours,
    ));

    eprintln!("    prefect-gcp worker -t {t} in a sandbox namespace");
    let started = Instant::now();
    let theirs = async {
        let ns = Netns::new(env, &[port_of(&env.prefect_url)?]).await?;
        let kind = match pool_type {
            PoolType::V2 => Kind::PrefectGcpV2,
            PoolType::V1 => Kind::PrefectGcpV1,
        };
        let r = one(
            env,
            kind,
            &format!("prefect-gcp worker ({t})"),
            &pool,
            deployment,
            &format!("bench-py-{t}-{suffix}"),
            counts,
            Some(&ns),
        )
        .await;
        ns.remove(env).await;
        r
    }
    .await;
    out.push((
        format!("prefect-gcp worker ({t})"),
        started.elapsed().as_secs_f64(),
        theirs,
    ));
    Ok(Pair {
        pool_type: t.into(),
        ceiling,
        ceiling_error,
        calls,
        calls_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pair_plan_is_the_guide_without_its_service_on_the_pool_type() {
        let guide = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plans/guide.yaml"),
        )
        .expect("plans/guide.yaml");
        let p = plan_text(&guide, PoolType::V2, "abc");
        assert!(p.contains("  type: cloud-run-v2\n"), "{p}");
        assert!(
            !p.contains("\nworker:") && !p.contains("prefect-worker"),
            "{p}"
        );
        assert!(p.contains("name: bench-cloud-run-v2-abc\n"), "{p}");
        assert!(p.contains("name: bench-cloud-run-v2-deploy-abc\n"), "{p}");
        assert!(p.contains("name: bench-cloud-run-v2-creds-abc\n"), "{p}");
        assert!(p.contains("\ndeployments:\n"), "{p}");
        let p1 = plan_text(&guide, PoolType::V1, "abc");
        assert!(p1.contains("  type: cloud-run\n"), "{p1}");
    }

    #[test]
    fn the_prefect_port_is_found() {
        assert_eq!(port_of("http://127.0.0.1:4321/api").unwrap(), 4321);
        assert!(port_of("http://127.0.0.1/api").is_err());
    }
}
