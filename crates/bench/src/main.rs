//! `bootstrap-bench`: the benchmark harness that `./bench` runs once it has started a Prefect
//! server and the GCP sandbox. Measures CLI start-up, plan/apply against the critical path and
//! the workers side by side; prints a table and writes JSON. Exits non-zero only when a section
//! could not be measured (the harness or the tool broke), never because a figure is slow.

mod critical;
mod env;
mod lifecycle;
mod plot;
mod procs;
mod report;
mod retry;
mod scale;
mod stats;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;

use env::Env;
use report::{Machine, Results};
use worker::{Kind, WorkerFigures};

/// Benchmarks of bootstrap against a running Prefect server and GCP sandbox.
#[derive(Debug, Parser)]
struct Args {
    /// Small counts for CI (a few minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// The `bootstrap` binary under test.
    #[arg(long)]
    bootstrap: PathBuf,
    /// The repository root.
    #[arg(long)]
    root: PathBuf,
    /// Scratch directory.
    #[arg(long)]
    work: PathBuf,
    /// The virtualenv with Prefect.
    #[arg(long)]
    venv: PathBuf,
    /// Prefect API URL (`http://127.0.0.1:PORT/api`).
    #[arg(long)]
    prefect_url: String,
    /// Sandbox URL (`http://127.0.0.1:PORT`).
    #[arg(long)]
    sandbox_url: String,
    /// The sandbox operator's key file.
    #[arg(long)]
    operator_key: PathBuf,
    /// The fake flow program (appends `<unix time> <flow run id>` to $BENCH_STARTED_LOG).
    #[arg(long)]
    fake_flow: PathBuf,
    /// The log the fake flow writes (the sandbox image table sets the same path).
    #[arg(long)]
    started_log: PathBuf,
    /// Where the JSON goes.
    #[arg(long)]
    out: PathBuf,
    /// Latency added to each Google call during plan/apply, ms.
    #[arg(long, default_value_t = 100)]
    latency_ms: u64,
    /// Long-running operation time during plan/apply, ms (default: 2000 quick, 5000 full).
    #[arg(long)]
    op_delay_ms: Option<u64>,
    /// Deployments of the scale section's plans, comma-separated (default: 1,10,30 quick;
    /// 1,10,100 full).
    #[arg(long, value_delimiter = ',')]
    scale: Option<Vec<usize>>,
    /// Run only these sections (start-up, plan-apply, scale, workers), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Option<Vec<String>>,
    /// Runs queued for the throughput burst (default: 30 quick, 500 full).
    #[arg(long)]
    runs: Option<usize>,
    /// Runs queued for the Python worker's burst (default: 30 quick, 200 full).
    #[arg(long)]
    python_runs: Option<usize>,
}

struct Plan {
    startup_runs: usize,
    pickups: usize,
    runs: usize,
    python_runs: usize,
    op_delay: Duration,
    burst_deadline: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // reqwest is built without a default TLS provider (the workspace's choice); the harness
    // only speaks plain HTTP to loopback, but the client still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every section; returns whether all of them could be measured.
async fn run(args: Args) -> Result<bool> {
    let plan = Plan {
        startup_runs: if args.quick { 20 } else { 100 },
        pickups: if args.quick { 5 } else { 20 },
        runs: args.runs.unwrap_or(if args.quick { 30 } else { 500 }),
        python_runs: args
            .python_runs
            .unwrap_or(if args.quick { 30 } else { 200 }),
        op_delay: Duration::from_millis(args.op_delay_ms.unwrap_or(if args.quick {
            2000
        } else {
            5000
        })),
        burst_deadline: Duration::from_secs(if args.quick { 90 } else { 600 }),
    };
    let env = Env::new(
        args.bootstrap.clone(),
        args.root.clone(),
        args.work.clone(),
        args.venv.clone(),
        args.prefect_url.clone(),
        args.sandbox_url.clone(),
        args.operator_key.clone(),
        args.started_log.clone(),
    )?;
    let mut results = Results {
        mode: if args.quick { "quick" } else { "full" }.into(),
        started: chrono::Utc::now().to_rfc3339(),
        machine: Machine::detect(),
        startup_ms: None,
        lifecycle: None,
        scale: None,
        workers: Vec::new(),
        targets: Vec::new(),
        sections: Vec::new(),
        errors: Vec::new(),
    };

    let wanted = |name: &str| {
        args.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == name))
    };
    if let Some(o) = &args.only {
        for s in o {
            if !["start-up", "plan-apply", "scale", "workers"].contains(&s.as_str()) {
                anyhow::bail!("--only {s}: not a section (start-up, plan-apply, scale, workers)");
            }
        }
    }
    if wanted("start-up") {
        eprintln!(
            "==> CLI start-up ({} runs of bootstrap validate)",
            plan.startup_runs
        );
        let startup = lifecycle::startup(&env, plan.startup_runs).await;
        results.startup_ms = results.section("start-up", startup);
    }

    let suffix = format!("{:08x}", rand::random::<u32>());
    // The workers run on the pool and deployment the guide's apply creates.
    if wanted("plan-apply") || wanted("workers") {
        eprintln!(
            "==> plan / apply / no-op plan of the guide (latency {} ms, operations {} ms)",
            args.latency_ms,
            plan.op_delay.as_millis()
        );
        let applied = async {
            let file = lifecycle::guide_plan(&env, &suffix)?;
            lifecycle::plan_apply(
                &env,
                &file,
                Duration::from_millis(args.latency_ms),
                plan.op_delay,
            )
            .await
        }
        .await;
        results.lifecycle = results.section("plan/apply", applied);
    }

    if wanted("scale") {
        let ns = args.scale.clone().unwrap_or_else(|| {
            if args.quick {
                vec![1, 10, 30]
            } else {
                vec![1, 10, 100]
            }
        });
        eprintln!(
            "==> scale: plans of N = {ns:?} deployments (latency {} ms, operations {} ms)",
            args.latency_ms,
            plan.op_delay.as_millis()
        );
        let scaled = scale::scale(
            &env,
            &ns,
            &suffix,
            Duration::from_millis(args.latency_ms),
            plan.op_delay,
        )
        .await;
        results.scale = results.section("scale", scaled);
        let failed: Vec<String> = results
            .scale
            .as_ref()
            .map(|s| s.errors.clone())
            .unwrap_or_default();
        for e in failed {
            results.errors.push(format!("scale: {e}"));
            if let Some(sec) = results.sections.last_mut() {
                sec.status = "partial".into();
            }
        }
    }
    if !wanted("workers") {
        return finish(&args, results);
    }

    if results.lifecycle.is_some() {
        eprintln!(
            "==> bootstrap worker (pickup x{}, burst of {})",
            plan.pickups, plan.runs
        );
        let w = ours(&env, &suffix, &plan).await;
        if let Some(w) = results.section("bootstrap worker", w) {
            results.workers.push(w);
        }
    } else {
        results.skipped(
            "bootstrap worker",
            "needs the pool and deployment apply creates",
        );
    }

    eprintln!("==> prefect worker (cloud-run-v2), idle");
    let w = python_cloud_run(&env, &suffix).await;
    if let Some(w) = results.section("prefect worker (cloud-run-v2)", w) {
        results.workers.push(w);
    }
    eprintln!(
        "==> prefect worker (process) (pickup x{}, burst of {})",
        plan.pickups, plan.python_runs
    );
    let w = python_process(&env, &suffix, &plan, &args.fake_flow).await;
    if let Some(w) = results.section("prefect worker (process)", w) {
        results.workers.push(w);
    }

    finish(&args, results)
}

/// Evaluates the targets, prints the table, writes the JSON and the plot; whether every
/// section could be measured.
fn finish(args: &Args, mut results: Results) -> Result<bool> {
    report::evaluate(&mut results);
    let text = report::table(&results);
    println!("{text}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let (Some(s), Some(dir)) = (&results.scale, args.out.parent())
        && !s.points.is_empty()
    {
        let svg = dir.join("scale.svg");
        let caption = format!(
            "bootstrap {} run, {}: {} CPUs, load average {}; {:.0} ms per Google call, operations {:.1} s",
            results.mode,
            results.started,
            results.machine.nproc,
            results.machine.load_average,
            s.latency * 1000.0,
            s.op_delay
        );
        std::fs::write(&svg, plot::svg(s, &caption))
            .with_context(|| format!("writing {}", svg.display()))?;
        eprintln!("plot: {}", svg.display());
    }
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(&args.out, json).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("results: {}", args.out.display());
    Ok(results.errors.is_empty())
}

/// `bootstrap worker` on the pool and deployment the apply created.
async fn ours(env: &Env, suffix: &str, plan: &Plan) -> Result<WorkerFigures> {
    // No added latency: the worker's own cost is what is measured; Cloud Run job creation is
    // quick on Google too (the sandbox's default operation time stands in for it).
    env.set_faults("op_delay=500ms").await?;
    let pool = format!("bench-pool-{suffix}");
    let deployment = worker::deployment_id(
        env,
        "fetch-weather",
        &format!("gcp-weather-deploy-{suffix}"),
    )
    .await?;
    let name = format!("bench-rs-{suffix}");
    let (mut p, online, idle) =
        worker::start_idle(env, Kind::Bootstrap, &pool, &name, Duration::from_secs(5)).await?;
    let (pickup, runs) = worker::pickup(
        env,
        deployment,
        plan.pickups,
        Duration::from_millis(800),
        Duration::from_secs(60),
    )
    .await?;
    let mut notes = Vec::new();
    let started = worker::wait_started(env, &runs, Duration::from_secs(60)).await?;
    if started.len() < runs.len() {
        notes.push(format!(
            "only {}/{} picked-up runs reached a running execution within 60 s",
            started.len(),
            runs.len()
        ));
    }
    p.stop(Duration::from_secs(10));
    let burst = worker::burst(
        env,
        Kind::Bootstrap,
        &pool,
        &format!("{name}-burst"),
        deployment,
        plan.runs,
        plan.burst_deadline,
    )
    .await?;
    Ok(WorkerFigures {
        name: "bootstrap worker".into(),
        idle: Some(idle),
        online_seconds: Some(online),
        pickup: Some(pickup),
        throughput: Some(burst),
        notes,
    })
}

/// Prefect's cloud-run-v2 worker: it starts and polls, but submits only to Google's endpoint.
async fn python_cloud_run(env: &Env, suffix: &str) -> Result<WorkerFigures> {
    let pool = format!("bench-py-crv2-{suffix}");
    worker::create_pool_cli(env, &pool, "cloud-run-v2").await?;
    let name = format!("bench-py-crv2-{suffix}");
    let (mut p, online, idle) = worker::start_idle(
        env,
        Kind::PythonCloudRunV2,
        &pool,
        &name,
        Duration::from_secs(8),
    )
    .await?;
    p.stop(Duration::from_secs(3));
    Ok(WorkerFigures {
        name: "prefect worker (cloud-run-v2)".into(),
        idle: Some(idle),
        online_seconds: Some(online),
        pickup: None,
        throughput: None,
        notes: vec![
            "runs here as a host process, outside the sandbox's network namespaces, so its \
             calls to https://run.googleapis.com (hard-coded in prefect_gcp/workers/\
             cloud_run_v2.py) do not reach the sandbox; the sandbox can run it \
             (tests/prefect_gcp_workers.rs), this bench does not yet (issue #14, item 6); \
             pickup and throughput are compared with the process worker, which shares the \
             polling and claiming code"
                .into(),
        ],
    })
}

/// Prefect's process worker running the same fake flow as local processes.
async fn python_process(
    env: &Env,
    suffix: &str,
    plan: &Plan,
    fake_flow: &std::path::Path,
) -> Result<WorkerFigures> {
    let pool = format!("bench-py-proc-{suffix}");
    worker::create_pool_cli(env, &pool, "process").await?;
    let deployment = worker::process_deployment(env, &pool, &fake_flow.to_string_lossy()).await?;
    let name = format!("bench-py-proc-{suffix}");
    let (mut p, online, idle) = worker::start_idle(
        env,
        Kind::PythonProcess,
        &pool,
        &name,
        Duration::from_secs(8),
    )
    .await?;
    // It polls every 10 s: give each pickup up to two polls.
    let (pickup, runs) = worker::pickup(
        env,
        deployment,
        plan.pickups,
        Duration::from_millis(800),
        Duration::from_secs(60),
    )
    .await?;
    let mut notes = Vec::new();
    let started = worker::wait_started(env, &runs, Duration::from_secs(60)).await?;
    if started.len() < runs.len() {
        notes.push(format!(
            "only {}/{} picked-up runs started their process within 60 s",
            started.len(),
            runs.len()
        ));
    }
    if !p.stop(Duration::from_secs(3)) {
        notes.push("did not exit within 3 s of SIGTERM (killed)".into());
    }
    let burst = worker::burst(
        env,
        Kind::PythonProcess,
        &pool,
        &format!("{name}-burst"),
        deployment,
        plan.python_runs,
        plan.burst_deadline,
    )
    .await?;
    Ok(WorkerFigures {
        name: "prefect worker (process)".into(),
        idle: Some(idle),
        online_seconds: Some(online),
        pickup: Some(pickup),
        throughput: Some(burst),
        notes,
    })
}
