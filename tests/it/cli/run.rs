//! `bootstrap run` end to end: a real Prefect server, Prefect's own process worker serving a
//! pool, and the built binary following runs of a flow that completes and one that raises.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use bootstrap_prefect::{DeploymentSpec, PrefectClient, PrefectConfig};
use serde_json::json;
use testkit::{prefect_api_url, repo_root, unique_name, venv_bin};

/// Prefect's process worker as a child in its own process group, killed (group and all) on
/// drop: it does not stop on SIGTERM.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(pool: &str, home: &Path) -> Worker {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::File::create(home.join("worker.log")).expect("worker log");
    let child = Command::new(venv_bin("prefect"))
        .args(["worker", "start", "-p", pool, "-t", "process"])
        .env("PREFECT_API_URL", prefect_api_url())
        .env("PREFECT_HOME", home)
        .env("PREFECT_WORKER_QUERY_SECONDS", "1")
        .env_remove("PREFECT_API_KEY")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("start prefect worker");
    Worker(child)
}

/// Runs the binary with the test server as its only Prefect settings (no profile).
fn bootstrap(home: &Path, args: &[&str]) -> Output {
    bootstrap_at(&prefect_api_url(), home, args)
}

/// [`bootstrap`] with Prefect at `api_url`.
fn bootstrap_at(api_url: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bootstrap"))
        .args(args)
        .env("PREFECT_API_URL", api_url)
        .env("PREFECT_HOME", home)
        .env("NO_COLOR", "1")
        .env_remove("PREFECT_API_KEY")
        .env_remove("PREFECT_PROFILE")
        .output()
        .expect("run bootstrap")
}

async fn deploy(c: &PrefectClient, pool: &str, flow: &str, entrypoint: &str) -> String {
    let f = c.upsert_flow(flow, &[]).await.expect("flow");
    let name = unique_name("dep");
    let dir = repo_root().join("tests/fixtures/run");
    c.upsert_deployment(
        f.id,
        &name,
        &DeploymentSpec {
            entrypoint: Some(entrypoint.into()),
            work_pool_name: Some(pool.into()),
            pull_steps: Some(vec![json!({
                "prefect.deployments.steps.set_working_directory": {"directory": dir.display().to_string()}
            })]),
            ..Default::default()
        },
    )
    .await
    .expect("deployment");
    format!("{flow}/{name}")
}

async fn pool(c: &PrefectClient) -> String {
    let template = c
        .default_base_job_template("process")
        .await
        .expect("metadata")
        .expect("process template");
    testkit::new_pool(c, "run-pool", "process", Some(template)).await
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn run_follows_flow_runs_to_their_end() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let c = PrefectClient::new(PrefectConfig::for_url(&prefect_api_url()).expect("url"))
        .expect("client");
    let (served, idle, good, bad, unserved) = rt.block_on(async {
        let served = pool(&c).await;
        let idle = pool(&c).await;
        let good = deploy(&c, &served, "weather", "flows/weather.py:weather").await;
        let bad = deploy(&c, &served, "boom", "flows/boom.py:boom").await;
        let unserved = deploy(&c, &idle, "weather", "flows/weather.py:weather").await;
        (served, idle, good, bad, unserved)
    });
    let home = tempfile::tempdir().expect("tempdir");
    let worker = start_worker(&served, home.path());

    let out = bootstrap(
        home.path(),
        &["run", &good, "--param", "city=Lisbon", "--timeout", "180"],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let worker_log = std::fs::read_to_string(home.path().join("worker.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nworker:\n{worker_log}"
    );
    // Shown with --nocapture; captured otherwise.
    println!("{stdout}");
    assert!(stdout.contains("Created flow run"), "{stdout}");
    assert!(stdout.contains("state Completed"), "{stdout}");
    assert!(
        stdout.contains("weather for Lisbon"),
        "the flow's log line:\n{stdout}"
    );
    assert!(
        stdout.contains("markdown artifact weather-report"),
        "{stdout}"
    );
    assert!(stdout.contains("Weather report"), "{stdout}");
    assert!(
        stdout.contains("  Lisbon  │  21"),
        "the table, aligned:\n{stdout}"
    );

    let out = bootstrap(home.path(), &["run", &bad, "--timeout", "180", "--json"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("ended Failed"), "{stderr}");
    assert!(stderr.contains("the flow failed on purpose"), "{stderr}");
    let result: serde_json::Value =
        serde_json::from_str(&stdout).expect("--json prints one JSON document");
    assert_eq!(result["state"], "FAILED", "{result}");
    assert!(
        result["message"]
            .as_str()
            .is_some_and(|m| m.contains("the flow failed on purpose")),
        "{result}"
    );
    drop(worker);

    // Nobody serves the idle pool: --timeout ends the wait with a clear error.
    let out = bootstrap(home.path(), &["run", &unserved, "--timeout", "2"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gave up following") && stderr.contains("--timeout"),
        "{stderr}"
    );

    // A misspelt deployment gets a suggestion.
    let typo = format!("{good}x");
    let out = bootstrap(home.path(), &["run", &typo]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("did you mean `{good}`")),
        "{stderr}"
    );

    rt.block_on(async {
        for p in [&served, &idle] {
            let _ = c.delete_work_pool(p).await;
        }
    });
}

/// A Prefect API URL nothing listens on.
const NOBODY: &str = "http://127.0.0.1:1/api";

#[test]
fn run_without_a_server_is_one_clear_line() {
    let home = tempfile::tempdir().expect("tempdir");
    let out = bootstrap_at(NOBODY, home.path(), &["run", "a/b"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Prefect API at http://127.0.0.1:1/api"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// `run --file` uses the plan's Prefect settings, as `apply` does (they win over the
/// environment), so a Quick Run goes to the server the plan set up.
#[test]
fn run_uses_the_plan_files_prefect_settings() {
    let home = tempfile::tempdir().expect("tempdir");
    let guide =
        std::fs::read_to_string(testkit::repo_root().join("plans/guide.yaml")).expect("guide plan");
    let plan = guide.replace(
        "api_url: \"{{ env.PREFECT_API_URL | default(value='http://127.0.0.1:4200/api') }}\"",
        "api_url: http://127.0.0.1:2/api",
    );
    assert_ne!(
        plan, guide,
        "the guide's api_url line changed; update this test"
    );
    let path = home.path().join("bootstrap.yaml");
    std::fs::write(&path, plan).expect("write plan");
    let path = path.to_str().expect("utf-8 path");
    let out = bootstrap_at(NOBODY, home.path(), &["run", "a/b", "--file", path]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the Prefect API at http://127.0.0.1:2/api"),
        "{stderr}"
    );
}
