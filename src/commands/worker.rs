//! `bootstrap worker`: the embedded Prefect worker (the `bootstrap_worker` crate).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bootstrap_prefect::PrefectClient;

use crate::cli::{GlobalArgs, WorkerArgs};
use bootstrap_worker::{self as worker, WorkerOptions};

/// Runs the worker until SIGTERM or SIGINT.
pub fn run(args: &WorkerArgs, global: &GlobalArgs) -> Result<ExitCode> {
    bootstrap_gcp::init_crypto();
    if !(args.poll_interval.is_finite() && args.poll_interval >= 0.1) {
        return Err(anyhow!("--poll-interval must be at least 0.1 seconds"));
    }
    if args.limit == Some(0) {
        return Err(anyhow!("--limit must be at least 1"));
    }
    // The same resolution as every command (no plan here: Prefect's env and profile).
    let bootstrap_engine::Connections {
        prefect: config,
        gcp_endpoints: endpoints,
    } = bootstrap_engine::Connections::resolve(None, global.gcp_endpoint.as_deref())?;
    let client = PrefectClient::new(config)?;
    let runtime = runtime()?;
    // Unique per instance (the metadata server's instance id on Cloud Run), stable across restarts.
    let name = match &args.name {
        Some(n) => n.clone(),
        None => runtime.block_on(worker::identity::default_name()),
    };
    let mut opts = WorkerOptions::new(&args.pool, &name, endpoints);
    if args.sweep {
        return sweep(&runtime, client, opts, args.sweep_older_than);
    }
    opts.queues = args.queues.clone();
    opts.limit = args.limit;
    opts.poll_interval = Duration::from_secs_f64(args.poll_interval);
    if let (Some(pool), Some(idle)) = (&args.scale_to_zero_pool, args.scale_to_zero_idle) {
        if idle == 0 {
            return Err(anyhow!("--scale-to-zero-idle must be at least 1 second"));
        }
        opts.scale_down = Some(worker::idle::ScaleDown {
            idle: Duration::from_secs(idle),
            scaler: worker::idle::cloud_run_scaler(pool, &opts.endpoints)?,
        });
    }
    let health = args.healthcheck.then_some(args.port);
    eprintln!("worker `{name}` taking flow runs from pool `{}`", args.pool);
    runtime.block_on(worker::run(client, opts, health, shutdown_signal()))?;
    // Tasks still watching executions are abandoned on purpose: their jobs keep running.
    runtime.shutdown_timeout(Duration::from_millis(200));
    eprintln!("worker `{name}` stopped");
    Ok(ExitCode::SUCCESS)
}

/// The worker's runtime: one thread. The worker waits on the network almost all the time (about
/// 8 ms of CPU per run, BENCHMARKS.md; the Prefect server's own ceiling is near 23 runs/s, so a
/// burst at the ceiling needs a fifth of one core), and every further thread costs its stack
/// and, with glibc, a malloc arena of its own (measured: 0.4 MB less idle RSS than the
/// default of one thread per core on 2 cores). Blocking work still goes to tokio's blocking
/// pool, whose threads end when idle.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `--sweep`: deletes the pool's finished jobs, says what it did, exits.
fn sweep(
    runtime: &tokio::runtime::Runtime,
    client: PrefectClient,
    opts: WorkerOptions,
    older_than: Duration,
) -> Result<ExitCode> {
    let pool = opts.pool.clone();
    let swept = runtime.block_on(worker::sweep::sweep(client, opts, older_than))?;
    println!(
        "deleted {} finished Cloud Run job{} of pool `{pool}` in {} ({} kept: running or finished less than {}s ago)",
        swept.deleted.len(),
        if swept.deleted.len() == 1 { "" } else { "s" },
        swept.region,
        swept.kept,
        older_than.as_secs()
    );
    if let Some(w) = worker::sweep::near_limit_warning(&swept.region, swept.region_jobs) {
        eprintln!("warning: {w}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on the first SIGTERM or SIGINT.
pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression guard for the idle RSS (BENCHMARKS.md, "The worker's idle memory"): the
    /// worker runs on one runtime thread, not one per core.
    #[test]
    fn the_worker_runs_on_one_runtime_thread() {
        let rt = runtime().unwrap();
        assert_eq!(
            rt.handle().runtime_flavor(),
            tokio::runtime::RuntimeFlavor::CurrentThread
        );
        assert_eq!(rt.metrics().num_workers(), 1);
    }
}
