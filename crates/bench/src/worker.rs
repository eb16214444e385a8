//! The worker benchmarks: pickup latency (flow run created → PENDING, both server timestamps),
//! submission throughput (N queued runs → N executions started, as the fake flow logs them),
//! memory and CPU; for `bootstrap worker` and, side by side, Prefect's Python worker.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::env::{Env, wait_for};
use crate::procs::{self, Proc, Usage};
use crate::stats::{self, Summary};

/// Which worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `bootstrap worker` on the guide's Cloud Run pool (jobs in the sandbox).
    Bootstrap,
    /// `prefect worker start -t process`.
    PythonProcess,
    /// prefect-gcp's `prefect worker start -t cloud-run-v2`, inside a sandbox namespace.
    PrefectGcpV2,
    /// prefect-gcp's `prefect worker start -t cloud-run` (Cloud Run Admin v1), the same way.
    PrefectGcpV1,
}

/// A network namespace the sandbox made for a host program (`POST /_sandbox/netns`,
/// crates/sandbox/src/netns_control.rs): Google's host names resolve to the sandbox, which
/// serves them over TLS with a certificate of its own CA, trusted through the variables in
/// `env`; the Prefect server's loopback port is forwarded. Nothing in the client is patched.
pub struct Netns {
    /// `ip netns exec` takes it.
    pub name: String,
    /// The trust variables (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, ...).
    pub env: Vec<(String, String)>,
}

impl Netns {
    /// Asks the sandbox for a namespace with these host ports forwarded.
    pub async fn new(env: &Env, forward: &[u16]) -> Result<Netns> {
        let v = env
            .sandbox(
                Method::POST,
                "/_sandbox/netns",
                Some(&json!({ "forward": forward })),
            )
            .await
            .context("asking the sandbox for a network namespace (it needs root and `ip netns`)")?;
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("the sandbox made no namespace: {v}"))?
            .to_string();
        let env = v
            .get("env")
            .and_then(Value::as_object)
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Netns { name, env })
    }

    /// Removes it (the sandbox also removes its namespaces when it stops).
    pub async fn remove(&self, env: &Env) {
        let _ = env
            .sandbox(
                Method::DELETE,
                &format!("/_sandbox/netns/{}", self.name),
                None,
            )
            .await;
    }
}

/// Throughput of one burst.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Runs queued before the worker started.
    pub queued: usize,
    /// Executions that started within the deadline.
    pub started: usize,
    /// Worker start → first execution, seconds.
    pub first_seconds: Option<f64>,
    /// Worker start → last execution, seconds.
    pub last_seconds: Option<f64>,
    /// started / last_seconds.
    pub runs_per_second: f64,
    /// Whether the deadline ended the burst early.
    pub timed_out: bool,
    /// Peak RSS during the burst, MB.
    pub peak_rss_mb: f64,
    /// CPU seconds the worker spent on the burst.
    pub cpu_seconds: f64,
    /// `cpu_seconds` / started.
    pub cpu_seconds_per_run: f64,
    /// Where the machine's CPU went from the worker's start to the last execution (or the
    /// deadline), when the harness knows the server's and the sandbox's sessions.
    pub cpu: Option<crate::cpu::Split>,
}

/// Deletes flow runs (those a burst's deadline left), 4 at a time; failures are only noted,
/// since a leftover run costs the next worker's figures, not this one's.
pub async fn delete_runs(env: &Env, runs: &[Uuid]) {
    use futures::stream::StreamExt as _;
    let n = futures::stream::iter(runs.iter().map(|r| async move {
        env.prefect(Method::DELETE, &format!("/flow_runs/{r}"), None)
            .await
            .is_err()
    }))
    .buffer_unordered(4)
    .filter(|failed| std::future::ready(*failed))
    .count()
    .await;
    if n > 0 {
        eprintln!(
            "    ({n} of {} leftover runs could not be deleted)",
            runs.len()
        );
    }
}

/// The figures of one worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerFigures {
    /// Name for the table.
    pub name: String,
    /// Idle RSS and CPU after start-up.
    pub idle: Option<Usage>,
    /// Seconds from launch until the server saw its first heartbeat.
    pub online_seconds: Option<f64>,
    /// Pickup latency, seconds.
    pub pickup: Option<Summary>,
    /// The burst.
    pub throughput: Option<Throughput>,
    /// What could not be measured, and why.
    pub notes: Vec<String>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn parse_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v?.as_str()?.parse::<DateTime<Utc>>().ok()
}

/// Flow run id → first start time (unix seconds) from the fake flow's log.
pub fn read_started(text: &str) -> BTreeMap<Uuid, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(t), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(t), Ok(id)) = (t.parse::<f64>(), Uuid::parse_str(id)) else {
            continue;
        };
        out.entry(id).or_insert(t);
    }
    out
}

/// Creates a flow run of a deployment; returns its id.
pub async fn create_run(env: &Env, deployment: Uuid) -> Result<Uuid> {
    let v = env
        .prefect(
            Method::POST,
            &format!("/deployments/{deployment}/create_flow_run"),
            // The key makes a retried create (after a reset that may have reached the server)
            // return the same run instead of queuing a second one.
            Some(&json!({"idempotency_key": Uuid::new_v4().to_string()})),
        )
        .await?;
    v.get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| anyhow!("create_flow_run answered without an id"))
}

/// Seconds from the run's creation to its first PENDING state, once it has one.
async fn pickup_seconds(env: &Env, run: Uuid) -> Result<Option<f64>> {
    let r = env
        .prefect(Method::GET, &format!("/flow_runs/{run}"), None)
        .await?;
    let created =
        parse_time(r.get("created")).ok_or_else(|| anyhow!("flow run without `created`"))?;
    let states = env
        .prefect(
            Method::GET,
            &format!("/flow_run_states/?flow_run_id={run}"),
            None,
        )
        .await?;
    let pending = states
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s.get("type").and_then(Value::as_str) == Some("PENDING"))
        .filter_map(|s| parse_time(s.get("timestamp")))
        .min();
    Ok(pending.map(|p| (p - created).num_microseconds().unwrap_or(0) as f64 / 1e6))
}

/// The deployment's id, by `flow/deployment`.
pub async fn deployment_id(env: &Env, flow: &str, name: &str) -> Result<Uuid> {
    let v = env
        .prefect(
            Method::GET,
            &format!("/deployments/name/{flow}/{name}"),
            None,
        )
        .await
        .with_context(|| format!("reading deployment {flow}/{name}"))?;
    v.get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| anyhow!("deployment {flow}/{name} has no id"))
}

/// Creates a pool with Prefect's CLI (which knows each type's default job template). A failed
/// try is repeated with the harness's backoff (the CLI's own client gives up on a reset); on a
/// repeat, "already exists" means the earlier try went through.
pub async fn create_pool_cli(env: &Env, name: &str, pool_type: &str) -> Result<()> {
    let policy = crate::retry::HARNESS;
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        let out = python_cmd(
            env,
            "prefect",
            &["work-pool", "create", name, "--type", pool_type],
        )
        .output()
        .context("running `prefect work-pool create`")?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() || (attempt > 1 && text.contains("already exists")) {
            return Ok(());
        }
        let wait = policy.delay(attempt, rand::random::<f64>());
        if !policy.may_retry(attempt, started.elapsed(), wait) {
            return Err(anyhow!(
                "prefect work-pool create {name} --type {pool_type} failed {attempt} times; last: {}",
                text.trim()
            ));
        }
        eprintln!(
            "    (retrying `prefect work-pool create {name}`: {})",
            text.lines().last().unwrap_or("")
        );
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// A command from the venv with the Prefect settings of this run.
fn python_cmd(env: &Env, program: &str, args: &[&str]) -> Command {
    python_cmd_in(env, None, program, args)
}

/// The same, run inside `netns` (`ip netns exec` execs the program: same pid, so its memory
/// and CPU are the worker's) with the namespace's trust variables.
fn python_cmd_in(env: &Env, netns: Option<&Netns>, program: &str, args: &[&str]) -> Command {
    let program = env.venv.join("bin").join(program);
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name])
                .arg(&program)
                .envs(ns.env.iter().map(|(k, v)| (k, v)));
            c
        }
        None => Command::new(&program),
    };
    cmd.args(args)
        .current_dir(&env.work)
        .env("PREFECT_API_URL", &env.prefect_url)
        .env("PREFECT_HOME", env.work.join("prefect-home"))
        .env("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        .env_remove("PREFECT_API_KEY");
    cmd
}

/// A deployment in the process pool whose "flow" is the fake flow.
pub async fn process_deployment(env: &Env, pool: &str, fake_flow: &str) -> Result<Uuid> {
    let flow = env
        .prefect(
            Method::POST,
            "/flows/",
            Some(&json!({"name": "bench-fake-flow"})),
        )
        .await?;
    let flow_id = flow
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("flow without id"))?;
    let body = json!({
        "name": format!("{pool}-deploy"),
        "flow_id": flow_id,
        "work_pool_name": pool,
        "work_queue_name": "default",
        "entrypoint": "fake.py:fake",
        "job_variables": {
            "command": fake_flow,
            "env": {"BENCH_STARTED_LOG": env.started_log.to_string_lossy()},
        },
    });
    let d = env
        .prefect(Method::POST, "/deployments/", Some(&body))
        .await?;
    d.get("id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| anyhow!("deployment without id"))
}

/// Starts a worker of `kind` on `pool` under `name` (prefect-gcp's inside `netns`).
pub fn start(env: &Env, kind: Kind, pool: &str, name: &str, netns: Option<&Netns>) -> Result<Proc> {
    let log = env.work.join(format!("{name}.log"));
    let cmd = match kind {
        Kind::Bootstrap => {
            let mut c = env.bootstrap_cmd(&["worker", "-p", pool, "--name", name]);
            c.env("RUST_LOG", "warn");
            c
        }
        Kind::PythonProcess => python_cmd(
            env,
            "prefect",
            &["worker", "start", "-p", pool, "-t", "process", "-n", name],
        ),
        Kind::PrefectGcpV2 | Kind::PrefectGcpV1 => {
            let ns = netns.ok_or_else(|| {
                anyhow!("prefect-gcp's worker calls Google's hosts: it needs a sandbox namespace")
            })?;
            let t = if kind == Kind::PrefectGcpV2 {
                "cloud-run-v2"
            } else {
                "cloud-run"
            };
            python_cmd_in(
                env,
                Some(ns),
                "prefect",
                &["worker", "start", "-p", pool, "-t", t, "-n", name],
            )
        }
    };
    Proc::spawn(name, cmd, &log)
}

/// Waits until the server has a heartbeat from worker `name` of `pool` (90 s at most).
pub async fn wait_online(env: &Env, pool: &str, name: &str, proc: &mut Proc) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(90);
    loop {
        proc.check_alive()?;
        let v = env
            .prefect(
                Method::POST,
                &format!("/work_pools/{pool}/workers/filter"),
                Some(&json!({})),
            )
            .await?;
        let seen = v.as_array().into_iter().flatten().any(|w| {
            w.get("name").and_then(Value::as_str) == Some(name)
                && w.get("last_heartbeat_time").is_some_and(|t| !t.is_null())
        });
        if seen {
            return Ok(());
        }
        if Instant::now() >= end {
            return Err(anyhow!("worker {name} sent no heartbeat within 90 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts a worker, waits for its heartbeat and then `settle`, and samples its idle usage.
pub async fn start_idle(
    env: &Env,
    kind: Kind,
    pool: &str,
    name: &str,
    settle: Duration,
    netns: Option<&Netns>,
) -> Result<(Proc, f64, Usage)> {
    let t = Instant::now();
    let mut p = start(env, kind, pool, name, netns)?;
    wait_online(env, pool, name, &mut p).await?;
    let online = t.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    p.check_alive()?;
    let u = procs::usage(p.pid())?;
    Ok((p, online, u))
}

/// `k` runs created `spacing` apart (off any poll rhythm), each timed to PENDING.
pub async fn pickup(
    env: &Env,
    deployment: Uuid,
    k: usize,
    spacing: Duration,
    deadline: Duration,
) -> Result<(Summary, Vec<Uuid>)> {
    let mut runs = Vec::with_capacity(k);
    for i in 0..k {
        if i > 0 {
            // ±30 % so that runs do not line up with a fixed poll interval.
            let jitter = rand::random_range(0.7..1.3);
            tokio::time::sleep(spacing.mul_f64(jitter)).await;
        }
        runs.push(create_run(env, deployment).await?);
    }
    let mut samples = Vec::new();
    let end = Instant::now() + deadline;
    for run in &runs {
        let left = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let run = *run;
        let s = wait_for(
            "a run to be picked up",
            left,
            Duration::from_millis(200),
            || async move { pickup_seconds(env, run).await },
        )
        .await?;
        samples.push(s);
    }
    let summary = stats::summarize(&samples).ok_or_else(|| anyhow!("no pickups"))?;
    Ok((summary, runs))
}

/// Waits until every run in `runs` has a line in the fake flow's log.
pub async fn wait_started(
    env: &Env,
    runs: &[Uuid],
    deadline: Duration,
) -> Result<BTreeMap<Uuid, f64>> {
    let want: BTreeSet<Uuid> = runs.iter().copied().collect();
    let end = Instant::now() + deadline;
    loop {
        let text = std::fs::read_to_string(&env.started_log).unwrap_or_default();
        let seen: BTreeMap<Uuid, f64> = read_started(&text)
            .into_iter()
            .filter(|(id, _)| want.contains(id))
            .collect();
        if seen.len() == want.len() || Instant::now() >= end {
            return Ok(seen);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How one worker is measured by [`measure`].
pub struct Protocol<'a> {
    /// Time after the first heartbeat before the idle usage is sampled.
    pub settle: Duration,
    /// Pickups timed one by one.
    pub pickups: usize,
    /// Runs queued for the burst.
    pub burst_runs: usize,
    /// The longest the burst may run.
    pub burst_deadline: Duration,
    /// How long the worker gets after SIGTERM before it is killed.
    pub stop_grace: Duration,
    /// What a started run is for this worker ("started their process"), for the note when
    /// not all picked-up runs got there.
    pub started: &'a str,
}

/// One worker on `pool`: idle usage, pickups timed one by one, then (stopped and started
/// again) a burst of queued runs. `label` names it in the table.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    env: &Env,
    kind: Kind,
    label: &str,
    pool: &str,
    name: &str,
    deployment: Uuid,
    protocol: &Protocol<'_>,
    netns: Option<&Netns>,
) -> Result<WorkerFigures> {
    let (mut p, online, idle) = start_idle(env, kind, pool, name, protocol.settle, netns).await?;
    // The Python workers poll every 10 s: 60 s gives each pickup several polls.
    let (pickup, runs) = pickup(
        env,
        deployment,
        protocol.pickups,
        Duration::from_millis(800),
        Duration::from_secs(60),
    )
    .await?;
    let mut notes = Vec::new();
    let started = wait_started(env, &runs, Duration::from_secs(60)).await?;
    if started.len() < runs.len() {
        notes.push(format!(
            "only {}/{} picked-up runs {} within 60 s",
            started.len(),
            runs.len(),
            protocol.started
        ));
    }
    if !p.stop(protocol.stop_grace) {
        notes.push(format!(
            "did not exit within {} s of SIGTERM (killed)",
            protocol.stop_grace.as_secs()
        ));
    }
    let burst = burst(
        env,
        kind,
        pool,
        &format!("{name}-burst"),
        deployment,
        protocol.burst_runs,
        protocol.burst_deadline,
        netns,
    )
    .await?;
    Ok(WorkerFigures {
        name: label.into(),
        idle: Some(idle),
        online_seconds: Some(online),
        pickup: Some(pickup),
        throughput: Some(burst),
        notes,
    })
}

/// Queues `n` runs (the worker must be stopped), starts a worker, and measures until all `n`
/// executions started or `deadline`.
#[allow(clippy::too_many_arguments)]
pub async fn burst(
    env: &Env,
    kind: Kind,
    pool: &str,
    name: &str,
    deployment: Uuid,
    n: usize,
    deadline: Duration,
    netns: Option<&Netns>,
) -> Result<Throughput> {
    // Queue one at a time: a few in flight already made the SQLite-backed server answer 503
    // and reset connections on 2 cores.
    let mut runs = Vec::with_capacity(n);
    for _ in 0..n {
        runs.push(create_run(env, deployment).await?);
    }
    let t0 = unix_now();
    let start_at = Instant::now();
    let machine0 = env.sessions.map(crate::cpu::Snapshot::take);
    let mut p = start(env, kind, pool, name, netns)?;
    let cpu0 = procs::usage(p.pid()).map(|u| u.cpu_seconds).unwrap_or(0.0);
    let want: BTreeSet<Uuid> = runs.iter().copied().collect();
    let mut peak = 0.0f64;
    let mut last = Usage::default();
    let mut timed_out = false;
    let seen = loop {
        if let Ok(u) = procs::usage(p.pid()) {
            peak = peak.max(u.hwm_mb);
            last = u;
        }
        let text = std::fs::read_to_string(&env.started_log).unwrap_or_default();
        let seen: BTreeMap<Uuid, f64> = read_started(&text)
            .into_iter()
            .filter(|(id, _)| want.contains(id))
            .collect();
        if seen.len() == want.len() {
            break seen;
        }
        if start_at.elapsed() > deadline {
            timed_out = true;
            break seen;
        }
        p.check_alive()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let worker_cpu = (last.cpu_seconds - cpu0).max(0.0);
    let cpu = env.sessions.zip(machine0).map(|(s, before)| {
        before.split_to(
            &crate::cpu::Snapshot::take(s),
            start_at.elapsed().as_secs_f64(),
            crate::cpu::cores(),
            worker_cpu,
        )
    });
    p.stop(Duration::from_secs(5));
    // Runs the deadline left unstarted would be taken by the next worker on the pool.
    let left: Vec<Uuid> = runs
        .iter()
        .filter(|r| !seen.contains_key(r))
        .copied()
        .collect();
    delete_runs(env, &left).await;
    let times: Vec<f64> = seen.values().map(|t| t - t0).collect();
    let first = times.iter().copied().reduce(f64::min);
    let lastt = times.iter().copied().reduce(f64::max);
    Ok(Throughput {
        queued: n,
        started: seen.len(),
        first_seconds: first,
        last_seconds: lastt,
        runs_per_second: match lastt {
            Some(l) if l > 0.0 => seen.len() as f64 / l,
            _ => 0.0,
        },
        cpu_seconds_per_run: if seen.is_empty() {
            0.0
        } else {
            worker_cpu / seen.len() as f64
        },
        timed_out,
        peak_rss_mb: peak,
        cpu_seconds: worker_cpu,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_log_keeps_first_start_and_skips_junk() {
        let a = Uuid::new_v4();
        let b = Uuid::new_v4();
        let text = format!("10.5 {a}\n11.0 {b}\n12.0 {a}\nnot a line\n13 nope\n");
        let m = read_started(&text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[&a], 10.5);
        assert_eq!(m[&b], 11.0);
    }
}
