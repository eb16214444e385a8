//! IAM v1: service accounts, their keys and their IAM policies; plus the policy-write helper
//! every `setIamPolicy` of the sandbox shares (etag check, member existence with the
//! visibility delay).

use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::authz;
use crate::error::{ApiError, ApiResult};
use crate::google::{Ctx, body_str, paginate, requested_permissions};
use crate::keys::{self, KeyFileInfo};
use crate::methods::MethodCall;
use crate::policy::{self, IncomingPolicy, Policy};
use crate::state::{Consistency, Data, SaKey, ServiceAccount};

/// Google's limit of user-managed keys per service account.
const MAX_KEYS: usize = 10;

/// A new 21-digit unique id.
pub fn new_unique_id() -> String {
    let n: u128 =
        rand::random::<u128>() % 900_000_000_000_000_000_000 + 100_000_000_000_000_000_000;
    n.to_string()
}

/// Account ids: 6-30 characters, `[a-z]([-a-z0-9]*[a-z0-9])`.
pub fn validate_account_id(id: &str) -> ApiResult<()> {
    let bytes = id.as_bytes();
    let ok = (6..=30).contains(&id.len())
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "Invalid account ID \"{id}\": it must be 6 to 30 characters, match regex \
             [a-z]([-a-z0-9]*[a-z0-9]) (lowercase letters, digits and hyphens, starting with a letter)."
        )))
    }
}

/// Project ids follow the same shape as account ids.
pub fn validate_project_id(id: &str) -> ApiResult<()> {
    validate_account_id(id)
        .map_err(|_| ApiError::invalid_argument(format!("Invalid project id \"{id}\".")))
}

/// The wire form of a service account.
pub fn sa_json(sa: &ServiceAccount) -> Value {
    let mut out = json!({
        "name": format!("projects/{}/serviceAccounts/{}", sa.project, sa.email),
        "projectId": sa.project,
        "uniqueId": sa.unique_id,
        "email": sa.email,
        "etag": sa.etag,
        "oauth2ClientId": sa.unique_id,
    });
    if !sa.display_name.is_empty() {
        out["displayName"] = json!(sa.display_name);
    }
    if !sa.description.is_empty() {
        out["description"] = json!(sa.description);
    }
    if sa.disabled {
        out["disabled"] = json!(true);
    }
    out
}

fn key_json(key: &SaKey, project: &str) -> Value {
    let mut out = json!({
        "name": format!("projects/{project}/serviceAccounts/{}/keys/{}", key.email, key.id),
        "validAfterTime": key.valid_after.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "validBeforeTime": key.valid_before.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "keyAlgorithm": "KEY_ALG_RSA_2048",
        "keyOrigin": "GOOGLE_PROVIDED",
        "keyType": if key.system_managed { "SYSTEM_MANAGED" } else { "USER_MANAGED" },
    });
    if key.disabled {
        out["disabled"] = json!(true);
    }
    out
}

/// Finds an account by email or unique id; `project` may be `-`.
fn find_sa<'a>(data: &'a Data, project: &str, id: &str) -> Option<&'a ServiceAccount> {
    let sa = data
        .service_accounts
        .get(id)
        .or_else(|| data.service_accounts.values().find(|sa| sa.unique_id == id))?;
    let matches = project == "-" || data.project(project).is_some_and(|p| p.id == sa.project);
    matches.then_some(sa)
}

fn unknown_sa() -> ApiError {
    ApiError::not_found("Unknown service account")
}

/// Resolves the addressed account, checking `permission` through the project's policy and the
/// account's own. A missing account checks against the project only, then 404s.
fn authorize_sa(ctx: &Ctx, call: &MethodCall, permission: &str) -> ApiResult<ServiceAccount> {
    let (project, id) = (&call.params[0], &call.params[1]);
    let found = {
        let data = ctx.state.read();
        find_sa(&data, project, id).map(|sa| {
            let project_policy = data
                .project(&sa.project)
                .map(|p| p.policy.clone())
                .unwrap_or_default();
            (sa.clone(), project_policy)
        })
    };
    let resource = format!("projects/{project}/serviceAccounts/{id}");
    match found {
        Some((sa, project_policy)) => {
            authz::check(
                &ctx.state,
                &ctx.caller,
                permission,
                &resource,
                &[&project_policy, &sa.policy],
            )?;
            Ok(sa)
        }
        None => {
            if project != "-" {
                authz::require(&ctx.state, &ctx.caller, project, permission)?;
            }
            Err(unknown_sa())
        }
    }
}

/// Handles one IAM call.
pub async fn handle(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let method = call.id.trim_start_matches("iam.projects.serviceAccounts.");
    match method {
        "create" => create(ctx, &call.params[0]),
        "list" => list(ctx, &call.params[0]),
        "get" => Ok(sa_json(&authorize_sa(
            ctx,
            call,
            "iam.serviceAccounts.get",
        )?)),
        "patch" => patch(ctx, call),
        "delete" => delete(ctx, call),
        "disable" | "enable" => {
            let sa = authorize_sa(ctx, call, &format!("iam.serviceAccounts.{method}"))?;
            if let Some(sa) = ctx.state.write().service_accounts.get_mut(&sa.email) {
                sa.disabled = method == "disable";
                sa.etag = policy::new_etag();
            }
            Ok(json!({}))
        }
        "getIamPolicy" => Ok(authorize_sa(ctx, call, "iam.serviceAccounts.getIamPolicy")?
            .policy
            .to_json()),
        "setIamPolicy" => {
            let sa = authorize_sa(ctx, call, "iam.serviceAccounts.setIamPolicy")?;
            let (incoming, audit) = policy::parse_set_request(&ctx.body)?;
            let consistency = ctx.state.settings().consistency;
            let mut data = ctx.state.write();
            set_policy_in(&mut data, &consistency, incoming, audit, |d| {
                d.service_accounts
                    .get_mut(&sa.email)
                    .map(|sa| &mut sa.policy)
            })
        }
        "testIamPermissions" => {
            let sa = authorize_sa(ctx, call, "iam.serviceAccounts.get").ok();
            let project_policy = sa
                .as_ref()
                .and_then(|sa| {
                    ctx.state
                        .read()
                        .project(&sa.project)
                        .map(|p| p.policy.clone())
                })
                .unwrap_or_default();
            let sa_policy = sa.map(|sa| sa.policy).unwrap_or_default();
            Ok(test_permissions(ctx, &[&project_policy, &sa_policy]))
        }
        "keys.create" => create_key(ctx, call).await,
        "keys.list" => list_keys(ctx, call),
        "keys.get" => {
            let sa = authorize_sa(ctx, call, "iam.serviceAccountKeys.get")?;
            let data = ctx.state.read();
            let key = data
                .keys
                .get(&call.params[2])
                .filter(|k| k.email == sa.email);
            key.map(|k| key_json(k, &sa.project)).ok_or_else(|| {
                ApiError::not_found(format!(
                    "Service account key {} does not exist.",
                    call.params[2]
                ))
            })
        }
        "keys.delete" | "keys.disable" | "keys.enable" => {
            let verb = method.trim_start_matches("keys.");
            let sa = authorize_sa(ctx, call, &format!("iam.serviceAccountKeys.{verb}"))?;
            let mut data = ctx.state.write();
            let exists = data
                .keys
                .get(&call.params[2])
                .is_some_and(|k| k.email == sa.email);
            if !exists {
                return Err(ApiError::not_found(format!(
                    "Service account key {} does not exist.",
                    call.params[2]
                )));
            }
            match verb {
                "delete" => {
                    data.keys.remove(&call.params[2]);
                }
                _ => {
                    if let Some(key) = data.keys.get_mut(&call.params[2]) {
                        key.disabled = verb == "disable";
                    }
                }
            }
            Ok(json!({}))
        }
        _ => Err(ApiError::not_found(format!(
            "Method {} is not served by this sandbox.",
            call.id
        ))),
    }
}

fn create(ctx: &Ctx, project: &str) -> ApiResult<Value> {
    authz::require(
        &ctx.state,
        &ctx.caller,
        project,
        "iam.serviceAccounts.create",
    )?;
    let account_id = body_str(&ctx.body, "accountId")?;
    validate_account_id(account_id)?;
    let spec = ctx
        .body
        .get("serviceAccount")
        .cloned()
        .unwrap_or(Value::Null);
    let text = |field: &str| {
        spec.get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let mut data = ctx.state.write();
    let project_id = data
        .project(project)
        .map(|p| p.id.clone())
        .ok_or_else(|| ApiError::not_found(format!("Project {project} not found.")))?;
    let email = format!("{account_id}@{project_id}.iam.gserviceaccount.com");
    if data.service_accounts.contains_key(&email) {
        return Err(ApiError::already_exists(format!(
            "Service account {account_id} already exists within project projects/{project_id}."
        )));
    }
    let unique_id = new_unique_id();
    let sa = ServiceAccount {
        email: email.clone(),
        project: project_id,
        unique_id,
        display_name: text("displayName"),
        description: text("description"),
        disabled: false,
        etag: policy::new_etag(),
        created_at: Utc::now(),
        policy: Policy::default(),
    };
    let out = sa_json(&sa);
    data.service_accounts.insert(email, sa);
    Ok(out)
}

fn list(ctx: &Ctx, project: &str) -> ApiResult<Value> {
    authz::require(&ctx.state, &ctx.caller, project, "iam.serviceAccounts.list")?;
    let accounts: Vec<Value> = {
        let data = ctx.state.read();
        let id = data
            .project(project)
            .map(|p| p.id.clone())
            .unwrap_or_default();
        data.service_accounts
            .values()
            .filter(|sa| sa.project == id)
            .map(sa_json)
            .collect()
    };
    let (page, next) = paginate(&accounts, ctx, 100)?;
    let mut out = json!({});
    if !page.is_empty() {
        out["accounts"] = json!(page);
    }
    if let Some(next) = next {
        out["nextPageToken"] = json!(next);
    }
    Ok(out)
}

fn patch(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let sa = authorize_sa(ctx, call, "iam.serviceAccounts.update")?;
    let spec = ctx
        .body
        .get("serviceAccount")
        .cloned()
        .unwrap_or(Value::Null);
    let mask = body_str(&ctx.body, "updateMask")?;
    if let Some(etag) = spec
        .get("etag")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        && !policy::etag_matches(etag, &sa.etag)
    {
        return Err(ApiError::aborted(
            "The etag of the service account does not match; read it again.",
        ));
    }
    let mut data = ctx.state.write();
    let stored = data
        .service_accounts
        .get_mut(&sa.email)
        .ok_or_else(unknown_sa)?;
    for field in mask.split(',').map(str::trim) {
        let value = spec
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match field {
            "displayName" | "display_name" => stored.display_name = value,
            "description" => stored.description = value,
            other => {
                return Err(ApiError::invalid_argument(format!(
                    "Invalid update mask field: {other}."
                )));
            }
        }
    }
    stored.etag = policy::new_etag();
    Ok(sa_json(stored))
}

fn delete(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let sa = authorize_sa(ctx, call, "iam.serviceAccounts.delete")?;
    let mut data = ctx.state.write();
    data.service_accounts.remove(&sa.email);
    data.keys.retain(|_, k| k.email != sa.email);
    data.tokens.retain(|_, t| t.email != sa.email);
    // Google keeps bindings of a deleted account, renamed `deleted:serviceAccount:...?uid=...`.
    let member = format!("serviceAccount:{}", sa.email);
    let renamed = format!("deleted:serviceAccount:{}?uid={}", sa.email, sa.unique_id);
    for project in data.projects.values_mut() {
        for binding in &mut project.policy.bindings {
            for m in &mut binding.members {
                if *m == member {
                    m.clone_from(&renamed);
                }
            }
        }
    }
    Ok(json!({}))
}

async fn create_key(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let sa = authorize_sa(ctx, call, "iam.serviceAccountKeys.create")?;
    let key_type = ctx
        .body
        .get("privateKeyType")
        .and_then(Value::as_str)
        .unwrap_or("TYPE_GOOGLE_CREDENTIALS_FILE");
    if !matches!(
        key_type,
        "TYPE_GOOGLE_CREDENTIALS_FILE" | "TYPE_UNSPECIFIED"
    ) {
        return Err(ApiError::invalid_argument(format!(
            "The sandbox only issues TYPE_GOOGLE_CREDENTIALS_FILE keys, not {key_type}."
        )));
    }
    let algorithm = ctx
        .body
        .get("keyAlgorithm")
        .and_then(Value::as_str)
        .unwrap_or("KEY_ALG_RSA_2048");
    if !matches!(algorithm, "KEY_ALG_RSA_2048" | "KEY_ALG_UNSPECIFIED") {
        return Err(ApiError::invalid_argument(format!(
            "The sandbox only issues KEY_ALG_RSA_2048 keys, not {algorithm}."
        )));
    }
    {
        let data = ctx.state.read();
        let by_project = data
            .project(&sa.project)
            .is_some_and(|p| p.disable_key_creation);
        if by_project || ctx.state.settings().disable_key_creation {
            return Err(ApiError::failed_precondition(
                "Key creation is not allowed on this service account.",
            )
            .with_detail(json!({
                "@type": "type.googleapis.com/google.rpc.PreconditionFailure",
                "violations": [{
                    "type": "constraints/iam.disableServiceAccountKeyCreation",
                    "subject": format!("projects/{}?configvalue={}", sa.project, sa.email),
                    "description": "Key creation is not allowed on this service account.",
                }],
            })));
        }
        if data.keys.values().filter(|k| k.email == sa.email).count() >= MAX_KEYS {
            return Err(ApiError::failed_precondition("Precondition check failed."));
        }
    }
    let key = ctx
        .state
        .keys
        .take()
        .await
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let key_id = keys::new_key_id();
    let file = keys::key_file(
        &key,
        &KeyFileInfo {
            key_id: &key_id,
            email: &sa.email,
            project: &sa.project,
            client_id: &sa.unique_id,
            token_uri: &format!("{}/token", ctx.state.url),
        },
    )
    .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let now = Utc::now();
    let stored = SaKey {
        id: key_id,
        email: sa.email.clone(),
        public_key_pem: keys::public_pem(&key).map_err(|e| ApiError::internal(format!("{e:#}")))?,
        valid_after: now,
        valid_before: now + Duration::days(365 * 100),
        disabled: false,
        system_managed: false,
    };
    let mut out = key_json(&stored, &sa.project);
    out["privateKeyType"] = json!("TYPE_GOOGLE_CREDENTIALS_FILE");
    out["privateKeyData"] = json!(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        file.as_bytes()
    ));
    let mut data = ctx.state.write();
    if !data.service_accounts.contains_key(&sa.email) {
        return Err(unknown_sa());
    }
    data.keys.insert(stored.id.clone(), stored);
    Ok(out)
}

fn list_keys(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let sa = authorize_sa(ctx, call, "iam.serviceAccountKeys.list")?;
    let types = ctx.params("keyTypes");
    for t in &types {
        if !matches!(
            *t,
            "KEY_TYPE_UNSPECIFIED" | "USER_MANAGED" | "SYSTEM_MANAGED"
        ) {
            return Err(ApiError::invalid_argument(format!(
                "Invalid value at 'key_types': \"{t}\""
            )));
        }
    }
    // No filter (or KEY_TYPE_UNSPECIFIED) lists both kinds, as Google does.
    let any = types.is_empty() || types.contains(&"KEY_TYPE_UNSPECIFIED");
    let wants_user = any || types.contains(&"USER_MANAGED");
    let wants_system = any || types.contains(&"SYSTEM_MANAGED");
    let data = ctx.state.read();
    let keys: Vec<Value> = data
        .keys
        .values()
        .filter(|k| k.email == sa.email)
        .filter(|k| {
            if k.system_managed {
                wants_system
            } else {
                wants_user
            }
        })
        .map(|k| key_json(k, &sa.project))
        .collect();
    Ok(if keys.is_empty() {
        json!({})
    } else {
        json!({ "keys": keys })
    })
}

/// `TestIamPermissionsResponse`: the requested permissions the caller holds via `policies`.
pub fn test_permissions(ctx: &Ctx, policies: &[&Policy]) -> Value {
    let held: Vec<String> = requested_permissions(&ctx.body)
        .into_iter()
        .filter(|p| authz::holds(&ctx.state, &ctx.caller, p, policies))
        .collect();
    if held.is_empty() {
        json!({})
    } else {
        json!({ "permissions": held })
    }
}

/// Why a member may not be bound yet: a sandbox service account that does not exist, or was
/// created less than the visibility delay ago.
pub(crate) fn member_problem(
    data: &Data,
    member: &str,
    consistency: &Consistency,
) -> Option<ApiError> {
    let email = member.strip_prefix("serviceAccount:")?;
    let project = crate::methods::project_of_email(email)?;
    data.project(&project)?;
    let visible = data
        .service_accounts
        .get(email)
        .is_some_and(|sa| sa.created_at + consistency.sa_visibility_chrono() <= Utc::now());
    (!visible)
        .then(|| ApiError::invalid_argument(format!("Service account {email} does not exist.")))
}

/// The shared `setIamPolicy`: stale etag → 409 ABORTED; new members that are sandbox accounts
/// not (yet) visible → 400; then replace and return the new policy.
pub fn set_policy_in(
    data: &mut Data,
    consistency: &Consistency,
    incoming: IncomingPolicy,
    update_audit: bool,
    policy_of: impl Fn(&mut Data) -> Option<&mut Policy>,
) -> ApiResult<Value> {
    let current = policy_of(data)
        .ok_or_else(|| ApiError::not_found("Resource not found."))?
        .clone();
    if let Some(etag) = &incoming.etag
        && !policy::etag_matches(etag, &current.etag)
    {
        return Err(ApiError::aborted(
            "There were concurrent policy changes. Please retry the whole read-modify-write with exponential backoff.",
        ));
    }
    for binding in &incoming.bindings {
        for member in &binding.members {
            let already = current.bindings.iter().any(|b| b.members.contains(member));
            if !already && let Some(err) = member_problem(data, member, consistency) {
                return Err(err);
            }
        }
    }
    let policy = policy_of(data).ok_or_else(|| ApiError::not_found("Resource not found."))?;
    policy.replace(incoming, update_audit, Utc::now());
    Ok(policy.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_rules() {
        for ok in ["prefect-worker", "abcdef", "a12345", "a-b-c-d-e"] {
            assert!(validate_account_id(ok).is_ok(), "{ok}");
        }
        for bad in [
            "abc",
            "1abcdef",
            "Abcdef",
            "abcdef-",
            "abc_def",
            "a234567890123456789012345678901",
            "",
        ] {
            assert!(validate_account_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unique_ids_have_21_digits() {
        assert_eq!(new_unique_id().len(), 21);
    }
}
