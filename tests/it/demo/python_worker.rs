//! `./demo --python-worker`: the guide's own worker (prefect-gcp's `prefect worker start`) as the
//! Cloud Run service in the sandbox, a Quick Run through it to Completed, then destroy.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_with_the_python_worker_runs_the_guide_end_to_end() {
    let root = testkit::repo_root();
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new(root.join("demo"))
        .arg("--python-worker")
        .current_dir(&root)
        // The test run has built the debug binary already; the demo would build a release one.
        .env("BOOTSTRAP_BIN", env!("CARGO_BIN_EXE_bootstrap"))
        .env("NO_COLOR", "1")
        // Its own work dir: the two demo tests run at the same time.
        .env("BOOTSTRAP_DEMO_DIR", work.path())
        .output()
        .expect("run ./demo --python-worker");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "./demo --python-worker failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // The plan it applied deploys prefect-gcp's worker, not the embedded one.
    assert!(
        stdout.contains(
            r#"["prefect","worker","start","--install-policy","always","--with-healthcheck""#
        ),
        "{stdout}"
    );
    assert!(stdout.contains("Apply complete"), "{stdout}");
    // prefect-gcp's worker made the job (its own line in the flow run's logs).
    assert!(stdout.contains("Creating Cloud Run JobV2"), "{stdout}");
    assert!(
        stdout.contains("Completed"),
        "the flow run did not complete:\n{stdout}"
    );
    assert!(
        stdout.contains("Springfield"),
        "artifact not printed:\n{stdout}"
    );
    assert!(stdout.contains("Destroy complete"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(600));
}
