//! Cloud Run v2 resources (`GoogleCloudRunV2*` schemas of `run.v2.json`). Fields the tool reads
//! or writes are typed; everything else is kept in `extra`, so a read-modify-write never drops
//! a field. int64 fields (`generation`, `observedGeneration`) are strings on the wire.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Declares a top-level Cloud Run v2 resource (`Service`, `WorkerPool`, `Job`): the fields
/// run.v2.json gives every one of them (name, labels, annotations, etag, uid, generation,
/// observedGeneration, createTime, terminalCondition, conditions, reconciling), then its own,
/// then `extra` for the rest, so that one declaration of the shared metadata serves all three.
///
/// `revisioned` adds what a Service and a WorkerPool have and a Job has not (run.v2.json):
/// `description` first, `latestReadyRevision` and `latestCreatedRevision` after its own fields.
macro_rules! run_v2_resource {
    (
        revisioned
        $(#[$attr:meta])*
        pub struct $name:ident {
            $( $(#[$fattr:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        run_v2_resource! {
            $(#[$attr])*
            pub struct $name {
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub description: Option<String>,
                $( $(#[$fattr])* pub $field: $ty, )*
                /// Output only: the newest revision that became ready.
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub latest_ready_revision: Option<String>,
                /// Output only: the newest revision, ready or not.
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub latest_created_revision: Option<String>,
            }
        }
    };
    (
        $(#[$attr:meta])*
        pub struct $name:ident {
            $( $(#[$fattr:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Default, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// `projects/{p}/locations/{r}/<collection>/{id}`; ignored on create.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub name: Option<String>,
            #[serde(default, skip_serializing_if = "::std::collections::BTreeMap::is_empty")]
            pub labels: ::std::collections::BTreeMap<String, String>,
            #[serde(default, skip_serializing_if = "::std::collections::BTreeMap::is_empty")]
            pub annotations: ::std::collections::BTreeMap<String, String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub etag: Option<String>,
            /// Output only.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub uid: Option<String>,
            /// Output only (int64 as a string).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub generation: Option<String>,
            /// Output only (int64 as a string).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub observed_generation: Option<String>,
            /// Output only.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub create_time: Option<String>,
            /// Output only: the overall readiness.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub terminal_condition: Option<$crate::run_v2::Condition>,
            /// Output only.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub conditions: Vec<$crate::run_v2::Condition>,
            /// Output only.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub reconciling: Option<bool>,
            $( $(#[$fattr])* pub $field: $ty, )*
            #[serde(flatten)]
            pub extra: ::serde_json::Map<String, ::serde_json::Value>,
        }
    };
}
pub(crate) use run_v2_resource;

run_v2_resource! {
    revisioned
    /// A Cloud Run service (`GoogleCloudRunV2Service`).
    pub struct Service {
        /// `INGRESS_TRAFFIC_ALL`, `INGRESS_TRAFFIC_INTERNAL_ONLY`, ...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub ingress: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub invoker_iam_disabled: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scaling: Option<ServiceScaling>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template: Option<RevisionTemplate>,
        /// Output only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub uri: Option<String>,
    }
}

/// Service-level scaling (`GoogleCloudRunV2ServiceScaling`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceScaling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instance_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instance_count: Option<i32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A service's revision template (`GoogleCloudRunV2RevisionTemplate`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<RevisionScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// A duration such as `"300s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instance_request_concurrency: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Revision scaling (`GoogleCloudRunV2RevisionScaling`): `--min-instances` lives here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionScaling {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_instance_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instance_count: Option<i32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A container (`GoogleCloudRunV2Container`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An environment variable (`GoogleCloudRunV2EnvVar`): a literal `value` or a `valueSource`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_source: Option<EnvVarSource>,
}

/// `GoogleCloudRunV2EnvVarSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVarSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
}

/// A Secret Manager reference (`GoogleCloudRunV2SecretKeySelector`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// The secret id (same project) or `projects/{p}/secrets/{s}`.
    pub secret: String,
    /// A version number or `latest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `GoogleCloudRunV2ResourceRequirements`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    /// e.g. `{"cpu": "1", "memory": "512Mi"}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    /// `false` is `--no-cpu-throttling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_idle: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_cpu_boost: Option<bool>,
}

/// `GoogleCloudRunV2ContainerPort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_port: Option<i32>,
}

/// `GoogleCloudRunV2Probe` (only `httpGet` typed; other actions stay in `extra`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GoogleCloudRunV2HTTPGetAction`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGetAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GoogleCloudRunV2Condition`. `state` is `CONDITION_SUCCEEDED`, `CONDITION_FAILED`,
/// `CONDITION_PENDING`, `CONDITION_RECONCILING`, ...
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

run_v2_resource! {
    /// A Cloud Run job (`GoogleCloudRunV2Job`).
    pub struct Job {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template: Option<ExecutionTemplate>,
        /// Output only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub execution_count: Option<i32>,
        /// Output only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub latest_created_execution: Option<ExecutionReference>,
    }
}

/// `GoogleCloudRunV2ExecutionReference`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// `EXECUTION_SUCCEEDED`, `EXECUTION_FAILED`, `EXECUTION_RUNNING`, `EXECUTION_PENDING`,
    /// `EXECUTION_CANCELLED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_status: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GoogleCloudRunV2ExecutionTemplate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TaskTemplate>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GoogleCloudRunV2TaskTemplate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskTemplate {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// A duration such as `"600s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An execution of a job (`GoogleCloudRunV2Execution`); all fields are output only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// `projects/{p}/locations/{r}/jobs/{j}/executions/{e}`.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_count: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciling: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Execution {
    /// The execution id, the last segment of `name`.
    pub fn id(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or_default()
    }

    /// The condition of type `Completed`, which says how the execution ended.
    pub fn completed_condition(&self) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|c| c.kind.as_deref() == Some("Completed"))
    }

    /// Whether the execution has finished (succeeded, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        self.completion_time.is_some()
            || self.completed_condition().is_some_and(|c| {
                matches!(
                    c.state.as_deref(),
                    Some("CONDITION_SUCCEEDED" | "CONDITION_FAILED")
                )
            })
    }
}

/// `GoogleCloudRunV2RunJobRequest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunJobRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validate_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<Overrides>,
}

/// `GoogleCloudRunV2Overrides`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_overrides: Vec<ContainerOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_count: Option<i32>,
    /// A duration such as `"600s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// `GoogleCloudRunV2ContainerOverride`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_args: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_round_trips_unknown_fields() {
        let wire = serde_json::json!({
            "name": "projects/p/locations/us-central1/services/prefect-worker",
            "generation": "3",
            "binaryAuthorization": {"useDefault": true},
            "template": {
                "scaling": {"minInstanceCount": 1, "maxInstanceCount": 3},
                "serviceAccount": "sa@p.iam.gserviceaccount.com",
                "executionEnvironment": "EXECUTION_ENVIRONMENT_GEN2",
                "containers": [{
                    "image": "prefecthq/prefect:3-latest",
                    "args": ["prefect", "worker", "start"],
                    "env": [
                        {"name": "PREFECT_API_URL", "value": "http://x/api"},
                        {"name": "PREFECT_API_KEY", "valueSource": {"secretKeyRef": {"secret": "k", "version": "latest"}}}
                    ],
                    "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "cpuIdle": false},
                    "startupProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 5},
                    "volumeMounts": [{"name": "v", "mountPath": "/m"}]
                }]
            },
            "terminalCondition": {"type": "Ready", "state": "CONDITION_SUCCEEDED"},
            "trafficStatuses": [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]
        });
        let svc: Service = serde_json::from_value(wire.clone()).unwrap();
        let tpl = svc.template.as_ref().unwrap();
        assert_eq!(tpl.scaling.as_ref().unwrap().min_instance_count, Some(1));
        assert_eq!(
            tpl.containers[0].resources.as_ref().unwrap().cpu_idle,
            Some(false)
        );
        assert_eq!(
            tpl.containers[0].env[1]
                .value_source
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .secret,
            "k"
        );
        assert_eq!(svc.generation.as_deref(), Some("3"));
        assert_eq!(serde_json::to_value(&svc).unwrap(), wire);
    }

    #[test]
    fn execution_states() {
        let e: Execution = serde_json::from_value(serde_json::json!({
            "name": "projects/p/locations/r/jobs/j/executions/j-abc12",
            "conditions": [{"type": "Completed", "state": "CONDITION_FAILED", "message": "Task failed"}],
            "failedCount": 1
        }))
        .unwrap();
        assert_eq!(e.id(), "j-abc12");
        assert!(e.is_finished());
        let running: Execution = serde_json::from_value(serde_json::json!({
            "name": "x/executions/e", "runningCount": 1,
            "conditions": [{"type": "Completed", "state": "CONDITION_PENDING"}]
        }))
        .unwrap();
        assert!(!running.is_finished());
    }
}
