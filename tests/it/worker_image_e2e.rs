//! The embedded worker's own image without Docker (issue #18 item 5): a plan with
//! `worker.runtime: embedded` and no `worker.image` builds the worker's image remotely from
//! the running `bootstrap` binary (a generated Dockerfile: Debian, CA certificates, the
//! binary), the sandbox runs that image's copy of the binary as the worker service, and the
//! worker serves a Quick Run to Completed. A second plan is quiet and a second apply builds
//! nothing (counted calls); destroy removes it all.

use testkit::World;
use testkit::run_in as run;

const PROJECT: &str = "sandbox-project";
const SUBMIT: &str = "run.projects.locations.builds.submit";
const UPLOAD: &str = "run.projects.locations.sourceUploads.upload";

/// The offline example's plan with unique Prefect names and no `worker.image`; its
/// deployment builds the example's folder into the `flows` repository.
fn plan_text(suffix: &str) -> String {
    let dir = testkit::repo_root().join("examples/offline");
    let example = std::fs::read_to_string(dir.join("bootstrap.yaml")).unwrap();
    let text: String = example
        .lines()
        .filter(|l| !l.trim_start().starts_with("image: "))
        .map(|l| format!("{l}\n"))
        .collect();
    testkit::offline_names_unique(&text, suffix)
        .replace(
            "name: offline-report\n",
            &format!("name: offline-report-{suffix}\n"),
        )
        .replace("context: .", &format!("context: {}", dir.display()))
}

/// The executables of this machine's processes that run from under `root`.
fn processes_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path().join("exe")).ok())
        .filter(|exe| exe.starts_with(root))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_worker_without_an_image_runs_from_an_image_built_of_this_binary() {
    let w = World::start(PROJECT).await;
    let suffix = testkit::suffix("wimg");
    let plan_path = w.plan_file("bootstrap.yaml", &plan_text(&suffix));
    let plan = plan_path.to_str().unwrap();
    let image_name = "us-central1-docker.pkg.dev/sandbox-project/flows/bootstrap-worker";

    // The plan shows the worker image's build, from this binary's version, in the
    // deployments' repository; the service runs its tagged name.
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        p.stdout
            .contains(&format!("gcp.image[\"{image_name}\"] will be created")),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout.contains(&format!(
            "# first build of the worker image from bootstrap {version}"
        )),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout
            .contains(&format!("image = \"{image_name}:v{version}-")),
        "{}",
        p.stdout
    );

    let a = run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert!(a.stdout.contains("Apply complete"), "{}", a.stdout);
    // Two builds (the worker's image and the flow's), each submitted again only while the
    // new writer grant propagates (bounded; see builds_e2e).
    let submits = w.calls(SUBMIT);
    assert!((2..=8).contains(&submits), "{submits}\n{}", a.stderr);
    assert_eq!(w.calls(UPLOAD), 2, "{}", a.stderr);

    // The sandbox runs the worker service from the image: the binary the build copied into
    // it (not the host's bootstrap, which the sandbox's `*bootstrap*` rule would run).
    let images = w.sandbox.state.dir.join("builds").join("images");
    let running = processes_under(&images);
    assert!(
        running
            .iter()
            .any(|exe| exe.ends_with("rootfs/usr/local/bin/bootstrap")),
        "no process runs the image's bootstrap: {running:?}"
    );

    // The worker serves a Quick Run to Completed.
    w.quick_run_completed(plan, "offline-report", &format!("offline-report-{suffix}"));

    // The same binary: a quiet plan, and an apply that uploads and builds nothing.
    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 0);
    assert!(p.stdout.starts_with("No changes."), "{}", p.stdout);
    w.sandbox.state.faults.reset_calls();
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert_eq!((w.calls(UPLOAD), w.calls(SUBMIT)), (0, 0));

    run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
    assert!(
        !w.sandbox
            .state
            .read()
            .artifacts
            .repositories
            .keys()
            .any(|k| k.ends_with("/repositories/flows")),
        "destroy removes the repository it made"
    );
}

/// The tag's version is the binary's: the spec crate's version is the `bootstrap` package's.
#[test]
fn the_worker_image_is_tagged_with_this_binarys_version() {
    assert_eq!(
        bootstrap_spec::worker_image::VERSION,
        env!("CARGO_PKG_VERSION")
    );
}
