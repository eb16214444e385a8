//! Flows and deployments.

use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::seg;
use super::work_pools::to_value;
use crate::client::{OptionalExt, PrefectClient};
use crate::error::PrefectError;
use crate::models::{Deployment, DeploymentSpec, Flow};

impl PrefectClient {
    /// Creates the flow or returns the existing one of that name (the server upserts by name).
    pub async fn upsert_flow(&self, name: &str, tags: &[String]) -> Result<Flow, PrefectError> {
        let body = json!({"name": name, "tags": tags});
        self.post("/flows/", &body, &format!("flow `{name}`")).await
    }

    /// The flow of this name.
    pub async fn flow_by_name(&self, name: &str) -> Result<Option<Flow>, PrefectError> {
        self.get(
            &format!("/flows/name/{}", seg(name)),
            &format!("flow `{name}`"),
        )
        .await
        .optional()
    }

    /// The flow with this id.
    pub async fn flow(&self, id: Uuid) -> Result<Option<Flow>, PrefectError> {
        self.get(&format!("/flows/{id}"), &format!("flow {id}"))
            .await
            .optional()
    }

    /// All flows (at most 200), for "did you mean" messages.
    pub async fn flows(&self) -> Result<Vec<Flow>, PrefectError> {
        self.post("/flows/filter", &json!({"limit": 200}), "flows")
            .await
    }

    /// The deployment `flow/name`, `None` when there is none.
    pub async fn deployment_by_name(
        &self,
        flow: &str,
        name: &str,
    ) -> Result<Option<Deployment>, PrefectError> {
        self.get(
            &format!("/deployments/name/{}/{}", seg(flow), seg(name)),
            &format!("deployment `{flow}/{name}`"),
        )
        .await
        .optional()
    }

    /// The deployment with this id.
    pub async fn deployment(&self, id: Uuid) -> Result<Option<Deployment>, PrefectError> {
        self.get(&format!("/deployments/{id}"), &format!("deployment {id}"))
            .await
            .optional()
    }

    /// Deployments of a flow (at most 200), for listings and "did you mean" messages.
    pub async fn deployments_of_flow(
        &self,
        flow_id: Uuid,
    ) -> Result<Vec<Deployment>, PrefectError> {
        let body = json!({"flows": {"id": {"any_": [flow_id]}}, "limit": 200});
        self.post("/deployments/filter", &body, "deployments").await
    }

    /// All deployments (at most 200).
    pub async fn deployments(&self) -> Result<Vec<Deployment>, PrefectError> {
        self.post("/deployments/filter", &json!({"limit": 200}), "deployments")
            .await
    }

    /// Creates the deployment, or updates the one with the same flow and name (the server
    /// upserts). Note that an update through here replaces every field given.
    pub async fn upsert_deployment(
        &self,
        flow_id: Uuid,
        name: &str,
        spec: &DeploymentSpec,
    ) -> Result<Deployment, PrefectError> {
        let mut body = to_value(spec)?;
        body["name"] = json!(name);
        body["flow_id"] = json!(flow_id);
        self.post("/deployments/", &body, &format!("deployment `{name}`"))
            .await
    }

    /// Changes only the fields set in `spec`. Call it only on a real change: an update removes
    /// the deployment's future scheduled runs.
    pub async fn update_deployment(
        &self,
        id: Uuid,
        spec: &DeploymentSpec,
    ) -> Result<(), PrefectError> {
        let body = to_value(spec)?;
        self.no_content(
            Method::PATCH,
            &format!("/deployments/{id}"),
            Some(&body),
            &format!("deployment {id}"),
        )
        .await
    }

    /// Deletes a deployment: `false` when it was already gone.
    pub async fn delete_deployment(&self, id: Uuid) -> Result<bool, PrefectError> {
        self.delete(&format!("/deployments/{id}"), &format!("deployment {id}"))
            .await
    }
}
