//! `worker.kind: worker-pool` end to end: the offline example's plan (the embedded worker)
//! against the GCP sandbox, whose worker pools really run their instances, and the real Prefect
//! server. A pool applies with one running instance whose worker is ONLINE, a Quick Run
//! completes through it, the next plan is quiet, destroy removes it; and the move from the
//! worker service keeps a worker ONLINE at every moment of the apply.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bootstrap_gcp::run_v2;
use bootstrap_spec::ids::{ProjectId, Region, RunServiceName, RunWorkerPoolName};
use gcp_sandbox::executor::ServiceState;
use testkit::run_in as run;
use testkit::{OfflineWorker, World};

const PROJECT: &str = "sandbox-project";

/// The offline example with unique Prefect names; `pool` switches it to a worker pool.
fn plan_text(suffix: &str, pool: bool) -> String {
    let worker = if pool {
        OfflineWorker::Pool
    } else {
        OfflineWorker::Service
    };
    testkit::offline_plan(suffix, worker)
}

async fn world() -> World {
    World::start_with(PROJECT, testkit::offline_images).await
}

fn pool_full_name(suffix: &str) -> String {
    format!("projects/{PROJECT}/locations/us-central1/workerPools/worker-{suffix}")
}

fn running_instances(w: &World, suffix: &str) -> usize {
    w.sandbox
        .state
        .run
        .pool_instances(&pool_full_name(suffix))
        .iter()
        .filter(|(_, s)| matches!(s, ServiceState::Ready { .. }))
        .count()
}

async fn online(prefect: &bootstrap_prefect::PrefectClient, pool: &str) -> BTreeSet<String> {
    prefect
        .workers(pool)
        .await
        .unwrap_or_default()
        .iter()
        .filter(|w| w["status"] == "ONLINE")
        .filter_map(|w| w["name"].as_str().map(str::to_owned))
        .collect()
}

async fn wait_online(prefect: &bootstrap_prefect::PrefectClient, pool: &str) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let names = online(prefect, pool).await;
        if !names.is_empty() {
            return names;
        }
        assert!(Instant::now() < deadline, "no worker of {pool} came ONLINE");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pool_applies_runs_a_flow_and_is_destroyed() {
    let w = world().await;
    let suffix = testkit::suffix("wp");
    let plan_path = w.plan_file("bootstrap.yaml", &plan_text(&suffix, true));
    let plan = plan_path.to_str().unwrap();
    let http = w.operator_http().await;
    let prefect = testkit::prefect_client(&w.prefect_url);
    let (project, region) = (
        ProjectId::parse(PROJECT).unwrap(),
        Region::parse("us-central1").unwrap(),
    );
    let pool = RunWorkerPoolName::parse(format!("worker-{suffix}")).unwrap();

    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    assert!(
        p.stdout.contains(&format!(
            "gcp.run_worker_pool[\"worker-{suffix}\"] will be created"
        )),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout
            .contains("Estimated worker cost: $49.93/month (worker pool, 1 instance"),
        "{}",
        p.stdout
    );
    let a = run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert!(a.stdout.contains("Apply complete"), "{}", a.stdout);

    // The pool: one instance asked for, one process running, its worker ONLINE; no service.
    let live = run_v2::get_worker_pool(&http, &project, &region, &pool)
        .await
        .unwrap()
        .expect("the pool exists");
    assert_eq!(live.instance_count(), Some(1));
    assert!(live.is_ready(), "{live:?}");
    assert_eq!(running_instances(&w, &suffix), 1);
    let service = RunServiceName::parse(format!("worker-{suffix}")).unwrap();
    assert!(
        run_v2::get_service(&http, &project, &region, &service)
            .await
            .unwrap()
            .is_none()
    );
    let work_pool = format!("offline-pool-{suffix}");
    wait_online(&prefect, &work_pool).await;

    // A Quick Run completes through the pool's worker.
    let r = run(
        &w,
        &[
            "run",
            &format!("offline-report/offline-report-{suffix}"),
            "-f",
            plan,
            "--timeout",
            "300",
        ],
        0,
    );
    assert!(r.stdout.contains("Completed"), "{}\n{}", r.stdout, r.stderr);

    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);

    let d = run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(d.stdout.contains("Destroy complete"), "{}", d.stdout);
    assert!(
        run_v2::get_worker_pool(&http, &project, &region, &pool)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(running_instances(&w, &suffix), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_service_to_a_worker_pool_keeps_a_worker_online_throughout() {
    let w = Arc::new(world().await);
    let suffix = testkit::suffix("mv");
    let service_plan = w.plan_file("service.yaml", &plan_text(&suffix, false));
    let pool_plan = w.plan_file("pool.yaml", &plan_text(&suffix, true));
    let prefect = testkit::prefect_client(&w.prefect_url);
    let work_pool = format!("offline-pool-{suffix}");
    let service_name = format!("projects/{PROJECT}/locations/us-central1/services/worker-{suffix}");

    run(
        &w,
        &[
            "apply",
            "-f",
            service_plan.to_str().unwrap(),
            "--auto-approve",
        ],
        0,
    );
    let service_workers = wait_online(&prefect, &work_pool).await;

    let p = run(&w, &["plan", "-f", pool_plan.to_str().unwrap()], 0);
    assert!(
        p.stdout.contains(&format!(
            "gcp.run_service[\"worker-{suffix}\"] will be deleted"
        )),
        "{}",
        p.stdout
    );

    // Apply in the background; sample the work pool's workers and the two containers.
    let done = Arc::new(AtomicBool::new(false));
    let apply = {
        let (w, done, plan) = (w.clone(), done.clone(), pool_plan.clone());
        tokio::task::spawn_blocking(move || {
            let r = w.expect(
                &["apply", "-f", plan.to_str().unwrap(), "--auto-approve"],
                0,
            );
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    let mut samples = 0;
    while !done.load(Ordering::SeqCst) {
        let names = online(&prefect, &work_pool).await;
        assert!(
            !names.is_empty(),
            "sample {samples}: no worker of {work_pool} ONLINE during the move"
        );
        let service_running = w.sandbox.state.run.service_status(&service_name).is_some();
        if !service_running {
            // The service's container is gone: a worker of the pool must be the ONLINE one,
            // with its process running.
            assert!(
                names.difference(&service_workers).next().is_some(),
                "sample {samples}: the service is gone and only its worker {names:?} is ONLINE"
            );
            assert_eq!(running_instances(&w, &suffix), 1, "sample {samples}");
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let a = apply.await.unwrap();
    assert!(a.stdout.contains("Apply complete"), "{}", a.stdout);
    assert!(samples >= 3, "only {samples} samples during the apply");
    assert!(w.sandbox.state.run.service_status(&service_name).is_none());
    assert_eq!(running_instances(&w, &suffix), 1);
    let names = online(&prefect, &work_pool).await;
    assert!(
        names.difference(&service_workers).next().is_some(),
        "{names:?}"
    );

    let p = run(
        &w,
        &[
            "plan",
            "-f",
            pool_plan.to_str().unwrap(),
            "--detailed-exitcode",
        ],
        0,
    );
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);
    run(
        &w,
        &[
            "destroy",
            "-f",
            pool_plan.to_str().unwrap(),
            "--auto-approve",
        ],
        0,
    );
    assert_eq!(running_instances(&w, &suffix), 0);
}
