//! Loading whole plans: the guide, defaults, templates, secrets.

use std::path::Path;

use bootstrap_spec::{KeyMode, PoolType, WorkerRuntime, load_str};
use secrecy::ExposeSecret;

fn guide() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plans/guide.yaml");
    std::fs::read_to_string(path).expect("plans/guide.yaml is readable")
}

fn env(name: &str) -> Option<String> {
    match name {
        "PREFECT_API_URL" => Some("http://127.0.0.1:4200/api".into()),
        "PREFECT_API_KEY" => Some("pnu_supersecretvalue123".into()),
        _ => None,
    }
}

const MINIMAL: &str = "version: 1
gcp: {project: prefect-project, region: us-central1}
service_account: {name: prefect-service-account}
work_pool: {name: pool, type: cloud-run-v2}
";

#[test]
fn the_guide_loads_as_written() {
    let spec = load_str(&guide(), "plans/guide.yaml", &env).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(spec.gcp.project.as_str(), "prefect-project");
    assert_eq!(spec.gcp.region.as_str(), "us-central1");
    let apis: Vec<&str> = spec.gcp.apis.iter().map(|a| a.as_str()).collect();
    assert_eq!(apis, ["iam.googleapis.com", "run.googleapis.com"]);
    assert_eq!(
        spec.service_account.email.as_str(),
        "prefect-service-account@prefect-project.iam.gserviceaccount.com"
    );
    assert_eq!(
        spec.service_account.description,
        "service account to use for the prefect worker"
    );
    assert_eq!(spec.service_account.roles.len(), 2);
    assert_eq!(spec.service_account.key, KeyMode::Json);
    assert_eq!(
        spec.prefect.api_url.as_deref(),
        Some("http://127.0.0.1:4200/api")
    );
    assert_eq!(
        spec.prefect
            .api_key
            .as_ref()
            .map(|k| k.expose_secret().to_owned())
            .as_deref(),
        Some("pnu_supersecretvalue123")
    );
    assert_eq!(spec.credentials_block.name.as_str(), "gcp-credentials");
    assert_eq!(spec.work_pool.pool_type, PoolType::CloudRun);
    let worker = spec.worker.as_ref().expect("the guide has a worker");
    assert_eq!(worker.service.as_str(), "prefect-worker");
    assert_eq!(worker.min_instances, 1);
    assert!(!worker.cpu_throttling);
    assert!(!worker.allow_unauthenticated);
    assert_eq!(worker.runtime, WorkerRuntime::Python);
    assert_eq!(worker.api_key_secret.as_str(), "prefect-api-key");
    let d = &spec.deployments[0];
    assert_eq!(
        (d.name.as_str(), d.flow.as_str()),
        ("gcp-weather-deploy", "fetch-weather")
    );
    assert_eq!(d.parameters["lat"], serde_json::json!(14.5994));
    assert_eq!(d.work_queue.as_str(), "default");
}

#[test]
fn secrets_stay_out_of_debug_and_json() {
    let spec = load_str(&guide(), "plans/guide.yaml", &env).unwrap_or_else(|d| panic!("{d}"));
    assert!(!format!("{spec:?}").contains("supersecret"));
    let json = serde_json::to_string(&spec).unwrap();
    assert!(!json.contains("supersecret"), "{json}");
}

#[test]
fn secrets_stay_out_of_diagnostics() {
    let plan = guide().replace("name: gcp-credentials", "name: Bad_Block");
    let d = load_str(&plan, "p.yaml", &env).unwrap_err();
    assert!(!d.to_string().contains("supersecret"));
    let plan = format!("{MINIMAL}prefect:\n  api_key: \"{{{{ env.PREFECT_API_KEY }} \"\n");
    let d = load_str(&plan, "p.yaml", &env).unwrap_err();
    assert!(!d.to_string().contains("supersecret"), "{d}");
}

#[test]
fn defaults_are_filled_in() {
    let spec = load_str(MINIMAL, "p.yaml", &|_| None).unwrap_or_else(|d| panic!("{d}"));
    let apis: Vec<&str> = spec.gcp.apis.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        apis,
        [
            "iam.googleapis.com",
            "cloudresourcemanager.googleapis.com",
            "run.googleapis.com"
        ]
    );
    assert_eq!(spec.service_account.display_name, "prefect-service-account");
    assert_eq!(spec.service_account.key, KeyMode::Json);
    assert!(!spec.service_account.least_privilege);
    let roles: Vec<&str> = spec
        .service_account
        .roles
        .iter()
        .map(|r| r.as_str())
        .collect();
    assert_eq!(roles, bootstrap_spec::DEFAULT_ROLES);
    assert_eq!(spec.credentials_block.name.as_str(), "gcp-credentials");
    assert!(spec.worker.is_none());
    assert!(spec.deployments.is_empty());
    assert!(spec.prefect.api_url.is_none() && spec.prefect.api_key.is_none());
}

#[test]
fn worker_defaults_and_secret_manager_api() {
    let plan = format!(
        "{MINIMAL}prefect: {{api_url: 'http://127.0.0.1:4200/api', api_key: k}}\nworker: {{service: w, image: prefecthq/prefect:3-latest}}\n"
    );
    let spec = load_str(&plan, "p.yaml", &|_| None).unwrap_or_else(|d| panic!("{d}"));
    let w = spec.worker.as_ref().unwrap();
    assert_eq!(
        (w.cpu.as_str(), w.memory.as_str(), w.min_instances),
        ("1", "512Mi", 1)
    );
    assert!(
        spec.gcp
            .apis
            .iter()
            .any(|a| a.as_str() == "secretmanager.googleapis.com")
    );
}

#[test]
fn templates_see_env_and_earlier_sections() {
    let plan = "version: 1
gcp: {project: '{{ env.P | default(value=\"prefect-project\") }}', region: us-central1}
service_account: {name: sa-for-prefect, description: 'runs in {{ gcp.project }}'}
work_pool: {name: '{{ service_account.name }}-pool', type: cloud-run-v2}
deployments:
  - name: d
    entrypoint: flows/a.py:my_flow
    image: '{{ gcp.region }}-docker.pkg.dev/{{ gcp.project }}/flows/a:1'
    parameters: {who: '{{ not rendered }}'}
";
    let spec = load_str(plan, "p.yaml", &|_| None).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(spec.service_account.description, "runs in prefect-project");
    assert_eq!(spec.work_pool.name.as_str(), "sa-for-prefect-pool");
    let d = &spec.deployments[0];
    assert_eq!(d.flow.as_str(), "my-flow");
    assert_eq!(
        d.image.as_ref().map(|i| i.as_str()),
        Some("us-central1-docker.pkg.dev/prefect-project/flows/a:1")
    );
    assert_eq!(d.parameters["who"], "{{ not rendered }}");
}

#[test]
fn every_error_is_reported_at_once() {
    let plan = "version: 2
gcp: {project: Bad, regoin: us-central1}
service_account: {name: sa, roles: [run.admin]}
work_pool: {name: 'a/b', type: k8s}
";
    let d = load_str(plan, "p.yaml", &|_| None).unwrap_err();
    let text = d.to_string();
    for needle in [
        "version",
        "`regoin`",
        "missing `region` in `gcp`",
        "gcp.project",
        "service_account.name",
        "roles/run.admin",
        "work_pool.name",
        "work_pool.type",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
    assert!(d.len() >= 8, "{text}");
}

#[test]
fn deployments_from_prefect_yaml() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::write(
        dir.join("flows/w.py"),
        "@flow(name=\"fetch-weather\")\ndef fetch(lat: float):\n    pass\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("prefect.yaml"),
        "name: proj\nbuild: null\npull:\n  - prefect.deployments.steps.set_working_directory: {directory: /opt/prefect}\ndeployments:\n  - name: weather\n    entrypoint: flows/w.py:fetch\n    parameters: {lat: 1.5}\n    tags: [a]\n    work_pool:\n      name: other\n      work_queue_name: q\n      job_variables: {image: 'prefecthq/prefect:3-latest', memory: 1Gi}\n",
    )
    .unwrap();
    let plan_path = dir.join("bootstrap.yaml");
    let plan = format!("{MINIMAL}deployments_from: prefect.yaml\n");
    let spec =
        load_str(&plan, plan_path.to_str().unwrap(), &|_| None).unwrap_or_else(|d| panic!("{d}"));
    let d = &spec.deployments[0];
    assert_eq!(d.flow.as_str(), "fetch-weather");
    assert_eq!(d.work_queue.as_str(), "q");
    assert_eq!(
        d.image.as_ref().map(|i| i.as_str()),
        Some("prefecthq/prefect:3-latest")
    );
    assert_eq!(
        d.job_variables.get("memory"),
        Some(&serde_json::json!("1Gi"))
    );
    assert!(!d.job_variables.contains_key("image"));
    assert_eq!(d.pull_steps.len(), 1);
    assert_eq!(d.tags, ["a"]);

    // A clash with a deployment in the plan names both places.
    let plan = format!(
        "{MINIMAL}deployments_from: prefect.yaml\ndeployments:\n  - {{name: weather, flow: fetch-weather, entrypoint: flows/w.py:fetch}}\n"
    );
    let err = load_str(&plan, plan_path.to_str().unwrap(), &|_| None).unwrap_err();
    assert!(
        err.to_string()
            .contains("duplicate deployment `fetch-weather/weather`"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("spec-load-{}-{}", std::process::id(), line!()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn example(dir: &str) -> bootstrap_spec::Spec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(dir)
        .join("bootstrap.yaml");
    let text = std::fs::read_to_string(&path).expect("example plan is readable");
    load_str(&text, path.to_str().expect("utf-8 path"), &|_| None).unwrap_or_else(|d| panic!("{d}"))
}

#[test]
fn the_weather_example_reads_its_prefect_yaml() {
    let spec = example("weather");
    assert_eq!(spec.deployments.len(), 1);
    let d = &spec.deployments[0];
    // The flow name comes from `@flow(name="fetch-weather")` in the flow file.
    assert_eq!(
        (d.flow.as_str(), d.name.as_str()),
        ("fetch-weather", "gcp-weather-deploy")
    );
    assert_eq!(
        d.image.as_ref().map(|i| i.as_str()),
        Some("gcr.io/prefect-project/gcp-weather-image:latest")
    );
    assert_eq!(d.pull_steps.len(), 1);
}

#[test]
fn the_offline_example_is_the_local_demo() {
    let spec = example("offline");
    assert_eq!(spec.gcp.project.as_str(), "sandbox-project");
    assert_eq!(spec.work_pool.pool_type, PoolType::CloudRunV2);
    assert_eq!(
        spec.worker.as_ref().map(|w| w.runtime),
        Some(WorkerRuntime::Embedded)
    );
    let d = &spec.deployments[0];
    assert_eq!(
        (d.flow.as_str(), d.name.as_str()),
        ("offline-report", "offline-report")
    );
    assert_eq!(d.parameters["fail"], serde_json::json!(false));
}

#[test]
fn templated_numbers_and_booleans_and_anchors() {
    let plan = format!(
        "{MINIMAL}prefect: {{api_url: 'http://127.0.0.1:4200/api'}}
worker:
  service: w
  image: prefecthq/prefect:3-latest
  min_instances: \"{{{{ env.MIN | default(value='2') }}}}\"
  cpu_throttling: \"{{{{ env.THROTTLE | default(value='true') }}}}\"
  cpu: 2
deployments:
  - &base {{name: a, entrypoint: flows/a.py:a, parameters: {{x: 1}}}}
  - <<: *base
    name: b
"
    );
    let spec = load_str(&plan, "p.yaml", &|_| None).unwrap_or_else(|d| panic!("{d}"));
    let w = spec.worker.as_ref().unwrap();
    assert_eq!(
        (w.min_instances, w.cpu_throttling, w.cpu.as_str()),
        (2, true, "2")
    );
    let names: Vec<&str> = spec.deployments.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(spec.deployments[1].parameters["x"], 1);
}

#[test]
fn worker_kind_and_instances() {
    let service = load_str(
        &format!("{MINIMAL}prefect: {{api_url: 'http://127.0.0.1:4200/api'}}\nworker: {{service: prefect-worker, image: prefecthq/prefect:3-latest}}\n"),
        "p.yaml",
        &env,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let w = service.worker.unwrap();
    assert_eq!(
        (w.kind, w.instances),
        (bootstrap_spec::WorkerKind::Service, 1)
    );
    let pool = load_str(
        &format!("{MINIMAL}prefect: {{api_url: 'http://127.0.0.1:4200/api'}}\nworker: {{service: prefect-worker, image: prefecthq/prefect:3-latest, kind: worker-pool, instances: 0}}\n"),
        "p.yaml",
        &env,
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let w = pool.worker.unwrap();
    assert_eq!(
        (w.kind, w.instances),
        (bootstrap_spec::WorkerKind::WorkerPool, 0)
    );
    assert_eq!(w.pool_name().as_str(), "prefect-worker");
}

#[test]
fn scale_to_zero_on_a_service_is_refused_where_it_is_written() {
    let plan = format!(
        "{MINIMAL}prefect: {{api_url: http://127.0.0.1:4200/api}}\n\
         worker:\n  service: w\n  image: i\n  scale_to_zero:\n    idle: 10m\n"
    );
    let d = load_str(&plan, "p.yaml", &env).expect_err("a service cannot scale to zero");
    let d: Vec<_> = d.into_iter().collect();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].line, d[0].column), (10, 5), "{}", d[0]);
    assert!(
        d[0].message
            .contains("`worker.scale_to_zero` needs `worker.kind: worker-pool`"),
        "{}",
        d[0]
    );
}

#[test]
fn scale_to_zero_idle_must_be_a_duration_in_range() {
    for (idle, ok) in [
        ("0s", false),
        ("25h", false),
        ("-3", false),
        ("soon", false),
    ] {
        let plan = format!(
            "{MINIMAL}prefect: {{api_url: http://127.0.0.1:4200/api}}\n\
             worker:\n  service: w\n  scale_to_zero: {{idle: \"{idle}\"}}\n"
        );
        let d: Vec<_> = load_str(&plan, "p.yaml", &env)
            .expect_err("rejected")
            .into_iter()
            .collect();
        let bad_idle = d
            .iter()
            .any(|x| x.message.contains("invalid `worker.scale_to_zero.idle`"));
        assert_eq!(bad_idle, !ok, "{idle}: {d:?}");
    }
}

#[test]
fn scale_to_zero_on_an_embedded_worker_pool() {
    let plan = |runtime: &str, idle: &str| {
        format!(
            "{MINIMAL}prefect: {{api_url: http://127.0.0.1:4200/api}}\n\
             worker: {{service: w, image: i, kind: worker-pool, runtime: {runtime}, scale_to_zero: {{idle: {idle}}}}}\n"
        )
    };
    let spec = load_str(&plan("embedded", "90s"), "p.yaml", &env).unwrap_or_else(|d| panic!("{d}"));
    let stz = spec.worker.unwrap().scale_to_zero.expect("scale_to_zero");
    assert_eq!(stz.idle, std::time::Duration::from_secs(90));
    let spec = load_str(&plan("embedded", "600"), "p.yaml", &env).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(
        spec.worker.unwrap().scale_to_zero.unwrap().idle,
        std::time::Duration::from_secs(600)
    );
    let d: Vec<_> = load_str(&plan("python", "10m"), "p.yaml", &env)
        .expect_err("the Python worker cannot scale itself down")
        .into_iter()
        .collect();
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(
        d[0].message.contains("needs `worker.runtime: embedded`"),
        "{}",
        d[0]
    );
}
