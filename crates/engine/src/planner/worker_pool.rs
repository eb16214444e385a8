//! The worker on a Cloud Run worker pool (`worker.kind: worker-pool`): the body the plan wants,
//! the owned-keys view of a live pool, and the steps: create / update (in place when only the
//! instance count changes) / destroy, and the move from the worker service, which creates the
//! pool, waits for its worker to be ONLINE in Prefect, and only then deletes the service.

use bootstrap_gcp::run_v2::{
    Container, ResourceRequirements, WorkerPool, WorkerPoolScaling, WorkerPoolTemplate,
};
use bootstrap_spec::{Spec, Worker, WorkerKind, WorkerRuntime};
use serde_json::Value;

use super::super::diff;
use super::super::plan::{Action, Op, Step};
use super::{Builder, Options, addr, service};

/// The worker command of the service without its health listener: a pool serves no requests
/// and has no probe (<https://cloud.google.com/run/docs/container-contract>).
pub fn command_and_args(spec: &Spec, worker: &Worker) -> (Vec<String>, Vec<String>) {
    let (command, args) = service::command_and_args(spec, worker);
    let drop = match worker.runtime {
        WorkerRuntime::Python => "--with-healthcheck",
        WorkerRuntime::Embedded => "--healthcheck",
    };
    (command, args.into_iter().filter(|a| a != drop).collect())
}

/// The worker pool body apply sends (Run v2 `WorkerPool`), with only fields the plan decides.
pub fn desired(spec: &Spec, worker: &Worker, options: &Options) -> WorkerPool {
    let (command, args) = command_and_args(spec, worker);
    let mut env = service::prefect_env(worker, options);
    // Scale to zero: the embedded worker sets its own pool's count to 0 when idle
    // (`bootstrap worker --scale-to-zero-pool/--scale-to-zero-idle`, crates/worker/src/idle.rs).
    if let Some(stz) = &worker.scale_to_zero {
        env.push(service::env_value(
            "BOOTSTRAP_SCALE_TO_ZERO_POOL",
            format!(
                "projects/{}/locations/{}/workerPools/{}",
                spec.gcp.project,
                spec.gcp.region,
                worker.pool_name()
            ),
        ));
        env.push(service::env_value(
            "BOOTSTRAP_SCALE_TO_ZERO_IDLE",
            stz.idle.as_secs().to_string(),
        ));
    }
    let container = Container {
        image: worker.image.to_string(),
        command,
        args,
        env,
        resources: Some(ResourceRequirements {
            limits: service::limits(&worker.cpu, &worker.memory),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    WorkerPool {
        labels: service::marker_labels(),
        // With scale_to_zero the pool starts at 0; the waker and the worker own the count.
        scaling: Some(WorkerPoolScaling {
            manual_instance_count: Some(if worker.scale_to_zero.is_some() {
                0
            } else {
                service::count(worker.instances)
            }),
            ..WorkerPoolScaling::default()
        }),
        template: Some(WorkerPoolTemplate {
            service_account: Some(spec.service_account.email.to_string()),
            containers: vec![container],
            ..WorkerPoolTemplate::default()
        }),
        ..WorkerPool::default()
    }
}

/// The fields of a worker pool the plan owns, from a live pool or a desired body.
pub fn owned_view(pool: &Value) -> Value {
    let mut view = service::owned_view(pool);
    if let Value::Object(map) = &mut view {
        for k in [
            "invoker_iam_disabled",
            "min_instances",
            "max_instances",
            "cpu_idle",
            "startup_probe_path",
        ] {
            map.remove(k);
        }
        map.insert(
            "instances".into(),
            pool.pointer("/scaling/manualInstanceCount")
                .cloned()
                .unwrap_or(Value::Null),
        );
    }
    view
}

/// The body for updating a live pool: its user fields kept, ours laid over.
pub fn merge_into_live(live: &Value, desired: &Value) -> Value {
    let mut body = service::merge_into_live(live, desired);
    if let Value::Object(map) = &mut body {
        // Output-only fields of a WorkerPool that a service does not have.
        for k in ["instanceSplitStatuses", "threatDetectionEnabled"] {
            map.remove(k);
        }
    }
    if let Some(s) = desired.get("scaling") {
        diff::set_path(&mut body, "scaling", s.clone());
    }
    body
}

/// Whether a pool's template failed to become ready (`None` while reconciling or when ready).
pub fn not_ready(pool: &Value) -> Option<String> {
    service::not_ready(pool)
}

/// Plans the worker pool (apply), and the worker service's removal when the plan moved to a
/// pool.
pub(super) fn plan(b: &mut Builder) {
    let Some(worker) = &b.spec.worker else { return };
    if worker.kind != WorkerKind::WorkerPool {
        return;
    }
    let address = addr::worker_pool(worker.pool_name().as_str());
    let desired = desired(b.spec, worker, b.options);
    let depends_on = b.deps(&[
        addr::apis(),
        addr::service_account(b.spec),
        addr::project_iam(b.spec),
        addr::sa_iam(b.spec),
        addr::secret(worker.api_key_secret.as_str()),
        addr::secret_iam(worker.api_key_secret.as_str()),
        addr::work_pool(b.spec),
    ]);
    // Moving from the service: the pool's worker must be ONLINE before the service goes.
    let migrating = b.observed.service.as_ref().is_some_and(service::is_marked);
    // The wait looks for a worker that was not ONLINE before the write, so it is asked only
    // of a write that starts new instances (a create, a new revision, a larger count).
    let wait_online = migrating && worker.instances > 0;
    match &b.observed.worker_pool {
        None => {
            let changes = diff::changes(&Value::Null, &owned_view(&service::to_json(&desired)));
            b.push(Step {
                changes,
                reason: migrating.then(|| format!("replaces Cloud Run service {}", worker.service)),
                depends_on,
                ..Step::new(
                    address.clone(),
                    Action::Create,
                    Op::UpsertWorkerPool {
                        name: worker.pool_name(),
                        body: Box::new(desired),
                        count_only: false,
                        wait_online,
                        work_pool: b.spec.work_pool.name.clone(),
                    },
                )
            });
        }
        Some(live) => {
            let mut desired = service::to_json(&desired);
            let mut changes = diff::changes(&owned_view(live), &owned_view(&desired));
            if worker.scale_to_zero.is_some() {
                // The live count is the waker's and the worker's, never drift.
                changes.retain(|c| c.path != "instances");
                if let Some(s) = live.get("scaling") {
                    desired["scaling"] = s.clone();
                }
            }
            let not_ready = not_ready(live);
            if changes.is_empty() && not_ready.is_none() {
                b.unchanged(address.clone());
            } else {
                // Only the count: an in-place resize (updateMask), never a new revision.
                let count_only =
                    not_ready.is_none() && changes.iter().all(|c| c.path == "instances");
                let new_revision = not_ready.is_some()
                    || changes
                        .iter()
                        .any(|c| c.path != "instances" && !c.path.starts_with("labels"));
                let live_count = live
                    .pointer("/scaling/manualInstanceCount")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let starts_instances = new_revision || live_count < u64::from(worker.instances);
                let body = service::typed_body(match &not_ready {
                    Some(_) => service::redeploy_body(live, &desired),
                    None => merge_into_live(live, &desired),
                });
                b.push(Step {
                    changes,
                    reason: not_ready
                        .map(|why| format!("{}; apply redeploys it", why.trim_end_matches('.'))),
                    adopted: !service::is_marked(live),
                    depends_on,
                    ..Step::new(
                        address.clone(),
                        Action::Update,
                        Op::UpsertWorkerPool {
                            name: worker.pool_name(),
                            body: Box::new(body),
                            count_only,
                            wait_online: wait_online && starts_instances,
                            work_pool: b.spec.work_pool.name.clone(),
                        },
                    )
                });
            }
        }
    }
    if let Some(live) = &b.observed.service {
        let service_address = addr::service(worker.service.as_str());
        if !service::is_marked(live) {
            // Not ours to delete (made by hand): kept, and listed as such.
            b.adopted.push(service_address);
            return;
        }
        let depends_on = b.deps(&[address]);
        b.push(Step {
            reason: Some(format!(
                "worker.kind is worker-pool: deleted once worker pool {}'s worker is ONLINE",
                worker.pool_name()
            )),
            depends_on,
            ..Step::new(
                service_address,
                Action::Delete,
                Op::DeleteService {
                    name: worker.service.clone(),
                },
            )
        });
    }
}

/// Deletes the plan's worker pool (destroy). Only `kind: worker-pool` plans observe a pool, so
/// a plan moved back to `kind: service` does not see (or delete) the pool it left.
pub(super) fn destroy(b: &mut Builder) {
    let Some(worker) = &b.spec.worker else { return };
    let Some(live) = &b.observed.worker_pool else {
        return;
    };
    let address = addr::worker_pool(worker.pool_name().as_str());
    if !service::is_marked(live) {
        b.adopted.push(address);
        return;
    }
    let depends_on = vec![];
    b.push(Step {
        depends_on,
        ..Step::new(
            address,
            Action::Delete,
            Op::DeleteWorkerPool {
                name: worker.pool_name(),
            },
        )
    });
}
