//! Work pools, their queues, worker heartbeats and the worker metadata view.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{Value, json};

use super::seg;
use crate::client::{OptionalExt, PrefectClient};
use crate::error::PrefectError;
use crate::models::{
    WorkPool, WorkPoolCreate, WorkPoolUpdate, WorkQueue, WorkQueueCreate, WorkerFlowRun,
};

impl PrefectClient {
    /// The work pool with this name, `None` when there is none.
    pub async fn work_pool(&self, name: &str) -> Result<Option<WorkPool>, PrefectError> {
        self.get(
            &format!("/work_pools/{}", seg(name)),
            &format!("work pool `{name}`"),
        )
        .await
        .optional()
    }

    /// Creates a work pool (409 when the name is taken).
    pub async fn create_work_pool(&self, pool: &WorkPoolCreate) -> Result<WorkPool, PrefectError> {
        let body = to_value(pool)?;
        self.post("/work_pools/", &body, &format!("work pool `{}`", pool.name))
            .await
    }

    /// Updates a work pool; a template given replaces the whole template.
    pub async fn update_work_pool(
        &self,
        name: &str,
        update: &WorkPoolUpdate,
    ) -> Result<(), PrefectError> {
        let body = to_value(update)?;
        self.no_content(
            Method::PATCH,
            &format!("/work_pools/{}", seg(name)),
            Some(&body),
            &format!("work pool `{name}`"),
        )
        .await
    }

    /// Deletes a work pool: `false` when it was already gone.
    pub async fn delete_work_pool(&self, name: &str) -> Result<bool, PrefectError> {
        self.delete(
            &format!("/work_pools/{}", seg(name)),
            &format!("work pool `{name}`"),
        )
        .await
    }

    /// The server's default base job template for a worker type (from
    /// `/collections/views/aggregate-worker-metadata`, which a server answers offline from its
    /// bundled copy). `None` when no collection offers that type.
    pub async fn default_base_job_template(
        &self,
        worker_type: &str,
    ) -> Result<Option<Value>, PrefectError> {
        let view: serde_json::Map<String, Value> = self
            .get(
                "/collections/views/aggregate-worker-metadata",
                "the worker metadata view",
            )
            .await?;
        Ok(find_worker_template(&view, worker_type))
    }

    /// The queues of a pool.
    pub async fn work_queues(&self, pool: &str) -> Result<Vec<WorkQueue>, PrefectError> {
        self.post(
            &format!("/work_pools/{}/queues/filter", seg(pool)),
            &json!({}),
            &format!("work pool `{pool}`"),
        )
        .await
    }

    /// Creates a queue in a pool (409 when the name is taken).
    pub async fn create_work_queue(
        &self,
        pool: &str,
        queue: &WorkQueueCreate,
    ) -> Result<WorkQueue, PrefectError> {
        let body = to_value(queue)?;
        self.post(
            &format!("/work_pools/{}/queues", seg(pool)),
            &body,
            &format!("work pool `{pool}`"),
        )
        .await
    }

    /// Reports a worker alive (REST heartbeat); the pool turns READY.
    pub async fn worker_heartbeat(
        &self,
        pool: &str,
        worker_name: &str,
        heartbeat_interval_seconds: u64,
    ) -> Result<(), PrefectError> {
        let body =
            json!({"name": worker_name, "heartbeat_interval_seconds": heartbeat_interval_seconds});
        self.no_content(
            Method::POST,
            &format!("/work_pools/{}/workers/heartbeat", seg(pool)),
            Some(&body),
            &format!("work pool `{pool}`"),
        )
        .await
    }

    /// The workers of a pool (`POST /work_pools/{name}/workers/filter`), each as the server
    /// returns it (`name`, `status` `ONLINE`/`OFFLINE`, `last_heartbeat_time`, ...).
    pub async fn workers(&self, pool: &str) -> Result<Vec<Value>, PrefectError> {
        let body = json!({"limit": 200});
        self.post(
            &format!("/work_pools/{}/workers/filter", seg(pool)),
            &body,
            &format!("workers of work pool `{pool}`"),
        )
        .await
    }

    /// Runs of a pool due before `scheduled_before` (all queues when `queues` is empty). Does
    /// not claim them: a worker claims a run by proposing PENDING.
    pub async fn get_scheduled_flow_runs(
        &self,
        pool: &str,
        queues: &[String],
        scheduled_before: DateTime<Utc>,
        limit: Option<u32>,
    ) -> Result<Vec<WorkerFlowRun>, PrefectError> {
        let mut body = json!({"scheduled_before": scheduled_before});
        if !queues.is_empty() {
            body["work_queue_names"] = json!(queues);
        }
        if let Some(limit) = limit {
            body["limit"] = json!(limit);
        }
        self.post(
            &format!("/work_pools/{}/get_scheduled_flow_runs", seg(pool)),
            &body,
            &format!("work pool `{pool}`"),
        )
        .await
    }
}

/// Serialises a request body (our own types; failure would be a bug, reported not panicked).
pub(crate) fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, PrefectError> {
    serde_json::to_value(v).map_err(|e| PrefectError::Decode {
        what: "a request body".into(),
        detail: e.to_string(),
    })
}

/// `{collection: {key: {type, default_base_job_configuration}}}` -> the template of `worker_type`.
fn find_worker_template(view: &serde_json::Map<String, Value>, worker_type: &str) -> Option<Value> {
    view.values()
        .filter_map(Value::as_object)
        .flat_map(|workers| workers.values())
        .find(|w| w.get("type").and_then(Value::as_str) == Some(worker_type))
        .and_then(|w| w.get("default_base_job_configuration").cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_template_by_type_not_key() {
        let view = json!({
            "prefect": {"process": {"type": "process", "default_base_job_configuration": {"a": 1}}},
            "prefect-gcp": {"cloud_run_v2": {"type": "cloud-run-v2", "default_base_job_configuration": {"b": 2}}}
        });
        let map = view.as_object().expect("object");
        assert_eq!(
            find_worker_template(map, "cloud-run-v2"),
            Some(json!({"b": 2}))
        );
        assert_eq!(find_worker_template(map, "ecs"), None);
    }
}
