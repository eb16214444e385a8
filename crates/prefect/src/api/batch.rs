//! Reads of many objects in few requests: the server's `/flows/filter` and `/deployments/filter`
//! take lists of names (`any_`, an SQL `IN`; `prefect/server/schemas/filters.py`,
//! `FlowFilterName`, `DeploymentFilterName`), so a plan with a hundred deployments is observed
//! with two requests instead of a hundred `GET /deployments/name/{flow}/{name}`.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::client::PrefectClient;
use crate::error::PrefectError;
use crate::models::{Deployment, Flow};

/// Objects per page. The server refuses a `limit` above `PREFECT_SERVER_API_DEFAULT_LIMIT`
/// (200 unless changed; `prefect/server/api/dependencies.py`, `LimitBody`) with a 422.
pub const PAGE: usize = 200;

/// A deployment's identity as users write it: `flow/deployment`.
pub type DeploymentKey = (String, String);

impl PrefectClient {
    /// Every object `path` (a `.../filter` endpoint) returns for `filter`, page by page
    /// (`offset`), sorted by name so pages do not overlap.
    async fn filter_all<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        filter: Value,
        what: &str,
    ) -> Result<Vec<T>, PrefectError> {
        let mut out = Vec::new();
        loop {
            let mut body = filter.clone();
            body["limit"] = json!(PAGE);
            body["offset"] = json!(out.len());
            body["sort"] = json!("NAME_ASC");
            let page: Vec<T> = self.post(path, &body, what).await?;
            let full = page.len() == PAGE;
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    /// The flows with these names (those that exist).
    pub async fn flows_by_names(&self, names: &[&str]) -> Result<Vec<Flow>, PrefectError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        self.filter_all(
            "/flows/filter",
            json!({"flows": {"name": {"any_": names}}}),
            "flows",
        )
        .await
    }

    /// The deployments `flow/name` of `wanted` that exist, by key. Two requests (flows and
    /// deployments filtered by the names, sent concurrently) for up to 200 of each; the
    /// server's answer may hold other combinations of the same names (`a/y` when `a/x` and
    /// `b/y` were asked for), which are left out.
    pub async fn deployments_by_names(
        &self,
        wanted: &[DeploymentKey],
    ) -> Result<BTreeMap<DeploymentKey, Deployment>, PrefectError> {
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let flows: BTreeSet<&str> = wanted.iter().map(|(f, _)| f.as_str()).collect();
        let names: BTreeSet<&str> = wanted.iter().map(|(_, d)| d.as_str()).collect();
        let flow_list: Vec<&str> = flows.iter().copied().collect();
        let filter = json!({
            "flows": {"name": {"any_": flow_list}},
            "deployments": {"name": {"any_": names}},
        });
        let (flows, deployments) = tokio::try_join!(
            self.flows_by_names(&flow_list),
            self.filter_all::<Deployment>("/deployments/filter", filter, "deployments"),
        )?;
        let flow_names: BTreeMap<Uuid, String> =
            flows.into_iter().map(|f| (f.id, f.name)).collect();
        let wanted: BTreeSet<&DeploymentKey> = wanted.iter().collect();
        Ok(deployments
            .into_iter()
            .filter_map(|d| {
                // A flow created between the two reads is not in `flow_names`: its deployment
                // was created after the reads began too, and reads as absent, as it would
                // with one read per deployment sent a moment earlier.
                let key = (flow_names.get(&d.flow_id)?.clone(), d.name.clone());
                wanted.contains(&key).then_some((key, d))
            })
            .collect())
    }
}
