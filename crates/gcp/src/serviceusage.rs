//! Service Usage v1: which APIs are enabled, and enabling them
//! (`serviceusage.googleapis.com`, discovery document `serviceusage.v1.json`).

use std::time::Duration;

use bootstrap_ids::{ApiService, ProjectId};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, seg};
use crate::operations::{self, Operation};

/// `services:batchEnable` accepts at most this many services per call.
pub const BATCH_ENABLE_LIMIT: usize = 20;
/// `services:batchGet` accepts at most this many names per call.
const BATCH_GET_LIMIT: usize = 30;

/// An API's state in a project (`GoogleApiServiceusageV1Service`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `projects/{number}/services/{service}`.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `ENABLED`, `DISABLED` or `STATE_UNSPECIFIED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Service {
    /// The service name, e.g. `run.googleapis.com`.
    pub fn service(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or_default()
    }

    pub fn is_enabled(&self) -> bool {
        self.state.as_deref() == Some("ENABLED")
    }
}

fn services_path(project: &ProjectId) -> String {
    format!("v1/projects/{}/services", seg(project.as_str()))
}

/// Reads one API's state.
pub async fn get_service(
    http: &GcpHttp,
    project: &ProjectId,
    service: &ApiService,
) -> Result<Service, GcpError> {
    let path = format!("{}/{}", services_path(project), seg(service.as_str()));
    http.send(Call::new(
        "serviceusage.services.get",
        Method::GET,
        Api::ServiceUsage,
        path,
    ))
    .await
}

/// Reads several APIs' states (in batches of 30).
pub async fn batch_get(
    http: &GcpHttp,
    project: &ProjectId,
    services: &[ApiService],
) -> Result<Vec<Service>, GcpError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        services: Vec<Service>,
    }
    let mut out = Vec::new();
    for chunk in services.chunks(BATCH_GET_LIMIT) {
        let mut call = Call::new(
            "serviceusage.services.batchGet",
            Method::GET,
            Api::ServiceUsage,
            format!("{}:batchGet", services_path(project)),
        );
        for s in chunk {
            call = call.query("names", format!("projects/{project}/services/{s}"));
        }
        out.extend(http.send::<Answer>(call).await?.services);
    }
    Ok(out)
}

/// Starts enabling one API (enabling an enabled API is harmless, so this is retried freely).
pub async fn enable(
    http: &GcpHttp,
    project: &ProjectId,
    service: &ApiService,
) -> Result<Operation, GcpError> {
    let path = format!(
        "{}/{}:enable",
        services_path(project),
        seg(service.as_str())
    );
    let call = Call::new(
        "serviceusage.services.enable",
        Method::POST,
        Api::ServiceUsage,
        path,
    )
    .body(json!({}))
    .idempotent()
    .retry_conflicts();
    http.send(call).await
}

/// Starts enabling up to [`BATCH_ENABLE_LIMIT`] APIs in one call.
pub async fn batch_enable(
    http: &GcpHttp,
    project: &ProjectId,
    services: &[ApiService],
) -> Result<Operation, GcpError> {
    if services.is_empty() || services.len() > BATCH_ENABLE_LIMIT {
        return Err(GcpError::Config(format!(
            "serviceusage.services.batchEnable takes 1 to {BATCH_ENABLE_LIMIT} services, not {}",
            services.len()
        )));
    }
    let ids: Vec<&str> = services.iter().map(ApiService::as_str).collect();
    let call = Call::new(
        "serviceusage.services.batchEnable",
        Method::POST,
        Api::ServiceUsage,
        format!("{}:batchEnable", services_path(project)),
    )
    .body(json!({ "serviceIds": ids }))
    .idempotent()
    .retry_conflicts();
    http.send(call).await
}

/// Whether `service` (e.g. `run.googleapis.com`) is enabled in the project.
pub async fn is_enabled(
    http: &GcpHttp,
    project: &ProjectId,
    service: &str,
) -> Result<bool, GcpError> {
    let service = parse_service(service)?;
    Ok(get_service(http, project, &service).await?.is_enabled())
}

/// Enables every one of `services` (batches of 20) and waits for each operation until
/// `deadline` (per batch).
pub async fn enable_all<S: AsRef<str>>(
    http: &GcpHttp,
    project: &ProjectId,
    services: &[S],
    deadline: Duration,
) -> Result<(), GcpError> {
    let services = services
        .iter()
        .map(|s| parse_service(s.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    for chunk in services.chunks(BATCH_ENABLE_LIMIT) {
        let op = batch_enable(http, project, chunk).await?;
        wait_operation(http, op, deadline).await?;
    }
    Ok(())
}

fn parse_service(service: &str) -> Result<ApiService, GcpError> {
    ApiService::parse(service)
        .map_err(|e| GcpError::Config(format!("invalid API service `{service}`: {e}")))
}

/// Polls a Service Usage operation (`operations/...`) until done or `deadline`.
pub async fn wait_operation(
    http: &GcpHttp,
    op: Operation,
    deadline: Duration,
) -> Result<Value, GcpError> {
    operations::wait(http, Api::ServiceUsage, "v1", op, deadline).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_state() {
        let s: Service = serde_json::from_str(
            r#"{"name":"projects/123/services/run.googleapis.com","parent":"projects/123","state":"ENABLED","config":{"title":"Cloud Run Admin API"}}"#,
        )
        .unwrap();
        assert_eq!(s.service(), "run.googleapis.com");
        assert!(s.is_enabled());
        assert_eq!(s.extra["config"]["title"], "Cloud Run Admin API");
    }
}
