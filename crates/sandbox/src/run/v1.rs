//! Cloud Run v1 (Knative-style) jobs and executions, as pool type `cloud-run` calls them. They
//! are views of the same job store as v2: a v1 Job is translated to a v2 body on write and back
//! on read. The v1 host names the region (`{region}-run.googleapis.com`); locally there is no
//! such host, so a job's location comes from its `cloud.googleapis.com/location` label, else
//! `us-central1`, and reads find a job in any location of the project.

use serde_json::{Map, Value, json};

use std::collections::BTreeMap;

use super::handlers::{
    self, Record, Req, cancel_exec, exec_view, insert_job, job_run, job_view, remove_exec,
    remove_job, replace_job,
};
use super::records::{JobRec, Parent, Store};
use super::v1_shapes::{self, env_to_v1, env_to_v2, map_list, ts};
use crate::error::{ApiError, ApiResult};

const API_VERSION: &str = "run.googleapis.com/v1";
const LOCATION_LABEL: &str = "cloud.googleapis.com/location";

/// Serves one `run.namespaces.*` call.
pub(crate) fn handle(req: &Req) -> ApiResult<Value> {
    let method = req
        .call
        .id
        .strip_prefix("run.namespaces.")
        .unwrap_or_default();
    match method {
        "jobs.create" => create(req),
        "jobs.get" => {
            let (rec, r) = find_job(req)?;
            r.require("run.jobs.get")?;
            Ok(job(req, &rec))
        }
        "jobs.list" => list_in_namespace(
            req,
            "run.jobs.list",
            "JobsList",
            |s| &s.jobs,
            |r| Ok(job(req, r)),
        ),
        "jobs.replaceJob" => replace(req),
        "jobs.delete" => {
            let (_, r) = find_job(req)?;
            r.require("run.jobs.delete")?;
            remove_job(&r, &req.call.params[1])?;
            Ok(success_status())
        }
        "jobs.run" => {
            let (_, r) = find_job(req)?;
            let (_, name) = job_run(&r)?;
            exec_v1(req, &name)
        }
        "executions.get" => {
            let name = find_exec(req)?;
            req.require("run.executions.get")?;
            exec_v1(req, &name)
        }
        "executions.list" => list_in_namespace(
            req,
            "run.executions.list",
            "ExecutionsList",
            |s| &s.executions,
            |e| exec_v1(req, &e.meta.name),
        ),
        "executions.delete" => {
            let name = find_exec(req)?;
            req.require("run.executions.delete")?;
            remove_exec(&req.state, &name)?;
            Ok(success_status())
        }
        "executions.cancel" => {
            let name = find_exec(req)?;
            req.require("run.executions.cancel")?;
            cancel_exec(&req.state, &name)?;
            exec_v1(req, &name)
        }
        other => Err(ApiError::new(
            501,
            "UNIMPLEMENTED",
            format!("Method run.namespaces.{other} is not implemented by the sandbox."),
        )),
    }
}

fn success_status() -> Value {
    json!({"status": "Success", "metadata": {}, "code": 200})
}

/// A v2-shaped request for `location`, so the v2 helpers can serve it.
fn as_v2(req: &Req, location: &str, job: &str) -> Req {
    req.retarget(location, job, req.query.clone(), req.body.clone())
}

fn find_job(req: &Req) -> ApiResult<(JobRec, Req)> {
    let id = req.call.params.get(1).cloned().unwrap_or_default();
    match find_in_namespace(req, |s| &s.jobs, &id) {
        Some(rec) => {
            let r = as_v2(req, &rec.meta.parent.location.clone(), &id);
            Ok((rec, r))
        }
        None => {
            // Authorization first, as Google does, so a denied caller learns nothing.
            req.require("run.jobs.get")?;
            Err(ApiError::not_found(format!(
                "Resource '{id}' was not found"
            )))
        }
    }
}

/// Whether a record sits in the call's namespace (`namespaces/{project id or number}`).
fn in_namespace(req: &Req, rec: &impl Record) -> bool {
    let (ns, parent) = (&req.call.params[0], &rec.meta().parent);
    parent.project == *ns || handlers::project_number(&req.state, &parent.project) == *ns
}

/// The record with the short id `id` in the call's namespace, in any location.
fn find_in_namespace<R: Record + Clone>(
    req: &Req,
    records: impl FnOnce(&Store) -> &BTreeMap<String, R>,
    id: &str,
) -> Option<R> {
    records(&req.state.run.store())
        .values()
        .find(|r| in_namespace(req, *r) && r.meta().id == id)
        .cloned()
}

/// A v1 list (`kind`) of the views of the records in the call's namespace; the views are made
/// after the store is unlocked.
fn list_in_namespace<R: Record + Clone>(
    req: &Req,
    permission: &str,
    kind: &str,
    records: impl FnOnce(&Store) -> &BTreeMap<String, R>,
    view: impl Fn(&R) -> ApiResult<Value>,
) -> ApiResult<Value> {
    req.require(permission)?;
    let recs: Vec<R> = records(&req.state.run.store())
        .values()
        .filter(|r| in_namespace(req, *r))
        .cloned()
        .collect();
    let items = recs.iter().map(view).collect::<ApiResult<Vec<_>>>()?;
    Ok(json!({"apiVersion": API_VERSION, "kind": kind, "metadata": {}, "items": items}))
}

fn find_exec(req: &Req) -> ApiResult<String> {
    let id = req.call.params.get(1).cloned().unwrap_or_default();
    let found = find_in_namespace(req, |s| &s.executions, &id).map(|e| e.meta.name);
    found.ok_or_else(|| {
        if let Err(denied) = req.require("run.executions.get") {
            return denied;
        }
        ApiError::not_found(format!("Resource '{id}' was not found"))
    })
}

fn create(req: &Req) -> ApiResult<Value> {
    let meta = req.body.get("metadata").cloned().unwrap_or(json!({}));
    let id = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let location = meta
        .pointer("/labels/cloud.googleapis.com~1location")
        .and_then(Value::as_str)
        .unwrap_or("us-central1")
        .to_owned();
    let r = as_v2(req, &location, &id);
    r.require("run.jobs.create")?;
    let dry = req.param("dryRun").is_some_and(|d| !d.is_empty());
    let rec = insert_job(&r, &id, to_v2(&req.body), dry)?;
    Ok(job(req, &rec))
}

fn replace(req: &Req) -> ApiResult<Value> {
    let (_, r) = find_job(req)?;
    r.require("run.jobs.update")?;
    let dry = req.param("dryRun").is_some_and(|d| !d.is_empty());
    let rec = replace_job(&r, &req.call.params[1], to_v2(&req.body), dry)?;
    Ok(job(req, &rec))
}

// ---------- translation ----------

fn container_to_v2(c: &Value) -> Value {
    let mut out = c.as_object().cloned().unwrap_or_default();
    if let Some(env) = c.get("env").and_then(Value::as_array) {
        out.insert("env".into(), Value::Array(env_to_v2(env)));
    }
    if let Some(res) = c.get("resources") {
        out.insert(
            "resources".into(),
            json!({"limits": res.get("limits").cloned().unwrap_or(json!({}))}),
        );
    }
    Value::Object(out)
}

fn container_to_v1(c: &Value) -> Value {
    let mut out = c.as_object().cloned().unwrap_or_default();
    if let Some(env) = c.get("env").and_then(Value::as_array) {
        out.insert("env".into(), Value::Array(env_to_v1(env)));
    }
    for k in [
        "startupProbe",
        "livenessProbe",
        "dependsOn",
        "sandboxLauncher",
    ] {
        out.remove(k);
    }
    if let Some(limits) = c.pointer("/resources/limits") {
        out.insert("resources".into(), json!({"limits": limits}));
    }
    Value::Object(out)
}

/// A v1 Job body as the v2 spec fields.
fn to_v2(body: &Value) -> Value {
    let meta = &body["metadata"];
    let exec = &body["spec"]["template"];
    let task = &exec["spec"]["template"]["spec"];
    let mut t = Map::new();
    let containers: Vec<Value> = task
        .get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(container_to_v2)
        .collect();
    t.insert("containers".into(), Value::Array(containers));
    if let Some(sa) = task.get("serviceAccountName").filter(|v| !v.is_null()) {
        t.insert("serviceAccount".into(), sa.clone());
    }
    if let Some(secs) = task
        .get("timeoutSeconds")
        .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
    {
        t.insert("timeout".into(), json!(format!("{secs}s")));
    }
    if let Some(r) = task.get("maxRetries").filter(|v| !v.is_null()) {
        t.insert("maxRetries".into(), r.clone());
    }
    let mut e = Map::new();
    e.insert("template".into(), Value::Object(t));
    for k in ["taskCount", "parallelism"] {
        if let Some(v) = exec["spec"].get(k).filter(|v| !v.is_null()) {
            e.insert(k.into(), v.clone());
        }
    }
    for (k, src) in [("labels", "labels"), ("annotations", "annotations")] {
        if let Some(v) = exec["metadata"].get(src).filter(|v| v.is_object()) {
            e.insert(k.into(), v.clone());
        }
    }
    let mut out = json!({"template": Value::Object(e)});
    if let Some(labels) = meta.get("labels").filter(|v| v.is_object()) {
        out["labels"] = labels.clone();
    }
    if let Some(ann) = meta.get("annotations").and_then(Value::as_object) {
        let mut kept = ann.clone();
        if let Some(stage) = kept.remove("run.googleapis.com/launch-stage") {
            out["launchStage"] = stage;
        }
        out["annotations"] = Value::Object(kept);
    }
    out
}

/// The v1 condition for the v2 condition `c`; an execution's reason may be `executionReason`.
fn condition_v1(c: &Value) -> Value {
    let reason = c
        .get("reason")
        .or_else(|| c.get("executionReason"))
        .and_then(Value::as_str);
    v1_shapes::condition_v1(c["type"].clone(), c, reason)
}

fn ns_of(req: &Req, parent: &Parent) -> String {
    handlers::project_number(&req.state, &parent.project)
}

/// The v1 view of a job.
fn job(req: &Req, rec: &JobRec) -> Value {
    let v2 = job_view(&req.state, rec);
    let ns = ns_of(req, &rec.meta.parent);
    let task = &v2["template"]["template"];
    let mut annotations = v2["annotations"].as_object().cloned().unwrap_or_default();
    annotations.insert("run.googleapis.com/creator".into(), json!(rec.meta.creator));
    annotations.insert(
        "run.googleapis.com/lastModifier".into(),
        json!(rec.meta.last_modifier),
    );
    annotations.insert(
        "run.googleapis.com/launch-stage".into(),
        v2["launchStage"].clone(),
    );
    let mut labels = v2["labels"].as_object().cloned().unwrap_or_default();
    labels.insert(LOCATION_LABEL.into(), json!(rec.meta.parent.location));
    let timeout_secs = task["timeout"]
        .as_str()
        .and_then(super::engine::parse_duration)
        .map(|d| d.as_secs())
        .unwrap_or(600);
    let containers = map_list(&task["containers"], container_to_v1);
    let mut status = json!({
        "observedGeneration": v2["observedGeneration"].as_str().and_then(|g| g.parse::<i64>().ok()),
        "conditions": [condition_v1(&v2["terminalCondition"])],
        "executionCount": rec.execution_count,
    });
    if let Some(latest) = v2
        .get("latestCreatedExecution")
        .filter(|l| l.get("name").is_some())
    {
        let mut r = json!({
            "name": latest["name"].as_str().and_then(|n| n.rsplit('/').next()),
            "creationTimestamp": latest["createTime"],
            "completionStatus": latest["completionStatus"],
        });
        if let Some(t) = latest.get("completionTime") {
            r["completionTimestamp"] = t.clone();
        }
        status["latestCreatedExecution"] = r;
    }
    json!({
        "apiVersion": API_VERSION,
        "kind": "Job",
        "metadata": {
            "name": rec.meta.id,
            "namespace": ns,
            "uid": rec.meta.uid,
            "generation": rec.meta.generation,
            "creationTimestamp": ts(rec.meta.create_time),
            "resourceVersion": rec.meta.etag.trim_matches('"'),
            "selfLink": format!("/apis/run.googleapis.com/v1/namespaces/{ns}/jobs/{}", rec.meta.id),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"template": {
            "metadata": {
                "labels": v2["template"].get("labels").cloned().unwrap_or(json!({})),
                "annotations": v2["template"].get("annotations").cloned().unwrap_or(json!({})),
            },
            "spec": {
                "taskCount": v2["template"]["taskCount"],
                "parallelism": v2["template"].get("parallelism").cloned().unwrap_or(json!(0)),
                "template": {"spec": {
                    "containers": containers,
                    "maxRetries": task["maxRetries"],
                    "timeoutSeconds": timeout_secs.to_string(),
                    "serviceAccountName": task["serviceAccount"],
                }},
            },
        }},
        "status": status,
    })
}

/// The v1 view of an execution.
fn exec_v1(req: &Req, name: &str) -> ApiResult<Value> {
    let (v2, parent, uid, id, job_id, created) = {
        let store = req.state.run.store();
        let e = store
            .executions
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("Resource '{name}' was not found")))?;
        (
            exec_view(&req.state, e),
            e.meta.parent.clone(),
            e.meta.uid.clone(),
            e.meta.id.clone(),
            e.job_id.clone(),
            e.meta.create_time,
        )
    };
    let ns = ns_of(req, &parent);
    let mut labels = v2["labels"].as_object().cloned().unwrap_or_default();
    labels.insert("run.googleapis.com/job".into(), json!(job_id));
    labels.insert(LOCATION_LABEL.into(), json!(parent.location));
    let tpl = &v2["template"];
    let containers = map_list(&tpl["containers"], container_to_v1);
    let conditions: Vec<Value> = v2["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .map(condition_v1)
        .collect();
    let mut status = json!({
        "observedGeneration": 1,
        "conditions": conditions,
        "runningCount": v2["runningCount"],
        "succeededCount": v2["succeededCount"],
        "failedCount": v2["failedCount"],
        "cancelledCount": v2["cancelledCount"],
        "retriedCount": v2["retriedCount"],
        "logUri": v2["logUri"],
    });
    for (k2, k1) in [
        ("startTime", "startTime"),
        ("completionTime", "completionTime"),
    ] {
        if let Some(t) = v2.get(k2) {
            status[k1] = t.clone();
        }
    }
    Ok(json!({
        "apiVersion": API_VERSION,
        "kind": "Execution",
        "metadata": {
            "name": id,
            "namespace": ns,
            "uid": uid,
            "generation": 1,
            "creationTimestamp": ts(created),
            "selfLink": format!("/apis/run.googleapis.com/v1/namespaces/{ns}/executions/{id}"),
            "labels": labels,
            "annotations": v2["annotations"],
        },
        "spec": {
            "parallelism": v2["parallelism"],
            "taskCount": v2["taskCount"],
            "template": {"spec": {
                "containers": containers,
                "maxRetries": tpl["maxRetries"],
                "timeoutSeconds": tpl["timeout"].as_str().and_then(super::engine::parse_duration)
                    .map(|d| d.as_secs().to_string()),
                "serviceAccountName": tpl["serviceAccount"],
            }},
        },
        "status": status,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_body_round_trips_the_fields_prefect_sets() {
        let v1 = json!({
            "apiVersion": API_VERSION, "kind": "Job",
            "metadata": {"name": "j", "annotations": {"run.googleapis.com/launch-stage": "BETA"}},
            "spec": {"template": {"spec": {"template": {"spec": {
                "containers": [{"image": "busybox", "command": ["sh", "-c", "true"],
                    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "latest"}}}]}],
                "serviceAccountName": "a@p.iam.gserviceaccount.com",
                "timeoutSeconds": "42"}}}}}
        });
        let v2 = to_v2(&v1);
        assert_eq!(v2["launchStage"], "BETA");
        let task = &v2["template"]["template"];
        assert_eq!(task["timeout"], "42s");
        assert_eq!(task["serviceAccount"], "a@p.iam.gserviceaccount.com");
        assert_eq!(
            task["containers"][0]["env"][0]["valueSource"]["secretKeyRef"]["secret"],
            "s"
        );
        let back = container_to_v1(&task["containers"][0]);
        assert_eq!(back["env"][0]["valueFrom"]["secretKeyRef"]["name"], "s");
    }
}
