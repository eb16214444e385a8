//! The Prefect half of the guide, end to end (issue 5, "Done when"): `bootstrap apply` against
//! the GCP sandbox and the real Prefect server, then Prefect's own Python SDK and CLI (from
//! `.venv`) judge what was created. `bootstrap run` is covered by `cli::run`.
//!
//! The plans here are `plans/guide.yaml` without its `worker:` section (the worker service is
//! the GCP half, covered by `guide`), with Prefect names unique per test since the
//! server is shared.

mod proxy;

use std::path::Path;
use std::process::Command;

use bootstrap_prefect::{PrefectClient, WorkPoolUpdate};
use proxy::{AUTH_STRING, Rule, start_proxy};
use serde_json::{Value, json};
use testkit::run_in as run;
use testkit::{World, plan_shows, prefect_client};

const PROJECT: &str = "prefect-project";
const REGION: &str = "us-central1";
const SA_EMAIL: &str = "prefect-service-account@prefect-project.iam.gserviceaccount.com";
const FLOW: &str = "fetch-weather";

/// The Prefect names of one test's plan.
struct Names {
    block: String,
    pool: String,
    deployment: String,
}

impl Names {
    fn new(prefix: &str) -> Names {
        let suffix = testkit::unique_name(prefix).replace('_', "-");
        Names {
            block: format!("gcp-credentials-{suffix}"),
            pool: format!("my-cloud-run-pool-{suffix}"),
            deployment: format!("gcp-weather-deploy-{suffix}"),
        }
    }
}

/// Drops a top-level section (its key line and everything indented below it).
fn drop_section(plan: &str, key: &str) -> String {
    let mut out = Vec::new();
    let mut skipping = false;
    for line in plan.lines() {
        let top_level = !line.is_empty() && !line.starts_with([' ', '#', '-']);
        if top_level {
            skipping = line.starts_with(&format!("{key}:"));
        }
        if !skipping {
            out.push(line);
        }
    }
    out.join("\n") + "\n"
}

/// `plans/guide.yaml` with unique names, the given pool type and key mode, and no worker.
fn guide_plan(names: &Names, pool_type: &str, key: &str) -> String {
    let guide = std::fs::read_to_string(testkit::repo_root().join("plans/guide.yaml"))
        .expect("plans/guide.yaml");
    let plan = drop_section(&guide, "worker");
    let plan = testkit::set_line(&plan, "type", pool_type);
    let plan = testkit::set_line(&plan, "key", key);
    plan.replace("name: gcp-credentials", &format!("name: {}", names.block))
        .replace("name: my-cloud-run-pool", &format!("name: {}", names.pool))
        .replace(
            "name: gcp-weather-deploy",
            &format!("name: {}", names.deployment),
        )
}

/// Output of a program from `.venv`, run against the test's Prefect server.
struct VenvRun {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `.venv/bin/<program> args` with only the settings Prefect's tools need: the API URL,
/// a private PREFECT_HOME, and (for keyless credentials) Google's application default
/// credentials pointing at the sandbox's operator key, as on a Cloud Run instance whose
/// attached account answers for the worker. The metadata server is pointed at a closed
/// loopback port so that nothing leaves the machine.
fn venv_run(w: &World, program: &str, args: &[&str]) -> VenvRun {
    let home = w.path().join("prefect-home");
    std::fs::create_dir_all(&home).expect("prefect home");
    let output = tokio::task::block_in_place(|| {
        Command::new(testkit::venv_bin(program))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("PREFECT_HOME", &home)
            .env("PREFECT_API_URL", &w.prefect_url)
            .env("PREFECT_LOGGING_LEVEL", "ERROR")
            .env(
                "GOOGLE_APPLICATION_CREDENTIALS",
                &w.sandbox.operator_key_path,
            )
            .env("GCE_METADATA_HOST", "127.0.0.1:9")
            .env("GCE_METADATA_IP", "127.0.0.1:9")
            .env("NO_GCE_CHECK", "True")
            .output()
            .expect("run a program from .venv")
    });
    VenvRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Prefect's SDK view of the block and the pool (see `tests/python/prefect_half/check_created.py`).
fn sdk_view(w: &World, names: &Names) -> (Value, String) {
    let script = testkit::repo_root().join("tests/python/prefect_half/check_created.py");
    let r = venv_run(
        w,
        "python",
        &[
            script.to_str().expect("utf-8 path"),
            "--block",
            &names.block,
            "--pool",
            &names.pool,
        ],
    );
    assert_eq!(
        r.code, 0,
        "check_created.py failed:\n{}\n{}",
        r.stdout, r.stderr
    );
    let view = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("check_created.py printed no JSON ({e}):\n{}", r.stdout));
    (view, r.stdout)
}

/// `prefect deployment inspect <flow>/<name> --output json`, parsed.
fn inspect_deployment(w: &World, flow: &str, name: &str) -> Value {
    let full = format!("{flow}/{name}");
    let r = venv_run(
        w,
        "prefect",
        &["deployment", "inspect", &full, "--output", "json"],
    );
    assert_eq!(
        r.code, 0,
        "prefect deployment inspect {full}:\n{}\n{}",
        r.stdout, r.stderr
    );
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("inspect printed no JSON ({e}):\n{}", r.stdout))
}

/// The private key the block holds (for the secret scans), if any.
async fn block_private_key(w: &World, names: &Names) -> Option<String> {
    let block = prefect_client(&w.prefect_url)
        .block_document_by_name_with_secrets("gcp-credentials", &names.block)
        .await
        .expect("read block")
        .expect("block exists");
    block.data.expose()["service_account_info"]["private_key"]
        .as_str()
        .map(String::from)
}

/// Apply, a quiet second plan, and what Prefect's SDK and CLI make of the result; then destroy.
async fn apply_and_judge(pool_type: &str, key: &str) {
    let w = World::start(PROJECT).await;
    let names = Names::new("ph");
    let plan_path = w.plan_file("bootstrap.yaml", &guide_plan(&names, pool_type, key));
    let plan = plan_path.to_str().expect("utf-8 path");

    let a = run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert!(a.stdout.contains("Apply complete"), "{}", a.stdout);
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);

    // The block: Prefect's GcpCredentials loads it with the plan's account and project.
    let (view, sdk_stdout) = sdk_view(&w, &names);
    let keyless = key == "none";
    let block = &view["block"];
    assert_eq!(block["project"], PROJECT, "{view}");
    if keyless {
        assert_eq!(block["client_email"], Value::Null, "{view}");
        assert_eq!(block["has_private_key"], false, "{view}");
    } else {
        assert_eq!(block["client_email"], SA_EMAIL, "{view}");
        assert_eq!(block["has_private_key"], true, "{view}");
    }

    // The pool: prefect-gcp's own configuration class renders a job with the plan's region,
    // account and (through the `$ref`) credentials.
    assert_eq!(view["pool"]["type"], pool_type, "{view}");
    assert_eq!(
        view["pool"]["credentials_default_is_ref"], !keyless,
        "{view}"
    );
    let job = &view["job"];
    assert_eq!(job["region"], REGION, "{view}");
    assert_eq!(job["service_account"], SA_EMAIL, "{view}");
    if keyless {
        // No key anywhere: the job runs with the ambient (attached) account's credentials.
        assert_eq!(job["credentials"]["client_email"], Value::Null, "{view}");
        assert_eq!(job["credentials"]["has_private_key"], false, "{view}");
    } else {
        assert_eq!(job["credentials"]["client_email"], SA_EMAIL, "{view}");
        assert_eq!(job["credentials"]["project"], PROJECT, "{view}");
        assert_eq!(job["credentials"]["has_private_key"], true, "{view}");
    }

    // The deployment, as Prefect's CLI shows it.
    let d = inspect_deployment(&w, FLOW, &names.deployment);
    assert_eq!(
        d["entrypoint"], "flows/weather_flow.py:fetch_weather",
        "{d}"
    );
    assert_eq!(
        d["parameters"],
        json!({"lat": 14.5994, "lon": 28.6731}),
        "{d}"
    );
    assert_eq!(
        d["job_variables"]["image"], "gcr.io/prefect-project/gcp-weather-image:latest",
        "{d}"
    );
    assert_eq!(d["work_pool_name"], names.pool.as_str(), "{d}");
    assert_eq!(d["work_queue_name"], "default", "{d}");

    // The key went to the block and nowhere else we can see.
    let private_key = block_private_key(&w, &names).await;
    assert_eq!(private_key.is_some(), !keyless);

    let d = run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(d.stdout.contains("Destroy complete"), "{}", d.stdout);
    let prefect = prefect_client(&w.prefect_url);
    assert!(
        prefect
            .work_pool(&names.pool)
            .await
            .expect("read pool")
            .is_none()
    );
    assert!(
        prefect
            .deployment_by_name(FLOW, &names.deployment)
            .await
            .expect("read deployment")
            .is_none()
    );
    assert!(
        prefect
            .block_document_by_name("gcp-credentials", &names.block)
            .await
            .expect("read block")
            .is_none()
    );

    if let Some(private_key) = private_key {
        let transcript = w.transcript.lock().expect("transcript").clone();
        testkit::assert_no_secret(
            &[&private_key],
            &[
                ("bootstrap output", &transcript),
                ("python output", &sdk_stdout),
            ],
        );
        testkit::assert_no_secret_in_dir(&[&private_key], &w.path().join("prefect-home"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_cloud_run_pool_is_usable_by_prefect() {
    apply_and_judge("cloud-run", "json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_cloud_run_v2_pool_is_usable_by_prefect() {
    apply_and_judge("cloud-run-v2", "json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_guide_is_usable_by_prefect() {
    apply_and_judge("cloud-run-v2", "none").await;
}

fn template_default(template: &Value, var: &str) -> Value {
    template["variables"]["properties"][var]["default"].clone()
}

/// The whole template with some variables' defaults changed, as the UI's form sends it.
fn edited(template: &Value, defaults: &[(&str, Value)]) -> Value {
    let mut t = template.clone();
    for (var, value) in defaults {
        t["variables"]["properties"][*var]["default"] = value.clone();
    }
    t
}

/// Saves the pool's template as the UI does (a PATCH of the whole template).
async fn ui_save(prefect: &PrefectClient, pool: &str, template: Value) {
    prefect
        .update_work_pool(
            pool,
            &WorkPoolUpdate {
                base_job_template: Some(template),
                ..Default::default()
            },
        )
        .await
        .expect("UI edit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_edit_of_an_unrelated_template_field_survives_apply() {
    let w = World::start(PROJECT).await;
    let names = Names::new("ui");
    let plan_path = w.plan_file(
        "bootstrap.yaml",
        &guide_plan(&names, "cloud-run-v2", "json"),
    );
    let plan = plan_path.to_str().expect("utf-8 path");
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    let prefect = prefect_client(&w.prefect_url);
    let template = || async {
        prefect
            .work_pool(&names.pool)
            .await
            .expect("read pool")
            .expect("pool exists")
            .base_job_template
    };

    // A user raises cpu and memory in the UI (a PATCH of the whole template).
    let t = template().await;
    assert_eq!(template_default(&t, "region"), REGION);
    let ui = edited(&t, &[("cpu", json!("2000m")), ("memory", json!("1Gi"))]);
    ui_save(&prefect, &names.pool, ui).await;

    // The plan does not own those fields: it stays quiet, and apply leaves them alone.
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    let t = template().await;
    assert_eq!(template_default(&t, "cpu"), "2000m");
    assert_eq!(template_default(&t, "memory"), "1Gi");

    // A UI edit of a field the plan owns is drift: shown, repaired, and the cpu edit survives
    // that write of the template too.
    let ui = edited(&t, &[("region", json!("europe-west1"))]);
    ui_save(&prefect, &names.pool, ui).await;
    let p = plan_shows(&w, plan, &["\"europe-west1\" -> \"us-central1\""]);
    assert!(!p.stdout.contains("2000m"), "{}", p.stdout);
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    let t = template().await;
    assert_eq!(template_default(&t, "region"), REGION);
    assert_eq!(template_default(&t, "cpu"), "2000m");
    assert_eq!(template_default(&t, "memory"), "1Gi");
    run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
}

/// A small Prefect project: a flow file and its `prefect.yaml`.
fn write_project(dir: &Path, flow: &str, deployment: &str) {
    std::fs::create_dir_all(dir.join("flows")).expect("flows dir");
    std::fs::write(
        dir.join("flows/report.py"),
        format!(
            "from prefect import flow\n\n\n@flow(name=\"{flow}\", log_prints=True)\n\
             def make_report(city: str = \"Manila\", days: int = 1):\n    print(city, days)\n"
        ),
    )
    .expect("flow file");
    std::fs::write(
        dir.join("prefect.yaml"),
        format!(
            "name: reports\nprefect-version: 3.9.1\n\n\
             build:\n  - prefect_docker.deployments.steps.build_docker_image:\n      image_name: ignored\n\n\
             pull:\n  - prefect.deployments.steps.set_working_directory:\n      directory: /opt/prefect/reports\n\n\
             deployments:\n  - name: {deployment}\n    entrypoint: flows/report.py:make_report\n\
             \x20   description: daily report\n    parameters:\n      city: Lisbon\n      days: 3\n\
             \x20   tags: [reports, e2e]\n    work_pool:\n      name: some-other-pool\n\
             \x20     work_queue_name: default\n      job_variables:\n\
             \x20       image: europe-west1-docker.pkg.dev/prefect-project/flows/reports:1\n\
             \x20       memory: 1Gi\n"
        ),
    )
    .expect("prefect.yaml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_from_prefect_yaml_end_to_end() {
    let w = World::start(PROJECT).await;
    let names = Names::new("py");
    let flow = format!("report-{}", names.deployment);
    write_project(w.path(), &flow, &names.deployment);
    let plan = drop_section(&guide_plan(&names, "cloud-run-v2", "json"), "deployments")
        + "deployments_from: prefect.yaml\n";
    let plan_path = w.plan_file("bootstrap.yaml", &plan);
    let plan = plan_path.to_str().expect("utf-8 path");

    plan_shows(&w, plan, &[&flow]);
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);

    let d = inspect_deployment(&w, &flow, &names.deployment);
    assert_eq!(d["entrypoint"], "flows/report.py:make_report", "{d}");
    assert_eq!(d["parameters"], json!({"city": "Lisbon", "days": 3}), "{d}");
    assert_eq!(d["description"], "daily report", "{d}");
    assert_eq!(
        d["job_variables"],
        json!({"image": "europe-west1-docker.pkg.dev/prefect-project/flows/reports:1", "memory": "1Gi"}),
        "{d}"
    );
    let mut tags: Vec<String> = serde_json::from_value(d["tags"].clone()).expect("tags");
    tags.sort();
    assert_eq!(tags, ["e2e", "reports"], "{d}");
    assert_eq!(
        d["pull_steps"],
        json!([{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/prefect/reports"}}]),
        "{d}"
    );
    // Deployments always go to the plan's pool, whatever prefect.yaml names.
    assert_eq!(d["work_pool_name"], names.pool.as_str(), "{d}");

    // An edit of prefect.yaml is one in-place update of that deployment.
    let yaml = std::fs::read_to_string(w.path().join("prefect.yaml")).expect("read");
    std::fs::write(
        w.path().join("prefect.yaml"),
        yaml.replace("days: 3", "days: 7"),
    )
    .expect("write");
    plan_shows(
        &w,
        plan,
        &["0 to create, 1 to update, 0 to replace, 0 to delete"],
    );
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    let d = inspect_deployment(&w, &flow, &names.deployment);
    assert_eq!(d["parameters"]["days"], 7, "{d}");
    run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
}

// ---- errors from the server ----

/// The error a failed command printed: exit 1, a single `error:` line (its causes, if any,
/// below it), no panic, no backtrace, no server dump.
fn one_error(r: &testkit::Run) -> String {
    assert_eq!(r.code, 1, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors = lines.iter().filter(|l| l.starts_with("error:")).count();
    assert_eq!(errors, 1, "one error line wanted:\n{}", r.stderr);
    assert!(lines.len() <= 3, "a short error wanted:\n{}", r.stderr);
    for noise in ["panicked", "backtrace", "Traceback", "<html"] {
        assert!(!r.stderr.contains(noise), "{noise} in:\n{}", r.stderr);
    }
    r.stderr.clone()
}

/// `bootstrap <args>` with the Prefect API at `url` and extra environment, timed.
fn run_against(
    w: &mut World,
    url: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (testkit::Run, std::time::Duration) {
    w.prefect_url = url.to_string();
    w.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let started = std::time::Instant::now();
    let r = tokio::task::block_in_place(|| w.run(args));
    (r, started.elapsed())
}

/// [`run_against`] `url` with no other settings; it must exit `code`.
fn expect_against(w: &mut World, url: &str, args: &[&str], code: i32) -> testkit::Run {
    let (r, _) = run_against(w, url, &[], args);
    assert_eq!(r.code, code, "{}\n{}", r.stdout, r.stderr);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_one_clear_line() {
    let mut w = World::start(PROJECT).await;
    let server = w.prefect_url.clone();
    let names = Names::new("err");
    let plan_path = w.plan_file(
        "bootstrap.yaml",
        &guide_plan(&names, "cloud-run-v2", "json"),
    );
    let plan = plan_path.to_str().expect("utf-8 path");
    let plan_args = ["plan", "-f", plan, "--detailed-exitcode"];

    // 1. Nothing listens at the URL (a loopback port just closed).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{closed}/api");
    let (r, took) = run_against(&mut w, &url, &[], &plan_args);
    let e = one_error(&r);
    assert!(e.contains("cannot reach the Prefect API"), "{e}");
    assert!(e.contains(&url), "{e}");
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");

    // 2. A server answers, but not Prefect's API there (every path 404).
    let url = format!("{server}/nonexistent-prefix");
    let (r, _) = run_against(&mut w, &url, &[], &plan_args);
    let e = one_error(&r);
    assert!(e.contains("not") && e.contains("nonexistent-prefix"), "{e}");

    // 3. A refused credential: wrong auth string, and an API key where the server wants its
    //    auth string. The right one goes through the same proxy (so the proxy is not the cause).
    let proxy = start_proxy(&server, Rule::AuthString).await;
    let (r, _) = run_against(
        &mut w,
        &proxy.url,
        &[("PREFECT_API_AUTH_STRING", AUTH_STRING)],
        &plan_args,
    );
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    let wrong = "admin:not-the-password";
    let (r, _) = run_against(
        &mut w,
        &proxy.url,
        &[("PREFECT_API_AUTH_STRING", wrong)],
        &plan_args,
    );
    let e = one_error(&r);
    assert!(
        e.contains("401") && e.contains("check PREFECT_API_AUTH_STRING"),
        "{e}"
    );
    let key = format!("pnu_{}", uuid::Uuid::new_v4().simple());
    let (r, _) = run_against(&mut w, &proxy.url, &[("PREFECT_API_KEY", &key)], &plan_args);
    let e = one_error(&r);
    assert!(
        e.contains("401") && e.contains("check PREFECT_API_KEY"),
        "{e}"
    );
    testkit::assert_no_secret(&[wrong, &key], &[("stderr", &e), ("stdout", &r.stdout)]);
    drop(proxy);

    // 4. A server without the `gcp-credentials` block type: apply stops at the block with what
    //    to do, on the block's one line, and says what it kept.
    let proxy = start_proxy(&server, Rule::NoGcpCredentialsType).await;
    let r = expect_against(
        &mut w,
        &proxy.url,
        &["apply", "-f", plan, "--auto-approve"],
        1,
    );
    let output = format!("{}{}", r.stdout, r.stderr);
    let failed: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("failed after"))
        .collect();
    assert_eq!(failed.len(), 1, "{output}");
    assert!(failed[0].starts_with("prefect.block["), "{output}");
    assert!(
        failed[0].contains("no `gcp-credentials` block type"),
        "{output}"
    );
    assert!(
        failed[0].contains("prefect block register -m prefect_gcp"),
        "{output}"
    );
    assert_eq!(
        output.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{output}"
    );
    for noise in ["panicked", "Traceback"] {
        assert!(!output.contains(noise), "{output}");
    }
    drop(proxy);

    // Once the server has the block type, apply continues from there: the key created before
    // the failure (its private half was only in memory) does not stay behind as a second key.
    expect_against(&mut w, &server, &["apply", "-f", plan, "--auto-approve"], 0);
    expect_against(&mut w, &server, &plan_args, 0);
    let http = w.operator_http().await;
    let project = bootstrap_spec::ids::ProjectId::parse(PROJECT).expect("project");
    let email =
        bootstrap_spec::ids::ServiceAccountEmail::parse(SA_EMAIL.to_string()).expect("email");
    let keys = bootstrap_gcp::iam::list_keys(&http, &project, &email, true)
        .await
        .expect("list keys");
    assert_eq!(keys.len(), 1, "exactly one user-managed key: {keys:?}");

    let transcript = w.transcript.lock().expect("transcript").clone();
    testkit::assert_no_secret(
        &[AUTH_STRING, "admin:not-the-password"],
        &[("output", &transcript)],
    );
    expect_against(
        &mut w,
        &server,
        &["destroy", "-f", plan, "--auto-approve"],
        0,
    );
}
