//! `bootstrap validate` start-up, and `plan` / `apply` / no-op `plan` of the guide against the
//! sandbox with latency on every Google call, compared with the critical path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;

use crate::critical::{self, Costs, CriticalPath};
use crate::env::Env;
use crate::scale::{self, Cmd};
use crate::stats::{self, Summary};

/// One timed command.
#[derive(Debug, Clone, Serialize)]
pub struct Timed {
    /// Wall time, seconds.
    pub seconds: f64,
    /// Google calls the sandbox served.
    pub calls: u64,
    /// The same by discovery method id.
    pub calls_by_method: BTreeMap<String, u64>,
}

/// The plan/apply benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct Lifecycle {
    /// Latency added to every Google call, seconds.
    pub latency: f64,
    /// Long-running operation time, seconds.
    pub op_delay: f64,
    /// Median Prefect round trip, seconds.
    pub prefect_rtt: f64,
    /// `plan` of a fresh project.
    pub plan: Timed,
    /// Steps in that plan.
    pub plan_steps: usize,
    /// `apply` of it.
    pub apply: Timed,
    /// `plan` right after (nothing to do).
    pub noop_plan: Timed,
    /// The model floor of the apply.
    pub critical_path: CriticalPath,
    /// apply wall time / critical path.
    pub apply_ratio: f64,
    /// no-op plan wall time in round trips of latency.
    pub noop_round_trips: f64,
    /// Per-step seconds reported by `apply --json`.
    pub apply_steps: Vec<(String, f64)>,
}

/// `bootstrap validate -f plans/guide.yaml`, `runs` times, in milliseconds.
pub async fn startup(env: &Env, runs: usize) -> Result<Summary> {
    let plan = env.root.join("plans/guide.yaml");
    let plan = plan.to_string_lossy().to_string();
    let mut samples = Vec::with_capacity(runs);
    // One warm-up run so the binary is in the page cache, as it is for a user's second call.
    for i in 0..=runs {
        let mut cmd = tokio::process::Command::from(env.bootstrap_cmd(&["validate", "-f", &plan]));
        let t = Instant::now();
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| anyhow!("bootstrap validate did not finish within 30 s"))??;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !out.status.success() {
            bail!(
                "bootstrap validate failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if i > 0 {
            samples.push(ms);
        }
    }
    stats::summarize(&samples).ok_or_else(|| anyhow!("no validate runs"))
}

/// The guide's plan with this run's names, written into the work directory.
pub fn guide_plan(env: &Env, suffix: &str) -> Result<PathBuf> {
    let guide = std::fs::read_to_string(env.root.join("plans/guide.yaml"))
        .context("reading plans/guide.yaml")?;
    let text = guide
        .replace(
            "name: gcp-credentials",
            &format!("name: gcp-credentials-{suffix}"),
        )
        .replace(
            "name: my-cloud-run-pool",
            &format!("name: bench-pool-{suffix}"),
        )
        .replace(
            "name: gcp-weather-deploy",
            &format!("name: gcp-weather-deploy-{suffix}"),
        );
    let path = env.work.join("guide.yaml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn run_timed(env: &Env, cmd: Cmd<'_>, api_key: &str) -> Result<(Timed, String)> {
    // No RUST_LOG: debug logging would add to the timed wall time.
    let run = scale::run(env, cmd, api_key, None).await?;
    let timed = Timed {
        seconds: run.seconds,
        calls: run.google_by_method.values().sum(),
        calls_by_method: run.google_by_method,
    };
    Ok((timed, run.stdout))
}

/// plan, apply and no-op plan of `plan_file` with `latency` per call and `op_delay` per
/// operation. Consistency delays are off so that the floor is exactly the model's.
pub async fn plan_apply(
    env: &Env,
    plan_file: &Path,
    latency: Duration,
    op_delay: Duration,
) -> Result<Lifecycle> {
    env.set_model_timings(latency, op_delay).await?;
    let prefect_rtt = env.prefect_rtt().await?;
    // A Prefect Cloud-style key makes the plan store it in Secret Manager, as the guide's
    // worker needs; the local server ignores it.
    let api_key = format!("pnu_bench{}", uuid::Uuid::new_v4().simple());
    let file = plan_file.to_string_lossy().to_string();

    let (plan, plan_json) = run_timed(env, Cmd::Plan(&file), &api_key).await?;
    let plan_value: Value =
        serde_json::from_str(&plan_json).context("`bootstrap plan --json` printed no JSON plan")?;
    let plan_steps = plan_value
        .get("steps")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    if plan_steps == 0 {
        bail!("the plan of a fresh sandbox project has no steps; is the sandbox fresh?");
    }
    let (apply, log) = run_timed(env, Cmd::Apply(&file), &api_key).await?;
    let apply_steps = serde_json::from_str::<Value>(&log)
        .ok()
        .and_then(|v| v.get("entries").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            Some((
                e.get("address")?.as_str()?.to_string(),
                e.get("seconds")?.as_f64()?,
            ))
        })
        .collect();
    let (noop_plan, noop_json) = run_timed(env, Cmd::Plan(&file), &api_key).await?;
    let noop: Value = serde_json::from_str(&noop_json).context("no-op plan JSON")?;
    if noop
        .get("steps")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty())
    {
        bail!("the plan after apply still has changes: {noop_json}");
    }
    let costs = Costs {
        latency: latency.as_secs_f64(),
        op_delay: op_delay.as_secs_f64(),
        prefect_rtt,
    };
    let critical_path = critical::critical_path(&plan_value, &costs)?;
    Ok(Lifecycle {
        latency: costs.latency,
        op_delay: costs.op_delay,
        prefect_rtt,
        apply_ratio: apply.seconds / critical_path.seconds,
        noop_round_trips: noop_plan.seconds / costs.latency,
        plan,
        plan_steps,
        apply,
        noop_plan,
        critical_path,
        apply_steps,
    })
}
