//! Cloud Run v1 (Knative serving) services and revisions, the API `gcloud run deploy` and
//! `gcloud run services ...` speak, plus `v1/projects/{p}/locations`.
//!
//! A v1 Service is a view of the same service store as v2 (on Google one resource answers both
//! APIs): a v1 body is translated to the v2 spec on write and the v2 view back to v1 on read, so
//! a service deployed by gcloud is read by `bootstrap` through v2 and the reverse. Field names
//! follow `run.v1.json` (`Service`, `RevisionTemplate`, `RevisionSpec`, `Container`,
//! `ServiceStatus`); the annotations that carry v2 fields are Cloud Run's documented ones
//! (`autoscaling.knative.dev/minScale`, `run.googleapis.com/cpu-throttling`, ...).
//!
//! The region: v1 is served on `{region}-run.googleapis.com`; here on
//! `{region}-sandbox.localhost` (see [`crate::hosts`]). A request on another host takes the
//! region from the `cloud.googleapis.com/location` label, else `us-central1`; reads find a
//! service in any region of the namespace.

use serde_json::{Map, Value, json};

use super::handlers::{self, Req};
use super::records::ServiceRec;
use super::v1_shapes::{self, env_to_v1, env_to_v2, map_list, ts};
use crate::error::{ApiError, ApiResult};

const API_VERSION: &str = "serving.knative.dev/v1";
const LOCATION_LABEL: &str = "cloud.googleapis.com/location";
const DEFAULT_REGION: &str = "us-central1";

const MIN_SCALE: &str = "autoscaling.knative.dev/minScale";
const MAX_SCALE: &str = "autoscaling.knative.dev/maxScale";
const CPU_THROTTLING: &str = "run.googleapis.com/cpu-throttling";
const CPU_BOOST: &str = "run.googleapis.com/startup-cpu-boost";
const EXEC_ENV: &str = "run.googleapis.com/execution-environment";
const INGRESS: &str = "run.googleapis.com/ingress";
const LAUNCH_STAGE: &str = "run.googleapis.com/launch-stage";
const INVOKER_IAM_DISABLED: &str = "run.googleapis.com/invoker-iam-disabled";
const CLIENT_NAME: &str = "run.googleapis.com/client-name";
const CLIENT_VERSION: &str = "run.googleapis.com/client-version";

/// Serves one Knative call (`run.namespaces.{services,revisions}.*`) or a v1 call on
/// `v1/projects/{p}/locations/{l}/services...` (`run.projects.locations.services.*`).
pub(crate) async fn handle(req: &Req, host_region: Option<&str>) -> ApiResult<Value> {
    let id = req.call.id.strip_prefix("run.").unwrap_or_default();
    match id {
        "namespaces.services.create" => create(req, &namespace_region(req, host_region)).await,
        "namespaces.services.get" => {
            let (rec, _) = find(req, host_region)?;
            Ok(service(req, &rec))
        }
        "namespaces.services.list" => list(req, host_region.map(str::to_owned)),
        "namespaces.services.replaceService" => replace(req, host_region).await,
        "namespaces.services.delete" => delete(req, host_region),
        "namespaces.revisions.get" => revision_get(req, host_region),
        "namespaces.revisions.list" => revision_list(req, host_region),
        "projects.locations.services.create" => {
            let location = req.call.params.get(1).cloned().unwrap_or_default();
            create(req, &location).await
        }
        "projects.locations.services.get" => {
            let (rec, _) = find(req, Some(&location_param(req)))?;
            Ok(service(req, &rec))
        }
        "projects.locations.services.list" => {
            let location = location_param(req);
            list(req, (location != "-").then_some(location))
        }
        "projects.locations.services.replaceService" => {
            replace(req, Some(&location_param(req))).await
        }
        "projects.locations.services.delete" => delete(req, Some(&location_param(req))),
        other => Err(ApiError::new(
            501,
            "UNIMPLEMENTED",
            format!("Method run.{other} is not implemented by the sandbox."),
        )),
    }
}

/// `GET v1/projects/{p}/locations`: the regions Cloud Run serves (`ListLocationsResponse`).
pub(crate) fn locations(req: &Req) -> ApiResult<Value> {
    req.require("run.locations.list")?;
    let project = req.parent().project;
    let locations: Vec<Value> = crate::hosts::REGIONS
        .iter()
        .map(|r| {
            json!({
                "name": format!("projects/{project}/locations/{r}"),
                "locationId": r,
                "displayName": r,
                "labels": {"cloud.googleapis.com/region": r},
            })
        })
        .collect();
    Ok(json!({ "locations": locations }))
}

fn location_param(req: &Req) -> String {
    req.call.params.get(1).cloned().unwrap_or_default()
}

/// The id of the service a call names (the last path parameter).
fn service_id(req: &Req) -> String {
    match req.call.id {
        id if id.starts_with("run.namespaces.") => req.call.params.get(1),
        _ => req.call.params.get(2),
    }
    .cloned()
    .unwrap_or_default()
}

/// The region a create goes to.
fn namespace_region(req: &Req, host_region: Option<&str>) -> String {
    host_region
        .map(str::to_owned)
        .or_else(|| {
            req.body
                .pointer("/metadata/labels/cloud.googleapis.com~1location")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| DEFAULT_REGION.to_owned())
}

/// A v2-shaped request for `location` and service `id`, so the v2 handlers can serve it.
fn as_v2(req: &Req, location: &str, id: &str, body: Value) -> Req {
    let mut query: Vec<(String, String)> = Vec::new();
    if req.param("dryRun").is_some_and(|d| !d.is_empty()) {
        query.push(("validateOnly".into(), "true".into()));
    }
    req.retarget(location, id, query, body)
}

/// The names a namespace may go by (project id and number), resolved before the Run store is
/// locked: the state lock is taken only while the store lock is not held.
struct Namespace {
    id: String,
    number: String,
}

impl Namespace {
    fn of(req: &Req) -> Namespace {
        let id = req.parent().project;
        let number = handlers::project_number(&req.state, &id);
        Namespace { id, number }
    }

    fn holds(&self, project: &str) -> bool {
        project == self.id || project == self.number
    }

    /// The services of this namespace, in `region` when given (else in any), in name order.
    fn services(&self, req: &Req, region: Option<&str>) -> Vec<ServiceRec> {
        req.state
            .run
            .store()
            .services
            .values()
            .filter(|s| self.holds(&s.meta.parent.project))
            .filter(|s| region.is_none_or(|r| s.meta.parent.location == r))
            .cloned()
            .collect()
    }
}

/// Finds a service by namespace and id, in `region` when given (else in any region).
fn find(req: &Req, region: Option<&str>) -> ApiResult<(ServiceRec, Req)> {
    let ns = Namespace::of(req);
    let id = service_id(req);
    let found = ns
        .services(req, region)
        .into_iter()
        .find(|s| s.meta.id == id);
    match found {
        Some(rec) => {
            let r = as_v2(req, &rec.meta.parent.location, &id, Value::Null);
            r.require("run.services.get")?;
            Ok((rec, r))
        }
        None => {
            // Authorization first, as Google does, so a denied caller learns nothing.
            req.require("run.services.get")?;
            Err(ApiError::not_found(format!(
                "Resource '{id}' of kind 'SERVICE' in region '{}' in project '{}' does not exist.",
                region.unwrap_or(DEFAULT_REGION),
                req.parent().project
            )))
        }
    }
}

fn stored(req: &Req, name: &str) -> ApiResult<ServiceRec> {
    req.state
        .run
        .store()
        .services
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Resource '{name}' was not found")))
}

async fn create(req: &Req, location: &str) -> ApiResult<Value> {
    let id = req
        .body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let v2 = to_v2(&req.body, &default_sa(req))?;
    let r = as_v2(req, location, &id, v2);
    r.require("run.services.create")?;
    handlers::validate_service_id(&id)?;
    let dry = r.flag("validateOnly");
    let op = handlers::create_service(&r, &id).await?;
    if dry {
        return Ok(service_from_v2(req, &op["response"], None));
    }
    let rec = stored(req, &handlers::service_name(&r, &id))?;
    Ok(service(req, &rec))
}

async fn replace(req: &Req, region: Option<&str>) -> ApiResult<Value> {
    let (rec, _) = find(req, region)?;
    let id = rec.meta.id.clone();
    if let Some(sent) = req
        .body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
        && sent != rec.meta.etag.trim_matches('"')
    {
        return Err(ApiError::new(
            409,
            "ABORTED",
            format!(
                "Conflict for resource '{id}': version '{sent}' was specified but current version is '{}'.",
                rec.meta.etag.trim_matches('"')
            ),
        ));
    }
    let v2 = to_v2(&req.body, &default_sa(req))?;
    let r = as_v2(req, &rec.meta.parent.location, &id, v2);
    let dry = r.flag("validateOnly");
    let op = handlers::service_patch(&r).await?;
    if dry {
        return Ok(service_from_v2(req, &op["response"], None));
    }
    let rec = stored(req, &rec.meta.name)?;
    Ok(service(req, &rec))
}

fn default_sa(req: &Req) -> String {
    let number = handlers::project_number(&req.state, &req.parent().project);
    super::views::default_service_account(&number)
}

fn delete(req: &Req, region: Option<&str>) -> ApiResult<Value> {
    let (rec, _) = find(req, region)?;
    let r = as_v2(req, &rec.meta.parent.location, &rec.meta.id, Value::Null);
    handlers::service_delete(&r)?;
    Ok(json!({"status": "Success", "metadata": {}, "code": 200,
              "details": {"name": rec.meta.id, "kind": "services", "uid": rec.meta.uid}}))
}

fn list(req: &Req, region: Option<String>) -> ApiResult<Value> {
    req.require("run.services.list")?;
    let recs = Namespace::of(req).services(req, region.as_deref());
    let items: Vec<Value> = recs.iter().map(|r| service(req, r)).collect();
    Ok(json!({"apiVersion": API_VERSION, "kind": "ServiceList", "metadata": {}, "items": items}))
}

// ---------- v1 → v2 ----------

fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// System labels and annotations Google adds on output; a client echoing them back must not
/// turn them into user metadata.
fn is_system_key(key: &str) -> bool {
    key.starts_with("run.googleapis.com/")
        || key.starts_with("serving.knative.dev/")
        || key.starts_with("cloud.googleapis.com/")
        || key.starts_with("autoscaling.knative.dev/")
}

fn user_map(v: &Value) -> Option<Value> {
    let kept: Map<String, Value> = obj(v)
        .into_iter()
        .filter(|(k, _)| !is_system_key(k))
        .collect();
    (!kept.is_empty()).then_some(Value::Object(kept))
}

fn annotation<'a>(annotations: &'a Value, key: &str) -> Option<&'a str> {
    annotations.get(key).and_then(Value::as_str)
}

fn int_annotation(annotations: &Value, key: &str) -> ApiResult<Option<i64>> {
    match annotation(annotations, key) {
        None => Ok(None),
        Some(text) => text.trim().parse::<i64>().map(Some).map_err(|_| {
            ApiError::invalid_argument(format!(
                "Invalid value '{text}' for annotation '{key}': must be an integer."
            ))
        }),
    }
}

fn bool_annotation(annotations: &Value, key: &str) -> ApiResult<Option<bool>> {
    // gcloud writes Python's `True` / `False`; Cloud Run reads them without regard to case.
    match annotation(annotations, key) {
        None => Ok(None),
        Some(text) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(text) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(text) => Err(ApiError::invalid_argument(format!(
            "Invalid value '{text}' for annotation '{key}': must be 'true' or 'false'."
        ))),
    }
}

fn ingress_to_v2(value: &str) -> ApiResult<&'static str> {
    match value {
        "all" => Ok("INGRESS_TRAFFIC_ALL"),
        "internal" => Ok("INGRESS_TRAFFIC_INTERNAL_ONLY"),
        "internal-and-cloud-load-balancing" => Ok("INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER"),
        "none" => Ok("INGRESS_TRAFFIC_NONE"),
        other => Err(ApiError::invalid_argument(format!(
            "Invalid value '{other}' for annotation '{INGRESS}'."
        ))),
    }
}

fn ingress_to_v1(value: &str) -> &'static str {
    match value {
        "INGRESS_TRAFFIC_INTERNAL_ONLY" => "internal",
        "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER" => "internal-and-cloud-load-balancing",
        "INGRESS_TRAFFIC_NONE" => "none",
        _ => "all",
    }
}

/// The container fields v1 and v2 name alike.
const SHARED_CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "volumeMounts",
    "startupProbe",
    "livenessProbe",
];

fn container_to_v2(c: &Value, cpu_idle: Option<bool>, boost: Option<bool>) -> Value {
    let mut out = Map::new();
    for k in SHARED_CONTAINER_FIELDS {
        // gcloud sends `"name": ""` for an unnamed container.
        if let Some(v) = c.get(*k).filter(|v| !v.is_null() && v.as_str() != Some("")) {
            out.insert((*k).into(), v.clone());
        }
    }
    if let Some(env) = c.get("env").and_then(Value::as_array) {
        out.insert("env".into(), Value::Array(env_to_v2(env)));
    }
    if let Some(ports) = c.get("ports").and_then(Value::as_array) {
        let ports: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut port = Map::new();
                for k in ["name", "containerPort"] {
                    if let Some(v) = p.get(k) {
                        port.insert(k.into(), v.clone());
                    }
                }
                Value::Object(port)
            })
            .collect();
        out.insert("ports".into(), Value::Array(ports));
    }
    let mut resources = Map::new();
    if let Some(limits) = c.pointer("/resources/limits").filter(|v| v.is_object()) {
        resources.insert("limits".into(), limits.clone());
    }
    if let Some(idle) = cpu_idle {
        resources.insert("cpuIdle".into(), json!(idle));
    }
    if let Some(b) = boost {
        resources.insert("startupCpuBoost".into(), json!(b));
    }
    if !resources.is_empty() {
        out.insert("resources".into(), Value::Object(resources));
    }
    Value::Object(out)
}

fn traffic_to_v2(traffic: &[Value]) -> Vec<Value> {
    traffic
        .iter()
        .map(|t| {
            let mut out = Map::new();
            let latest = t.get("latestRevision").and_then(Value::as_bool) == Some(true);
            match t.get("revisionName").and_then(Value::as_str) {
                Some(rev) if !latest => {
                    out.insert(
                        "type".into(),
                        json!("TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"),
                    );
                    out.insert("revision".into(), json!(rev));
                }
                _ => {
                    out.insert(
                        "type".into(),
                        json!("TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"),
                    );
                }
            }
            if let Some(p) = t.get("percent") {
                out.insert("percent".into(), p.clone());
            }
            if let Some(tag) = t.get("tag") {
                out.insert("tag".into(), tag.clone());
            }
            Value::Object(out)
        })
        .collect()
}

/// A v1 Service body as the v2 spec fields. `default_sa` is the project's default runtime
/// identity: reads show it when the service names none, and gcloud echoes it back on update;
/// it stays "none named", so an update does not turn a default into an explicit choice.
fn to_v2(body: &Value, default_sa: &str) -> ApiResult<Value> {
    if body
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "Service")
    {
        return Err(ApiError::invalid_argument(
            "kind: must be 'Service' for this method.",
        ));
    }
    let meta = &body["metadata"];
    let annotations = &meta["annotations"];
    let tpl = &body["spec"]["template"];
    let tann = &tpl["metadata"]["annotations"];
    let tspec = &tpl["spec"];
    let mut out = Map::new();
    if let Some(labels) = user_map(&meta["labels"]) {
        out.insert("labels".into(), labels);
    }
    if let Some(a) = user_map(annotations) {
        out.insert("annotations".into(), a);
    }
    if let Some(ingress) = annotation(annotations, INGRESS) {
        out.insert("ingress".into(), json!(ingress_to_v2(ingress)?));
    }
    if let Some(stage) = annotation(annotations, LAUNCH_STAGE) {
        out.insert("launchStage".into(), json!(stage));
    }
    if let Some(disabled) = bool_annotation(annotations, INVOKER_IAM_DISABLED)? {
        out.insert("invokerIamDisabled".into(), json!(disabled));
    }
    if let Some(client) = annotation(annotations, CLIENT_NAME) {
        out.insert("client".into(), json!(client));
    }
    if let Some(version) = annotation(annotations, CLIENT_VERSION) {
        out.insert("clientVersion".into(), json!(version));
    }

    let mut t = Map::new();
    if let Some(rev) = tpl
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        t.insert("revision".into(), json!(rev));
    }
    if let Some(labels) = user_map(&tpl["metadata"]["labels"]) {
        t.insert("labels".into(), labels);
    }
    if let Some(a) = user_map(tann) {
        t.insert("annotations".into(), a);
    }
    let mut scaling = Map::new();
    if let Some(min) = int_annotation(tann, MIN_SCALE)? {
        scaling.insert("minInstanceCount".into(), json!(min));
    }
    if let Some(max) = int_annotation(tann, MAX_SCALE)? {
        scaling.insert("maxInstanceCount".into(), json!(max));
    }
    if !scaling.is_empty() {
        t.insert("scaling".into(), Value::Object(scaling));
    }
    match annotation(tann, EXEC_ENV) {
        Some("gen1") => {
            t.insert(
                "executionEnvironment".into(),
                json!("EXECUTION_ENVIRONMENT_GEN1"),
            );
        }
        Some("gen2") => {
            t.insert(
                "executionEnvironment".into(),
                json!("EXECUTION_ENVIRONMENT_GEN2"),
            );
        }
        _ => {}
    }
    if let Some(n) = tspec.get("containerConcurrency").and_then(as_int) {
        t.insert("maxInstanceRequestConcurrency".into(), json!(n));
    }
    if let Some(secs) = tspec.get("timeoutSeconds").and_then(as_int) {
        t.insert("timeout".into(), json!(format!("{secs}s")));
    }
    if let Some(sa) = tspec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && *s != default_sa)
    {
        t.insert("serviceAccount".into(), json!(sa));
    }
    // `cpu-throttling: false` is v2's `cpuIdle: false` (CPU always allocated).
    let cpu_idle = bool_annotation(tann, CPU_THROTTLING)?;
    let boost = bool_annotation(tann, CPU_BOOST)?;
    let containers: Vec<Value> = tspec
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| container_to_v2(c, cpu_idle, boost))
        .collect();
    t.insert("containers".into(), Value::Array(containers));
    if let Some(volumes) = tspec.get("volumes").filter(|v| v.is_array()) {
        t.insert("volumes".into(), volumes.clone());
    }
    out.insert("template".into(), Value::Object(t));
    if let Some(traffic) = body
        .pointer("/spec/traffic")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
    {
        out.insert("traffic".into(), Value::Array(traffic_to_v2(traffic)));
    }
    Ok(Value::Object(out))
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

// ---------- v2 → v1 ----------

/// The v1 condition of type `kind` for the v2 condition `c`.
fn condition_v1(kind: &str, c: &Value) -> Value {
    v1_shapes::condition_v1(json!(kind), c, c.get("reason").and_then(Value::as_str))
}

fn container_to_v1(c: &Value) -> Value {
    let mut out = Map::new();
    for k in SHARED_CONTAINER_FIELDS {
        if let Some(v) = c.get(*k).filter(|v| !v.is_null()) {
            out.insert((*k).into(), v.clone());
        }
    }
    if let Some(env) = c.get("env").and_then(Value::as_array) {
        out.insert("env".into(), Value::Array(env_to_v1(env)));
    }
    if let Some(ports) = c.get("ports") {
        out.insert("ports".into(), ports.clone());
    }
    if let Some(limits) = c.pointer("/resources/limits") {
        out.insert("resources".into(), json!({"limits": limits}));
    }
    Value::Object(out)
}

fn short(name: &Value) -> Value {
    name.as_str()
        .and_then(|n| n.rsplit('/').next())
        .map_or(Value::Null, |n| json!(n))
}

/// The v1 view of a stored service.
fn service(req: &Req, rec: &ServiceRec) -> Value {
    let r = as_v2(req, &rec.meta.parent.location, &rec.meta.id, Value::Null);
    let v2 = handlers::service_view(&r, rec);
    service_from_v2(req, &v2, Some(rec))
}

/// The v1 view of a v2 Service view (`rec` for the fields only the record has).
fn service_from_v2(req: &Req, v2: &Value, rec: Option<&ServiceRec>) -> Value {
    let name = v2["name"].as_str().unwrap_or_default();
    let id = name.rsplit('/').next().unwrap_or_default();
    let location = name.split('/').nth(3).unwrap_or(DEFAULT_REGION);
    let project = name.split('/').nth(1).unwrap_or_default();
    let ns = handlers::project_number(&req.state, project);
    let tpl = &v2["template"];

    let mut labels = obj(&v2["labels"]);
    labels.insert(LOCATION_LABEL.into(), json!(location));
    let mut annotations = obj(&v2["annotations"]);
    annotations.insert("serving.knative.dev/creator".into(), v2["creator"].clone());
    annotations.insert(
        "serving.knative.dev/lastModifier".into(),
        v2["lastModifier"].clone(),
    );
    let ingress = ingress_to_v1(v2["ingress"].as_str().unwrap_or_default());
    annotations.insert(INGRESS.into(), json!(ingress));
    annotations.insert("run.googleapis.com/ingress-status".into(), json!(ingress));
    if let Some(stage) = v2["launchStage"].as_str().filter(|s| *s != "GA") {
        annotations.insert(LAUNCH_STAGE.into(), json!(stage));
    }
    if v2["invokerIamDisabled"] == json!(true) {
        annotations.insert(INVOKER_IAM_DISABLED.into(), json!("true"));
    }
    if let Some(client) = v2["client"].as_str() {
        annotations.insert(CLIENT_NAME.into(), json!(client));
    }
    if let Some(version) = v2["clientVersion"].as_str() {
        annotations.insert(CLIENT_VERSION.into(), json!(version));
    }

    let mut tann = obj(&tpl["annotations"]);
    if let Some(min) = tpl.pointer("/scaling/minInstanceCount").and_then(as_int) {
        tann.insert(MIN_SCALE.into(), json!(min.to_string()));
    }
    if let Some(max) = tpl.pointer("/scaling/maxInstanceCount").and_then(as_int) {
        tann.insert(MAX_SCALE.into(), json!(max.to_string()));
    }
    let first = &tpl["containers"][0];
    if first.pointer("/resources/cpuIdle") == Some(&json!(false)) {
        tann.insert(CPU_THROTTLING.into(), json!("false"));
    }
    if first.pointer("/resources/startupCpuBoost") == Some(&json!(true)) {
        tann.insert(CPU_BOOST.into(), json!("true"));
    }
    match tpl["executionEnvironment"].as_str() {
        Some("EXECUTION_ENVIRONMENT_GEN1") => {
            tann.insert(EXEC_ENV.into(), json!("gen1"));
        }
        Some("EXECUTION_ENVIRONMENT_GEN2") => {
            tann.insert(EXEC_ENV.into(), json!("gen2"));
        }
        _ => {}
    }
    let mut tmeta = json!({
        "labels": tpl.get("labels").cloned().unwrap_or(json!({})),
        "annotations": tann,
    });
    if let Some(rev) = tpl["revision"].as_str() {
        tmeta["name"] = json!(rev);
    }
    let timeout = tpl["timeout"]
        .as_str()
        .and_then(super::engine::parse_duration)
        .map_or(300, |d| d.as_secs());
    let containers = map_list(&tpl["containers"], container_to_v1);
    let mut tspec = json!({
        "containerConcurrency": tpl["maxInstanceRequestConcurrency"],
        "timeoutSeconds": timeout,
        "serviceAccountName": tpl["serviceAccount"],
        "containers": containers,
    });
    if let Some(volumes) = tpl.get("volumes") {
        tspec["volumes"] = volumes.clone();
    }
    let traffic = map_list(&v2["traffic"], |t| {
        let mut out = json!({"percent": t.get("percent").cloned().unwrap_or(json!(0))});
        if t["type"] == json!("TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION") {
            out["revisionName"] = t["revision"].clone();
        } else {
            out["latestRevision"] = json!(true);
        }
        if let Some(tag) = t.get("tag") {
            out["tag"] = tag.clone();
        }
        out
    });

    let generation = v2["generation"]
        .as_str()
        .and_then(|g| g.parse::<i64>().ok())
        .unwrap_or(1);
    let observed = v2["observedGeneration"]
        .as_str()
        .and_then(|g| g.parse::<i64>().ok());
    let terminal = &v2["terminalCondition"];
    let mut conditions = vec![condition_v1("Ready", terminal)];
    for c in v2["conditions"].as_array().into_iter().flatten() {
        if let Some(kind) = c["type"].as_str() {
            let mut c = condition_v1(kind, c);
            // A failed revision fails the configuration and the route with the same reason;
            // gcloud's deploy tracker prints the message of the stage that failed.
            if c["status"] == "False" && c.get("message").is_none() {
                c["reason"] = condition_v1("Ready", terminal)["reason"].clone();
                c["message"] = terminal["message"].clone();
            }
            conditions.push(c);
        }
    }
    let mut status = json!({
        "observedGeneration": observed,
        "conditions": conditions,
        "latestCreatedRevisionName": short(&v2["latestCreatedRevision"]),
        "url": v2["uri"],
        "address": {"url": v2["uri"]},
    });
    if let Some(ready) = v2.get("latestReadyRevision") {
        status["latestReadyRevisionName"] = short(ready);
        let statuses = map_list(&v2["trafficStatuses"], |t| {
            json!({"revisionName": t["revision"], "percent": t["percent"],
                   "latestRevision": t["type"] == json!("TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST")})
        });
        status["traffic"] = json!(statuses);
    }
    let created = rec.map_or_else(
        || v2["createTime"].clone(),
        |r| json!(ts(r.meta.create_time)),
    );
    json!({
        "apiVersion": API_VERSION,
        "kind": "Service",
        "metadata": {
            "name": id,
            "namespace": ns,
            "selfLink": format!("/apis/serving.knative.dev/v1/namespaces/{ns}/services/{id}"),
            "uid": v2["uid"],
            "resourceVersion": v2["etag"].as_str().map(|e| e.trim_matches('"').to_owned()),
            "generation": generation,
            "creationTimestamp": created,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "template": {"metadata": tmeta, "spec": tspec},
            "traffic": traffic,
        },
        "status": status,
    })
}

// ---------- revisions ----------

/// The v1 Revision of a service's latest created revision (the sandbox keeps no older ones).
fn revision(req: &Req, rec: &ServiceRec) -> Value {
    let v1 = service(req, rec);
    let ns = v1["metadata"]["namespace"].clone();
    let id = &rec.meta.id;
    let name = &rec.revisions.latest_created_revision;
    let ready = &v1["status"]["conditions"][0];
    let mut labels = obj(&v1["spec"]["template"]["metadata"]["labels"]);
    labels.insert("serving.knative.dev/service".into(), json!(id));
    labels.insert("serving.knative.dev/configuration".into(), json!(id));
    labels.insert(LOCATION_LABEL.into(), json!(rec.meta.parent.location));
    json!({
        "apiVersion": API_VERSION,
        "kind": "Revision",
        "metadata": {
            "name": name,
            "namespace": ns,
            "selfLink": format!("/apis/serving.knative.dev/v1/namespaces/{}/revisions/{name}", ns.as_str().unwrap_or_default()),
            "uid": format!("{}-{}", rec.meta.uid, rec.revisions.revision_seq),
            "generation": 1,
            "creationTimestamp": ts(rec.meta.update_time),
            "labels": labels,
            "annotations": v1["spec"]["template"]["metadata"]["annotations"],
            "ownerReferences": [{"kind": "Configuration", "name": id,
                                 "apiVersion": API_VERSION, "controller": true,
                                 "blockOwnerDeletion": true, "uid": rec.meta.uid}],
        },
        "spec": v1["spec"]["template"]["spec"],
        "status": {
            "observedGeneration": 1,
            "conditions": [
                ready.clone(),
                json!({"type": "Active", "status": ready["status"], "severity": "Info"}),
                json!({"type": "ContainerHealthy", "status": ready["status"]}),
                json!({"type": "ResourcesAvailable", "status": ready["status"]}),
            ],
            "logUrl": super::engine::log_uri(&req.state, &rec.meta.name),
            "imageDigest": v1["spec"]["template"]["spec"]["containers"][0]["image"],
        },
    })
}

fn revision_get(req: &Req, region: Option<&str>) -> ApiResult<Value> {
    let ns = Namespace::of(req);
    let wanted = req.call.params.get(1).cloned().unwrap_or_default();
    req.require("run.revisions.get")?;
    let found = ns
        .services(req, region)
        .into_iter()
        .find(|s| s.revisions.latest_created_revision == wanted);
    match found {
        Some(rec) => Ok(revision(req, &rec)),
        None => Err(ApiError::not_found(format!(
            "Resource '{wanted}' of kind 'REVISION' does not exist."
        ))),
    }
}

fn revision_list(req: &Req, region: Option<&str>) -> ApiResult<Value> {
    req.require("run.revisions.list")?;
    let ns = Namespace::of(req);
    // gcloud selects by `serving.knative.dev/service=NAME` or, to find the revision its deploy
    // made, `client.knative.dev/nonce = VALUE`: equality terms, comma separated.
    let selector: Vec<(String, String)> = req
        .param("labelSelector")
        .unwrap_or_default()
        .split(',')
        .filter_map(|term| {
            let (k, v) = term.split_once('=')?;
            Some((
                k.trim().trim_end_matches('=').trim().to_owned(),
                v.trim().trim_start_matches('=').trim().to_owned(),
            ))
        })
        .collect();
    let items: Vec<Value> = ns
        .services(req, region)
        .iter()
        .map(|r| revision(req, r))
        .filter(|rev| {
            selector
                .iter()
                .all(|(k, v)| rev["metadata"]["labels"][k.as_str()].as_str() == Some(v.as_str()))
        })
        .collect();
    Ok(json!({"apiVersion": API_VERSION, "kind": "RevisionList", "metadata": {}, "items": items}))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `gcloud run deploy prefect-worker --no-cpu-throttling --min-instances 1
    /// --set-secrets ... --args ...` sends (its shape, from `--log-http`).
    fn gcloud_body() -> Value {
        json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {
                "name": "prefect-worker",
                "namespace": "sandbox-project",
                "annotations": {"run.googleapis.com/client-name": "gcloud",
                                "run.googleapis.com/client-version": "528.0.0"},
            },
            "spec": {"template": {
                "metadata": {"annotations": {
                    "autoscaling.knative.dev/minScale": "1",
                    "run.googleapis.com/cpu-throttling": "False",
                    "run.googleapis.com/startup-cpu-boost": "True",
                    "client.knative.dev/user-image": "prefecthq/prefect:3-latest",
                }},
                "spec": {
                    "serviceAccountName": "w@sandbox-project.iam.gserviceaccount.com",
                    "containers": [{
                        "name": "",
                        "image": "prefecthq/prefect:3-latest",
                        "args": ["prefect", "worker", "start"],
                        "env": [
                            {"name": "PREFECT_API_URL", "value": "http://x"},
                            {"name": "PREFECT_API_KEY", "valueFrom": {"secretKeyRef": {"name": "prefect-api-key", "key": "latest"}}},
                        ],
                    }],
                },
            }},
        })
    }

    #[test]
    fn gcloud_deploy_body_becomes_the_v2_spec() {
        let v2 =
            to_v2(&gcloud_body(), "1-compute@developer.gserviceaccount.com").expect("translates");
        let t = &v2["template"];
        assert_eq!(t["scaling"]["minInstanceCount"], json!(1));
        assert_eq!(t["containers"][0]["resources"]["cpuIdle"], json!(false));
        assert_eq!(
            t["containers"][0]["resources"]["startupCpuBoost"],
            json!(true)
        );
        assert!(t["containers"][0].get("name").is_none());
        assert_eq!(
            t["serviceAccount"],
            json!("w@sandbox-project.iam.gserviceaccount.com")
        );
        assert_eq!(
            t["containers"][0]["env"][1]["valueSource"]["secretKeyRef"],
            json!({"secret": "prefect-api-key", "version": "latest"})
        );
        assert_eq!(v2["client"], json!("gcloud"));
        assert_eq!(
            t["annotations"],
            json!({"client.knative.dev/user-image": "prefecthq/prefect:3-latest"})
        );
    }

    #[test]
    fn bad_annotations_are_invalid_arguments() {
        let mut body = gcloud_body();
        body["spec"]["template"]["metadata"]["annotations"][MIN_SCALE] = json!("one");
        let err = to_v2(&body, "1-compute@developer.gserviceaccount.com").expect_err("rejected");
        assert_eq!(err.code, 400);
        let mut body = gcloud_body();
        body["spec"]["template"]["metadata"]["annotations"][CPU_THROTTLING] = json!("maybe");
        assert!(to_v2(&body, "1-compute@developer.gserviceaccount.com").is_err());
    }
}
