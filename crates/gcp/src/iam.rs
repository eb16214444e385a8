//! IAM v1: service accounts, their keys, and their own IAM policy
//! (`iam.googleapis.com`, discovery document `iam.v1.json`).

use base64::Engine;
use bootstrap_ids::{AccountId, ProjectId, ServiceAccountEmail};
use reqwest::Method;
use secrecy::zeroize::Zeroize;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::GcpError;
use crate::http::{Api, Call, GcpHttp, OptionalExt, list_pages, seg};
use crate::policy::{Policy, PolicyTarget};

/// A service account (`ServiceAccount`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccount {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Key metadata (`ServiceAccountKey`) without the private key, which this type never holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountKey {
    /// `projects/{p}/serviceAccounts/{email}/keys/{keyId}`.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_after_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_before_time: Option<String>,
    /// `USER_MANAGED` or `SYSTEM_MANAGED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_reason: Option<String>,
}

impl ServiceAccountKey {
    /// The key id, the last segment of `name` (also the key file's `private_key_id`).
    pub fn key_id(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or_default()
    }
}

/// A freshly created key: its metadata and the key file JSON (decoded from `privateKeyData`).
/// The JSON is only ever available here, at creation; it is never logged or serialized.
pub struct CreatedKey {
    pub key: ServiceAccountKey,
    pub json: SecretString,
}

impl std::fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedKey")
            .field("key", &self.key)
            .field("json", &"(sensitive)")
            .finish()
    }
}

/// The create-key response, private key included; private to this module.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateKeyResponse {
    #[serde(flatten)]
    key: ServiceAccountKey,
    private_key_data: Option<SecretString>,
}

pub(crate) fn sa_path(project: &ProjectId, email: &ServiceAccountEmail) -> String {
    format!(
        "v1/projects/{}/serviceAccounts/{}",
        seg(project.as_str()),
        seg(email.as_str())
    )
}

/// Reads a service account; `None` if it does not exist.
pub async fn get_service_account(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
) -> Result<Option<ServiceAccount>, GcpError> {
    let call = Call::new(
        "iam.projects.serviceAccounts.get",
        Method::GET,
        Api::Iam,
        sa_path(project, email),
    );
    http.send(call).await.optional()
}

/// Polls until the service account has been read `consecutive` times in a row, or
/// `deadline` passes. Right after a create, IAM answers 404, or 403 "(or it may not exist)",
/// for a while, and a single success can be followed by another miss; Terraform waits for
/// three reads in a row.
pub async fn wait_until_visible(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
    consecutive: u32,
    deadline: std::time::Duration,
) -> Result<ServiceAccount, GcpError> {
    let started = std::time::Instant::now();
    let backoff = crate::operations::PollBackoff::default();
    let mut delay = backoff.initial;
    let mut streak = 0u32;
    loop {
        match get_service_account(http, project, email).await {
            Ok(Some(sa)) => {
                streak += 1;
                if streak >= consecutive.max(1) {
                    return Ok(sa);
                }
            }
            Ok(None) => streak = 0,
            Err(GcpError::PermissionDenied { message, .. })
                if message.contains("may not exist") =>
            {
                streak = 0
            }
            Err(e) => return Err(e),
        }
        if started.elapsed() + delay > deadline {
            return Err(GcpError::Timeout {
                method: format!("waiting for service account {email} to be visible"),
                after: deadline,
            });
        }
        tokio::time::sleep(delay).await;
        // After a hit, read again soon; after a miss, back off.
        delay = if streak > 0 {
            backoff.initial
        } else {
            backoff.next(delay)
        };
    }
}

/// Creates a service account. An existing one gives [`GcpError::AlreadyExists`] (adopt it).
pub async fn create_service_account(
    http: &GcpHttp,
    project: &ProjectId,
    account_id: &AccountId,
    display_name: Option<&str>,
    description: Option<&str>,
) -> Result<ServiceAccount, GcpError> {
    let mut sa = Map::new();
    if let Some(d) = display_name {
        sa.insert("displayName".into(), json!(d));
    }
    if let Some(d) = description {
        sa.insert("description".into(), json!(d));
    }
    let path = format!("v1/projects/{}/serviceAccounts", seg(project.as_str()));
    let call = Call::new(
        "iam.projects.serviceAccounts.create",
        Method::POST,
        Api::Iam,
        path,
    )
    .body(json!({ "accountId": account_id.as_str(), "serviceAccount": sa }))
    // Safe to repeat after a lost answer: the repeat gets 409 ALREADY_EXISTS, which callers
    // adopt (the engine does), instead of the apply failing on one dropped connection.
    .idempotent();
    http.send(call).await
}

/// Sets display name and description (both written; `None` clears).
pub async fn patch_service_account(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
    display_name: Option<&str>,
    description: Option<&str>,
) -> Result<ServiceAccount, GcpError> {
    let body = json!({
        "serviceAccount": {
            "displayName": display_name.unwrap_or_default(),
            "description": description.unwrap_or_default(),
        },
        "updateMask": "displayName,description",
    });
    let call = Call::new(
        "iam.projects.serviceAccounts.patch",
        Method::PATCH,
        Api::Iam,
        sa_path(project, email),
    )
    .body(body)
    .idempotent();
    http.send(call).await
}

/// Deletes a service account; `false` if it was already gone.
pub async fn delete_service_account(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
) -> Result<bool, GcpError> {
    let call = Call::new(
        "iam.projects.serviceAccounts.delete",
        Method::DELETE,
        Api::Iam,
        sa_path(project, email),
    );
    Ok(http.send::<Value>(call).await.optional()?.is_some())
}

/// Lists every service account of the project.
pub async fn list_service_accounts(
    http: &GcpHttp,
    project: &ProjectId,
) -> Result<Vec<ServiceAccount>, GcpError> {
    let path = format!("v1/projects/{}/serviceAccounts", seg(project.as_str()));
    let call = Call::new(
        "iam.projects.serviceAccounts.list",
        Method::GET,
        Api::Iam,
        path,
    )
    .query("pageSize", "100");
    list_pages(http, call, "accounts").await
}

/// Lists keys; `user_managed_only` asks for `keyTypes=USER_MANAGED` (the keys we could own).
pub async fn list_keys(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
    user_managed_only: bool,
) -> Result<Vec<ServiceAccountKey>, GcpError> {
    #[derive(Deserialize)]
    struct Page {
        #[serde(default)]
        keys: Vec<ServiceAccountKey>,
    }
    let mut call = Call::new(
        "iam.projects.serviceAccounts.keys.list",
        Method::GET,
        Api::Iam,
        format!("{}/keys", sa_path(project, email)),
    );
    if user_managed_only {
        call = call.query("keyTypes", "USER_MANAGED");
    }
    Ok(http.send::<Page>(call).await?.keys)
}

/// Reads one key's metadata; `None` if it does not exist.
pub async fn get_key(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
    key_id: &str,
) -> Result<Option<ServiceAccountKey>, GcpError> {
    let path = format!("{}/keys/{}", sa_path(project, email), seg(key_id));
    http.send(Call::new(
        "iam.projects.serviceAccounts.keys.get",
        Method::GET,
        Api::Iam,
        path,
    ))
    .await
    .optional()
}

/// Creates a JSON key (`TYPE_GOOGLE_CREDENTIALS_FILE`, RSA 2048). Not retried after the
/// server may have acted (a retry could leave an orphan key). An organization policy that
/// forbids keys gives [`GcpError::FailedPrecondition`] (see
/// [`GcpError::is_key_creation_forbidden`]).
pub async fn create_key(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
) -> Result<CreatedKey, GcpError> {
    const METHOD: &str = "iam.projects.serviceAccounts.keys.create";
    let call = Call::new(
        METHOD,
        Method::POST,
        Api::Iam,
        format!("{}/keys", sa_path(project, email)),
    )
    .body(json!({
        "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
        "keyAlgorithm": "KEY_ALG_RSA_2048",
    }));
    let resp: CreateKeyResponse = http.send_sensitive(call).await?;
    let data = resp
        .private_key_data
        .ok_or_else(|| GcpError::Config(format!("{METHOD}: the answer has no privateKeyData")))?;
    let json = decode_key_file(data.expose_secret()).ok_or_else(|| {
        GcpError::Config(format!(
            "{METHOD}: privateKeyData is not base64 of a UTF-8 key file"
        ))
    })?;
    Ok(CreatedKey {
        key: resp.key,
        json,
    })
}

/// Base64 (standard, padding optional) -> UTF-8 key file; the decoded bytes are wiped.
fn decode_key_file(data: &str) -> Option<SecretString> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let mut bytes = engine.decode(data.trim()).ok()?;
    let text = std::str::from_utf8(&bytes)
        .ok()
        .map(|s| SecretString::from(s.to_owned()));
    bytes.zeroize();
    text
}

/// Deletes a key; `false` if it was already gone.
pub async fn delete_key(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
    key_id: &str,
) -> Result<bool, GcpError> {
    let path = format!("{}/keys/{}", sa_path(project, email), seg(key_id));
    let call = Call::new(
        "iam.projects.serviceAccounts.keys.delete",
        Method::DELETE,
        Api::Iam,
        path,
    );
    Ok(http.send::<Value>(call).await.optional()?.is_some())
}

/// The service account's own policy (e.g. who has `roles/iam.serviceAccountUser` on it).
pub async fn get_iam_policy(
    http: &GcpHttp,
    project: &ProjectId,
    email: &ServiceAccountEmail,
) -> Result<Policy, GcpError> {
    let target = PolicyTarget::ServiceAccount {
        project: project.clone(),
        email: email.clone(),
    };
    target.get(http).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_decoding() {
        let file = r#"{"type":"service_account","private_key":"k"}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(file);
        assert_eq!(decode_key_file(&b64).unwrap().expose_secret(), file);
        assert_eq!(
            decode_key_file(b64.trim_end_matches('='))
                .unwrap()
                .expose_secret(),
            file
        );
        assert!(decode_key_file("***").is_none());
    }

    #[test]
    fn create_response_keeps_key_out_of_metadata() {
        let resp: CreateKeyResponse = serde_json::from_str(
            r#"{"name":"projects/p/serviceAccounts/s@p.iam.gserviceaccount.com/keys/abc123",
                "privateKeyType":"TYPE_GOOGLE_CREDENTIALS_FILE","privateKeyData":"c2VjcmV0",
                "keyAlgorithm":"KEY_ALG_RSA_2048","keyType":"USER_MANAGED"}"#,
        )
        .unwrap();
        assert_eq!(resp.key.key_id(), "abc123");
        assert_eq!(resp.key.key_type.as_deref(), Some("USER_MANAGED"));
        let created = CreatedKey {
            key: resp.key,
            json: SecretString::from("secret".to_owned()),
        };
        let shown = format!(
            "{created:?} {}",
            serde_json::to_string(&created.key).unwrap()
        );
        assert!(
            !shown.contains("secret") && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
    }

    #[test]
    fn paths_encode_ids() {
        let p = ProjectId::parse("my-project").unwrap();
        let e = ServiceAccountEmail::parse("robot@my-project.iam.gserviceaccount.com").unwrap();
        assert_eq!(
            sa_path(&p, &e),
            "v1/projects/my-project/serviceAccounts/robot@my-project.iam.gserviceaccount.com"
        );
    }
}
