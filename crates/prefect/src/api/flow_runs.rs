//! Flow runs: creation from a deployment, reads, filters, state proposals and updates.

use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use super::work_pools::to_value;
use crate::client::{OptionalExt, PrefectClient};
use crate::error::PrefectError;
use crate::models::{
    FlowRun, FlowRunFromDeployment, FlowRunQuery, OrchestrationResult, State, StateCreate,
};

impl PrefectClient {
    /// Starts a run of a deployment (what the UI's Quick Run does). The run is SCHEDULED for
    /// now. Without an `idempotency_key`, one is made up so that a retried request cannot
    /// create a second run.
    pub async fn create_flow_run_from_deployment(
        &self,
        deployment_id: Uuid,
        run: &FlowRunFromDeployment,
    ) -> Result<FlowRun, PrefectError> {
        let mut run = run.clone();
        if run.idempotency_key.is_none() {
            run.idempotency_key = Some(Uuid::new_v4().to_string());
        }
        let body = to_value(&run)?;
        self.post(
            &format!("/deployments/{deployment_id}/create_flow_run"),
            &body,
            &format!("deployment {deployment_id}"),
        )
        .await
    }

    /// The flow run with this id.
    pub async fn flow_run(&self, id: Uuid) -> Result<Option<FlowRun>, PrefectError> {
        self.get(&format!("/flow_runs/{id}"), &format!("flow run {id}"))
            .await
            .optional()
    }

    /// Every state the run has been in, oldest first (states a poll would miss included).
    pub async fn flow_run_states(&self, id: Uuid) -> Result<Vec<State>, PrefectError> {
        let mut states: Vec<State> = self
            .json(
                Method::GET,
                "/flow_run_states/",
                &[("flow_run_id", id.to_string())],
                None,
                &format!("flow run {id}"),
            )
            .await?;
        states.sort_by_key(|s| s.timestamp);
        Ok(states)
    }

    /// Flow runs matching every condition given in `query`.
    pub async fn filter_flow_runs(
        &self,
        query: &FlowRunQuery,
    ) -> Result<Vec<FlowRun>, PrefectError> {
        let mut body =
            json!({"limit": query.limit.unwrap_or(200), "sort": "EXPECTED_START_TIME_ASC"});
        let mut runs = serde_json::Map::new();
        if !query.states.is_empty() {
            let types: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
            runs.insert("state".into(), json!({"type": {"any_": types}}));
        }
        if !query.flow_run_ids.is_empty() {
            runs.insert("id".into(), json!({"any_": query.flow_run_ids}));
        }
        if !runs.is_empty() {
            body["flow_runs"] = Value::Object(runs);
        }
        if !query.work_pool_names.is_empty() {
            body["work_pools"] = json!({"name": {"any_": query.work_pool_names}});
        }
        if !query.deployment_ids.is_empty() {
            body["deployments"] = json!({"id": {"any_": query.deployment_ids}});
        }
        self.post("/flow_runs/filter", &body, "flow runs").await
    }

    /// Proposes a state. The verdict is in the answer's `status` (ACCEPT, REJECT, ABORT, WAIT),
    /// never in the HTTP code: a losing claim may still answer 201. `force` skips the
    /// orchestration rules (used to mark a run CANCELLED after killing its infrastructure).
    pub async fn set_flow_run_state(
        &self,
        id: Uuid,
        state: &StateCreate,
        force: bool,
    ) -> Result<OrchestrationResult, PrefectError> {
        let mut state_body = to_value(state)?;
        // The server uses the transition id to recognise a replayed proposal.
        state_body["state_details"] = json!({"flow_run_id": id, "transition_id": Uuid::new_v4()});
        let body = json!({"state": state_body, "force": force});
        self.post(
            &format!("/flow_runs/{id}/set_state"),
            &body,
            &format!("flow run {id}"),
        )
        .await
    }

    /// Records the infrastructure id (the Cloud Run job name) on a run.
    pub async fn set_flow_run_infrastructure_pid(
        &self,
        id: Uuid,
        infrastructure_pid: &str,
    ) -> Result<(), PrefectError> {
        self.no_content(
            Method::PATCH,
            &format!("/flow_runs/{id}"),
            Some(&json!({"infrastructure_pid": infrastructure_pid})),
            &format!("flow run {id}"),
        )
        .await
    }

    /// Adds or replaces labels of a run (other labels are kept).
    pub async fn update_flow_run_labels(
        &self,
        id: Uuid,
        labels: &serde_json::Map<String, Value>,
    ) -> Result<(), PrefectError> {
        self.no_content(
            Method::PATCH,
            &format!("/flow_runs/{id}/labels"),
            Some(&Value::Object(labels.clone())),
            &format!("flow run {id}"),
        )
        .await
    }

    /// Deletes a flow run: `false` when it was already gone.
    pub async fn delete_flow_run(&self, id: Uuid) -> Result<bool, PrefectError> {
        self.delete(&format!("/flow_runs/{id}"), &format!("flow run {id}"))
            .await
    }
}
