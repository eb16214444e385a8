//! The embedded worker end to end (issue 6, "Done when"): `bootstrap worker` runs as a child
//! process against a real Prefect server and an in-process GCP sandbox whose Cloud Run really
//! executes each job's container as a local process (`prefecthq/prefect:*` is the project's
//! `.venv`, so the offline example flow really runs).
//!
//! Pool, credentials block and deployments are made by `bootstrap apply` of a plan without a
//! worker service. Runs that only need to exist cheaply use [`INSTANT_IMAGE`], whose container
//! is `tests/fixtures/worker_e2e/fake_prefect.py`: it records each start in a marks file (to
//! count executions per flow run) and moves the run RUNNING -> COMPLETED over the REST API.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bootstrap_prefect::{FlowRun, FlowRunFromDeployment, PrefectClient, StateCreate, StateType};
use common::World;
use gcp_sandbox::executor::{ImageRule, Patterns};
use serde_json::{Value, json};
use uuid::Uuid;

const PROJECT: &str = "sandbox-project";
/// The flow image whose container is `fake_prefect.py` (cheap runs).
const INSTANT_IMAGE: &str = "example.com/flows/instant:1";
/// The image of the `sleepy` fixture flow (the real Prefect engine from `.venv`).
const SLEEPY_IMAGE: &str = "example.com/flows/sleepy:1";
/// An image no rule maps to a local command: the job cannot start.
const MISSING_IMAGE: &str = "example.com/flows/missing:1";

fn fixtures() -> PathBuf {
    testkit::repo_root().join("tests/fixtures/worker_e2e")
}

fn rule(pattern: &str) -> ImageRule {
    ImageRule {
        patterns: Patterns::One(pattern.into()),
        programs: Default::default(),
        path: vec!["${venv}/bin".into()],
        host_path: false,
        entrypoint: vec![],
        cmd: vec![],
        workdir: None,
        env: Default::default(),
    }
}

/// A sandbox that knows the offline example's images and this file's two test images.
async fn world(prefect_url: Option<&str>) -> World {
    let mut w = World::start_with(PROJECT, |c| {
        c.consistency = gcp_sandbox::Consistency::immediate();
        c.op_delay = Duration::from_millis(200);
        c.images
            .extend_from_file(&testkit::repo_root().join("examples/offline/sandbox-images.yaml"))
            .expect("the offline example's image table loads");
        let mut instant = rule(INSTANT_IMAGE);
        instant.programs.insert(
            "prefect".into(),
            fixtures().join("fake_prefect.py").display().to_string(),
        );
        instant.env.insert(
            "MARK_FILE".into(),
            c.dir.join("marks.log").display().to_string(),
        );
        let mut sleepy = rule(SLEEPY_IMAGE);
        sleepy.workdir = Some("${dir}".into());
        sleepy.cmd = vec!["python".into()];
        c.images.prepend(vec![instant, sleepy], &fixtures());
    })
    .await;
    if let Some(url) = prefect_url {
        w.prefect_url = url.to_string();
    }
    w
}

/// The guide's pool and credentials without a worker service, plus two deployments: the
/// offline example (`report-*`) and the sleepy fixture flow (`sleepy-*`).
fn plan(pool_type: &str, suffix: &str) -> String {
    format!(
        r#"version: 1
gcp:
  project: {PROJECT}
  region: us-central1
service_account:
  name: prefect-worker-e2e
  display_name: prefect-worker-e2e
  description: worker end-to-end tests
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
deployments:
  - name: report-{suffix}
    flow: offline-report
    entrypoint: flows/offline_report.py:offline_report
    image: prefecthq/prefect:3-latest
    parameters:
      city: Springfield
      days: 3
      fail: false
    work_queue: default
  - name: sleepy-{suffix}
    flow: sleepy
    entrypoint: flows/sleepy.py:sleepy
    image: {SLEEPY_IMAGE}
    work_queue: default
"#
    )
}

/// `bootstrap apply`, run again (it continues where it stopped) when the shared SQLite-backed
/// Prefect server answered 503 under the whole suite's load; any other failure fails the test.
fn apply(w: &World, plan: &str) {
    let args = ["apply", "-f", plan, "--auto-approve"];
    for attempt in 1..=4 {
        let r = tokio::task::block_in_place(|| w.run(&args));
        if r.code == 0 {
            return;
        }
        let busy = r.stderr.contains("503 Service Unavailable");
        assert!(
            busy && attempt < 4,
            "bootstrap apply exited {} (attempt {attempt})\n--- stdout\n{}\n--- stderr\n{}",
            r.code,
            r.stdout,
            r.stderr
        );
        eprintln!("apply stopped on a busy Prefect server; running it again");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A worker child process; killed on drop so that a failing test leaves nothing behind.
struct Worker {
    child: Child,
}

impl Worker {
    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// SIGTERM, then the time it took to exit (killed after 15 s).
    fn stop(&mut self) -> Duration {
        let t0 = Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        t0.elapsed()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's world: sandbox, applied plan, Prefect client, the workers' log files.
struct Setup {
    w: World,
    client: PrefectClient,
    pool: String,
    report: Uuid,
    sleepy: Uuid,
    logs: Mutex<Vec<PathBuf>>,
}

impl Setup {
    /// Applies [`plan`] for `pool_type` (against `prefect_url`, else the shared server).
    async fn new(pool_type: &str, prefect_url: Option<&str>) -> Setup {
        let w = world(prefect_url).await;
        let suffix = common::suffix("we");
        let path = w.plan_file("bootstrap.yaml", &plan(pool_type, &suffix));
        let path = path.to_str().expect("utf-8 path");
        apply(&w, path);
        let client = common::prefect_client(&w.prefect_url);
        let id = |d: Option<bootstrap_prefect::Deployment>| d.expect("deployment applied").id;
        let report = id(client
            .deployment_by_name("offline-report", &format!("report-{suffix}"))
            .await
            .expect("read deployment"));
        let sleepy = id(client
            .deployment_by_name("sleepy", &format!("sleepy-{suffix}"))
            .await
            .expect("read deployment"));
        Setup {
            w,
            client,
            pool: format!("pool-{suffix}"),
            report,
            sleepy,
            logs: Mutex::new(Vec::new()),
        }
    }

    /// Starts `bootstrap worker` on the pool, polling every 0.5 s.
    fn worker(&self, name: &str, extra: &[&str]) -> Worker {
        let mut logs = self.logs.lock().expect("logs");
        let log = self
            .w
            .path()
            .join(format!("worker-{name}-{}.log", logs.len()));
        logs.push(log.clone());
        let mut args = vec![
            "worker",
            "--pool",
            &self.pool,
            "--name",
            name,
            "--poll-interval",
            "0.5",
        ];
        args.extend_from_slice(extra);
        let child = self
            .w
            .command(&args)
            .env("RUST_LOG", "info,bootstrap=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_or_else(|_| Stdio::null(), Stdio::from))
            .spawn()
            .expect("the worker starts");
        Worker { child }
    }

    /// A Quick Run of `deployment`, with these parameters and job variables.
    async fn quick_run(&self, deployment: Uuid, parameters: Value, job_variables: Value) -> Uuid {
        let req = FlowRunFromDeployment {
            parameters: parameters.as_object().cloned(),
            job_variables: job_variables.as_object().cloned(),
            ..Default::default()
        };
        // The shared server answers 503 now and then under the whole suite's load.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .client
                .create_flow_run_from_deployment(deployment, &req)
                .await
            {
                Ok(r) => return r.id,
                Err(e) if attempt < 5 => eprintln!("creating a run failed ({e}); retrying"),
                Err(e) => panic!("creating a run: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// A cheap run: the fake engine of [`INSTANT_IMAGE`].
    async fn instant_run(&self) -> Uuid {
        self.quick_run(self.report, json!({}), json!({"image": INSTANT_IMAGE}))
            .await
    }

    /// Waits until the run is in a final state and returns it.
    async fn final_run(&self, id: Uuid, within: Duration) -> FlowRun {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(r)) = self.client.flow_run(id).await
                && r.state_type().is_terminal()
            {
                return r;
            }
            if t0.elapsed() > within {
                panic!(
                    "run {id} not final after {within:?}: {:?}\n{}",
                    self.states(id).await,
                    self.diag()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every run is final.
    async fn all_final(&self, ids: &[Uuid], within: Duration) -> Vec<FlowRun> {
        let t0 = Instant::now();
        let mut out = Vec::new();
        for id in ids {
            let left = within.saturating_sub(t0.elapsed());
            out.push(
                self.final_run(*id, left.max(Duration::from_millis(1)))
                    .await,
            );
        }
        out
    }

    /// Waits until the run is in state `t`.
    async fn reach(&self, id: Uuid, t: StateType, within: Duration) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(r)) = self.client.flow_run(id).await {
                if r.state_type() == t {
                    return;
                }
                if r.state_type().is_terminal() {
                    panic!("run {id} ended {:?} before {t:?}\n{}", r.state, self.diag());
                }
            }
            if t0.elapsed() > within {
                panic!("run {id} not {t:?} after {within:?}\n{}", self.diag());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The run's state types, oldest first, consecutive repeats collapsed.
    async fn states(&self, id: Uuid) -> Vec<StateType> {
        let mut out: Vec<StateType> = Vec::new();
        for s in self.client.flow_run_states(id).await.unwrap_or_default() {
            if out.last() != Some(&s.state_type) {
                out.push(s.state_type);
            }
        }
        out
    }

    /// How many RUNNING states the run went through, and the message of its last PENDING
    /// (the claim: "Claimed by worker <name>").
    async fn running_and_claim(&self, id: Uuid) -> (usize, String) {
        let states = self.client.flow_run_states(id).await.expect("states");
        let running = states
            .iter()
            .filter(|s| s.state_type == StateType::Running)
            .count();
        let claim = states
            .iter()
            .rev()
            .find(|s| s.state_type == StateType::Pending)
            .and_then(|s| s.message.clone())
            .unwrap_or_default();
        (running, claim)
    }

    /// The worker's log lines shipped for a run (logger `prefect.flow_runs.worker`).
    async fn worker_logs(&self, id: Uuid) -> Vec<String> {
        // Shipped in batches at most a second late.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        self.client
            .all_flow_run_logs(id, None, 5)
            .await
            .expect("logs")
            .into_iter()
            .filter(|l| l.name == "prefect.flow_runs.worker")
            .map(|l| l.message)
            .collect()
    }

    /// Sandbox Cloud Run jobs (full name -> record) of a flow run.
    fn jobs_of(&self, id: Uuid) -> BTreeMap<String, Value> {
        jobs_in(&self.w.sandbox.state.run.snapshot(), id)
    }

    /// Sandbox executions (full name -> record) of a flow run's jobs.
    fn executions_of(&self, id: Uuid) -> BTreeMap<String, Value> {
        let hex = id.simple().to_string();
        let snap = self.w.sandbox.state.run.snapshot();
        snap.get("executions")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, e)| e["job_id"].as_str().is_some_and(|j| j.ends_with(&hex)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Starts of the fake engine per flow run (from the marks file).
    fn marks(&self) -> BTreeMap<Uuid, usize> {
        let text =
            std::fs::read_to_string(self.w.sandbox.dir.join("marks.log")).unwrap_or_default();
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if let Some(id) = line.split(' ').next().and_then(|s| Uuid::parse_str(s).ok()) {
                *out.entry(id).or_insert(0) += 1;
            }
        }
        out
    }

    /// Google calls the sandbox served, by discovery method id.
    fn calls(&self, method: &str) -> u64 {
        self.w
            .sandbox
            .state
            .faults
            .calls()
            .get(method)
            .copied()
            .unwrap_or(0)
    }

    /// The workers' logs (last lines) and the sandbox's jobs, for failure messages.
    fn diag(&self) -> String {
        let mut out = String::new();
        for log in self.logs.lock().map(|l| l.clone()).unwrap_or_default() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            out.push_str(&format!("--- {}\n{tail}\n", log.display()));
        }
        let snap = self.w.sandbox.state.run.snapshot();
        let jobs: Vec<&String> = snap
            .get("jobs")
            .and_then(Value::as_object)
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        out.push_str(&format!("--- sandbox jobs: {jobs:?}\n"));
        out
    }

    /// Waits until the sandbox holds no job of the run.
    async fn job_deleted(&self, id: Uuid, within: Duration) {
        let t0 = Instant::now();
        while !self.jobs_of(id).is_empty() {
            if t0.elapsed() > within {
                panic!(
                    "the job of run {id} was not deleted within {within:?}\n{}",
                    self.diag()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn jobs_in(snapshot: &Value, id: Uuid) -> BTreeMap<String, Value> {
    let hex = id.simple().to_string();
    snapshot
        .get("jobs")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.ends_with(&hex))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Watches the sandbox's Cloud Run store every 10 ms and records every job (by uid) and
/// execution ever seen, so that a job created and deleted twice still counts twice.
struct Sampler {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default, Debug)]
struct Seen {
    /// Job uids by short job name.
    jobs: BTreeMap<String, BTreeSet<String>>,
    /// Execution names by short job name.
    executions: BTreeMap<String, BTreeSet<String>>,
}

impl Sampler {
    fn start(w: &World) -> Sampler {
        let run = w.sandbox.state.run.clone();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let snap = run.snapshot();
                if let Ok(mut s) = out.lock() {
                    for job in snap["jobs"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(_, j)| j)
                    {
                        if let (Some(id), Some(uid)) =
                            (job["meta"]["id"].as_str(), job["meta"]["uid"].as_str())
                        {
                            s.jobs
                                .entry(id.to_string())
                                .or_default()
                                .insert(uid.to_string());
                        }
                    }
                    for (name, e) in snap["executions"].as_object().into_iter().flatten() {
                        if let Some(job) = e["job_id"].as_str() {
                            s.executions
                                .entry(job.to_string())
                                .or_default()
                                .insert(name.clone());
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Sampler { seen, task }
    }

    /// (job uids, executions) ever seen for the flow run's job.
    fn of(&self, id: Uuid) -> (usize, usize) {
        let hex = id.simple().to_string();
        let s = self.seen.lock().expect("sampler");
        let count = |m: &BTreeMap<String, BTreeSet<String>>| {
            m.iter()
                .filter(|(k, _)| k.ends_with(&hex))
                .map(|(_, v)| v.len())
                .sum()
        };
        (count(&s.jobs), count(&s.executions))
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Pids of live processes whose environment names this flow run (the job's container).
fn processes_of(id: Uuid) -> Vec<u32> {
    let needle = format!("PREFECT__FLOW_RUN_ID={id}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// A process's command line and `stat` line (state, parent, group), for failure messages.
fn describe(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    format!("{pid}: {cmdline} [{}]", stat.trim())
}

/// Issue 6: a Quick Run goes Scheduled -> Pending -> Running -> Completed in a sandbox job
/// running the real offline flow; its artifact exists; the job is deleted afterwards.
async fn quick_run_completes(pool_type: &str, v1: bool) {
    let s = Setup::new(pool_type, None).await;
    let mut worker = s.worker("w-quick", &[]);
    let id = s.quick_run(s.report, json!({}), json!({})).await;
    let run = s.final_run(id, Duration::from_secs(120)).await;
    assert_eq!(
        s.states(id).await,
        vec![
            StateType::Scheduled,
            StateType::Pending,
            StateType::Running,
            StateType::Completed
        ],
        "state history of {id}\n{}",
        s.diag()
    );
    let job = run.infrastructure_pid.clone().unwrap_or_default();
    assert!(
        job.ends_with(&id.simple().to_string()) && job.len() <= 63,
        "infrastructure_pid names the run's job: {job:?}"
    );
    let artifacts = s.client.flow_run_artifacts(id).await.expect("artifacts");
    assert!(
        artifacts
            .iter()
            .any(|a| a.key.as_deref() == Some("offline-report")
                && a.artifact_type.as_deref() == Some("markdown")
                && a.data.as_str().is_some_and(|d| d.contains("Springfield"))),
        "markdown artifact of {id}: {artifacts:?}"
    );
    let (create, run_call) = if v1 {
        ("run.namespaces.jobs.create", "run.namespaces.jobs.run")
    } else {
        (
            "run.projects.locations.jobs.create",
            "run.projects.locations.jobs.run",
        )
    };
    assert_eq!(s.calls(create), 1, "one job created\n{}", s.diag());
    assert_eq!(s.calls(run_call), 1, "one execution started\n{}", s.diag());
    s.job_deleted(id, Duration::from_secs(30)).await;
    let took = worker.stop();
    assert!(took < Duration::from_secs(6), "SIGTERM exit took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_run_completes_on_cloud_run_v2() {
    quick_run_completes("cloud-run-v2", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_run_completes_on_cloud_run_v1() {
    quick_run_completes("cloud-run", true).await;
}

/// Two workers, one pool, 50 queued runs: each run executes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_execute_fifty_runs_exactly_once() {
    let s = Setup::new("cloud-run-v2", None).await;
    let sampler = Sampler::start(&s.w);
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(s.instant_run().await);
    }
    let t0 = Instant::now();
    let _a = s.worker("w-a", &["--limit", "8"]);
    let _b = s.worker("w-b", &["--limit", "8"]);
    let runs = s.all_final(&ids, Duration::from_secs(90)).await;
    eprintln!("50 runs final in {:?}", t0.elapsed());
    // Let the last deletions land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let marks = s.marks();
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for (id, run) in ids.iter().zip(&runs) {
        assert_eq!(
            run.state_type(),
            StateType::Completed,
            "run {id}: {:?}\n{}",
            run.state,
            s.diag()
        );
        assert_eq!(marks.get(id), Some(&1), "run {id} started once: {marks:?}");
        let (running, claim) = s.running_and_claim(*id).await;
        assert_eq!(running, 1, "run {id}: one RUNNING");
        *claims.entry(claim).or_default() += 1;
        assert_eq!(sampler.of(*id), (1, 1), "run {id}: one job, one execution");
    }
    eprintln!("claims: {claims:?}");
    // Both workers took part (else this would test one worker).
    for name in ["w-a", "w-b"] {
        assert!(
            claims.contains_key(&format!("Claimed by worker {name}")),
            "{name} ran nothing: {claims:?}"
        );
    }
    assert_eq!(marks.len(), 50);
    assert_eq!(s.calls("run.projects.locations.jobs.run"), 50);
}

/// An image that cannot start ends CRASHED, a flow that raises ends FAILED; each says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_crashed_or_failed_with_the_reason() {
    let s = Setup::new("cloud-run-v2", None).await;
    let _w = s.worker("w-fail", &[]);
    let missing = s
        .quick_run(s.report, json!({}), json!({"image": MISSING_IMAGE}))
        .await;
    let raises = s
        .quick_run(s.report, json!({"fail": true}), json!({}))
        .await;
    crashed_for_missing_image(&s, missing).await;
    let run = s.final_run(raises, Duration::from_secs(120)).await;
    let state = run.state.expect("state");
    assert_eq!(
        state.state_type,
        StateType::Failed,
        "{state:?}\n{}",
        s.diag()
    );
    let msg = state.message.unwrap_or_default();
    assert!(
        msg.contains("failing on purpose for Springfield"),
        "the exception is in the message: {msg}"
    );
    // Neither leaves a job behind.
    s.job_deleted(missing, Duration::from_secs(30)).await;
    s.job_deleted(raises, Duration::from_secs(30)).await;
}

/// The run of [`MISSING_IMAGE`] ends CRASHED, saying the image was not found.
async fn crashed_for_missing_image(s: &Setup, id: Uuid) {
    let run = s.final_run(id, Duration::from_secs(60)).await;
    let state = run.state.expect("state");
    assert_eq!(state.state_type, StateType::Crashed, "{state:?}");
    let msg = state.message.unwrap_or_default();
    assert!(
        msg.starts_with("Failed to submit flow run to infrastructure: ")
            && msg.contains(&format!("Image '{MISSING_IMAGE}' not found")),
        "the reason is in the message: {msg}"
    );
}

/// The v1 API (pool type `cloud-run`) on the same two paths: an image that cannot start ends
/// CRASHED with the reason, and a cancelled run (the fake engine, sleeping after RUNNING) has
/// its execution cancelled and its process stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_run_v1_reports_missing_images_and_cancels() {
    let s = Setup::new("cloud-run", None).await;
    let _w = s.worker("w-v1", &[]);
    let missing = s
        .quick_run(s.report, json!({}), json!({"image": MISSING_IMAGE}))
        .await;
    let vars = json!({"image": INSTANT_IMAGE, "keep_job": true, "env": {"FAKE_SLEEP": "120"}});
    let id = s.quick_run(s.report, json!({}), vars).await;
    crashed_for_missing_image(&s, missing).await;
    s.job_deleted(missing, Duration::from_secs(30)).await;
    s.reach(id, StateType::Running, Duration::from_secs(60))
        .await;
    cancel_and_check(&s, id).await;
}

/// CANCELLING while the flow sleeps: the execution is cancelled, its process is gone, and the
/// run ends CANCELLED. `keep_job` keeps the job so that the execution can be inspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_run_stops_its_process() {
    let s = Setup::new("cloud-run-v2", None).await;
    let _w = s.worker("w-cancel", &[]);
    let id = s
        .quick_run(s.sleepy, json!({"seconds": 120}), json!({"keep_job": true}))
        .await;
    s.reach(id, StateType::Running, Duration::from_secs(90))
        .await;
    cancel_and_check(&s, id).await;
}

/// Moves a RUNNING run with `keep_job` to CANCELLING, then checks that it ends CANCELLED, its
/// execution is cancelled and no process of it remains.
async fn cancel_and_check(s: &Setup, id: Uuid) {
    assert!(!processes_of(id).is_empty(), "the flow's process runs");
    s.client
        .set_flow_run_state(
            id,
            &StateCreate {
                state_type: StateType::Cancelling,
                name: None,
                message: Some("cancelled by the test".into()),
            },
            true,
        )
        .await
        .expect("set CANCELLING");
    let t0 = Instant::now();
    let run = s.final_run(id, Duration::from_secs(30)).await;
    eprintln!("cancelled in {:?}", t0.elapsed());
    assert_eq!(run.state_type(), StateType::Cancelled, "{:?}", run.state);
    // The process group got SIGTERM (SIGKILL after the 10 s grace).
    let t0 = Instant::now();
    while !processes_of(id).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "processes of {id} still alive: {:?}\n{}",
            processes_of(id)
                .into_iter()
                .map(describe)
                .collect::<Vec<_>>(),
            s.diag()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let execs = s.executions_of(id);
    assert_eq!(execs.len(), 1, "{execs:?}");
    let exec = execs.values().next().expect("one execution");
    assert_eq!(exec["cancelled"], json!(true), "{exec}");
    assert!(
        exec["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["state"] == json!("Cancelled"))),
        "{exec}"
    );
    assert_eq!(s.jobs_of(id).len(), 1, "keep_job keeps the job");
    // Still CANCELLED a moment later: the engine's own reaction to SIGTERM did not win.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let run = s.client.flow_run(id).await.expect("read").expect("run");
    assert_eq!(run.state_type(), StateType::Cancelled, "{:?}", run.state);
}

/// SIGKILL of the worker right after it created a run's job; the restarted worker (same name)
/// adopts the job instead of creating a second one, and the run completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_restarts_without_duplicate_jobs() {
    let s = Setup::new("cloud-run-v2", None).await;
    let sampler = Sampler::start(&s.w);
    let ids = [s.instant_run().await, s.instant_run().await];
    let mut w = s.worker("w-kill", &[]);
    // Kill as soon as any of the runs has a job (before its execution, which follows the job's
    // 200 ms setup).
    let t0 = Instant::now();
    loop {
        if ids.iter().any(|id| !s.jobs_of(*id).is_empty()) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no job created\n{}",
            s.diag()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    w.kill();
    let executed_before = ids
        .iter()
        .filter(|id| !s.executions_of(**id).is_empty())
        .count();
    eprintln!("killed with {executed_before} of 2 executions started");
    let restarted = s.worker("w-kill", &[]);
    let runs = s.all_final(&ids, Duration::from_secs(60)).await;
    for (id, run) in ids.iter().zip(&runs) {
        assert_eq!(run.state_type(), StateType::Completed, "{:?}", run.state);
        s.job_deleted(*id, Duration::from_secs(30)).await;
        assert_eq!(
            sampler.of(*id),
            (1, 1),
            "run {id}: one job, one execution\n{}",
            s.diag()
        );
        assert_eq!(s.marks().get(id), Some(&1), "run {id} started once");
    }

    let mut adopted = 0;
    for id in &ids {
        let logs = s.worker_logs(*id).await;
        adopted += logs.iter().filter(|l| l.contains("already exists")).count();
    }
    assert!(adopted >= 1, "the restarted worker adopted the job");

    // Killed again once a run's execution has started (its engine still starting, the run
    // still PENDING): the next worker adopts that execution instead of starting another.
    let id = s
        .quick_run(
            s.report,
            json!({}),
            json!({"image": INSTANT_IMAGE, "env": {"FAKE_PAUSE": "3"}}),
        )
        .await;
    let t0 = Instant::now();
    while s.executions_of(id).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no execution started\n{}",
            s.diag()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(restarted);
    let state = s.client.flow_run(id).await.expect("read").expect("run");
    assert_eq!(
        state.state_type(),
        StateType::Pending,
        "killed mid-submission"
    );
    let again = s.worker("w-kill", &[]);
    let run = s.final_run(id, Duration::from_secs(60)).await;
    assert_eq!(run.state_type(), StateType::Completed, "{:?}", run.state);
    s.job_deleted(id, Duration::from_secs(30)).await;
    assert_eq!(
        sampler.of(id),
        (1, 1),
        "one job, one execution\n{}",
        s.diag()
    );
    assert_eq!(s.marks().get(&id), Some(&1), "started once");
    let logs = s.worker_logs(id).await;
    assert!(
        logs.iter().any(|l| l.starts_with("Adopting execution")),
        "the restarted worker adopted the execution: {logs:?}"
    );

    // Killed while a run is RUNNING: the run finishes on its own and its job stays behind
    // until the next worker starts and removes the finished jobs of its pool.
    let id = s
        .quick_run(
            s.report,
            json!({}),
            json!({"image": INSTANT_IMAGE, "env": {"FAKE_SLEEP": "2"}}),
        )
        .await;
    s.reach(id, StateType::Running, Duration::from_secs(30))
        .await;
    drop(again);
    let run = s.final_run(id, Duration::from_secs(30)).await;
    assert_eq!(run.state_type(), StateType::Completed, "{:?}", run.state);
    let t0 = Instant::now();
    while !s
        .executions_of(id)
        .values()
        .all(|e| !e["completion_time"].is_null())
    {
        assert!(t0.elapsed() < Duration::from_secs(30), "execution not done");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.jobs_of(id).len(), 1, "no worker deleted the job yet");
    let _last = s.worker("w-kill", &[]);
    s.job_deleted(id, Duration::from_secs(30)).await;
}

/// A Prefect server of the test's own (`scripts/prefect-server`), stopped on drop.
struct OwnServer {
    dir: PathBuf,
    url: String,
    port: u16,
}

impl OwnServer {
    fn start(dir: &Path, port: Option<u16>) -> OwnServer {
        let mut cmd =
            std::process::Command::new(testkit::repo_root().join("scripts/prefect-server"));
        cmd.args(["start", &dir.display().to_string()]);
        if let Some(p) = port {
            cmd.env("PREFECT_SERVER_PORT", p.to_string());
        }
        let out = cmd.output().expect("run scripts/prefect-server");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "prefect server did not start: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export BOOTSTRAP_TEST_PREFECT_API_URL="))
            .expect("the script prints the URL")
            .trim()
            .to_string();
        let port = url
            .trim_end_matches("/api")
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL");
        OwnServer {
            dir: dir.to_path_buf(),
            url,
            port,
        }
    }

    fn stop(&self) {
        let _ = std::process::Command::new(testkit::repo_root().join("scripts/prefect-server"))
            .args(["stop", &self.dir.display().to_string()])
            .status();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The Prefect server restarts (same port, same database) under a running worker: runs queued
/// before, during and after the outage all complete, each executed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_loses_no_run() {
    let home = tempfile::tempdir().expect("temp dir");
    let server = tokio::task::block_in_place(|| OwnServer::start(home.path(), None));
    let s = Setup::new("cloud-run-v2", Some(&server.url)).await;
    let _w = s.worker("w-restart", &[]);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(s.instant_run().await);
    }
    // Stop as soon as the worker has claimed one: it is busy submitting them.
    let t0 = Instant::now();
    'claimed: loop {
        for id in &ids {
            if let Ok(Some(r)) = s.client.flow_run(*id).await
                && r.state_type() != StateType::Scheduled
            {
                break 'claimed;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no run claimed\n{}",
            s.diag()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| server.stop());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = tokio::task::block_in_place(|| OwnServer::start(home.path(), Some(server.port)));
    assert_eq!(again.url, server.url);
    for _ in 0..4 {
        ids.push(s.instant_run().await);
    }
    let runs = s.all_final(&ids, Duration::from_secs(120)).await;
    let marks = s.marks();
    for (id, run) in ids.iter().zip(&runs) {
        assert_eq!(
            run.state_type(),
            StateType::Completed,
            "run {id}: {:?}\n{}",
            run.state,
            s.diag()
        );
        assert_eq!(marks.get(id), Some(&1), "run {id} started once: {marks:?}");
    }
    drop(again);
}
