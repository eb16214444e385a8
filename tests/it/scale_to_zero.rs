//! `worker.scale_to_zero` end to end: the offline example's plan on a worker pool with
//! `scale_to_zero`, against the GCP sandbox (whose worker pools and services really run as
//! processes) and the real Prefect 3.9.1 server, whose own automations call the waker.
//!
//! The whole loop with no manual step: apply leaves the pool at 0 instances; a Quick Run makes
//! Prefect's wake automation call the waker (a Cloud Run service of the sandbox, reached at its
//! URL), which sets the pool's count to 1; the worker picks the run up and, after `idle`, sets
//! the count back to 0. A run created while the waker's URL is down is picked up by the sweep
//! automation within its bound. `destroy` removes every resource of the wake path. And the
//! waker's shared secret never reaches disk, stdout, logs or `--json`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bootstrap_gcp::{iam, run_v2, secretmanager};
use bootstrap_prefect::wake::{
    SWEEP_WITHIN_SECONDS, WEBHOOK_BLOCK_TYPE, sweep_automation, webhook_block_data,
};
use bootstrap_prefect::{FlowRunFromDeployment, StateType};
use bootstrap_spec::ids::{
    ProjectId, Region, RunServiceName, RunWorkerPoolName, SecretId, ServiceAccountEmail,
};
use gcp_sandbox::executor::ServiceState;
use secrecy::ExposeSecret as _;
use testkit::run_in as run;
use testkit::{OfflineWorker, World};

const PROJECT: &str = "sandbox-project";
/// The worker's `idle` in these tests: short, so the pool goes back to 0 quickly.
const IDLE: &str = "5s";

/// The offline example with unique names, on a worker pool with `scale_to_zero`.
fn plan_text(suffix: &str) -> String {
    testkit::offline_plan(suffix, OfflineWorker::PoolScaleToZero { idle: IDLE })
}

async fn world() -> World {
    World::start_with(PROJECT, testkit::offline_images).await
}

struct Names {
    pool: RunWorkerPoolName,
    pool_full: String,
    waker: RunServiceName,
    waker_full: String,
    account: ServiceAccountEmail,
    secret: SecretId,
    work_pool: String,
    block: String,
    deployment: String,
}

fn names(suffix: &str) -> Names {
    let pool = format!("worker-{suffix}");
    let waker = format!("{pool}-waker");
    Names {
        pool_full: format!("projects/{PROJECT}/locations/us-central1/workerPools/{pool}"),
        waker_full: format!("projects/{PROJECT}/locations/us-central1/services/{waker}"),
        account: ServiceAccountEmail::parse(format!(
            "{}-waker@{PROJECT}.iam.gserviceaccount.com",
            pool.chars()
                .take(24)
                .collect::<String>()
                .trim_end_matches('-')
        ))
        .unwrap(),
        secret: SecretId::parse(format!("{pool}-waker-secret")).unwrap(),
        pool: RunWorkerPoolName::parse(pool).unwrap(),
        waker: RunServiceName::parse(waker).unwrap(),
        work_pool: format!("offline-pool-{suffix}"),
        block: format!("offline-pool-{suffix}-waker"),
        deployment: format!("offline-report/offline-report-{suffix}"),
    }
}

fn running_instances(w: &World, n: &Names) -> usize {
    w.sandbox
        .state
        .run
        .pool_instances(&n.pool_full)
        .iter()
        .filter(|(_, s)| matches!(s, ServiceState::Ready { .. }))
        .count()
}

async fn live_count(w: &World, n: &Names) -> Option<i32> {
    let http = w.operator_http().await;
    run_v2::get_worker_pool(
        &http,
        &ProjectId::parse(PROJECT).unwrap(),
        &Region::parse("us-central1").unwrap(),
        &n.pool,
    )
    .await
    .unwrap()
    .expect("the pool exists")
    .instance_count()
}

/// Waits (polling, bounded) until the pool's count is 0 and no instance runs.
async fn wait_for_zero(w: &World, n: &Names, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if live_count(w, n).await == Some(0) && running_instances(w, n) == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "worker pool {} not back at 0 within {within:?} (count {:?}, {} running)",
            n.pool,
            live_count(w, n).await,
            running_instances(w, n)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Waits until the flow run is no longer SCHEDULED (a worker picked it up); returns its state.
async fn wait_picked_up(
    prefect: &bootstrap_prefect::PrefectClient,
    id: uuid::Uuid,
    within: Duration,
) -> (StateType, Duration) {
    let started = Instant::now();
    loop {
        let run = prefect.flow_run(id).await.expect("read run").expect("run");
        let state = run.state_type();
        if state != StateType::Scheduled {
            return (state, started.elapsed());
        }
        assert!(
            started.elapsed() < within,
            "flow run {id} still SCHEDULED after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn set_faults(w: &World, spec: &str) {
    w.sandbox
        .state
        .faults
        .set(spec.parse().expect("fault spec"));
}

fn invoke_calls(w: &World) -> u64 {
    w.sandbox
        .state
        .faults
        .calls()
        .get("run.routes.invoke")
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_run_wakes_the_pool_from_zero_and_it_sleeps_again() {
    whole_loop(false).await;
}

/// The sweep half of the loop: a run whose wake calls (its Scheduled and its Late event) all
/// failed is woken for by the sweep automation within one window (+ 5 s) of the waker's URL
/// answering again. Regression (issue #19): the sweep expected `prefect.flow-run.Pending` and
/// stayed silent for up to three windows after the previous run went Pending, past this test's
/// bound (`bootstrap_prefect::wake::sweep_automation` has Prefect's code path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_waker_missed_is_picked_up_by_the_sweep() {
    whole_loop(true).await;
}

/// One test's world and names, its plan written (not applied), and the cleanup guard.
struct Case {
    w: World,
    suffix: String,
    n: Names,
    plan_path: PathBuf,
    _cleanup: testkit::PrefectCleanup,
}

impl Case {
    fn plan(&self) -> &str {
        self.plan_path.to_str().unwrap()
    }
}

/// A [`Case`] with a new suffix from `prefix`.
async fn case(prefix: &str) -> Case {
    let w = world().await;
    let suffix = testkit::suffix(prefix);
    let n = names(&suffix);
    let _cleanup = cleanup(&w, &n, &suffix);
    let plan_path = w.plan_file("bootstrap.yaml", &plan_text(&suffix));
    Case {
        w,
        suffix,
        n,
        plan_path,
        _cleanup,
    }
}

/// Deletes the Prefect objects of `suffix`'s plan when the test ends, passed or panicked:
/// an automation left behind would keep calling a waker that is gone.
fn cleanup(w: &World, n: &Names, suffix: &str) -> testkit::PrefectCleanup {
    testkit::PrefectCleanup::new(&w.prefect_url)
        .automation(format!("{}-wake", n.work_pool))
        .automation(format!("{}-sweep", n.work_pool))
        .block(WEBHOOK_BLOCK_TYPE, &n.block)
        .block("gcp-credentials", format!("gcp-credentials-{suffix}"))
}

/// The cleanup guard deletes the automations and blocks it names when the test panics (a
/// failed scale-to-zero test used to leave its sweep calling a waker that was gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cleanup_guard_deletes_a_panicking_tests_automations_and_blocks() {
    let url = testkit::prefect_api_url();
    let prefect = testkit::prefect_client(&url);
    let name = testkit::unique_name("stz-guard");
    let block_type = prefect
        .block_type_by_slug(WEBHOOK_BLOCK_TYPE)
        .await
        .unwrap()
        .expect("webhook block type");
    let schema = prefect.block_schemas_for_type(block_type.id).await.unwrap()[0].id;
    let secret = secrecy::SecretString::from("guard-test-secret-0123456789");
    let block = prefect
        .create_block_document(&bootstrap_prefect::BlockDocumentCreate {
            name: name.clone(),
            block_type_id: block_type.id,
            block_schema_id: schema,
            data: webhook_block_data("http://127.0.0.1:9/wake", &secret),
        })
        .await
        .unwrap();
    // Disabled: the point is what is left on the server, not what it calls.
    let mut spec = sweep_automation(&name, &name, block.id, SWEEP_WITHIN_SECONDS);
    spec.enabled = false;
    prefect.create_automation(&spec).await.unwrap();
    assert_eq!(prefect.automations_by_name(&name).await.unwrap().len(), 1);

    let guarded = name.clone();
    let panicked = tokio::task::spawn_blocking(move || {
        std::panic::catch_unwind(move || {
            let _cleanup = testkit::PrefectCleanup::new(&url)
                .automation(guarded.clone())
                .block(WEBHOOK_BLOCK_TYPE, guarded);
            panic!("a failing test");
        })
    })
    .await
    .unwrap();
    assert!(panicked.is_err());
    assert!(prefect.automations_by_name(&name).await.unwrap().is_empty());
    assert!(
        prefect
            .block_document_by_name(WEBHOOK_BLOCK_TYPE, &name)
            .await
            .unwrap()
            .is_none()
    );
}

async fn whole_loop(sweep: bool) {
    let case = case("stz").await;
    let (w, suffix, n, plan) = (&case.w, &case.suffix, &case.n, case.plan());
    let prefect = testkit::prefect_client(&w.prefect_url);
    let http = w.operator_http().await;
    let project = ProjectId::parse(PROJECT).unwrap();
    let region = Region::parse("us-central1").unwrap();

    let p = run(w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    for line in [
        format!(
            "gcp.run_worker_pool_iam[\"{}\"] will be updated in place",
            n.pool
        ),
        format!("gcp.run_service[\"{}\"] will be created", n.waker),
        format!("prefect.block[\"{}\"] will be created", n.block),
        format!(
            "prefect.automation[\"{}-wake\"] will be created",
            n.work_pool
        ),
        format!(
            "prefect.automation[\"{}-sweep\"] will be created",
            n.work_pool
        ),
    ] {
        assert!(p.stdout.contains(&line), "{line}\n{}", p.stdout);
    }
    let a = run(w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert!(a.stdout.contains("Apply complete"), "{}", a.stdout);

    // At 0 after apply: no instance, and the next plan is quiet.
    assert_eq!(live_count(w, n).await, Some(0));
    assert_eq!(running_instances(w, n), 0);
    let p = run(w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);

    // Least privilege: the waker's account holds run.developer on its pool only.
    let policy = run_v2::get_worker_pool_iam_policy(&http, &project, &region, &n.pool)
        .await
        .unwrap();
    let member = format!("serviceAccount:{}", n.account);
    assert!(
        policy
            .bindings
            .iter()
            .any(|b| b.role == "roles/run.developer" && b.members.contains(&member)),
        "{policy:?}"
    );
    let project_policy = bootstrap_gcp::resourcemanager::get_iam_policy(&http, &project)
        .await
        .unwrap();
    assert!(
        !project_policy
            .bindings
            .iter()
            .any(|b| b.members.contains(&member)),
        "the waker has a project-wide role"
    );

    // A Quick Run completes with no manual step: Prefect's automation -> the waker -> count 1.
    let started = Instant::now();
    let r = run(
        w,
        &["run", &n.deployment, "-f", plan, "--timeout", "300"],
        0,
    );
    assert!(r.stdout.contains("Completed"), "{}\n{}", r.stdout, r.stderr);
    eprintln!(
        "quick run from a cold pool completed in {:?}",
        started.elapsed()
    );
    assert!(invoke_calls(w) >= 1, "the waker was never called");
    // Back at 0 after `idle` (plus the worker's poll and the pool's operation).
    let slept = wait_for_zero(w, n, Duration::from_secs(90)).await;
    eprintln!("back at 0 {slept:?} after the run completed");
    let p = run(w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);

    if sweep {
        // The sweep is a timer: within one window it calls the waker, which finds nothing due
        // and leaves the pool at 0 (an idle pool stays asleep however often it is swept).
        let calls = invoke_calls(w);
        let since = Instant::now();
        let bound = Duration::from_secs(SWEEP_WITHIN_SECONDS + 5 + 15);
        while invoke_calls(w) == calls {
            assert!(
                since.elapsed() < bound,
                "the sweep did not call the waker within {bound:?}"
            );
            assert_eq!(live_count(w, n).await, Some(0), "woken with nothing due");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "the sweep called the idle waker after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(live_count(w, n).await, Some(0), "woken with nothing due");
        assert_eq!(running_instances(w, n), 0);

        // The waker's URL down (503, as Cloud Run answers with no instance able to serve): the
        // wake call for a new run fails, and so does the one for its Late event (Prefect's
        // late-runs service marks it 15-20 s after its time); only then does the URL come back,
        // so nothing but the sweep can wake the pool.
        set_faults(w, "method:run.routes.invoke=1,kinds=503");
        let calls_before = invoke_calls(w);
        let dep = prefect
            .deployment_by_name("offline-report", &format!("offline-report-{suffix}"))
            .await
            .unwrap()
            .expect("deployment");
        let flow_run = prefect
            .create_flow_run_from_deployment(dep.id, &FlowRunFromDeployment::default())
            .await
            .unwrap()
            .id;
        let created = Instant::now();
        loop {
            let run = prefect.flow_run(flow_run).await.unwrap().expect("run");
            let name = run.state.as_ref().and_then(|s| s.name.clone());
            if name.as_deref() == Some("Late") && invoke_calls(w) >= calls_before + 2 {
                break;
            }
            assert!(
                created.elapsed() < Duration::from_secs(90),
                "run {flow_run} not Late with its two wake calls failed after 90 s \
                 (state {name:?}, {} calls)",
                invoke_calls(w) - calls_before
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The Late event's own call goes through the actions service: let it fail too.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            live_count(w, n).await,
            Some(0),
            "woken while the waker was down"
        );
        set_faults(w, "");
        let back = Instant::now();
        // The sweep's bound: one window plus the triggers service's 5 s period; 15 s of slack
        // for the webhook call, the waker's start and a loaded machine.
        let bound = Duration::from_secs(SWEEP_WITHIN_SECONDS + 5 + 15);
        loop {
            if live_count(w, n).await.unwrap_or(0) >= 1 {
                break;
            }
            assert!(
                back.elapsed() < bound,
                "the sweep did not wake the pool within {bound:?} of the waker answering again"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "woken by the sweep {:?} after the waker came back",
            back.elapsed()
        );
        let (state, _) = wait_picked_up(&prefect, flow_run, Duration::from_secs(90)).await;
        eprintln!(
            "picked up {:?} after the waker came back ({state:?})",
            back.elapsed()
        );
        wait_for_zero(w, n, Duration::from_secs(300)).await;
    }

    // Destroy removes the whole wake path.
    let d = run(w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(d.stdout.contains("Destroy complete"), "{}", d.stdout);
    assert!(
        run_v2::get_worker_pool(&http, &project, &region, &n.pool)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        run_v2::get_service(&http, &project, &region, &n.waker)
            .await
            .unwrap()
            .is_none()
    );
    assert!(w.sandbox.state.run.service_status(&n.waker_full).is_none());
    assert!(
        iam::get_service_account(&http, &project, &n.account)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        secretmanager::get_secret(&http, &project, &n.secret)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        prefect
            .block_document_by_name(WEBHOOK_BLOCK_TYPE, &n.block)
            .await
            .unwrap()
            .is_none()
    );
    for a in ["wake", "sweep"] {
        let name = format!("{}-{a}", n.work_pool);
        assert!(
            prefect.automations_by_name(&name).await.unwrap().is_empty(),
            "{name} is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wakers_shared_secret_never_reaches_disk_stdout_logs_or_json() {
    let case = case("stzs").await;
    let (w, n, plan) = (&case.w, &case.n, case.plan());
    let http = w.operator_http().await;
    let project = ProjectId::parse(PROJECT).unwrap();

    run(w, &["plan", "-f", plan, "--json", "-vv"], 0);
    run(
        w,
        &["apply", "-f", plan, "--auto-approve", "--json", "-vv"],
        0,
    );
    let secret = secretmanager::access_latest(&http, &project, &n.secret)
        .await
        .unwrap()
        .expect("the shared secret is in Secret Manager");
    let secret = secret.expose_secret().to_owned();
    assert!(secret.len() >= 32, "a short secret");
    // The block holds it (so the scan below looks for the right value).
    let prefect = testkit::prefect_client(&w.prefect_url);
    let block = prefect
        .block_document_by_name_with_secrets(WEBHOOK_BLOCK_TYPE, &n.block)
        .await
        .unwrap()
        .expect("the webhook block");
    assert_eq!(
        block.data.expose()["headers"]["Authorization"],
        format!("Bearer {secret}")
    );
    // And the API never shows it without asking for secrets.
    let masked = prefect
        .block_document_by_name(WEBHOOK_BLOCK_TYPE, &n.block)
        .await
        .unwrap()
        .expect("the webhook block");
    assert!(!masked.data.to_string().contains(&secret));
    // The waker really serves with it: a wake call with the secret is answered, one without
    // is refused.
    let url = format!(
        "{}/wake",
        run_v2::get_service(
            &http,
            &project,
            &Region::parse("us-central1").unwrap(),
            &n.waker
        )
        .await
        .unwrap()
        .unwrap()
        .uri
        .unwrap()
    );
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let s = client
            .post(&url)
            .bearer_auth(&secret)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if s == 200 || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status, 200, "the waker refused its own secret");
    let refused = client
        .post(&url)
        .bearer_auth("not-the-secret-0123456789")
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    run(w, &["plan", "-f", plan, "--json", "-vv"], 0);
    run(
        w,
        &["destroy", "-f", plan, "--auto-approve", "--json", "-vv"],
        0,
    );

    let transcript = w.transcript.lock().expect("transcript").clone();
    assert!(transcript.contains("TRACE") || transcript.contains("DEBUG"));
    // The waker's own logs and the pool's, as the sandbox kept them.
    let mut logs = String::new();
    for name in [&n.waker_full, &n.pool_full] {
        if let Some(buffer) = w.sandbox.state.run.logs(name) {
            logs.push_str(&buffer.text());
        }
    }
    assert!(
        logs.contains("waker for work pool"),
        "the waker's logs were not read"
    );
    testkit::assert_no_secret(
        &[&secret],
        &[("bootstrap output", &transcript), ("container logs", &logs)],
    );
    for entry in std::fs::read_dir(w.path()).expect("dir").flatten() {
        // The sandbox's own directory is Google's side (Secret Manager's storage).
        if entry.file_name() == "sandbox" {
            continue;
        }
        let p = entry.path();
        if p.is_dir() {
            testkit::assert_no_secret_in_dir(&[&secret], &p);
        } else {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            testkit::assert_no_secret(&[&secret], &[(&p.display().to_string(), &text)]);
        }
    }
}

/// API latency added to every Google call (and to the waker's URL) for the measurement.
const REALISTIC_LATENCY: &str = "80ms";
/// How long a Cloud Run long-running operation (the count change) takes in the measurement.
const REALISTIC_OP_DELAY: Duration = Duration::from_secs(3);

/// Time from a Quick Run to PENDING with the pool at zero, on the sandbox with realistic
/// operation times ([`REALISTIC_LATENCY`] per Google call, [`REALISTIC_OP_DELAY`] per
/// operation), against a warm pool for comparison (BENCHMARKS.md, "Scale to zero").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_from_zero_to_pending_with_realistic_operation_times() {
    let case = case("stzc").await;
    let (w, suffix, n, plan) = (&case.w, &case.suffix, &case.n, case.plan());
    let prefect = testkit::prefect_client(&w.prefect_url);
    run(w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert_eq!(live_count(w, n).await, Some(0));
    set_faults(w, &format!("latency={REALISTIC_LATENCY}"));
    w.sandbox
        .state
        .update_settings(|s| s.op_delay = REALISTIC_OP_DELAY);
    let dep = prefect
        .deployment_by_name("offline-report", &format!("offline-report-{suffix}"))
        .await
        .unwrap()
        .expect("deployment")
        .id;
    let quick_run = || testkit::quick_run(&prefect, dep);
    let mut cold = vec![];
    let mut warm = vec![];
    for _ in 0..3 {
        wait_for_zero(w, n, Duration::from_secs(180)).await;
        let id = quick_run().await;
        let (_, t) = wait_picked_up(&prefect, id, Duration::from_secs(120)).await;
        cold.push(t.as_secs_f64());
        // A second run while the worker is up (within `idle` of the first).
        let id = quick_run().await;
        let (_, t) = wait_picked_up(&prefect, id, Duration::from_secs(60)).await;
        warm.push(t.as_secs_f64());
    }
    wait_for_zero(w, n, Duration::from_secs(180)).await;
    set_faults(w, "");
    w.sandbox
        .state
        .update_settings(|s| s.op_delay = Duration::ZERO);
    run(w, &["destroy", "-f", plan, "--auto-approve"], 0);
    testkit::record(
        "scale_to_zero_cold_start",
        serde_json::json!({
            "latency": REALISTIC_LATENCY,
            "op_delay_s": REALISTIC_OP_DELAY.as_secs(),
            "idle": IDLE,
            "cold_to_pending_s": cold,
            "warm_to_pending_s": warm,
        }),
    );
    // Cold is the wake path plus the pool's start; it stays well inside the sweep's bound.
    for t in &cold {
        assert!(*t < (SWEEP_WITHIN_SECONDS + 5) as f64, "{cold:?}");
    }
}
