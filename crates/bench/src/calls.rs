//! The Prefect server's own CPU per call, for each call a Cloud Run worker makes for one run.
//!
//! A burst's CPU split (crates/bench/src/cpu.rs) shows the server busy for most of a core
//! while `bootstrap worker` starts runs, at about three times the server CPU per run of the
//! ceiling's calls (poll, claim, infrastructure id). This section says which calls that CPU
//! goes to: the harness sends each kind of call `n` times, one at a time, on fresh runs of the
//! pool's deployment, and reads the server's session CPU before and after (less the server's
//! idle CPU over the same time: its services tick on their own). The events endpoint only
//! queues what it is sent, and the server's event persister writes the queue later (every few
//! seconds), so each kind is followed by a settle time that the idle rate is subtracted for.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cpu::{Sessions, Snapshot};
use crate::env::Env;
use crate::worker;

/// One kind of call.
#[derive(Debug, Clone, Serialize)]
pub struct CallCost {
    /// What was sent.
    pub call: String,
    /// How many times.
    pub n: usize,
    /// Mean wall time of one call, ms.
    pub wall_ms: f64,
    /// The server's CPU per call, ms (idle CPU subtracted; never below 0).
    pub server_cpu_ms: f64,
    /// How many of these `bootstrap worker` sends for one run (`None`: batched across runs).
    pub per_run: Option<f64>,
}

/// Every kind, and the sum for one run of ours.
#[derive(Debug, Clone, Serialize)]
pub struct CallCosts {
    /// The server's CPU while nobody calls it, ms per second.
    pub idle_cpu_ms_per_second: f64,
    /// Each kind of call.
    pub calls: Vec<CallCost>,
    /// Σ server_cpu_ms x per_run: what one run of `bootstrap worker` costs the server in
    /// these calls, ms.
    pub ours_per_run_ms: f64,
}

/// Settle after a kind of call: longer after events, which the server persists later.
const SETTLE: Duration = Duration::from_secs(1);
const EVENTS_SETTLE: Duration = Duration::from_secs(6);

fn server_cpu_seconds(s: Sessions, before: &Snapshot, wall: f64) -> f64 {
    before
        .split_to(&Snapshot::take(s), wall, crate::cpu::cores(), 0.0)
        .server_seconds
}

/// Sends `n` calls of one kind (`call(i)` makes call `i`) and measures them.
async fn measure<F, Fut>(
    s: Sessions,
    idle_per_s: f64,
    name: &str,
    n: usize,
    per_run: Option<f64>,
    settle: Duration,
    mut call: F,
) -> Result<CallCost>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Value>>,
{
    let before = Snapshot::take(s);
    let t = Instant::now();
    for i in 0..n {
        call(i)
            .await
            .with_context(|| format!("{name} (call {})", i + 1))?;
    }
    let calls_wall = t.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let wall = t.elapsed().as_secs_f64();
    let cpu = server_cpu_seconds(s, &before, wall);
    Ok(CallCost {
        call: name.into(),
        n,
        wall_ms: 1000.0 * calls_wall / n.max(1) as f64,
        server_cpu_ms: (1000.0 * (cpu - idle_per_s * wall) / n.max(1) as f64).max(0.0),
        per_run,
    })
}

/// An event shaped like the worker's `prefect.worker.submitted-flow-run`: the worker as the
/// resource, the run, its deployment, flow and pool as related resources.
fn event(run: Uuid, deployment: Uuid, pool: &str) -> Value {
    let related =
        |id: String, role: &str| json!({"prefect.resource.id": id, "prefect.resource.role": role});
    json!({
        "id": Uuid::new_v4().to_string(),
        "occurred": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "event": "prefect.worker.submitted-flow-run",
        "resource": {
            "prefect.resource.id": "prefect.worker.cloud-run-v2.bench-calls",
            "prefect.resource.name": "bench-calls",
            "prefect.worker-type": "cloud-run-v2",
        },
        "related": [
            related(format!("prefect.flow-run.{run}"), "flow-run"),
            related(format!("prefect.deployment.{deployment}"), "deployment"),
            related(format!("prefect.flow.{}", Uuid::nil()), "flow"),
            related(format!("prefect.work-pool.{pool}"), "work-pool"),
        ],
        "payload": {},
    })
}

/// Measures every kind on `n` fresh runs of `deployment` (the pool's; no worker may be
/// polling it). Needs the server's session (`--server-pid`).
pub async fn measure_all(env: &Env, pool: &str, deployment: Uuid, n: usize) -> Result<CallCosts> {
    let s = env
        .sessions
        .ok_or_else(|| anyhow!("needs the server's session (--server-pid and --sandbox-pid)"))?;
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        runs.push(worker::create_run(env, deployment).await?);
    }
    let result = async {
        let idle = Snapshot::take(s);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let wall = t.elapsed().as_secs_f64();
        let idle_per_s = server_cpu_seconds(s, &idle, wall) / wall;
        let runs = &runs;
        let p = |m: Method, path: String, body: Option<Value>| async move {
            env.prefect(m, &path, body.as_ref()).await
        };
        let mut calls = Vec::new();
        // In the order a run of ours makes them (crates/worker/src/submit.rs).
        calls.push(
            measure(s, idle_per_s, "GET /deployments/{id} (claim)", n, Some(1.0), SETTLE, |_| {
                p(Method::GET, format!("/deployments/{deployment}"), None)
            })
            .await?,
        );
        calls.push(
            measure(s, idle_per_s, "POST /flow_runs/{id}/set_state PENDING", n, Some(1.0), SETTLE, |i| {
                p(
                    Method::POST,
                    format!("/flow_runs/{}/set_state", runs[i]),
                    Some(json!({"state": {"type": "PENDING", "message": "bench claim"}})),
                )
            })
            .await?,
        );
        calls.push(
            measure(s, idle_per_s, "GET /flow_run_states/ (claim check)", n, Some(1.0), SETTLE, |i| {
                p(Method::GET, format!("/flow_run_states/?flow_run_id={}", runs[i]), None)
            })
            .await?,
        );
        calls.push(
            measure(s, idle_per_s, "PATCH /flow_runs/{id}/labels", n, Some(1.0), SETTLE, |i| {
                p(
                    Method::PATCH,
                    format!("/flow_runs/{}/labels", runs[i]),
                    Some(json!({"prefect.worker.name": "bench-calls", "prefect.worker.type": "cloud-run-v2"})),
                )
            })
            .await?,
        );
        calls.push(
            measure(s, idle_per_s, "PATCH /flow_runs/{id} infrastructure_pid", n, Some(1.0), SETTLE, |i| {
                p(
                    Method::PATCH,
                    format!("/flow_runs/{}", runs[i]),
                    Some(json!({"infrastructure_pid": format!("bench-calls-{i}")})),
                )
            })
            .await?,
        );
        calls.push(
            measure(s, idle_per_s, "GET /flow_runs/{id} (after the execution)", n, Some(1.0), SETTLE, |i| {
                p(Method::GET, format!("/flow_runs/{}", runs[i]), None)
            })
            .await?,
        );
        calls.push(
            measure(s, idle_per_s, "POST /logs/ (4 lines; batched across runs)", n, None, SETTLE, |i| {
                let line = |k: usize| json!({
                    "name": "prefect.flow_runs.worker", "level": 20,
                    "message": format!("bench log line {k}"),
                    "timestamp": chrono::Utc::now().to_rfc3339(),
                    "flow_run_id": runs[i].to_string(),
                });
                p(Method::POST, "/logs/".into(), Some(json!([line(1), line(2), line(3), line(4)])))
            })
            .await?,
        );
        calls.push(
            measure(s, idle_per_s, "POST /events (1 event per request)", n, Some(2.0), EVENTS_SETTLE, |i| {
                p(Method::POST, "/events".into(), Some(json!([event(runs[i], deployment, pool)])))
            })
            .await?,
        );
        // The same events, 10 to a request: what batching them would cost per event.
        let batches = n.div_ceil(10);
        let mut batch = measure(s, idle_per_s, "POST /events (10 events per request), per event", batches, None, EVENTS_SETTLE, |b| {
            let events: Vec<Value> = (0..10)
                .map(|k| event(runs[(b * 10 + k) % runs.len()], deployment, pool))
                .collect();
            p(Method::POST, "/events".into(), Some(Value::Array(events)))
        })
        .await?;
        batch.server_cpu_ms /= 10.0;
        batch.wall_ms /= 10.0;
        batch.n = batches * 10;
        calls.push(batch);
        let ours_per_run_ms = per_run_sum(&calls);
        Ok(CallCosts {
            idle_cpu_ms_per_second: 1000.0 * idle_per_s,
            calls,
            ours_per_run_ms,
        })
    }
    .await;
    // The PENDING runs would otherwise look like claimed work to the workers measured next.
    worker::delete_runs(env, &runs).await;
    result
}

/// Σ server CPU x calls per run over the calls made per run (batched ones left out).
fn per_run_sum(calls: &[CallCost]) -> f64 {
    calls
        .iter()
        .filter_map(|c| c.per_run.map(|k| k * c.server_cpu_ms))
        .sum()
}

/// The human table.
pub fn table(c: &CallCosts) -> String {
    let mut o = format!(
        "  {:<52}{:>6} {:>9} {:>13} {:>8}\n",
        "Prefect server cost per call (one at a time)", "n", "wall ms", "server CPU ms", "per run"
    );
    for k in &c.calls {
        o.push_str(&format!(
            "  {:<52}{:>6} {:>9.1} {:>13.1} {:>8}\n",
            k.call,
            k.n,
            k.wall_ms,
            k.server_cpu_ms,
            k.per_run
                .map(|r| format!("{r}"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    o.push_str(&format!(
        "  one run of bootstrap worker in these calls: {:.1} server CPU ms (idle server: {:.1} CPU ms/s)\n",
        c.ours_per_run_ms, c.idle_cpu_ms_per_second
    ));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_names_the_run_and_its_resources_as_the_workers_do() {
        let run = Uuid::new_v4();
        let e = event(run, Uuid::nil(), "p");
        assert_eq!(e["event"], "prefect.worker.submitted-flow-run");
        let related = e["related"].as_array().unwrap();
        assert_eq!(related.len(), 4);
        assert_eq!(
            related[0]["prefect.resource.id"],
            format!("prefect.flow-run.{run}")
        );
        assert!(
            related
                .iter()
                .all(|r| r["prefect.resource.role"].is_string())
        );
    }

    #[test]
    fn the_table_sums_only_per_run_calls() {
        let c = CallCosts {
            idle_cpu_ms_per_second: 12.0,
            calls: vec![
                CallCost {
                    call: "a".into(),
                    n: 10,
                    wall_ms: 5.0,
                    server_cpu_ms: 4.0,
                    per_run: Some(2.0),
                },
                CallCost {
                    call: "b".into(),
                    n: 10,
                    wall_ms: 5.0,
                    server_cpu_ms: 9.0,
                    per_run: None,
                },
            ],
            ours_per_run_ms: 0.0,
        };
        let c = CallCosts {
            ours_per_run_ms: per_run_sum(&c.calls),
            ..c
        };
        let t = table(&c);
        assert!(t.contains("8.0 server CPU ms"), "{t}");
        assert!(
            t.lines()
                .any(|l| l.trim_start().starts_with("b ") && l.trim_end().ends_with('-')),
            "a batched call has no per-run count: {t}"
        );
    }
}
