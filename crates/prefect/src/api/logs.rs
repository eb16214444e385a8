//! Logs, artifacts and variables.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use super::seg;
use super::work_pools::to_value;
use crate::client::{OptionalExt, PrefectClient};
use crate::error::PrefectError;
use crate::models::{Artifact, Log, LogCreate, Variable};

/// The server's page size maximum for filters.
pub const MAX_PAGE: u32 = 200;

impl PrefectClient {
    /// Ships log lines (one request for the batch).
    pub async fn create_logs(&self, logs: &[LogCreate]) -> Result<(), PrefectError> {
        if logs.is_empty() {
            return Ok(());
        }
        let body = to_value(&logs)?;
        self.no_content(Method::POST, "/logs/", Some(&body), "logs")
            .await
    }

    /// One page of a run's logs in time order, from `since` (inclusive) on.
    pub async fn flow_run_logs(
        &self,
        flow_run_id: Uuid,
        since: Option<DateTime<Utc>>,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<Log>, PrefectError> {
        let mut filter = json!({"flow_run_id": {"any_": [flow_run_id]}});
        if let Some(since) = since {
            filter["timestamp"] = json!({"after_": since});
        }
        let body = json!({
            "logs": filter,
            "sort": "TIMESTAMP_ASC",
            "offset": offset,
            "limit": limit.min(MAX_PAGE),
        });
        self.post("/logs/filter", &body, "logs").await
    }

    /// All of a run's logs from `since` on, page after page (bounded to `max_pages`).
    pub async fn all_flow_run_logs(
        &self,
        flow_run_id: Uuid,
        since: Option<DateTime<Utc>>,
        max_pages: u32,
    ) -> Result<Vec<Log>, PrefectError> {
        let mut out = Vec::new();
        for page in 0..max_pages {
            let batch = self
                .flow_run_logs(flow_run_id, since, page * MAX_PAGE, MAX_PAGE)
                .await?;
            let full = batch.len() as u32 == MAX_PAGE;
            out.extend(batch);
            if !full {
                break;
            }
        }
        Ok(out)
    }

    /// A run's artifacts, oldest first.
    pub async fn flow_run_artifacts(
        &self,
        flow_run_id: Uuid,
    ) -> Result<Vec<Artifact>, PrefectError> {
        let body = json!({
            "artifacts": {"flow_run_id": {"any_": [flow_run_id]}},
            "sort": "CREATED_DESC",
            "limit": MAX_PAGE,
        });
        let mut artifacts: Vec<Artifact> =
            self.post("/artifacts/filter", &body, "artifacts").await?;
        // The server offers no ascending sort by creation; reverse the descending one.
        artifacts.reverse();
        Ok(artifacts)
    }

    /// The variable of this name.
    pub async fn variable_by_name(&self, name: &str) -> Result<Option<Variable>, PrefectError> {
        self.get(
            &format!("/variables/name/{}", seg(name)),
            &format!("variable `{name}`"),
        )
        .await
        .optional()
    }
}
