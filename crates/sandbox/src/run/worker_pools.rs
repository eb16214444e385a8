//! Cloud Run v2 worker pools (`projects.locations.workerPools`, run.v2.json): create, get, list,
//! patch (`updateMask`, `allowMissing`, `validateOnly`, `forceNewRevision`), delete (`etag`),
//! each a long-running operation as for services, and the IAM methods (in [`super::iam`]).
//!
//! `scaling.manualInstanceCount` is real: that many processes of the template's first
//! container run, each in its own network namespace with the Cloud Run environment of a worker
//! pool (`CLOUD_RUN_WORKER_POOL`, `CLOUD_RUN_WORKER_POOL_REVISION`; no `PORT` and no probe, since
//! a worker pool serves no requests: <https://cloud.google.com/run/docs/container-contract>).
//! A change of count alone starts or stops instances of the same revision (no new revision, as
//! on Google: scaling is a worker-pool field, not a template field); a template change makes a
//! new revision, whose instances are started before the old ones are stopped.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::engine;
use super::handlers::{
    Req, absent, check_template, deploy_op, found, list_under, new_meta, new_op_name, not_found,
    project_number, respec, revision_outcome, revision_service_account, spec_only, typed,
    validate_id,
};
use super::records::{Meta, Revisions, Settled, Store};
use super::views;
use super::{RunState, lock};
use crate::error::{ApiError, ApiResult};
use crate::executor::{ServiceHandle, ServiceState};
use crate::operations::{self, Outcome};
use crate::state::AppState;

const POOL_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.WorkerPool";

/// A stored worker pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerPoolRec {
    /// Common metadata.
    pub meta: Meta,
    /// The client's WorkerPool JSON (spec fields only).
    pub body: Value,
    /// Its revisions (flattened, as for services); a revision is ready once all its instances
    /// started.
    #[serde(flatten)]
    pub revisions: Revisions,
}

impl WorkerPoolRec {
    /// The instance count asked for. An absent `manualInstanceCount` is taken as 1 (an
    /// assumption of the sandbox, not checked against Google: our client always sends it).
    pub fn desired(&self) -> usize {
        self.body
            .pointer("/scaling/manualInstanceCount")
            .and_then(Value::as_i64)
            .map_or(1, |n| n.max(0) as usize)
    }
}

/// The running instances of one pool: their revision and handles.
#[derive(Debug, Default)]
struct Running {
    revision: String,
    handles: Vec<ServiceHandle>,
}

/// Running instances of every pool, and a lock that serialises reconciles.
#[derive(Debug, Default)]
pub(super) struct Instances {
    running: Mutex<HashMap<String, Running>>,
    reconcile: tokio::sync::Mutex<()>,
}

impl RunState {
    fn take_pool(&self, name: &str) -> Running {
        lock(&self.inner.pools.running)
            .remove(name)
            .unwrap_or_default()
    }

    fn put_pool(&self, name: &str, running: Running) {
        lock(&self.inner.pools.running).insert(name.to_owned(), running);
    }

    /// Each instance of a pool: its revision, state and pid.
    pub fn pool_instances(&self, name: &str) -> Vec<(String, ServiceState)> {
        lock(&self.inner.pools.running)
            .get(name)
            .map(|r| {
                r.handles
                    .iter()
                    .map(|h| (r.revision.clone(), h.state()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops every instance of every pool (sandbox shutdown).
    pub(super) async fn stop_all_pools(&self) {
        let all: Vec<Running> = lock(&self.inner.pools.running)
            .drain()
            .map(|(_, r)| r)
            .collect();
        for r in all {
            for h in r.handles {
                h.stop().await;
            }
        }
    }
}

/// Serves `run.projects.locations.workerPools.{method}` (IAM methods go to `run::iam`).
pub(crate) async fn handle(req: &Req, method: &str) -> ApiResult<Value> {
    match method {
        "create" => create(req),
        "get" => get(req),
        "list" => list(req),
        "patch" => patch(req),
        "delete" => delete(req),
        other => Err(ApiError::new(
            501,
            "UNIMPLEMENTED",
            format!(
                "Method run.projects.locations.workerPools.{other} is not implemented by the sandbox."
            ),
        )),
    }
}

fn pool_name(req: &Req, id: &str) -> String {
    format!("{}/workerPools/{id}", req.parent().name())
}

fn id_param(req: &Req) -> String {
    req.call.params.get(2).cloned().unwrap_or_default()
}

/// The v2 wire form: the client's fields plus what Google fills in.
pub(super) fn view(state: &AppState, rec: &WorkerPoolRec) -> Value {
    let now = Utc::now();
    let number = project_number(state, &rec.meta.parent.project);
    let mut out = views::obj(&rec.body);
    views::common(&mut out, &rec.meta);
    let mut tpl = out.get("template").map(views::obj).unwrap_or_default();
    views::set_default(
        &mut tpl,
        "serviceAccount",
        json!(views::default_service_account(&number)),
    );
    views::fill_containers(&mut tpl, false);
    out.insert("template".into(), Value::Object(tpl));
    let mut scaling = out.get("scaling").map(views::obj).unwrap_or_default();
    views::set_default(&mut scaling, "manualInstanceCount", json!(rec.desired()));
    out.insert("scaling".into(), Value::Object(scaling));
    let split = json!([{"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": 100}]);
    views::set_default(&mut out, "instanceSplits", split);
    let ready = views::revision_status(&mut out, &rec.meta, &rec.revisions, now, |_| json!([]));
    if let Some(r) = ready {
        out.insert(
            "instanceSplitStatuses".into(),
            json!([{"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": 100,
                    "revision": format!("{}/revisions/{r}", rec.meta.name)}]),
        );
    }
    Value::Object(out)
}

fn validate_body(req: &Req, body: &Value) -> ApiResult<()> {
    check_template(req, body)?;
    if let Some(n) = body.pointer("/scaling/manualInstanceCount")
        && n.as_i64().is_none_or(|n| n < 0)
    {
        return Err(ApiError::invalid_argument(format!(
            "scaling.manual_instance_count: must be a non-negative integer, got {n}."
        )));
    }
    Ok(())
}

/// [`spec_only`] plus the output-only fields a WorkerPool has and a service does not.
fn pool_spec(body: &Value) -> Value {
    let mut out = spec_only(body);
    if let Some(map) = out.as_object_mut() {
        for k in ["instanceSplitStatuses", "threatDetectionEnabled"] {
            map.remove(k);
        }
    }
    out
}

fn dry_op(req: &Req, view: Value) -> Value {
    json!({"name": new_op_name(&req.parent()), "done": true, "response": typed(POOL_TYPE, view)})
}

fn create(req: &Req) -> ApiResult<Value> {
    req.require("run.workerpools.create")?;
    let id = req.param("workerPoolId").unwrap_or_default().to_owned();
    insert(req, &id)
}

fn insert(req: &Req, id: &str) -> ApiResult<Value> {
    // Worker pool ids: fewer than 50 characters (run.v2.json, `workerPools.create.workerPoolId`).
    validate_id("worker pool", id, 49)?;
    let body = pool_spec(&req.body);
    validate_body(req, &body)?;
    let name = pool_name(req, id);
    absent(&req.state.run.store().worker_pools, &name, id)?;
    let rec = WorkerPoolRec {
        meta: new_meta(req, name.clone(), id),
        body,
        revisions: Revisions::first(id),
    };
    let v = view(&req.state, &rec);
    let generation = rec.meta.generation;
    let key = name.clone();
    Ok(deploy_op(
        req,
        POOL_TYPE,
        v,
        |s| {
            s.worker_pools.insert(key, rec);
        },
        |op_name| spawn_reconcile(req.state.clone(), name, op_name, generation),
    ))
}

/// Checks `permission` on the pool `name` through the project's policy or the pool's own: a
/// role granted on one worker pool (`workerPools.setIamPolicy`) holds on that pool only, as on
/// Google (a resource's policy is inherited from the project and added to). A pool that does
/// not exist has no policy of its own.
fn require_on_pool(req: &Req, name: &str, permission: &str) -> ApiResult<()> {
    let own = {
        let store = req.state.run.store();
        store.worker_pools.get(name).and_then(|p| {
            store
                .policies
                .get(&super::iam::policy_key(name, &p.meta.uid))
                .cloned()
        })
    };
    let Some(own) = own else {
        return req.require(permission);
    };
    let project_policy = super::iam::project_policy(req);
    crate::authz::check(
        &req.state,
        &req.caller,
        permission,
        name,
        &[&project_policy, &own],
    )
}

fn get(req: &Req) -> ApiResult<Value> {
    let name = pool_name(req, &id_param(req));
    require_on_pool(req, &name, "run.workerpools.get")?;
    let rec = found(&req.state.run.store().worker_pools, &name)?;
    Ok(view(&req.state, &rec))
}

fn list(req: &Req) -> ApiResult<Value> {
    req.require("run.workerpools.list")?;
    list_under(
        req,
        "workerPools",
        |s| &s.worker_pools,
        |r| view(&req.state, r),
    )
}

/// Applies `updateMask` (AIP-134): each listed field path is copied from the request (or
/// removed when the request lacks it); `*` or no mask replaces the whole spec.
fn masked(current: &Value, incoming: &Value, mask: Option<&str>) -> ApiResult<Value> {
    let Some(mask) = mask.filter(|m| !m.trim().is_empty() && m.trim() != "*") else {
        return Ok(incoming.clone());
    };
    let mut out = current.clone();
    for path in mask.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parts: Vec<&str> = path.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(ApiError::invalid_argument(format!(
                "Invalid update mask path '{path}'."
            )));
        }
        let source = parts.iter().try_fold(incoming, |v, p| v.get(*p));
        set_path(&mut out, &parts, source.cloned());
    }
    Ok(out)
}

fn set_path(target: &mut Value, parts: &[&str], value: Option<Value>) {
    let Some((last, init)) = parts.split_last() else {
        return;
    };
    let mut cur = target;
    for p in init {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        cur = cur
            .as_object_mut()
            .map(|m| m.entry(p.to_string()).or_insert_with(|| json!({})))
            .expect("an object");
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Some(map) = cur.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(last.to_string(), v);
            }
            None => {
                map.remove(*last);
            }
        }
    }
}

fn check_etag(req: &Req, given: Option<&str>, current: &str) -> ApiResult<()> {
    match given.filter(|e| !e.is_empty()) {
        Some(e) if e.trim_matches('"') != current.trim_matches('"') => Err(ApiError::aborted(
            "The etag does not match the current version of the resource: read it again and retry.",
        )),
        _ => Ok(()),
    }
    .inspect_err(|_| tracing::debug!(name = %req.call.id, "etag mismatch"))
}

fn patch(req: &Req) -> ApiResult<Value> {
    let id = id_param(req);
    let name = pool_name(req, &id);
    let current = req.state.run.store().worker_pools.get(&name).cloned();
    let Some(current) = current else {
        if req.flag("allowMissing") {
            req.require("run.workerpools.create")?;
            return insert(req, &id);
        }
        req.require("run.workerpools.update")?;
        return Err(not_found(&name));
    };
    require_on_pool(req, &name, "run.workerpools.update")?;
    check_etag(
        req,
        req.body.get("etag").and_then(Value::as_str),
        &current.meta.etag,
    )?;
    let body = masked(
        &current.body,
        &pool_spec(&req.body),
        req.param("updateMask"),
    )?;
    validate_body(req, &body)?;
    let mut next = current.clone();
    respec(req, &id, &mut next, body);
    let v = view(&req.state, &next);
    let generation = next.meta.generation;
    let key = name.clone();
    let write = |s: &mut Store| {
        if let Some(rec) = s.worker_pools.get_mut(&key) {
            *rec = next;
        }
    };
    Ok(deploy_op(req, POOL_TYPE, v, write, |op_name| {
        spawn_reconcile(req.state.clone(), name, op_name, generation)
    }))
}

fn delete(req: &Req) -> ApiResult<Value> {
    req.require("run.workerpools.delete")?;
    let name = pool_name(req, &id_param(req));
    let rec = found(&req.state.run.store().worker_pools, &name)?;
    check_etag(req, req.param("etag"), &rec.meta.etag)?;
    let mut v = view(&req.state, &rec);
    v["deleteTime"] = json!(views::ts(Utc::now()));
    if req.flag("validateOnly") {
        return Ok(dry_op(req, v));
    }
    req.state.run.store().worker_pools.remove(&name);
    super::iam::forget(req, &name, &rec.meta.uid);
    req.state.mark_dirty();
    let op_name = new_op_name(&req.parent());
    let typed_view = typed(POOL_TYPE, v);
    let op = operations::create(&req.state, &op_name, Some(typed_view.clone()), None);
    // The operation is done once the instances have stopped (SIGTERM, then SIGKILL after the
    // grace), so a caller that waits for it knows no worker of the pool runs any more.
    let state = req.state.clone();
    tokio::spawn(async move {
        let _serial = state.run.inner.pools.reconcile.lock().await;
        let running = state.run.take_pool(&name);
        for h in running.handles {
            h.stop().await;
        }
        operations::finish(&state, &op_name, Outcome::Response(typed_view));
    });
    Ok(op)
}

/// Brings the running instances of `name` to its spec in the background and finishes `op_name`.
fn spawn_reconcile(state: AppState, name: String, op_name: String, generation: i64) {
    tokio::spawn(async move {
        let outcome = {
            let _serial = state.run.inner.pools.reconcile.lock().await;
            reconcile(&state, &name).await
        };
        let v = {
            let mut store = state.run.store();
            let Some(rec) = store.worker_pools.get_mut(&name) else {
                // Deleted meanwhile: the delete's operation reports.
                operations::finish(
                    &state,
                    &op_name,
                    Outcome::from_error(&ApiError::aborted("The worker pool was deleted.")),
                );
                return;
            };
            // A newer change superseded this one; it reports on its own operation.
            if rec.meta.generation == generation {
                rec.revisions.settle(outcome.as_ref().map(|_| ()));
            }
            let rec = rec.clone();
            drop(store);
            view(&state, &rec)
        };
        state.mark_dirty();
        let result = revision_outcome(outcome.as_ref().map(|_| ()), typed(POOL_TYPE, v));
        operations::finish(&state, &op_name, result);
    });
}

/// Starts or stops instances so that the newest revision runs `manualInstanceCount` of them.
async fn reconcile(state: &AppState, name: &str) -> Result<(), Settled> {
    let Some(rec) = state.run.store().worker_pools.get(name).cloned() else {
        return Ok(());
    };
    let revision = rec.revisions.latest_created_revision.clone();
    let fail = |reason: &str, message: String| Settled::Failed {
        reason: reason.into(),
        message,
    };
    let template = &rec.body["template"];
    let container = template["containers"][0].clone();
    let project = rec.meta.parent.project.clone();
    let sa = revision_service_account(state, &project, template);
    let image = container["image"].as_str().unwrap_or_default().to_owned();
    if state
        .run
        .executor()
        .config()
        .images
        .rule_for(&image)
        .is_none()
    {
        return Err(fail(
            "CONTAINER_MISSING",
            format!("Image '{image}' not found."),
        ));
    }
    let mut running = state.run.take_pool(name);
    let old_revision = running.revision.clone();
    let old = if running.revision == revision {
        Vec::new()
    } else {
        std::mem::take(&mut running.handles)
    };
    running.revision = revision.clone();
    let desired = rec.desired();
    while running.handles.len() > desired {
        if let Some(h) = running.handles.pop() {
            h.stop().await;
        }
    }
    let logs = state.run.logs_for(name);
    let mut error = None;
    while running.handles.len() < desired {
        let env = vec![
            ("CLOUD_RUN_WORKER_POOL".to_owned(), rec.meta.id.clone()),
            (
                "CLOUD_RUN_WORKER_POOL_REVISION".to_owned(),
                revision.clone(),
            ),
        ];
        let mut launch = match engine::prepare(state, &project, &container, &sa, env).await {
            Ok(l) => l,
            Err(m) => {
                error = Some(fail(
                    "REVISION_FAILED",
                    format!("Revision '{revision}' is not ready. {m}"),
                ));
                break;
            }
        };
        let instance = format!("{name}/instances/{}", running.handles.len());
        launch.metadata = Some(engine::metadata_identity(
            state,
            &rec.meta.parent,
            &sa,
            &instance,
        ));
        match state.run.executor().start_instance(launch, logs.clone()) {
            Ok(h) => {
                if let ServiceState::Failed { message } =
                    h.settled(std::time::Duration::from_secs(5)).await
                {
                    error = Some(fail(
                        "REVISION_FAILED",
                        format!("Revision '{revision}' could not start an instance: {message}"),
                    ));
                    break;
                }
                running.handles.push(h);
            }
            Err(e) => {
                error = Some(fail(
                    "REVISION_FAILED",
                    format!("Revision '{revision}' could not start an instance: {e}"),
                ));
                break;
            }
        }
    }
    match error {
        // The old revision keeps running when the new one cannot start, as on Google (the
        // last serving revision stays).
        Some(err) => {
            if old.is_empty() {
                // The same revision: what already runs keeps running.
                state.run.put_pool(name, running);
            } else {
                for h in running.handles {
                    h.stop().await;
                }
                state.run.put_pool(
                    name,
                    Running {
                        revision: old_revision,
                        handles: old,
                    },
                );
            }
            Err(err)
        }
        None => {
            state.run.put_pool(name, running);
            for h in old {
                h.stop().await;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_mask_copies_only_listed_paths() {
        let current = json!({"labels": {"a": "1"}, "scaling": {"manualInstanceCount": 1},
                             "template": {"containers": [{"image": "x"}]}});
        let incoming = json!({"scaling": {"manualInstanceCount": 3}, "labels": {"b": "2"}});
        let out = masked(&current, &incoming, Some("scaling.manualInstanceCount")).unwrap();
        assert_eq!(out["scaling"]["manualInstanceCount"], 3);
        assert_eq!(out["labels"], json!({"a": "1"}));
        assert_eq!(out["template"], current["template"]);
        let out = masked(&current, &incoming, Some("labels,template")).unwrap();
        assert_eq!(out["labels"], json!({"b": "2"}));
        assert!(out.get("template").is_none());
        assert_eq!(masked(&current, &incoming, None).unwrap(), incoming);
        assert!(masked(&current, &incoming, Some("scaling..x")).is_err());
    }
}
