//! IAM Service Account Credentials v1 `projects.serviceAccounts.generateAccessToken`
//! (iamcredentials.v1 discovery: POST
//! `v1/projects/{projectsId}/serviceAccounts/{serviceAccountsId}:generateAccessToken`, body
//! `{delegates[], scope[], lifetime}`, answer `{accessToken, expireTime}`).
//!
//! Each hop of the chain (caller -> delegates... -> target) needs
//! `iam.serviceAccounts.getAccessToken` on the next account, from the account's own policy or
//! its project's (`roles/iam.serviceAccountTokenCreator`, or `roles/iam.workloadIdentityUser`
//! for a federated principal).

use chrono::{Duration, Utc};
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::google::Ctx;
use crate::methods::MethodCall;
use crate::state::TokenGrant;

const PERMISSION: &str = "iam.serviceAccounts.getAccessToken";
/// The longest lifetime without the org policy that extends it.
const MAX_LIFETIME_SECS: i64 = 3600;

/// Dispatches the `iamcredentials.*` methods.
pub fn handle(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    match call.id {
        "iamcredentials.projects.serviceAccounts.generateAccessToken" => {
            generate_access_token(ctx, call)
        }
        other => Err(ApiError::not_found(format!(
            "Method {other} is not served by this sandbox."
        ))),
    }
}

/// `projects/-/serviceAccounts/EMAIL` or a bare email.
fn email_of(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

fn lifetime_secs(body: &Value) -> ApiResult<i64> {
    let Some(text) = body.get("lifetime").and_then(Value::as_str) else {
        return Ok(MAX_LIFETIME_SECS);
    };
    let secs = text
        .strip_suffix('s')
        .and_then(|n| n.split('.').next())
        .and_then(|n| n.parse::<i64>().ok())
        .ok_or_else(|| {
            ApiError::invalid_argument(format!(
                "Invalid value at 'lifetime' (type.googleapis.com/google.protobuf.Duration), \"{text}\""
            ))
        })?;
    if !(1..=MAX_LIFETIME_SECS).contains(&secs) {
        return Err(ApiError::invalid_argument(
            "The lifetime requested is not valid: it must be at most 3600 seconds.",
        ));
    }
    Ok(secs)
}

fn generate_access_token(ctx: &Ctx, call: &MethodCall) -> ApiResult<Value> {
    let target = call
        .params
        .get(1)
        .map(|s| email_of(s).to_owned())
        .ok_or_else(|| ApiError::invalid_argument("name is required"))?;
    let body = &ctx.body;
    if body
        .get("scope")
        .and_then(Value::as_array)
        .is_none_or(|s| s.is_empty())
    {
        return Err(ApiError::invalid_argument(
            "Request contains an invalid argument: scope is required.",
        ));
    }
    let lifetime = lifetime_secs(body)?;
    let mut chain: Vec<String> = crate::google::body_strings(body, "delegates")
        .iter()
        .map(|d| email_of(d).to_owned())
        .collect();
    chain.push(target.clone());
    let mut current = ctx.caller.clone();
    for hop in &chain {
        check_hop(ctx, &current, hop)?;
        current = Caller { email: hop.clone() };
    }
    let token = format!("ya29.sandbox-imp-{}", uuid::Uuid::new_v4().simple());
    let now = Utc::now();
    let expires = now + Duration::seconds(lifetime);
    {
        let mut data = ctx.state.write();
        data.tokens.retain(|_, g| g.expires_at > now);
        data.tokens.insert(
            token.clone(),
            TokenGrant {
                email: target,
                expires_at: expires,
            },
        );
    }
    // google-auth parses exactly `%Y-%m-%dT%H:%M:%SZ` (impersonated_credentials.py).
    Ok(json!({
        "accessToken": token,
        "expireTime": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }))
}

/// `caller` may mint tokens for `email`: the account exists, is enabled, and `caller` holds
/// the permission on it. Google answers a missing account with the same 403.
fn check_hop(ctx: &Ctx, caller: &Caller, email: &str) -> ApiResult<()> {
    let resource = format!("projects/-/serviceAccounts/{email}");
    let (project_policy, sa) = {
        let data = ctx.state.read();
        let sa = data.service_accounts.get(email).cloned();
        let project = sa
            .as_ref()
            .map(|s| s.project.clone())
            .or_else(|| crate::methods::project_of_email(email));
        let policy = project
            .and_then(|p| data.project(&p).map(|p| p.policy.clone()))
            .unwrap_or_default();
        (policy, sa)
    };
    let Some(sa) = sa.filter(|s| !s.disabled) else {
        return crate::authz::check(&ctx.state, caller, PERMISSION, &resource, &[]);
    };
    crate::authz::check(
        &ctx.state,
        caller,
        PERMISSION,
        &resource,
        &[&project_policy, &sa.policy],
    )
}
