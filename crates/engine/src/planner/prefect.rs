//! Planning the Prefect half: the credentials block, the work pool and the deployments.

use bootstrap_prefect::{DeploymentSpec, WorkPoolCreate, WorkPoolUpdate};
use bootstrap_spec::ids::{BlockId, FlowId};
use bootstrap_spec::{Deployment, KeyMode, Spec};
use serde_json::{Value, json};

use super::super::diff;
use super::super::plan::{Action, Deferred, FieldChange, Op, Step};
use super::{Builder, addr, template};

pub(super) fn block(b: &mut Builder) {
    let spec = b.spec;
    let address = addr::block(spec);
    let key_step = addr::new_key(spec);
    let new_key = b.planned(&key_step);
    let keyless = spec.service_account.key == KeyMode::None;
    let project = spec.gcp.project.clone();
    match &b.observed.block {
        None => {
            let mut changes = vec![FieldChange::set(
                "project",
                None,
                Some(json!(project.as_str())),
            )];
            if !keyless {
                changes.push(FieldChange::sensitive("service_account_info"));
            }
            let depends_on = b.deps(std::slice::from_ref(&key_step));
            b.push(Step {
                changes,
                depends_on,
                ..Step::new(
                    address,
                    Action::Create,
                    Op::UpsertBlock {
                        name: spec.credentials_block.name.clone(),
                        existing_id: None,
                        project,
                        key_from: new_key.then_some(key_step),
                        keyless,
                    },
                )
            });
        }
        Some(live) => {
            let mut changes = Vec::new();
            if live.project.as_deref() != Some(project.as_str()) {
                changes.push(FieldChange::set(
                    "project",
                    live.project.clone().map(Value::String),
                    Some(json!(project.as_str())),
                ));
            }
            if new_key || (keyless && live.has_service_account_info) {
                changes.push(FieldChange::sensitive("service_account_info"));
            }
            if changes.is_empty() {
                b.unchanged(address);
                return;
            }
            let depends_on = b.deps(std::slice::from_ref(&key_step));
            b.push(Step {
                changes,
                depends_on,
                ..Step::new(
                    address,
                    Action::Update,
                    Op::UpsertBlock {
                        name: spec.credentials_block.name.clone(),
                        existing_id: Some(live.id),
                        project,
                        key_from: new_key.then_some(key_step),
                        keyless,
                    },
                )
            });
        }
    }
}

pub(super) fn work_pool(b: &mut Builder) {
    let spec = b.spec;
    let address = addr::work_pool(spec);
    let block_address = addr::block(spec);
    // The block ref: known when the block exists; otherwise produced by the block step.
    let credentials: Option<Deferred<BlockId>> = match (spec.service_account.key, &b.observed.block)
    {
        (KeyMode::None, _) => None,
        (KeyMode::Json, Some(blk)) => Some(Deferred::Known { value: blk.id }),
        (KeyMode::Json, None) => Some(Deferred::Step {
            address: block_address.clone(),
        }),
    };
    let cred_value = match &credentials {
        Some(Deferred::Known { value }) => Some(template::block_ref(*value)),
        _ => None,
    };
    let depends_on = b.deps(&[block_address]);

    let live = b.observed.work_pool.as_ref();
    let base = match live {
        Some(p)
            if p.base_job_template
                .as_object()
                .is_some_and(|o| !o.is_empty()) =>
        {
            p.base_job_template.clone()
        }
        _ => spec
            .work_pool
            .base_job_template
            .clone()
            .or_else(|| b.observed.default_template.clone())
            .unwrap_or(Value::Null),
    };
    let wanted = template::apply_defaults(spec, &base, cred_value.as_ref());
    let mut changes = diff::changes(
        &live.map_or(Value::Null, |p| {
            template::owned_view(spec, &p.base_job_template)
        }),
        &template::owned_view(spec, &wanted),
    );
    for c in &mut changes {
        c.path = format!("base_job_template.{}.default", c.path);
    }
    if matches!(credentials, Some(Deferred::Step { .. })) {
        changes.push(FieldChange::after_apply(
            "base_job_template.credentials.default",
            live.and_then(|p| {
                diff::get_path(
                    &p.base_job_template,
                    "variables.properties.credentials.default",
                )
                .cloned()
            }),
        ));
    }
    let pool_type = spec.work_pool.pool_type.as_str().to_string();
    match live {
        None => {
            let mut all = vec![FieldChange::set("type", None, Some(json!(pool_type)))];
            all.extend(changes);
            b.push(Step {
                changes: all,
                depends_on,
                ..Step::new(
                    address,
                    Action::Create,
                    Op::CreateWorkPool {
                        pool: WorkPoolCreate {
                            name: spec.work_pool.name.to_string(),
                            pool_type,
                            description: spec.work_pool.description.clone(),
                            base_job_template: Some(wanted),
                            is_paused: None,
                            concurrency_limit: spec.work_pool.concurrency_limit.map(u64::from),
                        },
                        credentials,
                    },
                )
            });
        }
        Some(p) if p.pool_type != pool_type => {
            b.push(Step {
                changes: vec![FieldChange::set(
                    "type",
                    Some(json!(p.pool_type)),
                    Some(json!(pool_type)),
                )],
                reason: Some(format!(
                    "a pool's type cannot change ({} -> {pool_type})",
                    p.pool_type
                )),
                depends_on,
                ..Step::new(
                    address,
                    Action::Replace,
                    Op::ReplaceWorkPool {
                        pool: WorkPoolCreate {
                            name: spec.work_pool.name.to_string(),
                            pool_type: pool_type.clone(),
                            description: spec.work_pool.description.clone(),
                            base_job_template: Some(template::apply_defaults(
                                spec,
                                &spec
                                    .work_pool
                                    .base_job_template
                                    .clone()
                                    .or_else(|| b.observed.default_template.clone())
                                    .unwrap_or(Value::Null),
                                cred_value.as_ref(),
                            )),
                            is_paused: None,
                            concurrency_limit: spec.work_pool.concurrency_limit.map(u64::from),
                        },
                        credentials,
                    },
                )
            });
        }
        Some(p) => {
            if let Some(d) = &spec.work_pool.description
                && p.description.as_deref() != Some(d.as_str())
            {
                changes.push(FieldChange::set(
                    "description",
                    p.description.clone().map(Value::String),
                    Some(json!(d)),
                ));
            }
            if let Some(limit) = spec.work_pool.concurrency_limit
                && p.concurrency_limit != Some(u64::from(limit))
            {
                changes.push(FieldChange::set(
                    "concurrency_limit",
                    p.concurrency_limit.map(|l| json!(l)),
                    Some(json!(limit)),
                ));
            }
            if changes.is_empty() {
                b.unchanged(address);
                return;
            }
            b.push(Step {
                changes,
                depends_on,
                ..Step::new(
                    address,
                    Action::Update,
                    Op::UpdateWorkPool {
                        name: spec.work_pool.name.clone(),
                        update: WorkPoolUpdate {
                            description: spec.work_pool.description.clone(),
                            base_job_template: Some(wanted),
                            is_paused: None,
                            concurrency_limit: spec.work_pool.concurrency_limit.map(u64::from),
                        },
                        credentials,
                    },
                )
            });
        }
    }
}

/// The deployment fields the plan owns, in the server's shape.
pub fn deployment_fields(spec: &Spec, d: &Deployment) -> serde_json::Map<String, Value> {
    let mut job_variables = d.job_variables.clone();
    if let Some(image) = &d.image {
        job_variables.insert("image".into(), json!(image.as_str()));
    }
    let schedules: Vec<Value> = d
        .schedules
        .iter()
        .map(|s| json!({"schedule": s, "active": true}))
        .collect();
    let mut m = serde_json::Map::new();
    m.insert("entrypoint".into(), json!(d.entrypoint));
    m.insert("parameters".into(), Value::Object(d.parameters.clone()));
    m.insert("work_pool_name".into(), json!(spec.work_pool.name.as_str()));
    m.insert("work_queue_name".into(), json!(d.work_queue.as_str()));
    m.insert("job_variables".into(), Value::Object(job_variables));
    m.insert("pull_steps".into(), Value::Array(d.pull_steps.clone()));
    m.insert("tags".into(), json!(d.tags));
    m.insert(
        "description".into(),
        d.description.clone().map_or(Value::Null, Value::String),
    );
    m.insert("schedules".into(), Value::Array(schedules));
    m
}

pub fn deployment_key(d: &Deployment) -> String {
    format!("{}/{}", d.flow, d.name)
}

/// The id of flow `flow` when any live deployment of the plan belongs to it (the batch read
/// returns each deployment's `flow_id`), so apply need not upsert the flow again.
fn observed_flow_id(observed: &crate::observed::Observed, flow: &str) -> Option<FlowId> {
    observed
        .deployments
        .values()
        .find(|d| d.flow == flow)
        .map(|d| d.flow_id)
}

pub(super) fn deployments(b: &mut Builder) {
    let spec = b.spec;
    for d in &spec.deployments {
        let key = deployment_key(d);
        let address = addr::deployment(&key);
        let mut fields = deployment_fields(spec, d);
        let mut needs = vec![addr::work_pool(spec)];
        if let Some(img) = b
            .observed
            .images
            .iter()
            .find(|i| i.deployments.contains(&key))
        {
            // The built image, tagged with its source digest; the deployment moves to it only
            // after the build succeeded (it depends on the build step).
            if let Some(Value::Object(jv)) = fields.get_mut("job_variables") {
                jv.insert("image".into(), json!(img.image_ref()));
            }
            needs.push(addr::image(&img.build.image_name));
        }
        let wanted = Value::Object(fields);
        let depends_on = b.deps(&needs);
        let (action, changes) = match b.observed.deployments.get(&key) {
            None => (Action::Create, diff::changes(&Value::Null, &wanted)),
            Some(live) => (
                Action::Update,
                diff::changes(&Value::Object(live.fields.clone()), &wanted),
            ),
        };
        if action == Action::Update && changes.is_empty() {
            // An unneeded update would delete the deployment's future scheduled runs.
            b.unchanged(address);
            continue;
        }
        let flow_id = observed_flow_id(b.observed, d.flow.as_str());
        b.push(Step {
            changes,
            depends_on,
            ..Step::new(
                address,
                action,
                Op::UpsertDeployment {
                    flow: d.flow.clone(),
                    name: d.name.clone(),
                    body: Box::new(deployment_spec(&wanted)),
                    flow_id,
                },
            )
        });
    }
}

// ---- destroy ----

pub(super) fn destroy_deployments(b: &mut Builder) {
    for d in &b.spec.deployments {
        let key = deployment_key(d);
        if let Some(live) = b.observed.deployments.get(&key) {
            b.push(Step::new(
                addr::deployment(&key),
                Action::Delete,
                Op::DeleteDeployment {
                    id: live.id,
                    flow: live.flow.clone(),
                    name: live.name.clone(),
                },
            ));
        }
    }
}

pub(super) fn destroy_work_pool(b: &mut Builder) {
    if b.observed.work_pool.is_none() {
        return;
    }
    let candidates: Vec<_> = b
        .spec
        .deployments
        .iter()
        .map(|d| addr::deployment(&deployment_key(d)))
        .collect();
    let depends_on = b.deps(&candidates);
    b.push(Step {
        depends_on,
        ..Step::new(
            addr::work_pool(b.spec),
            Action::Delete,
            Op::DeleteWorkPool {
                name: b.spec.work_pool.name.clone(),
            },
        )
    });
}

pub(super) fn destroy_block(b: &mut Builder) {
    let Some(blk) = &b.observed.block else { return };
    let depends_on = b.deps(&[addr::work_pool(b.spec)]);
    b.push(Step {
        depends_on,
        ..Step::new(
            addr::block(b.spec),
            Action::Delete,
            Op::DeleteBlock {
                id: blk.id,
                name: b.spec.credentials_block.name.clone(),
            },
        )
    });
}

/// The deployment request from the fields the plan owns (the server's names).
fn deployment_spec(body: &Value) -> DeploymentSpec {
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(String::from);
    let object = |k: &str| body.get(k).and_then(Value::as_object).cloned();
    let array = |k: &str| body.get(k).and_then(Value::as_array).cloned();
    DeploymentSpec {
        entrypoint: text("entrypoint"),
        parameters: object("parameters"),
        work_pool_name: text("work_pool_name"),
        work_queue_name: text("work_queue_name"),
        job_variables: object("job_variables"),
        pull_steps: array("pull_steps"),
        tags: array("tags").map(|t| {
            t.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        }),
        description: text("description"),
        schedules: array("schedules"),
        ..Default::default()
    }
}
