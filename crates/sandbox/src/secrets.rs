//! Secret Manager v1: secrets, versions (`:addVersion`, `:access`), and secret IAM policies.
//! Payloads live only in memory (as `SecretString`), are never logged and never persisted: after
//! a restart with `--persist` a version's payload is gone and `:access` says so.

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::auth::Caller;
use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::google::{Ctx, paginate};
use crate::iam;
use crate::methods::MethodCall;
use crate::policy::{self, Policy};
use crate::state::AppState;

/// Largest payload Google accepts (64 KiB).
const MAX_PAYLOAD: usize = 64 * 1024;

/// One version of a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretVersion {
    /// 1, 2, ...
    pub number: u64,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// `ENABLED`, `DISABLED` or `DESTROYED`.
    pub state: String,
    /// When destroyed.
    pub destroy_time: Option<DateTime<Utc>>,
    /// Base64 of the payload; never serialized.
    #[serde(skip)]
    pub payload: Option<SecretString>,
    /// The client sent `payload.dataCrc32c` and it matched (`clientSpecifiedPayloadChecksum`;
    /// gcloud fails `versions add` with "payload data corruption may have occurred" without it).
    #[serde(default)]
    pub client_checksum: bool,
}

/// A secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Secret {
    /// Project id.
    pub project: String,
    /// Project number (Google names secrets by number).
    pub number: String,
    /// Secret id.
    pub id: String,
    /// Creation time.
    pub create_time: DateTime<Utc>,
    /// `replication`, verbatim.
    pub replication: Value,
    /// `labels`, verbatim.
    pub labels: Value,
    /// `annotations`, verbatim.
    pub annotations: Value,
    /// Changes on every update.
    pub etag: String,
    /// The secret's IAM policy.
    pub policy: Policy,
    /// Versions in creation order.
    pub versions: Vec<SecretVersion>,
}

impl Secret {
    fn name(&self) -> String {
        format!("projects/{}/secrets/{}", self.number, self.id)
    }

    fn to_json(&self) -> Value {
        let mut out = json!({
            "name": self.name(),
            "replication": self.replication,
            "createTime": self.create_time.to_rfc3339_opts(SecondsFormat::Micros, true),
            "etag": self.etag,
        });
        if self.labels.as_object().is_some_and(|l| !l.is_empty()) {
            out["labels"] = self.labels.clone();
        }
        if self.annotations.as_object().is_some_and(|l| !l.is_empty()) {
            out["annotations"] = self.annotations.clone();
        }
        out
    }

    fn version_json(&self, v: &SecretVersion) -> Value {
        let mut out = json!({
            "name": format!("{}/versions/{}", self.name(), v.number),
            "createTime": v.create_time.to_rfc3339_opts(SecondsFormat::Micros, true),
            "state": v.state,
            "replicationStatus": if self.replication.get("userManaged").is_some() {
                json!({ "userManaged": {} })
            } else {
                json!({ "automatic": {} })
            },
            "etag": format!("\"{}\"", v.create_time.timestamp_micros()),
        });
        if let Some(at) = v.destroy_time {
            out["destroyTime"] = json!(at.to_rfc3339_opts(SecondsFormat::Micros, true));
        }
        if v.client_checksum {
            out["clientSpecifiedPayloadChecksum"] = json!(true);
        }
        out
    }

    /// A version by number or `latest` (the most recently created).
    fn version(&self, id: &str) -> Option<&SecretVersion> {
        if id == "latest" {
            self.versions.last()
        } else {
            self.versions.iter().find(|v| v.number.to_string() == id)
        }
    }
}

/// CRC32C (Castagnoli) of the payload, as Secret Manager reports it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn key(number: &str, id: &str) -> String {
    format!("projects/{number}/secrets/{id}")
}

fn validate_secret_id(id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "Secret id \"{id}\" is invalid: it must be 1 to 255 characters of letters, digits, '-' or '_'."
        )))
    }
}

/// Resolves the addressed secret and checks `permission` via the project's and the secret's
/// policies. Returns the secret's storage key.
fn authorize(
    state: &AppState,
    caller: &Caller,
    project: &str,
    secret: &str,
    permission: &str,
) -> ApiResult<String> {
    let found = {
        let data = state.read();
        data.project(project)
            .map(|p| (p.number.clone(), p.policy.clone()))
            .map(|(number, project_policy)| {
                let k = key(&number, secret);
                let secret_policy = data.secrets.get(&k).map(|s| s.policy.clone());
                (k, project_policy, secret_policy)
            })
    };
    let resource = format!("projects/{project}/secrets/{secret}");
    let Some((k, project_policy, secret_policy)) = found else {
        authz::check(state, caller, permission, &resource, &[])?;
        return Err(ApiError::not_found(format!(
            "Secret [{resource}] not found or has no versions."
        )));
    };
    match secret_policy {
        Some(sp) => authz::check(
            state,
            caller,
            permission,
            &resource,
            &[&project_policy, &sp],
        )?,
        None => {
            authz::check(state, caller, permission, &resource, &[&project_policy])?;
            return Err(ApiError::not_found(format!(
                "Secret [{resource}] not found or has no versions."
            )));
        }
    }
    Ok(k)
}

/// The payload of a version for a Run container's `secretKeyRef`, as `accessor` (the runtime
/// service account) may read it: needs `secretmanager.versions.access`. `secret` is an id or a
/// full `projects/{p}/secrets/{id}` name. Returns the raw value.
pub fn resolve(
    state: &AppState,
    accessor: &Caller,
    project: &str,
    secret: &str,
    version: &str,
) -> ApiResult<SecretString> {
    let (project, secret) = match secret
        .strip_prefix("projects/")
        .and_then(|r| r.split_once("/secrets/"))
    {
        Some((p, s)) => (p.to_owned(), s.to_owned()),
        None => (project.to_owned(), secret.to_owned()),
    };
    let k = authorize(
        state,
        accessor,
        &project,
        &secret,
        "secretmanager.versions.access",
    )?;
    let b64 = payload_of(
        state,
        &k,
        if version.is_empty() {
            "latest"
        } else {
            version
        },
    )?;
    let bytes = STANDARD
        .decode(b64.expose_secret())
        .map_err(|_| ApiError::internal("Stored payload is not base64."))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ApiError::failed_precondition("Secret payload is not UTF-8."))?;
    Ok(SecretString::from(text))
}

fn payload_of(state: &AppState, k: &str, version: &str) -> ApiResult<SecretString> {
    let data = state.read();
    let secret = data
        .secrets
        .get(k)
        .ok_or_else(|| ApiError::not_found(format!("Secret [{k}] not found.")))?;
    let v = secret.version(version).ok_or_else(|| {
        ApiError::not_found(format!(
            "Secret Version [{k}/versions/{version}] not found."
        ))
    })?;
    if v.state != "ENABLED" {
        return Err(ApiError::failed_precondition(format!(
            "Secret Version [{k}/versions/{}] is in {} state.",
            v.number, v.state
        )));
    }
    v.payload.clone().ok_or_else(|| {
        ApiError::failed_precondition(format!(
            "Secret Version [{k}/versions/{}] has no payload: payloads are kept in memory only and the sandbox restarted.",
            v.number
        ))
    })
}

/// Handles one Secret Manager call.
pub fn handle(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let method = call
        .id
        .trim_start_matches("secretmanager.projects.secrets.");
    let project = &call.params[0];
    let state = &ctx.state;
    match method {
        "create" => create(ctx, project),
        "list" => {
            authz::require(state, &ctx.caller, project, "secretmanager.secrets.list")?;
            let secrets: Vec<Value> = {
                let data = state.read();
                let number = data
                    .project(project)
                    .map(|p| p.number.clone())
                    .unwrap_or_default();
                data.secrets
                    .values()
                    .filter(|s| s.number == number)
                    .map(Secret::to_json)
                    .collect()
            };
            let (page, next) = paginate(&secrets, ctx, 25_000)?;
            let mut out = json!({ "totalSize": secrets.len() });
            if !page.is_empty() {
                out["secrets"] = json!(page);
            }
            if let Some(next) = next {
                out["nextPageToken"] = json!(next);
            }
            Ok(out)
        }
        _ => {
            let secret_id = &call.params[1];
            let permission = match method {
                "get" => "secretmanager.secrets.get",
                "delete" => "secretmanager.secrets.delete",
                "patch" => "secretmanager.secrets.update",
                "addVersion" => "secretmanager.versions.add",
                "getIamPolicy" => "secretmanager.secrets.getIamPolicy",
                "setIamPolicy" => "secretmanager.secrets.setIamPolicy",
                "testIamPermissions" => "secretmanager.secrets.get",
                "versions.access" => "secretmanager.versions.access",
                "versions.list" => "secretmanager.versions.list",
                "versions.get" => "secretmanager.versions.get",
                "versions.enable" => "secretmanager.versions.enable",
                "versions.disable" => "secretmanager.versions.disable",
                "versions.destroy" => "secretmanager.versions.destroy",
                _ => {
                    return Err(ApiError::not_found(format!(
                        "Method {} is not served by this sandbox.",
                        call.id
                    )));
                }
            };
            if method == "testIamPermissions" {
                let policies = {
                    let data = state.read();
                    data.project(project).map(|p| {
                        let sp = data
                            .secrets
                            .get(&key(&p.number, secret_id))
                            .map(|s| s.policy.clone())
                            .unwrap_or_default();
                        (p.policy.clone(), sp)
                    })
                };
                let (pp, sp) = policies.unwrap_or_default();
                return Ok(iam::test_permissions(ctx, &[&pp, &sp]));
            }
            let k = authorize(state, &ctx.caller, project, secret_id, permission)?;
            on_secret(ctx, call, method, &k)
        }
    }
}

fn create(ctx: &Ctx, project: &str) -> ApiResult<Value> {
    authz::require(
        &ctx.state,
        &ctx.caller,
        project,
        "secretmanager.secrets.create",
    )?;
    let id = ctx.param("secretId").unwrap_or_default().to_owned();
    validate_secret_id(&id)?;
    let replication = ctx
        .body
        .get("replication")
        .cloned()
        .filter(|r| r.is_object())
        .ok_or_else(|| {
            ApiError::invalid_argument("Secret.replication is required (automatic or userManaged).")
        })?;
    let mut data = ctx.state.write();
    let (project_id, number) = data
        .project(project)
        .map(|p| (p.id.clone(), p.number.clone()))
        .ok_or_else(|| ApiError::not_found(format!("Project {project} not found.")))?;
    let k = key(&number, &id);
    if data.secrets.contains_key(&k) {
        return Err(ApiError::already_exists(format!(
            "Secret [{k}] already exists."
        )));
    }
    let now = Utc::now();
    let secret = Secret {
        project: project_id,
        number,
        id,
        create_time: now,
        replication,
        labels: ctx.body.get("labels").cloned().unwrap_or(json!({})),
        annotations: ctx.body.get("annotations").cloned().unwrap_or(json!({})),
        etag: format!("\"{}\"", now.timestamp_micros()),
        policy: Policy::default(),
        versions: Vec::new(),
    };
    let out = secret.to_json();
    data.secrets.insert(k, secret);
    Ok(out)
}

fn on_secret(ctx: &Ctx, call: &MethodCall, method: &str, k: &str) -> ApiResult<Value> {
    let consistency = ctx.state.settings().consistency;
    let mut data = ctx.state.write();
    if method == "setIamPolicy" {
        let (incoming, audit) = policy::parse_set_request(&ctx.body)?;
        return iam::set_policy_in(&mut data, &consistency, incoming, audit, |d| {
            d.secrets.get_mut(k).map(|s| &mut s.policy)
        });
    }
    if method == "delete" {
        data.secrets.remove(k);
        return Ok(json!({}));
    }
    let secret = data
        .secrets
        .get_mut(k)
        .ok_or_else(|| ApiError::not_found(format!("Secret [{k}] not found.")))?;
    let now = Utc::now();
    match method {
        "get" => Ok(secret.to_json()),
        "getIamPolicy" => Ok(secret.policy.to_json()),
        "patch" => {
            let mask = ctx.param("updateMask").unwrap_or_default();
            for field in mask.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                match field {
                    "labels" => {
                        secret.labels = ctx.body.get("labels").cloned().unwrap_or(json!({}))
                    }
                    "annotations" => {
                        secret.annotations =
                            ctx.body.get("annotations").cloned().unwrap_or(json!({}))
                    }
                    other => {
                        return Err(ApiError::invalid_argument(format!(
                            "Invalid update mask field: {other}."
                        )));
                    }
                }
            }
            secret.etag = format!("\"{}\"", now.timestamp_micros());
            Ok(secret.to_json())
        }
        "addVersion" => {
            let b64 = ctx
                .body
                .pointer("/payload/data")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::invalid_argument("payload.data is required."))?;
            // A bytes field: either base64 alphabet (gcloud sends the URL-safe one).
            let bytes = crate::policy::decode_bytes(b64).ok_or_else(|| {
                ApiError::invalid_argument(
                    "Invalid value at 'payload.data' (TYPE_BYTES): not base64.",
                )
            })?;
            if bytes.len() > MAX_PAYLOAD {
                return Err(ApiError::invalid_argument(
                    "Secret payload is larger than 64 KiB.",
                ));
            }
            let client_checksum = ctx.body.pointer("/payload/dataCrc32c").is_some();
            if let Some(crc) = ctx.body.pointer("/payload/dataCrc32c") {
                let sent = crc
                    .as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .or_else(|| crc.as_u64());
                if sent != Some(u64::from(crc32c(&bytes))) {
                    return Err(ApiError::invalid_argument(
                        "Checksum mismatch: payload.dataCrc32c does not match the data.",
                    ));
                }
            }
            let number = secret.versions.last().map_or(1, |v| v.number + 1);
            secret.versions.push(SecretVersion {
                number,
                create_time: now,
                state: "ENABLED".into(),
                destroy_time: None,
                payload: Some(SecretString::from(STANDARD.encode(&bytes))),
                client_checksum,
            });
            let v = secret
                .versions
                .last()
                .cloned()
                .ok_or_else(|| ApiError::internal("version vanished"))?;
            Ok(secret.version_json(&v))
        }
        "versions.list" => {
            let versions: Vec<Value> = secret
                .versions
                .iter()
                .rev()
                .map(|v| secret.version_json(v))
                .collect();
            let total = versions.len();
            let (page, next) = paginate(&versions, ctx, 25_000)?;
            let mut out = json!({ "totalSize": total });
            if !page.is_empty() {
                out["versions"] = json!(page);
            }
            if let Some(next) = next {
                out["nextPageToken"] = json!(next);
            }
            Ok(out)
        }
        _ => {
            let version = &call.params[2];
            let v = secret.version(version).cloned().ok_or_else(|| {
                ApiError::not_found(format!(
                    "Secret Version [{k}/versions/{version}] not found."
                ))
            })?;
            match method {
                "versions.get" => Ok(secret.version_json(&v)),
                "versions.access" => {
                    drop(data);
                    let b64 = payload_of(&ctx.state, k, version)?;
                    let bytes = STANDARD.decode(b64.expose_secret()).unwrap_or_default();
                    Ok(json!({
                        "name": format!("{k}/versions/{}", v.number),
                        "payload": { "data": b64.expose_secret(), "dataCrc32c": crc32c(&bytes).to_string() },
                    }))
                }
                _ => {
                    let target = secret
                        .versions
                        .iter_mut()
                        .find(|x| x.number == v.number)
                        .ok_or_else(|| ApiError::internal("version vanished"))?;
                    if target.state == "DESTROYED" {
                        return Err(ApiError::failed_precondition(format!(
                            "Secret Version [{k}/versions/{}] is in DESTROYED state.",
                            v.number
                        )));
                    }
                    match method {
                        "versions.enable" => target.state = "ENABLED".into(),
                        "versions.disable" => target.state = "DISABLED".into(),
                        _ => {
                            target.state = "DESTROYED".into();
                            target.destroy_time = Some(now);
                            target.payload = None;
                        }
                    }
                    let v = target.clone();
                    Ok(secret.version_json(&v))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_known_vector() {
        // RFC 3720 test vector: 32 bytes of zeros.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn secret_id_rules() {
        assert!(validate_secret_id("prefect-api-key_1").is_ok());
        assert!(validate_secret_id("").is_err());
        assert!(validate_secret_id("a/b").is_err());
    }

    #[test]
    fn payload_is_not_serialized() {
        let v = SecretVersion {
            number: 1,
            create_time: Utc::now(),
            state: "ENABLED".into(),
            destroy_time: None,
            payload: Some(SecretString::from("c2VjcmV0".to_owned())),
            client_checksum: false,
        };
        let text = serde_json::to_string(&v).expect("serializes");
        assert!(!text.contains("c2VjcmV0"));
        assert!(!format!("{v:?}").contains("c2VjcmV0"));
    }
}
