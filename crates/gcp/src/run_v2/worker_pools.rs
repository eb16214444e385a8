//! Cloud Run v2 worker pools (`projects.locations.workerPools` of `run.v2.json`): a pull
//! workload with no URL and no port contract, whose size is `scaling.manualInstanceCount`.
//! Create, get, patch and delete are long-running operations, as for services.

use std::collections::BTreeMap;
use std::time::Duration;

use bootstrap_ids::{ProjectId, Region, RunWorkerPoolName};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::types::run_v2_resource;
use super::{Container, Patch, full_name, patch};
use crate::error::GcpError;
use crate::http::GcpHttp;
use crate::operations::Operation;
use crate::policy::{Policy, PolicyTarget};

run_v2_resource! {
    revisioned
    /// A worker pool (`GoogleCloudRunV2WorkerPool`). Fields the tool reads or writes are typed;
    /// the rest stay in `extra`, so a read-modify-write keeps them.
    pub struct WorkerPool {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub scaling: Option<WorkerPoolScaling>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub template: Option<WorkerPoolTemplate>,
    }
}

impl WorkerPool {
    /// `scaling.manualInstanceCount`, if set.
    pub fn instance_count(&self) -> Option<i32> {
        self.scaling.as_ref().and_then(|s| s.manual_instance_count)
    }

    /// Whether the pool's newest revision is ready and nothing is reconciling.
    pub fn is_ready(&self) -> bool {
        self.reconciling != Some(true)
            && self
                .terminal_condition
                .as_ref()
                .and_then(|c| c.state.as_deref())
                == Some("CONDITION_SUCCEEDED")
    }
}

/// `GoogleCloudRunV2WorkerPoolScaling`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolScaling {
    /// The number of instances (int32 on the wire); 0 stops them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_instance_count: Option<i32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GoogleCloudRunV2WorkerPoolRevisionTemplate`: unlike a service's template it has no
/// scaling, timeout or request concurrency.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolTemplate {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<Container>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

super::run_v2_kind!(WorkerPool, RunWorkerPoolName, "workerPools", "workerPoolId");

/// `run.projects.locations.workerPools.getIamPolicy`: the pool's own policy (inherited
/// bindings not included, run.v2.json).
pub async fn get_worker_pool_iam_policy(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    pool: &RunWorkerPoolName,
) -> Result<Policy, GcpError> {
    let target = PolicyTarget::WorkerPool {
        project: project.clone(),
        region: region.clone(),
        pool: pool.clone(),
    };
    target.get(http).await
}

/// The full resource name of a worker pool, as the API writes it.
pub fn worker_pool_name(project: &ProjectId, region: &Region, pool: &RunWorkerPoolName) -> String {
    full_name(project, region, pool)
}

/// What a patch changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolUpdate {
    /// The whole spec (template changes make a new revision).
    Whole,
    /// Only `scaling.manualInstanceCount` (`updateMask`): an in-place resize, never a new
    /// revision, and it cannot clobber a concurrent template change.
    InstanceCount,
}

/// Starts updating a worker pool; with `allow_missing` it creates the pool if absent (the
/// converging write after a half-failed create). Idempotent: it states the desired fields.
pub async fn patch_worker_pool(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    pool: &RunWorkerPoolName,
    spec: &WorkerPool,
    update: PoolUpdate,
    allow_missing: bool,
) -> Result<Operation, GcpError> {
    let how = Patch {
        update_mask: (update == PoolUpdate::InstanceCount).then_some("scaling.manualInstanceCount"),
        allow_missing,
        validate_only: false,
    };
    patch(http, project, region, pool, spec, how).await
}

/// Sets `scaling.manualInstanceCount` alone (`updateMask`), e.g. 0 to stop every instance.
pub async fn set_instance_count(
    http: &GcpHttp,
    project: &ProjectId,
    region: &Region,
    pool: &RunWorkerPoolName,
    count: i32,
) -> Result<Operation, GcpError> {
    let spec = WorkerPool {
        scaling: Some(WorkerPoolScaling {
            manual_instance_count: Some(count),
            ..WorkerPoolScaling::default()
        }),
        ..WorkerPool::default()
    };
    patch_worker_pool(
        http,
        project,
        region,
        pool,
        &spec,
        PoolUpdate::InstanceCount,
        false,
    )
    .await
}

/// Waits for a worker-pool operation (bounded by `deadline`) and decodes the pool it returns.
pub async fn wait_worker_pool(
    http: &GcpHttp,
    op: Operation,
    deadline: Duration,
) -> Result<WorkerPool, GcpError> {
    super::wait_operation_as(http, op, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_round_trips_unknown_fields_and_paths() {
        let wire = serde_json::json!({
            "name": "projects/p/locations/us-central1/workerPools/prefect-worker",
            "generation": "2",
            "observedGeneration": "2",
            "scaling": {"manualInstanceCount": 1},
            "instanceSplits": [{"type": "INSTANCE_SPLIT_ALLOCATION_TYPE_LATEST", "percent": 100}],
            "template": {
                "serviceAccount": "sa@p.iam.gserviceaccount.com",
                "containers": [{"image": "prefecthq/prefect:3-latest", "args": ["prefect"]}],
                "vpcAccess": {"networkInterfaces": [{"network": "default"}]}
            },
            "terminalCondition": {"type": "Ready", "state": "CONDITION_SUCCEEDED"},
            "reconciling": false
        });
        let pool: WorkerPool = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(pool.instance_count(), Some(1));
        assert!(pool.is_ready());
        assert!(
            pool.template
                .as_ref()
                .unwrap()
                .extra
                .contains_key("vpcAccess")
        );
        assert_eq!(serde_json::to_value(&pool).unwrap(), wire);
        let p = ProjectId::parse("my-project").unwrap();
        let r = Region::parse("us-central1").unwrap();
        let w = RunWorkerPoolName::parse("prefect-worker").unwrap();
        assert_eq!(
            super::super::resource_path_of(&p, &r, &w),
            "v2/projects/my-project/locations/us-central1/workerPools/prefect-worker"
        );
    }
}
