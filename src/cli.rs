//! The command-line surface. Parsing only: each subcommand's work lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Prefect's Google Cloud Run worker guide as code.
///
/// One plan file describes the guide: the service account and its roles, the key and the
/// Prefect credentials block, the work pool, the always-on worker service and the deployments.
/// `plan` shows what would change against the live GCP and Prefect APIs; `apply` makes it so;
/// `destroy` removes what the tool created. There is no state file: the live APIs are the truth.
#[derive(Debug, Parser)]
#[command(
    name = "bootstrap",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Base URL for every Google API (the local sandbox sets this).
    #[arg(
        long,
        env = "BOOTSTRAP_GCP_ENDPOINT",
        global = true,
        value_name = "URL"
    )]
    pub gcp_endpoint: Option<String>,

    /// Google credentials file (any type Google's libraries accept); before
    /// GOOGLE_APPLICATION_CREDENTIALS and gcloud's application-default credentials.
    #[arg(long, global = true, value_name = "PATH")]
    pub credentials_file: Option<PathBuf>,

    /// Act as this service account (its token is bought with the found credentials;
    /// `a,b,target` goes through delegates). Default: gcloud's auth/impersonate_service_account.
    #[arg(long, global = true, value_name = "EMAIL")]
    pub impersonate_service_account: Option<String>,

    /// Project billed for quota of user-credential calls (x-goog-user-project). Default: the
    /// plan's gcp.quota_project, GOOGLE_CLOUD_QUOTA_PROJECT, the credentials' quota_project_id.
    #[arg(long, global = true, value_name = "PROJECT")]
    pub quota_project: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct FileArg {
    /// The plan file.
    #[arg(
        short,
        long = "file",
        default_value = "bootstrap.yaml",
        value_name = "PATH"
    )]
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a plan file by answering a few questions.
    Init(InitArgs),
    /// Check a plan file offline; makes no network call.
    Validate(ValidateArgs),
    /// Show what apply would change against the live GCP and Prefect APIs.
    Plan(PlanArgs),
    /// Make GCP and Prefect match the plan.
    Apply(ApplyArgs),
    /// Delete what the plan names and the tool created.
    Destroy(DestroyArgs),
    /// Check credentials, the project, enabled APIs and the permissions apply needs.
    Doctor(DoctorArgs),
    /// Run a Prefect worker that launches flow runs as Cloud Run jobs.
    Worker(WorkerArgs),
    /// Serve the scale-to-zero waker: wakes a Cloud Run worker pool when its Prefect work pool has runs due.
    Waker(WakerArgs),
    /// Start a flow run of a deployment and follow it to its result.
    Run(RunArgs),
    /// Serve a local stand-in for the Google Cloud APIs that runs containers as processes.
    Sandbox(SandboxArgs),
    /// Print shell completions.
    Completions(CompletionsArgs),
}

/// Answers for `init`. A question whose flag is given is not asked; with `--yes` or without a
/// terminal nothing is asked and the defaults are taken for the rest.
#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// Boxed: the answers are many, and `Command` should stay small.
    #[command(flatten)]
    pub answers: Box<InitAnswers>,
}

/// One flag per question of `init`.
#[derive(Debug, Args)]
pub struct InitAnswers {
    /// GCP project id (default: `core/project` of the active gcloud configuration).
    #[arg(long, value_name = "ID")]
    pub project: Option<String>,
    /// Cloud Run region (default: `run/region` of gcloud, else us-central1).
    #[arg(long)]
    pub region: Option<String>,
    /// Service account id, the part before `@` (default: prefect-service-account).
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
    /// `json`: a key in the Prefect credentials block (as the guide); `none`: keyless.
    #[arg(long, value_parser = ["json", "none"])]
    pub key: Option<String>,
    /// Work pool name (default: prefect.yaml's, else my-cloud-run-pool).
    #[arg(long, value_name = "NAME")]
    pub pool: Option<String>,
    /// Work pool type.
    #[arg(long, value_parser = ["cloud-run", "cloud-run-v2"])]
    pub pool_type: Option<String>,
    /// The worker service's image (default: prefecthq/prefect:3-latest).
    #[arg(long, value_name = "IMAGE")]
    pub worker_image: Option<String>,
    /// `python`: prefect worker start (as the guide); `embedded`: bootstrap worker.
    #[arg(long, value_parser = ["python", "embedded"])]
    pub worker_runtime: Option<String>,
    /// Minimum worker instances (default: 1).
    #[arg(long, value_name = "N")]
    pub min_instances: Option<String>,
    /// Prefect API URL (default: PREFECT_API_URL, else the active Prefect profile's).
    #[arg(long, value_name = "URL")]
    pub prefect_api_url: Option<String>,
    /// Reference PREFECT_API_KEY in the plan even for a server that is not Prefect Cloud.
    #[arg(long)]
    pub api_key: bool,
    /// The first deployment's flow name (default: from the entrypoint).
    #[arg(long, value_name = "NAME")]
    pub deployment_flow: Option<String>,
    /// The first deployment's name (default: prefect.yaml's).
    #[arg(long, value_name = "NAME")]
    pub deployment_name: Option<String>,
    /// The first deployment's entrypoint, `path/to/file.py:function`.
    #[arg(long, value_name = "PATH:FUNC")]
    pub entrypoint: Option<String>,
    /// The first deployment's image (default: prefect.yaml's `work_pool.job_variables.image`).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// The first deployment's parameters, a JSON object.
    #[arg(long, value_name = "JSON")]
    pub params: Option<String>,
    /// Write no deployment.
    #[arg(long, conflicts_with_all = ["deployment_flow", "deployment_name", "entrypoint", "image", "params"])]
    pub no_deployment: bool,
    /// Ask nothing: take the defaults for what flags do not give, and overwrite the file.
    #[arg(short, long)]
    pub yes: bool,
    /// Overwrite an existing plan file without asking.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the checked plan as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 when there are no changes, 1 on error, 2 when there are changes.
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Also save the plan (JSON, no secrets) to PATH; `bootstrap apply PATH` carries out exactly it.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// A plan saved by `bootstrap plan --out`: carry out exactly it, without asking; refused
    /// (exit 1) when GCP, Prefect or the plan file changed since it was made.
    #[arg(value_name = "SAVED_PLAN", conflicts_with = "rotate_key")]
    pub saved_plan: Option<PathBuf>,
    /// Apply without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Print the changelog as JSON.
    #[arg(long)]
    pub json: bool,
    /// Create a new service-account key, update the block, then delete the old key.
    #[arg(long)]
    pub rotate_key: bool,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// Destroy without asking for confirmation.
    #[arg(long)]
    pub auto_approve: bool,
    /// Print the changelog as JSON.
    #[arg(long)]
    pub json: bool,
    /// Leave the service account (and its role bindings) in place.
    #[arg(long)]
    pub keep_service_account: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub file: FileArg,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The work pool to take flow runs from.
    #[arg(short, long, env = "BOOTSTRAP_WORKER_POOL")]
    pub pool: String,
    /// Only these work queues (default: all of the pool's).
    #[arg(long = "queue", value_name = "NAME")]
    pub queues: Vec<String>,
    /// The worker's name (default: one unique per instance and host)
    #[arg(short, long)]
    pub name: Option<String>,
    /// At most this many flow runs at once.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seconds between polls (the event stream makes pickup immediate in between).
    #[arg(long, default_value_t = 10.0)]
    pub poll_interval: f64,
    /// Serve /health.
    #[arg(long)]
    pub healthcheck: bool,
    /// Port of the health endpoint.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Delete the pool's Cloud Run jobs whose latest execution finished longer ago than
    /// --sweep-older-than (`keep_job` ones too) in the pool's default region, then exit.
    #[arg(long)]
    pub sweep: bool,
    /// With --sweep: only jobs finished at least this long ago, e.g. `30m`, `24h`, `7d`.
    #[arg(long, value_name = "AGE", default_value = "24h", value_parser = parse_age, requires = "sweep")]
    pub sweep_older_than: std::time::Duration,
    /// Scale to zero: the worker's own Cloud Run worker pool, `projects/P/locations/R/workerPools/N`.
    #[arg(
        long,
        env = "BOOTSTRAP_SCALE_TO_ZERO_POOL",
        requires = "scale_to_zero_idle"
    )]
    pub scale_to_zero_pool: Option<String>,
    /// Scale to zero: seconds with nothing to do in the work pool before the count goes to 0.
    #[arg(
        long,
        env = "BOOTSTRAP_SCALE_TO_ZERO_IDLE",
        requires = "scale_to_zero_pool"
    )]
    pub scale_to_zero_idle: Option<u64>,
}

/// `<n>s`, `<n>m`, `<n>h` or `<n>d` (whole numbers).
/// `--sweep-older-than`: humantime's durations (`30m`, `24h`, `7d`, `1h 30m`), as the plan
/// file's `worker.scale_to_zero.idle` reads them, so the tool has one duration syntax.
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not an age like 30m, 24h or 7d ({e})"))
}

#[cfg(test)]
mod age_tests {
    use super::parse_age;
    use std::time::Duration;

    #[test]
    fn ages_read_like_the_plan_files_durations() {
        assert_eq!(parse_age("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age(" 1h 30m "), Ok(Duration::from_secs(5_400)));
    }

    #[test]
    fn a_bad_age_says_what_is_expected() {
        for bad in ["", "24", "soon", "-1h", "99999999999999999999d"] {
            let err = parse_age(bad).unwrap_err();
            assert!(
                err.contains("is not an age like 30m, 24h or 7d"),
                "{bad}: {err}"
            );
        }
    }
}

#[derive(Debug, Args)]
pub struct WakerArgs {
    /// The Prefect work pool whose scheduled runs wake the worker pool.
    #[arg(long, env = "BOOTSTRAP_WAKER_WORK_POOL")]
    pub work_pool: String,
    /// The Cloud Run worker pool to wake, `projects/P/locations/R/workerPools/N`.
    #[arg(long, env = "BOOTSTRAP_WAKER_WORKER_POOL")]
    pub worker_pool: String,
    /// The instance count to set when waking.
    #[arg(long, default_value_t = 1)]
    pub instances: u32,
    /// Port to listen on (the shared secret is read from BOOTSTRAP_WAKER_SECRET).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The deployment, as `<flow>/<deployment>`.
    pub deployment: String,
    /// A plan file whose `prefect` settings (API URL, key, auth string) to use, as `apply`
    /// does (default: the environment and the active Prefect profile only).
    #[arg(short, long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// A parameter, `key=value` (value parsed as JSON when it is valid JSON).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Follow the run to its end (the default); `--no-watch` only creates it.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch: bool,
    /// Give up following after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
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
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
