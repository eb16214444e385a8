//! The v2 wire form of stored records: the client's fields plus what Google fills in.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::records::{ExecRec, JobRec, Meta, Revisions, ServiceRec, Settled, TaskRec, TaskState};

/// RFC 3339 with nanoseconds and `Z`, as Google writes timestamps.
pub fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// The default runtime identity when a template names none.
pub fn default_service_account(project_number: &str) -> String {
    format!("{project_number}-compute@developer.gserviceaccount.com")
}

pub(super) fn obj(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

pub(super) fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    let missing = map.get(key).is_none_or(Value::is_null);
    if missing {
        map.insert(key.to_owned(), value);
    }
}

pub(super) fn condition(kind: &str, state: &str, at: DateTime<Utc>) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("type".into(), json!(kind));
    c.insert("state".into(), json!(state));
    c.insert("lastTransitionTime".into(), json!(ts(at)));
    c
}

/// The `Ready` terminal condition of a resource at `now`.
pub(super) fn terminal(meta: &Meta, settled: &Settled, now: DateTime<Utc>) -> (Value, bool) {
    if now < meta.settle_at || *settled == Settled::Pending {
        return (
            Value::Object(condition(
                "Ready",
                "CONDITION_RECONCILING",
                meta.update_time,
            )),
            true,
        );
    }
    match settled {
        Settled::Failed { reason, message } => {
            let mut c = condition("Ready", "CONDITION_FAILED", meta.settle_at);
            c.insert("reason".into(), json!(reason));
            c.insert("message".into(), json!(message));
            (Value::Object(c), false)
        }
        _ => (
            Value::Object(condition("Ready", "CONDITION_SUCCEEDED", meta.settle_at)),
            false,
        ),
    }
}

pub(super) fn common(out: &mut Map<String, Value>, meta: &Meta) {
    out.insert("name".into(), json!(meta.name));
    out.insert("uid".into(), json!(meta.uid));
    out.insert("generation".into(), json!(meta.generation.to_string()));
    out.insert("createTime".into(), json!(ts(meta.create_time)));
    out.insert("updateTime".into(), json!(ts(meta.update_time)));
    out.insert("creator".into(), json!(meta.creator));
    out.insert("lastModifier".into(), json!(meta.last_modifier));
    out.insert("etag".into(), json!(meta.etag));
    set_default(out, "launchStage", json!("GA"));
}

/// Fills a container's defaults as Google does (resources, service ports).
pub(super) fn fill_containers(template: &mut Map<String, Value>, service: bool) {
    let Some(containers) = template.get_mut("containers").and_then(Value::as_array_mut) else {
        return;
    };
    for (i, c) in containers.iter_mut().enumerate() {
        let Some(c) = c.as_object_mut() else { continue };
        let mut res = c.get("resources").map(obj).unwrap_or_default();
        let mut limits = res.get("limits").map(obj).unwrap_or_default();
        set_default(&mut limits, "cpu", json!("1000m"));
        set_default(&mut limits, "memory", json!("512Mi"));
        res.insert("limits".into(), Value::Object(limits));
        if service {
            set_default(&mut res, "cpuIdle", json!(true));
            if i == 0 {
                set_default(
                    &mut *c,
                    "ports",
                    json!([{"name": "http1", "containerPort": 8080}]),
                );
                let port = c
                    .get("ports")
                    .and_then(|p| p.get(0))
                    .and_then(|p| p.get("containerPort"))
                    .cloned()
                    .unwrap_or(json!(8080));
                set_default(
                    &mut *c,
                    "startupProbe",
                    json!({"timeoutSeconds": 240, "periodSeconds": 240, "failureThreshold": 1,
                           "tcpSocket": {"port": port}}),
                );
            }
        }
        c.insert("resources".into(), Value::Object(res));
    }
}

/// A v2 Job.
pub fn job(rec: &JobRec, project_number: &str, now: DateTime<Utc>) -> Value {
    let mut out = obj(&rec.body);
    common(&mut out, &rec.meta);
    let mut exec_tpl = out.get("template").map(obj).unwrap_or_default();
    set_default(&mut exec_tpl, "taskCount", json!(1));
    let mut task_tpl = exec_tpl.get("template").map(obj).unwrap_or_default();
    set_default(&mut task_tpl, "maxRetries", json!(3));
    set_default(&mut task_tpl, "timeout", json!("600s"));
    set_default(
        &mut task_tpl,
        "serviceAccount",
        json!(default_service_account(project_number)),
    );
    set_default(
        &mut task_tpl,
        "executionEnvironment",
        json!("EXECUTION_ENVIRONMENT_GEN2"),
    );
    fill_containers(&mut task_tpl, false);
    exec_tpl.insert("template".into(), Value::Object(task_tpl));
    out.insert("template".into(), Value::Object(exec_tpl));
    let (cond, reconciling) = terminal(&rec.meta, &rec.settled, now);
    out.insert("terminalCondition".into(), cond);
    out.insert("reconciling".into(), json!(reconciling));
    out.insert("conditions".into(), json!([]));
    let observed = if reconciling {
        rec.meta.generation - 1
    } else {
        rec.meta.generation
    };
    out.insert("observedGeneration".into(), json!(observed.to_string()));
    out.insert("executionCount".into(), json!(rec.execution_count));
    out.entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    Value::Object(out)
}

/// `latestCreatedExecution` of a job that has never run: present and empty. prefect-gcp
/// 0.6.22 reads `response["latestCreatedExecution"]` unconditionally while it waits for a new
/// job to be ready (`models/cloud_run_v2.py:132`, `JobV2.get`), which works against Google: an
/// absent field was a `KeyError` that crashed every flow run.
pub fn no_execution_ref() -> Value {
    json!({})
}

/// The `latestCreatedExecution` reference of a job.
pub fn execution_ref(exec: &ExecRec) -> Value {
    let status = if exec.completion_time.is_none() {
        if exec.start_time.is_some() {
            "EXECUTION_RUNNING"
        } else {
            "EXECUTION_PENDING"
        }
    } else if exec.cancelled {
        "EXECUTION_CANCELLED"
    } else if exec.count(TaskState::Succeeded) == exec.tasks.len() as i64 {
        "EXECUTION_SUCCEEDED"
    } else {
        "EXECUTION_FAILED"
    };
    let mut out = json!({
        "name": exec.meta.name,
        "createTime": ts(exec.meta.create_time),
        "completionStatus": status,
    });
    if let Some(t) = exec.completion_time {
        out["completionTime"] = json!(ts(t));
    }
    out
}

/// A v2 Execution.
pub fn execution(exec: &ExecRec, log_uri: &str) -> Value {
    let mut out = Map::new();
    common(&mut out, &exec.meta);
    out.insert("generation".into(), json!("1"));
    out.insert("observedGeneration".into(), json!("1"));
    out.remove("lastModifier");
    out.insert("launchStage".into(), json!(exec.launch_stage));
    out.insert("job".into(), json!(exec.job_id));
    out.insert("labels".into(), exec.labels.clone());
    out.insert("annotations".into(), exec.annotations.clone());
    out.insert("template".into(), exec.template.clone());
    out.insert("taskCount".into(), json!(exec.tasks.len()));
    out.insert("parallelism".into(), json!(exec.parallelism));
    out.insert("runningCount".into(), json!(exec.count(TaskState::Running)));
    out.insert(
        "succeededCount".into(),
        json!(exec.count(TaskState::Succeeded)),
    );
    out.insert("failedCount".into(), json!(exec.count(TaskState::Failed)));
    out.insert(
        "cancelledCount".into(),
        json!(exec.count(TaskState::Cancelled)),
    );
    out.insert(
        "retriedCount".into(),
        json!(exec.tasks.iter().map(|t| t.retried).sum::<i64>()),
    );
    out.insert("logUri".into(), json!(log_uri));
    if let Some(t) = exec.start_time {
        out.insert("startTime".into(), json!(ts(t)));
    }
    let done = exec.completion_time.is_some();
    if let Some(t) = exec.completion_time {
        out.insert("completionTime".into(), json!(ts(t)));
    }
    out.insert("reconciling".into(), json!(!done));
    let created = exec.meta.create_time;
    let mut conds = vec![Value::Object(condition(
        "ResourcesAvailable",
        "CONDITION_SUCCEEDED",
        created,
    ))];
    let started_state = if exec.start_time.is_some() || done {
        "CONDITION_SUCCEEDED"
    } else {
        "CONDITION_PENDING"
    };
    conds.push(Value::Object(condition(
        "Started",
        started_state,
        exec.start_time.unwrap_or(created),
    )));
    let mut completed = condition(
        "Completed",
        "CONDITION_PENDING",
        exec.completion_time.unwrap_or(created),
    );
    if done {
        let total = exec.tasks.len();
        let ok = exec.count(TaskState::Succeeded) as usize;
        if exec.cancelled {
            completed.insert("state".into(), json!("CONDITION_FAILED"));
            completed.insert("executionReason".into(), json!("CANCELLED"));
            completed.insert("message".into(), json!("The execution was cancelled."));
        } else if ok == total {
            completed.insert("state".into(), json!("CONDITION_SUCCEEDED"));
            completed.insert(
                "message".into(),
                json!(format!(
                    "Execution completed successfully in {}.",
                    duration_text(exec)
                )),
            );
        } else {
            completed.insert("state".into(), json!("CONDITION_FAILED"));
            let message = exec.failure.clone().unwrap_or_else(|| {
                let failed = exec.tasks.iter().find(|t| t.state == TaskState::Failed);
                let detail = failed
                    .and_then(|t| t.message.clone())
                    .unwrap_or_else(|| "The task failed.".into());
                format!(
                    "Task {}-task{} failed with message: {detail}",
                    exec.meta.id,
                    failed.map(|t| t.index).unwrap_or(0)
                )
            });
            if exec
                .tasks
                .iter()
                .any(|t| t.exit_code.is_some_and(|c| c != 0))
            {
                completed.insert("executionReason".into(), json!("NON_ZERO_EXIT_CODE"));
            }
            completed.insert("message".into(), json!(message));
        }
    }
    conds.push(Value::Object(completed));
    out.insert("conditions".into(), Value::Array(conds));
    Value::Object(out)
}

fn duration_text(exec: &ExecRec) -> String {
    match (exec.start_time, exec.completion_time) {
        (Some(a), Some(b)) => format!("{:.2}s", (b - a).num_milliseconds() as f64 / 1000.0),
        _ => "0s".into(),
    }
}

/// A v2 Task.
pub fn task(exec: &ExecRec, t: &TaskRec, log_uri: &str) -> Value {
    let name = format!("{}/tasks/{}-task{}", exec.meta.name, exec.meta.id, t.index);
    let mut out = Map::new();
    common(&mut out, &exec.meta);
    for k in ["creator", "lastModifier", "launchStage"] {
        out.remove(k);
    }
    out.insert("name".into(), json!(name));
    out.insert(
        "uid".into(),
        json!(format!("{}-{}", exec.meta.uid, t.index)),
    );
    out.insert("generation".into(), json!("1"));
    out.insert("observedGeneration".into(), json!("1"));
    out.insert("job".into(), json!(exec.job_id));
    out.insert("execution".into(), json!(exec.meta.id));
    out.insert("index".into(), json!(t.index));
    out.insert("retried".into(), json!(t.retried));
    out.insert("logUri".into(), json!(log_uri));
    for key in [
        "containers",
        "maxRetries",
        "timeout",
        "serviceAccount",
        "volumes",
    ] {
        if let Some(v) = exec.template.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(s) = t.start_time {
        out.insert("startTime".into(), json!(ts(s)));
    }
    if let Some(c) = t.completion_time {
        out.insert("completionTime".into(), json!(ts(c)));
    }
    out.insert("reconciling".into(), json!(t.completion_time.is_none()));
    if t.exit_code.is_some() || t.term_signal.is_some() || t.message.is_some() {
        let mut r = Map::new();
        if let Some(c) = t.exit_code {
            r.insert("exitCode".into(), json!(c));
        }
        if let Some(s) = t.term_signal {
            r.insert("termSignal".into(), json!(s));
        }
        let ok = t.state == TaskState::Succeeded;
        r.insert(
            "status".into(),
            json!({"code": if ok { 0 } else { 2 }, "message": t.message.clone().unwrap_or_default()}),
        );
        out.insert("lastAttemptResult".into(), Value::Object(r));
    }
    let state = match t.state {
        TaskState::Succeeded => "CONDITION_SUCCEEDED",
        TaskState::Failed | TaskState::Cancelled => "CONDITION_FAILED",
        _ => "CONDITION_PENDING",
    };
    out.insert(
        "conditions".into(),
        json!([condition(
            "Completed",
            state,
            t.completion_time.unwrap_or(exec.meta.create_time)
        )]),
    );
    Value::Object(out)
}

/// A v2 Service.
pub fn service(rec: &ServiceRec, project_number: &str, now: DateTime<Utc>) -> Value {
    let mut out = obj(&rec.body);
    common(&mut out, &rec.meta);
    set_default(&mut out, "ingress", json!("INGRESS_TRAFFIC_ALL"));
    let mut tpl = out.get("template").map(obj).unwrap_or_default();
    let mut scaling = tpl.get("scaling").map(obj).unwrap_or_default();
    set_default(&mut scaling, "maxInstanceCount", json!(100));
    tpl.insert("scaling".into(), Value::Object(scaling));
    set_default(&mut tpl, "maxInstanceRequestConcurrency", json!(80));
    set_default(&mut tpl, "timeout", json!("300s"));
    set_default(
        &mut tpl,
        "serviceAccount",
        json!(default_service_account(project_number)),
    );
    fill_containers(&mut tpl, true);
    out.insert("template".into(), Value::Object(tpl));
    let traffic = json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]);
    set_default(&mut out, "traffic", traffic.clone());
    let mut scaling = out.get("scaling").map(obj).unwrap_or_default();
    set_default(&mut scaling, "scalingMode", json!("AUTOMATIC"));
    out.insert("scaling".into(), Value::Object(scaling));
    let ready = revision_status(&mut out, &rec.meta, &rec.revisions, now, |terminal| {
        let state = &terminal["state"];
        let mut routes = condition("RoutesReady", "CONDITION_SUCCEEDED", rec.meta.update_time);
        let mut configs = condition(
            "ConfigurationsReady",
            "CONDITION_SUCCEEDED",
            rec.meta.update_time,
        );
        if state != "CONDITION_SUCCEEDED" {
            routes.insert("state".into(), state.clone());
            configs.insert("state".into(), state.clone());
        }
        json!([Value::Object(routes), Value::Object(configs)])
    });
    if let Some(r) = ready {
        out.insert(
            "trafficStatuses".into(),
            json!([{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100, "revision": r}]),
        );
    }
    out.insert("uri".into(), json!(rec.uri));
    out.insert("urls".into(), json!([rec.uri]));
    Value::Object(out)
}

/// The status fields a service and a worker pool both report, in this order (the order clients
/// see, serde_json keeps insertion order): `terminalCondition`, `reconciling`, `conditions`
/// (made by `conditions` from the terminal condition), `observedGeneration` (one behind while
/// the newest generation reconciles), `latestCreatedRevision` and, once a revision is ready,
/// `latestReadyRevision`, as full names. Returns the ready revision's short name, for the
/// caller's traffic or instance-split status.
pub(super) fn revision_status<'a>(
    out: &mut Map<String, Value>,
    meta: &Meta,
    revisions: &'a Revisions,
    now: DateTime<Utc>,
    conditions: impl FnOnce(&Value) -> Value,
) -> Option<&'a str> {
    let (cond, reconciling) = terminal(meta, &revisions.settled, now);
    let conditions = conditions(&cond);
    out.insert("terminalCondition".into(), cond);
    out.insert("reconciling".into(), json!(reconciling));
    out.insert("conditions".into(), conditions);
    let latest_created = &revisions.latest_created_revision;
    let latest_ready = revisions.latest_ready_revision.as_deref();
    let observed = if reconciling {
        meta.generation - 1
    } else {
        meta.generation
    };
    out.insert("observedGeneration".into(), json!(observed.to_string()));
    out.insert(
        "latestCreatedRevision".into(),
        json!(format!("{}/revisions/{latest_created}", meta.name)),
    );
    if let Some(r) = latest_ready {
        out.insert(
            "latestReadyRevision".into(),
            json!(format!("{}/revisions/{r}", meta.name)),
        );
    }
    latest_ready
}
