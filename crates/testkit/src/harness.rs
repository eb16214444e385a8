//! The world of the worker end-to-end tests: a sandbox that knows the test images, the applied
//! plan, worker child processes, and waits on flow runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bootstrap_prefect::{FlowRun, FlowRunFromDeployment, PrefectClient, StateType};
use gcp_sandbox::executor::{ImageRule, Patterns};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::World;
use crate::observe::jobs_in;

pub const PROJECT: &str = "sandbox-project";
/// The flow image whose container is `fake_prefect.py` (cheap runs).
pub const INSTANT_IMAGE: &str = "example.com/flows/instant:1";
/// The image of the `sleepy` fixture flow (the real Prefect engine from `.venv`).
pub const SLEEPY_IMAGE: &str = "example.com/flows/sleepy:1";
/// An image no rule maps to a local command: the job cannot start.
pub const MISSING_IMAGE: &str = "example.com/flows/missing:1";

pub fn fixtures() -> PathBuf {
    crate::repo_root().join("tests/fixtures/worker_e2e")
}

pub fn rule(pattern: &str) -> ImageRule {
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
pub async fn world(prefect_url: Option<&str>) -> World {
    let mut w = World::start_with(PROJECT, |c| {
        c.consistency = gcp_sandbox::Consistency::immediate();
        c.op_delay = Duration::from_millis(200);
        crate::offline_images(c);
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
pub fn plan(pool_type: &str, suffix: &str) -> String {
    let pool = crate::pool_plan(
        PROJECT,
        "prefect-worker-e2e",
        "worker end-to-end tests",
        pool_type,
        suffix,
    );
    format!(
        r#"{pool}deployments:
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
pub fn apply(w: &World, plan: &str) {
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

async fn deployment_id(client: &PrefectClient, flow: &str, name: &str) -> Uuid {
    client
        .deployment_by_name(flow, name)
        .await
        .expect("read deployment")
        .expect("deployment applied")
        .id
}

/// A worker child process; killed on drop so that a failing test leaves nothing behind.
pub struct Worker {
    pub child: Child,
}

impl Worker {
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// SIGTERM, then the time it took to exit (killed after 15 s).
    pub fn stop(&mut self) -> Duration {
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
pub struct Setup {
    pub w: World,
    pub client: PrefectClient,
    pub pool: String,
    pub report: Uuid,
    pub sleepy: Uuid,
    pub logs: Mutex<Vec<PathBuf>>,
}

impl Setup {
    /// Applies [`plan`] for `pool_type` (against `prefect_url`, else the shared server).
    pub async fn new(pool_type: &str, prefect_url: Option<&str>) -> Setup {
        let w = world(prefect_url).await;
        let suffix = crate::suffix("we");
        let text = plan(pool_type, &suffix);
        Setup::from_plan(w, &suffix, &text).await
    }

    /// Applies `text` (a [`plan`] made with `suffix`, perhaps with more deployments) in `w`.
    pub async fn from_plan(w: World, suffix: &str, text: &str) -> Setup {
        let path = w.plan_file("bootstrap.yaml", text);
        apply(&w, path.to_str().expect("utf-8 path"));
        let client = crate::prefect_client(&w.prefect_url);
        let report = deployment_id(&client, "offline-report", &format!("report-{suffix}")).await;
        let sleepy = deployment_id(&client, "sleepy", &format!("sleepy-{suffix}")).await;
        Setup {
            w,
            client,
            pool: format!("pool-{suffix}"),
            report,
            sleepy,
            logs: Mutex::new(Vec::new()),
        }
    }

    /// The id of the applied deployment `name` of `flow`.
    pub async fn deployment(&self, flow: &str, name: &str) -> Uuid {
        deployment_id(&self.client, flow, name).await
    }

    /// Starts `bootstrap worker` on the pool, polling every 0.5 s.
    pub fn worker(&self, name: &str, extra: &[&str]) -> Worker {
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
    pub async fn quick_run(
        &self,
        deployment: Uuid,
        parameters: Value,
        job_variables: Value,
    ) -> Uuid {
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
    pub async fn instant_run(&self) -> Uuid {
        self.quick_run(self.report, json!({}), json!({"image": INSTANT_IMAGE}))
            .await
    }

    /// A cheap run whose fake engine gets `env` (`FAKE_SLEEP` after RUNNING, `FAKE_PAUSE`
    /// before it, in seconds).
    pub async fn instant_run_with(&self, env: Value) -> Uuid {
        let vars = json!({"image": INSTANT_IMAGE, "env": env});
        self.quick_run(self.report, json!({}), vars).await
    }

    /// A run whose job cannot start: its image is [`MISSING_IMAGE`].
    pub async fn missing_image_run(&self) -> Uuid {
        self.quick_run(self.report, json!({}), json!({"image": MISSING_IMAGE}))
            .await
    }

    /// Waits until the run is in a final state and returns it.
    pub async fn final_run(&self, id: Uuid, within: Duration) -> FlowRun {
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

    /// The run once it carries the worker's labels (`prefect.worker.name`). The worker labels
    /// a run off its submission path, as it emits its events, so under load a short run can
    /// reach its final state a moment before the labels land.
    pub async fn labelled_run(&self, id: Uuid, within: Duration) -> FlowRun {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(r)) = self.client.flow_run(id).await
                && r.labels.get("prefect.worker.name").is_some()
            {
                return r;
            }
            assert!(
                t0.elapsed() < within,
                "run {id} has no worker labels after {within:?}\n{}",
                self.diag()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Each of `ids` ended Completed (its final run in `runs`, in the same order) and its flow
    /// started exactly once.
    pub fn assert_completed_once(&self, ids: &[Uuid], runs: &[FlowRun]) {
        let marks = self.marks();
        for (id, run) in ids.iter().zip(runs) {
            assert_eq!(
                run.state_type(),
                StateType::Completed,
                "run {id}: {:?}\n{}",
                run.state,
                self.diag()
            );
            assert_eq!(marks.get(id), Some(&1), "run {id} started once: {marks:?}");
        }
    }

    /// Moves the run to CANCELLING, as the UI's Cancel button does.
    pub async fn cancel(&self, id: Uuid) {
        self.client
            .set_flow_run_state(
                id,
                &bootstrap_prefect::StateCreate {
                    state_type: StateType::Cancelling,
                    name: None,
                    message: Some("cancelled by the test".into()),
                },
                true,
            )
            .await
            .expect("set CANCELLING");
    }

    /// Waits until every run is final.
    pub async fn all_final(&self, ids: &[Uuid], within: Duration) -> Vec<FlowRun> {
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
    pub async fn reach(&self, id: Uuid, t: StateType, within: Duration) {
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
    pub async fn states(&self, id: Uuid) -> Vec<StateType> {
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
    pub async fn running_and_claim(&self, id: Uuid) -> (usize, String) {
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
    pub async fn worker_logs(&self, id: Uuid) -> Vec<String> {
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
    pub fn jobs_of(&self, id: Uuid) -> BTreeMap<String, Value> {
        jobs_in(&self.w.sandbox.state.run.snapshot(), id)
    }

    /// Sandbox executions (full name -> record) of a flow run's jobs.
    pub fn executions_of(&self, id: Uuid) -> BTreeMap<String, Value> {
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
    pub fn marks(&self) -> BTreeMap<Uuid, usize> {
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
    pub fn calls(&self, method: &str) -> u64 {
        self.w.calls(method)
    }

    /// The workers' logs (last lines) and the sandbox's jobs, for failure messages.
    pub fn diag(&self) -> String {
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
    pub async fn job_deleted(&self, id: Uuid, within: Duration) {
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
