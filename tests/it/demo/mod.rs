//! The demo scripts under `demo/`.

mod python_worker;
mod script;

use std::process::Command;
use std::time::{Duration, Instant};

/// What every demo prints: applied, the flow run Completed, its artifact (the offline flow's
/// markdown table of the synthetic report, with Springfield in it), destroyed.
const EVERY_DEMO_PRINTS: [&str; 4] = [
    "Apply complete",
    "Completed",
    "Springfield",
    "Destroy complete",
];

/// Runs `./demo ARGS` from the repo root with the test run's debug binary and checks what every
/// demo does: it succeeds within 10 minutes, applies, runs the flow to Completed, prints its
/// artifact and destroys. Returns stdout for the demo's own checks.
fn run_demo(args: &[&str]) -> String {
    let root = testkit::repo_root();
    let started = Instant::now();
    let work = tempfile::tempdir().expect("temp dir");
    let what = ["./demo"]
        .iter()
        .chain(args)
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new(root.join("demo"))
        .args(args)
        .current_dir(&root)
        // The test run has built the debug binary already; the demo would build a release one.
        .env("BOOTSTRAP_BIN", env!("CARGO_BIN_EXE_bootstrap"))
        .env("NO_COLOR", "1")
        // Its own work dir: the two demo tests run at the same time.
        .env("BOOTSTRAP_DEMO_DIR", work.path())
        .output()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    for line in EVERY_DEMO_PRINTS {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(started.elapsed() < Duration::from_secs(600));
    stdout
}
