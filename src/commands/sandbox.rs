//! `bootstrap sandbox`: serve the local GCP stand-in until Ctrl-C or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use gcp_sandbox::faults::{FaultSpec, parse_duration};
use gcp_sandbox::{Config, Consistency};

use crate::cli::{GlobalArgs, SandboxArgs};

/// Builds the configuration from the flags, starts the sandbox, prints one ready line and
/// serves until interrupted.
pub fn run(args: &SandboxArgs, _global: &GlobalArgs) -> Result<ExitCode> {
    let config = config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let project = config
        .projects
        .first()
        .cloned()
        .unwrap_or_else(|| gcp_sandbox::DEFAULT_PROJECT.to_owned());
    runtime.block_on(async move {
        let sandbox = gcp_sandbox::start(config).await?;
        if let Some(dir) = &args.gcloud_config {
            write_gcloud_config(args, dir, &sandbox, &project)?;
        }
        // Exactly one line on stdout: scripts wait for it and read the URL (the real port
        // when --port 0) from it.
        let mut out = std::io::stdout().lock();
        let gcloud = args
            .gcloud_config
            .as_ref()
            .map(|d| format!(" (gcloud: CLOUDSDK_CONFIG={})", d.display()))
            .unwrap_or_default();
        writeln!(
            out,
            "sandbox ready: {} (env: {}){gcloud}",
            sandbox.url,
            sandbox.env_path.display()
        )?;
        out.flush()?;
        drop(out);
        wait_for_signal().await?;
        tracing::info!("sandbox stopping");
        sandbox.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Sets up the loopback host names gcloud needs and writes its configuration (see
/// `gcp_sandbox::hosts`).
fn write_gcloud_config(
    args: &SandboxArgs,
    dir: &std::path::Path,
    sandbox: &gcp_sandbox::Sandbox,
    project: &str,
) -> Result<()> {
    let hosts = std::path::Path::new("/etc/hosts");
    match gcp_sandbox::hosts::ensure_hosts_file(hosts) {
        Ok(added) if !added.is_empty() => {
            tracing::info!("added {} sandbox host names to /etc/hosts", added.len())
        }
        Ok(_) => {}
        Err(err) => {
            let names = gcp_sandbox::hosts::host_names().join(" ");
            return Err(err.context(format!(
                "--gcloud-config: gcloud needs these names on 127.0.0.1; add this line to \
                 /etc/hosts (as root) and start again:\n127.0.0.1 {names}"
            )));
        }
    }
    let gcloud = gcp_sandbox::hosts::GcloudConfig {
        port: sandbox.port,
        project: project.to_owned(),
        region: args.gcloud_region.clone(),
        key_file: sandbox.operator_key_path.clone(),
        account: sandbox.operator_email.clone(),
    };
    gcloud
        .write(dir)
        .with_context(|| format!("--gcloud-config {}", dir.display()))?;
    Ok(())
}

fn config(args: &SandboxArgs) -> Result<Config> {
    let mut config = Config::new(&args.dir);
    config.port = args.port;
    if !args.projects.is_empty() {
        config.projects = args.projects.clone();
    }
    if let Some(spec) = &args.faults {
        config.faults = spec
            .parse::<FaultSpec>()
            .map_err(|e| anyhow!("--faults: {e}"))?;
    }
    for api in &args.enable_apis {
        if !config.enabled_apis.contains(api) {
            config.enabled_apis.push(api.clone());
        }
    }
    config.op_delay = parse_duration(&args.op_delay).map_err(|e| anyhow!("--op-delay: {e}"))?;
    let delay =
        parse_duration(&args.consistency_delay).map_err(|e| anyhow!("--consistency-delay: {e}"))?;
    config.consistency = Consistency {
        sa_visibility: delay,
        grant_delay: delay,
    };
    config.disable_key_creation = args.disable_key_creation;
    config.persist = args.persist;
    if let Some(path) = &args.images {
        config.images.extend_from_file(path)?;
    }
    Ok(config)
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}
