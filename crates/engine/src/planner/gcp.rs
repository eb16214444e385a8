//! Planning the GCP half: APIs, the service account, its roles and key, the API-key secret and
//! the worker's Cloud Run service.

use std::collections::BTreeSet;

use bootstrap_spec::KeyMode;
use serde_json::{Value, json};

use super::super::diff;
use super::super::observed::{Key, MARKER_LABEL};
use super::super::plan::{Action, FieldChange, Op, Step};
use super::{Builder, addr, service};

const SA_USER: &str = "roles/iam.serviceAccountUser";
const SECRET_ACCESSOR: &str = "roles/secretmanager.secretAccessor";

/// The APIs to have enabled: the plan's list, plus any the plan cannot work without.
pub fn required_apis(spec: &bootstrap_spec::Spec, has_api_key: bool) -> Vec<String> {
    let mut apis: Vec<String> = spec.gcp.apis.iter().map(|a| a.to_string()).collect();
    apis.push("iam.googleapis.com".into());
    if spec.worker.is_some() || !spec.deployments.is_empty() {
        apis.push("run.googleapis.com".into());
    }
    // The waker of `scale_to_zero` reads its shared secret from Secret Manager.
    if spec.worker.is_some() && (has_api_key || crate::wake::names(spec).is_some()) {
        apis.push("secretmanager.googleapis.com".into());
    }
    if crate::builds::any(spec) {
        apis.extend(crate::builds::BUILD_APIS.iter().map(|a| a.to_string()));
    }
    apis.sort();
    apis.dedup();
    apis
}

pub(super) fn apis(b: &mut Builder) {
    let missing: Vec<String> = required_apis(b.spec, b.options.has_api_key)
        .into_iter()
        .filter(|a| !b.observed.apis.get(a).copied().unwrap_or(false))
        .collect();
    if missing.is_empty() {
        b.unchanged(addr::apis());
        return;
    }
    let changes = missing
        .iter()
        .map(|s| FieldChange::set(s.clone(), Some(json!("disabled")), Some(json!("enabled"))))
        .collect();
    b.push(Step {
        changes,
        ..Step::new(
            addr::apis(),
            Action::Update,
            Op::EnableApis { services: missing },
        )
    });
}

pub(super) fn service_account(b: &mut Builder) {
    let sa = &b.spec.service_account;
    let address = addr::service_account(b.spec);
    let desired = json!({"display_name": sa.display_name, "description": sa.description});
    match &b.observed.service_account {
        None => {
            let changes = vec![
                FieldChange::set("email", None, Some(json!(sa.email.as_str()))),
                FieldChange::set("display_name", None, Some(json!(sa.display_name))),
                FieldChange::set("description", None, Some(json!(sa.description))),
            ];
            let depends_on = b.deps(&[addr::apis()]);
            b.push(Step {
                changes,
                depends_on,
                ..Step::new(
                    address,
                    Action::Create,
                    Op::CreateServiceAccount {
                        account_id: sa.account_id.clone(),
                        email: sa.email.clone(),
                        display_name: sa.display_name.clone(),
                        description: sa.description.clone(),
                    },
                )
            });
        }
        Some(live) => {
            let current =
                json!({"display_name": live.display_name, "description": live.description});
            let changes = diff::changes(&current, &desired);
            if changes.is_empty() {
                b.unchanged(address);
            } else {
                b.push(Step {
                    changes,
                    ..Step::new(
                        address,
                        Action::Update,
                        Op::PatchServiceAccount {
                            email: sa.email.clone(),
                            display_name: sa.display_name.clone(),
                            description: sa.description.clone(),
                        },
                    )
                });
            }
        }
    }
}

/// The (role, member) pairs the plan wants on the project, and on the account itself.
/// (role, member) pairs.
type Grants = Vec<(String, String)>;

fn wanted_bindings(b: &Builder) -> (Grants, Grants) {
    let sa = &b.spec.service_account;
    let member = sa.email.member();
    let mut project = Vec::new();
    let mut on_account = Vec::new();
    for role in &sa.roles {
        if sa.least_privilege && role.as_str() == SA_USER {
            on_account.push((role.to_string(), member.clone()));
        } else {
            project.push((role.to_string(), member.clone()));
        }
    }
    (project, on_account)
}

fn has(
    bindings: &std::collections::BTreeMap<String, BTreeSet<String>>,
    role: &str,
    member: &str,
) -> bool {
    bindings.get(role).is_some_and(|m| m.contains(member))
}

pub(super) fn bindings(b: &mut Builder) {
    let (project, on_account) = wanted_bindings(b);
    let member = b.spec.service_account.email.member();
    // Our account may be seconds old even when this run does not create it: an apply killed
    // right after creating it leaves the next apply to bind it, and IAM may still answer "does
    // not exist" (found by the reliability crash test). It exists (observed) or is created by
    // this run, so such an answer can only be propagation: always allow the grace.
    let new_accounts = vec![b.spec.service_account.email.to_string()];

    // Project level: add what is missing. With least privilege, a project-wide
    // serviceAccountUser of ours is removed (only ours: never other members).
    let add: Vec<(String, String)> = project
        .iter()
        .filter(|(r, m)| !has(&b.observed.project_bindings, r, m))
        .cloned()
        .collect();
    let mut remove = Vec::new();
    if b.spec.service_account.least_privilege && has(&b.observed.project_bindings, SA_USER, &member)
    {
        remove.push((SA_USER.to_string(), member.clone()));
    }
    let address = addr::project_iam(b.spec);
    if add.is_empty() && remove.is_empty() {
        b.unchanged(address);
    } else {
        let mut changes: Vec<FieldChange> = add
            .iter()
            .map(|(r, m)| FieldChange::set(r.clone(), None, Some(json!(m))))
            .collect();
        changes.extend(
            remove
                .iter()
                .map(|(r, m)| FieldChange::set(r.clone(), Some(json!(m)), None)),
        );
        let depends_on = b.deps(&[addr::service_account(b.spec)]);
        b.push(Step {
            changes,
            depends_on,
            ..Step::new(
                address,
                Action::Update,
                Op::EditProjectPolicy {
                    add,
                    remove,
                    new_accounts: new_accounts.clone(),
                },
            )
        });
    }

    if !on_account.is_empty() {
        let add: Vec<(String, String)> = on_account
            .into_iter()
            .filter(|(r, m)| !has(&b.observed.sa_bindings, r, m))
            .collect();
        let address = addr::sa_iam(b.spec);
        if add.is_empty() {
            b.unchanged(address);
        } else {
            let changes = add
                .iter()
                .map(|(r, m)| FieldChange::set(r.clone(), None, Some(json!(m))))
                .collect();
            let depends_on = b.deps(&[addr::service_account(b.spec)]);
            b.push(Step {
                changes,
                depends_on,
                ..Step::new(
                    address,
                    Action::Update,
                    Op::EditServiceAccountPolicy {
                        email: b.spec.service_account.email.clone(),
                        add,
                        remove: vec![],
                    },
                )
            });
        }
    }
}

/// Whether the block holds a key of our account that is live and enabled.
pub(super) fn block_key_valid(b: &Builder) -> bool {
    let Some(block) = &b.observed.block else {
        return false;
    };
    let Some(key_id) = &block.private_key_id else {
        return false;
    };
    block.client_email.as_deref() == Some(b.spec.service_account.email.as_str())
        && b.observed
            .keys
            .iter()
            .any(|k| &k.key_id == key_id && !k.disabled)
}

pub(super) fn key(b: &mut Builder) {
    if b.spec.service_account.key != KeyMode::Json {
        return;
    }
    let rotate = b.options.rotate_key;
    if block_key_valid(b) && !rotate {
        return; // the key in use is the block's; nothing to create
    }
    let reason = if rotate && block_key_valid(b) {
        "rotation requested"
    } else if b
        .observed
        .block
        .as_ref()
        .is_some_and(|blk| blk.private_key_id.is_some())
    {
        "the block's key no longer exists or is disabled"
    } else {
        "no key of the service account is stored in the credentials block"
    };
    let depends_on = b.deps(&[addr::service_account(b.spec)]);
    b.push(Step {
        changes: vec![FieldChange::sensitive("private_key")],
        reason: Some(reason.into()),
        depends_on,
        ..Step::new(
            addr::new_key(b.spec),
            Action::Create,
            Op::CreateKey {
                email: b.spec.service_account.email.clone(),
            },
        )
    });
}

/// Keys of our account that the block does not use: orphans, deleted once the block has moved on.
pub(super) fn orphan_keys(b: &mut Builder) {
    let in_use = if b.planned(&addr::new_key(b.spec)) {
        None // the block moves to the new key; every old key becomes unused
    } else {
        b.observed
            .block
            .as_ref()
            .and_then(|blk| blk.private_key_id.clone())
    };
    let orphans: Vec<_> = b
        .observed
        .keys
        .iter()
        .filter(|k| Some(&k.key_id) != in_use.as_ref())
        .cloned()
        .collect();
    for k in orphans {
        let step = Step {
            reason: Some(
                "user-managed key that the credentials block does not use (orphan)".into(),
            ),
            ..delete_key(b, k)
        };
        b.push(step);
    }
}

/// Deletes a key of the account, once the credentials block no longer holds it.
fn delete_key(b: &Builder, k: Key) -> Step {
    let op = Op::DeleteKey {
        name: k.name,
        email: b.spec.service_account.email.clone(),
        key_id: k.key_id.clone(),
    };
    Step {
        depends_on: b.deps(&[addr::block(b.spec)]),
        ..Step::new(addr::key(&k.key_id), Action::Delete, op)
    }
}

fn marker_labels() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(MARKER_LABEL.0.into(), json!(MARKER_LABEL.1));
    m
}

fn marked(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(MARKER_LABEL.0).map(String::as_str) == Some(MARKER_LABEL.1)
}

pub(super) fn secret(b: &mut Builder) {
    let Some(worker) = &b.spec.worker else { return };
    if !b.options.has_api_key {
        return;
    }
    let id = worker.api_key_secret.clone();
    let address = addr::secret(id.as_str());
    let (create, add_version, adopted) = match &b.observed.secret {
        None => (true, true, false),
        Some(s) => (false, s.latest_matches != Some(true), !marked(&s.labels)),
    };
    if !create && !add_version {
        b.unchanged(address.clone());
    } else {
        let depends_on = b.deps(&[addr::apis()]);
        b.push(Step {
            changes: vec![FieldChange::sensitive("latest_version")],
            adopted,
            depends_on,
            ..Step::new(
                address.clone(),
                Action::upsert(!create),
                Op::PutSecret {
                    secret_id: id.clone(),
                    create,
                    add_version,
                    labels: marker_labels(),
                },
            )
        });
    }
    let member = b.spec.service_account.email.member();
    let granted = b
        .observed
        .secret
        .as_ref()
        .is_some_and(|s| s.accessors.contains(&member));
    let iam_address = addr::secret_iam(id.as_str());
    if granted {
        b.unchanged(iam_address);
    } else {
        let depends_on = b.deps(&[address, addr::service_account(b.spec)]);
        b.push(Step {
            changes: vec![FieldChange::set(SECRET_ACCESSOR, None, Some(json!(member)))],
            depends_on,
            ..Step::new(
                iam_address,
                Action::Update,
                Op::GrantSecretAccess {
                    secret_id: id,
                    member: member.clone(),
                },
            )
        });
    }
}

pub(super) fn worker_service(b: &mut Builder) {
    let Some(worker) = &b.spec.worker else { return };
    if worker.kind == bootstrap_spec::WorkerKind::WorkerPool {
        return; // planner::worker_pool plans the pool and the service's removal
    }
    let address = addr::service(worker.service.as_str());
    let desired = service::desired(b.spec, worker, b.options);
    let depends_on = {
        let mut c = vec![
            addr::apis(),
            addr::service_account(b.spec),
            addr::project_iam(b.spec),
            addr::sa_iam(b.spec),
        ];
        c.push(addr::secret(worker.api_key_secret.as_str()));
        c.push(addr::secret_iam(worker.api_key_secret.as_str()));
        c.push(addr::work_pool(b.spec));
        b.deps(&c)
    };
    let live = b.observed.service.as_ref();
    service::plan_service(
        b,
        address,
        &worker.service,
        desired,
        live,
        depends_on,
        |v| service::owned_view_for(v, worker),
    );
}

// ---- destroy ----

pub(super) fn destroy_worker_service(b: &mut Builder) {
    let Some(worker) = &b.spec.worker else { return };
    let Some(live) = &b.observed.service else {
        return;
    };
    let address = addr::service(worker.service.as_str());
    if !service::is_marked(live) {
        b.adopted.push(address);
        return;
    }
    b.push(Step::new(
        address,
        Action::Delete,
        Op::DeleteService {
            name: worker.service.clone(),
        },
    ));
}

pub(super) fn destroy_secret(b: &mut Builder) {
    let Some(worker) = &b.spec.worker else { return };
    let Some(secret) = &b.observed.secret else {
        return;
    };
    let id = worker.api_key_secret.clone();
    let address = addr::secret(id.as_str());
    if !marked(&secret.labels) {
        b.adopted.push(address);
        return;
    }
    let depends_on = b.deps(&[
        addr::service(worker.service.as_str()),
        addr::worker_pool(worker.pool_name().as_str()),
    ]);
    b.push(Step {
        depends_on,
        ..Step::new(address, Action::Delete, Op::DeleteSecret { secret_id: id })
    });
}

pub(super) fn destroy_keys(b: &mut Builder) {
    if b.observed.service_account.is_none() {
        return;
    }
    for k in b.observed.keys.clone() {
        let step = delete_key(b, k);
        b.push(step);
    }
}

pub(super) fn destroy_bindings(b: &mut Builder) {
    if b.options.keep_service_account {
        return;
    }
    let (project, on_account) = wanted_bindings(b);
    let member = b.spec.service_account.email.member();
    // Remove every role of the plan from our member, wherever it is (also a stale project-wide
    // serviceAccountUser left from before least privilege was turned on).
    let mut remove: Vec<(String, String)> = project
        .into_iter()
        .chain(on_account.iter().cloned())
        .filter(|(r, m)| has(&b.observed.project_bindings, r, m))
        .collect();
    remove.sort();
    remove.dedup();
    if !remove.is_empty() {
        let changes = remove
            .iter()
            .map(|(r, m)| FieldChange::set(r.clone(), Some(json!(m)), None))
            .collect();
        let depends_on = b.deps(&[addr::service(
            b.spec.worker.as_ref().map_or("", |w| w.service.as_str()),
        )]);
        b.push(Step {
            changes,
            depends_on,
            ..Step::new(
                addr::project_iam(b.spec),
                Action::Update,
                Op::EditProjectPolicy {
                    add: vec![],
                    remove,
                    new_accounts: vec![],
                },
            )
        });
    }
    let _ = member;
}

pub(super) fn destroy_service_account(b: &mut Builder) {
    if b.options.keep_service_account {
        return;
    }
    if b.observed.service_account.is_none() {
        return;
    }
    let mut candidates = vec![addr::project_iam(b.spec), addr::block(b.spec)];
    if let Some(w) = &b.spec.worker {
        candidates.push(addr::service(w.service.as_str()));
        candidates.push(addr::secret(w.api_key_secret.as_str()));
    }
    candidates.extend(b.observed.keys.iter().map(|k| addr::key(&k.key_id)));
    let depends_on = b.deps(&candidates);
    b.push(Step {
        depends_on,
        ..Step::new(
            addr::service_account(b.spec),
            Action::Delete,
            Op::DeleteServiceAccount {
                // Observe read the account by the plan's email.
                email: b.spec.service_account.email.clone(),
            },
        )
    });
}
