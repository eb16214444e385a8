//! Planner tests of the worker image built from the running binary (`worker.image` left out
//! with `runtime: embedded`): pure, no I/O.

use super::*;

const OLD: &str = "v0.0.9-0000000000000000";

/// The guide's spec with the embedded worker and no image.
fn worker_built_spec() -> Spec {
    let mut s = spec();
    let b = bootstrap_spec::worker_image::build(
        &s.gcp.project,
        &s.gcp.region,
        None,
        "/usr/local/bin/bootstrap".into(),
        "0.1.0",
    );
    let w = s.worker.as_mut().unwrap();
    w.runtime = WorkerRuntime::Embedded;
    w.image = ImageRef::parse(b.image_name.clone()).unwrap();
    w.build = Some(b);
    s
}

fn worker_image(s: &Spec, present: bool, previous_tag: Option<&str>) -> observed::BuiltImage {
    observed::BuiltImage {
        build: s.worker.as_ref().unwrap().build.clone().unwrap(),
        deployments: Vec::new(),
        digest: "cd".repeat(32),
        tag: "v0.1.0-cdcdcdcdcdcdcdcd".into(),
        files: 2,
        present,
        previous_tag: previous_tag.map(str::to_owned),
        build_account: BUILD_ACCOUNT.into(),
    }
}

/// The world after an apply of `s` whose worker runs `tag`, the repository in place.
fn converged_on(s: &Spec, tag: &str, img: observed::BuiltImage) -> Observed {
    let mut live = s.clone();
    let w = live.worker.as_mut().unwrap();
    w.image = ImageRef::parse(format!("{}:{tag}", img.build.image_name)).unwrap();
    let mut o = converged(&live);
    for a in crate::builds::BUILD_APIS {
        o.apis.insert((*a).into(), true);
    }
    o.images = vec![img];
    o.repositories.insert(
        "prefect".into(),
        Some(observed::Repository {
            format: Some("DOCKER".into()),
            labels: [("managed-by".to_string(), "bootstrap".to_string())].into(),
            readers: [s.service_account.email.member()].into(),
            writers: [format!("serviceAccount:{BUILD_ACCOUNT}")].into(),
        }),
    );
    o
}

fn step<'a>(p: &'a Plan, prefix: &str) -> &'a Step {
    p.steps
        .iter()
        .find(|s| s.address.0.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} step in {}", render::human(p, false)))
}

#[test]
fn a_first_apply_builds_the_worker_image_and_the_service_runs_it_after_the_build() {
    let s = worker_built_spec();
    let mut o = empty();
    o.images = vec![worker_image(&s, false, None)];
    o.repositories.insert("prefect".into(), None);
    let p = plan(&s, &o, &options(Mode::Apply));
    let build = step(&p, "gcp.image[");
    assert_eq!(
        build.address.0,
        "gcp.image[\"us-central1-docker.pkg.dev/prefect-project/prefect/bootstrap-worker\"]"
    );
    assert_eq!(build.action, Action::Create);
    assert!(matches!(&build.op, Op::BuildImage { image, files: 2, .. }
        if image == "us-central1-docker.pkg.dev/prefect-project/prefect/bootstrap-worker:v0.1.0-cdcdcdcdcdcdcdcd"));
    // The Cloud Build APIs join the plan's, and the service waits for the image.
    let apis = step(&p, "gcp.apis");
    assert!(
        format!("{:?}", apis.op).contains("cloudbuild.googleapis.com"),
        "{:?}",
        apis.op
    );
    let service = step(&p, "gcp.run_service[");
    assert!(
        service.depends_on.contains(&build.address),
        "{:?}",
        service.depends_on
    );
    let image = serde_json::to_string(&service.op).unwrap();
    assert!(
        image.contains("bootstrap-worker:v0.1.0-cdcdcdcdcdcdcdcd"),
        "{image}"
    );
    insta::assert_snapshot!("plan_worker_image_first", render::human(&p, false));
}

#[test]
fn an_unchanged_binary_is_a_quiet_plan() {
    let s = worker_built_spec();
    let img = worker_image(&s, true, Some("v0.1.0-cdcdcdcdcdcdcdcd"));
    let o = converged_on(&s, "v0.1.0-cdcdcdcdcdcdcdcd", img);
    let p = plan(&s, &o, &options(Mode::Apply));
    assert!(!p.has_changes(), "{}", render::human(&p, false));
}

#[test]
fn a_new_bootstrap_version_is_a_planned_image_update_of_the_worker() {
    let s = worker_built_spec();
    let img = worker_image(&s, false, Some(OLD));
    let o = converged_on(&s, OLD, img);
    let p = plan(&s, &o, &options(Mode::Apply));
    let build = step(&p, "gcp.image[");
    assert_eq!(build.action, Action::Update);
    assert_eq!(
        build.reason.as_deref(),
        Some("bootstrap 0.0.9 -> 0.1.0: the worker image is rebuilt from this binary")
    );
    let service = step(&p, "gcp.run_service[");
    assert_eq!(service.action, Action::Update);
    assert!(service.depends_on.contains(&build.address));
    let text = render::human(&p, false);
    assert!(
        text.contains(&format!("bootstrap-worker:{OLD}"))
            && text.contains("v0.1.0-cdcdcdcdcdcdcdcd"),
        "{text}"
    );
    insta::assert_snapshot!("plan_worker_image_new_version", text);
}

#[test]
fn destroy_deletes_the_repository_the_worker_image_made() {
    let s = worker_built_spec();
    let img = worker_image(&s, true, Some("v0.1.0-cdcdcdcdcdcdcdcd"));
    let o = converged_on(&s, "v0.1.0-cdcdcdcdcdcdcdcd", img);
    let p = plan(&s, &o, &options(Mode::Destroy));
    let repo = step(&p, "gcp.artifact_repository[");
    assert_eq!(repo.action, Action::Delete);
}

#[test]
fn a_worker_pool_waits_for_the_worker_image_too() {
    let mut s = pool_spec(1);
    let b = bootstrap_spec::worker_image::build(
        &s.gcp.project,
        &s.gcp.region,
        None,
        "/usr/local/bin/bootstrap".into(),
        "0.1.0",
    );
    let w = s.worker.as_mut().unwrap();
    w.runtime = WorkerRuntime::Embedded;
    w.image = ImageRef::parse(b.image_name.clone()).unwrap();
    w.build = Some(b);
    let mut o = empty();
    o.images = vec![worker_image(&s, false, None)];
    o.repositories.insert("prefect".into(), None);
    let p = plan(&s, &o, &options(Mode::Apply));
    let build = step(&p, "gcp.image[");
    let pool = step(&p, "gcp.run_worker_pool[");
    assert!(
        pool.depends_on.contains(&build.address),
        "{:?}",
        pool.depends_on
    );
    let body = serde_json::to_string(&pool.op).unwrap();
    assert!(
        body.contains("bootstrap-worker:v0.1.0-cdcdcdcdcdcdcdcd"),
        "{body}"
    );
}
