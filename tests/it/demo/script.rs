//! The README's first command, run as a new user would: `./demo` applies the guide on the
//! sandbox and a Prefect server of its own, runs the deployment, prints the artifact, destroys.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn demo_runs_the_guide_end_to_end() {
    let root = testkit::repo_root();
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temp dir");
    let out = Command::new(root.join("demo"))
        .current_dir(&root)
        // The test run has built the debug binary already; the demo would build a release one.
        .env("BOOTSTRAP_BIN", env!("CARGO_BIN_EXE_bootstrap"))
        .env("NO_COLOR", "1")
        // Its own work dir: the two demo tests run at the same time.
        .env("BOOTSTRAP_DEMO_DIR", work.path())
        .output()
        .expect("run ./demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "./demo failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stdout.contains("Apply complete"), "{stdout}");
    assert!(
        stdout.contains("Completed"),
        "the flow run did not complete:\n{stdout}"
    );
    // The offline flow's artifact: a markdown table of the synthetic report.
    assert!(
        stdout.contains("Springfield"),
        "artifact not printed:\n{stdout}"
    );
    assert!(stdout.contains("Destroy complete"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(600));
}
