//! Planner tests: pure, no I/O. The rendered plans are snapshot-tested (what users read).

use std::collections::{BTreeMap, BTreeSet};

use bootstrap_spec::ids::*;
use bootstrap_spec::*;
use serde_json::json;

use super::*;
use crate::observed::{self, Observed};
use crate::plan::{Action, Deferred, Op};
use crate::render;

/// The credentials block's id in a converged world.
const BLOCK_ID: uuid::Uuid = uuid::Uuid::from_u128(0xb1);

/// A flow's id, one per flow name.
fn flow_id_of(flow: &str) -> FlowId {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, flow.as_bytes()).into()
}

fn spec() -> Spec {
    let project = ProjectId::parse("prefect-project").unwrap();
    let account = AccountId::parse("prefect-service-account").unwrap();
    Spec {
        source: "plans/guide.yaml".into(),
        gcp: Gcp {
            project: project.clone(),
            region: Region::parse("us-central1").unwrap(),
            apis: [
                "iam.googleapis.com",
                "run.googleapis.com",
                "secretmanager.googleapis.com",
            ]
            .into_iter()
            .map(|a| ApiService::parse(a).unwrap())
            .collect(),
            quota_project: None,
        },
        service_account: ServiceAccount {
            email: ServiceAccountEmail::for_account(&account, &project),
            account_id: account,
            display_name: "prefect-service-account".into(),
            description: "service account to use for the prefect worker".into(),
            roles: vec![
                Role::parse("roles/iam.serviceAccountUser").unwrap(),
                Role::parse("roles/run.admin").unwrap(),
            ],
            key: KeyMode::Json,
            least_privilege: false,
        },
        prefect: Prefect {
            api_url: Some("http://127.0.0.1:4200/api".into()),
            api_key: None,
            auth_string: None,
        },
        credentials_block: CredentialsBlock {
            name: BlockName::parse("gcp-credentials").unwrap(),
        },
        work_pool: WorkPool {
            name: PrefectName::parse("my-cloud-run-pool").unwrap(),
            pool_type: PoolType::CloudRun,
            description: None,
            job_variables: serde_json::Map::new(),
            base_job_template: None,
            concurrency_limit: None,
        },
        worker: Some(Worker {
            service: RunServiceName::parse("prefect-worker").unwrap(),
            image: ImageRef::parse("prefecthq/prefect:3-latest").unwrap(),
            build: None,
            runtime: WorkerRuntime::Python,
            min_instances: 1,
            max_instances: None,
            cpu_throttling: false,
            allow_unauthenticated: false,
            cpu: "1".into(),
            memory: "512Mi".into(),
            api_key_secret: SecretId::parse("prefect-api-key").unwrap(),
            kind: WorkerKind::Service,
            instances: 1,
            scale_to_zero: None,
        }),
        deployments: vec![Deployment {
            build: None,
            name: PrefectName::parse("gcp-weather-deploy").unwrap(),
            flow: PrefectName::parse("fetch-weather").unwrap(),
            entrypoint: "flows/weather_flow.py:fetch_weather".into(),
            image: Some(
                ImageRef::parse("gcr.io/prefect-project/gcp-weather-image:latest").unwrap(),
            ),
            parameters: json!({"lat": 14.5994, "lon": 28.6731})
                .as_object()
                .unwrap()
                .clone(),
            work_queue: PrefectName::parse("default").unwrap(),
            tags: vec![],
            description: None,
            job_variables: serde_json::Map::new(),
            pull_steps: vec![],
            schedules: vec![],
        }],
    }
}

fn options(mode: Mode) -> Options {
    Options {
        mode,
        rotate_key: false,
        keep_service_account: false,
        prefect_api_url: "http://127.0.0.1:4200/api".into(),
        has_api_key: true,
    }
}

fn default_template() -> serde_json::Value {
    json!({
        "job_configuration": {"region": "{{ region }}", "credentials": "{{ credentials }}"},
        "variables": {"type": "object", "properties": {
            "region": {"type": "string", "default": "us-central1"},
            "credentials": {"allOf": [{"$ref": "#/definitions/GcpCredentials"}]},
            "service_account_name": {"type": "string"},
            "cpu": {"type": "string"},
            "image": {"type": "string"}
        }}
    })
}

fn empty() -> Observed {
    Observed {
        default_template: Some(default_template()),
        ..Observed::default()
    }
}

/// What the live world looks like right after a successful apply of `spec()`.
fn converged(s: &Spec) -> Observed {
    let mut o = empty();
    for a in &s.gcp.apis {
        o.apis.insert(a.to_string(), true);
    }
    o.service_account = Some(observed::ServiceAccount {
        email: s.service_account.email.to_string(),
        display_name: s.service_account.display_name.clone(),
        description: s.service_account.description.clone(),
        disabled: false,
    });
    let member = s.service_account.email.member();
    let mut bindings: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &s.service_account.roles {
        bindings
            .entry(r.to_string())
            .or_default()
            .insert(member.clone());
    }
    bindings
        .entry("roles/owner".into())
        .or_default()
        .insert("user:someone@example.com".into());
    o.project_bindings = bindings;
    o.keys = vec![observed::Key {
        name: format!(
            "projects/prefect-project/serviceAccounts/{}/keys/k1",
            s.service_account.email
        ),
        key_id: "k1".into(),
        disabled: false,
    }];
    o.block = Some(observed::Block {
        id: BLOCK_ID.into(),
        project: Some("prefect-project".into()),
        private_key_id: Some("k1".into()),
        client_email: Some(s.service_account.email.to_string()),
        has_service_account_info: true,
    });
    o.secret = Some(observed::Secret {
        labels: [("managed-by".to_string(), "bootstrap".to_string())].into(),
        latest_matches: Some(true),
        accessors: [member].into(),
    });
    let worker = s.worker.as_ref().unwrap();
    let mut live = service::to_json(&service::desired(s, worker, &options(Mode::Apply)));
    // Server-filled fields must not show as drift.
    live["uid"] = json!("u-1");
    live["generation"] = json!("3");
    live["terminalCondition"] = json!({"type": "Ready", "state": "CONDITION_SUCCEEDED"});
    live["template"]["containers"][0]["name"] = json!("worker-1");
    // Cloud Run fills in its default when the plan sets none.
    live["template"]["scaling"]["maxInstanceCount"] = json!(100);
    o.service = Some(live);
    let t = template::apply_defaults(
        s,
        &default_template(),
        Some(&template::block_ref(BLOCK_ID.into())),
    );
    o.work_pool = Some(observed::WorkPool {
        id: "p-1".into(),
        pool_type: "cloud-run".into(),
        description: None,
        base_job_template: t,
        concurrency_limit: None,
    });
    for d in &s.deployments {
        o.deployments.insert(
            prefect::deployment_key(d),
            observed::Deployment {
                id: uuid::Uuid::from_u128(0xd1).into(),
                flow: d.flow.to_string(),
                flow_id: uuid::Uuid::from_u128(0xf1).into(),
                name: d.name.to_string(),
                fields: prefect::deployment_fields(s, d),
            },
        );
    }
    o
}

#[test]
fn first_apply_creates_everything_in_order() {
    let s = spec();
    let p = plan(&s, &empty(), &options(Mode::Apply));
    let addrs: Vec<String> = p.steps.iter().map(|s| s.address.to_string()).collect();
    let pos = |a: &str| {
        addrs
            .iter()
            .position(|x| x.starts_with(a))
            .unwrap_or_else(|| panic!("{a} missing in {addrs:?}"))
    };
    assert!(pos("gcp.service_account[") < pos("gcp.project_iam"));
    assert!(pos("gcp.service_account_key") < pos("prefect.block"));
    assert!(pos("prefect.block") < pos("prefect.work_pool"));
    assert!(
        p.steps
            .iter()
            .all(|s| s.action == Action::Create || s.action == Action::Update)
    );
    insta::assert_snapshot!("plan_create", render::human(&p, false));
}

#[test]
fn converged_world_is_a_quiet_plan() {
    let s = spec();
    let p = plan(&s, &converged(&s), &options(Mode::Apply));
    assert!(!p.has_changes(), "{}", render::human(&p, false));
    insta::assert_snapshot!("plan_noop", render::human(&p, false));
}

/// A service whose latest revision failed (the container never passed its startup probe) is
/// drift even though its spec matches: the plan names Google's reason and redeploys it as a new
/// revision; a service still reconciling is not drift.
#[test]
fn a_failed_revision_is_drift_that_redeploys() {
    let s = spec();
    let mut o = converged(&s);
    let live = o.service.as_mut().unwrap();
    live["latestCreatedRevision"] = json!(
        "projects/prefect-project/locations/us-central1/services/prefect-worker/revisions/prefect-worker-00002-abc"
    );
    live["latestReadyRevision"] = json!(
        "projects/prefect-project/locations/us-central1/services/prefect-worker/revisions/prefect-worker-00001-xyz"
    );
    live["terminalCondition"] = json!({
        "type": "Ready",
        "state": "CONDITION_FAILED",
        "reason": "HEALTH_CHECK_CONTAINER_ERROR",
        "message": "The user-provided container failed the configured startup probe checks.",
    });
    let p = plan(&s, &o, &options(Mode::Apply));
    assert_eq!(p.steps.len(), 1, "{}", render::human(&p, false));
    let step = &p.steps[0];
    assert_eq!(step.action, Action::Update);
    assert!(step.changes.is_empty());
    let Op::UpsertService { body, .. } = &step.op else {
        panic!("expected an upsert: {:?}", step.op)
    };
    let body = service::to_json(body);
    assert_eq!(
        body["template"]["annotations"][service::REDEPLOY_ANNOTATION],
        json!("prefect-worker-00002-abc")
    );
    assert!(body.get("terminalCondition").is_none());
    insta::assert_snapshot!("plan_not_ready", render::human(&p, false));

    // Still reconciling (a deploy under way): not drift.
    let live = o.service.as_mut().unwrap();
    live["reconciling"] = json!(true);
    live["terminalCondition"] = json!({"type": "Ready", "state": "CONDITION_RECONCILING"});
    assert!(!plan(&s, &o, &options(Mode::Apply)).has_changes());

    // Settled, but the latest created revision is not the ready one.
    let live = o.service.as_mut().unwrap();
    live["reconciling"] = json!(false);
    live["terminalCondition"] = json!({"type": "Ready", "state": "CONDITION_SUCCEEDED"});
    let p = plan(&s, &o, &options(Mode::Apply));
    assert_eq!(
        p.steps[0].reason.as_deref(),
        Some(
            "latest revision prefect-worker-00002-abc is not ready (serving prefect-worker-00001-xyz); apply redeploys it"
        )
    );
}

#[test]
fn a_changed_field_is_one_in_place_update() {
    let mut s = spec();
    let o = converged(&s);
    s.worker.as_mut().unwrap().min_instances = 2;
    let p = plan(&s, &o, &options(Mode::Apply));
    assert_eq!(p.steps.len(), 1, "{}", render::human(&p, false));
    assert_eq!(p.steps[0].action, Action::Update);
    assert_eq!(p.steps[0].changes.len(), 1);
    insta::assert_snapshot!("plan_update", render::human(&p, false));
}

/// A change to one of many deployments is one step, and it carries its flow's id from observe
/// so that apply sends only that deployment's upsert (no `POST /flows/`); a new deployment of
/// a flow no live deployment names has no id (apply upserts the flow once). Issue #20 item 2.
#[test]
fn one_changed_deployment_of_many_carries_its_flow_id() {
    let mut s = spec();
    let first = s.deployments[0].clone();
    for i in 1..100 {
        let mut d = first.clone();
        d.name = PrefectName::parse(format!("deploy-{i}")).unwrap();
        d.flow = PrefectName::parse(format!("flow-{}", i % 10)).unwrap();
        s.deployments.push(d);
    }
    let mut o = converged(&s);
    for d in o.deployments.values_mut() {
        d.flow_id = flow_id_of(&d.flow);
    }
    s.deployments[42]
        .parameters
        .insert("lat".into(), json!(1.5));
    let p = plan(&s, &o, &options(Mode::Apply));
    assert_eq!(p.steps.len(), 1, "{}", render::human(&p, false));
    let Op::UpsertDeployment { name, flow_id, .. } = &p.steps[0].op else {
        panic!("expected a deployment upsert: {:?}", p.steps[0].op)
    };
    assert_eq!(name, "deploy-42");
    assert_eq!(*flow_id, Some(flow_id_of("flow-2")));

    // A new deployment of a flow that only it names: no id to reuse.
    let mut d = first.clone();
    d.name = PrefectName::parse("fresh").unwrap();
    d.flow = PrefectName::parse("brand-new-flow").unwrap();
    s.deployments.push(d);
    let p = plan(&s, &o, &options(Mode::Apply));
    let fresh = p
        .steps
        .iter()
        .find_map(|st| match &st.op {
            Op::UpsertDeployment { name, flow_id, .. } if name == "fresh" => Some(flow_id),
            _ => None,
        })
        .expect("a step for the new deployment");
    assert_eq!(*fresh, None);
}

#[test]
fn removed_role_is_repaired_and_foreign_members_are_untouched() {
    let s = spec();
    let mut o = converged(&s);
    o.project_bindings
        .get_mut("roles/run.admin")
        .unwrap()
        .clear();
    let p = plan(&s, &o, &options(Mode::Apply));
    assert_eq!(p.steps.len(), 1);
    match &p.steps[0].op {
        Op::EditProjectPolicy { add, remove, .. } => {
            assert_eq!(
                add,
                &vec![(
                    "roles/run.admin".to_string(),
                    s.service_account.email.member()
                )]
            );
            assert!(remove.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Regression (reliability crash test): an apply killed right after creating the account
/// leaves binding it to the next apply, which must still wait out IAM's "does not exist".
#[test]
fn binding_an_existing_account_allows_the_new_account_grace() {
    let s = spec();
    let mut o = converged(&s);
    o.project_bindings.clear();
    let p = plan(&s, &o, &options(Mode::Apply));
    let edit = p
        .steps
        .iter()
        .find_map(|st| match &st.op {
            Op::EditProjectPolicy { new_accounts, .. } => Some(new_accounts.clone()),
            _ => None,
        })
        .expect("a project policy edit");
    assert_eq!(edit, vec![s.service_account.email.to_string()]);
}

#[test]
fn missing_key_makes_a_new_one_and_orphans_the_rest() {
    let s = spec();
    let mut o = converged(&s);
    o.keys = vec![observed::Key {
        name: "n/keys/k9".into(),
        key_id: "k9".into(),
        disabled: false,
    }];
    let p = plan(&s, &o, &options(Mode::Apply));
    let kinds: Vec<(String, Action)> = p
        .steps
        .iter()
        .map(|s| (s.address.to_string(), s.action))
        .collect();
    assert!(
        kinds
            .iter()
            .any(|(a, x)| a.contains("/new") && *x == Action::Create),
        "{kinds:?}"
    );
    assert!(
        kinds
            .iter()
            .any(|(a, x)| a.contains("k9") && *x == Action::Delete),
        "{kinds:?}"
    );
    let block = p
        .steps
        .iter()
        .find(|s| s.address.to_string().starts_with("prefect.block"))
        .unwrap();
    assert!(matches!(
        &block.op,
        Op::UpsertBlock {
            key_from: Some(_),
            ..
        }
    ));
    // No secret value is ever in the plan.
    assert!(render::json(&p).contains("(sensitive)") || !render::json(&p).contains("PRIVATE KEY"));
}

#[test]
fn ui_edits_to_unowned_template_fields_are_kept() {
    let s = spec();
    let mut o = converged(&s);
    let pool = o.work_pool.as_mut().unwrap();
    pool.base_job_template["variables"]["properties"]["cpu"]["default"] = json!("2000m");
    let p = plan(&s, &o, &options(Mode::Apply));
    assert!(!p.has_changes(), "{}", render::human(&p, false));
    // And when the plan does change the template, the UI's edit rides along.
    let mut s2 = s.clone();
    s2.gcp.region = Region::parse("europe-west1").unwrap();
    let p = plan(&s2, &o, &options(Mode::Apply));
    let pool_step = p
        .steps
        .iter()
        .find(|s| s.address.to_string().starts_with("prefect.work_pool"))
        .unwrap();
    match &pool_step.op {
        Op::UpdateWorkPool { update, .. } => {
            let base_job_template = update.base_job_template.as_ref().expect("a template");
            assert_eq!(
                base_job_template["variables"]["properties"]["cpu"]["default"],
                json!("2000m")
            );
            assert_eq!(
                base_job_template["variables"]["properties"]["region"]["default"],
                json!("europe-west1")
            );
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn destroy_deletes_in_reverse_and_twice_is_a_no_op() {
    let s = spec();
    let p = plan(&s, &converged(&s), &options(Mode::Destroy));
    let addrs: Vec<String> = p.steps.iter().map(|s| s.address.to_string()).collect();
    let pos = |a: &str| addrs.iter().position(|x| x.starts_with(a)).unwrap();
    assert!(pos("prefect.deployment") < pos("prefect.work_pool"));
    assert!(pos("prefect.work_pool") < pos("prefect.block"));
    assert!(pos("gcp.run_service") < pos("gcp.service_account["));
    insta::assert_snapshot!("plan_destroy", render::human(&p, false));
    let p2 = plan(&s, &empty(), &options(Mode::Destroy));
    assert!(!p2.has_changes());
}

#[test]
fn unmarked_service_is_adopted_and_kept_by_destroy() {
    let s = spec();
    let mut o = converged(&s);
    o.service.as_mut().unwrap()["labels"] = json!({});
    let p = plan(&s, &o, &options(Mode::Apply));
    assert!(p.steps.iter().any(|s| s.adopted));
    let d = plan(&s, &o, &options(Mode::Destroy));
    assert!(
        d.adopted
            .iter()
            .any(|a| a.to_string().contains("run_service"))
    );
    assert!(
        !d.steps
            .iter()
            .any(|s| s.address.to_string().contains("run_service"))
    );
}

// ---- worker pool (`worker.kind: worker-pool`) ----

fn pool_spec(instances: u32) -> Spec {
    let mut s = spec();
    let w = s.worker.as_mut().unwrap();
    w.kind = WorkerKind::WorkerPool;
    w.instances = instances;
    s
}

/// The world after an apply of `pool_spec(n)`: the service gone, the pool live.
fn converged_pool(s: &Spec) -> Observed {
    let mut o = converged(s);
    o.service = None;
    let worker = s.worker.as_ref().unwrap();
    let mut live = service::to_json(&worker_pool::desired(s, worker, &options(Mode::Apply)));
    live["uid"] = json!("u-2");
    live["generation"] = json!("1");
    live["terminalCondition"] = json!({"type": "Ready", "state": "CONDITION_SUCCEEDED"});
    live["latestCreatedRevision"] = json!(
        "projects/p/locations/r/workerPools/prefect-worker/revisions/prefect-worker-00001-abc"
    );
    live["latestReadyRevision"] = live["latestCreatedRevision"].clone();
    live["instanceSplitStatuses"] =
        json!([{"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": 100}]);
    live["template"]["containers"][0]["resources"]["limits"]["cpu"] = json!("1");
    o.worker_pool = Some(live);
    o
}

#[test]
fn a_worker_pool_runs_the_worker_without_its_health_listener() {
    let s = pool_spec(1);
    let body = service::to_json(&worker_pool::desired(
        &s,
        s.worker.as_ref().unwrap(),
        &options(Mode::Apply),
    ));
    let args: Vec<&str> = body["template"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        args,
        [
            "prefect",
            "worker",
            "start",
            "--install-policy",
            "always",
            "-p",
            "my-cloud-run-pool",
            "-t",
            "cloud-run"
        ]
    );
    assert!(body["template"]["containers"][0].get("ports").is_none());
    assert!(
        body["template"]["containers"][0]
            .get("startupProbe")
            .is_none()
    );
    assert_eq!(body["scaling"]["manualInstanceCount"], 1);
    assert_eq!(body["labels"]["managed-by"], "bootstrap");
    assert_eq!(
        body["template"]["containers"][0]["env"][1]["valueSource"]["secretKeyRef"]["secret"],
        "prefect-api-key"
    );
    let mut embedded = s.clone();
    embedded.worker.as_mut().unwrap().runtime = WorkerRuntime::Embedded;
    let (_, args) = worker_pool::command_and_args(&embedded, embedded.worker.as_ref().unwrap());
    assert_eq!(args, ["worker", "--pool", "my-cloud-run-pool"]);
}

#[test]
fn worker_pool_first_apply_and_cost() {
    let s = pool_spec(1);
    let p = plan(&s, &empty(), &options(Mode::Apply));
    let step = p
        .steps
        .iter()
        .find(|st| st.address.0.starts_with("gcp.run_worker_pool"))
        .expect("a pool step");
    assert!(matches!(
        step.op,
        Op::UpsertWorkerPool {
            count_only: false,
            wait_online: false,
            ..
        }
    ));
    assert!(
        !p.steps
            .iter()
            .any(|st| st.address.0.starts_with("gcp.run_service"))
    );
    let cost = p.cost.as_ref().expect("a cost");
    assert_eq!(
        (&*cost.kind, cost.instances, cost.monthly_usd),
        ("worker-pool", 1, 49.93)
    );
    insta::assert_snapshot!("plan_pool_create", render::human(&p, false));
    let json: serde_json::Value = serde_json::from_str(&render::json(&p)).unwrap();
    insta::assert_json_snapshot!("plan_pool_cost_json", json["cost"]);
}

#[test]
fn a_converged_pool_is_quiet_and_a_count_change_is_in_place() {
    let s = pool_spec(1);
    let o = converged_pool(&s);
    let p = plan(&s, &o, &options(Mode::Apply));
    assert!(!p.has_changes(), "{}", render::human(&p, false));
    let three = pool_spec(3);
    let p = plan(&three, &o, &options(Mode::Apply));
    assert_eq!(p.steps.len(), 1, "{}", render::human(&p, false));
    assert!(matches!(
        &p.steps[0].op,
        Op::UpsertWorkerPool { count_only: true, body, .. } if body.instance_count() == Some(3)
    ));
    insta::assert_snapshot!("plan_pool_resize", render::human(&p, false));
    let mut bigger = pool_spec(1);
    bigger.worker.as_mut().unwrap().memory = "1Gi".into();
    let p = plan(&bigger, &o, &options(Mode::Apply));
    assert!(matches!(
        &p.steps[0].op,
        Op::UpsertWorkerPool {
            count_only: false,
            ..
        }
    ));
}

#[test]
fn moving_from_the_service_waits_for_the_pool_then_deletes_the_service() {
    let service_spec = spec();
    let mut o = converged(&service_spec);
    let s = pool_spec(1);
    o.worker_pool = None;
    let p = plan(&s, &o, &options(Mode::Apply));
    assert_eq!(p.steps.len(), 2, "{}", render::human(&p, false));
    assert!(matches!(
        &p.steps[0].op,
        Op::UpsertWorkerPool {
            wait_online: true,
            ..
        }
    ));
    assert!(matches!(&p.steps[1].op, Op::DeleteService { .. }));
    assert_eq!(p.steps[1].depends_on, vec![p.steps[0].address.clone()]);
    insta::assert_snapshot!("plan_pool_migration", render::human(&p, false));
    // A pool at 0 instances has no worker to wait for.
    let p = plan(&pool_spec(0), &o, &options(Mode::Apply));
    assert!(matches!(
        &p.steps[0].op,
        Op::UpsertWorkerPool {
            wait_online: false,
            ..
        }
    ));
    // A service made by hand is kept, not deleted.
    o.service.as_mut().unwrap()["labels"] = json!({});
    let p = plan(&s, &o, &options(Mode::Apply));
    assert!(
        !p.steps
            .iter()
            .any(|st| matches!(st.op, Op::DeleteService { .. }))
    );
    assert!(p.adopted.iter().any(|a| a.0.starts_with("gcp.run_service")));
}

#[test]
fn destroy_deletes_the_pool_before_the_secret() {
    let s = pool_spec(1);
    let p = plan(&s, &converged_pool(&s), &options(Mode::Destroy));
    let pos = |prefix: &str| {
        p.steps
            .iter()
            .position(|st| st.address.0.starts_with(prefix))
    };
    let pool = pos("gcp.run_worker_pool").expect("pool deleted");
    assert!(pool < pos("gcp.secret[").expect("secret deleted"));
    assert!(p.cost.is_none());
}

#[test]
fn the_guides_service_costs_about_49_dollars_a_month() {
    let s = spec();
    let p = plan(&s, &converged(&s), &options(Mode::Apply));
    let cost = p.cost.as_ref().unwrap();
    assert_eq!((&*cost.kind, cost.monthly_usd), ("service", 49.93));
}

// ---- scale to zero (`worker.scale_to_zero`) ----

#[test]
fn a_scale_to_zero_pool_starts_at_zero_and_its_live_count_is_not_drift() {
    let mut s = pool_spec(1);
    {
        let w = s.worker.as_mut().unwrap();
        w.runtime = WorkerRuntime::Embedded;
        w.scale_to_zero = Some(ScaleToZero {
            idle: std::time::Duration::from_secs(30),
        });
    }
    let body = service::to_json(&worker_pool::desired(
        &s,
        s.worker.as_ref().unwrap(),
        &options(Mode::Apply),
    ));
    assert_eq!(body["scaling"]["manualInstanceCount"], 0);
    let env = body["template"]["containers"][0]["env"].as_array().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        value("BOOTSTRAP_SCALE_TO_ZERO_POOL"),
        Some(json!(format!(
            "projects/{}/locations/{}/workerPools/prefect-worker",
            s.gcp.project, s.gcp.region
        )))
    );
    assert_eq!(value("BOOTSTRAP_SCALE_TO_ZERO_IDLE"), Some(json!("30")));
    // Woken by the waker (count 1): plan stays quiet, and a template change keeps the count.
    let mut o = converged_pool(&s);
    o.worker_pool.as_mut().unwrap()["scaling"]["manualInstanceCount"] = json!(1);
    // (The wake path is not observed here: its steps are `wake_tests`'.)
    let pool_step = |p: &crate::plan::Plan| {
        p.steps
            .iter()
            .find(|st| st.address == addr::worker_pool("prefect-worker"))
            .map(|st| st.op.clone())
    };
    let p = plan(&s, &o, &options(Mode::Apply));
    assert_eq!(pool_step(&p), None, "{}", render::human(&p, false));
    let mut bigger = s.clone();
    bigger.worker.as_mut().unwrap().memory = "1Gi".into();
    let p = plan(&bigger, &o, &options(Mode::Apply));
    assert!(matches!(
        pool_step(&p),
        Some(Op::UpsertWorkerPool { body, .. }) if body.instance_count() == Some(1)
    ));
}

#[test]
fn destroy_deletes_the_workers_jobs_as_one_counted_step() {
    let s = spec();
    let mut o = converged(&s);
    o.worker_jobs = vec![observed::WorkerJobs {
        region: Region::parse("us-central1").unwrap(),
        api: crate::plan::JobsApi::V1,
        names: (1..=5)
            .map(|i| RunJobName::parse(format!("run-{i}")).unwrap())
            .collect(),
    }];
    let p = plan(&s, &o, &options(Mode::Destroy));
    let step = p
        .steps
        .iter()
        .find(|st| st.address.to_string().starts_with("gcp.worker_jobs"))
        .expect("a worker-jobs step");
    match &step.op {
        crate::plan::Op::DeleteWorkerJobs {
            label, api, jobs, ..
        } => {
            assert_eq!(label, "prefect-io-work-pool-name=my-cloud-run-pool");
            assert_eq!(*api, crate::plan::JobsApi::V1);
            assert_eq!(jobs.len(), 5);
        }
        other => panic!("unexpected {other:?}"),
    }
    // After the worker service (it would make new jobs) and the pool.
    assert!(
        step.depends_on
            .iter()
            .any(|a| a.to_string().contains("run_service"))
    );
    assert!(
        step.depends_on
            .iter()
            .any(|a| a.to_string().contains("work_pool"))
    );
    let line = render::human(&p, false)
        .lines()
        .find(|l| l.contains("gcp.worker_jobs"))
        .map(str::to_string)
        .expect("one line");
    insta::assert_snapshot!("plan_destroy_worker_jobs", line);
    // Apply mode never deletes them, and a world without them plans nothing for them.
    assert!(
        !plan(&s, &o, &options(Mode::Apply))
            .steps
            .iter()
            .any(|st| st.address.to_string().starts_with("gcp.worker_jobs"))
    );
    let none = plan(&s, &converged(&s), &options(Mode::Destroy));
    assert!(
        !none
            .steps
            .iter()
            .any(|st| st.address.to_string().starts_with("gcp.worker_jobs"))
    );
}

/// `spec()` with its deployment built from a folder instead of a named image.
fn built_spec() -> Spec {
    let mut s = spec();
    let d = &mut s.deployments[0];
    d.image = None;
    d.build = Some(build::Build {
        context: "/work/flows".into(),
        context_shown: ".".into(),
        dockerfile: build::DockerfileSpec::Auto,
        repository: "prefect".into(),
        image_name: "us-central1-docker.pkg.dev/prefect-project/prefect/gcp-weather-deploy".into(),
        workdir: "/opt/prefect/flows".into(),
        notes: Vec::new(),
    });
    s
}

/// Cloud Build's default account in the built spec's project.
const BUILD_ACCOUNT: &str = "123456789-compute@developer.gserviceaccount.com";

fn built_image(s: &Spec, present: bool, previous_tag: Option<&str>) -> observed::BuiltImage {
    let d = &s.deployments[0];
    observed::BuiltImage {
        build: d.build.clone().unwrap(),
        deployments: vec![prefect::deployment_key(d)],
        digest: "ab".repeat(32),
        tag: "src-abababababababab".into(),
        files: 3,
        present,
        previous_tag: previous_tag.map(str::to_owned),
        build_account: BUILD_ACCOUNT.into(),
    }
}

/// `converged` for the built spec, the repository and grant in place and the image built.
fn converged_built(s: &Spec) -> Observed {
    let mut o = converged(s);
    for a in crate::builds::BUILD_APIS {
        o.apis.insert((*a).into(), true);
    }
    let img = built_image(s, true, Some("src-abababababababab"));
    for d in o.deployments.values_mut() {
        d.fields["job_variables"]["image"] = json!(img.image_ref());
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

#[test]
fn a_first_build_makes_the_repository_grants_read_and_builds_before_the_deployment() {
    let s = built_spec();
    let mut o = converged(&s);
    o.images = vec![built_image(&s, false, None)];
    o.repositories.insert("prefect".into(), None);
    let p = plan(&s, &o, &options(Mode::Apply));
    let addrs: Vec<String> = p.steps.iter().map(|s| s.address.to_string()).collect();
    let pos = |a: &str| addrs.iter().position(|x| x.starts_with(a)).unwrap();
    assert!(pos("gcp.apis") < pos("gcp.artifact_repository["));
    assert!(pos("gcp.artifact_repository[") < pos("gcp.image["));
    assert!(pos("gcp.image[") < pos("prefect.deployment["));
    let dep = p
        .steps
        .iter()
        .find(|s| s.address.0.starts_with("prefect.deployment"))
        .unwrap();
    assert!(
        dep.depends_on.iter().any(|a| a.0.starts_with("gcp.image[")),
        "{:?}",
        dep.depends_on
    );
    let iam = p
        .steps
        .iter()
        .find(|s| s.address.0.starts_with("gcp.artifact_repository_iam"))
        .unwrap();
    // The job's account reads, the build's account pushes: each on the repository only.
    assert!(matches!(&iam.op, Op::EditRepositoryPolicy { add, .. }
    if add == &[
        ("roles/artifactregistry.reader".to_string(), s.service_account.email.member()),
        ("roles/artifactregistry.writer".to_string(), format!("serviceAccount:{BUILD_ACCOUNT}")),
    ]));
    let build = p
        .steps
        .iter()
        .find(|s| s.address.0.starts_with("gcp.image["))
        .unwrap();
    assert!(
        build
            .depends_on
            .iter()
            .any(|a| a.0.starts_with("gcp.artifact_repository_iam")),
        "the build pushes only after the grant: {:?}",
        build.depends_on
    );
    let Some(Op::BuildImage { image, .. }) = p
        .steps
        .iter()
        .map(|s| &s.op)
        .find(|o| matches!(o, Op::BuildImage { .. }))
    else {
        panic!("no build step")
    };
    assert_eq!(
        image,
        "us-central1-docker.pkg.dev/prefect-project/prefect/gcp-weather-deploy:src-abababababababab"
    );
    insta::assert_snapshot!("plan_build_first", render::human(&p, false));
}

#[test]
fn an_unchanged_source_is_a_quiet_plan() {
    let s = built_spec();
    let p = plan(&s, &converged_built(&s), &options(Mode::Apply));
    assert!(!p.has_changes(), "{}", render::human(&p, false));
}

#[test]
fn a_changed_source_rebuilds_and_moves_the_deployment() {
    let s = built_spec();
    let mut o = converged_built(&s);
    // The live deployment runs the previous build; the new source's tag is not there.
    let old = "us-central1-docker.pkg.dev/prefect-project/prefect/gcp-weather-deploy:src-0000000000000000";
    for d in o.deployments.values_mut() {
        d.fields["job_variables"]["image"] = json!(old);
    }
    o.images = vec![built_image(&s, false, Some("src-0000000000000000"))];
    let p = plan(&s, &o, &options(Mode::Apply));
    let addrs: Vec<String> = p.steps.iter().map(|s| s.address.to_string()).collect();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert_eq!(p.steps[0].action, Action::Update);
    assert!(
        p.steps[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("source changed (3 files")
    );
    insta::assert_snapshot!("plan_build_changed", render::human(&p, false));
}

#[test]
fn destroy_deletes_a_made_repository_and_keeps_an_adopted_one() {
    let s = built_spec();
    let o = converged_built(&s);
    let p = plan(&s, &o, &options(Mode::Destroy));
    let del = p
        .steps
        .iter()
        .find(|s| s.address.0 == "gcp.artifact_repository[\"prefect\"]")
        .unwrap();
    assert!(matches!(del.op, Op::DeleteRepository { .. }));

    let mut adopted = o.clone();
    adopted
        .repositories
        .get_mut("prefect")
        .unwrap()
        .as_mut()
        .unwrap()
        .labels
        .clear();
    let p = plan(&s, &adopted, &options(Mode::Destroy));
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s.op, Op::DeleteRepository { .. }))
    );
    assert!(
        p.adopted
            .iter()
            .any(|a| a.0 == "gcp.artifact_repository[\"prefect\"]")
    );
    let iam = p
        .steps
        .iter()
        .find(|s| s.address.0.starts_with("gcp.artifact_repository_iam"))
        .unwrap();
    assert!(
        matches!(&iam.op, Op::EditRepositoryPolicy { remove, add, .. } if add.is_empty() && remove.len() == 2)
    );
}

#[path = "wake_tests.rs"]
mod wake_tests;

/// Every kind of plan reads back from its `--json` text as the same value (what `apply
/// SAVED_PLAN` relies on), and the plan made again against the same world shows no difference.
#[test]
fn plans_round_trip_through_json() {
    use crate::plan::{differences, read_saved};
    let s = spec();
    let mut orphan = converged(&s);
    orphan.keys = vec![observed::Key {
        name: "n/keys/k9".into(),
        key_id: "k9".into(),
        disabled: false,
    }];
    let pool = pool_spec(2);
    let mut moving = converged(&pool);
    moving.worker_pool = None;
    let cases = [
        plan(&s, &empty(), &options(Mode::Apply)),
        plan(&s, &orphan, &options(Mode::Apply)),
        plan(&s, &converged(&s), &options(Mode::Destroy)),
        plan(&pool, &empty(), &options(Mode::Apply)),
        plan(&pool, &moving, &options(Mode::Apply)),
    ];
    for p in cases {
        let text = render::json(&p);
        let back = read_saved(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, p, "{text}");
        assert_eq!(render::json(&back), text);
        assert!(differences(&back, &p).is_empty());
    }
}

/// A saved plan made against another world is stale: each difference is named.
#[test]
fn a_plan_made_against_another_world_differs() {
    use crate::plan::{differences, read_saved};
    let s = spec();
    let saved = read_saved(&render::json(&plan(&s, &empty(), &options(Mode::Apply)))).unwrap();
    // Meanwhile someone applied it: nothing is left to do.
    let now = plan(&s, &converged(&s), &options(Mode::Apply));
    let d = differences(&saved, &now);
    assert!(
        d.iter()
            .any(|l| l.contains("gcp.service_account[") && l.contains("no longer needed")),
        "{d:#?}"
    );
    // Only the key is gone: the key and block steps differ, nothing else.
    let mut o = converged(&s);
    let saved = plan(&s, &o, &options(Mode::Apply));
    assert!(differences(&saved, &saved.clone()).is_empty());
    o.keys.clear();
    let now = plan(&s, &o, &options(Mode::Apply));
    assert!(!differences(&saved, &now).is_empty());
    // A saved plan of another format is refused with the reason.
    let e = read_saved(r#"{"format_version": 9}"#).unwrap_err();
    assert!(e.contains("format_version 9"), "{e}");
    assert!(read_saved("not json").unwrap_err().contains("not JSON"));
}

/// The planner chooses create, update or replace of the work pool; the op says which, so
/// apply does not read the pool again to choose.
#[test]
fn the_work_pool_op_is_create_update_or_replace() {
    let s = spec();
    let pool_op = |o: &Observed| {
        plan(&s, o, &options(Mode::Apply))
            .steps
            .into_iter()
            .find(|s| s.address.to_string().starts_with("prefect.work_pool"))
            .map(|s| (s.action, s.op))
    };
    let mut o = empty();
    o.block = converged(&s).block;
    assert!(matches!(
        pool_op(&o),
        Some((Action::Create, Op::CreateWorkPool { pool, credentials: Some(Deferred::Known { .. }) }))
            if pool.pool_type == "cloud-run" && pool.base_job_template.is_some()
    ));
    // No block yet: its id is deferred to the block step.
    assert!(matches!(
        pool_op(&empty()),
        Some((
            _,
            Op::CreateWorkPool {
                credentials: Some(Deferred::Step { .. }),
                ..
            }
        ))
    ));
    let mut o = converged(&s);
    o.work_pool.as_mut().unwrap().description = Some("old".into());
    let mut s2 = s.clone();
    s2.work_pool.description = Some("new".into());
    let p = plan(&s2, &o, &options(Mode::Apply));
    let step = p
        .steps
        .iter()
        .find(|s| s.address.to_string().starts_with("prefect.work_pool"));
    assert!(matches!(
        step.map(|s| (s.action, &s.op)),
        Some((Action::Update, Op::UpdateWorkPool { update, .. })) if update.description.as_deref() == Some("new")
    ));
    let mut o = converged(&s);
    o.work_pool.as_mut().unwrap().pool_type = "cloud-run-v2".into();
    assert!(matches!(
        pool_op(&o),
        Some((Action::Replace, Op::ReplaceWorkPool { pool, .. })) if pool.pool_type == "cloud-run"
    ));
}

#[path = "worker_image_tests.rs"]
mod worker_image_tests;

// ---- typed Cloud Run bodies ----

/// A live service with fields the plan does not own (a VPC connector, a volume mount, custom
/// audiences), drifted so that the plan updates it.
fn drifted_service_world(s: &Spec) -> Observed {
    let mut o = converged(s);
    let live = o.service.as_mut().unwrap();
    live["customAudiences"] = json!(["https://example.test"]);
    live["template"]["vpcAccess"] = json!({"connector": "projects/p/locations/r/connectors/c"});
    live["template"]["containers"][0]["volumeMounts"] = json!([{"name": "v", "mountPath": "/v"}]);
    live["template"]["scaling"]["minInstanceCount"] = json!(3);
    o
}

/// The op bodies are the typed Cloud Run models, and a plan holding them reads back from its
/// JSON as the same value; fields the plan does not own stay in them (the models' `extra`).
#[test]
fn typed_cloud_run_bodies_round_trip_through_json() {
    use crate::plan::read_saved;
    let s = spec();
    let update = plan(&s, &drifted_service_world(&s), &options(Mode::Apply));
    let Op::UpsertService { body, .. } = &update.steps[0].op else {
        panic!(
            "expected a service update: {}",
            render::human(&update, false)
        )
    };
    let template = body.template.as_ref().unwrap();
    assert_eq!(
        body.extra["customAudiences"],
        json!(["https://example.test"])
    );
    assert!(template.extra.contains_key("vpcAccess"), "{body:?}");
    assert!(
        template.containers[0].extra.contains_key("volumeMounts"),
        "{body:?}"
    );
    assert_eq!(
        template.scaling.as_ref().unwrap().min_instance_count,
        Some(1)
    );
    // Output-only fields are not sent back.
    assert_eq!((&body.uid, &body.terminal_condition), (&None, &None));

    let mut pool_world = converged_pool(&pool_spec(2));
    pool_world.worker_pool.as_mut().unwrap()["template"]["vpcAccess"] =
        json!({"networkInterfaces": [{"network": "default"}]});
    let cases = [
        update,
        plan(&s, &empty(), &options(Mode::Apply)),
        plan(&pool_spec(3), &pool_world, &options(Mode::Apply)),
        plan(&pool_spec(1), &empty(), &options(Mode::Apply)),
    ];
    for p in cases {
        assert!(
            p.steps.iter().any(|st| matches!(
                st.op,
                Op::UpsertService { .. } | Op::UpsertWorkerPool { .. }
            )),
            "{}",
            render::human(&p, false)
        );
        let text = render::json(&p);
        let back = read_saved(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, p, "{text}");
    }
}

/// A loopback stand-in for Cloud Run that answers every call with a finished operation and
/// hands back each request's line and JSON body.
async fn capturing_endpoint() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = serde_json::from_slice(&buf[head_end..]).unwrap_or(json!(null));
                let line = head.lines().next().unwrap_or_default().to_owned();
                let _ = tx.send((line, body));
                let answer =
                    r#"{"name":"projects/p/locations/r/operations/1","done":true,"response":{}}"#;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            });
        }
    });
    (base, rx)
}

/// What exec sends for an `UpsertService` or `UpsertWorkerPool` step is the body the planner
/// built (with the resource's full name, which the PATCH states), field for field: exec does
/// not rebuild it.
#[tokio::test]
async fn the_cloud_run_bodies_exec_sends_are_the_ones_the_planner_built() {
    use std::sync::Arc;
    let (base, mut rx) = capturing_endpoint().await;
    let gcp = bootstrap_gcp::GcpHttp::new(
        bootstrap_gcp::Endpoints::with_base(&base).unwrap(),
        Arc::new(bootstrap_gcp::auth::StaticTokenSource::new(
            "token".to_owned().into(),
            None,
        )),
        bootstrap_gcp::RetryPolicy::default(),
    )
    .unwrap();
    let prefect = bootstrap_prefect::PrefectClient::new(
        bootstrap_prefect::PrefectConfig::resolve_with(
            bootstrap_prefect::ConfigOverrides {
                api_url: Some(format!("{base}/api")),
                ..Default::default()
            },
            &|_| None,
        )
        .unwrap(),
    )
    .unwrap();
    let ctx = crate::context::Context { gcp, prefect };
    let outputs = tokio::sync::Mutex::new(crate::apply::Outputs::default());

    let s = spec();
    let service_plan = plan(&s, &drifted_service_world(&s), &options(Mode::Apply));
    let mut pool_world = converged_pool(&pool_spec(2));
    pool_world.worker_pool.as_mut().unwrap()["template"]["vpcAccess"] =
        json!({"networkInterfaces": [{"network": "default"}]});
    let pool_plan = plan(&pool_spec(3), &pool_world, &options(Mode::Apply));
    for p in [&service_plan, &pool_plan] {
        let step = p
            .steps
            .iter()
            .find(|st| {
                matches!(
                    st.op,
                    Op::UpsertService { .. } | Op::UpsertWorkerPool { .. }
                )
            })
            .expect("a Cloud Run step");
        let (want, full_name) = match &step.op {
            Op::UpsertService { name, body } => (
                service::to_json(body),
                format!("projects/prefect-project/locations/us-central1/services/{name}"),
            ),
            Op::UpsertWorkerPool { name, body, .. } => (
                service::to_json(body),
                format!("projects/prefect-project/locations/us-central1/workerPools/{name}"),
            ),
            _ => unreachable!(),
        };
        assert!(
            crate::exec::run(&ctx, p, step, &outputs).await.unwrap(),
            "{}",
            step.address
        );
        let (line, sent) = rx.recv().await.expect("a request");
        assert!(line.starts_with("PATCH "), "{line}");
        let mut want = want;
        want["name"] = json!(full_name);
        assert_eq!(sent, want, "{line}");
        assert!(sent["template"].get("vpcAccess").is_some(), "{sent}");
    }
}
