//! Resource Manager v1: the project and its IAM policy
//! (`cloudresourcemanager.googleapis.com`, discovery document `cloudresourcemanager.v1.json`).

use bootstrap_ids::ProjectId;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, seg};
use crate::policy::{Policy, PolicyTarget};

/// `testIamPermissions` accepts at most this many permissions per call.
const TEST_PERMISSIONS_BATCH: usize = 100;

/// A project (`Project`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    /// Decimal, as a string (int64 in the schema).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `ACTIVE`, `DELETE_REQUESTED`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_state: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Reads the project; `None` on 404. Google usually answers 403 both for a project that does
/// not exist and for one the caller may not see, so a 403 stays an error.
pub async fn get_project(http: &GcpHttp, project: &ProjectId) -> Result<Option<Project>, GcpError> {
    let path = format!("v1/projects/{}", seg(project.as_str()));
    http.send(Call::new(
        "cloudresourcemanager.projects.get",
        Method::GET,
        Api::ResourceManager,
        path,
    ))
    .await
    .optional()
}

/// The project policy, requested as version 3 so conditional bindings come back whole.
pub async fn get_iam_policy(http: &GcpHttp, project: &ProjectId) -> Result<Policy, GcpError> {
    PolicyTarget::Project(project.clone()).get(http).await
}

/// Which of `permissions` the caller holds on the project (in batches of 100).
pub async fn test_iam_permissions(
    http: &GcpHttp,
    project: &ProjectId,
    permissions: &[String],
) -> Result<Vec<String>, GcpError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        permissions: Vec<String>,
    }
    let mut held = Vec::new();
    for chunk in permissions.chunks(TEST_PERMISSIONS_BATCH) {
        let path = format!("v1/projects/{}:testIamPermissions", seg(project.as_str()));
        let call = Call::new(
            "cloudresourcemanager.projects.testIamPermissions",
            Method::POST,
            Api::ResourceManager,
            path,
        )
        .body(json!({ "permissions": chunk }))
        .idempotent();
        held.extend(http.send::<Answer>(call).await?.permissions);
    }
    Ok(held)
}
