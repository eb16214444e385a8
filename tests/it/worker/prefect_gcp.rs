//! Prefect's own Cloud Run workers (prefect-gcp 0.6.22, unpatched) and `bootstrap` itself on
//! Google's real host names, against the sandbox (issue 14).
//!
//! Nothing is pointed at the sandbox by configuration: each program runs inside a network
//! namespace that the sandbox prepared as it does for a Cloud Run container
//! (`POST /_sandbox/netns`), where `run.googleapis.com`, `{region}-run.googleapis.com`,
//! `oauth2.googleapis.com` and `iam.googleapis.com` resolve to the sandbox, served over TLS
//! with a certificate of the sandbox's own CA (trusted through `SSL_CERT_FILE`,
//! `REQUESTS_CA_BUNDLE`, `HTTPLIB2_CA_CERTS`), `metadata.google.internal` is its metadata
//! server, and the Prefect server's loopback port is forwarded.

use testkit::harness;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bootstrap_prefect::StateType;
use harness::Setup;
use serde_json::{Value, json};

/// A namespace made by the sandbox; removed on drop.
struct Ns {
    sandbox: String,
    name: String,
    env: Vec<(String, String)>,
}

impl Ns {
    async fn new(sandbox: &str, body: Value) -> Ns {
        let http = reqwest::Client::new();
        let r: Value = http
            .post(format!("{sandbox}/_sandbox/netns"))
            .json(&body)
            .send()
            .await
            .expect("sandbox answers")
            .json()
            .await
            .expect("json");
        let name = r["name"]
            .as_str()
            .unwrap_or_else(|| panic!("no namespace: {r}"))
            .to_owned();
        let env = r["env"]
            .as_object()
            .expect("trust env")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        Ns {
            sandbox: sandbox.to_owned(),
            name,
            env,
        }
    }

    /// `ip netns exec <ns> <program>` with a clean environment: PATH, HOME, the trust
    /// variables, and `env`.
    fn command(&self, program: &Path, env: &[(&str, String)], home: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", home)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().map(|(k, v)| (k, v)));
        c
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let url = format!("{}/_sandbox/netns/{}", self.sandbox, self.name);
        let _ = std::thread::spawn(move || {
            let _ = Command::new("curl")
                .args(["-fsS", "-X", "DELETE", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        })
        .join();
    }
}

fn prefect_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// `bootstrap plan` of the guide, inside a namespace, with no `--gcp-endpoint` and no
/// `BOOTSTRAP_GCP_ENDPOINT`: every call goes to `https://*.googleapis.com` as on Google.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_plan_runs_on_googles_real_host_names() {
    let w = testkit::World::start("prefect-project").await;
    let ns = Ns::new(
        &w.sandbox.url,
        json!({"forward": [prefect_port(&w.prefect_url)]}),
    )
    .await;
    let guide = std::fs::read_to_string(testkit::repo_root().join("plans/guide.yaml")).unwrap();
    let plan = w.plan_file("guide.yaml", &guide);
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let out = ns
        .command(
            &testkit::bin(),
            &[
                (
                    "GOOGLE_APPLICATION_CREDENTIALS",
                    w.sandbox.operator_key_path.display().to_string(),
                ),
                ("PREFECT_API_URL", w.prefect_url.clone()),
            ],
            &home,
        )
        .args(["plan", "--detailed-exitcode", "-f"])
        .arg(&plan)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("gcp.service_account[\"prefect-service-account\"] will be created"),
        "{stdout}"
    );
    // The calls reached the sandbox (over TLS on the real host names).
    let calls = crate::support::inspect(&w, "/_sandbox/calls").await;
    assert!(
        calls["calls"]["iam.projects.serviceAccounts.get"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{calls}"
    );
}

/// A prefect-gcp worker process (`prefect worker start -t <type>`) in a namespace; killed on
/// drop.
struct PyWorker {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for PyWorker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_python_worker(s: &Setup, ns: &Ns, pool_type: &str) -> PyWorker {
    let home = s.w.path().join(format!("prefect-home-{pool_type}"));
    std::fs::create_dir_all(&home).unwrap();
    let log = s.w.path().join(format!("python-worker-{pool_type}.log"));
    let child = ns
        .command(
            &testkit::venv_bin("prefect"),
            &[
                ("PREFECT_API_URL", s.w.prefect_url.clone()),
                ("PREFECT_HOME", home.display().to_string()),
                ("PREFECT_WORKER_QUERY_SECONDS", "1".into()),
                ("PREFECT_WORKER_PREFETCH_SECONDS", "5".into()),
            ],
            &home,
        )
        .args([
            "worker",
            "start",
            "-p",
            &s.pool,
            "-t",
            pool_type,
            "--name",
            &format!("prefect-gcp-{pool_type}"),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .expect("prefect worker starts");
    PyWorker { child, log }
}

async fn prefect_gcp_worker_completes(pool_type: &str) {
    let s = Setup::new(pool_type, None).await;
    let ns = Ns::new(
        &s.w.sandbox.url,
        json!({"forward": [prefect_port(&s.w.prefect_url)]}),
    )
    .await;
    let worker = start_python_worker(&s, &ns, pool_type);
    let id = s
        .quick_run(s.report, json!({"city": "Shelbyville"}), json!({}))
        .await;
    let run = s.final_run(id, Duration::from_secs(240)).await;
    let log = std::fs::read_to_string(&worker.log).unwrap_or_default();
    assert_eq!(
        run.state_type(),
        StateType::Completed,
        "{:?}\n--- worker log\n{log}\n{}",
        run.state,
        s.diag()
    );
    // The flow ran in a Cloud Run job of the sandbox that prefect-gcp created.
    let jobs_created = s.calls(match pool_type {
        "cloud-run" => "run.namespaces.jobs.create",
        _ => "run.projects.locations.jobs.create",
    });
    assert!(jobs_created >= 1, "no job created\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefect_gcp_cloud_run_v2_worker_takes_a_run_to_completed() {
    prefect_gcp_worker_completes("cloud-run-v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefect_gcp_cloud_run_v1_worker_takes_a_run_to_completed() {
    prefect_gcp_worker_completes("cloud-run").await;
}

/// `plans/guide.yaml` as written (runtime python, the prefecthq image, the guide's args), with
/// unique Prefect names, the sandbox's project, and the offline example flow as the deployment
/// (the guide's weather flow needs the internet); `key` is `json` (the guide) or `none`.
fn guide_with_offline_flow(suffix: &str, key: &str) -> String {
    let guide = std::fs::read_to_string(testkit::repo_root().join("plans/guide.yaml")).unwrap();
    let head = guide
        .split("\ndeployments:")
        .next()
        .expect("the guide has deployments")
        .replace(
            "project: prefect-project",
            &format!("project: {}", harness::PROJECT),
        )
        .replace("key: json", &format!("key: {key}"))
        .replace("name: gcp-credentials", &format!("name: creds-{suffix}"))
        .replace("name: my-cloud-run-pool", &format!("name: pool-{suffix}"))
        .replace(
            "service: prefect-worker",
            &format!("service: worker-{suffix}"),
        );
    assert!(head.contains("worker:") && !head.contains("runtime: embedded"));
    format!(
        "{head}
deployments:
  - name: report-{suffix}
    flow: offline-report
    entrypoint: flows/offline_report.py:offline_report
    image: prefecthq/prefect:3-latest
    parameters: {{city: Springfield, days: 3, fail: false}}
    work_queue: default
"
    )
}

/// The pool's workers as Prefect reports them: `(name, status)`.
async fn pool_workers(prefect_url: &str, pool: &str) -> Vec<(String, String)> {
    let r = reqwest::Client::new()
        .post(format!("{prefect_url}/work_pools/{pool}/workers/filter"))
        .json(&json!({}))
        .send()
        .await;
    let Ok(r) = r else { return vec![] };
    let Ok(v) = r.json::<Value>().await else {
        return vec![];
    };
    v.as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            (
                w["name"].as_str().unwrap_or_default().to_owned(),
                w["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The guide end to end on the sandbox: apply deploys prefect-gcp's worker (`prefect worker
/// start --install-policy always --with-healthcheck -t cloud-run`) as the Cloud Run service,
/// in its own namespace listening on 8080; it shows ONLINE in the pool; a Quick Run reaches
/// Completed in a Cloud Run job the worker created.
async fn guide_worker_completes_a_quick_run(key: &str) {
    let w = harness::world(None).await;
    let suffix = testkit::suffix("gw");
    let plan = w.plan_file("bootstrap.yaml", &guide_with_offline_flow(&suffix, key));
    harness::apply(&w, plan.to_str().unwrap());
    let pool = format!("pool-{suffix}");
    let service = format!(
        "projects/{}/locations/us-central1/services/worker-{suffix}",
        harness::PROJECT
    );
    let logs = || {
        w.sandbox
            .state
            .run
            .logs(&service)
            .map(|l| l.text())
            .unwrap_or_default()
    };
    assert!(
        w.sandbox.state.run.service_status(&service).is_some(),
        "the worker service is not running\n{}",
        logs()
    );
    // ONLINE in the pool: prefect-gcp's worker heartbeats from inside the sandbox.
    let t0 = Instant::now();
    loop {
        let workers = pool_workers(&w.prefect_url, &pool).await;
        if workers.iter().any(|(_, s)| s == "ONLINE") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no ONLINE worker in {pool}: {workers:?}\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let client = testkit::prefect_client(&w.prefect_url);
    let deployment = client
        .deployment_by_name("offline-report", &format!("report-{suffix}"))
        .await
        .expect("read deployment")
        .expect("deployment applied");
    let run = client
        .create_flow_run_from_deployment(
            deployment.id,
            &bootstrap_prefect::FlowRunFromDeployment::default(),
        )
        .await
        .expect("quick run");
    let t0 = Instant::now();
    let last = loop {
        let r = client.flow_run(run.id).await.ok().flatten();
        if let Some(r) = &r
            && r.state_type().is_terminal()
        {
            break r.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "run not final: {:?}\n--- worker service\n{}",
            r.map(|r| r.state),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        last.state_type(),
        StateType::Completed,
        "{:?}\n--- worker service\n{}",
        last.state,
        logs()
    );
    let created = w
        .sandbox
        .state
        .faults
        .calls()
        .get("run.namespaces.jobs.create")
        .copied()
        .unwrap_or(0);
    assert!(created >= 1, "the flow did not run in a Cloud Run (v1) job");
    // Cloud Run's contract as the worker process has it: PORT=8080 and K_SERVICE in its
    // environment, its own network namespace, and no key file (the metadata server is its
    // identity, as on Cloud Run).
    let Some((_, gcp_sandbox::executor::ServiceState::Ready { pid: Some(pid), .. })) =
        w.sandbox.state.run.service_status(&service)
    else {
        panic!("the worker service is not ready\n{}", logs());
    };
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("worker environ");
    let vars: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert!(vars.iter().any(|v| v == "PORT=8080"), "{vars:?}");
    assert!(
        vars.iter()
            .any(|v| v == &format!("K_SERVICE=worker-{suffix}")),
        "{vars:?}"
    );
    assert!(
        !vars
            .iter()
            .any(|v| v.starts_with("GOOGLE_APPLICATION_CREDENTIALS=")),
        "a key file was given to the worker: the metadata server is its identity"
    );
    if key == "none" {
        // The worker's calls were authorized by a token the metadata server minted.
        let email = format!(
            "prefect-service-account@{}.iam.gserviceaccount.com",
            harness::PROJECT
        );
        let minted = w
            .sandbox
            .state
            .read()
            .tokens
            .iter()
            .any(|(t, g)| t.starts_with("ya29.sandbox-md-") && g.email == email);
        assert!(minted, "no metadata-server token for {email}");
    }
    let own = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    let its = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("worker netns");
    assert_ne!(own, its, "the worker shares the host's network");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_plan_python_worker_service_completes_a_quick_run() {
    guide_worker_completes_a_quick_run("json").await;
}

/// The same keyless (`key: none`): the block has no key; prefect-gcp's worker finds its
/// identity through the metadata server (google-auth's compute-engine credentials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_guide_plan_worker_uses_the_metadata_server() {
    guide_worker_completes_a_quick_run("none").await;
}
