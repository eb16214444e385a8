//! Harness of the end-to-end tests: an in-process GCP sandbox, the real Prefect server the
//! test command started, and the `bootstrap` binary run as a user would, with every byte it
//! prints kept for the secret scan.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use gcp_sandbox::executor::{ImageMap, Placeholders};

pub struct World {
    pub dir: tempfile::TempDir,
    pub sandbox: gcp_sandbox::Sandbox,
    pub prefect_url: String,
    /// Everything the binary printed, for the secret scan.
    pub transcript: Mutex<String>,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
    /// Literal text that snapshots show as a placeholder (see [`World::redact`]).
    pub redactions: Mutex<Vec<(String, String)>>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The `bootstrap` binary under test.
///
/// `CARGO_BIN_EXE_bootstrap` when the test runner sets it at run time (nextest does), else the
/// binary beside the test's own executable (`target/debug/deps/it-*` -> `target/debug/bootstrap`):
/// cargo builds the package's binaries before its integration tests.
pub fn bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_bootstrap") {
        return PathBuf::from(path);
    }
    let path = profile_dir().join(format!("bootstrap{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "no bootstrap binary at {} (run the tests with cargo test or cargo nextest, which build it)",
        path.display()
    );
    path
}

/// `target/<profile>`, from the test executable's path (`target/<profile>/deps/<test>-<hash>`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("the test runs from target/<profile>/deps")
}

impl World {
    /// A fresh sandbox with `project`, and the shared Prefect server.
    pub async fn start(project: &str) -> World {
        Self::start_with(project, |_| {}).await
    }

    pub async fn start_with(project: &str, tweak: impl FnOnce(&mut gcp_sandbox::Config)) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = gcp_sandbox::Config::new(dir.path().join("sandbox"));
        config.projects = vec![project.to_string()];
        config.images = ImageMap::with_defaults(Placeholders {
            venv: crate::venv(),
            bootstrap: bin(),
            cwd: crate::repo_root(),
        });
        tweak(&mut config);
        let sandbox = gcp_sandbox::start(config).await.expect("sandbox starts");
        World {
            dir,
            prefect_url: crate::prefect_api_url(),
            sandbox,
            transcript: Mutex::new(String::new()),
            env: Vec::new(),
            redactions: Mutex::new(Vec::new()),
        }
    }

    /// Writes a plan file into the test's directory.
    pub fn plan_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write plan");
        path
    }

    /// Runs `bootstrap <args>` against this world (blocking; call from spawn_blocking or a
    /// plain test), and keeps what it printed in the transcript.
    pub fn run(&self, args: &[&str]) -> Run {
        let Output {
            status,
            stdout,
            stderr,
        } = self.command(args).output().expect("run bootstrap");
        let run = Run {
            code: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        let mut t = self.transcript.lock().unwrap();
        t.push_str(&format!(
            "$ bootstrap {}\n{}\n{}\n",
            args.join(" "),
            run.stdout,
            run.stderr
        ));
        run
    }

    /// Runs and requires exit code `code`, showing the output otherwise.
    pub fn expect(&self, args: &[&str], code: i32) -> Run {
        let r = self.run(args);
        assert_eq!(
            r.code,
            code,
            "bootstrap {} exited {} (wanted {code})\n--- stdout\n{}\n--- stderr\n{}",
            args.join(" "),
            r.code,
            r.stdout,
            r.stderr
        );
        r
    }

    /// A GCP client acting as the operator (for drift and foreign writers in tests).
    pub async fn operator_http(&self) -> bootstrap_gcp::GcpHttp {
        let key = std::fs::read_to_string(&self.sandbox.operator_key_path).expect("operator key");
        let tokens =
            bootstrap_gcp::ServiceAccountKeySource::from_json(&secrecy::SecretString::from(key))
                .expect("operator key parses");
        bootstrap_gcp::GcpHttp::new(
            bootstrap_gcp::Endpoints::with_base(&self.sandbox.url).expect("endpoint"),
            std::sync::Arc::new(tokens),
            bootstrap_gcp::RetryPolicy::default(),
        )
        .expect("client")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Gives the `bootstrap` runs a new Prefect Cloud-style API key and returns it: the plan
    /// then stores it in Secret Manager for the worker, as the guide does (the local Prefect
    /// server ignores it).
    pub fn use_api_key(&mut self) -> String {
        let key = format!("pnu_{}", uuid::Uuid::new_v4().simple());
        self.env.push(("PREFECT_API_KEY".into(), key.clone()));
        key
    }

    /// Shows `literal` as `placeholder` in this world's snapshots (the per-test name suffix).
    pub fn redact(&self, literal: &str, placeholder: &str) {
        self.redactions
            .lock()
            .unwrap()
            .push((literal.to_string(), placeholder.to_string()));
    }

    /// The insta filters of this world's snapshots: its literal redactions, its temporary
    /// directory, then [`FILTERS`].
    pub fn filters(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .redactions
            .lock()
            .unwrap()
            .iter()
            .map(|(literal, placeholder)| (escape_regex(literal), placeholder.clone()))
            .collect();
        out.push((
            escape_regex(&self.path().display().to_string()),
            "[TMP]".into(),
        ));
        out.extend(
            FILTERS
                .iter()
                .map(|(re, placeholder)| (re.to_string(), placeholder.to_string())),
        );
        out
    }
}

/// What varies from run to run in what users read, as insta filters (regex, placeholder):
/// loopback ports, uuids, and durations. Names and values the test is about are left alone.
pub const FILTERS: &[(&str, &str)] = &[
    (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
    (r"localhost:\d+", "localhost:[PORT]"),
    (
        r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        "[UUID]",
    ),
    (r"\b\d+(\.\d+)?(ms|s)\b", "[TIME]"),
];

/// `text` as a regex that matches it literally.
pub fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What a user reads of a run, for a snapshot: the exit code and stdout, and stderr when
/// `with_stderr`.
pub fn shown(run: &Run, with_stderr: bool) -> String {
    let mut out = format!(
        "exit code: {}\n----- stdout -----\n{}",
        run.code, run.stdout
    );
    if with_stderr {
        out.push_str(&format!("\n----- stderr -----\n{}", run.stderr));
    }
    out
}

/// Replaces `key: value` lines of a YAML plan (first match, by indentation-free key).
pub fn set_line(plan: &str, key: &str, value: &str) -> String {
    let mut done = false;
    plan.lines()
        .map(|l| {
            let t = l.trim_start();
            if !done && (t.starts_with(&format!("{key}:")) || t.starts_with(&format!("- {key}:"))) {
                done = true;
                let indent = &l[..l.len() - t.len()];
                let dash = if t.starts_with("- ") { "- " } else { "" };
                format!("{indent}{dash}{key}: {value}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- Reliability suite helpers (tests/reliability_*.rs) ----

/// The service account of [`light_plan`].
pub const LIGHT_SA: &str = "prefect-reliability";

/// A plan with the guide's service account, roles, key, credentials block and work pool but no
/// worker service and no deployments: light enough to cycle many times. `suffix` keeps the
/// Prefect names apart on the shared server.
pub fn light_plan(project: &str, suffix: &str) -> String {
    pool_plan(
        project,
        LIGHT_SA,
        "reliability suite",
        "cloud-run-v2",
        suffix,
    )
}

/// The guide's service account (named `sa`, described by `description`), roles, key,
/// credentials block and a work pool of `pool_type`, without worker service or deployments.
/// `suffix` keeps the Prefect names apart on the shared server.
pub fn pool_plan(
    project: &str,
    sa: &str,
    description: &str,
    pool_type: &str,
    suffix: &str,
) -> String {
    format!(
        r#"version: 1
gcp:
  project: {project}
  region: us-central1
service_account:
  name: {sa}
  display_name: {sa}
  description: {description}
  roles: [roles/iam.serviceAccountUser, roles/run.admin]
  key: json
prefect:
  api_url: "{{{{ env.PREFECT_API_URL }}}}"
  api_key: "{{{{ env.PREFECT_API_KEY | default(value='') }}}}"
credentials_block:
  name: creds-{suffix}
work_pool:
  name: pool-{suffix}
  type: {pool_type}
"#
    )
}

/// The email of [`LIGHT_SA`] in `project`.
pub fn light_email(project: &str) -> String {
    format!("{LIGHT_SA}@{project}.iam.gserviceaccount.com")
}

/// A suffix for Prefect names that is unique and valid in every name the plan builds.
pub fn suffix(prefix: &str) -> String {
    crate::unique_name(prefix).replace('_', "-")
}

/// Whether the heavy variant runs (`BOOTSTRAP_RELIABILITY_FULL=1`).
pub fn reliability_full() -> bool {
    std::env::var("BOOTSTRAP_RELIABILITY_FULL").is_ok_and(|v| v == "1")
}

/// `full` with `BOOTSTRAP_RELIABILITY_FULL=1`, else `reduced`.
pub fn count(full: usize, reduced: usize) -> usize {
    if reliability_full() { full } else { reduced }
}

/// Runs the binary from inside a multi-threaded tokio test.
pub fn run_in(w: &World, args: &[&str], code: i32) -> Run {
    tokio::task::block_in_place(|| w.expect(args, code))
}

/// `plan --detailed-exitcode` of `plan` finds nothing to do: exit 0 and "No changes."
/// (`context` says where in the test, for the failure message).
pub fn assert_quiet_plan(w: &World, plan: &str, context: &str) {
    let p = run_in(w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(
        p.stdout.starts_with("No changes."),
        "{context}: {}",
        p.stdout
    );
}

/// `plan --detailed-exitcode` of `plan` has changes (exit 2) and shows each of `lines`;
/// returns the run for further checks.
pub fn plan_shows(w: &World, plan: &str, lines: &[&str]) -> Run {
    let p = run_in(w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    for line in lines {
        assert!(p.stdout.contains(line), "no {line:?} in\n{}", p.stdout);
    }
    p
}

/// Lets the sandbox run the offline example's images (`examples/offline/sandbox-images.yaml`).
pub fn offline_images(c: &mut gcp_sandbox::Config) {
    c.images
        .extend_from_file(&crate::repo_root().join("examples/offline/sandbox-images.yaml"))
        .expect("the offline example's image table loads");
}

/// What the sandbox and the Prefect server hold of a [`light_plan`] deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// Whether the service account exists.
    pub account: bool,
    /// Ids of its keys (the sandbox's own state: no faults, no eventual consistency).
    pub keys: Vec<String>,
    /// Project roles the account holds, sorted, one entry per binding that names it.
    pub roles: Vec<String>,
    /// The block's `private_key_id`, when the block exists (`Some(None)`: block without key).
    pub block_key: Option<Option<String>>,
    /// Whether the work pool exists.
    pub pool: bool,
}

impl Footprint {
    /// Nothing left.
    pub fn is_empty(&self) -> bool {
        !self.account
            && self.keys.is_empty()
            && self.roles.is_empty()
            && self.block_key.is_none()
            && !self.pool
    }
}

/// A Prefect client for the shared server.
pub fn prefect_client(url: &str) -> bootstrap_prefect::PrefectClient {
    bootstrap_prefect::PrefectClient::new(
        bootstrap_prefect::PrefectConfig::for_url(url).expect("prefect url"),
    )
    .expect("prefect client")
}

/// A new work pool of `pool_type` (named from `prefix`) with `template` as its base job
/// template (Prefect's default for the type when `None`); its name.
pub async fn new_pool(
    c: &bootstrap_prefect::PrefectClient,
    prefix: &str,
    pool_type: &str,
    template: Option<serde_json::Value>,
) -> String {
    c.create_work_pool(&bootstrap_prefect::WorkPoolCreate {
        name: crate::unique_name(prefix),
        pool_type: pool_type.into(),
        description: None,
        base_job_template: template,
        is_paused: None,
        concurrency_limit: None,
    })
    .await
    .expect("pool")
    .name
}

/// A new flow with one deployment `d` of `flows/hello.py` on `pool`; the deployment's id.
pub async fn hello_deployment(c: &bootstrap_prefect::PrefectClient, pool: &str) -> uuid::Uuid {
    let flow = c
        .upsert_flow(&crate::unique_name("hello"), &[])
        .await
        .expect("flow");
    let spec = bootstrap_prefect::DeploymentSpec {
        entrypoint: Some("flows/hello.py:hello".into()),
        work_pool_name: Some(pool.to_string()),
        ..Default::default()
    };
    c.upsert_deployment(flow.id, "d", &spec)
        .await
        .expect("deployment")
        .id
}

/// A Quick Run of `deployment` with its defaults (the UI's "Quick run"); the run's id.
pub async fn quick_run(c: &bootstrap_prefect::PrefectClient, deployment: uuid::Uuid) -> uuid::Uuid {
    c.create_flow_run_from_deployment(deployment, &Default::default())
        .await
        .expect("quick run")
        .id
}

/// Reads the footprint of `light_plan(project, suffix)`. The block is read with its secrets, but
/// only the key id leaves this function.
pub async fn footprint(w: &World, project: &str, suffix: &str) -> Footprint {
    let email = light_email(project);
    let member = format!("serviceAccount:{email}");
    let (account, keys, roles) = {
        let data = w.sandbox.state.read();
        let account = data.service_accounts.contains_key(&email);
        let keys: Vec<String> = data
            .keys
            .values()
            .filter(|k| k.email == email)
            .map(|k| k.id.clone())
            .collect();
        let mut roles: Vec<String> = data
            .project(project)
            .map(|p| {
                p.policy
                    .bindings
                    .iter()
                    .filter(|b| b.members.iter().any(|m| m == &member))
                    .map(|b| b.role.clone())
                    .collect()
            })
            .unwrap_or_default();
        roles.sort();
        (account, keys, roles)
    };
    let block_key = block_key_field(w, suffix, "private_key_id").await;
    let pool = prefect_client(&w.prefect_url)
        .work_pool(&format!("pool-{suffix}"))
        .await
        .expect("read pool")
        .is_some();
    Footprint {
        account,
        keys,
        roles,
        block_key,
        pool,
    }
}

/// The private key the block of `light_plan(.., suffix)` holds (for secret scans; never print).
pub async fn block_private_key(w: &World, suffix: &str) -> Option<String> {
    block_key_field(w, suffix, "private_key").await.flatten()
}

/// `service_account_info.<field>` of the credentials block of `light_plan(.., suffix)`: `None`
/// without a block, `Some(None)` when the block has no such field.
async fn block_key_field(w: &World, suffix: &str, field: &str) -> Option<Option<String>> {
    prefect_client(&w.prefect_url)
        .block_document_by_name_with_secrets("gcp-credentials", &format!("creds-{suffix}"))
        .await
        .expect("read block")
        .map(|b| {
            b.data.expose()["service_account_info"][field]
                .as_str()
                .map(str::to_owned)
        })
}

/// Asserts the converged footprint: one account, one key which the block uses, the plan's two
/// roles once each, the pool.
pub fn assert_converged(f: &Footprint, context: &str) {
    assert!(f.account, "{context}: no service account: {f:?}");
    assert_eq!(f.keys.len(), 1, "{context}: want exactly one key: {f:?}");
    assert_eq!(
        f.block_key,
        Some(Some(f.keys[0].clone())),
        "{context}: the block must use the live key: {f:?}"
    );
    assert_eq!(
        f.roles,
        vec!["roles/iam.serviceAccountUser", "roles/run.admin"],
        "{context}: roles: {f:?}"
    );
    assert!(f.pool, "{context}: no work pool: {f:?}");
}

/// Records a scenario's counts in `target/tmp/reliability/<name>.json` (for RELIABILITY.md)
/// and prints them.
pub fn record(name: &str, counts: serde_json::Value) {
    // CARGO_TARGET_TMPDIR of an integration test: target/tmp.
    let dir = profile_dir()
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
        .join("tmp/reliability");
    let _ = std::fs::create_dir_all(&dir);
    let text = serde_json::to_string_pretty(&counts).unwrap_or_default();
    eprintln!("reliability {name}: {text}");
    let _ = std::fs::write(dir.join(format!("{name}.json")), text);
}

impl World {
    /// `bootstrap run FLOW/DEPLOYMENT -f PLAN --json` (a Quick Run followed to its end, from
    /// an async test); asserts it ended COMPLETED and returns the run's JSON.
    pub fn quick_run_completed(
        &self,
        plan: &str,
        flow: &str,
        deployment: &str,
    ) -> serde_json::Value {
        let target = format!("{flow}/{deployment}");
        let args = ["run", &target, "-f", plan, "--timeout", "300", "--json"];
        let r = tokio::task::block_in_place(|| self.expect(&args, 0));
        let v: serde_json::Value = serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("run --json: {e}\n{}\n{}", r.stdout, r.stderr));
        assert_eq!(v["state"], "COMPLETED", "{v}\n{}", r.stderr);
        v
    }

    /// How many calls of one Google method (its discovery id) the sandbox has served.
    pub fn calls(&self, method: &str) -> u64 {
        self.sandbox
            .state
            .faults
            .calls()
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

impl World {
    /// `bootstrap <args>` with this world's environment, not started (for tests that kill or
    /// race the process). Its output is not in the transcript.
    pub fn command(&self, args: &[&str]) -> Command {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).ok();
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("NO_COLOR", "1")
            .env("BOOTSTRAP_GCP_ENDPOINT", &self.sandbox.url)
            .env(
                "GOOGLE_APPLICATION_CREDENTIALS",
                &self.sandbox.operator_key_path,
            )
            .env("PREFECT_API_URL", &self.prefect_url);
        // Debugging a failing test: `BOOTSTRAP_TEST_RUST_LOG=debug` reaches the binary.
        if let Ok(filter) = std::env::var("BOOTSTRAP_TEST_RUST_LOG") {
            cmd.env("RUST_LOG", filter);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Adds a finished process's output to the transcript.
    pub fn note(&self, what: &str, out: &Output) {
        let mut t = self.transcript.lock().unwrap();
        t.push_str(&format!(
            "$ {what}\n{}\n{}\n",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// Asserts that the block of `f`, if it holds a key, holds one of the account's live keys.
pub fn assert_block_key_live(f: &Footprint, context: &str) {
    if let Some(Some(id)) = &f.block_key {
        assert!(
            f.keys.contains(id),
            "{context}: the block points at deleted key {id}: {f:?}"
        );
    }
}

// ---- The guide's plan (guide, reliability::privilege) ----

/// In the sandbox the worker image serves its health endpoint on `$PORT` (a stand-in for the
/// Python worker, whose own run is covered by the worker tests): `/health`, where the worker
/// service's startup probe looks.
pub fn healthy_worker_image() -> gcp_sandbox::executor::ImageRule {
    use gcp_sandbox::executor::{ImageRule, Patterns};
    ImageRule {
        patterns: Patterns::Many(vec!["prefecthq/prefect:*".into()]),
        programs: Default::default(),
        path: vec![],
        host_path: true,
        entrypoint: vec![
            "sh".into(),
            "-c".into(),
            "d=$(mktemp -d) && echo ok > \"$d/health\" && exec python3 -m http.server --bind 127.0.0.1 --directory \"$d\" \"$PORT\"".into(),
            "worker".into(),
        ],
        cmd: vec![],
        workdir: None,
        env: Default::default(),
    }
}

/// Lets the sandbox run [`healthy_worker_image`] before its other rules.
pub fn healthy_worker(c: &mut gcp_sandbox::Config) {
    let dir = c.dir.clone();
    c.images.prepend(vec![healthy_worker_image()], &dir);
}

/// `plans/guide.yaml` with its Prefect names made unique by `suffix` (the server is shared).
pub fn guide_plan(suffix: &str) -> String {
    let guide =
        std::fs::read_to_string(crate::repo_root().join("plans/guide.yaml")).expect("guide plan");
    let plan = set_line(&guide, "name", "prefect-service-account");
    plan.replace(
        "name: gcp-credentials",
        &format!("name: gcp-credentials-{suffix}"),
    )
    .replace(
        "name: my-cloud-run-pool",
        &format!("name: my-cloud-run-pool-{suffix}"),
    )
    .replace(
        "name: gcp-weather-deploy",
        &format!("name: gcp-weather-deploy-{suffix}"),
    )
}

/// How the worker of [`offline_plan`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineWorker<'a> {
    /// The example as written: an always-on Cloud Run service.
    Service,
    /// A Cloud Run worker pool with one instance.
    Pool,
    /// A worker pool that scales to zero after `idle` (e.g. `"5s"`).
    PoolScaleToZero { idle: &'a str },
}

/// The offline example's (or any part of it) block, work pool and worker service names made
/// unique by `suffix`, as every test on the shared Prefect server needs.
pub fn offline_names_unique(example: &str, suffix: &str) -> String {
    example
        .replace(
            "name: gcp-credentials",
            &format!("name: gcp-credentials-{suffix}"),
        )
        .replace(
            "name: offline-pool",
            &format!("name: offline-pool-{suffix}"),
        )
        .replace(
            "service: prefect-worker",
            &format!("service: worker-{suffix}"),
        )
}

/// `examples/offline/bootstrap.yaml` with its names made unique by `suffix` (the Prefect server
/// is shared) and its worker run as `worker` says. The plan is written into the test's folder,
/// which the sandbox writes to, so `build.context: .` is kept pointing at the example's folder:
/// otherwise every plan would see a new build source.
pub fn offline_plan(suffix: &str, worker: OfflineWorker<'_>) -> String {
    let example =
        std::fs::read_to_string(crate::repo_root().join("examples/offline/bootstrap.yaml"))
            .expect("examples/offline/bootstrap.yaml");
    let text = offline_names_unique(&example, suffix)
        .replace(
            "- name: offline-report",
            &format!("- name: offline-report-{suffix}"),
        )
        .replace(
            "      context: .\n",
            &format!(
                "      context: {}\n",
                crate::repo_root().join("examples/offline").display()
            ),
        );
    let kind = match worker {
        OfflineWorker::Service => return text,
        OfflineWorker::Pool => "  kind: worker-pool\n  instances: 1\n".to_owned(),
        OfflineWorker::PoolScaleToZero { idle } => {
            format!("  kind: worker-pool\n  instances: 1\n  scale_to_zero:\n    idle: {idle}\n")
        }
    };
    assert!(
        text.contains("  min_instances: 1\n"),
        "the offline example no longer has the worker keys this helper rewrites"
    );
    text.replace("  min_instances: 1\n", &kind)
        .replace("  cpu_throttling: false\n", "")
        .replace("  allow_unauthenticated: false\n", "")
}

/// Deletes, when dropped, the Prefect automations and blocks a test made on the shared server,
/// by name, whether the test passed or panicked. An automation left behind keeps running for
/// every later test (a scale-to-zero sweep calls its waker every minute, long after the
/// sandbox that served it is gone). Deleting what `destroy` already removed is a no-op.
pub struct PrefectCleanup {
    url: String,
    automations: Vec<String>,
    /// `(block type slug, block name)`.
    blocks: Vec<(String, String)>,
}

impl PrefectCleanup {
    pub fn new(url: &str) -> PrefectCleanup {
        PrefectCleanup {
            url: url.to_owned(),
            automations: vec![],
            blocks: vec![],
        }
    }

    pub fn automation(mut self, name: impl Into<String>) -> Self {
        self.automations.push(name.into());
        self
    }

    pub fn block(mut self, type_slug: impl Into<String>, name: impl Into<String>) -> Self {
        self.blocks.push((type_slug.into(), name.into()));
        self
    }

    /// Deletes them now; returns what could not be deleted (`what: error`).
    async fn run(&self) -> Vec<String> {
        let prefect = prefect_client(&self.url);
        let mut failed = vec![];
        for name in &self.automations {
            match prefect.automations_by_name(name).await {
                Ok(found) => {
                    for a in found {
                        if let Err(e) = prefect.delete_automation(a.id).await {
                            failed.push(format!("automation {name}: {e}"));
                        }
                    }
                }
                Err(e) => failed.push(format!("automation {name}: {e}")),
            }
        }
        for (slug, name) in &self.blocks {
            match prefect.block_document_by_name(slug, name).await {
                Ok(Some(b)) => {
                    if let Err(e) = prefect.delete_block_document(b.id).await {
                        failed.push(format!("block {slug}/{name}: {e}"));
                    }
                }
                Ok(None) => {}
                Err(e) => failed.push(format!("block {slug}/{name}: {e}")),
            }
        }
        failed
    }
}

impl Drop for PrefectCleanup {
    fn drop(&mut self) {
        // Drop cannot await, and it may run while the test's runtime unwinds a panic: the
        // deletes run on a runtime of their own, on a thread of their own, bounded in time.
        let this = PrefectCleanup {
            url: std::mem::take(&mut self.url),
            automations: std::mem::take(&mut self.automations),
            blocks: std::mem::take(&mut self.blocks),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let failed = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(async {
                    tokio::time::timeout(std::time::Duration::from_secs(60), this.run())
                        .await
                        .unwrap_or_else(|_| vec!["timed out after 60 s".to_owned()])
                }),
                Err(e) => vec![format!("no runtime: {e}")],
            };
            let _ = tx.send(failed);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(70)) {
            Ok(failed) if failed.is_empty() => {}
            Ok(failed) => eprintln!("test cleanup left on the Prefect server: {failed:?}"),
            Err(_) => eprintln!("test cleanup of the Prefect server did not finish in 70 s"),
        }
    }
}
