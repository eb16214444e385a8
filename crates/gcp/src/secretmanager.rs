//! Secret Manager v1: secrets, versions and the secret-level IAM policy
//! (`secretmanager.googleapis.com`, discovery document `secretmanager.v1.json`).

use std::collections::BTreeMap;

use base64::Engine;
use bootstrap_ids::{ProjectId, SecretId};
use reqwest::Method;
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, list_pages, seg};
use crate::policy::{Policy, PolicyTarget};

/// A secret (`Secret`); unknown fields are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// `projects/{number}/secrets/{id}` (output only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A secret version's metadata (`SecretVersion`); never the payload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretVersion {
    /// `projects/{number}/secrets/{id}/versions/{n}`.
    #[serde(default)]
    pub name: String,
    /// `ENABLED`, `DISABLED` or `DESTROYED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl SecretVersion {
    /// The version number, the last segment of `name`.
    pub fn version(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or_default()
    }
}

pub(crate) fn secret_path(project: &ProjectId, secret: &SecretId) -> String {
    format!(
        "v1/projects/{}/secrets/{}",
        seg(project.as_str()),
        seg(secret.as_str())
    )
}

/// Reads a secret; `None` if it does not exist.
pub async fn get_secret(
    http: &GcpHttp,
    project: &ProjectId,
    secret: &SecretId,
) -> Result<Option<Secret>, GcpError> {
    http.send(Call::new(
        "secretmanager.projects.secrets.get",
        Method::GET,
        Api::SecretManager,
        secret_path(project, secret),
    ))
    .await
    .optional()
}

/// Creates a secret with automatic replication and `labels`.
pub async fn create_secret(
    http: &GcpHttp,
    project: &ProjectId,
    secret: &SecretId,
    labels: &BTreeMap<String, String>,
) -> Result<Secret, GcpError> {
    let path = format!("v1/projects/{}/secrets", seg(project.as_str()));
    let call = Call::new(
        "secretmanager.projects.secrets.create",
        Method::POST,
        Api::SecretManager,
        path,
    )
    .query("secretId", secret.as_str())
    .body(json!({ "replication": { "automatic": {} }, "labels": labels }));
    http.send(call).await
}

/// Deletes a secret and all its versions; `false` if it was already gone.
pub async fn delete_secret(
    http: &GcpHttp,
    project: &ProjectId,
    secret: &SecretId,
) -> Result<bool, GcpError> {
    let call = Call::new(
        "secretmanager.projects.secrets.delete",
        Method::DELETE,
        Api::SecretManager,
        secret_path(project, secret),
    );
    Ok(http.send::<Value>(call).await.optional()?.is_some())
}

/// Adds a version holding `payload` (sent base64-encoded). Not retried once the server may
/// have acted, since a repeat would add a second version.
pub async fn add_version(
    http: &GcpHttp,
    project: &ProjectId,
    secret: &SecretId,
    payload: &SecretString,
) -> Result<SecretVersion, GcpError> {
    let data = base64::engine::general_purpose::STANDARD.encode(payload.expose_secret().as_bytes());
    let path = format!("{}:addVersion", secret_path(project, secret));
    let call = Call::new(
        "secretmanager.projects.secrets.addVersion",
        Method::POST,
        Api::SecretManager,
        path,
    )
    .body(json!({ "payload": { "data": data } }));
    http.send(call).await
}

/// Lists a secret's versions (metadata only).
pub async fn list_versions(
    http: &GcpHttp,
    project: &ProjectId,
    secret: &SecretId,
) -> Result<Vec<SecretVersion>, GcpError> {
    let path = format!("{}/versions", secret_path(project, secret));
    let call = Call::new(
        "secretmanager.projects.secrets.versions.list",
        Method::GET,
        Api::SecretManager,
        path,
    )
    .query("pageSize", "100");
    list_pages(http, call, "versions").await
}

/// The payload of the latest enabled version; `None` if the secret or a version does not
/// exist.
pub async fn access_latest(
    http: &GcpHttp,
    project: &ProjectId,
    secret: &SecretId,
) -> Result<Option<SecretString>, GcpError> {
    #[derive(Deserialize)]
    struct Answer {
        payload: Option<Payload>,
    }
    #[derive(Deserialize)]
    struct Payload {
        data: Option<SecretString>,
    }
    const METHOD: &str = "secretmanager.projects.secrets.versions.access";
    let path = format!("{}/versions/latest:access", secret_path(project, secret));
    let Some(answer) = http
        .send_sensitive::<Answer>(Call::new(METHOD, Method::GET, Api::SecretManager, path))
        .await
        .optional()?
    else {
        return Ok(None);
    };
    let data = answer.payload.and_then(|p| p.data);
    let encoded = data
        .as_ref()
        .map(|d| d.expose_secret().trim())
        .unwrap_or_default();
    let mut bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| GcpError::Config(format!("{METHOD}: the payload is not base64")))?;
    let text = std::str::from_utf8(&bytes).map(|s| SecretString::from(s.to_owned()));
    bytes.zeroize();
    text.map(Some)
        .map_err(|_| GcpError::Config(format!("{METHOD}: the payload is not UTF-8 text")))
}

/// The secret's policy (a GET with the version as a query parameter).
pub async fn get_iam_policy(
    http: &GcpHttp,
    project: &ProjectId,
    secret: &SecretId,
) -> Result<Policy, GcpError> {
    let target = PolicyTarget::Secret {
        project: project.clone(),
        secret: secret.clone(),
    };
    target.get(http).await
}
