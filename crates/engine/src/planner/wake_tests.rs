//! Planner tests of the wake path (`worker.scale_to_zero`): pure, no I/O.

use serde_json::json;

use super::*;
use crate::plan::{Deferred, Op};
use crate::wake::{self, AutomationKind};

const BLOCK_ID: &str = "6f1c2a3e-0000-4000-8000-000000000001";

fn stz_spec() -> Spec {
    let mut s = pool_spec(1);
    let w = s.worker.as_mut().unwrap();
    w.runtime = WorkerRuntime::Embedded;
    w.image =
        ImageRef::parse("us-central1-docker.pkg.dev/prefect-project/prefect/bootstrap:1").unwrap();
    w.scale_to_zero = Some(ScaleToZero {
        idle: std::time::Duration::from_secs(600),
    });
    s
}

/// The world right after an apply of `stz_spec()`: pool at 0, wake path in place.
fn converged_stz(s: &Spec) -> Observed {
    let mut o = converged_pool(s);
    let n = wake::names(s).unwrap();
    let member = n.member();
    o.secret.as_mut().unwrap().accessors.insert(member.clone());
    o.sa_bindings
        .entry("roles/iam.serviceAccountUser".into())
        .or_default()
        .insert(member.clone());
    let mut service = service::to_json(&super::wake::desired_service(s, &n, &options(Mode::Apply)));
    service["uid"] = json!("u-3");
    service["uri"] = json!("https://w-abc-uc.a.run.app");
    service["terminalCondition"] = json!({"type": "Ready", "state": "CONDITION_SUCCEEDED"});
    let block = uuid::Uuid::parse_str(BLOCK_ID).unwrap();
    let automation = |kind| {
        let spec = wake::automation_spec(&n, kind, block);
        let mut trigger = spec.trigger.clone();
        // Server-filled keys and float seconds must not show as drift.
        trigger["id"] = json!("t-1");
        if kind == AutomationKind::Sweep {
            trigger["within"] = json!(60.0);
        }
        bootstrap_prefect::Automation {
            id: uuid::Uuid::new_v4(),
            name: spec.name.clone(),
            description: spec.description.clone(),
            enabled: true,
            tags: vec![],
            trigger,
            actions: spec.actions.clone(),
            actions_on_trigger: vec![],
            actions_on_resolve: vec![],
        }
    };
    o.wake = Some(wake::Observed {
        account: true,
        account_description: "Wakes ... (managed by bootstrap)".into(),
        pool_role_members: [member.clone()].into(),
        secret: Some(wake::Secret {
            labels: [("managed-by".to_string(), "bootstrap".to_string())].into(),
            has_version: true,
            accessors: [member].into(),
        }),
        service: Some(service),
        block: Some(wake::Block {
            id: uuid::Uuid::parse_str(BLOCK_ID).unwrap().into(),
            url: Some("https://w-abc-uc.a.run.app/wake".into()),
            secret_matches: true,
        }),
        automations: [
            (n.wake.clone(), vec![automation(AutomationKind::Wake)]),
            (n.sweep.clone(), vec![automation(AutomationKind::Sweep)]),
        ]
        .into(),
    });
    o
}

fn position(p: &crate::plan::Plan, address: &str) -> usize {
    p.steps
        .iter()
        .position(|s| s.address.0 == address)
        .unwrap_or_else(|| panic!("no step {address}: {}", render::human(p, false)))
}

#[test]
fn names_fit_googles_limits() {
    let mut s = stz_spec();
    s.worker.as_mut().unwrap().service =
        RunServiceName::parse("a-very-long-worker-pool-name-that-goes-on-and-onx").unwrap();
    // The names are typed: `names` checks each one as it makes it, so making them for the
    // longest and shortest pool names and an odd work pool name is the test.
    let n = wake::names(&s).unwrap();
    assert_eq!(n.account_id, "a-very-long-worker-pool-waker");
    assert_eq!(
        n.service,
        "a-very-long-worker-pool-name-that-goes-on-a-waker"
    );
    s.worker.as_mut().unwrap().service = RunServiceName::parse("a").unwrap();
    s.work_pool.name = PrefectName::parse(format!("My Pool_ü.{}", "x".repeat(90))).unwrap();
    let n = wake::names(&s).unwrap();
    assert_eq!(n.account_id, "a-waker");
    assert_eq!(n.secret, "a-waker-secret");
    assert!(n.block.as_str().starts_with("my-pool---"), "{}", n.block);
    assert!(n.block.as_str().len() <= 86, "{}", n.block);
    // Without scale_to_zero there is no wake path.
    assert!(wake::names(&pool_spec(1)).is_none());
}

#[test]
fn a_first_scale_to_zero_apply_makes_the_wake_path_in_order() {
    let s = stz_spec();
    let mut o = empty();
    o.wake = Some(wake::Observed::default());
    let p = plan(&s, &o, &options(Mode::Apply));
    insta::assert_snapshot!("plan_stz_create", render::human(&p, false));
    let pool = position(&p, "gcp.run_worker_pool[\"prefect-worker\"]");
    let pool_iam = position(&p, "gcp.run_worker_pool_iam[\"prefect-worker\"]");
    let secret = position(&p, "gcp.secret[\"prefect-worker-waker-secret\"]");
    let service = position(&p, "gcp.run_service[\"prefect-worker-waker\"]");
    let block = position(&p, "prefect.block[\"my-cloud-run-pool-waker\"]");
    let wake_a = position(&p, "prefect.automation[\"my-cloud-run-pool-wake\"]");
    let sweep_a = position(&p, "prefect.automation[\"my-cloud-run-pool-sweep\"]");
    assert!(pool < pool_iam && pool_iam < service && secret < service);
    assert!(service < block && block < wake_a && block < sweep_a);
    // The pool starts at 0; the waker runs as its own account with only its grants.
    assert!(matches!(
        &p.steps[pool].op,
        Op::UpsertWorkerPool { body, .. } if body.instance_count() == Some(0)
    ));
    let Op::UpsertService { body, .. } = &p.steps[service].op else {
        panic!("service op")
    };
    let body = service::to_json(body);
    assert_eq!(
        body["template"]["serviceAccount"],
        "prefect-worker-waker@prefect-project.iam.gserviceaccount.com"
    );
    assert_eq!(body["template"]["scaling"]["minInstanceCount"], 0);
    assert_eq!(
        body["template"]["containers"][0]["resources"]["cpuIdle"],
        true
    );
    assert_eq!(
        body["template"]["containers"][0]["env"][2]["valueSource"]["secretKeyRef"]["secret"],
        "prefect-worker-waker-secret"
    );
    assert!(matches!(
        &p.steps[pool_iam].op,
        Op::EditWorkerPoolPolicy { pool, add, .. }
            if pool == "prefect-worker"
            && add == &vec![("roles/run.developer".to_string(),
                "serviceAccount:prefect-worker-waker@prefect-project.iam.gserviceaccount.com".to_string())]
    ));
    assert!(matches!(
        &p.steps[wake_a].op,
        Op::UpsertAutomation { kind: AutomationKind::Wake, block: Deferred::Step { address }, .. }
            if address.0 == "prefect.block[\"my-cloud-run-pool-waker\"]"
    ));
    // `--json` carries the scale-to-zero cost: the waker's floor plus the price of an hour awake.
    let value = serde_json::to_value(&p).unwrap();
    insta::assert_json_snapshot!("plan_stz_cost_json", value["cost"]);
    // The secret's value is never part of the plan.
    let json = serde_json::to_string(&p).unwrap();
    assert!(!json.contains("Bearer"), "{json}");
}

#[test]
fn a_converged_wake_path_is_quiet_whatever_the_live_count() {
    let s = stz_spec();
    let mut o = converged_stz(&s);
    let p = plan(&s, &o, &options(Mode::Apply));
    assert!(!p.has_changes(), "{}", render::human(&p, false));
    // Woken by the waker: still quiet.
    o.worker_pool.as_mut().unwrap()["scaling"]["manualInstanceCount"] = json!(1);
    let p = plan(&s, &o, &options(Mode::Apply));
    assert!(!p.has_changes(), "{}", render::human(&p, false));
}

#[test]
fn a_block_without_the_latest_secret_gets_a_new_secret_and_nothing_else_changes() {
    let s = stz_spec();
    let mut o = converged_stz(&s);
    o.wake
        .as_mut()
        .unwrap()
        .block
        .as_mut()
        .unwrap()
        .secret_matches = false;
    let p = plan(&s, &o, &options(Mode::Apply));
    insta::assert_snapshot!("plan_stz_rotate", render::human(&p, false));
    let addresses: Vec<&str> = p.steps.iter().map(|s| s.address.0.as_str()).collect();
    assert_eq!(
        addresses,
        [
            "gcp.secret[\"prefect-worker-waker-secret\"]",
            "prefect.block[\"my-cloud-run-pool-waker\"]"
        ]
    );
    assert!(matches!(
        &p.steps[1].op,
        Op::UpsertWakerBlock { existing_id: Some(id), secret_from, .. }
            if id.to_string() == BLOCK_ID && secret_from.0 == "gcp.secret[\"prefect-worker-waker-secret\"]"
    ));
}

#[test]
fn an_edited_automation_is_put_back() {
    let s = stz_spec();
    let mut o = converged_stz(&s);
    let n = wake::names(&s).unwrap();
    let a = &mut o
        .wake
        .as_mut()
        .unwrap()
        .automations
        .get_mut(&n.wake)
        .unwrap()[0];
    a.enabled = false;
    a.trigger["expect"] = json!(["prefect.flow-run.Scheduled"]);
    let p = plan(&s, &o, &options(Mode::Apply));
    insta::assert_snapshot!("plan_stz_automation_drift", render::human(&p, false));
    assert_eq!(p.steps.len(), 1);
    assert!(matches!(
        &p.steps[0].op,
        Op::UpsertAutomation { existing_id: Some(_), block: Deferred::Known { value }, .. }
            if value.to_string() == BLOCK_ID
    ));
}

/// Regression (issue #19): a sweep applied by the first design (silenced for up to three
/// windows by any run going Pending, see `bootstrap_prefect::wake::sweep_automation`) is put
/// back as the timer by the next apply, in place.
#[test]
fn a_sweep_of_the_pending_design_is_updated_to_the_timer() {
    let s = stz_spec();
    let mut o = converged_stz(&s);
    let n = wake::names(&s).unwrap();
    let a = &mut o
        .wake
        .as_mut()
        .unwrap()
        .automations
        .get_mut(&n.sweep)
        .unwrap()[0];
    a.trigger["expect"] = json!(["prefect.flow-run.Pending"]);
    a.description = "Sweep: calls the waker of work pool `my-cloud-run-pool` every 60 s while no \
                     run goes Pending (made by bootstrap)"
        .into();
    let p = plan(&s, &o, &options(Mode::Apply));
    insta::assert_snapshot!("plan_stz_sweep_upgrade", render::human(&p, false));
    assert_eq!(p.steps.len(), 1);
    assert!(matches!(
        &p.steps[0].op,
        Op::UpsertAutomation {
            existing_id: Some(_),
            ..
        }
    ));
    assert_eq!(
        p.steps[0].address.0,
        format!("prefect.automation[\"{}\"]", n.sweep)
    );
}

#[test]
fn destroy_removes_the_wake_path_before_the_pool() {
    let s = stz_spec();
    let o = converged_stz(&s);
    let p = plan(&s, &o, &options(Mode::Destroy));
    insta::assert_snapshot!("plan_stz_destroy", render::human(&p, false));
    let automation = position(&p, "prefect.automation[\"my-cloud-run-pool-wake\"]");
    let block = position(&p, "prefect.block[\"my-cloud-run-pool-waker\"]");
    let service = position(&p, "gcp.run_service[\"prefect-worker-waker\"]");
    let secret = position(&p, "gcp.secret[\"prefect-worker-waker-secret\"]");
    let account = p
        .steps
        .iter()
        .position(|st| {
            matches!(&st.op, Op::DeleteServiceAccount { email } if email.as_str().starts_with("prefect-worker-waker@"))
        })
        .expect("the waker's account is deleted");
    assert!(automation < block && block < service && service < secret && secret < account);
}

/// Regression: a `scale_to_zero` plan without a Prefect API key (a local server) did not enable
/// Secret Manager, and the waker's secret failed with SERVICE_DISABLED on a fresh project.
#[test]
fn the_wakers_secret_needs_secret_manager_even_without_an_api_key() {
    // Plans that name no API of their own.
    let mut s = stz_spec();
    s.gcp.apis.clear();
    let mut plain = pool_spec(1);
    plain.gcp.apis.clear();
    assert!(gcp::required_apis(&s, false).contains(&"secretmanager.googleapis.com".to_string()));
    assert!(
        !gcp::required_apis(&plain, false).contains(&"secretmanager.googleapis.com".to_string())
    );
}

/// The wake path's ops (automation kinds, deferred block ids) read back from `--json` too.
#[test]
fn a_wake_plan_round_trips_through_json() {
    let s = stz_spec();
    let mut o = empty();
    o.wake = Some(wake::Observed::default());
    for p in [
        plan(&s, &o, &options(Mode::Apply)),
        plan(&s, &converged_stz(&s), &options(Mode::Destroy)),
    ] {
        let text = render::json(&p);
        assert_eq!(crate::plan::read_saved(&text).unwrap(), p, "{text}");
    }
}
