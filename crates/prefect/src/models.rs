//! Typed views of the Prefect API's objects.
//!
//! Only the fields this tool reads are declared; unknown fields are ignored, so newer servers
//! (which add fields) keep working. Request bodies skip unset fields, so a PATCH changes only
//! what the caller gave.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A block type (`gcp-credentials`, ...).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BlockType {
    /// Server id.
    pub id: Uuid,
    /// Display name, e.g. `GCP Credentials`.
    pub name: String,
    /// Slug, e.g. `gcp-credentials`.
    pub slug: String,
}

/// One version of a block type's schema.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BlockSchema {
    /// Server id.
    pub id: Uuid,
    /// `sha256:...` of the fields.
    pub checksum: String,
    /// The block type it belongs to.
    pub block_type_id: Uuid,
    /// The collection version that registered it (`0.6.22`, `non-versioned`, ...).
    #[serde(default)]
    pub version: Option<String>,
    /// The JSON schema of the block's data (includes `secret_fields`).
    #[serde(default)]
    pub fields: Value,
}

/// A block document as the server shows it without secrets: secret fields read `********`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct BlockDocument {
    /// Server id.
    pub id: Uuid,
    /// Name (absent for anonymous blocks).
    #[serde(default)]
    pub name: Option<String>,
    /// Block type id.
    pub block_type_id: Uuid,
    /// Schema id.
    pub block_schema_id: Uuid,
    /// Data with secret values masked.
    #[serde(default)]
    pub data: Value,
}

/// A JSON value holding secrets. Its `Debug` never shows the contents and it has no
/// `Serialize`, so it cannot reach a log line or `--json` output by accident.
#[derive(Clone, Default)]
pub struct SecretValue(Value);

impl SecretValue {
    /// Wraps a value that holds secrets.
    pub fn new(value: Value) -> Self {
        SecretValue(value)
    }
    /// The value itself; call only where the secret is used (sending it, comparing it).
    pub fn expose(&self) -> &Value {
        &self.0
    }
    /// Takes the value out.
    pub fn into_exposed(self) -> Value {
        self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for SecretValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(SecretValue)
    }
}

/// A block document read with `include_secrets=true`: the data is real and wrapped.
#[derive(Debug, Clone, Deserialize)]
pub struct SecretBlockDocument {
    /// Server id.
    pub id: Uuid,
    /// Name.
    #[serde(default)]
    pub name: Option<String>,
    /// Block type id.
    pub block_type_id: Uuid,
    /// Schema id.
    pub block_schema_id: Uuid,
    /// The unmasked data.
    #[serde(default)]
    pub data: SecretValue,
}

/// A new block document. `data` may hold secrets and is only ever serialised into the request.
#[derive(Debug, Clone)]
pub struct BlockDocumentCreate {
    /// Name.
    pub name: String,
    /// Block type id.
    pub block_type_id: Uuid,
    /// Schema id.
    pub block_schema_id: Uuid,
    /// The data.
    pub data: SecretValue,
}

/// A work pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WorkPool {
    /// Server id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Worker type: `cloud-run`, `cloud-run-v2`, `process`, ...
    #[serde(rename = "type")]
    pub pool_type: String,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// The base job template (`{}` until a worker fills it in).
    #[serde(default)]
    pub base_job_template: Value,
    /// Paused.
    #[serde(default)]
    pub is_paused: bool,
    /// Concurrency limit.
    #[serde(default)]
    pub concurrency_limit: Option<u64>,
    /// The queue named `default`.
    #[serde(default)]
    pub default_queue_id: Option<Uuid>,
    /// `READY`, `NOT_READY`, `PAUSED`.
    #[serde(default)]
    pub status: Option<String>,
}

/// A new work pool (also a step of a saved plan, hence `Deserialize`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkPoolCreate {
    /// Name.
    pub name: String,
    /// Worker type.
    #[serde(rename = "type")]
    pub pool_type: String,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Base job template; `None` leaves it empty for the first worker to fill in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_job_template: Option<Value>,
    /// Paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_paused: Option<bool>,
    /// Concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u64>,
}

/// Changes to a work pool; unset fields are left as they are. A template given here replaces
/// the whole template (the server does not merge).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkPoolUpdate {
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The whole base job template.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_job_template: Option<Value>,
    /// Paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_paused: Option<bool>,
    /// Concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u64>,
}

/// A work queue of a pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WorkQueue {
    /// Server id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Priority (1 is first).
    #[serde(default)]
    pub priority: Option<i64>,
    /// Paused.
    #[serde(default)]
    pub is_paused: bool,
    /// Concurrency limit.
    #[serde(default)]
    pub concurrency_limit: Option<u64>,
    /// The pool.
    #[serde(default)]
    pub work_pool_id: Option<Uuid>,
}

/// A new work queue.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkQueueCreate {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Priority.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
    /// Concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u64>,
}

/// A flow.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Flow {
    /// Server id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A deployment.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Deployment {
    /// Server id.
    pub id: Uuid,
    /// Name (without the flow's).
    pub name: String,
    /// The flow.
    pub flow_id: Uuid,
    /// `path/to/file.py:function`.
    #[serde(default)]
    pub entrypoint: Option<String>,
    /// Default parameters.
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
    /// Parameter schema.
    #[serde(default)]
    pub parameter_openapi_schema: Option<Value>,
    /// Whether the schema is enforced.
    #[serde(default)]
    pub enforce_parameter_schema: bool,
    /// The pool.
    #[serde(default)]
    pub work_pool_name: Option<String>,
    /// The queue.
    #[serde(default)]
    pub work_queue_name: Option<String>,
    /// Job variables (`image`, `env`, ...).
    #[serde(default)]
    pub job_variables: serde_json::Map<String, Value>,
    /// Pull steps.
    #[serde(default)]
    pub pull_steps: Option<Vec<Value>>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Paused.
    #[serde(default)]
    pub paused: bool,
    /// Schedules as the server holds them.
    #[serde(default)]
    pub schedules: Vec<Value>,
    /// Version.
    #[serde(default)]
    pub version: Option<String>,
    /// Path.
    #[serde(default)]
    pub path: Option<String>,
    /// `READY` or `NOT_READY`.
    #[serde(default)]
    pub status: Option<String>,
    /// Last update time.
    #[serde(default)]
    pub updated: Option<DateTime<Utc>>,
}

/// The fields a deployment is created (upserted) or updated with; unset fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploymentSpec {
    /// `path/to/file.py:function`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<String>,
    /// Default parameters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Parameter schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter_openapi_schema: Option<Value>,
    /// Enforce the schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enforce_parameter_schema: Option<bool>,
    /// The pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_pool_name: Option<String>,
    /// The queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work_queue_name: Option<String>,
    /// Job variables.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_variables: Option<serde_json::Map<String, Value>>,
    /// Pull steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull_steps: Option<Vec<Value>>,
    /// Tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Schedules (`[{"schedule": {...}, "active": true}]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<Value>>,
    /// Version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The kind of a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StateType {
    /// Waiting for its time.
    Scheduled,
    /// Claimed by a worker.
    Pending,
    /// Running.
    Running,
    /// Finished well.
    Completed,
    /// The flow raised.
    Failed,
    /// Cancelled.
    Cancelled,
    /// The infrastructure failed.
    Crashed,
    /// Paused.
    Paused,
    /// Cancellation requested.
    Cancelling,
    /// A type this client does not know.
    #[serde(other)]
    Unknown,
}

impl StateType {
    /// True for the states a run does not leave by itself.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateType::Completed | StateType::Failed | StateType::Cancelled | StateType::Crashed
        )
    }
    /// The API spelling (`COMPLETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            StateType::Scheduled => "SCHEDULED",
            StateType::Pending => "PENDING",
            StateType::Running => "RUNNING",
            StateType::Completed => "COMPLETED",
            StateType::Failed => "FAILED",
            StateType::Cancelled => "CANCELLED",
            StateType::Crashed => "CRASHED",
            StateType::Paused => "PAUSED",
            StateType::Cancelling => "CANCELLING",
            StateType::Unknown => "UNKNOWN",
        }
    }
}

/// A state of a flow run.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct State {
    /// Server id.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Kind.
    #[serde(rename = "type")]
    pub state_type: StateType,
    /// Name (`Late`, `Submitting`, ...).
    #[serde(default)]
    pub name: Option<String>,
    /// Message (e.g. the exception of a failed run).
    #[serde(default)]
    pub message: Option<String>,
    /// When it was entered.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
}

/// A state to propose.
#[derive(Debug, Clone, Serialize)]
pub struct StateCreate {
    /// Kind.
    #[serde(rename = "type")]
    pub state_type: StateType,
    /// Name; the server derives one from the type when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The orchestration verdict on a proposed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SetStateStatus {
    /// The state was taken.
    Accept,
    /// Refused; `state` is what the server chose instead.
    Reject,
    /// Refused; the proposal made no sense (e.g. another worker won the claim).
    Abort,
    /// Try again later (`details.delay_seconds`).
    Wait,
    /// A status this client does not know.
    #[serde(other)]
    Unknown,
}

/// The answer to `set_state`. Read `status`: the HTTP code does not say whether it was accepted.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OrchestrationResult {
    /// The verdict.
    pub status: SetStateStatus,
    /// The run's state after the proposal.
    #[serde(default)]
    pub state: Option<State>,
    /// `{type, reason, delay_seconds, ...}`.
    #[serde(default)]
    pub details: Value,
}

impl OrchestrationResult {
    /// The server's reason, if it gave one.
    pub fn reason(&self) -> Option<&str> {
        self.details.get("reason").and_then(Value::as_str)
    }
}

/// A flow run.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FlowRun {
    /// Server id.
    pub id: Uuid,
    /// Generated name (`chirpy-cuttlefish`).
    pub name: String,
    /// The flow.
    pub flow_id: Uuid,
    /// The deployment.
    #[serde(default)]
    pub deployment_id: Option<Uuid>,
    /// Parameters.
    #[serde(default)]
    pub parameters: serde_json::Map<String, Value>,
    /// The run's own job variables.
    #[serde(default)]
    pub job_variables: Option<serde_json::Map<String, Value>>,
    /// Current state.
    #[serde(default)]
    pub state: Option<State>,
    /// Scheduled start.
    #[serde(default)]
    pub expected_start_time: Option<DateTime<Utc>>,
    /// Next scheduled start.
    #[serde(default)]
    pub next_scheduled_start_time: Option<DateTime<Utc>>,
    /// Actual start.
    #[serde(default)]
    pub start_time: Option<DateTime<Utc>>,
    /// End.
    #[serde(default)]
    pub end_time: Option<DateTime<Utc>>,
    /// The queue.
    #[serde(default)]
    pub work_queue_name: Option<String>,
    /// The pool id.
    #[serde(default)]
    pub work_pool_id: Option<Uuid>,
    /// Infrastructure id (the Cloud Run job name).
    #[serde(default)]
    pub infrastructure_pid: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: serde_json::Map<String, Value>,
}

impl FlowRun {
    /// The current state type (`Unknown` when the run has no state yet).
    pub fn state_type(&self) -> StateType {
        self.state
            .as_ref()
            .map_or(StateType::Unknown, |s| s.state_type)
    }
}

/// What to start a run of a deployment with; unset fields use the deployment's.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FlowRunFromDeployment {
    /// Parameters (merged over the deployment's by the server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Map<String, Value>>,
    /// Job variables for this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_variables: Option<serde_json::Map<String, Value>>,
    /// Extra tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Name of the run (generated when absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Makes a retried request return the run the first one created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A filter over flow runs (all given conditions must hold).
#[derive(Debug, Clone, Default)]
pub struct FlowRunQuery {
    /// Any of these state types.
    pub states: Vec<StateType>,
    /// In any of these pools.
    pub work_pool_names: Vec<String>,
    /// Of any of these deployments.
    pub deployment_ids: Vec<Uuid>,
    /// Any of these runs.
    pub flow_run_ids: Vec<Uuid>,
    /// At most this many (server maximum 200).
    pub limit: Option<u32>,
}

/// One element of `get_scheduled_flow_runs`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WorkerFlowRun {
    /// The pool.
    pub work_pool_id: Uuid,
    /// The queue.
    pub work_queue_id: Uuid,
    /// The run.
    pub flow_run: FlowRun,
}

/// A log line of a flow run.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Log {
    /// Server id.
    #[serde(default)]
    pub id: Option<Uuid>,
    /// Logger name.
    pub name: String,
    /// Python log level number (20 = INFO).
    pub level: i64,
    /// Text.
    pub message: String,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// The flow run.
    #[serde(default)]
    pub flow_run_id: Option<Uuid>,
    /// The task run.
    #[serde(default)]
    pub task_run_id: Option<Uuid>,
}

/// A log line to ship.
#[derive(Debug, Clone, Serialize)]
pub struct LogCreate {
    /// Logger name, e.g. `prefect.flow_runs.worker`.
    pub name: String,
    /// Python level number.
    pub level: i64,
    /// Text.
    pub message: String,
    /// When.
    pub timestamp: DateTime<Utc>,
    /// The flow run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_run_id: Option<Uuid>,
}

/// An artifact (markdown, table, link, ...).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Artifact {
    /// Server id.
    pub id: Uuid,
    /// Key, if named.
    #[serde(default)]
    pub key: Option<String>,
    /// `markdown`, `table`, `link`, `progress`, `image`, `result`.
    #[serde(default, rename = "type")]
    pub artifact_type: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Content (a string for markdown).
    #[serde(default)]
    pub data: Value,
    /// The flow run.
    #[serde(default)]
    pub flow_run_id: Option<Uuid>,
    /// Created.
    #[serde(default)]
    pub created: Option<DateTime<Utc>>,
}

/// A Prefect variable.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Variable {
    /// Server id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// Value (any JSON).
    #[serde(default)]
    pub value: Value,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An event of the server's event stream.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Event {
    /// Event id.
    pub id: Uuid,
    /// When it happened.
    pub occurred: DateTime<Utc>,
    /// Its name, e.g. `prefect.flow-run.Scheduled`.
    pub event: String,
    /// The resource labels (`prefect.resource.id`, ...).
    #[serde(default)]
    pub resource: BTreeMap<String, Value>,
    /// Related resources (flow, deployment, work queue, work pool).
    #[serde(default)]
    pub related: Vec<BTreeMap<String, Value>>,
    /// Payload.
    #[serde(default)]
    pub payload: Value,
}

impl Event {
    /// `prefect.resource.id` of the event's resource (e.g. `prefect.flow-run.<id>`).
    pub fn resource_id(&self) -> Option<&str> {
        self.resource
            .get("prefect.resource.id")
            .and_then(Value::as_str)
    }
    /// The flow run id when the resource is a flow run.
    pub fn flow_run_id(&self) -> Option<Uuid> {
        self.resource_id()?
            .strip_prefix("prefect.flow-run.")
            .and_then(|id| Uuid::parse_str(id).ok())
    }
    /// True when one of the related resources has this `prefect.resource.id`.
    pub fn is_related_to(&self, resource_id: &str) -> bool {
        self.related
            .iter()
            .any(|r| r.get("prefect.resource.id").and_then(Value::as_str) == Some(resource_id))
    }
}

/// One page of `POST /events/filter`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct EventPage {
    /// Events on this page.
    #[serde(default)]
    pub events: Vec<Event>,
    /// Total matches.
    #[serde(default)]
    pub total: u64,
    /// URL of the next page, `None` at the end.
    #[serde(default)]
    pub next_page: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_value_does_not_debug_print() {
        let v = SecretValue::new(serde_json::json!({"private_key": "-----BEGIN"}));
        assert_eq!(format!("{v:?}"), "SecretValue(<redacted>)");
        let doc = SecretBlockDocument {
            id: Uuid::nil(),
            name: Some("x".into()),
            block_type_id: Uuid::nil(),
            block_schema_id: Uuid::nil(),
            data: v,
        };
        assert!(!format!("{doc:?}").contains("BEGIN"));
    }

    #[test]
    fn unknown_state_and_status_are_tolerated() {
        let r: OrchestrationResult = serde_json::from_str(
            r#"{"status":"MAYBE","state":{"type":"NEW_KIND","name":"x"},"details":{"reason":"r"},"extra":1}"#,
        )
        .expect("parses");
        assert_eq!(r.status, SetStateStatus::Unknown);
        assert_eq!(
            r.state.as_ref().expect("state").state_type,
            StateType::Unknown
        );
        assert_eq!(r.reason(), Some("r"));
    }

    #[test]
    fn patch_bodies_send_only_given_fields() {
        let body = serde_json::to_value(DeploymentSpec {
            description: Some("d".into()),
            ..Default::default()
        })
        .expect("serialises");
        assert_eq!(body, serde_json::json!({"description": "d"}));
    }

    #[test]
    fn event_helpers() {
        let id = Uuid::new_v4();
        let e: Event = serde_json::from_value(serde_json::json!({
            "id": Uuid::new_v4(), "occurred": "2026-01-01T00:00:00.123456Z",
            "event": "prefect.flow-run.Scheduled",
            "resource": {"prefect.resource.id": format!("prefect.flow-run.{id}")},
            "related": [{"prefect.resource.id": "prefect.work-pool.p", "prefect.resource.role": "work-pool"}]
        }))
        .expect("parses");
        assert_eq!(e.flow_run_id(), Some(id));
        assert!(e.is_related_to("prefect.work-pool.p"));
        assert!(!e.is_related_to("prefect.work-pool.q"));
    }
}
