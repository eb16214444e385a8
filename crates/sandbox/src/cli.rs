//! The command line of the `bootstrap-sandbox` binary: flags, logging, and serving until
//! Ctrl-C or SIGTERM. `bootstrap sandbox` (the user's command) runs this binary with the same
//! flags, so that neither the release `bootstrap` nor the worker image links the emulator.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, anyhow};
use clap::Parser;

use crate::executor::{ImageMap, Placeholders};
use crate::faults::{FaultSpec, parse_duration};
use crate::{Config, Consistency};

/// Serve a local stand-in for the Google Cloud APIs that runs containers as processes.
#[derive(Debug, Parser)]
#[command(name = "bootstrap-sandbox", version)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8099)]
    pub port: u16,
    /// Directory for the operator key, the env file and persisted state.
    #[arg(long, default_value = ".bootstrap-sandbox")]
    pub dir: PathBuf,
    /// Projects that exist in the sandbox (repeatable).
    #[arg(long = "project", value_name = "ID")]
    pub projects: Vec<String>,
    /// Fault injection, e.g. `seed=7,rate=0.2,kinds=429|500|503|drop,latency=100ms,op_delay=2s`.
    #[arg(long)]
    pub faults: Option<String>,
    /// Also enable this API at start (repeatable), e.g. `run.googleapis.com`.
    #[arg(long = "enable-api", value_name = "SERVICE")]
    pub enable_apis: Vec<String>,
    /// Extra image → local command rules (YAML or JSON), tried before the built-in ones.
    #[arg(long, value_name = "FILE")]
    pub images: Option<PathBuf>,
    /// How long long-running operations take, e.g. `500ms`, `2s`.
    #[arg(long, default_value = "500ms", value_name = "DURATION")]
    pub op_delay: String,
    /// Eventual-consistency delays (new service account visibility, grant propagation); `0` turns them off.
    #[arg(long, default_value = "1s", value_name = "DURATION")]
    pub consistency_delay: String,
    /// Enforce the key-creation org policy (`iam.disableServiceAccountKeyCreation`) from the start.
    #[arg(long)]
    pub disable_key_creation: bool,
    /// Keep state in DIR/state.json across restarts (secret payloads are never written).
    #[arg(long)]
    pub persist: bool,
    /// The `bootstrap` binary that `${bootstrap}` names in image rules (the embedded worker
    /// image runs it). Default: `bootstrap` next to this binary.
    #[arg(long, value_name = "PATH")]
    pub bootstrap_bin: Option<PathBuf>,
    /// Write a gcloud configuration for this sandbox into DIR (use it with
    /// `CLOUDSDK_CONFIG=DIR gcloud ...`); also adds the sandbox's loopback host names
    /// (`sandbox.localhost`, `<region>-sandbox.localhost`) to /etc/hosts when missing.
    #[arg(long, value_name = "DIR")]
    pub gcloud_config: Option<PathBuf>,
    /// The Cloud Run region of the gcloud configuration (`run/region`).
    #[arg(
        long,
        default_value = "us-central1",
        value_name = "REGION",
        requires = "gcloud_config"
    )]
    pub gcloud_region: String,
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Parses the process's arguments and serves; errors are printed with their causes.
pub fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose, args.quiet);
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,gcp_sandbox=debug",
        (false, _) => "debug,gcp_sandbox=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// Builds the configuration from the flags, starts the sandbox, prints one ready line and
/// serves until interrupted.
pub fn run(args: &Args) -> Result<ExitCode> {
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
        .unwrap_or_else(|| crate::DEFAULT_PROJECT.to_owned());
    runtime.block_on(async move {
        let sandbox = crate::start(config).await?;
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
/// [`crate::hosts`]).
fn write_gcloud_config(
    args: &Args,
    dir: &std::path::Path,
    sandbox: &crate::Sandbox,
    project: &str,
) -> Result<()> {
    let hosts = std::path::Path::new("/etc/hosts");
    match crate::hosts::ensure_hosts_file(hosts) {
        Ok(added) if !added.is_empty() => {
            tracing::info!("added {} sandbox host names to /etc/hosts", added.len())
        }
        Ok(_) => {}
        Err(err) => {
            let names = crate::hosts::host_names().join(" ");
            return Err(err.context(format!(
                "--gcloud-config: gcloud needs these names on 127.0.0.1; add this line to \
                 /etc/hosts (as root) and start again:\n127.0.0.1 {names}"
            )));
        }
    }
    let gcloud = crate::hosts::GcloudConfig {
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

/// The `bootstrap` binary next to the running one (how `cargo build` and `cargo install` lay
/// them out).
fn sibling_bootstrap() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    Some(me.with_file_name(format!("bootstrap{}", std::env::consts::EXE_SUFFIX)))
}

/// The sandbox configuration the flags describe.
pub fn config(args: &Args) -> Result<Config> {
    let mut config = Config::new(&args.dir);
    // `${bootstrap}` must name the tool (it runs `bootstrap worker`), not this binary.
    let mut vars = Placeholders::from_env();
    if let Some(bin) = args.bootstrap_bin.clone().or_else(sibling_bootstrap) {
        vars.bootstrap = bin;
    }
    config.images = ImageMap::with_defaults(vars);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_build_the_config_and_bootstrap_names_the_tool() {
        let args = Args::try_parse_from([
            "bootstrap-sandbox",
            "--port",
            "0",
            "--dir",
            "/tmp/x",
            "--project",
            "p-1",
            "--op-delay",
            "2s",
            "--consistency-delay",
            "0",
            "--bootstrap-bin",
            "/opt/bin/bootstrap",
            "--persist",
        ])
        .expect("flags");
        let config = config(&args).expect("config");
        assert_eq!(config.port, 0);
        assert_eq!(config.projects, vec!["p-1".to_string()]);
        assert_eq!(config.op_delay, std::time::Duration::from_secs(2));
        assert!(config.persist);
        let bad = Args::try_parse_from(["bootstrap-sandbox", "--op-delay", "soon"]).expect("flags");
        let err = super::config(&bad).unwrap_err().to_string();
        assert!(err.starts_with("--op-delay:"), "{err}");
    }
}
