//! The wake path of `worker.scale_to_zero` as plan resources (README, "Scale to zero"): the
//! waker's account and its grants (on the one worker pool, on its secret and on the API-key
//! secret), the shared secret, the waker service, the Webhook block and the two automations.
//! Observed by `crate::wake::observe`, carried out by `crate::wake` and `exec`.
//!
//! The shared secret is never read back into a plan: a new one is made whenever the block does
//! not hold the secret's latest version, or either is missing, and the block is then written
//! with it in the same apply (`PutWakerSecret` -> `UpsertWakerBlock`).

use bootstrap_gcp::run_v2;
use bootstrap_spec::Spec;
use bootstrap_spec::ids::BlockId;
use serde_json::{Value, json};

use super::super::observed::{MARKER_LABEL, MARKER_TEXT};
use super::super::plan::{Action, Address, Deferred, FieldChange, Op, Step};
use super::super::wake::{self, AutomationKind, Names, POOL_ROLE, WAKER_PORT};
use super::{Builder, Options, addr, service};

/// Service Account User: `iam.serviceAccounts.actAs` on one account.
const SA_USER: &str = "roles/iam.serviceAccountUser";

/// Addresses of the wake path's resources.
pub mod address {
    use super::super::super::plan::Address;
    use super::Names;

    pub fn account(n: &Names) -> Address {
        Address::new("gcp.service_account", n.account_id.as_str())
    }
    pub fn secret(n: &Names) -> Address {
        Address::new("gcp.secret", n.secret.as_str())
    }
    pub fn secret_iam(n: &Names) -> Address {
        Address::new("gcp.secret_iam", n.secret.as_str())
    }
    /// The waker's access to the API-key secret (the worker's grant has `secret_iam[<id>]`).
    pub fn api_key_iam(n: &Names, api_key_secret: &str) -> Address {
        Address::new(
            "gcp.secret_iam",
            &format!("{api_key_secret}/{}", n.account_id),
        )
    }
    /// The waker's `actAs` on the worker's runtime account (that account's own policy).
    pub fn act_as(n: &Names, runtime_account: &str) -> Address {
        Address::new(
            "gcp.service_account_iam",
            &format!("{runtime_account}/{}", n.account_id),
        )
    }
    pub fn pool_iam(n: &Names) -> Address {
        Address::new("gcp.run_worker_pool_iam", n.pool.as_str())
    }
    pub fn service(n: &Names) -> Address {
        Address::new("gcp.run_service", n.service.as_str())
    }
    pub fn block(n: &Names) -> Address {
        Address::new("prefect.block", n.block.as_str())
    }
    pub fn automation(name: &str) -> Address {
        Address::new("prefect.automation", name)
    }
}

/// The waker service body (Run v2 `Service`): `bootstrap waker` in the worker's image (the
/// embedded worker's, which `scale_to_zero` requires), request-billed (`cpuIdle`), 0 to 1
/// instances, under the waker's own account. Prefect's Webhook block cannot send a Google
/// identity token, so invocation is not IAM-checked (`invokerIamDisabled`); the shared secret
/// authenticates the call instead.
pub fn desired_service(spec: &Spec, n: &Names, options: &Options) -> run_v2::Service {
    let worker = spec.worker.as_ref().expect("names() implies a worker");
    let mut env = service::prefect_env(worker, options);
    env.push(service::env_secret(crate_secret_env(), n.secret.as_str()));
    let container = run_v2::Container {
        image: worker.image.to_string(),
        command: vec!["bootstrap".to_owned()],
        args: vec![
            "waker".to_owned(),
            "--work-pool".to_owned(),
            n.work_pool.to_string(),
            "--worker-pool".to_owned(),
            n.pool_full.clone(),
            "--instances".to_owned(),
            worker.instances.max(1).to_string(),
        ],
        env,
        ports: vec![run_v2::ContainerPort {
            name: None,
            container_port: Some(i32::from(WAKER_PORT)),
        }],
        resources: Some(run_v2::ResourceRequirements {
            limits: service::limits("1", "512Mi"),
            cpu_idle: Some(true),
            startup_cpu_boost: None,
        }),
        ..run_v2::Container::default()
    };
    run_v2::Service {
        labels: service::marker_labels(),
        ingress: Some("INGRESS_TRAFFIC_ALL".to_owned()),
        invoker_iam_disabled: Some(true),
        template: Some(run_v2::RevisionTemplate {
            service_account: Some(n.email.to_string()),
            scaling: Some(run_v2::RevisionScaling {
                min_instance_count: Some(0),
                max_instance_count: Some(1),
                ..run_v2::RevisionScaling::default()
            }),
            containers: vec![container],
            ..run_v2::RevisionTemplate::default()
        }),
        ..run_v2::Service::default()
    }
}

/// The env var `bootstrap waker` reads its secret from (`commands::waker::SECRET_ENV`).
fn crate_secret_env() -> &'static str {
    "BOOTSTRAP_WAKER_SECRET"
}

/// Plans the wake path (apply). After the worker pool (its IAM needs the pool).
pub(super) fn plan(b: &mut Builder) {
    let Some(n) = wake::names(b.spec) else { return };
    let empty = wake::Observed::default();
    let o = b.observed.wake.as_ref().unwrap_or(&empty);
    let spec = b.spec;
    let worker = spec.worker.as_ref().expect("names() implies a worker");
    let member = n.member();

    // The account.
    if o.account {
        b.unchanged(address::account(&n));
    } else {
        let depends_on = b.deps(&[addr::apis()]);
        b.push(Step {
            changes: vec![FieldChange::set(
                "email",
                None,
                Some(json!(n.email.as_str())),
            )],
            depends_on,
            ..Step::new(
                address::account(&n),
                Action::Create,
                Op::CreateServiceAccount {
                    account_id: n.account_id.clone(),
                    email: n.email.clone(),
                    display_name: "bootstrap waker".into(),
                    description: format!(
                        "Wakes Cloud Run worker pool {} for Prefect work pool {} ({MARKER_TEXT})",
                        n.pool, n.work_pool
                    ),
                },
            )
        });
    }
    let account = b.deps(&[address::account(&n)]);

    // The shared secret: a new one whenever the block does not hold the latest version.
    let service_created = o.service.is_none();
    let block_ok = o.block.as_ref().is_some_and(|bl| {
        bl.secret_matches
            && o.service
                .as_ref()
                .and_then(|s| s.get("uri"))
                .and_then(Value::as_str)
                .is_some_and(|uri| bl.url.as_deref() == Some(&format!("{uri}/wake")))
    });
    let secret_ok = o.secret.as_ref().is_some_and(|s| s.has_version);
    let rotate = !(block_ok && secret_ok) || service_created;
    if rotate {
        let why = match (&o.secret, &o.block) {
            (None, _) => None,
            (Some(s), _) if !s.has_version => Some("the secret has no version".to_string()),
            (_, None) => Some(format!("webhook block {} is missing", n.block)),
            (_, Some(bl)) if !bl.secret_matches => Some(format!(
                "webhook block {} does not hold the secret's latest version",
                n.block
            )),
            _ => Some("the waker's URL changed".to_string()),
        };
        let depends_on = b.deps(&[addr::apis()]);
        b.push(Step {
            changes: vec![FieldChange::sensitive("value")],
            reason: why.map(|w| format!("{w}: a new shared secret")),
            depends_on,
            ..Step::new(
                address::secret(&n),
                Action::upsert(o.secret.is_some()),
                Op::PutWakerSecret {
                    secret_id: n.secret.clone(),
                    create: o.secret.is_none(),
                    labels: [(MARKER_LABEL.0.to_string(), json!(MARKER_LABEL.1))]
                        .into_iter()
                        .collect(),
                },
            )
        });
    } else {
        b.unchanged(address::secret(&n));
    }

    // Grants: the waker reads its secret (and the API key), and updates its one pool.
    let grants = [
        (
            address::secret_iam(&n),
            n.secret.clone(),
            address::secret(&n),
        ),
        (
            address::api_key_iam(&n, worker.api_key_secret.as_str()),
            worker.api_key_secret.clone(),
            addr::secret(worker.api_key_secret.as_str()),
        ),
    ];
    for (i, (address, secret_id, secret_step)) in grants.into_iter().enumerate() {
        let holds = if i == 0 {
            o.secret
                .as_ref()
                .is_some_and(|s| s.accessors.contains(&member))
        } else {
            if !b.options.has_api_key {
                continue;
            }
            b.observed
                .secret
                .as_ref()
                .is_some_and(|s| s.accessors.contains(&member))
        };
        if holds {
            b.unchanged(address);
            continue;
        }
        let mut deps = account.clone();
        deps.extend(b.deps(&[secret_step]));
        b.push(Step {
            changes: vec![FieldChange::set(
                "roles/secretmanager.secretAccessor",
                None,
                Some(json!(member)),
            )],
            depends_on: deps,
            ..Step::new(
                address,
                Action::Update,
                Op::GrantSecretAccess {
                    secret_id,
                    member: member.clone(),
                },
            )
        });
    }
    // Google documents both roles for changing a worker pool's instance count: Cloud Run
    // Developer on the pool and Service Account User on its service identity
    // (cloud.google.com/run/docs/configuring/workerpools/manual-scaling, "Required roles");
    // the sandbox checks `iam.serviceAccounts.actAs` on every worker-pool write, as Google does.
    let act_as = address::act_as(&n, spec.service_account.account_id.as_str());
    let holds_act_as = b
        .observed
        .sa_bindings
        .get(SA_USER)
        .is_some_and(|m| m.contains(&member));
    if holds_act_as {
        b.unchanged(act_as);
    } else {
        let mut deps = account.clone();
        deps.extend(b.deps(&[addr::service_account(spec), addr::sa_iam(spec)]));
        b.push(Step {
            changes: vec![FieldChange::set(SA_USER, None, Some(json!(member)))],
            reason: Some(format!(
                "the waker may act as {} (to change the pool's count)",
                spec.service_account.email
            )),
            depends_on: deps,
            ..Step::new(
                act_as,
                Action::Update,
                Op::EditServiceAccountPolicy {
                    email: spec.service_account.email.clone(),
                    add: vec![(SA_USER.to_string(), member.clone())],
                    remove: vec![],
                },
            )
        });
    }
    if o.pool_role_members.contains(&member) {
        b.unchanged(address::pool_iam(&n));
    } else {
        let mut deps = account.clone();
        deps.extend(b.deps(&[addr::worker_pool(n.pool.as_str())]));
        b.push(Step {
            changes: vec![FieldChange::set(POOL_ROLE, None, Some(json!(member)))],
            reason: Some(format!("the waker may update worker pool {} only", n.pool)),
            depends_on: deps,
            ..Step::new(
                address::pool_iam(&n),
                Action::Update,
                Op::EditWorkerPoolPolicy {
                    pool: n.pool.clone(),
                    add: vec![(POOL_ROLE.to_string(), member.clone())],
                    remove: vec![],
                },
            )
        });
    }

    // The waker service, once it can read its secrets and update its pool.
    let desired = desired_service(spec, &n, b.options);
    let service_deps = b.deps(&[
        addr::apis(),
        address::account(&n),
        address::secret(&n),
        address::secret_iam(&n),
        address::api_key_iam(&n, worker.api_key_secret.as_str()),
        address::pool_iam(&n),
        address::act_as(&n, spec.service_account.account_id.as_str()),
        addr::secret(worker.api_key_secret.as_str()),
    ]);
    let live = o.service.as_ref();
    let address = address::service(&n);
    service::plan_service(
        b,
        address,
        &n.service,
        desired,
        live,
        service_deps,
        service::owned_view,
    );

    // The Webhook block: written with every new secret.
    let block_address = address::block(&n);
    if rotate {
        let url = o
            .service
            .as_ref()
            .and_then(|s| s.get("uri"))
            .and_then(Value::as_str)
            .filter(|_| !service_created)
            .map(|uri| format!("{uri}/wake"));
        let old_url = o
            .block
            .as_ref()
            .and_then(|bl| bl.url.clone())
            .map(Value::from);
        let mut changes = vec![];
        match url {
            Some(u) if o.block.as_ref().and_then(|bl| bl.url.as_deref()) == Some(u.as_str()) => {}
            Some(u) => changes.push(FieldChange::set("url", old_url, Some(json!(u)))),
            None => changes.push(FieldChange::after_apply("url", old_url)),
        }
        changes.push(FieldChange::sensitive("headers.Authorization"));
        let depends_on = b.deps(&[address::secret(&n), address::service(&n)]);
        b.push(Step {
            changes,
            depends_on,
            ..Step::new(
                block_address.clone(),
                Action::upsert(o.block.is_some()),
                Op::UpsertWakerBlock {
                    name: n.block.clone(),
                    existing_id: o.block.as_ref().map(|bl| bl.id),
                    service: n.service.clone(),
                    secret_from: address::secret(&n),
                },
            )
        });
    } else {
        b.unchanged(block_address.clone());
    }
    let block_id: Deferred<BlockId> = match &o.block {
        Some(bl) => Deferred::Known { value: bl.id },
        None => Deferred::Step {
            address: block_address.clone(),
        },
    };

    // The automations.
    for (name, kind) in [
        (n.wake.clone(), AutomationKind::Wake),
        (n.sweep.clone(), AutomationKind::Sweep),
    ] {
        let live = o.automations.get(&name).and_then(|all| all.first());
        let address = address::automation(&name);
        let depends_on = b.deps(std::slice::from_ref(&block_address));
        let want = match &block_id {
            Deferred::Known { value } => Some(wake::automation_spec(&n, kind, value.uuid())),
            Deferred::Step { .. } => None,
        };
        let changes = match (live, &want) {
            (None, _) => created_view(&n, kind, &block_id),
            (Some(l), Some(w)) => automation_changes(l, w),
            (Some(_), None) => vec![FieldChange::after_apply(
                "actions[0].block_document_id",
                None,
            )],
        };
        if live.is_some() && changes.is_empty() {
            b.unchanged(address);
            continue;
        }
        b.push(Step {
            changes,
            adopted: live.is_some_and(|l| !wake::is_ours(l)),
            depends_on,
            ..Step::new(
                address,
                Action::upsert(live.is_some()),
                Op::UpsertAutomation {
                    name,
                    kind,
                    work_pool: n.work_pool.clone(),
                    existing_id: live.map(|l| l.id.into()),
                    block: block_id.clone(),
                },
            )
        });
    }
}

/// What `plan` shows of an automation to create: its trigger and its action.
fn created_view(n: &Names, kind: AutomationKind, block: &Deferred<BlockId>) -> Vec<FieldChange> {
    let spec = wake::automation_spec(n, kind, uuid::Uuid::nil());
    let mut out: Vec<FieldChange> = ["posture", "expect", "match_related", "within"]
        .into_iter()
        .map(|k| FieldChange::set(format!("trigger.{k}"), None, spec.trigger.get(k).cloned()))
        .collect();
    out.push(FieldChange::set(
        "action",
        None,
        Some(json!("call-webhook")),
    ));
    out.push(match block {
        Deferred::Known { value } => {
            FieldChange::set("action.block_document_id", None, Some(json!(value)))
        }
        Deferred::Step { .. } => FieldChange::after_apply("action.block_document_id", None),
    });
    out
}

/// The fields of a live automation that differ from the wanted one: the keys the tool sets in
/// the trigger, the actions' type and block, `enabled` and `description`. Other keys the server
/// adds (ids, defaults) are not compared.
fn automation_changes(
    live: &bootstrap_prefect::Automation,
    want: &bootstrap_prefect::AutomationSpec,
) -> Vec<FieldChange> {
    let mut out = vec![];
    if live.enabled != want.enabled {
        out.push(FieldChange::set(
            "enabled",
            Some(json!(live.enabled)),
            Some(json!(want.enabled)),
        ));
    }
    if live.description != want.description {
        out.push(FieldChange::set(
            "description",
            Some(json!(live.description)),
            Some(json!(want.description)),
        ));
    }
    if let Some(keys) = want.trigger.as_object() {
        for (k, v) in keys {
            let l = live.trigger.get(k).cloned().unwrap_or(Value::Null);
            let equal = if matches!(k.as_str(), "expect" | "after") {
                as_set(&l) == as_set(v)
            } else {
                same(&l, v)
            };
            if !equal {
                out.push(FieldChange::set(
                    format!("trigger.{k}"),
                    Some(l),
                    Some(v.clone()),
                ));
            }
        }
    }
    let pick = |a: &[Value]| -> Vec<Value> {
        a.iter()
            .map(
                |x| json!({"type": x.get("type"), "block_document_id": x.get("block_document_id")}),
            )
            .collect()
    };
    let (l, w) = (pick(&live.actions), pick(&want.actions));
    if l != w {
        out.push(FieldChange::set(
            "actions",
            Some(Value::from(l)),
            Some(Value::from(w)),
        ));
    }
    out
}

/// Equal, with numbers compared by value (the server may answer `60.0` for `60`).
/// A trigger's `expect` and `after` are sets in Prefect's schema (`Set[str]` in
/// `prefect/server/events/schemas/automations.py`): the server returns them in its own order,
/// which changes from one server process to the next (Python's string hashing).
fn as_set(v: &Value) -> Option<std::collections::BTreeSet<String>> {
    v.as_array().map(|a| {
        a.iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .collect()
    })
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Deletes the wake path (destroy): the automations and the block first, then the waker, its
/// secret and its account. Only what the tool made is deleted; the rest is listed as adopted.
pub(super) fn destroy(b: &mut Builder) {
    let Some(n) = wake::names(b.spec) else { return };
    let Some(o) = b.observed.wake.clone() else {
        return;
    };
    let mut prefect_steps: Vec<Address> = vec![];
    for name in [&n.wake, &n.sweep] {
        for a in o.automations.get(name).into_iter().flatten() {
            let address = address::automation(name);
            if !wake::is_ours(a) {
                b.adopted.push(address);
                continue;
            }
            prefect_steps.push(address.clone());
            b.push(Step::new(
                address,
                Action::Delete,
                Op::DeleteAutomation {
                    id: a.id.into(),
                    name: name.clone(),
                },
            ));
        }
    }
    if let Some(bl) = &o.block {
        let depends_on = b.deps(&prefect_steps);
        b.push(Step {
            depends_on,
            ..Step::new(
                address::block(&n),
                Action::Delete,
                Op::DeleteBlock {
                    id: bl.id,
                    name: n.block.clone(),
                },
            )
        });
    }
    let mut gcp_steps = vec![];
    if let Some(live) = &o.service {
        if service::is_marked(live) {
            let depends_on = b.deps(&[address::block(&n)]);
            gcp_steps.push(address::service(&n));
            b.push(Step {
                depends_on,
                ..Step::new(
                    address::service(&n),
                    Action::Delete,
                    Op::DeleteService {
                        name: n.service.clone(),
                    },
                )
            });
        } else {
            b.adopted.push(address::service(&n));
        }
    }
    if let Some(s) = &o.secret {
        if s.labels.get(MARKER_LABEL.0).map(String::as_str) == Some(MARKER_LABEL.1) {
            let depends_on = b.deps(&gcp_steps);
            gcp_steps.push(address::secret(&n));
            b.push(Step {
                depends_on,
                ..Step::new(
                    address::secret(&n),
                    Action::Delete,
                    Op::DeleteSecret {
                        secret_id: n.secret.clone(),
                    },
                )
            });
        } else {
            b.adopted.push(address::secret(&n));
        }
    }
    if o.account {
        if wake::account_is_ours(&o) {
            let depends_on = b.deps(&gcp_steps);
            b.push(Step {
                depends_on,
                ..Step::new(
                    address::account(&n),
                    Action::Delete,
                    Op::DeleteServiceAccount {
                        email: n.email.clone(),
                    },
                )
            });
        } else {
            b.adopted.push(address::account(&n));
        }
    }
}

#[cfg(test)]
mod set_tests {
    use super::as_set;
    use serde_json::json;

    /// Regression: the merged tree's e2e saw `expect` come back from the server in the other
    /// order, and a converged plan showed the wake automation as drift.
    #[test]
    fn expect_and_after_compare_as_sets() {
        let a = json!(["prefect.flow-run.Late", "prefect.flow-run.Scheduled"]);
        let b = json!(["prefect.flow-run.Scheduled", "prefect.flow-run.Late"]);
        assert_eq!(as_set(&a), as_set(&b));
        assert_ne!(as_set(&a), as_set(&json!(["prefect.flow-run.Late"])));
        assert_ne!(as_set(&json!(null)), as_set(&json!([])));
    }
}
