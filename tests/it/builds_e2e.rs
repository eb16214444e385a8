//! `build:` end to end (issue #18, Step 4 of the guide as code): `bootstrap apply` uploads a
//! folder, the GCP sandbox builds it (Cloud Run `:uploadSource` + `builds:submit`, Cloud Build's
//! operation, Artifact Registry), the embedded worker runs the deployment from the built image,
//! and the real Prefect server shows what the flow printed. Then: an edited flow is a planned
//! rebuild and the next run prints the new text; an unchanged folder is a quiet plan and an
//! apply that builds nothing; a bad requirement fails the apply with the build's last log lines
//! and its console link, and the deployment keeps the image it had; the guide's own
//! prefect.yaml (its gcr.io image name) warns and builds.

use std::path::Path;

use testkit::run_in as run;
use testkit::{World, assert_quiet_plan, plan_shows};

const PROJECT: &str = "sandbox-project";

/// The offline example's plan (embedded worker service, cloud-run-v2 pool) with unique
/// Prefect names and `deployments` replaced. The worker's image is outside the repository the
/// builds push to, so the sandbox's image table runs it (the `*bootstrap*` rule).
fn plan_text(suffix: &str, deployments: &str) -> String {
    let example =
        std::fs::read_to_string(testkit::repo_root().join("examples/offline/bootstrap.yaml"))
            .unwrap();
    let head = example.split("\ndeployments:").next().unwrap();
    testkit::offline_names_unique(head, suffix).replace(
        "us-central1-docker.pkg.dev/sandbox-project/prefect/bootstrap:latest",
        "us-central1-docker.pkg.dev/sandbox-project/tools/bootstrap:latest",
    ) + "\n"
        + deployments
}

fn write_flow(dir: &Path, flow: &str, text: &str) {
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(
        dir.join("flows/hello.py"),
        format!(
            "from prefect import flow\n\n\n@flow(name=\"{flow}\", log_prints=True)\n\
             def hello():\n    print(\"{text}\")\n"
        ),
    )
    .unwrap();
}

/// A Quick Run of the deployment completes and its logs on the Prefect server have `line`.
async fn quick_run_logs(w: &World, plan: &str, flow: &str, deployment: &str, line: &str) {
    let run = w.quick_run_completed(plan, flow, deployment);
    let id = uuid::Uuid::parse_str(run["flow_run_id"].as_str().unwrap()).unwrap();
    let logs: Vec<String> = testkit::prefect_client(&w.prefect_url)
        .all_flow_run_logs(id, None, 5)
        .await
        .expect("read logs")
        .into_iter()
        .map(|l| l.message)
        .collect();
    assert!(logs.iter().any(|l| l.contains(line)), "{logs:?}");
}

/// The image the deployment runs (its `job_variables.image`).
async fn deployment_image(w: &World, flow: &str, deployment: &str) -> String {
    testkit::prefect_client(&w.prefect_url)
        .deployment_by_name(flow, deployment)
        .await
        .expect("read deployment")
        .expect("deployment exists")
        .job_variables["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const SUBMIT: &str = "run.projects.locations.builds.submit";
const UPLOAD: &str = "run.projects.locations.sourceUploads.upload";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_builds_runs_rebuilds_on_change_and_a_failed_build_keeps_the_old_image() {
    let w = World::start(PROJECT).await;
    let suffix = testkit::suffix("bld");
    let flow = format!("hello-{suffix}");
    let deployment = format!("hello-{suffix}");
    let proj = w.path().join("proj");
    write_flow(&proj, &flow, &format!("hello v1 from {suffix}"));
    let plan_path = w.plan_file(
        "bootstrap.yaml",
        &plan_text(
            &suffix,
            &format!(
                "deployments:\n  - name: {deployment}\n    flow: {flow}\n    \
                 entrypoint: flows/hello.py:hello\n    build:\n      context: proj\n"
            ),
        ),
    );
    let plan = plan_path.to_str().unwrap();
    let build_account = {
        let number = w
            .sandbox
            .state
            .read()
            .project(PROJECT)
            .map(|p| p.number.clone())
            .unwrap();
        format!("serviceAccount:{number}-compute@developer.gserviceaccount.com")
    };

    // First plan: the repository, the grants (reader for the job, writer for the build's
    // account, on the repository only), the first build.
    plan_shows(
        &w,
        plan,
        &[
            "gcp.artifact_repository[\"prefect\"] will be created",
            &format!("roles/artifactregistry.writer = \"{build_account}\""),
            "first build of proj",
        ],
    );

    let a = run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert!(a.stdout.contains("Apply complete"), "{}", a.stdout);
    // One build; submitted again (bounded) only while the new writer grant propagates, which
    // the sandbox models as Google does (a grant is enforced a moment after it is written).
    let submits = w.calls(SUBMIT);
    assert!((1..=4).contains(&submits), "{submits}\n{}", a.stderr);
    if submits > 1 {
        assert!(
            a.stderr.contains("the push was not yet authorized"),
            "{}",
            a.stderr
        );
    }
    // The build account holds writer on the repository, not on the project.
    {
        let data = w.sandbox.state.read();
        let project_roles: Vec<&str> = data
            .project(PROJECT)
            .unwrap()
            .policy
            .bindings
            .iter()
            .filter(|b| b.members.contains(&build_account))
            .map(|b| b.role.as_str())
            .collect();
        assert!(project_roles.is_empty(), "{project_roles:?}");
    }
    let v1_image = deployment_image(&w, &flow, &deployment).await;
    assert!(
        v1_image.starts_with("us-central1-docker.pkg.dev/sandbox-project/prefect/"),
        "{v1_image}"
    );

    // The run executes the folder's code from the built image (Prefect's pull step changes
    // into /opt/prefect/proj, where the image has it).
    let line = format!("hello v1 from {suffix}");
    quick_run_logs(&w, plan, &flow, &deployment, &line).await;

    // Unchanged folder: a quiet plan, and an apply that uploads and builds nothing.
    assert_quiet_plan(&w, plan, "unchanged folder");
    w.sandbox.state.faults.reset_calls();
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert_eq!((w.calls(UPLOAD), w.calls(SUBMIT)), (0, 0));

    // An edit of the flow: a planned rebuild, then the next run prints the new text.
    write_flow(&proj, &flow, &format!("hello v2 from {suffix}"));
    plan_shows(
        &w,
        plan,
        &[
            "source changed (",
            "gcp.image[\"us-central1-docker.pkg.dev/sandbox-project/prefect/",
        ],
    );
    w.sandbox.state.faults.reset_calls();
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    assert_eq!(w.calls(SUBMIT), 1);
    let v2_image = deployment_image(&w, &flow, &deployment).await;
    assert_ne!(v2_image, v1_image);
    let line = format!("hello v2 from {suffix}");
    quick_run_logs(&w, plan, &flow, &deployment, &line).await;

    // A requirement that does not exist: the build fails, apply says why (the build log's
    // last lines and its console link) and exits 1; the deployment keeps its image.
    std::fs::write(
        proj.join("requirements.txt"),
        "bootstrap-e2e-no-such-package==9.9.9\n",
    )
    .unwrap();
    let a = run(&w, &["apply", "-f", plan, "--auto-approve"], 1);
    for want in [
        "ended FAILURE",
        "last lines of the build log:",
        "bootstrap-e2e-no-such-package",
        "logs: https://console.cloud.google.com/cloud-build/builds;region=us-central1/",
        "the deployments keep the image they had",
    ] {
        assert!(a.stderr.contains(want), "{want} in:\n{}", a.stderr);
    }
    assert!(!a.stderr.contains("panicked"), "{}", a.stderr);
    assert_eq!(deployment_image(&w, &flow, &deployment).await, v2_image);

    std::fs::remove_file(proj.join("requirements.txt")).unwrap();
    run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
}

/// The guide's prefect.yaml after `prefect init --recipe docker` (image on gcr.io) through
/// `deployments_from`: a warning naming the Artifact Registry path, and a build that runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_prefect_yaml_warns_about_gcr_and_builds() {
    let w = World::start(PROJECT).await;
    let suffix = testkit::suffix("gd");
    let fixture = testkit::repo_root().join("crates/spec/tests/fixtures/guide_build");
    let proj = w.path().join("guide_build");
    std::fs::create_dir_all(proj.join("flows")).unwrap();
    for f in ["requirements.txt", "flows/weather_flow.py"] {
        std::fs::copy(fixture.join(f), proj.join(f)).unwrap();
    }
    let deployment = format!("gcp-weather-deploy-{suffix}");
    let yaml = std::fs::read_to_string(fixture.join("prefect.yaml"))
        .unwrap()
        .replace("name: gcp-weather-deploy", &format!("name: {deployment}"));
    std::fs::write(proj.join("prefect.yaml"), yaml).unwrap();
    let plan_path = proj.join("bootstrap.yaml");
    std::fs::write(
        &plan_path,
        plan_text(&suffix, "deployments_from: prefect.yaml\n"),
    )
    .unwrap();
    let plan = plan_path.to_str().unwrap();

    let p = run(&w, &["plan", "-f", plan, "--detailed-exitcode"], 2);
    assert!(
        p.stderr
            .contains("Container Registry (gcr.io), which is shut down (writes stopped in 2025)"),
        "{}",
        p.stderr
    );
    assert!(
        p.stderr
            .contains("us-central1-docker.pkg.dev/sandbox-project/prefect/"),
        "{}",
        p.stderr
    );
    run(&w, &["apply", "-f", plan, "--auto-approve"], 0);
    let image = deployment_image(&w, "fetch-weather", &deployment).await;
    assert!(
        image.starts_with("us-central1-docker.pkg.dev/sandbox-project/prefect/"),
        "{image}"
    );
    // The guide's flow prints "weather" (no log_prints): Completed is what it shows.
    w.quick_run_completed(plan, "fetch-weather", &deployment);
    run(&w, &["destroy", "-f", plan, "--auto-approve"], 0);
}
