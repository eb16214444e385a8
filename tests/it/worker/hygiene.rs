//! Issue #17 items 5 and 6, end to end against a real Prefect server and the GCP sandbox:
//! - job hygiene: the jobs the embedded worker keeps (`keep_job: true`) are shown by `destroy`'s
//!   plan as one counted line and deleted by it; `bootstrap worker --sweep` deletes finished
//!   ones older than its bound and leaves younger ones;
//! - container output in Prefect: a flow whose module does not import fails its execution, and
//!   the worker copies the container's traceback from Cloud Logging into the flow run's logs.

use testkit::{harness, observe};

use std::time::Duration;

use bootstrap_prefect::StateType;
use harness::{INSTANT_IMAGE, SLEEPY_IMAGE, Setup};
use serde_json::{Value, json};
use uuid::Uuid;

/// The harness's plan plus a deployment of `flows/broken.py` (a syntax error) and one whose
/// job variables move its runs to europe-west4 (`regional-*`, the fake engine sleeping 120 s).
async fn setup_with_broken(pool_type: &str) -> (Setup, Uuid) {
    let w = harness::world(None).await;
    let suffix = testkit::suffix("wh");
    let plan = format!(
        "{}  - name: broken-{suffix}\n    flow: broken\n    entrypoint: flows/broken.py:broken\n    image: {SLEEPY_IMAGE}\n    work_queue: default\n\
         \x20 - name: regional-{suffix}\n    flow: offline-report\n    entrypoint: flows/offline_report.py:offline_report\n    image: {INSTANT_IMAGE}\n    work_queue: default\n    job_variables:\n      region: europe-west4\n      keep_job: true\n      env: {{FAKE_SLEEP: \"120\"}}\n",
        harness::plan(pool_type, &suffix)
    );
    let s = Setup::from_plan(w, &suffix, &plan).await;
    let broken = s.deployment("broken", &format!("broken-{suffix}")).await;
    (s, broken)
}

/// Sandbox jobs labelled with the pool (what the worker made for it), by full name.
fn pool_jobs(s: &Setup) -> Vec<String> {
    let label = bootstrap_gcp::run_jobs::pool_label_value(&s.pool);
    let snap = s.w.sandbox.state.run.snapshot();
    snap.get("jobs")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        // The label value is unique to this test's pool (a random suffix).
        .filter(|(_, j)| j.to_string().contains(&format!("\"{label}\"")))
        .map(|(k, _)| k.clone())
        .collect()
}

/// `n` runs with `keep_job: true`, Completed by a worker `name` that is stopped afterwards;
/// the pool's `n` jobs stay.
async fn kept_jobs(name: &str, n: usize) -> (Setup, Vec<Uuid>) {
    let (s, _) = setup_with_broken("cloud-run-v2").await;
    let mut worker = s.worker(name, &[]);
    let mut ids = Vec::new();
    for _ in 0..n {
        let vars = json!({"image": INSTANT_IMAGE, "keep_job": true});
        ids.push(s.quick_run(s.report, json!({}), vars).await);
    }
    for r in s.all_final(&ids, Duration::from_secs(120)).await {
        assert_eq!(r.state_type(), StateType::Completed, "{:?}", r.state);
    }
    worker.stop();
    assert_eq!(pool_jobs(&s).len(), n, "{}", s.diag());
    (s, ids)
}

/// 5 runs with `keep_job: true` leave 5 jobs; `destroy`'s plan counts them on one line;
/// `destroy` deletes them, and the region holds none of the pool's jobs afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_removes_the_jobs_the_worker_kept() {
    let (s, ids) = kept_jobs("w-hygiene", 5).await;
    for id in &ids {
        assert_eq!(s.jobs_of(*id).len(), 1, "keep_job kept the job of {id}");
    }
    let plan = s.w.path().join("bootstrap.yaml");
    let plan = plan.to_str().expect("utf-8");
    // Without a terminal destroy shows its plan and refuses to go on.
    let shown = tokio::task::block_in_place(|| s.w.run(&["destroy", "-f", plan]));
    assert_eq!(shown.code, 1, "{}", shown.stderr);
    let line = shown
        .stdout
        .lines()
        .find(|l| l.contains("gcp.worker_jobs"))
        .unwrap_or_else(|| panic!("no worker-jobs line in\n{}", shown.stdout));
    let label = bootstrap_gcp::run_jobs::pool_label_value(&s.pool);
    assert_eq!(
        line.trim(),
        format!(
            "- gcp.worker_jobs[\"{}\"]: 5 Cloud Run jobs made by the worker (label prefect-io-work-pool-name={label}, in us-central1) will be deleted",
            s.pool
        )
    );
    let done = tokio::task::block_in_place(|| s.w.run(&["destroy", "-f", plan, "--auto-approve"]));
    assert_eq!(done.code, 0, "{}\n{}", done.stdout, done.stderr);
    assert!(pool_jobs(&s).is_empty(), "{}", s.diag());
    let executions: usize = ids.iter().map(|id| s.executions_of(*id).len()).sum();
    assert_eq!(executions, 0, "executions are deleted with their jobs");
    // Through the Cloud Run API too (the one jobs client, every page).
    let again = tokio::task::block_in_place(|| s.w.run(&["destroy", "-f", plan, "--auto-approve"]));
    assert!(
        !again.stdout.contains("gcp.worker_jobs"),
        "{}",
        again.stdout
    );
}

/// `worker --sweep` deletes finished jobs older than its bound, `keep_job` ones included, and
/// leaves them when they are younger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_deletes_finished_jobs_older_than_the_bound() {
    let (s, ids) = kept_jobs("w-sweep", 2).await;
    let sweep = |age: &str| {
        let args = [
            "worker",
            "--pool",
            &s.pool,
            "--sweep",
            "--sweep-older-than",
            age,
        ];
        tokio::task::block_in_place(|| s.w.run(&args))
    };
    // A sweep that succeeds and says it deleted `n` jobs.
    let swept = |age: &str, n: usize| {
        let r = sweep(age);
        assert_eq!(r.code, 0, "{}", r.stderr);
        let said = format!("deleted {n} finished Cloud Run jobs");
        assert!(r.stdout.starts_with(&said), "{}", r.stdout);
    };
    swept("1d", 0);
    assert_eq!(pool_jobs(&s).len(), 2);
    swept("0s", 2);
    assert!(pool_jobs(&s).is_empty(), "{}", s.diag());
    for id in ids {
        assert!(s.executions_of(id).is_empty());
    }
    let bad = sweep("soon");
    assert_eq!(bad.code, 2, "clap refuses a bad age: {}", bad.stderr);
    assert!(
        bad.stderr.contains("not an age like 30m, 24h or 7d"),
        "{}",
        bad.stderr
    );
}

/// A flow whose module has a syntax error: the execution fails, the run ends CRASHED as with
/// prefect-gcp, and its Prefect logs hold the container's Python traceback, copied by the
/// worker from Cloud Logging, next to the console link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_that_does_not_import_shows_its_traceback_in_prefect() {
    let (s, broken) = setup_with_broken("cloud-run-v2").await;
    let _worker = s.worker("w-tail", &[]);
    let id = s.quick_run(broken, json!({}), json!({})).await;
    let run = s.final_run(id, Duration::from_secs(120)).await;
    assert!(
        matches!(run.state_type(), StateType::Crashed | StateType::Failed),
        "{:?}",
        run.state
    );
    let t0 = std::time::Instant::now();
    let tail = loop {
        let logs = s.worker_logs(id).await;
        if let Some(t) = logs
            .iter()
            .find(|l| l.starts_with("Last ") && l.contains("of the container output"))
        {
            break t.clone();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no container output in {logs:?}\n{}",
            s.diag()
        );
    };
    assert!(tail.contains("Traceback (most recent call last)"), "{tail}");
    assert!(tail.contains("SyntaxError"), "{tail}");
    assert!(tail.lines().count() <= 51, "bounded: {tail}");
    let logs = s.worker_logs(id).await;
    assert!(
        logs.iter()
            .any(|l| l.starts_with("Job run logs can be found on GCP at: ")),
        "{logs:?}"
    );
}

/// Issue #17 (untested case): cancelling a run that a dead worker started, whose *deployment*
/// moves it to another region than the pool's default. The surviving worker finds the job in
/// the run's own region and cancels its execution before marking the run CANCELLED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_whose_deployment_overrides_the_region_stops_it() {
    cancel_a_run_started_elsewhere(false).await;
}

/// The flake of the test above, made certain: the first worker starts the execution and
/// records the job as `infrastructure_pid` at the same time, so under load the flow can report
/// RUNNING before the pid lands, and a worker killed then leaves a RUNNING run with no pid. The
/// surviving worker must still find the job (named by the run's configuration, in the run's
/// region) and cancel its execution, not mark the run CANCELLED with the execution running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_whose_worker_died_before_recording_its_job_stops_it() {
    cancel_a_run_started_elsewhere(true).await;
}

/// A run of the `regional-*` deployment started by a worker that is then killed, cancelled
/// with a second worker up; `forget_pid`: the run's `infrastructure_pid` is cleared after the
/// kill (as if the first worker died before recording it).
async fn cancel_a_run_started_elsewhere(forget_pid: bool) {
    let (s, _) = setup_with_broken("cloud-run-v2").await;
    let regional = s
        .deployment(
            "offline-report",
            &format!("regional-{}", s.pool.trim_start_matches("pool-")),
        )
        .await;
    let mut first = s.worker("w-dep-region-1", &[]);
    let id = s.quick_run(regional, json!({}), json!({})).await;
    s.reach(id, StateType::Running, Duration::from_secs(90))
        .await;
    let job = s.jobs_of(id).into_keys().next().expect("the run's job");
    assert!(job.contains("/locations/europe-west4/"), "{job}");
    first.kill();
    if forget_pid {
        s.client
            .set_flow_run_infrastructure_pid(id, "")
            .await
            .expect("clear infrastructure_pid");
    }
    let _second = s.worker("w-dep-region-2", &[]);
    assert!(
        !observe::processes_of(id).is_empty(),
        "the flow's process runs"
    );
    s.cancel(id).await;
    let run = s.final_run(id, Duration::from_secs(60)).await;
    assert_eq!(run.state_type(), StateType::Cancelled, "{:?}", run.state);
    let t0 = std::time::Instant::now();
    loop {
        let execs = s.executions_of(id);
        assert_eq!(execs.len(), 1, "{execs:?}");
        let exec = execs.values().next().expect("one execution");
        if exec["cancelled"] == json!(true) && observe::processes_of(id).is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the execution in europe-west4 was not cancelled: {exec}\n{}",
            s.diag()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
