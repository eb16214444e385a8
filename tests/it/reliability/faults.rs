//! Reliability 1: transient faults. With about 20% of Google calls failing (429 with
//! Retry-After, 500, 503, dropped connections), added latency and slow operations, consecutive
//! apply / plan / destroy cycles all converge: exit 0, a quiet plan after apply, exactly one of
//! each resource, nothing left after destroy. `BOOTSTRAP_RELIABILITY_FULL=1` runs 20 cycles.

use serde_json::json;
use testkit::{World, assert_converged, assert_quiet_plan, footprint, run_in};

const PROJECT: &str = "faults-project";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycles_converge_under_transient_faults() {
    let cycles = testkit::count(20, 3);
    let seed: u64 = std::env::var("BOOTSTRAP_RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let spec = format!("seed={seed},rate=0.2,kinds=429|500|503|drop,latency=20ms,retry_after=1");
    let w = World::start_with(PROJECT, |c| {
        c.faults = spec.parse().expect("fault spec");
        // Slow operations (Service Usage enable): every apply waits on one.
        c.op_delay = std::time::Duration::from_millis(1500);
    })
    .await;
    let suffix = testkit::suffix("flt");
    let path = w.plan_file("bootstrap.yaml", &testkit::light_plan(PROJECT, &suffix));
    let plan = path.to_str().expect("utf-8 path");

    for cycle in 1..=cycles {
        let context = format!("cycle {cycle} (seed {seed})");
        let a = run_in(&w, &["apply", "-f", plan, "--auto-approve"], 0);
        assert!(
            a.stdout.contains("Apply complete"),
            "{context}: {}",
            a.stdout
        );
        assert_quiet_plan(&w, plan, &context);
        assert_converged(&footprint(&w, PROJECT, &suffix).await, &context);

        let d = run_in(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
        assert!(
            d.stdout.contains("Destroy complete"),
            "{context}: {}",
            d.stdout
        );
        let left = footprint(&w, PROJECT, &suffix).await;
        assert!(left.is_empty(), "{context}: left after destroy: {left:?}");
        let p = run_in(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
        assert!(
            p.stdout.starts_with("No changes."),
            "{context}: {}",
            p.stdout
        );
    }

    let injected = w.sandbox.state.faults.injected();
    // A run where no fault fired proves nothing.
    assert!(injected > 0, "no fault was injected");
    testkit::record(
        "faults",
        json!({ "cycles": cycles, "seed": seed, "spec": spec, "faults_injected": injected }),
    );
}
