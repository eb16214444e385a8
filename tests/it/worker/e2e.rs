//! The embedded worker end to end (issue 6, "Done when"): `bootstrap worker` runs as a child
//! process against a real Prefect server and an in-process GCP sandbox whose Cloud Run really
//! executes each job's container as a local process (`prefecthq/prefect:*` is the project's
//! `.venv`, so the offline example flow really runs).
//!
//! Pool, credentials block and deployments are made by `bootstrap apply` of a plan without a
//! worker service. Runs that only need to exist cheaply use [`INSTANT_IMAGE`], whose container
//! is `tests/fixtures/worker_e2e/fake_prefect.py`: it records each start in a marks file (to
//! count executions per flow run) and moves the run RUNNING -> COMPLETED over the REST API.

use testkit::{harness, observe};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bootstrap_prefect::StateType;
use harness::{INSTANT_IMAGE, MISSING_IMAGE, Setup};
use observe::{OwnServer, Sampler, describe, processes_of};
use serde_json::json;
use uuid::Uuid;

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
    s.assert_completed_once(&ids, &runs);
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for id in &ids {
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
    assert_eq!(s.marks().len(), 50);
    assert_eq!(s.calls("run.projects.locations.jobs.run"), 50);
}

/// An image that cannot start ends CRASHED, a flow that raises ends FAILED; each says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_end_crashed_or_failed_with_the_reason() {
    let s = Setup::new("cloud-run-v2", None).await;
    let _w = s.worker("w-fail", &[]);
    let missing = s.missing_image_run().await;
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
    let missing = s.missing_image_run().await;
    let vars = json!({"image": INSTANT_IMAGE, "keep_job": true, "env": {"FAKE_SLEEP": "120"}});
    let id = s.quick_run(s.report, json!({}), vars).await;
    crashed_for_missing_image(&s, missing).await;
    s.job_deleted(missing, Duration::from_secs(30)).await;
    s.reach(id, StateType::Running, Duration::from_secs(60))
        .await;
    cancel_and_check(&s, id).await;
}

/// A job deleted under a running flow (by hand, or by a foreign cleanup): the run ends CRASHED
/// as prefect-gcp reports it (status code -1), and the job's process is stopped with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_job_crashes_the_run() {
    let s = Setup::new("cloud-run-v2", None).await;
    let _w = s.worker("w-vanish", &[]);
    let id = s.instant_run_with(json!({"FAKE_SLEEP": "120"})).await;
    s.reach(id, StateType::Running, Duration::from_secs(60))
        .await;
    let job = s.jobs_of(id).into_keys().next().expect("the run's job");
    let http = s.w.operator_http().await;
    let call = bootstrap_gcp::Call::new(
        "run.projects.locations.jobs.delete",
        reqwest::Method::DELETE,
        bootstrap_gcp::Api::RunV2,
        format!("v2/{job}"),
    );
    http.send::<serde_json::Value>(call)
        .await
        .expect("the operator deletes the job");
    let run = s.final_run(id, Duration::from_secs(60)).await;
    let state = run.state.expect("state");
    assert_eq!(state.state_type, StateType::Crashed, "{state:?}");
    // prefect-gcp: a deleted execution is status code -1 (cloud_run_v2.py), Prefect's message.
    let msg = state.message.unwrap_or_default();
    assert_eq!(
        msg,
        "Flow run infrastructure exited with non-zero status code -1. Process exited with an unexpected status code."
    );
    let t0 = Instant::now();
    while !processes_of(id).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20), "process survived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    s.cancel(id).await;
    let t0 = Instant::now();
    // A worker started just before the cancel may miss its event (its subscription is not live
    // yet); its reconcile pass then finds the CANCELLING run within the reconcile interval
    // (30 s ± 20 %): the deadline covers that path too (a 30 s deadline failed once so).
    let run = s.final_run(id, Duration::from_secs(45)).await;
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
    // The sandbox records the task's end just after its process is gone: wait for it (bounded).
    let t0 = Instant::now();
    let exec = loop {
        let execs = s.executions_of(id);
        assert_eq!(execs.len(), 1, "{execs:?}");
        let exec = execs.values().next().expect("one execution").clone();
        let settled = exec["tasks"]
            .as_array()
            .is_some_and(|t| t.iter().all(|t| t["state"] == json!("Cancelled")));
        if settled || t0.elapsed() > Duration::from_secs(10) {
            break exec;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
    let id = s.instant_run_with(json!({"FAKE_PAUSE": "3"})).await;
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
    let id = s.instant_run_with(json!({"FAKE_SLEEP": "2"})).await;
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
    s.assert_completed_once(&ids, &runs);
    drop(again);
}

/// Issue 17: an execution that fails (the container exits 3 before Prefect starts) ends the run
/// CRASHED with prefect-gcp's state message (status code 1, Prefect's explanation), and the run
/// gets the worker's labels and the worker's log lines: the failure's condition message and the
/// execution's logs link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_exit_is_reported_like_prefect_gcp() {
    let s = Setup::new("cloud-run-v2", None).await;
    let _w = s.worker("w-exit", &[]);
    let vars = json!({"image": INSTANT_IMAGE, "command": "python -c 'raise SystemExit(3)'"});
    let id = s.quick_run(s.report, json!({}), vars).await;
    let run = s.final_run(id, Duration::from_secs(60)).await;
    let state = run.state.expect("state");
    assert_eq!(state.state_type, StateType::Crashed, "{state:?}");
    assert_eq!(
        state.message.as_deref(),
        Some(
            "Flow run infrastructure exited with non-zero status code 1. Process exited with a general error."
        )
    );
    let run = s.labelled_run(id, Duration::from_secs(15)).await;
    assert_eq!(
        run.labels.get("prefect.worker.name"),
        Some(&json!("w-exit"))
    );
    assert_eq!(
        run.labels.get("prefect.worker.type"),
        Some(&json!("cloud-run-v2"))
    );
    assert_eq!(
        run.labels.get("prefect.work-pool.name"),
        Some(&json!(s.pool))
    );
    let logs = s.worker_logs(id).await;
    assert!(
        logs.iter()
            .any(|l| l.starts_with("Cloud Run Job V2 ") && l.contains(" failed - ")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.starts_with("Job run logs can be found on GCP at: ")),
        "{logs:?}"
    );
    // Prefect's worker events, with the job and status code on the flow run.
    let mut filter = bootstrap_prefect::EventFilter::live();
    filter.since = chrono::Utc::now() - chrono::Duration::minutes(10);
    filter.event_prefixes = vec!["prefect.worker.".into()];
    filter.related_ids = vec![format!("prefect.flow-run.{id}")];
    let t0 = Instant::now();
    let names = loop {
        let page = s.client.filter_events(&filter, 50).await.expect("events");
        let names: Vec<String> = page.events.iter().map(|e| e.event.clone()).collect();
        if names.len() >= 2 || t0.elapsed() > Duration::from_secs(20) {
            break names;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        names.contains(&"prefect.worker.submitted-flow-run".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"prefect.worker.executed-flow-run".to_string()),
        "{names:?}"
    );
    s.job_deleted(id, Duration::from_secs(30)).await;
}

/// Issue 17 regression: cancelling a run that another (dead) worker started, whose job
/// variables move it to another region than the pool's default. The job is found where the
/// run's own configuration put it and its execution is cancelled; before, the pool-default
/// region was searched, nothing found, and the run marked CANCELLED while it kept running.
/// (The fake engine, which does not cancel itself as Prefect's runner would.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_adopted_run_uses_its_own_region() {
    let s = Setup::new("cloud-run-v2", None).await;
    let mut first = s.worker("w-region-1", &[]);
    let vars = json!({"image": INSTANT_IMAGE, "keep_job": true, "region": "europe-west4",
                      "env": {"FAKE_SLEEP": "120"}});
    let id = s.quick_run(s.report, json!({}), vars).await;
    s.reach(id, StateType::Running, Duration::from_secs(90))
        .await;
    let job = s.jobs_of(id).into_keys().next().expect("the run's job");
    assert!(job.contains("/locations/europe-west4/"), "{job}");
    first.kill();
    let _second = s.worker("w-region-2", &[]);
    cancel_and_check(&s, id).await;
}

/// A worker acts on its own pool's runs only: a CANCELLING run of another pool (another
/// sandbox, so its job is not in this worker's project) is left to that pool's worker, which
/// cancels its execution. Had the other worker taken it, it would have found no job and marked
/// the run CANCELLED while the execution ran on (seen once as a flaky adopted-run cancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaves_another_pools_cancelling_run_alone() {
    let own = Setup::new("cloud-run-v2", None).await;
    let other = Setup::new("cloud-run-v2", None).await;
    let _bystander = other.worker("w-other-pool", &[]);
    let _w = own.worker("w-own-pool", &[]);
    let id = own
        .quick_run(
            own.sleepy,
            json!({"seconds": 120}),
            json!({"keep_job": true}),
        )
        .await;
    own.reach(id, StateType::Running, Duration::from_secs(90))
        .await;
    cancel_and_check(&own, id).await;
    let run = own.final_run(id, Duration::from_secs(5)).await;
    assert_eq!(
        run.state.and_then(|s| s.message).as_deref(),
        Some("Cancelled: the Cloud Run execution was cancelled by the worker."),
    );
    // The other worker may read the run: Prefect 3.9.1's event stream delivered this run's
    // Cancelling event to its subscription too, though the filter names its own pool (seen in
    // this test's logs). It must not act on it: no state it sets, no job it looks for. The whole
    // log, not diag's tail: the lines may be anywhere in it.
    let logs = other.logs.lock().expect("logs").clone();
    for log in logs {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let acted = text.lines().any(|l| {
            l.contains(&id.to_string())
                && (l.contains("set_state") || l.contains("cancelling a run"))
        });
        assert!(!acted, "the other pool's worker acted on run {id}:\n{text}");
    }
}
