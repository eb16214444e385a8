//! `build:` on a deployment: what a good one resolves to, and how it reaches the digest.

use bootstrap_spec::build::DockerfileSpec;
use bootstrap_spec::{context, load};

const PLAN: &str = r#"version: 1
gcp: {project: prefect-project, region: europe-west1}
service_account: {name: prefect-service-account}
prefect: {api_url: "http://127.0.0.1:4200/api"}
work_pool: {name: pool, type: cloud-run-v2}
deployments:
  - name: Weather Deploy
    entrypoint: flows/weather.py:fetch_weather
    build: {context: weather}
  - name: custom
    entrypoint: flows/weather.py:fetch_weather
    pull_steps: [{prefect.deployments.steps.set_working_directory: {directory: /app}}]
    build:
      context: ./weather/
      dockerfile: docker/Dockerfile
      repository: flows
      platform: linux/amd64
"#;

#[test]
fn a_build_resolves_image_name_workdir_and_pull_step() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("weather");
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::create_dir_all(dir.join("docker")).unwrap();
    std::fs::write(dir.join("flows/weather.py"), "print('x')\n").unwrap();
    std::fs::write(dir.join("docker/Dockerfile"), "FROM python:3.11\n").unwrap();
    let plan = t.path().join("bootstrap.yaml");
    std::fs::write(&plan, PLAN).unwrap();
    let spec = load(&plan).unwrap_or_else(|d| panic!("{d}"));
    let auto = spec.deployments[0].build.as_ref().unwrap();
    assert!(spec.deployments[0].image.is_none());
    assert_eq!(auto.dockerfile, DockerfileSpec::Auto);
    assert_eq!(auto.repository, "prefect");
    assert_eq!(
        auto.image_name,
        "europe-west1-docker.pkg.dev/prefect-project/prefect/weather-deploy"
    );
    assert_eq!(auto.workdir, "/opt/prefect/weather");
    assert_eq!(auto.context, std::fs::canonicalize(&dir).unwrap());
    // Prefect's `dockerfile: auto` deployments run from where the image keeps the code.
    assert_eq!(
        spec.deployments[0].pull_steps,
        [
            serde_json::json!({"prefect.deployments.steps.set_working_directory":
                             {"directory": "/opt/prefect/weather"}})
        ]
    );
    let custom = spec.deployments[1].build.as_ref().unwrap();
    assert_eq!(
        custom.dockerfile,
        DockerfileSpec::Path("docker/Dockerfile".into())
    );
    assert_eq!(
        custom.image_name,
        "europe-west1-docker.pkg.dev/prefect-project/flows/custom"
    );
    // The plan's own pull steps are kept.
    assert_eq!(
        spec.deployments[1].pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"],
        "/app"
    );
    // The same folder with another Dockerfile is another source.
    let a = context::read(auto).unwrap();
    let b = context::read(custom).unwrap();
    assert_ne!(a.digest, b.digest);
    assert!(a.tag().starts_with("src-") && a.tag().len() == 20);
}

/// The guide's plan with its deployments from `dir/prefect.yaml`.
fn plan_from(dir: &std::path::Path) -> Result<bootstrap_spec::Spec, bootstrap_spec::Diagnostics> {
    let plan = format!(
        "version: 1\ngcp: {{project: prefect-project, region: us-central1}}\n\
         service_account: {{name: prefect-service-account}}\n\
         prefect: {{api_url: \"http://127.0.0.1:4200/api\"}}\n\
         work_pool: {{name: my-cloud-run-pool, type: cloud-run}}\n\
         deployments_from: {}/prefect.yaml\n",
        dir.display()
    );
    bootstrap_spec::load_str(&plan, "bootstrap.yaml", &|_| None)
}

#[test]
fn the_guides_prefect_yaml_build_step_becomes_a_build() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guide_build");
    let spec = plan_from(&dir).unwrap_or_else(|d| panic!("{d}"));
    let d = &spec.deployments[0];
    assert!(
        d.image.is_none(),
        "the build makes the image: {:?}",
        d.image
    );
    let b = d.build.as_ref().unwrap();
    assert_eq!(b.dockerfile, DockerfileSpec::Auto);
    assert_eq!(
        b.image_name,
        "us-central1-docker.pkg.dev/prefect-project/prefect/gcp-weather-deploy"
    );
    assert_eq!(b.context, std::fs::canonicalize(&dir).unwrap());
    assert_eq!(b.notes.len(), 1, "{:?}", b.notes);
    assert!(b.notes[0].contains("Container Registry (gcr.io), which is shut down"));
    assert!(b.notes[0].contains(&b.image_name));
    assert_eq!(
        d.pull_steps,
        [
            serde_json::json!({"prefect.deployments.steps.set_working_directory":
                             {"directory": "/opt/prefect/guide_build"}})
        ]
    );
    let c = context::read(b).unwrap();
    let paths: Vec<&str> = c.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "Dockerfile",
            "flows/weather_flow.py",
            "prefect.yaml",
            "requirements.txt"
        ]
    );
}

#[test]
fn a_deployment_naming_its_own_image_does_not_take_the_build_step() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("flows")).unwrap();
    std::fs::write(dir.path().join("flows/f.py"), "from prefect import flow\n").unwrap();
    std::fs::write(
        dir.path().join("prefect.yaml"),
        "name: r\nbuild:\n  - prefect_docker.deployments.steps.build_docker_image:\n      image_name: ignored\n\
         deployments:\n  - name: fixed\n    entrypoint: flows/f.py:f\n    work_pool:\n      name: p\n\
         \x20     job_variables:\n        image: europe-west1-docker.pkg.dev/p/flows/reports:1\n\
         \x20 - name: built\n    entrypoint: flows/f.py:f\n    work_pool:\n      name: p\n\
         \x20     job_variables:\n        image: \"{{ build_image.image }}\"\n",
    )
    .unwrap();

    // No Dockerfile in the folder: only the deployment that uses the build may need one
    // (`dockerfile` defaults to prefect-docker's `Dockerfile`), and it is reported for it alone.
    let err = plan_from(dir.path()).expect_err("the built deployment needs a Dockerfile");
    let text = err.to_string();
    assert!(text.contains("no file `Dockerfile`"), "{text}");
    assert!(
        text.contains("(1 problem)") || text.matches("no file").count() == 1,
        "{text}"
    );
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM prefecthq/prefect:3.9.1-python3.11\n",
    )
    .unwrap();
    let spec = plan_from(dir.path()).unwrap_or_else(|d| panic!("{d}"));
    let fixed = spec
        .deployments
        .iter()
        .find(|d| d.name.as_str() == "fixed")
        .unwrap();
    assert!(fixed.build.is_none(), "{:?}", fixed.build);
    assert_eq!(
        fixed.image.as_ref().map(|i| i.to_string()).as_deref(),
        Some("europe-west1-docker.pkg.dev/p/flows/reports:1")
    );
    let built = spec
        .deployments
        .iter()
        .find(|d| d.name.as_str() == "built")
        .unwrap();
    assert!(built.build.is_some() && built.image.is_none());
}

const EMBEDDED: &str = r#"version: 1
gcp: {project: prefect-project, region: europe-west1}
service_account: {name: prefect-service-account}
prefect: {api_url: "http://127.0.0.1:4200/api"}
work_pool: {name: pool, type: cloud-run-v2}
worker: {service: prefect-worker, runtime: embedded}
"#;

fn running(os: &str, arch: &str) -> bootstrap_spec::worker_image::Running {
    bootstrap_spec::worker_image::Running {
        os: os.into(),
        arch: arch.into(),
        exe: Ok("/usr/bin/bootstrap".into()),
        version: "9.8.7".into(),
    }
}

#[test]
fn an_embedded_worker_without_an_image_builds_it_from_the_running_binary() {
    let spec = bootstrap_spec::load_str_on(
        EMBEDDED,
        "bootstrap.yaml",
        &|_| None,
        running("linux", "x86_64"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let w = spec.worker.unwrap();
    let b = w.build.expect("the worker image is built");
    assert_eq!(
        b.image_name,
        "europe-west1-docker.pkg.dev/prefect-project/prefect/bootstrap-worker"
    );
    assert_eq!(w.image.as_str(), b.image_name);
    assert_eq!(b.context, std::path::PathBuf::from("/usr/bin/bootstrap"));
    assert_eq!(
        b.dockerfile,
        DockerfileSpec::Worker {
            version: "9.8.7".into()
        }
    );
    // A named image is used as it is, and the python runtime never builds.
    let named = EMBEDDED.replace(
        "runtime: embedded}",
        "runtime: embedded, image: my/worker:1}",
    );
    let spec = bootstrap_spec::load_str_on(
        &named,
        "bootstrap.yaml",
        &|_| None,
        running("macos", "aarch64"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    assert!(spec.worker.unwrap().build.is_none());
    // Prefect's worker is not this binary: it still needs its image named.
    let python = EMBEDDED.replace("runtime: embedded}", "runtime: python}");
    let d = bootstrap_spec::load_str_on(
        &python,
        "bootstrap.yaml",
        &|_| None,
        running("linux", "x86_64"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        d.contains("missing required key `image` in `worker`"),
        "{d}"
    );
}

#[test]
fn a_host_that_is_not_linux_amd64_is_a_plan_error_with_the_fix() {
    let d = bootstrap_spec::load_str_on(
        EMBEDDED,
        "bootstrap.yaml",
        &|_| None,
        running("macos", "aarch64"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        d.contains("bootstrap.yaml:6:9: error: `worker.image` is not set, so the worker's image would be built from this `bootstrap` binary, which is macos/arm64; Cloud Run runs linux/amd64 only"),
        "{d}"
    );
    assert!(
        d.contains("or build the image from the repository's Dockerfile"),
        "{d}"
    );
    assert!(d.contains("set `worker.image`"), "{d}");
}

#[test]
fn the_worker_image_goes_to_the_deployments_repository() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(t.path().join("weather")).unwrap();
    std::fs::write(t.path().join("weather/flow.py"), "print('x')\n").unwrap();
    let plan = format!(
        "{EMBEDDED}deployments:\n  - name: d\n    entrypoint: flow.py:f\n    build: {{context: weather, repository: flows}}\n"
    );
    let file = t.path().join("bootstrap.yaml");
    let spec = bootstrap_spec::load_str_on(
        &plan,
        file.to_str().unwrap(),
        &|_| None,
        running("linux", "x86_64"),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let w = spec.worker.unwrap();
    let b = w.build.unwrap();
    assert_eq!(b.repository, "flows");
    assert_eq!(
        w.image.as_str(),
        "europe-west1-docker.pkg.dev/prefect-project/flows/bootstrap-worker"
    );
    assert_eq!(b.image_name, w.image.as_str());
}
