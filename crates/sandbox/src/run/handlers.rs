//! Request parsing, authorization and the Cloud Run v2 methods.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde_json::{Value, json};

use super::engine;
use super::records::{
    ExecRec, JobRec, Meta, Parent, Revisions, ServiceRec, Settled, Store, TaskRec, TaskState,
};
use super::views;
use crate::auth::Caller;
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::methods::MethodCall;
use crate::operations::{self, Outcome};
use crate::state::AppState;

const SERVICE_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Service";
const JOB_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Job";
const EXECUTION_TYPE: &str = "type.googleapis.com/google.cloud.run.v2.Execution";

/// One parsed Run call.
pub(crate) struct Req {
    pub state: AppState,
    pub caller: Caller,
    pub call: MethodCall,
    pub query: Vec<(String, String)>,
    pub body: Value,
}

impl Req {
    pub fn param(&self, name: &str) -> Option<&str> {
        crate::google::query_param(&self.query, name)
    }

    pub fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    /// The same caller and method on the resource `{project}/{location}/{id}` with `query`
    /// and `body`: how the v1 APIs hand a call to the v2 handlers.
    pub(super) fn retarget(
        &self,
        location: &str,
        id: &str,
        query: Vec<(String, String)>,
        body: Value,
    ) -> Req {
        Req {
            state: self.state.clone(),
            caller: self.caller.clone(),
            call: MethodCall {
                id: self.call.id,
                params: vec![self.p(0).to_owned(), location.to_owned(), id.to_owned()],
            },
            query,
            body,
        }
    }

    fn p(&self, i: usize) -> &str {
        self.call
            .params
            .get(i)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The project and location; a project number is turned into its id so that names agree
    /// whichever form the caller used (v1 namespaces are often numbers).
    pub fn parent(&self) -> Parent {
        let project = self
            .state
            .read()
            .project(self.p(0))
            .map(|p| p.id.clone())
            .unwrap_or_else(|| self.p(0).to_owned());
        Parent {
            project,
            location: self.p(1).to_owned(),
        }
    }

    pub fn require(&self, permission: &str) -> ApiResult<()> {
        authz::require(&self.state, &self.caller, self.p(0), permission)
    }
}

/// Entry point for every `/v2/...` and `/apis/run.googleapis.com/...` request.
pub(crate) async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    // Cloud Build, Artifact Registry and builds:submit share these path prefixes.
    if crate::builds::claims(request.method().as_str(), request.uri().path()) {
        return crate::google::dispatch(State(state), request).await;
    }
    match handle(state, request).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn handle(state: AppState, request: Request) -> ApiResult<Value> {
    // v1 and v2 share method ids for `projects.locations.services.*`; the path tells them
    // apart. The regional host (`us-central1-sandbox.localhost`) names a v1 call's region.
    let v1_path = request.uri().path().starts_with("/v1/");
    let host_region = request
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(crate::hosts::region_of_host);
    let crate::google::Decoded {
        call,
        caller,
        query,
        body,
    } = crate::google::decode(&state, request).await?;
    let req = Req {
        state,
        caller,
        call,
        query,
        body,
    };
    let id = req.call.id.strip_prefix("run.").unwrap_or_default();
    if let Some(method) = id
        .strip_prefix("projects.locations.")
        .filter(|m| m.ends_with("IamPolicy") || m.ends_with("IamPermissions"))
    {
        return super::iam::handle(&req, method);
    }
    if id == "projects.locations.list" {
        return super::knative::locations(&req);
    }
    if id.starts_with("namespaces.services.")
        || id.starts_with("namespaces.revisions.")
        || (v1_path && id.starts_with("projects.locations.services."))
    {
        return super::knative::handle(&req, host_region).await;
    }
    match id {
        "projects.locations.services.create" => service_create(&req).await,
        "projects.locations.services.get" => service_get(&req),
        "projects.locations.services.list" => service_list(&req),
        "projects.locations.services.patch" => service_patch(&req).await,
        "projects.locations.services.delete" => service_delete(&req),
        "projects.locations.jobs.create" => job_create(&req),
        "projects.locations.jobs.get" => job_get(&req),
        "projects.locations.jobs.list" => job_list(&req),
        "projects.locations.jobs.patch" => job_patch(&req),
        "projects.locations.jobs.delete" => job_delete(&req),
        "projects.locations.jobs.run" => job_run(&req).map(|(op, _)| op),
        "projects.locations.jobs.executions.get" => exec_get(&req),
        "projects.locations.jobs.executions.list" => exec_list(&req),
        "projects.locations.jobs.executions.delete" => exec_delete(&req),
        "projects.locations.jobs.executions.cancel" => exec_cancel(&req),
        "projects.locations.jobs.executions.tasks.get" => task_get(&req),
        "projects.locations.jobs.executions.tasks.list" => task_list(&req),
        m if m.starts_with("projects.locations.workerPools.") => {
            super::worker_pools::handle(&req, &m["projects.locations.workerPools.".len()..]).await
        }
        "projects.locations.operations.get" => op_get(&req),
        "projects.locations.operations.list" => op_list(&req),
        "projects.locations.operations.delete" => op_delete(&req),
        "projects.locations.operations.wait" => op_wait(&req).await,
        other if other.starts_with("namespaces.") => super::v1::handle(&req),
        other => Err(ApiError::new(
            501,
            "UNIMPLEMENTED",
            format!("Method run.{other} is not implemented by the sandbox."),
        )),
    }
}

// ---------- shared helpers ----------

pub(crate) fn project_number(state: &AppState, project: &str) -> String {
    state
        .read()
        .project(project)
        .map(|p| p.number.clone())
        .unwrap_or_else(|| project.to_owned())
}

/// The service account a revision template runs as: its own `serviceAccount`, else the
/// project's default compute account (as on Google).
pub(super) fn revision_service_account(
    state: &AppState,
    project: &str,
    template: &Value,
) -> String {
    template
        .get("serviceAccount")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| views::default_service_account(&project_number(state, project)))
}

pub(super) fn etag() -> String {
    format!("\"{}\"", uuid::Uuid::new_v4().simple())
}

pub(crate) fn new_meta(req: &Req, name: String, id: &str) -> Meta {
    let now = Utc::now();
    Meta {
        name,
        parent: req.parent(),
        id: id.to_owned(),
        uid: uuid::Uuid::new_v4().to_string(),
        generation: 1,
        create_time: now,
        update_time: now,
        creator: req.caller.email.clone(),
        last_modifier: req.caller.email.clone(),
        etag: etag(),
        settle_at: now + op_delay(&req.state),
    }
}

fn op_delay(state: &AppState) -> chrono::Duration {
    chrono::Duration::from_std(state.settings().op_delay)
        .unwrap_or_else(|_| chrono::Duration::zero())
}

pub(super) fn touch(meta: &mut Meta, req: &Req) {
    let now = Utc::now();
    meta.generation += 1;
    meta.update_time = now;
    meta.last_modifier = req.caller.email.clone();
    meta.etag = etag();
    meta.settle_at = now + op_delay(&req.state);
}

/// Applies a new spec `new` to a service or worker pool (`id`): a new generation and etag
/// ([`touch`]), and a new revision when the template changed or `forceNewRevision` asks for
/// one (a change of anything else, such as a worker pool's scaling, keeps the revision).
pub(super) fn respec(req: &Req, id: &str, rec: &mut impl Revisioned, new: Value) {
    let (meta, body, revisions) = rec.parts();
    let new_revision = body.get("template") != new.get("template") || req.flag("forceNewRevision");
    *body = new;
    touch(meta, req);
    revisions.respec(id, new_revision);
}

/// A stored resource that makes revisions: a service or a worker pool.
pub(super) trait Revisioned {
    /// Its metadata, spec and revisions, which a new spec changes together.
    fn parts(&mut self) -> (&mut Meta, &mut Value, &mut Revisions);
}

impl Revisioned for ServiceRec {
    fn parts(&mut self) -> (&mut Meta, &mut Value, &mut Revisions) {
        (&mut self.meta, &mut self.body, &mut self.revisions)
    }
}

impl Revisioned for super::worker_pools::WorkerPoolRec {
    fn parts(&mut self) -> (&mut Meta, &mut Value, &mut Revisions) {
        (&mut self.meta, &mut self.body, &mut self.revisions)
    }
}

/// How a service's or worker pool's deploy Operation ends: the resource once its newest
/// revision is ready, else the revision's failure.
pub(super) fn revision_outcome(outcome: Result<(), &Settled>, response: Value) -> Outcome {
    match outcome {
        Ok(()) => Outcome::Response(response),
        Err(Settled::Failed { message, .. }) => {
            Outcome::from_error(&ApiError::failed_precondition(message.clone()))
        }
        Err(_) => Outcome::from_error(&ApiError::internal("Revision failed.")),
    }
}

pub(super) fn new_op_name(parent: &Parent) -> String {
    format!("{}/operations/{}", parent.name(), uuid::Uuid::new_v4())
}

/// The Operation of a call that is over once answered (deletes, cancels): Google's carries the
/// resource both as metadata and as response.
fn resource_op(req: &Req, op_name: &str, v: Value) -> Value {
    operations::create(
        &req.state,
        op_name,
        Some(v.clone()),
        Some(Outcome::Response(v)),
    )
}

/// The Operation of a write that a background task finishes (service and worker pool creates,
/// pool updates), whose resource will be `view` (of `kind`): with `validateOnly` a done one and
/// nothing changes; else `write` changes the store and `start` gets the running Operation's
/// name.
pub(super) fn deploy_op(
    req: &Req,
    kind: &str,
    view: Value,
    write: impl FnOnce(&mut Store),
    start: impl FnOnce(String),
) -> Value {
    let op_name = new_op_name(&req.parent());
    if req.flag("validateOnly") {
        return json!({"name": op_name, "done": true, "response": typed(kind, view)});
    }
    write(&mut req.state.run.store());
    req.state.mark_dirty();
    let op = operations::create(&req.state, &op_name, Some(typed(kind, view)), None);
    start(op_name);
    op
}

pub(super) fn typed(kind: &str, view: Value) -> Value {
    let mut v = view;
    if let Some(map) = v.as_object_mut() {
        map.insert("@type".into(), json!(kind));
    }
    v
}

/// Resource ids: lowercase letters, digits and hyphens, starting with a letter, not ending
/// with a hyphen.
pub(super) fn validate_id(kind: &str, id: &str, max: usize) -> ApiResult<()> {
    let ok = crate::methods::is_kebab_id(id, max);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "Invalid {kind} id '{id}': must use only lowercase alphanumeric characters and dashes, \
             start with a letter, not end with a dash, and be at most {max} characters."
        )))
    }
}

pub(super) fn containers(template: &Value) -> ApiResult<Vec<Value>> {
    let list = template
        .get("containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if list.is_empty() {
        return Err(ApiError::invalid_argument(
            "template.containers: must specify at least one container.",
        ));
    }
    for c in &list {
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(ApiError::invalid_argument(
                "template.containers[0].image: is required.",
            ));
        }
    }
    Ok(list)
}

pub(super) fn act_as(req: &Req, template: &Value) -> ApiResult<()> {
    match template.get("serviceAccount").and_then(Value::as_str) {
        // The project's default compute identity exists on Google without being created (and
        // reads show it, so clients echo it back): `actAs` on it comes from the project policy.
        Some(sa) if sa == views::default_service_account(&project_number(&req.state, req.p(0))) => {
            req.require("iam.serviceAccounts.actAs")
        }
        Some(sa) if !sa.is_empty() => authz::require_act_as(&req.state, &req.caller, req.p(0), sa),
        _ => Ok(()),
    }
}

/// What a service's or worker pool's `template` must hold on create and update: containers
/// with images, and a runtime identity the caller may act as.
pub(super) fn check_template(req: &Req, body: &Value) -> ApiResult<()> {
    let template = body.get("template").unwrap_or(&Value::Null);
    containers(template)?;
    act_as(req, template)
}

/// Drops output-only fields a client echoed back, so stored bodies hold only the spec.
pub(super) fn spec_only(body: &Value) -> Value {
    let mut out = body.as_object().cloned().unwrap_or_default();
    for k in [
        "name",
        "uid",
        "generation",
        "createTime",
        "updateTime",
        "deleteTime",
        "expireTime",
        "creator",
        "lastModifier",
        "observedGeneration",
        "terminalCondition",
        "conditions",
        "reconciling",
        "latestReadyRevision",
        "latestCreatedRevision",
        "trafficStatuses",
        "uri",
        "urls",
        "etag",
        "executionCount",
        "latestCreatedExecution",
        "satisfiesPzs",
    ] {
        out.remove(k);
    }
    Value::Object(out)
}

pub(super) fn paginate(req: &Req, items: Vec<Value>) -> ApiResult<(Vec<Value>, Option<String>)> {
    let size = match req.param("pageSize") {
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| ApiError::invalid_argument("Invalid pageSize."))?,
        None => 100,
    };
    let size = if size == 0 { 100 } else { size };
    let start = match req.param("pageToken").filter(|t| !t.is_empty()) {
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| ApiError::invalid_argument("Invalid page token."))?,
        None => 0,
    };
    let next = (start + size < items.len()).then(|| (start + size).to_string());
    Ok((items.into_iter().skip(start).take(size).collect(), next))
}

pub(super) fn list_response(field: &str, items: Vec<Value>, next: Option<String>) -> Value {
    let mut out = json!({});
    if !items.is_empty() {
        out[field] = Value::Array(items);
    }
    if let Some(n) = next {
        out["nextPageToken"] = json!(n);
    }
    out
}

pub(super) fn not_found(name: &str) -> ApiError {
    ApiError::not_found(format!("Resource '{name}' was not found"))
}

/// Google's ALREADY_EXISTS for a create whose resource `name` (short id `id`) is stored.
pub(super) fn absent<R>(records: &BTreeMap<String, R>, name: &str, id: &str) -> ApiResult<()> {
    if records.contains_key(name) {
        return Err(ApiError::already_exists(format!(
            "Resource '{id}' already exists."
        )));
    }
    Ok(())
}

/// A stored record by its full name, or Google's NOT_FOUND naming it.
pub(super) fn found<R: Clone>(records: &BTreeMap<String, R>, name: &str) -> ApiResult<R> {
    records.get(name).cloned().ok_or_else(|| not_found(name))
}

/// The records whose full name starts with `prefix` (one parent's collection, such as
/// `projects/p/locations/r/jobs/`), in name order.
pub(super) fn under<R: Clone + Record>(records: &BTreeMap<String, R>, prefix: &str) -> Vec<R> {
    records
        .values()
        .filter(|r| r.meta().name.starts_with(prefix))
        .cloned()
        .collect()
}

/// A `list` call's page: the views of the records of `collection` (a field of the Run store
/// and of the answer alike) under the request's parent, in name order. The views are made
/// after the store is unlocked (a view may read the sandbox state).
pub(super) fn list_under<R: Clone + Record>(
    req: &Req,
    collection: &str,
    records: impl FnOnce(&Store) -> &BTreeMap<String, R>,
    view: impl Fn(&R) -> Value,
) -> ApiResult<Value> {
    let prefix = format!("{}/{collection}/", req.parent().name());
    let recs = under(records(&req.state.run.store()), &prefix);
    let (page, next) = paginate(req, recs.iter().map(view).collect())?;
    Ok(list_response(collection, page, next))
}

/// A stored Run resource: its common metadata (full name, parent, short id).
pub(super) trait Record {
    fn meta(&self) -> &Meta;
}

impl Record for ServiceRec {
    fn meta(&self) -> &Meta {
        &self.meta
    }
}

impl Record for JobRec {
    fn meta(&self) -> &Meta {
        &self.meta
    }
}

impl Record for ExecRec {
    fn meta(&self) -> &Meta {
        &self.meta
    }
}

impl Record for super::worker_pools::WorkerPoolRec {
    fn meta(&self) -> &Meta {
        &self.meta
    }
}

// ---------- services ----------

pub(crate) fn service_name(req: &Req, id: &str) -> String {
    format!("{}/services/{id}", req.parent().name())
}

pub(crate) fn service_view(req: &Req, rec: &ServiceRec) -> Value {
    views::service(
        rec,
        &project_number(&req.state, &rec.meta.parent.project),
        Utc::now(),
    )
}

async fn service_create(req: &Req) -> ApiResult<Value> {
    req.require("run.services.create")?;
    let id = req.param("serviceId").unwrap_or_default().to_owned();
    validate_service_id(&id)?;
    create_service(req, &id).await
}

/// Service ids: under 50 characters, lowercase letters, digits and hyphens.
pub(crate) fn validate_service_id(id: &str) -> ApiResult<()> {
    validate_id("service", id, 49)
}

/// Stores a new service from the v2 spec in `req.body` (v1 and v2 share this) and starts its
/// revision; returns the Operation.
pub(crate) async fn create_service(req: &Req, id: &str) -> ApiResult<Value> {
    let body = spec_only(&req.body);
    check_template(req, &body)?;
    let name = service_name(req, id);
    absent(&req.state.run.store().services, &name, id)?;
    let rec = ServiceRec {
        meta: new_meta(req, name.clone(), id),
        body,
        revisions: Revisions::first(id),
        // Google's is `https://{id}-{hash}-{region code}.a.run.app`, which no host here
        // resolves; the sandbox's URL reaches the container (`run::invoke`).
        uri: super::invoke::service_uri(&req.state.url, &req.parent().project, req.p(1), id),
    };
    let view = service_view(req, &rec);
    let key = name.clone();
    Ok(deploy_op(
        req,
        SERVICE_TYPE,
        view,
        |s| {
            s.services.insert(key, rec);
        },
        |op_name| engine::deploy_service(req.state.clone(), name, op_name),
    ))
}

fn service_get(req: &Req) -> ApiResult<Value> {
    req.require("run.services.get")?;
    let name = service_name(req, req.p(2));
    let store = req.state.run.store();
    let rec = store.services.get(&name).ok_or_else(|| not_found(&name))?;
    Ok(service_view(req, rec))
}

fn service_list(req: &Req) -> ApiResult<Value> {
    req.require("run.services.list")?;
    list_under(req, "services", |s| &s.services, |r| service_view(req, r))
}

/// Replaces a service's spec from the v2 body in `req.body` (v2 patch, v1 replaceService).
pub(crate) async fn service_patch(req: &Req) -> ApiResult<Value> {
    let id = req.p(2).to_owned();
    let name = service_name(req, &id);
    let exists = req.state.run.store().services.contains_key(&name);
    if !exists {
        if req.flag("allowMissing") {
            req.require("run.services.create")?;
            validate_id("service", &id, 49)?;
            return create_service(req, &id).await;
        }
        req.require("run.services.update")?;
        return Err(not_found(&name));
    }
    req.require("run.services.update")?;
    let body = spec_only(&req.body);
    check_template(req, &body)?;
    let op_name = new_op_name(&req.parent());
    let view = {
        let mut store = req.state.run.store();
        let rec = store
            .services
            .get_mut(&name)
            .ok_or_else(|| not_found(&name))?;
        let mut next = rec.clone();
        respec(req, &id, &mut next, body);
        let view = service_view(req, &next);
        if !req.flag("validateOnly") {
            *rec = next;
        }
        view
    };
    if req.flag("validateOnly") {
        return Ok(json!({"name": op_name, "done": true, "response": typed(SERVICE_TYPE, view)}));
    }
    req.state.mark_dirty();
    let op = operations::create(&req.state, &op_name, Some(typed(SERVICE_TYPE, view)), None);
    engine::deploy_service(req.state.clone(), name, op_name);
    Ok(op)
}

pub(crate) fn service_delete(req: &Req) -> ApiResult<Value> {
    req.require("run.services.delete")?;
    let name = service_name(req, req.p(2));
    let view = {
        let store = req.state.run.store();
        let rec = store.services.get(&name).ok_or_else(|| not_found(&name))?;
        let mut v = service_view(req, rec);
        v["deleteTime"] = json!(views::ts(Utc::now()));
        v
    };
    let op_name = new_op_name(&req.parent());
    if req.flag("validateOnly") {
        return Ok(json!({"name": op_name, "done": true, "response": typed(SERVICE_TYPE, view)}));
    }
    let removed = req.state.run.store().services.remove(&name);
    if let Some(rec) = removed {
        super::iam::forget(req, &name, &rec.meta.uid);
    }
    req.state.mark_dirty();
    if let Some(handle) = req.state.run.take_service(&name) {
        tokio::spawn(handle.stop());
    }
    let v = typed(SERVICE_TYPE, view);
    Ok(resource_op(req, &op_name, v))
}

// ---------- jobs ----------

pub(crate) fn job_name(parent: &Parent, id: &str) -> String {
    format!("{}/jobs/{id}", parent.name())
}

pub(crate) fn job_view(state: &AppState, rec: &JobRec) -> Value {
    let mut v = views::job(
        rec,
        &project_number(state, &rec.meta.parent.project),
        Utc::now(),
    );
    if let Some(latest) = &rec.latest_execution
        && let Some(exec) = state.run.store().executions.get(latest)
    {
        v["latestCreatedExecution"] = views::execution_ref(exec);
    } else {
        v["latestCreatedExecution"] = views::no_execution_ref();
    }
    v
}

/// What a job settles to: `CONTAINER_MISSING` when an image maps to nothing.
pub(crate) fn job_settled(state: &AppState, body: &Value) -> Settled {
    let task = &body["template"]["template"];
    for c in task
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
        if !state.run.executor().knows(image) {
            return Settled::Failed {
                reason: "CONTAINER_MISSING".into(),
                message: format!("Image '{image}' not found."),
            };
        }
    }
    Settled::Ready
}

/// Stores a new job (v1 and v2 share this); returns its record.
pub(crate) fn insert_job(req: &Req, id: &str, body: Value, dry_run: bool) -> ApiResult<JobRec> {
    validate_id("job", id, 63)?;
    let task = body["template"]["template"].clone();
    containers(&task)?;
    act_as(req, &task)?;
    let name = job_name(&req.parent(), id);
    absent(&req.state.run.store().jobs, &name, id)?;
    let rec = JobRec {
        meta: new_meta(req, name.clone(), id),
        settled: job_settled(&req.state, &body),
        body,
        execution_count: 0,
        latest_execution: None,
    };
    if !dry_run {
        req.state.run.store().jobs.insert(name, rec.clone());
        req.state.mark_dirty();
    }
    Ok(rec)
}

fn job_outcome(view: &Value, settled: &Settled) -> Outcome {
    match settled {
        Settled::Failed { message, .. } => {
            Outcome::from_error(&ApiError::new(404, "NOT_FOUND", message.clone()))
        }
        _ => Outcome::Response(typed(JOB_TYPE, view.clone())),
    }
}

/// The Operation of a job create or patch: with `validateOnly` (`dry`) a done one for a job
/// that was not stored; else one answering the job, or failing with its settle error.
fn job_write_op(req: &Req, rec: &JobRec, dry: bool) -> Value {
    let view = job_view(&req.state, rec);
    let op_name = new_op_name(&req.parent());
    if dry {
        return json!({"name": op_name, "done": true, "response": typed(JOB_TYPE, view)});
    }
    let outcome = job_outcome(&view, &rec.settled);
    operations::create(
        &req.state,
        &op_name,
        Some(typed(JOB_TYPE, view)),
        Some(outcome),
    )
}

fn job_create(req: &Req) -> ApiResult<Value> {
    req.require("run.jobs.create")?;
    let id = req.param("jobId").unwrap_or_default().to_owned();
    let rec = insert_job(req, &id, spec_only(&req.body), req.flag("validateOnly"))?;
    Ok(job_write_op(req, &rec, req.flag("validateOnly")))
}

fn job_get(req: &Req) -> ApiResult<Value> {
    req.require("run.jobs.get")?;
    let name = job_name(&req.parent(), req.p(2));
    let rec = found(&req.state.run.store().jobs, &name)?;
    Ok(job_view(&req.state, &rec))
}

fn job_list(req: &Req) -> ApiResult<Value> {
    req.require("run.jobs.list")?;
    list_under(req, "jobs", |s| &s.jobs, |r| job_view(&req.state, r))
}

/// Replaces a job's spec (v2 patch, v1 replaceJob).
pub(crate) fn replace_job(req: &Req, id: &str, body: Value, dry_run: bool) -> ApiResult<JobRec> {
    let name = job_name(&req.parent(), id);
    let task = body["template"]["template"].clone();
    containers(&task)?;
    act_as(req, &task)?;
    let settled = job_settled(&req.state, &body);
    let mut store = req.state.run.store();
    let rec = store.jobs.get_mut(&name).ok_or_else(|| not_found(&name))?;
    let mut next = rec.clone();
    next.body = body;
    next.settled = settled;
    touch(&mut next.meta, req);
    if !dry_run {
        *rec = next.clone();
        req.state.mark_dirty();
    }
    Ok(next)
}

fn job_patch(req: &Req) -> ApiResult<Value> {
    let id = req.p(2).to_owned();
    let name = job_name(&req.parent(), &id);
    let dry = req.flag("validateOnly");
    let exists = req.state.run.store().jobs.contains_key(&name);
    let rec = if exists {
        req.require("run.jobs.update")?;
        replace_job(req, &id, spec_only(&req.body), dry)?
    } else if req.flag("allowMissing") {
        req.require("run.jobs.create")?;
        insert_job(req, &id, spec_only(&req.body), dry)?
    } else {
        req.require("run.jobs.update")?;
        return Err(not_found(&name));
    };
    Ok(job_write_op(req, &rec, dry))
}

/// Removes a job and its executions, cancelling running ones; returns the last view.
pub(crate) fn remove_job(req: &Req, id: &str) -> ApiResult<Value> {
    let name = job_name(&req.parent(), id);
    let rec = found(&req.state.run.store().jobs, &name)?;
    let view = job_view(&req.state, &rec);
    let prefix = format!("{name}/executions/");
    let mut store = req.state.run.store();
    store.jobs.remove(&name);
    let execs: Vec<String> = store
        .executions
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .cloned()
        .collect();
    for e in execs {
        store.executions.remove(&e);
        req.state.run.cancel(&e);
    }
    req.state.mark_dirty();
    Ok(view)
}

fn job_delete(req: &Req) -> ApiResult<Value> {
    req.require("run.jobs.delete")?;
    let op_name = new_op_name(&req.parent());
    if req.flag("validateOnly") {
        let name = job_name(&req.parent(), req.p(2));
        let rec = found(&req.state.run.store().jobs, &name)?;
        let view = job_view(&req.state, &rec);
        return Ok(json!({"name": op_name, "done": true, "response": typed(JOB_TYPE, view)}));
    }
    let v = typed(JOB_TYPE, remove_job(req, req.p(2))?);
    Ok(resource_op(req, &op_name, v))
}

/// Starts an execution of job `p(2)` (v1 and v2); returns the Operation and the execution name.
pub(crate) fn job_run(req: &Req) -> ApiResult<(Value, String)> {
    let overrides = req.body.get("overrides").filter(|o| !o.is_null());
    req.require(if overrides.is_some() {
        "run.jobs.runWithOverrides"
    } else {
        "run.jobs.run"
    })?;
    let id = req.p(2).to_owned();
    let name = job_name(&req.parent(), &id);
    let job = found(&req.state.run.store().jobs, &name)?;
    if Utc::now() < job.meta.settle_at || job.settled != Settled::Ready {
        return Err(ApiError::failed_precondition(format!(
            "Resource '{id}' is not ready and cannot be run."
        )));
    }
    let suffix: String = uuid::Uuid::new_v4().simple().to_string()[..5].to_owned();
    let exec_id = format!("{id}-{suffix}");
    let exec_name = format!("{name}/executions/{exec_id}");
    let exec_tpl = &job.body["template"];
    let mut template = exec_tpl["template"].clone();
    let mut task_count = exec_tpl
        .get("taskCount")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    if let Some(o) = overrides {
        apply_overrides(&mut template, o, &mut task_count);
    }
    // Defaults as the job view shows them.
    let defaults = views::job(&job, &project_number(&req.state, req.p(0)), Utc::now());
    for key in ["maxRetries", "timeout", "serviceAccount"] {
        if template.get(key).is_none_or(Value::is_null) {
            template[key] = defaults["template"]["template"][key].clone();
        }
    }
    let task_count = task_count.clamp(1, 10_000);
    let now = Utc::now();
    let exec = ExecRec {
        meta: Meta {
            generation: 1,
            settle_at: now,
            ..new_meta(req, exec_name.clone(), &exec_id)
        },
        job: name.clone(),
        job_id: id.clone(),
        template,
        labels: exec_tpl.get("labels").cloned().unwrap_or(json!({})),
        annotations: exec_tpl.get("annotations").cloned().unwrap_or(json!({})),
        launch_stage: job
            .body
            .get("launchStage")
            .and_then(Value::as_str)
            .unwrap_or("GA")
            .to_owned(),
        tasks: (0..task_count)
            .map(|index| TaskRec {
                index,
                state: TaskState::Pending,
                retried: 0,
                exit_code: None,
                term_signal: None,
                message: None,
                start_time: None,
                completion_time: None,
            })
            .collect(),
        parallelism: exec_tpl
            .get("parallelism")
            .and_then(Value::as_i64)
            .filter(|p| *p > 0)
            .unwrap_or(task_count),
        cancelled: false,
        start_time: None,
        completion_time: None,
        failure: None,
    };
    let view = views::execution(&exec, &engine::log_uri(&req.state, &exec_name));
    {
        let mut store = req.state.run.store();
        if let Some(j) = store.jobs.get_mut(&name) {
            j.execution_count += 1;
            j.latest_execution = Some(exec_name.clone());
        }
        store.executions.insert(exec_name.clone(), exec);
    }
    req.state.mark_dirty();
    let op_name = new_op_name(&req.parent());
    let op = operations::create(
        &req.state,
        &op_name,
        Some(typed(EXECUTION_TYPE, view)),
        None,
    );
    engine::start_execution(req.state.clone(), exec_name.clone(), op_name);
    Ok((op, exec_name))
}

fn apply_overrides(template: &mut Value, o: &Value, task_count: &mut i64) {
    if let Some(n) = o.get("taskCount").and_then(Value::as_i64) {
        *task_count = n;
    }
    if let Some(t) = o.get("timeout").and_then(Value::as_str) {
        template["timeout"] = json!(t);
    }
    let Some(list) = o.get("containerOverrides").and_then(Value::as_array) else {
        return;
    };
    let Some(containers) = template.get_mut("containers").and_then(Value::as_array_mut) else {
        return;
    };
    for ov in list {
        let target = ov
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let found = containers
            .iter_mut()
            .enumerate()
            .find(|(i, c)| match target {
                Some(n) => c.get("name").and_then(Value::as_str) == Some(n),
                None => *i == 0,
            });
        let Some((_, c)) = found else { continue };
        if ov.get("clearArgs").and_then(Value::as_bool) == Some(true) {
            c["args"] = json!([]);
        }
        if let Some(args) = ov
            .get("args")
            .filter(|a| a.as_array().is_some_and(|a| !a.is_empty()))
        {
            c["args"] = args.clone();
        }
        if let Some(env) = ov.get("env").and_then(Value::as_array) {
            let mut current = c
                .get("env")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for e in env {
                let key = e.get("name");
                current.retain(|x| x.get("name") != key);
                current.push(e.clone());
            }
            c["env"] = Value::Array(current);
        }
    }
}

// ---------- executions and tasks ----------

fn exec_name(req: &Req) -> String {
    format!(
        "{}/executions/{}",
        job_name(&req.parent(), req.p(2)),
        req.p(3)
    )
}

pub(crate) fn exec_view(state: &AppState, exec: &ExecRec) -> Value {
    views::execution(exec, &engine::log_uri(state, &exec.meta.name))
}

fn exec_get(req: &Req) -> ApiResult<Value> {
    req.require("run.executions.get")?;
    let name = exec_name(req);
    let e = found(&req.state.run.store().executions, &name)?;
    Ok(exec_view(&req.state, &e))
}

fn exec_list(req: &Req) -> ApiResult<Value> {
    req.require("run.executions.list")?;
    let job = job_name(&req.parent(), req.p(2));
    let prefix = format!("{job}/executions/");
    let items: Vec<Value> = {
        let store = req.state.run.store();
        let mut execs: Vec<&ExecRec> = store
            .executions
            .values()
            .filter(|e| e.meta.name.starts_with(&prefix))
            .collect();
        // Newest first, as Google lists them.
        execs.sort_by_key(|e| std::cmp::Reverse(e.meta.create_time));
        execs
            .into_iter()
            .map(|e| exec_view(&req.state, e))
            .collect()
    };
    let (page, next) = paginate(req, items)?;
    Ok(list_response("executions", page, next))
}

/// Deletes an execution (cancelling it if it runs); returns its last view.
pub(crate) fn remove_exec(state: &AppState, name: &str) -> ApiResult<Value> {
    let exec = state
        .run
        .store()
        .executions
        .remove(name)
        .ok_or_else(|| not_found(name))?;
    state.run.cancel(name);
    state.mark_dirty();
    let mut v = exec_view(state, &exec);
    v["deleteTime"] = json!(views::ts(Utc::now()));
    Ok(v)
}

fn exec_delete(req: &Req) -> ApiResult<Value> {
    req.require("run.executions.delete")?;
    let v = typed(EXECUTION_TYPE, remove_exec(&req.state, &exec_name(req))?);
    let op_name = new_op_name(&req.parent());
    Ok(resource_op(req, &op_name, v))
}

/// Cancels a running execution; returns its view.
pub(crate) fn cancel_exec(state: &AppState, name: &str) -> ApiResult<Value> {
    {
        let mut store = state.run.store();
        let e = store
            .executions
            .get_mut(name)
            .ok_or_else(|| not_found(name))?;
        if e.completion_time.is_some() {
            return Err(ApiError::failed_precondition(format!(
                "Execution '{}' has already completed and cannot be cancelled.",
                e.meta.id
            )));
        }
        e.cancelled = true;
    }
    state.run.cancel(name);
    state.mark_dirty();
    let store = state.run.store();
    let e = store.executions.get(name).ok_or_else(|| not_found(name))?;
    Ok(exec_view(state, e))
}

fn exec_cancel(req: &Req) -> ApiResult<Value> {
    req.require("run.executions.cancel")?;
    let v = typed(EXECUTION_TYPE, cancel_exec(&req.state, &exec_name(req))?);
    let op_name = new_op_name(&req.parent());
    Ok(resource_op(req, &op_name, v))
}

fn task_get(req: &Req) -> ApiResult<Value> {
    req.require("run.tasks.get")?;
    let name = exec_name(req);
    let e = found(&req.state.run.store().executions, &name)?;
    let wanted = req.p(4);
    let t = e
        .tasks
        .iter()
        .find(|t| format!("{}-task{}", e.meta.id, t.index) == wanted)
        .ok_or_else(|| not_found(&format!("{name}/tasks/{wanted}")))?;
    Ok(views::task(&e, t, &engine::log_uri(&req.state, &name)))
}

fn task_list(req: &Req) -> ApiResult<Value> {
    req.require("run.tasks.list")?;
    let name = exec_name(req);
    let items: Vec<Value> = {
        let store = req.state.run.store();
        let e = store
            .executions
            .get(&name)
            .ok_or_else(|| not_found(&name))?;
        let uri = engine::log_uri(&req.state, &name);
        e.tasks.iter().map(|t| views::task(e, t, &uri)).collect()
    };
    let (page, next) = paginate(req, items)?;
    Ok(list_response("tasks", page, next))
}

// ---------- operations ----------

fn op_full_name(req: &Req) -> String {
    format!("{}/operations/{}", req.parent().name(), req.p(2))
}

fn op_get(req: &Req) -> ApiResult<Value> {
    req.require("run.operations.get")?;
    operations::get(&req.state, &op_full_name(req))
}

fn op_list(req: &Req) -> ApiResult<Value> {
    req.require("run.operations.list")?;
    let prefix = format!("{}/operations/", req.parent().name());
    let now = Utc::now();
    let items: Vec<Value> = req
        .state
        .read()
        .operations
        .values()
        .filter(|o| o.name.starts_with(&prefix))
        .map(|o| o.to_json(now))
        .collect();
    let (page, next) = paginate(req, items)?;
    Ok(list_response("operations", page, next))
}

fn op_delete(req: &Req) -> ApiResult<Value> {
    req.require("run.operations.delete")?;
    let name = op_full_name(req);
    match req.state.write().operations.remove(&name) {
        Some(_) => Ok(json!({})),
        None => Err(ApiError::not_found(format!("Operation {name} not found."))),
    }
}

async fn op_wait(req: &Req) -> ApiResult<Value> {
    req.require("run.operations.get")?;
    let name = op_full_name(req);
    let limit = req
        .body
        .get("timeout")
        .and_then(Value::as_str)
        .and_then(|t| t.strip_suffix('s'))
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0)
        .unwrap_or(60.0)
        .min(600.0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs_f64(limit);
    loop {
        let op = operations::get(&req.state, &name)?;
        if op["done"] == json!(true) || tokio::time::Instant::now() >= deadline {
            return Ok(op);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
