//! What Prefect's base worker and prefect-gcp report about a run's infrastructure, in their
//! words (automations match on them): the CRASHED message for a non-zero exit, the flow-run log
//! lines of the watch, the worker labels given to the run, and the worker events.
//!
//! Sources: prefect 3.9.1 `workers/base.py` (`_submit_run_and_capture_errors` /
//! `run` result handling, `_give_worker_labels_to_flow_run`, `_event_resource`,
//! `_emit_flow_run_submitted_event`, `_emit_flow_run_executed_event`),
//! `_internal/infrastructure_exit_codes.py`, prefect-gcp 0.6.22 `workers/cloud_run_v2.py`
//! (`_watch_job_execution_and_get_result`: status 1 for a failed execution, -1 when it was
//! deleted).

use bootstrap_prefect::{Flow, FlowRun, WorkPool};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::config::{PREFECT_PROTOCOL_VERSION, PoolKind};
use super::naming::slug;

/// The status code prefect-gcp gives an execution that did not succeed.
pub const FAILED: i64 = 1;
/// The status code prefect-gcp gives an execution that was deleted while watched.
pub const DELETED: i64 = -1;

/// Prefect's explanation and resolution of an infrastructure exit code
/// (`get_infrastructure_exit_info`, for the codes a Cloud Run worker reports).
fn exit_info(code: i64) -> (&'static str, &'static str) {
    match code {
        FAILED => (
            "Process exited with a general error.",
            "Check the flow run logs for an unhandled exception or assertion error.",
        ),
        _ => (
            "Process exited with an unexpected status code.",
            "Check the flow run logs and infrastructure logs for more details.",
        ),
    }
}

/// The CRASHED message for a non-zero status code, and the resolution Prefect logs after it.
pub fn crashed_message(code: i64) -> (String, &'static str) {
    let (explanation, resolution) = exit_info(code);
    (
        format!("Flow run infrastructure exited with non-zero status code {code}. {explanation}"),
        resolution,
    )
}

/// prefect-gcp's name for the job kind in its log lines.
fn kind_word(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::V2 => "Cloud Run Job V2",
        PoolKind::V1 => "Cloud Run Job",
    }
}

/// The log line for a finished execution ("… succeeded" / "… failed - <condition message>").
pub fn finished_line(kind: PoolKind, job: &str, succeeded: bool, message: Option<&str>) -> String {
    if succeeded {
        format!("{} {job} succeeded", kind_word(kind))
    } else {
        format!(
            "{} {job} failed - {}",
            kind_word(kind),
            message.unwrap_or("None")
        )
    }
}

/// The log line with the execution's Cloud Logging / console link.
pub fn logs_line(log_uri: &str) -> String {
    format!("Job run logs can be found on GCP at: {log_uri}")
}

/// The worker type, as Prefect names it (`CloudRunWorkerV2.type` / `CloudRunWorker.type`).
pub fn worker_type(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::V2 => "cloud-run-v2",
        PoolKind::V1 => "cloud-run",
    }
}

/// The labels Prefect's worker gives a flow run it submits.
pub fn worker_labels(worker: &str, kind: PoolKind, pool: &WorkPool) -> Map<String, Value> {
    let mut l = Map::new();
    l.insert("prefect.worker.name".into(), json!(worker));
    l.insert("prefect.worker.type".into(), json!(worker_type(kind)));
    l.insert("prefect.work-pool.name".into(), json!(pool.name));
    l.insert("prefect.work-pool.id".into(), json!(pool.id.to_string()));
    l
}

/// The worker as an event resource (`BaseWorker._event_resource`).
pub fn worker_resource(worker: &str, kind: PoolKind) -> Value {
    json!({
        "prefect.resource.id": format!("prefect.worker.{}.{}", worker_type(kind), slug(worker, usize::MAX)),
        "prefect.resource.name": worker,
        "prefect.version": PREFECT_PROTOCOL_VERSION,
        "prefect.worker-type": worker_type(kind),
    })
}

fn related(kind: &str, id: Uuid, name: &str) -> Value {
    json!({
        "prefect.resource.id": format!("prefect.{kind}.{id}"),
        "prefect.resource.role": kind,
        "prefect.resource.name": name,
    })
}

/// The run's related resources (`BaseJobConfiguration._related_resources` + the pool): the
/// flow run, deployment, flow, their tags, then the work pool.
pub fn run_related(
    run: &FlowRun,
    flow: Option<&Flow>,
    deployment: Option<(Uuid, &str)>,
    pool: &WorkPool,
) -> Vec<Value> {
    let mut out = vec![related("flow-run", run.id, &run.name)];
    let mut tags: Vec<&str> = run.tags.iter().map(String::as_str).collect();
    if let Some((id, name)) = deployment {
        out.push(related("deployment", id, name));
    }
    if let Some(f) = flow {
        out.push(related("flow", f.id, &f.name));
        tags.extend(f.tags.iter().map(String::as_str));
    }
    tags.sort_unstable();
    tags.dedup();
    for t in tags {
        out.push(json!({"prefect.resource.id": format!("prefect.tag.{t}"), "prefect.resource.role": "tag"}));
    }
    out.push(related("work-pool", pool.id, &pool.name));
    out
}

/// One event as `POST /events` takes it.
pub fn event(
    name: &str,
    resource: Value,
    related: Vec<Value>,
    follows: Option<Uuid>,
) -> (Uuid, Value) {
    let id = Uuid::new_v4();
    let mut e = json!({
        "id": id.to_string(),
        "occurred": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "event": name,
        "resource": resource,
        "related": related,
        "payload": {},
    });
    if let Some(f) = follows {
        e["follows"] = json!(f.to_string());
    }
    (id, e)
}

/// The executed-flow-run event's related resources: the flow run carries the infrastructure
/// identifier (the job) and status code.
pub fn with_result(mut related: Vec<Value>, job: &str, status_code: i64) -> Vec<Value> {
    for r in &mut related {
        if r["prefect.resource.role"] == "flow-run" {
            r["prefect.infrastructure.identifier"] = json!(job);
            r["prefect.infrastructure.status-code"] = json!(status_code.to_string());
        }
    }
    related
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_prefects() {
        assert_eq!(
            crashed_message(FAILED).0,
            "Flow run infrastructure exited with non-zero status code 1. Process exited with a general error."
        );
        assert_eq!(
            crashed_message(DELETED).0,
            "Flow run infrastructure exited with non-zero status code -1. Process exited with an unexpected status code."
        );
        assert_eq!(
            finished_line(
                PoolKind::V2,
                "j",
                false,
                Some("Task j-abc failed with exit code 1")
            ),
            "Cloud Run Job V2 j failed - Task j-abc failed with exit code 1"
        );
        assert_eq!(
            logs_line("https://x"),
            "Job run logs can be found on GCP at: https://x"
        );
    }

    #[test]
    fn events_and_labels_name_the_worker_and_pool() {
        let pool: WorkPool = serde_json::from_value(json!({
            "id": "0b7c5a3e-1111-4222-8333-944455556666", "name": "demo", "type": "cloud-run-v2"
        }))
        .expect("pool");
        let r = worker_resource("bootstrap-host-1a2b", PoolKind::V2);
        assert_eq!(
            r["prefect.resource.id"],
            "prefect.worker.cloud-run-v2.bootstrap-host-1a2b"
        );
        let l = worker_labels("w", PoolKind::V1, &pool);
        assert_eq!(l["prefect.worker.type"], "cloud-run");
        assert_eq!(
            l["prefect.work-pool.id"],
            "0b7c5a3e-1111-4222-8333-944455556666"
        );
        let run: FlowRun = serde_json::from_value(json!({
            "id": "0b7c5a3e-1111-4222-8333-944455550000", "name": "r",
            "flow_id": "0b7c5a3e-1111-4222-8333-944455551111", "tags": ["t"]
        }))
        .expect("run");
        let rel = with_result(run_related(&run, None, None, &pool), "job-1", 1);
        assert_eq!(rel[0]["prefect.infrastructure.status-code"], "1");
        assert_eq!(rel[1]["prefect.resource.id"], "prefect.tag.t");
        assert_eq!(rel[2]["prefect.resource.role"], "work-pool");
    }
}
